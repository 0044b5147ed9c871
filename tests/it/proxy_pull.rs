//! `occystrap proxy -u UPSTREAM`: the pull-through cache, with two real
//! registries (upstream and downstream), the fault proxy counting what
//! occystrap asks upstream, and skopeo and podman pulling through it. Also
//! the pull endpoints without an upstream (manifests, blobs, tag lists
//! straight from downstream).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::http;
use crate::support::images::{MTIME, PLATFORMS, platform_image, tiny_image, unique_dir};
use crate::support::occy_proxy::OccyProxy;
use crate::support::proxy::{Fault, Proxy as FaultProxy};
use crate::support::push::{PushFormat, push_busybox, push_image, push_index};
use crate::support::tools::{run, skopeo_ok};
use crate::support::{Compression, Registry, TestEnv, occy_bin, sha256_digest};

/// Whether the proxy's stderr comes to hold `needle` within 5 s (the
/// reader thread may not have seen a line written just before an answer).
fn logs(proxy: &OccyProxy, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proxy.stderr().contains(needle) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The binary, with the test's isolated environment.
fn occy_command(env: &TestEnv) -> Command {
    let mut cmd = Command::new(occy_bin());
    cmd.current_dir(env.path())
        .env("HOME", env.path().join("home"))
        .env("DOCKER_CONFIG", env.docker_config_dir())
        .env("TMPDIR", env.tmp_dir())
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1");
    for var in [
        "OCCYSTRAP_USERNAME",
        "OCCYSTRAP_PASSWORD",
        "OCCYSTRAP_PROXY_STATE",
        "OCCYSTRAP_PROXY_LISTEN",
        "RUST_LOG",
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Upstream behind a counting proxy, an empty downstream, and occystrap
/// between the client and them.
struct Setup {
    env: TestEnv,
    upstream: Registry,
    counter: FaultProxy,
    downstream: Registry,
}

impl Setup {
    fn new() -> Setup {
        let env = TestEnv::new();
        let upstream = Registry::start();
        let counter = FaultProxy::start(&upstream.host());
        let downstream = Registry::start();
        Setup {
            env,
            upstream,
            counter,
            downstream,
        }
    }

    /// The proxy with `-d DOWNSTREAM -u COUNTER` and `args`.
    fn proxy(&self, args: &[&str]) -> OccyProxy {
        let d = format!("registry://{}", self.downstream.host());
        let u = format!("registry://{}", self.counter.host());
        let mut all = vec!["-d", &d, "-u", &u];
        all.extend_from_slice(args);
        OccyProxy::start(&all)
    }

    /// Upstream requests so far (method, path), for deltas.
    fn upstream_requests(&self) -> Vec<(String, String)> {
        self.counter
            .requests()
            .into_iter()
            .map(|r| (r.method, r.path))
            .collect()
    }
}

/// `skopeo copy docker://HOST/REF oci:DIR:x` (`--all` for an index);
/// returns the layout.
fn pull(env: &TestEnv, host: &str, reference: &str, all: bool) -> PathBuf {
    let dir = unique_dir(&env.work("pulled"), "oci");
    let src = format!("docker://{host}/{reference}");
    let dst = format!("oci:{}:x", dir.display());
    let mut args = vec!["copy", "-q", "--src-tls-verify=false"];
    if all {
        args.push("--all");
    }
    args.extend([src.as_str(), dst.as_str()]);
    skopeo_ok(&env.tool_tmp(), &args);
    dir
}

/// The raw manifest `host` serves for `repo:reference`, and its digest.
fn raw_manifest(env: &TestEnv, host: &str, repo: &str, reference: &str) -> (Value, String) {
    let r = format!("docker://{host}/{repo}:{reference}");
    let out = skopeo_ok(
        &env.tool_tmp(),
        &["inspect", "--raw", "--tls-verify=false", &r],
    );
    (
        serde_json::from_slice(&out.stdout_bytes).unwrap(),
        sha256_digest(&out.stdout_bytes),
    )
}

/// The digest of the manifest a layout's tag `x` points to, and the
/// manifest.
fn layout_manifest(dir: &Path) -> (String, Value) {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap())
        .expect("index.json");
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest = serde_json::from_slice(&layout_blob(dir, &digest)).unwrap();
    (digest, manifest)
}

fn layout_blob(dir: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap()
}

/// How many requests in `after` but not in `before` match.
fn new_requests<'a>(
    before: &[(String, String)],
    after: &'a [(String, String)],
    method: &str,
    part: &str,
) -> Vec<&'a (String, String)> {
    after[before.len()..]
        .iter()
        .filter(|(m, p)| m == method && p.contains(part))
        .collect()
}

