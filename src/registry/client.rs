//! [`Client`]: one registry host over a shared [`Context`], the repository
//! given per call; [`Repository`]: a cheap handle that fixes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use super::context::{Context, ContextOptions, Identity};
use super::options::ClientOptions;
use super::tokens::{Actions, Scope};
use super::{MAX_MANIFEST_BYTES, transport};
use crate::digest::Digest;
use crate::error::Result;

/// Accept header for manifest requests: every type we understand, plus
/// schema1 so that we can name it in the error instead of getting a 404.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json;q=0.9, \
application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.1";

/// A client for one registry, for any of its repositories. Build it with
/// [`Context::client`] so that it shares pools, tokens and limits with the
/// other clients of a run; `Send + Sync`, and used through an `Arc`.
#[derive(Debug)]
pub struct Client {
    pub(super) ctx: Arc<Context>,
    pub(super) http: reqwest::Client,
    /// `scheme://host`.
    pub(super) base: String,
    pub(super) host: String,
    pub(super) options: ClientOptions,
    /// Hosts plain HTTP may go to (see [`ClientOptions::insecure_hosts`]).
    pub(super) allowed: transport::InsecureHosts,
    /// Who our credentials make us, so that clients with other credentials
    /// never use our tokens from a shared cache.
    pub(super) identity: Option<Identity>,
    /// The registry asked for HTTP Basic: send the credentials every time.
    pub(super) basic: AtomicBool,
}

impl Client {
    /// A client for the registry at `host` (`registry-1.docker.io`,
    /// `127.0.0.1:5000`) with a context of its own (no rate limit, no
    /// request limit). Prefer [`Context::client`] to share one.
    pub fn new(host: &str, options: ClientOptions) -> Result<Arc<Self>> {
        Context::new(ContextOptions::default()).client(host, options)
    }

    pub(super) fn with_context(
        ctx: Arc<Context>,
        host: &str,
        options: ClientOptions,
    ) -> Result<Arc<Self>> {
        let scheme = if options.insecure { "http" } else { "https" };
        let base = format!("{scheme}://{host}");
        // The registry itself, when the user asked for it in clear, and the
        // hosts named by --insecure-host: nothing else hears plain HTTP.
        let mut allowed = options.insecure_hosts.clone();
        if options.insecure
            && let Ok(u) = url::Url::parse(&base)
            && let Some(h) = u.host_str()
        {
            allowed.add_exact(h, u.port_or_known_default());
        }
        let http = ctx.http(host, &options, &allowed)?;
        let identity = options.credentials.as_ref().map(|c| ctx.identity(c));
        Ok(Arc::new(Client {
            ctx,
            http,
            base,
            host: host.to_string(),
            options,
            allowed,
            identity,
            basic: AtomicBool::new(false),
        }))
    }

    /// The registry host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The context this client shares.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// A handle on `repository` (`team/app`) of this registry.
    pub fn repo(self: &Arc<Self>, repository: &str) -> Repository {
        Repository {
            client: self.clone(),
            name: repository.to_string(),
        }
    }

    /// Fetches a manifest of `repository` by tag or digest: its bytes and
    /// Content-Type.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<(Vec<u8>, Option<String>)> {
        let _slot = self.ctx.slot().await;
        let sep = if reference.contains(':') { '@' } else { ':' };
        let op = format!("GET manifest {repository}{sep}{reference}");
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base);
        let scope = Scope::new(repository, Actions::Pull);
        let (body, ct) = self
            .get_whole(&op, &scope, &url, Some(MANIFEST_ACCEPT), MAX_MANIFEST_BYTES)
            .await?;
        let ct = ct.map(|s| crate::image::media_type::essence(&s).to_string());
        Ok((body, ct))
    }

    /// Whether HTTP Basic was asked for.
    pub(super) fn uses_basic(&self) -> bool {
        self.basic.load(Ordering::Relaxed)
    }

    /// Remembers that the registry asked for HTTP Basic.
    pub(super) fn set_basic(&self) {
        self.basic.store(true, Ordering::Relaxed);
    }

    /// `text` from a registry with any secret of ours in it (the password,
    /// the Basic header, our bearer tokens for this registry) replaced: a
    /// registry that echoes what it was sent must not make us print it.
    pub(super) fn scrub(&self, mut text: String) -> String {
        let mut secrets = Vec::new();
        if let Some(c) = &self.options.credentials {
            secrets.push(c.password.clone());
            secrets.push(c.basic_header()["Basic ".len()..].to_string());
        }
        secrets.extend(
            self.ctx
                .tokens
                .tokens_of(&self.base, self.identity.as_ref()),
        );
        for s in secrets.iter().filter(|s| s.len() >= 3) {
            text = text.replace(s.as_str(), "<redacted>");
        }
        text
    }
}

/// One repository of a registry: a [`Client`] and a name. Cheap to clone;
/// every handle on a client shares its context.
#[derive(Clone, Debug)]
pub struct Repository {
    client: Arc<Client>,
    name: String,
}

impl Repository {
    /// The repository name (`team/app`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client this handle uses.
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// The registry host.
    pub fn host(&self) -> &str {
        self.client.host()
    }

    /// [`Client::get_manifest`] for this repository.
    pub async fn get_manifest(&self, reference: &str) -> Result<(Vec<u8>, Option<String>)> {
        self.client.get_manifest(&self.name, reference).await
    }

    /// [`Client::get_small_blob`] for this repository.
    pub async fn get_small_blob(&self, digest: &Digest, size: u64, max: u64) -> Result<Vec<u8>> {
        self.client
            .get_small_blob(&self.name, digest, size, max)
            .await
    }

    /// [`Client::stream_blob`] for this repository.
    pub async fn stream_blob(
        &self,
        digest: &Digest,
        size: u64,
        tx: tokio::sync::mpsc::Sender<Bytes>,
        progress: impl Fn(u64) + Send,
    ) -> Result<()> {
        self.client
            .stream_blob(&self.name, digest, size, tx, progress)
            .await
    }
}
