//! Pulls an image from a registry: manifest (through an index, if any),
//! config, then each layer's blob as a reader over its download.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Deserialize;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, Result};
use crate::image::{Image, LayerInfo, ManifestInfo, Platform, media_type as mt};
use crate::reference::Reference;
use crate::registry::{Client, ClientOptions, MAX_CONFIG_BYTES};
use crate::source::{FetchContext, LayerBlob, Source};
// `inspect::search` verifies with these under their old names.
pub(crate) use crate::verify::{check_blob, check_diff_id};

/// An image in a registry.
pub struct RegistrySource {
    reference: Reference,
    platform: Platform,
    client: Arc<Client>,
}

/// A content descriptor as manifests carry it.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the target.
    #[serde(default)]
    pub media_type: String,
    /// Digest of the target.
    pub digest: Digest,
    /// Size of the target in bytes.
    pub size: u64,
    /// Platform, in index entries.
    #[serde(default)]
    pub platform: Option<PlatformSpec>,
    /// Alternative locations (foreign layers).
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

/// The platform object of an index entry.
#[derive(Deserialize, Debug, Clone)]
pub struct PlatformSpec {
    /// Architecture (`amd64`).
    #[serde(default)]
    pub architecture: String,
    /// Operating system (`linux`).
    #[serde(default)]
    pub os: String,
    /// CPU variant (`v7`).
    #[serde(default)]
    pub variant: Option<String>,
}

/// A single-image manifest (Docker schema 2 or OCI).
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Must be 2.
    pub schema_version: u32,
    /// Declared media type, if present.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
}

/// A multi-platform index (Docker manifest list or OCI index).
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Must be 2.
    pub schema_version: u32,
    /// The per-platform manifests.
    pub manifests: Vec<Descriptor>,
}

/// The parts of an image config this crate reads.
#[derive(Deserialize, Debug)]
pub struct ConfigRootfs {
    /// `rootfs` section.
    pub rootfs: Rootfs,
}

/// `rootfs` of an image config.
#[derive(Deserialize, Debug)]
pub struct Rootfs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Digests of the uncompressed layers, bottom first.
    pub diff_ids: Vec<Digest>,
}

/// What kind of document a manifest response is.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Index,
    Manifest,
    Schema1,
}

fn classify(content_type: Option<&str>, body: &[u8]) -> Result<(Kind, String)> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<u32>,
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(body)
        .map_err(|e| Error::InvalidImage(format!("manifest is not valid JSON: {e}")))?;
    // Trust a specific Content-Type; fall back to the document when the server
    // sent a generic one.
    let declared = content_type
        .filter(|c| c.starts_with("application/vnd."))
        .map(str::to_string)
        .or(probe.media_type.clone());
    let kind = match declared.as_deref() {
        Some(mt::OCI_INDEX) | Some(mt::DOCKER_MANIFEST_LIST) => Kind::Index,
        Some(mt::OCI_MANIFEST) | Some(mt::DOCKER_MANIFEST) => Kind::Manifest,
        Some(mt::DOCKER_SCHEMA1) | Some(mt::DOCKER_SCHEMA1_SIGNED) => Kind::Schema1,
        Some(other) => {
            return Err(Error::Unsupported(format!(
                "unsupported manifest media type {}",
                crate::digest::truncate_for_error(other)
            )));
        }
        None if probe.schema_version == Some(1) => Kind::Schema1,
        None if probe.manifests.is_some() => Kind::Index,
        None if probe.config.is_some() => Kind::Manifest,
        None => {
            return Err(Error::InvalidImage(
                "manifest has neither a media type, layers nor manifests".into(),
            ));
        }
    };
    if kind != Kind::Schema1 && probe.schema_version.is_some_and(|v| v == 1) {
        return Ok((Kind::Schema1, mt::DOCKER_SCHEMA1.to_string()));
    }
    let name = declared.unwrap_or_else(|| match kind {
        Kind::Index => mt::OCI_INDEX.to_string(),
        _ => mt::OCI_MANIFEST.to_string(),
    });
    Ok((kind, name))
}

/// How a manifest response would be read: `"index"`, `"manifest"` or
/// `"schema1"`, and its media type. Exposed for the fuzz targets only.
#[doc(hidden)]
pub fn classify_for_fuzzing(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(&'static str, String)> {
    let (kind, media) = classify(content_type, body)?;
    let kind = match kind {
        Kind::Index => "index",
        Kind::Manifest => "manifest",
        Kind::Schema1 => "schema1",
    };
    Ok((kind, media))
}

/// Picks the index entry that best fits `want`, or lists what is offered.
pub fn choose_platform<'a>(index: &'a Index, want: &Platform) -> Result<&'a Descriptor> {
    let mut best: Option<(u8, &Descriptor)> = None;
    for d in &index.manifests {
        let Some(p) = &d.platform else { continue };
        if let Some(score) = want.score(&p.os, &p.architecture, p.variant.as_deref())
            && best.is_none_or(|(s, _)| score > s)
        {
            best = Some((score, d));
        }
    }
    if let Some((_, d)) = best {
        return Ok(d);
    }
    let offered: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| match p.variant.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    Err(Error::InvalidImage(format!(
        "no image for platform {want} in the index; it offers: {}",
        if offered.is_empty() {
            "no platforms".to_string()
        } else {
            offered.join(", ")
        }
    )))
}

impl RegistrySource {
    /// A source for `reference`, choosing `platform` from an index.
    pub fn new(reference: Reference, platform: Platform, options: ClientOptions) -> Result<Self> {
        let client = Client::new(reference.registry_host(), &reference.path, options)?;
        Ok(RegistrySource {
            reference,
            platform,
            client: Arc::new(client),
        })
    }

    async fn resolve_inner(&self) -> Result<Image> {
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
        let (mut kind, mut media) = classify(ct.as_deref(), &body)?;
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
            index_info = Some((digest, media));
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
        let diff_ids = parse_diff_ids(&config_raw)?;
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

/// Reads `rootfs.diff_ids` from an image config.
pub fn parse_diff_ids(config: &[u8]) -> Result<Vec<Digest>> {
    let c: ConfigRootfs = serde_json::from_slice(config)
        .map_err(|e| Error::InvalidImage(format!("invalid image config: {e}")))?;
    if !c.rootfs.kind.is_empty() && c.rootfs.kind != "layers" {
        return Err(Error::InvalidImage(format!(
            "image config rootfs.type is {:?}, expected \"layers\"",
            crate::digest::truncate_for_error(&c.rootfs.kind)
        )));
    }
    Ok(c.rootfs.diff_ids)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_by_header_and_body() {
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(classify(Some(mt::OCI_INDEX), idx).unwrap().0, Kind::Index);
        assert_eq!(
            classify(Some("application/json"), idx).unwrap().0,
            Kind::Index
        );
        let s1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        assert_eq!(classify(None, s1).unwrap().0, Kind::Schema1);
        assert!(classify(Some("application/vnd.foo+json"), idx).is_err());
        assert!(classify(None, b"not json").is_err());
    }

    #[test]
    fn platform_error_lists_offers() {
        let index: Index = serde_json::from_str(
            r#"{"schemaVersion":2,"manifests":[
            {"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":1,"platform":{"os":"linux","architecture":"arm","variant":"v7"}},
            {"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}"#,
        )
        .unwrap();
        let want = Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
            variant: None,
        };
        let e = choose_platform(&index, &want).unwrap_err().to_string();
        assert!(
            e.contains("linux/arm/v7") && e.contains("linux/arm64/v8"),
            "{e}"
        );
    }
}
