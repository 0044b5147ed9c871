//! `search`, `search-layers` and `search-layers-tarfile`: globs (whole path
//! or basename) and regexes, whiteouts reported as deletions, the text,
//! script-friendly and JSON forms, a 20,000-file layer, and the `search`
//! filter of `process`.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::images::{ManifestPos, SaveStyle, write_docker_save};
use crate::support::layer_tar::TarBuilder;
use crate::support::push::{PushFormat, push_image};
use crate::support::{
    Compression, Image, Output, Registry, TestEnv, assert_no_panic, http, tar_uri,
};

const REPO: &str = "team/app";

/// An image whose every entry the tests know: shells and config files in
/// layer 0; a whiteout of `etc/motd`, a hard link and more config in layer
/// 1; an opaque `etc/ssl` in layer 2.
fn known_image() -> Image {
    let base = TarBuilder::new()
        .dir("bin", 0o755)
        .file("bin/bash", 0o755, &[0x42; 1000])
        .symlink("bin/sh", "bash")
        .file("bin/dash", 0o755, &[0x44; 300])
        .dir("etc", 0o755)
        .file("etc/motd", 0o644, b"hello\n")
        .file("etc/app.conf", 0o644, b"a=1\n")
        .dir("etc/ssl", 0o755)
        .file("etc/ssl/openssl.cnf", 0o644, b"[x]\n")
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .file("usr/lib/tool.py", 0o644, b"print(1)\n")
        .file("usr/lib/tool.pyc", 0o644, b"\x00\x01")
        .finish();
    let middle = TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/.wh.motd", 0o644, b"")
        .file("etc/extra.conf", 0o644, b"b=2\n")
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/bash5", 0o755, &[0x35; 50])
        .hardlink("usr/bin/rbash", "usr/bin/bash5")
        .finish();
    let top = TarBuilder::new()
        .dir("etc", 0o755)
        .dir("etc/ssl", 0o755)
        .file("etc/ssl/.wh..wh..opq", 0o644, b"")
        .file("etc/ssl/new.conf", 0o644, b"c=3\n")
        .finish();
    Image::new("linux/amd64")
        .layer(base, Compression::Gzip)
        .layer(middle, Compression::Gzip)
        .layer(top, Compression::Gzip)
}

/// Pushes [`known_image`] as `team/app:v1` (Docker schema 2) and returns the
/// layer digests the registry serves.
fn pushed() -> (TestEnv, Registry, Vec<String>) {
    let env = TestEnv::new();
    let reg = Registry::start();
    push_image(
        &env,
        &reg,
        &format!("{REPO}:v1"),
        &known_image(),
        PushFormat::Docker,
    );
    let r = http::get_manifest(&reg.host(), REPO, "v1").unwrap();
    let m: Value = serde_json::from_slice(&r.body).unwrap();
    let digests = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    (env, reg, digests)
}

/// A docker-save tarball of [`known_image`] tagged `team/app:v1`; returns
/// its path and the layer diff_ids (a docker-save layer's digest).
fn tarball(env: &TestEnv) -> (std::path::PathBuf, Vec<String>) {
    let built = known_image().build();
    let path = env.work("app.tar");
    write_docker_save(
        &path,
        &[(&built, vec![format!("{REPO}:v1")])],
        SaveStyle::Legacy,
        ManifestPos::Sorted,
    );
    (path, built.diff_ids.clone())
}

/// Runs occystrap and asserts exit 0 with nothing on stderr.
fn ok(env: &TestEnv, args: &[&str]) -> Output {
    let out = env.occy().args(args).run();
    assert_no_panic(&out);
    assert_eq!(
        out.code,
        Some(0),
        "{} failed\n--- stdout\n{}\n--- stderr\n{}",
        out.cmdline,
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.trim().is_empty(),
        "{}: unexpected stderr: {}",
        out.cmdline,
        out.stderr
    );
    eprintln!("[{}] {:.2}s", out.cmdline, out.elapsed.as_secs_f64());
    out
}

