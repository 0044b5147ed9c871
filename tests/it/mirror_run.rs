//! `occystrap mirror` end to end: a seeded source registry mirrored into
//! another, both behind the request-counting proxy, through the CLI only.
//! What a cold run copies (every digest checked), what a warm run costs
//! (counted at both registries), a tag changed upstream, tag and
//! repository selection, concurrent shards, prune, a broken source
//! repository, and the progress output a CI log gets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use crate::support::mirror_seed::{
    self as seed, Kind, Seeded, assert_destination, expected, manifest_path, requests_since, tally,
};
use crate::support::proxy::{Fault, Proxy, Record};
use crate::support::registry::ClosedPort;
use crate::support::{Compression, Output, Registry, TestEnv, assert_no_panic};

/// A source and a destination registry, each behind its own counting proxy
/// (the config names the proxies).
struct Rig {
    env: TestEnv,
    src: Registry,
    dst: Registry,
    sp: Proxy,
    dp: Proxy,
}

impl Rig {
    fn new() -> Rig {
        Rig::with_destination(Registry::start())
    }

    fn with_destination(dst: Registry) -> Rig {
        let src = Registry::start();
        let (sp, dp) = (Proxy::start(&src.host()), Proxy::start(&dst.host()));
        Rig {
            env: TestEnv::new(),
            src,
            dst,
            sp,
            dp,
        }
    }

    /// Writes a config, `SRC` and `DST` standing for the two proxies.
    fn config(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.env.work(name);
        let text = yaml
            .replace("SRC", &self.sp.host())
            .replace("DST", &self.dp.host());
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `occystrap --insecure -O json mirror CONFIG ARGS...`.
    fn mirror(&self, config: &PathBuf, args: &[&str]) -> Output {
        self.mirror_env(config, args, &[])
    }

    fn mirror_env(&self, config: &PathBuf, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self
            .env
            .occy()
            .args(["--insecure", "-O", "json", "mirror"])
            .arg(config)
            .args(args);
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let out = cmd.run();
        assert_no_panic(&out);
        out
    }

    /// A run that must exit 0; its report.
    fn mirror_ok(&self, config: &PathBuf, args: &[&str]) -> Report {
        let out = self.mirror(config, args);
        assert_eq!(out.code, Some(0), "{}", show(&out));
        Report::parse(&out, &self.dp.host())
    }
}

fn show(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.cmdline, out.stdout, out.stderr
    )
}

/// The `-O json` report, destinations without the host.
struct Report {
    doc: Value,
    /// action -> destination `repo:tag`s.
    by_action: BTreeMap<String, BTreeSet<String>>,
    /// destination `repo:tag` -> the image's entry.
    images: BTreeMap<String, Value>,
}

impl Report {
    fn parse(out: &Output, dst_host: &str) -> Report {
        let doc: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("-O json stdout is not JSON ({e}): {}", show(out)));
        let mut by_action: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut images = BTreeMap::new();
        for i in doc["images"].as_array().expect("images[]") {
            let dest = i["destination"].as_str().expect("destination");
            let dest = dest
                .strip_prefix(&format!("{dst_host}/"))
                .unwrap_or(dest)
                .to_string();
            let action = i["action"].as_str().expect("action").to_string();
            assert!(
                by_action.entry(action).or_default().insert(dest.clone()),
                "{dest} twice in one report:\n{}",
                out.stdout
            );
            images.insert(dest, i.clone());
        }
        Report {
            doc,
            by_action,
            images,
        }
    }

    fn with(&self, action: &str) -> BTreeSet<String> {
        self.by_action.get(action).cloned().unwrap_or_default()
    }

    fn summary(&self, key: &str) -> u64 {
        self.doc["summary"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("summary.{key} in {}", self.doc))
    }

    /// Asserts the only actions are `expect` (action -> how many).
    fn assert_counts(&self, expect: &[(&str, usize)]) {
        let got: BTreeMap<&str, usize> = self
            .by_action
            .iter()
            .map(|(a, s)| (a.as_str(), s.len()))
            .collect();
        let want: BTreeMap<&str, usize> = expect.iter().copied().filter(|(_, n)| *n > 0).collect();
        assert_eq!(got, want, "actions in the report:\n{:#}", self.doc);
        for (a, n) in expect {
            assert_eq!(self.summary(&a.replace('-', "_")), *n as u64, "summary.{a}");
        }
    }
}

