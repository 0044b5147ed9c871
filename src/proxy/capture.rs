//! Capture mode: the push path with no downstream, for a container engine
//! to push one image into (`dockerpush://`, see [`super::engine_push`]).
//!
//! Blobs are staged and verified by [`super::uploads`] as for any client.
//! A manifest PUT is checked as the push path checks it ([`check_body`],
//! every blob it names staged at the size it names) and then kept, by tag
//! and by digest, instead of being copied anywhere; manifest and blob
//! `GET`/`HEAD` are answered from what was kept and staged, and nothing
//! else is ever asked of a registry. The run then reads the image through
//! a [`StagedSource`] over the kept manifest.
//!
//! The listener is on 127.0.0.1 with an ephemeral port, in plain HTTP
//! (engines treat loopback registries as insecure), and takes only the
//! run's random Basic credentials, which are kept in memory and handed to
//! the engine alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::Response;

use crate::cancel::CleanupGuard;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::registry::{Client, ClientOptions};
use crate::sink::registry::RegistrySinkOptions;
use crate::wire::index_plan::Selection;

use super::error::{ApiError, ApiResult};
use super::push::{Checked, Stored, check_body};
use super::route::ManifestRef;
use super::staged::{Doc, StagedSource};
use super::{Body, Endpoint, Limits, Proxy, ProxyConfig};

/// Manifests kept at most: an engine pushes one image (an index and its
/// children at most).
const MAX_KEPT: usize = 64;

/// How long a stop waits for the listener to drain.
const STOP: Duration = Duration::from_secs(2);

/// A host name that never resolves: the required downstream of a capture
/// proxy, which no capture path ever asks.
const NO_DOWNSTREAM: &str = "capture.invalid";

/// A manifest kept.
#[derive(Clone)]
struct Kept {
    name: String,
    tag: Option<String>,
    doc: Doc,
}

/// The capture state of a proxy: the credentials it takes and the
/// manifests pushed to it.
pub struct Capture {
    /// `Basic <base64(user:password)>`, as a client sends it.
    expected: String,
    kept: Mutex<Vec<Kept>>,
    /// Whether any request came (an engine that cannot reach loopback
    /// sends none).
    reached: std::sync::atomic::AtomicBool,
}

