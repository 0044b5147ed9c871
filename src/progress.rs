//! Progress callbacks. The library reports; only the binary draws.

use crate::image::{Image, LayerInfo};

/// Receives progress events from a run. Implementations must be cheap: the
/// byte callbacks run on the data path.
pub trait Reporter: Send + Sync {
    /// The image is resolved; `fetching` are the layers that will be fetched.
    fn begin(&self, _image: &Image, _fetching: &[LayerInfo]) {}
    /// A layer download or read has started.
    fn layer_started(&self, _layer: &LayerInfo) {}
    /// `n` more bytes of layer `index` have arrived.
    fn layer_bytes(&self, _index: usize, _n: u64) {}
    /// Layer `index` is verified and on disk.
    fn layer_done(&self, _index: usize) {}
    /// Layer `index` was not fetched because the sink already has it.
    fn layer_skipped(&self, _layer: &LayerInfo) {}
    /// The run is over (successfully or not).
    fn end(&self) {}
}

/// A reporter that ignores everything.
pub struct Silent;

impl Reporter for Silent {}
