//! docker-save tarball reader.
