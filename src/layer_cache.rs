//! The layer cache (`--layer-cache FILE`, env `OCCYSTRAP_LAYER_CACHE`):
//! what a source layer became under a filter chain and a compression, so
//! that a later run can skip both the rewrite and the upload when the
//! destination still has the result.
//!
//! The file is JSON:
//!
//! ```json
//! {"version": 1, "layers": [
//!   {"source": "sha256:…", "chain": "[[\"normalize-timestamps\",[]]]",
//!    "compression": "gzip:6", "digest": "sha256:…", "size": 1234,
//!    "diff_id": "sha256:…", "media_type": "application/vnd.oci.image.layer.v1.tar+gzip",
//!    "repositories": ["registry.example:5000/team/app"]}
//! ]}
//! ```
//!
//! `repositories` (optional) are where the blob was last pushed, newest
//! last: candidates to cross-mount it from in another repository of the
//! same registry.
//!
//! Entries are kept oldest first; past [`MAX_ENTRIES`] the oldest are
//! dropped when saving.
//!
//! **Trust.** The file is the user's, but it may be shared between runs and
//! users, so it is read like any input: at most [`MAX_FILE_BYTES`], every
//! digest parsed, strings capped, and only the layer media types this tool
//! writes accepted. A file that breaks any of that is an error naming the
//! file ([`Error::LayerCache`]), not silently ignored: a cache that quietly
//! stopped working would make every run redo all its work unnoticed, and
//! the fix (delete the file) is the user's to make. A cache entry is only
//! ever a hint: the user of a hit still checks that the destination has the
//! blob, and the blob's digest covers its bytes.
//!
//! **Saving** ([`LayerCache::save`]) is safe between processes: under an
//! exclusive `flock` on `FILE.lock` beside the file, the file is read again,
//! this run's new entries are merged into what is there, and the result is
//! written to a synced temp file in the same directory and renamed over the
//! file. Two runs saving at once therefore lose no entries, and a reader
//! (which takes no lock) sees the old file or the new, never a mix. The
//! file's final name is not followed if it is a symlink (it is replaced).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::cancel::CancelToken;
use crate::compress::{Encoded, Encoding};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::filter::{FilterSpec, chain_key};
use crate::fsutil::StoreRoot;
use crate::image::{LayerInfo, media_type};

/// Largest cache file read or written.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Most entries kept; the oldest go first. With the string caps below this
/// keeps a full file under [`MAX_FILE_BYTES`].
pub const MAX_ENTRIES: usize = 32_768;
/// Longest filter chain string stored (longer ones are not cached).
pub const MAX_CHAIN_BYTES: usize = 1024;
/// Longest compression string stored.
const MAX_COMPRESSION_BYTES: usize = 64;
/// Most repositories kept per entry (the newest), and the longest name.
pub const MAX_REPOSITORIES: usize = 8;
const MAX_REPOSITORY_BYTES: usize = 512;
/// The file format this code writes and reads.
const VERSION: u32 = 1;

/// What a layer was rewritten from and how: the lookup key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The source layer's blob digest.
    pub source_digest: Digest,
    /// The filter chain with its options ([`chain_key`]).
    pub chain: String,
    /// The compression and level the result was written with (`gzip:6`).
    pub compression: String,
}

impl CacheKey {
    /// The key for `source_digest` rewritten by `specs` and compressed
    /// with `encoding` at `level` (the encoding's default when `None`, so
    /// that naming the default level explicitly gives the same key).
    pub fn new(
        source_digest: Digest,
        specs: &[FilterSpec],
        encoding: Encoding,
        level: Option<i32>,
    ) -> CacheKey {
        let level = level.unwrap_or(encoding.default_level());
        CacheKey {
            source_digest,
            chain: chain_key(specs),
            compression: format!("{encoding}:{level}"),
        }
    }
}

/// What a layer became: the rewritten, compressed blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedLayer {
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// The digest of its uncompressed tar.
    pub diff_id: Digest,
    /// Its layer media type.
    pub media_type: String,
    /// Where it was pushed (`host[:port]/repository`), newest last, at most
    /// [`MAX_REPOSITORIES`]: where to cross-mount it from.
    pub repositories: Vec<String>,
}

impl CachedLayer {
    /// The entry for a blob [`crate::compress::encode`] wrote.
    pub fn from_encoded(encoded: &Encoded, media_type: &str) -> CachedLayer {
        CachedLayer {
            digest: encoded.digest.clone(),
            size: encoded.size,
            diff_id: encoded.diff_id.clone(),
            media_type: media_type.to_string(),
            repositories: Vec::new(),
        }
    }

    /// Notes that the blob is in `repository` (`host[:port]/name`): moved
    /// to the newest place if already listed, the oldest dropped past
    /// [`MAX_REPOSITORIES`].
    pub fn add_repository(&mut self, repository: &str) {
        self.repositories.retain(|r| r != repository);
        self.repositories.push(repository.to_string());
        if self.repositories.len() > MAX_REPOSITORIES {
            let extra = self.repositories.len() - MAX_REPOSITORIES;
            self.repositories.drain(..extra);
        }
    }