impl Capture {
    /// A capture that takes `username` and `password` only.
    pub fn new(username: &str, password: &str) -> Capture {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        Capture {
            expected: format!("Basic {token}"),
            kept: Mutex::new(Vec::new()),
            reached: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether an `Authorization` header carries the run's credentials
    /// (compared in time independent of where they differ).
    pub fn authorized(&self, header: Option<&str>) -> bool {
        self.reached
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let Some(got) = header else {
            return false;
        };
        let (a, b) = (got.trim().as_bytes(), self.expected.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The manifest pushed to `name` by `tag`.
    pub fn by_tag(&self, name: &str, tag: &str) -> Option<Doc> {
        self.lock()
            .iter()
            .rev()
            .find(|k| k.name == name && k.tag.as_deref() == Some(tag))
            .map(|k| k.doc.clone())
    }

    /// The manifest pushed to `name` with `digest`.
    pub fn by_digest(&self, name: &str, digest: &Digest) -> Option<Doc> {
        self.lock()
            .iter()
            .rev()
            .find(|k| k.name == name && &k.doc.digest == digest)
            .map(|k| k.doc.clone())
    }

    fn keep(&self, kept: Kept) -> ApiResult<()> {
        let mut all = self.lock();
        if kept.tag.is_some() {
            for k in all.iter_mut() {
                if k.name == kept.name && k.tag == kept.tag {
                    k.tag = None;
                }
            }
        }
        if all.len() >= MAX_KEPT {
            return Err(ApiError::too_many_requests(format!(
                "at most {MAX_KEPT} manifests are taken"
            )));
        }
        all.push(kept);
        Ok(())
    }

    /// A manifest PUT: checked (its digest, media type, and every blob it
    /// names staged at its size; an index's children pushed before it),
    /// then kept.
    pub async fn put_manifest(
        &self,
        proxy: &Proxy,
        name: &str,
        reference: &ManifestRef,
        content_type: Option<&str>,
        body: Bytes,
    ) -> ApiResult<Stored> {
        let doc = match check_body(reference, content_type, &body)? {
            Checked::Image(doc, manifest) => {
                for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
                    match proxy.staging.blob_size(&d.digest) {
                        None => {
                            return Err(ApiError::manifest_blob_unknown(format!(
                                "blob {} was not pushed",
                                d.digest
                            )));
                        }
                        Some(n) if n != d.size => {
                            return Err(ApiError::manifest_invalid(format!(
                                "blob {} is {n} bytes, not the {} the manifest says",
                                d.digest, d.size
                            )));
                        }
                        Some(_) => {}
                    }
                }
                doc
            }
            Checked::Index(doc, index) => {
                if let Some(d) = index
                    .manifests
                    .iter()
                    .find(|d| self.by_digest(name, &d.digest).is_none())
                {
                    return Err(ApiError::manifest_blob_unknown(format!(
                        "manifest {} of the index was not pushed",
                        d.digest
                    )));
                }
                doc
            }
        };
        let stored = Stored {
            digest: doc.digest.clone(),
            media_type: doc.media_type.clone(),
            size: doc.raw.len() as u64,
        };
        let tag = match reference {
            ManifestRef::Tag(t) => Some(t.clone()),
            ManifestRef::Digest(_) => None,
        };
        self.keep(Kept {
            name: name.to_string(),
            tag,
            doc,
        })?;
        Ok(stored)
    }

    /// A manifest `GET`/`HEAD` from what was kept.
    pub fn manifest(
        &self,
        name: &str,
        reference: &ManifestRef,
        head: bool,
    ) -> ApiResult<Response<Body>> {
        let doc = match reference {
            ManifestRef::Tag(t) => self.by_tag(name, t),
            ManifestRef::Digest(d) => self.by_digest(name, d),
        }
        .ok_or_else(|| {
            ApiError::manifest_unknown(format!(
                "{name} has no manifest {}",
                super::server::describe(name, reference)
            ))
        })?;
        Ok(super::serve::manifest_response(
            doc.raw.as_ref().clone(),
            &doc.media_type,
            &doc.digest,
            head,
        ))
    }
}

/// A capture proxy listening on 127.0.0.1, its files under a directory of
/// its own. Dropping it stops the listener and removes the directory
/// (blobs a [`StagedSource`] opened stay readable through their open
/// files).
pub struct CaptureServer {
    proxy: Option<Arc<Proxy>>,
    addr: SocketAddr,
    username: String,
    password: String,
    dir: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
    _forced_exit: Vec<CleanupGuard>,
}

impl CaptureServer {
    /// Starts a capture proxy whose files go in a new directory inside
    /// `parent`, with fresh random credentials.
    pub async fn start(parent: &Path, cancel: crate::cancel::CancelToken) -> Result<CaptureServer> {
        let dir = tempfile::Builder::new()
            .prefix("capture-")
            .tempdir_in(parent)
            .map_err(|e| Error::io("creating a temp dir in", parent, e))?
            .keep();
        let mut server = CaptureServer {
            proxy: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            username: format!("occystrap-{:016x}", rand::random::<u64>()),
            password: format!("{:032x}", rand::random::<u128>()),
            dir,
            shutdown: None,
            task: None,
            _forced_exit: Vec::new(),
        };
        let staging_dir = server.dir.join("staging");
        let config = ProxyConfig {
            downstream: Endpoint {
                client: Client::standalone(NO_DOWNSTREAM, ClientOptions::default())?,
                prefix: String::new(),
            },
            upstream: None,
            filters: Vec::new(),
            sink: RegistrySinkOptions::default(),
            parallel: 1,
            platforms: Selection::All,
            cache_ttl: Duration::ZERO,
            state_dir: server.dir.clone(),
            limits: Limits::default(),
            htpasswd: None,
            cancel,
        };
        let staging = super::uploads::Staging::new(&staging_dir, &config.limits)?;
        // Deepest first: a forced exit empties each one level deep, then
        // removes it.
        for (sub, is_dir) in [
            ("staging/blobs/sha256", true),
            ("staging/blobs/sha512", true),
            ("staging/blobs", true),
            ("staging/tmp", true),
            ("staging/uploads", true),
            ("staging", true),
            ("", true),
        ] {
            let path = server.dir.join(sub);
            server
                ._forced_exit
                .push(crate::cancel::remove_on_forced_exit(path, is_dir));
        }
        let proxy = Arc::new(Proxy {
            pushes: super::push::PushState::new(&config)?,
            config,
            staging,
            pull: None,
            capture: Some(Capture::new(&server.username, &server.password)),
            verified: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind(server.addr)
            .await
            .map_err(|e| Error::io("listening on", Path::new("127.0.0.1:0"), e))?;
        server.addr = listener
            .local_addr()
            .map_err(|e| Error::io("listening on", Path::new("127.0.0.1:0"), e))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serving = proxy.clone();
        server.task = Some(tokio::spawn(async move {
            super::server::serve(serving, listener, Default::default(), async move {
                let _ = rx.await;
            })
            .await
        }));
        server.shutdown = Some(tx);
        server.proxy = Some(proxy);
        Ok(server)
    }

    /// Whether any request reached the listener.
    pub fn reached(&self) -> bool {
        self.proxy
            .as_ref()
            .and_then(|p| p.capture.as_ref())
            .is_some_and(|c| c.reached.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The credentials the listener takes: user name and password.
    pub fn credentials(&self) -> (&str, &str) {
        (&self.username, &self.password)
    }

    /// A source of the image pushed to `name` by `tag`, its blobs opened
    /// now; `None` when nothing was pushed there.
    pub fn source(&self, name: &str, tag: &str) -> Option<StagedSource> {
        let proxy = self.proxy.as_ref()?;
        let doc = proxy.capture.as_ref()?.by_tag(name, tag)?;
        Some(StagedSource::new(proxy, name, Some(tag), doc))
    }

    /// The manifest pushed to `name` with `digest` (an index's child).
    pub fn child(&self, name: &str, digest: &Digest) -> Option<StagedSource> {
        let proxy = self.proxy.as_ref()?;
        let doc = proxy.capture.as_ref()?.by_digest(name, digest)?;
        Some(StagedSource::new(proxy, name, None, doc))
    }

    /// Stops the listener (requests in progress get a moment to finish)
    /// and removes its files.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(STOP, task).await.is_err() {
                abort.abort();
            }
        }
        // Drop does the rest.
    }
}

impl Drop for CaptureServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.proxy = None;
        if let Err(e) = crate::rmtree::remove(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::FetchContext;

    #[test]
    fn only_the_runs_credentials_pass() {
        let c = Capture::new("u", "p");
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("u:p")
        );
        assert!(c.authorized(Some(&good)));
        assert!(!c.authorized(None));
        assert!(!c.authorized(Some("Basic dTpx")));
        assert!(!c.authorized(Some("Bearer x")));
        assert!(!c.authorized(Some("")));
    }

    /// The capture over HTTP: credentials, a manifest PUT checked against
    /// the staged blobs and kept by tag and digest, served back, nothing
    /// asked of a downstream, and its directory gone when dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_capture_keeps_what_is_pushed_and_serves_it() {
        let parent = tempfile::tempdir().unwrap();
        let server = CaptureServer::start(parent.path(), Default::default())
            .await
            .unwrap();
        let base = format!("http://{}/v2", server.host());
        let (user, pass) = server.credentials();
        let (user, pass) = (user.to_string(), pass.to_string());
        let http = reqwest::Client::new();
        let anonymous = http.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(anonymous.status(), 401);
        assert!(anonymous.headers().contains_key("www-authenticate"));
        let wrong = http
            .get(format!("{base}/"))
            .basic_auth(&user, Some("nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        let authed = |r: reqwest::RequestBuilder| r.basic_auth(&user, Some(&pass));

        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_digest = Digest::sha256_of(config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::image::media_type::OCI_MANIFEST,
            "config": {
                "mediaType": crate::image::media_type::OCI_CONFIG,
                "digest": config_digest.to_string(),
                "size": config.len(),
            },
            "layers": [],
        }))
        .unwrap();
        let put_manifest = || {
            authed(http.put(format!("{base}/occystrap/capture/manifests/t1")))
                .header("content-type", crate::image::media_type::OCI_MANIFEST)
                .body(manifest.clone())
        };
        // The config is not staged yet: refused, nothing kept.
        let early = put_manifest().send().await.unwrap();
        assert_eq!(early.status(), 400);
        assert!(
            early
                .text()
                .await
                .unwrap()
                .contains("MANIFEST_BLOB_UNKNOWN")
        );
        assert!(server.source("occystrap/capture", "t1").is_none());
        let blob = authed(http.post(format!(
            "{base}/occystrap/capture/blobs/uploads/?digest={config_digest}"
        )))
        .body(config.to_vec())
        .send()
        .await
        .unwrap();
        assert_eq!(blob.status(), 201);
        let put = put_manifest().send().await.unwrap();
        assert_eq!(put.status(), 201);
        let digest = Digest::sha256_of(&manifest);
        assert_eq!(
            put.headers()["docker-content-digest"].to_str().unwrap(),
            digest.to_string()
        );
        for reference in ["t1".to_string(), digest.to_string()] {
            let got = authed(http.get(format!("{base}/occystrap/capture/manifests/{reference}")))
                .send()
                .await
                .unwrap();
            assert_eq!(got.status(), 200);
            assert_eq!(got.bytes().await.unwrap().as_ref(), manifest.as_slice());
        }
        let head = authed(http.head(format!("{base}/occystrap/capture/blobs/{config_digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200);
        // A blob that is not staged is unknown: no downstream is asked.
        let other = Digest::sha256_of(b"other");
        let missing = authed(http.head(format!("{base}/occystrap/capture/blobs/{other}")))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        let tags = authed(http.get(format!("{base}/occystrap/capture/tags/list")))
            .send()
            .await
            .unwrap();
        assert_eq!(tags.status(), 405);

        let source = server.source("occystrap/capture", "t1").unwrap();
        assert_eq!(source.doc().digest, digest);
        let dir = server.dir.clone();
        assert!(dir.exists());
        server.stop().await;
        assert!(!dir.exists(), "the capture's files are left");
        // The source still reads what it opened.
        let ctx = FetchContext::new(
            parent.path().to_path_buf(),
            Arc::new(crate::progress::Silent),
        );
        let image = crate::source::Source::resolve(&source, &ctx).await.unwrap();
        assert_eq!(image.config_raw, config);
    }
}
