//! Pulls an image from a registry: manifest (through an index, if any),
//! config, then each layer's blob as a reader over its download.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, Result};
use crate::image::{Image, IndexInfo, LayerInfo, ManifestInfo, Platform, media_type as mt};
use crate::reference::Reference;
use crate::registry::{MAX_CONFIG_BYTES, Repository};
use crate::source::{FetchContext, LayerBlob, Source};
use crate::wire::{Descriptor, Index, Kind, Manifest, choose_platform, classify, parse_diff_ids};

/// The manifest's layers paired with the config's diff_ids; foreign
/// (non-distributable) layers are refused.
pub(crate) fn layer_infos(manifest: &Manifest, diff_ids: Vec<Digest>) -> Result<Vec<LayerInfo>> {
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::InvalidImage(format!(
            "manifest lists {} layers but the config has {} diff_ids",
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (index, (d, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
        let media_type = mt::essence(&d.media_type).to_string();
        if media_type == mt::DOCKER_LAYER_FOREIGN || media_type.contains("nondistributable") {
            return Err(Error::Unsupported(format!(
                "layer {index} is a foreign (non-distributable) layer, which is not supported"
            )));
        }
        layers.push(LayerInfo {
            index,
            digest: d.digest.clone(),
            size: d.size,
            media_type,
            diff_id,
        });
    }
    Ok(layers)
}

/// An image in a registry.
pub struct RegistrySource {
    reference: Reference,
    platform: Platform,
    client: Repository,
    /// The document the reference named when first asked: `index` and
    /// `resolve` read one GET, and a tag that moves between them cannot
    /// give them two different images.
    top: std::sync::Mutex<Option<Top>>,
}

/// A fetched top document: its bytes, digest, kind and media type.
type Top = (Vec<u8>, Digest, Kind, String);

impl RegistrySource {
    /// A source for `reference` read through `client` (a handle on the
    /// reference's repository), choosing `platform` from an index.
    pub fn new(reference: Reference, platform: Platform, client: Repository) -> Self {
        RegistrySource {
            reference,
            platform,
            client,
            top: std::sync::Mutex::new(None),
        }
    }

    /// The document the reference names: its bytes, digest, kind and media
    /// type, checked against a pinned digest; fetched once.
    async fn top(&self) -> Result<Top> {
        let cached = self.top.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(top) = cached {
            return Ok(top);
        }
        let top = self.fetch_top().await?;
        *self.top.lock().unwrap_or_else(|p| p.into_inner()) = Some(top.clone());
        Ok(top)
    }

    async fn fetch_top(&self) -> Result<Top> {
        let wanted = self.reference.manifest_ref();
        let (body, ct) = self.client.get_manifest(&wanted).await?;
        let digest = Digest::sha256_of(&body);
        if let Some(pinned) = &self.reference.digest
            && &digest != pinned
        {
            return Err(Error::DigestMismatch {
                kind: crate::error::Mismatch::Manifest,
                what: format!("manifest {}", self.reference),
                expected: pinned.clone(),
                found: digest,
            });
        }
        let (kind, media) = classify(ct.as_deref(), &body)?;
        Ok((body, digest, kind, media))
    }

    async fn resolve_inner(&self) -> Result<Image> {
        let (body, digest, mut kind, mut media) = self.top().await?;
        let (mut body, mut digest, mut index_info) = (body, digest, None);
        if kind == Kind::Index {
            let index: Index = serde_json::from_slice(&body)
                .map_err(|e| Error::InvalidImage(format!("invalid image index: {e}")))?;
            let entry = choose_platform(&index, &self.platform)?.clone();
            tracing::debug!("platform {} -> {}", self.platform, entry.digest);
            let (child, child_ct) = self.client.get_manifest(&entry.digest.to_string()).await?;
            let child_digest = Digest::sha256_of(&child);
            if child_digest != entry.digest {
                return Err(Error::DigestMismatch {
                    kind: crate::error::Mismatch::Manifest,
                    what: "platform manifest".into(),
                    expected: entry.digest.clone(),
                    found: child_digest,
                });
            }
            index_info = Some(IndexInfo {
                digest,
                media_type: media,
                raw: body,
            });
            (kind, media) = classify(child_ct.as_deref(), &child)?;
            if kind == Kind::Index {
                return Err(Error::Unsupported(
                    "an index that points to another index is not supported".into(),
                ));
            }
            body = child;
            digest = child_digest;
        }
        if kind == Kind::Schema1 {
            return Err(Error::Unsupported(format!(
                "{} uses the Docker v2 schema 1 manifest format ({}), which is deprecated and not supported; \
                 push it again with a current tool",
                self.reference, media
            )));
        }
        let manifest: Manifest = serde_json::from_slice(&body)
            .map_err(|e| Error::InvalidImage(format!("invalid image manifest: {e}")))?;
        if manifest.schema_version != 2 {
            return Err(Error::Unsupported(format!(
                "manifest schemaVersion {} is not supported",
                manifest.schema_version
            )));
        }
        let config_raw = self
            .client
            .get_small_blob(
                &manifest.config.digest,
                manifest.config.size,
                MAX_CONFIG_BYTES,
            )
            .await?;
        let layers = layer_infos(&manifest, parse_diff_ids(&config_raw)?)?;
        let config_media_type = match mt::essence(&manifest.config.media_type) {
            "" => mt::OCI_CONFIG.to_string(),
            m => m.to_string(),
        };
        Ok(Image {
            name: self.reference.repository_name(),
            tag: self.reference.tag.clone(),
            manifest: Some(ManifestInfo {
                digest,
                media_type: media,
                raw: body,
                index: index_info,
            }),
            config_digest: manifest.config.digest.clone(),
            config_raw,
            config_media_type,
            layers,
        })
    }

    /// Starts the download and returns its bytes as a reader; a failed
    /// download is an error of the reader's last read.
    fn fetch_blob(&self, layer: &LayerInfo, ctx: &FetchContext) -> LayerBlob {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let client = self.client.clone();
        let (digest, size) = (layer.digest.clone(), layer.size);
        // Progress is the verifier's, which counts what it reads.
        let download = tokio::spawn(async move {
            let r = client.stream_blob(&digest, size, tx, |_| {}).await;
            let _ = done_tx.send(r);
        });
        // A thread of its own for the blob's hash pays only when cores
        // would otherwise idle; with a layer per core it is just overhead.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let relay = ctx.layers_at_once * 2 <= cores;
        let mut blob = if relay {
            let (reader, hashed) = relay_hash(rx, layer.digest.algorithm());
            let mut blob = LayerBlob::new(layer, Box::new(reader.finishing(done_rx, download)));
            blob.prehashed = Some(hashed);
            blob
        } else {
            let reader = ChannelReader::new(rx).finishing(done_rx, download);
            LayerBlob::new(layer, Box::new(reader))
        };
        blob.label = format!("layer {} ({})", layer.index, layer.digest);
        blob
    }
}

/// A blocking reader over chunks arriving on a channel.
pub(crate) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
    /// How the download that feeds the channel ended: checked when the
    /// channel closes, so that a failed download is a read error.
    done: Option<tokio::sync::oneshot::Receiver<Result<()>>>,
    download: Option<tokio::task::JoinHandle<()>>,
}

impl ChannelReader {
    /// Reads what `rx` delivers, in order, until the sender is dropped.
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
            done: None,
            download: None,
        }
    }

    /// Ends with the download's own error when it fails, and stops the
    /// download when dropped.
    fn finishing(
        mut self,
        done: tokio::sync::oneshot::Receiver<Result<()>>,
        download: tokio::task::JoinHandle<()>,
    ) -> Self {
        self.done = Some(done);
        self.download = Some(download);
        self
    }
}

