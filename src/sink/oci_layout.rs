//! OCI image layout writer (`oci-layout://PATH[:TAG]`): `oci-layout`,
//! `index.json` and content-addressed `blobs/sha256/`, which skopeo, umoci,
//! podman and containerd read.
//!
//! Blobs are stored as the source served them (no recompression), each
//! written to a temp name, synced and renamed into place once complete, so
//! several images share one layout and a blob it already holds is never
//! fetched. `index.json` is rewritten under a lock, replacing an entry with
//! the same tag.
//!
//! A layout that does not exist yet is built under a hidden temp name beside
//! it and appears, with its `index.json`, only when the run succeeds: a
//! failed first run (a wrong tag, a corrupt blob) leaves nothing. Into an
//! existing layout a failed run can only have added complete, verified
//! blobs. An existing directory must be a layout (hold `oci-layout`) or be
//! empty: blobs are never written into some other directory.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fsutil::{DirLock, atomic_write};
use crate::image::{Image, Layer, LayerInfo, LayerNeeds, media_type as mt};
use crate::sink::staging::{Published, StoreDir, move_missing};
use crate::sink::{Sink, SinkReport};

/// The annotation that names an image in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The `oci-layout` marker file's content.
const LAYOUT_MARKER: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Writes images into an OCI image layout directory.
pub struct OciLayoutSink {
    root: PathBuf,
    tag: Option<String>,
    /// The layout being written, from `begin` on.
    store: Option<StoreDir>,
    bytes_written: u64,
}

impl OciLayoutSink {
    /// A sink writing into the layout at `root` (created when the run
    /// succeeds if missing), naming the image `tag` in `index.json`
    /// (default: the image's own tag). Nothing is written before `begin`.
    pub fn new(root: &Path, tag: Option<&str>) -> Result<Self> {
        if root.as_os_str().is_empty() {
            return Err(Error::Usage("oci-layout:// needs a path".into()));
        }
        if let Ok(m) = std::fs::metadata(root) {
            if !m.is_dir() {
                return Err(Error::Usage(format!(
                    "{} exists and is not a directory",
                    root.display()
                )));
            }
            // Adding to a layout, or starting one in an empty directory, is
            // fine; writing blobs into some other directory is not.
            let empty = std::fs::read_dir(root).is_ok_and(|mut d| d.next().is_none());
            if !empty && !root.join("oci-layout").is_file() {
                return Err(Error::Usage(format!(
                    "{} is not empty and not an OCI layout (it has no oci-layout file); \
                     refusing to write into it",
                    root.display()
                )));
            }
        }
        Ok(OciLayoutSink {
            root: root.to_path_buf(),
            tag: tag.map(str::to_string),
            store: None,
            bytes_written: 0,
        })
    }

    /// Where this run writes the layout (the target, or its staged tree).
    fn write_root(&self) -> &Path {
        self.store.as_ref().map_or(&self.root, StoreDir::path)
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        blob_path(self.write_root(), d)
    }

    /// Stores bytes as a blob unless the layout has it already.
    fn put_bytes(&mut self, data: &[u8]) -> Result<Digest> {
        let d = Digest::sha256_of(data);
        let p = self.blob_path(&d);
        if !p.exists() {
            atomic_write(&p, data)?;
            self.bytes_written += data.len() as u64;
        }
        Ok(d)
    }
}

/// Where a blob lives in a layout.
pub fn blob_path(root: &Path, d: &Digest) -> PathBuf {
    let algo = match d.algorithm() {
        crate::digest::Algorithm::Sha256 => "sha256",
        crate::digest::Algorithm::Sha512 => "sha512",
    };
    root.join("blobs").join(algo).join(d.hex())
}

