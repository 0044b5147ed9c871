//! Applying one layer tar onto a directory.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};

use super::path::{self, BadName, RelPath, Whiteout};
use super::resolve::{self, FileId, OpenRootError, Prune, Root};
use super::{ExtractOptions, ExtractStats, WhiteoutMode};
use crate::tarfmt::{self, Archive, Sparse, Stream, TarError};
use crate::{Error, Result};

mod copy;
mod meta;
mod stage;

pub use stage::{StageDir, StagedFiles, apply_staged, stage_layer};

use stage::Staging;

use copy::{CopyError, copy, copy_sparse};
use meta::{Meta, XattrFailure, XattrTarget};

/// Size of the copy buffer, and of the read-ahead on the tar stream.
const COPY_BUF: usize = 256 * 1024;
/// Distinct xattr failures reported one by one before they are lumped.
const MAX_XATTR_WARNINGS: usize = 32;

/// Applies one layer tar stream onto `root`, an existing directory.
///
/// Every path is resolved inside `root` (see the module docs); whiteouts are
/// applied or converted as `opts.whiteouts` says. Entries that cannot be
/// applied safely make the call fail, or are listed in
/// [`ExtractStats::skipped_unsafe`] when `opts.skip_unsafe` is set. Needs
/// Linux 5.6 or later (`openat2(2)`).
pub fn extract_layer(root: &Path, tar: impl Read, opts: &ExtractOptions) -> Result<ExtractStats> {
    #[cfg(test)]
    if test_hooks::staged() {
        return test_hooks::through_stage(root, tar, opts);
    }
    let archive = Archive::new(Stream(BufReader::with_capacity(COPY_BUF, tar)));
    run(root, archive, opts, None)
}

/// Opens `root` for extraction.
fn open_root(root: &Path, opts: &ExtractOptions) -> Result<Root> {
    Root::open(root).map_err(|e| match e {
        OpenRootError::NoOpenat2 => Error::Unsupported(format!(
            "{}: extracting needs openat2(2) (Linux 5.6 or later), which this kernel \
             lacks; refusing to extract without it",
            opts.layer_name
        )),
        OpenRootError::Io(e) => Error::io("opening", root, e),
    })
}

/// Applies the tar `archive` reads onto `root`; with `staged`, the entries
/// it staged are renamed into place (and their data skipped, or absent).
/// `archive` is the shared reader: one answer to every entry's name (the
/// one the filters used), metadata and sparse maps capped before allocation.
fn run<S: tarfmt::Input>(
    root: &Path,
    mut archive: Archive<S>,
    opts: &ExtractOptions,
    mut staged: Option<Staging<'_>>,
) -> Result<ExtractStats> {
    let handle = open_root(root, opts)?;
    let mut ex = Extractor::new(root, handle, opts).map_err(|e| Error::io("opening", root, e))?;
    let mut k: u64 = 0;
    loop {
        opts.cancel.check()?;
        let Some(entry) = archive.next_entry().map_err(|e| ex.tar_error(e))? else {
            break;
        };
        let applied = match &mut staged {
            Some(s) => s.apply(&mut ex, &entry, &mut archive, k),
            None => ex.entry(&entry, &mut archive),
        };
        k += 1;
        match applied {
            Ok(()) => ex.stats.entries += 1,
            Err(Fail::Refused(reason)) => {
                let message = format!("entry {} {reason}", shown(entry.path()));
                if !opts.skip_unsafe {
                    return Err(Error::InvalidArchive {
                        path: PathBuf::from(&opts.layer_name),
                        message,
                    });
                }
                ex.stats.skipped_unsafe.push(message);
            }
            Err(Fail::Fatal(e)) => return Err(e),
        }
    }
    ex.finish()
}

/// Why an entry was not applied.
enum Fail {
    /// The entry is unsafe or unusable; the layer may go on without it.
    Refused(String),
    /// The layer cannot go on.
    Fatal(Error),
}

/// A member's name, cleaned, or why the entry is refused.
fn entry_name(raw: &[u8]) -> Result<RelPath, Fail> {
    RelPath::parse(raw).map_err(|b| Fail::Refused(b.reason().into()))
}

/// A non-root name's parent and final component.
fn split_name(name: &RelPath) -> Result<(&[u8], &[u8]), Fail> {
    name.split_last()
        .ok_or_else(|| Fail::Refused("would replace the target directory itself".into()))
}

