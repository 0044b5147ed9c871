//! Sinks: where an image goes. One file per output format.

use crate::error::Result;
use crate::image::{Image, Layer, LayerInfo, LayerNeeds};

pub mod bundle;
pub mod dir;
pub mod docker_archive;
pub mod mounts;
pub mod oci_layout;
pub mod staging;

/// What a sink reports when it has written everything.
#[derive(Clone, Debug, Default)]
pub struct SinkReport {
    /// Where the output went, for the summary line.
    pub output: String,
    /// Bytes the sink wrote.
    pub bytes_written: u64,
    /// Things the user should know (skipped entries, warnings), one line each.
    pub notes: Vec<String>,
}

/// An image writer. The pipeline calls, in order: `needs`, `begin`,
/// `wants_layer` for each layer, `layer` for each wanted layer (in manifest
/// order when `ordered` is true), then `finish` with the final metadata.
/// Dropping a sink without calling `finish` must leave no partial output.
pub trait Sink: Send {
    /// Which forms of each layer this sink reads.
    fn needs(&self) -> LayerNeeds {
        LayerNeeds::TAR
    }
    /// Whether layers must arrive bottom to top.
    fn ordered(&self) -> bool {
        true
    }
    /// Whether `layer` accepts a layer whose tar is still arriving
    /// ([`Layer::stream`] instead of [`Layer::tar`]). Such a sink must read
    /// the stream to its end before it commits anything, since only the end
    /// says that the layer was verified.
    fn takes_streams(&self) -> bool {
        false
    }
    /// Called once with the image's metadata, before any layer.
    fn begin(&mut self, image: &Image) -> Result<()>;
    /// Whether the sink needs this layer's bytes; a store that already has the
    /// layer says no and the layer is never fetched.
    fn wants_layer(&mut self, _layer: &LayerInfo) -> bool {
        true
    }
    /// One verified layer.
    fn layer(&mut self, layer: Layer) -> Result<()>;
    /// Called once after the last layer, with the metadata as filters left it.
    fn finish(self: Box<Self>, image: &Image) -> Result<SinkReport>;
}
