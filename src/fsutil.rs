//! Small filesystem helpers shared by sinks: atomic writes and directory locks.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `data` to `path` through a temp file in the same directory and a
/// rename, so readers see the old content or the new, never a mix.
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".occystrap-")
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(|e| Error::io("creating a temp file in", dir, e))?;
    tmp.write_all(data)
        .and_then(|_| tmp.as_file().sync_data())
        .map_err(|e| Error::io("writing", tmp.path(), e))?;
    set_readable(tmp.as_file());
    tmp.persist(path)
        .map_err(|e| Error::io("renaming into place", path, e.error))?;
    Ok(())
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

/// An exclusive `flock` on a lock file, released when dropped. Serialises
/// read-modify-write of shared index files between processes.
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock on `dir/name`, creating the file, waiting while another
    /// process holds it.
    pub fn acquire(dir: &Path, name: &str) -> Result<DirLock> {
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("opening lock file", &path, e))?;
        loop {
            // SAFETY: flock on an fd we own; no memory is shared.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io("locking", &path, e));
            }
        }
        Ok(DirLock { _file: file })
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

    #[test]
    fn lock_is_exclusive_across_threads() {
        let d = tempfile::tempdir().unwrap();
        let counter = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let dir = d.path().to_path_buf();
                let c = counter.clone();
                std::thread::spawn(move || {
                    let _l = DirLock::acquire(&dir, ".lock").unwrap();
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
}
