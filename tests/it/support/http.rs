//! A small blocking HTTP/1.1 client over loopback, on hyper, to probe the
//! test registry (`/v2/` readiness, raw manifests) and to check the test
//! server's handlers without going through occystrap's own client.

use std::io;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// A response: status, headers (names lower-cased) and the whole body.
#[derive(Debug)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Header name (lower case) and value pairs.
    pub headers: Vec<(String, String)>,
    /// Decoded body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// One keep-alive connection: requests go out one after another on it.
pub struct Conn {
    rt: tokio::runtime::Runtime,
    host: String,
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Conn {
    /// Connects to `host` (`127.0.0.1:PORT`).
    pub fn connect(host: &str) -> io::Result<Conn> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let sender = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(host).await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(other)?;
            tokio::spawn(conn);
            io::Result::Ok(sender)
        })?;
        Ok(Conn {
            rt,
            host: host.to_string(),
            sender,
        })
    }

    /// Sends one request and reads the whole response (30 s at most).
    pub fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<Response> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(target)
            .header("Host", &self.host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::new()).map_err(other)?;
        let sender = &mut self.sender;
        self.rt.block_on(async {
            let exchange = async {
                let resp = sender.send_request(req).await.map_err(other)?;
                let status = resp.status().as_u16();
                let headers = resp
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                let body = resp.into_body().collect().await.map_err(other)?;
                io::Result::Ok(Response {
                    status,
                    headers,
                    body: body.to_bytes().to_vec(),
                })
            };
            tokio::time::timeout(Duration::from_secs(30), exchange)
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
        })
    }
}

/// Sends one request on a connection of its own.
pub fn request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<Response> {
    Conn::connect(host)?.send(method, path, headers)
}

/// GET with the manifest media types a registry client accepts.
pub fn get_manifest(host: &str, repo: &str, reference: &str) -> io::Result<Response> {
    request(
        host,
        "GET",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.docker.distribution.manifest.list.v2+json, \
             application/vnd.oci.image.manifest.v1+json, \
             application/vnd.oci.image.index.v1+json",
        )],
    )
}
