//! A small registry on loopback that speaks the bearer-token flow.
//!
//! It serves one image (`team/app:v1`) that it builds in memory, issues
//! tokens from its own `/token` endpoint, and records every request so tests
//! can check how a client used it. It is a handler on the test server
//! (`support/server.rs`), over HTTP or HTTPS; everything stops when the
//! [`MockRegistry`] is dropped.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use hyper::header::{self, HeaderValue};
use sha2::{Digest as _, Sha256};

use crate::support::images::Compression;
use crate::support::layer_tar::TarBuilder;
pub use crate::support::server::Tls;
use crate::support::server::{self, Handler, Resp, Server, lock};

/// The repository the mock serves.
pub const REPOSITORY: &str = "team/app";
/// The one tag it knows.
pub const TAG: &str = "v1";
/// The `service` parameter of every challenge.
pub const SERVICE: &str = "mock-registry";
/// Media type of the manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of the config blob.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.docker.container.image.v1+json";
/// Media type of the layer blob.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// How the token endpoint words its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenForm {
    /// `{"token": "..."}`
    Token,
    /// `{"access_token": "...", "expires_in": 300}`
    AccessToken,
}

/// How the `WWW-Authenticate` challenge is written. Every style is valid
/// RFC 7235 syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeStyle {
    /// `Bearer realm="…",service="…",scope="…"`, as most registries write it.
    Standard,
    /// Scope first, realm last: `Bearer scope="…",service="…",realm="…"`.
    Reordered,
    /// Lower-case scheme, spaces after commas, an extra `error` parameter
    /// first, `service` as an unquoted token, realm last:
    /// `bearer error="insufficient_scope", service=mock-registry, scope="…", realm="…"`.
    Relaxed,
}

/// What the mock does.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Reply form of the token endpoint.
    pub token_form: TokenForm,
    /// Challenge wording.
    pub challenge: ChallengeStyle,
    /// When set, the token endpoint wants HTTP Basic with these credentials.
    pub basic: Option<(String, String)>,
    /// Tokens are issued, but every manifest and blob request gets
    /// 403 DENIED.
    pub deny: bool,
    /// When set, a token opens this many manifest/blob requests and is
    /// refused (401 with a fresh challenge) after that, as an expired token
    /// is in a long pull.
    pub token_uses: Option<usize>,
    /// Error messages echo what the client sent: the `Authorization`
    /// header, and the decoded Basic credentials at the token endpoint.
    pub echo_authorization: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            token_form: TokenForm::Token,
            challenge: ChallengeStyle::Standard,
            basic: None,
            deny: false,
            token_uses: None,
            echo_authorization: false,
        }
    }
}

/// The image the mock serves, with everything a test wants to compare.
#[derive(Clone, Debug)]
pub struct MockImage {
    /// The uncompressed layer tar.
    pub layer_tar: Vec<u8>,
    /// The gzip layer blob as served.
    pub layer_gz: Vec<u8>,
    /// `sha256:` of `layer_tar`.
    pub diff_id: String,
    /// `sha256:` of `layer_gz`.
    pub layer_digest: String,
    /// The config blob as served.
    pub config: Vec<u8>,
    /// `sha256:` of `config`.
    pub config_digest: String,
    /// The manifest as served.
    pub manifest: Vec<u8>,
    /// `sha256:` of `manifest`.
    pub manifest_digest: String,
    /// Files in the layer (path, contents), for tests that look inside.
    pub files: Vec<(String, Vec<u8>)>,
}

/// One request the mock saw.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string (empty when none).
    pub query: String,
    /// The `Authorization` header, if one was sent.
    pub authorization: Option<String>,
    /// Status the mock answered with.
    pub status: u16,
    /// `scheme://addr` of the listener that took it.
    pub listener: String,
}

impl RequestRecord {
    /// Whether an `Authorization` header was sent.
    pub fn had_authorization(&self) -> bool {
        self.authorization.is_some()
    }

    /// The bearer token sent, if the header was `Bearer <token>`.
    pub fn bearer(&self) -> Option<&str> {
        let h = self.authorization.as_deref()?;
        let (scheme, rest) = h.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
    }
}

