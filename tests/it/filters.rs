//! Filters (`-f`): normalize-timestamps, exclude and inspect, alone and
//! chained, from the loopback registry and from docker-save tarballs, into
//! docker-save tarballs (checked with skopeo and podman) and an expanded
//! directory.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::archive::Expect;
use crate::support::fstree::Tree;
use crate::support::images::{BuiltImage, Image, ManifestPos, SaveStyle, write_docker_save};
use crate::support::layer_tar::{TarBuilder, pax_record};
use crate::support::push::{PushFormat, push_image};
use crate::support::{
    Compression, DockerSave, Registry, TestEnv, assert_clean_failure, assert_no_panic,
    fixtures_dir, sha256_digest, sha256_hex, tar_uri, verify_output,
};

const REPO: &str = "team/filtered";
/// The security.capability xattr of `cap_net_bind_service=ep`.
const CAP: &[u8] =
    b"\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
/// A time unlike the harness's fixed mtime, so normalizing changes it.
const TS: u64 = 1_234_567_890;

fn long_dir() -> String {
    format!("long/{}", "d".repeat(110))
}

fn long_file() -> String {
    format!("{}/{}.txt", long_dir(), "long-name-".repeat(12))
}

/// Bottom layer, by the tar crate: PAX xattrs (a file capability and a
/// user xattr), docs, .pyc files, a hard link into the docs, a long name.
fn base_layer() -> Vec<u8> {
    TarBuilder::new()
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file_xattrs(
            "usr/bin/ping",
            0o755,
            b"#!/bin/sh\necho ping\n",
            &[("security.capability", CAP), ("user.foo", b"bar")],
        )
        .dir("usr/share", 0o755)
        .dir("usr/share/doc", 0o755)
        .dir("usr/share/doc/pkg", 0o755)
        .file("usr/share/doc/pkg/README", 0o644, b"readme\n")
        .file("usr/share/doc/pkg/copyright", 0o644, b"(c) nobody\n")
        .hardlink("usr/bin/README", "usr/share/doc/pkg/README")
        .dir("usr/lib", 0o755)
        .dir("usr/lib/python3", 0o755)
        .file("usr/lib/python3/mod.py", 0o644, b"x = 1\n")
        .file("usr/lib/python3/mod.pyc", 0o644, b"\x00compiled")
        .file("top.pyc", 0o644, b"\x00compiled too")
        .dir("etc", 0o755)
        .file("etc/motd", 0o644, b"hello\n")
        .symlink("etc/alt", "motd")
        .dir("long", 0o755)
        .dir(&long_dir(), 0o755)
        .file(&long_file(), 0o644, b"long\n")
        .finish()
}

