//! Path resolution that cannot leave the extraction root.
//!
//! Every multi-component path is opened with `openat2(2)` and
//! `RESOLVE_IN_ROOT`, so the kernel treats the root as `/` for `..` and for
//! absolute symlinks met on the way. Every other call names a single
//! component relative to a directory fd obtained that way, and uses a call
//! that does not follow a final symlink (`O_NOFOLLOW`, `mkdirat`,
//! `symlinkat`, `mknodat`, `unlinkat`, `linkat` without `AT_SYMLINK_FOLLOW`,
//! `AT_SYMLINK_NOFOLLOW`).

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// How the kernel may resolve a path handed to us: inside the root, never
/// through `/proc` magic links.
const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);
/// How a single component is opened: no symlink at all, no `..` escape.
const ONE_NAME: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);
/// Linux's MAXSYMLINKS, so loops fail the way the kernel would fail them.
const MAX_SYMLINKS: u32 = 40;
/// How often to retry an `openat2` that reports a concurrent rename.
const EAGAIN_RETRIES: u32 = 16;

/// A directory's identity.
pub(crate) type FileId = (u64, u64);

/// The identity of what `st` describes.
pub(crate) fn file_id(st: &rustix::fs::Stat) -> FileId {
    // `From` rather than `as`: the field types differ between architectures.
    #[allow(clippy::useless_conversion)]
    (u64::from(st.st_dev), u64::from(st.st_ino))
}

