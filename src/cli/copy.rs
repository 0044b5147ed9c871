//! `process --all-platforms` / `--platforms LIST` into a `registry://`
//! destination: every selected child of the source's index is copied as an
//! image of its own, pushed by digest only, and the index goes up by the
//! destination's tag last, once every child is in. A reader of the tag
//! therefore never sees an index whose children are missing.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};

use occystrap::digest::Digest;
use occystrap::filter::Filter;
use occystrap::pipeline::index::{IndexCopy, IndexOnce, IndexOutcome, copy_index_parallel};
use occystrap::pipeline::{self, RunOptions};
use occystrap::reference::Reference;
use occystrap::registry::Repository;
use occystrap::source::{FetchContext, Source};
use occystrap::uri::{self, AnySink, PushSettings, Settings, Uri};
use occystrap::wire::Descriptor;
use occystrap::wire::index_plan::{Selection, plan_children, rebuild};

use super::{Global, progress, summary};

/// The run's filters, built anew from the command line: each child gets
/// instances of its own (a filter keeps state across one image).
fn build_filters(args: &[String]) -> occystrap::Result<Vec<Box<dyn Filter>>> {
    args.iter()
        .map(|f| occystrap::filter::FilterSpec::parse(f).and_then(|s| occystrap::filter::build(&s)))
        .collect()
}

/// Copies the index `src` names into the registry `dst` as `selection`
/// asks. `None`: `src` names a single image and the selection takes all of
/// it, so the caller copies it as one image.
pub(super) async fn process_index(
    global: &Global,
    settings: &Settings,
    src: &Uri,
    dst: &Uri,
    filter_args: &[String],
    selection: &Selection,
) -> Result<Option<i32>> {
    let specs = filter_args
        .iter()
        .map(|f| occystrap::filter::FilterSpec::parse(f))
        .collect::<occystrap::Result<Vec<_>>>()?;
    let filters = build_filters(filter_args)?;
    let (source, parallel) = super::engine_push::open_source(src, settings)?;
    let mut push = global.push_settings(src, settings, &filters)?;
    // Shared by every child: one file, saved after each child's manifest.
    push.layer_cache = super::layer_cache(global, settings, dst, &specs, &filters)?;
    drop(filters);
    let source: Arc<dyn Source> = Arc::new(IndexOnce::new(source));
    let (reference, repo) = dest_repository(dst, settings, &push)?;
    let child_push = PushSettings {
        by_digest: true,
        ..push.clone()
    };
    let temp_root = global.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let temp = tempfile::Builder::new()
        .prefix("occystrap-")
        .tempdir_in(&temp_root)
        .with_context(|| format!("creating a temp dir in {}", temp_root.display()))?;
    let ctx = FetchContext::new(
        temp.path().to_path_buf(),
        Arc::new(occystrap::progress::Silent),
    );
    let output = format!("{}/{}", reference.host, reference.path);
    // An exact copy's index is known now: a destination that names another
    // digest is refused before anything is pushed, and one whose tag holds
    // it already is up to date (as for one image, the tag is compared
    // first: one HEAD instead of one per child).
    let predicted = predict(&source, &ctx, selection, &push, dst)
        .await
        .map_err(|e| about(&source, e))?;
    if let Some((digest, children)) = &predicted {
        if let Some(want) = &reference.digest
            && want != digest
        {
            bail!(
                "{}: the index to push is {digest}, not the {want} the destination names",
                source.describe()
            );
        }
        let target = index_target(&reference, digest);
        if repo.manifest_digest(&target).await? == Some(digest.clone()) {
            let mut err = occystrap::escape::TextOut::new(std::io::stderr().lock());
            let _ = writeln!(
                err,
                "{} -> {} (up to date): index of {}",
                source.describe(),
                index_output(&output, &target, digest),
                manifests(*children)
            );
            return Ok(Some(0));
        }
    }
    let job = Child {
        global,
        settings,
        dst,
        push: &child_push,
        filter_args,
        parallel,
        repo: &repo,
        output,
    };
    let images = usize::from(global.image_parallel.unwrap_or(1));
    let outcome = copy_index_parallel(source.clone(), &ctx, selection, images, |s, d| {
        let job = &job;
        async move { job.run(s, d).await }
    })
    .await
    .map_err(|e| about(&source, e))?;
    let copy = match outcome {
        IndexOutcome::NotAnIndex => return Ok(None),
        IndexOutcome::Copied(c) => c,
    };
    let target = push_index(global, &repo, &reference, &copy, &job.output)
        .await
        .map_err(|e| about(&source, e))?;
    let mut err = occystrap::escape::TextOut::new(std::io::stderr().lock());
    let to = index_output(&job.output, &target, &copy.digest);
    let _ = writeln!(err, "{}", index_summary(&source.describe(), &to, &copy));
    for skipped in &copy.skipped {
        let _ = writeln!(
            err,
            "note: attestation {} not copied: the image it attests changed",
            skipped.digest
        );
    }
    Ok(Some(0))
}