struct State {
    config: MockConfig,
    image: MockImage,
    base_url: String,
    token_requests: AtomicUsize,
    next_token: AtomicUsize,
    /// token -> the scopes it grants (`repository:NAME:ACTIONS`) and how
    /// many repository requests it has opened.
    tokens: Mutex<HashMap<String, (HashSet<String>, usize)>>,
    log: Mutex<Vec<RequestRecord>>,
    /// The realm challenges name (default: `{base_url}/token`).
    realm: Mutex<Option<String>>,
    /// When set, layer blob GETs are answered with a 307 to
    /// `{this}/redirected/{digest}`, which any listener serves without auth.
    blob_redirect: Mutex<Option<String>>,
}

/// A running mock registry. Dropping it stops every listener and every
/// connection.
pub struct MockRegistry {
    addr: SocketAddr,
    state: Arc<State>,
    server: Server,
}

impl MockRegistry {
    /// Starts a mock with the default configuration.
    pub fn start() -> MockRegistry {
        MockRegistry::with_config(MockConfig::default())
    }

    /// Starts a mock on 127.0.0.1 with an ephemeral port.
    pub fn with_config(config: MockConfig) -> MockRegistry {
        MockRegistry::start_on(config, None)
    }

    /// Starts a mock that speaks HTTPS on 127.0.0.1 with an ephemeral port.
    pub fn with_tls(config: MockConfig, tls: Tls) -> MockRegistry {
        MockRegistry::start_on(config, Some(tls))
    }

    fn start_on(config: MockConfig, tls: Option<Tls>) -> MockRegistry {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = Arc::new(State {
            config,
            image: build_image(),
            base_url: format!("{scheme}://{addr}"),
            token_requests: AtomicUsize::new(0),
            next_token: AtomicUsize::new(1),
            tokens: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            realm: Mutex::new(None),
            blob_redirect: Mutex::new(None),
        });
        let mock = MockRegistry {
            addr,
            state,
            server: Server::new("bearer-mock"),
        };
        mock.server.listen_on(listener, tls, mock.handler());
        mock
    }

    fn handler(&self) -> Handler {
        let state = Arc::clone(&self.state);
        Arc::new(move |req, conn| {
            let state = Arc::clone(&state);
            Box::pin(async move { serve(req, &state, &conn.listener) })
        })
    }

    /// Serves the same registry (same tokens, same log) on `ip` too, on an
    /// ephemeral port, over TLS when `tls` is given. Returns the new
    /// listener's `scheme://ip:port`.
    pub fn listen(&mut self, ip: &str, tls: Option<Tls>) -> String {
        self.server.listen(ip, tls, self.handler()).1
    }

    /// Names `realm` in every challenge from now on.
    pub fn set_realm(&self, realm: &str) {
        *lock(&self.state.realm) = Some(realm.to_string());
    }

    /// Redirects layer blob GETs to `{base}/redirected/{digest}` from now on.
    pub fn set_blob_redirect(&self, base: &str) {
        *lock(&self.state.blob_redirect) = Some(base.to_string());
    }

    /// Requests that reached the listener `scheme://addr`.
    pub fn requests_at(&self, listener: &str) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| r.listener == listener)
            .collect()
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT` (`https://` over TLS)
    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }

    /// `registry://127.0.0.1:PORT/team/app:TAG`
    pub fn image_uri(&self, tag: &str) -> String {
        format!("registry://{}/{REPOSITORY}:{tag}", self.host())
    }

    /// The image served.
    pub fn image(&self) -> &MockImage {
        &self.state.image
    }

    /// How many requests reached `/token`.
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.state.log).clone()
    }

    /// The tokens issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.state.tokens).keys().cloned().collect()
    }

    /// The log as text, for assertion messages.
    pub fn describe_requests(&self) -> String {
        let mut out = String::new();
        for r in self.requests() {
            let q = if r.query.is_empty() {
                String::new()
            } else {
                format!("?{}", r.query)
            };
            let auth = match &r.authorization {
                None => "no auth".to_string(),
                Some(a) => match a.split_once(' ') {
                    Some((scheme, _)) => format!("auth {scheme}"),
                    None => "auth ?".to_string(),
                },
            };
            out.push_str(&format!(
                "  {} {} {}{} [{}] -> {}\n",
                r.listener, r.method, r.path, q, auth, r.status
            ));
        }
        out
    }
}

