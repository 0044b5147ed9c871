//! Process-wide cancellation, for work that runs on blocking threads.
//!
//! The binary drops a run's future when it gets SIGINT, SIGTERM or SIGHUP;
//! that stops the async work at once, but a blocking task (extracting a
//! layer, copying one into a tarball) runs to its end unless it looks. Such
//! loops call [`check`] now and then, so that an interrupted run unwinds
//! through its normal error paths and its temp files are removed before the
//! process exits. Library users who never call [`request`] see no change.
//!
//! A run stuck in a system call never unwinds; the binary then ends the
//! process after a grace period, first calling [`forced_cleanup`] to remove
//! the temp files registered with [`remove_on_forced_exit`].

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks every running operation to stop at its next check.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether cancellation was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// `Err(Error::Interrupted)` once cancellation was requested.
pub fn check() -> crate::Result<()> {
    if requested() {
        Err(crate::Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Temp paths to remove if the process is ended before they are dropped:
/// id, path, and whether it is a directory of flat files.
static CLEANUP: Mutex<Vec<(u64, PathBuf, bool)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Keeps a path on the forced-exit cleanup list until dropped.
#[derive(Debug)]
pub struct CleanupGuard(u64);

/// Puts a temp file (or, with `dir`, a directory holding only files) on the
/// list [`forced_cleanup`] removes. Drop the guard once the path is gone or
/// no longer temporary.
pub fn remove_on_forced_exit(path: PathBuf, dir: bool) -> CleanupGuard {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    CLEANUP
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, path, dir));
    CleanupGuard(id)
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        CLEANUP
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _, _)| *id != self.0);
    }
}

/// Removes every registered temp path, for a process about to be ended
/// while its run is stuck. Unlinking never blocks on what a path is, so
/// this cannot hang on a FIFO; a directory is only emptied one level deep.
pub fn forced_cleanup() {
    let Ok(list) = CLEANUP.try_lock() else {
        return;
    };
    for (_, path, dir) in list.iter() {
        if *dir {
            for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
                let _ = std::fs::remove_file(e.path());
            }
            let _ = std::fs::remove_dir(path);
        } else {
            let _ = std::fs::remove_file(path);
        }
    }
}
