//! `info` (manifest and config only: no layer blob is fetched) and `check`
//! (metadata with `--fast`; every layer verified and its tar inspected
//! otherwise), in text and JSON, against the loopback registry and
//! docker-save tarballs.

use serde_json::{Value, json};

use crate::support::images::{
    BuiltImage, ManifestPos, PLATFORMS, SaveStyle, busybox_image, platform_image, write_docker_save,
};
use crate::support::layer_tar::TarBuilder;
use crate::support::push::{PushFormat, push_built, push_image, push_index};
use crate::support::{
    Compression, Image, Output, Registry, TestEnv, assert_no_panic, http, sha256_digest, tar_uri,
};

const REPO: &str = "team/app";

fn start() -> (TestEnv, Registry) {
    (TestEnv::new(), Registry::start())
}

fn push(env: &TestEnv, reg: &Registry, img: &Image, format: PushFormat) -> BuiltImage {
    push_image(env, reg, &format!("{REPO}:v1"), img, format)
}

/// Runs occystrap; asserts no panic and the exit code.
fn run(env: &TestEnv, args: &[&str], code: i32) -> Output {
    let out = env.occy().args(args).run();
    assert_no_panic(&out);
    assert_eq!(
        out.code,
        Some(code),
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.cmdline,
        out.stdout,
        out.stderr
    );
    eprintln!("[{}] {:.2}s", out.cmdline, out.elapsed.as_secs_f64());
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{} did not print JSON ({e}):\n{}", out.cmdline, out.stdout))
}

/// Where the registry log ends now: requests after it are occystrap's.
fn log_mark(reg: &Registry) -> usize {
    reg.log().len()
}

/// The request paths the registry has logged since `mark`.
fn requested(reg: &Registry, mark: usize) -> Vec<String> {
    let log = reg.log();
    log.get(mark..)
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let at = l.find("http.request.uri=")? + "http.request.uri=".len();
            let rest = l[at..].trim_start_matches('"');
            Some(rest.split(['"', ' ']).next().unwrap_or("").to_string())
        })
        .collect()
}

/// Asserts the registry served manifests since `mark` but none of
/// `layers`' blobs.
fn assert_no_layer_fetched(reg: &Registry, mark: usize, layers: &[String]) {
    let paths = requested(reg, mark);
    assert!(
        paths.iter().any(|p| p.contains("/manifests/")),
        "the registry log shows no manifest request, so it cannot show blob requests either:\n{}",
        reg.log()
    );
    for l in layers {
        assert!(
            !paths.iter().any(|p| p.contains(&format!("/blobs/{l}"))),
            "layer blob {l} was fetched: {paths:?}"
        );
    }
}

fn served_layers(reg: &Registry, repo: &str, reference: &str) -> (String, Value) {
    let r = http::get_manifest(&reg.host(), repo, reference).unwrap();
    assert_eq!(r.status, 200);
    (
        r.header("content-type").unwrap_or_default().to_string(),
        serde_json::from_slice(&r.body).unwrap(),
    )
}

fn findings<'a>(report: &'a Value, severity: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == severity)
        .collect()
}

// ---------------------------------------------------------------------------
// info