#[test]
fn proxy_pull_miss_then_hit() {
    let s = Setup::new();
    let built = push_busybox(&s.env, &s.upstream, PushFormat::Preserve);
    let proxy = s.proxy(&["--cache-ttl", "1h"]);
    let first = pull(&s.env, &proxy.host(), "team/app:v1", false);
    // Unfiltered: digest-exact, what upstream has, now downstream too.
    let (digest, manifest) = layout_manifest(&first);
    assert_eq!(digest, built.manifest_digest);
    let (_, down) = raw_manifest(&s.env, &s.downstream.host(), "team/app", "v1");
    assert_eq!(down, built.manifest_digest, "downstream got the tag");
    for (i, l) in built.layers.iter().enumerate() {
        assert_eq!(manifest["layers"][i]["digest"], l.digest);
        assert_eq!(layout_blob(&first, &l.digest), l.blob, "layer {i}");
    }
    let before = s.upstream_requests();
    for l in &built.layers {
        let gets = new_requests(&[], &before, "GET", &format!("/blobs/{}", l.digest));
        assert_eq!(
            gets.len(),
            1,
            "layer fetched once:\n{}",
            s.counter.describe()
        );
    }
    let second = pull(&s.env, &proxy.host(), "team/app:v1", false);
    assert_eq!(layout_manifest(&second).0, built.manifest_digest);
    let after = s.upstream_requests();
    assert_eq!(
        after.len(),
        before.len(),
        "a fresh cached tag asks upstream nothing:\n{}",
        s.counter.describe()
    );
    // The record is on disk, under a name no client text makes.
    let tags: Vec<_> = std::fs::read_dir(proxy.state_dir().join("tags"))
        .unwrap()
        .collect();
    assert_eq!(tags.len(), 1);
    // Deleted downstream behind the proxy's back: copied again.
    let path = format!("/v2/team/app/manifests/{}", built.manifest_digest);
    let del = http::request(&s.downstream.host(), "DELETE", &path, &[]).unwrap();
    assert_eq!(del.status, 202);
    let third = pull(&s.env, &proxy.host(), "team/app:v1", false);
    assert_eq!(layout_manifest(&third).0, built.manifest_digest);
    let again = s.upstream_requests();
    let heads = new_requests(&after, &again, "HEAD", "/v2/team/app/manifests/v1");
    assert_eq!(heads.len(), 1, "{}", s.counter.describe());
    let (_, down) = raw_manifest(&s.env, &s.downstream.host(), "team/app", "v1");
    assert_eq!(down, built.manifest_digest, "downstream has it again");
    let log = proxy.stderr();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn proxy_pull_ttl_expiry_checks_upstream_once_and_follows_a_moved_tag() {
    let s = Setup::new();
    let built = push_busybox(&s.env, &s.upstream, PushFormat::Preserve);
    let proxy = s.proxy(&["--cache-ttl", "1s"]);
    pull(&s.env, &proxy.host(), "team/app:v1", false);
    std::thread::sleep(Duration::from_secs(2));
    let before = s.upstream_requests();
    let again = pull(&s.env, &proxy.host(), "team/app:v1", false);
    assert_eq!(layout_manifest(&again).0, built.manifest_digest);
    let after = s.upstream_requests();
    let heads = new_requests(&before, &after, "HEAD", "/v2/team/app/manifests/v1");
    assert_eq!(
        (heads.len(), after.len() - before.len()),
        (1, 1),
        "one manifest HEAD and nothing else:\n{}",
        s.counter.describe()
    );
    // The tag moves upstream: the next pull after the TTL gets the new image.
    let moved = push_image(
        &s.env,
        &s.upstream,
        "team/app:v1",
        &tiny_image("etc/moved", "the tag moved\n"),
        PushFormat::Preserve,
    );
    std::thread::sleep(Duration::from_secs(2));
    let newer = pull(&s.env, &proxy.host(), "team/app:v1", false);
    let (digest, manifest) = layout_manifest(&newer);
    assert_eq!(digest, moved.manifest_digest);
    assert_eq!(manifest["layers"][0]["digest"], moved.layers[0].digest);
    let (_, down) = raw_manifest(&s.env, &s.downstream.host(), "team/app", "v1");
    assert_eq!(down, moved.manifest_digest);
}

#[test]
fn proxy_pull_serves_the_stale_copy_when_upstream_fails() {
    let s = Setup::new();
    let built = push_busybox(&s.env, &s.upstream, PushFormat::Preserve);
    push_image(
        &s.env,
        &s.upstream,
        "team/app:v2",
        &tiny_image("etc/v2", "v2\n"),
        PushFormat::Preserve,
    );
    let proxy = s.proxy(&["--cache-ttl", "1s"]);
    pull(&s.env, &proxy.host(), "team/app:v1", false);
    pull(&s.env, &proxy.host(), "team/app:v2", false);
    // v1: upstream fails; v2: upstream says the tag is gone.
    s.counter
        .always("/v2/team/app/manifests/v1", Fault::status(503));
    s.counter
        .always("/v2/team/app/manifests/v2", Fault::status(404));
    std::thread::sleep(Duration::from_secs(2));
    let r = http::get_manifest(&proxy.host(), "team/app", "v1").unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(built.manifest_digest.as_str())
    );
    assert!(
        logs(&proxy, "cached before"),
        "a warning says so:\n{}",
        proxy.stderr()
    );
    let r = http::get_manifest(&proxy.host(), "team/app", "v2").unwrap();
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("MANIFEST_UNKNOWN"));
    // And the record went with it.
    assert_eq!(
        std::fs::read_dir(proxy.state_dir().join("tags"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn proxy_pull_concurrent_misses_fetch_each_blob_once() {
    let s = Setup::new();
    let built = push_busybox(&s.env, &s.upstream, PushFormat::Preserve);
    let proxy = s.proxy(&["--cache-ttl", "1h"]);
    let env = &s.env;
    let host = proxy.host();
    let layouts: Vec<PathBuf> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| pull(env, &host, "team/app:v1", false)))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for l in &layouts {
        assert_eq!(layout_manifest(l).0, built.manifest_digest);
    }
    let seen = s.upstream_requests();
    let mut blobs: Vec<&str> = built.layers.iter().map(|l| l.digest.as_str()).collect();
    blobs.push(&built.config_digest);
    for d in blobs {
        let gets = new_requests(&[], &seen, "GET", &format!("/blobs/{d}"));
        assert_eq!(gets.len(), 1, "{d} fetched once:\n{}", s.counter.describe());
    }
}

#[test]
fn proxy_pull_purge_makes_the_next_pull_ask_upstream() {
    let s = Setup::new();
    push_busybox(&s.env, &s.upstream, PushFormat::Preserve);
    let proxy = s.proxy(&["--cache-ttl", "1h"]);
    pull(&s.env, &proxy.host(), "team/app:v1", false);
    let purge = |what: &str| {
        let mut cmd = occy_command(&s.env);
        cmd.arg("proxy").arg("--state-dir").arg(proxy.state_dir());
        cmd.args(["--purge", what]);
        run(&mut cmd, Duration::from_secs(60)).expect_ok()
    };
    let out = purge("team/app:v1");
    assert!(
        out.stderr.contains("team/app:v1: forgotten"),
        "{}",
        out.stderr
    );
    let out = purge("team/app:v1");
    assert!(out.stderr.contains("was not cached"), "{}", out.stderr);
    let before = s.upstream_requests();
    pull(&s.env, &proxy.host(), "team/app:v1", false);
    let after = s.upstream_requests();
    let asked = new_requests(&before, &after, "HEAD", "/v2/team/app/manifests/v1");
    assert_eq!(asked.len(), 1, "{}", s.counter.describe());
    // A purge that names no tag is refused.
    let mut cmd = occy_command(&s.env);
    cmd.arg("proxy").arg("--state-dir").arg(proxy.state_dir());
    cmd.args(["--purge", "../../etc"]);
    let out = run(&mut cmd, Duration::from_secs(60));
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("REPO:TAG"), "{}", out.stderr);
}

