//! A fault-injecting HTTP/1.1 proxy on loopback, in front of the real test
//! registry, as a handler on the test server (`server.rs`). Tests tell it
//! what to break (drop a blob body after N bytes, answer 429 or 503, stall
//! after the headers, corrupt a byte, ignore `Range`, serve a body of their
//! own, require bearer tokens that expire after K uses, throttle bodies)
//! and read back every request it saw (method, path, `Range`, status,
//! bytes sent, when).
//!
//! Keep-alive towards the client; each forwarded request opens its own
//! connection to the registry. Bodies go out through one pump
//! ([`pump`]) that applies the body faults. Everything stops when the
//! [`Proxy`] is dropped.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Version};
use hyper_util::rt::TokioIo;

use super::server::{self, Body, ConnInfo, Resp, RespFuture, Server, lock};

/// How long a stalled response is held open at most.
const MAX_STALL: Duration = Duration::from_secs(120);
/// Body copy granularity (and throttling step).
const CHUNK: usize = 16 << 10;

/// What to do to a matching request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Forward, but close the connection after this many body bytes (the
    /// headers promise the whole body).
    CutAfter(u64),
    /// Forward without a Content-Length (the body ends when the connection
    /// closes) and close after this many body bytes: a clean-looking end.
    CutAfterNoLength(u64),
    /// Forward, but close the connection after this fraction of the body:
    /// a truncated body with a correct Content-Length.
    CutFraction(f64),
    /// Answer this status without asking the registry, with a registry-style
    /// JSON error body and `Retry-After` when given.
    Status {
        /// HTTP status.
        status: u16,
        /// `Retry-After` value, verbatim.
        retry_after: Option<String>,
        /// Error code for the JSON body (`BLOB_UNKNOWN`); none: empty body.
        code: Option<String>,
    },
    /// Forward the response's status and headers, then send nothing more
    /// (holding the connection open until the client gives up).
    Stall,
    /// Forward, flipping the body byte at this offset.
    Corrupt(u64),
    /// Forward without the client's `Range` header: the registry answers
    /// 200 with the whole body.
    IgnoreRange,
    /// Forward the status and headers at once, then the body `bytes` at a
    /// time, one piece every `every`: a slow drip that never stalls long
    /// enough for an idle timeout. Applies to the proxy's own `/token`
    /// answers too.
    Drip {
        /// Bytes per piece.
        bytes: usize,
        /// Pause after each piece.
        every: Duration,
    },
    /// Like [`Fault::Drip`], but the status line and headers drip too.
    DripAll {
        /// Bytes per piece.
        bytes: usize,
        /// Pause after each piece.
        every: Duration,
    },
    /// Read the request and never answer: no status line, until the client
    /// hangs up.
    Silent,
    /// Answer this status at once with a long registry-style JSON error
    /// body, dripped one byte every `every`.
    DripError {
        /// HTTP status.
        status: u16,
        /// Pause after each byte.
        every: Duration,
    },
    /// Answer 200 with this body instead of asking the registry.
    Serve {
        /// Content-Type header.
        content_type: String,
        /// The body.
        body: Vec<u8>,
        /// Send a Content-Length; without it the body ends when the
        /// connection closes.
        content_length: bool,
    },
}

impl Fault {
    /// A bare status (no body, no Retry-After).
    pub fn status(status: u16) -> Fault {
        Fault::Status {
            status,
            retry_after: None,
            code: None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Fault::CutAfter(_) => "cut",
            Fault::CutAfterNoLength(_) => "cut-no-length",
            Fault::CutFraction(_) => "truncate",
            Fault::Status { .. } => "status",
            Fault::Stall => "stall",
            Fault::Corrupt(_) => "corrupt",
            Fault::IgnoreRange => "ignore-range",
            Fault::Serve { .. } => "serve",
            Fault::Drip { .. } => "drip",
            Fault::DripAll { .. } => "drip-all",
            Fault::Silent => "silent",
            Fault::DripError { .. } => "drip-error",
        }
    }

