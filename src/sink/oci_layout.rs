//! OCI image layout writer (`oci-layout://PATH[:TAG]`): `oci-layout`,
//! `index.json` and content-addressed `blobs/sha256/`, which skopeo, umoci,
//! podman and containerd read.
//!
//! Blobs are stored as the source served them (no recompression), each
//! through the blob writer (`format::blob`): hashed as it is
//! written to a temp name, synced and renamed only once it checks out, so
//! several images share one layout and a blob it already holds is never
//! fetched. `index.json` is rewritten under a lock, replacing an entry with
//! the same tag.
//!
//! A layout that does not exist yet is built under a hidden temp name beside
//! it and appears, with its `index.json`, only when the run succeeds: a
//! failed first run (a wrong tag, a corrupt blob) leaves nothing. Into an
//! existing layout a run writes its layer blobs in a hidden directory of its
//! own (`.occystrap-run-*`) and moves them to `blobs/` only when it
//! succeeds, so a failed run leaves the layout as it was. An existing
//! directory must be a layout (hold `oci-layout`) or be empty: blobs are
//! never written into some other directory.
//!
//! Nothing below the layout's root is followed if it is a symlink (a
//! `blobs/sha256` or lock file planted as a link is refused), and only
//! regular files are read (see [`StoreRoot`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::format::blob::{self, BlobWriter};
use crate::format::oci_layout::{
    SHA256_BLOBS, add_to_index, blob_rel, has_marker, index_entry, prepare_layout,
};
use crate::fsutil::{RunDir, StoreRoot};
use crate::image::{Image, Layer, LayerInfo, LayerNeeds, media_type as mt};
use crate::sink::staging::{Published, StoreDir};
use crate::sink::{Sink, SinkReport};

/// Writes images into an OCI image layout directory.
pub struct OciLayoutSink {
    root: PathBuf,
    tag: Option<String>,
    /// The layout being written, from `begin` on.
    store: Option<StoreDir>,
    /// Its root (the target, or its staged tree), from `begin` on.
    fs: Option<StoreRoot>,
    /// This run's layer blobs, until it succeeds.
    run: Option<RunDir>,
    bytes_written: u64,
    cancel: crate::cancel::CancelToken,
}

impl OciLayoutSink {
    /// A sink writing into the layout at `root` (created when the run
    /// succeeds if missing), naming the image `tag` in `index.json`
    /// (default: the image's own tag). Nothing is written before `begin`.
    /// Waiting for the layout's lock stops once `cancel` is cancelled.
    pub fn new(root: &Path, tag: Option<&str>, cancel: crate::cancel::CancelToken) -> Result<Self> {
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
            let fs = StoreRoot::open(root)?;
            let marked = has_marker(&fs)?;
            if !empty && !marked {
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
            fs: None,
            run: None,
            bytes_written: 0,
            cancel,
        })
    }

    fn fs(&self) -> Result<&StoreRoot> {
        self.fs
            .as_ref()
            .ok_or_else(|| Error::InvalidImage("oci-layout output was never begun".into()))
    }

    /// Whether the layout, or this run, has the blob.
    fn has_blob(&self, d: &Digest) -> bool {
        self.run.as_ref().is_some_and(|r| r.has(d.hex()))
            || self.fs.as_ref().is_some_and(|fs| fs.is_file(&blob_rel(d)))
    }

    /// Stores bytes as a blob (in the run's directory, like the layers)
    /// unless the layout has it already.
    fn put_bytes(&mut self, data: &[u8]) -> Result<Digest> {
        let d = Digest::sha256_of(data);
        if !self.has_blob(&d) {
            let run = self
                .run
                .as_ref()
                .ok_or_else(|| Error::InvalidImage("oci-layout output was never begun".into()))?;
            let fs = self.fs()?;
            let mut out = BlobWriter::new(fs, run, d.hex(), &d, Some(data.len() as u64))?;
            out.write_all(data)
                .map_err(|e| Error::io("writing", fs.display(run.name()), e))?;
            out.commit()?;
            self.bytes_written += data.len() as u64;
        }
        Ok(d)
    }

    /// Moves this run's layer blobs into `blobs/`. One another run stored
    /// meanwhile is kept: it has the same content.
    fn move_run_blobs(&self) -> Result<()> {
        let (Some(run), Some(fs)) = (&self.run, &self.fs) else {
            return Ok(());
        };
        blob::publish_run(fs, run, |name| Path::new(SHA256_BLOBS).join(name))
    }
}

