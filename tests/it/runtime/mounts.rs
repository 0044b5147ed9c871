//! `mounts://` overlay layer trees, checked file by file, then mounted and
//! compared with `dir://?expand=true`.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::fstree::{Tree, xattrs};
use crate::support::images::{BuiltImage, Image};
use crate::support::layer_tar::TarBuilder;
use crate::support::push::{PushFormat, push_built};
use crate::support::runtime::{Mounted, host_platform, is_mount_point, mount_type};
use crate::support::{Compression, Registry, TestEnv, run};

use super::{TOOL_TIMEOUT, assert_same_tree, expand, leftovers, mounts_uri};

/// Bottom layer: files that the later layers white out, a root-level `x`
/// (which a whiteout of `etc/x` must not touch), a hard link, a device and
/// an xattr.
fn mounts_base() -> Vec<u8> {
    TarBuilder::new()
        .file("x", 0o644, b"a root-level x, not etc/x\n")
        .dir("etc", 0o755)
        .file("etc/x", 0o644, b"etc/x\n")
        .file("etc/y", 0o644, b"etc/y\n")
        .file("etc/keep", 0o644, b"keep, layer 0\n")
        .file_xattrs("etc/xattr-file", 0o644, b"x\n", &[("user.foo", b"bar")])
        .dir("opt", 0o755)
        .dir("opt/dir", 0o755)
        .file("opt/dir/a", 0o644, b"a\n")
        .dir("opt/dir/sub", 0o755)
        .file("opt/dir/sub/b", 0o644, b"b\n")
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .file("usr/lib/a.so", 0o755, b"a.so\n")
        .dir("usr/lib/sub", 0o755)
        .file("usr/lib/sub/b.so", 0o755, b"b.so\n")
        .dir("usr/lib64", 0o755)
        .file("usr/lib64/c.so", 0o755, b"c.so\n")
        .dir("deep", 0o755)
        .dir("deep/a", 0o755)
        .dir("deep/a/b", 0o755)
        .file("deep/a/b/gone", 0o644, b"gone\n")
        .file("deep/a/b/stay", 0o644, b"stay\n")
        .dir("data", 0o755)
        .file("data/orig", 0o644, b"orig\n")
        .hardlink("data/link", "data/orig")
        .dir("dev", 0o755)
        .char_device("dev/null", 0o666, 1, 3)
        .finish()
}

/// Middle layer: a nested whiteout, a whited-out directory, an opaque
/// directory with new content, a deep whiteout. Parent directories are
/// listed as Docker lists them, so that each layer's directory metadata is
/// what a merged view shows.
fn mounts_middle() -> Vec<u8> {
    TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/.wh.x", 0o644, b"")
        .dir("opt", 0o755)
        .file("opt/.wh.dir", 0o644, b"")
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .file("usr/lib/.wh..wh..opq", 0o644, b"")
        .file("usr/lib/new.so", 0o755, b"new.so\n")
        .dir("deep", 0o755)
        .dir("deep/a", 0o755)
        .dir("deep/a/b", 0o755)
        .file("deep/a/b/.wh.gone", 0o644, b"")
        .finish()
}

/// Top layer: the whited-out directory recreated, and a whiteout and a
/// re-add of one name in the same layer.
fn mounts_top() -> Vec<u8> {
    TarBuilder::new()
        .dir("opt", 0o755)
        .dir("opt/dir", 0o750)
        .file("opt/dir/new", 0o644, b"recreated\n")
        .dir("etc", 0o755)
        .file("etc/.wh.keep", 0o644, b"")
        .file("etc/keep", 0o644, b"keep, layer 2\n")
        .finish()
}

fn mounts_image() -> Image {
    Image::new(host_platform())
        .layer(mounts_base(), Compression::Gzip)
        .layer(mounts_middle(), Compression::Gzip)
        .layer(mounts_top(), Compression::Gzip)
}

/// `DIR/<diff_id hex>/layer` for each layer, bottom first.
fn layer_dirs(dir: &Path, built: &BuiltImage) -> Vec<PathBuf> {
    built
        .diff_ids
        .iter()
        .map(|d| dir.join(&d[7..]).join("layer"))
        .collect()
}

