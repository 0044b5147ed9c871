//! `check`: is an image well formed? `--fast` looks at the manifest and
//! config only; the full check also fetches every layer (the source verifies
//! blob digest and diff_id), walks its tar and looks at each entry.
//!
//! Problems are findings, not failures: a layer that does not verify is
//! reported and the other layers are still checked. The check is a
//! `CheckSink` run by the pipeline; it takes a layer that fails to fetch or
//! verify (`Sink::layer_failed`) as a finding for that layer instead of the
//! end of the run. The source is wrapped in `Tolerant`, which records how
//! far resolving got, so that a failed run is reported by its stage.
//!
//! `report.rs` is the report model, `meta.rs` the metadata rules, `tar.rs`
//! the per-layer rules.

mod meta;
mod report;
mod tar;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;

pub use meta::check_metadata;
pub use report::{CheckReport, Counts, Finding, Severity};

use crate::error::{Error, Mismatch, Result};
use crate::image::{Image, Layer, LayerInfo, LayerNeeds};
use crate::inspect::{Slot, fill, run_sink};
use crate::pipeline::RunOptions;
use crate::sink::{Sink, SinkReport};
use crate::source::{FetchContext, LayerBlob, Source};

/// Checks the image `source` holds. Never fails: what goes wrong (even
/// resolving the image) is a finding.
pub async fn check(source: Arc<dyn Source>, fast: bool, options: RunOptions) -> CheckReport {
    let described = source.describe();
    let tolerant = Arc::new(Tolerant::new(source));
    let slot = Slot::default();
    let sink = CheckSink {
        report: CheckReport::new(described.clone(), fast),
        declared: false,
        by_layer: BTreeMap::new(),
        slot: slot.clone(),
    };
    let run = run_sink(tolerant.clone(), Box::new(sink), &slot, options).await;
    match run {
        Ok(report) => report,
        Err(e) if !tolerant.resolving.load(Ordering::Acquire) => {
            // The run's temp dir could not be made: nothing was read.
            CheckReport::unreadable(described, fast, &e)
        }
        Err(e) => {
            let mut report = CheckReport::new(described, fast);
            let (check, message) = if tolerant.declared.get().is_none() {
                (
                    "resolve",
                    format!("manifest and config do not resolve: {e}"),
                )
            } else {
                ("check", format!("the check did not complete: {e}"))
            };
            report
                .findings
                .push(Finding::new(Severity::Error, check, message));
            report.finish();
            report
        }
    }
}

/// The finding for a layer the source could not fetch or verify, by the
/// kind of verification that failed.
fn fetch_finding(info: &LayerInfo, e: &Error) -> Finding {
    let what = match e {
        Error::DigestMismatch {
            kind: Mismatch::DiffId,
            ..
        } => "diff_id does not match",
        Error::DigestMismatch { .. } => "blob digest does not match",
        Error::SizeMismatch { .. } => "blob size does not match",
        _ => "cannot be fetched",
    };
    Finding::new(
        Severity::Error,
        "layer-verify",
        format!("layer {} ({}) {what}: {e}", info.index, info.digest),
    )
    .layer(info.index)
}

/// The source, watched: how far resolving got, and whether the image has
/// a manifest, for the report of a run that fails.
struct Tolerant {
    inner: Arc<dyn Source>,
    /// Set once `resolve` started: a failure before is the run's own.
    resolving: AtomicBool,
    /// Whether the resolved image has a manifest (set once resolved).
    declared: OnceLock<bool>,
}

impl Tolerant {
    fn new(inner: Arc<dyn Source>) -> Tolerant {
        Tolerant {
            inner,
            resolving: AtomicBool::new(false),
            declared: OnceLock::new(),
        }
    }
}

impl Source for Tolerant {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn resolve<'a>(&'a self, ctx: &'a FetchContext) -> BoxFuture<'a, Result<Image>> {
        Box::pin(async move {
            self.resolving.store(true, Ordering::Release);
            let image = self.inner.resolve(ctx).await?;
            let _ = self.declared.set(image.manifest.is_some());
            Ok(image)
        })
    }

    fn fetch<'a>(
        &'a self,
        layer: &'a LayerInfo,
        ctx: &'a FetchContext,
    ) -> BoxFuture<'a, Result<LayerBlob>> {
        self.inner.fetch(layer, ctx)
    }
}

/// The sink `check` runs: metadata rules at `begin`, the layer rules on
/// each layer in whatever order layers arrive, the report at `finish`.
struct CheckSink {
    report: CheckReport,
    /// Whether the image has a manifest to hold blobs against.
    declared: bool,
    by_layer: BTreeMap<usize, Vec<Finding>>,
    slot: Slot<CheckReport>,
}

impl Sink for CheckSink {
    fn needs(&self) -> LayerNeeds {
        // The blob is held against a manifest's media types; without one
        // there is nothing to hold it against.
        LayerNeeds {
            tar: true,
            blob: self.declared,
        }
    }

    fn ordered(&self) -> bool {
        false
    }

    fn begin(&mut self, image: &Image) -> Result<()> {
        self.report.image = Some(match (&image.tag, &image.manifest) {
            (Some(t), _) => format!("{}:{t}", image.name),
            (None, Some(m)) => format!("{}@{}", image.name, m.digest),
            (None, None) => image.name.clone(),
        });
        self.report.layers = image.layers.len();
        self.report.findings.extend(check_metadata(image));
        self.declared = image.manifest.is_some();
        Ok(())
    }

    fn wants_layer(&mut self, _layer: &LayerInfo) -> bool {
        self.report.mode == "full"
    }

    fn layer(&mut self, layer: Layer) -> Result<()> {
        self.report.layers_checked += 1;
        let blob_head = match (&layer.blob, self.declared) {
            (Some(blob), true) => Some(blob.open().and_then(tar::sniff)),
            _ => None,
        };
        let found = tar::layer_findings(&layer.info, blob_head, layer.tar_reader());
        self.by_layer.insert(layer.info.index, found);
        Ok(())
    }

    fn layer_failed(&mut self, layer: &LayerInfo, error: Error) -> Result<()> {
        if matches!(error, Error::Interrupted) {
            return Err(error);
        }
        self.by_layer
            .insert(layer.index, vec![fetch_finding(layer, &error)]);
        Ok(())
    }

    fn finish(self: Box<Self>, _image: &Image) -> Result<SinkReport> {
        let CheckSink {
            mut report,
            by_layer,
            slot,
            ..
        } = *self;
        report.findings.extend(by_layer.into_values().flatten());
        report.finish();
        fill(&slot, report);
        Ok(SinkReport::default())
    }
}

#[cfg(test)]
mod tests;
