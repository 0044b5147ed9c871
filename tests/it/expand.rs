//! `dir://PATH?expand=true`: the merged root filesystem, compared entry by
//! entry with `umoci unpack` of the same image (type, mode bits, owner,
//! size, content, mtime, symlink target, device number, xattrs, hard link
//! groups), from a registry and from a docker-save tarball, with layers the
//! store already had, and with a hostile layer.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::fstree::Tree;
use crate::support::images::{
    BuiltImage, Image, ManifestPos, SaveStyle, unique_dir, write_docker_save,
};
use crate::support::layer_tar::TarBuilder;
use crate::support::push::{PushFormat, push_built};
use crate::support::{Compression, Registry, TestEnv, assert_no_panic, run, tar_uri};

/// A directory name longer than 100 bytes alone.
fn long_dir() -> String {
    format!("long/{}", "d".repeat(90))
}

/// A file name that makes the path well over 100 bytes.
fn long_file() -> String {
    format!("{}/{}.txt", long_dir(), "long-name-".repeat(12))
}

/// The bottom layer: a small tree with every kind of entry.
fn base_layer() -> Vec<u8> {
    let long_target = format!("/{}", long_file());
    TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/x", 0o644, b"x\n")
        .file("etc/xy", 0o644, b"xy: a prefix sibling of x\n")
        .file("etc/keep", 0o600, b"keep, layer 1\n")
        .symlink("etc/alt", "x")
        .file_xattrs(
            "etc/xattr-file",
            0o644,
            b"has xattrs\n",
            &[("user.foo", b"bar"), ("user.other", b"\x00binary\xff")],
        )
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .file("usr/lib/a.so", 0o755, b"a\n")
        .dir("usr/lib/sub", 0o755)
        .file("usr/lib/sub/b.so", 0o755, b"b\n")
        .dir("usr/lib64", 0o755)
        .file("usr/lib64/c.so", 0o755, b"c: a prefix sibling of usr/lib\n")
        .dir("opt", 0o755)
        .dir("opt/app", 0o755)
        .dir("opt/app/deep", 0o755)
        .dir("opt/app/deep/er", 0o700)
        .file("opt/app/deep/er/f1", 0o644, b"f1\n")
        .file("opt/app/deep/keep", 0o644, b"deep keep\n")
        .dir("data", 0o755)
        .file("data/orig", 0o644, b"original\n")
        .hardlink("data/orig-link1", "data/orig")
        .file("swap1", 0o644, b"a file that becomes a directory\n")
        .dir("swap2", 0o755)
        .file(
            "swap2/inner",
            0o644,
            b"in a directory that becomes a file\n",
        )
        .dir("bin", 0o755)
        .file("bin/suid", 0o4755, b"#!/bin/sh\n")
        .file("bin/sgid", 0o2711, b"#!/bin/sh\n")
        .symlink("bin/abs", "/etc/xy")
        .dir_owned("shared", 0o2775, (0, 50))
        .dir("tmp", 0o1777)
        .dir("home", 0o755)
        .dir_owned("home/user", 0o700, (1000, 1000))
        .file_owned("home/user/.profile", 0o640, (1000, 100), b"export A=1\n")
        .dir("long", 0o755)
        .dir(&long_dir(), 0o755)
        .file(&long_file(), 0o644, b"a name longer than 100 bytes\n")
        .symlink("long/link", &long_target)
        .dir("var", 0o755)
        .fifo("var/fifo", 0o640)
        .dir("dev", 0o755)
        .char_device("dev/null", 0o666, 1, 3)
        .finish()
}

