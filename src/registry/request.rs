//! Sending requests: auth, retries with backoff and `Retry-After`, the
//! per-attempt deadline, capped bodies, and the errors of failed requests.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};

use super::auth;
use super::client::Client;
use super::errors::{MAX_ERROR_BODY, parse_error_body};
use super::tokens::Scope;
use crate::error::{Error, RegistryErrorCode, Result};

/// One request as [`Client::send`] makes it.
pub(super) struct Request<'a> {
    pub(super) op: &'a str,
    pub(super) scope: &'a Scope,
    pub(super) method: Method,
    pub(super) url: &'a str,
    pub(super) accept: Option<&'a str>,
    pub(super) range: Option<&'a str>,
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
                op,
                scope,
                method: Method::GET,
                url,
                accept,
                range: None,
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
    /// one that is (a network failure, the deadline).
    async fn attempt(&self, req: &Request<'_>) -> Result<Result<(Response, tokio::time::Instant)>> {
        let auth_header = self.current_auth(req.scope).await?;
        self.ctx.pace().await;
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
        tracing::debug!("{} {}", req.method, req.url);
        let deadline = tokio::time::Instant::now() + self.options.request_timeout;
        match tokio::time::timeout_at(deadline, r.send()).await {
            Ok(Ok(resp)) => Ok(Ok((resp, deadline))),
            // A refused redirect is a decision, not a glitch.
            Ok(Err(e)) if e.is_redirect() => Err(self.network_error(req.op, &e)),
            Ok(Err(e)) => Ok(Err(self.network_error(req.op, &e))),
            Err(_) => Ok(Err(self.deadline_error(req.op, None))),
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
            let (resp, deadline) = match self.attempt(req).await? {
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
                    self.answer_challenge(op, req.scope, ch).await?;
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
