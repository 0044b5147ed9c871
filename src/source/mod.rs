//! Sources: where an image comes from. One file per input format.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::error::{Error, Result};
use crate::image::{FileSlice, Image, IndexInfo, LayerInfo, media_type as mt};
use crate::progress::Reporter;
pub use crate::verify::Prehashed;
use crate::wire::Descriptor;

pub mod dir;
pub mod docker_archive;
pub mod engine;
pub mod oci_layout;
pub mod quay;
pub mod registry;

/// What a source needs from the run it is part of.
#[derive(Clone)]
pub struct FetchContext {
    /// Directory for temp files (removed at the end of the run).
    pub temp_dir: PathBuf,
    /// Progress callbacks.
    pub reporter: Arc<dyn Reporter>,
    /// How many layers the run fetches at once: a source may spread one
    /// layer's work over more threads when that leaves cores idle.
    pub layers_at_once: usize,
}

impl FetchContext {
    /// A context for one layer at a time.
    pub fn new(temp_dir: PathBuf, reporter: Arc<dyn Reporter>) -> Self {
        FetchContext {
            temp_dir,
            reporter,
            layers_at_once: 1,
        }
    }
}

/// One layer's blob as a source hands it out: its bytes as stored, not yet
/// verified. The pipeline reads them through [`crate::verify`], which checks
/// size, digest and diff_id in the same pass.
pub struct LayerBlob {
    /// The descriptor to verify against (see `digest_known`).
    pub info: LayerInfo,
    /// The blob's bytes, start to end.
    pub reader: Box<dyn Read + Send>,
    /// Where the same bytes lie in a local file, if they do: a sink can then
    /// be given the file itself once it is verified, with nothing copied.
    pub in_place: Option<FileSlice>,
    /// False when `info.digest` and `info.media_type` are placeholders that
    /// the bytes decide (a docker-save member is known only by its diff_id).
    pub digest_known: bool,
    /// The blob's digest and size, when the source hashed the bytes itself.
    pub prehashed: Option<Prehashed>,
    /// Names the layer in errors (`layer 2 (sha256:…)`).
    pub label: String,
}

impl LayerBlob {
    /// The same blob read through `wrap` (a tee, a counter).
    pub(crate) fn map_reader(
        mut self,
        wrap: impl FnOnce(Box<dyn Read + Send>) -> Result<Box<dyn Read + Send>>,
    ) -> Result<LayerBlob> {
        self.reader = wrap(self.reader)?;
        Ok(self)
    }

    /// A blob read from `reader`, known by its descriptor.
    pub fn new(info: &LayerInfo, reader: Box<dyn Read + Send>) -> LayerBlob {
        LayerBlob {
            label: format!("layer {} ({})", info.index, info.digest),
            info: info.clone(),
            reader,
            in_place: None,
            digest_known: true,
            prehashed: None,
        }
    }
}

/// An image reader. `resolve` reads the metadata; `fetch` hands out one
/// layer's blob as a reader. Several `fetch` calls run at once; the
/// verification is the reader's (see [`LayerBlob`]).
pub trait Source: Send + Sync {
    /// A short description for messages (`registry 127.0.0.1:5000/app:v1`).
    fn describe(&self) -> String;
    /// Reads manifest and config.
    fn resolve<'a>(&'a self, ctx: &'a FetchContext) -> BoxFuture<'a, Result<Image>>;
    /// Opens one layer's blob. Errors that come up while it is read (a
    /// dropped connection) are errors of the reader.
    fn fetch<'a>(
        &'a self,
        layer: &'a LayerInfo,
        ctx: &'a FetchContext,
    ) -> BoxFuture<'a, Result<LayerBlob>>;
    /// The index the reference names, as it is, without choosing a
    /// platform; `None` when it names a single manifest (the default: a
    /// source without indexes).
    fn index<'a>(&'a self, _ctx: &'a FetchContext) -> BoxFuture<'a, Result<Option<IndexInfo>>> {
        Box::pin(async { Ok(None) })
    }
    /// A source of one child manifest of that index, by its digest, from
    /// the same place (the same repository, the same layout). Sources
    /// without indexes refuse.
    fn child(&self, descriptor: &Descriptor) -> Result<Arc<dyn Source>> {
        Err(Error::Unsupported(format!(
            "{} cannot open manifest {} of an index",
            self.describe(),
            descriptor.digest
        )))
    }
}

/// A child source is of one image: an index inside the index is refused.
pub(crate) fn refuse_nested(descriptor: &Descriptor) -> Result<()> {
    match mt::essence(&descriptor.media_type) {
        mt::OCI_INDEX | mt::DOCKER_MANIFEST_LIST => Err(Error::Unsupported(format!(
            "{} is an index inside the index, which is not supported",
            descriptor.digest
        ))),
        _ => Ok(()),
    }
}
