//! The layer cache (`--layer-cache FILE`, env `OCCYSTRAP_LAYER_CACHE`) on
//! filtered copies between real registries: a repeat run neither fetches
//! nor uploads a layer, an entry whose blob the destination lacks is not
//! trusted, another repository of the same registry lends the blob by a
//! mount, concurrent runs lose no entries, and a corrupt file is an error.
//! The recording proxy sits in front of the source and the destination.

use std::path::Path;

use serde_json::Value;

use crate::support::images::{busybox_image, platform_image, registry_manifest, tiny_image};
use crate::support::proxy::{Proxy, Record};
use crate::support::push::{PushFormat, push_busybox, push_image};
use crate::support::{Compression, Output, Registry, TestEnv, assert_clean_failure, http};

const REPO: &str = "team/app";
const FILTER: [&str; 2] = ["-f", "normalize-timestamps"];

/// `occystrap --insecure --layer-cache CACHE process SRC DST -f normalize-timestamps`.
fn cached_copy(env: &TestEnv, cache: &Path, src: &str, dst: &str) -> Output {
    copy_with(env, cache, src, dst, &FILTER)
}

/// `occystrap --insecure --layer-cache CACHE process SRC DST FILTER_ARGS...`.
fn copy_with(env: &TestEnv, cache: &Path, src: &str, dst: &str, filters: &[&str]) -> Output {
    let cache = cache.to_string_lossy().into_owned();
    let mut args = vec!["--insecure", "--layer-cache", &cache, "process", src, dst];
    args.extend_from_slice(filters);
    env.occy().args(&args).run()
}

/// Mount requests (`?mount=&from=FROM`) since request `since`.
fn mounts_from(p: &Proxy, since: usize, from: &str) -> Vec<Record> {
    let (plain, escaped) = (
        format!("from={from}"),
        format!("from={}", from.replace('/', "%2F")),
    );
    p.requests()
        .into_iter()
        .skip(since)
        .filter(|r| {
            r.query.as_deref().is_some_and(|q| {
                q.contains("mount=") && (q.contains(&plain) || q.contains(&escaped))
            })
        })
        .collect()
}

