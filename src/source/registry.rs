//! Pulls an image from a registry: manifest (through an index, if any),
//! config, then layers streamed to disk and verified in one pass.

use std::io::{self, BufRead, BufReader, Read, Write};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Deserialize;

use crate::digest::{Algorithm, BlobInput, Digest, Hasher, HashingReader, HashingWriter};
use crate::error::{Error, Result};
use crate::handoff::{self, Handoff, LayerOut, Spooled};
use crate::image::{
    Compression, FileSlice, Image, Layer, LayerInfo, LayerNeeds, ManifestInfo, Platform,
    media_type as mt,
};
use crate::reference::Reference;
use crate::registry::{MAX_CONFIG_BYTES, Repository};
use crate::source::{FetchContext, Source};

/// An image in a registry.
pub struct RegistrySource {
    reference: Reference,
    platform: Platform,
    client: Repository,
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
    /// A source for `reference` read through `client` (a handle on the
    /// reference's repository), choosing `platform` from an index.
    pub fn new(reference: Reference, platform: Platform, client: Repository) -> Self {
        RegistrySource {
            reference,
            platform,
            client,
        }
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

    async fn fetch_inner(
        &self,
        layer: &LayerInfo,
        needs: LayerNeeds,
        ctx: &FetchContext,
    ) -> Result<Layer> {
        ctx.reporter.layer_started(layer);
        let started = std::time::Instant::now();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
        let info = layer.clone();
        let temp_dir = ctx.temp_dir.clone();
        let handoff = ctx.handoff(layer.index);
        // A thread of its own for the blob's hash pays only when cores
        // would otherwise idle; with a layer per core it is just overhead.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let relay = ctx.layers_at_once * 2 <= cores;
        let algorithm = layer.digest.algorithm();
        let writer = tokio::task::spawn_blocking(move || {
            if !relay {
                let input = HashingReader::new(ChannelReader::new(rx), algorithm);
                return write_layer(input, &info, needs, &temp_dir, handoff.as_deref());
            }
            std::thread::scope(|scope| {
                let input = RelayReader::start(scope, rx, algorithm);
                write_layer(input, &info, needs, &temp_dir, handoff.as_deref())
            })
        });
        let reporter = ctx.reporter.clone();
        let index = layer.index;
        let download = self
            .client
            .stream_blob(&layer.digest, layer.size, tx, move |n| {
                reporter.layer_bytes(index, n)
            })
            .await;
        let written = writer
            .await
            .map_err(|e| Error::InvalidImage(format!("layer {index} writer failed: {e}")))?;
        // A download error explains a writer that saw the stream end early.
        download?;
        let layer = written?;
        tracing::debug!(
            "layer {index}: {} bytes fetched and verified in {:.3}s",
            layer.info.size,
            started.elapsed().as_secs_f64()
        );
        ctx.reporter.layer_done(index);
        Ok(layer)
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
}

impl ChannelReader {
    /// Reads what `rx` delivers, in order, until the sender is dropped.
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
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
struct RelayReader<'s> {
    reader: ChannelReader,
    hasher: std::thread::ScopedJoinHandle<'s, (Digest, u64)>,
}

impl<'s> RelayReader<'s> {
    fn start<'e>(
        scope: &'s std::thread::Scope<'s, 'e>,
        mut rx: tokio::sync::mpsc::Receiver<Bytes>,
        algorithm: Algorithm,
    ) -> Self {
        // Short: the download channel already absorbs network bursts.
        let (tx, relayed) = tokio::sync::mpsc::channel::<Bytes>(2);
        let hasher = scope.spawn(move || {
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
        RelayReader {
            reader: ChannelReader::new(relayed),
            hasher,
        }
    }
}

impl Read for RelayReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl BlobInput for RelayReader<'_> {
    fn finish(self) -> (Digest, u64) {
        // Unblocks the hasher if it is waiting to forward a chunk.
        drop(self.reader);
        self.hasher
            .join()
            .unwrap_or_else(|_| (Digest::sha256_of(b"hasher thread failed"), 0))
    }
}

/// Copies everything read into a second writer.
struct Tee<R, W> {
    inner: R,
    copy: Option<W>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(w) = &mut self.copy {
            w.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

const BUF: usize = 256 << 10;

/// Chunks in flight between a download and its writer. Network chunks can be
/// a few hundred KiB, so this bounds memory per layer to a few MiB whatever
/// the layer's size, while still absorbing bursts.
const CHANNEL_CHUNKS: usize = 8;

fn temp_file(dir: &std::path::Path, prefix: &str) -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempfile_in(dir)
        .map_err(|e| Error::io("creating temp file in", dir, e))
}

/// One pass over a compressed layer stream: hash it, optionally keep it,
/// decompress, hash the tar, keep that (or hand it to the sink through
/// `handoff` as it arrives); then verify both digests. Shared by every
/// source that reads compressed blobs.
pub fn write_layer(
    input: impl BlobInput,
    info: &LayerInfo,
    needs: LayerNeeds,
    temp_dir: &std::path::Path,
    handoff: Option<&Handoff>,
) -> Result<Layer> {
    let what = |s: &str| format!("layer {} ({}) {s}", info.index, info.digest);
    let blob_file = needs
        .blob
        .then(|| temp_file(temp_dir, "blob-"))
        .transpose()?;
    // A sink that wants the blob too reads files, not a stream.
    let handoff = handoff.filter(|_| !needs.blob);
    let tee = Tee {
        inner: input,
        copy: blob_file
            .as_ref()
            .map(|f| {
                f.as_file()
                    .try_clone()
                    .map(|f| io::BufWriter::with_capacity(BUF, f))
            })
            .transpose()
            .map_err(|e| Error::stream(what("temp file"), e))?,
    };
    let mut buffered = BufReader::with_capacity(BUF, tee);
    let head = buffered
        .fill_buf()
        .map_err(|e| Error::stream(what("read"), e))?;
    let compression = Compression::sniff(head);
    let out = LayerOut::new(needs.tar, handoff, info, temp_dir)
        .map_err(|e| Error::io("creating temp file in", temp_dir, e))?;
    let mut tar_hash = HashingWriter::new(out, Algorithm::Sha256);
    let decoded = compression
        .decoder(&mut buffered)
        .and_then(|mut d| copy_large(&mut d, &mut tar_hash));
    // Read whatever the decoder left so the blob digest covers every byte.
    let drained = io::copy(&mut buffered, &mut io::sink());
    let tee = buffered.into_inner();
    let (blob_digest, blob_size) = tee.inner.finish();
    let (diff_id, tar_size, out) = tar_hash.finish();
    let (spooled, _) = out.finish().map_err(|e| Error::stream(what("write"), e))?;
    let verified = (|| {
        if let Some(mut w) = tee.copy {
            w.flush().map_err(|e| Error::stream(what("write"), e))?;
        }
        // A wrong blob explains any decode error, so check it first.
        check_blob(info, blob_size, blob_digest, what("blob"))?;
        decoded.map_err(|e| Error::stream(what(&format!("decompressing ({compression:?})")), e))?;
        drained.map_err(|e| Error::stream(what("read"), e))?;
        check_diff_id(info, diff_id)
    })();
    // A streamed layer's tar has gone to the sink already; the sink took
    // the Layer that carried its stream from the handoff.
    let tar = match spooled {
        Spooled::Streamed(tx) => {
            handoff::end_stream(tx, verified.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            None
        }
        Spooled::File(path) => Some(FileSlice::temp(path, tar_size)),
        Spooled::Nothing => None,
        Spooled::Abandoned => {
            verified?;
            // BrokenPipe tells the pipeline to report the sink's own error.
            return Err(Error::stream(
                what("stream"),
                io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the output stopped reading this layer",
                ),
            ));
        }
    };
    verified?;
    Ok(Layer {
        info: info.clone(),
        tar,
        blob: blob_file.map(|f| FileSlice::temp(f.into_temp_path(), blob_size)),
        stream: None,
    })
}

/// Checks a blob's size and digest against its descriptor; `what` names it
/// in the error.
pub(crate) fn check_blob(info: &LayerInfo, size: u64, digest: Digest, what: String) -> Result<()> {
    if size != info.size {
        return Err(Error::SizeMismatch {
            kind: crate::error::Mismatch::BlobSize,
            what,
            expected: info.size,
            found: size,
        });
    }
    if digest != info.digest {
        return Err(Error::DigestMismatch {
            kind: crate::error::Mismatch::BlobDigest,
            what,
            expected: info.digest.clone(),
            found: digest,
        });
    }
    Ok(())
}

/// Checks the sha256 of a layer's uncompressed tar against its diff_id.
pub(crate) fn check_diff_id(info: &LayerInfo, diff_id: Digest) -> Result<()> {
    if diff_id != info.diff_id {
        return Err(Error::DigestMismatch {
            kind: crate::error::Mismatch::DiffId,
            what: format!(
                "layer {} diff_id (sha256 of the uncompressed tar)",
                info.index
            ),
            expected: info.diff_id.clone(),
            found: diff_id,
        });
    }
    Ok(())
}

/// `io::copy` with a buffer large enough that decompression runs in long
/// stretches and each write reaches the hashers in big blocks.
fn copy_large(r: &mut impl Read, w: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
}

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
        needs: LayerNeeds,
        ctx: &'a FetchContext,
    ) -> BoxFuture<'a, Result<Layer>> {
        Box::pin(self.fetch_inner(layer, needs, ctx))
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
    fn one_pass_verifies_gzip_layer() {
        let tar = b"pretend this is a tar".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let blob = gz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let info = LayerInfo {
            index: 0,
            digest: Digest::sha256_of(&blob),
            size: blob.len() as u64,
            media_type: mt::OCI_LAYER_GZIP.into(),
            diff_id: Digest::sha256_of(&tar),
        };
        let both = LayerNeeds {
            tar: true,
            blob: true,
        };
        let l = write_layer(
            HashingReader::new(&blob[..], Algorithm::Sha256),
            &info,
            both,
            dir.path(),
            None,
        )
        .unwrap();
        assert_eq!(std::fs::read(l.tar.unwrap().path()).unwrap(), tar);
        assert_eq!(std::fs::read(l.blob.unwrap().path()).unwrap(), blob);

        let mut bad = info.clone();
        bad.diff_id = Digest::sha256_of(b"other");
        let e = write_layer(
            HashingReader::new(&blob[..], Algorithm::Sha256),
            &bad,
            LayerNeeds::TAR,
            dir.path(),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("diff_id"), "{e}");

        let mut corrupt = blob.clone();
        let n = corrupt.len();
        corrupt[n / 2] ^= 0xff;
        let e = write_layer(
            HashingReader::new(&corrupt[..], Algorithm::Sha256),
            &info,
            LayerNeeds::TAR,
            dir.path(),
            None,
        )
        .unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
        let e = write_layer(
            HashingReader::new(&blob[..n - 3], Algorithm::Sha256),
            &info,
            LayerNeeds::TAR,
            dir.path(),
            None,
        )
        .unwrap_err();
        assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
        // Nothing left behind by the failures.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
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