/// Every entry of a gzip layer: (path, mtime).
fn layer_mtimes(blob: &[u8]) -> Vec<(String, u64)> {
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(blob)
        .read_to_end(&mut tar)
        .unwrap();
    let mut ar = tar::Archive::new(&tar[..]);
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            (path, e.header().mtime().unwrap())
        })
        .collect()
}

#[test]
fn proxy_pull_filtered_normalizes_and_refuses_upstream_digests() {
    let s = Setup::new();
    let built = push_busybox(&s.env, &s.upstream, PushFormat::Preserve);
    let proxy = s.proxy(&["-f", "normalize-timestamps"]);
    let dir = pull(&s.env, &proxy.host(), "team/app:v1", false);
    let (digest, manifest) = layout_manifest(&dir);
    assert_ne!(digest, built.manifest_digest, "a filtered image is another");
    // Upstream's layers have other times.
    for l in &built.layers {
        assert!(layer_mtimes(&l.blob).iter().all(|(_, m)| *m == MTIME));
    }
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), built.layers.len());
    for (i, l) in layers.iter().enumerate() {
        let blob = layout_blob(&dir, l["digest"].as_str().unwrap());
        let mtimes = layer_mtimes(&blob);
        assert!(!mtimes.is_empty(), "layer {i}");
        for (path, mtime) in mtimes {
            assert_eq!(mtime, 0, "layer {i}: {path}");
        }
    }
    // The filtered image's own digest is served; upstream's is not.
    let r = http::get_manifest(&proxy.host(), "team/app", &digest).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    let r = http::get_manifest(&proxy.host(), "team/app", &built.manifest_digest).unwrap();
    assert_eq!(r.status, 404);
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains("MANIFEST_UNKNOWN") && body.contains("by tag"),
        "{body}"
    );
}