// ---------------------------------------------------------------------------
// The image
// ---------------------------------------------------------------------------

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn build_image() -> MockImage {
    let files: Vec<(String, Vec<u8>, u32)> = vec![
        (
            "etc/motd".to_string(),
            b"hello from the bearer mock registry\n".to_vec(),
            0o644,
        ),
        (
            "app/run.sh".to_string(),
            b"#!/bin/sh\necho running team/app v1\n".to_vec(),
            0o755,
        ),
    ];
    let mut tar = TarBuilder::new().dir("app/", 0o755).dir("etc/", 0o755);
    for (path, data, mode) in &files {
        tar = tar.file(path, *mode, data);
    }
    let layer_tar = tar.finish();
    let layer_gz = Compression::Gzip.compress(&layer_tar);

    let diff_id = sha256_digest(&layer_tar);
    let layer_digest = sha256_digest(&layer_gz);

    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/app/run.sh"],
            "WorkingDir": "/app"
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": [diff_id]
        },
        "history": [
            {"created": "2023-11-14T22:13:20Z", "created_by": "mock-registry: add /etc/motd /app/run.sh"}
        ]
    }))
    .expect("config json");
    let config_digest = sha256_digest(&config);

    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "size": config.len(),
            "digest": config_digest
        },
        "layers": [
            {
                "mediaType": LAYER_MEDIA_TYPE,
                "size": layer_gz.len(),
                "digest": layer_digest
            }
        ]
    }))
    .expect("manifest json");
    let manifest_digest = sha256_digest(&manifest);

    MockImage {
        layer_tar,
        layer_gz,
        diff_id,
        layer_digest,
        config,
        config_digest,
        manifest,
        manifest_digest,
        files: files.into_iter().map(|(p, d, _)| (p, d)).collect(),
    }
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    fn json(self, body: &serde_json::Value) -> Response {
        let mut r = self.header("Content-Type", "application/json; charset=utf-8");
        r.body = serde_json::to_vec(body).expect("json body");
        r
    }

    fn bytes(self, content_type: &str, body: &[u8]) -> Response {
        let mut r = self.header("Content-Type", content_type);
        r.body = body.to_vec();
        r
    }

    fn registry_error(status: u16, code: &str, message: &str) -> Response {
        Response::new(status).json(&serde_json::json!({
            "errors": [{"code": code, "message": message}]
        }))
    }
}

impl Request {
    fn from_hyper(req: &hyper::Request<hyper::body::Incoming>) -> Request {
        Request {
            method: req.method().to_string(),
            target: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        }
    }
}

impl Response {
    /// As hyper's response, with an explicit Content-Length (HEAD answers
    /// carry the length of the body they leave out).
    fn into_hyper(self, head_only: bool) -> Resp {
        let mut resp = hyper::Response::builder().status(self.status);
        for (n, v) in &self.headers {
            resp = resp.header(n, v);
        }
        let len = self.body.len();
        let body = if head_only {
            server::empty()
        } else {
            server::full(self.body)
        };
        let mut resp = resp
            .header("Docker-Distribution-API-Version", "registry/2.0")
            .body(body)
            .expect("mock response");
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        resp
    }
}

fn serve(req: hyper::Request<hyper::body::Incoming>, state: &State, listener: &str) -> Resp {
    let req = Request::from_hyper(&req);
    let res = handle(&req, state);
    let (path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (req.target.clone(), String::new()),
    };
    lock(&state.log).push(RequestRecord {
        method: req.method.clone(),
        path,
        query,
        authorization: req.header("Authorization").map(str::to_string),
        status: res.status,
        listener: listener.to_string(),
    });
    res.into_hyper(req.method == "HEAD")
}

// ---------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------