fn info_against_registry(format: PushFormat, media_type: &str) {
    let (env, reg) = start();
    let built = push(&env, &reg, &busybox_image(Compression::Gzip), format);
    let (_, served) = served_layers(&reg, REPO, "v1");
    let layer_digests: Vec<String> = served["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let src = reg.uri(REPO, "v1");
    let mark = log_mark(&reg);

    let out = run(&env, &["--insecure", "-O", "json", "info", &src], 0);
    let v = json(&out);
    assert_eq!(v["reference"], format!("{}/{REPO}:v1", reg.host()));
    assert_eq!(v["manifest"]["media_type"], media_type);
    assert_eq!(v["manifest"]["schema_version"], 2);
    assert_eq!(v["index"], Value::Null);
    assert_eq!(v["platform"]["os"], "linux");
    assert_eq!(v["platform"]["architecture"], "amd64");
    assert_eq!(v["created"], crate::support::images::CREATED);
    assert_eq!(v["config"]["digest"], built.config_digest.as_str());
    assert_eq!(v["config"]["size"], built.config.len());
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(l["index"], i);
        assert_eq!(l["digest"], layer_digests[i].as_str());
        assert_eq!(l["size"], served["layers"][i]["size"]);
        assert_eq!(l["media_type"], served["layers"][i]["mediaType"]);
        assert_eq!(l["compression"], "gzip");
        assert_eq!(l["diff_id"], built.diff_ids[i].as_str());
        assert_eq!(
            l["created_by"],
            format!("/bin/sh -c #(nop) layer {}", i + 1).as_str()
        );
    }
    let history = v["history"].as_array().unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[3]["empty_layer"], true);
    assert_eq!(history[0]["empty_layer"], false);
    assert_eq!(history[0]["created"], crate::support::images::CREATED);
    let rt = &v["runtime"];
    assert_eq!(
        rt["env"],
        json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    );
    assert_eq!(rt["cmd"], json!(["sh"]));
    assert_eq!(rt["entrypoint"], Value::Null);
    assert_eq!(rt["working_dir"], "/");
    assert_eq!(rt["labels"]["org.example.platform"], "linux/amd64");

    let out = run(&env, &["--insecure", "info", &src], 0);
    let t = &out.stdout;
    for want in [
        format!("Image:        {}/{REPO}:v1", reg.host()),
        "Platform:     linux/amd64".to_string(),
        format!("({media_type}, schema 2,"),
        format!("Config:       {}", built.config_digest),
        format!("diff_id     {}", built.diff_ids[2]),
        "History (4 entries, 1 without a layer):".to_string(),
        "Cmd:          [\"sh\"]".to_string(),
        "Labels:       org.example.platform=linux/amd64".to_string(),
    ] {
        assert!(t.contains(&want), "info text lacks {want:?}:\n{t}");
    }
    for d in &layer_digests {
        assert!(t.contains(d.as_str()), "info text lacks layer {d}:\n{t}");
    }
    assert!(out.stderr.trim().is_empty(), "{}", out.stderr);
    assert_no_layer_fetched(&reg, mark, &layer_digests);
}

#[test]
fn info_docker_schema2() {
    info_against_registry(
        PushFormat::Docker,
        "application/vnd.docker.distribution.manifest.v2+json",
    );
}

#[test]
fn info_oci_manifest() {
    info_against_registry(
        PushFormat::Oci,
        "application/vnd.oci.image.manifest.v1+json",
    );
}

