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
//! images in one PATH, and one already there is not fetched again. Each
//! layer directory appears complete or not at all; a PATH that does not
//! exist yet appears only when the first run into it succeeds.
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
use crate::fsutil::{DirLock, atomic_write};
use crate::image::{Image, Layer, LayerInfo};
use crate::layer::WhiteoutMode;
use crate::sink::staging::{Published, StagedDir, StoreDir, apply_layer, move_missing};
use crate::sink::{Sink, SinkReport};

/// Writes an image as overlayfs layer directories.
pub struct MountsSink {
    root: PathBuf,
    mount: bool,
    skip_unsafe: bool,
    /// The tree being written, from `begin` on.
    store: Option<StoreDir>,
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
            store: None,
            notes: Vec::new(),
        })
    }

    /// Where this run writes (the target, or its staged tree).
    fn write_root(&self) -> &Path {
        self.store.as_ref().map_or(&self.root, StoreDir::path)
    }

    fn layer_dir(&self, l: &LayerInfo) -> PathBuf {
        self.write_root().join(l.diff_id.hex()).join("layer")
    }
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
        self.store = Some(StoreDir::open(&self.root)?);
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
        // `<diff_id>/` holds only `layer/`: one this run makes goes again
        // if the layer fails, so a store never keeps an empty one.
        let holder = crate::fsutil::parent_dir(&target).to_path_buf();
        let made_holder = match std::fs::create_dir(&holder) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(Error::io("creating", &holder, e)),
        };
        let result = self.extract_layer_dir(&layer, &target);
        if result.is_err() && made_holder {
            // Only if empty: another run may be filling it meanwhile.
            if let Err(e) = std::fs::remove_dir(&holder)
                && e.kind() != std::io::ErrorKind::DirectoryNotEmpty
            {
                tracing::error!("could not remove {}: {e}", holder.display());
            }
        }
        result
    }

    fn finish(self: Box<Self>, image: &Image) -> Result<SinkReport> {
        (*self).finish_store(image)
    }
}

impl MountsSink {
    /// Extracts `layer` into a staged directory and renames it to `target`.
    fn extract_layer_dir(&mut self, layer: &Layer, target: &Path) -> Result<()> {
        let staged = StagedDir::new(target)?;
        apply_layer(
            staged.path(),
            layer,
            WhiteoutMode::Overlay,
            self.skip_unsafe,
            &mut self.notes,
        )?;
        // Later runs trust a layer directory by its presence alone, so its
        // content must be on disk before it appears under its name.
        let dir = std::fs::File::open(staged.path())
            .map_err(|e| Error::io("opening", staged.path(), e))?;
        rustix::fs::syncfs(&dir).map_err(|e| Error::io("syncing", staged.path(), e.into()))?;
        // Another run may have finished the same layer meanwhile: its tree
        // is as good as ours, which is dropped.
        staged.commit_if_absent()?;
        Ok(())
    }

    fn finish_store(mut self, image: &Image) -> Result<SinkReport> {
        for l in &image.layers {
            if !self.layer_dir(l).is_dir() {
                return Err(Error::InvalidImage(format!(
                    "layer {} ({}) was never extracted",
                    l.index, l.diff_id
                )));
            }
        }
        let store = self
            .store
            .take()
            .ok_or_else(|| Error::InvalidImage("mounts:// output was never begun".into()))?;
        // A new tree gets its metadata before it appears.
        write_metadata(store.path(), image)?;
        let published = store.publish(move_missing)?;
        if published == Published::Merged {
            write_metadata(&self.root, image)?;
        }

        let abs =
            std::path::absolute(&self.root).map_err(|e| Error::io("resolving", &self.root, e))?;
        for d in ["rootfs", "delta", "working"] {
            let p = abs.join(d);
            std::fs::create_dir_all(&p).map_err(|e| Error::io("creating", &p, e))?;
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
        atomic_write(&self.root.join("mount-command"), &command)?;
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
        })
    }
}

/// Writes the image's config, `manifest.json` (layers bottom first) and its
/// `catalog.json` entry into `root`, under the directory's lock.
fn write_metadata(root: &Path, image: &Image) -> Result<()> {
    let config_name = format!(
        "{}.json",
        crate::digest::Digest::sha256_of(&image.config_raw).hex()
    );
    atomic_write(&root.join(&config_name), &image.config_raw)?;
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
    let _lock = DirLock::acquire(root, ".occystrap.lock")?;
    atomic_write(&root.join("manifest.json"), &pretty(&manifest)?)?;
    update_catalog(root, image, "manifest.json")
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
