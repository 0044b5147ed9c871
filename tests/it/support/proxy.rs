//! A fault-injecting HTTP/1.1 proxy on loopback, in front of the real test
//! registry. Tests tell it what to break (drop a blob body after N bytes,
//! answer 429 or 503, stall after the headers, corrupt a byte, ignore
//! `Range`, serve a body of their own, require bearer tokens that expire
//! after K uses, throttle bodies) and read back every request it saw
//! (method, path, `Range`, status, bytes sent, when).
//!
//! One thread per client connection, keep-alive towards the client; each
//! forwarded request opens its own HTTP/1.0 connection to the registry, so
//! the response body ends at its Content-Length or at EOF and is never
//! chunked. Everything stops when the [`Proxy`] is dropped.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Longest request head the proxy reads.
const MAX_HEAD: usize = 64 << 10;
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

struct State {
    upstream: String,
    me: String,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Record>>,
    bearer: Mutex<Option<BearerState>>,
    /// Body bytes per second, 0 for unlimited.
    throttle: AtomicUsize,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    /// Requests being answered right now.
    in_flight: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running proxy. Dropping it closes every connection.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy for the registry at `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream: upstream.to_string(),
            me: addr.to_string(),
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            bearer: Mutex::new(None),
            throttle: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
        });
        let st = state.clone();
        let accept = thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if let Ok(c) = conn.try_clone() {
                    lock(&st.conns).push(c);
                }
                let st = st.clone();
                thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        Proxy {
            addr,
            state,
            accept: Some(accept),
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
        self.rule(None, path_contains, Some(times), fault);
    }

    /// Applies `fault` to the next request whose path contains `path_contains`.
    pub fn once(&self, path_contains: &str, fault: Fault) {
        self.times(1, path_contains, fault);
    }

    /// Applies `fault` to every request whose path contains `path_contains`.
    pub fn always(&self, path_contains: &str, fault: Fault) {
        self.rule(None, path_contains, None, fault);
    }

    fn rule(&self, method: Option<&str>, path: &str, remaining: Option<usize>, fault: Fault) {
        lock(&self.state.rules).push(Rule {
            method: method.map(str::to_string),
            path_contains: path.to_string(),
            remaining,
            fault,
        });
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

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop, then close every client connection so that
        // stalled and keep-alive threads end.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for c in lock(&self.state.conns).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// A parsed request head.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

fn read_head(r: &mut impl BufRead) -> io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        total += n;
        if total > MAX_HEAD {
            return Err(io::Error::other("head too large"));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue;
            }
            return Ok(Some(lines));
        }
        lines.push(line);
    }
}

fn parse_headers<'a>(lines: impl Iterator<Item = &'a String>) -> Vec<(String, String)> {
    lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn read_request(r: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let Some(lines) = read_head(r)? else {
        return Ok(None);
    };
    let mut parts = lines[0].split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let headers = parse_headers(lines[1..].iter());
    let req = Request {
        method,
        target,
        headers,
    };
    // occystrap sends no request bodies, but drain one if it comes.
    if let Some(len) = req
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
    {
        io::copy(&mut r.by_ref().take(len), &mut io::sink())?;
    }
    Ok(Some(req))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Writes a complete small response; returns the body length.
fn respond(
    out: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> io::Result<u64> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()?;
    Ok(body.len() as u64)
}

/// Writes `data` `bytes` at a time with a pause after each piece, until
/// done, the client hangs up or the proxy stops. Returns the bytes written.
fn write_dripped(
    out: &mut TcpStream,
    st: &State,
    data: &[u8],
    bytes: usize,
    every: Duration,
) -> io::Result<u64> {
    let mut sent = 0u64;
    for piece in data.chunks(bytes.max(1)) {
        if st.stop.load(Ordering::Relaxed) {
            break;
        }
        // A client that gave up ends the drip.
        if out.write_all(piece).and_then(|()| out.flush()).is_err() {
            break;
        }
        sent += piece.len() as u64;
        thread::sleep(every);
    }
    Ok(sent)
}

/// [`respond`], dripped as `drip` says (see [`Fault::drip`]).
fn respond_dripped(
    out: &mut TcpStream,
    st: &State,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    (bytes, every, head_too): (usize, Duration, bool),
) -> io::Result<u64> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    if head_too {
        write_dripped(out, st, head.as_bytes(), bytes, every)?;
    } else {
        out.write_all(head.as_bytes())?;
        out.flush()?;
    }
    write_dripped(out, st, body, bytes, every)
}

/// Holds a connection open without writing, until the client hangs up, the
/// proxy stops or [`MAX_STALL`] passes.
fn hold(out: &mut TcpStream, st: &State) -> io::Result<()> {
    let until = Instant::now() + MAX_STALL;
    out.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut probe = [0u8; 1];
    while Instant::now() < until && !st.stop.load(Ordering::SeqCst) {
        match out.peek(&mut probe) {
            Ok(0) => break,
            Ok(_) => thread::sleep(Duration::from_millis(100)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// What happened to one request, for the log.
struct Outcome {
    status: u16,
    sent: u64,
    /// Whether the connection must be closed after it.
    close: bool,
}

fn serve(conn: TcpStream, st: &State) -> io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut input = BufReader::new(conn);
    // Bounded: every iteration needs a new request from the client, and the
    // connection is closed when the proxy stops.
    while !st.stop.load(Ordering::SeqCst) {
        let Some(req) = read_request(&mut input)? else {
            return Ok(());
        };
        let at = Instant::now();
        let fault = pick_fault(st, &req);
        // Logged on arrival, so that tests see requests still in flight;
        // status and bytes are filled in when the answer is done.
        st.in_flight.fetch_add(1, Ordering::SeqCst);
        let slot = {
            let mut log = lock(&st.log);
            log.push(Record {
                method: req.method.clone(),
                path: req.path().to_string(),
                range: req.header("range").map(str::to_string),
                status: 0,
                body_sent: 0,
                fault: fault.as_ref().map(Fault::name),
                at,
            });
            log.len() - 1
        };
        let result = handle(&mut out, st, &req, fault);
        if let Ok(o) = &result {
            let mut log = lock(&st.log);
            log[slot].status = o.status;
            log[slot].body_sent = o.sent;
        }
        st.in_flight.fetch_sub(1, Ordering::SeqCst);
        match result {
            Ok(o) if !o.close => {}
            _ => {
                let _ = out.flush();
                let _ = out.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
    }
    Ok(())
}

fn pick_fault(st: &State, req: &Request) -> Option<Fault> {
    let mut rules = lock(&st.rules);
    let path = req.path();
    let i = rules.iter().position(|r| {
        r.remaining != Some(0)
            && r.method.as_deref().is_none_or(|m| m == req.method)
            && path.contains(&r.path_contains)
    })?;
    let rule = &mut rules[i];
    if let Some(n) = &mut rule.remaining {
        *n -= 1;
    }
    Some(rule.fault.clone())
}

/// The repository named by a `/v2/REPO/{manifests,blobs}/...` path.
fn repository_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .find_map(|m| rest.find(m).map(|i| &rest[..i]))
}

/// A response made up by the proxy: status, headers, body.
type Canned = (u16, Vec<(String, String)>, Vec<u8>);

/// Checks the bearer token when the proxy requires one. `Some` is the
/// response to send instead of forwarding.
fn check_bearer(st: &State, req: &Request) -> Option<Canned> {
    let mut guard = lock(&st.bearer);
    let bearer = guard.as_mut()?;
    let path = req.path();
    if path == "/token" {
        bearer.issued += 1;
        let token = format!("proxy-token-{}", bearer.issued);
        bearer.tokens.push((token.clone(), bearer.uses_per_token));
        let body = format!(r#"{{"token":"{token}","expires_in":300}}"#).into_bytes();
        return Some((
            200,
            vec![("Content-Type".into(), "application/json".into())],
            body,
        ));
    }
    if !path.starts_with("/v2/") {
        return None;
    }
    let presented = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    if let Some(t) = presented
        && let Some((_, left)) = bearer.tokens.iter_mut().find(|(k, _)| *k == t)
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
    Some((
        401,
        vec![
            ("WWW-Authenticate".into(), challenge),
            ("Content-Type".into(), "application/json".into()),
        ],
        br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
    ))
}

fn handle(
    out: &mut TcpStream,
    st: &State,
    req: &Request,
    fault: Option<Fault>,
) -> io::Result<Outcome> {
    if matches!(fault, Some(Fault::Silent)) {
        hold(out, st)?;
        return Ok(Outcome {
            status: 0,
            sent: 0,
            close: true,
        });
    }
    if let Some((status, headers, body)) = check_bearer(st, req) {
        if let Some(drip) = fault.as_ref().and_then(Fault::drip) {
            let sent = respond_dripped(out, st, status, &headers, &body, drip)?;
            return Ok(Outcome {
                status,
                sent,
                close: true,
            });
        }
        let sent = respond(out, status, &headers, &body)?;
        return Ok(Outcome {
            status,
            sent,
            close: false,
        });
    }
    let head_only = req.method == "HEAD";
    match &fault {
        Some(Fault::Status {
            status,
            retry_after,
            code,
        }) => {
            let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
            if let Some(r) = retry_after {
                headers.push(("Retry-After".into(), r.clone()));
            }
            let body = code
                .as_ref()
                .map(|c| {
                    format!(
                        r#"{{"errors":[{{"code":"{c}","message":"injected by the test proxy"}}]}}"#
                    )
                    .into_bytes()
                })
                .unwrap_or_default();
            let sent = respond(out, *status, &headers, if head_only { &[] } else { &body })?;
            return Ok(Outcome {
                status: *status,
                sent,
                close: false,
            });
        }
        Some(Fault::DripError { status, .. }) => {
            let headers = vec![("Content-Type".to_string(), "application/json".to_string())];
            let detail = "x".repeat(4096);
            let body = format!(
                r#"{{"errors":[{{"code":"DENIED","message":"dripped by the test proxy","detail":"{detail}"}}]}}"#
            );
            let drip = fault.as_ref().and_then(Fault::drip).unwrap();
            let sent = respond_dripped(out, st, *status, &headers, body.as_bytes(), drip)?;
            return Ok(Outcome {
                status: *status,
                sent,
                close: true,
            });
        }
        Some(Fault::Serve {
            content_type,
            body,
            content_length,
        }) => {
            let headers = vec![("Content-Type".to_string(), content_type.clone())];
            if *content_length {
                let sent = respond(out, 200, &headers, body)?;
                return Ok(Outcome {
                    status: 200,
                    sent,
                    close: false,
                });
            }
            let mut head = "HTTP/1.1 200 OK\r\nConnection: close\r\n".to_string();
            head.push_str(&format!("Content-Type: {content_type}\r\n\r\n"));
            out.write_all(head.as_bytes())?;
            let sent = send_body(out, st, &mut &body[..], None, None)?;
            return Ok(Outcome {
                status: 200,
                sent,
                close: true,
            });
        }
        _ => {}
    }
    forward(out, st, req, fault, head_only)
}

/// Forwards a request to the registry and its response back, applying the
/// body faults.
fn forward(
    out: &mut TcpStream,
    st: &State,
    req: &Request,
    fault: Option<Fault>,
    head_only: bool,
) -> io::Result<Outcome> {
    let mut up = TcpStream::connect(&st.upstream)?;
    up.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{} {} HTTP/1.0\r\nHost: {}\r\n",
        req.method, req.target, st.upstream
    );
    let bearer = lock(&st.bearer).is_some();
    for (k, v) in &req.headers {
        let skip = ["host", "connection", "keep-alive", "te", "upgrade"]
            .iter()
            .any(|h| k.eq_ignore_ascii_case(h))
            || (bearer && k.eq_ignore_ascii_case("authorization"))
            || (matches!(fault, Some(Fault::IgnoreRange)) && k.eq_ignore_ascii_case("range"));
        if !skip {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    up.write_all(head.as_bytes())?;
    let mut upr = BufReader::new(up);
    let lines = read_head(&mut upr)?.ok_or_else(|| io::Error::other("no response"))?;
    let status: u16 = lines[0]
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("bad status line"))?;
    let headers = parse_headers(lines[1..].iter());
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<u64>().ok());
    let no_body = head_only || status == 204 || status == 304;
    // A body of unknown length (rare: registry errors) is read whole so the
    // client gets a Content-Length and the connection stays usable.
    let (length, mut buffered) = match (no_body, length) {
        (true, _) => (0, None),
        (false, Some(n)) => (n, None),
        (false, None) => {
            let mut v = Vec::new();
            upr.read_to_end(&mut v)?;
            (v.len() as u64, Some(v))
        }
    };
    let mut resp = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in &headers {
        let hop = [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "content-length",
        ]
        .iter()
        .any(|h| k.eq_ignore_ascii_case(h));
        if !hop {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    if head_only {
        if let Some(n) = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            resp.push_str(&format!("Content-Length: {}\r\n\r\n", n.1));
        } else {
            resp.push_str("\r\n");
        }
    } else if matches!(fault, Some(Fault::CutAfterNoLength(_))) {
        resp.push_str("Connection: close\r\n\r\n");
    } else {
        resp.push_str(&format!("Content-Length: {length}\r\n\r\n"));
    }
    let drip = fault.as_ref().and_then(Fault::drip);
    match drip {
        Some((bytes, every, true)) => {
            write_dripped(out, st, resp.as_bytes(), bytes, every)?;
        }
        _ => {
            out.write_all(resp.as_bytes())?;
            out.flush()?;
        }
    }
    if no_body {
        return Ok(Outcome {
            status,
            sent: 0,
            close: false,
        });
    }
    let (limit, corrupt) = match &fault {
        Some(Fault::CutAfter(n) | Fault::CutAfterNoLength(n)) => (Some((*n).min(length)), None),
        Some(Fault::CutFraction(f)) => (Some(((length as f64) * f) as u64), None),
        Some(Fault::Corrupt(at)) => (None, Some(*at)),
        Some(Fault::Stall) => {
            // Headers sent; now nothing.
            hold(out, st)?;
            return Ok(Outcome {
                status,
                sent: 0,
                close: true,
            });
        }
        _ => (None, None),
    };
    if let Some((bytes, every, _)) = drip {
        let mut body = Vec::new();
        match buffered.take() {
            Some(v) => body = v,
            None => {
                upr.take(length).read_to_end(&mut body)?;
            }
        }
        let sent = write_dripped(out, st, &body, bytes, every)?;
        return Ok(Outcome {
            status,
            sent,
            // Cut short when the proxy stopped or the client gave up.
            close: sent < length,
        });
    }
    let sent = match buffered.take() {
        Some(v) => send_body(out, st, &mut &v[..], limit, corrupt)?,
        None => send_body(out, st, &mut upr.take(length), limit, corrupt)?,
    };
    Ok(Outcome {
        status,
        sent,
        close: limit.is_some(),
    })
}

/// Copies a body, throttled, stopping after `limit` bytes, flipping the byte
/// at `corrupt`. Returns the bytes sent.
fn send_body(
    out: &mut TcpStream,
    st: &State,
    body: &mut impl Read,
    limit: Option<u64>,
    corrupt: Option<u64>,
) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    let started = Instant::now();
    loop {
        let want = match limit {
            Some(l) if sent >= l => break,
            Some(l) => ((l - sent) as usize).min(CHUNK),
            None => CHUNK,
        };
        let n = body.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        if let Some(at) = corrupt
            && at >= sent
            && at < sent + n as u64
        {
            buf[(at - sent) as usize] ^= 0xff;
        }
        out.write_all(&buf[..n])?;
        sent += n as u64;
        let rate = st.throttle.load(Ordering::Relaxed);
        if rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            let now = started.elapsed();
            if due > now {
                thread::sleep(due - now);
            }
        }
        if st.stop.load(Ordering::Relaxed) {
            break;
        }
    }
    out.flush()?;
    Ok(sent)
}
