//! Wires a source to a sink: resolve, ask the sink which layers it wants,
//! fetch those N at a time, hand them over in order, finish.
//!
//! The pipeline alone decides each layer's form: a source hands out the
//! blob's bytes ([`crate::source::LayerBlob`]), [`crate::verify`] checks
//! them as they are read, and the layer goes to the sink live (it is the one
//! the sink waits for) or from a verified temp file (it finished early),
//! or is served where it lies (a plain tar in a local file).

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext, LayerObserver, RewriteFactory};
use crate::image::{Image, Layer, LayerInfo, LayerNeeds};
use crate::progress::Reporter;
use crate::sink::{AsyncSink, Blocking, Sink};
use crate::source::{FetchContext, Source};
use crate::verify::Checks;

mod builder;
mod deliver;
mod handoff;
pub mod index;
mod live_blob;
mod observe;
mod rewrite;
#[cfg(test)]
mod tests;

pub use builder::Pipeline;
use handoff::Handoff;

/// How a run is carried out.
#[derive(Clone)]
pub struct RunOptions {
    /// Layers fetched at once.
    pub parallel: usize,
    /// Where temp files go (default: the system temp dir).
    pub temp_dir: Option<PathBuf>,
    /// Progress callbacks.
    pub reporter: Arc<dyn Reporter>,
    /// The run's cancellation: blocking work stops at its next check once it
    /// is cancelled. Sinks built by `uri::open_sink` take theirs from
    /// `uri::Settings::cancel`; give both the same token.
    pub cancel: crate::cancel::CancelToken,
}

/// What a run did, for the summary line.
#[derive(Clone, Debug)]
pub struct Report {
    /// The image, as `name:tag` or `name@digest`.
    pub image: String,
    /// Layers in the image.
    pub layers: usize,
    /// Layers fetched from the source.
    pub fetched: usize,
    /// Layers the sink already had.
    pub skipped: usize,
    /// Blob bytes fetched from the source.
    pub bytes_fetched: u64,
    /// Bytes the sink wrote.
    pub bytes_written: u64,
    /// Where the output went.
    pub output: String,
    /// Wall time.
    pub elapsed: Duration,
    /// What the sink wants the user to know (skipped entries, warnings).
    pub notes: Vec<String>,
    /// The manifest a registry sink pushed ([`crate::sink::SinkReport::pushed`]).
    pub pushed: Option<crate::wire::Descriptor>,
}

/// Aborts a spawned task when dropped, so a failed run (or search) stops its
/// other downloads instead of letting them run to the end.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::InvalidImage(format!("layer task failed: {e}"))
}

/// Fetches one layer and verifies it into the forms `needs` asks for, as
/// verified files. For callers outside a run (`search`, `check`, tests).
pub async fn fetch_layer(
    source: &dyn Source,
    info: &LayerInfo,
    needs: LayerNeeds,
    ctx: &FetchContext,
) -> Result<Layer> {
    let delivery = Delivery::Files {
        needs,
        handoff: None,
        observers: Arc::new([]),
        rewrite: None,
        stage: None,
    };
    fetch_into(source, info, ctx, delivery).await
}

/// What a fetched layer is made into.
#[derive(Clone)]
enum Delivery {
    /// The forms `needs` asks for, as verified files; with a `handoff`, its
    /// tar may go to the sink live. `observers` (the filters') see the tar
    /// as it passes; `rewrite` rewrites it as it passes.
    Files {
        needs: LayerNeeds,
        handoff: Option<Arc<Handoff>>,
        observers: Arc<[LayerObserver]>,
        rewrite: Option<RewriteFactory>,
        /// Where a layer that is not the sink's next one is extracted ahead.
        stage: Option<Arc<crate::sink::StageArea>>,
    },
    /// A sink's per-layer work, run over the tar as it arrives, which is
    /// verified as `Checks` says (`AsyncSink::work_checks_diff_ids`).
    Work(crate::sink::LayerWork, Checks),
    /// The blob as a verified file, checked by its size and digest only
    /// (`AsyncSink::blob_only`); written into the sink's output where it
    /// gives a region for the layer (`AsyncSink::blob_regions`).
    BlobOnly(Arc<std::collections::HashMap<usize, crate::sink::BlobRegion>>),
    /// The blob, live, to a sink that takes it so (see [`live_blob`]); each
    /// layer holds one of `slots` while it downloads.
    LiveBlob(Arc<tokio::sync::Semaphore>),
}

