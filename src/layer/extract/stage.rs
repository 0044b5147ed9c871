//! Extracting a layer in two steps, so that the layers of an image can be
//! written at once and still be applied bottom to top.
//!
//! [`stage_layer`] reads a layer's tar and writes each regular file's data,
//! with its owner, mode, xattrs and times, into a staging directory of its
//! own, under a name of ours (the entry's ordinal). What it passes on is a
//! skeleton: the tar with those files' data and padding left out.
//! [`apply_staged`] later applies the skeleton like any layer, except that a
//! staged file is renamed into its place instead of written. So every name,
//! whiteout, link and directory is still applied in layer order, by the
//! same code, and only the bytes, which no later layer looks at, are
//! written early. The staging directory must be on the target's filesystem.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{OFlags, RenameFlags};

use super::{COPY_BUF, Extractor, Fail, Meta, open_root, shown};
use crate::layer::path::{self, RelPath, Whiteout};
use crate::layer::resolve;
use crate::layer::{ExtractOptions, ExtractStats};
use crate::tarfmt::{Archive, BufSeek, Entry, Stream};
use crate::{Error, Result};

/// Where layers are extracted ahead: a directory on the target's
/// filesystem, removed with everything in it once its last holder lets go.
/// Every layer staged there holds it, so a layer still being staged when
/// its run has failed finishes before the directory goes.
#[derive(Debug)]
pub struct StageDir {
    path: PathBuf,
    _forced: crate::cancel::CleanupGuard,
}

impl StageDir {
    /// Creates a new stage directory in `parent`.
    pub fn create_in(parent: &Path) -> Result<Arc<StageDir>> {
        let path = tempfile::Builder::new()
            .prefix(".occystrap-stage-")
            .tempdir_in(parent)
            .map_err(|e| Error::io("creating a staging directory in", parent, e))?
            .keep();
        Ok(Arc::new(StageDir {
            _forced: crate::cancel::remove_on_forced_exit(path.clone(), true),
            path,
        }))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StageDir {
    fn drop(&mut self) {
        remove_logged(&self.path);
    }
}

/// Removes a tree of ours; a failure is only worth a warning by now.
fn remove_logged(path: &Path) {
    if let Err(e) = crate::rmtree::remove(path) {
        tracing::warn!("removing {}: {e}", path.display());
    }
}

/// A layer's regular files, written ahead into a staging directory (removed
/// with everything left in it when this is dropped).
#[derive(Debug)]
pub struct StagedFiles {
    dir: PathBuf,
    _forced: crate::cancel::CleanupGuard,
    /// Dropped after `dir` is removed.
    _area: Arc<StageDir>,
    /// Bit `k` set: the `k`-th entry of the tar is staged as the file `k`,
    /// and the skeleton lacks its data.
    staged: Vec<u64>,
    /// The skeleton is the whole tar, staged files' data included.
    whole: bool,
    warnings: Vec<String>,
}

impl StagedFiles {
    pub(super) fn is_staged(&self, k: u64) -> bool {
        let word = usize::try_from(k / 64).unwrap_or(usize::MAX);
        self.staged
            .get(word)
            .is_some_and(|w| w & (1 << (k % 64)) != 0)
    }

    fn mark(&mut self, k: u64) {
        let word = usize::try_from(k / 64).unwrap_or(usize::MAX);
        if self.staged.len() <= word {
            self.staged.resize(word + 1, 0);
        }
        self.staged[word] |= 1 << (k % 64);
    }

    /// Whether the skeleton is the whole tar.
    pub fn whole_tar(&self) -> bool {
        self.whole
    }

    /// The staging directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for StagedFiles {
    fn drop(&mut self) {
        // What is left are the files of refused entries, or a whole layer
        // that never reached its turn.
        remove_logged(&self.dir);
    }
}

/// Everything read, copied to the skeleton unless `skip` is set.
struct Tee<R, W> {
    inner: R,
    out: W,
    skip: bool,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !self.skip {
            self.out
                .write_all(&buf[..n])
                .map_err(|e| io::Error::new(e.kind(), format!("writing the skeleton tar: {e}")))?;
        }
        Ok(n)
    }
}

impl Extractor<'_> {
    /// The metadata of an entry that [`apply_staged`] will place as a staged
    /// file: a regular, non-sparse file with a usable name and header.
    /// Anything else stays in the skeleton for the apply to judge, in order.
    fn stageable(&mut self, entry: &Entry) -> Option<Meta> {
        let raw = entry.path();
        if !matches!(entry.kind(), b'0' | b'7') || entry.sparse.is_some() || raw.ends_with(b"/") {
            return None;
        }
        let name = RelPath::parse(raw).ok()?;
        if name.is_aufs_meta() {
            return None;
        }
        let (_, last) = name.split_last()?;
        if !matches!(path::whiteout(last), Whiteout::None) {
            return None;
        }
        // A refused or bad header has no side effects here: the apply meets
        // it again, in its place.
        self.read_meta(entry, raw).ok()
    }

