//! A client of the Docker Engine API (Docker 20+, Podman 4+'s compatible
//! API) over its unix socket.
//!
//! Each request opens its own connection: a unix socket costs nothing to
//! open, and a save or load stream holds its connection for the whole run.
//! HTTP is hyper's client; nothing here parses HTTP. Every path is
//! versioned by the API version both sides speak (`/version` first).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::error::{Error, Result};

pub mod progress;

/// Where an engine listens when nothing else says: Docker's default socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The newest API version we ask for; an engine that speaks less is asked
/// in its own version. Docker 20.10 and Podman 4 speak 1.41.
const OURS: ApiVersion = ApiVersion(1, 43);

/// The oldest API version we can use: 1.24 is Docker 1.12's, and has every
/// endpoint used here.
const OLDEST: ApiVersion = ApiVersion(1, 24);

/// Largest JSON answer read into memory (`/version`, an inspect, an error).
const SMALL_LIMIT: usize = 4 << 20;

/// hyper's largest read buffer on an engine connection.
const READ_BUFFER: usize = 1 << 20;

/// Deadline for connecting and for small answers.
const SMALL_DEADLINE: Duration = Duration::from_secs(60);

/// A request body: bytes from anywhere, errors as I/O errors.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A Docker Engine API version (`1.41`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion(pub u32, pub u32);

