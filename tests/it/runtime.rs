//! Runtime outputs against the loopback registry: `oci://` bundles run with
//! runc, `mounts://` overlay layer trees (checked file by file, then mounted
//! and compared with `dir://?expand=true`), and `oci-layout://` layouts
//! written for, and read back from, skopeo and umoci.
//!
//! Needs root (runc, mount, mknod, trusted.* xattrs) and runc, umoci,
//! skopeo, busybox-static. When the environment cannot do something the
//! test fails and says so by name (see `Runc::run_lines`): nothing here
//! passes by skipping.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::archive::Expect;
use crate::support::fstree::{Tree, xattrs};
use crate::support::images::{
    BuiltImage, Image, ManifestPos, OciLayout, PLATFORMS, SaveStyle, busybox_image_mixed,
    platform_image, registry_manifest, unique_dir, write_docker_save,
};
use crate::support::layer_tar::TarBuilder;
use crate::support::push::{PushFormat, push_built};
use crate::support::runtime::{
    Mounted, Runc, host_platform, is_mount_point, mount_type, with_config,
};
use crate::support::tools::skopeo_ok;
use crate::support::{
    Compression, DockerSave, Registry, TestEnv, assert_clean_failure, http, run, sha256_hex,
    tar_uri, verify_output,
};

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

// ===========================================================================
// oci:// runtime bundles, run with runc

/// What the test image's process prints: the runtime's view of env, cwd
/// and ids.
const SHOW: &str = "echo FOO=$FOO; pwd; id -u; id -g";
/// A process that tells whether it may write to /srv (owned by `app`).
const WRITE_PROBE: &str = "touch /srv/probe 2>/dev/null && echo writable || echo read-only";

/// busybox with applet links, a user `app` (1000:1000) and its group.
fn busybox_base() -> Vec<u8> {
    let busybox = fs::read("/usr/bin/busybox")
        .expect("read /usr/bin/busybox (install the busybox-static package)");
    let mut t = TarBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, &busybox);
    for applet in ["sh", "id", "pwd", "echo", "touch", "cat", "ls"] {
        t = t.symlink(&format!("bin/{applet}"), "busybox");
    }
    t.dir("etc", 0o755)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )
        .file("etc/group", 0o644, b"root:x:0:\napp:x:1000:\n")
        .dir("tmp", 0o1777)
        .finish()
}

/// The application layer: the working directory and a home, owned by `app`.
fn app_layer() -> Vec<u8> {
    TarBuilder::new()
        .dir_owned("srv", 0o755, (1000, 1000))
        .file("srv/hello.txt", 0o644, b"hello from the image\n")
        .dir("home", 0o755)
        .dir_owned("home/app", 0o700, (1000, 1000))
        .finish()
}

/// The runtime test image, running as `user`: Entrypoint + Cmd print
/// `$FOO`, the working directory and the ids.
fn runtime_image(user: &str) -> BuiltImage {
    let img = Image::new(host_platform())
        .layer(busybox_base(), Compression::Gzip)
        .layer(app_layer(), Compression::Gzip);
    with_config(img.build(), |c| {
        c["Entrypoint"] = json!(["/bin/sh", "-c"]);
        c["Cmd"] = json!([SHOW]);
        c["Env"] = json!(["PATH=/usr/bin:/bin", "FOO=bar"]);
        c["WorkingDir"] = json!("/srv");
        c["User"] = json!(user);
    })
}

/// Reads a bundle's config.json, checking it parses as a runtime-spec
/// document.
fn read_spec(bundle: &Path) -> Value {
    let raw = fs::read(bundle.join("config.json")).expect("bundle has config.json");
    if let Err(e) = serde_json::from_slice::<oci_spec::runtime::Spec>(&raw) {
        panic!(
            "config.json is not a runtime-spec document: {e}\n{}",
            String::from_utf8_lossy(&raw)
        );
    }
    serde_json::from_slice(&raw).unwrap()
}