#[test]
fn proxy_pull_unfiltered_by_digest_copies_from_upstream() {
    let s = Setup::new();
    let built = push_busybox(&s.env, &s.upstream, PushFormat::Preserve);
    let proxy = s.proxy(&[]);
    let r = format!("team/app@{}", built.manifest_digest);
    let dir = pull(&s.env, &proxy.host(), &r, false);
    assert_eq!(layout_manifest(&dir).0, built.manifest_digest);
    // HEAD answers the same headers, no body.
    let r = http::request(
        &proxy.host(),
        "HEAD",
        &format!("/v2/team/app/manifests/{}", built.manifest_digest),
        &[],
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(built.manifest_digest.as_str())
    );
    assert_eq!(
        r.header("content-length"),
        Some(built.manifest.len().to_string().as_str())
    );
    assert!(r.body.is_empty());
    // Unknown upstream too: MANIFEST_UNKNOWN, not an error of ours.
    let r = http::get_manifest(&proxy.host(), "team/app", "nosuchtag").unwrap();
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("MANIFEST_UNKNOWN"));
}

#[test]
fn proxy_pull_podman() {
    let s = Setup::new();
    push_busybox(&s.env, &s.upstream, PushFormat::Docker);
    let proxy = s.proxy(&[]);
    let state = unique_dir(&s.env.work("podman"), "state");
    let image = format!("{}/team/app:v1", proxy.host());
    let podman = |args: &[&str]| {
        let mut c = crate::support::tools::podman_in(&state, args);
        run(&mut c, Duration::from_secs(180)).expect_ok()
    };
    podman(&["pull", "-q", "--tls-verify=false", &image]);
    podman(&["image", "exists", &image]);
    let (_, down) = raw_manifest(&s.env, &s.downstream.host(), "team/app", "v1");
    let (_, up) = raw_manifest(&s.env, &s.upstream.host(), "team/app", "v1");
    assert_eq!(down, up);
}

