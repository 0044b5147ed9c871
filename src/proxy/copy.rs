//! Copying an image, or an index and its children, into the downstream
//! registry through the proxy's filters: what both the push path and the
//! pull path end with. The manifest (for an index: the index) goes last,
//! once everything it names is in.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::pipeline::index::{IndexOutcome, copy_index_parallel};
use crate::pipeline::{self, RunOptions};
use crate::reference::Reference;
use crate::sink::registry::RegistrySink;
use crate::source::{FetchContext, Source};
use crate::wire::Descriptor;
use crate::wire::index_plan::Selection;

use super::Proxy;

/// Where a copy's manifest goes downstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Tagged.
    Tag(String),
    /// By its own digest only (an index's child, a push by digest).
    Digest,
}

/// Copies the single image `source` resolves to into the client's
/// repository `name` downstream, through a fresh instance of the filter
/// chain; returns the descriptor of the manifest stored there.
/// `mount_from` lists downstream repositories to mount blobs from before
/// uploading them.
pub async fn copy_image(
    proxy: &Proxy,
    source: Arc<dyn Source>,
    name: &str,
    target: &Target,
    mount_from: Vec<String>,
) -> Result<Descriptor> {
    let config = &proxy.config;
    let filters = config.build_filters()?;
    let exact = !filters.iter().any(|f| f.rewrites());
    let repo = config.downstream.repo(name);
    let reference = Reference {
        host: config.downstream.client.host().to_string(),
        path: repo.name().to_string(),
        tag: match target {
            Target::Tag(t) => Some(t.clone()),
            Target::Digest => None,
        },
        digest: None,
    };
    let mut options = config.sink.clone();
    options.exact = exact;
    options.by_digest = *target == Target::Digest;
    options.mount_from = mount_from;
    if options.temp_dir.is_none() {
        options.temp_dir = Some(proxy.staging.temp_dir());
    }
    let sink = Box::new(RegistrySink::new(repo, reference, options));
    let run = RunOptions {
        parallel: config.parallel.max(1),
        temp_dir: Some(proxy.staging.temp_dir()),
        reporter: Arc::new(crate::progress::Silent),
        cancel: config.cancel.clone(),
    };
    let report = pipeline::run_async(source, filters, sink, run).await?;
    report.pushed.ok_or_else(|| {
        Error::InvalidImage(format!(
            "the push to {} reported no manifest",
            report.output
        ))
    })
}

/// What [`copy_any`] stored downstream.
#[derive(Debug)]
pub struct Copied {
    /// The manifest or index stored (by the tag, when there is one).
    pub descriptor: Descriptor,
    /// For an index: each child's descriptor in the source and downstream.
    pub children: Vec<(Descriptor, Descriptor)>,
}

/// Copies what `source` names, an image or an index (the children
/// `selection` takes, each by digest, then the index), into `name`
/// downstream; `mapped` answers for a child already stored (the push path
/// pushed it on its own PUT) so that it is not copied again.
pub async fn copy_any(
    proxy: &Proxy,
    source: Arc<dyn Source>,
    name: &str,
    target: &Target,
    selection: &Selection,
    mount_from: Vec<String>,
    mapped: &(dyn Fn(&Descriptor) -> Option<Descriptor> + Sync),
) -> Result<Copied> {
    let ctx = FetchContext::new(proxy.staging.temp_dir(), Arc::new(crate::progress::Silent));
    let images = proxy.config.parallel.clamp(1, 4);
    let outcome = copy_index_parallel(source.clone(), &ctx, selection, images, |child, desc| {
        let mount_from = mount_from.clone();
        async move {
            if let Some(done) = mapped(&desc) {
                return Ok(done);
            }
            copy_image(proxy, child, name, &Target::Digest, mount_from).await
        }
    })
    .await?;
    let copy = match outcome {
        IndexOutcome::NotAnIndex => {
            let descriptor = copy_image(proxy, source, name, target, mount_from).await?;
            return Ok(Copied {
                descriptor,
                children: Vec::new(),
            });
        }
        IndexOutcome::Copied(c) => c,
    };
    let repo = proxy.config.downstream.repo(name);
    let to = match target {
        Target::Tag(t) => t.clone(),
        Target::Digest => copy.digest.to_string(),
    };
    repo.put_manifest(&to, &copy.media_type, copy.raw.clone())
        .await?;
    Ok(Copied {
        descriptor: Descriptor {
            media_type: copy.media_type.clone(),
            digest: copy.digest.clone(),
            size: copy.raw.len() as u64,
            platform: None,
            urls: None,
        },
        children: copy.children,
    })
}