    /// Piece size and pause for the body, and whether the head drips too.
    fn drip(&self) -> Option<(usize, Duration, bool)> {
        match self {
            Fault::Drip { bytes, every } => Some(((*bytes).max(1), *every, false)),
            Fault::DripAll { bytes, every } => Some(((*bytes).max(1), *every, true)),
            Fault::DripError { every, .. } => Some((1, *every, false)),
            _ => None,
        }
    }
}

/// A fault and which requests it applies to.
#[derive(Clone, Debug)]
struct Rule {
    method: Option<String>,
    /// Only requests for a closed range (`Range: bytes=A-B`): the parts of
    /// a split download, not its head or a resume (`bytes=A-`).
    parts_only: bool,
    path_contains: String,
    remaining: Option<usize>,
    fault: Fault,
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Record {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The query (`mount=...&from=...`), if any.
    pub query: Option<String>,
    /// The client's `Range` header.
    pub range: Option<String>,
    /// Status sent to the client (0: none yet, or the answer failed).
    pub status: u16,
    /// Body bytes sent to the client.
    pub body_sent: u64,
    /// The fault applied, if any.
    pub fault: Option<&'static str>,
    /// When the request arrived.
    pub at: Instant,
}

struct BearerState {
    uses_per_token: usize,
    /// Token -> uses left.
    tokens: Vec<(String, usize)>,
    issued: usize,
}

/// A test's own answer to a request, instead of the registry's: status,
/// content type and body; `None` forwards it (see [`Proxy::answer_with`]).
pub type Answerer =
    Arc<dyn Fn(&Method, &hyper::Uri, &HeaderMap) -> Option<(u16, String, Vec<u8>)> + Send + Sync>;

struct State {
    upstream: String,
    answerer: Mutex<Option<Answerer>>,
    me: String,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Record>>,
    bearer: Mutex<Option<BearerState>>,
    /// Body bytes per second, 0 for unlimited.
    throttle: AtomicUsize,
    /// Requests being answered right now.
    in_flight: AtomicUsize,
}

/// A running proxy. Dropping it closes every connection.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    _server: Server,
}

