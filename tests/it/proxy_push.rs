//! `occystrap proxy`'s push path with real clients: skopeo and podman push
//! to the proxy, which filters each image into a real downstream registry;
//! what lands there is read back with skopeo. Bad clients (curl) get the
//! spec's errors and leave nothing downstream.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::images::{OciLayout, PLATFORMS, platform_image};
use crate::support::layer_tar::TarBuilder;
use crate::support::occy_proxy::OccyProxy;
use crate::support::proxy::{Fault, Proxy as Counting};
use crate::support::tools::{run, skopeo, skopeo_ok};
use crate::support::{Compression, Image, Registry, TestEnv, sha256_digest};

const TOOL_TIMEOUT: Duration = Duration::from_secs(180);

/// A two-layer image with `.py` and `.pyc` files, all with the harness's
/// non-zero mtime.
fn python_image() -> Image {
    let base = TarBuilder::new()
        .dir("app", 0o755)
        .file("app/main.py", 0o644, b"print('hi')\n")
        .file("app/main.pyc", 0o644, b"\x42\x0d\x0d\x0acompiled")
        .finish();
    let top = TarBuilder::new()
        .dir("app", 0o755)
        .dir("app/lib", 0o755)
        .file("app/lib/util.py", 0o644, b"X = 1\n")
        .file("app/lib/util.pyc", 0o644, b"\x42\x0d\x0d\x0acompiled too")
        .finish();
    Image::new("linux/amd64")
        .layer(base, Compression::Gzip)
        .layer(top, Compression::Gzip)
}

/// An OCI layout in the test's work dir holding `img` as `tag`.
fn layout_of(env: &TestEnv, img: &Image, tag: &str) -> (std::path::PathBuf, String) {
    let dir = env.work(&format!("layout-{tag}"));
    let built = img.build();
    let mut layout = OciLayout::create(&dir);
    layout.add_image(tag, &built);
    (dir, built.manifest_digest)
}

/// `skopeo copy` into the proxy; returns the digest skopeo wrote.
fn push(env: &TestEnv, from: &str, to: &str, extra: &[&str]) -> String {
    let digestfile = env.work(&format!("digest-{}", sha256_digest(to.as_bytes())));
    let df = digestfile.display().to_string();
    let mut args = vec!["copy", "-q", "--dest-tls-verify=false", "--digestfile", &df];
    args.extend_from_slice(extra);
    args.push(from);
    args.push(to);
    skopeo_ok(&env.tool_tmp(), &args);
    std::fs::read_to_string(&digestfile)
        .unwrap()
        .trim()
        .to_string()
}

/// The raw manifest (or index) downstream has for `repo:reference`, and
/// its digest.
fn downstream(env: &TestEnv, reg: &Registry, repo: &str, reference: &str) -> (Vec<u8>, String) {
    let sep = if reference.contains(':') { "@" } else { ":" };
    let uri = format!("docker://{}/{repo}{sep}{reference}", reg.host());
    let out = skopeo_ok(
        &env.tool_tmp(),
        &["inspect", "--raw", "--tls-verify=false", &uri],
    );
    let digest = sha256_digest(&out.stdout_bytes);
    (out.stdout_bytes, digest)
}

/// Every tar entry of every layer of `repo:tag` downstream, as
/// `(path, mtime)`, read from a `skopeo copy` to `dir:`.
fn downstream_entries(env: &TestEnv, reg: &Registry, repo: &str, tag: &str) -> Vec<(String, u64)> {
    let out = crate::support::images::unique_dir(&env.work("dirs"), "d");
    let src = format!("docker://{}/{repo}:{tag}", reg.host());
    let dst = format!("dir:{}", out.display());
    skopeo_ok(
        &env.tool_tmp(),
        &["copy", "-q", "--src-tls-verify=false", &src, &dst],
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let mut entries = Vec::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let digest = layer["digest"].as_str().unwrap();
        let blob = std::fs::read(out.join(digest.trim_start_matches("sha256:"))).unwrap();
        entries.extend(tar_entries(&blob));
    }
    entries
}

