//! Running a plan: each [`Job`] checked against the destination and copied
//! when it is missing or changed, `images` jobs at once over one registry
//! [`Context`](crate::registry::Context), one failure never stopping the
//! others.
//!
//! What a job costs when there is nothing to do:
//! - an `immutable` tag the destination has: one HEAD on the destination;
//! - an exact copy (no filters, every platform): one HEAD on each side,
//!   the digests compared;
//! - a rewritten copy: one HEAD on the source and one GET of the
//!   destination's manifest, whose annotations ([`SOURCE_ANNOTATION`],
//!   [`RECIPE_ANNOTATION`]) say which source digest it was made from, and
//!   how.
//!
//! A copy reads the source by the digest its HEAD returned, so that a tag
//! moved meanwhile cannot mix two images, and pushes the manifest (an
//! index: after its children) last: an interrupted run leaves nothing
//! visible that is incomplete, and the next run picks up where it stopped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};

use super::config::{ImageOptions, RegistryRef};
use super::plan::Job;
use crate::cancel::CancelToken;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::image::Platform;
use crate::pipeline::index::{IndexOnce, IndexOutcome, copy_index_parallel};
use crate::pipeline::{self, RunOptions};
use crate::reference::Reference;
use crate::registry::{Client, Repository};
use crate::sink::registry::{BlobLedger, RegistrySink, RegistrySinkOptions};
use crate::source::registry::RegistrySource;
use crate::source::{FetchContext, Source};
use crate::wire::Descriptor;
use crate::wire::index_plan::Selection;

/// The annotation a rewritten copy carries: the source manifest's digest.
pub const SOURCE_ANNOTATION: &str = "dev.occystrap.mirror.source";
/// The annotation a rewritten copy carries: a digest of how it was made
/// (filters, platforms, compression), so that a changed config copies again.
pub const RECIPE_ANNOTATION: &str = "dev.occystrap.mirror.recipe";

/// How many jobs are checked at once for each image copied at once.
pub const CHECKS_PER_IMAGE: usize = 8;

/// Largest destination manifest read to compare annotations.
const MAX_CHECK_MANIFEST: u64 = 4 << 20;

/// What happened to one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Copied (or brought up to date).
    Copied,
    /// Already up to date.
    Skipped,
    /// Could not be copied; see the reason.
    Failed,
    /// A destination tag deleted by prune.
    Pruned,
    /// `--dry-run`: would be copied.
    WouldCopy,
    /// `--dry-run`: would be pruned.
    WouldPrune,
}

/// One image's result, as the report lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    /// `host/repo:tag` read (empty for a pruned tag).
    pub source: String,
    /// `host/repo:tag` written.
    pub destination: String,
    /// What happened.
    pub action: Action,
    /// Why (a skip's reason, a failure's error).
    pub reason: Option<String>,
    /// The source's manifest digest, when it was asked.
    pub source_digest: Option<Digest>,
    /// The destination's manifest digest afterwards, when known.
    pub destination_digest: Option<Digest>,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Seconds the image took.
    pub seconds: f64,
}

/// Which side of a copy a registry is on (they take other credentials).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Read from.
    Source,
    /// Written to.
    Destination,
}

/// Builds the client for a registry of the config.
pub type ClientFactory = dyn Fn(&RegistryRef, Side) -> Result<Arc<Client>> + Send + Sync;