/// The parts of config.json the image decides, and the ones the bundle
/// contract fixes.
fn assert_spec(spec: &Value, readonly: bool, uid: u32, gid: u32) {
    assert!(
        spec["ociVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "ociVersion: {spec}"
    );
    let p = &spec["process"];
    assert_eq!(p["terminal"], json!(false), "process.terminal");
    assert_eq!(
        p["args"],
        json!(["/bin/sh", "-c", SHOW]),
        "Entrypoint + Cmd"
    );
    assert_eq!(p["cwd"], json!("/srv"));
    assert_eq!(p["user"]["uid"], json!(uid));
    assert_eq!(p["user"]["gid"], json!(gid));
    let env: Vec<&str> = p["env"]
        .as_array()
        .expect("process.env")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"FOO=bar"), "{env:?}");
    assert_eq!(
        env.iter()
            .filter(|e| e.starts_with("PATH="))
            .collect::<Vec<_>>(),
        [&"PATH=/usr/bin:/bin"],
        "the image's PATH, once"
    );
    assert_eq!(spec["root"]["path"], json!("rootfs"));
    assert_eq!(spec["root"]["readonly"], json!(readonly));
    let namespaces: Vec<&str> = spec["linux"]["namespaces"]
        .as_array()
        .expect("linux.namespaces")
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    for ns in ["pid", "mount", "ipc", "uts", "network"] {
        assert!(namespaces.contains(&ns), "namespace {ns}: {namespaces:?}");
    }
}

/// Replaces the bundle's process.args with `sh -c SCRIPT`.
fn set_script(bundle: &Path, script: &str) {
    let path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    spec["process"]["args"] = json!(["/bin/sh", "-c", script]);
    fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

fn oci_uri(path: &Path, query: &str) -> String {
    format!("oci://{}{query}", path.display())
}

#[test]
fn oci_bundle_runs_under_runc() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = runtime_image("app");
    push_built(&env, &reg, "team/run:v1", &built, PushFormat::Oci);
    let bundle = env.out("bundle");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/run", "v1"),
            &oci_uri(&bundle, ""),
        ])
        .ok();
    assert_spec(&read_spec(&bundle), true, 1000, 1000);
    assert_eq!(
        fs::read(bundle.join("container-config.json")).unwrap(),
        registry_blob(&reg, "team/run", &built.config_digest),
        "container-config.json is the registry's config, byte for byte"
    );
    assert!(leftovers(&env.out_dir()).is_empty());
    // The rootfs is the merged image (before runc adds its mount points).
    assert_same_tree(
        &bundle.join("rootfs"),
        &expand(&env, &reg, "team/run", "v1"),
        "oci:// rootfs",
        "dir://?expand=true",
    );

    let runc = Runc::new(&env);
    assert_eq!(
        runc.run_lines(&env, &bundle),
        ["FOO=bar", "/srv", "1000", "1000"],
        "Env, WorkingDir and User as the image says"
    );
    // HOME comes from the image's passwd, as under Docker.
    set_script(&bundle, "echo HOME=$HOME");
    assert_eq!(runc.run_lines(&env, &bundle), ["HOME=/home/app"]);
    // A read-only root by default: `app` owns /srv but cannot write it.
    set_script(&bundle, WRITE_PROBE);
    assert_eq!(runc.run_lines(&env, &bundle), ["read-only"]);
    assert!(!bundle.join("rootfs/srv/probe").exists());

    let rw = env.out("bundle-rw");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/run", "v1"),
            &oci_uri(&rw, "?readonly=false"),
        ])
        .ok();
    assert_spec(&read_spec(&rw), false, 1000, 1000);
    assert_eq!(
        runc.run_lines(&env, &rw),
        ["FOO=bar", "/srv", "1000", "1000"]
    );
    set_script(&rw, WRITE_PROBE);
    assert_eq!(runc.run_lines(&env, &rw), ["writable"]);
    let probe = fs::symlink_metadata(rw.join("rootfs/srv/probe")).unwrap();
    assert_eq!((probe.uid(), probe.gid()), (1000, 1000));
    assert_eq!(runc.leftover_containers(), Vec::<String>::new());
}

#[test]
fn oci_bundle_numeric_users() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let runc = Runc::new(&env);
    // uid:gid that no passwd entry names; a bare uid takes its group from
    // /etc/passwd.
    for (user, uid, gid, home) in [
        ("4242:77", 4242, 77, "/"),
        ("1000", 1000, 1000, "/home/app"),
        ("app:0", 1000, 0, "/home/app"),
    ] {
        let tag = format!("u{uid}-{gid}");
        let built = runtime_image(user);
        push_built(
            &env,
            &reg,
            &format!("team/run:{tag}"),
            &built,
            PushFormat::Docker,
        );
        let bundle = env.out(&format!("bundle-{tag}"));
        env.occy()
            .args([
                "--insecure",
                "process",
                &reg.uri("team/run", &tag),
                &oci_uri(&bundle, ""),
            ])
            .ok();
        assert_spec(&read_spec(&bundle), true, uid, gid);
        assert_eq!(
            runc.run_lines(&env, &bundle),
            ["FOO=bar", "/srv", &uid.to_string(), &gid.to_string()],
            "User {user:?}"
        );
        set_script(&bundle, "echo HOME=$HOME");
        assert_eq!(
            runc.run_lines(&env, &bundle),
            [format!("HOME={home}")],
            "User {user:?}"
        );
    }
    assert_eq!(runc.leftover_containers(), Vec::<String>::new());
}