/// Fetches one layer through the verifier, on a blocking thread.
async fn fetch_into(
    source: &dyn Source,
    info: &LayerInfo,
    ctx: &FetchContext,
    delivery: Delivery,
) -> Result<Layer> {
    if let Delivery::LiveBlob(slots) = &delivery {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::InvalidImage("download slots closed".into()))?;
        return live_blob::fetch(source, info, ctx, permit).await;
    }
    ctx.reporter.layer_started(info);
    let started = Instant::now();
    let blob = source.fetch(info, ctx).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = deliver::StopOnDrop(stop.clone());
    let reporter = ctx.reporter.clone();
    let temp = ctx.temp_dir.clone();
    let image_info = info.clone();
    let layer = tokio::task::spawn_blocking(move || match delivery {
        Delivery::Files {
            needs,
            handoff,
            observers,
            rewrite,
            stage,
        } => {
            let passing = Passing {
                observers,
                rewrite,
                info: image_info,
            };
            let handoff = handoff.as_deref();
            let to = deliver::To {
                temp_dir: &temp,
                handoff,
                stage: stage.as_deref(),
            };
            deliver::verify_layer(blob, needs, to, &passing, reporter, stop)
        }
        Delivery::Work(work, checks) => {
            deliver::work_layer(blob, &image_info, &work, checks, reporter, stop)
        }
        Delivery::BlobOnly(regions) => {
            let region = regions.get(&image_info.index).cloned();
            deliver::verify_blob_only(blob, &temp, region, reporter, stop)
        }
        // Fetched above, never here.
        Delivery::LiveBlob(_) => Err(Error::InvalidImage("live blob fetched as a file".into())),
    })
    .await
    .map_err(join_error)??;
    tracing::debug!(
        "layer {}: {} bytes fetched and verified in {:.3}s",
        info.index,
        layer.info.size,
        started.elapsed().as_secs_f64()
    );
    ctx.reporter.layer_done(info.index);
    Ok(layer)
}

/// What the filters do to one layer's tar as it passes: observe it, or
/// rewrite it; and the image's descriptor of it, which observers name the
/// layer by.
pub(crate) struct Passing {
    observers: Arc<[LayerObserver]>,
    rewrite: Option<RewriteFactory>,
    info: LayerInfo,
}

/// The rewrite to run over each layer as it streams: when the run's one
/// filter can (`Filter::stream_rewrite`) and the sink, ordered and reading
/// only the tar, takes rewritten layers live (see [`rewrite`]).
fn stream_rewrite(
    filters: &[Box<dyn Filter>],
    sink: &dyn AsyncSink,
    sink_needs: LayerNeeds,
) -> Option<RewriteFactory> {
    match filters {
        [only] if sink.ordered() && sink_needs == LayerNeeds::TAR => only
            .stream_rewrite()
            .filter(|_| only.rewrites() && sink.takes_rewritten_live()),
        _ => None,
    }
}

/// The filters' observers, when every filter gives one and none rewrites:
/// then the layers may stream past the filters (see [`observe`]).
fn observers(filters: &[Box<dyn Filter>]) -> Option<Arc<[LayerObserver]>> {
    filters
        .iter()
        .map(|f| f.observer().filter(|_| !f.rewrites()))
        .collect::<Option<Vec<_>>>()
        .map(Arc::from)
}

/// Starts fetching a layer on its own task.
fn spawn_fetch(
    source: &Arc<dyn Source>,
    info: LayerInfo,
    ctx: &FetchContext,
    delivery: Delivery,
) -> AbortOnDrop<Result<Layer>> {
    spawn_gated_fetch(source, info, ctx, delivery, None)
}

