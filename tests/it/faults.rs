//! Network faults between occystrap and a real registry, injected by the
//! proxy in `support::proxy`, and hostile metadata. Each run either succeeds
//! with a correct image (every layer of the tarball hashes to its config
//! diff_id, the config is byte-identical to the registry's) or fails with
//! one clear `error:` line and no output; the proxy's request log shows how
//! occystrap got there (retries, `Range` resumes, token refreshes).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use crate::support::images::{BuiltImage, busybox_image};
use crate::support::proxy::{Fault, Proxy, Record};
use crate::support::push::{PushFormat, push_image};
use crate::support::registry::ClosedPort;
use crate::support::{
    Compression, DockerSave, Output, Registry, TestEnv, assert_clean_failure, assert_success, http,
    sha256_digest, tar_uri,
};

pub(crate) const REPO: &str = "team/app";
pub(crate) const TAG: &str = "v1";

/// A registry holding the three-layer busybox image as `team/app:v1`, and a
/// proxy in front of it.
pub(crate) struct Setup {
    pub(crate) env: TestEnv,
    pub(crate) reg: Registry,
    pub(crate) proxy: Proxy,
    pub(crate) built: BuiltImage,
}

/// Also the slow-drip tests' starting point (`slow.rs`).
pub(crate) fn setup() -> Setup {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = push_image(
        &env,
        &reg,
        &format!("{REPO}:{TAG}"),
        &busybox_image(Compression::Gzip),
        PushFormat::Docker,
    );
    let proxy = Proxy::start(&reg.host());
    Setup {
        env,
        reg,
        proxy,
        built,
    }
}

/// A proxy with nothing behind it, for tests where it answers everything.
fn mock_only() -> (TestEnv, Proxy, ClosedPort) {
    let closed = ClosedPort::new();
    let proxy = Proxy::start(&format!("127.0.0.1:{}", closed.port()));
    (TestEnv::new(), proxy, closed)
}

impl Setup {
    fn out(&self) -> std::path::PathBuf {
        self.env.out("image.tar")
    }

    /// `occystrap --insecure EXTRA process registry://PROXY/team/app:v1 tar://out/image.tar`
    /// with `envs` set.
    fn pull(&self, extra: &[&str], envs: &[(&str, &str)]) -> Output {
        pull_via(&self.env, &self.proxy, extra, envs)
    }

    /// The path part that names layer `i`'s blob.
    pub(crate) fn layer_path(&self, i: usize) -> String {
        format!("/blobs/{}", self.built.layers[i].digest)
    }

    fn layer_size(&self, i: usize) -> u64 {
        self.built.layers[i].blob.len() as u64
    }

    /// Checks the tarball against the registry: config bytes identical, each
    /// layer hashing to its diff_id.
    fn verify(&self) {
        verify_tarball(&self.out(), &self.reg, &self.built);
    }
}

