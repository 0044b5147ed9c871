//! Sending requests: auth (the header a request carries, answering a
//! challenge with Basic or a bearer token from the realm under the realm
//! safety rules, renewing expired tokens), retries with backoff and
//! `Retry-After`, the per-attempt deadline, capped bodies, and the errors of
//! failed requests.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};

use super::auth::{self, Challenge};
use super::client::Client;
use super::errors::{MAX_ERROR_BODY, parse_error_body};
use super::tokens::{Cached, Scope, TokenKey, parse_token_reply, requested_scope};
use super::transport;
use crate::error::{Error, RegistryErrorCode, Result};

/// A response, the deadline its body shares, and the `Authorization` value
/// its request carried.
type Attempted = (Response, tokio::time::Instant, Option<String>);

/// One request as [`Client::send`] makes it.
pub(super) struct Request<'a> {
    pub(super) op: &'a str,
    pub(super) scope: &'a Scope,
    pub(super) method: Method,
    pub(super) url: &'a str,
    pub(super) accept: Option<&'a str>,
    pub(super) range: Option<&'a str>,
    /// More headers (`Content-Type`, `Content-Length` of an upload).
    pub(super) headers: &'a [(reqwest::header::HeaderName, String)],
    /// Makes the body afresh for each attempt (a stream cannot be resent).
    pub(super) body: Option<&'a BodyMaker<'a>>,
    /// Statuses besides 2xx handed back as they are (404 for a HEAD).
    pub(super) pass: &'a [StatusCode],
    /// Whether failures are retried here; an upload session's requests are
    /// not (their caller restarts the whole blob).
    pub(super) retry: bool,
    /// Bytes of body sent: the deadline for the response grows by the time
    /// they take at the speed floor.
    pub(super) body_len: u64,
}

/// Makes a request body; called once per attempt.
pub(super) type BodyMaker<'a> = dyn Fn() -> Result<reqwest::Body> + Send + Sync + 'a;

impl<'a> Request<'a> {
    /// A request with no body, no extra header, retried.
    pub(super) fn new(op: &'a str, scope: &'a Scope, method: Method, url: &'a str) -> Self {
        Request {
            op,
            scope,
            method,
            url,
            accept: None,
            range: None,
            headers: &[],
            body: None,
            pass: &[],
            retry: true,
            body_len: 0,
        }
    }
}

