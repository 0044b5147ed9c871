//! OCI image layout writer (`oci-layout://PATH[:TAG]`): `oci-layout`,
//! `index.json` and content-addressed `blobs/sha256/`, which skopeo, umoci,
//! podman and containerd read.
//!
//! Blobs are stored as the source served them (no recompression), each
//! written to a temp name and renamed into place once complete, so several
//! images share one layout and a blob it already holds is never fetched.
//! `index.json` is rewritten under a lock, replacing an entry with the same
//! tag.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fsutil::{DirLock, atomic_write};
use crate::image::{Image, Layer, LayerInfo, LayerNeeds, media_type as mt};
use crate::sink::{Sink, SinkReport};

/// The annotation that names an image in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Writes images into an OCI image layout directory.
pub struct OciLayoutSink {
    root: PathBuf,
    tag: Option<String>,
    bytes_written: u64,
}

impl OciLayoutSink {
    /// A sink writing into the layout at `root` (created if missing), naming
    /// the image `tag` in `index.json` (default: the image's own tag).
    pub fn new(root: &Path, tag: Option<&str>) -> Result<Self> {
        let blobs = root.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| Error::io("creating", &blobs, e))?;
        let marker = root.join("oci-layout");
        if !marker.exists() {
            atomic_write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(OciLayoutSink {
            root: root.to_path_buf(),
            tag: tag.map(str::to_string),
            bytes_written: 0,
        })
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        blob_path(&self.root, d)
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
        let dir = target.parent().unwrap_or(&self.root);
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

        let _lock = DirLock::acquire(&self.root, ".occystrap.lock")?;
        let index_path = self.root.join("index.json");
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
        let tag = self.tag.clone().or_else(|| image.tag.clone());
        let mut entry = json!({
            "mediaType": manifest_type,
            "digest": manifest_digest.to_string(),
            "size": manifest.len(),
        });
        if let Some(t) = &tag {
            entry["annotations"] = json!({ REF_NAME: t });
        }
        let manifests = index
            .get_mut("manifests")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| Error::InvalidArchive {
                path: index_path.clone(),
                message: "index.json has no manifests array".into(),
            })?;
        // One entry per tag: re-pulling a tag replaces it. Untagged images
        // are kept once per digest.
        manifests.retain(|m| match &tag {
            Some(t) => m["annotations"][REF_NAME].as_str() != Some(t.as_str()),
            None => m["digest"].as_str() != Some(&manifest_digest.to_string()),
        });
        manifests.push(entry);
        let bytes = serde_json::to_vec_pretty(&index)
            .map_err(|e| Error::InvalidImage(format!("serialising index.json: {e}")))?;
        atomic_write(&index_path, &bytes)?;
        Ok(SinkReport {
            output: match &tag {
                Some(t) => format!("{}:{t}", self.root.display()),
                None => self.root.display().to_string(),
            },
            bytes_written: self.bytes_written + bytes.len() as u64,
            ..SinkReport::default()
        })
    }
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
