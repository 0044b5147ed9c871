#![warn(missing_docs)]
//! occystrap: move container images between registries, docker-save
//! tarballs, directories and runtimes without a Docker daemon.
//!
//! An image flows `Source -> Filter* -> Sink` through a [`Pipeline`].
//! A source resolves the manifest and config and hands out each layer's
//! blob as a reader; the pipeline verifies every byte on the way (size,
//! digest, diff_id) and decides whether the sink reads a layer live or
//! from a spooled file; a sink says which layers it wants and makes its
//! output visible atomically. Sources are in [`source`], sinks in [`sink`],
//! and [`uri`] builds either from a URI such as `registry://host/app:v1`.
//!
//! Copying the docker-save tarball shipped in `examples/` to a new tarball:
//!
//! ```
//! use occystrap::Pipeline;
//! use occystrap::sink::docker_archive::DockerArchiveSink;
//! use occystrap::source::docker_archive::DockerArchiveSource;
//!
//! # fn main() -> occystrap::Result<()> {
//! let out = tempfile::tempdir().unwrap();
//! let source = DockerArchiveSource::open("examples/hello.tar".as_ref(), None)?;
//! let sink = DockerArchiveSink::new(&out.path().join("copy.tar"))?;
//! let runtime = tokio::runtime::Runtime::new().unwrap();
//! let report = runtime.block_on(Pipeline::new(source, sink).parallel(4).run())?;
//! assert_eq!(report.image, "hello:latest");
//! assert_eq!(report.layers, 2);
//! assert!(out.path().join("copy.tar").exists());
//! # Ok(())
//! # }
//! ```

// Text meant for a terminal goes through `escape::TextOut`, which shows
// control characters from images and registries instead of sending them.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod cancel;
pub mod compress;
pub mod digest;
pub mod engine;
pub mod error;
pub mod escape;
pub mod filter;
pub(crate) mod format;
pub(crate) mod fsutil;
pub(crate) mod gzip;
pub mod image;
pub mod inspect;
pub mod layer;
pub mod layer_cache;
pub mod mirror;
pub mod pipeline;
pub mod progress;
pub mod proxy;
pub mod reference;
pub mod registry;
pub mod rmtree;
pub mod sink;
pub mod source;
pub mod tarfmt;
pub mod uri;
pub mod verify;
pub mod wire;

pub use cancel::CancelToken;
pub use error::{Error, Result};
pub use image::{Image, Layer, LayerInfo};
pub use pipeline::{Pipeline, Report, RunOptions};
pub use reference::Reference;
pub use sink::{AsyncSink, Sink};
pub use source::Source;
