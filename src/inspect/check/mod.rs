//! `check`: is an image well formed? `--fast` looks at the manifest and
//! config only; the full check also fetches every layer (the source verifies
//! blob digest and diff_id), walks its tar and looks at each entry.
//!
//! Problems are findings, not failures: a layer that does not verify is
//! reported and the other layers are still checked. The check is a
//! `CheckSink` run by the pipeline over the source wrapped in
//! `Tolerant`, which turns a layer's fetch failure into a finding for that
//! layer instead of the end of the run.
//!
//! `report.rs` is the report model, `meta.rs` the metadata rules, `tar.rs`
//! the per-layer rules.

mod meta;
mod report;
mod tar;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures_util::future::BoxFuture;

pub use meta::check_metadata;
pub use report::{CheckReport, Counts, Finding, Severity};

use crate::error::{Error, Mismatch, Result};
use crate::image::{Image, Layer, LayerInfo, LayerNeeds};
use crate::inspect::{Slot, fill, run_sink};
use crate::pipeline::RunOptions;
use crate::sink::{Sink, SinkReport};
use crate::source::{FetchContext, Source};

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
        failures: tolerant.failures.clone(),
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

type Failures = Arc<Mutex<HashMap<usize, Finding>>>;

/// A source whose failed layers come back empty (no tar, no blob), their
/// failure kept as a finding, so that the run goes on to the other layers.
/// It asks for the blob only when the image has a manifest whose media
/// types the blob can be held against.
struct Tolerant {
    inner: Arc<dyn Source>,
    /// Set once `resolve` started: a failure before is the run's own.
    resolving: AtomicBool,
    /// Whether the resolved image has a manifest (set once resolved).
    declared: OnceLock<bool>,
    failures: Failures,
}

impl Tolerant {
    fn new(inner: Arc<dyn Source>) -> Tolerant {
        Tolerant {
            inner,
            resolving: AtomicBool::new(false),
            declared: OnceLock::new(),
            failures: Failures::default(),
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
        needs: LayerNeeds,
        ctx: &'a FetchContext,
    ) -> BoxFuture<'a, Result<Layer>> {
        Box::pin(async move {
            let needs = LayerNeeds {
                tar: needs.tar,
                blob: needs.blob && self.declared.get() == Some(&true),
            };
            match self.inner.fetch(layer, needs, ctx).await {
                Ok(l) => Ok(l),
                Err(e) => {
                    if let Ok(mut f) = self.failures.lock() {
                        f.insert(layer.index, fetch_finding(layer, &e));
                    }
                    Ok(Layer::files(layer.clone(), None, None))
                }
            }
        })
    }
}

/// The sink `check` runs: metadata rules at `begin`, the layer rules on
/// each layer in whatever order layers arrive, the report at `finish`.
struct CheckSink {
    report: CheckReport,
    /// Whether the image has a manifest to hold blobs against.
    declared: bool,
    by_layer: BTreeMap<usize, Vec<Finding>>,
    failures: Failures,
    slot: Slot<CheckReport>,
}

impl Sink for CheckSink {
    fn needs(&self) -> LayerNeeds {
        // `Tolerant` drops the blob when there is no manifest.
        LayerNeeds {
            tar: true,
            blob: true,
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
        let index = layer.info.index;
        let failed = self.failures.lock().ok().and_then(|mut f| f.remove(&index));
        let found = match failed {
            Some(f) => vec![f],
            None => {
                self.report.layers_checked += 1;
                let blob_head = match (&layer.blob, self.declared) {
                    (Some(blob), true) => Some(blob.open().and_then(tar::sniff)),
                    _ => None,
                };
                tar::layer_findings(&layer.info, blob_head, layer.tar_reader())
            }
        };
        self.by_layer.insert(index, found);
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
