//! The listener: accepts connections (plain HTTP or TLS), serves each with
//! hyper (HTTP/1.1 and HTTP/2), routes requests to the handlers, checks
//! client credentials, writes the access log, and shuts down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::digest::Digest;
use crate::error::{Error, Result};

use super::error::{ApiError, ApiResult};
use super::route::{self, ManifestRef, Route};
use super::{Body, Proxy, ReqBody, empty, full};

/// How long a client may take to send its request headers, or to finish a
/// TLS handshake, unless [`ServeOptions::header_timeout`] says otherwise.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shutdown waits for requests in progress.
const DRAIN: Duration = Duration::from_secs(10);
/// How often the staging area is swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// How the listener runs.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// TLS (`--tls-cert/--tls-key`); `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long a client may take to send its request headers or finish a
    /// TLS handshake; `None`: 30 s. (Shorter only for tests.)
    pub header_timeout: Option<Duration>,
}

/// Serves `proxy` on `listener` until `shutdown` resolves, then stops
/// accepting, lets requests in progress finish for a few seconds, and
/// returns.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(
        proxy.config.limits.max_connections.max(1),
    ));
    let tls = options.tls.map(tokio_rustls::TlsAcceptor::from);
    let header_timeout = options.header_timeout.unwrap_or(HEADER_TIMEOUT);
    let sweeper = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let p = proxy.clone();
                let _ = tokio::task::spawn_blocking(move || p.staging.sweep()).await;
            }
        })
    };
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off, go on.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("refusing {remote}: too many connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let asked = Arc::new(AtomicBool::new(false));
        let service = {
            let asked = asked.clone();
            hyper::service::service_fn(move |req: Request<Incoming>| {
                asked.store(true, Ordering::Relaxed);
                let proxy = proxy.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&proxy, req, remote).await) }
            })
        };
        let builder = builder(header_timeout);
        match &tls {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = conn => {}
                        _ = no_request_within(header_timeout, &asked) => {}
                    }
                    drop(slot);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls = tokio::time::timeout(header_timeout, acceptor.accept(stream)).await;
                    let Ok(Ok(tls)) = tls else {
                        tracing::debug!("TLS handshake with {remote} failed");
                        return;
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .into_owned();
                    tokio::select! {
                        _ = watcher.watch(conn) => {}
                        _ = no_request_within(header_timeout, &asked) => {}
                    }
                    drop(slot);
                });
            }
        }
    }
    sweeper.abort();
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
    Ok(())
}

/// Resolves when a connection has sent no request within `deadline`:
/// hyper's header deadline does not cover the first bytes, which the
/// HTTP/1-or-2 detection reads, so a client that connects and sends
/// nothing (or one byte) would otherwise hold its connection slot forever.
async fn no_request_within(deadline: Duration, asked: &AtomicBool) {
    tokio::time::sleep(deadline).await;
    if asked.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

/// hyper's connection builder: HTTP/1.1 with a header deadline, and HTTP/2.
fn builder(header_timeout: Duration) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 << 10);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .max_header_list_size(64 << 10);
    b
}

/// One request, answered; logged in the access log.
async fn handle(proxy: &Proxy, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (parts, body) = req.into_parts();
    let body: ReqBody = body.map_err(std::io::Error::other).boxed_unsync();
    let user = authorized(proxy, &parts.headers).await;
    let mut resp = match user {
        Err(e) => e.into_response(),
        Ok(()) => match dispatch(proxy, &parts, body).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        },
    };
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    let status = resp.status().as_u16();
    let size = http_body::Body::size_hint(resp.body()).exact();
    tracing::info!(
        target: "occystrap::access",
        remote = %remote,
        method = %method,
        path = %crate::escape::escape(&path),
        status,
        bytes = size,
        ms = started.elapsed().as_millis() as u64,
        "{method} {} {status}",
        crate::escape::escape(&path)
    );
    resp
}

/// The client's credentials, when the proxy asks for them (a bcrypt runs
/// off the runtime's workers).
async fn authorized(proxy: &Proxy, headers: &HeaderMap) -> ApiResult<()> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(capture) = &proxy.capture {
        return match capture.authorized(value) {
            true => Ok(()),
            false => Err(ApiError::unauthorized("authentication required")),
        };
    }
    let Some(users) = &proxy.config.htpasswd else {
        return Ok(());
    };
    if users.check_async(value).await {
        Ok(())
    } else {
        Err(ApiError::unauthorized("authentication required"))
    }
}

