//! Upload sessions and staged blobs, on disk under the proxy's state
//! directory.
//!
//! The staging directory holds:
//! - `uploads/<id>`: one file per open session, named by the session's id
//!   (random hex we made);
//! - `blobs/<algorithm>/<hex>`: verified blobs, named by their digest (a
//!   validated one);
//! - `tmp/`: the pipeline's own temp files.
//!
//! No name on disk comes from client text. Every byte in `uploads/` and
//! `blobs/` is counted ([`Usage`]) so that the staging limit is checked
//! before a frame is written, not after. A request that fails part-way
//! leaves its session as it was before the request (the client may resume
//! from the offset `GET` reports), except a failed `PUT`, which ends it.
//!
//! Nothing is fsynced: a staged blob is re-verifiable, and the downstream
//! push hashes again everything it sends, so a blob torn by a crash is
//! caught there rather than stored.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::cancel::CleanupGuard;
use crate::digest::{Algorithm, Digest, Hasher, HashingReader};
use crate::error::{Error, Result};

use super::error::{ApiError, ApiResult};
use super::{Limits, ReqBody};

#[cfg(test)]
mod tests;

/// Upload sessions and the blobs they produced.
pub struct Staging {
    dir: PathBuf,
    uploads: PathBuf,
    blobs_dir: PathBuf,
    limits: Limits,
    usage: Arc<Usage>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    blobs: Mutex<HashMap<Digest, Blob>>,
    _forced_exit: CleanupGuard,
}

/// Bytes in the staging area (sessions and blobs), against its limit.
struct Usage {
    bytes: AtomicU64,
    max: u64,
}

impl Usage {
    /// Counts `n` more bytes if that stays within the limit.
    fn reserve(&self, n: u64) -> bool {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                cur.checked_add(n).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    /// Counts `n` bytes whatever the limit (blobs found at start-up).
    fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    fn release(&self, n: u64) {
        let _ = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                Some(cur.saturating_sub(n))
            });
    }

    fn available(&self) -> u64 {
        self.max.saturating_sub(self.bytes.load(Ordering::Acquire))
    }
}

/// Bytes counted for a request's frames until they are committed to their
/// session; released if the request fails or is dropped.
struct Reservation<'a> {
    usage: &'a Usage,
    bytes: u64,
}

impl Reservation<'_> {
    fn take(&mut self, n: u64) -> bool {
        let ok = self.usage.reserve(n);
        if ok {
            self.bytes += n;
        }
        ok
    }

    /// The bytes now belong to the session.
    fn commit(mut self) {
        self.bytes = 0;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.usage.release(self.bytes);
    }
}

/// One upload session. Its file is removed, and its bytes uncounted, when
/// the last handle goes: the map's, or that of a request still running
/// after the session was cancelled or swept.
struct Session {
    name: String,
    path: PathBuf,
    /// Its file and hash; one request at a time holds them.
    io: tokio::sync::Mutex<Upload>,
    /// Bytes received and committed (counted in the usage).
    received: AtomicU64,
    touched: Mutex<Instant>,
    /// Cancelled or swept: a request still holding it stops.
    dead: AtomicBool,
    usage: Arc<Usage>,
}

impl Session {
    fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    fn touch(&self) {
        *lock(&self.touched) = Instant::now();
    }

    fn idle(&self, now: Instant) -> Duration {
        now.saturating_duration_since(*lock(&self.touched))
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // After a successful PUT the file was renamed away and its bytes
        // handed to the blob; both steps below are then no-ops.
        let _ = std::fs::remove_file(&self.path);
        self.usage.release(self.received());
    }
}

/// What the request holding a session writes with.
struct Upload {
    /// The session's one handle on its file. A request dropped mid-write
    /// (its client gone) may leave a write in flight; tokio completes it
    /// before this handle's next operation, so it cannot land on top of
    /// the next request's bytes, as it could through a second handle.
    file: tokio::fs::File,
    /// The running SHA-256 of the committed bytes.
    hash: Hasher,
}

