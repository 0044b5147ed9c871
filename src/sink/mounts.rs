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
//! images in one PATH, and one already there is not fetched again. A run
//! extracts its layers in a hidden directory of its own and moves them to
//! their places only when it succeeds, so each layer directory appears
//! complete or not at all and a failed run leaves PATH as it was; a PATH
//! that does not exist yet appears only when the first run into it
//! succeeds. Nothing below PATH is followed if it is a symlink (a planted
//! `<diff_id>` link or lock file is refused; see [`StoreRoot`]).
//!
//! In the overlay options (and so in `mount-command`) a `,`, `:` or `\` in
//! a path is escaped with a backslash, as overlayfs expects; the command
//! line is quoted for a POSIX shell (`sh PATH/mount-command` runs it).
//! `delta/` and `working/` belong to PATH, not to one image: what a
//! container wrote through an earlier mount shows up in the next one.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::fsutil::StoreRoot;
use crate::image::{Image, Layer, LayerInfo};
use crate::layer::WhiteoutMode;
use crate::sink::staging::{Published, StagedDir, StoreDir, apply_layer, move_missing};
use crate::sink::{Sink, SinkReport};

/// Writes an image as overlayfs layer directories.
pub struct MountsSink {
    root: PathBuf,
    mount: bool,
    skip_unsafe: bool,
    cancel: crate::cancel::CancelToken,
    /// The tree being written, from `begin` on.
    store: Option<StoreDir>,
    /// Its root (the target, or its staged tree), from `begin` on.
    fs: Option<StoreRoot>,
    /// This run's layer trees, as `<diff_id hex>/`, until it succeeds;
    /// removed with what it holds if the run fails.
    run: Option<StagedDir>,
    /// The diff_ids extracted into `run`.
    extracted: std::collections::HashSet<crate::digest::Digest>,
    notes: Vec<String>,
}

impl MountsSink {
    /// A layer tree at `root`; `mount` also mounts the overlay on `root/rootfs`.
    /// Fails up front unless running as root: whiteout devices need mknod and
    /// the opaque marker needs a `trusted.*` xattr. Extracting and waiting
    /// for the store's lock stop once `cancel` is cancelled.
    pub fn new(
        root: &Path,
        mount: bool,
        skip_unsafe: bool,
        cancel: crate::cancel::CancelToken,
    ) -> Result<Self> {
        if !rustix::process::geteuid().is_root() {
            return Err(Error::Usage(
                "mounts:// needs root: overlay whiteouts are device nodes (mknod) and opaque \
                 directories carry a trusted.* xattr"
                    .into(),
            ));
        }
        if root.as_os_str().is_empty() {
            return Err(Error::Usage("mounts:// needs a path".into()));
        }
        if let Ok(m) = std::fs::metadata(root)
            && !m.is_dir()
        {
            return Err(Error::Usage(format!(
                "{} exists and is not a directory",
                root.display()
            )));
        }
        if mount
            && let Ok(abs) = std::path::absolute(root.join("rootfs"))
            && is_mount_point(&abs)
        {
            return Err(Error::Usage(format!(
                "{} is already mounted; unmount it (umount {}) before mounting again",
                abs.display(),
                abs.display()
            )));
        }
        Ok(MountsSink {
            root: root.to_path_buf(),
            mount,
            skip_unsafe,
            cancel,
            store: None,
            fs: None,
            run: None,
            extracted: Default::default(),
            notes: Vec::new(),
        })
    }

    fn begun(&self) -> Result<(&StoreRoot, &StagedDir)> {
        match (&self.fs, &self.run) {
            (Some(fs), Some(run)) => Ok((fs, run)),
            _ => Err(Error::InvalidImage(
                "mounts:// output was never begun".into(),
            )),
        }
    }

    /// Whether the tree, or this run, has the layer.
    fn has_layer(&self, l: &LayerInfo) -> bool {
        self.extracted.contains(&l.diff_id)
            || self
                .fs
                .as_ref()
                .is_some_and(|fs| fs.is_dir(&layer_rel(&l.diff_id)))
    }

    /// The run directory's name in the tree's root.
    fn run_name(&self) -> Result<PathBuf> {
        let (_, run) = self.begun()?;
        Ok(run
            .path()
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_default())
    }

