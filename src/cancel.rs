//! Process-wide cancellation, for work that runs on blocking threads.
//!
//! The binary drops a run's future when it gets SIGINT, SIGTERM or SIGHUP;
//! that stops the async work at once, but a blocking task (extracting a
//! layer, copying one into a tarball) runs to its end unless it looks. Such
//! loops call [`check`] now and then, so that an interrupted run unwinds
//! through its normal error paths and its temp files are removed before the
//! process exits. Library users who never call [`request`] see no change.

use std::sync::atomic::{AtomicBool, Ordering};

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