/// Builds the OCI manifest for `image` as it stands after filters. The
/// source's own manifest bytes are kept when they are OCI and still describe
/// exactly these blobs, so its digest survives the copy.
fn manifest_for(image: &Image) -> Result<(Vec<u8>, &'static str)> {
    if let Some(m) = &image.manifest
        && m.media_type == mt::OCI_MANIFEST
        && let Ok(parsed) = serde_json::from_slice::<crate::source::registry::Manifest>(&m.raw)
        && parsed.config.digest == image.config_digest
        && parsed.layers.len() == image.layers.len()
        && parsed
            .layers
            .iter()
            .zip(&image.layers)
            .all(|(d, l)| d.digest == l.digest && d.size == l.size)
    {
        return Ok((m.raw.clone(), mt::OCI_MANIFEST));
    }
    let layers: Vec<Value> = image
        .layers
        .iter()
        .map(|l| {
            json!({
                "mediaType": oci_layer_type(&l.media_type),
                "digest": l.digest.to_string(),
                "size": l.size,
            })
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": mt::OCI_MANIFEST,
        "config": {
            "mediaType": mt::OCI_CONFIG,
            "digest": image.config_digest.to_string(),
            "size": image.config_raw.len(),
        },
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest)
        .map_err(|e| Error::InvalidImage(format!("serialising manifest: {e}")))?;
    Ok((bytes, mt::OCI_MANIFEST))
}

/// The OCI media type for a layer blob of any spelling.
fn oci_layer_type(media_type: &str) -> &'static str {
    match media_type {
        mt::OCI_LAYER_TAR => mt::OCI_LAYER_TAR,
        mt::OCI_LAYER_ZSTD => mt::OCI_LAYER_ZSTD,
        m if m.ends_with("zstd") => mt::OCI_LAYER_ZSTD,
        m if m.ends_with(".tar") || m == "application/vnd.docker.image.rootfs.diff.tar" => {
            mt::OCI_LAYER_TAR
        }
        _ => mt::OCI_LAYER_GZIP,
    }
}

impl Sink for OciLayoutSink {
    fn needs(&self) -> LayerNeeds {
        LayerNeeds::BLOB
    }

    fn ordered(&self) -> bool {
        false
    }

    fn begin(&mut self, _image: &Image) -> Result<()> {
        let store = StoreDir::open(&self.root)?;
        prepare_layout(store.path())?;
        self.store = Some(store);
        Ok(())
    }

    fn wants_layer(&mut self, layer: &LayerInfo) -> bool {
        !self.blob_path(&layer.digest).exists()
    }

    fn layer(&mut self, layer: Layer) -> Result<()> {
        let blob = layer.blob.as_ref().ok_or_else(|| {
            Error::InvalidImage(format!(
                "layer {} arrived without its blob",
                layer.info.index
            ))
        })?;
        let target = self.blob_path(&layer.info.digest);
        if target.exists() {
            return Ok(());
        }
        let dir = target.parent().unwrap_or(self.write_root());
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".occystrap-")
            .suffix(".partial")
            .tempfile_in(dir)
            .map_err(|e| Error::io("creating a temp file in", dir, e))?;
        let mut src = blob
            .open()
            .map_err(|e| Error::io("reading", blob.path(), e))?;
        // File to File: the kernel copies (copy_file_range) without a user buffer.
        let n = std::io::copy(&mut src, tmp.as_file_mut())
            .map_err(|e| Error::io("writing", &target, e))?;
        if n != blob.len() {
            return Err(Error::SizeMismatch {
                what: format!(
                    "layer {} blob ({})",
                    layer.info.index,
                    blob.path().display()
                ),
                expected: blob.len(),
                found: n,
            });
        }
        // Later runs trust a blob by its presence alone, so it must not be
        // able to appear truncated after a crash.
        tmp.as_file()
            .sync_data()
            .map_err(|e| Error::io("writing", tmp.path(), e))?;
        crate::fsutil::set_readable(tmp.as_file());
        tmp.persist(&target)
            .map_err(|e| Error::io("renaming into place", &target, e.error))?;
        self.bytes_written += n;
        Ok(())
    }

    fn finish(mut self: Box<Self>, image: &Image) -> Result<SinkReport> {
        for l in &image.layers {
            if !self.blob_path(&l.digest).exists() {
                return Err(Error::InvalidImage(format!(
                    "layer {} ({}) never reached the layout",
                    l.index, l.digest
                )));
            }
        }
        let config_digest = self.put_bytes(&image.config_raw)?;
        if config_digest != image.config_digest {
            return Err(Error::InvalidImage(
                "config digest does not match its bytes".into(),
            ));
        }
        let (manifest, manifest_type) = manifest_for(image)?;
        let manifest_digest = self.put_bytes(&manifest)?;

        let tag = self.tag.clone().or_else(|| image.tag.clone());
        let mut entry = json!({
            "mediaType": manifest_type,
            "digest": manifest_digest.to_string(),
            "size": manifest.len(),
        });
        if let Some(t) = &tag {
            entry["annotations"] = json!({ REF_NAME: t });
        }
        let store = self
            .store
            .take()
            .ok_or_else(|| Error::InvalidImage("oci-layout output was never begun".into()))?;
        // A new layout gets its index.json before it appears, so it is never
        // seen without one.
        let mut index_bytes = add_to_index(store.path(), &entry, tag.as_deref(), &manifest_digest)?;
        let published = store.publish(|built, target| {
            prepare_layout(target)?;
            let blobs = built.join("blobs");
            for algo in std::fs::read_dir(&blobs).map_err(|e| Error::io("reading", &blobs, e))? {
                let algo = algo.map_err(|e| Error::io("reading", &blobs, e))?;
                move_missing(&algo.path(), &target.join("blobs").join(algo.file_name()))?;
            }
            Ok(())
        })?;
        if published == Published::Merged {
            index_bytes = add_to_index(&self.root, &entry, tag.as_deref(), &manifest_digest)?;
        }
        Ok(SinkReport {
            output: match &tag {
                Some(t) => format!("{}:{t}", self.root.display()),
                None => self.root.display().to_string(),
            },
            bytes_written: self.bytes_written + index_bytes,
            ..SinkReport::default()
        })
    }
}