/// The middle layer: whiteouts (plain, opaque, nested), a hard link to a
/// lower layer's file, file <-> directory replacements, a mode change.
fn middle_layer() -> Vec<u8> {
    TarBuilder::new()
        .dir("etc", 0o711)
        .file("etc/.wh.x", 0o644, b"")
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .file("usr/lib/pre.so", 0o755, b"added before the opaque marker\n")
        .file("usr/lib/.wh..wh..opq", 0o644, b"")
        .file("usr/lib/post.so", 0o755, b"added after the opaque marker\n")
        .dir("opt/app/deep", 0o755)
        .file("opt/app/deep/.wh.er", 0o644, b"")
        .dir("data", 0o755)
        .hardlink("data/link2", "data/orig")
        .dir("swap1", 0o750)
        .file("swap1/inner", 0o644, b"swap1 is a directory now\n")
        .file("swap2", 0o600, b"swap2 is a file now\n")
        .finish()
}

/// The top layer: a whited-out directory recreated, a file replaced by a
/// new one (its old hard links keep the old content), whiteout then re-add
/// in one layer.
fn top_layer() -> Vec<u8> {
    TarBuilder::new()
        .dir("opt/app/deep/er", 0o755)
        .file("opt/app/deep/er/new", 0o644, b"recreated\n")
        .file("data/orig", 0o644, b"rewritten in layer 3\n")
        .file("etc/.wh.keep", 0o644, b"")
        .file("etc/keep", 0o644, b"keep, layer 3\n")
        .finish()
}

fn rich_image() -> Image {
    Image::new("linux/amd64")
        .layer(base_layer(), Compression::Gzip)
        .layer(middle_layer(), Compression::Gzip)
        .layer(top_layer(), Compression::Gzip)
}

/// An image built into an OCI layout (tag `t`) and pushed to the registry.
struct Pushed {
    layout: PathBuf,
    built: BuiltImage,
}

fn push(env: &TestEnv, reg: &Registry, dest: &str, img: &Image) -> Pushed {
    let built = img.build();
    let layout = push_built(env, reg, dest, &built, PushFormat::Oci);
    Pushed { layout, built }
}

/// `umoci unpack` of the layout's image `t`; returns the rootfs.
fn umoci_unpack(env: &TestEnv, layout: &Path) -> PathBuf {
    let bundle = unique_dir(&env.work(""), "umoci").join("bundle");
    let mut cmd = Command::new("umoci");
    cmd.env("TMPDIR", env.tool_tmp())
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle);
    run(&mut cmd, Duration::from_secs(120)).expect_ok();
    bundle.join("rootfs")
}

fn assert_same_tree(ours: &Path, theirs: &Path) {
    let a = Tree::scan(ours);
    let b = Tree::scan(theirs);
    assert!(
        a.nodes.len() > 10,
        "{} holds only {:?}",
        ours.display(),
        a.nodes.keys()
    );
    let diff = a.diff(&b, "occystrap", "umoci");
    assert!(
        diff.is_empty(),
        "{} and {} differ:\n{}",
        ours.display(),
        theirs.display(),
        diff.join("\n")
    );
}

