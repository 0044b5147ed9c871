//! occystrap: move container images between registries, docker-save
//! tarballs, directories and runtimes without a Docker daemon.
//!
//! An image flows `Source -> Sink` through [`pipeline::run`]. Sources
//! resolve the manifest and config, then fetch verified layers; sinks say
//! which layers they want and write the output atomically.

// Text meant for a terminal goes through `escape::TextOut`, which shows
// control characters from images and registries instead of sending them.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod cancel;
pub mod digest;
pub mod error;
pub mod escape;
pub mod filter;
pub mod fsutil;
pub mod gzip;
pub mod handoff;
pub mod image;
pub mod inspect;
pub mod layer;
pub mod pipeline;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod sink;
pub mod source;
pub mod uri;

pub use error::{Error, Result};
