//! Copies into a registry (`registry://` as the destination): exact
//! registry-to-registry copies, repeat copies that upload nothing, mounts,
//! docker-save, store and layout sources, zstd, basic auth, faults on the
//! upload side, refusals, filtered copies. Two real registries, with the
//! recording/fault proxy in front of the destination.

use serde_json::Value;

use crate::support::images::{busybox_image, registry_manifest};
use crate::support::proxy::{Fault, Proxy, Record};
use crate::support::push::{PushFormat, push_busybox, push_image};
use crate::support::tools::{podman_load, skopeo_ok};
use crate::support::{Compression, Output, Registry, TestEnv, assert_clean_failure, http};

const REPO: &str = "team/app";

/// `occystrap --insecure process SRC DST ARGS...`.
fn process(env: &TestEnv, src: &str, dst: &str, args: &[&str]) -> Output {
    let mut all = vec!["--insecure", "process", src, dst];
    all.extend_from_slice(args);
    env.occy().args(&all).run()
}

/// Requests that wrote blobs (upload sessions: POST, PATCH, PUT).
fn blob_writes(p: &Proxy) -> Vec<Record> {
    p.requests_to("/blobs/uploads/")
        .into_iter()
        .filter(|r| r.method == "PATCH" || r.method == "PUT")
        .collect()
}

/// Reads `host/repo:tag` back with skopeo: inspect, then a docker-archive
/// that podman loads (an OCI layout when `zstd`: a docker-archive cannot
/// hold zstd layers).
fn read_back(env: &TestEnv, host: &str, repo: &str, tag: &str, zstd: bool) -> Value {
    let tmp = env.tool_tmp();
    let src = format!("docker://{host}/{repo}:{tag}");
    let inspect = ["inspect", "--tls-verify=false", &src];
    let mut copy = vec!["copy", "-q", "--src-tls-verify=false"];
    let info: Value = serde_json::from_str(&skopeo_ok(&tmp, &inspect).stdout).unwrap();
    let archive = env.work(&format!("readback-{}.tar", repo.replace('/', "-")));
    let _ = std::fs::remove_file(&archive);
    let dst = if zstd {
        format!("oci:{}:{tag}", archive.display())
    } else {
        format!("docker-archive:{}:{repo}:{tag}", archive.display())
    };
    copy.extend([src.as_str(), dst.as_str()]);
    skopeo_ok(&tmp, &copy);
    if !zstd {
        podman_load(&env.work("podman"), &archive, None);
    }
    info
}

/// The destination has no manifest at `repo:tag`.
fn assert_no_manifest(host: &str, repo: &str, tag: &str) {
    let r = http::get_manifest(host, repo, tag).expect("GET manifest");
    assert_eq!(r.status, 404, "a manifest was pushed to {repo}:{tag}");
}

