//! A client for the OCI distribution API: auth, manifests and streamed,
//! resumable blob downloads.
//!
//! We use our own client on reqwest rather than `oci-client` because blob
//! downloads must resume with a `Range` request while the caller's hash
//! state carries on, and retries must honour `Retry-After`; both live below
//! `oci-client`'s public API.

pub mod auth;
pub mod transport;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use tokio::sync::Mutex;

use crate::digest::Digest;
use crate::error::{Error, Result};
use auth::Challenge;
pub use auth::Credentials;

/// Largest manifest or index we accept.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config we accept.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// How to reach a registry.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// Credentials, if any were given.
    pub credentials: Option<Credentials>,
    /// How many times a failed request is retried.
    pub retries: u32,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// How long a response may stall between bytes.
    pub read_timeout: Duration,
    /// Requests per second across every client sharing this limiter.
    pub rate_limit: Option<std::sync::Arc<RateLimiter>>,
    /// Hosts besides an `insecure` registry itself that may be spoken to
    /// over plain HTTP: token realms and redirect targets. Credentials and
    /// tokens never go in clear to any other host.
    pub insecure_hosts: transport::InsecureHosts,
    /// Deadline for a whole small response (manifest, config, token, error
    /// body) and for the headers of a blob response, per attempt.
    pub request_timeout: Duration,
    /// Bytes a second a blob download must keep up over each
    /// `min_speed_window`, or it is resumed on a new connection; 0: no floor.
    pub min_speed: u64,
    /// See `min_speed`.
    pub min_speed_window: Duration,
}

/// Environment variables read by [`ClientOptions::default`], the fallback for
/// the `--connect-timeout`, `--read-timeout` and `--rate-limit` flags:
/// seconds (fractions allowed) for the timeouts, requests per second for the
/// rate limit. A value that is not a positive number is ignored.
pub const ENV_CONNECT_TIMEOUT: &str = "OCCYSTRAP_CONNECT_TIMEOUT";
/// See [`ENV_CONNECT_TIMEOUT`].
pub const ENV_READ_TIMEOUT: &str = "OCCYSTRAP_READ_TIMEOUT";
/// See [`ENV_CONNECT_TIMEOUT`].
pub const ENV_RATE_LIMIT: &str = "OCCYSTRAP_RATE_LIMIT";
/// Fallback for `--request-timeout` (seconds).
pub const ENV_REQUEST_TIMEOUT: &str = "OCCYSTRAP_REQUEST_TIMEOUT";
/// Fallback for `--min-speed` (bytes a second; `0` turns the floor off).
pub const ENV_MIN_SPEED: &str = "OCCYSTRAP_MIN_SPEED";
/// Fallback for `--min-speed-window` (seconds).
pub const ENV_MIN_SPEED_WINDOW: &str = "OCCYSTRAP_MIN_SPEED_WINDOW";
/// Fallback for `--insecure-host` (a comma-separated list).
pub const ENV_INSECURE_HOSTS: &str = "OCCYSTRAP_INSECURE_HOSTS";

/// Default for [`ClientOptions::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for [`ClientOptions::min_speed`]: 1 KiB/s.
pub const DEFAULT_MIN_SPEED: u64 = 1024;
/// Default for [`ClientOptions::min_speed_window`].
pub const DEFAULT_MIN_SPEED_WINDOW: Duration = Duration::from_secs(30);

/// A positive, finite number from the environment.
fn env_number(name: &str) -> Option<f64> {
    let v: f64 = std::env::var(name).ok()?.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then_some(v)
}

/// Seconds from the environment as a duration (at most a day).
fn env_seconds(name: &str) -> Option<Duration> {
    env_number(name).map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

/// The rate limiter named by `OCCYSTRAP_RATE_LIMIT`, one per process so that
/// every client of a run shares it.
fn env_rate_limit() -> Option<std::sync::Arc<RateLimiter>> {
    static LIMITER: std::sync::OnceLock<Option<std::sync::Arc<RateLimiter>>> =
        std::sync::OnceLock::new();
    LIMITER
        .get_or_init(|| {
            env_number(ENV_RATE_LIMIT).map(|r| std::sync::Arc::new(RateLimiter::new(r)))
        })
        .clone()
}

/// A byte rate (`1024`, `64k`, `2M`; k and M are powers of 1024), as
/// `--min-speed` and `OCCYSTRAP_MIN_SPEED` take it.
pub fn parse_byte_rate(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1024u64),
        b'm' | b'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let n: u64 = num.trim().parse().ok()?;
    n.checked_mul(mult)
}

