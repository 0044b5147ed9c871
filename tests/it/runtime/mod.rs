//! Runtime outputs against the loopback registry: `oci://` bundles run with
//! runc, `mounts://` overlay layer trees (checked file by file, then mounted
//! and compared with `dir://?expand=true`), and `oci-layout://` layouts
//! written for, and read back from, skopeo and umoci.
//!
//! Needs root (runc, mount, mknod, trusted.* xattrs) and runc, umoci,
//! skopeo, busybox-static. When the environment cannot do something the
//! test fails and says so by name (see `Runc::run_lines`): nothing here
//! passes by skipping.

mod bundle;
mod mounts;
mod oci_layout;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::fstree::Tree;
use crate::support::images::unique_dir;
use crate::support::{Registry, TestEnv, http};

const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Compares two trees entry by entry (type, mode, owner, size, content,
/// mtime, link target, device number, xattrs, hard link groups).
fn assert_same_tree(ours: &Path, theirs: &Path, mine: &str, other: &str) {
    let a = Tree::scan(ours);
    let b = Tree::scan(theirs);
    assert!(
        a.nodes.len() > 1,
        "{} holds only {:?}",
        ours.display(),
        a.nodes.keys()
    );
    let diff = a.diff(&b, mine, other);
    assert!(
        diff.is_empty(),
        "{mine} ({}) and {other} ({}) differ:\n{}",
        ours.display(),
        theirs.display(),
        diff.join("\n")
    );
}

/// `dir://PATH?expand=true` of a registry image; returns the merged rootfs.
fn expand(env: &TestEnv, reg: &Registry, repo: &str, tag: &str) -> PathBuf {
    let store = unique_dir(&env.work(""), "expanded");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri(repo, tag),
            &format!("dir://{}?expand=true", store.display()),
        ])
        .ok();
    store.join("manifest")
}

/// A blob as the registry serves it.
fn registry_blob(reg: &Registry, repo: &str, digest: &str) -> Vec<u8> {
    let r = http::request(
        &reg.host(),
        "GET",
        &format!("/v2/{repo}/blobs/{digest}"),
        &[],
    )
    .expect("GET blob");
    assert_eq!(r.status, 200, "GET blob {repo}@{digest}");
    r.body
}

/// Names under `dir` (one level) that look like leftovers of a run.
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp-") || n.contains("partial") || n.starts_with(".old-"))
                .collect()
        })
        .unwrap_or_default()
}

fn oci_uri(path: &Path, query: &str) -> String {
    format!("oci://{}{query}", path.display())
}

fn mounts_uri(dir: &Path, query: &str) -> String {
    format!("mounts://{}{query}", dir.display())
}