fn pull_via(env: &TestEnv, proxy: &Proxy, extra: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut args = vec!["--insecure".to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("process".into());
    args.push(proxy.uri(REPO, TAG));
    args.push(tar_uri(&env.out("image.tar")));
    let mut cmd = env.occy().args(&args);
    for (k, v) in envs {
        cmd = cmd.env(k, v);
    }
    cmd.run()
}

pub(crate) fn verify_tarball(out: &Path, reg: &Registry, built: &BuiltImage) {
    let ds = DockerSave::read(out);
    assert_eq!(ds.manifest.len(), 1);
    let config = ds.config_bytes(0).to_vec();
    let served = http::request(
        &reg.host(),
        "GET",
        &format!("/v2/{REPO}/blobs/{}", built.config_digest),
        &[],
    )
    .expect("GET config from the registry");
    assert_eq!(served.status, 200);
    assert_eq!(
        config, served.body,
        "config bytes differ from the registry's"
    );
    let diff_ids = ds.diff_ids(0);
    assert_eq!(diff_ids.len(), ds.manifest[0].layers.len());
    assert_eq!(diff_ids, built.true_diff_ids());
    for (l, id) in diff_ids.iter().enumerate() {
        assert_eq!(
            &sha256_digest(ds.layer(0, l)),
            id,
            "layer {l} vs its diff_id"
        );
    }
}

fn ok(s: &Setup, out: &Output) {
    if out.code != Some(0) {
        panic!(
            "pull failed: {}\n{}\nproxy log:\n{}",
            out.cmdline,
            out.stderr,
            s.proxy.describe()
        );
    }
    assert_success(out);
    s.verify();
}

fn statuses(rs: &[Record]) -> Vec<u16> {
    rs.iter().map(|r| r.status).collect()
}

fn ranges(rs: &[Record]) -> Vec<Option<String>> {
    rs.iter().map(|r| r.range.clone()).collect()
}

// ---------------------------------------------------------------------------
// Broken blob bodies: resume with Range

#[test]
fn dropped_connection_resumes_with_range() {
    let s = setup();
    let cut = 100_000;
    s.proxy.once(&s.layer_path(1), Fault::CutAfter(cut));
    let out = s.pull(&[], &[]);
    ok(&s, &out);
    let reqs = s.proxy.requests_to(&s.layer_path(1));
    assert_eq!(
        ranges(&reqs),
        [None, Some(format!("bytes={cut}-"))],
        "{}",
        s.proxy.describe()
    );
    assert_eq!(statuses(&reqs), [200, 206], "{}", s.proxy.describe());
    // Not restarted from 0: the blob crossed the wire exactly once.
    assert_eq!(s.proxy.bytes_sent_to(&s.layer_path(1)), s.layer_size(1));
}

#[test]
fn body_without_length_ending_early_resumes_with_range() {
    let s = setup();
    let cut = 120_000;
    s.proxy.once(&s.layer_path(1), Fault::CutAfterNoLength(cut));
    let out = s.pull(&[], &[]);
    ok(&s, &out);
    let reqs = s.proxy.requests_to(&s.layer_path(1));
    assert_eq!(
        ranges(&reqs),
        [None, Some(format!("bytes={cut}-"))],
        "{}",
        s.proxy.describe()
    );
    assert_eq!(statuses(&reqs), [200, 206]);
    assert_eq!(s.proxy.bytes_sent_to(&s.layer_path(1)), s.layer_size(1));
}

#[test]
fn server_ignoring_range_is_skipped_forward() {
    let s = setup();
    let cut = 150_000;
    s.proxy.once(&s.layer_path(1), Fault::CutAfter(cut));
    s.proxy.once(&s.layer_path(1), Fault::IgnoreRange);
    let out = s.pull(&[], &[]);
    ok(&s, &out);
    let reqs = s.proxy.requests_to(&s.layer_path(1));
    assert_eq!(ranges(&reqs), [None, Some(format!("bytes={cut}-"))]);
    // The second answer replays the blob from byte 0; occystrap skips what
    // it has, and the image is still right.
    assert_eq!(statuses(&reqs), [200, 200], "{}", s.proxy.describe());
    assert_eq!(
        s.proxy.bytes_sent_to(&s.layer_path(1)),
        cut + s.layer_size(1)
    );
}

#[test]
fn truncated_bodies_resume_until_complete() {
    let s = setup();
    // Content-Length is right, the body stops halfway, twice.
    s.proxy.times(2, &s.layer_path(1), Fault::CutFraction(0.5));
    let out = s.pull(&[], &[]);
    ok(&s, &out);
    let size = s.layer_size(1);
    let first = size / 2;
    let second = first + (size - first) / 2;
    let reqs = s.proxy.requests_to(&s.layer_path(1));
    assert_eq!(
        ranges(&reqs),
        [
            None,
            Some(format!("bytes={first}-")),
            Some(format!("bytes={second}-"))
        ],
        "{}",
        s.proxy.describe()
    );
    assert_eq!(statuses(&reqs), [200, 206, 206]);
    assert_eq!(s.proxy.bytes_sent_to(&s.layer_path(1)), size);
}

#[test]
fn truncated_bodies_exhaust_the_retries() {
    let s = setup();
    s.proxy.always(&s.layer_path(1), Fault::CutFraction(0.5));
    let out = s.pull(&["--retries", "2"], &[]);
    assert_clean_failure(&s.env, &out, &["broke off"]);
    let reqs = s.proxy.requests_to(&s.layer_path(1));
    assert_eq!(reqs.len(), 3, "{}", s.proxy.describe());
    // Each retry carries on from where the last one stopped.
    assert_eq!(reqs[0].range, None);
    assert!(
        reqs[1..].iter().all(|r| r.status == 206),
        "{}",
        s.proxy.describe()
    );
}

#[test]
fn retries_zero_fails_on_the_first_break() {
    let s = setup();
    s.proxy.always(&s.layer_path(1), Fault::CutAfter(50_000));
    let out = s.pull(&["--retries", "0"], &[]);
    let line = assert_clean_failure(&s.env, &out, &["broke off"]);
    assert!(line.contains("50000"), "{line}");
    assert_eq!(s.proxy.requests_to(&s.layer_path(1)).len(), 1);
}

#[test]
fn corrupt_blob_bytes_are_refused() {
    let s = setup();
    s.proxy.always(&s.layer_path(1), Fault::Corrupt(4096));
    let out = s.pull(&[], &[]);
    assert_clean_failure(&s.env, &out, &["digest", "mismatch"]);
}

#[test]
fn corrupt_config_bytes_are_refused() {
    let s = setup();
    s.proxy.always(
        &format!("/blobs/{}", s.built.config_digest),
        Fault::Corrupt(10),
    );
    let out = s.pull(&[], &[]);
    assert_clean_failure(&s.env, &out, &["digest", "mismatch"]);
}

// ---------------------------------------------------------------------------
// Status codes: 429 with Retry-After, 503, 404

/// The gap between the first two requests whose path contains `part`.
fn gap(proxy: &Proxy, part: &str) -> Duration {
    let reqs = proxy.requests_to(part);
    assert!(reqs.len() >= 2, "{}", proxy.describe());
    reqs[1].at.duration_since(reqs[0].at)
}

#[test]
fn too_many_requests_waits_retry_after_seconds() {
    let s = setup();
    s.proxy.once(
        "/manifests/",
        Fault::Status {
            status: 429,
            retry_after: Some("1".into()),
            code: Some("TOOMANYREQUESTS".into()),
        },
    );
    let out = s.pull(&[], &[]);
    ok(&s, &out);
    let reqs = s.proxy.requests_to("/manifests/");
    assert_eq!(statuses(&reqs), [429, 200]);
    let waited = gap(&s.proxy, "/manifests/");
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(10),
        "waited {waited:?}"
    );
}