/// What the OCI layer rules say the rich image's rootfs holds, checked
/// directly so a disagreement with umoci can be told apart from a bug.
fn assert_rich_semantics(root: &Path) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let exists = |p: &str| fs::symlink_metadata(root.join(p)).is_ok();
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
    let meta = |p: &str| fs::symlink_metadata(root.join(p)).unwrap();
    assert!(!exists("etc/x"), "etc/.wh.x removes etc/x");
    assert_eq!(read("etc/xy"), "xy: a prefix sibling of x\n");
    assert_eq!(read("etc/keep"), "keep, layer 3\n");
    assert_eq!(meta("etc").mode() & 0o7777, 0o711);
    assert!(!exists("usr/lib/a.so") && !exists("usr/lib/sub"));
    assert!(exists("usr/lib/pre.so") && exists("usr/lib/post.so"));
    assert!(
        exists("usr/lib64/c.so"),
        "the opaque marker spares usr/lib64"
    );
    assert!(!exists("opt/app/deep/er/f1"));
    assert_eq!(read("opt/app/deep/er/new"), "recreated\n");
    assert_eq!(read("opt/app/deep/keep"), "deep keep\n");
    assert_eq!(read("data/orig"), "rewritten in layer 3\n");
    assert_eq!(read("data/orig-link1"), "original\n");
    assert_eq!(meta("data/orig-link1").ino(), meta("data/link2").ino());
    assert_ne!(meta("data/orig").ino(), meta("data/link2").ino());
    assert!(meta("swap1").is_dir());
    assert_eq!(read("swap1/inner"), "swap1 is a directory now\n");
    assert!(meta("swap2").is_file());
    assert_eq!(meta("bin/suid").mode() & 0o7777, 0o4755);
    assert_eq!(meta("bin/sgid").mode() & 0o7777, 0o2711);
    assert_eq!(meta("shared").mode() & 0o7777, 0o2775);
    assert_eq!(meta("shared").gid(), 50);
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(
        (
            meta("home/user/.profile").uid(),
            meta("home/user/.profile").gid()
        ),
        (1000, 100)
    );
    assert_eq!(read(&long_file()), "a name longer than 100 bytes\n");
    assert_eq!(
        fs::read_link(root.join("long/link")).unwrap(),
        PathBuf::from(format!("/{}", long_file()))
    );
    assert!(meta("var/fifo").file_type().is_fifo());
    assert!(meta("dev/null").file_type().is_char_device());
    assert_eq!(meta("dev/null").rdev(), libc::makedev(1, 3));
    let x = crate::support::fstree::xattrs(&root.join("etc/xattr-file"));
    assert_eq!(x.get("user.foo").map(Vec::as_slice), Some(&b"bar"[..]));
    assert_eq!(
        x.get("user.other").map(Vec::as_slice),
        Some(&b"\x00binary\xff"[..])
    );
}

/// Names in `dir` that look like leftovers of a run (temp trees, partials).
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp-") || n.contains("partial") || n.starts_with(".old-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn expand_matches_umoci_unpack() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let pushed = push(&env, &reg, "team/rich:v1", &rich_image());
    let store = env.out("store");
    let out = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/rich", "v1"),
            &format!("dir://{}?expand=true", store.display()),
        ])
        .ok();
    assert!(
        out.stderr
            .contains(&format!("-> {}", store.join("manifest").display())),
        "the summary names the rootfs: {}",
        out.stderr
    );
    let ours = store.join("manifest");
    assert_rich_semantics(&ours);
    let theirs = umoci_unpack(&env, &pushed.layout);
    assert_same_tree(&ours, &theirs);
    // The layer store is written too.
    for id in &pushed.built.diff_ids {
        assert!(store.join(&id[7..]).join("layer.tar").is_file());
    }
    assert!(store.join("manifest.json").is_file());
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));

    // Again into the same store: every layer is already there, so the tree
    // is rebuilt from the store's copies and replaces the old one.
    fs::write(ours.join("stray"), b"from an earlier run").unwrap();
    let out = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/rich", "v1"),
            &format!("dir://{}?expand=true", store.display()),
        ])
        .ok();
    assert!(out.stderr.contains("3 already present"), "{}", out.stderr);
    assert_same_tree(&ours, &theirs);
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
}

/// With the bottom layer slow, the layers above it are extracted ahead into
/// files beside the output, then applied in order when their turn comes:
/// both rootfs outputs still equal umoci's, and nothing is left beside them.
#[test]
fn layers_extracted_ahead_give_umocis_tree() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let pushed = push(&env, &reg, "team/rich:v1", &rich_image());
    let theirs = umoci_unpack(&env, &pushed.layout);
    let proxy = crate::support::proxy::Proxy::start(&reg.host());
    let bottom = format!("/blobs/{}", pushed.built.layers[0].digest);
    proxy.always(
        &bottom,
        crate::support::proxy::Fault::Drip {
            bytes: 256,
            every: Duration::from_millis(2),
        },
    );
    let store = env.out("store");
    let bundle = env.out("bundle");
    for (dest, rootfs) in [
        (format!("oci://{}", bundle.display()), bundle.join("rootfs")),
        (
            format!("dir://{}?expand=true", store.display()),
            store.join("manifest"),
        ),
    ] {
        let out = env
            .occy()
            .args(["--verbose", "--insecure", "process"])
            .arg(proxy.uri("team/rich", "v1"))
            .arg(&dest)
            .ok();
        for i in [1, 2] {
            let name = format!("layer {i} (");
            assert!(
                out.stderr
                    .lines()
                    .any(|l| l.contains(&name) && l.contains("extracted ahead")),
                "{dest}: layer {i} was not extracted ahead: {}",
                out.stderr
            );
        }
        assert_rich_semantics(&rootfs);
        assert_same_tree(&rootfs, &theirs);
    }
    for dir in [env.out(""), store.clone()] {
        let stray: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(
            stray.iter().all(|n| n == ".occystrap.lock"),
            "left in {}: {stray:?}",
            dir.display()
        );
    }
}