/// `(path, mtime)` of each entry of a layer blob (gzip or plain).
fn tar_entries(blob: &[u8]) -> Vec<(String, u64)> {
    let mut tar = Vec::new();
    if blob.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(blob)
            .read_to_end(&mut tar)
            .unwrap();
    } else {
        tar = blob.to_vec();
    }
    let mut archive = tar::Archive::new(&tar[..]);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            (path, e.header().mtime().unwrap())
        })
        .collect()
}

#[test]
fn a_filtered_push_lands_downstream_normalized_and_without_pyc() {
    let env = TestEnv::new();
    let dst = Registry::start();
    let proxy = OccyProxy::start(&[
        "-d",
        &format!("registry://{}", dst.host()),
        "-f",
        "normalize-timestamps",
        "-f",
        "exclude:pattern=**/*.pyc",
    ]);
    let (layout, source_digest) = layout_of(&env, &python_image(), "app");
    let written = push(
        &env,
        &format!("oci:{}:app", layout.display()),
        &format!("docker://{}/team/app:v1", proxy.host()),
        &[],
    );
    let (_, stored) = downstream(&env, &dst, "team/app", "v1");
    assert_ne!(stored, source_digest, "a filtered image has a new digest");
    // skopeo's --digestfile is the digest of the manifest it sent, not the
    // one the registry answered with (c/image computes it locally), so the
    // answer is checked by a PUT of our own: the same manifest, its blobs
    // staged by skopeo's push.
    assert_eq!(written, source_digest);
    let built = python_image().build();
    let (status, headers, body) = put(
        &proxy.host(),
        "team/app",
        "v3",
        "application/vnd.oci.image.manifest.v1+json",
        &built.manifest,
        &env,
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        header(&headers, "docker-content-digest"),
        Some(stored.as_str())
    );
    assert_eq!(
        header(&headers, "location"),
        Some(format!("/v2/team/app/manifests/{stored}").as_str())
    );
    assert_eq!(downstream(&env, &dst, "team/app", "v3").1, stored);
    let entries = downstream_entries(&env, &dst, "team/app", "v1");
    let paths: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
    assert!(paths.contains(&"app/main.py"), "{paths:?}");
    assert!(paths.contains(&"app/lib/util.py"), "{paths:?}");
    assert!(!paths.iter().any(|p| p.ends_with(".pyc")), "{paths:?}");
    assert!(
        entries.iter().all(|(_, m)| *m == 0),
        "timestamps not normalized: {entries:?}"
    );
    // The access log shows the manifest PUT answered 201.
    let log = proxy.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("PUT /v2/team/app/manifests/v1") && l.contains("201")),
        "{log}"
    );
}

#[test]
fn an_unfiltered_push_keeps_the_manifest_digest() {
    let env = TestEnv::new();
    let dst = Registry::start();
    let proxy = OccyProxy::start(&["-d", &format!("registry://{}/mirror", dst.host())]);
    let (layout, source_digest) = layout_of(&env, &python_image(), "app");
    let written = push(
        &env,
        &format!("oci:{}:app", layout.display()),
        &format!("docker://{}/team/app:v1", proxy.host()),
        &["--preserve-digests"],
    );
    // The namespace of `-d` is in front of the client's name.
    let (raw, stored) = downstream(&env, &dst, "mirror/team/app", "v1");
    assert_eq!(stored, source_digest, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(written, source_digest);
}

#[test]
fn a_three_platform_index_arrives_filtered_with_new_children() {
    let env = TestEnv::new();
    let dst = Registry::start();
    let counting = Counting::start(&dst.host());
    let proxy = OccyProxy::start(&[
        "-d",
        &format!("registry://{}", counting.host()),
        "-f",
        "normalize-timestamps",
    ]);
    let dir = env.work("multi");
    let built: Vec<_> = PLATFORMS
        .iter()
        .map(|p| platform_image(p, Compression::Gzip).build())
        .collect();
    let mut layout = OciLayout::create(&dir);
    layout.add_index("multi", &built);
    push(
        &env,
        &format!("oci:{}:multi", dir.display()),
        &format!("docker://{}/team/multi:v1", proxy.host()),
        &["--all"],
    );
    let (raw, _) = downstream(&env, &dst, "team/multi", "v1");
    let index: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let children = index["manifests"].as_array().expect("an index downstream");
    assert_eq!(children.len(), 3, "{index}");
    for (child, source) in children.iter().zip(&built) {
        let digest = child["digest"].as_str().unwrap();
        assert_ne!(digest, source.manifest_digest, "child kept its digest");
        assert_eq!(
            child["platform"]["architecture"],
            source.platform.architecture.as_str()
        );
        let (body, got) = downstream(&env, &dst, "team/multi", digest);
        assert_eq!(got, digest);
        let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(m["layers"].as_array().unwrap().len(), 2);
    }
    // Each child was copied once, on its own PUT; the index's PUT reused
    // them and stored only the index.
    let puts: Vec<String> = counting
        .requests_to("/manifests/")
        .into_iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.path)
        .collect();
    assert_eq!(puts.len(), 4, "{puts:?}");
    assert!(puts[3].ends_with("/manifests/v1"), "{puts:?}");
}

