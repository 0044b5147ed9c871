//! Copies of an index into a registry (`--all-platforms`, `--platforms`):
//! the whole index with its digest kept, a subset as a new index, every
//! platform filtered and the index rebuilt, a platform the index lacks, a
//! destination given by digest, and a repeat copy that uploads nothing.
//! Two real registries, the recording proxy in front of the destination.

use serde_json::Value;

use crate::support::images::{platform_image, registry_manifest, unique_dir};
use crate::support::proxy::{Fault, Proxy, Record};
use crate::support::push::{PushFormat, push_index};
use crate::support::tools::skopeo_ok;
use crate::support::{
    Compression, OciLayout, Output, Registry, TestEnv, assert_clean_failure, http,
};

const SRC_REPO: &str = "team/multi";
const THREE: [&str; 3] = ["linux/amd64", "linux/arm64", "linux/arm/v7"];

/// `occystrap --insecure ARGS... process SRC DST`.
fn process(env: &TestEnv, flags: &[&str], src: &str, dst: &str, filters: &[&str]) -> Output {
    let mut all = vec!["--insecure"];
    all.extend_from_slice(flags);
    all.extend(["process", src, dst]);
    all.extend_from_slice(filters);
    env.occy().args(&all).run()
}

fn ok(out: &Output) {
    assert!(
        out.code == Some(0),
        "{}\n--- stderr\n{}",
        out.cmdline,
        out.stderr
    );
}

/// A source registry holding a 3-platform index at `team/multi:v1`;
/// returns it, the index as it serves it, and the index's digest.
fn source_index(env: &TestEnv, format: PushFormat) -> (Registry, Value, String) {
    let src = Registry::start();
    let imgs: Vec<_> = THREE
        .iter()
        .map(|p| platform_image(p, Compression::Gzip))
        .collect();
    push_index(env, &src, &format!("{SRC_REPO}:v1"), &imgs, format);
    let (raw, digest) = registry_manifest(&env.tool_tmp(), &src, SRC_REPO, "v1");
    (src, serde_json::from_slice(&raw).unwrap(), digest)
}

/// `(platform, digest)` of each child of an index, in order.
fn children(index: &Value) -> Vec<(String, String)> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut name = format!(
                "{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            );
            if let Some(v) = p["variant"].as_str() {
                name = format!("{name}/{v}");
            }
            (name, m["digest"].as_str().unwrap().to_string())
        })
        .collect()
}

/// The manifest bytes `repo@digest` at `host` (panics unless 200).
fn manifest_bytes(host: &str, repo: &str, digest: &str) -> Vec<u8> {
    let r = http::get_manifest(host, repo, digest).expect("GET manifest");
    assert_eq!(r.status, 200, "{repo}@{digest} at {host}");
    r.body
}

/// Requests that wrote blobs (upload sessions).
fn blob_writes(records: &[Record]) -> Vec<&Record> {
    records
        .iter()
        .filter(|r| r.path.contains("/blobs/uploads/"))
        .collect()
}

