//! The pull-through cache: a manifest a client asks for is served from
//! downstream, copied there from upstream (through the filters) first when
//! downstream lacks it or, for a tag, when the cached copy is older than
//! the TTL and upstream's tag has moved.
//!
//! What a tag was copied as is recorded in `<state_dir>/tags/`, one small
//! JSON file per `name:tag` (named by the sha256 of `name:tag`, so that no
//! client text becomes a path). Records are read from disk on every
//! request, because `occystrap proxy --purge` edits them from another
//! process while the server runs; they are written by rename, so that a
//! reader sees a whole record or the old one.
//!
//! Concurrent requests that need the same upstream work (a check or a
//! copy of one `name:tag`, or one `name@digest`) share one run of it: the
//! first starts it, the others wait for its result, then all serve from
//! downstream.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use http::Response;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::Platform;
use crate::reference::Reference;
use crate::source::registry::RegistrySource;
use crate::wire::index_plan::Selection;

use super::copy::{self, Target};
use super::error::{ApiError, ApiResult};
use super::route::{self, ManifestRef};
use super::serve::downstream_manifest;
use super::{Body, Endpoint, Proxy, ProxyConfig};

/// Upstream work for this many distinct images at once at most; more
/// concurrent misses are told to retry.
const MAX_FLIGHTS: usize = 256;
/// A record larger than this is not one of ours.
const MAX_RECORD_BYTES: u64 = 64 << 10;

/// One run of upstream work, shared by every request that needs it.
type Flight = Arc<OnceCell<ApiResult<Digest>>>;

/// Tag records and in-flight copies.
pub struct PullState {
    /// `<state_dir>/tags`.
    tags: PathBuf,
    /// Upstream work in progress, by `name:tag` or `name@digest`.
    flights: Mutex<HashMap<String, Flight>>,
    /// A turn to copy into each repository. Copies of one image into one
    /// repository at the same time (under two tags, or a tag and a digest)
    /// were seen to fail downstream's manifest check (four at once, in a
    /// test without the flights: blobs another copy was uploading counted
    /// as missing); one at a time, the later ones find the blobs there.
    copies: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// What a tag was last copied as, and when upstream was last asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct TagRecord {
    /// The client's repository name.
    name: String,
    /// The tag.
    tag: String,
    /// The digest upstream's tag had.
    upstream: Digest,
    /// The digest of what was stored downstream for it.
    downstream: Digest,
    /// Its media type.
    media_type: String,
    /// When upstream was last asked, in unix seconds.
    checked: u64,
}

impl TagRecord {
    /// Whether upstream need not be asked yet.
    fn fresh(&self, config: &ProxyConfig) -> bool {
        let now = now();
        // A record from the future (the clock went back) is not trusted.
        now >= self.checked && now - self.checked < config.cache_ttl.as_secs()
    }
}

/// Unix seconds.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl PullState {
    /// Over `config.state_dir`: creates its `tags` directory, and removes
    /// temp files a killed writer left there.
    pub fn new(config: &ProxyConfig) -> Result<PullState> {
        let tags = config.state_dir.join("tags");
        std::fs::create_dir_all(&tags).map_err(|e| Error::io("creating", &tags, e))?;
        if let Ok(entries) = std::fs::read_dir(&tags) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(PullState {
            tags,
            flights: Mutex::new(HashMap::new()),
            copies: Mutex::new(HashMap::new()),
        })
    }

    /// The record of `name:tag`, if there is a readable one.
    fn read(&self, name: &str, tag: &str) -> Option<TagRecord> {
        read_record(&self.tags, name, tag)
    }

    /// Writes `record` in place of the one before, atomically.
    fn write(&self, record: &TagRecord) -> Result<()> {
        let path = record_path(&self.tags, &record.name, &record.tag);
        let json = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::InvalidImage(format!("encoding a tag record: {e}")))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp")
            .tempfile_in(&self.tags)
            .map_err(|e| Error::io("creating a temp file in", &self.tags, e))?;
        use std::io::Write as _;
        tmp.write_all(&json)
            .map_err(|e| Error::io("writing", tmp.path(), e))?;
        tmp.persist(&path)
            .map_err(|e| Error::io("renaming a tag record to", &path, e.error))?;
        Ok(())
    }

    /// [`PullState::write`], a failure only logged: what was copied is
    /// served all the same, and the next request asks upstream again.
    fn keep(&self, record: &TagRecord) {
        if let Err(e) = self.write(record) {
            tracing::warn!(
                "recording {}:{}: {}",
                record.name,
                record.tag,
                super::error::chain(&e)
            );
        }
    }

    /// Forgets `name:tag` (upstream no longer has it).
    fn forget(&self, name: &str, tag: &str) {
        let path = record_path(&self.tags, name, tag);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", path.display());
        }
    }

    /// Runs `work` for `key`, or waits for the run another request started;
    /// either way returns its result. The entry goes once the work is done
    /// (or failed), so the next miss starts afresh.
    async fn join<F>(&self, key: String, work: F) -> ApiResult<Digest>
    where
        F: std::future::Future<Output = ApiResult<Digest>>,
    {
        let flight = {
            let mut flights = lock(&self.flights);
            match flights.get(&key) {
                Some(f) => f.clone(),
                None => {
                    if flights.len() >= MAX_FLIGHTS {
                        return Err(ApiError::too_many_requests(
                            "too many images are being fetched from upstream; retry later",
                        ));
                    }
                    let f = Flight::default();
                    flights.insert(key.clone(), f.clone());
                    f
                }
            }
        };
        // Holds the only reference of ours, for its count to mean something.
        let leave = Leave {
            flights: &self.flights,
            key,
            flight,
        };
        // If the request running `work` is dropped (its client went away),
        // a waiting one takes over.
        leave.flight.get_or_init(|| work).await.clone()
    }
}

