//! Building a directory tree beside its target and renaming it into place,
//! and applying verified layers onto it, for the sinks that write file trees;
//! and [`StoreDir`], for outputs that several runs add to (an OCI layout, a
//! `mounts://` layer tree), which appear only once a first run completes.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::Layer;
use crate::layer::{ExtractOptions, WhiteoutMode, apply_staged, extract_layer};

/// A directory built under a hidden temp name next to `target`; `commit`
/// renames it into place, and dropping it uncommitted removes it (at any
/// depth: see [`crate::rmtree`]; a removal that fails is logged as an
/// error, since nothing else would say that the tree was left behind).
pub struct StagedDir {
    target: PathBuf,
    staging: Scratch,
}

/// A directory we created, removed when dropped unless kept.
struct Scratch(Option<PathBuf>);

impl Scratch {
    fn path(&self) -> &Path {
        self.0.as_deref().expect("a scratch dir is only kept once")
    }

    /// Gives up ownership: the directory stays where it is.
    fn keep(mut self) -> PathBuf {
        self.0.take().expect("a scratch dir is only kept once")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            discard(&p);
        }
    }
}

/// Removes a tree this process created, reporting a failure (it would
/// otherwise go unnoticed: this runs on error paths and in drops).
pub fn discard(path: &Path) {
    if let Err(e) = crate::rmtree::remove(path) {
        tracing::error!(
            "could not remove {}: {e}; it was left behind",
            path.display()
        );
    }
}

/// Removes a tree this process created; a failure is told in the text
/// returned, to be added to the error being reported.
fn discard_noted(path: &Path) -> String {
    match crate::rmtree::remove(path) {
        Ok(()) => String::new(),
        Err(e) => format!(
            " (and could not remove {}: {e}; it was left behind)",
            path.display()
        ),
    }
}

/// Creates a fresh hidden directory `PREFIXrandom` in `parent`, mode 0700.
fn scratch_in(parent: &Path, prefix: &str) -> std::io::Result<Scratch> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(parent)?;
    Ok(Scratch(Some(dir.keep())))
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
        let staging = scratch_in(parent, &format!(".{name}.tmp-"))
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

    /// Removes the tree being built, saying whether that worked (dropping
    /// it does the same, but can only log a failure).
    pub fn discard(self) -> Result<()> {
        let path = self.staging.keep();
        crate::rmtree::remove(&path).map_err(|e| Error::io("removing", &path, e))
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
            Err(e) => {
                discard(&staging);
                return Err(Error::io("checking", target, e));
            }
            Ok(meta) => {
                let empty_dir = meta.is_dir()
                    && std::fs::read_dir(target).is_ok_and(|mut d| d.next().is_none());
                if !meta.is_dir() || !(empty_dir || replaceable(target)) {
                    let note = discard_noted(&staging);
                    return Err(Error::Usage(format!(
                        "{} exists and is not an earlier output of this kind; refusing to replace it{note}",
                        target.display()
                    )));
                }
                let aside = match scratch_in(crate::fsutil::parent_dir(target), ".old-") {
                    Ok(a) => a,
                    Err(e) => {
                        discard(&staging);
                        return Err(Error::io("creating a temp dir beside", target, e));
                    }
                };
                let old = aside.path().join("tree");
                if let Err(e) = std::fs::rename(target, &old) {
                    discard(&staging);
                    return Err(Error::io("moving aside", target, e));
                }
                if let Err(e) = std::fs::rename(&staging, target) {
                    if std::fs::rename(&old, target).is_err() {
                        // The old tree is only there now: never delete it.
                        let kept = aside.keep();
                        tracing::error!(
                            "the earlier {} is now at {}",
                            target.display(),
                            kept.join("tree").display()
                        );
                    }
                    discard(&staging);
                    return Err(Error::io("renaming into place", target, e));
                }
                // Dropping `aside` removes the old tree, or says it could not.
                drop(aside);
                return Ok(());
            }
        }
        std::fs::rename(&staging, target).map_err(|e| {
            let note = discard_noted(&staging);
            let e = std::io::Error::new(e.kind(), format!("{e}{note}"));
            Error::io("renaming into place", target, e)
        })
    }
}

impl StagedDir {
    /// Moves the finished tree to the target only if nothing is there, with
    /// `renameat2(RENAME_NOREPLACE)` so that a concurrent run creating the
    /// target cannot be overwritten. Gives the tree back, untouched, when the
    /// target exists.
    pub fn commit_if_absent(self) -> Result<Option<StagedDir>> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        let target = self.target.clone();
        match renameat_with(
            CWD,
            self.staging.path(),
            CWD,
            &target,
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {
                // Renamed away: nothing is left for the temp dir to remove.
                let _ = self.staging.keep();
                Ok(None)
            }
            Err(rustix::io::Errno::EXIST) => Ok(Some(self)),
            // A filesystem without RENAME_NOREPLACE: check, then rename.
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
                if std::fs::symlink_metadata(&target).is_ok() {
                    return Ok(Some(self));
                }
                std::fs::rename(self.staging.path(), &target)
                    .map_err(|e| Error::io("renaming into place", &target, e))?;
                let _ = self.staging.keep();
                Ok(None)
            }
            Err(e) => Err(Error::io("renaming into place", &target, e.into())),
        }
    }
}