#[test]
fn too_many_requests_waits_retry_after_http_date() {
    let s = setup();
    // 5 s ahead: the date is set before the pull starts, and on a loaded
    // machine the 429 can reach the client seconds later.
    let when = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(5));
    s.proxy.once(
        &s.layer_path(0),
        Fault::Status {
            status: 429,
            retry_after: Some(when),
            code: None,
        },
    );
    let out = s.pull(&[], &[]);
    ok(&s, &out);
    assert_eq!(statuses(&s.proxy.requests_to(&s.layer_path(0))), [429, 200]);
    // The date has whole seconds: 5 s ahead less the start-up is more than 1 s.
    let waited = gap(&s.proxy, &s.layer_path(0));
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "waited {waited:?}"
    );
}

#[test]
fn service_unavailable_twice_then_success() {
    let s = setup();
    s.proxy.times(2, &s.layer_path(2), Fault::status(503));
    let out = s.pull(&[], &[]);
    ok(&s, &out);
    assert_eq!(
        statuses(&s.proxy.requests_to(&s.layer_path(2))),
        [503, 503, 200]
    );
}

#[test]
fn retries_zero_fails_at_once_on_503() {
    let s = setup();
    s.proxy.once("/manifests/", Fault::status(503));
    let started = Instant::now();
    let out = s.pull(&["--retries", "0"], &[]);
    let line = assert_clean_failure(&s.env, &out, &["503"]);
    assert!(line.contains("Service Unavailable"), "{line}");
    assert_eq!(s.proxy.requests_to("/manifests/").len(), 1);
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn missing_blob_names_blob_unknown() {
    let s = setup();
    // The real registry's 404 for a blob it lost.
    let path = s.reg.blob_data_path(&s.built.layers[2].digest);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    let out = s.pull(&["--retries", "0"], &[]);
    let line = assert_clean_failure(&s.env, &out, &["BLOB_UNKNOWN"]);
    assert!(line.contains("404"), "{line}");
}

#[test]
fn bare_404_on_a_blob_names_blob_unknown() {
    let s = setup();
    s.proxy.always(&s.layer_path(0), Fault::status(404));
    let out = s.pull(&[], &[]);
    let line = assert_clean_failure(&s.env, &out, &["BLOB_UNKNOWN"]);
    assert!(line.contains("404"), "{line}");
    // A 404 is an answer, not a hiccup: no retries.
    assert_eq!(s.proxy.requests_to(&s.layer_path(0)).len(), 1);
}

// ---------------------------------------------------------------------------
// Stalls and timeouts

#[test]
fn stalled_blob_times_out() {
    let s = setup();
    s.proxy.always(&s.layer_path(1), Fault::Stall);
    let started = Instant::now();
    let out = s.pull(&["--retries", "1", "--read-timeout", "1"], &[]);
    let line = assert_clean_failure(&s.env, &out, &["timed out", "timeout"]);
    assert!(line.contains(&s.built.layers[1].digest), "{line}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(s.proxy.requests_to(&s.layer_path(1)).len(), 2);
}

#[test]
fn stalled_blob_once_is_retried() {
    let s = setup();
    s.proxy.once(&s.layer_path(1), Fault::Stall);
    let out = s.pull(&[], &[("OCCYSTRAP_READ_TIMEOUT", "1")]);
    ok(&s, &out);
    assert_eq!(s.proxy.requests_to(&s.layer_path(1)).len(), 2);
}

#[test]
fn stalled_manifest_body_is_retried() {
    let s = setup();
    s.proxy.once("/manifests/", Fault::Stall);
    let out = s.pull(&[], &[("OCCYSTRAP_READ_TIMEOUT", "1")]);
    ok(&s, &out);
    assert_eq!(s.proxy.requests_to("/manifests/").len(), 2);
}

#[test]
fn stalled_manifest_times_out() {
    let s = setup();
    s.proxy.always("/manifests/", Fault::Stall);
    let started = Instant::now();
    let out = s.pull(&["--retries", "0"], &[("OCCYSTRAP_READ_TIMEOUT", "1")]);
    assert_clean_failure(&s.env, &out, &["timed out", "timeout"]);
    assert!(started.elapsed() < Duration::from_secs(20));
}

// ---------------------------------------------------------------------------
// Bearer tokens that expire mid-run

#[test]
fn expired_bearer_token_is_refreshed_once() {
    let s = setup();
    // Manifest, config and the first layer use the first token; the second
    // layer's request is refused and needs a new one.
    s.proxy.require_bearer(3);
    let out = s.pull(&["-j", "1"], &[]);
    ok(&s, &out);
    let log = s.proxy.requests();
    let tokens = log.iter().filter(|r| r.path == "/token").count();
    assert_eq!(tokens, 2, "{}", s.proxy.describe());
    // Unauthenticated first try, then one refusal for the expired token.
    let refused: Vec<&Record> = log.iter().filter(|r| r.status == 401).collect();
    assert_eq!(refused.len(), 2, "{}", s.proxy.describe());
    assert!(
        refused[1].path.contains("/blobs/"),
        "{}",
        s.proxy.describe()
    );
}

// ---------------------------------------------------------------------------
// Rate limit

/// Manifest, config and three layers at 2 a second, bursts of 2: the last
/// request goes out at least 1.5 s after the first.
fn rate_limited(extra: &[&str], envs: &[(&str, &str)]) {
    let s = setup();
    let started = Instant::now();
    let out = s.pull(extra, envs);
    ok(&s, &out);
    let log = s.proxy.requests();
    assert_eq!(log.len(), 5, "{}", s.proxy.describe());
    let span = log[4].at.duration_since(log[0].at);
    assert!(
        span >= Duration::from_millis(1400) && span < Duration::from_secs(20),
        "5 requests took {span:?}:\n{}",
        s.proxy.describe()
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn rate_limit_flag_spaces_requests() {
    rate_limited(&["--rate-limit", "2"], &[]);
}

#[test]
fn rate_limit_from_the_environment_spaces_requests() {
    rate_limited(&[], &[("OCCYSTRAP_RATE_LIMIT", "2")]);
}

// ---------------------------------------------------------------------------
// Hostile metadata

fn serve_json(body: Vec<u8>, content_type: &str, content_length: bool) -> Fault {
    Fault::Serve {
        content_type: content_type.into(),
        body,
        content_length,
    }
}

/// A JSON document of `len` bytes that parses as an OCI manifest.
fn padded_manifest(len: usize) -> Vec<u8> {
    let mut doc = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256_digest(b"{}"),
            "size": 2
        },
        "layers": [],
        "annotations": {"pad": ""}
    });
    let base = serde_json::to_vec(&doc).unwrap().len();
    doc["annotations"]["pad"] = json!("x".repeat(len.saturating_sub(base)));
    serde_json::to_vec(&doc).unwrap()
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[test]
fn oversized_manifest_is_refused() {
    let (env, proxy, _closed) = mock_only();
    proxy.always(
        "/manifests/",
        serve_json(padded_manifest(5 << 20), OCI_MANIFEST, true),
    );
    let out = pull_via(&env, &proxy, &[], &[]);
    let line = assert_clean_failure(&env, &out, &["allowed"]);
    assert!(line.contains("4194304"), "{line}");
}

#[test]
fn oversized_manifest_without_content_length_is_refused() {
    let (env, proxy, _closed) = mock_only();
    proxy.always(
        "/manifests/",
        serve_json(padded_manifest(5 << 20), OCI_MANIFEST, false),
    );
    let out = pull_via(&env, &proxy, &[], &[]);
    let line = assert_clean_failure(&env, &out, &["allowed"]);
    assert!(line.contains("4194304"), "{line}");
    // Read up to the cap, not to the end.
    let sent = proxy.bytes_sent_to("/manifests/");
    assert!(sent <= 5 << 20, "{sent}");
}

#[test]
fn oversized_config_is_refused_before_download() {
    let (env, proxy, _closed) = mock_only();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256_digest(b"big"),
            "size": 9u64 << 20
        },
        "layers": []
    });
    proxy.always(
        "/manifests/",
        serve_json(serde_json::to_vec(&manifest).unwrap(), OCI_MANIFEST, true),
    );
    let out = pull_via(&env, &proxy, &[], &[]);
    assert_clean_failure(&env, &out, &["allowed"]);
    assert!(
        proxy.requests_to("/blobs/").is_empty(),
        "{}",
        proxy.describe()
    );
}