    /// Renames the staged file `k` (in the directory `from`) to the entry's
    /// name, replacing whatever is there.
    pub(super) fn place_staged(
        &mut self,
        entry: &Entry,
        k: u64,
        from: BorrowedFd<'_>,
    ) -> Result<(), Fail> {
        let raw = entry.path();
        let name = RelPath::parse(raw).map_err(|b| Fail::Refused(b.reason().into()))?;
        let (p, last) = self.parent_of(&name)?;
        let staged = k.to_string();
        resolve::make_replacing(p.fd.as_fd(), last, false, || {
            rustix::fs::renameat_with(from, staged.as_str(), &*p.fd, last, RenameFlags::NOREPLACE)
        })
        .map_err(|e| self.io_fail("moving into place", raw, e))?;
        self.created(&p, last);
        self.stats.bytes += entry.data_size;
        Ok(())
    }
}

/// Reads `tar` to its end, writing its regular files into a new directory
/// in `area` and the rest of the tar to `skeleton` (see the
/// module documentation); with `whole_tar`, the skeleton is the whole tar,
/// for a sink that keeps it as well. `opts` must be those the apply will
/// use.
pub fn stage_layer(
    tar: impl Read,
    area: &Arc<StageDir>,
    skeleton: impl Write,
    whole_tar: bool,
    opts: &ExtractOptions,
) -> Result<StagedFiles> {
    let dir = tempfile::Builder::new()
        .prefix(".layer-")
        .tempdir_in(area.path())
        .map_err(|e| Error::io("creating a staging directory in", area.path(), e))?
        .keep();
    let mut files = StagedFiles {
        _forced: crate::cancel::remove_on_forced_exit(dir.clone(), true),
        _area: area.clone(),
        dir,
        staged: Vec::new(),
        whole: whole_tar,
        warnings: Vec::new(),
    };
    let root_path = files.dir.clone();
    let handle = open_root(&root_path, opts)?;
    let mut ex = Extractor::new(&root_path, handle, opts)
        .map_err(|e| Error::io("opening", &root_path, e))?;
    let tee = Tee {
        inner: BufReader::with_capacity(COPY_BUF, tar),
        out: io::BufWriter::with_capacity(COPY_BUF, skeleton),
        skip: false,
    };
    let mut archive = Archive::new(Stream(tee));
    let mut k: u64 = 0;
    loop {
        opts.cancel.check()?;
        let Some(entry) = archive.next_entry().map_err(|e| ex.tar_error(e))? else {
            break;
        };
        if let Some(meta) = ex.stageable(&entry) {
            archive.input_mut().0.skip = !whole_tar;
            let name = k.to_string();
            let fd = resolve::create_file(ex.root_dir.as_fd(), name.as_bytes())
                .map_err(|e| Error::io("creating", root_path.join(&name), e))?;
            match ex.write_file(
                File::from(fd),
                &entry,
                &mut archive,
                entry.path(),
                &meta,
                None,
            ) {
                Ok(()) => {}
                Err(Fail::Fatal(e)) => return Err(e),
                Err(Fail::Refused(reason)) => {
                    return Err(Error::InvalidArchive {
                        path: PathBuf::from(&opts.layer_name),
                        message: format!("entry {} {reason}", shown(entry.path())),
                    });
                }
            }
            archive.skip_padding().map_err(|e| ex.tar_error(e))?;
            archive.input_mut().0.skip = false;
            files.mark(k);
        }
        k += 1;
    }
    // The end-of-archive blocks and anything after them: the skeleton is a
    // whole tar, and the input is read to its end (its verdict).
    let mut rest = archive.into_inner().0;
    io::copy(&mut rest, &mut io::sink()).map_err(|e| ex.read_error(e))?;
    rest.out.flush().map_err(|e| {
        ex.read_error(io::Error::new(
            e.kind(),
            format!("writing the skeleton tar: {e}"),
        ))
    })?;
    files.warnings = ex.finish()?.warnings;
    Ok(files)
}

/// Applies a staged layer onto `root`: `skeleton` is what [`stage_layer`]
/// wrote, `files` what it staged (on `root`'s filesystem). Gives what
/// [`super::extract_layer`] of the whole tar would.
pub fn apply_staged(
    root: &Path,
    skeleton: impl Read + Seek,
    files: &StagedFiles,
    opts: &ExtractOptions,
) -> Result<ExtractStats> {
    let dir = files.path();
    let fd = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::io("opening", dir, e.into()))?;
    let archive = Archive::new(BufSeek(BufReader::with_capacity(COPY_BUF, skeleton)));
    let mut stats = super::run(
        root,
        archive,
        opts,
        Some(super::Staging {
            fd: fd.as_fd(),
            files,
        }),
    )?;
    let mut warnings = files.warnings.clone();
    warnings.append(&mut stats.warnings);
    stats.warnings = warnings;
    Ok(stats)
}
