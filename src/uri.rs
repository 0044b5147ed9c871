//! URI parsing.