/// A layer written by GNU tar in PAX format: PAX headers for every file
/// (atime, ctime), xattrs, a hard link, long names, entries named `./...`,
/// and mtimes from 2001.
fn gnu_layer(work: &Path) -> Vec<u8> {
    let root = work.join("gnu-layer");
    let d = root.join("app/__pycache__");
    fs::create_dir_all(&d).unwrap();
    fs::create_dir_all(root.join("usr/share/doc/other")).unwrap();
    let long = root.join("app").join("m".repeat(150));
    fs::write(root.join("app/main.py"), b"print('hi')\n").unwrap();
    fs::write(d.join("main.cpython-311.pyc"), b"\x00pyc").unwrap();
    fs::write(root.join("usr/share/doc/other/NEWS"), b"news\n").unwrap();
    fs::write(&long, b"long gnu name\n").unwrap();
    fs::hard_link(root.join("app/main.py"), root.join("app/main-link.py")).unwrap();
    rustix::fs::setxattr(
        root.join("app/main.py"),
        "user.foo",
        b"gnu",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let ok = Command::new("find")
        .arg(&root)
        .args([
            "-exec",
            "touch",
            "-h",
            "-d",
            "2001-02-03 04:05:06",
            "{}",
            "+",
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    let out = Command::new("tar")
        .current_dir(&root)
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--format=pax",
            "--sort=name",
            "--owner=0",
            "--group=0",
            "-cf",
            "-",
            ".",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

/// Whiteouts (one of a doc directory, one of a file), and new files.
fn top_layer() -> Vec<u8> {
    TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/.wh.motd", 0o644, b"")
        .file("etc/hostname", 0o644, b"filtered\n")
        .dir("usr", 0o755)
        .dir("usr/share", 0o755)
        .dir("usr/share/doc", 0o755)
        .file("usr/share/doc/.wh.pkg", 0o644, b"")
        .file("usr/share/doc/new-doc", 0o644, b"new\n")
        .finish()
}

/// A layer no pattern of the tests matches.
fn plain_layer() -> Vec<u8> {
    TarBuilder::new()
        .dir("opt", 0o755)
        .file("opt/config", 0o644, b"k=v\n")
        .finish()
}

fn image(env: &TestEnv) -> Image {
    Image::new("linux/amd64")
        .layer(base_layer(), Compression::Gzip)
        .layer(gnu_layer(&env.work("")), Compression::Gzip)
        .layer(top_layer(), Compression::Zstd)
        .layer(plain_layer(), Compression::None)
}

/// One entry as the tar crate reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ent {
    path: String,
    kind: u8,
    mtime: u64,
    mode: u32,
    data: Vec<u8>,
    link: String,
    pax: Vec<(String, Vec<u8>)>,
}

fn clean(p: &str) -> String {
    let p = p.trim_start_matches("./").trim_end_matches('/');
    if p == "." { String::new() } else { p.into() }
}

fn entries(tar: &[u8]) -> Vec<Ent> {
    let mut ar = tar::Archive::new(tar);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut pax = Vec::new();
        if let Some(x) = e.pax_extensions().unwrap() {
            for r in x {
                let r = r.unwrap();
                pax.push((r.key().unwrap().to_string(), r.value_bytes().to_vec()));
            }
        }
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(Ent {
            path: clean(&String::from_utf8_lossy(&e.path_bytes())),
            kind: h.entry_type().as_byte(),
            mtime: h.mtime().unwrap(),
            mode: h.mode().unwrap(),
            data,
            link: e
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default(),
            pax,
        });
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn is_time_key(k: &str) -> bool {
    matches!(k, "atime" | "ctime" | "mtime")
}

/// Every layer of a normalized output: each entry has mtime `ts`, no PAX
/// time records, and otherwise what the input layer had; the xattr
/// records are in the bytes, correctly framed.
fn assert_normalized(ds: &DockerSave, built: &BuiltImage, ts: u64) {
    for (i, l) in built.layers.iter().enumerate() {
        let got = entries(ds.layer(0, i));
        let want = entries(&l.tar);
        assert_eq!(got.len(), want.len(), "layer {i}: entry count");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.mtime, ts, "layer {i}: {} keeps its mtime", g.path);
            assert!(
                !g.pax.iter().any(|(k, _)| is_time_key(k)),
                "layer {i}: {} keeps a PAX time record: {:?}",
                g.path,
                g.pax
            );
            let kept: Vec<_> = w.pax.iter().filter(|(k, _)| !is_time_key(k)).collect();
            assert_eq!(
                g.pax.iter().collect::<Vec<_>>(),
                kept,
                "layer {i}: {}",
                g.path
            );
            assert_eq!(
                (&g.path, g.kind, g.mode, &g.data, &g.link),
                (&w.path, w.kind, w.mode, &w.data, &w.link),
                "layer {i}"
            );
        }
    }
    let base = ds.layer(0, 0);
    assert!(contains(
        base,
        &pax_record("SCHILY.xattr.security.capability", CAP)
    ));
    assert!(contains(base, &pax_record("SCHILY.xattr.user.foo", b"bar")));
    assert!(contains(
        ds.layer(0, 1),
        &pax_record("SCHILY.xattr.user.foo", b"gnu")
    ));
}

/// The output config is the source's with only `rootfs.diff_ids` changed.
fn assert_config_follows(ds: &DockerSave, built: &BuiltImage) {
    let mut got = ds.config(0);
    let mut want: Value = serde_json::from_slice(&built.config).unwrap();
    let ids = ds.diff_ids(0);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            id,
            &sha256_digest(ds.layer(0, i)),
            "layer {i} hashes to its diff_id"
        );
    }
    got["rootfs"]["diff_ids"] = Value::Null;
    want["rootfs"]["diff_ids"] = Value::Null;
    assert_eq!(got, want, "only the diff_ids change in the config");
    assert_ne!(
        ds.manifest[0].config,
        format!("{}.json", &built.config_digest[7..]),
        "a new config digest"
    );
}

