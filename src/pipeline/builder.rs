//! [`Pipeline`]: a run put together step by step, for programs that use
//! occystrap as a library.

use std::path::PathBuf;
use std::sync::Arc;

use crate::cancel::CancelToken;
use crate::error::Result;
use crate::filter::Filter;
use crate::pipeline::{Report, RunOptions};
use crate::progress::Reporter;
use crate::sink::{AsyncSink, Blocking, Sink};
use crate::source::Source;

impl Default for RunOptions {
    /// Four layers at once, temp files in the system temp dir, no progress,
    /// a token nobody cancels.
    fn default() -> Self {
        RunOptions {
            parallel: 4,
            temp_dir: None,
            reporter: Arc::new(crate::progress::Silent),
            cancel: CancelToken::new(),
        }
    }
}

/// One image moved from a source, through filters, to a sink.
///
/// ```no_run
/// # async fn demo() -> occystrap::Result<()> {
/// use occystrap::Pipeline;
/// use occystrap::sink::docker_archive::DockerArchiveSink;
/// use occystrap::source::docker_archive::DockerArchiveSource;
///
/// let source = DockerArchiveSource::open("in.tar".as_ref(), None)?;
/// let sink = DockerArchiveSink::new("out.tar".as_ref())?;
/// let report = Pipeline::new(source, sink).parallel(2).run().await?;
/// println!("{} layers", report.layers);
/// # Ok(())
/// # }
/// ```
pub struct Pipeline {
    source: Arc<dyn Source>,
    filters: Vec<Box<dyn Filter>>,
    sink: Box<dyn AsyncSink>,
    options: RunOptions,
}

impl Pipeline {
    /// A run from `source` to a sink that works on blocking threads (files,
    /// trees).
    pub fn new(source: impl Source + 'static, sink: impl Sink + 'static) -> Pipeline {
        Pipeline::from_parts(Arc::new(source), Box::new(sink))
    }

    /// As [`Pipeline::new`], for a source shared with other runs and a sink
    /// chosen at run time (what `uri::open_source` and `uri::open_sink` give).
    pub fn from_parts(source: Arc<dyn Source>, sink: Box<dyn Sink>) -> Pipeline {
        Pipeline::with_async_sink(source, Box::new(Blocking::new(sink)))
    }

    /// A run to a sink that does its work asynchronously (a network writer).
    pub fn with_async_sink(source: Arc<dyn Source>, sink: Box<dyn AsyncSink>) -> Pipeline {
        Pipeline {
            source,
            filters: Vec::new(),
            sink,
            options: RunOptions::default(),
        }
    }

    /// Adds a filter after those already added; layers go through them in
    /// order.
    pub fn filter(mut self, filter: Box<dyn Filter>) -> Pipeline {
        self.filters.push(filter);
        self
    }

    /// How many layers are fetched at once (at least one).
    pub fn parallel(mut self, layers: usize) -> Pipeline {
        self.options.parallel = layers.max(1);
        self
    }

    /// Where the run's temp files go.
    pub fn temp_dir(mut self, dir: impl Into<PathBuf>) -> Pipeline {
        self.options.temp_dir = Some(dir.into());
        self
    }

    /// Who hears of the run's progress.
    pub fn reporter(mut self, reporter: Arc<dyn Reporter>) -> Pipeline {
        self.options.reporter = reporter;
        self
    }

    /// The token that stops the run once cancelled. Give sinks that take
    /// one (extracting sinks, stores) the same token.
    pub fn cancel(mut self, token: CancelToken) -> Pipeline {
        self.options.cancel = token;
        self
    }

    /// All the options at once.
    pub fn options(mut self, options: RunOptions) -> Pipeline {
        self.options = options;
        self
    }

    /// Runs it.
    pub async fn run(self) -> Result<Report> {
        super::run_async(self.source, self.filters, self.sink, self.options).await
    }
}