/// A member name quoted for a one-line message.
fn shown(raw: &[u8]) -> String {
    tarfmt::shown(raw)
}

/// A parent directory, open.
#[derive(Clone)]
struct Parent {
    fd: Rc<OwnedFd>,
    id: FileId,
}

/// Metadata applied to a directory once the layer is done with it.
struct DirFix {
    mode: u32,
    times: Timestamps,
}

struct Extractor<'a> {
    opts: &'a ExtractOptions,
    root_path: &'a Path,
    root: Root,
    root_dir: Rc<OwnedFd>,
    privileged: bool,
    /// The last parent directory used, by its name in the layer, and whether
    /// its ancestors are marked as written by this layer.
    cache: Option<(Vec<u8>, Parent, bool)>,
    /// Names this layer created, by the directory they are in. Whiteouts in
    /// the same layer must spare them.
    upper_names: HashMap<FileId, HashSet<Box<[u8]>>>,
    /// Directories this layer created or wrote into, with their ancestors.
    upper_dirs: HashSet<FileId>,
    /// Mode and times of the layer's directory entries, applied at the end
    /// so that writing their contents does not disturb them.
    dirs: HashMap<Vec<u8>, DirFix>,
    /// Times of directories the layer wrote into without a directory entry,
    /// restored at the end.
    // Keyed by the directory itself, not the name used to reach it: a layer
    // may write into one directory through a symlink and through its real
    // path, and only the times seen first are the ones to restore.
    touched: HashMap<FileId, (Vec<u8>, Timestamps)>,
    stats: ExtractStats,
    devices_skipped: u64,
    unknown_types: Vec<(u8, String)>,
    unknown_count: u64,
    xattr_failures: HashMap<(Vec<u8>, String), XattrFailure>,
    xattr_failures_more: u64,
    ignored_xattrs: HashMap<Vec<u8>, u64>,
    buf: Vec<u8>,
}

impl<'a> Extractor<'a> {
    fn new(root_path: &'a Path, root: Root, opts: &'a ExtractOptions) -> io::Result<Self> {
        let root_dir = Rc::new(root.fd().try_clone_to_owned()?);
        Ok(Extractor {
            opts,
            root_path,
            root,
            root_dir,
            privileged: rustix::process::geteuid().is_root() && !test_hooks::unprivileged(),
            cache: None,
            upper_names: HashMap::new(),
            upper_dirs: HashSet::new(),
            dirs: HashMap::new(),
            touched: HashMap::new(),
            stats: ExtractStats::default(),
            devices_skipped: 0,
            unknown_types: Vec::new(),
            unknown_count: 0,
            xattr_failures: HashMap::new(),
            xattr_failures_more: 0,
            ignored_xattrs: HashMap::new(),
            buf: vec![0; COPY_BUF],
        })
    }

    fn apply_mode(&self) -> bool {
        self.opts.whiteouts == WhiteoutMode::Apply
    }

    fn read_error(&self, e: io::Error) -> Error {
        Error::stream(
            format!("{}: reading the layer tar", self.opts.layer_name),
            e,
        )
    }

    /// A malformed or hostile tar: one line naming the layer and the entry.
    fn tar_error(&self, e: TarError) -> Error {
        match e {
            TarError::Io(e) => self.read_error(e),
            bad => Error::InvalidArchive {
                path: PathBuf::from(&self.opts.layer_name),
                message: bad.to_string(),
            },
        }
    }

    /// A fatal error for a filesystem call on `rel`.
    fn io_fail(&self, operation: &'static str, rel: &[u8], e: impl Into<io::Error>) -> Fail {
        let e = e.into();
        if e.raw_os_error() == Some(libc::ENAMETOOLONG) {
            // The layer's fault (a component over NAME_MAX), not the host's.
            return Fail::Refused("has a name component that is too long".into());
        }
        Fail::Fatal(Error::io(
            operation,
            self.root_path.join(OsStr::from_bytes(rel)),
            e,
        ))
    }