#[test]
fn normalize_timestamps_from_registry() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = push_image(
        &env,
        &reg,
        &format!("{REPO}:v1"),
        &image(&env),
        PushFormat::Oci,
    );
    let tag = format!("{}/{REPO}:v1", reg.host());
    let filter = format!("normalize-timestamps:ts={TS}");
    let mut outs = Vec::new();
    for n in 0..2 {
        let out = env.out(&format!("norm-{n}.tar"));
        env.occy()
            .args([
                "--insecure",
                "process",
                &reg.uri(REPO, "v1"),
                &tar_uri(&out),
                "-f",
                &filter,
            ])
            .ok();
        outs.push(out);
    }
    let ds = verify_output(&env, &outs[0], &Expect::default().tags(&[&tag]), Some(&tag));
    assert_normalized(&ds, &built, TS);
    assert_config_follows(&ds, &built);
    for (i, id) in ds.diff_ids(0).iter().enumerate() {
        assert_ne!(id, &built.diff_ids[i], "layer {i} got a new diff_id");
    }
    assert!(
        fs::read(&outs[0]).unwrap() == fs::read(&outs[1]).unwrap(),
        "two runs give byte-identical tarballs"
    );

    // The same image from a docker-save tarball comes out the same:
    // normalized layers depend only on their content.
    let saved = env.work("saved.tar");
    write_docker_save(
        &saved,
        &[(&built, vec![tag.clone()])],
        SaveStyle::Docker25,
        ManifestPos::Sorted,
    );
    let from_tar = env.out("from-tar.tar");
    env.occy()
        .args([
            "process",
            &tar_uri(&saved),
            &tar_uri(&from_tar),
            "-f",
            &filter,
        ])
        .ok();
    let ds2 = verify_output(&env, &from_tar, &Expect::default().tags(&[&tag]), None);
    assert_eq!(ds2.diff_ids(0), ds.diff_ids(0));
    assert_eq!(ds2.config_bytes(0), ds.config_bytes(0));
}

#[test]
fn normalize_timestamps_from_docker_save_defaults_to_zero() {
    let env = TestEnv::new();
    let built = image(&env).build();
    let tag = "team/saved:v2".to_string();
    let saved = env.work("saved.tar");
    write_docker_save(
        &saved,
        &[(&built, vec![tag.clone()])],
        SaveStyle::Legacy,
        ManifestPos::Sorted,
    );
    let out = env.out("norm.tar");
    env.occy()
        .args([
            "process",
            &tar_uri(&saved),
            &tar_uri(&out),
            "-f",
            "normalize-timestamps",
        ])
        .ok();
    let ds = verify_output(&env, &out, &Expect::default().tags(&[&tag]), None);
    assert_normalized(&ds, &built, 0);
    assert_config_follows(&ds, &built);
    let repos: Value = serde_json::from_slice(ds.file("repositories")).unwrap();
    let top = ds.diff_ids(0).last().unwrap()[7..].to_string();
    assert_eq!(repos["team/saved"]["v2"], top.as_str());
}

#[test]
fn normalize_timestamps_on_real_docker_saves() {
    let env = TestEnv::new();
    for name in [
        "test_image_1.tar",
        "whiteout_image.tar",
        "hello-world-v25.tar",
    ] {
        let input = fixtures_dir().join(name);
        let out = env.out(&format!("norm-{name}"));
        env.occy()
            .args([
                "process",
                &tar_uri(&input),
                &tar_uri(&out),
                "-f",
                "normalize-timestamps:ts=1700000000",
            ])
            .ok();
        let ds = verify_output(&env, &out, &Expect::default(), None);
        let before = DockerSave::read(&input);
        for i in 0..ds.manifest[0].layers.len() {
            let got = entries(ds.layer(0, i));
            let want = entries(before.layer(0, i));
            assert_eq!(got.len(), want.len(), "{name} layer {i}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.mtime, 1_700_000_000, "{name}: {}", g.path);
                assert_eq!((&g.path, &g.data, &g.link), (&w.path, &w.data, &w.link));
            }
        }
    }
}

