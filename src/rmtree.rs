//! Removing directory trees at any depth, with a bounded number of file
//! descriptors, never following a symlink.
//!
//! A layer can build a tree far deeper than `PATH_MAX` (a symlink hop
//! every couple of thousand levels), and a recursive removal that holds one
//! descriptor per level (`std::fs::remove_dir_all`) runs out of them at the
//! `RLIMIT_NOFILE` depth, leaving the tree behind. Here a walk keeps at most
//! [`FD_WINDOW`] directories open below its starting point; going back up
//! past that window reopens `..` from the child and checks that it is the
//! directory that was left (same device and inode), so a tree moved
//! underneath the walk makes it fail rather than wander. Every descent
//! opens a single name with `O_NOFOLLOW | O_DIRECTORY` (and `openat2`'s
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): a symlink planted in the tree is
//! unlinked, never followed.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Directories a walk keeps open below its starting point, at most.
pub const FD_WINDOW: usize = 8;

/// A directory's identity: device and inode.
pub(crate) type FileId = (u64, u64);

fn file_id(st: &rustix::fs::Stat) -> FileId {
    // `From` rather than `as`: the field types differ between architectures.
    #[allow(clippy::useless_conversion)]
    (u64::from(st.st_dev), u64::from(st.st_ino))
}

/// How a single name is opened: no symlink at all, no `..` escape.
const ONE_NAME: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Opens the subdirectory `name` of `dir`; a symlink or a non-directory
/// fails (ELOOP or ENOTDIR).
pub(crate) fn open_child_dir(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ONE_NAME,
    )
}

/// One directory on a [`Walk`]'s path.
pub(crate) struct Level<T> {
    /// Open while the level is within the window of the top.
    fd: Option<OwnedFd>,
    /// The directory's identity.
    pub(crate) id: FileId,
    /// Its name in the level above (empty for the starting directory).
    pub(crate) name: Vec<u8>,
    /// What the walk keeps for this level (names still to visit).
    pub(crate) data: T,
}

/// The path of directories from a starting directory down to the one being
/// worked on, holding at most [`FD_WINDOW`] of them open besides the start.
pub(crate) struct Walk<'a, T> {
    base: BorrowedFd<'a>,
    levels: Vec<Level<T>>,
}

impl<'a, T> Walk<'a, T> {
    /// A walk standing in `base` (whose identity is `id`).
    pub(crate) fn new(base: BorrowedFd<'a>, id: FileId, data: T) -> Self {
        Walk {
            base,
            levels: vec![Level {
                fd: None,
                id,
                name: Vec::new(),
                data,
            }],
        }
    }

    /// How many levels below the start the walk stands.
    pub(crate) fn depth(&self) -> usize {
        self.levels.len() - 1
    }

    /// The directory the walk stands in.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match self.levels.last() {
            Some(Level { fd: Some(fd), .. }) => fd.as_fd(),
            _ => self.base,
        }
    }

    /// The level the walk stands in.
    pub(crate) fn top(&mut self) -> &mut Level<T> {
        self.levels.last_mut().expect("a walk always has its start")
    }

    /// Steps into `fd`, the subdirectory `name` of the current directory.
    pub(crate) fn push(&mut self, name: Vec<u8>, fd: OwnedFd, id: FileId, data: T) {
        self.levels.push(Level {
            fd: Some(fd),
            id,
            name,
            data,
        });
        let n = self.levels.len();
        if n > FD_WINDOW + 1 {
            self.levels[n - 1 - FD_WINDOW].fd = None;
        }
    }

    /// Steps back up, giving back the level left; `None` at the start.
    /// A parent closed to stay within the window is reopened as `..` of
    /// the child, and must be the directory that was left.
    pub(crate) fn pop(&mut self) -> io::Result<Option<Level<T>>> {
        if self.levels.len() == 1 {
            return Ok(None);
        }
        let mut child = self.levels.pop().expect("checked above");
        let n = self.levels.len();
        if n > 1 && self.levels[n - 1].fd.is_none() {
            let from = child
                .fd
                .as_ref()
                .expect("the top level is always open")
                .as_fd();
            let up = rustix::fs::openat(
                from,
                "..",
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
            )?;
            if file_id(&rustix::fs::fstat(&up)?) != self.levels[n - 1].id {
                return Err(io::Error::other(
                    "a directory was moved while its tree was being walked",
                ));
            }
            self.levels[n - 1].fd = Some(up);
        }
        child.fd = None;
        Ok(Some(child))
    }
}

/// Lists a directory: each name (without `.` and `..`) and whether it is a
/// directory, as far as `d_type` tells.
pub(crate) fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, Option<bool>)>> {
    let mut out = Vec::new();
    let mut it = Dir::read_from(dir)?;
    while let Some(ent) = it.read() {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let is_dir = match ent.file_type() {
            FileType::Directory => Some(true),
            FileType::Unknown => None,
            _ => Some(false),
        };
        out.push((name.to_vec(), is_dir));
    }
    Ok(out)
}