/// Whether `st` describes a directory.
pub(crate) fn is_dir(st: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// The extraction root, held open for the whole layer.
pub(crate) struct Root {
    fd: OwnedFd,
    id: FileId,
}

/// Why `Root::open` failed.
pub(crate) enum OpenRootError {
    /// The kernel has no `openat2(2)`; there is no safe fallback.
    NoOpenat2,
    /// Opening or probing the directory failed.
    Io(io::Error),
}

impl Root {
    /// Opens `path` (a directory the caller chose; symlinks in it are fine)
    /// and checks that `openat2(2)` works.
    pub(crate) fn open(path: &Path) -> Result<Root, OpenRootError> {
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| OpenRootError::Io(e.into()))?;
        match rustix::fs::openat2(
            &fd,
            ".",
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            IN_ROOT,
        ) {
            Ok(_) => {}
            Err(Errno::NOSYS) => return Err(OpenRootError::NoOpenat2),
            Err(e) => return Err(OpenRootError::Io(e.into())),
        }
        let st = rustix::fs::fstat(&fd).map_err(|e| OpenRootError::Io(e.into()))?;
        Ok(Root {
            id: file_id(&st),
            fd,
        })
    }

    /// The root directory's fd.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The root directory's identity.
    pub(crate) fn id(&self) -> FileId {
        self.id
    }

    /// Opens the directory at root-relative `rel`, resolving symlinks inside
    /// the root. With `follow_final` false a final symlink fails with ELOOP.
    pub(crate) fn open_dir(&self, rel: &[u8], follow_final: bool) -> io::Result<OwnedFd> {
        let mut flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        if !follow_final {
            flags |= OFlags::NOFOLLOW;
        }
        self.openat2_retry(rel, flags, IN_ROOT)
    }

    /// Opens the directory at root-relative `rel` if no symlink is met on
    /// the way (ELOOP otherwise).
    pub(crate) fn open_dir_no_symlinks(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        self.openat2_retry(
            rel,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            IN_ROOT | ResolveFlags::NO_SYMLINKS,
        )
    }

    fn openat2_retry(&self, rel: &[u8], flags: OFlags, how: ResolveFlags) -> io::Result<OwnedFd> {
        let rel: &[u8] = if rel.is_empty() { b"." } else { rel };
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(&self.fd, rel, flags, Mode::empty(), how) {
                Err(Errno::AGAIN) if tries < EAGAIN_RETRIES => tries += 1,
                r => return r.map_err(Into::into),
            }
        }
    }

    /// Opens the directory at `rel`, creating missing components (mode
    /// 0755) the way `mkdir -p` would, but resolving every symlink met on the
    /// way inside the root. `created` hears of each directory made, with the
    /// directory it was made in.
    pub(crate) fn open_dir_creating(
        &self,
        rel: &[u8],
        created: &mut dyn FnMut(BorrowedFd<'_>, &[u8], BorrowedFd<'_>),
    ) -> io::Result<OwnedFd> {
        // The common case: everything exists.
        match self.open_dir(rel, true) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            r => return r,
        }
        if let Some(fd) = self.create_below_existing(rel, created)? {
            return Ok(fd);
        }
        self.walk_creating(rel, created)
    }

    /// The usual way a path is missing: its first few components resolve
    /// (through whatever symlinks) and the rest are plain names to make.
    /// Finds the longest prefix the kernel resolves, by bisection (a few
    /// `openat2` calls, where walking by hand would cost a few system calls
    /// per level: a layer whose entries each add a directory 20,000 levels
    /// down would take minutes), then makes the rest. `None` when a
    /// component left is a symlink (dangling: it is why the path was
    /// missing), for [`Root::walk_creating`] to splice in.
    fn create_below_existing(
        &self,
        rel: &[u8],
        created: &mut dyn FnMut(BorrowedFd<'_>, &[u8], BorrowedFd<'_>),
    ) -> io::Result<Option<OwnedFd>> {
        let comps: Vec<&[u8]> = components(rel).collect();
        if comps.contains(&&b".."[..]) {
            return Ok(None);
        }
        // Prefixes of `lo` components resolve; of `hi`, do not (ENOENT).
        let (mut lo, mut hi) = (0, comps.len());
        let mut cur = self.open_dir(b"", false)?;
        // Most often only the last component is missing: try that first.
        if hi > 1 {
            match self.open_dir(&comps[..hi - 1].join(&b'/'), true) {
                Ok(fd) => {
                    lo = hi - 1;
                    cur = fd;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => hi -= 1,
                Err(_) => return Ok(None),
            }
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match self.open_dir(&comps[..mid].join(&b'/'), true) {
                Ok(fd) => {
                    lo = mid;
                    cur = fd;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => hi = mid,
                // Changed under us: leave it to the slow walk.
                Err(_) => return Ok(None),
            }
        }
        for comp in &comps[lo..] {
            let made = match rustix::fs::mkdirat(&cur, *comp, Mode::from_raw_mode(0o755)) {
                Ok(()) => true,
                Err(Errno::EXIST) => false,
                Err(e) => return Err(e.into()),
            };
            let fd = match open_child_dir(cur.as_fd(), comp) {
                Ok(fd) => fd,
                // A symlink (or a non-directory): only the slow walk can
                // tell what it means here.
                Err(Errno::LOOP | Errno::NOTDIR) if !made => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            if made {
                // mkdirat applied the umask; the spec'd default is 0755.
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))?;
                created(cur.as_fd(), comp, fd.as_fd());
            }
            cur = fd;
        }
        Ok(Some(cur))
    }

    /// Resolves `rel` one component at a time, doing by hand what
    /// `RESOLVE_IN_ROOT` does (a symlink's target is spliced into the rest of
    /// the path, absolute targets restart at the root, `..` stops at the
    /// root), because the kernel cannot create directories on the way.
    fn walk_creating(
        &self,
        rel: &[u8],
        created: &mut dyn FnMut(BorrowedFd<'_>, &[u8], BorrowedFd<'_>),
    ) -> io::Result<OwnedFd> {
        // Components still to resolve, last one on top.
        let mut todo: Vec<Vec<u8>> = components(rel).rev().map(<[u8]>::to_vec).collect();
        // The directories resolved so far, by identity: real directories
        // reached without symlinks, so `..` is the real parent, reopened
        // from the child and checked. (Not by reopening their path from the
        // root: it may be deeper than PATH_MAX.)
        let mut done: Vec<FileId> = Vec::new();
        let mut cur = self.open_dir(b"", false)?;
        let mut links = 0;
        while let Some(comp) = todo.pop() {
            if comp == b".." {
                if done.pop().is_some() {
                    let want = done.last().copied().unwrap_or(self.id);
                    let up = rustix::fs::openat(
                        &cur,
                        "..",
                        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                        Mode::empty(),
                    )?;
                    if file_id(&rustix::fs::fstat(&up)?) != want {
                        // Moved while we resolved through it.
                        return Err(Errno::AGAIN.into());
                    }
                    cur = up;
                }
                continue;
            }
            // Whether we tried mkdir, and whether it was ours.
            let (mut tried, mut made) = (false, false);
            loop {
                match open_child_dir(cur.as_fd(), &comp) {
                    Ok(fd) => {
                        if made {
                            // mkdirat applied the umask; the spec'd default is 0755.
                            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))?;
                            created(cur.as_fd(), &comp, fd.as_fd());
                        }
                        done.push(file_id(&rustix::fs::fstat(&fd)?));
                        cur = fd;
                        break;
                    }
                    Err(Errno::NOENT) if !tried => {
                        tried = true;
                        match rustix::fs::mkdirat(&cur, comp.as_slice(), Mode::from_raw_mode(0o755))
                        {
                            Ok(()) => made = true,
                            // Someone made it first: open what is there.
                            Err(Errno::EXIST) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                        // A symlink says ELOOP or ENOTDIR (O_DIRECTORY wins
                        // over O_NOFOLLOW); so does a non-directory, which
                        // readlinkat tells apart with EINVAL.
                        let target = match rustix::fs::readlinkat(&cur, comp.as_slice(), Vec::new())
                        {
                            Ok(t) => t,
                            Err(Errno::INVAL) => return Err(e.into()),
                            Err(e) => return Err(e.into()),
                        };
                        // Splice the target in.
                        links += 1;
                        if links > MAX_SYMLINKS {
                            return Err(Errno::LOOP.into());
                        }
                        let target = target.into_bytes();
                        if target.first() == Some(&b'/') {
                            done.clear();
                            cur = self.open_dir(b"", false)?;
                        }
                        todo.extend(components(&target).rev().map(<[u8]>::to_vec));
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(cur)
    }
}

/// The non-empty, non-`.` components of a path; `..` is kept.
fn components(p: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    p.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
}

/// Opens the subdirectory `name` of `dir`; a symlink fails with ELOOP.
pub(crate) fn open_child_dir(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ONE_NAME,
    )
}

/// Creates the regular file `name` in `dir`, replacing whatever is there
/// (a file, a symlink, a whole directory tree): never opening an existing
/// inode, so a hardlink into a lower layer is never written through.
pub(crate) fn create_file(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            dir,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
            ONE_NAME,
        ) {
            Err(Errno::EXIST) if tries < 3 => {
                tries += 1;
                remove_any(dir, name)?;
            }
            r => return r.map_err(Into::into),
        }
    }
}