/// Makes `root` a layout: `blobs/sha256/` and the `oci-layout` marker.
fn prepare_layout(root: &Path) -> Result<()> {
    let blobs = root.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| Error::io("creating", &blobs, e))?;
    let marker = root.join("oci-layout");
    if !marker.exists() {
        atomic_write(&marker, LAYOUT_MARKER)?;
    }
    Ok(())
}

/// Adds `entry` to the layout's `index.json` under the layout's lock,
/// replacing the entry with the same tag (or, untagged, the same digest).
/// Returns the bytes written.
fn add_to_index(
    root: &Path,
    entry: &Value,
    tag: Option<&str>,
    manifest_digest: &Digest,
) -> Result<u64> {
    let _lock = DirLock::acquire(root, ".occystrap.lock")?;
    let index_path = root.join("index.json");
    let mut index: Value = match std::fs::read(&index_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::InvalidArchive {
            path: index_path.clone(),
            message: format!("existing index.json is not valid JSON: {e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            json!({"schemaVersion": 2, "mediaType": mt::OCI_INDEX, "manifests": []})
        }
        Err(e) => return Err(Error::io("reading", &index_path, e)),
    };
    let manifests = index
        .get_mut("manifests")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| Error::InvalidArchive {
            path: index_path.clone(),
            message: "index.json has no manifests array".into(),
        })?;
    // One entry per tag: re-pulling a tag replaces it. Untagged images
    // are kept once per digest.
    let digest = manifest_digest.to_string();
    manifests.retain(|m| match tag {
        Some(t) => m["annotations"][REF_NAME].as_str() != Some(t),
        None => m["digest"].as_str() != Some(digest.as_str()),
    });
    manifests.push(entry.clone());
    let bytes = serde_json::to_vec_pretty(&index)
        .map_err(|e| Error::InvalidImage(format!("serialising index.json: {e}")))?;
    atomic_write(&index_path, &bytes)?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_types() {
        assert_eq!(oci_layer_type(mt::DOCKER_LAYER_GZIP), mt::OCI_LAYER_GZIP);
        assert_eq!(oci_layer_type(mt::OCI_LAYER_TAR), mt::OCI_LAYER_TAR);
        assert_eq!(
            oci_layer_type("application/vnd.docker.image.rootfs.diff.tar"),
            mt::OCI_LAYER_TAR
        );
        assert_eq!(oci_layer_type(mt::OCI_LAYER_ZSTD), mt::OCI_LAYER_ZSTD);
    }
}