/// Told what the run does, as it does it (the CLI's progress output).
pub trait Observer: Send + Sync {
    /// A job is being looked at.
    fn started(&self, _job: &Job) {}
    /// The destination lacks `job`'s image, or has another: it is being
    /// copied (not under `dry_run`).
    fn copying(&self, _job: &Job) {}
    /// `n` more bytes of a layer of `job` arrived.
    fn bytes(&self, _job: &Job, _n: u64) {}
    /// A job (or a prune) ended.
    fn finished(&self, _outcome: &Outcome) {}
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {}

/// How a run goes.
#[derive(Clone, Debug)]
pub struct MirrorOptions {
    /// Images at once.
    pub images: usize,
    /// Blobs at once per image.
    pub blobs: usize,
    /// Look and report, write nothing.
    pub dry_run: bool,
    /// Where layers are spooled.
    pub temp_dir: PathBuf,
    /// Stops the run between and within images.
    pub cancel: CancelToken,
}

/// A source registry and one of its repositories.
type SourceRepo = (RegistryRef, String);

/// A mirror run: its clients, its blob ledgers, its observer.
pub struct Mirror {
    options: MirrorOptions,
    factory: Box<ClientFactory>,
    clients: Mutex<HashMap<(RegistryRef, Side), Arc<Client>>>,
    ledgers: Mutex<HashMap<RegistryRef, Arc<BlobLedger>>>,
    /// Copies at once (`images`); checks are not held by it.
    copies: tokio::sync::Semaphore,
    /// Every tag of each source repository, as discovery listed them.
    listed: Mutex<HashMap<SourceRepo, Arc<Vec<String>>>>,
    observer: Arc<dyn Observer>,
}

impl Mirror {
    /// A run building its clients with `factory` (once per registry and
    /// side) and telling `observer`.
    pub fn new(
        options: MirrorOptions,
        factory: Box<ClientFactory>,
        observer: Arc<dyn Observer>,
    ) -> Mirror {
        Mirror {
            copies: tokio::sync::Semaphore::new(options.images.max(1)),
            options,
            factory,
            clients: Mutex::new(HashMap::new()),
            ledgers: Mutex::new(HashMap::new()),
            listed: Mutex::new(HashMap::new()),
            observer,
        }
    }