/// A staged blob.
struct Blob {
    size: u64,
    used: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Our own failure on disk: logged in full, answered without our paths.
fn internal(what: &str, path: &Path, e: std::io::Error) -> ApiError {
    tracing::warn!("staging: {what} {}: {e}", path.display());
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UNKNOWN",
        format!("{what} the upload failed"),
    )
}

fn unknown() -> ApiError {
    ApiError::blob_upload_unknown("no such upload session")
}

impl Staging {
    /// The staging area in `dir` (created; leftovers of an earlier run are
    /// removed).
    pub fn new(dir: &Path, limits: &Limits) -> Result<Staging> {
        let uploads = dir.join("uploads");
        let blobs_dir = dir.join("blobs");
        let tmp = dir.join("tmp");
        for d in [dir, &uploads, &blobs_dir, &tmp] {
            std::fs::create_dir_all(d).map_err(|e| Error::io("creating", d, e))?;
        }
        // A crashed run's partial uploads and temp files are of no use: no
        // client can resume a session this process never made.
        empty_dir(&uploads)?;
        empty_dir(&tmp)?;
        let usage = Arc::new(Usage {
            bytes: AtomicU64::new(0),
            max: limits.max_staging_bytes,
        });
        let blobs = scan_blobs(&blobs_dir, &usage)?;
        Ok(Staging {
            dir: dir.to_path_buf(),
            _forced_exit: crate::cancel::remove_on_forced_exit(uploads.clone(), true),
            uploads,
            blobs_dir,
            limits: limits.clone(),
            usage,
            sessions: Mutex::new(HashMap::new()),
            blobs: Mutex::new(blobs),
        })
    }