/// The match lines of text output: (type, size, rest), skipping headers and
/// count lines.
fn text_matches(stdout: &str) -> Vec<(String, String, String)> {
    stdout
        .lines()
        .filter(|l| l.starts_with("  ") && !l.trim_start().chars().next().unwrap().is_ascii_digit())
        .map(|l| {
            let mut it = l.split_whitespace();
            let kind = it.next().unwrap().to_string();
            let size = it.next().unwrap().to_string();
            let rest = it.collect::<Vec<_>>().join(" ");
            (kind, size, rest)
        })
        .collect()
}

/// A digest's hex part.
fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn glob_over_registry_text_output() {
    let (env, reg, digests) = pushed();
    let out = ok(
        &env,
        &["--insecure", "search", &reg.uri(REPO, "v1"), "bin/*sh"],
    );
    let s = &out.stdout;
    // A header per layer naming index and digest, then a count line.
    for (i, d) in digests.iter().enumerate() {
        assert!(
            s.contains(&format!("Layer {i} {d}")),
            "no header for layer {i}:\n{s}"
        );
    }
    let m = text_matches(s);
    assert_eq!(
        m,
        vec![
            ("file".into(), "1000".into(), "bin/bash".into()),
            ("symlink".into(), "0".into(), "bin/sh -> bash".into()),
            ("file".into(), "300".into(), "bin/dash".into()),
        ],
        "{s}"
    );
    assert!(s.contains("  3 matches in "), "{s}");
    assert!(s.contains("  0 matches in "), "{s}");
    assert!(
        s.lines()
            .last()
            .unwrap()
            .starts_with("3 matches in 1 of 3 layers"),
        "{s}"
    );
}

#[test]
fn glob_matches_basenames_and_whiteouts() {
    let (env, reg, _) = pushed();
    let src = reg.uri(REPO, "v1");
    // `*bash` finds bin/bash by its basename, and the hard link's target.
    let out = ok(&env, &["--insecure", "search", &src, "*bash*"]);
    let m = text_matches(&out.stdout);
    let paths: Vec<&str> = m.iter().map(|(_, _, p)| p.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "bin/bash",
            "usr/bin/bash5",
            "usr/bin/rbash => usr/bin/bash5"
        ],
        "{}",
        out.stdout
    );
    assert_eq!(m[2].0, "hardlink");

    // A plain name matches as a basename anywhere, including the whiteout
    // that deletes it in layer 1.
    let out = ok(&env, &["--insecure", "search", &src, "motd"]);
    let m = text_matches(&out.stdout);
    assert_eq!(m.len(), 2, "{}", out.stdout);
    assert_eq!(
        m[0],
        ("file".into(), "6".into(), "etc/motd".into()),
        "{}",
        out.stdout
    );
    assert_eq!(m[1].0, "whiteout");
    assert_eq!(m[1].1, "-");
    assert!(
        m[1].2.starts_with("etc/motd") && m[1].2.contains("deleted by etc/.wh.motd"),
        "{}",
        out.stdout
    );
    // The opaque directory, and the file a later layer hides, both show.
    let out = ok(&env, &["--insecure", "search", &src, "etc/ssl*"]);
    let m = text_matches(&out.stdout);
    let kinds: Vec<&str> = m.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        vec!["dir", "file", "dir", "opaque", "file"],
        "{}",
        out.stdout
    );
    assert!(m[1].2.starts_with("etc/ssl/openssl.cnf"));
}

#[test]
fn regex_over_tarball() {
    let env = TestEnv::new();
    let (path, _) = tarball(&env);
    let out = ok(&env, &["search", "--regex", &tar_uri(&path), r".*\.py$"]);
    let m = text_matches(&out.stdout);
    assert_eq!(
        m,
        vec![("file".into(), "9".into(), "usr/lib/tool.py".into())],
        "{}",
        out.stdout
    );
    // Unanchored: `conf` anywhere in the path.
    let out = ok(&env, &["search", "--regex", &tar_uri(&path), "conf"]);
    let paths: Vec<String> = text_matches(&out.stdout)
        .into_iter()
        .map(|(_, _, p)| p)
        .collect();
    assert_eq!(
        paths,
        vec!["etc/app.conf", "etc/extra.conf", "etc/ssl/new.conf"],
        "{}",
        out.stdout
    );
}