/// What `exclude:pattern=usr/share/doc/**,pattern=**/*.pyc` removes, worked
/// out independently: whiteouts count as the path they delete.
fn excluded(path: &str) -> bool {
    let (dir, base) = path.rsplit_once('/').unwrap_or(("", path));
    let target = match base.strip_prefix(".wh.") {
        Some(".wh..opq") => dir.to_string(),
        Some(name) if dir.is_empty() => name.to_string(),
        Some(name) => format!("{dir}/{name}"),
        None => path.to_string(),
    };
    target.starts_with("usr/share/doc/") || target.ends_with(".pyc")
}

#[test]
fn exclude_two_patterns_from_docker_save() {
    let env = TestEnv::new();
    let built = image(&env).build();
    let saved = env.work("saved.tar");
    write_docker_save(
        &saved,
        &[(&built, vec!["team/ex:v1".into()])],
        SaveStyle::Legacy,
        ManifestPos::Sorted,
    );
    let out = env.out("ex.tar");
    env.occy()
        .args([
            "process",
            &tar_uri(&saved),
            &tar_uri(&out),
            "-f",
            "exclude:pattern=usr/share/doc/**,pattern=**/*.pyc",
        ])
        .ok();
    let ds = verify_output(
        &env,
        &out,
        &Expect::default().tags(&["team/ex:v1"]),
        Some("team/ex:v1"),
    );
    assert_config_follows(&ds, &built);
    let mut gone_all = Vec::new();
    for (i, l) in built.layers.iter().enumerate() {
        let want: Vec<Ent> = entries(&l.tar);
        let got: Vec<Ent> = entries(ds.layer(0, i));
        let mut expected: Vec<Ent> = want
            .iter()
            .filter(|e| !excluded(&e.path))
            .cloned()
            .collect();
        gone_all.extend(
            want.iter()
                .filter(|e| excluded(&e.path))
                .map(|e| e.path.clone()),
        );
        // The hard link into the excluded docs keeps its content.
        for e in &mut expected {
            if e.path == "usr/bin/README" {
                e.kind = b'0';
                e.data = b"readme\n".to_vec();
                e.link.clear();
            }
        }
        assert_eq!(got, expected, "layer {i}: exactly the matches are gone");
    }
    gone_all.sort();
    assert_eq!(
        gone_all,
        [
            "app/__pycache__/main.cpython-311.pyc",
            "top.pyc",
            "usr/lib/python3/mod.pyc",
            "usr/share/doc/.wh.pkg",
            "usr/share/doc/new-doc",
            "usr/share/doc/other",
            "usr/share/doc/other/NEWS",
            "usr/share/doc/pkg",
            "usr/share/doc/pkg/README",
            "usr/share/doc/pkg/copyright",
        ]
    );
    // A layer with nothing to exclude is passed on as it was.
    assert_eq!(ds.diff_ids(0)[3], built.diff_ids[3]);
    assert_eq!(ds.layer(0, 3), built.layers[3].tar.as_slice());
    // The whiteout of a kept file stays.
    assert!(
        entries(ds.layer(0, 2))
            .iter()
            .any(|e| e.path == "etc/.wh.motd")
    );
}