    /// The client for `registry` on `side`, built on first use.
    pub fn client(&self, registry: &RegistryRef, side: Side) -> Result<Arc<Client>> {
        let key = (registry.clone(), side);
        if let Some(c) = self.lock_clients().get(&key) {
            return Ok(c.clone());
        }
        let c = (self.factory)(registry, side)?;
        self.lock_clients().insert(key, c.clone());
        Ok(c)
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, HashMap<(RegistryRef, Side), Arc<Client>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ledger(&self, registry: &RegistryRef) -> Arc<BlobLedger> {
        let mut l = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
        l.entry(registry.clone()).or_default().clone()
    }

    /// Tells the run every tag `repository` of the source `registry` has
    /// (referrer tags included), as discovery listed them.
    pub fn know_tags(&self, registry: &RegistryRef, repository: &str, tags: Vec<String>) {
        let mut l = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        l.insert((registry.clone(), repository.to_string()), Arc::new(tags));
    }

    /// The tags [`Mirror::know_tags`] was told of.
    fn tags_of(&self, image: &super::plan::ImageRef) -> Arc<Vec<String>> {
        let l = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        l.get(&(image.registry.clone(), image.repository.clone()))
            .cloned()
            .unwrap_or_default()
    }

    /// The observer.
    pub fn observer(&self) -> &Arc<dyn Observer> {
        &self.observer
    }

    /// The options.
    pub fn options(&self) -> &MirrorOptions {
        &self.options
    }

    /// Runs every job, `images` at once; one outcome per job, in job order.
    ///
    /// Checks (a `HEAD` or two) run [`CHECKS_PER_IMAGE`] times wider than
    /// copies: a warm run is all checks, each mostly waiting on the network.
    pub async fn run(&self, jobs: &[Job]) -> Vec<Outcome> {
        let images = self.options.images.max(1);
        let runs = jobs.iter().map(|job| self.run_job(job));
        futures_util::stream::iter(runs)
            .buffered(images * CHECKS_PER_IMAGE)
            .collect()
            .await
    }

    /// One job, whatever happens: an error becomes a failed outcome.
    pub async fn run_job(&self, job: &Job) -> Outcome {
        let started = Instant::now();
        let mut outcome = Outcome {
            source: job.source.to_string(),
            destination: job.destination.to_string(),
            action: Action::Failed,
            reason: None,
            source_digest: None,
            destination_digest: None,
            bytes: 0,
            seconds: 0.0,
        };
        if self.options.cancel.is_cancelled() {
            outcome.reason = Some("interrupted before it started".into());
            return outcome;
        }
        self.observer.started(job);
        if let Err(e) = self.job(job, &mut outcome).await {
            outcome.action = Action::Failed;
            outcome.reason = Some(e.to_string());
        }
        outcome.seconds = started.elapsed().as_secs_f64();
        self.observer.finished(&outcome);
        outcome
    }

    async fn job(&self, job: &Job, out: &mut Outcome) -> Result<()> {
        let src = self
            .client(&job.source.registry, Side::Source)?
            .repo(&job.source.repository);
        let dst = self
            .client(&job.destination.registry, Side::Destination)?
            .repo(&job.destination.repository);
        let tag = &job.destination.tag;
        if job.immutable
            && let Some(d) = dst.manifest_digest(tag).await?
        {
            out.destination_digest = Some(d);
            return skip(out, "immutable tag already in the destination");
        }
        let recipe = recipe(&job.options);
        // Both sides at once: a warm run waits one round trip per tag.
        let theirs = src.source_manifest_digest(&job.source.tag);
        let (source_digest, current, up_to_date) = match &recipe {
            None => {
                let (s, d) = futures_util::future::join(theirs, dst.manifest_digest(tag)).await;
                let (s, d) = (present_in_source(s?, job)?, d?);
                let same = d.as_ref() == Some(&s);
                (s, d, same)
            }
            Some(r) => {
                let (s, body) =
                    futures_util::future::join(theirs, destination_manifest(&dst, tag)).await;
                let s = present_in_source(s?, job)?;
                let (d, same) = made_from(body?, &s, r);
                (s, d, same)
            }
        };
        out.source_digest = Some(source_digest.clone());
        out.destination_digest = current;
        let referrers = job.options.referrers && recipe.is_none();
        if up_to_date {
            // Only referrers the listing shows (tags) are looked for: asking
            // a referrers API for every tag would double a warm run's cost.
            let tags = self.tags_of(&job.source);
            let listed = tags
                .iter()
                .filter_map(|t| super::referrers::referrer_tag(t))
                .any(|(d, _)| d == source_digest);
            if referrers && listed && !self.options.dry_run {
                out.bytes = self
                    .referrers(job, &src, &dst, std::slice::from_ref(&source_digest))
                    .await?;
            }
            return skip(out, "up to date");
        }
        if self.options.dry_run {
            out.action = Action::WouldCopy;
            out.reason = Some(match &out.destination_digest {
                None => "not in the destination".into(),
                Some(_) => "the destination has another image".into(),
            });
            return Ok(());
        }
        let _copying = self
            .copies
            .acquire()
            .await
            .map_err(|_| Error::InvalidImage("the run's copy slots are closed".into()))?;
        self.observer.copying(job);
        let current = out.destination_digest.clone();
        let (pushed, bytes, children) = self
            .copy(
                job,
                (src.clone(), dst.clone()),
                &source_digest,
                current,
                recipe,
            )
            .await?;
        out.action = Action::Copied;
        out.destination_digest = Some(pushed.digest);
        out.bytes = bytes;
        if referrers {
            let mut subjects = vec![source_digest];
            subjects.extend(children);
            out.bytes += self
                .referrers(job, &src, &dst, &subjects)
                .await
                .map_err(|e| Error::InvalidImage(format!("copied, but not its referrers: {e}")))?;
        }
        Ok(())
    }

    /// Copies what refers to `subjects` (cosign tags, OCI referrers) from
    /// `src` to `dst`; returns the bytes uploaded.
    async fn referrers(
        &self,
        job: &Job,
        src: &Repository,
        dst: &Repository,
        subjects: &[Digest],
    ) -> Result<u64> {
        let tags = self.tags_of(&job.source);
        let temp = tempfile::Builder::new()
            .prefix("occystrap-referrers-")
            .tempdir_in(&self.options.temp_dir)
            .map_err(|e| Error::io("creating a temp dir in", &self.options.temp_dir, e))?;
        let copied =
            super::referrers::copy_referrers(src, dst, subjects, &tags, temp.path()).await?;
        Ok(copied.bytes)
    }

    /// Copies the source image or index, pinned to `digest`, from `src`
    /// into `dst` at the job's tag, which names `current` now; returns what
    /// the tag names afterwards, and the bytes sent.
    async fn copy(
        &self,
        job: &Job,
        (src, dst): (Repository, Repository),
        digest: &Digest,
        current: Option<Digest>,
        recipe: Option<String>,
    ) -> Result<(Descriptor, u64, Vec<Digest>)> {
        let reference = Reference {
            host: job.source.registry.host.clone(),
            path: job.source.repository.clone(),
            tag: Some(job.source.tag.clone()),
            digest: Some(digest.clone()),
        };
        let inner: Arc<dyn Source> =
            Arc::new(RegistrySource::new(reference, Platform::host(), src));
        let source: Arc<dyn Source> = Arc::new(IndexOnce::new(inner));
        let temp = tempfile::Builder::new()
            .prefix("occystrap-mirror-")
            .tempdir_in(&self.options.temp_dir)
            .map_err(|e| Error::io("creating a temp dir in", &self.options.temp_dir, e))?;
        let ctx = FetchContext::new(temp.path().to_path_buf(), Arc::new(crate::progress::Silent));
        let annotations: BTreeMap<String, String> = recipe
            .map(|r| {
                BTreeMap::from([
                    (SOURCE_ANNOTATION.to_string(), digest.to_string()),
                    (RECIPE_ANNOTATION.to_string(), r),
                ])
            })
            .unwrap_or_default();
        let copier = Copier {
            mirror: self,
            job,
            dst: &dst,
            current,
            temp: temp.path().to_path_buf(),
            sent: Default::default(),
        };
        let selection = &job.options.platforms;
        let is_index = source.index(&ctx).await?.is_some();
        if !is_index {
            let d = copier
                .image(source, Some(&job.destination.tag), &annotations)
                .await?;
            return Ok((d, copier.sent(), Vec::new()));
        }
        let none = BTreeMap::new();
        let outcome = copy_index_parallel(
            source,
            &ctx,
            selection,
            self.options.blobs.clamp(1, 4),
            |child, _| copier.image(child, None, &none),
        )
        .await?;
        let IndexOutcome::Copied(copy) = outcome else {
            return Err(Error::InvalidImage(format!(
                "{} stopped being an index",
                job.source
            )));
        };
        let raw = if copy.unchanged || annotations.is_empty() {
            copy.raw
        } else {
            crate::wire::annotate(&copy.raw, &annotations)?
        };
        let len = raw.len() as u64;
        let pushed = dst
            .put_manifest(&job.destination.tag, &copy.media_type, raw)
            .await?;
        Ok((
            Descriptor {
                media_type: copy.media_type,
                digest: pushed,
                size: len,
                platform: None,
                urls: None,
            },
            copier.sent() + len,
            copy.children
                .into_iter()
                .map(|(from, _)| from.digest)
                .collect(),
        ))
    }
}

impl Mirror {
    /// Deletes the tags of `repository` in `registry` that are neither in
    /// `keep` nor referrer tags, unless a kept tag names the same manifest
    /// (`kept`: their digests), since a registry deletes a manifest, with
    /// every tag on it, by digest. Under `dry_run`, only says so.
    pub async fn prune(
        &self,
        registry: &RegistryRef,
        repository: &str,
        keep: &BTreeSet<String>,
        kept: &BTreeSet<String>,
    ) -> Vec<Outcome> {
        let outcome =
            |tag: &str, action: Action, reason: Option<String>, d: Option<Digest>| Outcome {
                source: String::new(),
                destination: format!("{}/{repository}:{tag}", registry.host),
                action,
                reason,
                source_digest: None,
                destination_digest: d,
                bytes: 0,
                seconds: 0.0,
            };
        let client = match self.client(registry, Side::Destination) {
            Ok(c) => c,
            Err(e) => return vec![outcome("*", Action::Failed, Some(e.to_string()), None)],
        };
        let tags = match client.tags(repository).await {
            Ok(t) => t,
            Err(Error::Registry {
                status: Some(404), ..
            }) => return Vec::new(),
            Err(e) => {
                let why = format!("listing the tags to prune: {e}");
                return vec![outcome("*", Action::Failed, Some(why), None)];
            }
        };
        let repo = client.repo(repository);
        let mut out = Vec::new();
        for tag in tags
            .iter()
            .filter(|t| !keep.contains(*t) && !super::select::is_referrer_tag(t))
        {
            let started = Instant::now();
            let mut o = match repo.manifest_digest(tag).await {
                Ok(None) => continue,
                Err(e) => outcome(tag, Action::Failed, Some(e.to_string()), None),
                Ok(Some(d)) if kept.contains(&d.to_string()) => outcome(
                    tag,
                    Action::Skipped,
                    Some("not pruned: a kept tag names the same manifest".into()),
                    Some(d),
                ),
                Ok(Some(d)) if self.options.dry_run => outcome(
                    tag,
                    Action::WouldPrune,
                    Some("the source no longer has it".into()),
                    Some(d),
                ),
                Ok(Some(d)) => match repo.delete_manifest(&d).await {
                    Ok(_) => outcome(
                        tag,
                        Action::Pruned,
                        Some("the source no longer has it".into()),
                        Some(d),
                    ),
                    Err(e) => outcome(tag, Action::Failed, Some(format!("pruning: {e}")), Some(d)),
                },
            };
            o.seconds = started.elapsed().as_secs_f64();
            self.observer.finished(&o);
            out.push(o);
        }
        out
    }
}

/// Marks `out` skipped.
fn skip(out: &mut Outcome, why: &str) -> Result<()> {
    out.action = Action::Skipped;
    out.reason = Some(why.into());
    Ok(())
}

/// What a copy with these options does to an image, as a digest; `None`
/// when it copies byte for byte (no filter, every platform).
pub fn recipe(options: &ImageOptions) -> Option<String> {
    if options.filters.is_empty() && options.platforms == Selection::All {
        return None;
    }
    let mut h = Sha256::new();
    for f in &options.filters {
        h.update(f.as_bytes());
        h.update([0]);
    }
    h.update(format!("{:?}", options.platforms).as_bytes());
    h.update([0]);
    h.update(options.compression.to_string().as_bytes());
    Some(format!("sha256:{:x}", h.finalize()))
}

/// The source digest a `HEAD` found, or the error that the tag is gone.
fn present_in_source(digest: Option<Digest>, job: &Job) -> Result<Digest> {
    digest.ok_or_else(|| Error::InvalidImage(format!("{} is no longer in the source", job.source)))
}

/// The destination's manifest at `tag`, if any (one GET).
async fn destination_manifest(dst: &Repository, tag: &str) -> Result<Option<Vec<u8>>> {
    match dst.get_manifest(tag).await {
        Ok((body, _)) => Ok(Some(body)),
        Err(Error::Registry {
            status: Some(404), ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the destination's manifest `body` was made from `source` by
/// `recipe` (its annotations say so, or it is the source itself), with its
/// digest.
fn made_from(body: Option<Vec<u8>>, source: &Digest, recipe: &str) -> (Option<Digest>, bool) {
    let Some(body) = body else {
        return (None, false);
    };
    let digest = Digest::sha256_of(&body);
    if &digest == source {
        return (Some(digest), true);
    }
    if body.len() as u64 > MAX_CHECK_MANIFEST {
        return (Some(digest), false);
    }
    let annotations = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("annotations").cloned());
    let says = |k: &str| {
        annotations
            .as_ref()
            .and_then(|a| a.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let same = says(SOURCE_ANNOTATION).as_deref() == Some(&source.to_string())
        && says(RECIPE_ANNOTATION).as_deref() == Some(recipe);
    (Some(digest), same)
}

/// Copies the images of one job into its destination repository.
struct Copier<'a> {
    mirror: &'a Mirror,
    job: &'a Job,
    dst: &'a Repository,
    /// What the job's destination tag named when the job asked.
    current: Option<Digest>,
    temp: PathBuf,
    sent: Mutex<u64>,
}

impl Copier<'_> {
    fn sent(&self) -> u64 {
        *self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One image, through a fresh filter chain, by `tag` or (an index's
    /// child) by digest only.
    async fn image(
        &self,
        source: Arc<dyn Source>,
        tag: Option<&str>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Descriptor> {
        let options = &self.job.options;
        let filters = build_filters(&options.filters)?;
        let exact = !filters.iter().any(|f| f.rewrites());
        let reference = Reference {
            host: self.job.destination.registry.host.clone(),
            path: self.job.destination.repository.clone(),
            tag: tag.map(str::to_string),
            digest: None,
        };
        let sink_options = RegistrySinkOptions {
            compression: options.compression,
            max_workers: self.mirror.options.blobs.max(1),
            exact,
            by_digest: tag.is_none(),
            temp_dir: Some(self.temp.clone()),
            ledger: Some(self.mirror.ledger(&self.job.destination.registry)),
            annotations: annotations.clone(),
            // The job asked the destination already.
            destination_digest: tag.map(|_| self.current.clone()),
            ..RegistrySinkOptions::default()
        };
        let sink = Box::new(RegistrySink::new(self.dst.clone(), reference, sink_options));
        let run = RunOptions {
            parallel: self.mirror.options.blobs.max(1),
            temp_dir: Some(self.temp.clone()),
            reporter: Arc::new(Bytes {
                observer: self.mirror.observer.clone(),
                job: self.job.clone(),
            }),
            cancel: self.mirror.options.cancel.clone(),
        };
        let report = pipeline::run_async(source, filters, sink, run).await?;
        *self.sent.lock().unwrap_or_else(|p| p.into_inner()) += report.bytes_written;
        report.pushed.ok_or_else(|| {
            Error::InvalidImage(format!(
                "the push to {} reported no manifest",
                report.output
            ))
        })
    }
}

/// The filters of an entry, built anew for each image (a filter keeps
/// state across one image).
fn build_filters(specs: &[String]) -> Result<Vec<Box<dyn Filter>>> {
    specs
        .iter()
        .map(|f| crate::filter::FilterSpec::parse(f).and_then(|s| crate::filter::build(&s)))
        .collect()
}

/// Forwards a pipeline's layer bytes to the run's observer.
struct Bytes {
    observer: Arc<dyn Observer>,
    job: Job,
}

impl crate::progress::Reporter for Bytes {
    fn layer_bytes(&self, _index: usize, n: u64) {
        self.observer.bytes(&self.job, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_copy_has_no_recipe_and_a_changed_config_another() {
        let exact = ImageOptions::default();
        assert_eq!(recipe(&exact), None);
        let filtered = ImageOptions {
            filters: vec!["normalize-timestamps".into()],
            ..ImageOptions::default()
        };
        let subset = ImageOptions {
            platforms: Selection::parse_platforms("linux/amd64").unwrap(),
            ..ImageOptions::default()
        };
        let a = recipe(&filtered).unwrap();
        let b = recipe(&subset).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            recipe(&filtered.clone()).unwrap(),
            a,
            "not a function of the options"
        );
        let zstd = ImageOptions {
            compression: crate::compress::Encoding::Zstd,
            ..filtered
        };
        assert_ne!(recipe(&zstd).unwrap(), a);
    }
}