#[test]
fn config_longer_than_its_descriptor_is_refused() {
    let (env, proxy, _closed) = mock_only();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256_digest(b"{}"),
            "size": 2
        },
        "layers": []
    });
    proxy.always(
        "/manifests/",
        serve_json(serde_json::to_vec(&manifest).unwrap(), OCI_MANIFEST, true),
    );
    proxy.always(
        "/blobs/",
        serve_json(vec![b' '; 7 << 20], "application/json", false),
    );
    let out = pull_via(&env, &proxy, &[], &[]);
    assert_clean_failure(&env, &out, &["allowed", "size", "mismatch"]);
}

fn index_of(entries: &[(String, usize, &str)]) -> Vec<u8> {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(digest, size, media)| {
            json!({
                "mediaType": media,
                "digest": digest,
                "size": size,
                "platform": {"os": "linux", "architecture": "amd64"}
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests
    }))
    .unwrap()
}

#[test]
fn nested_index_is_not_followed() {
    let (env, proxy, _closed) = mock_only();
    let leaf = padded_manifest(600);
    let inner = index_of(&[(sha256_digest(&leaf), leaf.len(), OCI_MANIFEST)]);
    let outer = index_of(&[(sha256_digest(&inner), inner.len(), OCI_INDEX)]);
    proxy.always(
        &format!("/manifests/{}", sha256_digest(&inner)),
        serve_json(inner.clone(), OCI_INDEX, true),
    );
    proxy.always(
        &format!("/manifests/{}", sha256_digest(&leaf)),
        serve_json(leaf.clone(), OCI_MANIFEST, true),
    );
    proxy.always("/manifests/", serve_json(outer, OCI_INDEX, true));
    let out = pull_via(&env, &proxy, &["--architecture", "amd64"], &[]);
    assert_clean_failure(&env, &out, &["index"]);
    assert_eq!(
        proxy.requests_to("/manifests/").len(),
        2,
        "{}",
        proxy.describe()
    );
}