    /// This entry with `older`'s repositories before its own, when both
    /// name the same blob; a later entry for another blob replaces it.
    fn merged_over(mut self, older: &CachedLayer) -> CachedLayer {
        if older.digest != self.digest {
            return self;
        }
        let mine = std::mem::replace(&mut self.repositories, older.repositories.clone());
        for r in &mine {
            self.add_repository(r);
        }
        self
    }

    /// The descriptor of this blob as layer `index` of an image.
    pub fn to_layer_info(&self, index: usize) -> LayerInfo {
        LayerInfo {
            index,
            digest: self.digest.clone(),
            size: self.size,
            media_type: self.media_type.clone(),
            diff_id: self.diff_id.clone(),
        }
    }
}

/// One entry as the file holds it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    source: Digest,
    chain: String,
    compression: String,
    digest: Digest,
    size: u64,
    diff_id: Digest,
    media_type: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    repositories: Vec<String>,
}

/// The whole file.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    layers: Vec<Entry>,
}

impl Entry {
    fn new(key: &CacheKey, layer: &CachedLayer) -> Entry {
        Entry {
            source: key.source_digest.clone(),
            chain: key.chain.clone(),
            compression: key.compression.clone(),
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id: layer.diff_id.clone(),
            media_type: layer.media_type.clone(),
            repositories: layer.repositories.clone(),
        }
    }
    fn split(self) -> (CacheKey, CachedLayer) {
        (
            CacheKey {
                source_digest: self.source,
                chain: self.chain,
                compression: self.compression,
            },
            CachedLayer {
                digest: self.digest,
                size: self.size,
                diff_id: self.diff_id,
                media_type: self.media_type,
                repositories: self.repositories,
            },
        )
    }
}

/// Whether an entry is one this tool could have written; the reason if not.
fn check_entry(key: &CacheKey, layer: &CachedLayer) -> std::result::Result<(), String> {
    if key.chain.len() > MAX_CHAIN_BYTES {
        return Err(format!(
            "a filter chain longer than {MAX_CHAIN_BYTES} bytes"
        ));
    }
    if key.compression.len() > MAX_COMPRESSION_BYTES {
        return Err(format!(
            "a compression name longer than {MAX_COMPRESSION_BYTES} bytes"
        ));
    }
    let known = [
        media_type::OCI_LAYER_GZIP,
        media_type::OCI_LAYER_ZSTD,
        media_type::DOCKER_LAYER_GZIP,
    ];
    if !known.contains(&layer.media_type.as_str()) {
        return Err(format!(
            "media type {:?} is not a compressed layer type",
            crate::digest::truncate_for_error(&layer.media_type)
        ));
    }
    if layer.repositories.len() > MAX_REPOSITORIES {
        return Err(format!("more than {MAX_REPOSITORIES} repositories"));
    }
    for r in &layer.repositories {
        let printable = r.bytes().all(|b| b.is_ascii_graphic());
        if r.is_empty() || r.len() > MAX_REPOSITORY_BYTES || !printable {
            return Err(format!(
                "repository {:?} is not a registry repository name",
                crate::digest::truncate_for_error(r)
            ));
        }
    }
    Ok(())
}

/// The in-memory state: every entry known, and which of them this process
/// added since its last save (the file, not memory, keeps the age order).
#[derive(Default)]
struct State {
    entries: HashMap<CacheKey, CachedLayer>,
    pending: Vec<CacheKey>,
}

/// A layer cache file, loaded; see the module docs.
pub struct LayerCache {
    path: PathBuf,
    dir: StoreRoot,
    name: OsString,
    cancel: CancelToken,
    state: Mutex<State>,
}

