//! `occystrap mirror CONFIG`: the config read and checked, discovery, the
//! plan and this machine's shard of it, the run, prune, and the report.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{IsTerminal, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, ValueEnum};
use occystrap::mirror::plan::{self, Job, Shard};
use occystrap::mirror::run::{
    Action, ClientFactory, Mirror, MirrorOptions, Observer, Outcome, Side,
};
use occystrap::mirror::select::{self, Discovered};
use occystrap::mirror::{Config, RegistryRef};
use occystrap::registry::Credentials;
use occystrap::uri::{self, Settings, Uri};

use super::{Global, OutputFormat};

/// `mirror`'s own flags.
#[derive(Args, Debug)]
pub struct MirrorArgs {
    /// The YAML config (see the README's `mirror` section).
    config: std::path::PathBuf,
    /// Say what would be copied, skipped and pruned, and why; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Take only shard I of N (1-based), split by destination repository
    /// (default: JOB_COMPLETION_INDEX and JOB_COMPLETIONS when both are set).
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Progress on stderr: a bar on a terminal, else lines (auto); lines;
    /// or one JSON event per line (json).
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
}

impl MirrorArgs {
    /// Whether progress goes to stderr as JSON lines.
    pub fn json_progress(&self) -> bool {
        self.progress == ProgressMode::Json
    }
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal, lines otherwise.
    Auto,
    /// One line per image started and ended.
    Lines,
    /// JSON lines.
    Json,
}

/// Runs `mirror`; the exit code is 1 when any image failed.
pub async fn run(global: &Global, settings: &Settings, args: &MirrorArgs) -> Result<i32> {
    let config = Config::load(&args.config)?;
    let shard = plan::choose_shard(
        args.shard.as_deref(),
        std::env::var("JOB_COMPLETION_INDEX").ok().as_deref(),
        std::env::var("JOB_COMPLETIONS").ok().as_deref(),
    )?;
    let mode = match args.progress {
        ProgressMode::Auto if std::io::stderr().is_terminal() => Display::Bar,
        ProgressMode::Json => Display::Json,
        _ => Display::Lines,
    };
    let started = Instant::now();
    let show = Arc::new(Show::new(mode));
    // The run's own context: the flags' limits, and our ear on its retries.
    let mut settings = settings.clone();
    settings.registry = occystrap::registry::Context::new(occystrap::registry::ContextOptions {
        rate_limit: global
            .rate_limit
            .or_else(|| super::env::number(super::env::ENV_RATE_LIMIT)),
        listener: occystrap::registry::Listening(Some(show.clone())),
        ..Default::default()
    });
    let settings = &settings;
    let options = MirrorOptions {
        images: usize::from(global.image_parallel.unwrap_or(4)),
        blobs: settings.parallel.max(1),
        dry_run: args.dry_run,
        temp_dir: global.temp_dir.clone().unwrap_or_else(std::env::temp_dir),
        cancel: settings.cancel.clone(),
    };
    let mirror = Mirror::new(options, factory(global, settings), show.clone());
    let ticker = show.clone().tick();

    // Discovery, entry by entry; an entry that cannot be listed fails its
    // own images only.
    let mut discovered = Vec::new();
    let mut outcomes = Vec::new();
    let mut catalogs: HashMap<RegistryRef, Vec<String>> = HashMap::new();
    for entry in &config.entries {
        let client = mirror.client(&entry.source, Side::Source)?;
        let wanted = |repo: &str| match (shard, plan::map_destination(entry, repo)) {
            (Some(s), Ok(dest)) => s.takes(&occystrap::mirror::ImageRef {
                registry: entry.destination.clone(),
                repository: dest,
                tag: String::new(),
            }),
            _ => true,
        };
        let created = |repo: String, tag: String| {
            let client = client.clone();
            async move { select::created_of(&client.repo(&repo), &tag).await }
        };
        let catalog = catalogs.get(&entry.source).map(Vec::as_slice);
        match select::discover_some(entry, &client, catalog, wanted, created).await {
            Ok(found) => {
                if let Some(c) = &found.catalog {
                    catalogs.insert(entry.source.clone(), c.clone());
                }
                for (repo, e) in &found.failed {
                    let to = plan::map_destination(entry, repo)
                        .map(|d| format!("{}/{d}", entry.destination.host))
                        .unwrap_or_else(|_| entry.to.clone());
                    let o = failed(
                        format!("{}/{repo}", entry.source.host),
                        to,
                        format!("{}: listing its tags: {e}", entry.describe()),
                    );
                    show.finished(&o);
                    outcomes.push(o);
                }
                discovered.push(found);
            }
            Err(e) if e.is_usage() => return Err(e.into()),
            Err(e) => {
                let o = failed(
                    entry.from.clone(),
                    entry.to.clone(),
                    format!("{}: discovery: {e}", entry.describe()),
                );
                show.finished(&o);
                outcomes.push(o);
            }
        }
    }
    let mut jobs = plan::plan(&config, &discovered)?;
    if let Some(s) = shard {
        jobs = plan::shard(jobs, s);
    }
    show.total(jobs.len());
    let done = mirror.run(&jobs).await;
    let prunes = prune(&mirror, &config, &discovered, &jobs, &done, shard).await;
    outcomes.extend(done);
    outcomes.extend(prunes);
    drop(ticker);
    show.clear();
    report(global, args, shard, &outcomes, started.elapsed())
}

