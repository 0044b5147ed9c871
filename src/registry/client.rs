//! [`Client`]: one registry host over a shared [`Context`], for any of its
//! repositories. Its operations are in `request.rs` (sending, auth) and
//! `pull.rs` (manifests and blobs); `repository.rs` has the handle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::context::{Context, ContextOptions};
use super::options::ClientOptions;
use super::tokens::Identity;
use super::transport;
use crate::error::Result;

/// A client for one registry, for any of its repositories. Build it with
/// [`Client::new`] over the run's [`Context`] so that it shares pools,
/// tokens and limits with the other clients; `Send + Sync`, and used through an `Arc`.
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
    /// `127.0.0.1:5000`) over `ctx`, whose pools, tokens and limits it
    /// shares with the other clients of the context.
    pub fn new(ctx: &Arc<Context>, host: &str, options: ClientOptions) -> Result<Arc<Self>> {
        let ctx = ctx.clone();
        let scheme = if options.insecure { "http" } else { "https" };
        let base = format!("{scheme}://{host}");
        // The registry itself, when the user asked for it in clear, and the
        // hosts named by --insecure-host: nothing else hears plain HTTP.
        // Under `any` the host adds nothing, and leaving it out keeps one
        // pool (one load of the system's roots) for every registry.
        let mut allowed = options.insecure_hosts.clone();
        if options.insecure
            && !allowed.allows_any()
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

    /// A client with a context of its own (no rate limit, no request
    /// limit, nothing shared).
    pub fn standalone(host: &str, options: ClientOptions) -> Result<Arc<Self>> {
        Client::new(&Context::new(ContextOptions::default()), host, options)
    }

    /// The registry host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The context this client shares.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
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