    /// Turns a failure to resolve a path into a refusal when the layer's
    /// content is to blame, a fatal error otherwise.
    fn resolve_fail(&self, rel: &[u8], e: io::Error) -> Fail {
        let reason = match Errno::from_io_error(&e) {
            Some(Errno::LOOP) => "has a symlink loop (or too many symlinks) in its path",
            Some(Errno::NOTDIR) => "has a non-directory in its path",
            Some(Errno::NAMETOOLONG) => "resolves to a path longer than PATH_MAX",
            Some(Errno::XDEV) => "escapes the target directory",
            _ => return self.io_fail("resolving", rel, e),
        };
        Fail::Refused(reason.into())
    }

    /// Applies one entry.
    fn entry<S: tarfmt::Input>(
        &mut self,
        entry: &tarfmt::Entry,
        archive: &mut Archive<S>,
    ) -> Result<(), Fail> {
        // PAX global headers (archive-wide defaults, in practice a comment)
        // never reach here: the reader checks and consumes them.
        let kind = entry.kind();
        let raw = entry.path().to_vec();
        let name = entry_name(&raw)?;
        if name.is_aufs_meta() {
            return Ok(());
        }
        if let Some((parent, last)) = name.split_last() {
            // A whiteout is known by its name whatever its type, as in the spec.
            match path::whiteout(last) {
                Whiteout::None => {}
                Whiteout::Invalid => {
                    return Err(Fail::Refused("is a whiteout that names no file".into()));
                }
                Whiteout::Opaque => return self.opaque(parent),
                Whiteout::Name(victim) => return self.whiteout(parent, victim),
            }
        }
        let meta = self.read_meta(entry, &raw)?;
        if name.is_root() && kind != b'5' && !raw.ends_with(b"/") {
            return Err(Fail::Refused(
                "would replace the target directory itself".into(),
            ));
        }
        match kind {
            _ if entry.sparse.is_some() => {
                self.file(entry, archive, &name, &meta, entry.sparse.as_ref())
            }
            b'5' => self.directory(&name, &meta),
            // Pre-POSIX archives mark directories by a trailing slash alone.
            b'0' | b'7' if raw.ends_with(b"/") => self.directory(&name, &meta),
            b'0' | b'7' => self.file(entry, archive, &name, &meta, None),
            b'2' => self.symlink(entry, &name, &meta),
            b'1' => self.hardlink(entry, &name),
            b'3' | b'4' | b'6' => self.node(entry, kind, &name, &meta),
            other => {
                self.unknown_count += 1;
                if self.unknown_types.len() < 4 {
                    self.unknown_types.push((other, shown(&raw)));
                }
                Ok(())
            }
        }
    }

