//! Cancellation of a run, and the cleanup list a forced exit runs.
//!
//! The binary drops a run's future when it gets SIGINT, SIGTERM or SIGHUP;
//! that stops the async work at once, but a blocking task (extracting a
//! layer, waiting for a store's lock) runs to its end unless it looks. Such
//! loops check the run's [`CancelToken`] now and then, so that an
//! interrupted run unwinds through its normal error paths and its temp files
//! are removed before the process exits. The token is made by the caller
//! and handed in: `pipeline::RunOptions::cancel`, `uri::Settings::cancel`
//! for the sinks `uri::open_sink` builds, `layer::ExtractOptions::cancel`.
//! A library user who never cancels a token sees no change.
//!
//! A run stuck in a system call never unwinds; the binary then ends the
//! process after a grace period, first calling [`forced_cleanup`] to remove
//! the temp files registered with [`remove_on_forced_exit`]. That list is
//! the one registry kept for the whole process, because a forced exit has
//! no run to ask; nothing in the library reads it to decide anything.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Asks the work it is handed to stop at its next check. Clones share one
/// flag; the default token is a new one, never cancelled unless asked.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Asks every holder of this token (or a clone) to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Error::Interrupted)` once cancelled.
    pub fn check(&self) -> crate::Result<()> {
        if self.is_cancelled() {
            Err(crate::Error::Interrupted)
        } else {
            Ok(())
        }
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
/// Newest first: a directory registered inside another goes before it.
pub fn forced_cleanup() {
    let Ok(list) = CLEANUP.try_lock() else {
        return;
    };
    for (_, path, dir) in list.iter().rev() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_flag_and_tokens_are_independent() {
        let a = CancelToken::new();
        let b = a.clone();
        let other = CancelToken::default();
        assert!(a.check().is_ok() && !b.is_cancelled());
        b.cancel();
        assert!(a.is_cancelled());
        assert!(matches!(a.check(), Err(crate::Error::Interrupted)));
        // A second run's token is untouched by the first's cancellation.
        assert!(!other.is_cancelled() && other.check().is_ok());
    }
}