/// Removes `path` and, if it is a directory, everything under it, without
/// following a symlink (except in the components leading to `path`, which
/// the caller chose). A missing `path` is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no directory entry to remove", path.display()),
        ));
    };
    let parent = crate::fsutil::parent_dir(path);
    let dir = match rustix::fs::open(
        parent,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(d) => d,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    remove_at(dir.as_fd(), name.as_bytes())
}

/// Removes `name` in `dir` whatever it is (a whole tree for a directory),
/// without following a symlink anywhere. A missing name is fine.
pub fn remove_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        // Linux says EISDIR for a directory; some filesystems say EPERM.
        Err(Errno::ISDIR | Errno::PERM) => remove_tree_at(dir, name),
        Err(Errno::ACCESS) => {
            make_writable(dir)?;
            remove_at_retried(dir, name)
        }
        Err(e) => Err(e.into()),
    }
}

fn remove_at_retried(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR | Errno::PERM) => remove_tree_at(dir, name),
        Err(e) => Err(e.into()),
    }
}

/// Gives the owner full access to an open directory, so that a tree whose
/// modes lock us out (a layer's 0500 directory, for a non-root user) can
/// still be removed.
fn make_writable(dir: BorrowedFd<'_>) -> io::Result<()> {
    let st = rustix::fs::fstat(dir)?;
    let mode = (st.st_mode & 0o7777) | 0o700;
    rustix::fs::fchmod(dir, Mode::from_raw_mode(mode)).map_err(Into::into)
}

/// Opens subdirectory `name` of `dir` for removal; one we may not read or
/// search is given owner access first (through an `O_PATH` handle, so the
/// mode change lands on the directory we looked at, never through a link).
fn open_for_removal(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    match open_child_dir(dir, name) {
        Err(Errno::ACCESS) => {}
        r => return r,
    }
    let handle = rustix::fs::openat2(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ONE_NAME,
    )?;
    let st = rustix::fs::fstat(&handle)?;
    let mode = (st.st_mode & 0o7777) | 0o700;
    let proc = format!("/proc/self/fd/{}", handle.as_raw_fd());
    rustix::fs::chmodat(
        rustix::fs::CWD,
        proc.as_str(),
        Mode::from_raw_mode(mode),
        AtFlags::empty(),
    )?;
    open_child_dir(dir, name)
}