    /// Opens the parent directory named `key`. With `create`, missing
    /// directories are made; without, a missing parent gives `None`.
    fn parent(&mut self, key: &[u8], create: bool) -> Result<Option<Parent>, Fail> {
        if let Some((k, p, marked)) = &self.cache {
            if k == key {
                let p = p.clone();
                if create && !*marked && self.apply_mode() {
                    self.mark_ancestors(&p)
                        .map_err(|e| self.io_fail("resolving", key, e))?;
                }
                if let Some(c) = &mut self.cache {
                    c.2 |= create;
                }
                return Ok(Some(p));
            }
        }
        // Only a path without symlinks is cached: the entries that hit the
        // cache change children of the directory, never the directories on
        // its path, unless the path goes through a symlink, which such an
        // entry may replace (`a -> .`, then `a/a/a` replaces `a` itself).
        let mut cacheable = true;
        let fd = if key.is_empty() {
            self.root_dir.clone()
        } else if let Ok(fd) = self.root.open_dir_no_symlinks(key) {
            Rc::new(fd)
        } else if create {
            cacheable = false;
            let mut made: Vec<(FileId, Vec<u8>, Option<FileId>)> = Vec::new();
            let mut on_created = |parent: BorrowedFd<'_>, name: &[u8], child: BorrowedFd<'_>| {
                if let Ok(st) = rustix::fs::fstat(parent) {
                    let child = rustix::fs::fstat(child).ok().map(|c| resolve::file_id(&c));
                    made.push((resolve::file_id(&st), name.to_vec(), child));
                }
            };
            let fd = self
                .root
                .open_dir_creating(key, &mut on_created)
                .map_err(|e| self.resolve_fail(key, e))?;
            if self.apply_mode() {
                for (pid, name, child) in made {
                    if let Some(child) = child {
                        self.forget(child);
                    }
                    self.upper_names
                        .entry(pid)
                        .or_default()
                        .insert(name.into_boxed_slice());
                }
            }
            Rc::new(fd)
        } else {
            cacheable = false;
            match self.root.open_dir(key, true) {
                Ok(fd) => Rc::new(fd),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                    return Ok(None);
                }
                Err(e) => return Err(self.resolve_fail(key, e)),
            }
        };
        let st = rustix::fs::fstat(&*fd).map_err(|e| self.io_fail("resolving", key, e))?;
        let p = Parent {
            fd,
            id: resolve::file_id(&st),
        };
        if !self.dirs.contains_key(key) {
            self.touched
                .entry(p.id)
                .or_insert_with(|| (key.to_vec(), stat_times(&st)));
        }
        if create && self.apply_mode() {
            self.mark_ancestors(&p)
                .map_err(|e| self.io_fail("resolving", key, e))?;
        }
        // An uncacheable entry may invalidate what was cached before it.
        self.cache = cacheable.then(|| (key.to_vec(), p.clone(), create));
        Ok(Some(p))
    }

    /// Marks `p` and its ancestors up to the root as written by this layer,
    /// so whiteouts later in the layer prune inside them instead of deleting
    /// them. Stops at the first directory already marked, whose ancestors
    /// are then marked too: a mark is never stale, because a directory this
    /// layer makes drops whatever its inode number meant before
    /// ([`Extractor::forget`]); a directory this layer removed can have its
    /// number reused by one it makes elsewhere (found by the whiteout
    /// property test). No depth limit: a layer can write far below
    /// `PATH_MAX` levels through symlinks, and its whiteouts must still
    /// spare what it wrote there. Two fds at a time, whatever the depth.
    fn mark_ancestors(&mut self, p: &Parent) -> io::Result<()> {
        let root_id = self.root.id();
        let mut id = p.id;
        let mut up: Option<OwnedFd> = None;
        loop {
            if id == root_id || !self.upper_dirs.insert(id) {
                return Ok(());
            }
            let from = up.as_ref().map_or(p.fd.as_fd(), |f| f.as_fd());
            // Only looked at, never written through: `..` is fine here.
            let next = rustix::fs::openat(
                from,
                "..",
                rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let next_id = resolve::file_id(&rustix::fs::fstat(&next)?);
            if next_id == id {
                // The top of the filesystem: the root was not on the way.
                return Ok(());
            }
            id = next_id;
            up = Some(next);
        }
    }

    /// Drops what this layer recorded under the identity of a directory it
    /// has just made: the number belonged to something removed earlier.
    fn forget(&mut self, id: FileId) {
        self.upper_dirs.remove(&id);
        self.upper_names.remove(&id);
    }

    /// Records that this layer created `name` in `p`.
    fn created(&mut self, p: &Parent, name: &[u8]) {
        self.created_in(p.id, name);
    }

    /// Records that this layer created `name` in the directory `dir`.
    fn created_in(&mut self, dir: FileId, name: &[u8]) {
        if self.apply_mode() {
            self.upper_names.entry(dir).or_default().insert(name.into());
        }
    }

    /// `dir/.wh.NAME`.
    fn whiteout(&mut self, dir: &[u8], victim: &[u8]) -> Result<(), Fail> {
        let full = join(dir, victim);
        if self.apply_mode() {
            let Some(p) = self.parent(dir, false)? else {
                return Ok(());
            };
            return self.prune(&p, vec![victim.to_vec()], &full);
        }
        let Some(p) = self.parent(dir, true)? else {
            return Ok(());
        };
        // Mode 0, as overlayfs makes its own whiteouts. If the name exists it
        // came from this layer, which a whiteout does not hide: keep it.
        match rustix::fs::mknodat(
            &*p.fd,
            victim,
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        ) {
            Ok(()) | Err(Errno::EXIST) => Ok(()),
            Err(e) => Err(self.io_fail("creating the overlay whiteout", &full, e)),
        }
    }

    /// `dir/.wh..wh..opq`.
    fn opaque(&mut self, dir: &[u8]) -> Result<(), Fail> {
        if self.apply_mode() {
            let Some(p) = self.parent(dir, false)? else {
                return Ok(());
            };
            let names = resolve::list(p.fd.as_fd())
                .map_err(|e| self.io_fail("reading", dir, e))?
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            return self.prune(&p, names, dir);
        }
        let Some(p) = self.parent(dir, true)? else {
            return Ok(());
        };
        rustix::fs::fsetxattr(&*p.fd, "trusted.overlay.opaque", b"y", XattrFlags::empty())
            .map_err(|e| self.io_fail("marking opaque (trusted.overlay.opaque)", dir, e))
    }

    /// Deletes what lower layers put at `names` in `p`, sparing (and
    /// looking inside) what this layer wrote.
    fn prune(&mut self, p: &Parent, names: Vec<Vec<u8>>, shown_as: &[u8]) -> Result<(), Fail> {
        let upper_names = &self.upper_names;
        let upper_dirs = &self.upper_dirs;
        let mut judge = |parent: FileId, name: &[u8], st: &rustix::fs::Stat| {
            let ours = upper_names.get(&parent).is_some_and(|s| s.contains(name))
                || (resolve::is_dir(st) && upper_dirs.contains(&resolve::file_id(st)));
            if ours { Prune::Keep } else { Prune::Remove }
        };
        resolve::prune(p.fd.as_fd(), p.id, names, &mut judge)
            .map_err(|e| self.io_fail("removing", shown_as, e))
    }

    /// Splits a non-root name and opens (creating) its parent.
    fn parent_of<'n>(&mut self, name: &'n RelPath) -> Result<(Parent, &'n [u8]), Fail> {
        let (dir, last) = split_name(name)?;
        match self.parent(dir, true)? {
            Some(p) => Ok((p, last)),
            None => Err(Fail::Refused("has a missing directory in its path".into())),
        }
    }

    fn directory(&mut self, name: &RelPath, meta: &Meta) -> Result<(), Fail> {
        let rel = name.as_bytes();
        let (fd, existed) = if name.is_root() {
            (self.root.fd().try_clone_to_owned(), true)
        } else {
            let (p, last) = self.parent_of(name)?;
            let made = resolve::make_replacing(p.fd.as_fd(), last, true, || {
                rustix::fs::mkdirat(&*p.fd, last, Mode::from_raw_mode(0o755))
            })
            .map_err(|e| self.io_fail("creating", rel, e))?;
            self.created(&p, last);
            (
                resolve::open_child_dir(p.fd.as_fd(), last).map_err(io::Error::from),
                !made,
            )
        };
        let fd = fd.map_err(|e| self.io_fail("opening", rel, e))?;
        if self.apply_mode() {
            let st = rustix::fs::fstat(&fd).map_err(|e| self.io_fail("opening", rel, e))?;
            let id = resolve::file_id(&st);
            if !existed {
                self.forget(id);
            }
            self.upper_dirs.insert(id);
        }
        self.chown_fd(&fd, meta, rel)?;
        if existed {
            self.clear_xattrs(&fd, meta, rel);
        }
        self.xattrs(XattrTarget::Fd(fd.as_fd()), meta, rel);
        self.fix_dir_later(rel, meta);
        Ok(())
    }

    /// Records a directory entry's mode and times, applied at the end.
    fn fix_dir_later(&mut self, rel: &[u8], meta: &Meta) {
        self.dirs.insert(
            rel.to_vec(),
            DirFix {
                mode: meta.mode,
                times: meta.times(),
            },
        );
    }

    fn file<S: tarfmt::Input>(
        &mut self,
        entry: &tarfmt::Entry,
        archive: &mut Archive<S>,
        name: &RelPath,
        meta: &Meta,
        sparse: Option<&Sparse>,
    ) -> Result<(), Fail> {
        let rel = name.as_bytes();
        let (p, last) = self.parent_of(name)?;
        let fd = resolve::create_file(p.fd.as_fd(), last)
            .map_err(|e| self.io_fail("creating", rel, e))?;
        self.created(&p, last);
        self.write_file(File::from(fd), entry, archive, rel, meta, sparse)
    }

    /// Writes an entry's data into `file`, new and empty, and then its
    /// metadata; `rel` names it in messages.
    fn write_file<S: tarfmt::Input>(
        &mut self,
        mut file: File,
        entry: &tarfmt::Entry,
        archive: &mut Archive<S>,
        rel: &[u8],
        meta: &Meta,
        sparse: Option<&Sparse>,
    ) -> Result<(), Fail> {
        let expected = entry.data_size;
        let mut data = archive.data();
        let copied = match sparse {
            None => copy(&mut data, &mut file, &mut self.buf, &self.opts.cancel),
            Some(map) => copy_sparse(&mut data, &mut file, &mut self.buf, map, &self.opts.cancel),
        };
        let written = match copied {
            Ok(n) => n,
            Err(CopyError::Read(e)) if e.kind() == io::ErrorKind::Interrupted => {
                return Err(Fail::Fatal(Error::Interrupted));
            }
            Err(CopyError::Read(e)) => return Err(Fail::Fatal(self.read_error(e))),
            Err(CopyError::Write(e)) => return Err(self.io_fail("writing", rel, e)),
        };
        if written != expected {
            return Err(Fail::Fatal(Error::InvalidArchive {
                path: PathBuf::from(&self.opts.layer_name),
                message: format!(
                    "entry {}: tar ended after {written} of {expected} bytes",
                    shown(rel)
                ),
            }));
        }
        // A sparse file counts at its size, holes included, as it reads.
        self.stats.bytes += sparse.map_or(written, |m| m.real_size);
        // chown clears setuid/setgid, and writes clear security.capability:
        // owner, then mode, then xattrs, then times.
        self.chown_fd(&file, meta, rel)?;
        rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode))
            .map_err(|e| self.io_fail("setting the mode of", rel, e))?;
        self.xattrs(XattrTarget::Fd(file.as_fd()), meta, rel);
        rustix::fs::futimens(&file, &meta.times())
            .map_err(|e| self.io_fail("setting the times of", rel, e))?;
        Ok(())
    }

    fn symlink(&mut self, entry: &tarfmt::Entry, name: &RelPath, meta: &Meta) -> Result<(), Fail> {
        let rel = name.as_bytes();
        // Kept verbatim, absolute or not: it is resolved in the container's
        // root when used, and we never follow it while extracting.
        let target = entry.link().to_vec();
        if target.is_empty() {
            return Err(Fail::Refused("is a symlink with an empty target".into()));
        }
        if target.contains(&0) {
            return Err(Fail::Refused(
                "is a symlink whose target has a NUL byte".into(),
            ));
        }
        let (p, last) = self.parent_of(name)?;
        match resolve::make_replacing(p.fd.as_fd(), last, false, || {
            rustix::fs::symlinkat(target.as_slice(), &*p.fd, last)
        }) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {
                return Err(Fail::Refused(
                    "is a symlink whose target is too long".into(),
                ));
            }
            Err(e) => return Err(self.io_fail("creating", rel, e)),
        }
        self.created(&p, last);
        self.finish_node(&p, last, meta, rel, false)
    }

    fn hardlink(&mut self, entry: &tarfmt::Entry, name: &RelPath) -> Result<(), Fail> {
        let rel = name.as_bytes();
        let raw_target = entry.link().to_vec();
        let refuse =
            |why: &str| Fail::Refused(format!("is a hardlink to {}, {why}", shown(&raw_target)));
        if raw_target.first() == Some(&b'/') {
            return Err(refuse("an absolute path"));
        }
        let target = match RelPath::parse(&raw_target) {
            Ok(t) => t,
            Err(BadName::Escapes) => return Err(refuse("outside the target directory")),
            Err(b) => return Err(refuse(b.reason())),
        };
        let Some((tdir, tname)) = target.split_last() else {
            return Err(refuse("the target directory itself"));
        };
        // The target's directory resolves inside the root; its final
        // component is never followed (linkat without AT_SYMLINK_FOLLOW), so
        // a link to a symlink links the symlink.
        let tfd = match self.root.open_dir(tdir, true) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Err(refuse("which does not exist"));
            }
            Err(e) => return Err(self.resolve_fail(target.as_bytes(), e)),
        };
        let (p, last) = self.parent_of(name)?;
        let link = || rustix::fs::linkat(&tfd, tname, &*p.fd, last, AtFlags::empty());
        let mut result = link();
        if result == Err(Errno::EXIST) {
            // A second entry for the same link, or a link to itself: replacing
            // first would delete the target.
            let a = rustix::fs::statat(&tfd, tname, AtFlags::SYMLINK_NOFOLLOW);
            let b = rustix::fs::statat(&*p.fd, last, AtFlags::SYMLINK_NOFOLLOW);
            if let (Ok(a), Ok(b)) = (a, b) {
                if resolve::file_id(&a) == resolve::file_id(&b) {
                    self.created(&p, last);
                    return Ok(());
                }
            }
            resolve::remove_any(p.fd.as_fd(), last)
                .map_err(|e| self.io_fail("removing", rel, e))?;
            result = link();
        }
        match result {
            Ok(()) => {
                // A hardlink has no metadata of its own: the header's copy
                // would rewrite the shared inode, so it is not applied.
                self.created(&p, last);
                Ok(())
            }
            Err(Errno::NOENT) => Err(refuse("which does not exist")),
            Err(Errno::PERM) => Err(refuse("which is a directory or cannot be linked")),
            Err(e) => Err(self.io_fail("linking", rel, e)),
        }
    }

    /// FIFOs and device nodes.
    fn node(
        &mut self,
        entry: &tarfmt::Entry,
        kind: u8,
        name: &RelPath,
        meta: &Meta,
    ) -> Result<(), Fail> {
        let rel = name.as_bytes();
        let (ftype, dev) = match kind {
            b'6' => (FileType::Fifo, 0),
            _ => {
                if !self.privileged {
                    self.devices_skipped += 1;
                    return Ok(());
                }
                let bad = || {
                    Fail::Fatal(Error::InvalidArchive {
                        path: PathBuf::from(&self.opts.layer_name),
                        message: format!("entry {}: bad device number in its header", shown(rel)),
                    })
                };
                let (major, minor) = entry.device();
                let major = major.and_then(|v| u32::try_from(v).ok()).ok_or_else(bad)?;
                let minor = minor.and_then(|v| u32::try_from(v).ok()).ok_or_else(bad)?;
                let ftype = if kind == b'3' {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                (ftype, rustix::fs::makedev(major, minor))
            }
        };
        let (p, last) = self.parent_of(name)?;
        resolve::make_replacing(p.fd.as_fd(), last, false, || {
            rustix::fs::mknodat(&*p.fd, last, ftype, Mode::from_raw_mode(0o600), dev)
        })
        .map_err(|e| self.io_fail("creating", rel, e))?;
        self.created(&p, last);
        self.finish_node(&p, last, meta, rel, true)
    }

    /// Owner, mode (unless a symlink), xattrs and times of a node that cannot
    /// be opened (a symlink, a FIFO, a device), by name in its parent.
    fn finish_node(
        &mut self,
        p: &Parent,
        last: &[u8],
        meta: &Meta,
        rel: &[u8],
        chmod: bool,
    ) -> Result<(), Fail> {
        if self.privileged {
            rustix::fs::chownat(
                &*p.fd,
                last,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.io_fail("setting the owner of", rel, e))?;
        }
        if chmod {
            // We just made this node, so it is not a symlink to follow.
            rustix::fs::chmodat(
                &*p.fd,
                last,
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(|e| self.io_fail("setting the mode of", rel, e))?;
        }
        self.xattrs(XattrTarget::At(p.fd.as_fd(), last), meta, rel);
        rustix::fs::utimensat(&*p.fd, last, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io_fail("setting the times of", rel, e))?;
        Ok(())
    }

    /// Applies deferred directory metadata and gathers the warnings.
    fn finish(mut self) -> Result<ExtractStats> {
        // The cached parent is not needed any more; close it before reopening.
        self.cache = None;
        for (_, (key, times)) in std::mem::take(&mut self.touched) {
            if let Ok(fd) = self.root.open_dir(&key, true) {
                // Best effort: only the parents' times are at stake.
                let _ = rustix::fs::futimens(&fd, &times);
            }
        }
        // Deepest first, so a directory made unreadable (mode 0500 for a
        // non-root user) does not lock us out of its subdirectories.
        let mut dirs: Vec<(Vec<u8>, DirFix)> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(k, _)| {
            std::cmp::Reverse(k.iter().filter(|&&b| b == b'/').count() + usize::from(!k.is_empty()))
        });
        for (key, fix) in dirs {
            // Replaced by a non-directory later in the layer: nothing to do.
            let Ok(fd) = self.root.open_dir(&key, false) else {
                continue;
            };
            let fail = |op, e: Errno| {
                Error::io(op, self.root_path.join(OsStr::from_bytes(&key)), e.into())
            };
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(fix.mode))
                .map_err(|e| fail("setting the mode of", e))?;
            rustix::fs::futimens(&fd, &fix.times).map_err(|e| fail("setting the times of", e))?;
        }

        let layer = &self.opts.layer_name;
        let mut warnings = std::mem::take(&mut self.stats.warnings);
        if self.devices_skipped > 0 {
            warnings.push(format!(
                "{layer}: skipped {} device node(s): creating devices needs root",
                self.devices_skipped
            ));
        }
        if self.unknown_count > 0 {
            let examples: Vec<String> = self
                .unknown_types
                .iter()
                .map(|(t, n)| format!("{n} (type {:?})", char::from(*t)))
                .collect();
            warnings.push(format!(
                "{layer}: skipped {} entr{} of unsupported type: {}",
                self.unknown_count,
                if self.unknown_count == 1 { "y" } else { "ies" },
                examples.join(", ")
            ));
        }
        let mut ignored: Vec<_> = self.ignored_xattrs.iter().collect();
        ignored.sort();
        for (name, count) in ignored {
            warnings.push(format!(
                "{layer}: ignored xattr {} on {count} entr{} (host-specific)",
                String::from_utf8_lossy(name),
                if *count == 1 { "y" } else { "ies" },
            ));
        }
        let mut failures: Vec<_> = self.xattr_failures.iter().collect();
        failures.sort_by(|a, b| a.0.cmp(b.0));
        for ((name, _), f) in failures {
            warnings.push(format!(
                "{layer}: could not set xattr {} on {} entr{} (first {}): {}",
                String::from_utf8_lossy(name),
                f.count,
                if f.count == 1 { "y" } else { "ies" },
                f.first_entry,
                f.error
            ));
        }
        if self.xattr_failures_more > 0 {
            warnings.push(format!(
                "{layer}: {} more xattr(s) could not be set",
                self.xattr_failures_more
            ));
        }
        self.stats.warnings = warnings;
        Ok(self.stats)
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

// `From` rather than `as`: the field types differ between architectures.
#[allow(clippy::useless_conversion)]
fn stat_times(st: &rustix::fs::Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: i64::from(st.st_atime),
            tv_nsec: u64::from(st.st_atime_nsec).try_into().unwrap_or(0),
        },
        last_modification: Timespec {
            tv_sec: i64::from(st.st_mtime),
            tv_nsec: u64::from(st.st_mtime_nsec).try_into().unwrap_or(0),
        },
    }
}

