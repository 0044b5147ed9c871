//! Nothing from an image or a registry reaches the terminal as a control
//! sequence: images whose tags, history, Env, labels, Cmd, entry names and
//! link targets carry OSC 52 (clipboard), OSC 0 (window title), clear-screen,
//! C1 CSI, a bidi override, DEL and newlines that would forge a line, read by
//! `info`, `search` (every form and the legacy commands), `check`, `process`
//! (summary and note lines, the search and inspect filters), `--verbose`,
//! and failing runs whose `error:` line quotes a registry's message or a
//! hostile entry name. Text shows each sequence escaped; JSON parses and
//! gives the original string back.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::support::images::{
    BuiltImage, ManifestPos, OciLayout, SaveStyle, unique_dir, write_docker_save,
};
use crate::support::layer_tar::TarBuilder;
use crate::support::proxy::{Fault, Proxy};
use crate::support::push::{PushFormat, push_built};
use crate::support::{
    Compression, Image, Output, Registry, TestEnv, assert_no_panic, sha256_digest, tar_uri,
};

const REPO: &str = "team/app";

/// What a hostile image carries, and how text output must show it.
const SEQS: &[(&str, &str)] = &[
    ("\x1b]52;c;b3duZWQ=\x07", "\\x1b]52;c;b3duZWQ=\\x07"),
    ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
    ("\x1b]0;st\x1b\\", "\\x1b]0;st\\x1b\\"),
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),
    ("\u{9b}31m", "\\u{9b}31m"),
    ("\u{9d}0;c1\u{9c}", "\\u{9d}0;c1\\u{9c}"),
    ("\u{202e}gnp.exe", "\\u{202e}gnp.exe"),
    ("\u{2066}iso\u{2069}", "\\u{2066}iso\\u{2069}"),
    ("\nerror: forged", "\\nerror: forged"),
    ("\r\x7f\x08\tx", "\\r\\x7f\\x08\\tx"),
];

/// The value planted for sequence `i`: a marker around it, so that what is
/// found in the output is known to come from that place.
fn planted(kind: &str, i: usize) -> String {
    format!("{kind}{i}<{}>", SEQS[i].0)
}

/// How [`planted`] must show in text output.
fn shown(kind: &str, i: usize) -> String {
    format!("{kind}{i}<{}>", SEQS[i].1)
}

/// Asserts `text` holds nothing a terminal acts on: no control character
/// but the newlines ending lines, no bidi or zero-width character, and no
/// replacement character (a raw byte that is not UTF-8).
fn assert_inert(what: &str, text: &str) {
    for (at, c) in text.char_indices() {
        let bad = (c.is_control() && c != '\n')
            || c == '\u{fffd}'
            || matches!(c as u32, 0x200b..=0x200f | 0x2028..=0x202e | 0x2060..=0x2069 | 0xfeff);
        assert!(!bad, "{what}: raw {c:?} at byte {at}:\n{text}");
    }
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("error: forged")),
        "{what}: a value forged a line:\n{text}"
    );
}

/// Runs occystrap; asserts no panic, the exit code, and that neither
/// stdout nor stderr holds a raw control sequence.
fn run(env: &TestEnv, args: &[&str], code: i32) -> Output {
    // Plain HTTP to the loopback registry and proxy; harmless elsewhere.
    let out = env.occy().arg("--insecure").args(args).run();
    assert_no_panic(&out);
    assert_eq!(
        out.code,
        Some(code),
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.cmdline,
        out.stdout,
        out.stderr
    );
    assert_inert(&format!("stdout of {}", out.cmdline), &out.stdout);
    assert_inert(&format!("stderr of {}", out.cmdline), &out.stderr);
    assert!(
        !out.stdout_bytes
            .iter()
            .any(|&b| (b < 0x20 && b != b'\n') || b == 0x7f),
        "raw control byte on stdout of {}",
        out.cmdline
    );
    out
}