async fn dispatch(
    proxy: &Proxy,
    parts: &http::request::Parts,
    body: ReqBody,
) -> ApiResult<Response<Body>> {
    let Some(route) = route::parse(parts.uri.path())? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "not found",
        ));
    };
    let query = parts.uri.query();
    let method = &parts.method;
    let header = |name: header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok());
    match (route, method) {
        (Route::Base, &Method::GET | &Method::HEAD) => Ok(json(Bytes::from_static(b"{}"))),
        (Route::Manifest { name, reference }, &Method::GET | &Method::HEAD) => {
            let accept = accepted(&parts.headers);
            if let Some(capture) = &proxy.capture {
                return capture.manifest(&name, &reference, method == Method::HEAD);
            }
            super::serve::manifest(proxy, &name, &reference, method == Method::HEAD, &accept).await
        }
        (Route::Manifest { name, reference }, &Method::PUT) => {
            put_manifest(proxy, parts, &name, &reference, body).await
        }
        (Route::Blob { name, digest }, &Method::GET | &Method::HEAD) => {
            super::serve::blob(
                proxy,
                &name,
                &digest,
                method == Method::HEAD,
                header(header::RANGE),
            )
            .await
        }
        (Route::UploadStart { name }, &Method::POST) => {
            start_upload(proxy, &name, query, body).await
        }
        (Route::Upload { name, id }, &Method::GET) => {
            let offset = proxy.staging.offset(&name, &id)?;
            let mut resp = status(StatusCode::NO_CONTENT);
            upload_headers(resp.headers_mut(), &name, &id, offset);
            Ok(resp)
        }
        (Route::Upload { name, id }, &Method::PATCH) => {
            let offset = proxy
                .staging
                .patch(&name, &id, header(header::CONTENT_RANGE), body)
                .await?;
            let mut resp = status(StatusCode::ACCEPTED);
            upload_headers(resp.headers_mut(), &name, &id, offset);
            Ok(resp)
        }
        (Route::Upload { name, id }, &Method::PUT) => {
            let digest = query_digest(query)?
                .ok_or_else(|| ApiError::digest_invalid("the upload's PUT names no digest"))?;
            proxy.staging.put(&name, &id, &digest, body).await?;
            Ok(blob_created(&name, &digest))
        }
        (Route::Upload { name, id }, &Method::DELETE) => {
            proxy.staging.cancel(&name, &id)?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (Route::Tags { .. }, &Method::GET) if proxy.capture.is_some() => {
            Err(ApiError::unsupported("a capture lists no tags"))
        }
        (Route::Tags { name }, &Method::GET) => super::serve::tags(proxy, &name, query).await,
        (Route::Catalog, &Method::GET) => Err(ApiError::unsupported(
            "the proxy does not list repositories",
        )),
        (Route::Manifest { .. } | Route::Blob { .. }, &Method::DELETE) => {
            Err(ApiError::unsupported("deletes are not supported"))
        }
        _ => Err(ApiError::unsupported(format!(
            "{method} is not supported here"
        ))),
    }
}

/// The media types an `Accept` header lists, in order.
fn accepted(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// `PUT /v2/<name>/manifests/<reference>`: the manifest, read under the
/// size limit, goes to the capture or through the push path downstream.
async fn put_manifest(
    proxy: &Proxy,
    parts: &http::request::Parts,
    name: &str,
    reference: &ManifestRef,
    body: ReqBody,
) -> ApiResult<Response<Body>> {
    let limits = &proxy.config.limits;
    let bytes = read_bounded(
        body,
        &parts.headers,
        limits.max_manifest_bytes,
        limits.body_idle,
    )
    .await
    .map_err(|e| match e.status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MANIFEST_INVALID",
            format!(
                "a manifest may be at most {} bytes",
                limits.max_manifest_bytes
            ),
        ),
        _ => e,
    })?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let stored = match &proxy.capture {
        Some(c) => {
            c.put_manifest(proxy, name, reference, content_type, bytes)
                .await?
        }
        None => super::push::put_manifest(proxy, name, reference, content_type, bytes).await?,
    };
    let mut resp = created(&format!("/v2/{name}/manifests/{}", stored.digest));
    set(
        resp.headers_mut(),
        "docker-content-digest",
        &stored.digest.to_string(),
    );
    Ok(resp)
}