impl Default for ClientOptions {
    /// Three retries, a 30 s connect timeout, a 60 s read timeout, a 60 s
    /// request deadline, a 1 KiB/s floor over 30 s for blobs, no rate limit
    /// and no extra plain-HTTP hosts; the `OCCYSTRAP_*` variables above
    /// override those.
    fn default() -> Self {
        ClientOptions {
            insecure: false,
            credentials: None,
            retries: 3,
            connect_timeout: env_seconds(ENV_CONNECT_TIMEOUT).unwrap_or(Duration::from_secs(30)),
            read_timeout: env_seconds(ENV_READ_TIMEOUT).unwrap_or(Duration::from_secs(60)),
            rate_limit: env_rate_limit(),
            insecure_hosts: {
                let mut h = transport::InsecureHosts::default();
                if let Ok(list) = std::env::var(ENV_INSECURE_HOSTS)
                    && h.add_list(&list).is_err()
                {
                    tracing::warn!("ignoring {ENV_INSECURE_HOSTS}: not a list of HOST[:PORT]");
                    h = transport::InsecureHosts::default();
                }
                h
            },
            request_timeout: env_seconds(ENV_REQUEST_TIMEOUT).unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            min_speed: std::env::var(ENV_MIN_SPEED)
                .ok()
                .and_then(|v| parse_byte_rate(&v))
                .unwrap_or(DEFAULT_MIN_SPEED),
            min_speed_window: env_seconds(ENV_MIN_SPEED_WINDOW).unwrap_or(DEFAULT_MIN_SPEED_WINDOW),
        }
    }
}

#[derive(Clone)]
enum AuthState {
    None,
    Basic,
    Bearer {
        token: String,
        expires: Instant,
        challenge: Challenge,
    },
}

/// A token bucket: at most `rate` requests a second on average, bursts of up
/// to `rate` (at least one). Shared by all download workers.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    // tokio's clock, so tests can run it paused.
    state: Mutex<(f64, tokio::time::Instant)>,
}

impl RateLimiter {
    /// A limiter for `rate` requests per second (must be > 0).
    pub fn new(rate: f64) -> Self {
        let burst = rate.max(1.0);
        RateLimiter {
            rate,
            state: Mutex::new((burst, tokio::time::Instant::now())),
        }
    }

