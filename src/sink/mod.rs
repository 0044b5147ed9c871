//! Sinks: where an image goes. One file per output format.
//!
//! The smallest sink writes only the image's config: it wants no layer, so
//! none is fetched, and it makes its file appear whole in `finish`.
//!
//! ```
//! use std::path::PathBuf;
//! use occystrap::sink::{Sink, SinkReport};
//! use occystrap::source::docker_archive::DockerArchiveSource;
//! use occystrap::{Error, Image, Layer, LayerInfo, Pipeline, Result};
//!
//! struct ConfigOnly(PathBuf);
//!
//! impl Sink for ConfigOnly {
//!     fn begin(&mut self, _image: &Image) -> Result<()> {
//!         Ok(())
//!     }
//!     fn wants_layer(&mut self, _layer: &LayerInfo) -> bool {
//!         false
//!     }
//!     fn layer(&mut self, _layer: Layer) -> Result<()> {
//!         unreachable!("no layer is wanted")
//!     }
//!     fn finish(self: Box<Self>, image: &Image) -> Result<SinkReport> {
//!         let staged = self.0.with_extension("part");
//!         std::fs::write(&staged, &image.config_raw)
//!             .and_then(|()| std::fs::rename(&staged, &self.0))
//!             .map_err(|e| Error::io("writing", &self.0, e))?;
//!         Ok(SinkReport {
//!             output: self.0.display().to_string(),
//!             bytes_written: image.config_raw.len() as u64,
//!             ..SinkReport::default()
//!         })
//!     }
//! }
//!
//! # fn main() -> Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let out = dir.path().join("config.json");
//! let source = DockerArchiveSource::open("examples/hello.tar".as_ref(), None)?;
//! let run = Pipeline::new(source, ConfigOnly(out.clone())).run();
//! let report = tokio::runtime::Runtime::new().unwrap().block_on(run)?;
//! assert_eq!(report.fetched, 0);
//! assert!(std::fs::read(&out).unwrap().starts_with(b"{"));
//! # Ok(())
//! # }
//! ```

use futures_util::future::BoxFuture;

use crate::error::Result;
use crate::image::{Image, Layer, LayerInfo, LayerNeeds};

pub mod bundle;
pub mod dir;
pub mod docker_archive;
pub mod engine;
pub mod mounts;
pub mod oci_layout;
pub mod registry;
pub mod staging;

/// Per-layer work a sink lets run on several layers at once, each on the
/// thread that verifies the layer, reading its tar as it arrives (see
/// [`Sink::layer_work`]). It gets the image's descriptor of the layer.
pub type LayerWork =
    std::sync::Arc<dyn Fn(&mut dyn std::io::Read, &LayerInfo) -> Result<()> + Send + Sync>;

/// Where a layer's blob goes in a sink's output, as stored: the pipeline
/// writes it there as it downloads (with positioned writes, beside the
/// sink's own), and the layer's blob is then that slice of the output. See
/// [`Sink::blob_regions`].
#[derive(Clone, Debug)]
pub struct BlobRegion {
    /// The output, open for writing.
    pub file: std::sync::Arc<std::fs::File>,
    /// Its path, for the layer's [`crate::image::FileSlice`].
    pub path: std::sync::Arc<std::path::PathBuf>,
    /// Where the blob starts.
    pub offset: u64,
    /// Its size, as the manifest gives it: no byte goes past it.
    pub len: u64,
}

/// What a sink reports when it has written everything.
#[derive(Clone, Debug, Default)]
pub struct SinkReport {
    /// Where the output went, for the summary line.
    pub output: String,
    /// Bytes the sink wrote.
    pub bytes_written: u64,
    /// Things the user should know (skipped entries, warnings), one line each.
    pub notes: Vec<String>,
    /// The manifest a registry sink pushed (digest, size, media type), for a
    /// caller that puts it into an index.
    pub pushed: Option<crate::wire::Descriptor>,
}