/// The standard seed's mapping: `lib/app-NN` -> `mirror/lib/app-NN`,
/// `team/svc-X` -> `mirror/team/svc-X`.
const STANDARD: &str = "\
mirrors:
  - from: registry://SRC/lib
    to: registry://DST/mirror/lib
    repositories: [\"app-*\"]
  - from: registry://SRC/team/*
    to: registry://DST/mirror/team/{repo}
";

fn standard_dest(repo: &str) -> String {
    format!("mirror/{repo}")
}

#[test]
fn mirror_run_copies_every_digest_then_warm_costs_two_heads_per_tag_then_copies_one_change() {
    let rig = Rig::new();
    let seeded = seed::seed_standard(&rig.src.host());
    assert_eq!(seeded.repositories().len(), 30);
    assert_eq!(seeded.images.len(), 90);
    for kind in [Kind::Oci, Kind::Docker, Kind::OciIndex, Kind::DockerList] {
        assert!(seeded.kinds.values().any(|k| *k == kind), "no {kind:?}");
    }
    assert!(
        seeded.referrer_tags.len() >= 8,
        "{:?}",
        seeded.referrer_tags
    );
    let config = rig.config("mirror.yaml", STANDARD);
    let want = expected(&seeded, standard_dest);

    // Cold: every image copied, digests unchanged (indexes byte for byte),
    // no signature tag copied as an image.
    let cold = rig.mirror_ok(&config, &[]);
    cold.assert_counts(&[("copied", 90)]);
    assert_eq!(cold.doc["dry_run"], Value::Bool(false));
    assert_eq!(cold.doc["shard"], Value::Null);
    for (dest, digest) in &want {
        let i = &cold.images[dest];
        assert_eq!(i["source_digest"].as_str(), Some(digest.as_str()), "{i}");
        assert_eq!(
            i["destination_digest"].as_str(),
            Some(digest.as_str()),
            "{i}"
        );
        assert!(
            i["source"].as_str().unwrap().starts_with(&rig.sp.host()),
            "{i}"
        );
    }
    assert_destination(&rig.dst.host(), &want);
    // Blobs shared across images and repositories went up once, then
    // were mounted or found.
    let mut uploads: BTreeMap<String, usize> = BTreeMap::new();
    for r in rig.dp.requests() {
        if r.method == "PUT" && r.path.contains("/blobs/uploads/") {
            let query = r.query.as_deref().unwrap_or("").replace("%3A", ":");
            let digest = query.split('&').find_map(|kv| kv.strip_prefix("digest="));
            *uploads
                .entry(digest.unwrap_or("?").to_string())
                .or_default() += 1;
        }
    }
    let twice: Vec<_> = uploads.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "blobs uploaded more than once: {twice:?}");
    let base = Compression::Gzip.compress(&seed::base_layer());
    assert_eq!(
        uploads.get(&crate::support::sha256_digest(&base)),
        Some(&1),
        "the shared base layer: {uploads:?}"
    );

    // Each document was fetched once, and each destination tag asked once
    // (the job's HEAD; the push trusts it).
    let repeated = |tally: BTreeMap<String, usize>, what: &str| -> Vec<(String, usize)> {
        tally
            .into_iter()
            .filter(|(k, n)| *n > 1 && k.starts_with(what) && k.contains("/manifests/"))
            .collect()
    };
    let twice = repeated(tally(&rig.sp.requests()), "GET ");
    assert!(
        twice.is_empty(),
        "source manifests fetched twice: {twice:?}"
    );
    let twice = repeated(tally(&rig.dp.requests()), "HEAD ");
    assert!(twice.is_empty(), "destination tags asked twice: {twice:?}");

    // Warm: per tag one HEAD of the source manifest and one of the
    // destination's; one tag listing per source repository and one catalog.
    let (s0, d0) = (rig.sp.requests().len(), rig.dp.requests().len());
    let warm = rig.mirror_ok(&config, &[]);
    warm.assert_counts(&[("skipped", 90)]);
    let mut src_want: BTreeMap<String, usize> = BTreeMap::new();
    let mut dst_want: BTreeMap<String, usize> = BTreeMap::new();
    src_want.insert("GET /v2/_catalog".into(), 1);
    for repo in seeded.repositories() {
        src_want.insert(format!("GET /v2/{repo}/tags/list"), 1);
    }
    for (repo, tag) in seeded.images.keys() {
        src_want.insert(format!("HEAD {}", manifest_path(repo, tag)), 1);
        dst_want.insert(
            format!("HEAD {}", manifest_path(&standard_dest(repo), tag)),
            1,
        );
    }
    assert_eq!(
        tally(&requests_since(&rig.sp, s0)),
        src_want,
        "warm run: source requests\n{}",
        rig.sp.describe()
    );
    assert_eq!(
        tally(&requests_since(&rig.dp, d0)),
        dst_want,
        "warm run: destination requests\n{}",
        rig.dp.describe()
    );

    // One tag changed upstream: a dry run names it and writes nothing ...
    let kind = seeded.kinds[&("lib/app-03".to_string(), "1.1.0".to_string())];
    let new = seed::push_kind(&rig.src.host(), "lib/app-03", "1.1.0", kind, 1);
    let old = &want["mirror/lib/app-03:1.1.0"];
    assert_ne!(&new, old);
    let d1 = rig.dp.requests().len();
    let dry = rig.mirror_ok(&config, &["--dry-run"]);
    assert_eq!(dry.doc["dry_run"], Value::Bool(true));
    dry.assert_counts(&[("skipped", 89), ("would-copy", 1)]);
    assert_eq!(
        dry.with("would-copy"),
        BTreeSet::from(["mirror/lib/app-03:1.1.0".to_string()])
    );
    let writes: Vec<Record> = requests_since(&rig.dp, d1)
        .into_iter()
        .filter(|r| !matches!(r.method.as_str(), "GET" | "HEAD"))
        .collect();
    assert!(writes.is_empty(), "a dry run wrote: {writes:?}");
    assert_eq!(
        seed::manifest_digest(&rig.dst.host(), "mirror/lib/app-03", "1.1.0").as_ref(),
        Some(old)
    );

    // ... and the next run copies it, and only it.
    let third = rig.mirror_ok(&config, &[]);
    third.assert_counts(&[("skipped", 89), ("copied", 1)]);
    let i = &third.images["mirror/lib/app-03:1.1.0"];
    assert_eq!(i["action"], "copied");
    assert_eq!(i["destination_digest"].as_str(), Some(new.as_str()));
    let mut want = want;
    want.insert("mirror/lib/app-03:1.1.0".into(), new);
    assert_destination(&rig.dst.host(), &want);
}