#[test]
fn script_friendly_lines() {
    let (env, reg, digests) = pushed();
    let out = ok(
        &env,
        &[
            "--insecure",
            "search",
            "--script-friendly",
            &reg.uri(REPO, "v1"),
            "*.conf",
        ],
    );
    // As the Python occystrap prints them: the repository without its
    // host (whose `:PORT` would add a field), the layer as bare hex.
    let want: Vec<String> = vec![
        format!("{REPO}:v1:{}:etc/app.conf", hex(&digests[0])),
        format!("{REPO}:v1:{}:etc/extra.conf", hex(&digests[1])),
        format!("{REPO}:v1:{}:etc/ssl/new.conf", hex(&digests[2])),
    ];
    let got: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(got, want);

    // Whiteouts appear under their own member name.
    let out = ok(
        &env,
        &[
            "--insecure",
            "search",
            "--script-friendly",
            &reg.uri(REPO, "v1"),
            "motd",
        ],
    );
    let got: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        got,
        vec![
            format!("{REPO}:v1:{}:etc/motd", hex(&digests[0])),
            format!("{REPO}:v1:{}:etc/.wh.motd", hex(&digests[1])),
        ]
    );
}

#[test]
fn json_lines_carry_every_field() {
    let env = TestEnv::new();
    let (path, diff_ids) = tarball(&env);
    let out = ok(&env, &["-O", "json", "search", &tar_uri(&path), "*"]);
    let lines = json_lines(&out.stdout);
    // Every entry of every layer but the root: 13 + 7 + 4.
    assert_eq!(lines.len(), 24, "{}", out.stdout);
    for l in &lines {
        assert_eq!(l["image"], "team/app");
        assert_eq!(l["tag"], "v1");
        let i = l["layer_index"].as_u64().unwrap() as usize;
        assert_eq!(l["layer_digest"], diff_ids[i].as_str());
    }
    let find = |p: &str, t: &str| {
        lines
            .iter()
            .find(|l| l["path"] == p && l["type"] == t)
            .unwrap_or_else(|| panic!("no {t} {p} in {}", out.stdout))
            .clone()
    };
    let sh = find("bin/sh", "symlink");
    assert_eq!(sh["link_target"], "bash");
    assert_eq!(sh["whiteout"], false);
    let bash = find("bin/bash", "file");
    assert_eq!(bash["size"], 1000);
    assert_eq!(bash["link_target"], Value::Null);
    let wh = find("etc/motd", "whiteout");
    assert_eq!(wh["member"], "etc/.wh.motd");
    assert_eq!(wh["whiteout"], true);
    assert_eq!(wh["layer_index"], 1);
    let opq = find("etc/ssl", "opaque");
    assert_eq!(opq["member"], "etc/ssl/.wh..wh..opq");
    assert_eq!(opq["whiteout"], true);
    assert_eq!(opq["layer_index"], 2);
    let link = find("usr/bin/rbash", "hardlink");
    assert_eq!(link["link_target"], "usr/bin/bash5");
    assert_eq!(find("etc", "dir")["layer_index"], 0);
}

