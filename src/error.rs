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

/// An error code of the OCI distribution spec, as a registry's JSON error
/// body (`{"errors":[{"code":...}]}`) names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RegistryErrorCode {
    /// `BLOB_UNKNOWN`: the blob is not in the repository.
    BlobUnknown,
    /// `BLOB_UPLOAD_INVALID`: the upload failed.
    BlobUploadInvalid,
    /// `BLOB_UPLOAD_UNKNOWN`: no such upload session.
    BlobUploadUnknown,
    /// `DIGEST_INVALID`: content did not match its digest.
    DigestInvalid,
    /// `MANIFEST_BLOB_UNKNOWN`: a manifest names a blob the registry lacks.
    ManifestBlobUnknown,
    /// `MANIFEST_INVALID`: the manifest did not validate.
    ManifestInvalid,
    /// `MANIFEST_UNKNOWN`: no such manifest (tag or digest).
    ManifestUnknown,
    /// `NAME_INVALID`: the repository name is not valid.
    NameInvalid,
    /// `NAME_UNKNOWN`: no such repository.
    NameUnknown,
    /// `SIZE_INVALID`: content did not match its stated size.
    SizeInvalid,
    /// `UNAUTHORIZED`: authentication required or failed.
    Unauthorized,
    /// `DENIED`: access to the resource denied.
    Denied,
    /// `UNSUPPORTED`: the operation is not supported.
    Unsupported,
    /// `TOOMANYREQUESTS`: rate limited.
    TooManyRequests,
    /// Any other code, as the registry spelt it (truncated for display).
    Other(String),
}

impl RegistryErrorCode {
    const KNOWN: [(&'static str, RegistryErrorCode); 14] = [
        ("BLOB_UNKNOWN", RegistryErrorCode::BlobUnknown),
        ("BLOB_UPLOAD_INVALID", RegistryErrorCode::BlobUploadInvalid),
        ("BLOB_UPLOAD_UNKNOWN", RegistryErrorCode::BlobUploadUnknown),
        ("DIGEST_INVALID", RegistryErrorCode::DigestInvalid),
        (
            "MANIFEST_BLOB_UNKNOWN",
            RegistryErrorCode::ManifestBlobUnknown,
        ),
        ("MANIFEST_INVALID", RegistryErrorCode::ManifestInvalid),
        ("MANIFEST_UNKNOWN", RegistryErrorCode::ManifestUnknown),
        ("NAME_INVALID", RegistryErrorCode::NameInvalid),
        ("NAME_UNKNOWN", RegistryErrorCode::NameUnknown),
        ("SIZE_INVALID", RegistryErrorCode::SizeInvalid),
        ("UNAUTHORIZED", RegistryErrorCode::Unauthorized),
        ("DENIED", RegistryErrorCode::Denied),
        ("UNSUPPORTED", RegistryErrorCode::Unsupported),
        ("TOOMANYREQUESTS", RegistryErrorCode::TooManyRequests),
    ];

    /// The code `s` names; exact spelling, as the spec writes them. An
    /// unknown code is kept (truncated) in `Other`.
    pub fn parse(s: &str) -> Self {
        Self::KNOWN
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, code)| code.clone())
            .unwrap_or_else(|| RegistryErrorCode::Other(crate::digest::truncate_for_error(s)))
    }

    /// The code as the spec spells it.
    pub fn as_str(&self) -> &str {
        match self {
            RegistryErrorCode::Other(s) => s,
            known => Self::KNOWN
                .iter()
                .find(|(_, code)| code == known)
                .map_or("", |(name, _)| name),
        }
    }
}

impl std::fmt::Display for RegistryErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
        /// The distribution-spec error codes the registry's body named, in
        /// order; when it named none, the one the status stands for (404 on
        /// a blob or manifest, 401, 403, 429), if any.
        codes: Vec<RegistryErrorCode>,
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
    /// The layer cache file (`--layer-cache`) is not one we can use.
    #[error("layer cache {path}: {message}")]
    LayerCache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The run was interrupted by a signal.
    #[error("interrupted")]
    Interrupted,

    /// A container engine (Docker, Podman) refused or failed a request.
    #[error("engine {socket}: {operation}: {message}")]
    Engine {
        /// The engine's socket.
        socket: String,
        /// What was asked (`load`, `image inspect`).
        operation: String,
        /// The engine's own message, or what went wrong on the way.
        message: String,
    },
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

    /// The registry error codes of an [`Error::Registry`]; empty otherwise.
    pub fn registry_codes(&self) -> &[RegistryErrorCode] {
        match self {
            Error::Registry { codes, .. } => codes,
            _ => &[],
        }
    }

    /// Whether this error came from a usage mistake (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Usage(_) | Error::Reference(_))
    }
}
