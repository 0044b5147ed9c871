//! Extracting a layer in two steps, so that the layers of an image can be
//! written at once and still be applied bottom to top.
//!
//! [`stage_layer`] reads a layer's tar and writes each regular file's data,
//! with its owner, mode, xattrs and times, into a staging directory of its
//! own. What it passes on is a skeleton: the tar with those files' data and
//! padding left out. [`apply_staged`] later applies the skeleton like any
//! layer, except that a staged file is renamed into its place instead of
//! written. So every name, whiteout, link and directory is still applied in
//! layer order, by the same code, and only the bytes, which no later layer
//! looks at, are written early. The staging directory must be on the
//! target's filesystem.
//!
//! A directory entry is staged too, as a directory holding the files and
//! directories that come after it in the tar under its name. When the
//! apply meets it and nothing is at its name yet, the whole staged
//! directory is renamed into place at once, and the entries inside it are
//! only recorded, as if applied. That is exact only when nothing else in
//! the layer could have changed the directory between its entries, so a
//! directory is moved whole only if every entry under its name is a file or
//! directory staged in it, one entry a name, with no other entry between
//! them, or if it is inside one moved whole (see [`Tree`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::meta::XattrTarget;
use super::{COPY_BUF, Extractor, Fail, Meta, entry_name, open_root, shown, split_name};
use crate::layer::path::{self, RelPath, Whiteout};
use crate::layer::resolve;
use crate::layer::{ExtractOptions, ExtractStats};
use crate::tarfmt::{Archive, BufSeek, Entry, Input, Stream};
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

/// Where the stage put an entry of the tar, by its ordinal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Place {
    /// Not staged: the apply judges it from the skeleton.
    None,
    /// A file named by its ordinal, at the top of the layer's directory.
    Flat,
    /// A file under its own name in the staged directory of this index.
    File(u32),
    /// The staged directory of this index.
    Dir(u32),
}

/// A staged directory.
#[derive(Debug)]
pub(super) struct Node {
    /// Where it is, relative to the layer's staging directory.
    pub(super) path: Vec<u8>,
    /// The staged directory it is in.
    pub(super) parent: Option<u32>,
    /// Something under its name is not in it as the tar has it, so it may
    /// not be moved into place whole.
    pub(super) broken: bool,
    /// An entry outside its name came between its own, so it may not be
    /// moved into place whole, though a directory around it may.
    pub(super) interleaved: bool,
    /// Its identity, which a rename keeps.
    pub(super) id: resolve::FileId,
}

/// A layer's regular files and directories, written ahead into a staging
/// directory (removed with everything left in it when this is dropped).
#[derive(Debug)]
pub struct StagedFiles {
    dir: PathBuf,
    _forced: crate::cancel::CleanupGuard,
    /// Dropped after `dir` is removed.
    _area: Arc<StageDir>,
    /// Where the `k`-th entry of the tar is; the skeleton lacks the data of
    /// the files staged.
    places: Vec<Place>,
    nodes: Vec<Node>,
    /// The skeleton is the whole tar, staged files' data included.
    whole: bool,
    warnings: Vec<String>,
}

impl StagedFiles {
    pub(super) fn place(&self, k: u64) -> Place {
        usize::try_from(k)
            .ok()
            .and_then(|k| self.places.get(k))
            .copied()
            .unwrap_or(Place::None)
    }

    pub(super) fn node(&self, n: u32) -> &Node {
        &self.nodes[n as usize]
    }