impl ApiVersion {
    fn parse(s: &str) -> Option<ApiVersion> {
        let (major, minor) = s.trim().split_once('.')?;
        Some(ApiVersion(major.parse().ok()?, minor.parse().ok()?))
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// The socket an engine URI talks to: `?socket=PATH`, else `$DOCKER_HOST`
/// (`unix://PATH`), else Docker's default socket.
pub fn socket_path(explicit: Option<&str>, docker_host: Option<&str>) -> Result<PathBuf> {
    if let Some(p) = explicit.filter(|p| !p.is_empty()) {
        let p = p.strip_prefix("unix://").unwrap_or(p);
        return Ok(PathBuf::from(p));
    }
    match docker_host.map(str::trim).filter(|h| !h.is_empty()) {
        None => Ok(PathBuf::from(DEFAULT_SOCKET)),
        Some(host) => match host.strip_prefix("unix://") {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(Error::Usage(format!(
                "DOCKER_HOST={host}: only unix:// sockets are supported (an engine's TCP \
                 API would carry images and credentials without our TLS checks); give \
                 ?socket=PATH instead"
            ))),
        },
    }
}

/// What `/version` says.
#[derive(Deserialize)]
struct VersionAnswer {
    #[serde(rename = "ApiVersion")]
    api_version: Option<String>,
    #[serde(rename = "MinAPIVersion")]
    min_api_version: Option<String>,
    #[serde(rename = "Version")]
    version: Option<String>,
    #[serde(rename = "Components", default)]
    components: Vec<Component>,
}

#[derive(Deserialize)]
struct Component {
    #[serde(rename = "Name", default)]
    name: String,
}

/// An engine's answer to `GET /images/{name}/json`, the fields we use.
#[derive(Clone, Debug, Deserialize)]
pub struct ImageInspect {
    /// The image id: `sha256:` and the config's digest (Docker's containerd
    /// store: the manifest's).
    #[serde(rename = "Id")]
    pub id: String,
    /// Names the image has in the engine.
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    /// The image's size as the engine counts it.
    #[serde(rename = "Size", default)]
    pub size: Option<u64>,
}

/// A connected engine: its socket and the API version both speak.
#[derive(Clone, Debug)]
pub struct Engine {
    socket: PathBuf,
    version: ApiVersion,
    /// Podman's compatible API (it names itself in `/version`).
    podman: bool,
}

impl Engine {
    /// Connects to the engine at `socket` and agrees on an API version.
    pub async fn connect(socket: &Path) -> Result<Engine> {
        let probe = Engine {
            socket: socket.to_path_buf(),
            version: OLDEST,
            podman: false,
        };
        let response = probe
            .send_raw(Method::GET, "/version".into(), None, empty())
            .await?;
        let raw = probe.small_body("version", response).await?;
        let answer: VersionAnswer = serde_json::from_slice(&raw).map_err(|e| {
            probe.error("version", format!("not an engine's /version answer ({e})"))
        })?;
        let theirs = answer
            .api_version
            .as_deref()
            .and_then(ApiVersion::parse)
            .ok_or_else(|| probe.error("version", "the answer names no ApiVersion".into()))?;
        let min = answer
            .min_api_version
            .as_deref()
            .and_then(ApiVersion::parse)
            .unwrap_or(OLDEST);
        let version = theirs.min(OURS);
        if version < OLDEST || version < min {
            return Err(probe.error(
                "version",
                format!(
                    "the engine speaks API {theirs} (oldest {min}); occystrap needs {OLDEST} to {OURS}"
                ),
            ));
        }
        let podman = answer
            .components
            .iter()
            .any(|c| c.name.to_ascii_lowercase().contains("podman"))
            || answer
                .version
                .as_deref()
                .is_some_and(|v| v.to_ascii_lowercase().contains("podman"));
        Ok(Engine {
            socket: socket.to_path_buf(),
            version,
            podman,
        })
    }

    /// The socket this engine listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The API version requests use.
    pub fn version(&self) -> ApiVersion {
        self.version
    }

    /// Whether the engine is Podman (its compatible API).
    pub fn is_podman(&self) -> bool {
        self.podman
    }

    /// An error of this engine.
    pub fn error(&self, operation: &str, message: String) -> Error {
        Error::Engine {
            socket: self.socket.display().to_string(),
            operation: operation.to_string(),
            message,
        }
    }

    /// Sends one request to a versioned path (`/images/json`), returning
    /// the response whatever its status.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Body,
    ) -> Result<Response<Incoming>> {
        let path = format!("/v{}{path_and_query}", self.version);
        self.send_raw(method, path, Some(headers), body).await
    }

    async fn send_raw(
        &self,
        method: Method,
        path: String,
        headers: Option<&[(&str, String)]>,
        body: Body,
    ) -> Result<Response<Incoming>> {
        let what = format!("{method} {}", path_only(&path));
        let stream = tokio::time::timeout(
            SMALL_DEADLINE,
            tokio::net::UnixStream::connect(&self.socket),
        )
        .await
        .map_err(|_| self.error(&what, "connecting timed out".into()))?
        .map_err(|e| self.connect_error(e))?;
        // Large reads: a save or load stream is hundreds of MiB.
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(READ_BUFFER)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.error(&what, format!("HTTP handshake: {e}")))?;
        tokio::spawn(async move {
            // The connection's errors reach the caller through the request
            // or its body.
            let _ = conn.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            // The API is HTTP/1.1; the socket is the host.
            .header(http::header::HOST, "docker")
            .header(
                http::header::USER_AGENT,
                concat!("occystrap/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers.unwrap_or_default() {
            request = request.header(*name, value);
        }
        let request = request
            .body(body)
            .map_err(|e| self.error(&what, format!("building the request: {e}")))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| self.error(&what, format!("{e}")))
    }

    fn connect_error(&self, e: std::io::Error) -> Error {
        use std::io::ErrorKind::*;
        let why = match e.kind() {
            NotFound => "nothing is there".to_string(),
            ConnectionRefused => "nothing listens there".to_string(),
            PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        Error::Engine {
            socket: self.socket.display().to_string(),
            operation: "connecting".into(),
            message: format!(
                "{why} (is the engine running? give ?socket=PATH or set DOCKER_HOST=unix://PATH)"
            ),
        }
    }

    /// A small answer's body, capped; a status other than 2xx becomes the
    /// engine's error message.
    pub async fn small_body(&self, operation: &str, response: Response<Incoming>) -> Result<Bytes> {
        let status = response.status();
        let raw = read_capped(response.into_body(), SMALL_LIMIT)
            .await
            .map_err(|e| self.error(operation, e))?;
        if !status.is_success() {
            return Err(self.error(operation, status_message(status, &raw)));
        }
        Ok(raw)
    }

    /// Fails with the engine's message unless the status is 2xx.
    pub async fn expect_success(
        &self,
        operation: &str,
        response: Response<Incoming>,
    ) -> Result<Response<Incoming>> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let raw = read_capped(response.into_body(), SMALL_LIMIT)
            .await
            .unwrap_or_default();
        Err(self.error(operation, status_message(status, &raw)))
    }

    /// `GET /images/{name}/json`; `None` when the engine has no such image.
    pub async fn inspect(&self, name: &str) -> Result<Option<ImageInspect>> {
        let path = format!("/images/{}/json", encode_name(name));
        let response = self.send(Method::GET, &path, &[], empty()).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let raw = self.small_body("image inspect", response).await?;
        let inspect = serde_json::from_slice(&raw).map_err(|e| {
            self.error(
                "image inspect",
                format!("not an image inspect answer ({e})"),
            )
        })?;
        Ok(Some(inspect))
    }

    /// `GET /images/{name}/get`: the image as a docker-save stream.
    pub async fn save(&self, name: &str) -> Result<Incoming> {
        let path = format!("/images/{}/get", encode_name(name));
        let response = self.send(Method::GET, &path, &[], empty()).await?;
        Ok(self.expect_success("save", response).await?.into_body())
    }

    /// `POST /images/load`: loads the docker-save stream `body` sends.
    /// Returns the engine's `stream` lines (`Loaded image: app:v1`); a
    /// refusal, in the status or in the message stream, is an error with
    /// the engine's words. A body that ends in an error aborts the request,
    /// so the engine sees a cut-off stream and loads nothing.
    pub async fn load(&self, body: Body) -> Result<Vec<String>> {
        let headers = [("content-type", "application/x-tar".to_string())];
        let response = self
            .send(Method::POST, "/images/load?quiet=1", &headers, body)
            .await?;
        let response = self.expect_success("load", response).await?;
        progress::read_messages(self, "load", response.into_body()).await
    }

    /// `POST /images/{name}/tag`: gives the image a second name.
    pub async fn tag(&self, name: &str, repo: &str, tag: &str) -> Result<()> {
        let path = format!(
            "/images/{}/tag?repo={}&tag={}",
            encode_name(name),
            encode_query(repo),
            encode_query(tag)
        );
        let response = self.send(Method::POST, &path, &[], empty()).await?;
        self.small_body("tag", response).await.map(|_| ())
    }

    /// `DELETE /images/{name}?noprune=1`: removes one name of an image,
    /// never its layers.
    pub async fn untag(&self, name: &str) -> Result<()> {
        let path = format!("/images/{}?noprune=1", encode_name(name));
        let response = self.send(Method::DELETE, &path, &[], empty()).await?;
        self.small_body("untag", response).await.map(|_| ())
    }
}

/// A body with nothing in it.
pub fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// Reads a body up to `limit` bytes.
pub async fn read_capped(mut body: Incoming, limit: usize) -> std::result::Result<Bytes, String> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the answer: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(format!("the answer is over {limit} bytes"));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(out))
}

