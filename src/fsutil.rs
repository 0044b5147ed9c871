//! Filesystem helpers shared by sources and sinks: opening files without
//! blocking on FIFOs, [`StoreRoot`] for reaching inside a directory others
//! may write into without following links, atomic writes and locks.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::cancel::CancelToken;
use crate::error::{Error, Result};

/// Writes `data` to `path` through a temp file in the same directory and a
/// rename, so readers see the old content or the new, never a mix. The
/// directory is the caller's choice (followed if a symlink); the final name
/// is replaced, never followed.
#[cfg(test)]
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{} names no file", path.display())))?;
    let store = StoreRoot::open(dir)?;
    store.atomic_write(Path::new(name), data)
}

/// The directory a path is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Temp files are created 0600; finished outputs get the usual 0644.
pub fn set_readable(f: &File) {
    use std::os::unix::fs::PermissionsExt;
    let _ = f.set_permissions(std::fs::Permissions::from_mode(0o644));
}

/// Flags for opening a file to read: a FIFO with no writer opens at once
/// instead of blocking (`O_NONBLOCK`, cleared once the file is known to be
/// regular) and a terminal never becomes our controlling one.
const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::CLOEXEC)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY);

/// How messages name a file type that is not the one expected.
fn kind_name(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown type",
    }
}

/// The refusal of a path that is not what was expected.
fn wrong_kind(path: &Path, found: FileType, expected: &str) -> Error {
    let message = if found == FileType::Symlink {
        format!("is a symbolic link, not {expected}; links inside a store are not followed")
    } else {
        format!(
            "is {}, not {expected}; refusing to use it",
            kind_name(found)
        )
    };
    Error::InvalidArchive {
        path: path.to_path_buf(),
        message,
    }
}

/// Makes an fd opened with `O_NONBLOCK` a regular file open for blocking I/O,
/// or refuses it.
fn regular_file(fd: OwnedFd, path: &Path) -> Result<File> {
    let st = rfs::fstat(&fd).map_err(|e| Error::io("checking", path, e.into()))?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Err(wrong_kind(path, ft, "a regular file"));
    }
    let flags = rfs::fcntl_getfl(&fd).map_err(|e| Error::io("opening", path, e.into()))?;
    rfs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK)
        .map_err(|e| Error::io("opening", path, e.into()))?;
    Ok(File::from(fd))
}

/// Opens a path the user gave (symlinks followed: the path is theirs) for
/// reading, refusing anything but a regular file without blocking on it: a
/// FIFO, socket or device given where a file is expected is an error, not a
/// hang. `Ok(None)` when nothing is there.
pub fn open_regular(path: &Path) -> Result<Option<File>> {
    match rfs::open(path, READ_FLAGS, Mode::empty()) {
        Ok(fd) => regular_file(fd, path).map(Some),
        Err(Errno::NOENT) => Ok(None),
        // A socket cannot be opened at all.
        Err(Errno::NXIO) => match rfs::stat(path) {
            Ok(st) => Err(wrong_kind(
                path,
                FileType::from_raw_mode(st.st_mode),
                "a regular file",
            )),
            Err(e) => Err(Error::io("opening", path, e.into())),
        },
        Err(e) => Err(Error::io("opening", path, e.into())),
    }
}

/// Reads at most `limit` bytes of a small file (metadata) from `file`.
fn read_limited(file: File, path: &Path, limit: u64) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut raw)
        .map_err(|e| Error::io("reading", path, e))?;
    if raw.len() as u64 > limit {
        return Err(Error::InvalidArchive {
            path: path.to_path_buf(),
            message: format!("more than the {limit} bytes allowed for it"),
        });
    }
    Ok(raw)
}

/// A directory that other users may be able to write into (a layer store, an
/// OCI layout, a layer tree), reached through an fd of its root.
///
/// The root is the user's choice and may be reached through symlinks;
/// nothing below it is: every path is resolved from the root one component
/// at a time with `O_NOFOLLOW`, only plain names (no `..`, no absolute
/// paths), and a symlink anywhere, or a file that is not regular where a
/// file is expected, is refused. Creating, renaming and removing all use
/// the `*at` calls on the directory fd found that way, so a planted link
/// can neither send a write elsewhere nor make us read from outside.
pub struct StoreRoot {
    path: PathBuf,
    dir: OwnedFd,
}

impl std::fmt::Debug for StoreRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreRoot")
            .field("path", &self.path)
            .finish()
    }
}

