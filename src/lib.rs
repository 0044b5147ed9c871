#![warn(missing_docs)]
//! occystrap: move container images between registries, docker-save
//! tarballs, directories and runtimes without a Docker daemon.
//!
//! An image flows `Source -> Sink` through [`pipeline::run`]. Sources
//! resolve the manifest and config, then fetch verified layers; sinks say
//! which layers they want and write the output atomically.
//!
//! Copying the docker-save tarball shipped in `examples/` to a new tarball:
//!
//! ```
//! use std::sync::Arc;
//! use occystrap::cancel::CancelToken;
//! use occystrap::pipeline::{self, RunOptions};
//! use occystrap::progress::Silent;
//! use occystrap::sink::docker_archive::DockerArchiveSink;
//! use occystrap::source::docker_archive::DockerArchiveSource;
//!
//! # fn main() -> occystrap::Result<()> {
//! let out = tempfile::tempdir().unwrap();
//! let source = DockerArchiveSource::open("examples/hello.tar".as_ref(), None)?;
//! let sink = DockerArchiveSink::new(&out.path().join("copy.tar"))?;
//! let options = RunOptions {
//!     parallel: 4,
//!     temp_dir: None,
//!     reporter: Arc::new(Silent),
//!     cancel: CancelToken::new(),
//! };
//! let runtime = tokio::runtime::Runtime::new().unwrap();
//! let report = runtime.block_on(pipeline::run(Arc::new(source), Box::new(sink), options))?;
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
pub mod digest;
pub mod error;
pub mod escape;
pub mod filter;
pub(crate) mod format;
pub mod fsutil;
pub mod gzip;
pub mod image;
pub mod inspect;
pub mod layer;
pub mod pipeline;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod rmtree;
pub mod sink;
pub mod source;
pub mod tarfmt;
pub mod uri;
pub mod verify;
pub mod wire;

pub use error::{Error, Result};