/// Where a sink that extracts takes layers extracted ahead (see
/// [`Sink::stage_area`]).
#[derive(Clone, Debug)]
pub struct StageArea {
    /// A directory on the filesystem of the sink's tree, outside the tree,
    /// that outlives every layer staged in it.
    pub dir: std::sync::Arc<crate::layer::StageDir>,
    /// How the sink applies whiteouts.
    pub whiteouts: crate::layer::WhiteoutMode,
    /// The sink keeps the layer's tar too: it comes as [`Layer::tar`]
    /// beside the staged files.
    pub keep_tar: bool,
    /// How the sink's messages name a layer, for what staging reports.
    pub layer_name: fn(&LayerInfo) -> String,
}

/// An image writer that works on blocking threads (files, trees). The
/// pipeline calls, in order: `needs`, `begin`, `wants_layer` for each layer,
/// `layer` for each wanted layer (in manifest order when `ordered` is true),
/// then `finish` with the final metadata. Dropping a sink without calling
/// `finish` must leave no partial output.
///
/// A layer's tar may arrive live ([`Layer::tar_reader`] and
/// [`Layer::copy_tar_to`] serve either form): read it to its end before
/// committing anything, since only the end says it was verified.
pub trait Sink: Send {
    /// Which forms of each layer this sink reads; asked after `begin`.
    fn needs(&self) -> LayerNeeds {
        LayerNeeds::TAR
    }
    /// Whether layers must arrive bottom to top.
    fn ordered(&self) -> bool {
        true
    }
    /// Called once with the image's metadata, before any layer.
    fn begin(&mut self, image: &Image) -> Result<()>;
    /// Whether the sink needs this layer's bytes; a store that already has the
    /// layer says no and the layer is never fetched.
    fn wants_layer(&mut self, _layer: &LayerInfo) -> bool {
        true
    }
    /// Work that reads a layer's tar and may run on several layers at once
    /// (a search). When given, and no filter is in the run, the pipeline runs
    /// it on every wanted layer as it downloads, nothing spooled, and then
    /// calls `layer` with each layer (no tar, no blob; in order when
    /// `ordered`) once its work and its verification have both succeeded.
    fn layer_work(&self) -> Option<LayerWork> {
        None
    }
    /// Whether the layers [`Sink::layer_work`] reads have their diff_ids
    /// checked (default: yes). A sink whose work only reports on the tars,
    /// naming layers by blob digest, may say no: each blob is still checked
    /// by its size and digest, which is what ties it to the manifest, and
    /// one known only by its diff_id is checked in full.
    fn work_checks_diff_ids(&self) -> bool {
        true
    }
    /// Whether a layer a filter rewrites on its way in may reach `layer`
    /// live, before its new diff_id is known: true for a sink that does not
    /// use the layer's diff_id, digest or size in `layer` (only, from the
    /// image, in `finish`). The layer's `info` then still describes the
    /// source's layer. Default false: rewritten layers come as files.
    fn takes_rewritten_live(&self) -> bool {
        false
    }
    /// Whether the sink, reading only the blob (`needs` is
    /// [`LayerNeeds::BLOB`]), passes it on as stored and uses nothing of its
    /// tar: then, with no filter, each blob is verified by its size and
    /// digest only, nothing decompressed and the diff_id not checked (the
    /// output carries the config's diff_ids for its reader to check). A blob
    /// known only by its diff_id (a docker-save member) is still verified in
    /// full. Default false: blobs are verified in full.
    fn blob_only(&self) -> bool {
        false
    }
    /// For a [`Sink::blob_only`] sink, asked once after `begin`: where in
    /// its output each layer's blob may be written as it downloads, by layer
    /// index, so that `layer` need not copy it. A layer without a region
    /// comes as a file as usual. Default: none.
    fn blob_regions(&self) -> std::collections::HashMap<usize, BlobRegion> {
        std::collections::HashMap::new()
    }
    /// For a sink that extracts each layer's tar (with [`staging::apply_layer`]):
    /// where layers that are not yet its turn may be extracted ahead, on
    /// the filesystem of its tree, and with which whiteout handling. Such a
    /// layer then comes with [`Layer::staged`] instead of a tar. Asked after
    /// `begin`. Default: none.
    fn stage_area(&self) -> Option<StageArea> {
        None
    }
    /// One verified layer.
    fn layer(&mut self, layer: Layer) -> Result<()>;
    /// A wanted layer that failed to fetch or verify before it reached the
    /// sink. The run ends with the error unless the sink takes it (`check`
    /// reports it and goes on). A layer fed live fails in the sink's own
    /// reads instead.
    fn layer_failed(&mut self, _layer: &LayerInfo, error: crate::Error) -> Result<()> {
        Err(error)
    }
    /// Called once after the last layer, with the metadata as filters left it.
    fn finish(self: Box<Self>, image: &Image) -> Result<SinkReport>;
}