/// Asserts `text` shows planted value `kind`/`i` escaped: as [`shown`], or
/// as Rust's `{:?}` quoting shows it (messages that quote names).
fn assert_shows_planted(out: &Output, text: &str, kind: &str, i: usize) {
    let debug = format!("{:?}", planted(kind, i));
    let debug = &debug[1..debug.len() - 1];
    assert!(
        text.contains(&shown(kind, i)) || text.contains(debug),
        "{} should show {:?} or {debug:?}:\n{text}",
        out.cmdline,
        shown(kind, i)
    );
}

fn assert_shows(out: &Output, text: &str, want: &str) {
    assert!(
        text.contains(want),
        "{} should show {want:?}:\n{text}",
        out.cmdline
    );
}

/// Entry names (no NUL or `/`: they end or split a tar name).
fn name_seqs() -> impl Iterator<Item = usize> {
    0..SEQS.len()
}

/// A layer whose file names and symlink targets carry every sequence.
fn hostile_layer() -> Vec<u8> {
    let mut t = TarBuilder::new().dir("etc", 0o755);
    for i in name_seqs() {
        t = t
            .file(&format!("etc/{}", planted("f", i)), 0o644, b"x\n")
            .symlink(&format!("etc/l{i}"), &planted("t", i));
    }
    t.finish()
}

/// A config whose history, Env, labels, Cmd, WorkingDir, User and author
/// carry every sequence.
fn hostile_config(diff_ids: &[String]) -> Vec<u8> {
    let mut history = vec![json!({"created_by": planted("h", 0)})];
    for i in 1..SEQS.len() {
        history.push(json!({"created_by": planted("h", i), "empty_layer": true}));
    }
    let env: Vec<String> = (0..SEQS.len()).map(|i| planted("E=", i)).collect();
    let labels: serde_json::Map<String, Value> = (0..SEQS.len())
        .map(|i| (planted("k", i), json!(planted("v", i))))
        .collect();
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "author": planted("a", 1),
        "created": "2023-11-14T22:13:20Z",
        "config": {
            "Env": env,
            "Cmd": ["sh", "-c", planted("c", 0)],
            "WorkingDir": planted("w", 2),
            "User": planted("u", 3),
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }))
    .unwrap()
}

/// The image with [`hostile_layer`] and [`hostile_config`], its OCI
/// manifest rebuilt for the new config.
fn hostile_image(layer: Vec<u8>) -> BuiltImage {
    let mut b = Image::new("linux/amd64")
        .layer(layer, Compression::Gzip)
        .build();
    b.config = hostile_config(&b.diff_ids);
    b.config_digest = sha256_digest(&b.config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": b.config_digest, "size": b.config.len()},
        "layers": b.layers.iter().map(|l| json!({
            "mediaType": l.media_type, "digest": l.digest, "size": l.blob.len()
        })).collect::<Vec<_>>(),
    });
    b.manifest = serde_json::to_vec_pretty(&manifest).unwrap();
    b.manifest_digest = sha256_digest(&b.manifest);
    b
}

/// A docker-save tarball of `img` tagged `team/app:<tag with sequences>`.
fn hostile_tarball(env: &TestEnv, img: &BuiltImage) -> String {
    let path = env.work("hostile.tar");
    let tag = format!("{REPO}:{}", planted("tag", 1));
    write_docker_save(
        &path,
        &[(img, vec![tag])],
        SaveStyle::Legacy,
        ManifestPos::Sorted,
    );
    tar_uri(&path)
}

/// Pushes `img` to the registry as `team/app:v1`; returns its URI.
fn push_hostile(env: &TestEnv, reg: &Registry, img: &BuiltImage) -> String {
    push_built(env, reg, &format!("{REPO}:v1"), img, PushFormat::Preserve);
    reg.uri(REPO, "v1")
}