impl std::fmt::Debug for LayerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerCache")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LayerCache {
    /// Loads the cache at `path`; a missing file is an empty cache (created
    /// by the first [`save`](Self::save)). The directory must exist.
    pub fn open(path: &Path) -> Result<LayerCache> {
        let name = path
            .file_name()
            .ok_or_else(|| Error::Usage(format!("layer cache {} names no file", path.display())))?
            .to_os_string();
        let dir = StoreRoot::open(crate::fsutil::parent_dir(path))?;
        let cache = LayerCache {
            path: path.to_path_buf(),
            dir,
            name,
            cancel: CancelToken::new(),
            state: Mutex::new(State::default()),
        };
        let loaded = cache.read()?;
        cache.lock_state().entries = loaded.into_iter().collect();
        Ok(cache)
    }

    /// Makes [`save`](Self::save) stop waiting for another process's lock
    /// once `cancel` is cancelled.
    pub fn with_cancel(mut self, cancel: CancelToken) -> LayerCache {
        self.cancel = cancel;
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What `key`'s layer became in an earlier run (or this one).
    pub fn lookup(&self, key: &CacheKey) -> Option<CachedLayer> {
        self.lock_state().entries.get(key).cloned()
    }

    /// Records what `key`'s layer became; kept in memory until
    /// [`save`](Self::save). An entry the file could not hold (a chain over
    /// [`MAX_CHAIN_BYTES`], a media type that is not a compressed layer's)
    /// is not recorded, and the answer is `false`.
    pub fn insert(&self, key: CacheKey, layer: CachedLayer) -> bool {
        if check_entry(&key, &layer).is_err() {
            return false;
        }
        let mut state = self.lock_state();
        if state.entries.get(&key) == Some(&layer) {
            return true;
        }
        state.entries.insert(key.clone(), layer);
        state.pending.retain(|k| k != &key);
        state.pending.push(key);
        true
    }

    /// Number of entries known.
    pub fn len(&self) -> usize {
        self.lock_state().entries.len()
    }

    /// Whether no entry is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes this process's new entries into the file, merged with what
    /// other processes wrote meanwhile (see the module docs). Does nothing
    /// when nothing was inserted since the last save.
    pub fn save(&self) -> Result<()> {
        let pending: Vec<(CacheKey, CachedLayer)> = {
            let state = self.lock_state();
            state
                .pending
                .iter()
                .filter_map(|k| state.entries.get(k).map(|l| (k.clone(), l.clone())))
                .collect()
        };
        if pending.is_empty() {
            return Ok(());
        }
        let mut lock_name = self.name.clone();
        lock_name.push(".lock");
        let lock_name = lock_name
            .into_string()
            .map_err(|_| self.invalid("its file name is not UTF-8".into()))?;
        let _lock = self.dir.lock(&lock_name, &self.cancel)?;
        let mut merged = self.read()?;
        let ours: std::collections::HashSet<&CacheKey> = pending.iter().map(|(k, _)| k).collect();
        // What another run wrote for one of our keys: its repositories are
        // kept if it names the same blob.
        let theirs: HashMap<CacheKey, CachedLayer> = merged
            .iter()
            .filter(|(k, _)| ours.contains(k))
            .map(|(k, l)| (k.clone(), l.clone()))
            .collect();
        merged.retain(|(k, _)| !ours.contains(k));
        merged.extend(pending.iter().map(|(k, l)| {
            let layer = match theirs.get(k) {
                Some(older) => l.clone().merged_over(older),
                None => l.clone(),
            };
            (k.clone(), layer)
        }));
        if merged.len() > MAX_ENTRIES {
            merged.drain(..merged.len() - MAX_ENTRIES);
        }
        let file = CacheFile {
            version: VERSION,
            layers: merged.iter().map(|(k, l)| Entry::new(k, l)).collect(),
        };
        let data =
            serde_json::to_vec(&file).map_err(|e| self.invalid(format!("serialising: {e}")))?;
        if data.len() as u64 > MAX_FILE_BYTES {
            return Err(self.invalid(format!(
                "would pass the {MAX_FILE_BYTES} bytes allowed for it"
            )));
        }
        self.dir.atomic_write(Path::new(&self.name), &data)?;
        let mut state = self.lock_state();
        // Entries inserted while we wrote stay pending for the next save
        // (an insert of a key we just wrote, with another value, too).
        let still: Vec<CacheKey> = state
            .pending
            .iter()
            .filter(|k| {
                !ours.contains(k)
                    || pending
                        .iter()
                        .any(|(pk, pl)| pk == *k && state.entries.get(k) != Some(pl))
            })
            .cloned()
            .collect();
        for (key, layer) in merged {
            if !still.contains(&key) {
                state.entries.insert(key, layer);
            }
        }
        state.pending = still;
        Ok(())
    }

    /// Reads and checks the file as it is now; empty when missing.
    fn read(&self) -> Result<Vec<(CacheKey, CachedLayer)>> {
        let raw = match self.dir.read_small(Path::new(&self.name), MAX_FILE_BYTES) {
            Ok(Some(raw)) => raw,
            Ok(None) => return Ok(Vec::new()),
            Err(Error::InvalidArchive { message, .. }) => return Err(self.invalid(message)),
            Err(e) => return Err(e),
        };
        let file: CacheFile = serde_json::from_slice(&raw).map_err(|e| {
            self.invalid(format!(
                "not a layer cache file ({e}); remove it to start afresh"
            ))
        })?;
        if file.version != VERSION {
            return Err(self.invalid(format!(
                "format version {} (this occystrap reads {VERSION})",
                file.version
            )));
        }
        if file.layers.len() > MAX_ENTRIES {
            return Err(self.invalid(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut out = Vec::with_capacity(file.layers.len());
        for (i, entry) in file.layers.into_iter().enumerate() {
            let (key, layer) = entry.split();
            check_entry(&key, &layer).map_err(|why| self.invalid(format!("entry {i}: {why}")))?;
            out.push((key, layer));
        }
        Ok(out)
    }

    fn invalid(&self, message: String) -> Error {
        Error::LayerCache {
            path: self.path.clone(),
            message,
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent data:
        // every update is one assignment or insert.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests;