/// One client per registry and side: the source's credentials from
/// `--username`, the destination's from `--dest-username` (else
/// `--username`), else Docker's config.json for that host.
fn factory(global: &Global, settings: &Settings) -> Box<ClientFactory> {
    let settings = settings.clone();
    let dest = global.dest_username.as_ref().map(|u| Credentials {
        username: u.clone(),
        password: global.dest_password.clone().unwrap_or_default(),
    });
    Box::new(move |registry: &RegistryRef, side: Side| {
        let mut s = settings.clone();
        if side == Side::Destination && dest.is_some() {
            s.credentials = dest.clone();
        }
        let probe = Uri {
            scheme: "registry".into(),
            path: format!("{}/occystrap-mirror", registry.host),
            query: if registry.insecure {
                vec![("insecure".into(), "true".into())]
            } else {
                vec![]
            },
        };
        let (_, options) = uri::registry_options(&probe, &s)?;
        occystrap::registry::Client::new(&s.registry, &registry.host, options)
    })
}

/// A failed outcome that is not a job's (a repository that could not be
/// listed).
fn failed(source: String, destination: String, reason: String) -> Outcome {
    Outcome {
        source,
        destination,
        action: Action::Failed,
        reason: Some(reason),
        source_digest: None,
        destination_digest: None,
        bytes: 0,
        seconds: 0.0,
    }
}

/// Prunes the destination repositories of entries with `prune: true` (in
/// this shard): tags the source's selection no longer has. A repository
/// whose listing or any copy failed is left alone, as is any tag whose
/// manifest a kept tag also names (a registry deletes by digest).
async fn prune(
    mirror: &Mirror,
    config: &Config,
    discovered: &[Discovered],
    jobs: &[Job],
    done: &[Outcome],
    shard: Option<Shard>,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    for found in discovered {
        let entry = &config.entries[found.entry];
        if !entry.prune {
            continue;
        }
        for (repo, tags) in &found.repositories {
            let Ok(dest) = plan::map_destination(entry, repo) else {
                continue;
            };
            let target = occystrap::mirror::ImageRef {
                registry: entry.destination.clone(),
                repository: dest.clone(),
                tag: String::new(),
            };
            if shard.is_some_and(|s| !s.takes(&target)) {
                continue;
            }
            let mine: Vec<(&Job, &Outcome)> = jobs
                .iter()
                .zip(done)
                .filter(|(j, _)| j.entry == entry.index && j.destination.repository == dest)
                .collect();
            if mine.iter().any(|(_, o)| o.action == Action::Failed) {
                continue;
            }
            let keep: BTreeSet<String> = tags.iter().cloned().collect();
            let kept: BTreeSet<String> = mine
                .iter()
                // What a dry run would copy keeps its source digest.
                .flat_map(|(_, o)| [&o.destination_digest, &o.source_digest])
                .filter_map(|d| d.as_ref().map(|d| d.to_string()))
                .collect();
            out.extend(mirror.prune(&entry.destination, &dest, &keep, &kept).await);
        }
    }
    out
}