#[test]
fn proxy_pull_an_index_arrives_downstream_as_an_index() {
    let s = Setup::new();
    let imgs: Vec<_> = PLATFORMS
        .iter()
        .map(|p| platform_image(p, Compression::Gzip))
        .collect();
    let built = push_index(&s.env, &s.upstream, "team/multi:v1", &imgs, PushFormat::Oci);
    let proxy = s.proxy(&[]);
    let dir = pull(&s.env, &proxy.host(), "team/multi:v1", true);
    let (up_index, up_digest) = raw_manifest(&s.env, &s.upstream.host(), "team/multi", "v1");
    let (index, digest) = raw_manifest(&s.env, &s.downstream.host(), "team/multi", "v1");
    assert_eq!(digest, up_digest, "unfiltered: the same index");
    assert_eq!(index, up_index);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3);
    assert_eq!(layout_manifest(&dir).0, up_digest);
    // Every child is downstream by its digest.
    for m in index["manifests"].as_array().unwrap() {
        let d = m["digest"].as_str().unwrap();
        let r = http::get_manifest(&s.downstream.host(), "team/multi", d).unwrap();
        assert_eq!(r.status, 200, "child {d}");
    }
    assert_eq!(built.len(), 3);
}

#[test]
fn proxy_serves_downstream_without_an_upstream() {
    let env = TestEnv::new();
    let downstream = Registry::start();
    let built = push_busybox(&env, &downstream, PushFormat::Preserve);
    let v2 = push_image(
        &env,
        &downstream,
        "team/app:v2",
        &tiny_image("a", "b"),
        PushFormat::Preserve,
    );
    let d = format!("registry://{}", downstream.host());
    let proxy = OccyProxy::start(&["-d", &d]);
    let dir = pull(&env, &proxy.host(), "team/app:v1", false);
    assert_eq!(layout_manifest(&dir).0, built.manifest_digest);
    // A blob: HEAD then GET.
    let l = &built.layers[1];
    let path = format!("/v2/team/app/blobs/{}", l.digest);
    let head = http::request(&proxy.host(), "HEAD", &path, &[]).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(l.blob.len().to_string().as_str())
    );
    assert_eq!(
        head.header("docker-content-digest"),
        Some(l.digest.as_str())
    );
    let get = http::request(&proxy.host(), "GET", &path, &[]).unwrap();
    assert_eq!(get.body, l.blob);
    let missing = http::request(
        &proxy.host(),
        "GET",
        &format!("/v2/team/app/blobs/{}", sha256_digest(b"nothing")),
        &[],
    )
    .unwrap();
    assert_eq!(missing.status, 404);
    assert!(String::from_utf8_lossy(&missing.body).contains("BLOB_UNKNOWN"));
    // Tags, whole and paged.
    let tags = http::request(&proxy.host(), "GET", "/v2/team/app/tags/list", &[]).unwrap();
    assert_eq!(tags.status, 200);
    assert_eq!(
        tags.json(),
        serde_json::json!({"name": "team/app", "tags": ["v1", "v2"]})
    );
    let page = http::request(&proxy.host(), "GET", "/v2/team/app/tags/list?n=1", &[]).unwrap();
    assert_eq!(page.json()["tags"], serde_json::json!(["v1"]));
    assert_eq!(
        page.header("link"),
        Some("</v2/team/app/tags/list?n=1&last=v1>; rel=\"next\"")
    );
    let rest = http::request(
        &proxy.host(),
        "GET",
        "/v2/team/app/tags/list?n=1&last=v1",
        &[],
    )
    .unwrap();
    assert_eq!(rest.json()["tags"], serde_json::json!(["v2"]));
    assert_eq!(rest.header("link"), None, "the last page");
    let bad = http::request(&proxy.host(), "GET", "/v2/team/app/tags/list?n=x", &[]).unwrap();
    assert_eq!(bad.status, 400);
    let unknown = http::request(&proxy.host(), "GET", "/v2/team/none/tags/list", &[]).unwrap();
    assert_eq!(unknown.status, 404);
    // A blob rotted in downstream's storage (same size, other bytes) before
    // the proxy ever served it: the body breaks off instead of ending as if
    // it were whole.
    let rot = |digest: &str| {
        let data = downstream.blob_data_path(digest);
        let mut bytes = std::fs::read(&data).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&data, &bytes).unwrap();
        bytes
    };
    let unseen = &v2.layers[0];
    rot(&unseen.digest);
    let path = format!("/v2/team/app/blobs/{}", unseen.digest);
    let broken = http::request(&proxy.host(), "GET", &path, &[]);
    assert!(broken.is_err(), "a corrupt blob was served whole");
    assert!(logs(&proxy, "hashes to"), "{}", proxy.stderr());
    // One it served whole before is checked by size only from then on
    // (the client's digest check catches the rot), so hits cost no hash.
    let seen = &built.layers[2];
    let rotted = rot(&seen.digest);
    let path = format!("/v2/team/app/blobs/{}", seen.digest);
    let passed = http::request(&proxy.host(), "GET", &path, &[]).unwrap();
    assert_eq!(
        passed.body, rotted,
        "a verified blob is re-hashed on every hit"
    );
    let none = http::get_manifest(&proxy.host(), "team/app", "v3").unwrap();
    assert_eq!(none.status, 404);
    assert!(String::from_utf8_lossy(&none.body).contains("MANIFEST_UNKNOWN"));
}

