//! `registry://` as an output: [`RegistrySink`] pushes one image.
//!
//! Blobs the destination repository has are skipped (HEAD), blobs in
//! another repository of the same registry are mounted, and the rest are
//! uploaded as tokio tasks, at most `max_workers` at once, while the
//! pipeline downloads the next layers. A layer comes live
//! ([`AsyncSink::takes_live_blob`]): its upload sends the blob as it
//! downloads and closes the session only once the layer verified, and
//! starts again from the pipeline's spooled copy if the live session broke. Layers keep their bytes as stored;
//! only a layer that exists as a tar alone (a docker-save member, a store's
//! `layer.tar`, a layer a filter rewrote) is compressed, deterministically,
//! into a temp file first. The manifest goes last, once every blob it names
//! is in: the source's own bytes when they still describe the image (an
//! exact copy keeps its digest), else a new one. A copy whose destination
//! already has the source's manifest fetches and uploads nothing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{FileSlice, Image, Layer, LayerInfo, LayerNeeds, media_type as mt};
use crate::reference::Reference;
use crate::registry::{BlobOpener, Repository};
use crate::sink::{AsyncSink, SinkReport};

mod cache;
mod compress;
mod ledger;
mod manifest;

pub use crate::compress::Encoding;
pub use cache::LayerCacheUse;
pub use compress::compress_tar;
pub use ledger::{BlobLedger, Lookup};
pub use manifest::{ManifestFormat, Pushed};

/// How a [`RegistrySink`] pushes.
#[derive(Clone, Debug)]
pub struct RegistrySinkOptions {
    /// Compression for layers that exist only as a tar.
    pub compression: Encoding,
    /// The manifest schema to write when a new manifest is needed (default:
    /// the source's; Docker schema2 for a source without a manifest, OCI
    /// when layers are zstd).
    pub format: Option<ManifestFormat>,
    /// Uploads at once.
    pub max_workers: usize,
    /// No filter rewrites anything: a destination that already has the
    /// source's manifest is up to date, and nothing is copied.
    pub exact: bool,
    /// Repositories of the destination registry to mount blobs from, tried
    /// in order before an upload.
    pub mount_from: Vec<String>,
    /// Push the manifest by its digest only, tagging nothing (an index's
    /// platform manifests).
    pub by_digest: bool,
    /// Where compressed layers are written (default: the system temp dir).
    pub temp_dir: Option<PathBuf>,
    /// Once the manifest is in, read back what was written (the manifest's
    /// digest, a HEAD of every blob) and fail if anything is missing.
    pub verify: bool,
    /// The layer cache to reuse earlier rewrites from and record this
    /// run's in (`--layer-cache`).
    pub layer_cache: Option<LayerCacheUse>,
    /// What the other pushes of this run into the same registry did with
    /// their blobs (`mirror`): skip, mount or wait instead of uploading
    /// again.
    pub ledger: Option<Arc<BlobLedger>>,
    /// Annotations for a manifest this push builds (not for the source's
    /// own bytes, whose digest must stay).
    pub annotations: std::collections::BTreeMap<String, String>,
    /// What the destination's tag names, when the caller has just asked
    /// (`Some(None)`: nothing): an exact copy then trusts it instead of
    /// asking again (`mirror`, which HEADs both sides before it copies).
    pub destination_digest: Option<Option<Digest>>,
}

impl Default for RegistrySinkOptions {
    fn default() -> Self {
        RegistrySinkOptions {
            compression: Encoding::Gzip,
            format: None,
            max_workers: 4,
            exact: true,
            mount_from: Vec::new(),
            by_digest: false,
            temp_dir: None,
            verify: false,
            layer_cache: None,
            ledger: None,
            annotations: Default::default(),
            destination_digest: None,
        }
    }
}