impl PullState {
    /// Waits for the turn to copy into `name`; the turn lasts as long as
    /// the value returned.
    async fn turn(&self, name: &str) -> Turn<'_> {
        let repo = {
            let mut copies = lock(&self.copies);
            // Turns a cancelled waiter left behind, held by nobody.
            copies.retain(|_, m| Arc::strong_count(m) > 1);
            copies.entry(name.to_string()).or_default().clone()
        };
        Turn {
            copies: &self.copies,
            name: name.to_string(),
            guard: Some(repo.lock_owned().await),
        }
    }
}

/// A repository's turn to be copied into.
struct Turn<'a> {
    copies: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    name: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut copies = lock(self.copies);
        let Some(guard) = self.guard.take() else {
            return;
        };
        // The map's reference and the guard's: nobody waits.
        if Arc::strong_count(tokio::sync::OwnedMutexGuard::mutex(&guard)) <= 2 {
            copies.remove(&self.name);
        }
    }
}

/// Takes a flight out of the map when it is done, or when its last
/// request left without finishing it.
struct Leave<'a> {
    flights: &'a Mutex<HashMap<String, Flight>>,
    key: String,
    flight: Flight,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut flights = lock(self.flights);
        let ours = flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight));
        // Two references: the map's and ours. Others clone under the lock.
        if ours && (self.flight.initialized() || Arc::strong_count(&self.flight) <= 2) {
            flights.remove(&self.key);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `<tags>/<sha256 hex of "name:tag">.json`.
fn record_path(tags: &Path, name: &str, tag: &str) -> PathBuf {
    let key = Digest::sha256_of(format!("{name}:{tag}").as_bytes());
    tags.join(format!("{}.json", key.hex()))
}

/// The record of `name:tag` in `tags`; an unreadable or foreign one is
/// ignored (and the next copy replaces it).
fn read_record(tags: &Path, name: &str, tag: &str) -> Option<TagRecord> {
    let path = record_path(tags, name, tag);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("reading {}: {e}", path.display());
            return None;
        }
    };
    let mut raw = Vec::new();
    if let Err(e) = file.take(MAX_RECORD_BYTES).read_to_end(&mut raw) {
        tracing::warn!("reading {}: {e}", path.display());
        return None;
    }
    match serde_json::from_slice::<TagRecord>(&raw) {
        Ok(r) if r.name == name && r.tag == tag => Some(r),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", path.display());
            None
        }
    }
}

/// `occystrap proxy --purge REF`: forgets the cached tag `reference`
/// (`name:tag`) in `state_dir`; whether there was one.
pub fn purge(state_dir: &Path, reference: &str) -> Result<bool> {
    let (name, tag) = parse_purge(reference)?;
    let path = record_path(&state_dir.join("tags"), &name, &tag);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("removing", &path, e)),
    }
}