#[test]
fn registry_index_all_platforms_keeps_the_digest_and_a_repeat_uploads_nothing() {
    let env = TestEnv::new();
    let (src, index, want) = source_index(&env, PushFormat::Docker);
    let dst = Registry::start();
    let proxy = Proxy::start(&dst.host());
    let sp = Proxy::start(&src.host());
    let from = sp.uri(SRC_REPO, "v1");
    let to = proxy.uri("mirror/multi", "v1");
    let out = process(&env, &["--all-platforms"], &from, &to, &[]);
    ok(&out);
    let (_, got) = registry_manifest(&env.tool_tmp(), &dst, "mirror/multi", "v1");
    assert_eq!(got, want, "the copied index has another digest");
    // The source's index is read once.
    assert_eq!(
        sp.requests_to("/manifests/v1").len(),
        1,
        "{}",
        sp.describe()
    );
    for (_, digest) in children(&index) {
        assert_eq!(
            manifest_bytes(&dst.host(), "mirror/multi", &digest),
            manifest_bytes(&src.host(), SRC_REPO, &digest),
            "child {digest}"
        );
    }
    // One line per child, one for the index.
    assert_eq!(out.stderr.matches(" -> ").count(), 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("index of 3 manifests"),
        "{}",
        out.stderr
    );
    assert!(!blob_writes(&proxy.requests()).is_empty());
    // The index went up last, after every child.
    let puts: Vec<Record> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/manifests/"))
        .collect();
    assert_eq!(puts.len(), 4, "{}", proxy.describe());
    assert!(puts[3].path.ends_with("/manifests/v1"), "{puts:?}");
    assert!(puts[..3].iter().all(|r| r.path.contains("sha256:")));

    // The repeat: the tag already holds the index, which one HEAD shows;
    // no child is looked at, no blob touched.
    let before = proxy.requests().len();
    let src_before = sp.requests().len();
    let out = process(&env, &["--all-platforms"], &from, &to, &[]);
    ok(&out);
    let src_again: Vec<String> = sp
        .requests()
        .into_iter()
        .skip(src_before)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(src_again, ["GET /v2/team/multi/manifests/v1"]);
    let again: Vec<String> = proxy
        .requests()
        .into_iter()
        .skip(before)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        again,
        ["HEAD /v2/mirror/multi/manifests/v1"],
        "{}",
        proxy.describe()
    );
    assert!(
        out.stderr.contains("(up to date): index of 3 manifests"),
        "{}",
        out.stderr
    );

    // A tag that lost one child's manifest is not up to date: the children
    // present are HEADed, and only then is the index pushed again.
    let other = proxy.uri("mirror/other", "v1");
    ok(&process(
        &env,
        &["--platforms", "linux/amd64"],
        &src.uri(SRC_REPO, "v1"),
        &other,
        &[],
    ));
    let before = proxy.requests().len();
    ok(&process(
        &env,
        &["--all-platforms"],
        &src.uri(SRC_REPO, "v1"),
        &other,
        &[],
    ));
    let again: Vec<Record> = proxy.requests().into_iter().skip(before).collect();
    let heads = again
        .iter()
        .filter(|r| r.method == "HEAD" && r.path.contains("/manifests/sha256:"))
        .count();
    assert_eq!(heads, 3, "{}", proxy.describe());
    let (_, got) = registry_manifest(&env.tool_tmp(), &dst, "mirror/other", "v1");
    assert_eq!(got, want);
    let (_, got) = registry_manifest(&env.tool_tmp(), &dst, "mirror/multi", "v1");
    assert_eq!(got, want);
}

#[test]
fn registry_index_platform_subset_is_a_new_index_of_exactly_those() {
    let env = TestEnv::new();
    let (src, index, want) = source_index(&env, PushFormat::Oci);
    let dst = Registry::start();
    let to = format!("registry://{}/mirror/two:v1", dst.host());
    let out = process(
        &env,
        &["--platforms", "linux/amd64,linux/arm64"],
        &src.uri(SRC_REPO, "v1"),
        &to,
        &[],
    );
    ok(&out);
    let (raw, got) = registry_manifest(&env.tool_tmp(), &dst, "mirror/two", "v1");
    assert_ne!(got, want, "a subset kept the whole index's digest");
    let copied: Value = serde_json::from_slice(&raw).unwrap();
    let theirs = children(&index);
    let ours = children(&copied);
    let names: Vec<&str> = ours.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["linux/amd64", "linux/arm64"]);
    for (platform, digest) in &ours {
        let (_, source_digest) = theirs.iter().find(|(p, _)| p == platform).unwrap();
        assert_eq!(digest, source_digest, "{platform} changed digest");
        assert_eq!(
            manifest_bytes(&dst.host(), "mirror/two", digest),
            manifest_bytes(&src.host(), SRC_REPO, digest),
        );
    }
    let (_, arm7) = theirs.iter().find(|(p, _)| p == "linux/arm/v7").unwrap();
    let r = http::get_manifest(&dst.host(), "mirror/two", arm7).unwrap();
    assert_eq!(r.status, 404, "a platform not asked for was copied");
}