    /// A directory for the pipeline's temp files, on the same filesystem.
    pub fn temp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let text = digest.to_string();
        let (algorithm, hex) = text.split_once(':').unwrap_or(("sha256", digest.hex()));
        self.blobs_dir.join(algorithm).join(hex)
    }

    /// The size of a staged blob, if it is staged. Counts as a use: a
    /// client told it is there (a mount) will reference it soon.
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        let mut blobs = lock(&self.blobs);
        let blob = blobs.get_mut(digest)?;
        blob.used = Instant::now();
        Some(blob.size)
    }

    /// A staged blob opened for reading, with its size; marks it used.
    pub fn open_blob(&self, digest: &Digest) -> Option<(std::fs::File, u64)> {
        let path = self.blob_path(digest);
        let mut blobs = lock(&self.blobs);
        let blob = blobs.get_mut(digest)?;
        let opened = std::fs::File::open(&path).and_then(|f| {
            let len = f.metadata()?.len();
            Ok((f, len))
        });
        match opened {
            Ok((file, len)) if len == blob.size => {
                blob.used = Instant::now();
                // So that a restart sees its age too; best effort.
                let _ = file.set_modified(SystemTime::now());
                Some((file, len))
            }
            // Gone or changed under us: not staged any more.
            _ => {
                let size = blob.size;
                blobs.remove(digest);
                self.usage.release(size);
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Starts a session for repository `name`; returns its id.
    pub fn start(&self, name: &str) -> ApiResult<String> {
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= self.limits.max_uploads {
            return Err(ApiError::too_many_requests(format!(
                "{} uploads are open already; try again later",
                sessions.len()
            )));
        }
        let id = loop {
            let id = format!("{:032x}", rand::random::<u128>());
            if !sessions.contains_key(&id) {
                break id;
            }
        };
        let path = self.uploads.join(&id);
        let file = std::fs::File::create_new(&path).map_err(|e| internal("creating", &path, e))?;
        sessions.insert(
            id.clone(),
            Arc::new(Session {
                name: name.to_string(),
                path,
                io: tokio::sync::Mutex::new(Upload {
                    file: tokio::fs::File::from_std(file),
                    hash: Hasher::new(Algorithm::Sha256),
                }),
                received: AtomicU64::new(0),
                touched: Mutex::new(Instant::now()),
                dead: AtomicBool::new(false),
                usage: self.usage.clone(),
            }),
        );
        Ok(id)
    }

    /// Session `id`, if it was started for `name`.
    fn session(&self, name: &str, id: &str) -> ApiResult<Arc<Session>> {
        match lock(&self.sessions).get(id) {
            Some(s) if s.name == name => {
                s.touch();
                Ok(s.clone())
            }
            _ => Err(unknown()),
        }
    }

    /// Removes session `id` from the map; its file goes with the last
    /// handle.
    fn forget(&self, id: &str) -> Option<Arc<Session>> {
        let session = lock(&self.sessions).remove(id)?;
        session.dead.store(true, Ordering::Release);
        Some(session)
    }

    /// Appends `body` to session `id` (`content_range`: the request's
    /// `Content-Range` header, if any); returns the bytes received so far.
    pub async fn patch(
        &self,
        name: &str,
        id: &str,
        content_range: Option<&str>,
        body: ReqBody,
    ) -> ApiResult<u64> {
        let session = self.session(name, id)?;
        let mut io = session.io.try_lock().map_err(|_| busy())?;
        if session.is_dead() {
            return Err(unknown());
        }
        let start = session.received();
        let expect = match content_range {
            None => None,
            Some(value) => {
                let (first, last) = parse_range(value).ok_or_else(|| {
                    ApiError::range_invalid(format!(
                        "invalid Content-Range {:?}",
                        crate::digest::truncate_for_error(value)
                    ))
                })?;
                if first != start {
                    return Err(ApiError::range_invalid(format!(
                        "the chunk starts at {first}, the upload has {start} bytes"
                    )));
                }
                let len = last - first + 1;
                // Known before a byte arrives: refuse now.
                self.check_size(start.saturating_add(len))?;
                if len > self.usage.available() {
                    return Err(staging_full());
                }
                Some(len)
            }
        };
        let n = self.append(&session, &mut io, body, expect).await?;
        Ok(start + n)
    }

    fn check_size(&self, total: u64) -> ApiResult<()> {
        let max = self.limits.max_blob_bytes;
        if total > max {
            return Err(ApiError::too_large(format!(
                "a blob may be at most {max} bytes"
            )));
        }
        Ok(())
    }

    /// Streams `body` onto the end of the session's file, hashing as it
    /// goes; `expect`: the length its `Content-Range` declared. On success
    /// the bytes are committed; on any failure the file is cut back to what
    /// it had, and nothing is counted.
    async fn append(
        &self,
        session: &Session,
        io: &mut Upload,
        mut body: ReqBody,
        expect: Option<u64>,
    ) -> ApiResult<u64> {
        let start = session.received();
        let path = &session.path;
        let file = &mut io.file;
        // A request dropped mid-write (its client gone) may have left bytes
        // past the committed end; they are cut here.
        file.set_len(start)
            .await
            .map_err(|e| internal("truncating", path, e))?;
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| internal("seeking", path, e))?;
        let mut running = io.hash.clone();
        let mut reserved = Reservation {
            usage: &self.usage,
            bytes: 0,
        };
        let mut n = 0u64;
        let idle = self.limits.body_idle;
        let written: ApiResult<()> = async {
            while let Some(data) = super::next_data(&mut body, idle).await? {
                if data.is_empty() {
                    continue;
                }
                let len = data.len() as u64;
                if expect.is_some_and(|e| n + len > e) {
                    return Err(ApiError::blob_upload_invalid(
                        "the body is longer than its Content-Range",
                    ));
                }
                self.check_size(start + n + len)?;
                if !reserved.take(len) {
                    return Err(staging_full());
                }
                if session.is_dead() {
                    return Err(unknown());
                }
                file.write_all(&data)
                    .await
                    .map_err(|e| internal("writing", path, e))?;
                running.update(&data);
                n += len;
                session.touch();
            }
            if expect.is_some_and(|e| n != e) {
                return Err(ApiError::blob_upload_invalid(
                    "the body is shorter than its Content-Range",
                ));
            }
            file.flush().await.map_err(|e| internal("writing", path, e))
        }
        .await;
        if let Err(e) = written {
            // Wait for a write still in flight, then cut it off.
            let _ = file.flush().await;
            let _ = file.set_len(start).await;
            return Err(e);
        }
        if session.is_dead() {
            return Err(unknown());
        }
        reserved.commit();
        session.received.fetch_add(n, Ordering::AcqRel);
        io.hash = running;
        session.touch();
        Ok(n)
    }

    /// The bytes session `id` has received.
    pub fn offset(&self, name: &str, id: &str) -> ApiResult<u64> {
        Ok(self.session(name, id)?.received())
    }

    /// Appends `body`, then closes session `id` as blob `digest`, verified;
    /// returns its size. A failure ends the session too: a monolithic
    /// upload's session was never shown to its client, and would otherwise
    /// hold a slot until swept.
    pub async fn put(
        &self,
        name: &str,
        id: &str,
        digest: &Digest,
        body: ReqBody,
    ) -> ApiResult<u64> {
        let session = self.session(name, id)?;
        let mut io = session.io.try_lock().map_err(|_| busy())?;
        if session.is_dead() {
            return Err(unknown());
        }
        let result = self.close(&session, &mut io, digest, body).await;
        drop(io);
        self.forget(id);
        result
    }

    async fn close(
        &self,
        session: &Session,
        io: &mut Upload,
        digest: &Digest,
        body: ReqBody,
    ) -> ApiResult<u64> {
        self.append(session, io, body, None).await?;
        let size = session.received();
        let actual = match digest.algorithm() {
            Algorithm::Sha256 => io.hash.clone().finish(),
            _ => {
                let path = session.path.clone();
                let algorithm = digest.algorithm();
                tokio::task::spawn_blocking(move || hash_file(&path, algorithm, size))
                    .await
                    .map_err(|_| {
                        ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "UNKNOWN",
                            "hashing the upload failed",
                        )
                    })?
                    .map_err(|e| internal("reading", &session.path, e))?
            }
        };
        if &actual != digest {
            return Err(ApiError::digest_invalid(format!(
                "the upload's {size} bytes are {actual}, not {digest}"
            )));
        }
        self.promote(session, digest, size)?;
        Ok(size)
    }

    /// Moves a verified session file into `blobs/`, with its bytes.
    fn promote(&self, session: &Session, digest: &Digest, size: u64) -> ApiResult<()> {
        let target = self.blob_path(digest);
        let mut blobs = lock(&self.blobs);
        if let Some(blob) = blobs.get_mut(digest) {
            // Staged already: the session's copy goes with the session.
            blob.used = Instant::now();
            return Ok(());
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| internal("creating", parent, e))?;
        }
        std::fs::rename(&session.path, &target).map_err(|e| internal("storing", &target, e))?;
        // The bytes stay counted; they are the blob's now.
        session.received.store(0, Ordering::Release);
        blobs.insert(
            digest.clone(),
            Blob {
                size,
                used: Instant::now(),
            },
        );
        Ok(())
    }

    /// Drops session `id` and its file.
    pub fn cancel(&self, name: &str, id: &str) -> ApiResult<()> {
        // Checks the owner first: another repository's client cannot end it.
        self.session(name, id)?;
        self.forget(id).map(drop).ok_or_else(unknown)
    }

    /// Removes idle sessions and staged blobs past their time.
    pub fn sweep(&self) {
        let now = Instant::now();
        let idle: Vec<Arc<Session>> = {
            let mut sessions = lock(&self.sessions);
            let ids: Vec<String> = sessions
                .iter()
                .filter(|(_, s)| s.idle(now) > self.limits.upload_idle && s.io.try_lock().is_ok())
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| sessions.remove(id)).collect()
        };
        for session in idle {
            session.dead.store(true, Ordering::Release);
            tracing::debug!("staging: dropped an idle upload of {}", session.name);
        }
        let mut blobs = lock(&self.blobs);
        let old: Vec<Digest> = blobs
            .iter()
            .filter(|(_, b)| now.saturating_duration_since(b.used) > self.limits.staged_ttl)
            .map(|(d, _)| d.clone())
            .collect();
        for digest in old {
            if let Some(blob) = blobs.remove(&digest) {
                let _ = std::fs::remove_file(self.blob_path(&digest));
                self.usage.release(blob.size);
            }
        }
    }
}

