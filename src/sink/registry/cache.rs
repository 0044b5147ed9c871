//! The layer cache (`--layer-cache`) in a registry push.
//!
//! Every entry is keyed by the source layer's digest as the source
//! described it in `begin` (for a docker-save member or a store's layer,
//! its diff_id: either way a digest of its content), the run's rewriting
//! filters ([`crate::filter::chain_key`]) and the compression. An entry is
//! only a hint: it is used only when the destination repository has its
//! blob (HEAD) or one of the repositories it was pushed to, on the same
//! registry, lends it by a mount.
//!
//! - Before a layer is fetched ([`RegistrySink::cached_rewrite`], when every
//!   filter rewrites): a usable entry replaces the layer, which is then
//!   neither fetched, nor rewritten, nor compressed, nor uploaded.
//! - When a layer that must be compressed reaches `wants_layer` (after the
//!   filters, or straight from a tar-only source): an entry whose diff_id is
//!   the layer's spares the compression and the upload
//!   ([`RegistrySink::cached_blob`]).
//! - Once every upload is confirmed ([`RegistrySink::cache_record`]): each
//!   layer's blob as the destination holds it goes in, with the destination
//!   repository added to the entry's repositories.
//! - At the end of `finish` ([`save`]), whether the manifest push
//!   succeeded or not: the entries recorded name blobs the registry
//!   confirmed, which is all a later hit relies on, so a run retried after
//!   a refused manifest need not redo its rewrites.
//!
//! The repositories of the entries looked up also become mount candidates
//! for the layers and the config that follow.

use std::collections::HashSet;
use std::sync::Arc;

use crate::error::Result;
use crate::filter::FilterSpec;
use crate::image::{Image, LayerInfo};
use crate::layer_cache::{CacheKey, CachedLayer, LayerCache};
use crate::reference::Reference;
use crate::sink::SinkReport;

use super::{Counts, Pushed, RegistrySink};

/// Most mount candidates a sink keeps (the source's and the cache's): each
/// costs a request for every blob the destination lacks.
const MAX_MOUNT_CANDIDATES: usize = 8;

/// A layer cache and the filters whose results it is asked about.
#[derive(Clone, Debug)]
pub struct LayerCacheUse {
    /// The cache, shared by every sink of the run (an index's children).
    pub cache: Arc<LayerCache>,
    /// The run's `-f` filters that rewrite layers, in order (observing
    /// filters change no layer and are left out of the key).
    pub specs: Vec<FilterSpec>,
}

/// What a sink keeps of the cache during a run.
#[derive(Default)]
pub(super) struct SinkCache {
    /// Layers (by index) whose entry was missing or unusable before the
    /// fetch: not asked about again once rewritten.
    missed: HashSet<usize>,
}

impl RegistrySink {
    /// `host[:port]/repository` of the destination, as entries name it.
    fn cache_repository(&self) -> String {
        format!("{}/{}", self.reference.registry_host(), self.reference.path)
    }

    /// The key for layer `index` of the source's image.
    fn cache_key(&self, index: usize) -> Option<(&LayerCache, CacheKey)> {
        let using = self.options.layer_cache.as_ref()?;
        let source = self.source.as_ref()?.layers.get(index)?;
        let key = CacheKey::new(
            source.digest.clone(),
            &using.specs,
            self.options.compression,
            None,
        );
        Some((&using.cache, key))
    }

    /// The entry's repositories on the destination's registry, newest
    /// first, other than the destination itself. Each is parsed as an image
    /// reference, so only a well-formed repository name reaches a mount
    /// request or a token scope.
    fn mountable(&self, entry: &CachedLayer) -> Vec<String> {
        let host = self.reference.registry_host();
        entry
            .repositories
            .iter()
            .rev()
            .filter_map(|r| Reference::parse(r).ok())
            .filter(|r| r.registry_host() == host && r.path != self.repo.name())
            .map(|r| r.path)
            .collect()
    }

