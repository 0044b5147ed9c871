//! Wires a source to a sink: resolve, ask the sink which layers it wants,
//! fetch those N at a time, hand them over in order, finish.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext};
use crate::handoff::Handoff;
use crate::image::{Image, Layer, LayerInfo, LayerNeeds};
use crate::progress::Reporter;
use crate::sink::Sink;
use crate::source::{FetchContext, Source};

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

type SharedSink = Arc<Mutex<Box<dyn Sink>>>;

/// Runs `f` on the sink on a blocking thread.
async fn with_sink<T: Send + 'static>(
    sink: &SharedSink,
    f: impl FnOnce(&mut dyn Sink) -> Result<T> + Send + 'static,
) -> Result<T> {
    let sink = sink.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = sink
            .lock()
            .map_err(|_| Error::InvalidImage("sink failed earlier".into()))?;
        f(guard.as_mut())
    })
    .await
    .map_err(|e| Error::InvalidImage(format!("sink task failed: {e}")))?
}

/// Hands a layer to the sink. Its temp files are deleted on another thread
/// afterwards (`reaper` collects those tasks), since unlinking a large file
/// takes tens of milliseconds that the sink's next layer is waiting for.
async fn give_layer(
    sink: &SharedSink,
    layer: Layer,
    reaper: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<()> {
    let keep = (layer.tar.clone(), layer.blob.clone());
    let given = with_sink(sink, move |s| s.layer(layer)).await;
    reaper.push(tokio::task::spawn_blocking(move || drop(keep)));
    given
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::InvalidImage(format!("layer task failed: {e}"))
}

/// Gives the sink the layer it is waiting for: as a stream if the layer's
/// writer hands one over, or as files if it finished first.
async fn deliver_in_turn(
    sink: &SharedSink,
    mut task: AbortOnDrop<Result<Layer>>,
    mut rx: tokio::sync::oneshot::Receiver<Layer>,
    reaper: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<()> {
    enum Got {
        Stream(Layer),
        Done(Result<Layer>),
    }
    let got = tokio::select! {
        biased;
        r = &mut rx => match r {
            Ok(l) => Got::Stream(l),
            Err(_) => Got::Done((&mut task).await.map_err(join_error).and_then(|r| r)),
        },
        r = &mut task => Got::Done(r.map_err(join_error).and_then(|r| r)),
    };
    let (sink_result, fetched) = match got {
        Got::Stream(layer) => {
            let (s, t) = tokio::join!(with_sink(sink, move |s| s.layer(layer)), &mut task);
            (s, t.map_err(join_error).and_then(|r| r))
        }
        // A small layer's writer can stream it whole and finish before the
        // stream is picked up.
        Got::Done(fetched) => match rx.try_recv() {
            Ok(layer) => (with_sink(sink, move |s| s.layer(layer)).await, fetched),
            Err(_) => {
                return give_layer(sink, fetched?, reaper).await;
            }
        },
    };
    match (sink_result, fetched) {
        (Ok(()), Ok(_)) => Ok(()),
        // The writer failed only because the sink stopped reading.
        (Err(e), Err(Error::Stream { source, .. }))
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            Err(e)
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
    let started = Instant::now();
    let temp_root = options.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let temp = tempfile::Builder::new()
        .prefix("occystrap-")
        .tempdir_in(&temp_root)
        .map_err(|e| Error::io("creating temp dir in", &temp_root, e))?;
    let mut ctx = FetchContext::new(temp.path().to_path_buf(), options.reporter.clone());
    let mut image = source.resolve(&ctx).await?;
    let sink_needs = sink.needs();
    let filtering = !filters.is_empty();
    // A rewriting filter changes diff_ids, so the sink can only say what it
    // has once a layer has been through the chain.
    let rewriting = filters.iter().any(|f| f.rewrites());
    let needs = if filtering {
        sink_needs.union(LayerNeeds::TAR)
    } else {
        sink_needs
    };
    let ordered = sink.ordered() || filtering;
    let sink_takes_streams = sink.takes_streams();
    let sink: SharedSink = Arc::new(Mutex::new(sink));
    let mut chain = FilterChain {
        filters,
        ctx: FilterContext {
            temp_dir: ctx.temp_dir.clone(),
        },
    };
    chain = chain.run(&image, |f, img| f.begin(img)).await?;

    let meta = image.clone();
    let wanted: Vec<LayerInfo> = with_sink(&sink, move |s| {
        s.begin(&meta)?;
        Ok(meta
            .layers
            .iter()
            .filter(|l| rewriting || s.wants_layer(l))
            .cloned()
            .collect())
    })
    .await?;
    for l in &image.layers {
        if !wanted.iter().any(|w| w.index == l.index) {
            options.reporter.layer_skipped(l);
        }
    }
    options.reporter.begin(&image, &wanted);
    let bytes_fetched = wanted.iter().map(|l| l.size).sum::<u64>();
    let fetched = wanted.len();
    let mut skipped_after_filters = 0;

    let parallel = options.parallel.max(1);
    ctx.layers_at_once = parallel.min(wanted.len()).max(1);
    let mut rewritten = false;
    let mut reaper = Vec::new();
    // Without filters, an ordered sink that reads streams takes each layer
    // as it downloads once the layers below it are in (see `handoff`).
    let streaming = ordered && !filtering && sink_needs == LayerNeeds::TAR && sink_takes_streams;
    let mut receivers = HashMap::new();
    if streaming {
        let mut handoffs = HashMap::new();
        for l in &wanted {
            let (h, rx) = Handoff::new();
            handoffs.insert(l.index, Arc::new(h));
            receivers.insert(l.index, rx);
        }
        ctx.handoffs = Arc::new(handoffs);
    }
    let spawn = |layer: LayerInfo| {
        let source = source.clone();
        let ctx = ctx.clone();
        AbortOnDrop(tokio::spawn(async move {
            source.fetch(&layer, needs, &ctx).await
        }))
    };
    if streaming {
        let mut queue = std::collections::VecDeque::new();
        let mut pending = wanted.into_iter();
        loop {
            while queue.len() < parallel {
                match pending.next() {
                    Some(l) => {
                        let index = l.index;
                        queue.push_back((index, spawn(l)));
                    }
                    None => break,
                }
            }
            let Some((index, task)) = queue.pop_front() else {
                break;
            };
            let rx = receivers.remove(&index).expect("one receiver per layer");
            if let Some(h) = ctx.handoff(index) {
                h.set_next();
            }
            deliver_in_turn(&sink, task, rx, &mut reaper).await?;
            tracing::debug!(
                "layer {index} handed to the sink at {:.3}s",
                started.elapsed().as_secs_f64()
            );
        }
    } else {
        let tasks = futures_util::stream::iter(wanted).map(spawn);
        // Spawned fetches progress on their own while the sink writes; `buffered`
        // keeps manifest order, `buffer_unordered` hands over whatever is ready.
        let mut stream: Pin<Box<dyn futures_util::Stream<Item = _> + Send>> = if ordered {
            Box::pin(tasks.buffered(parallel))
        } else {
            Box::pin(tasks.buffer_unordered(parallel))
        };
        while let Some(joined) = stream.next().await {
            let mut layer = joined.map_err(join_error)??;
            if filtering {
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
                if !sink_needs.blob {
                    layer.blob = None;
                }
                if rewriting {
                    let info = layer.info.clone();
                    if !with_sink(&sink, move |s| Ok(s.wants_layer(&info))).await? {
                        skipped_after_filters += 1;
                        continue;
                    }
                }
            }
            let index = layer.info.index;
            give_layer(&sink, layer, &mut reaper).await?;
            tracing::debug!(
                "layer {index} handed to the sink at {:.3}s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    if rewritten {
        rewrite_config(&mut image)?;
    }
    chain.run(&image, |f, img| f.finish(img)).await?;

    let sink = Arc::try_unwrap(sink)
        .map_err(|_| Error::InvalidImage("sink still in use".into()))?
        .into_inner()
        .map_err(|_| Error::InvalidImage("sink failed earlier".into()))?;
    let meta = image.clone();
    let sink_report = tokio::task::spawn_blocking(move || sink.finish(&meta))
        .await
        .map_err(|e| Error::InvalidImage(format!("sink task failed: {e}")))??;
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
    })
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