/// Lets tests run as root see what an unprivileged run does.
#[cfg(test)]
pub(super) mod test_hooks {
    use std::cell::Cell;

    thread_local! {
        static UNPRIVILEGED: Cell<bool> = const { Cell::new(false) };
    }

    /// Makes extractions on this thread act as non-root.
    pub(in crate::layer) fn set_unprivileged(on: bool) {
        UNPRIVILEGED.with(|c| c.set(on));
    }

    pub(super) fn unprivileged() -> bool {
        UNPRIVILEGED.with(Cell::get)
    }

    /// `OCCYSTRAP_TEST_STAGED=1`: every extraction in the tests goes
    /// through [`super::stage_layer`] and [`super::apply_staged`], so that
    /// the extraction tests check both ways (`scripts/test.sh` runs them so).
    pub(super) fn staged() -> bool {
        std::env::var_os("OCCYSTRAP_TEST_STAGED").is_some_and(|v| v == "1")
    }

    /// Stages `tar` in the temp dir, where most tests make their roots
    /// (without touching a root's parent, which the sandbox tests compare),
    /// or beside a root on another filesystem; then applies it.
    pub(super) fn through_stage(
        root: &std::path::Path,
        tar: impl std::io::Read,
        opts: &crate::layer::ExtractOptions,
    ) -> crate::Result<crate::layer::ExtractStats> {
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        let tmp = std::env::temp_dir();
        let place = if dev(&tmp) == dev(root) {
            tmp.as_path()
        } else {
            root.parent().unwrap_or(root)
        };
        let area = super::StageDir::create_in(place)?;
        let mut skeleton = Vec::new();
        let files = super::stage_layer(tar, &area, &mut skeleton, false, opts)?;
        super::apply_staged(root, std::io::Cursor::new(skeleton), &files, opts)
    }
}

#[cfg(not(test))]
mod test_hooks {
    pub(super) fn unprivileged() -> bool {
        false
    }
}