/// An image writer that does its work asynchronously (a network writer: an
/// upload), so that no thread blocks per layer. The same calls as [`Sink`],
/// as futures; read a layer with [`Layer::into_tar_chunks`] or
/// [`Layer::into_blob_chunks`], whose last item is the verification's
/// verdict (an error wrapping the mismatch) when it fails.
pub trait AsyncSink: Send {
    /// Which forms of each layer this sink reads.
    fn needs(&self) -> LayerNeeds {
        LayerNeeds::TAR
    }
    /// Whether layers must arrive bottom to top.
    fn ordered(&self) -> bool {
        true
    }
    /// Called once with the image's metadata, before any layer.
    fn begin<'a>(&'a mut self, image: &'a Image) -> BoxFuture<'a, Result<()>>;
    /// Whether the sink needs this layer's bytes (an upload target that has
    /// the blob says no).
    fn wants_layer<'a>(&'a mut self, _layer: &'a LayerInfo) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async { Ok(true) })
    }
    /// As [`Sink::layer_work`].
    fn layer_work(&self) -> Option<LayerWork> {
        None
    }
    /// As [`Sink::work_checks_diff_ids`].
    fn work_checks_diff_ids(&self) -> bool {
        true
    }
    /// Asked before fetching each layer when every filter of the run
    /// rewrites: what this layer became in an earlier run under the same
    /// filters, if the sink still has that result (a layer cache entry whose
    /// blob the destination still holds). On `Some(info)` the pipeline
    /// neither fetches nor filters the layer, puts `info` in its place in
    /// the image (its `index` is set to the layer's) and its diff_id into
    /// the config, and never gives the layer to [`layer`](Self::layer);
    /// `finish` sees it in `image.layers`.
    fn known_rewrite<'a>(
        &'a mut self,
        _layer: &'a LayerInfo,
    ) -> BoxFuture<'a, Result<Option<LayerInfo>>> {
        Box::pin(async { Ok(None) })
    }
    /// Whether a layer a filter rewrites on its way in may reach `layer`
    /// live, before its new diff_id is known: true for a sink that does not
    /// use the layer's diff_id, digest or size in `layer` (only, from the
    /// image, in `finish`). The layer's `info` then still describes the
    /// source's layer. Default false: rewritten layers come as files.
    fn takes_rewritten_live(&self) -> bool {
        false
    }
    /// Whether the sink, reading only the blob, takes it live
    /// ([`crate::image::LiveBlob`], from `Layer::take_live_blob`): then,
    /// with no filter, `layer` gets each layer as soon as its download
    /// starts, and the blob is checked by its size and digest only (a copy
    /// does not use the diff_id, so nothing is decompressed). Default
    /// false: blobs come as verified files.
    fn takes_live_blob(&self) -> bool {
        false
    }
    /// As [`Sink::blob_only`], for a sink that takes blobs as files.
    fn blob_only(&self) -> bool {
        false
    }
    /// As [`Sink::blob_regions`].
    fn blob_regions(&self) -> std::collections::HashMap<usize, BlobRegion> {
        std::collections::HashMap::new()
    }
    /// As [`Sink::stage_area`].
    fn stage_area(&self) -> Option<StageArea> {
        None
    }
    /// One layer; its bytes are verified as they are read.
    fn layer(&mut self, layer: Layer) -> BoxFuture<'_, Result<()>>;
    /// As [`Sink::layer_failed`].
    fn layer_failed<'a>(
        &'a mut self,
        _layer: &'a LayerInfo,
        error: crate::Error,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { Err(error) })
    }
    /// Called once after the last layer, with the metadata as filters left it.
    fn finish(self: Box<Self>, image: Image) -> BoxFuture<'static, Result<SinkReport>>;
}