fn challenge(state: &State, scope: Option<&str>) -> String {
    let realm = lock(&state.realm)
        .clone()
        .unwrap_or_else(|| format!("{}/token", state.base_url));
    match state.config.challenge {
        ChallengeStyle::Standard => match scope {
            Some(s) => format!(r#"Bearer realm="{realm}",service="{SERVICE}",scope="{s}""#),
            None => format!(r#"Bearer realm="{realm}",service="{SERVICE}""#),
        },
        ChallengeStyle::Reordered => match scope {
            Some(s) => format!(r#"Bearer scope="{s}",service="{SERVICE}",realm="{realm}""#),
            None => format!(r#"Bearer service="{SERVICE}",realm="{realm}""#),
        },
        ChallengeStyle::Relaxed => match scope {
            Some(s) => format!(
                r#"bearer error="insufficient_scope", service={SERVICE}, scope="{s}",  realm="{realm}""#
            ),
            None => format!(r#"bearer service={SERVICE},  realm="{realm}""#),
        },
    }
}

fn unauthorized(state: &State, scope: Option<&str>) -> Response {
    Response::registry_error(401, "UNAUTHORIZED", "authentication required")
        .header("WWW-Authenticate", challenge(state, scope))
}

/// The scopes the request's bearer token grants, if it carries one we issued
/// that has not run out. `count_use` counts the request against the token's
/// allowance.
fn granted_scopes(req: &Request, state: &State, count_use: bool) -> Option<HashSet<String>> {
    let h = req.header("Authorization")?;
    let (scheme, token) = h.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut tokens = lock(&state.tokens);
    let (scopes, uses) = tokens.get_mut(token.trim())?;
    if count_use {
        *uses += 1;
        if state.config.token_uses.is_some_and(|limit| *uses > limit) {
            return None;
        }
    }
    Some(scopes.clone())
}

fn grants_pull(scopes: &HashSet<String>, repository: &str) -> bool {
    scopes.iter().any(|s| {
        let mut it = s.splitn(3, ':');
        matches!(
            (it.next(), it.next(), it.next()),
            (Some("repository"), Some(name), Some(actions))
                if name == repository && actions.split(',').any(|a| a == "pull" || a == "*")
        )
    })
}

/// `NAME/manifests/REF` or `NAME/blobs/DIGEST` (NAME may contain slashes)
/// as (name, kind, reference).
fn split_v2_path(rest: &str) -> Option<(&str, &str, &str)> {
    if let Some(i) = rest.rfind("/manifests/") {
        Some((&rest[..i], "manifests", &rest[i + "/manifests/".len()..]))
    } else if let Some(i) = rest.rfind("/blobs/") {
        Some((&rest[..i], "blobs", &rest[i + "/blobs/".len()..]))
    } else {
        None
    }
}

/// The 403 of a registry that denies the pull.
fn denied(req: &Request, state: &State) -> Response {
    let message = if state.config.echo_authorization {
        format!(
            "access denied for {}",
            req.header("Authorization").unwrap_or("")
        )
    } else {
        "requested access to the resource is denied".to_string()
    };
    Response::registry_error(403, "DENIED", &message)
}

/// GET or HEAD of the image's manifest, by tag or digest.
fn serve_manifest(img: &MockImage, reference: &str) -> Response {
    if reference == TAG || reference == img.manifest_digest {
        Response::new(200)
            .bytes(MANIFEST_MEDIA_TYPE, &img.manifest)
            .header("Docker-Content-Digest", img.manifest_digest.clone())
            .header("Etag", format!("\"{}\"", img.manifest_digest))
    } else {
        Response::new(404).json(&serde_json::json!({
            "errors": [{
                "code": "MANIFEST_UNKNOWN",
                "message": "manifest unknown",
                "detail": {"Tag": reference}
            }]
        }))
    }
}

/// GET or HEAD of a blob, or a redirect to where it lives when one is set.
fn serve_blob(state: &State, reference: &str) -> Response {
    let img = &state.image;
    if reference == img.layer_digest
        && let Some(base) = lock(&state.blob_redirect).clone()
    {
        return Response::new(307).header("Location", format!("{base}/redirected/{reference}"));
    }
    let blob = if reference == img.config_digest {
        Some(&img.config)
    } else if reference == img.layer_digest {
        Some(&img.layer_gz)
    } else {
        None
    };
    match blob {
        Some(b) => Response::new(200)
            .bytes("application/octet-stream", b)
            .header("Docker-Content-Digest", reference.to_string()),
        None => Response::registry_error(404, "BLOB_UNKNOWN", "blob unknown to registry"),
    }
}

fn handle(req: &Request, state: &State) -> Response {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    if path == "/token" {
        return if req.method == "GET" {
            token_endpoint(req, query, state)
        } else {
            Response::registry_error(405, "UNSUPPORTED", "method not allowed")
        };
    }
    if req.method != "GET" && req.method != "HEAD" {
        return Response::registry_error(405, "UNSUPPORTED", "the operation is unsupported");
    }
    // Where redirected blobs live, as on a CDN: no auth.
    if let Some(digest) = path.strip_prefix("/redirected/") {
        let img = &state.image;
        return if digest == img.layer_digest {
            Response::new(200).bytes("application/octet-stream", &img.layer_gz)
        } else {
            Response::registry_error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        };
    }
    if path == "/v2/" || path == "/v2" {
        return match granted_scopes(req, state, false) {
            Some(_) => Response::new(200).json(&serde_json::json!({})),
            None => unauthorized(state, None),
        };
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Response::registry_error(404, "NOT_FOUND", "no such endpoint");
    };
    // NAME/manifests/REF or NAME/blobs/DIGEST; NAME may contain slashes.
    let Some((name, kind, reference)) = split_v2_path(rest) else {
        return Response::registry_error(404, "NOT_FOUND", "no such endpoint");
    };
    let scope = format!("repository:{name}:pull");
    match granted_scopes(req, state, true) {
        Some(scopes) if grants_pull(&scopes, name) => {}
        // Wrong, unknown or insufficient token: challenge again, like
        // distribution does.
        _ => return unauthorized(state, Some(&scope)),
    }
    if state.config.deny {
        return denied(req, state);
    }
    if name != REPOSITORY {
        return Response::registry_error(
            404,
            "NAME_UNKNOWN",
            "repository name not known to registry",
        );
    }
    match kind {
        "manifests" => serve_manifest(&state.image, reference),
        _ => serve_blob(state, reference),
    }
}

fn token_endpoint(req: &Request, query: &str, state: &State) -> Response {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let mut service = None;
    let mut scopes = HashSet::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "service" => service = Some(v.into_owned()),
            // A scope parameter may hold several space-separated scopes.
            "scope" => scopes.extend(v.split(' ').filter(|s| !s.is_empty()).map(str::to_string)),
            _ => {}
        }
    }
    if let Some((user, pass)) = &state.config.basic {
        let ok = req
            .header("Authorization")
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .and_then(|(_, b64)| {
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .ok()
            })
            .and_then(|raw| String::from_utf8(raw).ok())
            .is_some_and(|creds| creds == format!("{user}:{pass}"));
        if !ok {
            let message = if state.config.echo_authorization {
                let header = req.header("Authorization").unwrap_or("");
                let decoded = header
                    .split_once(' ')
                    .and_then(|(_, b)| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .map(|raw| String::from_utf8_lossy(&raw).into_owned())
                    .unwrap_or_default();
                format!("incorrect username or password: {header} ({decoded})")
            } else {
                "incorrect username or password".to_string()
            };
            return Response::new(401)
                .json(&serde_json::json!({
                    "details": "incorrect username or password",
                    "errors": [{"code": "UNAUTHORIZED", "message": message}]
                }))
                .header(
                    "WWW-Authenticate",
                    format!(r#"Basic realm="{SERVICE} token service""#),
                );
        }
    }
    if service.as_deref() != Some(SERVICE) {
        return Response::new(400).json(&serde_json::json!({
            "errors": [{"code": "UNSUPPORTED", "message": format!("service must be {SERVICE:?}")}]
        }));
    }
    let n = state.next_token.fetch_add(1, Ordering::SeqCst);
    let token = format!(
        "mock-token-{n}-{:08x}",
        std::process::id().wrapping_mul(2_654_435_761)
    );
    lock(&state.tokens).insert(token.clone(), (scopes, 0));
    let body = match state.config.token_form {
        TokenForm::Token => serde_json::json!({ "token": token }),
        TokenForm::AccessToken => serde_json::json!({
            "access_token": token,
            "expires_in": 300,
            "issued_at": "2023-11-14T22:13:20Z"
        }),
    };
    Response::new(200).json(&body)
}
