//! docker-save tarball writer.