/// `e`, prefixed with the source unless its message names it already.
fn about(source: &Arc<dyn Source>, e: impl Into<anyhow::Error>) -> anyhow::Error {
    let e = e.into();
    let describe = source.describe();
    if e.to_string().contains(&describe) {
        e
    } else {
        e.context(describe)
    }
}

/// The destination's reference and repository, with the destination's
/// credentials (`--dest-username`), as `uri::open_any_sink` picks them.
fn dest_repository(
    dst: &Uri,
    settings: &Settings,
    push: &PushSettings,
) -> occystrap::Result<(Reference, Repository)> {
    let mut settings = settings.clone();
    if push.credentials.is_some() {
        settings.credentials = push.credentials.clone();
    }
    uri::registry_repository(dst, &settings)
}

/// The index an exact copy will push, known before any child runs:
/// unfiltered children keep their digests, so it follows from the source's
/// index and the selection alone. `None` for a copy that rewrites (its
/// index is known only at the end) and for a source without an index.
async fn predict(
    source: &Arc<dyn Source>,
    ctx: &FetchContext,
    selection: &Selection,
    push: &PushSettings,
    dst: &Uri,
) -> occystrap::Result<Option<(Digest, usize)>> {
    if !push.exact || dst.get("format").is_some() {
        return Ok(None);
    }
    let Some(index) = source.index(ctx).await? else {
        return Ok(None);
    };
    let kept: Vec<(Descriptor, Descriptor)> = plan_children(&index.raw, selection)?
        .into_iter()
        .map(|c| (c.descriptor.clone(), c.descriptor))
        .collect();
    let digest = match rebuild(&index.raw, &index.media_type, &kept)? {
        None => index.digest,
        Some(new) => Digest::sha256_of(&new.raw),
    };
    Ok(Some((digest, kept.len())))
}

/// Where the index goes: the destination's tag, else its digest.
fn index_target(reference: &Reference, digest: &Digest) -> String {
    match &reference.tag {
        Some(tag) => tag.clone(),
        None => digest.to_string(),
    }
}

/// `HOST/REPO:TAG@DIGEST`, or `HOST/REPO@DIGEST` when pushed by digest.
fn index_output(output: &str, target: &str, digest: &Digest) -> String {
    if target == digest.to_string() {
        format!("{output}@{target}")
    } else {
        format!("{output}:{target}@{digest}")
    }
}