#[test]
fn registry_index_filtered_rebuilds_every_platform_and_the_index() {
    let env = TestEnv::new();
    let (src, index, want) = source_index(&env, PushFormat::Oci);
    let dst = Registry::start();
    let to = format!("registry://{}/mirror/norm:v1", dst.host());
    let out = process(
        &env,
        &["--all-platforms"],
        &src.uri(SRC_REPO, "v1"),
        &to,
        &["-f", "normalize-timestamps"],
    );
    ok(&out);
    assert!(out.stderr.contains("a new index"), "{}", out.stderr);
    let (raw, got) = registry_manifest(&env.tool_tmp(), &dst, "mirror/norm", "v1");
    assert_ne!(got, want, "the filtered index kept its digest");
    let copied: Value = serde_json::from_slice(&raw).unwrap();
    let theirs = children(&index);
    let ours = children(&copied);
    assert_eq!(ours.len(), 3);
    for ((p1, d1), (p2, d2)) in theirs.iter().zip(&ours) {
        assert_eq!(p1, p2);
        assert_ne!(d1, d2, "{p1} was not filtered");
        manifest_bytes(&dst.host(), "mirror/norm", d2);
    }
    // skopeo reads the index and copies one platform of it.
    let tmp = env.tool_tmp();
    let from = format!("docker://{}/mirror/norm:v1", dst.host());
    skopeo_ok(&tmp, &["inspect", "--raw", "--tls-verify=false", &from]);
    let layout = env.work("arm64-layout");
    let into = format!("oci:{}:x", layout.display());
    skopeo_ok(
        &tmp,
        &[
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--override-arch",
            "arm64",
            &from,
            &into,
        ],
    );
    let oci: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let (_, arm64) = ours.iter().find(|(p, _)| p == "linux/arm64").unwrap();
    assert_eq!(oci["manifests"][0]["digest"].as_str(), Some(arm64.as_str()));
}

#[test]
fn registry_index_missing_platform_fails_and_tags_nothing() {
    let env = TestEnv::new();
    let (src, _, _) = source_index(&env, PushFormat::Oci);
    let dst = Registry::start();
    let proxy = Proxy::start(&dst.host());
    let to = proxy.uri("mirror/none", "v1");
    let out = process(
        &env,
        &["--platforms", "linux/amd64,linux/s390x"],
        &src.uri(SRC_REPO, "v1"),
        &to,
        &[],
    );
    assert_clean_failure(&env, &out, &["linux/s390x"]);
    let wrote: Vec<Record> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET" && r.method != "HEAD")
        .collect();
    assert!(wrote.is_empty(), "{}", proxy.describe());
    let r = http::get_manifest(&dst.host(), "mirror/none", "v1").unwrap();
    assert_eq!(r.status, 404);
}

#[test]
fn registry_index_destination_by_digest_must_be_the_index() {
    let env = TestEnv::new();
    let (src, _, want) = source_index(&env, PushFormat::Oci);
    let dst = Registry::start();
    let pinned = format!("registry://{}/pinned/multi@{want}", dst.host());
    ok(&process(
        &env,
        &["--all-platforms"],
        &src.uri(SRC_REPO, "v1"),
        &pinned,
        &[],
    ));
    manifest_bytes(&dst.host(), "pinned/multi", &want);
    let r = http::get_manifest(&dst.host(), "pinned/multi", "latest").unwrap();
    assert_eq!(r.status, 404, "a digest destination got a tag");

    // A subset is a new index: not the digest the destination names.
    let out = process(
        &env,
        &["--platforms", "linux/amd64"],
        &src.uri(SRC_REPO, "v1"),
        &format!("registry://{}/wrong/multi@{want}", dst.host()),
        &[],
    );
    let line = assert_clean_failure(&env, &out, &["not the"]);
    assert!(line.contains(&want), "{line}");
    let r = http::get_manifest(&dst.host(), "wrong/multi", &want).unwrap();
    assert_eq!(r.status, 404);
}