    pub(super) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    fn put(&mut self, k: u64, place: Place) {
        let k = usize::try_from(k).unwrap_or(usize::MAX);
        if self.places.len() <= k {
            self.places.resize(k + 1, Place::None);
        }
        self.places[k] = place;
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
        // What is left are the files of refused entries, directories not
        // moved whole, or a whole layer that never reached its turn.
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

/// The longest path of a staged directory, relative to the layer's staging
/// directory, that may get another directory inside it.
const MAX_STAGED_PATH: usize = 2048;
/// The deepest a staged directory may be among staged directories.
const MAX_OPEN: usize = 256;
/// Steps [`Tree::locate`] may take back into staged directories per entry,
/// on average, before it stops trying for the rest of the layer.
const STEPS_PER_ENTRY: u64 = 4;

/// The staged directories while a layer is staged.
///
/// A staged directory holds the files and directories staged from the
/// entries under its name, wherever they are in the tar. Moving it whole
/// when the apply meets its entry gives what applying them one by one would
/// if no entry under its name stays in the skeleton (it would be applied
/// after entries staged behind it), and if no entry outside its name comes
/// between its first and last (which could reach into it through a
/// symlink). The first breaks the directory and every directory it is in;
/// the second, an entry that returns into a directory the tar has left,
/// marks only that one as interleaved: a directory around it may still
/// move whole, since everything in that one is staged.
struct Tree {
    nodes: Vec<Node>,
    /// Every node by its name in the layer.
    by_name: HashMap<Vec<u8>, u32>,
    /// The nodes the tar's current entry is under, outermost first, by
    /// name.
    open: Vec<(Vec<u8>, u32)>,
    /// The innermost of them, open: one fd, whatever the depth.
    top: Option<(u32, OwnedFd)>,
    /// Steps back into staged directories left.
    budget: u64,
}

/// Where an entry's parent is among the staged directories.
enum Parent {
    /// The innermost open node.
    Open(u32),
    /// Not a node the entry can be staged in.
    None,
}

fn under(name: &[u8], dir: &[u8]) -> bool {
    name.len() > dir.len() && name.starts_with(dir) && name[dir.len()] == b'/'
}

impl Tree {
    /// Marks `n` and the nodes it is in as not to be moved whole. A broken
    /// node's ancestors are always broken too.
    fn break_up(&mut self, mut n: u32) {
        loop {
            let node = &mut self.nodes[n as usize];
            if node.broken {
                return;
            }
            node.broken = true;
            match node.parent {
                Some(p) => n = p,
                None => return,
            }
        }
    }

    /// Opens the nodes down to `name`'s parent, and says whether that is a
    /// node; if it is not, the innermost node above it is broken.
    fn locate(&mut self, name: &[u8]) -> Parent {
        self.budget += STEPS_PER_ENTRY;
        while self.open.last().is_some_and(|(dir, _)| !under(name, dir)) {
            self.open.pop();
        }
        let Some(end) = name.iter().rposition(|&b| b == b'/') else {
            return Parent::None;
        };
        let parent = &name[..end];
        loop {
            let top = self.open.last().map(|(dir, n)| (dir.len(), *n));
            if let Some((len, n)) = top {
                if len == parent.len() {
                    return Parent::Open(n);
                }
            }
            let from = top.map_or(0, |(len, _)| len + 1);
            let next = match parent[from..].iter().position(|&b| b == b'/') {
                Some(i) => &parent[..from + i],
                None => parent,
            };
            let found = if self.budget > 0 && self.open.len() < MAX_OPEN {
                self.budget -= 1;
                self.by_name
                    .get(next)
                    .copied()
                    .filter(|&m| self.nodes[m as usize].parent == top.map(|(_, n)| n))
            } else {
                None
            };
            let Some(m) = found else {
                if let Some((_, n)) = top {
                    self.break_up(n);
                }
                return Parent::None;
            };
            // The tar left it before: something else came between.
            self.nodes[m as usize].interleaved = true;
            self.open.push((next.to_vec(), m));
        }
    }

    /// The innermost open node's directory, opened if it is not yet.
    fn top_dir(&mut self, root: BorrowedFd<'_>) -> io::Result<BorrowedFd<'_>> {
        let (_, n) = *self.open.last().expect("an open node");
        if self.top.as_ref().is_none_or(|(t, _)| *t != n) {
            let fd = resolve::open_child_dir(root, &self.nodes[n as usize].path)?;
            self.top = Some((n, fd));
        }
        Ok(self.top.as_ref().expect("just set").1.as_fd())
    }

    /// Breaks the innermost open node if `parent` is it: an entry in it
    /// that is not staged there.
    fn not_staged(&mut self, parent: &Parent) {
        if let Parent::Open(n) = parent {
            self.break_up(*n);
        }
    }

    fn add(
        &mut self,
        name: &[u8],
        path: Vec<u8>,
        parent: Option<u32>,
        (fd, id): (OwnedFd, resolve::FileId),
    ) -> u32 {
        let n = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
        self.nodes.push(Node {
            path,
            parent,
            broken: false,
            interleaved: false,
            id,
        });
        self.by_name.insert(name.to_vec(), n);
        self.open.push((name.to_vec(), n));
        self.top = Some((n, fd));
        n
    }
}

/// Creates `name` in `dir` only if nothing is there.
fn create_new(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )
}

impl Extractor<'_> {
    /// The metadata of an entry that [`apply_staged`] will place as a staged
    /// file: a regular, non-sparse file with a usable name and header.
    /// Anything else stays in the skeleton for the apply to judge, in order.
    fn stageable(&mut self, entry: &Entry, name: &RelPath) -> Option<Meta> {
        let raw = entry.path();
        if !matches!(entry.kind(), b'0' | b'7') || entry.sparse.is_some() || raw.ends_with(b"/") {
            return None;
        }
        self.plain_meta(entry, name)
    }

    /// The same for a directory entry staged as a directory.
    fn stageable_dir(&mut self, entry: &Entry, name: &RelPath) -> Option<Meta> {
        if entry.kind() != b'5' || entry.sparse.is_some() || entry.data_size != 0 {
            return None;
        }
        // The apply reads a directory's header again, moved or not: count
        // what it ignores there only.
        let ignored = self.ignored_xattrs.clone();
        let meta = self.plain_meta(entry, name);
        self.ignored_xattrs = ignored;
        meta
    }

    /// The metadata of an entry with a name of its own: not the root, not
    /// AUFS bookkeeping, not a whiteout.
    fn plain_meta(&mut self, entry: &Entry, name: &RelPath) -> Option<Meta> {
        if name.is_aufs_meta() {
            return None;
        }
        let (_, last) = name.split_last()?;
        if !matches!(path::whiteout(last), Whiteout::None) {
            return None;
        }
        // A refused or bad header has no side effects here: the apply meets
        // it again, in its place.
        self.read_meta(entry, entry.path()).ok()
    }

    /// Makes the staged directory for a directory entry, owned as the
    /// entry says, mode 0755 until the apply's end, as
    /// [`Extractor::directory`] leaves a new one. Its xattrs wait for the
    /// apply, which sets them whether or not it moves the directory.
    fn stage_dir(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        meta: &Meta,
        rel: &[u8],
    ) -> Result<Option<(OwnedFd, resolve::FileId)>, Fail> {
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
            Ok(()) => {}
            Err(Errno::EXIST | Errno::NAMETOOLONG) => return Ok(None),
            Err(e) => return Err(self.io_fail("creating", rel, e)),
        }
        let fd =
            resolve::open_child_dir(parent, name).map_err(|e| self.io_fail("opening", rel, e))?;
        self.chown_fd(&fd, meta, rel)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| self.io_fail("opening", rel, e))?;
        Ok(Some((fd, resolve::file_id(&st))))
    }

    /// Renames the staged file `from` (a path in the staging directory
    /// `stage`) to the entry's name, replacing whatever is there.
    pub(super) fn place_staged(
        &mut self,
        entry: &Entry,
        stage: BorrowedFd<'_>,
        from: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Result<(), Fail> {
        let raw = entry.path();
        let name = entry_name(raw)?;
        let (p, last) = self.parent_of(&name)?;
        let from = from(last);
        resolve::make_replacing(p.fd.as_fd(), last, false, || {
            rustix::fs::renameat_with(stage, &*from, &*p.fd, last, RenameFlags::NOREPLACE)
        })
        .map_err(|e| self.io_fail("moving into place", raw, e))?;
        self.created(&p, last);
        self.stats.bytes += entry.data_size;
        Ok(())
    }

    /// Records a staged file that arrived inside a directory moved whole
    /// (`dir`, by its identity), as [`Extractor::place_staged`] would have
    /// placed it. Opening the directory would only confirm what the stage
    /// made it: it holds no symlink, nor any lower layer's content.
    pub(super) fn moved_file(&mut self, entry: &Entry, dir: resolve::FileId) -> Result<(), Fail> {
        let name = entry_name(entry.path())?;
        let (_, last) = split_name(&name)?;
        self.created_in(dir, last);
        self.stats.bytes += entry.data_size;
        Ok(())
    }

    /// Records a staged directory that arrived inside one moved whole, as
    /// [`Extractor::move_staged_dir`] would have: `dir` is the directory it
    /// is in, `id` its own identity. Only one with xattrs is opened, to set
    /// them.
    pub(super) fn moved_inner_dir(
        &mut self,
        entry: &Entry,
        dir: resolve::FileId,
        id: resolve::FileId,
    ) -> Result<(), Fail> {
        let raw = entry.path();
        let name = entry_name(raw)?;
        let meta = self.read_meta(entry, raw)?;
        if !meta.xattrs.is_empty() {
            let fd = self
                .root
                .open_dir(name.as_bytes(), false)
                .map_err(|e| self.resolve_fail(raw, e))?;
            self.xattrs(XattrTarget::Fd(fd.as_fd()), &meta, raw);
        }
        let (_, last) = split_name(&name)?;
        self.created_in(dir, last);
        self.made_dir(id, name.as_bytes(), &meta);
        Ok(())
    }

    /// Records a directory this layer made, as [`Extractor::directory`]
    /// does a new one.
    fn made_dir(&mut self, id: resolve::FileId, rel: &[u8], meta: &Meta) {
        if self.apply_mode() {
            self.forget(id);
            self.upper_dirs.insert(id);
        }
        self.fix_dir_later(rel, meta);
    }

    /// Renames the staged directory `from` to the entry's name if nothing
    /// is there; `false` if something is, for the entry to be applied as
    /// usual.
    pub(super) fn move_staged_dir(
        &mut self,
        entry: &Entry,
        stage: BorrowedFd<'_>,
        from: &[u8],
        id: resolve::FileId,
    ) -> Result<bool, Fail> {
        let raw = entry.path();
        let name = entry_name(raw)?;
        let meta = self.read_meta(entry, raw)?;
        let (p, last) = self.parent_of(&name)?;
        match rustix::fs::renameat_with(stage, from, &*p.fd, last, RenameFlags::NOREPLACE) {
            Ok(()) => self.stats.dirs_moved += 1,
            Err(Errno::EXIST) => return Ok(false),
            Err(e) => return Err(self.io_fail("moving into place", raw, e)),
        }
        self.created(&p, last);
        if !meta.xattrs.is_empty() {
            let fd = resolve::open_child_dir(p.fd.as_fd(), last)
                .map_err(|e| self.io_fail("opening", raw, e))?;
            self.xattrs(XattrTarget::Fd(fd.as_fd()), &meta, raw);
        }
        self.made_dir(id, name.as_bytes(), &meta);
        Ok(true)
    }
}