#[test]
fn registry_push_exact_copy_keeps_the_digest_and_a_repeat_uploads_nothing() {
    let env = TestEnv::new();
    let (src, dst) = (Registry::start(), Registry::start());
    push_busybox(&env, &src, PushFormat::Docker);
    let (_, want) = registry_manifest(&env.tool_tmp(), &src, REPO, "v1");
    let proxy = Proxy::start(&dst.host());
    let to = proxy.uri("mirror/app", "v1");
    let out = process(&env, &src.uri(REPO, "v1"), &to, &[]);
    assert!(out.code == Some(0), "{}\n{}", out.cmdline, out.stderr);
    let (_, got) = registry_manifest(&env.tool_tmp(), &dst, "mirror/app", "v1");
    assert_eq!(got, want, "the copy has another manifest digest");
    assert!(!blob_writes(&proxy).is_empty());
    assert!(
        out.stderr
            .contains("blobs: 4 uploaded, 0 mounted, 0 already there"),
        "{}",
        out.stderr
    );
    read_back(&env, &dst.host(), "mirror/app", "v1", false);

    // The repeat: the manifest HEAD says it is there; nothing else moves.
    let before = proxy.requests().len();
    let out = process(&env, &src.uri(REPO, "v1"), &to, &[]);
    assert!(out.code == Some(0), "{}", out.stderr);
    let again: Vec<Record> = proxy.requests().into_iter().skip(before).collect();
    assert!(
        again.iter().all(|r| !r.path.contains("/blobs/")),
        "a repeat copy touched blobs: {again:?}"
    );

    // A digest destination pushes by digest only; a wrong digest is refused
    // before any manifest goes up.
    let by_digest = format!("registry://{}/pinned/app@{want}", dst.host());
    let out = process(&env, &src.uri(REPO, "v1"), &by_digest, &[]);
    assert!(out.code == Some(0), "{}", out.stderr);
    let r = http::get_manifest(&dst.host(), "pinned/app", &want).unwrap();
    assert_eq!(r.status, 200);
    assert_no_manifest(&dst.host(), "pinned/app", "latest");
    let wrong = format!(
        "registry://{}/wrong/app@sha256:{}",
        dst.host(),
        "0".repeat(64)
    );
    let out = process(&env, &src.uri(REPO, "v1"), &wrong, &[]);
    assert_clean_failure(&env, &out, &["not the"]);
    assert_eq!(
        http::get_manifest(&dst.host(), "wrong/app", &want)
            .unwrap()
            .status,
        404
    );
}

#[test]
fn registry_push_mounts_within_a_registry_and_uploads_when_declined() {
    let env = TestEnv::new();
    let dst = Registry::start();
    push_busybox(&env, &dst, PushFormat::Oci);
    let (_, want) = registry_manifest(&env.tool_tmp(), &dst, REPO, "v1");
    let proxy = Proxy::start(&dst.host());
    let out = process(
        &env,
        &proxy.uri(REPO, "v1"),
        &proxy.uri("other/app", "v1"),
        &[],
    );
    assert!(out.code == Some(0), "{}", out.stderr);
    let mounts: Vec<Record> = proxy
        .requests_to("/v2/other/app/blobs/uploads/")
        .into_iter()
        .filter(|r| r.method == "POST" && r.query.as_deref().is_some_and(|q| q.contains("mount=")))
        .collect();
    // Three layers and the config.
    assert_eq!(mounts.len(), 4, "{}", proxy.describe());
    assert!(mounts.iter().all(|r| r.status == 201), "{mounts:?}");
    assert!(
        blob_writes(&proxy).is_empty(),
        "mounted blobs were uploaded"
    );
    assert!(
        out.stderr.contains("blobs: 0 uploaded, 4 mounted"),
        "{}",
        out.stderr
    );
    assert_eq!(
        registry_manifest(&env.tool_tmp(), &dst, "other/app", "v1").1,
        want
    );

    // A registry that declines the layers' mounts (202, no session; they
    // are asked before any upload starts): upload them. The config's mount,
    // asked last, goes through.
    let proxy = Proxy::start(&dst.host());
    proxy.method(
        "POST",
        Some(3),
        "/v2/third/app/blobs/uploads/",
        Fault::status(202),
    );
    let out = process(
        &env,
        &proxy.uri(REPO, "v1"),
        &proxy.uri("third/app", "v1"),
        &[],
    );
    assert!(out.code == Some(0), "{}", out.stderr);
    let puts = blob_writes(&proxy);
    assert_eq!(
        puts.iter().filter(|r| r.method == "PUT").count(),
        3,
        "{puts:?}"
    );
    assert_eq!(
        registry_manifest(&env.tool_tmp(), &dst, "third/app", "v1").1,
        want
    );
}

/// A docker-save tarball of the busybox image, layers uncompressed.
fn docker_save(env: &TestEnv) -> std::path::PathBuf {
    use crate::support::images::{ManifestPos, SaveStyle, write_docker_save};
    let built = busybox_image(Compression::None).build();
    let path = env.work("app.tar");
    write_docker_save(
        &path,
        &[(&built, vec!["app:v1".into()])],
        SaveStyle::Legacy,
        ManifestPos::Sorted,
    );
    path
}