#[test]
fn info_index_lists_platforms() {
    let (env, reg) = start();
    let imgs: Vec<Image> = PLATFORMS
        .iter()
        .map(|p| platform_image(p, Compression::Gzip))
        .collect();
    let built = push_index(&env, &reg, "team/multi:v1", &imgs, PushFormat::Oci);
    let (_, index) = served_layers(&reg, "team/multi", "v1");
    let src = reg.uri("team/multi", "v1");
    let mark = log_mark(&reg);
    let out = run(
        &env,
        &[
            "--insecure",
            "--architecture",
            "arm",
            "--variant",
            "v7",
            "-O",
            "json",
            "info",
            &src,
        ],
        0,
    );
    let v = json(&out);
    assert_eq!(
        v["index"]["media_type"],
        "application/vnd.oci.image.index.v1+json"
    );
    let platforms = v["index"]["platforms"].as_array().unwrap();
    let names: Vec<String> = platforms
        .iter()
        .map(|p| match p["variant"].as_str() {
            Some(var) => format!(
                "{}/{}/{var}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            ),
            None => format!(
                "{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            ),
        })
        .collect();
    assert_eq!(names, PLATFORMS);
    let selected: Vec<bool> = platforms
        .iter()
        .map(|p| p["selected"].as_bool().unwrap())
        .collect();
    assert_eq!(selected, vec![false, true, false]);
    assert_eq!(platforms[1]["digest"], index["manifests"][1]["digest"]);
    assert_eq!(v["manifest"]["digest"], index["manifests"][1]["digest"]);
    assert_eq!(v["platform"]["architecture"], "arm");
    assert_eq!(v["platform"]["variant"], "v7");
    assert_eq!(v["layers"][1]["diff_id"], built[1].diff_ids[1].as_str());

    let out = run(&env, &["--insecure", "info", &src], 0);
    let t = &out.stdout;
    assert!(t.contains("Platforms in the index (3):"), "{t}");
    for p in PLATFORMS {
        assert!(t.contains(p), "{p} missing:\n{t}");
    }
    // The host platform (amd64 here) is the one chosen by default.
    assert!(
        t.lines()
            .any(|l| l.starts_with("  * linux/amd64 ") || l.starts_with("  * linux/arm64")),
        "{t}"
    );
    let layers: Vec<String> = built
        .iter()
        .flat_map(|b| b.layers.iter().map(|l| l.digest.clone()))
        .collect();
    assert_no_layer_fetched(&reg, mark, &layers);
}

#[test]
fn info_from_a_tarball() {
    let env = TestEnv::new();
    let built = busybox_image(Compression::None).build();
    let path = env.work("app.tar");
    write_docker_save(
        &path,
        &[(&built, vec!["example.com/team/app:v2".into()])],
        SaveStyle::Docker25,
        ManifestPos::Sorted,
    );
    let out = run(&env, &["-O", "json", "info", &tar_uri(&path)], 0);
    let v = json(&out);
    assert_eq!(v["reference"], "example.com/team/app:v2");
    assert_eq!(v["manifest"], Value::Null);
    assert_eq!(v["config"]["digest"], built.config_digest.as_str());
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(l["diff_id"], built.diff_ids[i].as_str());
        assert_eq!(l["size"], built.layers[i].tar.len());
        assert_eq!(l["compression"], "none");
    }
    let out = run(&env, &["info", &tar_uri(&path)], 0);
    assert!(
        out.stdout.contains("Image:        example.com/team/app:v2"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("Manifest:"), "{}", out.stdout);
    assert!(out.stdout.contains("Layers (3):"), "{}", out.stdout);
}

// ---------------------------------------------------------------------------
// check

#[test]
fn check_passes_a_good_image() {
    let (env, reg) = start();
    push(
        &env,
        &reg,
        &busybox_image(Compression::Gzip),
        PushFormat::Oci,
    );
    let src = reg.uri(REPO, "v1");
    let out = run(&env, &["--insecure", "check", &src], 0);
    assert!(
        out.stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("OK: 0 errors"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("3 layers, 3 checked"), "{}", out.stdout);
    let v = json(&run(&env, &["--insecure", "-O", "json", "check", &src], 0));
    assert_eq!(v["ok"], true);
    assert_eq!(v["mode"], "full");
    assert_eq!(v["summary"]["errors"], 0);
    assert_eq!(v["layers_checked"], 3);
    // The whiteout in the top layer is well formed, and nothing warns.
    assert!(findings(&v, "warning").is_empty(), "{v:#}");
    let layer_info = findings(&v, "info")
        .into_iter()
        .find(|f| f["check"] == "layer" && f["layer"] == 2)
        .expect("a summary finding for layer 2");
    assert!(
        layer_info["message"]
            .as_str()
            .unwrap()
            .contains("1 whiteout"),
        "{layer_info}"
    );

    // A docker-save tarball of the same content passes too.
    let built = busybox_image(Compression::None).build();
    let path = env.work("app.tar");
    write_docker_save(
        &path,
        &[(&built, vec!["team/app:v1".into()])],
        SaveStyle::Legacy,
        ManifestPos::Sorted,
    );
    let v = json(&run(&env, &["-O", "json", "check", &tar_uri(&path)], 0));
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["layers_checked"], 3);
}

/// Asserts a failed check: exit 1 and exactly one `error:` line on stderr.
fn failed(env: &TestEnv, args: &[&str]) -> Output {
    let out = run(env, args, 1);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(lines[0].starts_with("error: check found"), "{}", lines[0]);
    out
}

#[test]
fn check_finds_a_corrupted_layer_and_carries_on() {
    let (env, reg) = start();
    let built = push(
        &env,
        &reg,
        &busybox_image(Compression::Gzip),
        PushFormat::Docker,
    );
    // The gzip header's MTIME: the blob no longer matches its digest, yet
    // still decompresses to the same tar.
    let path = reg.blob_data_path(&built.layers[1].digest);
    let mut data = std::fs::read(&path).unwrap();
    data[4] ^= 0xff;
    std::fs::write(&path, data).unwrap();
    let src = reg.uri(REPO, "v1");

    let out = failed(&env, &["--insecure", "check", &src]);
    let err = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("error"))
        .unwrap_or_else(|| panic!("no error line:\n{}", out.stdout));
    assert!(
        err.contains("layer 1") && err.contains("layer-verify") && err.contains("digest"),
        "{err}"
    );
    assert!(
        out.stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("FAILED: 1 error"),
        "{}",
        out.stdout
    );

    let out = failed(&env, &["--insecure", "-O", "json", "check", &src]);
    let v = json(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(v["summary"]["errors"], 1);
    // The other two layers were still fetched and checked.
    assert_eq!(v["layers_checked"], 2);
    let e = &findings(&v, "error")[0];
    assert_eq!(e["layer"], 1);
    assert_eq!(e["check"], "layer-verify");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("blob digest does not match"),
        "{e}"
    );

    // --fast never reads a layer, so it does not notice.
    let v = json(&run(
        &env,
        &["--insecure", "-O", "json", "check", "--fast", &src],
        0,
    ));
    assert_eq!(v["mode"], "fast");
    assert_eq!(v["layers_checked"], 0);
}

#[test]
fn check_finds_a_wrong_diff_id() {
    let (env, reg) = start();
    let img = busybox_image(Compression::Gzip).with_wrong_diff_id(2);
    push(&env, &reg, &img, PushFormat::Oci);
    let src = reg.uri(REPO, "v1");
    let v = json(&failed(&env, &["--insecure", "-O", "json", "check", &src]));
    let errors = findings(&v, "error");
    assert_eq!(errors.len(), 1, "{v:#}");
    assert_eq!(errors[0]["layer"], 2);
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("diff_id does not match"),
        "{}",
        errors[0]
    );
    assert_eq!(v["layers_checked"], 2);
    let out = failed(&env, &["--insecure", "check", &src]);
    assert!(out.stdout.contains("diff_id"), "{}", out.stdout);
}