fn assert_config_shown(out: &Output) {
    let s = &out.stdout;
    for i in 0..SEQS.len() {
        assert_shows(out, s, &shown("h", i));
        assert_shows(out, s, &shown("E=", i));
        assert_shows(out, s, &format!("{}={}", shown("k", i), shown("v", i)));
    }
    for want in [shown("a", 1), shown("w", 2), shown("u", 3)] {
        assert_shows(out, s, &want);
    }
    // Cmd is shown as a JSON list: JSON's own escapes, DEL and C1 too.
    assert_shows(out, s, "c0<\\u001b]52;c;b3duZWQ=\\u0007>");
}

fn assert_config_json(out: &Output) {
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{} did not print JSON ({e}):\n{}", out.cmdline, out.stdout));
    let text = serde_json::to_string(&v).unwrap();
    let env: BTreeSet<String> = v["runtime"]["env"]
        .as_array()
        .unwrap_or_else(|| panic!("no runtime.env in {v}"))
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    let history: Vec<&str> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["created_by"].as_str().unwrap())
        .collect();
    for i in 0..SEQS.len() {
        assert!(env.contains(&planted("E=", i)), "{i}: {env:?}");
        assert!(history.contains(&planted("h", i).as_str()), "{i}");
        assert_eq!(
            v["runtime"]["labels"][planted("k", i)],
            json!(planted("v", i)),
            "{text}"
        );
    }
}

#[test]
fn info_shows_hostile_config_escaped() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let img = hostile_image(hostile_layer());
    let tar = hostile_tarball(&env, &img);
    let registry = push_hostile(&env, &reg, &img);
    for src in [&tar, &registry] {
        let out = run(&env, &["info", src], 0);
        assert_config_shown(&out);
        let out = run(&env, &["-O", "json", "info", src], 0);
        assert_config_json(&out);
        // --verbose and --debug logs name what they read: escaped too.
        run(&env, &["--verbose", "info", src], 0);
        run(&env, &["--debug", "search", src, "*"], 0);
    }
    // The docker-save tag.
    let out = run(&env, &["info", &tar], 0);
    assert_shows(&out, &out.stdout, &shown("tag", 1));
    let out = run(&env, &["-O", "json", "info", &tar], 0);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(
        v["reference"]
            .as_str()
            .unwrap()
            .contains(&planted("tag", 1)),
        "{v}"
    );
}

/// The matches a search must report: every planted file and symlink.
fn expected_paths() -> BTreeSet<String> {
    let mut want = BTreeSet::from(["etc".to_string()]);
    for i in name_seqs() {
        want.insert(format!("etc/{}", planted("f", i)));
        want.insert(format!("etc/l{i}"));
    }
    want
}

fn assert_search_text(out: &Output) {
    for i in name_seqs() {
        assert_shows(out, &out.stdout, &format!("etc/{}", shown("f", i)));
        assert_shows(out, &out.stdout, &format!("etc/l{i} -> {}", shown("t", i)));
    }
}

fn assert_search_script(out: &Output, tag: &str) {
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        expected_paths().len(),
        "one line per match:\n{}",
        out.stdout
    );
    for i in name_seqs() {
        // Reversible: a backslash of the name would show doubled.
        let want = format!(":etc/{}", shown("f", i).replace("\\x1b\\", "\\x1b\\\\"));
        assert!(
            lines.iter().any(|l| l.ends_with(&want)),
            "no line ends with {want:?}:\n{}",
            out.stdout
        );
    }
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with(&format!("{REPO}:{tag}:")))
    );
}

fn assert_search_json(out: &Output) {
    let mut paths = BTreeSet::new();
    let mut targets = BTreeSet::new();
    for line in out.stdout.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", out.cmdline));
        paths.insert(v["path"].as_str().unwrap().to_string());
        if let Some(t) = v["link_target"].as_str() {
            targets.insert(t.to_string());
        }
    }
    assert_eq!(paths, expected_paths());
    for i in name_seqs() {
        assert!(targets.contains(&planted("t", i)), "{targets:?}");
    }
}