#[test]
fn index_that_lists_itself_is_not_followed_forever() {
    let (env, proxy, _closed) = mock_only();
    // An index cannot hold its own digest, so the proxy lies: whatever
    // manifest is asked for, the same index comes back.
    let fake = sha256_digest(b"the index itself");
    let index = index_of(&[(fake.clone(), 400, OCI_INDEX)]);
    proxy.always("/manifests/", serve_json(index, OCI_INDEX, true));
    let out = pull_via(&env, &proxy, &["--architecture", "amd64"], &[]);
    assert_clean_failure(&env, &out, &["digest", "mismatch", "index"]);
    assert_eq!(
        proxy.requests_to("/manifests/").len(),
        2,
        "{}",
        proxy.describe()
    );
}

// ---------------------------------------------------------------------------
// Hostile docker-save manifest.json

fn docker_save_with_manifest(env: &TestEnv, manifest: &[u8]) -> std::path::PathBuf {
    let path = env.work("hostile.tar");
    crate::support::images::write_tar(
        &path,
        &[
            ("manifest.json".to_string(), Some(manifest.to_vec())),
            ("repositories".to_string(), Some(b"{}".to_vec())),
        ],
    );
    path
}

fn tar_to_tar_fails(env: &TestEnv, input: &Path, words: &[&str]) -> String {
    let started = Instant::now();
    let out = env
        .occy()
        .args(["process", &tar_uri(input), &tar_uri(&env.out("copy.tar"))])
        .run();
    let line = assert_clean_failure(env, &out, words);
    assert!(started.elapsed() < Duration::from_secs(60));
    line
}

