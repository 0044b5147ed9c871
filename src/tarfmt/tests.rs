//! Tests of the shared tar reading.