/// Pushes one small distinct image per tag; returns the digests.
fn push_tags(host: &str, repo: &str, tags: &[&str], seeded: &mut Seeded) {
    for tag in tags {
        let d = seed::push_kind(host, repo, tag, Kind::Oci, 0);
        seeded.add(repo, tag, Kind::Oci, d);
    }
}

#[test]
fn mirror_run_selects_exactly_by_glob_regex_semver_newest_and_maps_names() {
    let rig = Rig::new();
    let host = rig.src.host();
    let mut s = Seeded::default();
    let python = [
        "2.7",
        "3.11",
        "3.12",
        "3.12-slim",
        "3.13",
        "3.13-rc1",
        "3.14",
        "bookworm",
        "bookworm-slim",
        "latest",
    ];
    push_tags(&host, "lib/python", &python, &mut s);
    let py312 = s.images[&("lib/python".into(), "3.12".into())].clone();
    seed::push_signature(&host, "lib/python", &py312, ".sig");
    push_tags(&host, "lib/pypy", &["latest", "7.3"], &mut s);
    push_tags(
        &host,
        "lib/debian",
        &["bookworm", "bullseye", "latest"],
        &mut s,
    );
    push_tags(&host, "lib/ruby", &["latest"], &mut s);
    for r in ["team/api", "team/web", "team/sub/deep", "other/x"] {
        push_tags(&host, r, &["v1"], &mut s);
    }
    // Not versions: "newest" goes by the config's `created`.
    for (tag, created) in [
        ("alpha", "2021-01-01T00:00:00Z"),
        ("beta", "2024-01-01T00:00:00Z"),
        ("gamma", "2022-01-01T00:00:00Z"),
        ("delta", "2023-01-01T00:00:00Z"),
    ] {
        let img = seed::restamp(
            &seed::seed_image("lib/tools", tag, "linux/amd64", 0).build(),
            created,
        );
        seed::push_image(&host, "lib/tools", tag, &img, false);
    }
    let config = rig.config(
        "select.yaml",
        r#"
mirrors:
  - from: registry://SRC/lib
    to: registry://DST/a
    repositories: [debian, "py*"]
    tags:
      include: ['^bookworm', '^3\.1[2-9]', latest]
      exclude: ['-rc', 'slim']
  - from: registry://SRC/lib/python
    to: registry://DST/b/python
    tags:
      semver: '>=3.12'
      exclude: ['-']
      newest: 2
  - from: registry://SRC/lib/python
    to: registry://DST/c/python
    tags:
      semver: '>=3.12, <3.14'
  - from: registry://SRC/lib/tools
    to: registry://DST/d/tools
    tags:
      newest: 2
  - from: registry://SRC/team/*
    to: registry://DST/e/{repo}/copy
  - from: registry://SRC/team/**
    to: registry://DST/f/{repo}
"#,
    );
    let want: BTreeSet<String> = [
        "a/debian:bookworm",
        "a/debian:latest",
        "a/pypy:latest",
        "a/python:3.12",
        "a/python:3.13",
        "a/python:3.14",
        "a/python:bookworm",
        "a/python:latest",
        "b/python:3.13",
        "b/python:3.14",
        "c/python:3.12",
        "c/python:3.12-slim",
        "c/python:3.13",
        "c/python:3.13-rc1",
        "d/tools:beta",
        "d/tools:delta",
        "e/api/copy:v1",
        "e/web/copy:v1",
        "f/api:v1",
        "f/web:v1",
        "f/sub/deep:v1",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let report = rig.mirror_ok(&config, &[]);
    assert_eq!(report.with("copied"), want, "{:#}", report.doc);
    report.assert_counts(&[("copied", want.len())]);
    // What landed is the image of the tag it names.
    let source_of = |dest: &str| -> (String, String) {
        let src = report.images[dest]["source"].as_str().unwrap();
        let (repo, tag) = src.split_once('/').unwrap().1.rsplit_once(':').unwrap();
        (repo.to_string(), tag.to_string())
    };
    let mut digests = BTreeMap::new();
    for dest in &want {
        let (repo, tag) = source_of(dest);
        let d = seed::manifest_digest(&host, &repo, &tag).unwrap();
        digests.insert(dest.clone(), d);
    }
    assert_eq!(source_of("e/api/copy:v1"), ("team/api".into(), "v1".into()));
    assert_eq!(
        source_of("f/sub/deep:v1"),
        ("team/sub/deep".into(), "v1".into())
    );
    assert_destination(&rig.dst.host(), &digests);
}

/// `lib/r0` .. `lib/r{n-1}`, tags `t1` and `t2`.
fn seed_small(host: &str, n: usize) -> Seeded {
    let mut s = Seeded::default();
    for i in 0..n {
        push_tags(host, &format!("lib/r{i}"), &["t1", "t2"], &mut s);
    }
    s
}

const SMALL: &str = "\
mirrors:
  - from: registry://SRC/lib/*
    to: registry://DST/m/{repo}
";

fn small_dest(repo: &str) -> String {
    format!("m/{}", repo.strip_prefix("lib/").unwrap())
}

#[test]
fn mirror_run_concurrent_shards_split_the_work_without_overlap() {
    let rig = Rig::new();
    let seeded = seed_small(&rig.src.host(), 12);
    let config = rig.config("shards.yaml", SMALL);
    let want = expected(&seeded, small_dest);

    // The Indexed Job's environment picks the shard (0-based) like the flag
    // (1-based) does.
    let out = rig.mirror_env(
        &config,
        &["--dry-run"],
        &[("JOB_COMPLETION_INDEX", "1"), ("JOB_COMPLETIONS", "3")],
    );
    assert_eq!(out.code, Some(0), "{}", show(&out));
    let from_env = Report::parse(&out, &rig.dp.host());
    assert_eq!(from_env.doc["shard"], "2/3");

    let runs: Vec<Report> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=3)
            .map(|i| {
                let (rig, config) = (&rig, &config);
                s.spawn(move || rig.mirror_ok(config, &["--shard", &format!("{i}/3")]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut union = BTreeSet::new();
    let mut repos_seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r.doc["shard"], format!("{}/3", i + 1));
        assert_eq!(
            r.by_action.keys().collect::<Vec<_>>(),
            vec!["copied"],
            "shard {}: {:#}",
            i + 1,
            r.doc
        );
        for dest in r.with("copied") {
            assert!(union.insert(dest.clone()), "{dest} copied by two shards");
            let repo = dest.rsplit_once(':').unwrap().0.to_string();
            let shard = *repos_seen.entry(repo.clone()).or_insert(i);
            assert_eq!(shard, i, "{repo} split across shards");
        }
    }
    assert_eq!(union, want.keys().cloned().collect(), "the shards' union");
    assert!(
        runs.iter().filter(|r| !r.with("copied").is_empty()).count() >= 2,
        "12 repositories all fell in one shard"
    );
    assert_eq!(from_env.with("would-copy"), runs[1].with("copied"));
    assert_destination(&rig.dst.host(), &want);
}

#[test]
fn mirror_run_prune_lists_then_deletes_only_dropped_tags_in_its_namespace() {
    let rig = Rig::new();
    let (src, dst) = (rig.src.host(), rig.dst.host());
    let mut s = Seeded::default();
    push_tags(&src, "lib/a", &["v1", "v2", "v3"], &mut s);
    push_tags(&src, "lib/b", &["v1"], &mut s);
    let config = rig.config(
        "prune.yaml",
        "mirrors:\n  - from: registry://SRC/lib\n    to: registry://DST/p\n    repositories: [a, b]\n    prune: true\n",
    );
    rig.mirror_ok(&config, &[]).assert_counts(&[("copied", 4)]);
    // The destination has more than the source gave it: a stale tag in a
    // mapped repository, a signature tag, and a repository outside.
    let stale = seed::push_kind(&dst, "p/a", "stale", Kind::Oci, 7);
    let v1 = s.images[&("lib/a".into(), "v1".into())].clone();
    let sig = seed::push_signature(&dst, "p/a", &v1, ".sig");
    let outside = seed::push_kind(&dst, "q/a", "v2", Kind::Oci, 0);
    // The source drops lib/a:v2.
    let v2 = &s.images[&("lib/a".into(), "v2".into())];
    let r =
        crate::support::http::request(&src, "DELETE", &format!("/v2/lib/a/manifests/{v2}"), &[])
            .unwrap();
    assert_eq!(r.status, 202, "deleting from the source: {r:?}");

    let before = seed::tags(&dst, "p/a");
    let dry = rig.mirror_ok(&config, &["--dry-run"]);
    dry.assert_counts(&[("skipped", 3), ("would-prune", 2)]);
    assert_eq!(
        dry.with("would-prune"),
        BTreeSet::from(["p/a:stale".to_string(), "p/a:v2".to_string()])
    );
    assert_eq!(seed::tags(&dst, "p/a"), before, "a dry run pruned");

    let real = rig.mirror_ok(&config, &[]);
    real.assert_counts(&[("skipped", 3), ("pruned", 2)]);
    assert_eq!(
        real.with("pruned"),
        BTreeSet::from(["p/a:stale".to_string(), "p/a:v2".to_string()])
    );
    assert_eq!(
        real.images["p/a:stale"]["destination_digest"].as_str(),
        Some(stale.as_str())
    );
    let mut left = vec!["v1".to_string(), "v3".to_string(), sig];
    left.sort();
    assert_eq!(seed::tags(&dst, "p/a"), left);
    assert_eq!(seed::tags(&dst, "p/b"), vec!["v1".to_string()]);
    assert_eq!(seed::manifest_digest(&dst, "q/a", "v2"), Some(outside));
    // Pruned already: nothing more to do.
    rig.mirror_ok(&config, &[]).assert_counts(&[("skipped", 3)]);
}

#[test]
fn mirror_run_prune_against_a_registry_without_deletes_says_so() {
    let rig = Rig::with_destination(Registry::start_without_deletes());
    let src = rig.src.host();
    let mut s = Seeded::default();
    push_tags(&src, "lib/a", &["v1", "v2"], &mut s);
    let config = rig.config(
        "prune.yaml",
        "mirrors:\n  - from: registry://SRC/lib/a\n    to: registry://DST/p/a\n    prune: true\n",
    );
    rig.mirror_ok(&config, &[]).assert_counts(&[("copied", 2)]);
    let v2 = &s.images[&("lib/a".into(), "v2".into())];
    let path = format!("/v2/lib/a/manifests/{v2}");
    let r = crate::support::http::request(&src, "DELETE", &path, &[]).unwrap();
    assert_eq!(r.status, 202, "{r:?}");
    // The destination really refuses (distribution: 405 UNSUPPORTED).
    let dst_path = format!("/v2/p/a/manifests/{v2}");
    let r = crate::support::http::request(&rig.dst.host(), "DELETE", &dst_path, &[]).unwrap();
    assert_eq!(r.status, 405, "{r:?}");
    // A dry run lists it all the same.
    let dry = rig.mirror_ok(&config, &["--dry-run"]);
    dry.assert_counts(&[("skipped", 1), ("would-prune", 1)]);
    assert!(dry.with("would-prune").contains("p/a:v2"));
    let out = rig.mirror(&config, &[]);
    assert_eq!(out.code, Some(1), "{}", show(&out));
    let report = Report::parse(&out, &rig.dp.host());
    report.assert_counts(&[("skipped", 1), ("failed", 1)]);
    let reason = report.images["p/a:v2"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_lowercase();
    assert!(
        reason.contains("delet") && reason.contains("disabled"),
        "the failure should say deletes are disabled: {reason}"
    );
    assert!(seed::tags(&rig.dst.host(), "p/a").contains(&"v2".to_string()));
}

#[test]
fn mirror_run_one_broken_source_repository_fails_alone_with_exit_1() {
    let rig = Rig::new();
    let seeded = seed_small(&rig.src.host(), 6);
    // lib/r3's manifests answer 500; another entry's registry is gone.
    rig.sp.always("/v2/lib/r3/manifests/", Fault::status(500));
    let gone = ClosedPort::new();
    let config = rig.config(
        "broken.yaml",
        &format!(
            "{SMALL}  - from: registry://127.0.0.1:{}/lib/x\n    to: registry://DST/gone/x\n",
            gone.port()
        ),
    );
    let out = rig.mirror(&config, &["--retries", "0", "--progress", "lines"]);
    assert_eq!(out.code, Some(1), "{}", show(&out));
    let report = Report::parse(&out, &rig.dp.host());
    let mut want = expected(&seeded, small_dest);
    want.retain(|k, _| !k.starts_with("m/r3:"));
    assert_eq!(
        report.with("copied"),
        want.keys().cloned().collect::<BTreeSet<_>>()
    );
    let failed = report.with("failed");
    for t in ["m/r3:t1", "m/r3:t2"] {
        assert!(failed.contains(t), "{t} not failed: {:#}", report.doc);
        let reason = report.images[t]["reason"].as_str().unwrap_or("");
        assert!(!reason.is_empty(), "{t} failed without a reason");
    }
    assert!(
        failed.iter().any(|f| f.contains("gone/x")),
        "the unreachable registry's entry is not named: {failed:?}"
    );
    assert_eq!(report.summary("failed"), failed.len() as u64);
    for t in ["m/r3:t1", "m/r3:t2"] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with("mirror: FAILED") && l.contains(t)),
            "no FAILED line for {t}:\n{}",
            out.stderr
        );
    }
    assert_destination(&rig.dst.host(), &want);
}