#[test]
fn fetch_to_oci_matches_process() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = runtime_image("app");
    push_built(&env, &reg, "team/run:v1", &built, PushFormat::Oci);
    let via_process = env.out("process");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/run", "v1"),
            &oci_uri(&via_process, ""),
        ])
        .ok();
    let legacy = env.out("legacy");
    env.occy()
        .args(["--insecure", "fetch-to-oci"])
        .arg(reg.host())
        .args(["team/run", "v1"])
        .arg(&legacy)
        .ok();
    for f in ["config.json", "container-config.json"] {
        assert_eq!(
            fs::read_to_string(legacy.join(f)).unwrap(),
            fs::read_to_string(via_process.join(f)).unwrap(),
            "{f} from fetch-to-oci and process"
        );
    }
    assert_same_tree(
        &legacy.join("rootfs"),
        &via_process.join("rootfs"),
        "fetch-to-oci",
        "process oci://",
    );
    let runc = Runc::new(&env);
    assert_eq!(
        runc.run_lines(&env, &legacy),
        ["FOO=bar", "/srv", "1000", "1000"]
    );
    assert_eq!(runc.leftover_containers(), Vec::<String>::new());
}

// ===========================================================================
// mounts:// overlay layer trees

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

fn mounts_uri(dir: &Path, query: &str) -> String {
    format!("mounts://{}{query}", dir.display())
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

    // manifest.json: the layers bottom first and the config, byte for byte.
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

    // The command mounts the image.
    let rootfs = dir.join("rootfs");
    let out = run(
        Command::new("sh").arg(dir.join("mount-command")),
        TOOL_TIMEOUT,
    );
    let mounted = Mounted::adopt(&rootfs);
    assert_eq!(out.code, Some(0), "running mount-command: {}", out.stderr);
    assert_mounted_view(&env, &reg, "team/ovl", "v1", &rootfs);
    mounted.unmount();

    // The legacy command writes the same layer trees.
    let legacy = env.out("legacy");
    env.occy()
        .args(["--insecure", "fetch-to-mounts"])
        .arg(reg.host())
        .args(["team/ovl", "v1"])
        .arg(&legacy)
        .ok();
    for (theirs, ours) in layer_dirs(&legacy, &built).iter().zip(&layers) {
        let diff = without_whiteout_mtimes(Tree::scan(theirs)).diff(
            &without_whiteout_mtimes(Tree::scan(ours)),
            "fetch-to-mounts",
            "process mounts://",
        );
        assert!(diff.is_empty(), "{}", diff.join("\n"));
    }
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

// ===========================================================================
// oci-layout:// written, and read back

fn layout_uri(path: &Path, tag: &str) -> String {
    format!("oci-layout://{}:{tag}", path.display())
}

/// `hex -> bytes` of every blob in a layout, after checking each is named by
/// its sha256 and nothing else sits in `blobs/sha256`.
fn layout_blobs(layout: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut blobs = BTreeMap::new();
    for e in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            e.file_type().unwrap().is_file(),
            "blobs/sha256/{name} is not a file"
        );
        let data = fs::read(e.path()).unwrap();
        assert_eq!(
            sha256_hex(&data),
            name,
            "blobs/sha256/{name} does not hash to its name"
        );
        blobs.insert(name, data);
    }
    blobs
}

fn read_index(layout: &Path) -> Value {
    serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap()
}

/// `tag -> digest` of the index's tagged entries, failing on a repeated tag.
fn index_tags(index: &Value) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    for m in index["manifests"].as_array().expect("manifests") {
        let tag = m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap_or_else(|| panic!("untagged index entry {m}"))
            .to_string();
        let digest = m["digest"].as_str().unwrap().to_string();
        assert!(
            tags.insert(tag.clone(), digest).is_none(),
            "tag {tag} twice in {index}"
        );
    }
    tags
}