/// A podman command on private vfs storage under `state`.
fn podman(state: &Path, args: &[&str]) -> Command {
    crate::support::tools::podman_in(state, args)
}

#[test]
fn podman_pushes_through_the_proxy() {
    let env = TestEnv::new();
    let dst = Registry::start();
    let proxy = OccyProxy::start(&[
        "-d",
        &format!("registry://{}", dst.host()),
        "-f",
        "exclude:pattern=**/*.pyc",
    ]);
    let (layout, _) = layout_of(&env, &python_image(), "app");
    let archive = env.work("app.tar");
    skopeo_ok(
        &env.tool_tmp(),
        &[
            "copy",
            "-q",
            &format!("oci:{}:app", layout.display()),
            &format!("docker-archive:{}:localhost/team/pod:v1", archive.display()),
        ],
    );
    let state = env.work("podman");
    let a = archive.display().to_string();
    run(&mut podman(&state, &["load", "-i", &a]), TOOL_TIMEOUT).expect_ok();
    let to = format!("docker://{}/team/pod:v1", proxy.host());
    run(
        &mut podman(
            &state,
            &["push", "--tls-verify=false", "localhost/team/pod:v1", &to],
        ),
        TOOL_TIMEOUT,
    )
    .expect_ok();
    let entries = downstream_entries(&env, &dst, "team/pod", "v1");
    assert!(
        entries.iter().any(|(p, _)| p == "app/main.py"),
        "{entries:?}"
    );
    assert!(
        !entries.iter().any(|(p, _)| p.ends_with(".pyc")),
        "{entries:?}"
    );
}

#[test]
fn two_concurrent_pushes_sharing_a_layer_both_land() {
    let env = TestEnv::new();
    let dst = Registry::start();
    let proxy = OccyProxy::start(&[
        "-d",
        &format!("registry://{}", dst.host()),
        "-f",
        "normalize-timestamps",
    ]);
    let base = crate::support::images::pseudo_random(256 << 10, 7);
    let image = |name: &str| {
        Image::new("linux/amd64")
            .layer(
                TarBuilder::new().file("base.bin", 0o644, &base).finish(),
                Compression::Gzip,
            )
            .layer(
                TarBuilder::new()
                    .file(name, 0o644, name.as_bytes())
                    .finish(),
                Compression::Gzip,
            )
    };
    let (a, _) = layout_of(&env, &image("a"), "a");
    let (b, _) = layout_of(&env, &image("b"), "b");
    let jobs: Vec<_> = [("a", a), ("b", b)]
        .into_iter()
        .map(|(name, layout)| {
            let mut c = skopeo(&env.tool_tmp());
            c.args([
                "copy",
                "-q",
                "--dest-tls-verify=false",
                &format!("oci:{}:{name}", layout.display()),
                &format!("docker://{}/team/{name}:v1", proxy.host()),
            ]);
            std::thread::spawn(move || run(&mut c, TOOL_TIMEOUT).expect_ok())
        })
        .collect();
    for j in jobs {
        j.join().unwrap();
    }
    let layers = |repo: &str| -> Vec<String> {
        let (raw, _) = downstream(&env, &dst, repo, "v1");
        let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    };
    let (la, lb) = (layers("team/a"), layers("team/b"));
    assert_eq!(la.len(), 2);
    assert_eq!(lb.len(), 2);
    assert_eq!(la[0], lb[0], "the shared layer is the same blob downstream");
    assert_ne!(la[1], lb[1]);
}