#[test]
fn search_shows_hostile_names_escaped_in_every_form() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let img = hostile_image(hostile_layer());
    let tar = hostile_tarball(&env, &img);
    let registry = push_hostile(&env, &reg, &img);
    let tar_file = tar.trim_start_matches("tar://").to_string();
    let tar_tag = planted("tag", 1);
    for (src, tag) in [(&tar, tar_tag.as_str()), (&registry, "v1")] {
        let out = run(&env, &["search", src, "*"], 0);
        assert_search_text(&out);
        let out = run(&env, &["search", "--script-friendly", src, "*"], 0);
        let shown_tag = occystrap::escape::escape(tag).into_owned();
        assert_search_script(&out, &shown_tag);
        let out = run(&env, &["-O", "json", "search", src, "*"], 0);
        assert_search_json(&out);
        let out = run(&env, &["search", "--regex", src, "\x1b"], 0);
        assert!(out.stdout.contains("matches in"), "{}", out.stdout);
    }
    let out = run(&env, &["search", &tar, "*"], 0);
    assert_shows(&out, &out.stdout, &shown("tag", 1));
    // The legacy commands print the same way.
    let host = reg.host();
    let out = run(&env, &["search-layers", &host, REPO, "v1", "*"], 0);
    assert_search_text(&out);
    let out = run(
        &env,
        &["search-layers", "--script-friendly", &host, REPO, "v1", "*"],
        0,
    );
    assert_search_script(&out, "v1");
    let out = run(
        &env,
        &["-O", "json", "search-layers", &host, REPO, "v1", "*"],
        0,
    );
    assert_search_json(&out);
    let out = run(&env, &["search-layers-tarfile", &tar_file, "*"], 0);
    assert_search_text(&out);
    let out = run(
        &env,
        &["search-layers-tarfile", "--script-friendly", &tar_file, "*"],
        0,
    );
    assert_search_script(&out, &occystrap::escape::escape(&tar_tag));
    // The search filter of `process` prints script-friendly lines.
    let dest = tar_uri(&env.out("copy.tar"));
    let out = run(
        &env,
        &["process", &registry, &dest, "-f", "search:pattern=*"],
        0,
    );
    assert_search_script(&out, "v1");
}

/// A layer that `check` reports on by name: a setuid world-writable file,
/// a device node, a path out of the root, a whiteout of nothing below.
fn flagged_layer() -> Vec<u8> {
    let mut t = TarBuilder::new().dir("etc", 0o755);
    for i in name_seqs() {
        t = t
            .file(&format!("etc/{}", planted("s", i)), 0o4777, b"x")
            .char_device(&format!("etc/{}", planted("d", i)), 0o600, 1, 3)
            .raw_file(format!("../{}", planted("o", i)).as_bytes(), b"x");
    }
    t.finish()
}

#[test]
fn check_shows_hostile_findings_escaped() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let img = hostile_image(flagged_layer());
    let tar = hostile_tarball(&env, &img);
    let registry = push_hostile(&env, &reg, &img);
    for src in [&tar, &registry] {
        let out = run(&env, &["check", src], 1);
        for i in name_seqs() {
            assert_shows_planted(&out, &out.stdout, "s", i);
            assert_shows_planted(&out, &out.stdout, "o", i);
            assert_shows_planted(&out, &out.stdout, "d", i);
        }
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one error line: {}", out.stderr);
        assert!(lines[0].starts_with("error: check found"), "{}", lines[0]);
        let out = run(&env, &["-O", "json", "check", src], 1);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        let messages: Vec<&str> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["message"].as_str().unwrap())
            .collect();
        for i in name_seqs() {
            let raw = planted("s", i);
            assert!(
                messages.iter().any(|m| m.contains(&raw)),
                "{raw:?} not in {messages:?}"
            );
        }
        run(&env, &["check", "--fast", src], 0);
        run(&env, &["-O", "json", "check", "--fast", src], 0);
    }
    // The docker-save tag names the image in the error line.
    let out = run(&env, &["check", &tar], 1);
    assert_shows(&out, &out.stderr, &shown("tag", 1));
}

