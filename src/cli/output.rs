//! The read-only commands (`search`, `info`, `check`): running them and
//! rendering their results as text or JSON on stdout.
//!
//! Everything shown comes from the image and is hostile: text goes out
//! through [`TextOut`], which escapes control characters (one `writeln!`
//! is one line, whatever its values hold), and JSON through
//! [`occystrap::escape`]'s serde_json writers.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow};
use serde_json::json;

use occystrap::escape::{self, TextOut};
use occystrap::image::Image;
use occystrap::inspect::check::CheckReport;
use occystrap::inspect::info::ImageInfo;
use occystrap::inspect::search::{LayerMatches, Pattern, script_line};
use occystrap::inspect::{EntryKind, plural};
use occystrap::pipeline::RunOptions;
use occystrap::progress::Silent;
use occystrap::uri::{Settings, Uri};

use super::progress::{self, human_bytes};
use super::{Global, OutputFormat};

/// How `search` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchStyle {
    /// Headers, one aligned line per match, counts.
    Text,
    /// `image:tag:layer-digest:path` lines only.
    Script,
    /// One JSON object per match, one per line.
    Json,
}

impl SearchStyle {
    /// `--script-friendly` wins over `-O json`, which wins over text.
    pub fn pick(script_friendly: bool, format: OutputFormat) -> SearchStyle {
        match (script_friendly, format) {
            (true, _) => SearchStyle::Script,
            (false, OutputFormat::Json) => SearchStyle::Json,
            (false, OutputFormat::Text) => SearchStyle::Text,
        }
    }
}

fn out_err(e: std::io::Error) -> occystrap::Error {
    occystrap::Error::stream("writing to stdout", e)
}

/// `occystrap search SOURCE PATTERN`.
pub async fn search(
    global: &Global,
    settings: &Settings,
    src: &Uri,
    pattern: &str,
    regex: bool,
    style: SearchStyle,
) -> Result<i32> {
    let pattern = Arc::new(Pattern::new(pattern, regex)?);
    let (source, parallel) = super::engine_push::open_source(src, settings)?;
    let options = RunOptions {
        parallel,
        temp_dir: global.temp_dir.clone(),
        reporter: Arc::new(Silent),
        cancel: settings.cancel.clone(),
    };
    let stdout = std::io::stdout();
    let mut first = true;
    let summary =
        occystrap::inspect::search::search(source.clone(), pattern, options, move |image, lm| {
            let mut out = TextOut::new(stdout.lock());
            if first && style == SearchStyle::Text {
                writeln!(
                    out,
                    "{} ({})",
                    display_name(image),
                    plural(image.layers.len() as u64, "layer")
                )
                .map_err(out_err)?;
            }
            first = false;
            write_layer_matches(&mut out, image, lm, style).map_err(out_err)?;
            // Flush per layer, so a pipe sees results as layers finish.
            out.flush().map_err(out_err)
        })
        .await
        .with_context(|| source.describe())?;
    let stdout = std::io::stdout();
    if style == SearchStyle::Text {
        let mut out = TextOut::new(stdout.lock());
        // Every layer went through the callback, which wrote the header.
        if summary.image.layers.is_empty() {
            writeln!(out, "{} (no layers)", display_name(&summary.image))?;
        }
        writeln!(
            out,
            "{} in {} of {} ({} entries searched)",
            plural(summary.matches, "match"),
            summary.layers_with_matches,
            plural(summary.image.layers.len() as u64, "layer"),
            summary.entries
        )?;
        out.flush()?;
    }
    Ok(0)
}

fn display_name(image: &Image) -> String {
    match (&image.tag, &image.manifest) {
        (Some(t), _) => format!("{}:{t}", image.name),
        (None, Some(m)) => format!("{}@{}", image.name, m.digest),
        (None, None) => image.name.clone(),
    }
}