/// `name:tag`, each checked as a request path's would be.
fn parse_purge(reference: &str) -> Result<(String, String)> {
    let usage = |why: &str| {
        Error::Usage(format!(
            "--purge {}: {why}; give REPO:TAG, as clients name it (team/app:v1)",
            crate::escape::escape(reference)
        ))
    };
    let (name, tag) = reference
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .ok_or_else(|| usage("no tag"))?;
    let name = route::name_of(name).map_err(|e| usage(&e.message))?;
    match route::manifest_ref(tag).map_err(|e| usage(&e.message))? {
        ManifestRef::Tag(t) => Ok((name, t)),
        ManifestRef::Digest(_) => Err(usage("a digest is not a cached tag")),
    }
}

/// `GET`/`HEAD` of a manifest with an upstream: from downstream, after
/// whatever upstream work the cache needs.
pub async fn manifest(
    proxy: &Proxy,
    pull: &PullState,
    name: &str,
    reference: &ManifestRef,
    head: bool,
) -> ApiResult<Response<Body>> {
    match reference {
        ManifestRef::Tag(tag) => by_tag(proxy, pull, name, tag, head).await,
        ManifestRef::Digest(digest) => by_digest(proxy, pull, name, digest, head).await,
    }
}

async fn by_tag(
    proxy: &Proxy,
    pull: &PullState,
    name: &str,
    tag: &str,
    head: bool,
) -> ApiResult<Response<Body>> {
    let mut lacking = false;
    if let Some(record) = pull.read(name, tag)
        && record.fresh(&proxy.config)
    {
        let digest = record.downstream.to_string();
        match downstream_manifest(proxy, name, &digest, Some(&record.downstream), head).await {
            Err(e) if e.code == "MANIFEST_UNKNOWN" => lacking = true,
            served => return served,
        }
    }
    let key = format!("{name}:{tag}");
    let digest = pull
        .join(key, refresh_tag(proxy, pull, name, tag, lacking))
        .await?;
    downstream_manifest(proxy, name, &digest.to_string(), Some(&digest), head).await
}

/// The upstream work for `name:tag`: a check of upstream's digest when the
/// record is stale, a copy when there is no record, the tag moved, or
/// downstream `lacking` what the record names. Returns the digest to serve
/// from downstream.
async fn refresh_tag(
    proxy: &Proxy,
    pull: &PullState,
    name: &str,
    tag: &str,
    lacking: bool,
) -> ApiResult<Digest> {
    let config = &proxy.config;
    let upstream = upstream(config)?;
    // Read again: a run that just ended may have done the work.
    let record = pull.read(name, tag);
    if !lacking
        && let Some(r) = &record
        && r.fresh(config)
    {
        return Ok(r.downstream.clone());
    }
    let found = match upstream.repo(name).manifest_digest(tag).await {
        Ok(found) => found,
        Err(e) => match record {
            Some(r) if !lacking => {
                tracing::warn!(
                    "upstream: {}; serving the copy of {name}:{tag} cached before",
                    crate::escape::escape(&super::error::chain(&e))
                );
                return Ok(r.downstream);
            }
            _ => return Err(e.into()),
        },
    };
    let Some(up) = found else {
        pull.forget(name, tag);
        return Err(ApiError::manifest_unknown(format!(
            "upstream has no {name}:{tag}"
        )));
    };
    if let Some(mut r) = record
        && !lacking
        && r.upstream == up
        && still_downstream(config, name, &r.downstream).await
    {
        r.checked = now();
        pull.keep(&r);
        return Ok(r.downstream);
    }
    let stored = copy_from_upstream(proxy, pull, upstream, name, Some(tag), &up).await?;
    pull.keep(&TagRecord {
        name: name.to_string(),
        tag: tag.to_string(),
        upstream: up,
        downstream: stored.digest.clone(),
        media_type: stored.media_type,
        checked: now(),
    });
    Ok(stored.digest)
}

/// Whether downstream still has manifest `digest` in `name` (someone may
/// have deleted it there); unsure (downstream failed) counts as yes, and
/// serving it will say what is wrong.
async fn still_downstream(config: &ProxyConfig, name: &str, digest: &Digest) -> bool {
    let repo = config.downstream.repo(name);
    !matches!(repo.manifest_digest(&digest.to_string()).await, Ok(None))
}