/// Requests that start or feed a blob upload.
fn uploads(counting: &Counting) -> usize {
    counting
        .requests_to("/blobs/uploads/")
        .iter()
        .filter(|r| matches!(r.method.as_str(), "POST" | "PATCH" | "PUT"))
        .count()
}

#[test]
fn a_second_push_of_the_same_image_uploads_no_layer_downstream() {
    let env = TestEnv::new();
    let dst = Registry::start();
    let counting = Counting::start(&dst.host());
    let proxy = OccyProxy::start(&[
        "-d",
        &format!("registry://{}", counting.host()),
        "-f",
        "normalize-timestamps",
    ]);
    let (layout, _) = layout_of(&env, &python_image(), "app");
    let from = format!("oci:{}:app", layout.display());
    let first = push(
        &env,
        &from,
        &format!("docker://{}/team/app:v1", proxy.host()),
        &[],
    );
    let after_first = uploads(&counting);
    assert!(after_first >= 3, "config and two layers were uploaded");
    let second = push(
        &env,
        &from,
        &format!("docker://{}/team/app:v2", proxy.host()),
        &[],
    );
    assert_eq!(first, second);
    assert_eq!(
        uploads(&counting),
        after_first,
        "the second push uploaded again: {:?}",
        counting.requests_to("/blobs/uploads/")
    );
    let (_, v1) = downstream(&env, &dst, "team/app", "v1");
    let (_, v2) = downstream(&env, &dst, "team/app", "v2");
    assert_eq!(v1, v2, "the same image, filtered the same way");
}

/// `curl ARGS`: status, response headers (names lower-cased), body.
fn curl(args: &[&str]) -> (u16, Vec<(String, String)>, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-D", "-", "-o", "-"]).args(args);
    let out = run(&mut c, Duration::from_secs(60)).expect_ok();
    let text = out.stdout.replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A manifest PUT with `curl`.
fn put(
    host: &str,
    repo: &str,
    reference: &str,
    content_type: &str,
    body: &[u8],
    env: &TestEnv,
) -> (u16, Vec<(String, String)>, String) {
    let file = env.work(&format!("body-{}", sha256_digest(body)));
    std::fs::write(&file, body).unwrap();
    let at = format!("@{}", file.display());
    curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {content_type}"),
        "--data-binary",
        &at,
        &format!("http://{host}/v2/{repo}/manifests/{reference}"),
    ])
}

fn put_manifest(host: &str, reference: &str, body: &[u8], env: &TestEnv) -> (u16, String) {
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let (status, _, body) = put(host, "team/bad", reference, oci, body, env);
    (status, body)
}

fn error_code(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["errors"][0]["code"].as_str().unwrap_or("").to_string()
}