/// Pushes an image into a repository of a registry.
pub struct RegistrySink {
    repo: Repository,
    reference: Reference,
    options: RegistrySinkOptions,
    /// The image as the source described it (from `begin`).
    source: Option<Image>,
    /// The destination already has the source's manifest.
    up_to_date: bool,
    /// What the destination holds (or will, once the uploads end) for each
    /// layer, by index.
    pushed: Arc<Mutex<Vec<Option<Pushed>>>>,
    uploads: Vec<AbortOnDrop<Result<u64>>>,
    workers: Arc<tokio::sync::Semaphore>,
    /// The first upload that failed, to stop the run at the next layer.
    failed: Arc<Mutex<Option<Error>>>,
    counts: Arc<Counts>,
    /// What the layer cache told this run.
    cache: cache::SinkCache,
    /// Blobs this sink is to upload that others of the run wait for.
    claims: std::collections::HashMap<Digest, ledger::Claim>,
}

/// What happened to the blobs, for the report.
#[derive(Default, Debug)]
struct Counts {
    present: AtomicUsize,
    mounted: AtomicUsize,
    uploaded: AtomicUsize,
}

impl Counts {
    fn add(n: &AtomicUsize) {
        n.fetch_add(1, Ordering::Relaxed);
    }

    /// `blobs: 2 uploaded, 1 mounted, 1 already there`.
    fn note(&self) -> String {
        format!(
            "blobs: {} uploaded, {} mounted, {} already there",
            self.uploaded.load(Ordering::Relaxed),
            self.mounted.load(Ordering::Relaxed),
            self.present.load(Ordering::Relaxed)
        )
    }
}

impl RegistrySink {
    /// A sink pushing to `reference` (its tag, or its digest) through `repo`.
    pub fn new(repo: Repository, reference: Reference, options: RegistrySinkOptions) -> Self {
        let workers = Arc::new(tokio::sync::Semaphore::new(options.max_workers.max(1)));
        RegistrySink {
            repo,
            reference,
            options,
            source: None,
            up_to_date: false,
            pushed: Arc::new(Mutex::new(Vec::new())),
            uploads: Vec::new(),
            workers,
            failed: Arc::new(Mutex::new(None)),
            counts: Arc::default(),
            cache: cache::SinkCache::default(),
            claims: std::collections::HashMap::new(),
        }
    }

    /// Where the manifest goes: the reference's tag, else its digest.
    fn target(&self) -> String {
        match (&self.reference.tag, &self.reference.digest) {
            (_, Some(d)) if self.options.by_digest || self.reference.tag.is_none() => d.to_string(),
            (Some(t), _) => t.clone(),
            _ => self.reference.manifest_ref(),
        }
    }

    /// Whether a layer must be compressed here: it is a plain tar and the
    /// source has no manifest naming it as stored (docker-save, a store), or
    /// a filter rewrote it.
    fn must_compress(&self, info: &LayerInfo) -> bool {
        if !is_tar(&info.media_type) {
            return false;
        }
        let Some(source) = &self.source else {
            return true;
        };
        source.manifest.is_none()
            || source
                .layers
                .get(info.index)
                .is_none_or(|l| l.digest != info.digest)
    }

    /// The first upload failure, if one happened.
    fn take_failure(&self) -> Option<Error> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn record(&self, index: usize, pushed: Pushed) {
        record(&self.pushed, index, pushed);
    }

    fn temp_dir(&self) -> PathBuf {
        self.options
            .temp_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
    }

    /// The ledger, then HEAD, then mounts: whether the destination has (or
    /// now has) `digest`.
    async fn present(&self, digest: &Digest) -> Result<bool> {
        let name = self.repo.name();
        let ledger = self.options.ledger.as_deref();
        let mut from_ledger = None;
        if let Some(l) = ledger {
            match l.lookup(digest, name, self.claims.is_empty()).await {
                Lookup::Here => {
                    Counts::add(&self.counts.present);
                    return Ok(true);
                }
                Lookup::In(other) => from_ledger = Some(other),
                Lookup::Unknown => {}
            }
        }
        let found = |how: &AtomicUsize| {
            Counts::add(how);
            if let Some(l) = ledger {
                l.add(digest, name);
            }
            Ok(true)
        };
        if let Some(other) = &from_ledger
            && self.repo.mount_blob(digest, other).await?
        {
            tracing::debug!("mounted {digest} from {other}");
            return found(&self.counts.mounted);
        }
        if self.repo.blob_exists(digest).await?.is_some() {
            return found(&self.counts.present);
        }
        for from in &self.options.mount_from {
            if from != name && self.repo.mount_blob(digest, from).await? {
                tracing::debug!("mounted {digest} from {from}");
                return found(&self.counts.mounted);
            }
        }
        Ok(false)
    }