#[test]
fn inspect_appends_one_json_line_per_run() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = push_image(
        &env,
        &reg,
        &format!("{REPO}:v1"),
        &image(&env),
        PushFormat::Preserve,
    );
    let jsonl = env.work("inspect/layers.jsonl");
    fs::create_dir_all(jsonl.parent().unwrap()).unwrap();
    let filter = format!("inspect:file={}", jsonl.display());
    for n in 0..2 {
        let out = env.out(&format!("i-{n}.tar"));
        env.occy()
            .args([
                "--insecure",
                "process",
                &reg.uri(REPO, "v1"),
                &tar_uri(&out),
                "-f",
                &filter,
            ])
            .ok();
        // Observing only: the output is what it is without the filter.
        let ds = verify_output(
            &env,
            &out,
            &Expect::default()
                .config(&built.config)
                .diff_ids(&built.diff_ids),
            None,
        );
        assert_eq!(ds.layer(0, 0), built.layers[0].tar.as_slice());
    }
    let text = fs::read_to_string(&jsonl).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], lines[1]);
    let v: Value = serde_json::from_str(lines[0]).unwrap();
    let tag = format!("{}/{REPO}:v1", reg.host());
    assert_eq!(v["name"], tag.as_str());
    assert_eq!(v["repository"], format!("{}/{REPO}", reg.host()).as_str());
    assert_eq!(v["tag"], "v1");
    assert_eq!(v["config_digest"], built.config_digest.as_str());
    assert_eq!(v["manifest_digest"], built.manifest_digest.as_str());
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    for (i, (l, b)) in layers.iter().zip(&built.layers).enumerate() {
        assert_eq!(l["index"], i);
        assert_eq!(l["digest"], b.digest.as_str());
        assert_eq!(l["diff_id"], b.diff_id.as_str());
        assert_eq!(l["size"], b.blob.len());
        assert_eq!(l["media_type"], b.media_type);
        assert_eq!(
            l["created_by"],
            format!("/bin/sh -c #(nop) layer {}", i + 1).as_str()
        );
        assert_eq!(l["created"], crate::support::images::CREATED);
        assert_eq!(l["comment"], Value::Null);
        assert_eq!(l["empty_layer"], false);
    }
}

#[test]
fn chain_into_expanded_dir() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = push_image(
        &env,
        &reg,
        &format!("{REPO}:v1"),
        &image(&env),
        PushFormat::Oci,
    );
    let store = env.out("store");
    let jsonl = env.work("chain.jsonl");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri(REPO, "v1"),
            &format!("dir://{}?expand=true", store.display()),
            "-f",
            "normalize-timestamps",
            "-f",
            "exclude:pattern=usr/share/doc/**",
            "-f",
            &format!("inspect:file={}", jsonl.display()),
        ])
        .ok();
    assert_expanded_tree_filtered(&store.join("manifest"));
    assert_inspect_saw_the_stored_image(&store, &jsonl, &built);
}

/// The expanded rootfs: the excluded files gone, mtimes zeroed, xattrs and
/// hard links kept.
fn assert_expanded_tree_filtered(root: &Path) {
    let tree = Tree::scan(root);
    let paths: Vec<&str> = tree.nodes.keys().map(String::as_str).collect();
    for p in [
        "usr/bin/ping",
        "usr/bin/README",
        "app/main.py",
        "etc/hostname",
        "opt/config",
    ] {
        assert!(tree.nodes.contains_key(p), "{p} missing from {paths:?}");
    }
    assert!(tree.nodes["usr/share/doc"].kind == "dir");
    assert!(
        !paths.iter().any(|p| p.starts_with("usr/share/doc/")),
        "excluded files present: {paths:?}"
    );
    assert!(
        !tree.nodes.contains_key("etc/motd"),
        "the kept whiteout still applies"
    );
    assert!(
        tree.nodes.contains_key("top.pyc"),
        "only the one pattern applies"
    );
    assert_eq!(fs::read(root.join("usr/bin/README")).unwrap(), b"readme\n");
    for (p, n) in &tree.nodes {
        assert_eq!(n.mtime, 0, "{p} has mtime {}", n.mtime);
    }
    let ping = &tree.nodes["usr/bin/ping"].xattrs;
    assert_eq!(ping.get("user.foo").map(Vec::as_slice), Some(&b"bar"[..]));
    assert_eq!(
        ping.get("security.capability").map(Vec::as_slice),
        Some(CAP),
        "{ping:?}"
    );
    assert_eq!(
        tree.nodes["app/main.py"]
            .xattrs
            .get("user.foo")
            .map(Vec::as_slice),
        Some(&b"gnu"[..])
    );
    assert!(
        tree.links
            .iter()
            .any(|g| g == &["app/main-link.py", "app/main.py"]),
        "{:?}",
        tree.links
    );
}