impl Drop for Staging {
    /// A clean shutdown leaves no partial upload and no temp file.
    fn drop(&mut self) {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).drain().map(|(_, s)| s).collect();
        for s in &sessions {
            s.dead.store(true, Ordering::Release);
        }
        drop(sessions);
        let _ = empty_dir(&self.uploads);
        let _ = empty_dir(&self.temp_dir());
    }
}

fn busy() -> ApiError {
    ApiError::blob_upload_invalid("another request is writing to this upload")
}

fn staging_full() -> ApiError {
    ApiError::too_large("the proxy's staging area is full; try again later")
}

/// `START-END`, `bytes START-END` or `bytes=START-END` (inclusive, END
/// not before START), optionally followed by `/TOTAL` or `/*`, which is
/// not checked.
fn parse_range(value: &str) -> Option<(u64, u64)> {
    let mut v = value.trim();
    if let Some(rest) = v.strip_prefix("bytes") {
        v = rest.strip_prefix('=').or_else(|| rest.strip_prefix(' '))?;
    }
    if let Some((range, total)) = v.split_once('/') {
        if total != "*" && !all_digits(total) {
            return None;
        }
        v = range;
    }
    let (first, last) = v.split_once('-')?;
    if !all_digits(first) || !all_digits(last) {
        return None;
    }
    let (first, last) = (first.parse::<u64>().ok()?, last.parse::<u64>().ok()?);
    (last >= first).then_some((first, last))
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The digest of the first `size` bytes of `path`.
fn hash_file(path: &Path, algorithm: Algorithm, size: u64) -> std::io::Result<Digest> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut reader = HashingReader::new(file.take(size), algorithm);
    std::io::copy(&mut reader, &mut std::io::sink())?;
    Ok(reader.finish().0)
}