    /// Starts the upload of one layer on its own task: from its file, or as
    /// its blob arrives.
    fn spawn_upload(&mut self, layer: Layer, compress: bool) -> Result<()> {
        let info = layer.info.clone();
        let blob = match layer.take_live_blob() {
            Some(live) => BlobIn::Live(live),
            None => BlobIn::File(layer.blob.clone().or(layer.tar.clone()).ok_or_else(|| {
                Error::InvalidImage(format!("layer {} arrived without its blob", info.index))
            })?),
        };
        // A digest learnt only from the bytes (a docker-save member) was not
        // asked about before the fetch.
        let late = self
            .source
            .as_ref()
            .and_then(|s| s.layers.get(info.index))
            .is_none_or(|l| l.digest != info.digest);
        let job = Upload {
            repo: self.repo.clone(),
            workers: self.workers.clone(),
            pushed: self.pushed.clone(),
            failed: self.failed.clone(),
            counts: self.counts.clone(),
            compression: compress.then_some(self.options.compression),
            temp_dir: self.temp_dir(),
            check_first: late || compress,
            ledger: self.options.ledger.clone(),
            claim: self.claims.remove(&info.digest),
        };
        self.uploads
            .push(AbortOnDrop(tokio::spawn(job.run(info, blob))));
        Ok(())
    }

    /// Every upload's end: the bytes they sent, or the first failure.
    async fn await_uploads(&mut self) -> Result<u64> {
        let mut sent = 0;
        for task in std::mem::take(&mut self.uploads) {
            let done = task
                .join()
                .await
                .map_err(|e| Error::InvalidImage(format!("upload task failed: {e}")))?;
            match done {
                Ok(n) => sent += n,
                Err(e) => return Err(self.take_failure().unwrap_or(e)),
            }
        }
        Ok(sent)
    }

    /// The config blob, unless the destination has it or can mount it.
    async fn push_config(&self, image: &Image) -> Result<u64> {
        let digest = &image.config_digest;
        if self.present(digest).await? {
            return Ok(0);
        }
        let ledger = self.options.ledger.as_ref();
        let mut claim = ledger.and_then(|l| l.claim(digest));
        // Another image of the run is pushing the same config: wait for it.
        if ledger.is_some() && claim.is_none() {
            if self.present(digest).await? {
                return Ok(0);
            }
            claim = ledger.and_then(|l| l.claim(digest));
        }
        let bytes = Arc::new(image.config_raw.clone());
        let len = bytes.len() as u64;
        let open: BlobOpener = Arc::new(move || {
            Ok(Box::new(std::io::Cursor::new(bytes.clone().to_vec()))
                as Box<dyn std::io::Read + Send>)
        });
        self.repo.upload_blob(digest, len, open).await?;
        if let Some(l) = ledger {
            l.add(digest, self.repo.name());
        }
        drop(claim);
        Ok(len)
    }