/// The staged files of a layer being applied.
pub(super) struct Staging<'s> {
    fd: BorrowedFd<'s>,
    files: &'s StagedFiles,
    /// Whether each staged directory was moved whole, or with one.
    moved: Vec<bool>,
}

impl Staging<'_> {
    /// Applies the `k`-th entry.
    pub(super) fn apply<S: Input>(
        &mut self,
        ex: &mut Extractor<'_>,
        entry: &Entry,
        archive: &mut Archive<S>,
        k: u64,
    ) -> Result<(), Fail> {
        let files = self.files;
        let place = files.place(k);
        if matches!(place, Place::Flat | Place::File(_)) && !files.whole_tar() {
            archive.elide_data();
        }
        match place {
            Place::None => ex.entry(entry, archive),
            Place::Flat => ex.place_staged(entry, self.fd, |_| k.to_string().into_bytes()),
            Place::File(n) if self.moved[n as usize] => ex.moved_file(entry, files.node(n).id),
            Place::File(n) => {
                let dir = &files.node(n).path;
                ex.place_staged(entry, self.fd, |last| [dir, &b"/"[..], last].concat())
            }
            Place::Dir(n) => {
                let node = files.node(n);
                if let Some(p) = node.parent.filter(|&p| self.moved[p as usize]) {
                    ex.moved_inner_dir(entry, files.node(p).id, node.id)?;
                    self.moved[n as usize] = true;
                    return Ok(());
                }
                if !node.broken
                    && !node.interleaved
                    && ex.move_staged_dir(entry, self.fd, &node.path, node.id)?
                {
                    self.moved[n as usize] = true;
                    return Ok(());
                }
                ex.entry(entry, archive)
            }
        }
    }
}

