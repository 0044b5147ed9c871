//! `docker://IMAGE[:TAG]`: an image in a container engine (Docker, Podman),
//! read through the Engine API.
//!
//! The engine's save stream (`GET /images/{name}/get`) is written once into
//! the run's temp directory as it arrives and then read as a docker-save
//! tarball, so every format an engine writes (Docker's `<id>/layer.tar`,
//! Docker 25's OCI layout inside, Podman's `<hex>.tar` with `layer.tar`
//! links) is read by the same reader with the same checks. It has to land
//! somewhere first: every engine writes the config and `manifest.json`
//! after the layers, and the pipeline needs the config before any layer.
//! Uncompressed layers are then served where they lie in that file.

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use http_body_util::BodyExt;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::image::{Image, LayerInfo};
use crate::source::docker_archive::DockerArchiveSource;
use crate::source::{FetchContext, LayerBlob, Source};

/// How long the save stream may go without a byte. Podman writes the whole
/// save to a file of its own before it sends the first one.
const IDLE: std::time::Duration = std::time::Duration::from_secs(600);

/// An image in an engine, as a source.
pub struct EngineSource {
    socket: PathBuf,
    name: String,
    /// The save, once spooled and indexed.
    opened: tokio::sync::OnceCell<Arc<DockerArchiveSource>>,
}

impl EngineSource {
    /// A source of the image `name` (`app:v1`, `quay.io/team/app@sha256:…`)
    /// in the engine at `socket`. Nothing is asked before `resolve`.
    pub fn new(socket: PathBuf, name: &str) -> Result<Self> {
        Ok(EngineSource {
            socket,
            name: image_name("docker", name)?,
            opened: tokio::sync::OnceCell::new(),
        })
    }

    /// The name asked of the engine (a tag added when none was given).
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn open(&self, ctx: &FetchContext) -> Result<Arc<DockerArchiveSource>> {
        self.opened
            .get_or_try_init(|| async {
                let engine = Engine::connect(&self.socket).await?;
                if engine.inspect(&self.name).await?.is_none() {
                    return Err(engine.error("image inspect", "no such image in the engine".into()));
                }
                let path = ctx.temp_dir.join("engine-save.tar");
                spool(&engine, &self.name, &path, IDLE).await?;
                let opened =
                    tokio::task::spawn_blocking(move || DockerArchiveSource::open(&path, None))
                        .await
                        .map_err(|e| {
                            Error::Unsupported(format!("reading the save stream: {e}"))
                        })??;
                Ok(Arc::new(opened))
            })
            .await
            .cloned()
    }
}

/// Writes the save stream of `name` to `path`. The file is written on a
/// blocking thread in large writes, so the socket is read while the disk
/// takes the last chunks.
async fn spool(
    engine: &Engine,
    name: &str,
    path: &std::path::Path,
    idle: std::time::Duration,
) -> Result<()> {
    let mut body = engine.save(name).await?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io("creating", path, e))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        while let Some(chunk) = rx.blocking_recv() {
            out.write_all(&chunk)?;
        }
        out.flush()
    });
    let read = read_into(engine, name, &mut body, idle, &tx).await;
    drop(tx);
    let written = writer
        .await
        .map_err(|e| Error::Unsupported(format!("writing the save stream: {e}")))?;
    // A failed read explains a failed write (the writer stops when the
    // reader does), so it is reported first.
    read?;
    written.map_err(|e| Error::io("writing", path, e))
}

/// Bytes the spool gathers before one write.
const WRITE_BUFFER: usize = 1 << 20;

/// Reads the save stream to its end, handing each chunk to the writer.
async fn read_into(
    engine: &Engine,
    name: &str,
    body: &mut hyper::body::Incoming,
    idle: std::time::Duration,
    tx: &tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> Result<()> {
    // hyper's frames are a read buffer each (a few KiB): they are gathered
    // into pieces of WRITE_BUFFER, one hand-over and one write each.
    let mut piece = bytes::BytesMut::with_capacity(WRITE_BUFFER);
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| {
                engine.error(
                    "save",
                    format!("the save stream of {name} stalled for {}s", idle.as_secs()),
                )
            })?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| {
            engine.error("save", format!("the save stream of {name} broke off: {e}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        piece.extend_from_slice(&data);
        if piece.len() >= WRITE_BUFFER {
            let full = std::mem::replace(&mut piece, bytes::BytesMut::with_capacity(WRITE_BUFFER));
            if tx.send(full.freeze()).await.is_err() {
                // The writer stopped: its error says why.
                return Ok(());
            }
        }
    }
    if !piece.is_empty() {
        let _ = tx.send(piece.freeze()).await;
    }
    Ok(())
}

/// `IMAGE[:TAG]` or `IMAGE@DIGEST` as the engine is asked for it: a name
/// without a tag means `:latest`, as `docker save` reads it. `scheme`
/// names the URI's scheme in errors.
pub(crate) fn image_name(scheme: &str, name: &str) -> Result<String> {
    let name = name.trim_start_matches('/');
    if name.is_empty() {
        return Err(Error::Usage(format!(
            "{scheme}:// needs an image name ({scheme}://IMAGE:TAG)"
        )));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::Usage(format!(
            "{scheme}://{}: an image name has no spaces or control characters",
            name.escape_debug()
        )));
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    if name.contains('@') || last.contains(':') {
        Ok(name.to_string())
    } else {
        Ok(format!("{name}:latest"))
    }
}

impl Source for EngineSource {
    fn describe(&self) -> String {
        format!("docker://{}", self.name)
    }

    fn resolve<'a>(&'a self, ctx: &'a FetchContext) -> BoxFuture<'a, Result<Image>> {
        Box::pin(async move { self.open(ctx).await?.resolve(ctx).await })
    }

    fn fetch<'a>(
        &'a self,
        layer: &'a LayerInfo,
        ctx: &'a FetchContext,
    ) -> BoxFuture<'a, Result<LayerBlob>> {
        Box::pin(async move {
            let inner = self.open(ctx).await?;
            let mut blob = inner.fetch(layer, ctx).await?;
            blob.label = format!("layer {} ({}) of {}", layer.index, layer.diff_id, self.name);
            Ok(blob)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_a_tag() {
        assert_eq!(image_name("docker", "app").unwrap(), "app:latest");
        assert_eq!(image_name("docker", "app:v1").unwrap(), "app:v1");
        assert_eq!(
            image_name("docker", "127.0.0.1:5000/app").unwrap(),
            "127.0.0.1:5000/app:latest"
        );
        assert_eq!(
            image_name("docker", "app@sha256:abc").unwrap(),
            "app@sha256:abc"
        );
        assert!(image_name("docker", "").is_err());
        assert!(image_name("docker", "a\u{1b}b").is_err());
    }
}