impl Proxy {
    /// Starts a proxy for the registry at `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream: upstream.to_string(),
            answerer: Mutex::new(None),
            me: addr.to_string(),
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            bearer: Mutex::new(None),
            throttle: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
        });
        let server = Server::new("fault-proxy");
        let st = state.clone();
        let handler: server::Handler = Arc::new(move |req, conn| handle(st.clone(), req, conn));
        server.listen_on(listener, None, handler);
        Proxy {
            addr,
            state,
            _server: server,
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `registry://127.0.0.1:PORT/REPO:TAG` through the proxy.
    pub fn uri(&self, repo: &str, tag: &str) -> String {
        format!("registry://{}/{repo}:{tag}", self.host())
    }

    /// Applies `fault` to the next `times` requests whose path contains
    /// `path_contains` (any method).
    pub fn times(&self, times: usize, path_contains: &str, fault: Fault) {
        self.rule(None, false, path_contains, Some(times), fault);
    }

    /// Applies `fault` to the next request whose path contains `path_contains`.
    pub fn once(&self, path_contains: &str, fault: Fault) {
        self.times(1, path_contains, fault);
    }

    /// Applies `fault` to every request whose path contains `path_contains`.
    pub fn always(&self, path_contains: &str, fault: Fault) {
        self.rule(None, false, path_contains, None, fault);
    }

    /// Applies `fault` to the next `times` `method` requests whose path
    /// contains `path_contains` (`None`: every one).
    pub fn method(&self, method: &str, times: Option<usize>, path_contains: &str, fault: Fault) {
        self.rule(Some(method), false, path_contains, times, fault);
    }

    /// Applies `fault` to the next `times` requests (`None`: every one)
    /// for a closed range (`Range: bytes=A-B`) whose path contains
    /// `path_contains`: the parts of a split download.
    pub fn parts(&self, times: Option<usize>, path_contains: &str, fault: Fault) {
        self.rule(None, true, path_contains, times, fault);
    }

    fn rule(
        &self,
        method: Option<&str>,
        parts_only: bool,
        path: &str,
        remaining: Option<usize>,
        fault: Fault,
    ) {
        lock(&self.state.rules).push(Rule {
            parts_only,
            method: method.map(str::to_string),
            path_contains: path.to_string(),
            remaining,
            fault,
        });
    }

    /// Answers requests with `f` where it gives an answer (an API the
    /// registry does not have, served next to it); they are logged as
    /// others are.
    pub fn answer_with(&self, f: Answerer) {
        *lock(&self.state.answerer) = Some(f);
    }

    /// Limits every response body to `bytes_per_sec` (0: no limit).
    pub fn throttle(&self, bytes_per_sec: usize) {
        self.state.throttle.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Requires `Authorization: Bearer` on every `/v2/` request, with tokens
    /// from the proxy's own `/token` realm that stop working after
    /// `uses_per_token` requests (401 with a fresh challenge), as tokens
    /// expire in a long pull.
    pub fn require_bearer(&self, uses_per_token: usize) {
        *lock(&self.state.bearer) = Some(BearerState {
            uses_per_token,
            tokens: Vec::new(),
            issued: 0,
        });
    }

    /// Every request so far, once the answers in progress are done (the
    /// client may exit before the proxy has noted how an answer ended);
    /// waits 3 s at most.
    pub fn requests(&self) -> Vec<Record> {
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.state.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        self.requests_now()
    }

    /// Every request so far, in flight or not (status 0 while in flight).
    pub fn requests_now(&self) -> Vec<Record> {
        lock(&self.state.log).clone()
    }

    /// Requests whose path contains `part` (see [`Proxy::requests`]).
    pub fn requests_to(&self, part: &str) -> Vec<Record> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.contains(part))
            .collect()
    }

    /// Requests whose path contains `part`, in flight or not.
    pub fn requests_to_now(&self, part: &str) -> Vec<Record> {
        self.requests_now()
            .into_iter()
            .filter(|r| r.path.contains(part))
            .collect()
    }

    /// Total body bytes sent for paths containing `part`.
    pub fn bytes_sent_to(&self, part: &str) -> u64 {
        self.requests_to(part).iter().map(|r| r.body_sent).sum()
    }

    /// The request log, one line each, for failure messages.
    pub fn describe(&self) -> String {
        let log = self.requests_now();
        let t0 = log.first().map(|r| r.at);
        log.iter()
            .map(|r| {
                format!(
                    "  +{:>6}ms {} {} range={:?} -> {} ({} bytes){}\n",
                    t0.map_or(0, |t| r.at.duration_since(t).as_millis()),
                    r.method,
                    r.path,
                    r.range,
                    r.status,
                    r.body_sent,
                    r.fault.map(|f| format!(" [{f}]")).unwrap_or_default()
                )
            })
            .collect()
    }
}

/// A request's line in the log: logged on arrival, so that tests see
/// requests still in flight; status and bytes are filled in, and the
/// request leaves the in-flight count, when this is dropped (the answer
/// is done, cut, or the client has gone).
struct Slot {
    st: Arc<State>,
    index: usize,
    status: u16,
    sent: u64,
}