/// The layer blob digests and config digest of a manifest.
fn manifest_blobs(manifest: &[u8]) -> (Vec<String>, String) {
    let m: Value = serde_json::from_slice(manifest).unwrap();
    let layers = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    (layers, m["config"]["digest"].as_str().unwrap().to_string())
}

/// The config blob of the image tagged `tag` in a layout.
fn layout_config(layout: &Path, tag: &str) -> Vec<u8> {
    let tags = index_tags(&read_index(layout));
    let manifest = fs::read(layout.join("blobs/sha256").join(&tags[tag][7..])).unwrap();
    let config = manifest_blobs(&manifest).1;
    fs::read(layout.join("blobs/sha256").join(&config[7..])).unwrap()
}

/// `umoci unpack --image IMAGE BUNDLE`; returns the rootfs.
fn umoci_unpack(env: &TestEnv, image: &str) -> PathBuf {
    let bundle = unique_dir(&env.work(""), "umoci").join("bundle");
    let out = run(
        Command::new("umoci")
            .env("TMPDIR", env.tool_tmp())
            .args(["unpack", "--image", image])
            .arg(&bundle),
        TOOL_TIMEOUT,
    );
    assert_eq!(
        out.code,
        Some(0),
        "umoci refuses the layout: {}\n{}",
        out.cmdline,
        out.stderr
    );
    bundle.join("rootfs")
}

/// Pulls `team/app:v1` pushed in `format` into a layout and checks it
/// against the registry, skopeo and umoci.
fn layout_round_trip(format: PushFormat, compressions: [Compression; 3]) {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = busybox_image_mixed(&compressions).build();
    push_built(&env, &reg, "team/app:v1", &built, format);
    let (served, served_digest) = registry_manifest(&env.tool_tmp(), &reg, "team/app", "v1");
    let (served_layers, served_config) = manifest_blobs(&served);
    let layout = env.out("layout");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/app", "v1"),
            &layout_uri(&layout, "v1"),
        ])
        .ok();

    let marker: Value = serde_json::from_slice(&fs::read(layout.join("oci-layout")).unwrap())
        .expect("oci-layout is JSON");
    assert_eq!(marker["imageLayoutVersion"], "1.0.0");
    let index = read_index(&layout);
    assert_eq!(index["schemaVersion"], 2);
    let tags = index_tags(&index);
    assert_eq!(tags.keys().collect::<Vec<_>>(), ["v1"]);
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let blobs = layout_blobs(&layout);
    let manifest_hex = &tags["v1"][7..];
    let manifest = &blobs[manifest_hex];
    assert_eq!(entry["size"], json!(manifest.len()));
    if format != PushFormat::Docker {
        assert_eq!(
            tags["v1"], served_digest,
            "an OCI manifest is kept byte for byte"
        );
    }
    let (layers, config) = manifest_blobs(manifest);
    assert_eq!(layers, served_layers, "the layer blobs are the registry's");
    assert_eq!(config, served_config);
    // Blobs as the registry served them, each once, and nothing else.
    for d in &served_layers {
        assert_eq!(
            blobs[&d[7..]],
            fs::read(reg.blob_data_path(d)).unwrap(),
            "layer blob {d}"
        );
    }
    assert_eq!(blobs[&served_config[7..]], built.config);
    let mut expected: BTreeSet<String> = served_layers.iter().map(|d| d[7..].to_string()).collect();
    expected.insert(served_config[7..].to_string());
    expected.insert(manifest_hex.to_string());
    assert_eq!(blobs.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(leftovers(&layout).is_empty(), "{:?}", leftovers(&layout));
    assert!(leftovers(&layout.join("blobs/sha256")).is_empty());

    // skopeo reads it and copies it out.
    let image = format!("oci:{}:v1", layout.display());
    let inspect: Value =
        serde_json::from_str(&skopeo_ok(&env.tool_tmp(), &["inspect", &image]).stdout).unwrap();
    assert_eq!(inspect["Digest"], json!(tags["v1"]));
    assert_eq!(inspect["Layers"], json!(served_layers));
    let archive = env.work("from-layout.tar");
    skopeo_ok(
        &env.tool_tmp(),
        &[
            "copy",
            "-q",
            &image,
            &format!("docker-archive:{}:team/app:v1", archive.display()),
        ],
    );
    let ds = DockerSave::read(&archive);
    assert_eq!(ds.diff_ids(0), built.diff_ids);
    assert_eq!(ds.config_bytes(0), built.config.as_slice());

    // umoci unpacks it to the rootfs occystrap expands.
    let theirs = umoci_unpack(&env, &format!("{}:v1", layout.display()));
    assert_same_tree(
        &expand(&env, &reg, "team/app", "v1"),
        &theirs,
        "dir://?expand=true",
        "umoci unpack",
    );
}