/// Builds the OCI manifest for `image` as it stands after filters. The
/// source's own manifest bytes are kept when they are OCI and still describe
/// exactly these blobs, so its digest survives the copy.
fn manifest_for(image: &Image) -> Result<(Vec<u8>, &'static str)> {
    if let Some(m) = &image.manifest
        && m.media_type == mt::OCI_MANIFEST
        && let Ok(parsed) = serde_json::from_slice::<crate::wire::Manifest>(&m.raw)
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
        let fs = StoreRoot::open(store.path())?;
        prepare_layout(&fs)?;
        self.run = Some(RunDir::create(&fs)?);
        self.fs = Some(fs);
        self.store = Some(store);
        Ok(())
    }

    fn wants_layer(&mut self, layer: &LayerInfo) -> bool {
        !self.has_blob(&layer.digest)
    }

    fn layer(&mut self, layer: Layer) -> Result<()> {
        let blob = layer.blob.as_ref().ok_or_else(|| {
            Error::InvalidImage(format!(
                "layer {} arrived without its blob",
                layer.info.index
            ))
        })?;
        if self.has_blob(&layer.info.digest) {
            return Ok(());
        }
        let fs = self.fs()?;
        let run = self
            .run
            .as_ref()
            .ok_or_else(|| Error::InvalidImage("oci-layout output was never begun".into()))?;
        let (digest, name) = (&layer.info.digest, layer.info.digest.hex());
        // A verified temp file of the run's own is linked when it can be;
        // anything else is copied through the hash, so a blob served in
        // place (from a directory others may write into) is checked again.
        if blob::link_verified(fs, run, name, blob)? {
            self.bytes_written += blob.len();
            return Ok(());
        }
        let mut out = BlobWriter::new(fs, run, name, digest, Some(blob.len()))?;
        let n = out.copy_slice(blob)?;
        out.commit()?;
        self.bytes_written += n;
        Ok(())
    }

    fn finish(mut self: Box<Self>, image: &Image) -> Result<SinkReport> {
        for l in &image.layers {
            if !self.has_blob(&l.digest) {
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
        let entry = index_entry(
            manifest_type,
            &manifest_digest,
            manifest.len(),
            tag.as_deref(),
        );
        let store = self
            .store
            .take()
            .ok_or_else(|| Error::InvalidImage("oci-layout output was never begun".into()))?;
        // A new layout gets its index.json before it appears, so it is never
        // seen without one; the run's blobs join it under the lock, once
        // index.json is known to be readable.
        let mut index_bytes = add_to_index(
            self.fs()?,
            &entry,
            tag.as_deref(),
            &manifest_digest,
            &self.cancel,
            || self.move_run_blobs(),
        )?;
        // Its (now empty) directory must not travel with a new layout.
        drop(self.run.take());
        let published = store.publish(|built, target| {
            let target_fs = StoreRoot::open(target)?;
            prepare_layout(&target_fs)?;
            let built_fs = StoreRoot::open(built)?;
            let blobs = built.join("blobs");
            for algo in std::fs::read_dir(&blobs).map_err(|e| Error::io("reading", &blobs, e))? {
                let algo = algo.map_err(|e| Error::io("reading", &blobs, e))?;
                let algo_rel = Path::new("blobs").join(algo.file_name());
                move_missing(&built_fs, &target_fs, &algo_rel)?;
            }
            Ok(())
        })?;
        if published == Published::Merged {
            let target_fs = StoreRoot::open(&self.root)?;
            index_bytes = add_to_index(
                &target_fs,
                &entry,
                tag.as_deref(),
                &manifest_digest,
                &self.cancel,
                || Ok(()),
            )?;
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

/// Moves each blob of `from/rel` that `to/rel` lacks into `to/rel` (by
/// rename, so each appears complete); blobs `to` has already stay put.
fn move_missing(from: &StoreRoot, to: &StoreRoot, rel: &Path) -> Result<()> {
    to.dir(rel, true)?;
    let shown = from.display(rel);
    for entry in std::fs::read_dir(&shown).map_err(|e| Error::io("reading", &shown, e))? {
        let entry = entry.map_err(|e| Error::io("reading", &shown, e))?;
        let name = rel.join(entry.file_name());
        to.move_from(from, &name, &name)?;
    }
    Ok(())
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