/// The directory fd and final name a relative store path resolves to.
struct Resolved {
    dir: OwnedFd,
    name: OsString,
}

impl StoreRoot {
    /// Opens the existing directory `path` as a store root.
    pub fn open(path: &Path) -> Result<StoreRoot> {
        match rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(dir) => Ok(StoreRoot {
                path: path.to_path_buf(),
                dir,
            }),
            Err(Errno::NOTDIR) => match rfs::stat(path) {
                Ok(st) => Err(wrong_kind(
                    path,
                    FileType::from_raw_mode(st.st_mode),
                    "a directory",
                )),
                Err(e) => Err(Error::io("opening", path, e.into())),
            },
            Err(e) => Err(Error::io("opening", path, e.into())),
        }
    }

    /// Opens `path` as a store root, creating it (and its parents) if
    /// missing. The flag says whether this call created it.
    pub fn create(path: &Path) -> Result<(StoreRoot, bool)> {
        let existed = std::fs::symlink_metadata(path).is_ok();
        if !existed {
            std::fs::create_dir_all(path).map_err(|e| Error::io("creating", path, e))?;
        }
        Ok((StoreRoot::open(path)?, !existed))
    }

    /// The root's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How messages name `rel` inside the store.
    pub fn display(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// Splits `rel` into plain names, refusing `..`, `.`, `/` and empty paths.
    fn names<'a>(&self, rel: &'a Path) -> Result<Vec<&'a std::ffi::OsStr>> {
        let mut out = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => out.push(n),
                _ => {
                    return Err(Error::InvalidArchive {
                        path: self.path.clone(),
                        message: format!(
                            "{:?} is not a path inside the store",
                            crate::digest::truncate_for_error(&rel.to_string_lossy())
                        ),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Opens the directory `names` inside the root without following links,
    /// creating missing levels when `create`. `Ok(None)` when a level is
    /// missing and not created.
    fn walk(&self, names: &[&std::ffi::OsStr], create: bool) -> Result<Option<OwnedFd>> {
        let mut cur = rfs::openat(
            &self.dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("opening", &self.path, e.into()))?;
        let mut here = self.path.clone();
        for name in names {
            here.push(name);
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let mut created = false;
            cur = loop {
                match rfs::openat(&cur, *name, flags, Mode::empty()) {
                    Ok(fd) => break fd,
                    Err(Errno::NOENT) if create && !created => {
                        match rfs::mkdirat(&cur, *name, Mode::from_raw_mode(0o755)) {
                            Ok(()) | Err(Errno::EXIST) => created = true,
                            Err(e) => return Err(Error::io("creating", &here, e.into())),
                        }
                    }
                    Err(Errno::NOENT) => return Ok(None),
                    Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
                        let ft = rfs::statat(&cur, *name, AtFlags::SYMLINK_NOFOLLOW)
                            .map(|st| FileType::from_raw_mode(st.st_mode))
                            .unwrap_or(FileType::Unknown);
                        return Err(wrong_kind(&here, ft, "a directory"));
                    }
                    Err(e) => return Err(Error::io("opening", &here, e.into())),
                }
            };
        }
        Ok(Some(cur))
    }

    /// The parent directory of `rel` and its last name; `Ok(None)` when the
    /// parent does not exist and `create` is false.
    fn resolve(&self, rel: &Path, create: bool) -> Result<Option<Resolved>> {
        let names = self.names(rel)?;
        let Some((last, parents)) = names.split_last() else {
            return Err(Error::InvalidArchive {
                path: self.path.clone(),
                message: "an empty path is not a file inside the store".into(),
            });
        };
        Ok(self.walk(parents, create)?.map(|dir| Resolved {
            dir,
            name: last.to_os_string(),
        }))
    }

    /// Opens the directory `rel` (`""` for the root) without following
    /// links, creating it when `create`; `Ok(None)` when missing.
    pub fn dir(&self, rel: &Path, create: bool) -> Result<Option<OwnedFd>> {
        let names = self.names(rel)?;
        self.walk(&names, create)
    }

    /// What is at `rel`, not following a final symlink; `Ok(None)` when
    /// nothing is.
    pub fn kind(&self, rel: &Path) -> Result<Option<FileType>> {
        let Some(r) = self.resolve(rel, false)? else {
            return Ok(None);
        };
        match rfs::statat(&r.dir, &r.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(Error::io("checking", self.display(rel), e.into())),
        }
    }

    /// Whether `rel` is a regular file (not a link to one). Errors count as
    /// no: callers then write the file anew, which replaces whatever is
    /// there, or fail on the way.
    pub fn is_file(&self, rel: &Path) -> bool {
        matches!(self.kind(rel), Ok(Some(FileType::RegularFile)))
    }

    /// Whether `rel` is a directory (not a link to one).
    pub fn is_dir(&self, rel: &Path) -> bool {
        matches!(self.kind(rel), Ok(Some(FileType::Directory)))
    }

    /// Opens the regular file `rel` for reading; `Ok(None)` when missing.
    /// A symlink, FIFO, socket or device there is refused without blocking.
    pub fn open_file(&self, rel: &Path) -> Result<Option<File>> {
        let Some(r) = self.resolve(rel, false)? else {
            return Ok(None);
        };
        let shown = self.display(rel);
        // Refused before opening: opening a device can have effects.
        match rfs::statat(&r.dir, &r.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let ft = FileType::from_raw_mode(st.st_mode);
                if ft != FileType::RegularFile {
                    return Err(wrong_kind(&shown, ft, "a regular file"));
                }
            }
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(Error::io("checking", &shown, e.into())),
        }
        match rfs::openat(
            &r.dir,
            &r.name,
            READ_FLAGS | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            // Checked again on the fd: it may have been swapped meanwhile.
            Ok(fd) => regular_file(fd, &shown).map(Some),
            Err(Errno::NOENT) => Ok(None),
            Err(Errno::LOOP) => Err(wrong_kind(&shown, FileType::Symlink, "a regular file")),
            Err(e) => Err(Error::io("opening", &shown, e.into())),
        }
    }

    /// Reads the regular file `rel`, at most `limit` bytes; `Ok(None)` when
    /// missing.
    pub fn read_small(&self, rel: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
        match self.open_file(rel)? {
            Some(f) => read_limited(f, &self.display(rel), limit).map(Some),
            None => Ok(None),
        }
    }

    /// Creates a temp file (`<prefix><random>.partial`, mode 0600) in the
    /// directory `rel_dir`, created if missing. It is removed when dropped
    /// unless persisted.
    pub fn create_temp(&self, rel_dir: &Path, prefix: &str) -> Result<StoreTemp> {
        let shown_dir = self.display(rel_dir);
        let dir = self
            .dir(rel_dir, true)?
            .ok_or_else(|| Error::io("creating", &shown_dir, io::ErrorKind::NotFound.into()))?;
        for _ in 0..64 {
            let name = OsString::from(format!("{prefix}{:016x}.partial", rand::random::<u64>()));
            match rfs::openat(
                &dir,
                &name,
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => {
                    let shown = shown_dir.join(&name);
                    return Ok(StoreTemp {
                        file: File::from(fd),
                        _cleanup: crate::cancel::remove_on_forced_exit(shown.clone(), false),
                        shown,
                        dir,
                        name,
                        kept: false,
                    });
                }
                Err(Errno::EXIST) => continue,
                Err(e) => {
                    return Err(Error::io("creating a temp file in", &shown_dir, e.into()));
                }
            }
        }
        Err(Error::io(
            "creating a temp file in",
            &shown_dir,
            io::ErrorKind::AlreadyExists.into(),
        ))
    }

    /// Writes `data` to `rel` through a synced temp file and a rename, so
    /// readers see the old content or the new, never a mix.
    pub fn atomic_write(&self, rel: &Path, data: &[u8]) -> Result<()> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let mut tmp = self.create_temp(parent, ".occystrap-")?;
        tmp.file
            .write_all(data)
            .and_then(|_| tmp.file.sync_data())
            .map_err(|e| Error::io("writing", &tmp.shown, e))?;
        set_readable(&tmp.file);
        tmp.persist(self, rel, false)?;
        Ok(())
    }

    /// Renames `from` to `to`, both inside the store, never following a
    /// link. With `no_replace`, an existing `to` is left alone and the
    /// answer is `false`.
    pub fn rename(&self, from: &Path, to: &Path, no_replace: bool) -> Result<bool> {
        let src = self
            .resolve(from, false)?
            .ok_or_else(|| Error::io("moving", self.display(from), Errno::NOENT.into()))?;
        rename_into(
            self,
            &src.dir,
            &src.name,
            &self.display(from),
            to,
            no_replace,
        )
    }

    /// Moves `from` in the store `src` to `to` in this store (both on one
    /// filesystem), leaving an existing `to` alone: `Ok(false)`.
    pub fn move_from(&self, src: &StoreRoot, from: &Path, to: &Path) -> Result<bool> {
        let r = src
            .resolve(from, false)?
            .ok_or_else(|| Error::io("moving", src.display(from), Errno::NOENT.into()))?;
        rename_into(self, &r.dir, &r.name, &src.display(from), to, true)
    }

    /// Hard-links the file at `source` (a path of the caller's, outside the
    /// store) to `rel`. An existing `rel` is left alone: `Ok(false)`.
    pub fn link_from(&self, source: &Path, rel: &Path) -> io::Result<bool> {
        let r = self
            .resolve(rel, true)
            .map_err(io::Error::other)?
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        match rfs::linkat(rfs::CWD, source, &r.dir, &r.name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the file (or, with `dir`, the empty directory) `rel`;
    /// missing is fine.
    pub fn remove(&self, rel: &Path, dir: bool) -> Result<()> {
        let Some(r) = self.resolve(rel, false)? else {
            return Ok(());
        };
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rfs::unlinkat(&r.dir, &r.name, flags) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(Error::io("removing", self.display(rel), e.into())),
        }
    }

    /// Takes the exclusive lock on the file `name` in the root (see
    /// [`DirLock`]); waiting for it stops once `cancel` is cancelled.
    pub fn lock(&self, name: &str, cancel: &CancelToken) -> Result<DirLock> {
        let shown = self.display(Path::new(name));
        // Refused before opening: opening a device can have effects.
        match rfs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => {
                return Err(wrong_kind(
                    &shown,
                    FileType::from_raw_mode(st.st_mode),
                    "a regular file",
                ));
            }
            _ => {}
        }
        // O_NOFOLLOW: a planted link must not make us create its target;
        // O_NONBLOCK: a FIFO there opens at once and is then refused.
        let fd = match rfs::openat(
            &self.dir,
            name,
            OFlags::RDWR
                | OFlags::CREATE
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::NOCTTY
                | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        ) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => {
                return Err(wrong_kind(&shown, FileType::Symlink, "a regular file"));
            }
            Err(Errno::NXIO) | Err(Errno::ISDIR) => {
                let ft = rfs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| FileType::from_raw_mode(st.st_mode))
                    .unwrap_or(FileType::Unknown);
                return Err(wrong_kind(&shown, ft, "a regular file"));
            }
            Err(e) => return Err(Error::io("opening lock file", &shown, e.into())),
        };
        let file = regular_file(fd, &shown)?;
        // Polled rather than waited on, so that an interrupted run stops
        // waiting for a lock some other process holds.
        loop {
            match rfs::flock(&file, rfs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(Errno::WOULDBLOCK) | Err(Errno::INTR) => {
                    cancel.check()?;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(Error::io("locking", &shown, e.into())),
            }
        }
        Ok(DirLock { _file: file })
    }
}

