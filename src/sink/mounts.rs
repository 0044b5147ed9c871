//! Overlay-mount layer trees (`mounts://PATH`): each layer extracted into
//! its own directory in overlayfs form (a whiteout becomes a 0:0 character
//! device at the deleted path; an opaque directory gets
//! `trusted.overlay.opaque=y`), plus `manifest.json` with the layer order, a
//! ready `mount -t overlay` command line in `mount-command`, and, with
//! `?mount=true`, the mount itself on `PATH/rootfs`.
//!
//! Layout: `PATH/<diff_id hex>/layer/` per layer, `PATH/<config hex>.json`,
//! `PATH/manifest.json`, `PATH/catalog.json`, and `rootfs/`, `delta/`
//! (upper) and `working/` (work) for the mount. Layers are shared between
//! images in one PATH, and one already there is not fetched again.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::fsutil::{DirLock, atomic_write};
use crate::image::{Image, Layer, LayerInfo};
use crate::layer::WhiteoutMode;
use crate::sink::staging::{StagedDir, apply_layer};
use crate::sink::{Sink, SinkReport};

/// Writes an image as overlayfs layer directories.
pub struct MountsSink {
    root: PathBuf,
    mount: bool,
    skip_unsafe: bool,
    notes: Vec<String>,
}

impl MountsSink {
    /// A layer tree at `root`; `mount` also mounts the overlay on `root/rootfs`.
    /// Fails up front unless running as root: whiteout devices need mknod and
    /// the opaque marker needs a `trusted.*` xattr.
    pub fn new(root: &Path, mount: bool, skip_unsafe: bool) -> Result<Self> {
        if !rustix::process::geteuid().is_root() {
            return Err(Error::Usage(
                "mounts:// needs root: overlay whiteouts are device nodes (mknod) and opaque \
                 directories carry a trusted.* xattr"
                    .into(),
            ));
        }
        std::fs::create_dir_all(root).map_err(|e| Error::io("creating", root, e))?;
        Ok(MountsSink {
            root: root.to_path_buf(),
            mount,
            skip_unsafe,
            notes: Vec::new(),
        })
    }

    fn layer_dir(&self, l: &LayerInfo) -> PathBuf {
        self.root.join(l.diff_id.hex()).join("layer")
    }
}

impl Sink for MountsSink {
    fn ordered(&self) -> bool {
        false
    }

    fn begin(&mut self, _image: &Image) -> Result<()> {
        Ok(())
    }

    fn wants_layer(&mut self, layer: &LayerInfo) -> bool {
        // A layer directory appears only complete (renamed into place).
        !self.layer_dir(layer).is_dir()
    }

    fn layer(&mut self, layer: Layer) -> Result<()> {
        let target = self.layer_dir(&layer.info);
        if target.is_dir() {
            return Ok(());
        }
        let staged = StagedDir::new(&target)?;
        apply_layer(
            staged.path(),
            &layer,
            WhiteoutMode::Overlay,
            self.skip_unsafe,
            &mut self.notes,
        )?;
        staged.commit(|_| false)
    }

    fn finish(mut self: Box<Self>, image: &Image) -> Result<SinkReport> {
        for l in &image.layers {
            if !self.layer_dir(l).is_dir() {
                return Err(Error::InvalidImage(format!(
                    "layer {} ({}) was never extracted",
                    l.index, l.diff_id
                )));
            }
        }
        let config_name = format!(
            "{}.json",
            crate::digest::Digest::sha256_of(&image.config_raw).hex()
        );
        atomic_write(&self.root.join(&config_name), &image.config_raw)?;
        let layers: Vec<String> = image
            .layers
            .iter()
            .map(|l| format!("{}/layer", l.diff_id.hex()))
            .collect();
        let manifest = json!([{
            "Config": config_name,
            "RepoTags": image.repo_tag().into_iter().collect::<Vec<_>>(),
            "Layers": layers,
        }]);
        let _lock = DirLock::acquire(&self.root, ".occystrap.lock")?;
        atomic_write(&self.root.join("manifest.json"), &pretty(&manifest)?)?;
        update_catalog(&self.root, image, "manifest.json")?;

        let abs =
            std::path::absolute(&self.root).map_err(|e| Error::io("resolving", &self.root, e))?;
        for d in ["rootfs", "delta", "working"] {
            let p = abs.join(d);
            std::fs::create_dir_all(&p).map_err(|e| Error::io("creating", &p, e))?;
        }
        // overlayfs lists the topmost lower layer first.
        let lower: Vec<String> = image
            .layers
            .iter()
            .rev()
            .map(|l| {
                abs.join(l.diff_id.hex())
                    .join("layer")
                    .display()
                    .to_string()
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        let lower: Vec<String> = lower
            .into_iter()
            .filter(|p| seen.insert(p.clone()))
            .collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            abs.join("delta").display(),
            abs.join("working").display()
        );
        let command = format!(
            "mount -t overlay overlay -o {options} {}\n",
            abs.join("rootfs").display()
        );
        atomic_write(&self.root.join("mount-command"), command.as_bytes())?;
        if self.mount {
            let out = std::process::Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &options])
                .arg(abs.join("rootfs"))
                .output()
                .map_err(|e| Error::io("running mount for", abs.join("rootfs"), e))?;
            if !out.status.success() {
                return Err(Error::Unsupported(format!(
                    "mounting the overlay on {} failed: {}",
                    abs.join("rootfs").display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            self.notes
                .push(format!("mounted on {}", abs.join("rootfs").display()));
        }
        Ok(SinkReport {
            output: self.root.display().to_string(),
            bytes_written: 0,
            notes: self.notes,
        })
    }
}

fn pretty(v: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::InvalidImage(format!("serialising JSON: {e}")))
}

/// Adds `image -> tag -> manifest file` to `catalog.json`. The caller holds
/// the directory lock.
pub fn update_catalog(root: &Path, image: &Image, manifest_file: &str) -> Result<()> {
    let path = root.join("catalog.json");
    let mut catalog: Value = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|_| json!({})),
        Err(_) => json!({}),
    };
    if !catalog.is_object() {
        catalog = json!({});
    }
    let tag = image.tag.clone().unwrap_or_else(|| "latest".into());
    let entry = catalog
        .as_object_mut()
        .expect("checked above")
        .entry(image.name.clone())
        .or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry[tag] = json!(manifest_file);
    atomic_write(&path, &pretty(&catalog)?)
}
