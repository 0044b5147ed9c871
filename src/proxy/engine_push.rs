//! `dockerpush://IMAGE[:TAG]`: an image in a container engine (Docker,
//! Podman), which the engine itself pushes into a capture proxy
//! ([`super::capture`]) on loopback, to be read from there as the run's
//! source. Layers so arrive in parallel and compressed by the engine,
//! instead of as one save stream.
//!
//! The capture is made once, at the first `resolve`: the image is
//! inspected (an engine without it fails the run before anything else),
//! tagged `127.0.0.1:PORT/occystrap/capture:<random>`, pushed there with
//! the capture's random credentials in `X-Registry-Auth`, and untagged
//! whatever happened (a run dropped half-way untags it from its drop).
//! The listener is stopped as soon as the push ends; the captured blobs
//! are held open by the [`StagedSource`] the run reads, and their files
//! removed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::future::BoxFuture;
use http::Method;

use crate::engine::{Engine, encode_name, encode_query};
use crate::error::{Error, Result};
use crate::image::{Image, LayerInfo, Platform};
use crate::source::{FetchContext, LayerBlob, Source};
use crate::wire::{Index, choose_platform};

use super::capture::CaptureServer;
use super::staged::StagedSource;

/// The repository the engine pushes to in the capture proxy.
const REPOSITORY: &str = "occystrap/capture";

/// How long the untag of a run dropped half-way may take.
const UNTAG_ON_DROP: Duration = Duration::from_secs(1);

/// An image in an engine, pushed by the engine into a capture proxy.
pub struct EnginePushSource {
    socket: PathBuf,
    /// The engine's name for it (a tag added when none was given).
    name: String,
    cancel: crate::cancel::CancelToken,
    /// The platform taken from an index, if the engine pushes one.
    platform: Platform,
    captured: tokio::sync::OnceCell<Arc<StagedSource>>,
}

impl EnginePushSource {
    /// A source of the image `name` in the engine at `socket`. Nothing is
    /// asked before `resolve`; `cancel` stops the capture proxy's blocking
    /// work.
    pub fn new(
        socket: PathBuf,
        name: &str,
        cancel: crate::cancel::CancelToken,
    ) -> Result<EnginePushSource> {
        Ok(EnginePushSource {
            socket,
            name: crate::source::engine::image_name("dockerpush", name)?,
            cancel,
            platform: Platform::host(),
            captured: tokio::sync::OnceCell::new(),
        })
    }

    /// The platform to take when the engine pushes an index (Docker's
    /// containerd image store does); the host's unless set.
    pub fn with_platform(mut self, platform: Platform) -> EnginePushSource {
        self.platform = platform;
        self
    }

    /// The name asked of the engine.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn captured(&self, ctx: &FetchContext) -> Result<Arc<StagedSource>> {
        self.captured
            .get_or_try_init(|| async { self.capture(ctx).await.map(Arc::new) })
            .await
            .cloned()
    }

    async fn capture(&self, ctx: &FetchContext) -> Result<StagedSource> {
        let engine = Engine::connect(&self.socket).await?;
        if engine.inspect(&self.name).await?.is_none() {
            return Err(engine.error("image inspect", "no such image in the engine".into()));
        }
        let server = CaptureServer::start(&ctx.temp_dir, self.cancel.clone()).await?;
        let tag = format!("{:032x}", rand::random::<u128>());
        let repo = format!("{}/{REPOSITORY}", server.host());
        engine.tag(&self.name, &repo, &tag).await?;
        let tagged = Tagged {
            engine: engine.clone(),
            name: Some(format!("{repo}:{tag}")),
        };
        let pushed = push(&engine, &server, &repo, &tag).await;
        let untagged = tagged.untag().await;
        pushed.map_err(|e| match e {
            Error::Engine { message, .. } if !server.reached() => engine.error(
                "push",
                format!(
                    "{message} (the engine never reached occystrap's registry on {}: an \
                     engine in a VM or a network namespace of its own, such as Docker Desktop \
                     or rootless Docker, cannot; use docker:// there)",
                    server.host()
                ),
            ),
            e => e,
        })?;
        if let Err(e) = untagged {
            // The image is captured; only a name is left behind, which
            // says what it is.
            tracing::warn!("{e}");
        }
        let source = server.source(REPOSITORY, &tag).ok_or_else(|| {
            engine.error(
                "push",
                "the engine reported success but pushed no manifest".into(),
            )
        })?;
        // Docker's containerd image store pushes an index and its
        // children; the run takes the child for its platform.
        let source = match source.doc().is_index() {
            false => source,
            true => {
                let index: Index = serde_json::from_slice(&source.doc().raw).map_err(|e| {
                    Error::InvalidImage(format!("the index the engine pushed: {e}"))
                })?;
                let child = choose_platform(&index, &self.platform)?;
                crate::source::refuse_nested(child)?;
                server.child(REPOSITORY, &child.digest).ok_or_else(|| {
                    engine.error(
                        "push",
                        format!("the engine pushed no manifest {}", child.digest),
                    )
                })?
            }
        };
        server.stop().await;
        Ok(source)
    }
}