#[test]
fn legacy_search_layers_commands() {
    let (env, reg, digests) = pushed();
    let out = ok(
        &env,
        &[
            "--insecure",
            "search-layers",
            &reg.host(),
            REPO,
            "v1",
            "bin/*sh",
        ],
    );
    assert_eq!(text_matches(&out.stdout).len(), 3, "{}", out.stdout);
    let out = ok(
        &env,
        &[
            "--insecure",
            "search-layers",
            "--script-friendly",
            &reg.host(),
            REPO,
            "v1",
            "dash",
        ],
    );
    assert_eq!(
        out.stdout.trim(),
        format!("{REPO}:v1:{}:bin/dash", hex(&digests[0]))
    );

    let (path, diff_ids) = tarball(&env);
    let p = path.display().to_string();
    let out = ok(&env, &["search-layers-tarfile", &p, "*.conf"]);
    assert_eq!(text_matches(&out.stdout).len(), 3, "{}", out.stdout);
    let out = ok(
        &env,
        &[
            "search-layers-tarfile",
            "--regex",
            "--script-friendly",
            &p,
            r"\.pyc$",
        ],
    );
    assert_eq!(
        out.stdout.trim(),
        format!("team/app:v1:{}:usr/lib/tool.pyc", hex(&diff_ids[0]))
    );
}

#[test]
fn twenty_thousand_files() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let mut many = TarBuilder::new().dir("opt", 0o755).dir("opt/bench", 0o755);
    for a in 0..20 {
        many = many.dir(&format!("opt/bench/d{a:02}"), 0o755);
        for b in 0..20 {
            let d = format!("opt/bench/d{a:02}/s{b:02}");
            many = many.dir(&d, 0o755);
            for c in 0..50 {
                let body = format!("{a}/{b}/{c}\n");
                many = many.file(&format!("{d}/f{c:03}.txt"), 0o644, body.as_bytes());
            }
        }
    }
    let img = Image::new("linux/amd64")
        .layer(
            TarBuilder::new()
                .file("etc/os-release", 0o644, b"ID=test\n")
                .finish(),
            Compression::Gzip,
        )
        .layer(many.finish(), Compression::Gzip);
    push_image(&env, &reg, "bench/many:v1", &img, PushFormat::Oci);
    let src = reg.uri("bench/many", "v1");
    let out = ok(
        &env,
        &["--insecure", "search", "--script-friendly", &src, "*.txt"],
    );
    let lines: BTreeSet<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 20_000);
    assert!(
        out.elapsed.as_secs_f64() < 20.0,
        "searching 20,000 files took {:?}",
        out.elapsed
    );
    // A basename across every directory: one per s-directory.
    let out = ok(&env, &["--insecure", "search", &src, "f007.txt"]);
    assert!(
        out.stdout
            .contains("400 matches in 1 of 2 layers (20423 entries searched)"),
        "{}",
        out.stdout.lines().last().unwrap_or("")
    );
    let out = ok(
        &env,
        &[
            "--insecure",
            "search",
            "--regex",
            &src,
            "^opt/bench/d1[0-4]/s0[0-1]/",
        ],
    );
    assert_eq!(text_matches(&out.stdout).len(), 5 * 2 * 50);
}

#[test]
fn bad_patterns_and_sources_are_one_line_errors() {
    let env = TestEnv::new();
    let (path, _) = tarball(&env);
    let out = env
        .occy()
        .args(["search", "--regex", &tar_uri(&path), "(unclosed"])
        .run();
    assert_no_panic(&out);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("error: invalid regular expression"),
        "{}",
        out.stderr
    );
    let out = env
        .occy()
        .args(["search", &tar_uri(&env.work("missing.tar")), "*"])
        .run();
    assert_no_panic(&out);
    assert_eq!(out.code, Some(1));
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
}

#[test]
fn corrupt_layer_fails_the_search() {
    let (env, reg, digests) = pushed();
    let path = reg.blob_data_path(&digests[1]);
    let mut data = std::fs::read(&path).unwrap();
    data[4] ^= 0xff;
    std::fs::write(&path, data).unwrap();
    let out = env
        .occy()
        .args(["--insecure", "search", &reg.uri(REPO, "v1"), "*"])
        .run();
    assert_no_panic(&out);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("mismatch"),
        "{}",
        lines[0]
    );
}