/// The report: `-O json` on stdout, else one line per image that was not
/// skipped and a summary; exit 1 when any failed.
fn report(
    global: &Global,
    args: &MirrorArgs,
    shard: Option<Shard>,
    outcomes: &[Outcome],
    took: Duration,
) -> Result<i32> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes {
        *counts.entry(action_name(o.action)).or_default() += 1;
    }
    let count = |a: Action| counts.get(action_name(a)).copied().unwrap_or(0);
    let bytes: u64 = outcomes.iter().map(|o| o.bytes).sum();
    let failures = count(Action::Failed);
    let mut stdout = std::io::stdout().lock();
    match global.output_format {
        OutputFormat::Json => {
            let doc = serde_json::json!({
                "dry_run": args.dry_run,
                "shard": shard.map(|s| format!("{}/{}", s.index, s.count)),
                "images": outcomes,
                "summary": {
                    "copied": count(Action::Copied),
                    "skipped": count(Action::Skipped),
                    "failed": failures,
                    "pruned": count(Action::Pruned),
                    "would_copy": count(Action::WouldCopy),
                    "would_prune": count(Action::WouldPrune),
                    "bytes": bytes,
                    "seconds": took.as_secs_f64(),
                },
            });
            occystrap::escape::to_writer_pretty(&mut stdout, &doc)?;
            writeln!(stdout)?;
        }
        OutputFormat::Text => {
            for o in outcomes.iter().filter(|o| o.action != Action::Skipped) {
                writeln!(stdout, "{}", occystrap::escape::escape_controls(&line(o)))?;
            }
            let mut summary = format!(
                "{} images: {} copied, {} skipped, {} failed",
                outcomes.len(),
                count(Action::Copied),
                count(Action::Skipped),
                failures
            );
            for (a, what) in [
                (Action::Pruned, "pruned"),
                (Action::WouldCopy, "would be copied"),
                (Action::WouldPrune, "would be pruned"),
            ] {
                if count(a) > 0 {
                    summary.push_str(&format!(", {} {what}", count(a)));
                }
            }
            summary.push_str(&format!(
                "; {} sent in {:.1} s",
                super::progress::human_bytes(bytes),
                took.as_secs_f64()
            ));
            writeln!(stdout, "{summary}")?;
        }
    }
    Ok(if failures > 0 { 1 } else { 0 })
}