/// Renames `(src_dir, src_name)` to `to` inside `store`; see
/// [`StoreRoot::rename`].
fn rename_into(
    store: &StoreRoot,
    src_dir: &OwnedFd,
    src_name: &std::ffi::OsStr,
    shown_from: &Path,
    to: &Path,
    no_replace: bool,
) -> Result<bool> {
    let dest = store
        .resolve(to, true)?
        .ok_or_else(|| Error::io("moving", shown_from, Errno::NOENT.into()))?;
    let flags = if no_replace {
        rfs::RenameFlags::NOREPLACE
    } else {
        rfs::RenameFlags::empty()
    };
    match rfs::renameat_with(src_dir, src_name, &dest.dir, &dest.name, flags) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) if no_replace => Ok(false),
        // A filesystem without RENAME_NOREPLACE: check, then rename.
        Err(Errno::INVAL) | Err(Errno::NOSYS) if no_replace => {
            if rfs::statat(&dest.dir, &dest.name, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
                return Ok(false);
            }
            rfs::renameat(src_dir, src_name, &dest.dir, &dest.name)
                .map_err(|e| Error::io("renaming into place", store.display(to), e.into()))?;
            Ok(true)
        }
        Err(e) => Err(Error::io(
            "renaming into place",
            store.display(to),
            e.into(),
        )),
    }
}