#[test]
fn registry_push_from_a_docker_save_compresses_deterministically() {
    let env = TestEnv::new();
    let dst = Registry::start();
    let proxy = Proxy::start(&dst.host());
    let tar = format!("tar://{}", docker_save(&env).display());
    let out = process(&env, &tar, &proxy.uri("team/saved", "v1"), &[]);
    assert!(out.code == Some(0), "{}", out.stderr);
    let info = read_back(&env, &dst.host(), "team/saved", "v1", false);
    assert_eq!(info["Layers"].as_array().unwrap().len(), 3);
    let (raw, first) = registry_manifest(&env.tool_tmp(), &dst, "team/saved", "v1");
    let m: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    // Same bytes again: same digests, found by HEAD, nothing uploaded.
    let before = blob_writes(&proxy).len();
    let out = process(&env, &tar, &proxy.uri("team/saved", "v1"), &[]);
    assert!(out.code == Some(0), "{}", out.stderr);
    assert_eq!(blob_writes(&proxy).len(), before, "a repeat uploaded blobs");
    assert_eq!(
        registry_manifest(&env.tool_tmp(), &dst, "team/saved", "v1").1,
        first
    );
}

#[test]
fn registry_push_zstd_from_a_docker_save_and_from_a_layer_store() {
    let env = TestEnv::new();
    let dst = Registry::start();
    let tar = format!("tar://{}", docker_save(&env).display());
    let to = format!("{}?compression=zstd", dst.uri("team/z", "v1"));
    let out = process(&env, &tar, &to, &[]);
    assert!(out.code == Some(0), "{}", out.stderr);
    let (raw, _) = registry_manifest(&env.tool_tmp(), &dst, "team/z", "v1");
    let m: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }
    read_back(&env, &dst.host(), "team/z", "v1", true);
    let bad = format!(
        "{}?compression=zstd&format=docker",
        dst.uri("team/zd", "v1")
    );
    let out = process(&env, &tar, &bad, &[]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("format=oci"), "{}", out.stderr);

    // dir:// keeps layers as tars; they go up gzipped (--compression).
    let store = env.work("store");
    let out = process(&env, &tar, &format!("dir://{}", store.display()), &[]);
    assert!(out.code == Some(0), "{}", out.stderr);
    let from = format!("dir://{}?image=app&tag=v1", store.display());
    let out = process(
        &env,
        &from,
        &dst.uri("team/fromdir", "v1"),
        &["--compression", "gzip"],
    );
    assert!(out.code == Some(0), "{}", out.stderr);
    read_back(&env, &dst.host(), "team/fromdir", "v1", false);
}

#[test]
fn registry_push_from_an_oci_layout_keeps_blobs_as_stored() {
    use crate::support::images::busybox_image_mixed;
    use crate::support::images::{OciLayout, unique_dir};
    let env = TestEnv::new();
    let dst = Registry::start();
    let img = busybox_image_mixed(&[Compression::Zstd, Compression::None, Compression::Gzip]);
    let built = img.build();
    let dir = unique_dir(&env.work(""), "layout");
    OciLayout::create(&dir).add_image("t", &built);
    let from = format!("oci-layout://{}:t", dir.display());
    let out = process(&env, &from, &dst.uri("team/layout", "v1"), &[]);
    assert!(out.code == Some(0), "{}", out.stderr);
    let (raw, digest) = registry_manifest(&env.tool_tmp(), &dst, "team/layout", "v1");
    assert_eq!(
        raw, built.manifest,
        "the layout's manifest was not kept byte for byte"
    );
    assert_eq!(digest, built.manifest_digest);
    read_back(&env, &dst.host(), "team/layout", "v1", true);
}