impl Drop for ChannelReader {
    fn drop(&mut self) {
        // Nobody reads the rest: stop downloading it.
        if let Some(d) = &self.download {
            d.abort();
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => {
                    return match self.done.take().map(|d| d.blocking_recv()) {
                        None | Some(Ok(Ok(()))) => Ok(0),
                        Some(Ok(Err(e))) => Err(crate::verify::into_io(e)),
                        Some(Err(_)) => Err(io::Error::other("the download stopped")),
                    };
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// A download's chunks, hashed on a thread of their own on their way to the
/// reader, so that the blob's hash and the decompression take two cores.
/// Returns the reader and what gives the digest once it was read.
fn relay_hash(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
    algorithm: Algorithm,
) -> (ChannelReader, crate::source::Prehashed) {
    // Short: the download channel already absorbs network bursts.
    let (tx, relayed) = tokio::sync::mpsc::channel::<Bytes>(2);
    let hasher = std::thread::spawn(move || {
        let mut h = Hasher::new(algorithm);
        let mut n = 0u64;
        let mut forward = true;
        while let Some(b) = rx.blocking_recv() {
            h.update(&b);
            n += b.len() as u64;
            // A reader that stopped early still gets the whole blob's
            // digest, which says whether the blob was the problem.
            forward = forward && tx.blocking_send(b).is_ok();
        }
        (h.finish(), n)
    });
    let hashed = Box::new(move || {
        hasher
            .join()
            .unwrap_or_else(|_| (Digest::sha256_of(b"hasher thread failed"), 0))
    });
    (ChannelReader::new(relayed), hashed)
}

/// Chunks in flight between a download and its reader. Network chunks can
/// be a few hundred KiB, so this bounds memory per layer to a few MiB
/// whatever the layer's size, while still absorbing bursts.
const CHANNEL_CHUNKS: usize = 8;

impl Source for RegistrySource {
    fn describe(&self) -> String {
        format!("registry {}", self.reference)
    }

    fn resolve<'a>(&'a self, _ctx: &'a FetchContext) -> BoxFuture<'a, Result<Image>> {
        Box::pin(self.resolve_inner())
    }

    fn fetch<'a>(
        &'a self,
        layer: &'a LayerInfo,
        ctx: &'a FetchContext,
    ) -> BoxFuture<'a, Result<LayerBlob>> {
        Box::pin(async move { Ok(self.fetch_blob(layer, ctx)) })
    }

    fn index<'a>(&'a self, _ctx: &'a FetchContext) -> BoxFuture<'a, Result<Option<IndexInfo>>> {
        Box::pin(async move {
            let (raw, digest, kind, media_type) = self.top().await?;
            Ok((kind == Kind::Index).then_some(IndexInfo {
                digest,
                media_type,
                raw,
            }))
        })
    }

    /// The child by digest in the same repository, keeping the tag for
    /// outputs that name the image.
    fn child(&self, descriptor: &Descriptor) -> Result<Arc<dyn Source>> {
        crate::source::refuse_nested(descriptor)?;
        let reference = Reference {
            digest: Some(descriptor.digest.clone()),
            ..self.reference.clone()
        };
        Ok(Arc::new(RegistrySource::new(
            reference,
            self.platform.clone(),
            self.client.clone(),
        )))
    }
}