/// `copied  SRC -> DST@DIGEST` and the like.
fn line(o: &Outcome) -> String {
    let digest = o
        .destination_digest
        .as_ref()
        .map(|d| format!("@{d}"))
        .unwrap_or_default();
    let why = o
        .reason
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    match o.action {
        Action::Pruned | Action::WouldPrune => {
            format!(
                "{:<11} {}{digest}{why}",
                action_name(o.action),
                o.destination
            )
        }
        _ => format!(
            "{:<11} {} -> {}{digest}{why}",
            action_name(o.action),
            o.source,
            o.destination
        ),
    }
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Copied => "copied",
        Action::Skipped => "skipped",
        Action::Failed => "failed",
        Action::Pruned => "pruned",
        Action::WouldCopy => "would-copy",
        Action::WouldPrune => "would-prune",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Display {
    Bar,
    Lines,
    Json,
}

/// Progress on stderr, for people (a bar, or lines) or for programs.
struct Show {
    mode: Display,
    bar: Option<indicatif::ProgressBar>,
    /// Images in flight: when they started, and bytes so far.
    running: Mutex<HashMap<String, (Instant, u64, u64)>>,
}

/// Seconds between the lines about long transfers.
const TICK: Duration = Duration::from_secs(5);

impl Show {
    fn new(mode: Display) -> Show {
        let bar = (mode == Display::Bar).then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(0),
                indicatif::ProgressDrawTarget::stderr_with_hz(8),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{pos}/{len} images [{bar:30}] {msg} {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Show {
            mode,
            bar,
            running: Mutex::new(HashMap::new()),
        }
    }

    fn total(&self, n: usize) {
        if let Some(b) = &self.bar {
            b.set_length(n as u64);
        }
        self.event(serde_json::json!({"event": "plan", "images": n}), || {
            format!("mirror: {n} images to check")
        });
    }

    fn clear(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    /// One event: a JSON line, or a line for people (not under a bar).
    fn event(&self, json: serde_json::Value, text: impl FnOnce() -> String) {
        let mut err = std::io::stderr().lock();
        match self.mode {
            Display::Json => {
                let _ = writeln!(
                    err,
                    "{}",
                    occystrap::escape::to_string(&json).unwrap_or_default()
                );
            }
            Display::Lines => {
                let _ = writeln!(err, "{}", occystrap::escape::escape_controls(&text()));
            }
            Display::Bar => {}
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, u64, u64)>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every [`TICK`], a line for each image that has been running a while
    /// (lines), or its bytes so far (json); stops when dropped.
    fn tick(self: Arc<Self>) -> AbortOnDrop {
        AbortOnDrop(tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            every.tick().await;
            loop {
                every.tick().await;
                let now: Vec<(String, Duration, u64, u64)> = self
                    .running()
                    .iter_mut()
                    .filter(|(_, (t, _, _))| t.elapsed() >= TICK)
                    .map(|(k, (t, b, shown))| {
                        let new = *b - *shown;
                        *shown = *b;
                        (k.clone(), t.elapsed(), *b, new)
                    })
                    .collect();
                for (dest, took, total, new) in now {
                    if new == 0 && self.mode == Display::Json {
                        continue;
                    }
                    self.event(
                        serde_json::json!({"event": "bytes", "destination": dest, "bytes": total}),
                        || {
                            format!(
                                "mirror: {dest}: {} so far, {:.0} s",
                                super::progress::human_bytes(total),
                                took.as_secs_f64()
                            )
                        },
                    );
                }
            }
        }))
    }
}

impl occystrap::registry::Listener for Show {
    fn retry(&self, host: &str, op: &str, why: &str, wait: Duration) {
        self.event(
            serde_json::json!({"event": "retry", "registry": host, "operation": op,
                               "reason": why, "wait_seconds": wait.as_secs_f64()}),
            || {
                format!(
                    "mirror: {host}: {op}: {why}; retrying in {:.1} s",
                    wait.as_secs_f64()
                )
            },
        );
    }

    fn rate_limited(&self, host: &str, wait: Duration) {
        self.event(
            serde_json::json!({"event": "rate-limited", "registry": host,
                               "wait_seconds": wait.as_secs_f64()}),
            || {
                format!(
                    "mirror: {host} asked us to slow down; holding back {:.1} s",
                    wait.as_secs_f64()
                )
            },
        );
    }
}

impl Observer for Show {
    fn started(&self, job: &Job) {
        let dest = job.destination.to_string();
        self.running().insert(dest.clone(), (Instant::now(), 0, 0));
        if let Some(b) = &self.bar {
            b.set_message(occystrap::escape::escape_controls(&dest).into_owned());
        }
        if self.mode == Display::Json {
            self.event(
                serde_json::json!({"event": "start", "source": job.source.to_string(), "destination": dest}),
                String::new,
            );
        }
    }

    fn copying(&self, job: &Job) {
        let dest = job.destination.to_string();
        self.event(
            serde_json::json!({"event": "copy", "source": job.source.to_string(), "destination": dest}),
            || format!("mirror: copying {} -> {dest}", job.source),
        );
    }

    fn bytes(&self, job: &Job, n: u64) {
        if let Some(r) = self.running().get_mut(&job.destination.to_string()) {
            r.1 += n;
        }
    }

    fn finished(&self, o: &Outcome) {
        self.running().remove(&o.destination);
        if let Some(b) = &self.bar {
            if matches!(o.action, Action::Pruned | Action::WouldPrune) {
                b.println(occystrap::escape::escape_controls(&line(o)));
            } else {
                b.inc(1);
                if o.action == Action::Failed {
                    b.println(occystrap::escape::escape_controls(&line(o)));
                }
            }
        }
        let event = match o.action {
            Action::Copied | Action::WouldCopy => "done",
            Action::Skipped => "skip",
            Action::Failed => "fail",
            Action::Pruned | Action::WouldPrune => "prune",
        };
        let mut json = serde_json::to_value(o).unwrap_or_default();
        if let Some(m) = json.as_object_mut() {
            m.insert("event".into(), event.into());
        }
        self.event(json, || match o.action {
            Action::Skipped => format!(
                "mirror: skipped {} ({})",
                o.destination,
                o.reason.as_deref().unwrap_or("up to date")
            ),
            Action::Failed => format!(
                "mirror: FAILED {}: {}",
                o.destination,
                o.reason.as_deref().unwrap_or("")
            ),
            _ => format!("mirror: {}", line(o)),
        });
    }
}

/// A task aborted when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
