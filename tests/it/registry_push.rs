//! Copies into a registry (`registry://` as the destination): exact
//! registry-to-registry copies, repeat copies that upload nothing, mounts,
//! docker-save, store and layout sources, zstd, basic auth, faults on the
//! upload side, refusals, filtered copies. Two real registries, with the
//! recording/fault proxy in front of the destination.

use serde_json::Value;

use crate::support::images::{busybox_image, registry_manifest};
use crate::support::proxy::{Fault, Proxy, Record};
use crate::support::push::{PushFormat, push_image};
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
/// that podman loads.
fn read_back(env: &TestEnv, host: &str, repo: &str, tag: &str, creds: Option<&str>) -> Value {
    let tmp = env.tool_tmp();
    let src = format!("docker://{host}/{repo}:{tag}");
    let mut inspect = vec!["inspect", "--tls-verify=false"];
    let mut copy = vec!["copy", "-q", "--src-tls-verify=false"];
    if let Some(c) = creds {
        inspect.extend(["--creds", c]);
        copy.extend(["--src-creds", c]);
    }
    inspect.push(&src);
    let info: Value = serde_json::from_str(&skopeo_ok(&tmp, &inspect).stdout).unwrap();
    let archive = env.work(&format!("readback-{}.tar", repo.replace('/', "-")));
    let _ = std::fs::remove_file(&archive);
    let dst = format!("docker-archive:{}:{repo}:{tag}", archive.display());
    copy.extend([src.as_str(), dst.as_str()]);
    skopeo_ok(&tmp, &copy);
    podman_load(&env.work("podman"), &archive, None);
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
    push_image(&env, &src, "team/app:v1", &busybox_image(Compression::Gzip), PushFormat::Docker);
    let (_, want) = registry_manifest(&env.tool_tmp(), &src, REPO, "v1");
    let proxy = Proxy::start(&dst.host());
    let to = proxy.uri("mirror/app", "v1");
    let out = process(&env, &src.uri(REPO, "v1"), &to, &[]);
    assert!(out.code == Some(0), "{}\n{}", out.cmdline, out.stderr);
    let (_, got) = registry_manifest(&env.tool_tmp(), &dst, "mirror/app", "v1");
    assert_eq!(got, want, "the copy has another manifest digest");
    assert!(!blob_writes(&proxy).is_empty());
    read_back(&env, &dst.host(), "mirror/app", "v1", None);

    // The repeat: the manifest HEAD says it is there; nothing else moves.
    let before = proxy.requests().len();
    let out = process(&env, &src.uri(REPO, "v1"), &to, &[]);
    assert!(out.code == Some(0), "{}", out.stderr);
    let again: Vec<Record> = proxy.requests().into_iter().skip(before).collect();
    assert!(
        again.iter().all(|r| !r.path.contains("/blobs/")),
        "a repeat copy touched blobs: {again:?}"
    );
}