/// Runs `make` (a `mkdirat`/`symlinkat`/`linkat`/`mknodat` of `name` in
/// `dir`), replacing whatever is in the way. `keep_dir` keeps an existing
/// directory instead (for directory entries); then the result is `false`.
pub(crate) fn make_replacing(
    dir: BorrowedFd<'_>,
    name: &[u8],
    keep_dir: bool,
    mut make: impl FnMut() -> rustix::io::Result<()>,
) -> io::Result<bool> {
    let mut tries = 0;
    loop {
        match make() {
            Ok(()) => return Ok(true),
            Err(Errno::EXIST) if tries < 3 => {
                tries += 1;
                if keep_dir {
                    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
                    if is_dir(&st) {
                        return Ok(false);
                    }
                }
                remove_any(dir, name)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Removes `name` from `dir` whatever it is; a missing name is fine.
pub(crate) fn remove_any(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        // Linux says EISDIR for a directory; some filesystems say EPERM.
        Err(Errno::ISDIR | Errno::PERM) => remove_tree(dir, name),
        Err(e) => Err(e.into()),
    }
}

pub(crate) use crate::rmtree::list;

/// Removes the directory `name` in `dir` and everything under it, without
/// following a symlink anywhere, holding a bounded number of fds whatever
/// the depth (see [`crate::rmtree`]).
pub(crate) fn remove_tree(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    crate::rmtree::remove_tree_at(dir, name)
}

/// What to do with one path during a whiteout walk.
pub(crate) enum Prune {
    /// Delete it (and everything under it).
    Remove,
    /// Keep it; if it is a directory, judge its children one by one.
    Keep,
}

/// Walks `names` in `dir` (whose identity is `dir_id`) and what is below
/// them, asking `judge(parent_id, name, stat)` about each; removes what it
/// says to, descends into kept directories. This is how whiteouts remove
/// lower layers' content while sparing what the current layer wrote.
pub(crate) fn prune(
    dir: BorrowedFd<'_>,
    dir_id: FileId,
    names: Vec<Vec<u8>>,
    judge: &mut dyn FnMut(FileId, &[u8], &rustix::fs::Stat) -> Prune,
) -> io::Result<()> {
    // Names still to judge, per level; a bounded number of fds whatever
    // the depth of what this layer wrote.
    let mut walk = crate::rmtree::Walk::new(dir, dir_id, names);
    // Guards against a directory appearing twice on the walk (a bind mount
    // inside the root), which would loop forever.
    let mut seen: HashSet<FileId> = HashSet::new();
    loop {
        let Some(name) = walk.top().data.pop() else {
            if walk.pop()?.is_none() {
                return Ok(());
            }
            continue;
        };
        let parent_id = walk.top().id;
        let fd = walk.fd();
        let st = match rustix::fs::statat(fd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        match judge(parent_id, &name, &st) {
            Prune::Remove if is_dir(&st) => remove_tree(fd, &name)?,
            Prune::Remove => remove_any(fd, &name)?,
            Prune::Keep if is_dir(&st) && seen.insert(file_id(&st)) => {
                let child = match open_child_dir(fd, &name) {
                    Ok(c) => c,
                    Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                    Err(e) => return Err(e.into()),
                };
                let todo = list(child.as_fd())?.into_iter().map(|(n, _)| n).collect();
                walk.push(name, child, file_id(&st), todo);
            }
            Prune::Keep => {}
        }
    }
}