#[test]
fn oci_layout_from_docker_manifest_is_read_by_skopeo_and_umoci() {
    layout_round_trip(PushFormat::Docker, [Compression::Gzip; 3]);
}

#[test]
fn oci_layout_keeps_oci_manifest_and_raw_layers() {
    layout_round_trip(
        PushFormat::Preserve,
        [Compression::Gzip, Compression::None, Compression::Gzip],
    );
}

#[test]
fn oci_layout_shares_blobs_and_replaces_tags() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let a = platform_image(host_platform(), Compression::Gzip).build();
    let b = {
        let base = TarBuilder::new()
            .dir("etc", 0o755)
            .file("etc/base.txt", 0o644, b"shared base layer\n")
            .finish();
        Image::new(host_platform())
            .layer(base, Compression::Gzip)
            .layer(
                TarBuilder::new()
                    .dir("etc", 0o755)
                    .file("etc/b", 0o644, b"image b\n")
                    .finish(),
                Compression::Gzip,
            )
            .build()
    };
    assert_eq!(
        a.layers[0].digest, b.layers[0].digest,
        "the images share their base layer blob"
    );
    push_built(&env, &reg, "team/a:v1", &a, PushFormat::Oci);
    push_built(&env, &reg, "team/b:v1", &b, PushFormat::Oci);
    let (_, a_digest) = registry_manifest(&env.tool_tmp(), &reg, "team/a", "v1");
    let (_, b_digest) = registry_manifest(&env.tool_tmp(), &reg, "team/b", "v1");
    let layout = env.out("layout");
    let pull = |repo: &str, tag: &str| {
        env.occy()
            .args([
                "--insecure",
                "process",
                &reg.uri(repo, "v1"),
                &layout_uri(&layout, tag),
            ])
            .ok()
    };
    pull("team/a", "a");
    let out = pull("team/b", "b");
    assert!(
        out.stderr.contains("1 fetched, 1 already present"),
        "the shared blob is not fetched again: {}",
        out.stderr
    );
    let expected_blobs = || -> BTreeSet<String> {
        [
            &a.layers[0].digest,
            &a.layers[1].digest,
            &b.layers[1].digest,
            &a.config_digest,
            &b.config_digest,
            &a_digest,
            &b_digest,
        ]
        .iter()
        .map(|d| d[7..].to_string())
        .collect()
    };
    let tags = index_tags(&read_index(&layout));
    assert_eq!(
        tags,
        BTreeMap::from([
            ("a".into(), a_digest.clone()),
            ("b".into(), b_digest.clone())
        ])
    );
    assert_eq!(
        layout_blobs(&layout)
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>(),
        expected_blobs()
    );

    // Pulling a tag again replaces its entry; so does pointing it elsewhere.
    let out = pull("team/a", "a");
    assert!(out.stderr.contains("2 already present"), "{}", out.stderr);
    assert_eq!(
        read_index(&layout)["manifests"].as_array().unwrap().len(),
        2
    );
    pull("team/b", "a");
    let tags = index_tags(&read_index(&layout));
    assert_eq!(
        tags,
        BTreeMap::from([
            ("a".into(), b_digest.clone()),
            ("b".into(), b_digest.clone())
        ])
    );
    assert_eq!(
        layout_blobs(&layout)
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>(),
        expected_blobs(),
        "blobs are kept (garbage collection is left to the user)"
    );
    for tag in ["a", "b"] {
        skopeo_ok(
            &env.tool_tmp(),
            &["inspect", &format!("oci:{}:{tag}", layout.display())],
        );
    }
    assert!(leftovers(&layout).is_empty(), "{:?}", leftovers(&layout));
}

/// `process oci-layout://LAYOUT:TAG tar://OUT` and the usual checks of a
/// docker-save output (skopeo inspect and copy, podman load).
fn layout_to_tar(
    env: &TestEnv,
    layout: &Path,
    tag: &str,
    expect: &Expect,
    podman_tag: Option<&str>,
) -> DockerSave {
    let out = unique_dir(&env.work(""), "tar").join("image.tar");
    env.occy()
        .args(["process", &layout_uri(layout, tag), &tar_uri(&out)])
        .ok();
    verify_output(env, &out, expect, podman_tag)
}