/// Whether `line` names `dest` as a whole (not `...:t1` inside `...:t10`).
fn names(line: &str, dest: &str) -> bool {
    line.match_indices(dest).any(|(i, _)| {
        line[i + dest.len()..]
            .chars()
            .next()
            .is_none_or(|c| c == ' ' || c == '@' || c == ':' || c == ')')
    })
}

#[test]
fn mirror_run_progress_is_lines_without_a_terminal_and_json_events_parse() {
    let rig = Rig::new();
    let seeded = seed_small(&rig.src.host(), 4);
    rig.sp.always("/v2/lib/r2/manifests/", Fault::status(500));
    let config = rig.config("progress.yaml", SMALL);
    let dests: Vec<String> = expected(&seeded, small_dest)
        .into_keys()
        .map(|d| format!("{}/{d}", rig.dp.host()))
        .collect();

    // Cold, default --progress (auto) and a pipe for stderr: lines.
    let out = rig
        .env
        .occy()
        .args(["--insecure", "--retries", "0", "mirror"])
        .arg(&config)
        .run();
    assert_no_panic(&out);
    assert_eq!(out.code, Some(1), "{}", show(&out));
    assert!(
        !out.stderr.contains('\r'),
        "a carriage return in a log: {:?}",
        out.stderr
    );
    assert!(
        !out.stderr.contains('\x1b'),
        "terminal escapes in a log: {:?}",
        out.stderr
    );
    for l in out.stderr.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            l.starts_with("mirror: "),
            "not a progress line: {l:?}\n{}",
            out.stderr
        );
    }
    for d in &dests {
        let ends: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| names(l, d))
            .filter(|l| l.starts_with("mirror: copied") || l.starts_with("mirror: FAILED"))
            .collect();
        assert_eq!(ends.len(), 1, "one end line for {d}:\n{}", out.stderr);
        if d.contains("/m/r2:") {
            assert!(ends[0].starts_with("mirror: FAILED"), "{}", ends[0]);
        } else {
            let starts = out
                .stderr
                .lines()
                .filter(|l| l.starts_with("mirror: copying") && names(l, d))
                .count();
            assert_eq!(starts, 1, "one start line for {d}:\n{}", out.stderr);
        }
    }
    // A summary closes the run (on stdout with the text report).
    let last = |s: &str| {
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string()
    };
    let summary = format!("{}\n{}", last(&out.stdout), last(&out.stderr));
    assert!(
        summary.contains("6 copied") && summary.contains("2 failed"),
        "no summary line: {}",
        show(&out)
    );

    // Warm, --progress lines: skips.
    let out = rig.mirror(&config, &["--retries", "0", "--progress", "lines"]);
    assert_eq!(out.code, Some(1), "{}", show(&out));
    assert!(!out.stderr.contains('\r'));
    for d in dests.iter().filter(|d| !d.contains("/m/r2:")) {
        let skips = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("mirror: skipped") && names(l, d))
            .count();
        assert_eq!(skips, 1, "one skip line for {d}:\n{}", out.stderr);
    }

    // --progress json: every line an event naming its image.
    let out = rig.mirror(&config, &["--retries", "0", "--progress", "json"]);
    assert_eq!(out.code, Some(1), "{}", show(&out));
    let known = [
        "plan",
        "start",
        "copy",
        "done",
        "skip",
        "fail",
        "prune",
        "retry",
        "rate-limited",
        "bytes",
    ];
    let mut ends: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in out.stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("not a JSON event ({e}): {l:?}\n{}", out.stderr));
        let event = v["event"]
            .as_str()
            .unwrap_or_else(|| panic!("no event: {l}"));
        assert!(known.contains(&event), "unknown event {event}: {l}");
        if ["start", "done", "skip", "fail", "bytes"].contains(&event) {
            let d = v["destination"]
                .as_str()
                .unwrap_or_else(|| panic!("no destination: {l}"));
            if event != "start" && event != "bytes" {
                ends.entry(d.to_string())
                    .or_default()
                    .push(event.to_string());
            }
        }
    }
    for d in &dests {
        let want = if d.contains("/m/r2:") { "fail" } else { "skip" };
        assert_eq!(
            ends.get(d),
            Some(&vec![want.to_string()]),
            "{d}:\n{}",
            out.stderr
        );
    }
}