/// How many times `parallel` layers an ordered, streaming run keeps in
/// flight: those beyond `parallel` wait for a download slot.
const AHEAD: usize = 2;

/// [`spawn_fetch`], once one of `slots` (if any) is free; the slot is held
/// until the layer is verified (or handed over live and read to its end).
fn spawn_gated_fetch(
    source: &Arc<dyn Source>,
    info: LayerInfo,
    ctx: &FetchContext,
    delivery: Delivery,
    slots: Option<Arc<tokio::sync::Semaphore>>,
) -> AbortOnDrop<Result<Layer>> {
    let source = source.clone();
    let ctx = ctx.clone();
    AbortOnDrop(tokio::spawn(async move {
        let _slot =
            match slots {
                Some(s) => Some(s.acquire_owned().await.map_err(|_| {
                    Error::InvalidImage("the run's download slots are closed".into())
                })?),
                None => None,
            };
        fetch_into(&*source, &info, &ctx, delivery).await
    }))
}

/// Hands a layer to the sink. Its temp files are deleted on another thread
/// afterwards (`reaper` collects those tasks), since unlinking a large file
/// takes tens of milliseconds that the sink's next layer is waiting for.
async fn give_layer(
    sink: &mut dyn AsyncSink,
    layer: Layer,
    reaper: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<()> {
    let keep = (layer.tar.clone(), layer.blob.clone());
    let given = sink.layer(layer).await;
    reaper.push(tokio::task::spawn_blocking(move || drop(keep)));
    given
}

/// Gives the sink the layer it is waiting for: live if the layer's writer
/// hands it over, or as files if it finished first. Returns the layer's
/// descriptor as verification left it (a docker-save member's digest).
async fn deliver_in_turn(
    sink: &mut dyn AsyncSink,
    mut task: AbortOnDrop<Result<Layer>>,
    mut rx: tokio::sync::oneshot::Receiver<Layer>,
    reaper: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<LayerInfo> {
    enum Got {
        Live(Layer),
        Done(Result<Layer>),
    }
    let got = tokio::select! {
        biased;
        r = &mut rx => match r {
            Ok(l) => Got::Live(l),
            Err(_) => Got::Done((&mut task).await.map_err(join_error).and_then(|r| r)),
        },
        r = &mut task => Got::Done(r.map_err(join_error).and_then(|r| r)),
    };
    let (sink_result, fetched, live_info) = match got {
        Got::Live(layer) => {
            let info = layer.info.clone();
            let (s, t) = tokio::join!(sink.layer(layer), &mut task);
            (s, t.map_err(join_error).and_then(|r| r), info)
        }
        // A small layer's writer can stream it whole and finish before the
        // stream is picked up.
        Got::Done(fetched) => match rx.try_recv() {
            Ok(layer) => {
                let info = layer.info.clone();
                (sink.layer(layer).await, fetched, info)
            }
            Err(_) => {
                let layer = fetched?;
                let info = layer.info.clone();
                return give_layer(sink, layer, reaper).await.map(|()| info);
            }
        },
    };
    match (sink_result, fetched) {
        (Ok(()), Ok(layer)) => Ok(layer.info),
        // The writer failed only because the sink stopped reading.
        (Err(e), Err(Error::Stream { source, .. }))
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            Err(e)
        }
        // A sink that finished without reading the rest: the layer was still
        // verified to its end.
        (Ok(()), Err(Error::Stream { source, .. }))
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            Ok(live_info)
        }
        // Otherwise the fetch's error (a digest mismatch, a dropped
        // connection) explains why the sink's stream failed.
        (_, Err(e)) => Err(e),
        (Err(e), Ok(_)) => Err(e),
    }
}

/// Moves one image from `source` to `sink`.
pub async fn run(
    source: Arc<dyn Source>,
    sink: Box<dyn Sink>,
    options: RunOptions,
) -> Result<Report> {
    run_filtered(source, Vec::new(), sink, options).await
}