#[test]
fn oci_layout_source_reads_skopeo_and_harness_layouts() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = busybox_image_mixed(&[Compression::Gzip; 3]).build();
    push_built(&env, &reg, "team/app:v1", &built, PushFormat::Docker);
    // skopeo's own layout of the registry image.
    // A directory name that is no repository name: the image is named
    // `skopeo-layout` in the output, which podman loads.
    let skopeo_layout = env.work("Skopeo Layout");
    skopeo_ok(
        &env.tool_tmp(),
        &[
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{}/team/app:v1", reg.host()),
            &format!("oci:{}:latest", skopeo_layout.display()),
        ],
    );
    // Converting the Docker manifest to OCI, skopeo re-serialises the
    // config: the layout's own config is the one to expect.
    let config = layout_config(&skopeo_layout, "latest");
    let ds = layout_to_tar(
        &env,
        &skopeo_layout,
        "latest",
        &Expect::default()
            .config(&config)
            .diff_ids(&built.diff_ids)
            .tags(&["skopeo-layout:latest"]),
        Some("localhost/skopeo-layout:latest"),
    );
    assert_eq!(
        ds.find_in_layers("etc/hostname").as_deref(),
        Some(&b"occystrap-test\n"[..])
    );

    // The harness's layout: a plain, a gzip and a zstd layer.
    let mixed =
        busybox_image_mixed(&[Compression::None, Compression::Gzip, Compression::Zstd]).build();
    let harness_layout = env.work("harness-layout");
    OciLayout::create(&harness_layout).add_image("mixed", &mixed);
    layout_to_tar(
        &env,
        &harness_layout,
        "mixed",
        &Expect::default()
            .config(&mixed.config)
            .diff_ids(&mixed.diff_ids)
            .tags(&["harness-layout:mixed"]),
        None,
    );
    // A ref.name that is a full reference names the image itself.
    let named = env.work("named");
    OciLayout::create(&named).add_image("example.com/team/app:v2", &mixed);
    let out = env.work("named.tar");
    env.occy()
        .args([
            "process",
            &format!("oci-layout://{}", named.display()),
            &tar_uri(&out),
        ])
        .ok();
    verify_output(
        &env,
        &out,
        &Expect::default().tags(&["example.com/team/app:v2"]),
        None,
    );
    // Into a layout and back: the same manifest, byte for byte.
    let copy = env.out("copy");
    env.occy()
        .args([
            "process",
            &layout_uri(&harness_layout, "mixed"),
            &layout_uri(&copy, "again"),
        ])
        .ok();
    assert_eq!(
        index_tags(&read_index(&copy))["again"],
        mixed.manifest_digest
    );
    let blobs = layout_blobs(&copy);
    for l in &mixed.layers {
        assert_eq!(blobs[&l.digest[7..]], l.blob, "blob {}", l.digest);
    }
}

#[test]
fn oci_layout_source_reads_umoci_layout() {
    let env = TestEnv::new();
    let layout = env.work("umoci-layout");
    let umoci = |args: &[&str]| {
        run(
            Command::new("umoci")
                .env("TMPDIR", env.tool_tmp())
                .args(args),
            TOOL_TIMEOUT,
        )
        .expect_ok()
    };
    let l = layout.display().to_string();
    umoci(&["init", "--layout", &l]);
    umoci(&["new", "--image", &format!("{l}:base")]);
    let bundle = env.work("umoci-bundle");
    umoci(&[
        "unpack",
        "--image",
        &format!("{l}:base"),
        &bundle.display().to_string(),
    ]);
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(rootfs.join("etc/app")).unwrap();
    fs::write(rootfs.join("etc/app/hello"), b"written under umoci\n").unwrap();
    std::os::unix::fs::symlink("app/hello", rootfs.join("etc/hello-link")).unwrap();
    umoci(&[
        "repack",
        "--image",
        &format!("{l}:v1"),
        &bundle.display().to_string(),
    ]);
    umoci(&[
        "config",
        "--image",
        &format!("{l}:v1"),
        "--config.env",
        "FOO=bar",
    ]);
    let config = layout_config(&layout, "v1");
    let ds = layout_to_tar(
        &env,
        &layout,
        "v1",
        &Expect::default().config(&config),
        None,
    );
    assert_eq!(
        ds.find_in_layers("etc/app/hello").as_deref(),
        Some(&b"written under umoci\n"[..])
    );
    assert!(
        ds.config(0)["config"]["Env"]
            .as_array()
            .unwrap()
            .contains(&json!("FOO=bar"))
    );
}

