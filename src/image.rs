//! The image model every source produces and every sink consumes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde::Serialize;

use crate::digest::Digest;

/// Media types this tool reads and writes.
pub mod media_type {
    /// Docker v2 schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker v2 schema 1 manifest (unsupported, recognised for the error).
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    /// Signed Docker v2 schema 1 manifest (unsupported).
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker foreign (non-distributable) layer.
    pub const DOCKER_LAYER_FOREIGN: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI uncompressed layer.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI zstd layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

    /// The media type without parameters (`; charset=...`) and surrounding space.
    pub fn essence(mt: &str) -> &str {
        mt.split(';').next().unwrap_or("").trim()
    }
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// Recognises compression from a blob's first bytes.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// Wraps a reader of compressed bytes in the matching decoder.
    pub fn decoder<'a, R: io::BufRead + 'a>(self, r: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(crate::gzip::GzipReader::new(r)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        })
    }
}

/// One layer as the manifest (or docker-save manifest) describes it.
#[derive(Clone, Debug, Serialize)]
pub struct LayerInfo {
    /// Position in the image, 0 = bottom.
    pub index: usize,
    /// Digest of the blob as the source stores it (compressed for a registry).
    pub digest: Digest,
    /// Size of that blob in bytes.
    pub size: u64,
    /// Media type of that blob.
    pub media_type: String,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
}

/// The manifest an image was resolved through, when the source has one.
#[derive(Clone, Debug)]
pub struct ManifestInfo {
    /// Digest of the manifest bytes.
    pub digest: Digest,
    /// Its media type, without parameters.
    pub media_type: String,
    /// The exact bytes.
    pub raw: Vec<u8>,
    /// The index it was chosen from, if any.
    pub index: Option<IndexInfo>,
}

/// The index an image's manifest was chosen from.
#[derive(Clone, Debug)]
pub struct IndexInfo {
    /// Digest of the index bytes.
    pub digest: Digest,
    /// Its media type, without parameters.
    pub media_type: String,
    /// The exact bytes, so that a copy can reproduce the digest.
    pub raw: Vec<u8>,
}

/// An image's metadata: what a sink needs before and after the layers.
#[derive(Clone, Debug)]
pub struct Image {
    /// Repository name as `docker images` shows it (`busybox`, `ghcr.io/org/app`).
    pub name: String,
    /// Tag, if the image has one.
    pub tag: Option<String>,
    /// Manifest, when the source has one.
    pub manifest: Option<ManifestInfo>,
    /// The config blob, byte for byte as the source had it.
    pub config_raw: Vec<u8>,
    /// Digest of `config_raw`.
    pub config_digest: Digest,
    /// Media type of the config blob.
    pub config_media_type: String,
    /// Layers bottom to top.
    pub layers: Vec<LayerInfo>,
}

impl Image {
    /// `name:tag` as `RepoTags` wants it, if the image has a tag.
    pub fn repo_tag(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{}", self.name, t))
    }

    /// The config parsed as JSON.
    pub fn config_json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_slice(&self.config_raw)
    }
}

/// A byte range of a local file: a verified temp file, or a member of a tarball.
#[derive(Clone, Debug)]
pub struct FileSlice {
    path: Arc<PathBuf>,
    offset: u64,
    len: u64,
    // Keeps a temp file alive until the last slice of it is dropped.
    _owner: Option<Arc<tempfile::TempPath>>,
}

impl FileSlice {
    /// A whole temp file, deleted when the last clone of the slice is dropped.
    pub fn temp(path: tempfile::TempPath, len: u64) -> Self {
        FileSlice {
            path: Arc::new(path.to_path_buf()),
            offset: 0,
            len,
            _owner: Some(Arc::new(path)),
        }
    }

    /// `len` bytes at `offset` of a file that outlives the run.
    pub fn range(path: Arc<PathBuf>, offset: u64, len: u64) -> Self {
        FileSlice {
            path,
            offset,
            len,
            _owner: None,
        }
    }