/// Moves one image from `source` through `filters`, in order, to `sink`.
pub async fn run_filtered(
    source: Arc<dyn Source>,
    filters: Vec<Box<dyn Filter>>,
    sink: Box<dyn Sink>,
    options: RunOptions,
) -> Result<Report> {
    run_async(source, filters, Box::new(Blocking::new(sink)), options).await
}

/// What a run decided before its first layer.
struct Plan {
    /// The forms fetched: the sink's, and the tar for filters.
    needs: LayerNeeds,
    /// The sink reads only the tar, in order, with no filter between that
    /// needs files: each layer goes to it live once the layers below it are
    /// in.
    streaming: bool,
    /// The filters' observers, when they all observe (empty without
    /// filters); `None` when the filters read files.
    observers: Option<Arc<[LayerObserver]>>,
    /// The rewrite run over each layer as it streams, instead of the
    /// filter's `layer`.
    stream_rewrite: Option<RewriteFactory>,
    ordered: bool,
    filtering: bool,
    rewriting: bool,
    sink_needs: LayerNeeds,
}

impl Plan {
    /// The plan for `filters` into `sink` (begun: its needs may depend on
    /// the image).
    fn new(filters: &[Box<dyn Filter>], sink: &dyn AsyncSink) -> Plan {
        let sink_needs = sink.needs();
        let filtering = !filters.is_empty();
        // Filters that only observe see the tar as it passes: no files for them.
        let observers = observers(filters);
        let stream_rewrite = stream_rewrite(filters, sink, sink_needs);
        let passes = observers.is_some() || stream_rewrite.is_some();
        let ordered = sink.ordered() || filtering;
        Plan {
            needs: if passes {
                sink_needs
            } else {
                sink_needs.union(LayerNeeds::TAR)
            },
            streaming: ordered && passes && sink_needs == LayerNeeds::TAR,
            observers,
            stream_rewrite,
            ordered,
            filtering,
            // A rewriting filter changes diff_ids, so the sink can only say
            // what it has once a layer has been through the chain.
            rewriting: filters.iter().any(|f| f.rewrites()),
            sink_needs,
        }
    }
}

/// How layers reach a sink that does not take them streamed: through its
/// per-layer work (run as each layer downloads, nothing spooled; the sink
/// then gets the layers without their bytes), live as blobs, as blobs
/// checked by digest only (into the regions it gives), or as verified
/// files.
fn file_delivery(sink: &dyn AsyncSink, plan: &Plan, parallel: usize) -> Delivery {
    if let Some(work) = sink.layer_work().filter(|_| !plan.filtering) {
        let checks = match sink.work_checks_diff_ids() {
            true => Checks::Full,
            false => Checks::BlobDigest,
        };
        return Delivery::Work(work, checks);
    }
    let blob_as_is = !plan.filtering && plan.sink_needs == LayerNeeds::BLOB;
    if blob_as_is && sink.takes_live_blob() {
        return Delivery::LiveBlob(Arc::new(tokio::sync::Semaphore::new(parallel)));
    }
    if blob_as_is && sink.blob_only() {
        return Delivery::BlobOnly(Arc::new(sink.blob_regions()));
    }
    Delivery::Files {
        needs: plan.needs,
        handoff: None,
        observers: plan.observers.clone().unwrap_or_else(|| Arc::new([])),
        rewrite: None,
        stage: None,
    }
}