impl Client {
    /// GETs a small document whole (at most `max` bytes), retrying when the
    /// body breaks off or stalls as [`Client::send`] retries failed requests.
    /// Returns the body and its Content-Type.
    pub(super) async fn get_whole(
        &self,
        op: &str,
        scope: &Scope,
        url: &str,
        accept: Option<&str>,
        max: u64,
    ) -> Result<(Vec<u8>, Option<String>)> {
        let mut attempt = 0u32;
        loop {
            let req = Request {
                accept,
                ..Request::new(op, scope, Method::GET, url)
            };
            let (resp, deadline) = self.send(&req).await?;
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

    /// Reads a small body whole: at most `max` bytes, all of it before
    /// `deadline`, however slowly the server drips it.
    pub(super) async fn read_capped(
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
    pub(super) fn deadline_error(&self, op: &str, got: Option<usize>) -> Error {
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

    pub(super) fn network_error(&self, op: &str, e: &reqwest::Error) -> Error {
        Error::Network {
            registry: self.host.clone(),
            operation: op.to_string(),
            message: describe_reqwest(e),
        }
    }

    /// One attempt: the request with its auth, paced by the rate limiter,
    /// its headers within the request deadline. `Err`: a failure not worth
    /// retrying (the auth step failed, a redirect was refused); `Ok(Err)`:
    /// one that is (a network failure, the deadline). With the response
    /// comes the `Authorization` value it was sent with.
    async fn attempt(&self, req: &Request<'_>) -> Result<Result<Attempted>> {
        let auth_header = self.current_auth(req.scope).await?;
        self.ctx.pace_host(&self.host).await;
        let mut r = self.http.request(req.method.clone(), req.url);
        if let Some(a) = req.accept {
            r = r.header(ACCEPT, a);
        }
        if let Some(range) = req.range {
            r = r.header(RANGE, range);
        }
        if let Some(h) = &auth_header {
            r = r.header(AUTHORIZATION, h);
        }
        for (name, value) in req.headers {
            r = r.header(name, value);
        }
        if let Some(make) = req.body {
            r = r.body(make()?);
        }
        tracing::debug!("{} {}", req.method, req.url);
        let deadline =
            tokio::time::Instant::now() + self.options.request_timeout + self.send_time(req);
        match tokio::time::timeout_at(deadline, r.send()).await {
            Ok(Ok(resp)) => Ok(Ok((resp, deadline, auth_header))),
            // A refused redirect is a decision, not a glitch.
            Ok(Err(e)) if e.is_redirect() => Err(self.network_error(req.op, &e)),
            Ok(Err(e)) => Ok(Err(self.network_error(req.op, &e))),
            Err(_) => Ok(Err(self.deadline_error(req.op, None))),
        }
    }

    /// How long sending a request's body may take: its length at the speed
    /// floor (a day without a floor).
    fn send_time(&self, req: &Request<'_>) -> Duration {
        if req.body_len == 0 {
            return Duration::ZERO;
        }
        match req.body_len.checked_div(self.options.min_speed) {
            Some(secs) => Duration::from_secs(secs + 1),
            None => Duration::from_secs(86_400),
        }
    }

    /// Sends a request with auth, answering one auth challenge and retrying
    /// connection errors, timeouts, 429 and 5xx. Returns only successful
    /// responses, each with the deadline its body must meet when it is a
    /// small document: the headers had to come within
    /// [`super::ClientOptions::request_timeout`] of the request, and the
    /// body shares that deadline.
    pub(super) async fn send(&self, req: &Request<'_>) -> Result<(Response, tokio::time::Instant)> {
        let op = req.op;
        let mut attempt = 0u32;
        let mut answered_challenge = false;
        loop {
            let (resp, deadline, sent_auth) = match self.attempt(req).await? {
                Ok(r) => r,
                Err(e) => {
                    attempt += 1;
                    if !req.retry || attempt > self.options.retries {
                        return Err(e);
                    }
                    tracing::warn!("{e}; retrying");
                    let wait = backoff(attempt);
                    self.ctx.retrying(&self.host, op, &e.to_string(), wait);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let status = resp.status();
            if status.is_success() || req.pass.contains(&status) {
                if let Some(wait) = exhausted(resp.headers()) {
                    tracing::info!(
                        "{}: rate limit used up; holding back for {wait:?}",
                        self.host
                    );
                    self.ctx.hold(&self.host, wait);
                }
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
                    let refused = sent_auth.as_deref().and_then(|a| a.strip_prefix("Bearer "));
                    self.answer_challenge(op, req.scope, ch, refused).await?;
                    continue;
                }
            }
            if (status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::REQUEST_TIMEOUT
                || status.is_server_error())
                && req.retry
                && attempt < self.options.retries
            {
                attempt += 1;
                let wait = retry_after(resp.headers()).unwrap_or_else(|| backoff(attempt));
                tracing::warn!("{}: {op}: HTTP {status}; retrying in {wait:?}", self.host);
                if status == StatusCode::TOO_MANY_REQUESTS {
                    // Every request to this registry waits, not only this one.
                    self.ctx.hold(&self.host, wait);
                } else {
                    self.ctx
                        .retrying(&self.host, op, &format!("HTTP {status}"), wait);
                }
                tokio::time::sleep(wait).await;
                continue;
            }
            return Err(self.status_error(op, resp, deadline).await);
        }
    }

    /// The error for an unsuccessful response, with the registry's own
    /// words and codes from its body when they come before `deadline`.
    pub(super) async fn status_error(
        &self,
        op: &str,
        resp: Response,
        deadline: tokio::time::Instant,
    ) -> Error {
        let status = resp.status();
        let body = self
            .read_capped(op, resp, MAX_ERROR_BODY as u64, deadline)
            .await
            .unwrap_or_default();
        let mut message = format!("HTTP {}", status.as_u16());
        if let Some(reason) = status.canonical_reason() {
            message.push(' ');
            message.push_str(reason);
        }
        let parsed = parse_error_body(&body);
        let mut codes = parsed.codes;
        match parsed.detail {
            Some(detail) => {
                message.push_str(": ");
                message.push_str(&self.scrub(detail));
            }
            // A bare 404 still says which kind of thing is missing, in the
            // distribution spec's words.
            None if status == StatusCode::NOT_FOUND && op.starts_with("GET blob") => {
                message.push_str(": BLOB_UNKNOWN: blob unknown to registry");
                codes = vec![RegistryErrorCode::BlobUnknown];
            }
            None if status == StatusCode::NOT_FOUND && op.starts_with("GET manifest") => {
                message.push_str(": MANIFEST_UNKNOWN: manifest unknown");
                codes = vec![RegistryErrorCode::ManifestUnknown];
            }
            None => {}
        }
        if codes.is_empty() {
            codes.extend(status_code(status));
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
            codes,
        }
    }
}

// The auth step: the header a request carries, and answering challenges.
impl Client {
    /// This client's cache key for a request in `scope`.
    pub(super) fn token_key(&self, scope: &Scope) -> TokenKey {
        TokenKey {
            registry: self.base.clone(),
            identity: self.identity.clone(),
            scope: scope.clone(),
        }
    }

    /// The `Authorization` header for a request in `scope`: a cached
    /// token (renewed first when it has expired), else Basic when the
    /// registry asked for it, else none.
    pub(super) async fn current_auth(&self, scope: &Scope) -> Result<Option<String>> {
        let key = self.token_key(scope);
        match self.ctx.tokens.get(&key) {
            Cached::Valid(token) => return Ok(Some(format!("Bearer {token}"))),
            Cached::Expired(challenge) => {
                // Refresh before it is refused rather than after.
                self.answer_challenge("refreshing token", scope, challenge, None)
                    .await?;
                if let Cached::Valid(token) = self.ctx.tokens.get(&key) {
                    return Ok(Some(format!("Bearer {token}")));
                }
            }
            Cached::Missing => {}
        }
        if self.uses_basic() {
            return Ok(self.options.credentials.as_ref().map(|c| c.basic_header()));
        }
        Ok(None)
    }

    /// Answers a `WWW-Authenticate` challenge for a request in `scope`
    /// that carried the bearer token `refused`, if any. A bearer renewal
    /// waits for any other of the same key, and is not needed when that one
    /// left a token other than the one refused.
    pub(super) async fn answer_challenge(
        &self,
        op: &str,
        scope: &Scope,
        challenge: Challenge,
        refused: Option<&str>,
    ) -> Result<()> {
        match &challenge {
            Challenge::Basic => {
                if self.options.credentials.is_none() {
                    return Err(Error::Registry {
                        registry: self.host.clone(),
                        operation: op.to_string(),
                        message: "HTTP 401 Unauthorized (authentication required: give --username/--password)".into(),
                        status: Some(401),
                        codes: vec![RegistryErrorCode::Unauthorized],
                    });
                }
                self.set_basic();
                Ok(())
            }
            Challenge::Bearer {
                realm,
                service,
                scope: theirs,
            } => {
                let key = self.token_key(scope);
                let gate = self.ctx.tokens.gate(&key);
                let _turn = gate.lock().await;
                if let Cached::Valid(token) = self.ctx.tokens.get(&key)
                    && Some(token.as_str()) != refused
                {
                    return Ok(());
                }
                let wanted = requested_scope(&scope.to_scope_string(), theirs.as_deref());
                let extra = scope.extra_scope_string();
                let (token, ttl) = self
                    .fetch_token(op, realm, service.as_deref(), &wanted, extra.as_deref())
                    .await?;
                self.ctx.tokens.insert(key, token, ttl, challenge);
                Ok(())
            }
        }
    }

    /// Whether credentials may go to a token realm: http(s) only, no user
    /// name or password in it, and never plain HTTP to a host the user did
    /// not allow (`--insecure`, `?insecure=true` for the registry itself,
    /// `--insecure-host`). A realm on another host over HTTPS gets them, as
    /// Docker sends them: the registry names its token service.
    pub(super) fn check_realm(&self, url: &url::Url) -> std::result::Result<(), String> {
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

    /// An error about the token exchange, with no response to blame.
    fn token_error(&self, op: &str, message: String) -> Error {
        Error::Registry {
            registry: self.host.clone(),
            operation: op.to_string(),
            message,
            status: None,
            codes: Vec::new(),
        }
    }

    /// The realm URL with `service` and `scope`, after the safety rules.
    fn token_url(
        &self,
        op: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        extra: Option<&str>,
    ) -> Result<url::Url> {
        let mut url = url::Url::parse(realm).map_err(|_| {
            // Up to any query, which could carry something secret.
            self.token_error(
                op,
                format!(
                    "token realm {:?} is not a URL",
                    crate::digest::truncate_for_error(realm.split('?').next().unwrap_or(""))
                ),
            )
        })?;
        self.check_realm(&url)
            .map_err(|m| self.token_error(op, m))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
            // A mount's second scope is a parameter of its own, as the
            // token spec writes several scopes.
            if let Some(extra) = extra {
                q.append_pair("scope", extra);
            }
        }
        Ok(url)
    }

    async fn fetch_token(
        &self,
        op: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        extra: Option<&str>,
    ) -> Result<(String, Duration)> {
        let url = self.token_url(op, realm, service, scope, extra)?;
        let top = format!("GET token for {scope}");
        let body = self.get_token_body(&top, &url).await?;
        parse_token_reply(&body).map_err(|m| self.token_error(&top, m.into()))
    }

    /// GETs the token reply, retrying network failures and 5xx.
    async fn get_token_body(&self, top: &str, url: &url::Url) -> Result<Vec<u8>> {
        let mut attempt = 0;
        loop {
            self.ctx.pace().await;
            let mut req = self.http.get(url.clone());
            if let Some(c) = &self.options.credentials {
                req = req.header(AUTHORIZATION, c.basic_header());
            }
            tracing::debug!("GET {} (token)", transport::redacted(url));
            // Headers and body within one deadline, as for a manifest.
            let deadline = tokio::time::Instant::now() + self.options.request_timeout;
            let failure: Option<Error> = match tokio::time::timeout_at(deadline, req.send()).await {
                Ok(Ok(r)) if r.status().is_server_error() && attempt < self.options.retries => None,
                Ok(Ok(r)) if !r.status().is_success() => {
                    return Err(self.status_error(top, r, deadline).await);
                }
                Ok(Ok(r)) => match self.read_capped(top, r, 1 << 20, deadline).await {
                    Ok(body) => return Ok(body),
                    Err(e @ Error::Network { .. }) => Some(e),
                    Err(e) => return Err(e),
                },
                Ok(Err(e)) if e.is_redirect() => return Err(self.network_error(top, &e)),
                Ok(Err(e)) => Some(self.network_error(top, &e)),
                Err(_) => Some(self.deadline_error(top, None)),
            };
            if let Some(e) = failure {
                if attempt >= self.options.retries {
                    return Err(e);
                }
                tracing::warn!("{e}; retrying");
            }
            attempt += 1;
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
}

/// The code an HTTP status stands for when the body named none.
fn status_code(status: StatusCode) -> Option<RegistryErrorCode> {
    match status {
        StatusCode::UNAUTHORIZED => Some(RegistryErrorCode::Unauthorized),
        StatusCode::FORBIDDEN => Some(RegistryErrorCode::Denied),
        StatusCode::TOO_MANY_REQUESTS => Some(RegistryErrorCode::TooManyRequests),
        _ => None,
    }
}

/// A one-line description of a transport error, with its cause.
pub(super) fn describe_reqwest(e: &reqwest::Error) -> String {
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

pub(super) fn backoff(attempt: u32) -> Duration {
    let base = 250u64.saturating_mul(1 << attempt.min(6));
    let jitter = rand::random::<u64>() % (base / 2 + 1);
    Duration::from_millis(base + jitter)
}

/// How long to hold back when a response says no requests are left in the
/// registry's rate-limit window: `RateLimit-Remaining: 0` (with `;w=...`
/// as Docker Hub sends it) and `RateLimit-Reset` seconds, or the combined
/// `RateLimit: remaining=0, reset=N`; `None` while requests are left or no
/// reset time is given.
fn exhausted(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let number = |v: &str| v.split(';').next()?.trim().parse::<u64>().ok();
    let (remaining, reset) = match get("ratelimit") {
        Some(combined) => {
            let field = |key: &str| {
                combined.split([',', ';']).find_map(|part| {
                    let (k, v) = part.split_once('=')?;
                    (k.trim() == key).then(|| number(v)).flatten()
                })
            };
            (field("remaining"), field("reset"))
        }
        None => (
            get("ratelimit-remaining").and_then(number),
            get("ratelimit-reset").and_then(number),
        ),
    };
    (remaining? == 0).then_some(())?;
    let wait = reset
        .map(Duration::from_secs)
        .or_else(|| retry_after(headers))?;
    Some(wait.min(super::context::MAX_HOLD))
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
    fn an_exhausted_rate_limit_is_read_from_either_header_form() {
        let h = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            exhausted(&h)
        };
        let secs = |n| Some(Duration::from_secs(n));
        assert_eq!(
            h(&[
                ("ratelimit-remaining", "0;w=21600"),
                ("ratelimit-reset", "30")
            ]),
            secs(30)
        );
        assert_eq!(
            h(&[
                ("ratelimit-remaining", "5;w=21600"),
                ("ratelimit-reset", "30")
            ]),
            None
        );
        assert_eq!(
            h(&[("ratelimit", "limit=100, remaining=0, reset=7")]),
            secs(7)
        );
        assert_eq!(h(&[("ratelimit", "limit=100, remaining=3, reset=7")]), None);
        // No reset time: nothing to wait for.
        assert_eq!(h(&[("ratelimit-remaining", "0")]), None);
        assert_eq!(
            h(&[("ratelimit-remaining", "0"), ("retry-after", "4")]),
            secs(4)
        );
        // A lying reset is capped.
        assert_eq!(
            h(&[
                ("ratelimit-remaining", "0"),
                ("ratelimit-reset", "99999999")
            ]),
            Some(super::super::context::MAX_HOLD)
        );
        assert_eq!(
            h(&[("ratelimit-remaining", "x"), ("ratelimit-reset", "3")]),
            None
        );
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