#[test]
fn registry_index_a_child_that_fails_leaves_no_index() {
    let env = TestEnv::new();
    let (src, index, _) = source_index(&env, PushFormat::Oci);
    let dst = Registry::start();
    let proxy = Proxy::start(&dst.host());
    // The registry refuses the second child's manifest.
    let (_, second) = &children(&index)[1];
    proxy.method(
        "PUT",
        None,
        &format!("/manifests/{second}"),
        Fault::Status {
            status: 400,
            retry_after: None,
            code: Some("MANIFEST_INVALID".into()),
        },
    );
    let out = process(
        &env,
        &["--all-platforms"],
        &src.uri(SRC_REPO, "v1"),
        &proxy.uri("mirror/broken", "v1"),
        &[],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("MANIFEST_INVALID"),
        "{}",
        out.stderr
    );
    let r = http::get_manifest(&dst.host(), "mirror/broken", "v1").unwrap();
    assert_eq!(r.status, 404, "an index went up without its children");
    assert!(
        proxy
            .requests()
            .iter()
            .all(|r| !(r.method == "PUT" && r.path.ends_with("/manifests/v1"))),
        "{}",
        proxy.describe()
    );
}

#[test]
fn registry_index_from_an_oci_layout_keeps_the_digest() {
    let env = TestEnv::new();
    let built: Vec<_> = THREE
        .iter()
        .map(|p| platform_image(p, Compression::Gzip).build())
        .collect();
    let dir = unique_dir(&env.work(""), "src-layout");
    let index = OciLayout::create(&dir).add_index("t", &built);
    let dst = Registry::start();
    let out = process(
        &env,
        &["--all-platforms"],
        &format!("oci-layout://{}:t", dir.display()),
        &format!("registry://{}/from/layout:v1", dst.host()),
        &[],
    );
    ok(&out);
    let (raw, _) = registry_manifest(&env.tool_tmp(), &dst, "from/layout", "v1");
    assert_eq!(
        raw, index,
        "the layout's index was not pushed byte for byte"
    );
    for img in &built {
        assert_eq!(
            manifest_bytes(&dst.host(), "from/layout", &img.manifest_digest),
            img.manifest
        );
    }
}

#[test]
fn registry_index_images_at_once_keep_the_digest_and_the_order() {
    let env = TestEnv::new();
    let (src, index, want) = source_index(&env, PushFormat::Oci);
    let dst = Registry::start();
    let to = format!("registry://{}/mirror/par:v1", dst.host());
    let out = process(
        &env,
        &["--all-platforms", "-J", "3"],
        &src.uri(SRC_REPO, "v1"),
        &to,
        &[],
    );
    ok(&out);
    let (_, got) = registry_manifest(&env.tool_tmp(), &dst, "mirror/par", "v1");
    assert_eq!(got, want, "three children at once changed the index");
    for (platform, digest) in children(&index) {
        assert_eq!(
            manifest_bytes(&dst.host(), "mirror/par", &digest),
            manifest_bytes(&src.host(), SRC_REPO, &digest),
            "{platform} differs"
        );
    }
    // Filtered, the rebuilt index lists the children in the source's order.
    let to = format!("registry://{}/mirror/parf:v1", dst.host());
    let out = process(
        &env,
        &["--all-platforms", "-J", "3"],
        &src.uri(SRC_REPO, "v1"),
        &to,
        &["-f", "normalize-timestamps"],
    );
    ok(&out);
    let (raw, _) = registry_manifest(&env.tool_tmp(), &dst, "mirror/parf", "v1");
    let rebuilt: Value = serde_json::from_slice(&raw).unwrap();
    let order = |v: &Value| children(v).into_iter().map(|(p, _)| p).collect::<Vec<_>>();
    assert_eq!(order(&rebuilt), order(&index));
}