#[test]
fn bad_manifests_get_the_spec_errors_and_leave_nothing_downstream() {
    let env = TestEnv::new();
    let dst = Registry::start();
    let proxy = OccyProxy::start(&[
        "-d",
        &format!("registry://{}", dst.host()),
        "--max-manifest-size",
        "1024",
    ]);
    let host = proxy.host();
    let missing = format!("sha256:{}", "ab".repeat(32));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": missing, "size": 10},
        "layers": [],
    }))
    .unwrap();
    let (status, body) = put_manifest(&host, "v1", &manifest, &env);
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "MANIFEST_BLOB_UNKNOWN", "{body}");

    let big = vec![b' '; 2048];
    let (status, body) = put_manifest(&host, "v1", &big, &env);
    assert_eq!(status, 413, "{body}");

    let wrong = format!("sha256:{}", "cd".repeat(32));
    let (status, body) = put_manifest(&host, &wrong, &manifest, &env);
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "DIGEST_INVALID", "{body}");

    let (status, body) = put_manifest(&host, "v1", b"{\"schemaVersion\": 2, ", &env);
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "MANIFEST_INVALID", "{body}");

    // An index naming a manifest that was never pushed.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": missing, "size": 100,
                       "platform": {"os": "linux", "architecture": "amd64"}}],
    }))
    .unwrap();
    let oci_index = "application/vnd.oci.image.index.v1+json";
    let (status, _, body) = put(&host, "team/bad", "v1", oci_index, &index, &env);
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "MANIFEST_BLOB_UNKNOWN", "{body}");

    // A staged blob whose size the manifest misstates.
    let config = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = sha256_digest(config);
    let file = env.work("config.json");
    std::fs::write(&file, config).unwrap();
    let (status, _, body) = curl(&[
        "-X",
        "POST",
        "--data-binary",
        &format!("@{}", file.display()),
        "-H",
        "Content-Type: application/octet-stream",
        &format!("http://{host}/v2/team/bad/blobs/uploads/?digest={config_digest}"),
    ]);
    assert_eq!(status, 201, "{body}");
    let lying = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len() + 1},
        "layers": [],
    }))
    .unwrap();
    let (status, body) = put_manifest(&host, "v1", &lying, &env);
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "MANIFEST_INVALID", "{body}");

    // Nothing reached downstream.
    let (status, _, _) = curl(&[&format!("http://{}/v2/team/bad/tags/list", dst.host())]);
    assert_eq!(status, 404);
    let (code, log) = proxy.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn blobs_only_downstream_has_are_read_from_there_and_filtered() {
    let env = TestEnv::new();
    let dst = Registry::start();
    let (layout, _) = layout_of(&env, &python_image(), "app");
    let from = format!("oci:{}:app", layout.display());
    // The original, unfiltered, is downstream already.
    skopeo_ok(
        &env.tool_tmp(),
        &[
            "copy",
            "-q",
            "--dest-tls-verify=false",
            &from,
            &format!("docker://{}/team/app:orig", dst.host()),
        ],
    );
    let proxy = OccyProxy::start(&[
        "-d",
        &format!("registry://{}", dst.host()),
        "-f",
        "normalize-timestamps",
        "-f",
        "exclude:pattern=**/*.pyc",
    ]);
    push(
        &env,
        &from,
        &format!("docker://{}/team/app:v1", proxy.host()),
        &[],
    );
    let log = proxy.stderr();
    assert!(
        !log.lines().any(|l| l.contains("/blobs/uploads/")),
        "skopeo uploaded what downstream has:\n{log}"
    );
    let entries = downstream_entries(&env, &dst, "team/app", "v1");
    assert!(
        entries.iter().any(|(p, _)| p == "app/main.py"),
        "{entries:?}"
    );
    assert!(
        !entries.iter().any(|(p, _)| p.ends_with(".pyc")),
        "{entries:?}"
    );
    assert!(entries.iter().all(|(_, m)| *m == 0), "{entries:?}");
}

#[test]
fn a_downstream_that_refuses_the_manifest_is_a_clean_502() {
    let env = TestEnv::new();
    let dst = Registry::start();
    let counting = Counting::start(&dst.host());
    counting.method("PUT", None, "/manifests/", Fault::status(500));
    let proxy = OccyProxy::start(&["-d", &format!("registry://{}", counting.host())]);
    let host = proxy.host();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = sha256_digest(config);
    let file = env.work("config.json");
    std::fs::write(&file, config).unwrap();
    let (status, _, body) = curl(&[
        "-X",
        "POST",
        "--data-binary",
        &format!("@{}", file.display()),
        "-H",
        "Content-Type: application/octet-stream",
        &format!("http://{host}/v2/team/app/blobs/uploads/?digest={config_digest}"),
    ]);
    assert_eq!(status, 201, "{body}");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [],
    }))
    .unwrap();
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let (status, _, body) = put(&host, "team/app", "v1", oci, &manifest, &env);
    assert_eq!(status, 502, "{body}");
    assert_eq!(error_code(&body), "UNAVAILABLE", "{body}");
    // The config was uploaded downstream; the manifest never landed.
    assert!(
        counting
            .requests_to("/manifests/")
            .iter()
            .any(|r| r.method == "PUT")
    );
    let (status, _, _) = curl(&[&format!("http://{}/v2/team/app/manifests/v1", dst.host())]);
    assert_eq!(status, 404);
    let (code, log) = proxy.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
