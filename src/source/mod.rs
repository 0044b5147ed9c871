//! Sources: where an image comes from. One file per input format.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::error::Result;
use crate::handoff::Handoff;
use crate::image::{Image, Layer, LayerInfo, LayerNeeds};
use crate::progress::Reporter;

pub mod dir;
pub mod docker_archive;
pub mod oci_layout;
pub mod registry;

/// What a source needs from the run it is part of.
#[derive(Clone)]
pub struct FetchContext {
    /// Directory for verified temp files (removed at the end of the run).
    pub temp_dir: PathBuf,
    /// Progress callbacks.
    pub reporter: Arc<dyn Reporter>,
    /// Layers an ordered sink may take as streams, by layer index.
    pub handoffs: Arc<HashMap<usize, Arc<Handoff>>>,
    /// How many layers the run fetches at once: a source may spread one
    /// layer's work over more threads when that leaves cores idle.
    pub layers_at_once: usize,
}

impl FetchContext {
    /// A context with no streaming handoffs.
    pub fn new(temp_dir: PathBuf, reporter: Arc<dyn Reporter>) -> Self {
        FetchContext {
            temp_dir,
            reporter,
            handoffs: Arc::default(),
            layers_at_once: 1,
        }
    }

    /// The handoff for layer `index`, when it may be streamed.
    pub fn handoff(&self, index: usize) -> Option<Arc<Handoff>> {
        self.handoffs.get(&index).cloned()
    }
}

/// An image reader. `resolve` reads the metadata; `fetch` produces one layer
/// in the forms asked for, verified against its digest and diff_id. Several
/// `fetch` calls run at once.
pub trait Source: Send + Sync {
    /// A short description for messages (`registry 127.0.0.1:5000/app:v1`).
    fn describe(&self) -> String;
    /// Reads manifest and config.
    fn resolve<'a>(&'a self, ctx: &'a FetchContext) -> BoxFuture<'a, Result<Image>>;
    /// Fetches and verifies one layer. The returned `Layer.info` may refine the
    /// descriptor (e.g. a docker-save layer whose blob turned out compressed).
    fn fetch<'a>(
        &'a self,
        layer: &'a LayerInfo,
        needs: LayerNeeds,
        ctx: &'a FetchContext,
    ) -> BoxFuture<'a, Result<Layer>>;
}