#[test]
fn process_summary_notes_and_inspect_file_are_escaped() {
    let env = TestEnv::new();
    let img = hostile_image(hostile_layer());
    let tar = hostile_tarball(&env, &img);
    // The summary names the image by its hostile tag.
    let dest = tar_uri(&env.out("copy.tar"));
    let jsonl = env.work("inspect.jsonl");
    let out = run(
        &env,
        &[
            "process",
            &tar,
            &dest,
            "-f",
            &format!("inspect:file={}", jsonl.display()),
        ],
        0,
    );
    assert_shows(&out, &out.stderr, &shown("tag", 1));
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    // The inspect file: one JSON line, inert, the history given back whole.
    let text = std::fs::read_to_string(&jsonl).unwrap();
    assert_inert("inspect file", &text);
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(v["layers"][0]["created_by"], json!(planted("h", 0)));
    assert!(v["name"].as_str().unwrap().contains(&planted("tag", 1)));
    // --skip-unsafe lists the skipped entries by name in note lines.
    let layer = {
        let mut t = TarBuilder::new().dir("etc", 0o755);
        for i in name_seqs() {
            t = t.raw_file(format!("../{}", planted("o", i)).as_bytes(), b"x");
        }
        t.finish()
    };
    let img = hostile_image(layer);
    let tar = hostile_tarball(&env, &img);
    let out = run(
        &env,
        &[
            "--skip-unsafe",
            "--verbose",
            "process",
            &tar,
            &format!("dir://{}?expand=true", env.out("store").display()),
        ],
        0,
    );
    for i in name_seqs() {
        assert_shows_planted(&out, &out.stderr, "o", i);
    }
    // The warnings logged for them (--verbose) are escaped as well.
    let warned = out.stderr.lines().filter(|l| l.contains("WARN")).count();
    assert!(warned >= name_seqs().count(), "{}", out.stderr);
    // Without it, the refusal names the entry on one escaped error line.
    let out = run(
        &env,
        &[
            "process",
            &tar,
            &format!("oci://{}", env.out("bundle").display()),
        ],
        1,
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
}

#[test]
fn registry_error_messages_are_escaped() {
    let env = TestEnv::new();
    let reg = Registry::start();
    // The registry's JSON error body carries the sequences (JSON-escaped,
    // so the client decodes them into the message).
    let codes = [
        "MANIFEST_UNKNOWN\\u001b]52;c;b3duZWQ=\\u0007",
        "X\\u001b]0;pwned\\u0007\\u001b[2J",
        "X\\u009b31m\\u202e\\u007f",
        "X\\nerror: forged\\r",
    ];
    for code in codes {
        let proxy = Proxy::start(&reg.host());
        proxy.times(
            1000,
            "/manifests/",
            Fault::Status {
                status: 404,
                retry_after: None,
                code: Some(code.to_string()),
            },
        );
        let src = proxy.uri(REPO, "v1");
        let dest = tar_uri(&env.out("x.tar"));
        for args in [
            vec!["info", &src],
            vec!["search", &src, "*"],
            vec!["--verbose", "process", &src, &dest],
        ] {
            let out = run(&env, &args, 1);
            let last = out.stderr.lines().last().unwrap_or("");
            assert!(last.starts_with("error: "), "{}", out.stderr);
            let decoded: String = serde_json::from_str(&format!("\"{code}\"")).unwrap();
            let want = occystrap::escape::escape_controls(&decoded)
                .replace("\\n", " ")
                .replace("\\r", " ");
            // The client may fold a newline into a space; either way the
            // sequence is shown, not sent.
            let head = want.split(' ').next().unwrap();
            assert!(
                last.contains(head),
                "{} should show {head:?}: {last}",
                out.cmdline
            );
        }
        run(&env, &["check", &src], 1);
    }
}

#[test]
fn tarball_error_messages_are_escaped() {
    let env = TestEnv::new();
    for i in 0..SEQS.len() {
        // The archive's own file name carries the sequence, and its
        // manifest.json names a config and a layer that are not there.
        let path = env.work(&planted("broken", i));
        let manifest = json!([{
            "Config": planted("cfg", i),
            "RepoTags": [format!("{REPO}:{}", planted("tag", i))],
            "Layers": [format!("{}/layer.tar", planted("layer", i))],
        }]);
        crate::support::images::write_tar(
            &path,
            &[(
                "manifest.json".into(),
                Some(serde_json::to_vec(&manifest).unwrap()),
            )],
        );
        let src = tar_uri(&path);
        let dest = tar_uri(&env.out("x.tar"));
        for args in [
            vec!["info", src.as_str()],
            vec!["search", &src, "*"],
            vec!["process", &src, &dest],
            vec!["search-layers-tarfile", path.to_str().unwrap(), "*"],
        ] {
            let out = run(&env, &args, 1);
            assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
            assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
            assert_shows(&out, &out.stderr, &shown("broken", i));
        }
        let out = run(&env, &["check", &src], 1);
        assert_shows(&out, &out.stdout, &shown("broken", i));
    }
    // A layer whose tar header is corrupt (its size field holds an escape
    // sequence) under an entry name that holds one too: the tar error.
    let mut layer = TarBuilder::new()
        .raw_file(planted("n", 0).as_bytes(), b"")
        .finish();
    let mut header = [0u8; 512];
    header.copy_from_slice(&layer[..512]);
    header[124..136].copy_from_slice(b"\x1b]0;pwn\x07\x1b[2J");
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    layer[..512].copy_from_slice(&header);
    let img = hostile_image(layer);
    let tar = hostile_tarball(&env, &img);
    for args in [
        vec!["search", tar.as_str(), "*"],
        vec![
            "process",
            &tar,
            &format!("dir://{}?expand=true", env.out("z").display()),
        ],
    ] {
        let out = run(&env, &args, 1);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
        eprintln!("{}", out.stderr);
    }
    // A copy to a tarball does not read the layer's entries.
    run(&env, &["process", &tar, &tar_uri(&env.out("y.tar"))], 0);
    run(&env, &["check", &tar], 1);
}

#[test]
fn oci_layout_tags_and_index_platforms_are_escaped() {
    let env = TestEnv::new();
    let img = hostile_image(hostile_layer());
    let dir = unique_dir(&env.work(""), "layout");
    let layout = OciLayout::create(&dir);
    for l in &img.layers {
        layout.write_blob(&l.blob);
    }
    layout.write_blob(&img.config);
    layout.write_blob(&img.manifest);
    // An index offering the image, and entries whose platform fields and
    // media type carry the sequences.
    let mut manifests = vec![json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": img.manifest_digest,
        "size": img.manifest.len(),
        "platform": {"os": "linux", "architecture": "amd64"},
    })];
    for i in 0..SEQS.len() {
        manifests.push(json!({
            "mediaType": planted("mt", i),
            "digest": img.manifest_digest,
            "size": img.manifest.len(),
            "platform": {"os": planted("os", i), "architecture": planted("arch", i),
                         "variant": planted("var", i)},
        }));
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap();
    let index_digest = layout.write_blob(&index);
    let tag = planted("tag", 1);
    let top = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest,
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let src = format!("oci-layout://{}", dir.display());
    let out = run(&env, &["info", &src], 0);
    assert_config_shown(&out);
    for i in 0..SEQS.len() {
        assert_shows(&out, &out.stdout, &shown("os", i));
        assert_shows(&out, &out.stdout, &shown("mt", i));
    }
    // The layout's reader names the image after the tag with its unsafe
    // characters replaced; the run above showed it inert either way.
    assert_shows(&out, &out.stdout, "tag1");
    let out = run(&env, &["-O", "json", "info", &src], 0);
    assert_config_json(&out);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(
        v.to_string()
            .contains(&serde_json::to_string(&planted("os", 0)).unwrap()),
        "{v}"
    );
    let out = run(&env, &["search", &src, "*"], 0);
    assert_search_text(&out);
    run(&env, &["check", &src], 0);
    run(&env, &["-O", "json", "check", &src], 0);
}