/// `POST /images/{repo}/push?tag=…` with the capture's credentials; the
/// message stream read to its end (an error message fails it).
async fn push(engine: &Engine, server: &CaptureServer, repo: &str, tag: &str) -> Result<()> {
    let (username, password) = server.credentials();
    let auth = serde_json::json!({
        "username": username,
        "password": password,
        "serveraddress": server.host(),
    });
    let header = base64::engine::general_purpose::URL_SAFE
        .encode(serde_json::to_vec(&auth).unwrap_or_default());
    let mut path = format!(
        "/images/{}/push?tag={}",
        encode_name(repo),
        encode_query(tag)
    );
    if engine.is_podman() {
        // Podman asks registries.conf whether a host takes plain HTTP,
        // and loopback is not in it: this push's own setting says so.
        path.push_str("&tlsVerify=false");
    }
    let response = engine
        .send(
            Method::POST,
            &path,
            &[("X-Registry-Auth", header)],
            crate::engine::empty(),
        )
        .await?;
    let response = engine.expect_success("push", response).await?;
    crate::engine::progress::read_messages(engine, "push", response.into_body()).await?;
    Ok(())
}

/// The capture's temporary name in the engine, removed by [`untag`] or,
/// if the run is dropped first, on drop.
///
/// [`untag`]: Tagged::untag
struct Tagged {
    engine: Engine,
    name: Option<String>,
}

impl Tagged {
    async fn untag(mut self) -> Result<()> {
        match self.name.take() {
            Some(name) => self.engine.untag(&name).await,
            None => Ok(()),
        }
    }
}

impl Drop for Tagged {
    /// A run dropped mid-push (a signal) still removes the name: on a
    /// thread of its own, since a drop cannot wait for a future, and for
    /// a moment at most.
    fn drop(&mut self) {
        let Some(name) = self.name.take() else {
            return;
        };
        let engine = self.engine.clone();
        let untag = std::thread::Builder::new()
            .name("untag".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                // The timer is made inside: it needs the runtime.
                rt.block_on(async {
                    let _ = tokio::time::timeout(UNTAG_ON_DROP, engine.untag(&name)).await;
                });
            });
        if let Ok(t) = untag {
            let _ = t.join();
        }
    }
}

impl Source for EnginePushSource {
    fn describe(&self) -> String {
        format!("dockerpush://{}", self.name)
    }

    fn resolve<'a>(&'a self, ctx: &'a FetchContext) -> BoxFuture<'a, Result<Image>> {
        Box::pin(async move {
            let inner = self.captured(ctx).await?;
            let mut image = inner.resolve(ctx).await?;
            let (name, tag) = split_tag(&self.name);
            image.name = name.to_string();
            image.tag = tag.map(str::to_string);
            Ok(image)
        })
    }

    fn fetch<'a>(
        &'a self,
        layer: &'a LayerInfo,
        ctx: &'a FetchContext,
    ) -> BoxFuture<'a, Result<LayerBlob>> {
        Box::pin(async move {
            let inner = self.captured(ctx).await?;
            let mut blob = inner.fetch(layer, ctx).await?;
            blob.label = format!("layer {} ({}) of {}", layer.index, layer.digest, self.name);
            Ok(blob)
        })
    }
}

/// `app:v1` as (`app`, `v1`); a name by digest has no tag.
fn split_tag(name: &str) -> (&str, Option<&str>) {
    if let Some((n, _)) = name.split_once('@') {
        return (n, None);
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_after_the_last_slash() {
        assert_eq!(split_tag("app:v1"), ("app", Some("v1")));
        assert_eq!(
            split_tag("127.0.0.1:5000/team/app:v1"),
            ("127.0.0.1:5000/team/app", Some("v1"))
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/app"),
            ("127.0.0.1:5000/app", None)
        );
        assert_eq!(split_tag("app@sha256:abc"), ("app", None));
    }
}
