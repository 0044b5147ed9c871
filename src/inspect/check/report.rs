//! The report `check` produces: findings, their severities and counts.

use std::collections::BTreeMap;

use serde::Serialize;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The image is broken or unsafe; `check` exits 1.
    Error,
    /// Worth knowing; some tools may object.
    Warning,
    /// For information.
    Info,
}

impl Severity {
    /// The name used in text output.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One thing `check` found.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// Which check (`schema-version`, `layer-verify`, `whiteout`, ...).
    pub check: &'static str,
    /// The layer, when the finding is about one.
    pub layer: Option<usize>,
    /// The layer entry, when the finding is about one.
    pub path: Option<String>,
    /// What is wrong, in a sentence.
    pub message: String,
}

impl Finding {
    pub(crate) fn new(
        severity: Severity,
        check: &'static str,
        message: impl Into<String>,
    ) -> Finding {
        Finding {
            severity,
            check,
            layer: None,
            path: None,
            message: message.into(),
        }
    }
    pub(crate) fn layer(mut self, index: usize) -> Finding {
        self.layer = Some(index);
        self
    }
    pub(crate) fn path(mut self, path: &str) -> Finding {
        self.path = Some(path.to_string());
        self
    }
}

/// Counts per severity.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    /// Errors.
    pub errors: usize,
    /// Warnings.
    pub warnings: usize,
    /// Informational findings.
    pub info: usize,
}

/// What a check run found.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// The source as messages name it.
    pub source: String,
    /// `name:tag` (or `name@digest`), once the image resolved.
    pub image: Option<String>,
    /// `fast` (metadata only) or `full`.
    pub mode: &'static str,
    /// Layers in the image.
    pub layers: usize,
    /// Layers fetched and walked (full mode).
    pub layers_checked: usize,
    /// Everything found, metadata first, then by layer.
    pub findings: Vec<Finding>,
    /// Findings per severity.
    pub summary: Counts,
    /// True when there is no error.
    pub ok: bool,
}

impl CheckReport {
    pub(crate) fn new(source: String, fast: bool) -> CheckReport {
        CheckReport {
            source,
            image: None,
            mode: if fast { "fast" } else { "full" },
            layers: 0,
            layers_checked: 0,
            findings: Vec::new(),
            summary: Counts::default(),
            ok: true,
        }
    }

    /// A report for a source that could not even be opened.
    pub fn unreadable(source: String, fast: bool, error: &dyn std::fmt::Display) -> CheckReport {
        let mut r = CheckReport::new(source, fast);
        r.findings.push(Finding::new(
            Severity::Error,
            "open",
            format!("cannot read the image: {error}"),
        ));
        r.finish();
        r
    }

    pub(crate) fn finish(&mut self) {
        let mut c = Counts::default();
        for f in &self.findings {
            match f.severity {
                Severity::Error => c.errors += 1,
                Severity::Warning => c.warnings += 1,
                Severity::Info => c.info += 1,
            }
        }
        self.ok = c.errors == 0;
        self.summary = c;
    }
}

/// At most this many findings of one kind per layer; the rest are counted.
pub(crate) const MAX_PER_KIND: usize = 20;

/// Collects one layer's findings, capping each kind.
pub(crate) struct LayerFindings {
    pub(crate) index: usize,
    out: Vec<Finding>,
    counts: BTreeMap<&'static str, usize>,
}

impl LayerFindings {
    /// No findings yet for layer `index`.
    pub(crate) fn new(index: usize) -> LayerFindings {
        LayerFindings {
            index,
            out: Vec::new(),
            counts: BTreeMap::new(),
        }
    }

    /// Adds a finding, unless `MAX_PER_KIND` of its kind are in already.
    pub(crate) fn push(
        &mut self,
        severity: Severity,
        check: &'static str,
        path: &str,
        message: String,
    ) {
        let n = self.counts.entry(check).or_insert(0);
        *n += 1;
        if *n <= MAX_PER_KIND {
            self.out.push(
                Finding::new(severity, check, message)
                    .layer(self.index)
                    .path(path),
            );
        }
    }

    /// The findings, with a count of those of each kind left out.
    pub(crate) fn finish(mut self) -> Vec<Finding> {
        for (check, n) in &self.counts {
            if *n > MAX_PER_KIND {
                let severity = self
                    .out
                    .iter()
                    .find(|f| f.check == *check)
                    .map_or(Severity::Warning, |f| f.severity);
                self.out.push(
                    Finding::new(
                        severity,
                        check,
                        format!(
                            "layer {}: {} more {check} findings not shown",
                            self.index,
                            n - MAX_PER_KIND
                        ),
                    )
                    .layer(self.index),
                );
            }
        }
        self.out
    }
}
