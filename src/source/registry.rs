//! Pulls an image from a registry: manifest (through an index, if any),
//! config, then layers streamed to disk and verified in one pass.

use std::io::{self, BufRead, BufReader, Read, Write};

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::digest::{Algorithm, BlobInput, Digest, Hasher, HashingReader, HashingWriter};
use crate::error::{Error, Result};
use crate::handoff::{self, Handoff, LayerOut, Spooled};
use crate::image::{
    Compression, FileSlice, Image, IndexInfo, Layer, LayerInfo, LayerNeeds, ManifestInfo, Platform,
    media_type as mt,
};
use crate::reference::Reference;
use crate::registry::{MAX_CONFIG_BYTES, Repository};
use crate::source::{FetchContext, Source};
use crate::wire::{Index, Kind, Manifest, choose_platform, classify, parse_diff_ids};

/// An image in a registry.
pub struct RegistrySource {
    reference: Reference,
    platform: Platform,
    client: Repository,
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
}