    /// Whether the slice is a temp file of the run's own (deleted with it),
    /// rather than part of an input that outlives the run.
    pub fn is_temp(&self) -> bool {
        self._owner.is_some()
    }

    /// The file the bytes are in.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Where the bytes start in that file.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// How many bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether the slice is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Opens a reader over exactly these bytes.
    pub fn open(&self) -> io::Result<io::Take<File>> {
        let mut f = File::open(&*self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        Ok(f.take(self.len))
    }
}

/// A layer's uncompressed tar still arriving, verified by its last read:
/// end-of-file only once the blob size, blob digest and diff_id checked out,
/// an error (wrapping the [`crate::Error`] mismatch) otherwise.
pub trait LiveTar: Read + Send {
    /// Copies the whole tar into `out` (what was spooled with the kernel's
    /// file-to-file copy) and returns the bytes copied.
    fn copy_to_file(&mut self, out: &mut File) -> io::Result<u64>;
    /// The tar as chunks for an async reader (an upload), ending the same
    /// way: a verification failure is the last item.
    fn into_chunks(self: Box<Self>) -> BoxStream<'static, io::Result<Bytes>>;
}

/// A layer's blob as stored, still arriving, for a sink that takes it live
/// (`AsyncSink::takes_live_blob`). The pipeline spools the bytes to a file
/// as they arrive, so that a sink whose use of the stream failed part-way
/// can start again from `file`.
pub struct LiveBlob {
    /// The blob's bytes as they arrive. The last item is the verdict: the
    /// stream ends only once the blob's size and digest checked out, and
    /// its last item is an error (wrapping the [`crate::Error`] mismatch)
    /// otherwise.
    pub chunks: BoxStream<'static, io::Result<Bytes>>,
    /// The whole verified blob in a file, once the layer was read to its
    /// end; the layer's error if it failed. Dropping both this and
    /// `chunks` stops the layer's download.
    pub file: futures_util::future::BoxFuture<'static, crate::error::Result<FileSlice>>,
}

impl std::fmt::Debug for LiveBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveBlob").finish_non_exhaustive()
    }
}

/// One verified layer as it reaches a filter or sink. The pipeline chooses
/// its form: verified files (`tar`, `blob`), or, for an ordered sink that
/// reads only the tar, the tar as it arrives. Read the tar through
/// [`Layer::tar_reader`] or [`Layer::copy_tar_to`], which serve both.
pub struct Layer {
    /// What the layer is.
    pub info: LayerInfo,
    /// The uncompressed tar in a verified file (its sha256 is
    /// `info.diff_id`), when it is not arriving live.
    pub tar: Option<FileSlice>,
    /// The blob as the source stored it (its digest is `info.digest`), when
    /// the reader asked for it.
    pub blob: Option<FileSlice>,
    /// The tar extracted ahead, for a sink that takes layers so
    /// (a sink's `stage_area`); then `tar` is `None` unless the sink keeps it.
    pub staged: Option<Arc<StagedTar>>,
    live: std::sync::Mutex<Option<Box<dyn LiveTar>>>,
    live_blob: std::sync::Mutex<Option<LiveBlob>>,
}

/// A verified layer tar staged for extraction (see
/// [`crate::layer::stage_layer`]): its skeleton, and its regular files
/// written ahead into the sink's stage area.
#[derive(Debug)]
pub struct StagedTar {
    /// The tar without the staged files' data.
    pub skeleton: FileSlice,
    /// The staged files.
    pub files: crate::layer::StagedFiles,
}

/// A clone has the file forms only: a live tar has one reader.
impl Clone for Layer {
    fn clone(&self) -> Layer {
        let mut layer = Layer::files(self.info.clone(), self.tar.clone(), self.blob.clone());
        layer.staged = self.staged.clone();
        layer
    }
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layer")
            .field("info", &self.info)
            .field("tar", &self.tar)
            .field("blob", &self.blob)
            .field("staged", &self.staged)
            .finish_non_exhaustive()
    }
}