/// Removes everything in `dir`, not following symlinks.
fn empty_dir(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("reading", dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io("reading", dir, e))?.path();
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        let removed = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing", &path, e)),
        }
    }
    Ok(())
}

/// The blobs an earlier run staged, counted; anything in `blobs/` that is
/// not `<algorithm>/<hex>` as we name them is removed.
fn scan_blobs(dir: &Path, usage: &Usage) -> Result<HashMap<Digest, Blob>> {
    let mut blobs = HashMap::new();
    let now = Instant::now();
    let wall = SystemTime::now();
    let read = |d: &Path| std::fs::read_dir(d).map_err(|e| Error::io("reading", d, e));
    for alg in read(dir)? {
        let alg = alg.map_err(|e| Error::io("reading", dir, e))?;
        let alg_path = alg.path();
        let alg_name = alg.file_name().to_string_lossy().into_owned();
        let is_dir = std::fs::symlink_metadata(&alg_path).is_ok_and(|m| m.is_dir());
        if !is_dir || !matches!(alg_name.as_str(), "sha256" | "sha512") {
            remove_stray(&alg_path, is_dir);
            continue;
        }
        for entry in read(&alg_path)? {
            let entry = entry.map_err(|e| Error::io("reading", &alg_path, e))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path);
            let digest = entry
                .file_name()
                .to_str()
                .and_then(|hex| format!("{alg_name}:{hex}").parse::<Digest>().ok());
            match (digest, meta) {
                (Some(digest), Ok(meta)) if meta.is_file() => {
                    // Its age is its mtime's, which open_blob refreshes.
                    let age = meta
                        .modified()
                        .ok()
                        .and_then(|m| wall.duration_since(m).ok())
                        .unwrap_or_default();
                    let used = now.checked_sub(age).unwrap_or(now);
                    usage.add(meta.len());
                    blobs.insert(
                        digest,
                        Blob {
                            size: meta.len(),
                            used,
                        },
                    );
                }
                (_, meta) => remove_stray(&path, meta.is_ok_and(|m| m.is_dir())),
            }
        }
    }
    Ok(blobs)
}

fn remove_stray(path: &Path, is_dir: bool) {
    tracing::warn!("staging: removing stray {}", path.display());
    let _ = if is_dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
}