/// An image whose manifest lists three layers but whose config has only two
/// diff_ids (and two history entries), pushed byte for byte.
fn push_layer_count_mismatch(env: &TestEnv, reg: &Registry) -> Vec<String> {
    let mut built = busybox_image(Compression::Gzip).build();
    let mut config: Value = serde_json::from_slice(&built.config).unwrap();
    config["rootfs"]["diff_ids"].as_array_mut().unwrap().pop();
    config["history"].as_array_mut().unwrap().remove(2);
    built.config = serde_json::to_vec(&config).unwrap();
    built.config_digest = sha256_digest(&built.config);
    let mut manifest: Value = serde_json::from_slice(&built.manifest).unwrap();
    manifest["config"]["digest"] = json!(built.config_digest);
    manifest["config"]["size"] = json!(built.config.len());
    built.manifest = serde_json::to_vec_pretty(&manifest).unwrap();
    built.manifest_digest = sha256_digest(&built.manifest);
    push_built(
        env,
        reg,
        &format!("{REPO}:v1"),
        &built,
        PushFormat::Preserve,
    );
    built.layers.iter().map(|l| l.digest.clone()).collect()
}

#[test]
fn check_fast_finds_a_layer_count_mismatch_without_layers() {
    let (env, reg) = start();
    let layers = push_layer_count_mismatch(&env, &reg);
    let src = reg.uri(REPO, "v1");
    let mark = log_mark(&reg);
    let out = failed(&env, &["--insecure", "-O", "json", "check", "--fast", &src]);
    let v = json(&out);
    assert_eq!(v["mode"], "fast");
    let errors = findings(&v, "error");
    assert_eq!(errors.len(), 1, "{v:#}");
    let msg = errors[0]["message"].as_str().unwrap();
    assert!(
        msg.contains("3 layers") && msg.contains("2 diff_ids"),
        "{msg}"
    );
    let out = failed(&env, &["--insecure", "check", "--fast", &src]);
    assert!(out.stdout.contains("FAILED: 1 error"), "{}", out.stdout);
    assert_no_layer_fetched(&reg, mark, &layers);
}

#[test]
fn check_reports_suspicious_entries() {
    let (env, reg) = start();
    let base = TarBuilder::new()
        .dir("bin", 0o755)
        .file("bin/tool", 0o4777, b"#!/bin/sh\n")
        .dir("dev", 0o755)
        .char_device("dev/null", 0o666, 1, 3)
        .raw_file(b"../outside", b"x")
        .finish();
    let top = TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/.wh.gone", 0o644, b"not empty")
        .fifo("etc/.wh.pipe", 0o644)
        .finish();
    let img = Image::new("linux/amd64")
        .layer(base, Compression::Gzip)
        .layer(top, Compression::Gzip);
    push(&env, &reg, &img, PushFormat::Oci);
    let v = json(&failed(
        &env,
        &["--insecure", "-O", "json", "check", &reg.uri(REPO, "v1")],
    ));
    let by = |sev: &str| -> Vec<(String, String)> {
        findings(&v, sev)
            .iter()
            .map(|f| {
                (
                    f["check"].as_str().unwrap().to_string(),
                    f["path"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let errors = by("error");
    let warnings = by("warning");
    for want in [
        ("permissions", "bin/tool"),
        ("path-escape", "../outside"),
        ("whiteout", "etc/.wh.pipe"),
    ] {
        assert!(
            errors.contains(&(want.0.into(), want.1.into())),
            "{want:?} not in {errors:?}"
        );
    }
    for want in [("device", "dev/null"), ("whiteout", "etc/.wh.gone")] {
        assert!(
            warnings.contains(&(want.0.into(), want.1.into())),
            "{want:?} not in {warnings:?}"
        );
    }
    assert_eq!(v["summary"]["errors"], 3, "{v:#}");
}

#[test]
fn check_of_an_unreachable_source_is_a_finding() {
    let env = TestEnv::new();
    let out = failed(
        &env,
        &["-O", "json", "check", &tar_uri(&env.work("missing.tar"))],
    );
    let v = json(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(findings(&v, "error")[0]["check"], "open");
}