/// An output directory that several runs add to. When it does not exist
/// yet, the first run builds it under a hidden temp name beside the target
/// and it appears only when that run finishes, so a failed first run leaves
/// nothing. When it exists, runs write into it directly; everything they add
/// must appear complete (temp name and rename), so a failed run leaves only
/// finished content behind.
pub struct StoreDir {
    target: PathBuf,
    staged: Option<StagedDir>,
}

/// How [`StoreDir::publish`] made a run's content visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// The store existed; the run wrote into it directly.
    InPlace,
    /// The store was new: the whole tree was renamed into place.
    Created,
    /// The store was new, but another run created it meanwhile: this run's
    /// content was merged into that one, and metadata the run wrote into its
    /// own tree (indexes) must be written again into the target.
    Merged,
}

impl StoreDir {
    /// Opens the store at `target` (a directory, or a symlink to one), or
    /// starts building it if nothing is there.
    pub fn open(target: &Path) -> Result<StoreDir> {
        match std::fs::metadata(target) {
            Ok(m) if m.is_dir() => Ok(StoreDir {
                target: target.to_path_buf(),
                staged: None,
            }),
            Ok(_) => Err(Error::Usage(format!(
                "{} exists and is not a directory",
                target.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreDir {
                target: target.to_path_buf(),
                staged: Some(StagedDir::new(target)?),
            }),
            Err(e) => Err(Error::io("checking", target, e)),
        }
    }

    /// Where this run writes: the target, or the tree being built for it.
    pub fn path(&self) -> &Path {
        match &self.staged {
            Some(s) => s.path(),
            None => &self.target,
        }
    }

    /// Where the store is (or will be).
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Makes this run's content visible at the target. A new store is
    /// renamed into place; if another run created the target meanwhile,
    /// `merge(built, target)` moves this run's content into it instead.
    pub fn publish(self, merge: impl FnOnce(&Path, &Path) -> Result<()>) -> Result<Published> {
        let Some(staged) = self.staged else {
            return Ok(Published::InPlace);
        };
        match staged.commit_if_absent()? {
            None => Ok(Published::Created),
            Some(staged) => {
                merge(staged.path(), &self.target)?;
                Ok(Published::Merged)
            }
        }
    }
}

/// Moves each entry of `from` that `to` lacks into `to` (by rename, so each
/// appears complete); entries `to` already has are left where they are.
pub fn move_missing(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io("creating", to, e))?;
    let entries = std::fs::read_dir(from).map_err(|e| Error::io("reading", from, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("reading", from, e))?;
        let dest = to.join(entry.file_name());
        if std::fs::symlink_metadata(&dest).is_ok() {
            continue;
        }
        match std::fs::rename(entry.path(), &dest) {
            Ok(()) => {}
            // Another run put it there in the meantime: same content.
            Err(_) if std::fs::symlink_metadata(&dest).is_ok() => {}
            Err(e) => return Err(Error::io("moving into place", &dest, e)),
        }
    }
    Ok(())
}

/// Sets a path's permission bits.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("setting permissions of", path, e))
}

/// Applies a layer extracted ahead (see [`crate::sink::Sink::stage_area`]).
pub fn apply_staged_tar(
    root: &Path,
    staged: &crate::image::StagedTar,
    opts: &ExtractOptions,
) -> Result<crate::layer::ExtractStats> {
    let path = staged.skeleton.path();
    let file = std::fs::File::open(path).map_err(|e| Error::io("reading", path, e))?;
    apply_staged(root, file, &staged.files, opts)
}

/// How extraction messages name a layer.
pub fn layer_name(info: &crate::image::LayerInfo) -> String {
    format!("layer {} ({})", info.index, info.digest)
}

/// Applies a verified layer's tar onto `root` (or its staged files, see
/// [`crate::sink::Sink::stage_area`]), collecting warnings and skipped
/// entries into `notes`.
pub fn apply_layer(
    root: &Path,
    layer: &Layer,
    whiteouts: WhiteoutMode,
    skip_unsafe: bool,
    cancel: &crate::cancel::CancelToken,
    notes: &mut Vec<String>,
) -> Result<()> {
    let name = layer_name(&layer.info);
    let opts = ExtractOptions {
        whiteouts,
        skip_unsafe,
        layer_name: name.clone(),
        cancel: cancel.clone(),
    };
    let stats = if let Some(staged) = &layer.staged {
        apply_staged_tar(root, staged, &opts)?
    } else {
        let mut reader = layer
            .tar_reader()
            .map_err(|e| Error::stream(format!("reading {name}"), e))?
            .ok_or_else(|| {
                Error::InvalidImage(format!(
                    "layer {} arrived without its tar",
                    layer.info.index
                ))
            })?;
        let stats = extract_layer(root, &mut reader, &opts)?;
        // A streamed layer is verified only at its end, past the tar's own
        // end-of-archive blocks.
        io::copy(&mut reader, &mut io::sink())
            .map_err(|e| Error::stream(format!("reading {name}"), e))?;
        stats
    };
    for w in stats.warnings {
        tracing::warn!("{name}: {w}");
        notes.push(format!("{name}: {w}"));
    }
    for s in stats.skipped_unsafe {
        notes.push(format!("{name}: skipped unsafe {s}"));
    }
    Ok(())
}