    /// Moves this run's layer trees to `<hex>/layer`. One another run put
    /// there meanwhile is kept: it has the same content.
    fn move_run_layers(&self) -> Result<()> {
        let run_name = self.run_name()?;
        let (fs, run) = self.begun()?;
        if self.extracted.is_empty() {
            return Ok(());
        }
        // Later runs trust a layer directory by its presence alone, so its
        // content must be on disk before it appears under its name.
        let dir =
            std::fs::File::open(run.path()).map_err(|e| Error::io("opening", run.path(), e))?;
        rustix::fs::syncfs(&dir).map_err(|e| Error::io("syncing", run.path(), e.into()))?;
        let in_the_way =
            |dest: &Path| crate::fsutil::check_free_or(fs, dest, rustix::fs::FileType::Directory);
        // Every place checked before anything moves: a run that fails here
        // has added nothing.
        for d in &self.extracted {
            in_the_way(&layer_rel(d))?;
        }
        for d in &self.extracted {
            let dest = layer_rel(d);
            if !fs.rename(&run_name.join(d.hex()), &dest, true)? {
                in_the_way(&dest)?;
            }
        }
        Ok(())
    }
}

/// Where a layer's tree lives, relative to the root.
fn layer_rel(diff_id: &crate::digest::Digest) -> PathBuf {
    Path::new(&diff_id.hex()).join("layer")
}

/// Whether `path` (absolute) is a mount point in this mount namespace.
fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| Path::new(&unescape_mountinfo(p)) == want)
}