/// The engine's error message (`{"message": "..."}`), else the status.
fn status_message(status: StatusCode, raw: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Message {
        message: String,
    }
    match serde_json::from_slice::<Message>(raw) {
        Ok(m) => format!("{}: {}", status.as_u16(), m.message.trim()),
        Err(_) => {
            let text = String::from_utf8_lossy(&raw[..raw.len().min(512)]);
            let text = text.trim();
            if text.is_empty() {
                format!("status {status}")
            } else {
                format!("{}: {text}", status.as_u16())
            }
        }
    }
}

/// The path of a request, without its query, for messages.
fn path_only(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// An image name as one path segment group: Docker's router takes the
/// slashes of `registry/repo:tag` as they are, so only what is not a name
/// character is escaped.
pub fn encode_name(name: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b':')
        .remove(b'.')
        .remove(b'-')
        .remove(b'_')
        .remove(b'@');
    percent_encoding::utf8_percent_encode(name, SET).to_string()
}

/// A query value, fully escaped.
pub fn encode_query(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_order() {
        assert_eq!(
            socket_path(Some("/a.sock"), Some("unix:///b.sock")).unwrap(),
            PathBuf::from("/a.sock")
        );
        assert_eq!(
            socket_path(None, Some("unix:///b.sock")).unwrap(),
            PathBuf::from("/b.sock")
        );
        assert_eq!(
            socket_path(None, None).unwrap(),
            PathBuf::from(DEFAULT_SOCKET)
        );
        assert!(socket_path(None, Some("tcp://1.2.3.4:2375")).is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(ApiVersion::parse("1.41"), Some(ApiVersion(1, 41)));
        assert!(ApiVersion(1, 41) < ApiVersion(1, 43));
        assert_eq!(ApiVersion::parse("x"), None);
    }

    #[test]
    fn names_keep_their_slashes() {
        assert_eq!(
            encode_name("127.0.0.1:5000/team/app:v1"),
            "127.0.0.1:5000/team/app:v1"
        );
        assert_eq!(encode_name("a b?c"), "a%20b%3Fc");
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            status_message(StatusCode::NOT_FOUND, br#"{"message":"no such image"}"#),
            "404: no such image"
        );
        assert_eq!(
            status_message(StatusCode::INTERNAL_SERVER_ERROR, b""),
            "status 500 Internal Server Error"
        );
    }
}