#[test]
fn proxy_serves_a_blob_a_client_staged() {
    let env = TestEnv::new();
    let downstream = Registry::start();
    let d = format!("registry://{}", downstream.host());
    let proxy = OccyProxy::start(&["-d", &d]);
    let data = crate::support::images::pseudo_random(300 << 10, 7);
    let digest = sha256_digest(&data);
    let file = env.work("blob");
    std::fs::write(&file, &data).unwrap();
    let upload = format!(
        "http://{}/v2/team/staged/blobs/uploads/?digest={digest}",
        proxy.host()
    );
    let mut curl = Command::new("curl");
    curl.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", "Content-Type: application/octet-stream"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(&upload);
    let out = run(&mut curl, Duration::from_secs(60)).expect_ok();
    assert_eq!(out.stdout, "201", "{}", proxy.stderr());
    // Not downstream (no manifest came), yet the client that pushed it
    // can read it back.
    let path = format!("/v2/team/staged/blobs/{digest}");
    let down = http::request(&downstream.host(), "HEAD", &path, &[]).unwrap();
    assert_eq!(down.status, 404);
    let head = http::request(&proxy.host(), "HEAD", &path, &[]).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(data.len().to_string().as_str())
    );
    let get = http::request(&proxy.host(), "GET", &path, &[]).unwrap();
    assert_eq!(get.status, 200);
    assert!(get.body == data, "the staged bytes");
}