impl Slot {
    fn open(st: &Arc<State>, req: &Request<Incoming>, fault: Option<&Fault>) -> Slot {
        st.in_flight.fetch_add(1, Ordering::SeqCst);
        let mut log = lock(&st.log);
        log.push(Record {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            query: req.uri().query().map(str::to_string),
            range: req
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            status: 0,
            body_sent: 0,
            fault: fault.map(Fault::name),
            at: Instant::now(),
        });
        Slot {
            st: st.clone(),
            index: log.len() - 1,
            status: 0,
            sent: 0,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut log = lock(&self.st.log);
            log[self.index].status = self.status;
            log[self.index].body_sent = self.sent;
        }
        self.st.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn pick_fault(st: &State, req: &Request<Incoming>) -> Option<Fault> {
    let mut rules = lock(&st.rules);
    let path = req.uri().path();
    let i = rules.iter().position(|r| {
        r.remaining != Some(0)
            && r.method
                .as_deref()
                .is_none_or(|m| m == req.method().as_str())
            && path.contains(&r.path_contains)
            && (!r.parts_only || closed_range(req))
    })?;
    let rule = &mut rules[i];
    if let Some(n) = &mut rule.remaining {
        *n -= 1;
    }
    Some(rule.fault.clone())
}

/// Whether `req` asks for a closed range, `bytes=A-B`.
fn closed_range(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .is_some_and(|r| r.split_once('-').is_some_and(|(_, b)| !b.is_empty()))
}

/// The repository named by a `/v2/REPO/{manifests,blobs}/...` path.
fn repository_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .find_map(|m| rest.find(m).map(|i| &rest[..i]))
}

/// How the pump shapes a body.
#[derive(Default)]
struct Shape {
    /// Stop after this many bytes.
    limit: Option<u64>,
    /// After `limit`, end with an error (the connection is cut) rather
    /// than cleanly.
    cut: bool,
    /// Flip the byte at this offset.
    corrupt: Option<u64>,
    /// Pieces of this size, each followed by this pause.
    drip: Option<(usize, Duration)>,
    /// Send nothing, and hold the connection open.
    stall: bool,
}

/// An answer on its way out: status, headers and the body's source.
struct Answer {
    status: u16,
    headers: HeaderMap,
    version: Version,
    body: Body,
    shape: Shape,
    /// Content-Length to promise; none: whatever the body says.
    length: Option<u64>,
    /// Close the connection after it.
    close: bool,
}

impl Answer {
    fn new(status: u16, content_type: &str, body: impl Into<Bytes>) -> Answer {
        let body = body.into();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        Answer {
            status,
            headers,
            version: Version::HTTP_11,
            length: Some(body.len() as u64),
            body: server::full(body),
            shape: Shape::default(),
            close: false,
        }
    }

    /// Drips as `fault` says, on `conn` when the head drips too.
    fn dripped(mut self, fault: Option<&Fault>, conn: &ConnInfo) -> Answer {
        if let Some((bytes, every, head_too)) = fault.and_then(Fault::drip) {
            if head_too {
                conn.drip(bytes, every);
            } else {
                self.shape.drip = Some((bytes, every));
            }
            self.close = true;
        }
        self
    }