/// A temp file inside a [`StoreRoot`], removed when dropped unless persisted.
pub struct StoreTemp {
    file: File,
    _cleanup: crate::cancel::CleanupGuard,
    dir: OwnedFd,
    name: OsString,
    shown: PathBuf,
    kept: bool,
}

impl StoreTemp {
    /// The open file.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// How messages name the temp file.
    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// Renames the temp file to `rel` in `store` (see [`StoreRoot::rename`]);
    /// when the target exists and `no_replace` is set, the temp file is
    /// removed and the answer is `false`.
    pub fn persist(mut self, store: &StoreRoot, rel: &Path, no_replace: bool) -> Result<bool> {
        let moved = rename_into(store, &self.dir, &self.name, &self.shown, rel, no_replace)?;
        self.kept = moved;
        Ok(moved)
    }
}

impl Drop for StoreTemp {
    fn drop(&mut self) {
        if !self.kept {
            let _ = rfs::unlinkat(&self.dir, &self.name, AtFlags::empty());
        }
    }
}

/// Checks that `rel` in `store` is free or of type `expected` (a regular
/// file or a directory, not a link to one), with every directory above it a
/// real one: a place something of ours may be renamed to, or find its twin
/// at.
pub fn check_free_or(store: &StoreRoot, rel: &Path, expected: FileType) -> Result<()> {
    match store.kind(rel)? {
        None => Ok(()),
        Some(ft) if ft == expected => Ok(()),
        Some(ft) => Err(wrong_kind(&store.display(rel), ft, kind_name(expected))),
    }
}

