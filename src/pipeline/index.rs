//! Copying an index: each selected child manifest as an image of its own,
//! then the index, for the caller to push by tag last, so that a reader
//! never sees an index whose children are missing.
//!
//! The driver knows nothing of where the children go: the caller's closure
//! runs one child (a pipeline into a sink that pushes by digest) and says
//! what it pushed. Children run one at a time (or `-J` at once), in
//! index order with attestations last; `-j` still fetches each child's layers in parallel.
//! An attestation is not run when the image it attests got a new digest
//! (it speaks of other bytes; see [`crate::wire::index_plan`]).

use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;

use crate::digest::Digest;
use crate::error::{Error, Result};
use futures_util::future::BoxFuture;

use crate::image::{Image, IndexInfo, LayerInfo};
use crate::source::{FetchContext, LayerBlob, Source};
use crate::wire::Descriptor;
use crate::wire::index_plan::{ChildKind, Selection, plan_children, rebuild};

/// What [`copy_index`] did.
#[derive(Debug)]
pub enum IndexOutcome {
    /// The source names a single manifest, and the selection is
    /// [`Selection::All`]: nothing was run; copy it as one image.
    NotAnIndex,
    /// Every selected child was copied; the index is left to push.
    Copied(IndexCopy),
}

/// The index to push after its children, and what was copied.
#[derive(Debug)]
pub struct IndexCopy {
    /// The index's bytes: the source's own when `unchanged`, else rebuilt.
    pub raw: Vec<u8>,
    /// Its media type (the `Content-Type` to push it with).
    pub media_type: String,
    /// The digest of `raw`.
    pub digest: Digest,
    /// Whether `raw` is the source's index byte for byte.
    pub unchanged: bool,
    /// Each child copied: its descriptor in the source's index and the one
    /// pushed, in the order they ran.
    pub children: Vec<(Descriptor, Descriptor)>,
    /// Attestations not copied because the image they attest changed.
    pub skipped: Vec<Descriptor>,
}

/// Copies the children of the index `source` names that `selection` takes,
/// one at a time through `run_child` (given a source of the child and its
/// descriptor; it returns the descriptor of what it pushed), and returns
/// the index to push last. A `Platforms` selection on a single manifest is
/// an error.
pub async fn copy_index<F, Fut>(
    source: Arc<dyn Source>,
    ctx: &FetchContext,
    selection: &Selection,
    run_child: F,
) -> Result<IndexOutcome>
where
    F: FnMut(Arc<dyn Source>, Descriptor) -> Fut,
    Fut: Future<Output = Result<Descriptor>>,
{
    copy_index_parallel(source, ctx, selection, 1, run_child).await
}

/// As [`copy_index`], with up to `images` children running at once
/// (`-J`); they are still recorded, and the index rebuilt, in index order.
/// The first failure stops the rest.
pub async fn copy_index_parallel<F, Fut>(
    source: Arc<dyn Source>,
    ctx: &FetchContext,
    selection: &Selection,
    parallel: usize,
    mut run_child: F,
) -> Result<IndexOutcome>
where
    F: FnMut(Arc<dyn Source>, Descriptor) -> Fut,
    Fut: Future<Output = Result<Descriptor>>,
{
    let Some(index) = source.index(ctx).await? else {
        return match selection {
            Selection::All => Ok(IndexOutcome::NotAnIndex),
            Selection::Platforms(_) => Err(Error::Usage(format!(
                "{} names a single image, not an index to choose platforms from",
                source.describe()
            ))),
        };
    };
    let planned = plan_children(&index.raw, selection)?;
    let mut children: Vec<(Descriptor, Descriptor)> = Vec::with_capacity(planned.len());
    let mut skipped = Vec::new();
    let (images, attestations): (Vec<_>, Vec<_>) = planned
        .into_iter()
        .partition(|c| c.kind != ChildKind::Attestation);
    let mut runs = Vec::with_capacity(images.len());
    for child in &images {
        runs.push((source.child(&child.descriptor)?, child.descriptor.clone()));
    }
    // The futures are made first (they are lazy) rather than in a `map`
    // over the stream: a closure in the stream's type makes rustc unable to
    // prove a caller's future `Send` (the proxy spawns this).
    let runs: Vec<Fut> = runs.into_iter().map(|(s, d)| run_child(s, d)).collect();
    let mut pushed = futures_util::stream::iter(runs).buffered(parallel.max(1));
    for child in images {
        let Some(done) = pushed.next().await else {
            break;
        };
        children.push((child.descriptor, done?));
    }
    drop(pushed);
    for child in attestations {
        let changed = children.iter().any(|(old, new)| {
            child.attests.as_ref() == Some(&old.digest) && old.digest != new.digest
        });
        if changed {
            skipped.push(child.descriptor);
            continue;
        }
        let pushed = run_child(source.child(&child.descriptor)?, child.descriptor.clone()).await?;
        children.push((child.descriptor, pushed));
    }
    let copy = match rebuild(&index.raw, &index.media_type, &children)? {
        None => IndexCopy {
            raw: index.raw,
            media_type: index.media_type,
            digest: index.digest,
            unchanged: true,
            children,
            skipped,
        },
        Some(new) => IndexCopy {
            digest: Digest::sha256_of(&new.raw),
            raw: new.raw,
            media_type: new.media_type,
            unchanged: false,
            children,
            skipped,
        },
    };
    Ok(IndexOutcome::Copied(copy))
}

/// A source whose index is read once: a caller that looks at the index
/// before [`copy_index`] does not make it fetched twice.
pub struct IndexOnce {
    inner: Arc<dyn Source>,
    index: std::sync::Mutex<Option<Option<IndexInfo>>>,
}

impl Source for IndexOnce {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn resolve<'a>(&'a self, ctx: &'a FetchContext) -> BoxFuture<'a, Result<Image>> {
        self.inner.resolve(ctx)
    }

    fn fetch<'a>(
        &'a self,
        layer: &'a LayerInfo,
        ctx: &'a FetchContext,
    ) -> BoxFuture<'a, Result<LayerBlob>> {
        self.inner.fetch(layer, ctx)
    }

    fn index<'a>(&'a self, ctx: &'a FetchContext) -> BoxFuture<'a, Result<Option<IndexInfo>>> {
        Box::pin(async move {
            let cached = self.index.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(index) = cached {
                return Ok(index);
            }
            let index = self.inner.index(ctx).await?;
            *self.index.lock().unwrap_or_else(|p| p.into_inner()) = Some(index.clone());
            Ok(index)
        })
    }

    fn child(&self, descriptor: &Descriptor) -> Result<Arc<dyn Source>> {
        self.inner.child(descriptor)
    }
}

impl IndexOnce {
    /// `inner`, its index not read yet.
    pub fn new(inner: Arc<dyn Source>) -> Self {
        IndexOnce {
            inner,
            index: std::sync::Mutex::new(None),
        }
    }
}
