//! A client for the OCI distribution API: auth, manifests and streamed,
//! resumable blob downloads.
//!
//! We use our own client on reqwest rather than `oci-client` because blob
//! downloads must resume with a `Range` request while the caller's hash
//! state carries on, and retries must honour `Retry-After`; both live below
//! `oci-client`'s public API.
//!
//! The pieces:
//! - [`Context`] holds what several runs share: the connection pools, the
//!   rate limiter, the bearer-token cache and the request limit. It reads
//!   no environment and holds no process-global state.
//! - [`Client`] speaks to one registry host with one set of
//!   [`ClientOptions`], over a `Context` (`Client::new(&ctx, host, options)`). The repository
//!   is given per call (`client.get_manifest(repo, reference)`), so one client serves many
//!   images at once; [`Client::repo`] is a cheap handle that fixes it.
//!   Per-call repositories let a proxy or a mirror drive any repository
//!   from one client without building anything per image; the handle keeps
//!   a source (one image) as simple as before.
//! - Tokens are cached per (registry, repository, actions), so a `pull`
//!   token and a later `push,pull` token for the same repository coexist.

pub mod auth;
mod client;
mod context;
mod errors;
mod lanes;
mod list;
mod options;
mod pull;
mod push;
mod referrers;
mod repository;
mod request;
mod tokens;
pub mod transport;

pub use crate::error::RegistryErrorCode as ErrorCode;
pub use auth::Credentials;
pub use client::Client;
pub use context::{Context, ContextOptions, Listener, Listening, MAX_HOLD, RateLimiter};
pub use errors::{RegistryErrorBody, parse_error_body};
pub(crate) use list::is_repository_name;
pub use list::{LIST_PAGE_SIZE, MAX_LIST_ENTRIES, MAX_LIST_PAGE_BYTES, refuses_listing};
pub use options::{
    ClientOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_CONNECTIONS_PER_BLOB, DEFAULT_MIN_SPEED,
    DEFAULT_MIN_SPEED_WINDOW, DEFAULT_READ_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRIES,
    MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, parse_byte_rate,
};
pub use push::BlobOpener;
pub use referrers::{
    MAX_REFERRERS, Referrer, deletes_disabled, parse_referrers_index, referrers_index,
};
pub use repository::Repository;
pub use tokens::Actions;

#[cfg(test)]
mod tests;