/// An overlayfs whiteout: a 0:0 character device owned by root.
fn assert_whiteout(path: &Path) {
    let m = fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: expected an overlay whiteout: {e}", path.display()));
    assert!(
        m.file_type().is_char_device() && m.rdev() == 0,
        "{} is not a 0:0 character device: {m:?}",
        path.display()
    );
    assert_eq!((m.uid(), m.gid()), (0, 0), "{}", path.display());
}

/// The tree with the mtimes of overlay whiteouts zeroed. The extractor makes
/// a whiteout with mknod, so its mtime is the time of extraction; overlayfs
/// never shows a whiteout, so that time is of no consequence, and it is the
/// one thing two extractions of a layer may differ in.
fn without_whiteout_mtimes(mut tree: Tree) -> Tree {
    for n in tree.nodes.values_mut() {
        if n.kind == "char" && n.rdev == 0 {
            n.mtime = 0;
        }
    }
    tree
}

/// Every path in a tree whose name is a whiteout file's.
fn whiteout_names(tree: &Tree) -> Vec<String> {
    tree.nodes
        .keys()
        .filter(|p| p.rsplit('/').next().unwrap_or(p).starts_with(".wh."))
        .cloned()
        .collect()
}

fn keys(tree: &Tree) -> BTreeSet<String> {
    tree.nodes.keys().cloned().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The mounted view of the image equals its merged rootfs, entry by entry.
/// Nothing is ignored: every layer lists its parent directories, so the
/// directory metadata overlayfs shows (the topmost layer's) is what the
/// merged extraction applies last.
fn assert_mounted_view(env: &TestEnv, reg: &Registry, repo: &str, tag: &str, rootfs: &Path) {
    assert_eq!(
        mount_type(rootfs).as_deref(),
        Some("overlay"),
        "{} is not an overlay mount",
        rootfs.display()
    );
    let merged = expand(env, reg, repo, tag);
    assert_same_tree(rootfs, &merged, "overlay mount", "dir://?expand=true");
}

/// manifest.json of a `mounts://` output: the layers bottom first and the
/// config, byte for byte.
fn assert_mounts_manifest(dir: &Path, built: &BuiltImage) {
    let manifest: Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let listed: Vec<String> = built
        .diff_ids
        .iter()
        .map(|d| format!("{}/layer", &d[7..]))
        .collect();
    assert_eq!(manifest[0]["Layers"], json!(listed), "{manifest}");
    let config_name = manifest[0]["Config"].as_str().unwrap();
    assert_eq!(config_name, format!("{}.json", &built.config_digest[7..]));
    assert_eq!(fs::read(dir.join(config_name)).unwrap(), built.config);
}

/// Nested whiteouts land where they were, and the opaque marker is on the
/// opaque directory of its layer only.
fn assert_whiteouts_in_place(layers: &[PathBuf]) {
    // Nested whiteouts land where they were: etc/.wh.x makes <layer>/etc/x,
    // never <layer>/x (the Python occystrap's bug).
    assert_whiteout(&layers[1].join("etc/x"));
    assert!(
        fs::symlink_metadata(layers[1].join("x")).is_err(),
        "etc/.wh.x also produced a whiteout at the layer's root"
    );
    assert_whiteout(&layers[1].join("opt/dir"));
    assert_whiteout(&layers[1].join("deep/a/b/gone"));
    // The opaque marker is an xattr on that directory in that layer only.
    let opaque = |p: &Path| xattrs(p).get("trusted.overlay.opaque").cloned();
    assert_eq!(opaque(&layers[1].join("usr/lib")), Some(b"y".to_vec()));
    for p in [
        layers[1].join("usr"),
        layers[1].join("etc"),
        layers[0].join("usr/lib"),
        layers[2].join("opt/dir"),
    ] {
        assert_eq!(opaque(&p), None, "{} is not opaque", p.display());
    }
}

/// Exactly what each layer holds.
fn assert_layer_contents(layers: &[PathBuf]) {
    // Exactly what each layer holds: no whiteout file is materialized, and a
    // name whited out and re-added in one layer is the new file.
    let trees: Vec<Tree> = layers.iter().map(|l| Tree::scan(l)).collect();
    for (i, t) in trees.iter().enumerate() {
        assert_eq!(whiteout_names(t), Vec::<String>::new(), "layer {i}");
    }
    assert_eq!(
        keys(&trees[1]),
        set(&[
            "deep",
            "deep/a",
            "deep/a/b",
            "deep/a/b/gone",
            "etc",
            "etc/x",
            "opt",
            "opt/dir",
            "usr",
            "usr/lib",
            "usr/lib/new.so",
        ])
    );
    assert_eq!(
        keys(&trees[2]),
        set(&["etc", "etc/keep", "opt", "opt/dir", "opt/dir/new"])
    );
    assert_eq!(
        fs::read_to_string(layers[2].join("etc/keep")).unwrap(),
        "keep, layer 2\n"
    );
    let null = &trees[0].nodes["dev/null"];
    assert_eq!((null.kind, null.rdev), ("char", libc::makedev(1, 3)));
    assert_eq!(
        trees[0].nodes["etc/xattr-file"].xattrs.get("user.foo"),
        Some(&b"bar".to_vec())
    );
}

/// mount-command names the layers topmost first, then delta and working,
/// and nothing is mounted yet.
fn assert_mount_command(dir: &Path, layers: &[PathBuf]) {
    // mount-command: the topmost layer first, then delta and working.
    let command = fs::read_to_string(dir.join("mount-command")).unwrap();
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    assert_eq!(
        command,
        format!(
            "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {}\n",
            lower.join(":"),
            dir.join("delta").display(),
            dir.join("working").display(),
            dir.join("rootfs").display()
        )
    );
    assert!(
        !is_mount_point(&dir.join("rootfs")),
        "mounted without ?mount=true"
    );
}

/// Running mount-command mounts the image as its merged rootfs.
fn assert_mount_command_mounts(env: &TestEnv, reg: &Registry, dir: &Path) {
    // The command mounts the image.
    let rootfs = dir.join("rootfs");
    let out = run(
        Command::new("sh").arg(dir.join("mount-command")),
        TOOL_TIMEOUT,
    );
    let mounted = Mounted::adopt(&rootfs);
    assert_eq!(out.code, Some(0), "running mount-command: {}", out.stderr);
    assert_mounted_view(env, reg, "team/ovl", "v1", &rootfs);
    mounted.unmount();
}

/// The legacy `fetch-to-mounts` writes the same layer trees.
fn assert_legacy_same_layers(
    env: &TestEnv,
    reg: &Registry,
    built: &BuiltImage,
    layers: &[PathBuf],
) {
    // The legacy command writes the same layer trees.
    let legacy = env.out("legacy");
    env.occy()
        .args(["--insecure", "fetch-to-mounts"])
        .arg(reg.host())
        .args(["team/ovl", "v1"])
        .arg(&legacy)
        .ok();
    for (theirs, ours) in layer_dirs(&legacy, built).iter().zip(layers) {
        let diff = without_whiteout_mtimes(Tree::scan(theirs)).diff(
            &without_whiteout_mtimes(Tree::scan(ours)),
            "fetch-to-mounts",
            "process mounts://",
        );
        assert!(diff.is_empty(), "{}", diff.join("\n"));
    }
}

#[test]
fn mounts_layer_trees_hold_overlay_whiteouts() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = mounts_image().build();
    push_built(&env, &reg, "team/ovl:v1", &built, PushFormat::Oci);
    let dir = env.out("mounts");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/ovl", "v1"),
            &mounts_uri(&dir, ""),
        ])
        .ok();
    let layers = layer_dirs(&dir, &built);

    assert_mounts_manifest(&dir, &built);
    assert_whiteouts_in_place(&layers);
    assert_layer_contents(&layers);
    assert_mount_command(&dir, &layers);
    assert_mount_command_mounts(&env, &reg, &dir);
    assert_legacy_same_layers(&env, &reg, &built, &layers);
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn mounts_mount_true_equals_expanded_rootfs() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = mounts_image().build();
    push_built(&env, &reg, "team/ovl:v1", &built, PushFormat::Docker);
    let dir = env.out("mounts");
    let rootfs = dir.join("rootfs");
    let out = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/ovl", "v1"),
            &mounts_uri(&dir, "?mount=true"),
        ])
        .run();
    let mounted = Mounted::adopt(&rootfs);
    crate::support::assert_success(&out);
    assert_mounted_view(&env, &reg, "team/ovl", "v1", &rootfs);
    // Writes go to delta/, never into a layer.
    fs::write(rootfs.join("etc/written"), b"through the mount\n").unwrap();
    fs::remove_file(rootfs.join("etc/y")).unwrap();
    assert!(dir.join("delta/etc/written").is_file());
    assert_whiteout(&dir.join("delta/etc/y"));
    for l in layer_dirs(&dir, &built) {
        assert!(!l.join("etc/written").exists());
    }
    assert!(layer_dirs(&dir, &built)[0].join("etc/y").is_file());
    mounted.unmount();
}