/// Undoes `/proc/self/mountinfo`'s octal escapes (`\040` for a space).
fn unescape_mountinfo(s: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match digits {
            Some(d) if b[i] == b'\\' => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// A path as an overlayfs option value: `\`, `,` and `:` are escaped with
/// a backslash (overlayfs splits options at `,` and lower dirs at `:`).
fn overlay_escape(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for &c in path.as_os_str().as_bytes() {
        if matches!(c, b'\\' | b',' | b':') {
            out.push(b'\\');
        }
        out.push(c);
    }
    out
}

/// A word quoted for a POSIX shell when it needs it.
fn shell_quote(word: &[u8]) -> Vec<u8> {
    let plain = !word.is_empty()
        && word
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=,:@%".contains(b));
    if plain {
        return word.to_vec();
    }
    let mut out = vec![b'\''];
    for &c in word {
        if c == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(c);
        }
    }
    out.push(b'\'');
    out
}

impl Sink for MountsSink {
    fn ordered(&self) -> bool {
        false
    }

    fn begin(&mut self, _image: &Image) -> Result<()> {
        let store = StoreDir::open(&self.root)?;
        let fs = StoreRoot::open(store.path())?;
        // Beside the layers, on their filesystem, so that they move by rename.
        self.run = Some(StagedDir::new(&store.path().join(".occystrap-run"))?);
        self.fs = Some(fs);
        self.store = Some(store);
        Ok(())
    }

    fn wants_layer(&mut self, layer: &LayerInfo) -> bool {
        // A layer directory appears only complete (renamed into place).
        !self.has_layer(layer)
    }

    fn layer(&mut self, layer: Layer) -> Result<()> {
        if self.has_layer(&layer.info) {
            return Ok(());
        }
        let run_name = self.run_name()?;
        let (fs, _) = self.begun()?;
        let rel = run_name.join(layer.info.diff_id.hex());
        fs.dir(&rel, true)?;
        let tree = fs.display(&rel);
        // Recorded first: whatever happens, the run dir's removal takes it.
        self.extracted.insert(layer.info.diff_id.clone());
        apply_layer(
            &tree,
            &layer,
            WhiteoutMode::Overlay,
            self.skip_unsafe,
            &self.cancel,
            &mut self.notes,
        )?;
        Ok(())
    }

    fn finish(mut self: Box<Self>, image: &Image) -> Result<SinkReport> {
        for l in &image.layers {
            if !self.has_layer(l) {
                return Err(Error::InvalidImage(format!(
                    "layer {} ({}) was never extracted",
                    l.index, l.diff_id
                )));
            }
        }
        // A new tree gets its metadata before it appears; the run's layers
        // join it under the lock, once the catalog is known to be readable.
        write_metadata(self.begun()?.0, image, &self.cancel, || {
            self.move_run_layers()
        })?;
        drop(self.run.take());
        let store = self
            .store
            .take()
            .ok_or_else(|| Error::InvalidImage("mounts:// output was never begun".into()))?;
        let published = store.publish(move_missing)?;
        let target = StoreRoot::open(&self.root)?;
        if published == Published::Merged {
            write_metadata(&target, image, &self.cancel, || Ok(()))?;
        }

        let abs =
            std::path::absolute(&self.root).map_err(|e| Error::io("resolving", &self.root, e))?;
        for d in ["rootfs", "delta", "working"] {
            target.dir(Path::new(d), true)?;
        }
        // overlayfs lists the topmost lower layer first. A layer the image
        // lists twice is given once, at its topmost place: overlayfs refuses
        // a repeated layer, and the lower copy adds nothing the upper one
        // does not.
        let mut seen = std::collections::HashSet::new();
        let lower: Vec<Vec<u8>> = image
            .layers
            .iter()
            .rev()
            .filter(|l| seen.insert(l.diff_id.clone()))
            .map(|l| overlay_escape(&abs.join(l.diff_id.hex()).join("layer")))
            .collect();
        let mut options = b"lowerdir=".to_vec();
        options.extend(lower.join(&b':'));
        options.extend_from_slice(b",upperdir=");
        options.extend(overlay_escape(&abs.join("delta")));
        options.extend_from_slice(b",workdir=");
        options.extend(overlay_escape(&abs.join("working")));
        let rootfs = abs.join("rootfs");
        let mut command = b"mount -t overlay overlay -o ".to_vec();
        command.extend(shell_quote(&options));
        command.push(b' ');
        command.extend(shell_quote(rootfs.as_os_str().as_bytes()));
        command.push(b'\n');
        target.atomic_write(Path::new("mount-command"), &command)?;
        if self.mount {
            let out = std::process::Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(std::ffi::OsStr::from_bytes(&options))
                .arg(&rootfs)
                .output()
                .map_err(|e| Error::io("running mount for", &rootfs, e))?;
            if !out.status.success() {
                return Err(Error::Unsupported(format!(
                    "mounting the overlay on {} failed: {}",
                    rootfs.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            self.notes.push(format!("mounted on {}", rootfs.display()));
        }
        Ok(SinkReport {
            output: self.root.display().to_string(),
            bytes_written: 0,
            notes: self.notes,
            ..SinkReport::default()
        })
    }
}

/// Writes the image's config, `manifest.json` (layers bottom first) and its
/// `catalog.json` entry into `root`, under the directory's lock;
/// `before_write` runs under the lock once the old catalog has been read.
fn write_metadata(
    root: &StoreRoot,
    image: &Image,
    cancel: &crate::cancel::CancelToken,
    before_write: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let config_name = format!(
        "{}.json",
        crate::digest::Digest::sha256_of(&image.config_raw).hex()
    );
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
    let _lock = root.lock(".occystrap.lock", cancel)?;
    let catalog = read_catalog(root)?;
    // Whatever could refuse is looked at before anything becomes visible.
    for name in [config_name.as_str(), "manifest.json"] {
        crate::fsutil::check_free_or(root, Path::new(name), rustix::fs::FileType::RegularFile)?;
    }
    before_write()?;
    root.atomic_write(Path::new(&config_name), &image.config_raw)?;
    root.atomic_write(Path::new("manifest.json"), &pretty(&manifest)?)?;
    update_catalog(root, catalog, image, "manifest.json")
}

/// The tree's `catalog.json` (empty when missing or not JSON). Only a
/// regular file is read: a FIFO or link there is refused.
fn read_catalog(root: &StoreRoot) -> Result<Value> {
    let raw = root.read_small(Path::new("catalog.json"), 64 << 20)?;
    Ok(raw
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| json!({})))
}

fn pretty(v: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::InvalidImage(format!("serialising JSON: {e}")))
}

/// Adds `image -> tag -> manifest file` to `catalog` and writes it as
/// `catalog.json`. The caller holds the directory lock.
fn update_catalog(
    root: &StoreRoot,
    mut catalog: Value,
    image: &Image,
    manifest_file: &str,
) -> Result<()> {
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
    root.atomic_write(Path::new("catalog.json"), &pretty(&catalog)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_escape_separators() {
        assert_eq!(overlay_escape(Path::new("/a/b")), b"/a/b");
        assert_eq!(
            overlay_escape(Path::new("/x,upperdir=/etc:y\\z")),
            b"/x\\,upperdir=/etc\\:y\\\\z"
        );
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(
            shell_quote(b"lowerdir=/a:/b,upperdir=/c"),
            b"lowerdir=/a:/b,upperdir=/c"
        );
        assert_eq!(shell_quote(b"/my dir"), b"'/my dir'");
        assert_eq!(shell_quote(b"it's"), b"'it'\\''s'");
        assert_eq!(shell_quote(b"a\\,b"), b"'a\\,b'");
        assert_eq!(shell_quote(b"$(x)"), b"'$(x)'");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/a\\134b"), "/a\\b");
        assert_eq!(unescape_mountinfo("/é\\09"), "/é\\09");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
    }
}