    /// Waits until a request may be sent.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut st = self.state.lock().await;
                let now = tokio::time::Instant::now();
                let burst = self.rate.max(1.0);
                st.0 = (st.0 + now.duration_since(st.1).as_secs_f64() * self.rate).min(burst);
                st.1 = now;
                if st.0 >= 1.0 {
                    st.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - st.0) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// A client for one repository on one registry.
pub struct Client {
    http: reqwest::Client,
    base: String,
    host: String,
    repository: String,
    options: ClientOptions,
    /// Hosts plain HTTP may go to (see [`ClientOptions::insecure_hosts`]).
    allowed: transport::InsecureHosts,
    auth: Mutex<AuthState>,
}

/// Accept header for manifest requests: every type we understand, plus
/// schema1 so that we can name it in the error instead of getting a 404.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json;q=0.9, \
application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.1";

impl Client {
    /// A client for `repository` on `host` (`registry-1.docker.io`, `127.0.0.1:5000`).
    pub fn new(host: &str, repository: &str, options: ClientOptions) -> Result<Self> {
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
        let http = reqwest::Client::builder()
            .user_agent(concat!("occystrap/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .redirect(transport::redirect_policy(allowed.clone()))
            .build()
            .map_err(|e| Error::Network {
                registry: host.to_string(),
                operation: "creating HTTP client".into(),
                message: e.to_string(),
            })?;
        Ok(Client {
            http,
            base,
            host: host.to_string(),
            repository: repository.to_string(),
            options,
            allowed,
            auth: Mutex::new(AuthState::None),
        })
    }

    /// The registry host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Fetches a manifest by tag or digest: its bytes and Content-Type.
    pub async fn get_manifest(&self, reference: &str) -> Result<(Vec<u8>, Option<String>)> {
        let sep = if reference.contains(':') { '@' } else { ':' };
        let op = format!("GET manifest {}{sep}{reference}", self.repository);
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.base, self.repository, reference
        );
        let (body, ct) = self
            .get_whole(&op, &url, Some(MANIFEST_ACCEPT), MAX_MANIFEST_BYTES)
            .await?;
        let ct = ct.map(|s| crate::image::media_type::essence(&s).to_string());
        Ok((body, ct))
    }

    /// GETs a small document whole (at most `max` bytes), retrying when the
    /// body breaks off or stalls as [`Client::send`] retries failed requests.
    /// Returns the body and its Content-Type.
    async fn get_whole(
        &self,
        op: &str,
        url: &str,
        accept: Option<&str>,
        max: u64,
    ) -> Result<(Vec<u8>, Option<String>)> {
        let mut attempt = 0u32;
        loop {
            let (resp, deadline) = self.send(op, Method::GET, url, accept, None).await?;
            let ct = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match self.read_capped(op, resp, max, deadline).await {
                Ok(body) => return Ok((body, ct)),
                Err(e @ Error::Network { .. }) if attempt < self.options.retries => {
                    attempt += 1;
                    tracing::warn!("{}: {e}; retrying", self.host);
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fetches a small blob (a config) whole, verifying digest and size.
    pub async fn get_small_blob(&self, digest: &Digest, size: u64, max: u64) -> Result<Vec<u8>> {
        let op = format!("GET blob {digest}");
        if size > max {
            return Err(Error::InvalidImage(format!(
                "blob {digest} is {size} bytes, more than the {max} allowed for metadata"
            )));
        }
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repository, digest);
        // Read no more than the descriptor promised: a server that sends
        // more is wrong, and need not be believed up to `max`.
        let (body, _) = self.get_whole(&op, &url, None, size).await?;
        let found = Digest::sha256_of(&body);
        if &found != digest {
            return Err(Error::DigestMismatch {
                kind: crate::error::Mismatch::BlobDigest,
                what: format!("blob {digest}"),
                expected: digest.clone(),
                found,
            });
        }
        if body.len() as u64 != size {
            return Err(Error::SizeMismatch {
                kind: crate::error::Mismatch::BlobSize,
                what: format!("blob {digest}"),
                expected: size,
                found: body.len() as u64,
            });
        }
        Ok(body)
    }

    /// Streams a blob's bytes into `tx`, in order, resuming with a `Range`
    /// request when the connection breaks off. `progress` sees each chunk's
    /// length. Stops with an error if the server sends more than `size` bytes.
    /// Verification of the digest is the receiver's job: it sees every byte.
    pub async fn stream_blob(
        &self,
        digest: &Digest,
        size: u64,
        tx: tokio::sync::mpsc::Sender<Bytes>,
        mut progress: impl Fn(u64) + Send,
    ) -> Result<()> {
        let op = format!("GET blob {digest}");
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repository, digest);
        let mut received: u64 = 0;
        let mut attempt = 0u32;
        loop {
            let range = (received > 0).then(|| format!("bytes={received}-"));
            let (resp, _) = self
                .send(&op, Method::GET, &url, None, range.as_deref())
                .await?;
            // A server that ignores Range replays from byte 0: skip what we have.
            let mut skip = if received > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
                received
            } else {
                0
            };
            // Without a Content-Length, an early end of the body is all a
            // broken connection looks like.
            let delimited_by_close = resp.content_length().is_none();
            let mut stream = resp.bytes_stream();
            // Each connection must keep up the floor on its own.
            let floor =
                transport::SpeedFloor::new(self.options.min_speed, self.options.min_speed_window);
            let pumped = pump_body(
                &mut stream,
                floor,
                &mut skip,
                &mut received,
                size,
                &tx,
                &mut progress,
                describe_reqwest,
                &|slow| self.too_slow(slow),
            )
            .await;
            let mut broke = match pumped {
                Ok(Pumped::Ended) => None,
                Ok(Pumped::Broke(msg)) => Some(msg),
                // The receiver stopped (it failed); its error is the one to report.
                Ok(Pumped::ReceiverGone) => return Ok(()),
                Err(found) => {
                    return Err(Error::SizeMismatch {
                        kind: crate::error::Mismatch::BlobSize,
                        what: format!("blob {digest}"),
                        expected: size,
                        found,
                    });
                }
            };
            // A body without a Content-Length that ends early is a break too.
            // One that was complete but short is the registry's whole blob:
            // the receiver reports the size mismatch.
            if broke.is_none() && received < size && delimited_by_close {
                broke = Some("the response ended early".into());
            }
            match broke {
                None => return Ok(()),
                Some(msg) => {
                    attempt += 1;
                    if attempt > self.options.retries || received >= size {
                        return Err(Error::Network {
                            registry: self.host.clone(),
                            operation: op,
                            message: format!("connection broke off after {received} bytes: {msg}"),
                        });
                    }
                    tracing::warn!(
                        "{}: {op}: broke off after {received} of {size} bytes ({msg}); resuming",
                        self.host
                    );
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }

    /// Why a connection below the throughput floor was given up.
    fn too_slow(&self, slow: transport::TooSlow) -> String {
        format!(
            "slower than {} bytes/s for {} s ({} bytes/s; --min-speed)",
            self.options.min_speed,
            self.options.min_speed_window.as_secs_f64(),
            slow.rate
        )
    }

    /// Reads a small body whole: at most `max` bytes, all of it before
    /// `deadline`, however slowly the server drips it.
    async fn read_capped(
        &self,
        op: &str,
        resp: Response,
        max: u64,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<u8>> {
        if let Some(len) = resp.content_length()
            && len > max
        {
            return Err(Error::InvalidImage(format!(
                "{}: {op}: response is {len} bytes, more than the {max} allowed",
                self.host
            )));
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        loop {
            let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(chunk)) => chunk.map_err(|e| self.network_error(op, &e))?,
                Ok(None) => break,
                Err(_) => return Err(self.deadline_error(op, Some(body.len()))),
            };
            if body.len() as u64 + chunk.len() as u64 > max {
                return Err(Error::InvalidImage(format!(
                    "{}: {op}: response is more than the {max} bytes allowed",
                    self.host
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The error for a request that missed its deadline; `got` is how much
    /// of the body had come, if the headers had.
    fn deadline_error(&self, op: &str, got: Option<usize>) -> Error {
        let secs = self.options.request_timeout.as_secs_f64();
        Error::Network {
            registry: self.host.clone(),
            operation: op.to_string(),
            message: match got {
                None => format!("timed out: no response within {secs} s (--request-timeout)"),
                Some(n) => format!(
                    "timed out: response not complete within {secs} s \
                     (--request-timeout; {n} bytes came)"
                ),
            },
        }
    }

    fn network_error(&self, op: &str, e: &reqwest::Error) -> Error {
        Error::Network {
            registry: self.host.clone(),
            operation: op.to_string(),
            message: describe_reqwest(e),
        }
    }

    /// Sends a request with auth, answering one auth challenge and retrying
    /// connection errors, timeouts, 429 and 5xx. Returns only successful
    /// responses, each with the deadline its body must meet when it is a
    /// small document: the headers had to come within
    /// [`ClientOptions::request_timeout`] of the request, and the body
    /// shares that deadline.
    async fn send(
        &self,
        op: &str,
        method: Method,
        url: &str,
        accept: Option<&str>,
        range: Option<&str>,
    ) -> Result<(Response, tokio::time::Instant)> {
        let mut attempt = 0u32;
        let mut answered_challenge = false;
        loop {
            let auth_header = self.current_auth().await?;
            if let Some(l) = &self.options.rate_limit {
                l.acquire().await;
            }
            let mut req = self.http.request(method.clone(), url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(r) = range {
                req = req.header(RANGE, r);
            }
            if let Some(h) = &auth_header {
                req = req.header(AUTHORIZATION, h);
            }
            tracing::debug!("{method} {url}");
            let deadline = tokio::time::Instant::now() + self.options.request_timeout;
            let failure = match tokio::time::timeout_at(deadline, req.send()).await {
                Ok(Ok(r)) => Ok(r),
                // A refused redirect is a decision, not a glitch.
                Ok(Err(e)) if e.is_redirect() => return Err(self.network_error(op, &e)),
                Ok(Err(e)) => Err(self.network_error(op, &e)),
                Err(_) => Err(self.deadline_error(op, None)),
            };
            let resp = match failure {
                Ok(r) => r,
                Err(e) => {
                    attempt += 1;
                    if attempt > self.options.retries {
                        return Err(e);
                    }
                    tracing::warn!("{e}; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
            };
            let status = resp.status();
            if status.is_success() {
                return Ok((resp, deadline));
            }
            if status == StatusCode::UNAUTHORIZED && !answered_challenge {
                answered_challenge = true;
                let challenge = resp
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(auth::parse_challenge);
                if let Some(ch) = challenge {
                    self.answer_challenge(op, ch).await?;
                    continue;
                }
            }
            if (status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::REQUEST_TIMEOUT
                || status.is_server_error())
                && attempt < self.options.retries
            {
                attempt += 1;
                let wait = retry_after(resp.headers()).unwrap_or_else(|| backoff(attempt));
                tracing::warn!("{}: {op}: HTTP {status}; retrying in {wait:?}", self.host);
                tokio::time::sleep(wait).await;
                continue;
            }
            return Err(self.status_error(op, resp, deadline).await);
        }
    }

    /// The error for an unsuccessful response, with the registry's own
    /// words from its body when they come before `deadline`.
    async fn status_error(
        &self,
        op: &str,
        resp: Response,
        deadline: tokio::time::Instant,
    ) -> Error {
        let status = resp.status();
        let body = self
            .read_capped(op, resp, 64 << 10, deadline)
            .await
            .unwrap_or_default();
        let mut message = format!("HTTP {}", status.as_u16());
        if let Some(reason) = status.canonical_reason() {
            message.push(' ');
            message.push_str(reason);
        }
        match registry_error_detail(&body) {
            Some(detail) => {
                message.push_str(": ");
                message.push_str(&self.scrub(detail).await);
            }
            // A bare 404 still says which kind of thing is missing, in the
            // distribution spec's words.
            None if status == StatusCode::NOT_FOUND && op.starts_with("GET blob") => {
                message.push_str(": BLOB_UNKNOWN: blob unknown to registry");
            }
            None if status == StatusCode::NOT_FOUND && op.starts_with("GET manifest") => {
                message.push_str(": MANIFEST_UNKNOWN: manifest unknown");
            }
            None => {}
        }
        if status == StatusCode::UNAUTHORIZED {
            message.push_str(if self.options.credentials.is_some() {
                " (authentication failed: check the username and password)"
            } else {
                " (authentication required: give --username/--password)"
            });
        }
        Error::Registry {
            registry: self.host.clone(),
            operation: op.to_string(),
            message,
            status: Some(status.as_u16()),
        }
    }

    async fn current_auth(&self) -> Result<Option<String>> {
        let state = self.auth.lock().await.clone();
        match state {
            AuthState::None => Ok(None),
            AuthState::Basic => Ok(self.options.credentials.as_ref().map(|c| c.basic_header())),
            AuthState::Bearer {
                token,
                expires,
                challenge,
            } => {
                if Instant::now() < expires {
                    Ok(Some(format!("Bearer {token}")))
                } else {
                    // Refresh before it is refused rather than after.
                    self.answer_challenge("refreshing token", challenge).await?;
                    match &*self.auth.lock().await {
                        AuthState::Bearer { token, .. } => Ok(Some(format!("Bearer {token}"))),
                        _ => Ok(None),
                    }
                }
            }
        }
    }

    async fn answer_challenge(&self, op: &str, challenge: Challenge) -> Result<()> {
        match &challenge {
            Challenge::Basic => {
                if self.options.credentials.is_none() {
                    return Err(Error::Registry {
                        registry: self.host.clone(),
                        operation: op.to_string(),
                        message: "HTTP 401 Unauthorized (authentication required: give --username/--password)".into(),
                        status: Some(401),
                    });
                }
                *self.auth.lock().await = AuthState::Basic;
                Ok(())
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope
                    .clone()
                    .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                let (token, ttl) = self
                    .fetch_token(op, realm, service.as_deref(), &scope)
                    .await?;
                *self.auth.lock().await = AuthState::Bearer {
                    token,
                    // Renew a little early so a token never expires in flight.
                    expires: Instant::now()
                        + ttl
                            .saturating_sub(Duration::from_secs(10))
                            .max(Duration::from_secs(5)),
                    challenge,
                };
                Ok(())
            }
        }
    }

    /// `text` from a registry with any secret of ours in it (the password,
    /// the Basic header, the bearer token) replaced: a registry that echoes
    /// what it was sent must not make us print it.
    async fn scrub(&self, mut text: String) -> String {
        let mut secrets = Vec::new();
        if let Some(c) = &self.options.credentials {
            secrets.push(c.password.clone());
            secrets.push(c.basic_header()["Basic ".len()..].to_string());
        }
        if let AuthState::Bearer { token, .. } = &*self.auth.lock().await {
            secrets.push(token.clone());
        }
        for s in secrets.iter().filter(|s| s.len() >= 3) {
            text = text.replace(s.as_str(), "<redacted>");
        }
        text
    }

    /// Whether credentials may go to a token realm: http(s) only, no user
    /// name or password in it, and never plain HTTP to a host the user did
    /// not allow (`--insecure`, `?insecure=true` for the registry itself,
    /// `--insecure-host`). A realm on another host over HTTPS gets them, as
    /// Docker sends them: the registry names its token service.
    fn check_realm(&self, url: &url::Url) -> std::result::Result<(), String> {
        if !url.username().is_empty() || url.password().is_some() {
            return Err("token realm has a user name or password in it; refusing to use it".into());
        }
        match url.scheme() {
            "https" => Ok(()),
            "http" if self.allowed.allows_url(url) => Ok(()),
            "http" => Err(format!(
                "token realm {} is plain HTTP{}: refusing to send {} in clear; \
                 give --insecure-host {} to allow it",
                transport::redacted(url),
                if self.options.insecure {
                    " on another host than the registry"
                } else {
                    " but the registry is HTTPS"
                },
                if self.options.credentials.is_some() {
                    "credentials"
                } else {
                    "a token request"
                },
                transport::authority(url)
            )),
            other => Err(format!(
                "token realm is not http(s) but {}",
                crate::digest::truncate_for_error(other)
            )),
        }
    }

    async fn fetch_token(
        &self,
        op: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Duration)> {
        let refuse = |message: String| Error::Registry {
            registry: self.host.clone(),
            operation: op.to_string(),
            message,
            status: None,
        };
        let mut url = url::Url::parse(realm).map_err(|_| {
            // Up to any query, which could carry something secret.
            refuse(format!(
                "token realm {:?} is not a URL",
                crate::digest::truncate_for_error(realm.split('?').next().unwrap_or(""))
            ))
        })?;
        self.check_realm(&url).map_err(refuse)?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let top = format!("GET token for {scope}");
        let mut attempt = 0;
        let body = loop {
            if let Some(l) = &self.options.rate_limit {
                l.acquire().await;
            }
            let mut req = self.http.get(url.clone());
            if let Some(c) = &self.options.credentials {
                req = req.header(AUTHORIZATION, c.basic_header());
            }
            tracing::debug!("GET {} (token)", transport::redacted(&url));
            // Headers and body within one deadline, as for a manifest.
            let deadline = tokio::time::Instant::now() + self.options.request_timeout;
            let failure: Option<Error> = match tokio::time::timeout_at(deadline, req.send()).await {
                Ok(Ok(r)) if r.status().is_server_error() && attempt < self.options.retries => None,
                Ok(Ok(r)) if !r.status().is_success() => {
                    return Err(self.status_error(&top, r, deadline).await);
                }
                Ok(Ok(r)) => match self.read_capped(&top, r, 1 << 20, deadline).await {
                    Ok(body) => break body,
                    Err(e @ Error::Network { .. }) => Some(e),
                    Err(e) => return Err(e),
                },
                Ok(Err(e)) if e.is_redirect() => return Err(self.network_error(&top, &e)),
                Ok(Err(e)) => Some(self.network_error(&top, &e)),
                Err(_) => Some(self.deadline_error(&top, None)),
            };
            if let Some(e) = failure {
                if attempt >= self.options.retries {
                    return Err(e);
                }
                tracing::warn!("{e}; retrying");
            }
            attempt += 1;
            tokio::time::sleep(backoff(attempt)).await;
        };
        #[derive(serde::Deserialize)]
        struct TokenReply {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let reply: TokenReply = serde_json::from_slice(&body).map_err(|_| Error::Registry {
            registry: self.host.clone(),
            operation: top.clone(),
            message: "token endpoint did not return JSON".into(),
            status: None,
        })?;
        let token = reply
            .token
            .filter(|t| !t.is_empty())
            .or(reply.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| Error::Registry {
                registry: self.host.clone(),
                operation: top.clone(),
                message: "token endpoint reply has no token".into(),
                status: None,
            })?;
        // The distribution spec's default lifetime when none is given.
        let ttl = Duration::from_secs(reply.expires_in.unwrap_or(60).clamp(1, 86_400));
        Ok((token, ttl))
    }
}

/// How one blob response body ended.
#[derive(Debug, PartialEq, Eq)]
enum Pumped {
    /// The body ended.
    Ended,
    /// The connection broke, or fell below the throughput floor: why.
    Broke(String),
    /// The receiver hung up.
    ReceiverGone,
}

/// Moves one blob response body into `tx`: skips the first `skip` bytes (a
/// server that ignored `Range`), counts into `received`, and gives up when
/// `floor` judges the connection too slow. `Err(found)` when the body runs
/// past `size`.
#[allow(clippy::too_many_arguments)]
async fn pump_body<S, E>(
    stream: &mut S,
    mut floor: transport::SpeedFloor,
    skip: &mut u64,
    received: &mut u64,
    size: u64,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
    progress: &mut (impl Fn(u64) + Send),
    describe: impl Fn(&E) -> String,
    too_slow: &(dyn Fn(transport::TooSlow) -> String + Sync),
) -> std::result::Result<Pumped, u64>
where
    S: futures_util::Stream<Item = std::result::Result<Bytes, E>> + Unpin,
{
    loop {
        let waiting = tokio::time::Instant::now();
        let item = match floor.budget() {
            None => stream.next().await,
            Some(budget) => match tokio::time::timeout(budget, stream.next()).await {
                Ok(item) => item,
                // A whole window passed without a byte: judge it.
                Err(_) => match floor.record(0, waiting.elapsed()) {
                    Ok(()) => continue,
                    Err(slow) => return Ok(Pumped::Broke(too_slow(slow))),
                },
            },
        };
        let Some(item) = item else {
            return Ok(Pumped::Ended);
        };
        let mut chunk = match item {
            Ok(c) => c,
            Err(e) => return Ok(Pumped::Broke(describe(&e))),
        };
        // Time the receiver takes below is not the server's.
        let judged = floor.record(chunk.len() as u64, waiting.elapsed());
        if *skip > 0 {
            let n = (*skip).min(chunk.len() as u64);
            chunk = chunk.slice(n as usize..);
            *skip -= n;
        }
        if !chunk.is_empty() {
            *received += chunk.len() as u64;
            if *received > size {
                return Err(*received);
            }
            progress(chunk.len() as u64);
            if tx.send(chunk).await.is_err() {
                return Ok(Pumped::ReceiverGone);
            }
        }
        if let Err(slow) = judged {
            return Ok(Pumped::Broke(too_slow(slow)));
        }
    }
}

/// `code: message` from a registry's JSON error body.
fn registry_error_detail(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let errors = v.get("errors")?.as_array()?;
    let parts: Vec<String> = errors
        .iter()
        .take(3)
        .filter_map(|e| {
            let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
            let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
            let s = match (code.is_empty(), msg.is_empty()) {
                (true, true) => return None,
                (false, true) => code.to_string(),
                (true, false) => msg.to_string(),
                (false, false) => format!("{code}: {msg}"),
            };
            Some(crate::digest::truncate_for_error(
                &s.replace(['\n', '\r'], " "),
            ))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// A one-line description of a transport error, with its cause.
fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut msg = if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_body() || e.is_decode() {
        "error reading response body".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src = e.source();
    let mut last = String::new();
    while let Some(s) = src {
        last = s.to_string();
        src = s.source();
    }
    if !last.is_empty() && !msg.contains(&last) {
        msg.push_str(": ");
        msg.push_str(&last);
    }
    msg
}

fn backoff(attempt: u32) -> Duration {
    let base = 250u64.saturating_mul(1 << attempt.min(6));
    let jitter = rand::random::<u64>() % (base / 2 + 1);
    Duration::from_millis(base + jitter)
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let when = httpdate::parse_http_date(v).ok()?;
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    Some(wait.min(Duration::from_secs(300)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies() {
        let b =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(
            registry_error_detail(b).as_deref(),
            Some("MANIFEST_UNKNOWN: manifest unknown")
        );
        assert_eq!(registry_error_detail(b"<html>"), None);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn rate_limiter_spaces_requests() {
        let l = RateLimiter::new(4.0);
        let start = tokio::time::Instant::now();
        for _ in 0..12 {
            l.acquire().await;
        }
        // A burst of 4, then 8 more at 4 a second: about 2 s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_millis(2300),
            "{took:?}"
        );
    }

    /// A loopback server that answers every connection with `head`, then
    /// `body` one piece of `step` bytes every `every` (nothing at all when
    /// `head` is empty). Returns `127.0.0.1:PORT`.
    fn drip_server(head: &'static str, body: Vec<u8>, step: usize, every: Duration) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming().take(4) {
                let Ok(mut conn) = conn else { return };
                let body = body.clone();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    if head.is_empty() {
                        std::thread::sleep(Duration::from_secs(20));
                        return;
                    }
                    let _ = conn.write_all(head.as_bytes());
                    for piece in body.chunks(step) {
                        if conn.write_all(piece).is_err() {
                            return;
                        }
                        std::thread::sleep(every);
                    }
                });
            }
        });
        addr
    }

    fn quick_options() -> ClientOptions {
        ClientOptions {
            insecure: true,
            retries: 0,
            read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_millis(600),
            ..ClientOptions::default()
        }
    }

    #[tokio::test]
    async fn dripped_manifest_meets_the_deadline() {
        let body = vec![b' '; 2000];
        let head =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n\r\n";
        let host = drip_server(head, body, 1, Duration::from_millis(50));
        let client = Client::new(&host, "a/b", quick_options()).unwrap();
        let started = std::time::Instant::now();
        let e = client.get_manifest("v1").await.unwrap_err().to_string();
        let took = started.elapsed();
        assert!(
            e.contains("not complete within") && e.contains("--request-timeout"),
            "{e}"
        );
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(10),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn silent_server_meets_the_deadline() {
        let host = drip_server("", Vec::new(), 1, Duration::ZERO);
        let client = Client::new(&host, "a/b", quick_options()).unwrap();
        let started = std::time::Instant::now();
        let e = client.get_manifest("v1").await.unwrap_err().to_string();
        assert!(e.contains("no response within"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let d = Digest::sha256_of(b"x");
        let (tx, _rx) = tokio::sync::mpsc::channel(4);
        let e = client
            .stream_blob(&d, 1, tx, |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no response within"), "{e}");
        // Over HTTPS, a server that never answers the TLS handshake.
        let tls = Client::new(
            &host,
            "a/b",
            ClientOptions {
                insecure: false,
                connect_timeout: Duration::from_secs(30),
                ..quick_options()
            },
        )
        .unwrap();
        let started = std::time::Instant::now();
        let e = tls.get_manifest("v1").await.unwrap_err().to_string();
        assert!(e.contains("no response within"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn blob_below_the_floor_is_given_up() {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
        // 200 bytes a second against a 2000 bytes a second floor.
        let host = drip_server(head, vec![7; 100_000], 20, Duration::from_millis(100));
        let options = ClientOptions {
            min_speed: 2000,
            min_speed_window: Duration::from_millis(500),
            ..quick_options()
        };
        let client = Client::new(&host, "a/b", options).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let started = std::time::Instant::now();
        let d = Digest::sha256_of(b"x");
        let e = client
            .stream_blob(&d, 100_000, tx, |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("slower than 2000 bytes/s") && e.contains("--min-speed"),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        drain.await.unwrap();
    }

    #[test]
    fn realm_scheme_rules() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        let with_creds = |insecure: bool, hosts: &[&str]| {
            let mut h = transport::InsecureHosts::default();
            for e in hosts {
                h.add(e).unwrap();
            }
            let options = ClientOptions {
                insecure,
                credentials: Some(Credentials {
                    username: "u".into(),
                    password: "pw".into(),
                }),
                insecure_hosts: h,
                ..ClientOptions::default()
            };
            Client::new("reg.example:5000", "a/b", options).unwrap()
        };
        // HTTPS registry.
        let c = with_creds(false, &[]);
        assert!(c.check_realm(&u("https://auth.example/token")).is_ok());
        let e = c
            .check_realm(&u("http://reg.example:5000/token"))
            .unwrap_err();
        assert!(
            e.contains("but the registry is HTTPS") && e.contains("credentials"),
            "{e}"
        );
        assert!(e.contains("--insecure-host reg.example:5000"), "{e}");
        assert!(
            c.check_realm(&u("http://auth.example/token?secret=1"))
                .is_err()
        );
        assert!(c.check_realm(&u("https://x:y@auth.example/token")).is_err());
        assert!(c.check_realm(&u("https://x@auth.example/token")).is_err());
        assert!(c.check_realm(&u("ftp://auth.example/token")).is_err());
        let e = c
            .check_realm(&u("http://auth.example/t?secret=s3"))
            .unwrap_err();
        assert!(!e.contains("s3"), "{e}");
        // Allowed by --insecure-host, with or without a port.
        let c = with_creds(false, &["auth.example:8080", "other.example"]);
        assert!(c.check_realm(&u("http://auth.example:8080/token")).is_ok());
        assert!(c.check_realm(&u("http://auth.example/token")).is_err());
        assert!(c.check_realm(&u("http://other.example:1234/token")).is_ok());
        // A plain-HTTP registry: its own host and port only.
        let c = with_creds(true, &[]);
        assert!(c.check_realm(&u("http://reg.example:5000/token")).is_ok());
        let e = c
            .check_realm(&u("http://reg.example:5001/token"))
            .unwrap_err();
        assert!(e.contains("another host"), "{e}");
        assert!(c.check_realm(&u("http://auth.example/token")).is_err());
        assert!(c.check_realm(&u("https://auth.example/token")).is_ok());
    }

    /// `n` chunks of `bytes` bytes, one every `every` (tokio's clock).
    fn ticking(
        n: usize,
        bytes: usize,
        every: Duration,
    ) -> impl futures_util::Stream<Item = std::result::Result<Bytes, std::convert::Infallible>> + Unpin
    {
        Box::pin(futures_util::stream::unfold(0, move |i| async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Bytes::from(vec![1u8; bytes])), i + 1))
        }))
    }

    async fn pump_all<S>(
        mut stream: S,
        floor: transport::SpeedFloor,
        size: u64,
        channel: usize,
        reader_pause: Duration,
    ) -> (std::result::Result<Pumped, u64>, u64, u64)
    where
        S: futures_util::Stream<Item = std::result::Result<Bytes, std::convert::Infallible>>
            + Unpin,
    {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(channel);
        let reader = tokio::spawn(async move {
            let mut got = 0u64;
            while let Some(b) = rx.recv().await {
                got += b.len() as u64;
                tokio::time::sleep(reader_pause).await;
            }
            got
        });
        let (mut skip, mut received) = (0, 0);
        let r = pump_body(
            &mut stream,
            floor,
            &mut skip,
            &mut received,
            size,
            &tx,
            &mut |_| {},
            |e: &std::convert::Infallible| match *e {},
            &|slow| format!("slow {}", slow.rate),
        )
        .await;
        drop(tx);
        (r, received, reader.await.unwrap())
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn pump_gives_up_a_drip_after_one_window() {
        // 10 B/s against 100 B/s over 5 s.
        let started = tokio::time::Instant::now();
        let floor = transport::SpeedFloor::new(100, Duration::from_secs(5));
        let (r, received, got) = pump_all(
            ticking(1000, 10, Duration::from_secs(1)),
            floor,
            10_000,
            64,
            Duration::ZERO,
        )
        .await;
        assert_eq!(r, Ok(Pumped::Broke("slow 10".into())));
        assert_eq!((received, got), (50, 50));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn pump_keeps_a_connection_above_the_floor() {
        let floor = transport::SpeedFloor::new(5, Duration::from_secs(5));
        let (r, received, _) = pump_all(
            ticking(30, 10, Duration::from_secs(1)),
            floor,
            300,
            64,
            Duration::ZERO,
        )
        .await;
        assert_eq!((r, received), (Ok(Pumped::Ended), 300));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn pump_gives_up_a_silent_body_at_the_window() {
        let started = tokio::time::Instant::now();
        let floor = transport::SpeedFloor::new(1, Duration::from_secs(7));
        let silent = Box::pin(futures_util::stream::pending());
        let (r, received, _) = pump_all(silent, floor, 10, 1, Duration::ZERO).await;
        assert_eq!((r, received), (Ok(Pumped::Broke("slow 0".into())), 0));
        assert_eq!(started.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn pump_does_not_blame_the_server_for_a_slow_receiver() {
        // The server is instant; the receiver takes 10 s a chunk. A floor
        // of 100 B/s over 5 s would fail if waiting on the receiver counted.
        let floor = transport::SpeedFloor::new(100, Duration::from_secs(5));
        let fast = ticking(6, 10, Duration::ZERO);
        let (r, received, got) = pump_all(fast, floor, 60, 1, Duration::from_secs(10)).await;
        assert_eq!((r, received, got), (Ok(Pumped::Ended), 60, 60));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn pump_stops_past_the_size() {
        let off = transport::SpeedFloor::new(0, Duration::ZERO);
        let (r, _, _) = pump_all(ticking(3, 10, Duration::ZERO), off, 25, 8, Duration::ZERO).await;
        assert_eq!(r, Err(30));
    }

    #[test]
    fn byte_rates() {
        assert_eq!(parse_byte_rate("1024"), Some(1024));
        assert_eq!(parse_byte_rate("64k"), Some(64 << 10));
        assert_eq!(parse_byte_rate(" 2M "), Some(2 << 20));
        assert_eq!(parse_byte_rate("0"), Some(0));
        for bad in ["", "k", "-1", "1.5k", "1G", "99999999999999999999M"] {
            assert_eq!(parse_byte_rate(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
    }
}