#[test]
fn mounts_path_with_space_comma_and_colon() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = mounts_image().build();
    push_built(&env, &reg, "team/ovl:v1", &built, PushFormat::Oci);
    // Overlay options split at ',' and ':'; the shell splits at ' '.
    let dir = env.out("my mounts,upper:x");
    let rootfs = dir.join("rootfs");
    let out = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/ovl", "v1"),
            &mounts_uri(&dir, "?mount=true"),
        ])
        .run();
    let mounted = Mounted::adopt(&rootfs);
    crate::support::assert_success(&out);
    assert_mounted_view(&env, &reg, "team/ovl", "v1", &rootfs);

    // Mounting again on a mounted rootfs is refused before any work.
    let again = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/ovl", "v1"),
            &mounts_uri(&dir, "?mount=true"),
        ])
        .run();
    assert_ne!(again.code, Some(0), "{}", again.stderr);
    assert!(again.stderr.contains("already mounted"), "{}", again.stderr);
    mounted.unmount();

    // The written command line mounts the same view through a shell.
    let out = run(
        Command::new("sh").arg(dir.join("mount-command")),
        TOOL_TIMEOUT,
    );
    let mounted = Mounted::adopt(&rootfs);
    assert_eq!(out.code, Some(0), "running mount-command: {}", out.stderr);
    assert_mounted_view(&env, &reg, "team/ovl", "v1", &rootfs);
    mounted.unmount();
}

