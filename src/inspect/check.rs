//! `check`: is an image well formed? `--fast` looks at the manifest and
//! config only; the full check also fetches every layer (the source verifies
//! blob digest and diff_id), walks its tar and looks at each entry.
//!
//! Problems are findings, not failures: a layer that does not verify is
//! reported and the other layers are still checked.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Mismatch};
use crate::image::{Compression, Image, Layer, LayerInfo, LayerNeeds, media_type as mt};
use crate::inspect::info::history_of;
use crate::inspect::{
    EntryKind, RunDir, SliceReader, WalkOptions, basename, classify, clean_name, plural,
};
use crate::source::Source;

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
    fn new(severity: Severity, check: &'static str, message: impl Into<String>) -> Finding {
        Finding {
            severity,
            check,
            layer: None,
            path: None,
            message: message.into(),
        }
    }
    fn layer(mut self, index: usize) -> Finding {
        self.layer = Some(index);
        self
    }
    fn path(mut self, path: &str) -> Finding {
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
    fn new(source: String, fast: bool) -> CheckReport {
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

    fn finish(&mut self) {
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

/// Checks the image `source` holds. Never fails: what goes wrong (even
/// resolving the image) is a finding.
pub async fn check(source: Arc<dyn Source>, fast: bool, options: WalkOptions) -> CheckReport {
    let mut report = CheckReport::new(source.describe(), fast);
    let run = match RunDir::new(options.temp_dir.as_ref(), options.reporter.clone()) {
        Ok(r) => r,
        Err(e) => return CheckReport::unreadable(report.source, fast, &e),
    };
    let image = match source.resolve(&run.ctx).await {
        Ok(i) => i,
        Err(e) => {
            report.findings.push(Finding::new(
                Severity::Error,
                "resolve",
                format!("manifest and config do not resolve: {e}"),
            ));
            report.finish();
            return report;
        }
    };
    report.image = Some(match (&image.tag, &image.manifest) {
        (Some(t), _) => format!("{}:{t}", image.name),
        (None, Some(m)) => format!("{}@{}", image.name, m.digest),
        (None, None) => image.name.clone(),
    });
    report.layers = image.layers.len();
    report.findings.extend(check_metadata(&image));
    if !fast {
        options.reporter.begin(&image, &image.layers);
        let declared = image.manifest.is_some();
        let needs = LayerNeeds {
            tar: true,
            blob: declared,
        };
        let mut stream = crate::inspect::walk_layers(
            source,
            image.layers.clone(),
            needs,
            options.parallel,
            run.ctx.clone(),
            move |layer: Layer| Ok(check_layer(&layer, declared)),
        );
        let mut by_layer: BTreeMap<usize, Vec<Finding>> = BTreeMap::new();
        while let Some((info, result)) = stream.next().await {
            let found = match result {
                Ok(f) => {
                    report.layers_checked += 1;
                    f
                }
                Err(e) => vec![fetch_finding(&info, &e)],
            };
            by_layer.insert(info.index, found);
        }
        options.reporter.end();
        report.findings.extend(by_layer.into_values().flatten());
    }
    report.finish();
    report
}

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

const KNOWN_LAYER_TYPES: &[&str] = &[
    mt::DOCKER_LAYER_GZIP,
    mt::OCI_LAYER_TAR,
    mt::OCI_LAYER_GZIP,
    mt::OCI_LAYER_ZSTD,
];

/// Largest layer blob that passes without a warning.
const LARGE_LAYER: u64 = 1 << 30;

/// The `--fast` checks: manifest and config consistency.
pub fn check_metadata(image: &Image) -> Vec<Finding> {
    let mut out = Vec::new();
    let e = |check, msg: String| Finding::new(Severity::Error, check, msg);
    let w = |check, msg: String| Finding::new(Severity::Warning, check, msg);
    let i = |check, msg: String| Finding::new(Severity::Info, check, msg);

    match &image.manifest {
        None => out.push(i(
            "manifest",
            "the source has no registry manifest (a docker-save archive or a layer store); \
             manifest checks skipped"
                .into(),
        )),
        Some(m) => {
            if let Some(crate::image::IndexInfo {
                digest,
                media_type: media,
                ..
            }) = &m.index
            {
                out.push(i(
                    "index",
                    format!(
                        "manifest {} was chosen from index {digest} ({media})",
                        m.digest
                    ),
                ));
            }
            match serde_json::from_slice::<Value>(&m.raw) {
                Err(err) => out.push(e("manifest", format!("manifest is not JSON: {err}"))),
                Ok(doc) => check_manifest(image, &m.media_type, &doc, &mut out),
            }
        }
    }

    let config: Value = match image.config_json() {
        Ok(c) if c.is_object() => c,
        Ok(_) => {
            out.push(e("config", "the image config is not a JSON object".into()));
            return out;
        }
        Err(err) => {
            out.push(e("config", format!("the image config is not JSON: {err}")));
            return out;
        }
    };
    let rootfs_type = config
        .get("rootfs")
        .and_then(|r| r.get("type"))
        .and_then(Value::as_str);
    if rootfs_type != Some("layers") {
        out.push(e(
            "rootfs",
            format!(
                "config rootfs.type is {}, expected \"layers\"",
                rootfs_type.map_or("missing".to_string(), |t| format!("{t:?}"))
            ),
        ));
    }
    let diff_ids = config
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if diff_ids != image.layers.len() {
        out.push(e(
            "layer-count",
            format!(
                "the image has {} but the config has {}",
                plural(image.layers.len() as u64, "layer"),
                plural(diff_ids as u64, "diff_id")
            ),
        ));
    }
    match config.get("history") {
        None | Some(Value::Null) => out.push(i(
            "history",
            "the config has no history (allowed, but `docker history` shows nothing)".into(),
        )),
        Some(Value::Array(_)) => {
            let history = history_of(&config);
            let made = history.iter().filter(|h| !h.empty_layer).count();
            if made != image.layers.len() {
                out.push(e(
                    "history",
                    format!(
                        "the config history has {made} entries that made a layer \
                         (empty_layer not set) but the image has {}",
                        plural(image.layers.len() as u64, "layer")
                    ),
                ));
            }
        }
        Some(_) => out.push(e("history", "config history is not a list".into())),
    }
    for key in ["os", "architecture"] {
        if config
            .get(key)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            out.push(w(
                "platform",
                format!("the config has no {key} (the OCI image spec requires it)"),
            ));
        }
    }
    if config
        .get("config")
        .and_then(|c| c.get("ArgsEscaped"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        out.push(w(
            "args-escaped",
            "config.ArgsEscaped is set: a deprecated, Windows-only Docker field".into(),
        ));
    }
    out
}

fn check_manifest(image: &Image, media_type: &str, doc: &Value, out: &mut Vec<Finding>) {
    let e = |check, msg: String| Finding::new(Severity::Error, check, msg);
    let w = |check, msg: String| Finding::new(Severity::Warning, check, msg);
    let i = |check, msg: String| Finding::new(Severity::Info, check, msg);
    match doc.get("schemaVersion").and_then(Value::as_u64) {
        Some(2) => {}
        Some(v) => out.push(e(
            "schema-version",
            format!("manifest schemaVersion is {v}, expected 2"),
        )),
        None => out.push(e("schema-version", "manifest has no schemaVersion".into())),
    }
    let docker = media_type == mt::DOCKER_MANIFEST;
    match doc.get("mediaType").and_then(Value::as_str) {
        Some(declared) if mt::essence(declared) != media_type => out.push(e(
            "media-type",
            format!("manifest declares mediaType {declared} but was served as {media_type}"),
        )),
        Some(_) => {}
        None if docker => out.push(w(
            "media-type",
            "Docker schema 2 manifest without a mediaType field".into(),
        )),
        None => out.push(i(
            "media-type",
            "manifest has no mediaType field (optional in OCI, but recommended)".into(),
        )),
    }
    out.push(i(
        "media-type",
        if docker {
            format!("manifest uses Docker schema 2 media types ({media_type})")
        } else {
            format!(
                "manifest uses OCI media types ({media_type}); Docker before 1.10 cannot pull it"
            )
        },
    ));

    match doc.get("config") {
        None | Some(Value::Null) => out.push(e(
            "config-descriptor",
            "manifest has no config descriptor".into(),
        )),
        Some(c) => {
            let cmt = c.get("mediaType").and_then(Value::as_str).unwrap_or("");
            let known = [mt::DOCKER_CONFIG, mt::OCI_CONFIG];
            if !known.contains(&mt::essence(cmt)) {
                out.push(w(
                    "config-descriptor",
                    format!(
                        "config media type {} is not an image config type",
                        if cmt.is_empty() { "(missing)" } else { cmt }
                    ),
                ));
            }
            let digest = c.get("digest").and_then(Value::as_str).unwrap_or("");
            if digest != image.config_digest.to_string() {
                out.push(e(
                    "config-descriptor",
                    format!(
                        "config descriptor digest {digest:?} is not the config's digest {}",
                        image.config_digest
                    ),
                ));
            }
            let found = crate::digest::Digest::sha256_of(&image.config_raw);
            if image.config_digest.algorithm() == crate::digest::Algorithm::Sha256
                && found != image.config_digest
            {
                out.push(e(
                    "config-descriptor",
                    format!(
                        "the config blob hashes to {found}, not {}",
                        image.config_digest
                    ),
                ));
            }
            let size = c.get("size").and_then(Value::as_u64);
            if size != Some(image.config_raw.len() as u64) {
                out.push(e(
                    "config-descriptor",
                    format!(
                        "config descriptor size {} is not the config's size {}",
                        size.map_or("(missing)".into(), |s| s.to_string()),
                        image.config_raw.len()
                    ),
                ));
            }
        }
    }

    let declared_layers = doc
        .get("layers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if declared_layers != image.layers.len() {
        out.push(e(
            "layer-count",
            format!(
                "manifest lists {} but the image has {}",
                plural(declared_layers as u64, "layer"),
                image.layers.len()
            ),
        ));
    }
    let mut zstd = 0;
    let mut seen = HashSet::new();
    for l in &image.layers {
        let m = mt::essence(&l.media_type);
        if m == mt::DOCKER_LAYER_FOREIGN || m.contains("nondistributable") {
            out.push(
                w(
                    "layer-media-type",
                    format!(
                        "layer {} is a foreign (non-distributable) layer ({m})",
                        l.index
                    ),
                )
                .layer(l.index),
            );
        } else if !KNOWN_LAYER_TYPES.contains(&m) {
            out.push(
                e(
                    "layer-media-type",
                    format!("layer {} has an unknown media type {m:?}", l.index),
                )
                .layer(l.index),
            );
        } else if docker && m.starts_with("application/vnd.oci.") {
            out.push(
                w(
                    "layer-media-type",
                    format!(
                        "layer {} has an OCI media type ({m}) in a Docker manifest",
                        l.index
                    ),
                )
                .layer(l.index),
            );
        } else if !docker && m.starts_with("application/vnd.docker.") {
            out.push(
                i(
                    "layer-media-type",
                    format!(
                        "layer {} has a Docker media type ({m}) in an OCI manifest",
                        l.index
                    ),
                )
                .layer(l.index),
            );
        }
        if m == mt::OCI_LAYER_ZSTD {
            zstd += 1;
        }
        if l.size == 0 {
            out.push(
                e(
                    "layer-size",
                    format!("layer {} has a size of 0 bytes", l.index),
                )
                .layer(l.index),
            );
        } else if l.size > LARGE_LAYER {
            out.push(
                w(
                    "layer-size",
                    format!(
                        "layer {} is {} bytes compressed (over 1 GiB); pulls may be slow or time out",
                        l.index, l.size
                    ),
                )
                .layer(l.index),
            );
        }
        if !seen.insert(l.digest.clone()) {
            out.push(
                i(
                    "duplicate-layer",
                    format!("layer {} ({}) appears more than once", l.index, l.digest),
                )
                .layer(l.index),
            );
        }
    }
    if zstd > 0 {
        out.push(w(
            "zstd",
            format!(
                "{} zstd-compressed: Docker before 20.10 and containerd before 1.5 cannot pull it",
                if zstd == 1 {
                    "1 layer is".to_string()
                } else {
                    format!("{zstd} layers are")
                }
            ),
        ));
    }
}

/// At most this many findings of one kind per layer; the rest are counted.
const MAX_PER_KIND: usize = 20;

/// Collects one layer's findings, capping each kind.
struct LayerFindings {
    index: usize,
    out: Vec<Finding>,
    counts: BTreeMap<&'static str, usize>,
}

impl LayerFindings {
    fn push(&mut self, severity: Severity, check: &'static str, path: &str, message: String) {
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

    fn finish(mut self) -> Vec<Finding> {
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

/// Full-check findings for one fetched (so already verified) layer:
/// compression against the declared media type, tar well-formedness,
/// whiteouts, and suspicious entries.
fn check_layer(layer: &Layer, declared: bool) -> Vec<Finding> {
    let info = &layer.info;
    let mut f = LayerFindings {
        index: info.index,
        out: Vec::new(),
        counts: BTreeMap::new(),
    };
    if declared && let Some(blob) = &layer.blob {
        match sniff(blob) {
            Ok(actual) => {
                let named = crate::inspect::info::compression_of(&info.media_type);
                let actual_name = match actual {
                    Compression::None => "none",
                    Compression::Gzip => "gzip",
                    Compression::Zstd => "zstd",
                };
                if named != "unknown" && named != actual_name {
                    f.push(
                        Severity::Error,
                        "compression",
                        "",
                        format!(
                            "layer {} is declared {} ({}) but the blob is {actual_name}",
                            info.index, named, info.media_type
                        ),
                    );
                }
            }
            Err(e) => f.push(
                Severity::Error,
                "compression",
                "",
                format!("layer {}: cannot read the blob: {e}", info.index),
            ),
        }
    }
    match &layer.tar {
        Some(tar) => check_tar(tar, &mut f),
        None => f.push(
            Severity::Error,
            "tar",
            "",
            format!("layer {}: the source gave no tar", info.index),
        ),
    }
    let mut out = f.finish();
    // Drop the empty paths of layer-wide findings.
    for x in &mut out {
        if x.path.as_deref() == Some("") {
            x.path = None;
        }
    }
    out
}

fn sniff(blob: &crate::image::FileSlice) -> std::io::Result<Compression> {
    use std::io::Read;
    let mut head = [0u8; 4];
    let mut r = blob.open()?;
    let mut got = 0;
    while got < head.len() {
        let n = r.read(&mut head[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(Compression::sniff(&head[..got]))
}

/// Whether a raw tar numeric field holds a negative number (GNU base-256
/// with the sign bit set).
fn negative_field(field: &[u8]) -> bool {
    field.first().is_some_and(|b| *b == 0xff)
}

fn check_tar(tar: &crate::image::FileSlice, f: &mut LayerFindings) {
    let index = f.index;
    let reader = match SliceReader::open(tar) {
        Ok(r) => r,
        Err(e) => {
            f.push(
                Severity::Error,
                "tar",
                "",
                format!("layer {index}: cannot open the tar: {e}"),
            );
            return;
        }
    };
    let len = reader.len();
    // The shared reader: the names the extractor and filters see, and the
    // same refusals of hostile headers.
    let mut archive = crate::tarfmt::Archive::new(crate::tarfmt::Seekable(reader));
    let mut dirs = NameSet::default();
    let mut count = 0u64;
    let mut bytes = 0u64;
    let mut whiteouts = 0u64;
    let mut end = 0u64;
    loop {
        let entry = match archive.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => {
                f.push(
                    Severity::Error,
                    "tar",
                    "",
                    format!("layer {index} is not a valid tar after {count} entries: {e}"),
                );
                return;
            }
        };
        let etype = tar::EntryType::new(entry.kind());
        count += 1;
        end = end.max(entry.data_offset.saturating_add(entry.data_size));
        let raw = entry.path().to_vec();
        let name = clean_name(&raw);
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let (kind, path) = classify(etype, &name);
        if kind == EntryKind::File {
            bytes += entry.resolved.size;
        }

        if raw.split(|b| *b == b'/').any(|c| c == b"..") {
            f.push(
                Severity::Error,
                "path-escape",
                &shown,
                format!("{shown:?} has a `..` component: it would escape the root"),
            );
        } else if raw.starts_with(b"/") {
            f.push(
                Severity::Warning,
                "absolute-path",
                &shown,
                format!("{shown:?} is an absolute path (extractors strip the leading /)"),
            );
        }
        let mode = entry.mode().unwrap_or(0);
        match kind {
            EntryKind::Dir => {
                dirs.insert(&name);
            }
            EntryKind::Char | EntryKind::Block => {
                let (maj, min) = entry.device();
                let (maj, min) = (maj.unwrap_or(0), min.unwrap_or(0));
                f.push(
                    Severity::Warning,
                    "device",
                    &name,
                    format!("{name} is a {} device node ({maj}:{min})", kind.name()),
                );
            }
            EntryKind::Hardlink => {
                let target = entry.link().to_vec();
                let t = String::from_utf8_lossy(&target).into_owned();
                if target.starts_with(b"/") || target.split(|b| *b == b'/').any(|c| c == b"..") {
                    f.push(
                        Severity::Error,
                        "link-escape",
                        &name,
                        format!("{name} is a hard link to {t:?}, outside the layer's root"),
                    );
                } else if target.is_empty() {
                    f.push(
                        Severity::Error,
                        "tar",
                        &name,
                        format!("{name} is a hard link with no target"),
                    );
                }
            }
            EntryKind::Whiteout | EntryKind::Opaque => {
                whiteouts += 1;
                let regular = matches!(etype, tar::EntryType::Regular | tar::EntryType::Continuous);
                if !regular {
                    f.push(
                        Severity::Error,
                        "whiteout",
                        &name,
                        format!(
                            "whiteout {name} is a {}, not an empty regular file",
                            kind_name(etype)
                        ),
                    );
                } else if entry.resolved.size != 0 {
                    f.push(
                        Severity::Warning,
                        "whiteout",
                        &name,
                        format!(
                            "whiteout {name} holds {} bytes; whiteouts are empty files",
                            entry.resolved.size
                        ),
                    );
                }
                if kind == EntryKind::Whiteout && basename(&path).is_empty() {
                    f.push(
                        Severity::Error,
                        "whiteout",
                        &name,
                        format!("whiteout {name} names nothing to delete"),
                    );
                }
                if kind == EntryKind::Opaque && !path.is_empty() && !dirs.contains(&path) {
                    f.push(
                        Severity::Warning,
                        "whiteout",
                        &name,
                        format!(
                            "opaque marker {name} comes without an entry for its directory {path}"
                        ),
                    );
                }
            }
            _ => {}
        }
        if kind != EntryKind::Opaque && name.split('/').any(|c| c.starts_with(".wh..wh.")) {
            f.push(
                Severity::Warning,
                "whiteout",
                &name,
                format!("{name} is AUFS metadata, not a whiteout; runtimes ignore or mishandle it"),
            );
        }
        let special = mode & 0o6000 != 0;
        if special && mode & 0o002 != 0 && !matches!(kind, EntryKind::Symlink | EntryKind::Dir) {
            f.push(
                Severity::Error,
                "permissions",
                &name,
                format!(
                    "{name} is set{} and world-writable (mode {mode:04o})",
                    if mode & 0o4000 != 0 { "uid" } else { "gid" }
                ),
            );
        }
        if negative_field(&entry.block[136..148]) {
            f.push(
                Severity::Warning,
                "mtime",
                &name,
                format!("{name} has a negative modification time"),
            );
        }
    }
    if end > len {
        f.push(
            Severity::Error,
            "tar",
            "",
            format!(
                "layer {index} is truncated: its last member needs {end} bytes, the tar has {len}"
            ),
        );
    }
    f.push(
        Severity::Info,
        "layer",
        "",
        format!(
            "layer {index}: {}, {} of file data, {}",
            plural(count, "entry"),
            plural(bytes, "byte"),
            plural(whiteouts, "whiteout")
        ),
    );
}

fn kind_name(t: tar::EntryType) -> &'static str {
    crate::inspect::kind_of(t).name()
}

/// Names kept as 128-bit keyed hashes, so that remembering every directory
/// of a layer costs the same per directory however long its name is.
#[derive(Default)]
struct NameSet {
    keys: (std::hash::RandomState, std::hash::RandomState),
    seen: HashSet<(u64, u64)>,
}

impl NameSet {
    fn key(&self, name: &str) -> (u64, u64) {
        use std::hash::BuildHasher;
        (self.keys.0.hash_one(name), self.keys.1.hash_one(name))
    }
    fn insert(&mut self, name: &str) {
        let k = self.key(name);
        self.seen.insert(k);
    }
    fn contains(&self, name: &str) -> bool {
        self.seen.contains(&self.key(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::image::{FileSlice, ManifestInfo};

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn entry(b: &mut tar::Builder<Vec<u8>>, t: tar::EntryType, path: &str, mode: u32, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(t);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn run_tar(bytes: &[u8]) -> Vec<Finding> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.tar");
        std::fs::write(&p, bytes).unwrap();
        let mut f = LayerFindings {
            index: 0,
            out: Vec::new(),
            counts: BTreeMap::new(),
        };
        check_tar(
            &FileSlice::range(Arc::new(p), 0, bytes.len() as u64),
            &mut f,
        );
        f.finish()
    }

    fn checks(found: &[Finding], sev: Severity) -> Vec<&'static str> {
        found
            .iter()
            .filter(|f| f.severity == sev)
            .map(|f| f.check)
            .collect()
    }

    #[test]
    fn good_tar_has_only_info() {
        use tar::EntryType as T;
        let bytes = tar_with(|b| {
            entry(b, T::Directory, "etc", 0o755, b"");
            entry(b, T::Regular, "etc/passwd", 0o644, b"root");
            entry(b, T::Regular, "etc/.wh.motd", 0o644, b"");
            entry(b, T::Directory, "etc/apt", 0o755, b"");
            entry(b, T::Regular, "etc/apt/.wh..wh..opq", 0o644, b"");
            entry(b, T::Regular, "usr/bin/sudo", 0o4755, b"x");
        });
        let found = run_tar(&bytes);
        assert!(
            found.iter().all(|f| f.severity == Severity::Info),
            "{found:?}"
        );
        assert!(found[0].message.contains("6 entries"), "{found:?}");
        assert!(found[0].message.contains("2 whiteouts"), "{found:?}");
    }

    #[test]
    fn bad_entries_are_found() {
        use tar::EntryType as T;
        let mut bytes = tar_with(|b| {
            entry(b, T::Regular, "etc/.wh.motd", 0o644, b"not empty");
            entry(b, T::Directory, "etc/.wh.dir", 0o755, b"");
            entry(b, T::Regular, "var/.wh..wh..opq", 0o644, b"");
            entry(b, T::Regular, "bin/evil", 0o4777, b"x");
            entry(b, T::Char, "dev/null", 0o666, b"");
            entry(b, T::Regular, ".wh..wh.plnk/1", 0o644, b"");
        });
        // A `..` name, written past the tar crate's own checks.
        let mut h = tar::Header::new_old();
        h.set_entry_type(T::Regular);
        h.set_size(0);
        h.set_mode(0o644);
        let name = b"../escape";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        let end = bytes.len() - 1024;
        bytes.splice(end..end, h.as_bytes().iter().copied());
        let found = run_tar(&bytes);
        let errors = checks(&found, Severity::Error);
        let warnings = checks(&found, Severity::Warning);
        assert!(errors.contains(&"whiteout"), "{found:?}");
        assert!(errors.contains(&"permissions"), "{found:?}");
        assert!(errors.contains(&"path-escape"), "{found:?}");
        assert!(warnings.contains(&"device"), "{found:?}");
        assert_eq!(
            warnings.iter().filter(|c| **c == "whiteout").count(),
            3,
            "{found:?}"
        );
    }

    #[test]
    fn truncated_and_garbage_tars() {
        use tar::EntryType as T;
        let bytes = tar_with(|b| entry(b, T::Regular, "big", 0o644, &[1u8; 5000]));
        let found = run_tar(&bytes[..2048]);
        assert!(
            checks(&found, Severity::Error).contains(&"tar"),
            "{found:?}"
        );
        let found = run_tar(&[0x55u8; 1024]);
        assert!(
            checks(&found, Severity::Error).contains(&"tar"),
            "{found:?}"
        );
    }

    #[test]
    fn caps_repeated_findings() {
        use tar::EntryType as T;
        let bytes = tar_with(|b| {
            for i in 0..30 {
                entry(b, T::Char, &format!("dev/d{i}"), 0o600, b"");
            }
        });
        let found = run_tar(&bytes);
        let devices = found.iter().filter(|f| f.check == "device").count();
        assert_eq!(devices, MAX_PER_KIND + 1, "{found:?}");
    }

    fn image(config: &str, manifest: &str) -> Image {
        let d = |s: &str| Digest::sha256_of(s.as_bytes());
        Image {
            name: "a".into(),
            tag: Some("v".into()),
            manifest: Some(ManifestInfo {
                digest: d(manifest),
                media_type: mt::OCI_MANIFEST.into(),
                raw: manifest.as_bytes().to_vec(),
                index: None,
            }),
            config_raw: config.as_bytes().to_vec(),
            config_digest: d(config),
            config_media_type: mt::OCI_CONFIG.into(),
            layers: vec![LayerInfo {
                index: 0,
                digest: d("l"),
                size: 10,
                media_type: mt::OCI_LAYER_ZSTD.into(),
                diff_id: d("t"),
            }],
        }
    }

    #[test]
    fn metadata_checks() {
        let config = r#"{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":["x"]},
            "history":[{"created_by":"a"},{"created_by":"b","empty_layer":true}]}"#;
        let cd = Digest::sha256_of(config.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{cd}","size":{}}},"layers":[{{}}]}}"#,
            mt::OCI_MANIFEST,
            mt::OCI_CONFIG,
            config.len()
        );
        let found = check_metadata(&image(config, &manifest));
        assert!(checks(&found, Severity::Error).is_empty(), "{found:?}");
        assert!(checks(&found, Severity::Warning).contains(&"zstd"));

        let bad_config = r#"{"rootfs":{"type":"foo","diff_ids":[]},"history":[{"created_by":"a"},{"created_by":"b"}],
            "config":{"ArgsEscaped":true}}"#;
        let bad_manifest = r#"{"schemaVersion":1,"layers":[]}"#;
        let found = check_metadata(&image(bad_config, bad_manifest));
        let errors = checks(&found, Severity::Error);
        for c in [
            "schema-version",
            "rootfs",
            "layer-count",
            "history",
            "config-descriptor",
        ] {
            assert!(errors.contains(&c), "{c}: {found:?}");
        }
        let warnings = checks(&found, Severity::Warning);
        assert!(warnings.contains(&"platform") && warnings.contains(&"args-escaped"));
    }
}