    /// Whether the destination has `entry`'s blob, or now has it by a mount
    /// from one of the entry's repositories. Those repositories become
    /// mount candidates for what follows.
    async fn holds(&mut self, entry: &CachedLayer) -> Result<bool> {
        let from = self.mountable(entry);
        for r in &from {
            if self.options.mount_from.len() < MAX_MOUNT_CANDIDATES
                && !self.options.mount_from.contains(r)
            {
                self.options.mount_from.push(r.clone());
            }
        }
        match self.repo.blob_exists(&entry.digest).await? {
            // A registry may leave the length out of a HEAD (0); another
            // length is another blob than the entry says: not trusted.
            Some(n) if n == entry.size || n == 0 => {
                Counts::add(&self.counts.present);
                return Ok(true);
            }
            Some(n) => {
                tracing::debug!(
                    "cached {} is {n} bytes here, not {}",
                    entry.digest,
                    entry.size
                );
                return Ok(false);
            }
            None => {}
        }
        // A stale hint (the repository is gone, or not ours to read) is
        // declined by the registry: a miss, and the layer is pushed as usual.
        for r in &from {
            if self.repo.mount_blob(&entry.digest, r).await? {
                tracing::debug!("mounted cached {} from {r}", entry.digest);
                Counts::add(&self.counts.mounted);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// What layer `layer` became in an earlier run, if the destination
    /// holds it ([`crate::sink::AsyncSink::known_rewrite`]).
    pub(super) async fn cached_rewrite(&mut self, layer: &LayerInfo) -> Result<Option<LayerInfo>> {
        let entry = match self.cache_key(layer.index) {
            Some((cache, key)) => cache.lookup(&key),
            None => return Ok(None),
        };
        if let Some(entry) = entry
            && self.holds(&entry).await?
        {
            return Ok(Some(entry.to_layer_info(layer.index)));
        }
        self.cache.missed.insert(layer.index);
        Ok(None)
    }

    /// For a layer that must be compressed: whether the cache names its
    /// compressed blob (the same diff_id) and the destination holds it;
    /// then it is recorded as pushed.
    pub(super) async fn cached_blob(&mut self, layer: &LayerInfo) -> Result<bool> {
        if self.cache.missed.contains(&layer.index) {
            return Ok(false);
        }
        let entry = match self.cache_key(layer.index) {
            Some((cache, key)) => cache.lookup(&key),
            None => return Ok(false),
        };
        let Some(entry) = entry.filter(|e| e.diff_id == layer.diff_id) else {
            return Ok(false);
        };
        if !self.holds(&entry).await? {
            return Ok(false);
        }
        self.record(
            layer.index,
            Pushed {
                digest: entry.digest.clone(),
                size: entry.size,
                media_type: entry.media_type.clone(),
            },
        );
        Ok(true)
    }

    /// Records what each layer became, once every blob in `layers` (in
    /// manifest order) is confirmed at the destination.
    pub(super) fn cache_record(&self, image: &Image, layers: &[Pushed]) {
        let Some(using) = &self.options.layer_cache else {
            return;
        };
        let repository = self.cache_repository();
        for (i, (pushed, now)) in layers.iter().zip(&image.layers).enumerate() {
            let Some((cache, key)) = self.cache_key(i) else {
                continue;
            };
            // Unfiltered and as stored: nothing a later run could skip.
            if using.specs.is_empty() && pushed.digest == key.source_digest {
                continue;
            }
            let mut entry = CachedLayer {
                digest: pushed.digest.clone(),
                size: pushed.size,
                diff_id: now.diff_id.clone(),
                media_type: pushed.media_type.clone(),
                repositories: Vec::new(),
            };
            // The places an entry for the same blob names stay candidates;
            // an entry that disagrees is replaced whole.
            if let Some(old) = cache.lookup(&key)
                && (&old.digest, old.size, &old.diff_id, &old.media_type)
                    == (&entry.digest, entry.size, &entry.diff_id, &entry.media_type)
            {
                entry.repositories = old.repositories;
            }
            entry.add_repository(&repository);
            // An entry the file cannot hold (an uncompressed layer) is not
            // kept: insert says so, and nothing depends on it.
            cache.insert(key, entry);
        }
    }
}

/// Saves the cache after `finish` (see the module docs): a failed save
/// fails a run that otherwise succeeded, since a cache that silently stops
/// working makes every later run redo all its work; after a failed push the
/// push's error is the one reported.
pub(super) async fn save(
    using: Option<LayerCacheUse>,
    pushed: Result<SinkReport>,
) -> Result<SinkReport> {
    let Some(using) = using else {
        return pushed;
    };
    let cache = using.cache.clone();
    let saved = tokio::task::spawn_blocking(move || cache.save())
        .await
        .map_err(|e| crate::Error::InvalidImage(format!("layer cache task failed: {e}")))
        .and_then(|r| r);
    match (pushed, saved) {
        (Ok(report), Ok(())) => Ok(report),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(save)) => {
            tracing::warn!("layer cache not saved: {save}");
            Err(e)
        }
    }
}