/// Removes the directory `name` in `dir` and everything under it. What
/// turns out not to be a directory (a symlink, a file) is unlinked.
pub(crate) fn remove_tree_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let fd = match open_for_removal(dir, name) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        // Not a directory after all (or a symlink): unlink it instead.
        Err(Errno::NOTDIR | Errno::LOOP) => {
            return match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        Err(e) => return Err(e.into()),
    };
    // The start's identity is never checked: it is never reopened.
    let mut walk: Walk<'_, Option<Vec<Vec<u8>>>> = Walk::new(dir, (0, 0), None);
    let id = file_id(&rustix::fs::fstat(&fd)?);
    walk.push(name.to_vec(), fd, id, None);
    loop {
        if walk.depth() == 0 {
            return Ok(());
        }
        if walk.top().data.is_none() {
            // First visit: unlink what is not a directory, keep the rest.
            let subdirs = clear_files(walk.fd())?;
            walk.top().data = Some(subdirs);
        }
        let next = walk.top().data.as_mut().and_then(Vec::pop);
        match next {
            Some(sub) => {
                let here = walk.fd();
                match open_for_removal(here, &sub) {
                    Ok(fd) => {
                        let id = file_id(&rustix::fs::fstat(&fd)?);
                        walk.push(sub, fd, id, None);
                    }
                    Err(Errno::NOENT) => {}
                    Err(Errno::NOTDIR | Errno::LOOP) => {
                        match rustix::fs::unlinkat(here, sub.as_slice(), AtFlags::empty()) {
                            Ok(()) | Err(Errno::NOENT) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            None => {
                let done = walk.pop()?.expect("depth checked above");
                let rmdir =
                    || rustix::fs::unlinkat(walk.fd(), done.name.as_slice(), AtFlags::REMOVEDIR);
                match rmdir() {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(Errno::ACCESS) => {
                        make_writable(walk.fd())?;
                        match rmdir() {
                            Ok(()) | Err(Errno::NOENT) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// Unlinks every non-directory in `dir`; gives back the subdirectories.
fn clear_files(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut subdirs = Vec::new();
    let mut writable = false;
    for (child, is_dir) in list(dir)? {
        if is_dir == Some(true) {
            subdirs.push(child);
            continue;
        }
        loop {
            match rustix::fs::unlinkat(dir, child.as_slice(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR | Errno::PERM) if is_dir.is_none() => subdirs.push(child),
                Err(Errno::ACCESS) if !writable => {
                    writable = true;
                    make_writable(dir)?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            break;
        }
    }
    Ok(subdirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// Builds `levels` nested directories `d` under `top`, through fds (the
    /// path is longer than PATH_MAX), with a file at the bottom.
    fn deep(top: &Path, levels: usize) {
        fs::create_dir(top).unwrap();
        let mut cur =
            rustix::fs::open(top, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        for _ in 0..levels {
            rustix::fs::mkdirat(&cur, "d", Mode::from_raw_mode(0o755)).unwrap();
            cur = open_child_dir(cur.as_fd(), b"d").unwrap();
        }
        let f = rustix::fs::openat(
            &cur,
            "f",
            OFlags::CREATE | OFlags::WRONLY,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        drop(f);
    }

    use crate::layer::depth_with_fd_limit as with_fd_limit;

    #[test]
    fn deep_tree_is_removed_with_few_fds() {
        let t = crate::layer::depth_sandbox();
        let top = t.path().join("top");
        deep(&top, 30_000);
        // stdin, stdout, stderr, the harness's own, and a handful for us.
        let ok = with_fd_limit(32, || remove(&top).is_ok());
        assert!(ok, "removal failed under RLIMIT_NOFILE=32");
        assert!(!top.exists());
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn std_removal_needs_an_fd_per_level() {
        // Shows the test above can fail: the standard library's removal
        // runs out of descriptors on the same tree and limit.
        let t = crate::layer::depth_sandbox();
        let top = t.path().join("top");
        deep(&top, 2_000);
        let ok = with_fd_limit(32, || fs::remove_dir_all(&top).is_ok());
        assert!(!ok, "std::fs::remove_dir_all unexpectedly managed");
        remove(&top).unwrap();
        assert!(!top.exists());
    }

    #[test]
    fn planted_symlinks_are_removed_not_followed() {
        let t = crate::layer::depth_sandbox();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), "keep").unwrap();
        let top = t.path().join("top");
        deep(&top, 50);
        // Links to the outside directory at the top, in the middle (past
        // the fd window) and at the bottom, and one to a file.
        let mut p = top.clone();
        for i in 0..=50 {
            if i % 25 == 0 {
                std::os::unix::fs::symlink(&outside, p.join("link")).unwrap();
                std::os::unix::fs::symlink(outside.join("precious"), p.join("flink")).unwrap();
                std::os::unix::fs::symlink("..", p.join("up")).unwrap();
            }
            p.push("d");
        }
        remove(&top).unwrap();
        assert!(!top.exists());
        assert_eq!(
            fs::read_to_string(outside.join("precious")).unwrap(),
            "keep"
        );
        // The start itself a symlink: the link goes, its target stays.
        let l = t.path().join("l");
        std::os::unix::fs::symlink(&outside, &l).unwrap();
        remove(&l).unwrap();
        assert!(fs::symlink_metadata(&l).is_err());
        assert!(outside.join("precious").exists());
    }

    #[test]
    fn wide_and_locked_trees_are_removed() {
        let t = crate::layer::depth_sandbox();
        let top = t.path().join("top");
        fs::create_dir(&top).unwrap();
        for i in 0..20_000 {
            fs::write(top.join(format!("f{i}")), "").unwrap();
        }
        for i in 0..50 {
            let d = top.join(format!("d{i}"));
            fs::create_dir(&d).unwrap();
            fs::write(d.join("x"), "").unwrap();
            fs::set_permissions(
                &d,
                fs::Permissions::from_mode(if i % 2 == 0 { 0o500 } else { 0o000 }),
            )
            .unwrap();
        }
        remove(&top).unwrap();
        assert!(!top.exists());
        // Missing is fine.
        remove(&top).unwrap();
    }

    #[test]
    fn a_moved_parent_is_noticed() {
        // The walk reopens `..` past its window; a tree moved underneath
        // it makes it fail rather than remove elsewhere.
        let t = crate::layer::depth_sandbox();
        let top = t.path().join("top");
        deep(&top, FD_WINDOW * 3);
        let base =
            rustix::fs::open(t.path(), OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        let mut walk: Walk<'_, ()> = Walk::new(base.as_fd(), (0, 0), ());
        let mut name = b"top".to_vec();
        let mut ids = Vec::new();
        for _ in 0..FD_WINDOW * 2 {
            let fd = open_child_dir(walk.fd(), &name).unwrap();
            let id = file_id(&rustix::fs::fstat(&fd).unwrap());
            ids.push(id);
            walk.push(name, fd, id, ());
            name = b"d".to_vec();
        }
        // Move the directory FD_WINDOW + 1 levels up (now closed) elsewhere.
        let mut p = top.clone();
        for _ in 0..FD_WINDOW {
            p.push("d");
        }
        fs::rename(&p, t.path().join("moved")).unwrap();
        fs::create_dir(&p).unwrap();
        let mut result = Ok(());
        for _ in 0..FD_WINDOW * 2 {
            match walk.pop() {
                Ok(_) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Moving the subtree changes the `..` of its top: nothing to see
        // there. It is the level above the moved one that no longer
        // matches what `..` reaches.
        let _ = ids;
        assert!(result.is_err(), "walk went up through a moved directory");
        remove(&top).unwrap();
        remove(&t.path().join("moved")).unwrap();
    }
}