impl Layer {
    /// A layer delivered as files.
    pub fn files(info: LayerInfo, tar: Option<FileSlice>, blob: Option<FileSlice>) -> Layer {
        Layer {
            info,
            tar,
            blob,
            staged: None,
            live: std::sync::Mutex::new(None),
            live_blob: std::sync::Mutex::new(None),
        }
    }

    /// A layer whose blob is still arriving (see [`LiveBlob`]).
    pub fn live_blob(info: LayerInfo, blob: LiveBlob) -> Layer {
        Layer {
            info,
            tar: None,
            blob: None,
            staged: None,
            live: std::sync::Mutex::new(None),
            live_blob: std::sync::Mutex::new(Some(blob)),
        }
    }

    /// Takes the live blob, if the layer's blob is arriving live and nobody
    /// took it.
    pub fn take_live_blob(&self) -> Option<LiveBlob> {
        self.live_blob.lock().ok().and_then(|mut l| l.take())
    }

    /// A layer whose tar is still arriving.
    pub fn live(info: LayerInfo, tar: Box<dyn LiveTar>) -> Layer {
        Layer {
            info,
            tar: None,
            blob: None,
            staged: None,
            live: std::sync::Mutex::new(Some(tar)),
            live_blob: std::sync::Mutex::new(None),
        }
    }

    /// Takes the live tar, if the layer is arriving live and nobody took it.
    pub fn take_live(&self) -> Option<Box<dyn LiveTar>> {
        self.live.lock().ok().and_then(|mut l| l.take())
    }

    /// Whether the tar is arriving live (and not yet taken).
    pub fn is_live(&self) -> bool {
        self.live.lock().map(|l| l.is_some()).unwrap_or(false)
    }

    /// A reader over the uncompressed tar, live or from the file; `None`
    /// when the layer has neither. Read a live tar to its end before
    /// committing anything: only the end says it was verified.
    pub fn tar_reader(&self) -> io::Result<Option<Box<dyn Read + Send>>> {
        if let Some(s) = self.take_live() {
            return Ok(Some(Box::new(s)));
        }
        match &self.tar {
            Some(t) => Ok(Some(Box::new(t.open()?))),
            None => Ok(None),
        }
    }

    /// Copies the whole uncompressed tar into `out`, with the kernel's
    /// file-to-file copy where it is in a file; `None` when the layer has no
    /// tar. A short copy of a file is an error.
    pub fn copy_tar_to(&self, out: &mut File) -> io::Result<Option<u64>> {
        if let Some(mut s) = self.take_live() {
            return s.copy_to_file(out).map(Some);
        }
        let Some(t) = &self.tar else { return Ok(None) };
        let copied = io::copy(&mut t.open()?, out)?;
        if copied != t.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} changed while it was copied", t.path().display()),
            ));
        }
        Ok(Some(copied))
    }

    /// The uncompressed tar as chunks, for an async sink; `None` when the
    /// layer has no tar. A file is read a chunk at a time on a blocking
    /// thread, so no thread waits on the consumer.
    pub fn into_tar_chunks(self) -> Option<BoxStream<'static, io::Result<Bytes>>> {
        if let Some(s) = self.take_live() {
            return Some(s.into_chunks());
        }
        self.tar.map(file_chunks)
    }

    /// The blob as stored, as chunks, for an async sink that asked for it:
    /// live (its last item the verdict) or from the verified file.
    pub fn into_blob_chunks(self) -> Option<BoxStream<'static, io::Result<Bytes>>> {
        if let Some(b) = self.take_live_blob() {
            return Some(b.chunks);
        }
        self.blob.map(file_chunks)
    }
}

