//! `occystrap mirror`: keeping many repositories of one registry in step
//! with another, from a YAML config.
//!
//! The pieces, in the order a run uses them:
//! - [`config`]: the file, parsed into typed entries and checked whole
//!   (unknown keys, regexes, semver ranges, `{repo}` for globs, two entries
//!   on one destination) before any request, each error naming its line.
//! - [`select`]: which repositories (names, or globs over `/v2/_catalog`)
//!   and which tags (regexes, a semver range, the newest N) an entry takes;
//!   [`select::discover`] asks the source registry.
//! - [`plan`]: the copies to make, one [`plan::Job`] per tag with its
//!   destination mapped (`{repo}`, namespaces), in a stable order; and
//!   [`plan::shard`], which splits them by destination repository so that
//!   N machines each take a disjoint share with no coordinator.

pub mod config;
pub mod plan;
pub mod run;
pub mod select;

pub use config::{Config, Entry, ImageOptions, RegistryRef};
pub use plan::{ImageRef, Job, Shard};
pub use run::{Action, Mirror, MirrorOptions, Observer, Outcome, Side};
pub use select::{Created, Discovered};
