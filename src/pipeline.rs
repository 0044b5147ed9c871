//! Wires a source to a sink: resolve, ask the sink which layers it wants,
//! fetch those N at a time, hand them over in order, finish.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::error::{Error, Result};
use crate::image::{Image, LayerInfo};
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
}

/// Aborts a spawned task when dropped, so a failed run stops its downloads.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

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

/// Moves one image from `source` to `sink`.
pub async fn run(
    source: Arc<dyn Source>,
    sink: Box<dyn Sink>,
    options: RunOptions,
) -> Result<Report> {
    let started = Instant::now();
    let temp_root = options.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let temp = tempfile::Builder::new()
        .prefix("occystrap-")
        .tempdir_in(&temp_root)
        .map_err(|e| Error::io("creating temp dir in", &temp_root, e))?;
    let ctx = FetchContext {
        temp_dir: temp.path().to_path_buf(),
        reporter: options.reporter.clone(),
    };
    let image = source.resolve(&ctx).await?;
    let needs = sink.needs();
    let ordered = sink.ordered();
    let sink: SharedSink = Arc::new(Mutex::new(sink));

    let meta = image.clone();
    let wanted: Vec<LayerInfo> = with_sink(&sink, move |s| {
        s.begin(&meta)?;
        Ok(meta
            .layers
            .iter()
            .filter(|l| s.wants_layer(l))
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

    let parallel = options.parallel.max(1);
    let tasks = futures_util::stream::iter(wanted).map(|layer| {
        let source = source.clone();
        let ctx = ctx.clone();
        AbortOnDrop(tokio::spawn(async move {
            source.fetch(&layer, needs, &ctx).await
        }))
    });
    // Spawned fetches progress on their own while the sink writes; `buffered`
    // keeps manifest order, `buffer_unordered` hands over whatever is ready.
    let mut stream: Pin<Box<dyn futures_util::Stream<Item = _> + Send>> = if ordered {
        Box::pin(tasks.buffered(parallel))
    } else {
        Box::pin(tasks.buffer_unordered(parallel))
    };
    while let Some(joined) = stream.next().await {
        let layer =
            joined.map_err(|e| Error::InvalidImage(format!("layer task failed: {e}")))??;
        with_sink(&sink, move |s| s.layer(layer)).await?;
    }
    drop(stream);

    let sink = Arc::try_unwrap(sink)
        .map_err(|_| Error::InvalidImage("sink still in use".into()))?
        .into_inner()
        .map_err(|_| Error::InvalidImage("sink failed earlier".into()))?;
    let meta = image.clone();
    let sink_report = tokio::task::spawn_blocking(move || sink.finish(&meta))
        .await
        .map_err(|e| Error::InvalidImage(format!("sink task failed: {e}")))??;
    options.reporter.end();
    drop(temp);
    Ok(Report {
        image: describe_image(&image),
        layers: image.layers.len(),
        fetched,
        skipped: image.layers.len() - fetched,
        bytes_fetched,
        bytes_written: sink_report.bytes_written,
        output: sink_report.output,
        elapsed: started.elapsed(),
    })
}

fn describe_image(image: &Image) -> String {
    match (&image.tag, &image.manifest) {
        (Some(t), _) => format!("{}:{}", image.name, t),
        (None, Some(m)) => format!("{}@{}", image.name, m.digest),
        (None, None) => image.name.clone(),
    }
}