/// inspect, last in the chain, saw the rewritten layers and config: the ones
/// the store holds.
fn assert_inspect_saw_the_stored_image(store: &Path, jsonl: &Path, built: &BuiltImage) {
    let text = fs::read_to_string(jsonl).unwrap();
    let v: Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(v["manifest_digest"], Value::Null);
    let cfg = v["config_digest"].as_str().unwrap();
    assert_ne!(cfg, built.config_digest);
    let cfg_bytes = fs::read(store.join(format!("{}.json", &cfg[7..]))).unwrap();
    assert_eq!(sha256_digest(&cfg_bytes), cfg);
    let config: Value = serde_json::from_slice(&cfg_bytes).unwrap();
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    for (i, l) in layers.iter().enumerate() {
        let id = l["diff_id"].as_str().unwrap();
        assert_ne!(id, built.diff_ids[i], "layer {i} was rewritten");
        assert_eq!(config["rootfs"]["diff_ids"][i], id);
        let tar = fs::read(store.join(&id[7..]).join("layer.tar")).unwrap();
        assert_eq!(sha256_hex(&tar), id[7..]);
        assert_eq!(l["digest"], id, "a rewritten layer's blob is its tar");
        assert_eq!(l["size"], tar.len());
        assert_eq!(l["media_type"], "application/vnd.oci.image.layer.v1.tar");
        assert!(entries(&tar).iter().all(|e| e.mtime == 0));
    }
}

#[test]
fn bad_filter_arguments_are_usage_errors() {
    let env = TestEnv::new();
    let built = image(&env).build();
    let saved = env.work("saved.tar");
    write_docker_save(
        &saved,
        &[(&built, vec!["team/x:v1".into()])],
        SaveStyle::Legacy,
        ManifestPos::Sorted,
    );
    let out = env.out("x.tar");
    let cases: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("exclude", &["pattern"][..]),
        ("exclude:pattern=[", &["pattern"][..]),
        ("exclude:glob=*", &["glob"][..]),
        ("normalize-timestamps:ts=yesterday", &["ts"][..]),
        ("inspect", &["file"][..]),
        ("no-such-filter", &["no-such-filter"][..]),
    ]);
    for (filter, words) in cases {
        let r = env
            .occy()
            .args(["process", &tar_uri(&saved), &tar_uri(&out), "-f", filter])
            .run();
        assert_no_panic(&r);
        assert_eq!(r.code, Some(2), "{filter}: {}", r.stderr);
        assert!(
            words.iter().any(|w| r.stderr.contains(w)),
            "{filter}: {}",
            r.stderr
        );
        assert!(env.out_dir_entries().is_empty());
    }
    // An inspect file that cannot be written fails the run cleanly.
    let r = env
        .occy()
        .args([
            "process",
            &tar_uri(&saved),
            &tar_uri(&out),
            "-f",
            &format!("inspect:file={}", env.work("no/such/dir/x.jsonl").display()),
        ])
        .run();
    assert_clean_failure(&env, &r, &["x.jsonl"]);
}

/// `normalize-timestamps` into `oci://` rewrites each layer as it streams
/// into the bundle, with no file for the filter: the bundle gets the config
/// the tarball output (which takes the files path) gets, new diff_ids and
/// all, and its files the time.
#[test]
fn normalize_timestamps_streams_into_a_bundle() {
    use std::os::unix::fs::MetadataExt;
    let env = TestEnv::new();
    let reg = Registry::start();
    push_image(
        &env,
        &reg,
        &format!("{REPO}:v1"),
        &image(&env),
        PushFormat::Oci,
    );
    let filter = format!("normalize-timestamps:ts={TS}");
    let tarball = env.out("norm.tar");
    let bundle = env.out("bundle");
    for dest in [tar_uri(&tarball), format!("oci://{}", bundle.display())] {
        env.occy()
            .args([
                "--insecure",
                "process",
                &reg.uri(REPO, "v1"),
                &dest,
                "-f",
                &filter,
            ])
            .ok();
    }
    let tag = format!("{}/{REPO}:v1", reg.host());
    let ds = verify_output(&env, &tarball, &Expect::default().tags(&[&tag]), Some(&tag));
    assert!(
        fs::read(bundle.join("container-config.json")).unwrap() == ds.config_bytes(0),
        "the bundle's config is the rewritten one"
    );
    let mut files = 0;
    let mut dirs = vec![bundle.join("rootfs")];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                dirs.push(e.path());
            } else if m.is_file() {
                files += 1;
                assert_eq!(m.mtime() as u64, TS, "{}", e.path().display());
            }
        }
    }
    assert!(files > 3, "{files} files");
}