/// The layer digests of `repo:tag` in `reg`, from its manifest.
fn layer_digests(env: &TestEnv, reg: &Registry, repo: &str, tag: &str) -> Vec<String> {
    let (raw, _) = registry_manifest(&env.tool_tmp(), reg, repo, tag);
    let m: Value = serde_json::from_slice(&raw).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// GETs of any of `layers` the proxy passed since request number `since`.
fn layer_fetches(p: &Proxy, since: usize, layers: &[String]) -> Vec<Record> {
    p.requests()
        .into_iter()
        .skip(since)
        .filter(|r| r.method == "GET" && layers.iter().any(|d| r.path.ends_with(d.as_str())))
        .collect()
}

/// Requests that opened or fed an upload session since request `since`.
fn uploads(p: &Proxy, since: usize) -> Vec<Record> {
    p.requests()
        .into_iter()
        .skip(since)
        .filter(|r| r.path.contains("/blobs/uploads/"))
        .filter(|r| !r.query.as_deref().is_some_and(|q| q.contains("mount=")))
        .collect()
}

/// The cache file's entries.
fn entries(cache: &Path) -> Vec<Value> {
    let raw = std::fs::read(cache).expect("the cache file was written");
    let file: Value = serde_json::from_slice(&raw).expect("the cache file is JSON");
    assert_eq!(file["version"], 1);
    file["layers"].as_array().unwrap().clone()
}

fn assert_ok(out: &Output) {
    assert!(out.code == Some(0), "{}\n{}", out.cmdline, out.stderr);
}

/// A source registry holding the busybox image behind a proxy, a
/// destination behind another, and a first cached copy (checked: every
/// layer fetched, one entry per layer), with its manifest digest.
struct Setup {
    env: TestEnv,
    /// Kept: dropping it stops the registry.
    _src: Registry,
    src_proxy: Proxy,
    dst: Registry,
    dst_proxy: Proxy,
    cache: std::path::PathBuf,
    layers: Vec<String>,
    digest: String,
}

impl Setup {
    fn new() -> Setup {
        let env = TestEnv::new();
        let (src, dst) = (Registry::start(), Registry::start());
        push_busybox(&env, &src, PushFormat::Docker);
        let layers = layer_digests(&env, &src, REPO, "v1");
        let (src_proxy, dst_proxy) = (Proxy::start(&src.host()), Proxy::start(&dst.host()));
        let cache = env.work("layers.json");
        let out = cached_copy(
            &env,
            &cache,
            &src_proxy.uri(REPO, "v1"),
            &dst_proxy.uri(REPO, "v1"),
        );
        assert_ok(&out);
        assert_eq!(layer_fetches(&src_proxy, 0, &layers).len(), 3);
        let (_, digest) = registry_manifest(&env.tool_tmp(), &dst, REPO, "v1");
        let got = entries(&cache);
        assert_eq!(got.len(), 3, "one entry per layer: {got:?}");
        let here = format!("{}/{REPO}", dst_proxy.host());
        for e in &got {
            assert!(layers.iter().any(|l| e["source"] == l.as_str()), "{e}");
            assert_eq!(e["chain"], r#"[["normalize-timestamps",[]]]"#);
            assert_eq!(e["compression"], "gzip:6");
            assert_eq!(e["repositories"], serde_json::json!([here]));
        }
        Setup {
            env,
            _src: src,
            src_proxy,
            dst,
            dst_proxy,
            cache,
            layers,
            digest,
        }
    }
}

#[test]
fn layer_cache_repeat_filtered_copy_fetches_and_uploads_no_layer() {
    let s = Setup::new();
    let (src_before, dst_before) = (s.src_proxy.requests().len(), s.dst_proxy.requests().len());
    // The environment variable names the cache as well as the flag.
    let mut args = vec![
        "--insecure".to_string(),
        "process".into(),
        s.src_proxy.uri(REPO, "v1"),
        s.dst_proxy.uri(REPO, "v1"),
    ];
    args.extend(FILTER.map(String::from));
    let out = s
        .env
        .occy()
        .env("OCCYSTRAP_LAYER_CACHE", &s.cache)
        .args(&args)
        .run();
    assert_ok(&out);
    assert!(
        layer_fetches(&s.src_proxy, src_before, &s.layers).is_empty(),
        "the repeat fetched layers: {:?}",
        s.src_proxy.requests()
    );
    let sent = uploads(&s.dst_proxy, dst_before);
    assert!(sent.is_empty(), "the repeat uploaded: {sent:?}");
    assert!(out.stderr.contains("blobs: 0 uploaded"), "{}", out.stderr);
    let (_, again) = registry_manifest(&s.env.tool_tmp(), &s.dst, REPO, "v1");
    assert_eq!(again, s.digest, "the repeat pushed another manifest");
    // Nothing new to learn: the file keeps its three entries.
    assert_eq!(entries(&s.cache).len(), 3);
}

#[test]
fn layer_cache_entry_for_another_registry_is_not_trusted() {
    let s = Setup::new();
    let other = Registry::start();
    let other_proxy = Proxy::start(&other.host());
    let src_before = s.src_proxy.requests().len();
    let out = cached_copy(
        &s.env,
        &s.cache,
        &s.src_proxy.uri(REPO, "v1"),
        &other_proxy.uri(REPO, "v1"),
    );
    assert_ok(&out);
    // Every layer fetched and rewritten again, and uploaded: the cached
    // blobs are on the first registry only.
    assert_eq!(layer_fetches(&s.src_proxy, src_before, &s.layers).len(), 3);
    assert!(
        other_proxy
            .requests()
            .iter()
            .all(|r| !r.query.as_deref().is_some_and(|q| q.contains("mount="))),
        "a mount was tried across registries"
    );
    let puts = uploads(&other_proxy, 0);
    assert!(puts.iter().any(|r| r.method == "PUT"), "{puts:?}");
    assert!(out.stderr.contains("blobs: 4 uploaded"), "{}", out.stderr);
    // The rewrite is deterministic: the same manifest as the first copy.
    let (_, got) = registry_manifest(&s.env.tool_tmp(), &other, REPO, "v1");
    assert_eq!(got, s.digest);
    // The entries now name both registries.
    for e in entries(&s.cache) {
        assert_eq!(e["repositories"].as_array().unwrap().len(), 2, "{e}");
    }
}

#[test]
fn layer_cache_entry_whose_size_disagrees_is_not_trusted() {
    let s = Setup::new();
    // An edited entry: the destination's blob is not the one it describes.
    let mut file: Value = serde_json::from_slice(&std::fs::read(&s.cache).unwrap()).unwrap();
    for e in file["layers"].as_array_mut().unwrap() {
        e["size"] = Value::from(e["size"].as_u64().unwrap() + 1);
    }
    std::fs::write(&s.cache, serde_json::to_vec(&file).unwrap()).unwrap();
    let src_before = s.src_proxy.requests().len();
    let out = cached_copy(
        &s.env,
        &s.cache,
        &s.src_proxy.uri(REPO, "v1"),
        &s.dst_proxy.uri(REPO, "v1"),
    );
    assert_ok(&out);
    assert_eq!(layer_fetches(&s.src_proxy, src_before, &s.layers).len(), 3);
    let (_, got) = registry_manifest(&s.env.tool_tmp(), &s.dst, REPO, "v1");
    assert_eq!(got, s.digest);
    // What the run found replaces the wrong sizes.
    let (raw, _) = registry_manifest(&s.env.tool_tmp(), &s.dst, REPO, "v1");
    let m: Value = serde_json::from_slice(&raw).unwrap();
    for e in entries(&s.cache) {
        let l = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["digest"] == e["digest"]);
        assert_eq!(l.unwrap()["size"], e["size"], "{e}");
    }
}

#[test]
fn layer_cache_mounts_from_the_entrys_repository_on_the_same_registry() {
    let s = Setup::new();
    let (src_before, dst_before) = (s.src_proxy.requests().len(), s.dst_proxy.requests().len());
    let out = cached_copy(
        &s.env,
        &s.cache,
        &s.src_proxy.uri(REPO, "v1"),
        &s.dst_proxy.uri("mirror/app", "v1"),
    );
    assert_ok(&out);
    assert!(layer_fetches(&s.src_proxy, src_before, &s.layers).is_empty());
    let mounts = mounts_from(&s.dst_proxy, dst_before, REPO);
    // Three layers and the config, from the repository the entries name.
    assert_eq!(mounts.len(), 4, "{mounts:?}");
    assert!(uploads(&s.dst_proxy, dst_before).is_empty());
    assert!(
        out.stderr.contains("0 uploaded, 4 mounted"),
        "{}",
        out.stderr
    );
    let (_, got) = registry_manifest(&s.env.tool_tmp(), &s.dst, "mirror/app", "v1");
    assert_eq!(got, s.digest);
}

#[test]
fn layer_cache_with_an_observing_filter_still_spares_the_upload() {
    let s = Setup::new();
    let (src_before, dst_before) = (s.src_proxy.requests().len(), s.dst_proxy.requests().len());
    // `search` must see every layer, so each is fetched and rewritten; the
    // rewrite's blob is then found in the cache (the key leaves the
    // observer out) and mounted rather than compressed and uploaded.
    let out = copy_with(
        &s.env,
        &s.cache,
        &s.src_proxy.uri(REPO, "v1"),
        &s.dst_proxy.uri("seen/app", "v1"),
        &[
            "-f",
            "normalize-timestamps",
            "-f",
            "search:pattern=no-such-file",
        ],
    );
    assert_ok(&out);
    assert_eq!(layer_fetches(&s.src_proxy, src_before, &s.layers).len(), 3);
    assert_eq!(mounts_from(&s.dst_proxy, dst_before, REPO).len(), 4);
    assert!(uploads(&s.dst_proxy, dst_before).is_empty());
    let (_, got) = registry_manifest(&s.env.tool_tmp(), &s.dst, "seen/app", "v1");
    assert_eq!(got, s.digest);
}

#[test]
fn layer_cache_remembers_compressed_docker_save_layers() {
    use crate::support::images::{ManifestPos, SaveStyle, write_docker_save};
    let env = TestEnv::new();
    let dst = Registry::start();
    let proxy = Proxy::start(&dst.host());
    let built = busybox_image(Compression::None).build();
    let path = env.work("app.tar");
    write_docker_save(
        &path,
        &[(&built, vec!["app:v1".into()])],
        SaveStyle::Legacy,
        ManifestPos::Sorted,
    );
    let tar = format!("tar://{}", path.display());
    let cache = env.work("saved.json");
    let out = copy_with(&env, &cache, &tar, &proxy.uri("team/a", "v1"), &[]);
    assert_ok(&out);
    let got = entries(&cache);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|e| e["chain"] == "[]"), "{got:?}");
    // Into another repository: every layer (and then the config) is
    // mounted from the first, none compressed or uploaded again.
    let before = proxy.requests().len();
    let out = copy_with(&env, &cache, &tar, &proxy.uri("team/b", "v1"), &[]);
    assert_ok(&out);
    assert_eq!(mounts_from(&proxy, before, "team/a").len(), 4);
    assert!(uploads(&proxy, before).is_empty());
    assert_eq!(
        registry_manifest(&env.tool_tmp(), &dst, "team/b", "v1").1,
        registry_manifest(&env.tool_tmp(), &dst, "team/a", "v1").1
    );
}