#[test]
fn mirror_run_immutable_tags_cost_no_source_request() {
    let rig = Rig::new();
    let mut s = Seeded::default();
    push_tags(
        &rig.src.host(),
        "lib/imm",
        &["1.0.0", "1.1.0", "latest"],
        &mut s,
    );
    let config = rig.config(
        "imm.yaml",
        "mirrors:\n  - from: registry://SRC/lib/imm\n    to: registry://DST/m/imm\n    immutable: ['^[0-9]+\\.[0-9]+\\.[0-9]+$']\n",
    );
    rig.mirror_ok(&config, &[]).assert_counts(&[("copied", 3)]);
    let old = s.images[&("lib/imm".into(), "1.0.0".into())].clone();
    // Even moved upstream, an immutable tag the destination has stays.
    seed::push_kind(&rig.src.host(), "lib/imm", "1.0.0", Kind::Oci, 1);
    let (s0, d0) = (rig.sp.requests().len(), rig.dp.requests().len());
    rig.mirror_ok(&config, &[]).assert_counts(&[("skipped", 3)]);
    assert_eq!(
        tally(&requests_since(&rig.sp, s0)),
        BTreeMap::from([
            ("GET /v2/lib/imm/tags/list".to_string(), 1),
            (format!("HEAD {}", manifest_path("lib/imm", "latest")), 1),
        ]),
        "{}",
        rig.sp.describe()
    );
    let dst_want: BTreeMap<String, usize> = ["1.0.0", "1.1.0", "latest"]
        .iter()
        .map(|t| (format!("HEAD {}", manifest_path("m/imm", t)), 1))
        .collect();
    assert_eq!(
        tally(&requests_since(&rig.dp, d0)),
        dst_want,
        "{}",
        rig.dp.describe()
    );
    assert_eq!(
        seed::manifest_digest(&rig.dst.host(), "m/imm", "1.0.0"),
        Some(old)
    );
}