/// A hidden directory of a run's own in a store (`.occystrap-run-*`), for
/// files (layers, blobs) that must join the store only when the run
/// succeeds. Dropping it removes it with the files it still holds, so a
/// failed run leaves nothing behind. It holds flat files only.
pub struct RunDir {
    /// Its name in the store's root.
    name: String,
    _cleanup: crate::cancel::CleanupGuard,
    /// A second fd of the store's root, for the removal.
    root: StoreRoot,
    /// The names this run has put there.
    files: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl RunDir {
    /// Creates a run directory in `store`.
    pub fn create(store: &StoreRoot) -> Result<RunDir> {
        let name = format!(".occystrap-run-{:016x}", rand::random::<u64>());
        store.dir(Path::new(&name), true)?;
        Ok(RunDir {
            _cleanup: crate::cancel::remove_on_forced_exit(store.display(Path::new(&name)), true),
            name,
            root: StoreRoot::open(store.path())?,
            files: Default::default(),
        })
    }

    /// Its name in the store's root.
    pub fn name(&self) -> &Path {
        Path::new(&self.name)
    }

    /// Where the file `name` of this run is, relative to the store's root.
    pub fn rel(&self, name: &str) -> PathBuf {
        Path::new(&self.name).join(name)
    }

    /// Whether this run has put `name` here.
    pub fn has(&self, name: &str) -> bool {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
    }

    /// Records that this run puts `name` here (before it appears, so that
    /// the removal knows every name).
    pub fn add(&self, name: &str) {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string());
    }

    /// The names this run has put here.
    pub fn names(&self) -> Vec<String> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        for n in self.names() {
            let _ = self.root.remove(&self.rel(&n), false);
        }
        if let Err(e) = self.root.remove(Path::new(&self.name), true) {
            tracing::warn!("{e:#}");
        }
    }
}

