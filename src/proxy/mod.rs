//! `occystrap proxy`: a registry server (the distribution spec's push and
//! pull endpoints) in front of a downstream registry.
//!
//! - **Push path.** A client's blobs are staged on disk ([`uploads`]), each
//!   verified against the digest it is pushed as. When its manifest
//!   arrives, the image is read from the staging area through the filter
//!   chain and pushed downstream by the same [`RegistrySink`] `process`
//!   uses ([`push`]); the client is answered with the digest stored
//!   downstream. An index is rebuilt from the digests its children got.
//! - **Pull path** (`upstream`). Manifests and blobs are served from
//!   downstream ([`serve`]); a tag missing there, or older than the cache
//!   TTL and changed upstream, is copied from upstream through the filters
//!   first ([`pull`]), once however many clients ask at the same time.
//!
//! [`server`] accepts connections (plain or TLS), [`route`] parses request
//! paths, [`auth`] checks client credentials, and [`error`] is the spec's
//! JSON error format.
//!
//! [`RegistrySink`]: crate::sink::registry::RegistrySink

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::registry::{Client, Repository};
use crate::sink::registry::RegistrySinkOptions;
use crate::wire::index_plan::Selection;

pub mod auth;
pub mod capture;
pub mod copy;
pub mod engine_push;
pub mod error;
pub mod pull;
pub mod push;
pub mod route;
pub mod serve;
pub mod server;
pub mod staged;
pub mod tls;
pub mod uploads;

pub use error::{ApiError, ApiResult};

/// A response body: whole bytes or a stream.
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A request body as the handlers read it.
pub type ReqBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// The next data of a request body (trailers skipped); `None` at its end.
/// A body that sends nothing for `idle` is cut off.
pub(crate) async fn next_data(
    body: &mut ReqBody,
    idle: std::time::Duration,
) -> ApiResult<Option<Bytes>> {
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ApiError::timeout("the request body stalled")),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => {
                return Err(ApiError::blob_upload_invalid(format!(
                    "reading the request body: {e}"
                )));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
}

/// A registry and a namespace in it (`registry://HOST/ns`): a client's
/// repository `team/app` is `ns/team/app` there.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The registry.
    pub client: Arc<Client>,
    /// The namespace, without slashes at either end; empty for none.
    pub prefix: String,
}

impl Endpoint {
    /// The repository a client's `name` maps to.
    pub fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// A handle on that repository.
    pub fn repo(&self, name: &str) -> Repository {
        Repository::new(&self.client, &self.name(name))
    }
}

/// What one client may cost.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest manifest or index body accepted.
    pub max_manifest_bytes: usize,
    /// Largest single blob accepted.
    pub max_blob_bytes: u64,
    /// Upload sessions open at once, over all clients.
    pub max_uploads: usize,
    /// Bytes the staging area may hold at once (sessions and staged blobs).
    pub max_staging_bytes: u64,
    /// An upload session untouched this long is dropped with its file.
    pub upload_idle: Duration,
    /// A request body that sends nothing for this long is cut off.
    pub body_idle: Duration,
    /// A staged blob no manifest used for this long is removed.
    pub staged_ttl: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    /// 4 MiB manifests, 16 GiB blobs, 64 sessions, 64 GiB of staging, 15
    /// minutes idle for a session, 60 s for a body, 1 hour for a staged
    /// blob, 512 connections.
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 4 << 20,
            max_blob_bytes: 16 << 30,
            max_uploads: 64,
            max_staging_bytes: 64 << 30,
            upload_idle: Duration::from_secs(15 * 60),
            body_idle: Duration::from_secs(60),
            staged_ttl: Duration::from_secs(60 * 60),
            max_connections: 512,
        }
    }
}

/// How a proxy runs.
#[derive(Clone)]
pub struct ProxyConfig {
    /// Where filtered images go, and what the pull path serves from.
    pub downstream: Endpoint,
    /// The registry a pull-through miss is fetched from.
    pub upstream: Option<Endpoint>,
    /// The filter chain, as `-f` arguments; built anew for every image.
    pub filters: Vec<String>,
    /// How images are pushed downstream (compression, format, workers,
    /// layer cache); `exact`, `by_digest` and `mount_from` are set per push.
    pub sink: RegistrySinkOptions,
    /// Layers fetched at once per image.
    pub parallel: usize,
    /// The platforms of an upstream index a pull-through copies.
    pub platforms: Selection,
    /// A cached tag younger than this is served without asking upstream.
    pub cache_ttl: Duration,
    /// The proxy's own files: staged uploads and the pull-through cache's
    /// tag records.
    pub state_dir: PathBuf,
    /// What clients may cost.
    pub limits: Limits,
    /// Client credentials (`--htpasswd`); `None` lets every client in.
    pub htpasswd: Option<Arc<auth::Htpasswd>>,
    /// Shuts blocking work down with the server.
    pub cancel: crate::cancel::CancelToken,
}

impl ProxyConfig {
    /// Whether any filter rewrites layers (an unfiltered proxy copies
    /// digest-exact).
    pub fn rewrites(&self) -> crate::Result<bool> {
        for f in &self.filters {
            let spec = crate::filter::FilterSpec::parse(f)?;
            if crate::filter::build(&spec)?.rewrites() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A fresh instance of the filter chain.
    pub fn build_filters(&self) -> crate::Result<Vec<Box<dyn crate::filter::Filter>>> {
        self.filters
            .iter()
            .map(|f| crate::filter::FilterSpec::parse(f).and_then(|s| crate::filter::build(&s)))
            .collect()
    }
}

/// A running proxy's shared state.
pub struct Proxy {
    /// Its configuration.
    pub config: ProxyConfig,
    /// Upload sessions and staged blobs.
    pub staging: uploads::Staging,
    /// What the push path has stored downstream for each manifest a client
    /// pushed by digest.
    pub pushes: push::PushState,
    /// The pull-through cache, when there is an upstream.
    pub pull: Option<pull::PullState>,
    /// Capture mode (`dockerpush://`): manifests are kept, not copied
    /// downstream, and downstream is never asked.
    pub capture: Option<capture::Capture>,
    /// Downstream blobs already hashed once while served.
    pub verified: serve::VerifiedBlobs,
}

impl Proxy {
    /// A proxy over `config`, its state directory created.
    pub fn new(config: ProxyConfig) -> crate::Result<Arc<Proxy>> {
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|e| crate::Error::io("creating", &config.state_dir, e))?;
        let staging = uploads::Staging::new(&config.state_dir.join("staging"), &config.limits)?;
        let pushes = push::PushState::new(&config)?;
        let pull = match &config.upstream {
            Some(_) => Some(pull::PullState::new(&config)?),
            None => None,
        };
        Ok(Arc::new(Proxy {
            config,
            staging,
            pushes,
            pull,
            capture: None,
            verified: Default::default(),
        }))
    }
}