/// A [`Sink`] driven as an [`AsyncSink`]: each call on a blocking thread.
pub(crate) struct Blocking {
    sink: std::sync::Arc<std::sync::Mutex<Box<dyn Sink>>>,
    needs: LayerNeeds,
    ordered: bool,
}

impl Blocking {
    pub(crate) fn new(sink: Box<dyn Sink>) -> Blocking {
        Blocking {
            needs: sink.needs(),
            ordered: sink.ordered(),
            sink: std::sync::Arc::new(std::sync::Mutex::new(sink)),
        }
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Sink) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let sink = self.sink.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = sink
                .lock()
                .map_err(|_| crate::Error::InvalidImage("sink failed earlier".into()))?;
            f(guard.as_mut())
        })
        .await
        .map_err(|e| crate::Error::InvalidImage(format!("sink task failed: {e}")))?
    }
}

impl AsyncSink for Blocking {
    fn needs(&self) -> LayerNeeds {
        // Asked again: a sink's needs may depend on the image it was begun with.
        self.sink.lock().map_or(self.needs, |s| s.needs())
    }
    fn ordered(&self) -> bool {
        self.ordered
    }
    fn begin<'a>(&'a mut self, image: &'a Image) -> BoxFuture<'a, Result<()>> {
        let image = image.clone();
        Box::pin(self.call(move |s| s.begin(&image)))
    }
    fn wants_layer<'a>(&'a mut self, layer: &'a LayerInfo) -> BoxFuture<'a, Result<bool>> {
        let layer = layer.clone();
        Box::pin(self.call(move |s| Ok(s.wants_layer(&layer))))
    }
    fn layer_work(&self) -> Option<LayerWork> {
        self.sink.lock().ok().and_then(|s| s.layer_work())
    }
    fn work_checks_diff_ids(&self) -> bool {
        self.sink.lock().map_or(true, |s| s.work_checks_diff_ids())
    }
    fn takes_rewritten_live(&self) -> bool {
        self.sink.lock().is_ok_and(|s| s.takes_rewritten_live())
    }
    fn blob_only(&self) -> bool {
        self.sink.lock().is_ok_and(|s| s.blob_only())
    }
    fn blob_regions(&self) -> std::collections::HashMap<usize, BlobRegion> {
        self.sink
            .lock()
            .map(|s| s.blob_regions())
            .unwrap_or_default()
    }
    fn stage_area(&self) -> Option<StageArea> {
        self.sink.lock().ok().and_then(|s| s.stage_area())
    }
    fn layer(&mut self, layer: Layer) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.call(move |s| s.layer(layer)))
    }
    fn layer_failed<'a>(
        &'a mut self,
        layer: &'a LayerInfo,
        error: crate::Error,
    ) -> BoxFuture<'a, Result<()>> {
        let layer = layer.clone();
        Box::pin(self.call(move |s| s.layer_failed(&layer, error)))
    }
    fn finish(self: Box<Self>, image: Image) -> BoxFuture<'static, Result<SinkReport>> {
        Box::pin(async move {
            let sink = std::sync::Arc::try_unwrap(self.sink)
                .map_err(|_| crate::Error::InvalidImage("sink still in use".into()))?
                .into_inner()
                .map_err(|_| crate::Error::InvalidImage("sink failed earlier".into()))?;
            tokio::task::spawn_blocking(move || sink.finish(&image))
                .await
                .map_err(|e| crate::Error::InvalidImage(format!("sink task failed: {e}")))?
        })
    }
}