#[test]
fn mirror_run_platform_subset_and_filters_warm_check_is_one_get() {
    let rig = Rig::new();
    let src = rig.src.host();
    let multi = seed::push_kind(&src, "lib/multi", "latest", Kind::OciIndex, 0);
    let one = seed::push_kind(&src, "lib/one", "v1", Kind::Docker, 0);
    let config = rig.config(
        "subset.yaml",
        "mirrors:\n  - from: registry://SRC/lib/multi\n    to: registry://DST/m/multi\n    platforms: [linux/arm64]\n\
         \x20 - from: registry://SRC/lib/one\n    to: registry://DST/m/one\n    filters: [normalize-timestamps]\n",
    );
    let cold = rig.mirror_ok(&config, &[]);
    cold.assert_counts(&[("copied", 2)]);
    let r = crate::support::http::get_manifest(&rig.dst.host(), "m/multi", "latest").unwrap();
    assert_eq!(r.status, 200);
    let index: Value = r.json();
    let platforms: Vec<&str> = index["manifests"]
        .as_array()
        .expect("an index")
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, vec!["arm64"], "{index}");
    let multi_dst = cold.images["m/multi:latest"]["destination_digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(multi_dst, multi, "a subset is another index");
    seed::assert_complete(&rig.dst.host(), "m/multi", "latest", &multi_dst);
    assert_eq!(
        cold.images["m/one:v1"]["source_digest"].as_str(),
        Some(one.as_str())
    );

    let (s0, d0) = (rig.sp.requests().len(), rig.dp.requests().len());
    rig.mirror_ok(&config, &[]).assert_counts(&[("skipped", 2)]);
    assert_eq!(
        tally(&requests_since(&rig.sp, s0)),
        BTreeMap::from([
            ("GET /v2/lib/multi/tags/list".to_string(), 1),
            ("GET /v2/lib/one/tags/list".to_string(), 1),
            (format!("HEAD {}", manifest_path("lib/multi", "latest")), 1),
            (format!("HEAD {}", manifest_path("lib/one", "v1")), 1),
        ]),
        "{}",
        rig.sp.describe()
    );
    assert_eq!(
        tally(&requests_since(&rig.dp, d0)),
        BTreeMap::from([
            (format!("GET {}", manifest_path("m/multi", "latest")), 1),
            (format!("GET {}", manifest_path("m/one", "v1")), 1),
        ]),
        "{}",
        rig.dp.describe()
    );
}