/// A verified file's bytes as chunks.
fn file_chunks(slice: FileSlice) -> BoxStream<'static, io::Result<Bytes>> {
    const CHUNK: usize = 1 << 20;
    let state = (slice, 0u64, false);
    Box::pin(futures_util::stream::unfold(
        state,
        |(slice, at, done)| async move {
            if done || at >= slice.len() {
                return None;
            }
            let s = slice.clone();
            let read = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let f = File::open(s.path())?;
                let want = (s.len() - at).min(CHUNK as u64) as usize;
                let mut buf = vec![0u8; want];
                f.read_exact_at(&mut buf, s.offset() + at)?;
                Ok::<_, io::Error>(buf)
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
            Some(match read {
                Ok(buf) => {
                    let n = buf.len() as u64;
                    (Ok(Bytes::from(buf)), (slice, at + n, false))
                }
                Err(e) => (Err(e), (slice, at, true)),
            })
        },
    ))
}

/// Which forms of a layer a sink or filter needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LayerNeeds {
    /// The uncompressed tar.
    pub tar: bool,
    /// The blob as stored at the source.
    pub blob: bool,
}

impl LayerNeeds {
    /// Only the uncompressed tar.
    pub const TAR: LayerNeeds = LayerNeeds {
        tar: true,
        blob: false,
    };
    /// Only the source's blob.
    pub const BLOB: LayerNeeds = LayerNeeds {
        tar: false,
        blob: true,
    };
    /// Both forms.
    pub fn union(self, other: LayerNeeds) -> LayerNeeds {
        LayerNeeds {
            tar: self.tar || other.tar,
            blob: self.blob || other.blob,
        }
    }
}

/// The platform to pick from a multi-platform index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// Architecture in OCI spelling (`amd64`, `arm64`, `arm`).
    pub architecture: String,
    /// CPU variant (`v7`, `v8`), if asked for.
    pub variant: Option<String>,
}

impl Platform {
    /// linux on the architecture this binary runs on.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            "riscv64" => "riscv64",
            "s390x" => "s390x",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
        }
    }

    /// How well an index entry fits: None when it does not, higher is better.
    pub fn score(&self, os: &str, arch: &str, variant: Option<&str>) -> Option<u8> {
        if os != self.os || arch != self.architecture {
            return None;
        }
        let default_variant = match arch {
            "arm64" => Some("v8"),
            "arm" => Some("v7"),
            _ => None,
        };
        let variant = variant.filter(|v| !v.is_empty());
        match (self.variant.as_deref(), variant) {
            (Some(want), Some(have)) if want == have => Some(3),
            // arm64 images are often listed without a variant; v8 is the only one.
            (Some(want), None) if Some(want) == default_variant => Some(2),
            (Some(_), _) => None,
            (None, Some(have)) if Some(have) == default_variant => Some(3),
            (None, None) => Some(2),
            (None, Some(_)) => Some(1),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plat(arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn platform_scoring() {
        let p = plat("arm64", None);
        assert!(p.score("linux", "arm64", Some("v8")).is_some());
        assert!(p.score("linux", "arm64", None).is_some());
        assert!(p.score("linux", "arm", Some("v7")).is_none());
        let p = plat("arm64", Some("v8"));
        assert!(p.score("linux", "arm64", None).is_some());
        assert!(p.score("linux", "arm64", Some("v8")).is_some());
        let p = plat("arm", Some("v7"));
        assert!(p.score("linux", "arm", Some("v7")).is_some());
        assert!(p.score("linux", "arm", Some("v6")).is_none());
        assert!(p.score("linux", "arm64", Some("v8")).is_none());
        let p = plat("arm", None);
        assert!(p.score("linux", "arm", Some("v7")) > p.score("linux", "arm", Some("v6")));
        assert!(
            plat("amd64", None)
                .score("windows", "amd64", None)
                .is_none()
        );
    }

    #[test]
    fn sniffing() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
    }
}