    /// The layers as the destination holds them, in manifest order.
    fn layers_pushed(&self, image: &Image) -> Vec<Pushed> {
        let pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        image
            .layers
            .iter()
            .map(|l| {
                // Not given to `layer`: the destination had it, or a known
                // rewrite put the blob it has into the image.
                pushed
                    .get(l.index)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| Pushed {
                        digest: l.digest.clone(),
                        size: l.size,
                        media_type: l.media_type.clone(),
                    })
            })
            .collect()
    }

    /// The manifest to push and its media type.
    fn manifest(&self, image: &Image, layers: &[Pushed]) -> Result<(Vec<u8>, String)> {
        if let Some(raw) = manifest::raw_if_exact(image, layers, self.options.format) {
            return Ok(raw);
        }
        let source_format = self
            .source
            .as_ref()
            .and_then(|s| s.manifest.as_ref())
            .and_then(|m| ManifestFormat::of(&m.media_type));
        let zstd = layers.iter().any(|l| l.media_type.ends_with("zstd"));
        let format = self.options.format.unwrap_or(match source_format {
            _ if zstd => ManifestFormat::Oci,
            Some(f) => f,
            None => ManifestFormat::Docker,
        });
        let mut bytes = manifest::build(image, layers, format)?;
        if !self.options.annotations.is_empty() {
            bytes = crate::wire::annotate(&bytes, &self.options.annotations)?;
        }
        Ok((bytes, format.media_type().to_string()))
    }

    /// Reads back what was pushed: the manifest at `target` is `digest`,
    /// and the registry has every blob it names, at its size.
    async fn verify(
        &self,
        target: &str,
        digest: &Digest,
        image: &Image,
        layers: &[Pushed],
    ) -> Result<()> {
        let failed = |what: String| {
            Error::InvalidImage(format!(
                "verify: {what} in {}/{}",
                self.reference.host, self.reference.path
            ))
        };
        let theirs = self.repo.manifest_digest(target).await?;
        if theirs.as_ref() != Some(digest) {
            return Err(failed(match theirs {
                None => format!("no manifest at {target}"),
                Some(d) => format!("the manifest at {target} is {d}, not the {digest} pushed"),
            }));
        }
        let config = (&image.config_digest, image.config_raw.len() as u64);
        let blobs = layers.iter().map(|l| (&l.digest, l.size));
        for (blob, size) in std::iter::once(config).chain(blobs) {
            match self.repo.blob_exists(blob).await? {
                None => return Err(failed(format!("blob {blob} is missing"))),
                // A registry may leave the length out of a HEAD (0).
                Some(n) if n != size && n != 0 => {
                    return Err(failed(format!("blob {blob} is {n} bytes, not {size}")));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Pushes the manifest last, once every blob is in.
    async fn finish_push(mut self, image: Image) -> Result<SinkReport> {
        let output = format!("{}/{}", self.reference.host, self.reference.path);
        if self.up_to_date {
            let m = image.manifest.as_ref();
            return Ok(SinkReport {
                output: format!(
                    "{output}{}{} (up to date)",
                    sep(&self.target()),
                    self.target()
                ),
                notes: vec!["the destination already has this manifest; nothing copied".into()],
                pushed: m.map(|m| descriptor(&m.media_type, &m.digest, m.raw.len())),
                ..SinkReport::default()
            });
        }
        let mut written = self.await_uploads().await?;
        let config_sent = self.push_config(&image).await?;
        if config_sent > 0 {
            Counts::add(&self.counts.uploaded);
        }
        written += config_sent;
        let layers = self.layers_pushed(&image);
        self.cache_record(&image, &layers);
        let (bytes, media_type) = self.manifest(&image, &layers)?;
        let digest = Digest::sha256_of(&bytes);
        if let Some(want) = &self.reference.digest
            && (self.options.by_digest || self.reference.tag.is_none())
            && want != &digest
        {
            return Err(Error::InvalidImage(format!(
                "the manifest to push is {digest}, not the {want} the destination names"
            )));
        }
        let target = if self.options.by_digest {
            digest.to_string()
        } else {
            self.target()
        };
        let len = bytes.len();
        self.repo.put_manifest(&target, &media_type, bytes).await?;
        written += len as u64;
        if self.options.verify {
            self.verify(&target, &digest, &image, &layers).await?;
        }
        let output = if target == digest.to_string() {
            format!("{output}@{digest}")
        } else {
            format!("{output}:{target}@{digest}")
        };
        Ok(SinkReport {
            output,
            bytes_written: written,
            notes: vec![self.counts.note()],
            pushed: Some(descriptor(&media_type, &digest, len)),
        })
    }
}

/// An upload task, aborted when dropped: a sink dropped before `finish`
/// (a failed run) stops its uploads rather than leaving them running.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> AbortOnDrop<T> {
    /// Waits for the task.
    async fn join(mut self) -> std::result::Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

/// `@` before a digest, `:` before a tag.
fn sep(reference: &str) -> char {
    if reference.contains(':') { '@' } else { ':' }
}

/// A descriptor of what was pushed.
fn descriptor(media_type: &str, digest: &Digest, size: usize) -> crate::wire::Descriptor {
    crate::wire::Descriptor {
        media_type: media_type.to_string(),
        digest: digest.clone(),
        size: size as u64,
        platform: None,
        urls: None,
    }
}

fn record(pushed: &Mutex<Vec<Option<Pushed>>>, index: usize, p: Pushed) {
    let mut all = pushed.lock().unwrap_or_else(|p| p.into_inner());
    if all.len() <= index {
        all.resize(index + 1, None);
    }
    all[index] = Some(p);
}

/// Whether a media type is an uncompressed layer.
fn is_tar(media_type: &str) -> bool {
    media_type == mt::OCI_LAYER_TAR || media_type == "application/vnd.docker.image.rootfs.diff.tar"
}

/// A layer's blob as the upload gets it.
enum BlobIn {
    /// A verified file.
    File(FileSlice),
    /// Still arriving (the pipeline spools it too).
    Live(crate::image::LiveBlob),
}

impl BlobIn {
    /// The whole verified blob, waiting for a live one to end.
    async fn file(self) -> Result<FileSlice> {
        match self {
            BlobIn::File(f) => Ok(f),
            BlobIn::Live(live) => live.file.await,
        }
    }
}

/// Opens a verified file's bytes for each upload attempt.
fn opener(file: FileSlice) -> BlobOpener {
    Arc::new(move || {
        file.open()
            .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>)
    })
}

/// One layer's upload, on its own task.
struct Upload {
    repo: Repository,
    workers: Arc<tokio::sync::Semaphore>,
    pushed: Arc<Mutex<Vec<Option<Pushed>>>>,
    failed: Arc<Mutex<Option<Error>>>,
    counts: Arc<Counts>,
    compression: Option<Encoding>,
    temp_dir: PathBuf,
    /// HEAD the blob first (its digest was not known before).
    check_first: bool,
    ledger: Option<Arc<BlobLedger>>,
    /// Others of the run wait for this upload.
    claim: Option<ledger::Claim>,
}

impl Upload {
    /// Pushes the layer; a failure is kept for the sink to report (the
    /// first one, as the registry worded it), the task's own result then
    /// only says that it failed.
    async fn run(self, info: LayerInfo, blob: BlobIn) -> Result<u64> {
        let failed = self.failed.clone();
        let index = info.index;
        match self.push(info, blob).await {
            Ok(n) => Ok(n),
            Err(e) => {
                let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                if f.is_none() {
                    *f = Some(e);
                }
                Err(Error::InvalidImage(format!(
                    "upload of layer {index} failed"
                )))
            }
        }
    }

    async fn push(self, info: LayerInfo, blob: BlobIn) -> Result<u64> {
        let workers = self.workers.clone();
        let acquire = || async {
            workers
                .acquire()
                .await
                .map_err(|_| Error::InvalidImage("upload workers closed".into()))
        };
        let mut permit = acquire().await?;
        let (blob, digest, size, media_type) = match self.compression {
            Some(how) => {
                let file = blob.file().await?;
                let dir = self.temp_dir.clone();
                let diff_id = info.diff_id.clone();
                let (out, encoded) =
                    tokio::task::spawn_blocking(move || compress_tar(&file, &dir, how, &diff_id))
                        .await
                        .map_err(|e| Error::InvalidImage(format!("compress task failed: {e}")))?
                        .map_err(|e| {
                            Error::stream(format!("compressing layer {}", info.index), e)
                        })?;
                let media_type = how.media_type(true).to_string();
                (BlobIn::File(out), encoded.digest, encoded.size, media_type)
            }
            None => (
                blob,
                info.digest.clone(),
                info.size,
                info.media_type.clone(),
            ),
        };
        let pushed = Pushed {
            digest: digest.clone(),
            size,
            media_type,
        };
        let mut sent = 0;
        let name = self.repo.name().to_string();
        let mut claim = self.claim;
        let mut known = false;
        if self.check_first
            && let Some(l) = &self.ledger
        {
            // The digest is new to us (a compressed rewrite): another image
            // of the run may be uploading the same bytes. Wait for it
            // without holding a worker, so that a wait never holds up the
            // upload it waits for.
            drop(permit);
            loop {
                match l.lookup(&digest, &name, claim.is_none()).await {
                    Lookup::Here => {
                        known = true;
                        Counts::add(&self.counts.present);
                    }
                    Lookup::In(other) => {
                        known = self.repo.mount_blob(&digest, &other).await?;
                        if known {
                            Counts::add(&self.counts.mounted);
                        }
                    }
                    Lookup::Unknown if claim.is_none() => match l.claim(&digest) {
                        Some(c) => claim = Some(c),
                        None => continue,
                    },
                    Lookup::Unknown => {}
                }
                break;
            }
            permit = acquire().await?;
        }
        let _permit = permit;
        if known {
            // Present already, or mounted just now.
        } else if self.check_first && self.repo.blob_exists(&digest).await?.is_some() {
            Counts::add(&self.counts.present);
        } else {
            match blob {
                BlobIn::File(file) => self.repo.upload_blob(&digest, size, opener(file)).await?,
                BlobIn::Live(live) => {
                    let file = live.file;
                    let fallback = Box::pin(async move { file.await.map(opener) });
                    self.repo
                        .upload_blob_live(&digest, size, live.chunks, fallback)
                        .await?
                }
            }
            Counts::add(&self.counts.uploaded);
            sent = size;
        }
        if let Some(l) = &self.ledger {
            l.add(&digest, &name);
        }
        drop(claim);
        record(&self.pushed, info.index, pushed);
        Ok(sent)
    }
}

impl AsyncSink for RegistrySink {
    fn needs(&self) -> LayerNeeds {
        // A tar-only layer's blob is its tar: the blob alone serves both.
        LayerNeeds::BLOB
    }

    fn ordered(&self) -> bool {
        false
    }

    fn takes_live_blob(&self) -> bool {
        true
    }

    fn begin<'a>(&'a mut self, image: &'a Image) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.source = Some(image.clone());
            let forced_other = |m: &crate::image::ManifestInfo| {
                self.options
                    .format
                    .is_some_and(|f| f.media_type() != m.media_type)
            };
            if self.options.exact
                && let Some(m) = &image.manifest
                && !forced_other(m)
            {
                let reference = if self.options.by_digest {
                    m.digest.to_string()
                } else {
                    self.target()
                };
                let theirs = match &self.options.destination_digest {
                    Some(known) if !self.options.by_digest => known.clone(),
                    _ => self.repo.manifest_digest(&reference).await?,
                };
                self.up_to_date = theirs.as_ref() == Some(&m.digest);
            }
            Ok(())
        })
    }

    fn wants_layer<'a>(&'a mut self, layer: &'a LayerInfo) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            if self.up_to_date {
                return Ok(false);
            }
            if self.must_compress(layer) {
                return Ok(!self.cached_blob(layer).await?);
            }
            // Another image may claim the blob between our look and our
            // claim: look again (waiting for its upload) a few times.
            for _ in 0..3 {
                if self.present(&layer.digest).await? {
                    self.record(
                        layer.index,
                        Pushed {
                            digest: layer.digest.clone(),
                            size: layer.size,
                            media_type: layer.media_type.clone(),
                        },
                    );
                    return Ok(false);
                }
                let Some(ledger) = self.options.ledger.as_ref() else {
                    return Ok(true);
                };
                match ledger.claim(&layer.digest) {
                    Some(claim) => {
                        self.claims.insert(layer.digest.clone(), claim);
                        return Ok(true);
                    }
                    // Holding claims of our own, we must not wait.
                    None if !self.claims.is_empty() => return Ok(true),
                    None => {}
                }
            }
            Ok(true)
        })
    }

    fn layer(&mut self, layer: Layer) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if let Some(e) = self.take_failure() {
                return Err(e);
            }
            let compress = self.must_compress(&layer.info);
            self.spawn_upload(layer, compress)
        })
    }

    fn finish(self: Box<Self>, image: Image) -> BoxFuture<'static, Result<SinkReport>> {
        let cache = self.options.layer_cache.clone();
        Box::pin(async move { cache::save(cache, self.finish_push(image).await).await })
    }

    fn known_rewrite<'a>(
        &'a mut self,
        layer: &'a LayerInfo,
    ) -> BoxFuture<'a, Result<Option<LayerInfo>>> {
        Box::pin(self.cached_rewrite(layer))
    }
}
