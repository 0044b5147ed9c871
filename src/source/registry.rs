//! Registry source.