/// Moves one image from `source` through `filters` to a sink that does its
/// work asynchronously.
pub async fn run_async(
    source: Arc<dyn Source>,
    filters: Vec<Box<dyn Filter>>,
    mut sink: Box<dyn AsyncSink>,
    options: RunOptions,
) -> Result<Report> {
    let started = Instant::now();
    let temp_root = options.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let temp = tempfile::Builder::new()
        .prefix("occystrap-")
        .tempdir_in(&temp_root)
        .map_err(|e| Error::io("creating temp dir in", &temp_root, e))?;
    let mut ctx = FetchContext::new(temp.path().to_path_buf(), options.reporter.clone());
    let mut image = source.resolve(&ctx).await?;
    // Begun first, so that what a sink needs may depend on the image.
    sink.begin(&image).await?;
    let plan = Plan::new(&filters, sink.as_ref());
    let mut chain = FilterChain {
        filters,
        ctx: FilterContext {
            temp_dir: ctx.temp_dir.clone(),
        },
    };
    chain = chain.run(&image, |f, img| f.begin(img)).await?;

    // Only when every filter rewrites: an observing filter (`inspect`,
    // `search`) must still see every layer.
    let reuse_rewrites = plan.rewriting && chain.filters.iter().all(|f| f.rewrites());
    let (wanted, known) = plan_layers(sink.as_mut(), &mut image, &plan, reuse_rewrites).await?;
    for l in image
        .layers
        .iter()
        .filter(|l| !wanted.iter().any(|w| w.index == l.index))
    {
        options.reporter.layer_skipped(l);
    }
    options.reporter.begin(&image, &wanted);
    let bytes_fetched = wanted.iter().map(|l| l.size).sum::<u64>();
    let fetched = wanted.len();
    let parallel = options.parallel.max(1);
    ctx.layers_at_once = parallel.min(wanted.len()).max(1);
    let mut reaper = Vec::new();
    let delivery = file_delivery(sink.as_ref(), &plan, parallel);
    let mut layers = Layers {
        source: &source,
        ctx: &ctx,
        sink: sink.as_mut(),
        reaper: &mut reaper,
        parallel,
        started,
        cancel: &options.cancel,
    };
    let work = matches!(delivery, Delivery::Work(..));
    let (rewritten, skipped_after_filters) = if plan.streaming && !work {
        let (c, r) = layers.streamed(wanted, &plan, chain, &mut image).await?;
        chain = c;
        (r, 0)
    } else {
        let (c, r, s) = layers
            .as_files(wanted, &plan, delivery, chain, &mut image)
            .await?;
        chain = c;
        (r, s)
    };
    if rewritten || known {
        rewrite_config(&mut image)?;
    }
    chain.run(&image, |f, img| f.finish(img)).await?;
    let sink_report = sink.finish(image.clone()).await?;
    for r in reaper {
        // A failed deletion is the temp dir's to clean up below.
        let _ = r.await;
    }
    options.reporter.end();
    tracing::debug!("sink finished at {:.3}s", started.elapsed().as_secs_f64());
    drop(temp);
    Ok(Report {
        image: describe_image(&image),
        layers: image.layers.len(),
        fetched,
        skipped: image.layers.len() - fetched + skipped_after_filters,
        bytes_fetched,
        bytes_written: sink_report.bytes_written,
        output: sink_report.output,
        elapsed: started.elapsed(),
        notes: sink_report.notes,
        pushed: sink_report.pushed,
    })
}

/// Which layers to fetch, and whether the sink knew what some became
/// ([`AsyncSink::known_rewrite`], asked only with `reuse_rewrites`): those
/// take their place in `image.layers` and are not fetched. Without
/// rewriting filters the sink says which layers it wants; with them it can
/// only tell once a layer has been through the chain.
async fn plan_layers(
    sink: &mut dyn AsyncSink,
    image: &mut Image,
    plan: &Plan,
    reuse_rewrites: bool,
) -> Result<(Vec<LayerInfo>, bool)> {
    let (mut wanted, mut known) = (Vec::new(), false);
    for i in 0..image.layers.len() {
        let l = &image.layers[i];
        if reuse_rewrites {
            if let Some(mut new) = sink.known_rewrite(l).await? {
                new.index = l.index;
                image.layers[i] = new;
                known = true;
                continue;
            }
        }
        if plan.rewriting || sink.wants_layer(l).await? {
            wanted.push(l.clone());
        }
    }
    Ok((wanted, known))
}