fn write_layer_matches(
    out: &mut TextOut<impl Write>,
    image: &Image,
    lm: &LayerMatches,
    style: SearchStyle,
) -> std::io::Result<()> {
    let l = &lm.layer;
    match style {
        SearchStyle::Script => {
            for m in &lm.matches {
                writeln!(out, "{}", script_line(image, l, m))?;
            }
        }
        SearchStyle::Json => {
            for m in &lm.matches {
                let line = json!({
                    "image": image.name,
                    "tag": image.tag,
                    "layer_index": l.index,
                    "layer_digest": l.digest,
                    "path": m.path,
                    "member": m.member,
                    "type": m.kind,
                    "size": m.size,
                    "link_target": m.link_target,
                    "whiteout": m.whiteout,
                });
                writeln!(out, "{}", escape::to_string(&line)?)?;
            }
        }
        SearchStyle::Text => {
            writeln!(
                out,
                "Layer {} {} ({}, {})",
                l.index,
                l.digest,
                l.media_type,
                human_bytes(l.size)
            )?;
            for m in &lm.matches {
                let size = if m.whiteout {
                    "-".to_string()
                } else {
                    m.size.to_string()
                };
                let mut line = format!("  {:<9} {:>12}  {}", m.kind.name(), size, m.path);
                match (m.kind, &m.link_target) {
                    (EntryKind::Symlink, Some(t)) => line.push_str(&format!(" -> {t}")),
                    (EntryKind::Hardlink, Some(t)) => line.push_str(&format!(" => {t}")),
                    (EntryKind::Whiteout, _) => {
                        line.push_str(&format!("  (deleted by {})", m.member))
                    }
                    (EntryKind::Opaque, _) => line.push_str(&format!(
                        "  (opaque: lower layers' content hidden by {})",
                        m.member
                    )),
                    _ => {}
                }
                writeln!(out, "{line}")?;
            }
            let n = lm.matches.len() as u64;
            writeln!(
                out,
                "  {} in {}",
                plural(n, "match"),
                plural(lm.entries, "entry")
            )?;
        }
    }
    Ok(())
}

/// `occystrap info SOURCE`.
pub async fn info(global: &Global, settings: &Settings, src: &Uri) -> Result<i32> {
    let (source, _) = super::engine_push::open_source(src, settings)?;
    let options = RunOptions {
        parallel: 1,
        temp_dir: global.temp_dir.clone(),
        reporter: Arc::new(Silent),
        cancel: settings.cancel.clone(),
    };
    let info = occystrap::inspect::info::info(source.clone(), options)
        .await
        .with_context(|| source.describe())?;
    let mut out = std::io::stdout().lock();
    match global.output_format {
        OutputFormat::Json => {
            escape::to_writer_pretty(&mut out, &info)?;
            writeln!(out)?;
        }
        OutputFormat::Text => write_info(&mut TextOut::new(&mut out), &info)?,
    }
    out.flush()?;
    Ok(0)
}

/// `KEY:` padded so values line up.
fn field(out: &mut impl Write, key: &str, value: impl std::fmt::Display) -> std::io::Result<()> {
    writeln!(out, "{:<14}{value}", format!("{key}:"))
}

fn write_info(out: &mut TextOut<impl Write>, i: &ImageInfo) -> std::io::Result<()> {
    write_summary(out, i)?;
    write_platforms(out, i)?;
    write_layers(out, i)?;
    write_history(out, i)?;
    write_runtime(out, i)
}