#[test]
fn mirror_run_config_error_names_key_and_line_before_any_request() {
    let rig = Rig::new();
    let config = rig.config(
        "bad.yaml",
        "mirrors:\n  - from: registry://SRC/lib/a\n    to: registry://DST/p/a\n    tags:\n      include: ['(unclosed']\n",
    );
    let out = rig.mirror(&config, &[]);
    assert!(matches!(out.code, Some(c) if c != 0), "{}", show(&out));
    let lines = crate::support::nonblank_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "one line: {}", out.stderr);
    assert!(
        lines[0].contains("mirrors[0].tags.include[0]") && lines[0].contains("line 5"),
        "names the key and line: {}",
        lines[0]
    );
    assert!(rig.sp.requests().is_empty() && rig.dp.requests().is_empty());
}

#[test]
fn mirror_run_referrers_come_with_their_image() {
    let rig = Rig::new();
    let src = rig.src.host();
    let mut s = Seeded::default();
    push_tags(&src, "lib/signed", &["v1", "v2"], &mut s);
    let v1 = s.images[&("lib/signed".into(), "v1".into())].clone();
    let sig = seed::push_signature(&src, "lib/signed", &v1, ".sig");
    let sig_digest = seed::manifest_digest(&src, "lib/signed", &sig).unwrap();
    let config = rig.config(
        "ref.yaml",
        "defaults:\n  referrers: true\nmirrors:\n  - from: registry://SRC/lib/signed\n    to: registry://DST/m/signed\n",
    );
    // The signature is not an image of its own in the report.
    rig.mirror_ok(&config, &[]).assert_counts(&[("copied", 2)]);
    assert_eq!(
        seed::manifest_digest(&rig.dst.host(), "m/signed", &sig),
        Some(sig_digest),
        "the signature did not come along"
    );
}