#[test]
fn search_filter_during_process() {
    let (env, reg, digests) = pushed();
    let dest = env.out("copy.tar");
    let out = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri(REPO, "v1"),
            &tar_uri(&dest),
            "-f",
            "search:pattern=bin/*sh",
        ])
        .run();
    assert_no_panic(&out);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let got: Vec<&str> = out.stdout.lines().collect();
    let layer = hex(&digests[0]);
    assert_eq!(
        got,
        vec![
            format!("{REPO}:v1:{layer}:bin/bash"),
            format!("{REPO}:v1:{layer}:bin/sh"),
            format!("{REPO}:v1:{layer}:bin/dash"),
        ]
    );
    assert!(dest.is_file());
}

/// The search filter reads each layer as it streams to the sink: a layer
/// whose tar is bad past its first megabytes (the blob and diff_id check
/// out) fails the run, and no output or temp file is left.
#[test]
fn search_filter_failing_midstream_leaves_nothing() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let big = crate::support::images::pseudo_random(4 << 20, 7);
    let mut middle = TarBuilder::new()
        .file("srv/big.bin", 0o644, &big)
        .file("srv/after", 0o644, b"x")
        .finish();
    // Spoil the checksum of the header after the big file.
    let name = b"srv/after\0";
    let at = middle
        .windows(name.len())
        .position(|w| w == name)
        .expect("the header of srv/after");
    let header = at - at % 512;
    middle[header + 148] ^= 0x01;
    let image = Image::new("linux/amd64")
        .layer(
            TarBuilder::new().file("bin/sh", 0o755, b"sh").finish(),
            Compression::Gzip,
        )
        .layer(middle, Compression::Gzip);
    push_image(
        &env,
        &reg,
        &format!("{REPO}:bad"),
        &image,
        PushFormat::Docker,
    );
    let dest = env.out("copy.tar");
    let out = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri(REPO, "bad"),
            &tar_uri(&dest),
            "-f",
            "search:pattern=bin/*",
        ])
        .run();
    assert_no_panic(&out);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("searching layer 1"), "{}", out.stderr);
    assert!(!dest.exists());
    assert_eq!(std::fs::read_dir(env.out_dir()).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(env.tmp_dir()).unwrap().count(), 0);
}

/// Search names layers by blob digest and checks every blob by its size
/// and digest; a config's wrong diff_id does not change what a layer holds,
/// so the search runs (`check` is what reports it, and a tarball refuses
/// it). From a docker-save tarball, whose layers are known only by their
/// diff_ids, the diff_id is still checked.
#[test]
fn a_wrong_diff_id_is_searched_by_blob_digest_but_not_from_a_tarball() {
    let (env, reg) = (TestEnv::new(), Registry::start());
    let img = known_image().with_wrong_diff_id(2);
    push_image(&env, &reg, &format!("{REPO}:v1"), &img, PushFormat::Oci);
    let src = reg.uri(REPO, "v1");
    let out = ok(&env, &["--insecure", "search", &src, "new.conf"]);
    let m = text_matches(&out.stdout);
    assert_eq!(m.len(), 1, "{}", out.stdout);
    assert_eq!(m[0].2, "etc/ssl/new.conf", "{}", out.stdout);
    for args in [
        vec!["--insecure", "check", &src],
        vec!["--insecure", "process", &src, "tar://out.tar"],
    ] {
        let out = env.occy().args(&args).run();
        assert_no_panic(&out);
        assert_ne!(out.code, Some(0), "{args:?}: {}", out.stdout);
    }

    // A tarball with the layers as the registry served them: its
    // manifest.json knows each layer by diff_id alone.
    let lying = env.work("lying.tar");
    let dest = format!("{}?layers=compressed", tar_uri(&lying));
    let out = env
        .occy()
        .args(["--insecure", "process", &src, &dest])
        .run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = env
        .occy()
        .args(["search", &tar_uri(&lying), "new.conf"])
        .run();
    assert_no_panic(&out);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("diff_id"), "{}", out.stderr);
}