#[test]
fn mounts_share_layers_between_images() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let shared = TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/base", 0o644, b"shared base layer\n")
        .file("etc/victim", 0o644, b"whited out by b\n")
        .finish();
    let a = Image::new(host_platform())
        .layer(shared.clone(), Compression::Gzip)
        .layer(
            TarBuilder::new()
                .dir("etc", 0o755)
                .file("etc/a", 0o644, b"a\n")
                .finish(),
            Compression::Gzip,
        )
        .build();
    let b = Image::new(host_platform())
        .layer(shared, Compression::Gzip)
        .layer(
            TarBuilder::new()
                .dir("etc", 0o755)
                .file("etc/b", 0o644, b"b\n")
                .file("etc/.wh.victim", 0o644, b"")
                .finish(),
            Compression::Gzip,
        )
        .build();
    assert_eq!(a.diff_ids[0], b.diff_ids[0]);
    push_built(&env, &reg, "team/a:v1", &a, PushFormat::Oci);
    push_built(&env, &reg, "team/b:v1", &b, PushFormat::Oci);
    let dir = env.out("mounts");
    let out = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/a", "v1"),
            &mounts_uri(&dir, ""),
        ])
        .ok();
    assert!(out.stderr.contains("(2 fetched)"), "{}", out.stderr);
    let base = layer_dirs(&dir, &a)[0].clone();
    let base_ino = fs::metadata(&base).unwrap().ino();

    let out = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/b", "v1"),
            &mounts_uri(&dir, "?mount=true"),
        ])
        .run();
    let rootfs = dir.join("rootfs");
    let mounted = Mounted::adopt(&rootfs);
    crate::support::assert_success(&out);
    assert!(
        out.stderr.contains("1 fetched, 1 already present"),
        "the shared layer is not fetched again: {}",
        out.stderr
    );
    assert_eq!(
        fs::metadata(&base).unwrap().ino(),
        base_ino,
        "the shared layer's tree was rewritten"
    );
    for l in layer_dirs(&dir, &a).iter().chain(&layer_dirs(&dir, &b)) {
        assert!(l.is_dir(), "{}", l.display());
    }
    // manifest.json describes the latest image; the catalog knows both.
    let manifest: Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest[0]["Layers"][1],
        json!(format!("{}/layer", &b.diff_ids[1][7..]))
    );
    let catalog = fs::read_to_string(dir.join("catalog.json")).unwrap();
    assert!(
        catalog.contains("team/a") && catalog.contains("team/b"),
        "{catalog}"
    );
    assert_mounted_view(&env, &reg, "team/b", "v1", &rootfs);
    assert!(!rootfs.join("etc/victim").exists() && !rootfs.join("etc/a").exists());
    mounted.unmount();
}