async fn by_digest(
    proxy: &Proxy,
    pull: &PullState,
    name: &str,
    digest: &Digest,
    head: bool,
) -> ApiResult<Response<Body>> {
    let reference = digest.to_string();
    match downstream_manifest(proxy, name, &reference, Some(digest), head).await {
        Err(e) if e.code == "MANIFEST_UNKNOWN" => {}
        served => return served,
    }
    if !proxy.config.filters.is_empty() {
        return Err(ApiError::manifest_unknown(format!(
            "{name}@{digest} is not here: a filtering proxy serves images by tag \
             (what it stores has another digest than upstream's, and clients check digests)"
        )));
    }
    let key = format!("{name}@{digest}");
    pull.join(key, async {
        let upstream = upstream(&proxy.config)?;
        let stored = copy_from_upstream(proxy, pull, upstream, name, None, digest).await?;
        if stored.digest != *digest {
            // Only a platform selection changes an unfiltered copy.
            return Err(ApiError::manifest_unknown(format!(
                "{name}@{digest} is an index this proxy stores with only some of its \
                 platforms (as {}); pull it by tag",
                stored.digest
            )));
        }
        Ok(stored.digest)
    })
    .await?;
    downstream_manifest(proxy, name, &reference, Some(digest), head).await
}

fn upstream(config: &ProxyConfig) -> ApiResult<&Endpoint> {
    config
        .upstream
        .as_ref()
        .ok_or_else(|| ApiError::manifest_unknown("this proxy has no upstream"))
}

/// What a copy stored downstream.
struct Stored {
    digest: Digest,
    media_type: String,
}

/// Copies `name@digest` from upstream into `name` downstream, tagged `tag`
/// when given (else by its digest), through the filters.
async fn copy_from_upstream(
    proxy: &Proxy,
    pull: &PullState,
    upstream: &Endpoint,
    name: &str,
    tag: Option<&str>,
    digest: &Digest,
) -> ApiResult<Stored> {
    let config = &proxy.config;
    let repo = upstream.repo(name);
    // Pinned to the digest just seen: a tag moved meanwhile is not copied
    // under the old digest's record.
    let reference = Reference {
        host: upstream.client.host().to_string(),
        path: repo.name().to_string(),
        tag: tag.map(str::to_string),
        digest: Some(digest.clone()),
    };
    let source = Arc::new(RegistrySource::new(reference, Platform::host(), repo));
    let target = match tag {
        Some(t) => Target::Tag(t.to_string()),
        None => Target::Digest,
    };
    let _turn = pull.turn(name).await;
    let copied = match copy_boxed(proxy, source.clone(), name, &target, &config.platforms).await {
        // A platform list asked of a single image: there is just it to copy.
        Err(Error::Usage(_)) if matches!(config.platforms, Selection::Platforms(_)) => {
            copy_boxed(proxy, source, name, &target, &Selection::All).await
        }
        other => other,
    }
    .map_err(|e| {
        tracing::warn!(
            "copying {name}@{digest} from upstream: {}",
            crate::escape::escape(&super::error::chain(&e))
        );
        ApiError::from(e)
    })?;
    Ok(Stored {
        digest: copied.descriptor.digest,
        media_type: copied.descriptor.media_type,
    })
}