/// An exclusive `flock` on a lock file, released when dropped. Serialises
/// read-modify-write of shared index files between processes.
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock on `dir/name`, creating the file, waiting while another
    /// process holds it (and stopping once `cancel` is cancelled). The lock
    /// file must be a regular file: a symlink, FIFO or device there is
    /// refused.
    #[cfg(test)]
    pub fn acquire(dir: &Path, name: &str, cancel: &CancelToken) -> Result<DirLock> {
        StoreRoot::open(dir)?.lock(name, cancel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    fn fifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }

    #[test]
    fn store_paths_never_follow_links() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("store");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("real/file")).unwrap();
        let store = StoreRoot::open(&root).unwrap();
        let msg = |e: Error| e.to_string();
        // Reading through a linked directory or a linked file.
        for rel in ["link/secret", "real/file"] {
            let e = msg(store.open_file(Path::new(rel)).unwrap_err());
            assert!(e.contains("symbolic link"), "{rel}: {e}");
        }
        // Writing into a linked directory, creating one below it.
        assert!(store.atomic_write(Path::new("link/new"), b"x").is_err());
        assert!(store.dir(Path::new("link/sub"), true).is_err());
        assert!(store.create_temp(Path::new("link"), ".t-").is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        // Replacing a link renames over the link, never writes its target.
        store.atomic_write(Path::new("real/file"), b"mine").unwrap();
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
        assert_eq!(std::fs::read(root.join("real/file")).unwrap(), b"mine");
        // Names that leave the root.
        for rel in ["../outside/secret", "/etc/passwd", "real/../../x", ""] {
            assert!(store.open_file(Path::new(rel)).is_err(), "{rel}");
        }
        assert!(store.open_file(Path::new("missing")).unwrap().is_none());
        assert!(store.open_file(Path::new("missing/x")).unwrap().is_none());
        assert!(!store.is_file(Path::new("real/file/x")));
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        fifo(&d.path().join("fifo"));
        let store = StoreRoot::open(d.path()).unwrap();
        let start = std::time::Instant::now();
        let e = store.open_file(Path::new("fifo")).unwrap_err().to_string();
        assert!(e.contains("is a FIFO"), "{e}");
        let e = open_regular(&d.path().join("fifo"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a FIFO"), "{e}");
        let e = open_regular(d.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = open_regular(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("character device"), "{e}");
        let e = store
            .lock("fifo", &CancelToken::new())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is a FIFO"), "{e}");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        assert!(open_regular(&d.path().join("none")).unwrap().is_none());
        // A FIFO as the root of a store.
        assert!(StoreRoot::open(&d.path().join("fifo")).is_err());
    }

    #[test]
    fn lock_refuses_links_and_temp_files_go() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        let root = d.path().join("store");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&victim, root.join(".lock")).unwrap();
        let e = DirLock::acquire(&root, ".lock", &CancelToken::new())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(std::fs::symlink_metadata(&victim).is_err());

        let store = StoreRoot::open(&root).unwrap();
        let t = store.create_temp(Path::new("sub"), ".t-").unwrap();
        assert_eq!(std::fs::read_dir(root.join("sub")).unwrap().count(), 1);
        drop(t);
        assert_eq!(std::fs::read_dir(root.join("sub")).unwrap().count(), 0);
        std::fs::write(root.join("a"), b"a").unwrap();
        std::fs::write(root.join("b"), b"b").unwrap();
        assert!(!store.rename(Path::new("a"), Path::new("b"), true).unwrap());
        assert_eq!(std::fs::read(root.join("b")).unwrap(), b"b");
        assert!(
            store
                .rename(Path::new("a"), Path::new("c/d"), true)
                .unwrap()
        );
        assert_eq!(std::fs::read(root.join("c/d")).unwrap(), b"a");
    }

    #[test]
    fn run_dir_removes_what_it_holds() {
        let d = tempfile::tempdir().unwrap();
        let store = StoreRoot::open(d.path()).unwrap();
        let run = RunDir::create(&store).unwrap();
        run.add("x");
        store.atomic_write(&run.rel("x"), b"x").unwrap();
        assert!(run.has("x") && !run.has("y"));
        drop(run);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn lock_is_exclusive_across_threads() {
        let d = tempfile::tempdir().unwrap();
        let counter = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let dir = d.path().to_path_buf();
                let c = counter.clone();
                std::thread::spawn(move || {
                    let _l = DirLock::acquire(&dir, ".lock", &CancelToken::new()).unwrap();
                    c.lock().unwrap().push((i, "in"));
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    c.lock().unwrap().push((i, "out"));
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let events = counter.lock().unwrap();
        for pair in events.chunks(2) {
            assert_eq!(pair[0].0, pair[1].0, "interleaved: {events:?}");
        }
    }

    #[test]
    fn waiting_for_a_lock_stops_when_its_token_is_cancelled() {
        let d = tempfile::tempdir().unwrap();
        let held = DirLock::acquire(d.path(), ".lock", &CancelToken::new()).unwrap();
        // Cancelled before, or while, waiting: both end the wait.
        let early = CancelToken::new();
        early.cancel();
        let e = DirLock::acquire(d.path(), ".lock", &early).err().unwrap();
        assert!(matches!(e, Error::Interrupted), "{e}");
        let late = CancelToken::new();
        let waiter = {
            let (dir, late) = (d.path().to_path_buf(), late.clone());
            std::thread::spawn(move || DirLock::acquire(&dir, ".lock", &late).map(drop))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            !waiter.is_finished(),
            "the lock is held: the waiter must wait"
        );
        let start = std::time::Instant::now();
        late.cancel();
        let e = waiter.join().unwrap().err().unwrap();
        assert!(matches!(e, Error::Interrupted), "{e}");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        // Another run's token is not affected: once released, it locks.
        drop(held);
        DirLock::acquire(d.path(), ".lock", &CancelToken::new()).unwrap();
    }
}