#[test]
fn oci_layout_source_reads_docker_save_dirs_and_sloppy_layouts() {
    let env = TestEnv::new();
    let built = busybox_image_mixed(&[Compression::Gzip; 3]).build();
    // Docker 25+'s `docker save`, unpacked, is a layout whose ref.name is a
    // bare tag and whose io.containerd.image.name is the full name.
    let saved = env.work("saved.tar");
    write_docker_save(
        &saved,
        &[(&built, vec!["team/app:v1".to_string()])],
        SaveStyle::Docker25,
        ManifestPos::Sorted,
    );
    let unpacked = env.work("unpacked");
    fs::create_dir_all(&unpacked).unwrap();
    run(
        Command::new("tar")
            .arg("-xf")
            .arg(&saved)
            .arg("-C")
            .arg(&unpacked),
        TOOL_TIMEOUT,
    )
    .expect_ok();
    layout_to_tar(
        &env,
        &unpacked,
        "v1",
        &Expect::default()
            .tags(&["team/app:v1"])
            .config(&built.config)
            .diff_ids(&built.diff_ids),
        Some("localhost/team/app:v1"),
    );

    // Descriptors without mediaType (the spec wants one; some writers
    // leave it out): the document says what it is.
    let sloppy = env.work("sloppy");
    OciLayout::create(&sloppy).add_image("t", &built);
    let mut index = read_index(&sloppy);
    index["manifests"][0]
        .as_object_mut()
        .unwrap()
        .remove("mediaType");
    fs::write(
        sloppy.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    layout_to_tar(
        &env,
        &sloppy,
        "t",
        &Expect::default().diff_ids(&built.diff_ids),
        None,
    );

    // A FIFO where a blob should be fails at once instead of hanging.
    let blob = sloppy
        .join("blobs/sha256")
        .join(&built.layers[2].digest[7..]);
    fs::remove_file(&blob).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &blob,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let out = env
        .occy()
        .args([
            "process",
            &layout_uri(&sloppy, "t"),
            &tar_uri(&env.out("x.tar")),
        ])
        .run();
    assert!(
        out.elapsed < Duration::from_secs(60),
        "took {:?}",
        out.elapsed
    );
    assert_clean_failure(&env, &out, &["not a regular file"]);
}

#[test]
fn oci_layout_source_picks_the_platform() {
    let env = TestEnv::new();
    let layout = env.work("multi");
    let imgs: Vec<BuiltImage> = PLATFORMS
        .iter()
        .map(|p| platform_image(p, Compression::Gzip).build())
        .collect();
    OciLayout::create(&layout).add_index("multi", &imgs);
    let platform_of = |args: &[&str], uri: &str| -> String {
        let out = unique_dir(&env.work(""), "tar").join("image.tar");
        env.occy()
            .args(args)
            .args(["process", uri, &tar_uri(&out)])
            .ok();
        let ds = DockerSave::read(&out);
        String::from_utf8(ds.find_in_layers("etc/platform").unwrap()).unwrap()
    };
    let uri = layout_uri(&layout, "multi");
    assert_eq!(
        platform_of(&["--architecture", "arm64"], &uri),
        "linux/arm64/v8\n"
    );
    assert_eq!(
        platform_of(&["--architecture", "arm", "--variant", "v7"], &uri),
        "linux/arm/v7\n"
    );
    assert_eq!(
        platform_of(&["--architecture", "arm64"], &format!("{uri}?arch=amd64")),
        "linux/amd64\n",
        "the URI's arch= overrides the flag"
    );
    let out = env
        .occy()
        .args([
            "--architecture",
            "s390x",
            "process",
            &uri,
            &tar_uri(&env.out("x.tar")),
        ])
        .run();
    let line = assert_clean_failure(&env, &out, &["platform"]);
    assert!(
        PLATFORMS.iter().all(|p| line.contains(p)),
        "the error lists the platforms offered: {line}"
    );
    // The chosen image's manifest is verified and kept into a layout.
    let copy = env.out("copy");
    env.occy()
        .args([
            "--architecture",
            "arm64",
            "process",
            &uri,
            &layout_uri(&copy, "arm64"),
        ])
        .ok();
    assert_eq!(
        index_tags(&read_index(&copy))["arm64"],
        imgs[2].manifest_digest
    );
}

#[test]
fn oci_layout_source_wrong_tag_lists_tags() {
    let env = TestEnv::new();
    let layout = env.work("layout");
    let mut l = OciLayout::create(&layout);
    l.add_image(
        "first",
        &crate::support::images::tiny_image("a", "a").build(),
    );
    l.add_image(
        "second",
        &crate::support::images::tiny_image("b", "b").build(),
    );
    let out = env
        .occy()
        .args([
            "process",
            &layout_uri(&layout, "nope"),
            &tar_uri(&env.out("x.tar")),
        ])
        .run();
    let line = assert_clean_failure(&env, &out, &["nope"]);
    assert!(
        line.contains("first") && line.contains("second"),
        "the error lists the tags: {line}"
    );
    // Without a tag, a layout of two images is ambiguous.
    let out = env
        .occy()
        .args([
            "process",
            &format!("oci-layout://{}", layout.display()),
            &tar_uri(&env.out("x.tar")),
        ])
        .run();
    let line = assert_clean_failure(&env, &out, &["first"]);
    assert!(line.contains("second"), "{line}");
}

fn flip_byte(path: &Path, offset: usize) {
    let mut data = fs::read(path).unwrap();
    data[offset] ^= 0xff;
    fs::write(path, data).unwrap();
}

#[test]
fn oci_layout_corrupt_blob_fails_without_output() {
    let env = TestEnv::new();
    let built = busybox_image_mixed(&[Compression::Gzip; 3]).build();
    let layout = env.work("layout");
    OciLayout::create(&layout).add_image("t", &built);
    let blob = |d: &str| layout.join("blobs/sha256").join(&d[7..]);
    // A layer blob with one byte changed: every kind of output refuses it
    // and none is left behind.
    let layer = blob(&built.layers[1].digest);
    flip_byte(&layer, 100);
    let src = layout_uri(&layout, "t");
    for dest in [
        tar_uri(&env.out("image.tar")),
        format!("oci-layout://{}:t", env.out("layout").display()),
        oci_uri(&env.out("bundle"), ""),
        mounts_uri(&env.out("mounts"), ""),
    ] {
        let out = env.occy().args(["process", &src, &dest]).run();
        let line = assert_clean_failure(&env, &out, &["digest"]);
        assert!(
            line.contains(&built.layers[1].digest),
            "the error names the blob: {line}"
        );
    }
    flip_byte(&layer, 100);
    // The config, and the manifest, are checked as well.
    for (what, d) in [
        ("config", &built.config_digest),
        ("manifest", &built.manifest_digest),
    ] {
        flip_byte(&blob(d), 5);
        let out = env
            .occy()
            .args(["process", &src, &tar_uri(&env.out("image.tar"))])
            .run();
        let line = assert_clean_failure(&env, &out, &["digest"]);
        assert!(line.contains(&d[7..]), "the {what} is named: {line}");
        flip_byte(&blob(d), 5);
    }
    // Restored, it goes through.
    env.occy()
        .args(["process", &src, &tar_uri(&env.out("image.tar"))])
        .ok();
}

#[test]
fn oci_layout_output_left_nothing_after_failed_pull() {
    let env = TestEnv::new();
    let reg = Registry::start();
    push_built(
        &env,
        &reg,
        "team/app:v1",
        &crate::support::images::tiny_image("a", "a").build(),
        PushFormat::Oci,
    );
    // A tag the registry lacks: the layout (and the other directory
    // outputs) must not appear.
    for dest in [
        layout_uri(&env.out("layout"), "v2"),
        mounts_uri(&env.out("mounts"), ""),
        oci_uri(&env.out("bundle"), ""),
    ] {
        let out = env
            .occy()
            .args(["--insecure", "process", &reg.uri("team/app", "v2"), &dest])
            .run();
        assert_clean_failure(&env, &out, &["not found", "unknown", "v2"]);
    }
    // A directory that is neither empty nor a layout is not written into.
    let other = env.work("not-a-layout");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("notes.txt"), b"mine\n").unwrap();
    let out = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/app", "v1"),
            &layout_uri(&other, "v1"),
        ])
        .run();
    assert_ne!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("is not empty and not an OCI layout (it has no oci-layout file); refusing"),
        "{}",
        out.stderr
    );
    assert_eq!(crate::support::dir_entries(&other), ["notes.txt"]);
    // An empty one is.
    let empty = env.work("empty");
    fs::create_dir_all(&empty).unwrap();
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/app", "v1"),
            &layout_uri(&empty, "v1"),
        ])
        .ok();
    skopeo_ok(
        &env.tool_tmp(),
        &["inspect", &format!("oci:{}:v1", empty.display())],
    );
}