#[test]
fn expand_interleaves_stored_and_fetched_layers() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let a = rich_image();
    // Same bottom and top as `a`, another middle: with `a` in the store,
    // layer 0 comes from the store before layer 1 is fetched, layer 2 after.
    let other_middle = TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/.wh.xy", 0o644, b"")
        .dir("data", 0o755)
        .hardlink("data/link2", "data/orig")
        .dir("usr/lib/sub", 0o755)
        .file("usr/lib/sub/.wh..wh..opq", 0o644, b"")
        .finish();
    let b = Image::new("linux/amd64")
        .layer(base_layer(), Compression::Gzip)
        .layer(other_middle, Compression::Gzip)
        .layer(top_layer(), Compression::Gzip);
    push(&env, &reg, "team/rich:a", &a);
    let pb = push(&env, &reg, "team/rich:b", &b);
    let store = env.out("store");
    for tag in ["a", "b"] {
        let out = env
            .occy()
            .args([
                "--insecure",
                "fetch-to-extracted",
                "--use-unique-names",
                "--expand",
            ])
            .arg(reg.host())
            .args(["team/rich", tag])
            .arg(&store)
            .ok();
        if tag == "b" {
            assert!(
                out.stderr.contains("1 fetched, 2 already present"),
                "{}",
                out.stderr
            );
        }
    }
    let ours = store.join("manifest-team_rich-b");
    assert!(store.join("manifest-team_rich-a").is_dir());
    assert!(fs::symlink_metadata(ours.join("etc/xy")).is_err());
    assert!(ours.join("usr/lib/sub").is_dir() && !ours.join("usr/lib/sub/b.so").exists());
    let theirs = umoci_unpack(&env, &pb.layout);
    assert_same_tree(&ours, &theirs);
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
}

#[test]
fn expand_from_docker_save_equals_registry_expand() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let img = rich_image();
    let pushed = push(&env, &reg, "team/rich:v1", &img);
    let from_registry = env.out("from-registry");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/rich", "v1"),
            &format!("dir://{}?expand=true", from_registry.display()),
        ])
        .ok();

    let saved = env.work("saved.tar");
    write_docker_save(
        &saved,
        &[(&pushed.built, vec!["team/rich:v1".to_string()])],
        SaveStyle::Legacy,
        ManifestPos::Sorted,
    );
    let from_tar = env.out("from-tar");
    env.occy()
        .args(["tarfile-to-extracted", "--expand"])
        .arg(&saved)
        .arg(&from_tar)
        .ok();
    let a = Tree::scan(&from_registry.join("manifest"));
    let b = Tree::scan(&from_tar.join("manifest"));
    let diff = a.diff(&b, "registry", "tar");
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    assert_rich_semantics(&from_tar.join("manifest"));

    // The URI form as well, with unique names.
    let again = env.out("again");
    env.occy()
        .args([
            "process",
            &tar_uri(&saved),
            &format!("dir://{}?expand=true&unique_names=true", again.display()),
        ])
        .ok();
    let c = Tree::scan(&again.join("manifest-team_rich-v1"));
    let diff = a.diff(&c, "registry", "tar unique");
    assert!(diff.is_empty(), "{}", diff.join("\n"));
}

