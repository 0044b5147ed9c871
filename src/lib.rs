//! occystrap: move container images between registries, docker-save
//! tarballs, directories and runtimes without a Docker daemon.
//!
//! An image flows `Source -> Sink` through [`pipeline::run`]. Sources
//! resolve the manifest and config, then fetch verified layers; sinks say
//! which layers they want and write the output atomically.

pub mod cancel;
pub mod digest;
pub mod error;
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
pub mod rmtree;
pub mod sink;
pub mod source;
pub mod uri;

pub use error::{Error, Result};