    /// The response, its body pumped through the shape, the slot closed
    /// when the body is done.
    fn send(self, st: &Arc<State>, conn: &Arc<ConnInfo>, mut slot: Slot, head_only: bool) -> Resp {
        slot.status = self.status;
        let mut headers = self.headers;
        if let Some(n) = self.length {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let body = if head_only {
            server::empty()
        } else {
            let (tx, body) = server::channel();
            tokio::spawn(pump(st.clone(), conn.clone(), self.body, tx, self.shape));
            body
        };
        let body = server::tracked(body, move |sent| {
            let mut slot = slot;
            slot.sent = sent;
        });
        let mut resp = hyper::Response::new(body);
        *resp.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        *resp.version_mut() = self.version;
        *resp.headers_mut() = headers;
        resp
    }
}

/// Copies `src` into the response, shaped: cut, corrupted, dripped,
/// throttled, or stalled.
async fn pump(
    st: Arc<State>,
    conn: Arc<ConnInfo>,
    mut src: Body,
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    shape: Shape,
) {
    let cut = || Err(io::Error::other("cut by the test proxy"));
    if shape.stall {
        tokio::select! {
            _ = tx.closed() => {}
            _ = tokio::time::sleep(MAX_STALL) => {}
        }
        let _ = tx.send(cut()).await;
        return;
    }
    let started = Instant::now();
    let mut sent = 0u64;
    let step = shape.drip.map_or(CHUNK, |(b, _)| b);
    'frames: while let Some(frame) = src.frame().await {
        let Ok(frame) = frame else {
            let _ = tx.send(cut()).await;
            return;
        };
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        while !data.is_empty() {
            let mut want = step.min(data.len());
            if let Some(l) = shape.limit {
                if sent >= l {
                    break 'frames;
                }
                want = want.min((l - sent) as usize);
            }
            let mut piece = data.split_to(want);
            if let Some(at) = shape.corrupt
                && at >= sent
                && at < sent + want as u64
            {
                let mut v = piece.to_vec();
                v[(at - sent) as usize] ^= 0xff;
                piece = v.into();
            }
            if tx.send(Ok(piece)).await.is_err() {
                return; // the client has gone
            }
            sent += want as u64;
            if let Some((_, every)) = shape.drip {
                tokio::time::sleep(every).await;
            }
            let rate = st.throttle.load(Ordering::Relaxed);
            if rate > 0 {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                let now = started.elapsed();
                if due > now {
                    tokio::time::sleep(due - now).await;
                }
            }
        }
    }
    if shape.cut && shape.limit.is_some() {
        // Let hyper take and flush every piece before the cut.
        while tx.capacity() < tx.max_capacity() && !tx.is_closed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        conn.settle().await;
        let _ = tx.send(cut()).await;
    }
}

fn handle(st: Arc<State>, req: Request<Incoming>, conn: Arc<ConnInfo>) -> RespFuture {
    Box::pin(async move {
        let fault = pick_fault(&st, &req);
        let slot = Slot::open(&st, &req, fault.as_ref());
        let head_only = req.method() == Method::HEAD;
        if matches!(fault, Some(Fault::Silent)) {
            // The connection closes long before, and drops this future
            // (and with it the slot, status 0).
            tokio::time::sleep(MAX_STALL).await;
            let mut a = Answer::new(200, "text/plain", Bytes::new());
            a.shape.stall = true;
            return a.send(&st, &conn, slot, false);
        }
        if let Some(a) = check_bearer(&st, &req) {
            return a
                .dripped(fault.as_ref(), &conn)
                .send(&st, &conn, slot, head_only);
        }
        let own = lock(&st.answerer).clone();
        if let Some((status, ctype, body)) =
            own.and_then(|f| f(req.method(), req.uri(), req.headers()))
        {
            return Answer::new(status, &ctype, body).send(&st, &conn, slot, head_only);
        }
        let answer = match canned(fault.as_ref()) {
            Some(a) => a.dripped(fault.as_ref(), &conn),
            None => match forward(&st, req, fault.as_ref(), head_only).await {
                Ok(a) => a.dripped(fault.as_ref(), &conn),
                Err(e) => Answer::new(502, "text/plain", format!("test proxy: {e}")),
            },
        };
        answer.send(&st, &conn, slot, head_only)
    })
}

/// A registry-style JSON error body.
fn error_body(code: &str, message: &str, detail: Option<&str>) -> String {
    let detail = detail
        .map(|d| format!(r#","detail":"{d}""#))
        .unwrap_or_default();
    format!(r#"{{"errors":[{{"code":"{code}","message":"{message}"{detail}}}]}}"#)
}

/// The answer a fault makes up without asking the registry.
fn canned(fault: Option<&Fault>) -> Option<Answer> {
    match fault? {
        Fault::Status {
            status,
            retry_after,
            code,
        } => {
            let body = code
                .as_ref()
                .map(|c| error_body(c, "injected by the test proxy", None))
                .unwrap_or_default();
            let mut a = Answer::new(*status, "application/json", body);
            if let Some(r) = retry_after {
                a.headers
                    .insert(header::RETRY_AFTER, HeaderValue::from_str(r).unwrap());
            }
            Some(a)
        }
        Fault::DripError { status, .. } => {
            let detail = "x".repeat(4096);
            let body = error_body("DENIED", "dripped by the test proxy", Some(&detail));
            Some(Answer::new(*status, "application/json", body))
        }
        Fault::Serve {
            content_type,
            body,
            content_length,
        } => {
            let mut a = Answer::new(200, content_type, body.clone());
            if !*content_length {
                // HTTP/1.0 framing: the body ends when the connection closes.
                a.version = Version::HTTP_10;
                a.length = None;
                a.close = true;
            }
            Some(a)
        }
        _ => None,
    }
}

/// Checks the bearer token when the proxy requires one. `Some` is the
/// answer to send instead of forwarding.
fn check_bearer(st: &State, req: &Request<Incoming>) -> Option<Answer> {
    let mut guard = lock(&st.bearer);
    let bearer = guard.as_mut()?;
    let path = req.uri().path();
    if path == "/token" {
        bearer.issued += 1;
        let token = format!("proxy-token-{}", bearer.issued);
        bearer.tokens.push((token.clone(), bearer.uses_per_token));
        let body = format!(r#"{{"token":"{token}","expires_in":300}}"#);
        return Some(Answer::new(200, "application/json", body));
    }
    if !path.starts_with("/v2/") {
        return None;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(t) = presented
        && let Some((_, left)) = bearer.tokens.iter_mut().find(|(k, _)| k == t)
        && *left > 0
    {
        *left -= 1;
        return None;
    }
    let scope = repository_of(path)
        .map(|r| format!(",scope=\"repository:{r}:pull\""))
        .unwrap_or_default();
    let challenge = format!(
        "Bearer realm=\"http://{}/token\",service=\"fault-proxy\"{scope}",
        st.me
    );
    let mut a = Answer::new(
        401,
        "application/json",
        error_body("UNAUTHORIZED", "authentication required", None),
    );
    a.headers.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge).unwrap(),
    );
    Some(a)
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Sends the request on to the registry over a connection of its own,
/// without the hop-by-hop headers (and without what `fault` strips).
async fn send_upstream(
    st: &State,
    req: Request<Incoming>,
    fault: Option<&Fault>,
) -> io::Result<hyper::Response<Incoming>> {
    let tcp = tokio::net::TcpStream::connect(&st.upstream).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(other)?;
    tokio::spawn(conn);
    let (parts, body) = req.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut up = Request::builder().method(parts.method).uri(target);
    let bearer = lock(&st.bearer).is_some();
    for (k, v) in &parts.headers {
        let skip = [
            header::HOST,
            header::CONNECTION,
            header::TE,
            header::UPGRADE,
        ]
        .contains(k)
            || k.as_str() == "keep-alive"
            || (bearer && k == header::AUTHORIZATION)
            || (matches!(fault, Some(Fault::IgnoreRange)) && k == header::RANGE);
        if !skip {
            up = up.header(k, v);
        }
    }
    let up = up
        .header(header::HOST, &st.upstream)
        .body(body)
        .map_err(other)?;
    tokio::time::timeout(Duration::from_secs(60), sender.send_request(up))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
        .map_err(other)
}

/// Forwards a request to the registry; the answer carries the body faults.
async fn forward(
    st: &State,
    req: Request<Incoming>,
    fault: Option<&Fault>,
    head_only: bool,
) -> io::Result<Answer> {
    let resp = send_upstream(st, req, fault).await?;
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let upstream_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let no_body = head_only || status == 204 || status == 304;
    // A body of unknown length (rare: registry errors) is read whole so the
    // client gets a Content-Length and the connection stays usable.
    let (length, body) = match (no_body, upstream_length) {
        (true, _) => (0, server::empty()),
        (false, Some(n)) => (n, body.map_err(other).boxed()),
        (false, None) => {
            let all = body.collect().await.map_err(other)?.to_bytes();
            (all.len() as u64, server::full(all))
        }
    };
    let mut headers = parts.headers;
    for h in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::CONTENT_LENGTH,
    ] {
        headers.remove(h);
    }
    headers.remove("keep-alive");
    // Upload sessions name the registry's own address; point them back at
    // the proxy, as a reverse proxy in front of a registry does.
    if let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
        let ours = loc.replace(&format!("//{}/", st.upstream), &format!("//{}/", st.me));
        if let Ok(v) = HeaderValue::from_str(&ours) {
            headers.insert(header::LOCATION, v);
        }
    }
    let mut answer = Answer {
        status,
        headers,
        version: Version::HTTP_11,
        body,
        shape: Shape::default(),
        length: Some(length),
        close: false,
    };
    if head_only {
        answer.length = upstream_length;
        return Ok(answer);
    }
    if no_body {
        answer.length = None;
        return Ok(answer);
    }
    match fault {
        Some(Fault::CutAfter(n)) => {
            answer.shape.limit = Some((*n).min(length));
            answer.shape.cut = true;
        }
        Some(Fault::CutAfterNoLength(n)) => {
            answer.shape.limit = Some((*n).min(length));
            answer.version = Version::HTTP_10;
            answer.length = None;
        }
        Some(Fault::CutFraction(f)) => {
            answer.shape.limit = Some(((length as f64) * f) as u64);
            answer.shape.cut = true;
        }
        Some(Fault::Corrupt(at)) => answer.shape.corrupt = Some(*at),
        Some(Fault::Stall) => answer.shape.stall = true,
        _ => {}
    }
    answer.close = answer.shape.limit.is_some() || answer.shape.stall;
    Ok(answer)
}