#[test]
fn registry_push_basic_auth_with_other_credentials_than_the_source() {
    let env = TestEnv::new();
    let src = Registry::start_with_htpasswd("puller", "src-Secret-1");
    let dst = Registry::start_with_htpasswd("pusher", "dst-Secret-2");
    push_busybox(&env, &src, PushFormat::Oci);
    let (_, want) = registry_manifest(&env.tool_tmp(), &src, REPO, "v1");
    let args = [
        "--username",
        "puller",
        "--password",
        "src-Secret-1",
        "--dest-username",
        "pusher",
        "--dest-password",
        "dst-Secret-2",
    ];
    let out = process(&env, &src.uri(REPO, "v1"), &dst.uri(REPO, "v1"), &args);
    assert!(out.code == Some(0), "{}", out.stderr);
    assert_eq!(registry_manifest(&env.tool_tmp(), &dst, REPO, "v1").1, want);
    // The source's credentials do not open the destination.
    let out = env
        .occy()
        .args([
            "--insecure",
            "--username",
            "puller",
            "--password",
            "src-Secret-1",
            "process",
        ])
        .args([src.uri(REPO, "v1"), dst.uri("team/other", "v1")])
        .run();
    let line = assert_clean_failure(&env, &out, &["401", "unauthorized"]);
    assert!(!line.contains("Secret"), "{line}");
    assert_no_manifest_with(&dst, "team/other", "v1");
}

/// As [`assert_no_manifest`], on a registry with credentials (skopeo).
fn assert_no_manifest_with(reg: &Registry, repo: &str, tag: &str) {
    let (u, p) = reg.creds().unwrap();
    let status = http::request(
        &reg.host(),
        "GET",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Authorization", &basic(u, p))],
    )
    .unwrap()
    .status;
    assert_eq!(status, 404, "a manifest was pushed to {repo}:{tag}");
}

fn basic(u: &str, p: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
    )
}

/// An image with one 3 MiB layer (streamed with PATCH) and a small one.
fn big_image() -> crate::support::Image {
    crate::support::images::big_and_small_image(3 << 20, 7)
}

#[test]
fn registry_push_faults_on_the_upload_side_end_exact() {
    let env = TestEnv::new();
    let (src, dst) = (Registry::start(), Registry::start());
    push_image(&env, &src, "team/app:v1", &big_image(), PushFormat::Oci);
    let (_, want) = registry_manifest(&env.tool_tmp(), &src, REPO, "v1");
    let proxy = Proxy::start(&dst.host());
    let session = "/v2/team/app/blobs/uploads/";
    proxy.method("PATCH", Some(1), session, Fault::status(503));
    proxy.method("PATCH", Some(1), session, Fault::Silent);
    let retry_now = Fault::Status {
        status: 429,
        retry_after: Some("0".into()),
        code: Some("TOOMANYREQUESTS".into()),
    };
    proxy.method("PUT", Some(1), session, retry_now);
    proxy.method("POST", Some(1), session, Fault::status(500));
    let lost = Fault::Status {
        status: 404,
        retry_after: None,
        code: Some("BLOB_UPLOAD_UNKNOWN".into()),
    };
    proxy.method("PUT", Some(1), session, lost);
    let fast = [
        "--request-timeout",
        "2",
        "--min-speed",
        "100M",
        "--retries",
        "4",
    ];
    let out = process(&env, &src.uri(REPO, "v1"), &proxy.uri(REPO, "v1"), &fast);
    assert!(out.code == Some(0), "{}\n{}", out.stderr, proxy.describe());
    assert_eq!(registry_manifest(&env.tool_tmp(), &dst, REPO, "v1").1, want);
    let faulted = proxy
        .requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert_eq!(faulted, 5, "{}", proxy.describe());
}