/// The `KEY: value` lines at the top.
fn write_summary(out: &mut TextOut<impl Write>, i: &ImageInfo) -> std::io::Result<()> {
    field(out, "Image", &i.reference)?;
    field(out, "Source", &i.source)?;
    if let Some(m) = &i.manifest {
        let schema = m.schema_version.map_or("?".to_string(), |v| v.to_string());
        field(
            out,
            "Manifest",
            format!(
                "{} ({}, schema {schema}, {} bytes)",
                m.digest, m.media_type, m.size
            ),
        )?;
    }
    if let Some(x) = &i.index {
        field(out, "Index", format!("{} ({})", x.digest, x.media_type))?;
    }
    field(out, "Platform", i.platform.name())?;
    field(out, "Created", i.created.as_deref().unwrap_or("-"))?;
    if let Some(a) = &i.author {
        field(out, "Author", a)?;
    }
    field(
        out,
        "Config",
        format!(
            "{} ({}, {} bytes)",
            i.config.digest, i.config.media_type, i.config.size
        ),
    )?;
    field(
        out,
        "Size",
        format!(
            "{} in {} (as stored)",
            human_bytes(i.total_size),
            plural(i.layers.len() as u64, "layer")
        ),
    )?;

    Ok(())
}

/// The platforms of the index the image was chosen from.
fn write_platforms(out: &mut TextOut<impl Write>, i: &ImageInfo) -> std::io::Result<()> {
    if let Some(x) = &i.index {
        writeln!(out)?;
        match (&x.platforms, &x.platforms_error) {
            (Some(p), _) => {
                writeln!(out, "Platforms in the index ({}):", p.len())?;
                let width = p.iter().map(|e| e.platform().len()).max().unwrap_or(0);
                for e in p {
                    writeln!(
                        out,
                        "  {} {:<width$}  {}  {}",
                        if e.selected { "*" } else { " " },
                        e.platform(),
                        e.digest,
                        e.media_type
                    )?;
                }
            }
            (None, Some(err)) => writeln!(out, "Platforms in the index: unavailable ({err})")?,
            (None, None) => {}
        }
    }

    Ok(())
}

/// One entry per layer: digest, size, media type, diff_id, created_by.
fn write_layers(out: &mut TextOut<impl Write>, i: &ImageInfo) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(out, "Layers ({}):", i.layers.len())?;
    let size_width = i
        .layers
        .iter()
        .map(|l| human_bytes(l.size).len())
        .max()
        .unwrap_or(0);
    let index_width = i.layers.len().saturating_sub(1).to_string().len();
    for l in &i.layers {
        writeln!(
            out,
            "  [{:>index_width$}] {}  {:>size_width$}  {}",
            l.index,
            l.digest,
            human_bytes(l.size),
            l.media_type
        )?;
        let pad = " ".repeat(index_width + 5);
        writeln!(out, "{pad}diff_id     {}", l.diff_id)?;
        if let Some(c) = &l.created_by {
            writeln!(out, "{pad}created_by  {c}")?;
        }
    }

    Ok(())
}

/// The history, each entry tagged with the layer it made (`-` for none).
fn write_history(out: &mut TextOut<impl Write>, i: &ImageInfo) -> std::io::Result<()> {
    let index_width = i.layers.len().saturating_sub(1).to_string().len();
    writeln!(out)?;
    let empty = i.history.iter().filter(|h| h.empty_layer).count();
    writeln!(
        out,
        "History ({}, {empty} without a layer):",
        plural(i.history.len() as u64, "entry")
    )?;
    let mut layer = 0usize;
    let created_width = i
        .history
        .iter()
        .map(|h| h.created.as_deref().map_or(1, str::len))
        .max()
        .unwrap_or(0);
    for h in &i.history {
        let tag = if h.empty_layer {
            "-".to_string()
        } else {
            layer += 1;
            (layer - 1).to_string()
        };
        writeln!(
            out,
            "  [{tag:>index_width$}] {:<created_width$}  {}",
            h.created.as_deref().unwrap_or("-"),
            h.created_by.as_deref().unwrap_or(""),
        )?;
    }

    Ok(())
}