/// The layer-moving part of a run.
struct Layers<'r> {
    source: &'r Arc<dyn Source>,
    ctx: &'r FetchContext,
    sink: &'r mut dyn AsyncSink,
    reaper: &'r mut Vec<tokio::task::JoinHandle<()>>,
    parallel: usize,
    started: Instant,
    cancel: &'r crate::cancel::CancelToken,
}

impl Layers<'_> {
    /// Fetches `parallel` layers at once and gives each to the sink in
    /// order: live when it is the one the sink waits for, else from the file
    /// it was spooled to (see [`handoff`]). The filters, which only observe,
    /// see each layer as it passes and then get it, without its bytes, once
    /// the sink took it; or the plan's rewrite rewrites it as it passes.
    /// Returns the chain and whether a layer was rewritten.
    async fn streamed(
        &mut self,
        wanted: Vec<LayerInfo>,
        plan: &Plan,
        mut chain: FilterChain,
        image: &mut Image,
    ) -> Result<(FilterChain, bool)> {
        let (needs, observers) = (plan.needs, plan.observers.clone().unwrap_or_default());
        let mut rewritten = false;
        let mut queue = VecDeque::new();
        let mut pending = wanted.into_iter();
        // A layer that finished while an earlier one is still being written
        // gives its download slot to the next layer: `parallel` download at
        // once, and up to twice that many are fetched ahead of the sink.
        let slots = Arc::new(tokio::sync::Semaphore::new(self.parallel));
        // Extracting ahead replaces the spooled tar only where nothing else
        // reads it on the way.
        let plain = !plan.filtering && plan.stream_rewrite.is_none() && needs == LayerNeeds::TAR;
        let stage = plain
            .then(|| self.sink.stage_area())
            .flatten()
            .map(Arc::new);
        loop {
            while queue.len() < self.parallel * AHEAD {
                let Some(l) = pending.next() else { break };
                let (h, rx) = Handoff::new();
                let h = Arc::new(h);
                let index = l.index;
                let delivery = Delivery::Files {
                    needs,
                    handoff: Some(h.clone()),
                    observers: observers.clone(),
                    rewrite: plan.stream_rewrite.clone(),
                    stage: stage.clone(),
                };
                let task =
                    spawn_gated_fetch(self.source, l, self.ctx, delivery, Some(slots.clone()));
                queue.push_back((index, task, h, rx));
            }
            let Some((index, task, handoff, rx)) = queue.pop_front() else {
                return Ok((chain, rewritten));
            };
            self.cancel.check()?;
            handoff.set_next();
            let info = deliver_in_turn(self.sink, task, rx, self.reaper).await?;
            if plan.stream_rewrite.is_some() {
                if let Some(slot) = image.layers.get_mut(info.index)
                    && info.diff_id != slot.diff_id
                {
                    rewritten = true;
                    *slot = info;
                }
            } else if plan.filtering {
                chain = chain.layer(Layer::files(info, None, None)).await?.0;
            }
            tracing::debug!(
                "layer {index} handed to the sink at {:.3}s",
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    /// Fetches layers as `delivery` says (verified files, or through the
    /// sink's per-layer work), runs them through the filters and gives them
    /// to the sink (in order when it or a filter asks). Returns
    /// the chain, whether a layer was rewritten and how many the sink
    /// skipped after the filters.
    async fn as_files(
        &mut self,
        wanted: Vec<LayerInfo>,
        plan: &Plan,
        delivery: Delivery,
        mut chain: FilterChain,
        image: &mut Image,
    ) -> Result<(FilterChain, bool, usize)> {
        let (source, ctx) = (self.source, self.ctx);
        let tasks = futures_util::stream::iter(wanted).map(move |l| {
            let info = l.clone();
            let task = spawn_fetch(source, l, ctx, delivery.clone());
            async move { (info, task.await.map_err(join_error).and_then(|r| r)) }
        });
        // Spawned fetches progress on their own while the sink writes; `buffered`
        // keeps manifest order, `buffer_unordered` hands over whatever is ready.
        let mut stream: Pin<Box<dyn futures_util::Stream<Item = _> + Send + '_>> = if plan.ordered {
            Box::pin(tasks.buffered(self.parallel))
        } else {
            Box::pin(tasks.buffer_unordered(self.parallel))
        };
        let (mut rewritten, mut skipped) = (false, 0);
        while let Some((info, fetched)) = stream.next().await {
            self.cancel.check()?;
            let mut layer = match fetched {
                Ok(layer) => layer,
                Err(e) => {
                    self.sink.layer_failed(&info, e).await?;
                    continue;
                }
            };
            if plan.filtering {
                let (c, out) = chain.layer(layer).await?;
                chain = c;
                layer = out;
                let slot = &mut image.layers[layer.info.index];
                if layer.info.diff_id != slot.diff_id {
                    rewritten = true;
                    // A rewritten layer exists only as a tar; that is its blob too.
                    layer.blob = layer.tar.clone();
                    if let Some(t) = &layer.tar {
                        layer.info.size = t.len();
                    }
                    layer.info.digest = layer.info.diff_id.clone();
                    layer.info.media_type = crate::image::media_type::OCI_LAYER_TAR.to_string();
                    *slot = layer.info.clone();
                }
                if !plan.sink_needs.blob {
                    layer.blob = None;
                }
                if plan.rewriting && !self.sink.wants_layer(&layer.info).await? {
                    skipped += 1;
                    continue;
                }
            }
            let index = layer.info.index;
            give_layer(self.sink, layer, self.reaper).await?;
            tracing::debug!(
                "layer {index} handed to the sink at {:.3}s",
                self.started.elapsed().as_secs_f64()
            );
        }
        Ok((chain, rewritten, skipped))
    }
}

/// The filters, moved onto a blocking thread for each call since they read
/// and write files.
struct FilterChain {
    filters: Vec<Box<dyn Filter>>,
    ctx: FilterContext,
}

impl FilterChain {
    async fn run(
        mut self,
        image: &Image,
        f: fn(&mut dyn Filter, &Image) -> Result<()>,
    ) -> Result<FilterChain> {
        if self.filters.is_empty() {
            return Ok(self);
        }
        let image = image.clone();
        tokio::task::spawn_blocking(move || {
            for filter in &mut self.filters {
                f(filter.as_mut(), &image)?;
            }
            Ok(self)
        })
        .await
        .map_err(|e| Error::InvalidImage(format!("filter task failed: {e}")))?
    }

    async fn layer(mut self, layer: Layer) -> Result<(FilterChain, Layer)> {
        tokio::task::spawn_blocking(move || {
            let mut layer = layer;
            for filter in &mut self.filters {
                layer = filter.layer(layer, &self.ctx)?;
            }
            Ok((self, layer))
        })
        .await
        .map_err(|e| Error::InvalidImage(format!("filter task failed: {e}")))?
    }
}

/// Puts the layers' current diff_ids into the config. The new config has a
/// new digest, and the source's manifest no longer describes the image.
fn rewrite_config(image: &mut Image) -> Result<()> {
    let mut config = image
        .config_json()
        .map_err(|e| Error::InvalidImage(format!("image config is not JSON: {e}")))?;
    let ids: Vec<serde_json::Value> = image
        .layers
        .iter()
        .map(|l| serde_json::Value::String(l.diff_id.to_string()))
        .collect();
    match config.get_mut("rootfs") {
        Some(rootfs) if rootfs.is_object() => rootfs["diff_ids"] = serde_json::Value::Array(ids),
        _ => return Err(Error::InvalidImage("image config has no rootfs".into())),
    }
    image.config_raw = serde_json::to_vec(&config)
        .map_err(|e| Error::InvalidImage(format!("serialising config: {e}")))?;
    image.config_digest = crate::digest::Digest::sha256_of(&image.config_raw);
    image.manifest = None;
    Ok(())
}

fn describe_image(image: &Image) -> String {
    match (&image.tag, &image.manifest) {
        (Some(t), _) => format!("{}:{}", image.name, t),
        (None, Some(m)) => format!("{}@{}", image.name, m.digest),
        (None, None) => image.name.clone(),
    }
}