/// [`copy::copy_any`] with nothing pushed already, boxed: the copy's
/// future is large, and the request's need not carry it inline.
fn copy_boxed<'a>(
    proxy: &'a Proxy,
    source: Arc<RegistrySource>,
    name: &'a str,
    target: &'a Target,
    selection: &'a Selection,
) -> futures_util::future::BoxFuture<'a, Result<copy::Copied>> {
    Box::pin(copy::copy_any(
        proxy,
        source,
        name,
        target,
        selection,
        Vec::new(),
        &|_| None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, tag: &str, checked: u64) -> TagRecord {
        TagRecord {
            name: name.into(),
            tag: tag.into(),
            upstream: Digest::sha256_of(b"up"),
            downstream: Digest::sha256_of(b"down"),
            media_type: crate::image::media_type::OCI_MANIFEST.into(),
            checked,
        }
    }

    fn state(dir: &Path) -> PullState {
        let tags = dir.join("tags");
        std::fs::create_dir_all(&tags).unwrap();
        PullState {
            tags,
            flights: Mutex::new(HashMap::new()),
            copies: Mutex::new(HashMap::new()),
        }
    }

    #[test]
    fn records_round_trip_and_purge_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        assert_eq!(st.read("team/app", "v1"), None);
        let r = record("team/app", "v1", 42);
        st.write(&r).unwrap();
        assert_eq!(st.read("team/app", "v1"), Some(r.clone()));
        // Another tag is another file.
        assert_eq!(st.read("team/app", "v2"), None);
        let mut r2 = r.clone();
        r2.checked = 43;
        st.write(&r2).unwrap();
        assert_eq!(st.read("team/app", "v1"), Some(r2));
        // No temp files left beside the record.
        let names: Vec<_> = std::fs::read_dir(&st.tags)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].ends_with(".json") && names[0].len() == 64 + 5);
        assert!(purge(dir.path(), "team/app:v1").unwrap());
        assert!(!purge(dir.path(), "team/app:v1").unwrap());
        assert_eq!(st.read("team/app", "v1"), None);
    }

    #[test]
    fn a_corrupt_or_foreign_record_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let path = record_path(&st.tags, "a", "v1");
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(st.read("a", "v1"), None);
        // A record naming another tag, under this tag's file name.
        std::fs::write(&path, serde_json::to_vec(&record("b", "v1", 1)).unwrap()).unwrap();
        assert_eq!(st.read("a", "v1"), None);
    }

    #[test]
    fn purge_refuses_what_is_not_a_tag() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "team/app",
            "../x:v1",
            "team/app:",
            "a:b/c",
            "Team/App:v1",
            "a:-x",
        ] {
            let e = purge(dir.path(), bad).unwrap_err();
            assert!(matches!(e, Error::Usage(_)), "{bad}: {e}");
        }
        let d = Digest::sha256_of(b"x");
        assert!(purge(dir.path(), &format!("a@{d}")).is_err());
        assert!(!purge(dir.path(), "localhost/team/app:v1.0").unwrap());
    }

    #[tokio::test]
    async fn concurrent_joins_run_the_work_once() {
        let dir = tempfile::tempdir().unwrap();
        let st = Arc::new(state(dir.path()));
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let (st, runs, gate) = (st.clone(), runs.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                st.join("a:v1".into(), async {
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    gate.notified().await;
                    Ok(Digest::sha256_of(b"done"))
                })
                .await
            }));
        }
        // Every task joined before the work may finish.
        while lock(&st.flights)
            .get("a:v1")
            .is_none_or(|f| Arc::strong_count(f) < 6)
        {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Digest::sha256_of(b"done"));
        }
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(lock(&st.flights).is_empty(), "the flight was not removed");
        // A failure is shared too, and leaves no entry behind.
        let e = st
            .join("a:v1".into(), async { Err(ApiError::upstream("down")) })
            .await
            .unwrap_err();
        assert_eq!(e.code, "UNAVAILABLE");
        assert!(lock(&st.flights).is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_run_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        // The first request gives up (its client went away) mid-work.
        let first = st.join("a:v1".into(), std::future::pending());
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), first)
                .await
                .is_err()
        );
        assert!(lock(&st.flights).is_empty(), "an abandoned flight stayed");
        let d = st
            .join("a:v1".into(), async { Ok(Digest::sha256_of(b"x")) })
            .await
            .unwrap();
        assert_eq!(d, Digest::sha256_of(b"x"));
    }

    #[tokio::test]
    async fn copies_into_one_repository_take_turns() {
        let dir = tempfile::tempdir().unwrap();
        let st = Arc::new(state(dir.path()));
        let first = st.turn("a").await;
        // Another repository goes at once; the same one waits.
        drop(st.turn("b").await);
        let waiting = {
            let st = st.clone();
            tokio::spawn(async move {
                let _t = st.turn("a").await;
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "two turns at once");
        drop(first);
        waiting.await.unwrap();
        assert!(lock(&st.copies).is_empty(), "turns left behind");
    }

    #[test]
    fn freshness_follows_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.cache_ttl = std::time::Duration::from_secs(60);
        assert!(record("a", "v1", now()).fresh(&config));
        assert!(!record("a", "v1", now() - 61).fresh(&config));
        assert!(!record("a", "v1", now() + 3600).fresh(&config));
        config.cache_ttl = std::time::Duration::ZERO;
        assert!(!record("a", "v1", now()).fresh(&config));
    }

    fn test_config(dir: &Path) -> ProxyConfig {
        let client = crate::registry::Client::standalone(
            "127.0.0.1:1",
            crate::registry::ClientOptions::default(),
        )
        .unwrap();
        ProxyConfig {
            downstream: Endpoint {
                client,
                prefix: String::new(),
            },
            upstream: None,
            filters: Vec::new(),
            sink: Default::default(),
            parallel: 1,
            platforms: Selection::All,
            cache_ttl: std::time::Duration::from_secs(60),
            state_dir: dir.to_path_buf(),
            limits: Default::default(),
            htpasswd: None,
            cancel: crate::cancel::CancelToken::new(),
        }
    }
}