#[test]
fn registry_push_failing_uploads_push_no_manifest() {
    let env = TestEnv::new();
    let (src, dst) = (Registry::start(), Registry::start());
    push_image(&env, &src, "team/app:v1", &big_image(), PushFormat::Oci);
    let proxy = Proxy::start(&dst.host());
    proxy.method("PATCH", None, "/blobs/uploads/", Fault::status(503));
    let out = process(
        &env,
        &src.uri(REPO, "v1"),
        &proxy.uri(REPO, "v1"),
        &["--retries", "1"],
    );
    assert_clean_failure(&env, &out, &["503"]);
    assert_no_manifest(&dst.host(), REPO, "v1");
}

#[test]
fn registry_push_refusals_are_one_line_naming_the_code() {
    let env = TestEnv::new();
    let (src, dst) = (Registry::start(), Registry::start());
    push_busybox(&env, &src, PushFormat::Oci);
    for (status, code) in [(403, "DENIED"), (400, "MANIFEST_INVALID")] {
        let proxy = Proxy::start(&dst.host());
        let refuse = Fault::Status {
            status,
            retry_after: None,
            code: Some(code.into()),
        };
        proxy.method("PUT", None, "/manifests/", refuse);
        let out = process(&env, &src.uri(REPO, "v1"), &proxy.uri(REPO, "v1"), &[]);
        assert_clean_failure(&env, &out, &[code]);
        assert_no_manifest(&dst.host(), REPO, "v1");
    }
    // A registry that refuses blobs fails before any manifest.
    let proxy = Proxy::start(&dst.host());
    let denied = Fault::Status {
        status: 403,
        retry_after: None,
        code: Some("DENIED".into()),
    };
    proxy.method("POST", None, "/blobs/uploads/", denied);
    let out = process(
        &env,
        &src.uri(REPO, "v1"),
        &proxy.uri("team/denied", "v1"),
        &[],
    );
    assert_clean_failure(&env, &out, &["DENIED"]);
    assert!(
        proxy
            .requests_to("/manifests/")
            .iter()
            .all(|r| r.method != "PUT")
    );
}

#[test]
fn registry_push_filtered_copy_rebuilds_the_manifest() {
    let env = TestEnv::new();
    let (src, dst) = (Registry::start(), Registry::start());
    push_busybox(&env, &src, PushFormat::Docker);
    let (src_raw, want) = registry_manifest(&env.tool_tmp(), &src, REPO, "v1");
    let out = process(
        &env,
        &src.uri(REPO, "v1"),
        &dst.uri(REPO, "v1"),
        &["-f", "normalize-timestamps"],
    );
    assert!(out.code == Some(0), "{}", out.stderr);
    let (raw, got) = registry_manifest(&env.tool_tmp(), &dst, REPO, "v1");
    assert_ne!(got, want);
    let (a, b): (Value, Value) = (
        serde_json::from_slice(&src_raw).unwrap(),
        serde_json::from_slice(&raw).unwrap(),
    );
    assert_eq!(
        b["mediaType"], a["mediaType"],
        "the source's format is kept"
    );
    let to_oci = format!("{}?format=oci", dst.uri("team/oci", "v1"));
    let out = process(&env, &src.uri(REPO, "v1"), &to_oci, &[]);
    assert!(out.code == Some(0), "{}", out.stderr);
    let (raw, _) = registry_manifest(&env.tool_tmp(), &dst, "team/oci", "v1");
    let m: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    read_back(&env, &dst.host(), "team/oci", "v1", false);
    assert_ne!(a["config"]["digest"], b["config"]["digest"]);
    assert_ne!(a["layers"], b["layers"]);
    read_back(&env, &dst.host(), REPO, "v1", false);
}