/// The config's `config` section.
fn write_runtime(out: &mut TextOut<impl Write>, i: &ImageInfo) -> std::io::Result<()> {
    let r = &i.runtime;
    writeln!(out)?;
    writeln!(out, "Container config:")?;
    let list = |v: &Option<Vec<String>>| match v {
        Some(v) => escape::to_string(v).unwrap_or_default(),
        None => "-".into(),
    };
    let sub = |out: &mut dyn Write, k: &str, v: &str| writeln!(out, "  {:<14}{v}", format!("{k}:"));
    if r.env.is_empty() {
        sub(out, "Env", "-")?;
    }
    for (n, e) in r.env.iter().enumerate() {
        sub(out, if n == 0 { "Env" } else { "" }, e)?;
    }
    sub(out, "Entrypoint", &list(&r.entrypoint))?;
    sub(out, "Cmd", &list(&r.cmd))?;
    sub(out, "WorkingDir", r.working_dir.as_deref().unwrap_or("-"))?;
    sub(out, "User", r.user.as_deref().unwrap_or("-"))?;
    sub(out, "ExposedPorts", &join_or_dash(&r.exposed_ports))?;
    sub(out, "Volumes", &join_or_dash(&r.volumes))?;
    if let Some(s) = &r.stop_signal {
        sub(out, "StopSignal", s)?;
    }
    if r.labels.is_empty() {
        sub(out, "Labels", "-")?;
    }
    for (n, (k, v)) in r.labels.iter().enumerate() {
        let v = v
            .as_str()
            .map_or_else(|| escape::to_string(v).unwrap_or_default(), str::to_string);
        sub(out, if n == 0 { "Labels" } else { "" }, &format!("{k}={v}"))?;
    }
    Ok(())
}

fn join_or_dash(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

/// `occystrap check SOURCE [--fast]`. Exit 1 (through an error line) when
/// anything of severity error was found.
pub async fn check(global: &Global, settings: &Settings, src: &Uri, fast: bool) -> Result<i32> {
    let report = match super::engine_push::open_source(src, settings) {
        Ok((source, parallel)) => {
            let bars = Arc::new(progress::Bars::new());
            let options = RunOptions {
                parallel,
                temp_dir: global.temp_dir.clone(),
                reporter: bars.clone(),
                cancel: settings.cancel.clone(),
            };
            let report = occystrap::inspect::check::check(source, fast, options).await;
            bars.clear();
            report
        }
        Err(e) if e.is_usage() => return Err(e.into()),
        Err(e) => CheckReport::unreadable(src_display(src), fast, &e),
    };
    let mut out = std::io::stdout().lock();
    match global.output_format {
        OutputFormat::Json => {
            escape::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        }
        OutputFormat::Text => write_check(&mut TextOut::new(&mut out), &report)?,
    }
    out.flush()?;
    if report.ok {
        Ok(0)
    } else {
        Err(anyhow!(
            "check found {} in {}",
            plural(report.summary.errors as u64, "error"),
            report.image.as_deref().unwrap_or(&report.source)
        ))
    }
}

fn src_display(src: &Uri) -> String {
    format!("{}://{}", src.scheme, src.path)
}

fn write_check(out: &mut TextOut<impl Write>, r: &CheckReport) -> std::io::Result<()> {
    writeln!(
        out,
        "Checking {} ({} check{})",
        r.image.as_deref().unwrap_or(&r.source),
        r.mode,
        if r.mode == "fast" {
            ": manifest and config only"
        } else {
            ""
        }
    )?;
    let mut sorted: Vec<_> = r.findings.iter().collect();
    sorted.sort_by_key(|f| f.severity);
    for f in sorted {
        let layer = f.layer.map_or(String::new(), |l| format!("layer {l}"));
        writeln!(
            out,
            "  {:<8} {:<9} {:<18} {}",
            f.severity.name(),
            layer,
            f.check,
            f.message
        )?;
    }
    let verdict = if r.ok { "OK" } else { "FAILED" };
    let mut layers = plural(r.layers as u64, "layer");
    if r.mode == "full" {
        layers.push_str(&format!(", {} checked", r.layers_checked));
    }
    writeln!(
        out,
        "{verdict}: {}, {}, {} info ({layers})",
        plural(r.summary.errors as u64, "error"),
        plural(r.summary.warnings as u64, "warning"),
        r.summary.info
    )?;
    Ok(())
}