/// `POST /v2/<name>/blobs/uploads/`: a mount, a monolithic upload
/// (`?digest=` with the blob as the body), or a new session.
async fn start_upload(
    proxy: &Proxy,
    name: &str,
    query: Option<&str>,
    body: ReqBody,
) -> ApiResult<Response<Body>> {
    let pairs = query_pairs(query);
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    if let (Some(mount), Some(from)) = (get("mount"), get("from")) {
        let digest = mount
            .parse::<Digest>()
            .map_err(|e| ApiError::digest_invalid(e.to_string()))?;
        let from = route::name_of(from)?;
        if mounted(proxy, name, &digest, &from).await {
            return Ok(blob_created(name, &digest));
        }
        // Declined: the spec's answer is a new session for the client to
        // upload into.
    }
    let id = proxy.staging.start(name)?;
    if let Some(digest) = query_digest(query)? {
        proxy.staging.put(name, &id, &digest, body).await?;
        return Ok(blob_created(name, &digest));
    }
    let mut resp = status(StatusCode::ACCEPTED);
    upload_headers(resp.headers_mut(), name, &id, 0);
    Ok(resp)
}

/// Whether `digest` is now available to `name`: staged already, present
/// downstream in `name`, or mounted there from `from`.
async fn mounted(proxy: &Proxy, name: &str, digest: &Digest, from: &str) -> bool {
    if proxy.staging.blob_size(digest).is_some() {
        return true;
    }
    if proxy.capture.is_some() {
        return false;
    }
    let downstream = &proxy.config.downstream;
    let repo = downstream.repo(name);
    if let Ok(Some(_)) = repo.blob_exists(digest).await {
        return true;
    }
    matches!(
        repo.mount_blob(digest, &downstream.name(from)).await,
        Ok(true)
    )
}

/// Reads a whole request body of at most `max` bytes; a body that stalls
/// for `idle` is cut off.
pub async fn read_bounded(
    mut body: ReqBody,
    headers: &HeaderMap,
    max: usize,
    idle: Duration,
) -> ApiResult<Bytes> {
    let too_large = || ApiError::too_large(format!("the body may be at most {max} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(max as u64) as usize);
    while let Some(data) = super::next_data(&mut body, idle).await? {
        if buf.len() + data.len() > max {
            return Err(too_large());
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// `(key, value)` pairs of a query string, percent-decoded.
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The `digest=` of a query string, parsed.
fn query_digest(query: Option<&str>) -> ApiResult<Option<Digest>> {
    query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == "digest")
        .map(|(_, v)| {
            v.parse::<Digest>()
                .map_err(|e| ApiError::digest_invalid(e.to_string()))
        })
        .transpose()
}

fn status(code: StatusCode) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = code;
    resp
}

fn json(bytes: Bytes) -> Response<Body> {
    let mut resp = Response::new(full(bytes));
    set(resp.headers_mut(), "content-type", "application/json");
    resp
}

fn created(location: &str) -> Response<Body> {
    let mut resp = status(StatusCode::CREATED);
    set(resp.headers_mut(), "location", location);
    resp
}

fn blob_created(name: &str, digest: &Digest) -> Response<Body> {
    let mut resp = created(&format!("/v2/{name}/blobs/{digest}"));
    set(
        resp.headers_mut(),
        "docker-content-digest",
        &digest.to_string(),
    );
    resp
}

fn upload_headers(h: &mut HeaderMap, name: &str, id: &str, offset: u64) {
    set(h, "location", &format!("/v2/{name}/blobs/uploads/{id}"));
    set(h, "docker-upload-uuid", id);
    // The spec's inclusive range; `0-0` for a session with nothing yet.
    set(h, "range", &format!("0-{}", offset.saturating_sub(1)));
    set(h, "content-length", "0");
}

/// Sets a header whose value we made (ASCII; names and digests are
/// validated before they get here).
fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

impl From<Error> for Box<ApiError> {
    fn from(e: Error) -> Self {
        Box::new(e.into())
    }
}

/// A digest reference's display for messages.
pub fn describe(name: &str, reference: &ManifestRef) -> String {
    match reference {
        ManifestRef::Tag(t) => format!("{name}:{t}"),
        ManifestRef::Digest(d) => format!("{name}@{d}"),
    }
}