#[test]
fn registry_push_bearer_tokens_ask_for_push_and_the_mount_source() {
    let env = TestEnv::new();
    let dst = Registry::start();
    push_busybox(&env, &dst, PushFormat::Oci);
    let (_, want) = registry_manifest(&env.tool_tmp(), &dst, REPO, "v1");
    let proxy = Proxy::start(&dst.host());
    proxy.require_bearer(1000);
    let out = process(
        &env,
        &proxy.uri(REPO, "v1"),
        &proxy.uri("other/app", "v1"),
        &[],
    );
    assert!(out.code == Some(0), "{}", out.stderr);
    assert_eq!(
        registry_manifest(&env.tool_tmp(), &dst, "other/app", "v1").1,
        want
    );
    let scopes: Vec<Vec<String>> = proxy
        .requests_to("/token")
        .iter()
        .map(|r| {
            url::form_urlencoded::parse(r.query.as_deref().unwrap_or("").as_bytes())
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.into_owned())
                .collect()
        })
        .collect();
    let push = |s: &String| s.split(' ').any(|s| s == "repository:other/app:push,pull");
    assert!(
        scopes.iter().any(|s| s.iter().any(push)),
        "no token asked to push: {scopes:?}"
    );
    // The mount's token: push on the destination, pull on the source, as
    // two parameters.
    assert!(
        scopes
            .iter()
            .any(|s| s.len() == 2 && push(&s[0]) && s[1] == "repository:team/app:pull"),
        "no mount token: {scopes:?}"
    );
    let mounted = proxy
        .requests_to("/v2/other/app/blobs/uploads/")
        .iter()
        .filter(|r| r.status == 201 && r.query.as_deref().is_some_and(|q| q.contains("mount=")))
        .count();
    assert_eq!(mounted, 4, "{}", proxy.describe());
}

/// Peak RSS of a registry-to-registry copy of an image whose one layer is
/// `mib` MiB (kept as stored: an uncompressed tar).
fn copy_rss(env: &TestEnv, src: &Registry, dst: &Registry, mib: usize) -> u64 {
    use crate::support::images::pseudo_random;
    use crate::support::layer_tar::TarBuilder;
    use crate::support::limits::run_measured;
    let tag = format!("m{mib}");
    let tar = TarBuilder::new()
        .file("blob.bin", 0o644, &pseudo_random(mib << 20, mib as u64))
        .finish();
    let img = crate::support::Image::new("linux/amd64").layer(tar, Compression::None);
    push_image(
        env,
        src,
        &format!("team/big:{tag}"),
        &img,
        PushFormat::Preserve,
    );
    let occy = env.occy().args([
        "--insecure".to_string(),
        "process".into(),
        src.uri("team/big", &tag),
        dst.uri("team/big", &tag),
    ]);
    let m = run_measured(occy);
    assert!(m.out.code == Some(0), "{}", m.out.stderr);
    eprintln!("[{}] peak RSS {} MB", m.out.cmdline, m.peak_rss >> 20);
    m.peak_rss
}

#[test]
fn registry_push_memory_stays_flat_as_layers_grow() {
    let env = TestEnv::new();
    let (src, dst) = (Registry::start(), Registry::start());
    let small = copy_rss(&env, &src, &dst, 2);
    let large = copy_rss(&env, &src, &dst, 48);
    assert!(
        large < small + (16 << 20),
        "peak RSS grew with the layer: {} MB for 2 MiB, {} MB for 48 MiB",
        small >> 20,
        large >> 20
    );
}

#[test]
fn registry_push_verify_reads_back_what_was_written() {
    let env = TestEnv::new();
    let (src, dst) = (Registry::start(), Registry::start());
    push_busybox(&env, &src, PushFormat::Oci);
    let proxy = Proxy::start(&dst.host());
    let out = process(
        &env,
        &src.uri(REPO, "v1"),
        &proxy.uri(REPO, "v1"),
        &["--verify"],
    );
    assert!(out.code == Some(0), "{}", out.stderr);
    let heads = |p: &Proxy| {
        p.requests_to("/blobs/sha256:")
            .iter()
            .filter(|r| r.method == "HEAD")
            .count()
    };
    // Before the upload (3 layers, the config) and after it.
    assert_eq!(heads(&proxy), 8, "{}", proxy.describe());

    // A registry that loses blobs: every HEAD says 404, so --verify fails.
    let proxy = Proxy::start(&dst.host());
    proxy.method("HEAD", None, "/blobs/", Fault::status(404));
    let out = process(
        &env,
        &src.uri(REPO, "v1"),
        &proxy.uri("team/lossy", "v1"),
        &["--verify"],
    );
    assert_clean_failure(&env, &out, &["verify: blob"]);
}

