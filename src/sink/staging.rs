//! Building a directory tree beside its target and renaming it into place,
//! and applying verified layers onto it, for the sinks that write file trees.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::Layer;
use crate::layer::{ExtractOptions, WhiteoutMode, extract_layer};

/// A directory built under a hidden temp name next to `target`; `commit`
/// renames it into place, and dropping it uncommitted removes it.
pub struct StagedDir {
    target: PathBuf,
    staging: tempfile::TempDir,
}

impl StagedDir {
    /// Starts building the tree that will appear at `target`.
    pub fn new(target: &Path) -> Result<Self> {
        let parent = crate::fsutil::parent_dir(target);
        std::fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}.tmp-"))
            .tempdir_in(parent)
            .map_err(|e| Error::io("creating a temp dir in", parent, e))?;
        set_mode(staging.path(), 0o755)?;
        Ok(StagedDir {
            target: target.to_path_buf(),
            staging,
        })
    }

    /// Where the tree will appear.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Where the tree is being built.
    pub fn path(&self) -> &Path {
        self.staging.path()
    }

    /// Moves the finished tree to the target. An existing target is replaced
    /// only if `replaceable` says so (it looks like our own earlier output, or
    /// is empty); the old tree is renamed aside first and deleted after, so
    /// the target is never missing or half-written.
    pub fn commit(self, replaceable: impl Fn(&Path) -> bool) -> Result<()> {
        let staging = self.staging.keep();
        let target = &self.target;
        match std::fs::symlink_metadata(target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("checking", target, e)),
            Ok(meta) => {
                let empty_dir = meta.is_dir()
                    && std::fs::read_dir(target).is_ok_and(|mut d| d.next().is_none());
                if !meta.is_dir() || !(empty_dir || replaceable(target)) {
                    let _ = std::fs::remove_dir_all(&staging);
                    return Err(Error::Usage(format!(
                        "{} exists and is not an earlier output of this kind; refusing to replace it",
                        target.display()
                    )));
                }
                let aside = tempfile::Builder::new()
                    .prefix(".old-")
                    .tempdir_in(crate::fsutil::parent_dir(target))
                    .map_err(|e| Error::io("creating a temp dir beside", target, e))?
                    .keep();
                let old = aside.join("tree");
                if let Err(e) = std::fs::rename(target, &old) {
                    let _ = std::fs::remove_dir_all(&staging);
                    let _ = std::fs::remove_dir_all(&aside);
                    return Err(Error::io("moving aside", target, e));
                }
                if let Err(e) = std::fs::rename(&staging, target) {
                    let _ = std::fs::rename(&old, target);
                    let _ = std::fs::remove_dir_all(&staging);
                    let _ = std::fs::remove_dir_all(&aside);
                    return Err(Error::io("renaming into place", target, e));
                }
                let _ = std::fs::remove_dir_all(&aside);
                return Ok(());
            }
        }
        std::fs::rename(&staging, target).map_err(|e| {
            let _ = std::fs::remove_dir_all(&staging);
            Error::io("renaming into place", target, e)
        })
    }
}

/// Sets a path's permission bits.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("setting permissions of", path, e))
}

/// Applies a verified layer's tar onto `root`, collecting warnings and
/// skipped entries into `notes`.
pub fn apply_layer(
    root: &Path,
    layer: &Layer,
    whiteouts: WhiteoutMode,
    skip_unsafe: bool,
    notes: &mut Vec<String>,
) -> Result<()> {
    let tar = layer.tar.as_ref().ok_or_else(|| {
        Error::InvalidImage(format!(
            "layer {} arrived without its tar",
            layer.info.index
        ))
    })?;
    let reader = tar
        .open()
        .map_err(|e| Error::io("reading", tar.path(), e))?;
    let name = format!("layer {} ({})", layer.info.index, layer.info.digest);
    let stats = extract_layer(
        root,
        reader,
        &ExtractOptions {
            whiteouts,
            skip_unsafe,
            layer_name: name.clone(),
        },
    )?;
    for w in stats.warnings {
        tracing::warn!("{name}: {w}");
        notes.push(format!("{name}: {w}"));
    }
    for s in stats.skipped_unsafe {
        notes.push(format!("{name}: skipped unsafe {s}"));
    }
    Ok(())
}
