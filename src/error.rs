//! The library's error type. Each variant names the operation that failed.

use std::path::PathBuf;

use crate::digest::Digest;

/// Result with the library's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which verification a [`Error::DigestMismatch`] or [`Error::SizeMismatch`]
/// failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mismatch {
    /// The blob as stored hashed to another digest.
    BlobDigest,
    /// The blob as stored was another size.
    BlobSize,
    /// The uncompressed tar did not hash to the config's diff_id.
    DiffId,
    /// A manifest hashed to another digest than its reference or descriptor.
    Manifest,
    /// An image index hashed to another digest.
    Index,
    /// The config hashed to another digest.
    Config,
    /// A verified file changed while it was being copied.
    Copy,
}

/// Everything that can go wrong moving an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A reference did not parse.
    #[error(transparent)]
    Reference(#[from] crate::reference::InvalidReference),
    /// A digest string did not parse.
    #[error(transparent)]
    Digest(#[from] crate::digest::InvalidDigest),
    /// A URI or option on the command line is wrong.
    #[error("{0}")]
    Usage(String),
    /// Content did not hash to what its descriptor says.
    #[error("{what}: digest mismatch: expected {expected}, got {found}")]
    DigestMismatch {
        /// Which check failed, for callers that act on it (`check`).
        kind: Mismatch,
        /// What was being verified (`layer 2 blob`, `config`).
        what: String,
        /// The digest the descriptor promised.
        expected: Digest,
        /// The digest of what arrived.
        found: Digest,
    },
    /// Content was not the size its descriptor says.
    #[error("{what}: size mismatch: expected {expected} bytes, got {found}")]
    SizeMismatch {
        /// Which check failed.
        kind: Mismatch,
        /// What was being verified.
        what: String,
        /// Size the descriptor promised.
        expected: u64,
        /// Bytes that arrived.
        found: u64,
    },
    /// The registry answered with an error.
    #[error("{registry}: {operation}: {message}")]
    Registry {
        /// Registry host.
        registry: String,
        /// What we asked for (`GET manifest team/app:v1`).
        operation: String,
        /// HTTP status, registry error code and message.
        message: String,
        /// HTTP status, if there was a response.
        status: Option<u16>,
    },
    /// A network failure talking to a registry.
    #[error("{registry}: {operation}: {message}")]
    Network {
        /// Registry host.
        registry: String,
        /// What we asked for.
        operation: String,
        /// The failure, with credentials removed.
        message: String,
    },
    /// The image's metadata is not something we can use.
    #[error("{0}")]
    InvalidImage(String),
    /// The image format is recognised but not supported.
    #[error("{0}")]
    Unsupported(String),
    /// A docker-save tarball or OCI layout is malformed.
    #[error("{path}: {message}")]
    InvalidArchive {
        /// The archive.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A filesystem operation failed.
    // The cause is printed by whoever walks the error chain, not here.
    #[error("{operation} {path}")]
    Io {
        /// What we were doing (`writing`, `reading`).
        operation: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An I/O error without a path to name.
    #[error("{operation}")]
    Stream {
        /// What we were doing.
        operation: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The run was interrupted by a signal.
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// An `Io` error for `path`.
    pub fn io(operation: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            operation,
            path: path.into(),
            source,
        }
    }

    /// A `Stream` error.
    pub fn stream(operation: impl Into<String>, source: std::io::Error) -> Self {
        // An error we raised inside a reader (e.g. a verification failure) travels
        // through io::Error; unwrap it so the message is the original one.
        if source.get_ref().is_some_and(|e| e.is::<Error>()) {
            let inner = source.into_inner().expect("checked above");
            return *inner.downcast::<Error>().expect("checked above");
        }
        Error::Stream {
            operation: operation.into(),
            source,
        }
    }

    /// Which verification failed, if this is a verification failure.
    pub fn mismatch(&self) -> Option<Mismatch> {
        match self {
            Error::DigestMismatch { kind, .. } | Error::SizeMismatch { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Whether this error came from a usage mistake (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Usage(_) | Error::Reference(_))
    }
}