#[test]
fn huge_docker_save_manifest_is_refused() {
    let env = TestEnv::new();
    let mut big = b"[{\"Config\":\"x.json\",\"RepoTags\":[\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 9 << 20));
    big.extend_from_slice(b"\"],\"Layers\":[]}]");
    let input = docker_save_with_manifest(&env, &big);
    tar_to_tar_fails(&env, &input, &["manifest.json", "large", "limit", "bytes"]);
}

#[test]
fn deep_docker_save_manifest_is_refused() {
    let env = TestEnv::new();
    let depth = 200_000;
    let mut deep = Vec::with_capacity(depth * 2);
    deep.extend(std::iter::repeat_n(b'[', depth));
    deep.extend(std::iter::repeat_n(b']', depth));
    let input = docker_save_with_manifest(&env, &deep);
    tar_to_tar_fails(&env, &input, &["manifest.json"]);
}

#[test]
fn docker_save_manifest_with_many_bogus_layers_is_refused() {
    let env = TestEnv::new();
    let layers: Vec<String> = (0..100_000).map(|i| format!("{i}/layer.tar")).collect();
    let m = serde_json::to_vec(&json!([{
        "Config": "c.json", "RepoTags": ["a:b"], "Layers": layers
    }]))
    .unwrap();
    let input = docker_save_with_manifest(&env, &m);
    tar_to_tar_fails(&env, &input, &["c.json", "not", "missing", "no member"]);
}

/// The bottom layer reaches an ordered sink as a stream while it downloads
/// (see `src/handoff.rs`); a corrupt blob must still be reported as a digest
/// mismatch, and leave nothing, whichever sink was reading it.
#[test]
fn corrupt_streamed_layer_fails_cleanly_in_every_ordered_sink() {
    let s = setup();
    s.proxy.always(&s.layer_path(0), Fault::Corrupt(100));
    for dest in [
        tar_uri(&s.env.out("image.tar")),
        format!("oci://{}", s.env.out("bundle").display()),
        format!("dir://{}?expand=true", s.env.out("store").display()),
    ] {
        let out = s
            .env
            .occy()
            .args(["--insecure", "process", &s.proxy.uri(REPO, TAG), &dest])
            .run();
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        assert!(out.stderr.contains("digest mismatch"), "{}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
        // A store's directory may stay (it is where later runs look), but
        // empty: no layer directory, no partial file, no tree.
        let left = s.env.out_dir_entries();
        assert!(left.iter().all(|e| e == "store"), "{left:?}");
        let _ = std::fs::remove_dir_all(s.env.out("store"));
    }
}

/// A layer whose body stops short, read by a sink as a stream: the sink
/// must not take the short stream for a whole layer.
#[test]
fn truncated_streamed_layer_fails_cleanly() {
    let s = setup();
    s.proxy.always(&s.layer_path(0), Fault::CutFraction(0.5));
    let out = s
        .env
        .occy()
        .args([
            "--insecure",
            "--retries",
            "0",
            "process",
            &s.proxy.uri(REPO, TAG),
            &format!("oci://{}", s.env.out("bundle").display()),
        ])
        .run();
    assert_clean_failure(&s.env, &out, &["broke off", "short", "truncated", "ended"]);
    assert!(!s.env.out("bundle").exists());
}