#[test]
fn layer_cache_shared_by_concurrent_runs_keeps_every_entry() {
    let env = TestEnv::new();
    let (src, dst) = (Registry::start(), Registry::start());
    let images = [
        ("one/app", busybox_image(Compression::Gzip)),
        ("two/app", platform_image("linux/amd64", Compression::Gzip)),
        ("three/app", tiny_image("etc/three", "three\n")),
    ];
    let mut want = Vec::new();
    for (repo, img) in &images {
        push_image(&env, &src, &format!("{repo}:v1"), img, PushFormat::Oci);
        want.extend(layer_digests(&env, &src, repo, "v1"));
    }
    let cache = env.work("shared.json");
    let outs: Vec<Output> = std::thread::scope(|scope| {
        let runs: Vec<_> = images
            .iter()
            .map(|(repo, _)| {
                let (env, cache) = (&env, &cache);
                let (from, to) = (src.uri(repo, "v1"), dst.uri(repo, "v1"));
                scope.spawn(move || cached_copy(env, cache, &from, &to))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for out in &outs {
        assert_ok(out);
    }
    let got = entries(&cache);
    for layer in &want {
        assert!(
            got.iter().any(|e| e["source"] == layer.as_str()),
            "no entry for {layer}: {got:?}"
        );
    }
    assert_eq!(got.len(), want.len(), "{got:?}");
}

#[test]
fn layer_cache_corrupt_file_is_a_one_line_error() {
    let env = TestEnv::new();
    let (src, dst) = (Registry::start(), Registry::start());
    push_image(
        &env,
        &src,
        "team/app:v1",
        &tiny_image("etc/x", "x\n"),
        PushFormat::Oci,
    );
    let cache = env.work("broken.json");
    for bad in [
        &b"{\"version\": 1, \"layers\": [tru"[..],
        br#"{"version": 99, "layers": []}"#,
        br#"{"version": 1, "layers": [{"source": "sha256:1", "chain": "[]"}]}"#,
    ] {
        std::fs::write(&cache, bad).unwrap();
        let out = cached_copy(&env, &cache, &src.uri(REPO, "v1"), &dst.uri(REPO, "v1"));
        let line = assert_clean_failure(&env, &out, &["layer cache"]);
        assert!(line.contains("broken.json"), "{line}");
        assert_eq!(std::fs::read(&cache).unwrap(), bad, "the file was changed");
        let r = http::get_manifest(&dst.host(), REPO, "v1").unwrap();
        assert_eq!(r.status, 404, "a manifest was pushed");
    }
}
