//! The image model every source produces and every sink consumes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::digest::Digest;
use crate::handoff::TarStream;

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

/// A layer's bytes as they reach a filter or sink, already verified.
#[derive(Clone, Debug)]
pub struct Layer {
    /// What the layer is.
    pub info: LayerInfo,
    /// The uncompressed tar (its sha256 is `info.diff_id`), when the sink asked for it.
    pub tar: Option<FileSlice>,
    /// The blob as the source stored it (its digest is `info.digest`), when asked for.
    pub blob: Option<FileSlice>,
    /// The uncompressed tar still arriving, instead of `tar`, for a sink that
    /// takes streams (see [`crate::handoff`]).
    pub stream: Option<SharedStream>,
}

impl Layer {
    /// A layer delivered as files.
    pub fn files(info: LayerInfo, tar: Option<FileSlice>, blob: Option<FileSlice>) -> Layer {
        Layer {
            info,
            tar,
            blob,
            stream: None,
        }
    }

    /// A reader over the uncompressed tar, from the stream or the file; `None`
    /// when the layer has neither.
    pub fn tar_reader(&self) -> io::Result<Option<Box<dyn Read + Send>>> {
        if let Some(s) = self.stream.as_ref().and_then(|s| s.take()) {
            return Ok(Some(Box::new(s)));
        }
        match &self.tar {
            Some(t) => Ok(Some(Box::new(t.open()?))),
            None => Ok(None),
        }
    }
}

/// A [`TarStream`] that a cloneable [`Layer`] can carry; whoever takes it
/// first reads it.
#[derive(Clone, Debug)]
pub struct SharedStream(Arc<std::sync::Mutex<Option<TarStream>>>);

impl SharedStream {
    /// Wraps a stream.
    pub fn new(s: TarStream) -> Self {
        SharedStream(Arc::new(std::sync::Mutex::new(Some(s))))
    }
    /// Takes the stream; `None` if somebody already did.
    pub fn take(&self) -> Option<TarStream> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }
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