/// The largest layer of `repo:v1` in `reg`: its digest and size.
fn largest_layer(env: &TestEnv, reg: &Registry) -> (String, u64) {
    let (raw, _) = registry_manifest(&env.tool_tmp(), reg, REPO, "v1");
    let m: Value = serde_json::from_slice(&raw).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let digest = l["digest"].as_str().unwrap().to_string();
            (digest, l["size"].as_u64().unwrap())
        })
        .max_by_key(|(_, size)| *size)
        .unwrap()
}

#[test]
fn registry_push_uploads_a_layer_while_it_downloads() {
    let env = TestEnv::new();
    let (src, dst) = (Registry::start(), Registry::start());
    push_image(&env, &src, "team/app:v1", &big_image(), PushFormat::Oci);
    let (_, want) = registry_manifest(&env.tool_tmp(), &src, REPO, "v1");
    let (digest, size) = largest_layer(&env, &src);
    let (from, to) = (Proxy::start(&src.host()), Proxy::start(&dst.host()));
    let rate = 1 << 20;
    from.throttle(rate);
    let out = process(&env, &from.uri(REPO, "v1"), &to.uri(REPO, "v1"), &[]);
    assert!(out.code == Some(0), "{}\n{}", out.stderr, to.describe());
    assert_eq!(registry_manifest(&env.tool_tmp(), &dst, REPO, "v1").1, want);
    let get = from
        .requests_to(&format!("/blobs/{digest}"))
        .into_iter()
        .find(|r| r.method == "GET")
        .expect("the layer was downloaded");
    // The big layer's session is the one whose PATCH carries its bytes.
    let patch = blob_writes(&to)
        .into_iter()
        .find(|r| r.method == "PATCH")
        .expect("the layer was streamed in a PATCH");
    let download = std::time::Duration::from_secs_f64(size as f64 / rate as f64);
    let started_after = patch.at.saturating_duration_since(get.at);
    assert!(
        started_after < download / 2,
        "the upload began {started_after:?} after the download, which takes {download:?}\n{}",
        to.describe()
    );
    // One PATCH for the layer: the live session went through, with no
    // second upload from the spooled copy.
    let patches = blob_writes(&to)
        .iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert_eq!(patches, 1, "{}", to.describe());
    let puts = blob_writes(&to)
        .into_iter()
        .filter(|r| r.method == "PUT" && r.query.as_deref().is_some_and(|q| q.contains("digest=")))
        .count();
    assert_eq!(puts, 3, "two layers and the config\n{}", to.describe());
}

#[test]
fn registry_push_a_lying_source_fails_the_layer_before_its_put() {
    let env = TestEnv::new();
    let (src, dst) = (Registry::start(), Registry::start());
    push_image(&env, &src, "team/app:v1", &big_image(), PushFormat::Oci);
    let (digest, _) = largest_layer(&env, &src);
    let (from, to) = (Proxy::start(&src.host()), Proxy::start(&dst.host()));
    // Past the gzip header: the blob still looks like a layer.
    from.always(&format!("/blobs/{digest}"), Fault::Corrupt(2 << 20));
    let out = process(&env, &from.uri(REPO, "v1"), &to.uri(REPO, "v1"), &[]);
    assert_clean_failure(&env, &out, &["digest"]);
    let closed = blob_writes(&to).into_iter().any(|r| {
        r.method == "PUT"
            && r.query
                .as_deref()
                .is_some_and(|q| q.contains(&digest.replace(':', "%3A")) || q.contains(&digest))
    });
    assert!(
        !closed,
        "the corrupt layer was committed\n{}",
        to.describe()
    );
    assert_no_manifest(&dst.host(), REPO, "v1");
}