/// Reads `tar` to its end, writing its regular files and directories into
/// a new directory in `area` and the rest of the tar to `skeleton` (see the
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
        places: Vec::new(),
        nodes: Vec::new(),
        whole: whole_tar,
        warnings: Vec::new(),
    };
    let root_path = files.dir.clone();
    let handle = open_root(&root_path, opts)?;
    let mut ex = Extractor::new(&root_path, handle, opts)
        .map_err(|e| Error::io("opening", &root_path, e))?;
    let root_fd = ex.root_dir.clone();
    let tee = Tee {
        inner: BufReader::with_capacity(COPY_BUF, tar),
        out: io::BufWriter::with_capacity(COPY_BUF, skeleton),
        skip: false,
    };
    let mut archive = Archive::new(Stream(tee));
    let mut tree = Tree {
        nodes: Vec::new(),
        by_name: HashMap::new(),
        open: Vec::new(),
        top: None,
        budget: 4096,
    };
    let fatal = |e: Fail, entry: &Entry| match e {
        Fail::Fatal(e) => e,
        Fail::Refused(reason) => Error::InvalidArchive {
            path: PathBuf::from(&opts.layer_name),
            message: format!("entry {} {reason}", shown(entry.path())),
        },
    };
    let mut k: u64 = 0;
    loop {
        opts.cancel.check()?;
        let Some(entry) = archive.next_entry().map_err(|e| ex.tar_error(e))? else {
            break;
        };
        // A name the apply refuses changes nothing there: no need to track it.
        let Ok(name) = RelPath::parse(entry.path()) else {
            k += 1;
            continue;
        };
        let parent = tree.locate(name.as_bytes());
        let last = name.split_last().map(|(_, l)| l.to_vec());
        if let (Some(meta), Some(last)) = (ex.stageable_dir(&entry, &name), &last) {
            let made = match &parent {
                // A nested path stays well inside PATH_MAX, for the renames.
                Parent::Open(n)
                    if tree.open.len() < MAX_OPEN
                        && tree.nodes[*n as usize].path.len() + last.len() < MAX_STAGED_PATH =>
                {
                    let n = *n;
                    let fd = tree
                        .top_dir(root_fd.as_fd())
                        .map_err(|e| Error::io("opening", &root_path, e))?;
                    match ex.stage_dir(fd, last, &meta, name.as_bytes()) {
                        Ok(Some(made)) => {
                            let mut path = tree.nodes[n as usize].path.clone();
                            path.push(b'/');
                            path.extend_from_slice(last);
                            Some((made, path, Some(n)))
                        }
                        Ok(None) => None,
                        Err(e) => return Err(fatal(e, &entry)),
                    }
                }
                Parent::Open(_) => None,
                Parent::None if tree.open.len() >= MAX_OPEN => None,
                Parent::None => {
                    let path = k.to_string().into_bytes();
                    match ex.stage_dir(root_fd.as_fd(), &path, &meta, name.as_bytes()) {
                        Ok(Some(made)) => Some((made, path, None)),
                        Ok(None) => None,
                        Err(e) => return Err(fatal(e, &entry)),
                    }
                }
            };
            match made {
                Some((fd, path, up)) => {
                    let n = tree.add(name.as_bytes(), path, up, fd);
                    files.put(k, Place::Dir(n));
                }
                None => tree.not_staged(&parent),
            }
        } else if let (Some(meta), Some(last)) = (ex.stageable(&entry, &name), &last) {
            let in_node = match &parent {
                Parent::Open(n) => {
                    let fd = tree
                        .top_dir(root_fd.as_fd())
                        .map_err(|e| Error::io("opening", &root_path, e))?;
                    match create_new(fd, last) {
                        Ok(fd) => Some((fd, *n)),
                        Err(_) => {
                            tree.not_staged(&parent);
                            None
                        }
                    }
                }
                Parent::None => None,
            };
            let (fd, place) = match in_node {
                Some((fd, n)) => (fd, Place::File(n)),
                None => {
                    let flat = k.to_string();
                    let fd = resolve::create_file(root_fd.as_fd(), flat.as_bytes())
                        .map_err(|e| Error::io("creating", root_path.join(&flat), e))?;
                    (fd, Place::Flat)
                }
            };
            archive.input_mut().0.skip = !whole_tar;
            ex.write_file(
                File::from(fd),
                &entry,
                &mut archive,
                entry.path(),
                &meta,
                None,
            )
            .map_err(|e| fatal(e, &entry))?;
            archive.skip_padding().map_err(|e| ex.tar_error(e))?;
            archive.input_mut().0.skip = false;
            files.put(k, place);
        } else {
            tree.not_staged(&parent);
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
    tree.top = None;
    files.nodes = tree.nodes;
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
        Some(Staging {
            fd: fd.as_fd(),
            files,
            moved: vec![false; files.node_count()],
        }),
    )?;
    tracing::debug!(
        "{}: {} staged director{} moved into place whole",
        opts.layer_name,
        stats.dirs_moved,
        if stats.dirs_moved == 1 { "y" } else { "ies" }
    );
    let mut warnings = files.warnings.clone();
    warnings.append(&mut stats.warnings);
    stats.warnings = warnings;
    Ok(stats)
}