/// PUTs the index by the destination's tag (or, for a destination given by
/// digest alone, by that digest, which must be the index's); returns the
/// tag or digest it went to.
async fn push_index(
    global: &Global,
    repo: &Repository,
    reference: &Reference,
    copy: &IndexCopy,
    output: &str,
) -> Result<String> {
    if let Some(want) = &reference.digest
        && want != &copy.digest
    {
        bail!(
            "the index to push is {}, not the {want} the destination names{}",
            copy.digest,
            if copy.unchanged {
                ""
            } else {
                " (its children or platforms changed)"
            }
        );
    }
    let target = index_target(reference, &copy.digest);
    repo.put_manifest(&target, &copy.media_type, copy.raw.clone())
        .await?;
    if global.verify {
        let theirs = repo.manifest_digest(&target).await?;
        if theirs.as_ref() != Some(&copy.digest) {
            bail!(
                "verify: the index at {output}{}{target} is {}, not the {} pushed",
                if target.contains(':') { '@' } else { ':' },
                theirs.map_or("missing".to_string(), |d| d.to_string()),
                copy.digest
            );
        }
    }
    Ok(target)
}

/// `SRC -> HOST/REPO:TAG@DIGEST: index of 3 manifests (...)`.
fn index_summary(source: &str, to: &str, copy: &IndexCopy) -> String {
    format!(
        "{source} -> {to}: index of {} ({})",
        manifests(copy.children.len()),
        if copy.unchanged {
            "the source's index, digest kept"
        } else {
            "a new index"
        }
    )
}

/// `linux/arm/v7: ` for a child the index gives a platform, else nothing.
fn platform(desc: &Descriptor) -> String {
    let Some(p) = &desc.platform else {
        return String::new();
    };
    match p.variant.as_deref().filter(|v| !v.is_empty()) {
        Some(v) => format!("{}/{}/{v}: ", p.os, p.architecture),
        None => format!("{}/{}: ", p.os, p.architecture),
    }
}

/// `1 manifest`, `3 manifests`.
fn manifests(n: usize) -> String {
    format!("{n} manifest{}", if n == 1 { "" } else { "s" })
}

/// What every child's run shares.
struct Child<'a> {
    global: &'a Global,
    settings: &'a Settings,
    dst: &'a Uri,
    push: &'a PushSettings,
    filter_args: &'a [String],
    parallel: usize,
    repo: &'a Repository,
    output: String,
}

impl Child<'_> {
    /// Copies one child: a pipeline into a sink that pushes by digest.
    /// An unfiltered child the destination already has is not even
    /// resolved (its digest is in the index).
    async fn run(
        &self,
        source: Arc<dyn Source>,
        desc: Descriptor,
    ) -> occystrap::Result<Descriptor> {
        let err = || occystrap::escape::TextOut::new(std::io::stderr().lock());
        // A forced manifest format rewrites even an exact child.
        if self.push.exact
            && self.dst.get("format").is_none()
            && self.repo.manifest_digest(&desc.digest.to_string()).await?
                == Some(desc.digest.clone())
        {
            let _ = writeln!(
                err(),
                "{}{} -> {}@{}: up to date",
                platform(&desc),
                source.describe(),
                self.output,
                desc.digest
            );
            return Ok(desc);
        }
        // Asked just now: the sink need not HEAD the same digest again.
        let push = PushSettings {
            exact: false,
            ..self.push.clone()
        };
        let filters = build_filters(self.filter_args)?;
        let AnySink::Async(sink) = uri::open_any_sink(self.dst, self.settings, &push)? else {
            return Err(occystrap::Error::Usage(
                "an index can only be copied to a registry:// destination".into(),
            ));
        };
        let reporter = Arc::new(progress::Bars::new());
        let options = RunOptions {
            parallel: self.parallel,
            temp_dir: self.global.temp_dir.clone(),
            reporter: reporter.clone(),
            cancel: self.settings.cancel.clone(),
        };
        let report = pipeline::run_async(source.clone(), filters, sink, options).await;
        reporter.clear();
        let report = report?;
        let mut out = err();
        let _ = writeln!(out, "{}{}", platform(&desc), summary(&report));
        for note in &report.notes {
            let _ = writeln!(out, "note: {note}");
        }
        report.pushed.ok_or_else(|| {
            occystrap::Error::InvalidImage(format!(
                "the push of {} reported no manifest",
                desc.digest
            ))
        })
    }
}