/// A good one-layer image, and an image whose second layer holds `../escape`
/// between good entries.
fn good_and_hostile_images() -> (Image, Image) {
    let good = Image::new("linux/amd64").layer(
        TarBuilder::new()
            .dir("etc", 0o755)
            .file("etc/good", 0o644, b"good\n")
            .finish(),
        Compression::Gzip,
    );
    let hostile = Image::new("linux/amd64")
        .layer(
            TarBuilder::new()
                .dir("etc", 0o755)
                .file("etc/ok", 0o644, b"ok\n")
                .finish(),
            Compression::Gzip,
        )
        .layer(
            TarBuilder::new()
                .raw_file(b"../escape", b"escaped\n")
                .file("etc/after", 0o644, b"after the hostile entry\n")
                .finish(),
            Compression::Gzip,
        );
    (good, hostile)
}

/// The failed run into a store holding a good tree: one error line naming
/// the layer and the entry, and the store as it was.
fn assert_failed_run_leaves_the_store(env: &TestEnv, reg: &Registry, store: &Path, uri: &str) {
    let out = env
        .occy()
        .args(["--insecure", "process", &reg.uri("team/evil", "v1"), uri])
        .run();
    assert_no_panic(&out);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line: {}", out.stderr);
    eprintln!("[{}] {}", out.cmdline, lines[0]);
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    assert!(
        lines[0].contains("layer 1") && lines[0].contains("../escape"),
        "the error names the layer and the entry: {}",
        lines[0]
    );
    assert!(store.join("manifest/etc/good").is_file());
    assert!(!store.join("manifest/etc/ok").exists());
    assert!(!store.join("escape").exists() && !env.work("escape").exists());
    assert!(leftovers(store).is_empty(), "{:?}", leftovers(store));
    let catalog = fs::read_to_string(store.join("catalog.json")).unwrap();
    assert!(!catalog.contains("team/evil"), "{catalog}");
}

/// Into a fresh directory: nothing is presented as a rootfs.
fn assert_failed_run_leaves_no_rootfs(env: &TestEnv, reg: &Registry, fresh: &Path) {
    let out = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/evil", "v1"),
            &format!("dir://{}?expand=true", fresh.display()),
        ])
        .run();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(!fresh.join("manifest").exists());
    assert!(!fresh.join("manifest.json").exists());
    assert!(leftovers(fresh).is_empty(), "{:?}", leftovers(fresh));
}

/// With --skip-unsafe (a global flag, here after the command) the run
/// succeeds without the entry and says what it skipped.
fn assert_skip_unsafe_skips_the_entry(env: &TestEnv, reg: &Registry, fresh: &Path) {
    let out = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/evil", "v1"),
            &format!("dir://{}?expand=true", fresh.display()),
            "--skip-unsafe",
        ])
        .ok();
    let root = fresh.join("manifest");
    assert_eq!(
        fs::read_to_string(root.join("etc/after")).unwrap(),
        "after the hostile entry\n"
    );
    assert!(root.join("etc/ok").is_file());
    assert!(!fresh.join("escape").exists() && !root.join("escape").exists());
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("note: ") && l.contains("layer 1") && l.contains("../escape")),
        "the skipped entry is reported: {}",
        out.stderr
    );
    assert!(leftovers(fresh).is_empty(), "{:?}", leftovers(fresh));
}

#[test]
fn hostile_layer_fails_cleanly_unless_skipped() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let (good, hostile) = good_and_hostile_images();
    push(&env, &reg, "team/good:v1", &good);
    push(&env, &reg, "team/evil:v1", &hostile);
    let store = env.work("store");
    let uri = format!("dir://{}?expand=true", store.display());

    // An earlier good tree is left alone by the failed run.
    env.occy()
        .args(["--insecure", "process", &reg.uri("team/good", "v1"), &uri])
        .ok();
    assert!(store.join("manifest/etc/good").is_file());

    assert_failed_run_leaves_the_store(&env, &reg, &store, &uri);
    let fresh = env.work("fresh");
    assert_failed_run_leaves_no_rootfs(&env, &reg, &fresh);
    assert_skip_unsafe_skips_the_entry(&env, &reg, &fresh);
}
