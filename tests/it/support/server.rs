//! The one loopback HTTP test server, on hyper: the fault-injecting proxy
//! (`proxy.rs`) and the bearer-token mock (`bearer/mock.rs`) are handlers
//! on it. It owns a small tokio runtime; listeners speak HTTP/1.1 with
//! keep-alive, over TLS when given a rustls config. Dropping the [`Server`]
//! drops every task, which closes every connection.
//!
//! Faults below HTTP (a response head written a few bytes at a time) go
//! through [`ConnInfo::drip`]: each connection's writes pass through
//! [`DripIo`], which the handler can slow down for the answer it gives.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::time::Sleep;

/// A response body: any body whose errors are I/O errors (an error ends the
/// connection mid-body).
pub type Body = BoxBody<Bytes, io::Error>;

/// What handlers answer with.
pub type Resp = Response<Body>;

/// A boxed handler future.
pub type RespFuture = Pin<Box<dyn Future<Output = Resp> + Send>>;

/// A request handler: the request and what is known of its connection.
pub type Handler = Arc<dyn Fn(Request<Incoming>, Arc<ConnInfo>) -> RespFuture + Send + Sync>;

/// TLS for a listener: the server config to present.
pub type Tls = Arc<rustls::ServerConfig>;

/// Locks, ignoring poisoning (a failed test thread must not cascade).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One accepted connection.
pub struct ConnInfo {
    /// `scheme://ip:port` of the listener that took it.
    pub listener: String,
    drip: Arc<Mutex<Option<(usize, Duration)>>>,
    written: Arc<AtomicU64>,
}

impl ConnInfo {
    /// From now on, every write on this connection goes out `bytes` at a
    /// time with a pause of `every` after each piece (status line and
    /// headers too).
    pub fn drip(&self, bytes: usize, every: Duration) {
        *lock(&self.drip) = Some((bytes.max(1), every));
    }

    /// Waits until nothing has been written on the connection for a while:
    /// hyper has flushed what it was given. A body cut short with an error
    /// would otherwise lose the data hyper still held.
    pub async fn settle(&self) {
        let mut last = self.written.load(Ordering::SeqCst);
        loop {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let now = self.written.load(Ordering::SeqCst);
            if now == last {
                return;
            }
            last = now;
        }
    }
}

/// A running server: a runtime and its listeners.
pub struct Server {
    rt: Option<tokio::runtime::Runtime>,
    stop: watch::Sender<bool>,
}

impl Server {
    /// A server with no listener yet.
    pub fn new(name: &str) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("test server runtime");
        Server {
            rt: Some(rt),
            stop: watch::channel(false).0,
        }
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime")
    }

    /// Resolves when the server is being dropped; for handlers that hold a
    /// connection open.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Spawns a task on the server's runtime.
    pub fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.rt().spawn(f);
    }

    /// Serves `handler` on `ip` at an ephemeral port, over TLS when `tls`
    /// is given. Returns the address and `scheme://ip:port`.
    pub fn listen(&self, ip: &str, tls: Option<Tls>, handler: Handler) -> (SocketAddr, String) {
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind loopback");
        self.listen_on(listener, tls, handler)
    }

    /// [`Server::listen`] on a listener bound already (so that a handler
    /// can know its own address before it starts).
    pub fn listen_on(
        &self,
        std_listener: std::net::TcpListener,
        tls: Option<Tls>,
        handler: Handler,
    ) -> (SocketAddr, String) {
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let name = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
        let listener_name = name.clone();
        let _guard = self.rt().enter();
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
        self.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    // Out of descriptors, most likely: let others finish.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let info = Arc::new(ConnInfo {
                    listener: listener_name.clone(),
                    drip: Arc::new(Mutex::new(None)),
                    written: Arc::new(AtomicU64::new(0)),
                });
                let (handler, tls) = (handler.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve_conn(tcp, info, handler).await,
                        Some(cfg) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve_conn(stream, info, handler).await;
                            }
                        }
                    }
                });
            }
        });
        (addr, name)
    }
}

impl Server {
    /// Serves `handler` on a unix socket at `path` (a lying container
    /// engine's API).
    pub fn listen_unix(&self, path: &std::path::Path, handler: Handler) {
        let _guard = self.rt().enter();
        let listener = tokio::net::UnixListener::bind(path).expect("bind unix socket");
        let name = format!("unix://{}", path.display());
        self.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let info = Arc::new(ConnInfo {
                    listener: name.clone(),
                    drip: Arc::new(Mutex::new(None)),
                    written: Arc::new(AtomicU64::new(0)),
                });
                tokio::spawn(serve_conn(stream, info, handler.clone()));
            }
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(rt) = self.rt.take() {
            // Allowed in async contexts too; drops every connection task.
            rt.shutdown_background();
        }
    }
}

async fn serve_conn<T>(io: T, info: Arc<ConnInfo>, handler: Handler)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = DripIo {
        inner: io,
        drip: info.drip.clone(),
        written: info.written.clone(),
        pause: None,
    };
    let service = hyper::service::service_fn(move |req| {
        let fut = handler(req, info.clone());
        async move { Ok::<_, std::convert::Infallible>(fut.await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// A connection's I/O, whose writes can be slowed to a drip.
struct DripIo<T> {
    inner: T,
    drip: Arc<Mutex<Option<(usize, Duration)>>>,
    written: Arc<AtomicU64>,
    pause: Option<Pin<Box<Sleep>>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for DripIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DripIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some((bytes, every)) = *lock(&this.drip) else {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
            this.written.fetch_add(n as u64, Ordering::SeqCst);
            return Poll::Ready(Ok(n));
        };
        if let Some(p) = &mut this.pause {
            ready!(p.as_mut().poll(cx));
            this.pause = None;
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..buf.len().min(bytes)]))?;
        this.written.fetch_add(n as u64, Ordering::SeqCst);
        this.pause = Some(Box::pin(tokio::time::sleep(every)));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A whole body.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// No body.
pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// A body fed piece by piece from a task: send `Ok(bytes)` pieces, or an
/// `Err` to cut the connection mid-body (after [`ConnInfo::settle`]). The
/// sender's `closed()` resolves when the client has gone.
pub fn channel() -> (mpsc::Sender<io::Result<Bytes>>, Body) {
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(|r: io::Result<Bytes>| r.map(Frame::data)))
    });
    (tx, StreamBody::new(stream).boxed())
}

/// A body that reports, once it is done or dropped (sent, cut, or the
/// client gone), how many data bytes went out.
pub fn tracked(inner: Body, done: impl FnOnce(u64) + Send + Sync + 'static) -> Body {
    Tracked {
        inner,
        sent: 0,
        done: Some(Box::new(done)),
    }
    .boxed()
}

type Done = Box<dyn FnOnce(u64) + Send + Sync>;

struct Tracked {
    inner: Body,
    sent: u64,
    done: Option<Done>,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(d) = f.data_ref()
        {
            self.sent += d.len() as u64;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.sent);
        }
    }
}
