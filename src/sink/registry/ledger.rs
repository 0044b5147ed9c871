//! What a run of many pushes into one registry knows about its blobs: which
//! repositories have each one, and which are being uploaded now. Sinks that
//! share a [`BlobLedger`] skip the HEAD of a blob already pushed to their
//! repository, mount one pushed to another, and wait for one another's
//! uploads instead of sending the same bytes twice.
//!
//! A sink waits only while it is uploading nothing itself ([`Lookup`] is
//! given `may_wait` by the sink): every wait is then on a sink that does
//! not wait, so two sinks can never wait on each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::digest::Digest;

/// Blobs of one destination registry, shared by the sinks of a run.
#[derive(Debug, Default)]
pub struct BlobLedger {
    blobs: Mutex<HashMap<Digest, State>>,
}

#[derive(Debug)]
enum State {
    /// The repositories known to have it.
    Present(Vec<String>),
    /// Being uploaded; the sender is dropped when the upload ends.
    InFlight(watch::Receiver<()>),
}

/// What the ledger says of a blob for a repository.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The repository has it.
    Here,
    /// Another repository of the registry has it: mount from there.
    In(String),
    /// Nobody knows; ask the registry. With a [`Claim`] when the caller
    /// asked for one: the caller uploads, and others wait for it.
    Unknown,
}

/// The right to upload a blob that others wait for; dropping it without
/// [`Claim::done`] (a failed upload) lets them go on their own.
#[derive(Debug)]
pub struct Claim {
    ledger: Arc<BlobLedger>,
    digest: Digest,
    _tx: watch::Sender<()>,
}

impl BlobLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, State>> {
        self.blobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is known of `digest` for `repo`, waiting for an upload in
    /// flight elsewhere when `may_wait`.
    pub async fn lookup(&self, digest: &Digest, repo: &str, may_wait: bool) -> Lookup {
        loop {
            let mut rx = {
                let blobs = self.lock();
                match blobs.get(digest) {
                    Some(State::Present(repos)) => {
                        return if repos.iter().any(|r| r == repo) {
                            Lookup::Here
                        } else {
                            Lookup::In(repos[0].clone())
                        };
                    }
                    Some(State::InFlight(rx)) if may_wait => rx.clone(),
                    _ => return Lookup::Unknown,
                }
            };
            // Err once the sender is gone: the upload ended, either way.
            let _ = rx.changed().await;
        }
    }

    /// Marks `digest` as being uploaded, unless something already knows of
    /// it; `None` then.
    pub fn claim(self: &Arc<Self>, digest: &Digest) -> Option<Claim> {
        let mut blobs = self.lock();
        if blobs.contains_key(digest) {
            return None;
        }
        let (tx, rx) = watch::channel(());
        blobs.insert(digest.clone(), State::InFlight(rx));
        Some(Claim {
            ledger: self.clone(),
            digest: digest.clone(),
            _tx: tx,
        })
    }

    /// Records that `repo` has `digest`.
    pub fn add(&self, digest: &Digest, repo: &str) {
        let mut blobs = self.lock();
        match blobs.get_mut(digest) {
            Some(State::Present(repos)) => {
                if !repos.iter().any(|r| r == repo) {
                    repos.push(repo.to_string());
                }
            }
            _ => {
                blobs.insert(digest.clone(), State::Present(vec![repo.to_string()]));
            }
        }
    }

    /// How many blobs are known to be present somewhere.
    pub fn len(&self) -> usize {
        self.lock()
            .values()
            .filter(|s| matches!(s, State::Present(_)))
            .count()
    }

    /// Whether no blob is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Claim {
    /// The upload to `repo` succeeded.
    pub fn done(self, repo: &str) {
        self.ledger.add(&self.digest, repo);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut blobs = self.ledger.lock();
        if matches!(blobs.get(&self.digest), Some(State::InFlight(_))) {
            blobs.remove(&self.digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[tokio::test]
    async fn present_here_elsewhere_or_unknown() {
        let l: Arc<BlobLedger> = Arc::default();
        assert_eq!(l.lookup(&d(1), "a", true).await, Lookup::Unknown);
        l.add(&d(1), "a");
        assert_eq!(l.lookup(&d(1), "a", true).await, Lookup::Here);
        assert_eq!(l.lookup(&d(1), "b", true).await, Lookup::In("a".into()));
        l.add(&d(1), "b");
        assert_eq!(l.lookup(&d(1), "b", false).await, Lookup::Here);
        assert_eq!(l.len(), 1);
    }

    #[tokio::test]
    async fn a_waiter_sees_the_upload_end() {
        let l: Arc<BlobLedger> = Arc::default();
        let claim = l.claim(&d(2)).unwrap();
        assert!(l.claim(&d(2)).is_none(), "claimed twice");
        // A sink that uploads something itself does not wait.
        assert_eq!(l.lookup(&d(2), "b", false).await, Lookup::Unknown);
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.lookup(&d(2), "b", true).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "did not wait for the upload");
        claim.done("a");
        assert_eq!(waiter.await.unwrap(), Lookup::In("a".into()));
    }

    #[tokio::test]
    async fn a_failed_upload_lets_waiters_go_on_their_own() {
        let l: Arc<BlobLedger> = Arc::default();
        let claim = l.claim(&d(3)).unwrap();
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.lookup(&d(3), "b", true).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(claim);
        assert_eq!(waiter.await.unwrap(), Lookup::Unknown);
        assert!(l.claim(&d(3)).is_some(), "the failed claim is not released");
    }
}