#[test]
fn mirror_run_takes_source_and_destination_credentials_apart() {
    let env = TestEnv::new();
    let src = Registry::start_with_htpasswd("reader", "src-secret");
    let dst = Registry::start_with_htpasswd("writer", "dst-secret");
    let img = seed::seed_image("lib/auth", "v1", "linux/amd64", 0);
    let built = crate::support::push::push_image(
        &env,
        &src,
        "lib/auth:v1",
        &img,
        crate::support::push::PushFormat::Preserve,
    );
    let config = env.work("auth.yaml");
    std::fs::write(
        &config,
        format!(
            "mirrors:\n  - from: registry://{}/lib/auth\n    to: registry://{}/m/auth\n",
            src.host(),
            dst.host()
        ),
    )
    .unwrap();
    let run = |flags: &[&str]| {
        let out = env
            .occy()
            .args(["--insecure", "-O", "json"])
            .args(flags)
            .arg("mirror")
            .arg(&config)
            .run();
        assert_no_panic(&out);
        for secret in ["src-secret", "dst-secret"] {
            assert!(
                !out.stderr.contains(secret) && !out.stdout.contains(secret),
                "a password in the output: {}",
                show(&out)
            );
        }
        out
    };
    // One set of credentials for both sides cannot write.
    let out = run(&["--username", "reader", "--password", "src-secret"]);
    assert_eq!(out.code, Some(1), "{}", show(&out));
    let out = run(&[
        "--username",
        "reader",
        "--password",
        "src-secret",
        "--dest-username",
        "writer",
        "--dest-password",
        "dst-secret",
    ]);
    assert_eq!(out.code, Some(0), "{}", show(&out));
    let report = Report::parse(&out, &dst.host());
    report.assert_counts(&[("copied", 1)]);
    assert_eq!(
        report.images["m/auth:v1"]["destination_digest"].as_str(),
        Some(built.manifest_digest.as_str())
    );
    // Docker's config.json, per registry, does as well.
    use base64::Engine as _;
    let b64 =
        |u: &str, p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    let auths = serde_json::json!({"auths": {
        src.host(): {"auth": b64("reader", "src-secret")},
        dst.host(): {"auth": b64("writer", "dst-secret")},
    }});
    std::fs::write(
        env.docker_config_dir().join("config.json"),
        serde_json::to_vec(&auths).unwrap(),
    )
    .unwrap();
    let out = run(&[]);
    assert_eq!(out.code, Some(0), "{}", show(&out));
    Report::parse(&out, &dst.host()).assert_counts(&[("skipped", 1)]);
}
