//! A [`crate::Source`] over a manifest a client pushed and the blobs it
//! staged (or that downstream has). (Skeleton.)
