//! Failures: each must exit 1 with one `error: ` line on stderr that says
//! what went wrong, never panic, and leave nothing in the output directory.

use std::fs;
use std::io::{Seek, SeekFrom, Write};

use crate::support::images::{BuiltImage, busybox_image, tiny_image};
use crate::support::push::{PushFormat, push_image};
use crate::support::registry::ClosedPort;
use crate::support::{
    Compression, Registry, TestEnv, assert_clean_failure, assert_no_panic, fixtures_dir, tar_uri,
};

const REPO: &str = "team/app";
const USER: &str = "tester";
const PASS: &str = "Pa55-w0rd-never-print-me";

fn pushed(format: PushFormat, img: &crate::support::Image) -> (TestEnv, Registry, BuiltImage) {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = push_image(&env, &reg, "team/app:v1", img, format);
    (env, reg, built)
}

/// Pulls `team/app:v1` into out/image.tar and expects a clean failure that
/// mentions one of `words`.
fn pull_fails(env: &TestEnv, reg: &Registry, extra: &[&str], words: &[&str]) -> String {
    let out = env.out("image.tar");
    let mut args = vec!["--insecure"];
    args.extend_from_slice(extra);
    let src = reg.uri(REPO, "v1");
    let dst = tar_uri(&out);
    args.extend(["process", &src, &dst]);
    let run = env.occy().args(&args).run();
    let line = assert_clean_failure(env, &run, words);
    assert!(!out.exists());
    line
}

fn flip_byte(path: &std::path::Path, offset: u64) {
    let mut data = fs::read(path).unwrap();
    data[offset as usize] ^= 0xff;
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&data[offset as usize..offset as usize + 1])
        .unwrap();
}

// ---------------------------------------------------------------------------
// Corrupt registry content

#[test]
fn corrupt_layer_blob_is_a_digest_mismatch() {
    let (env, reg, built) = pushed(PushFormat::Docker, &busybox_image(Compression::Gzip));
    // Byte 4 is the gzip header's MTIME field: the stream still decompresses
    // to the same tar, so only the blob digest can catch it.
    flip_byte(&reg.blob_data_path(&built.layers[1].digest), 4);
    pull_fails(&env, &reg, &[], &["digest", "mismatch"]);
}

#[test]
fn corrupt_layer_blob_in_the_middle() {
    let (env, reg, built) = pushed(PushFormat::Docker, &busybox_image(Compression::Gzip));
    let path = reg.blob_data_path(&built.layers[0].digest);
    let len = fs::metadata(&path).unwrap().len();
    for off in [len / 3, len / 2, 2 * len / 3] {
        flip_byte(&path, off);
    }
    // Decompression may trip before the digest check does; either way it
    // must be a clear, single-line error.
    pull_fails(
        &env,
        &reg,
        &[],
        &[
            "digest",
            "mismatch",
            "corrupt",
            "invalid",
            "gzip",
            "deflate",
            "decompress",
        ],
    );
}

#[test]
fn corrupt_uncompressed_layer_blob() {
    let (env, reg, built) = pushed(PushFormat::Preserve, &busybox_image(Compression::None));
    let path = reg.blob_data_path(&built.layers[0].digest);
    let len = fs::metadata(&path).unwrap().len();
    flip_byte(&path, len / 2);
    pull_fails(&env, &reg, &[], &["digest", "mismatch", "diff_id"]);
}

#[test]
fn corrupt_config_blob() {
    let (env, reg, built) = pushed(PushFormat::Oci, &busybox_image(Compression::Gzip));
    // Change one character inside a string, keeping the JSON valid.
    let path = reg.blob_data_path(&built.config_digest);
    let text = fs::read(&path).unwrap();
    let at = text
        .windows(5)
        .position(|w| w == b"amd64")
        .expect("architecture in config") as u64;
    let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(b"AMD64").unwrap();
    drop(f);
    pull_fails(&env, &reg, &[], &["digest", "mismatch"]);
}

#[test]
fn truncated_layer_blob() {
    let (env, reg, built) = pushed(PushFormat::Docker, &busybox_image(Compression::Gzip));
    let path = reg.blob_data_path(&built.layers[0].digest);
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    pull_fails(
        &env,
        &reg,
        &["--retries", "1"],
        &[
            "size",
            "digest",
            "mismatch",
            "truncated",
            "eof",
            "short",
            "incomplete",
        ],
    );
}

#[test]
fn missing_layer_blob() {
    let (env, reg, built) = pushed(PushFormat::Docker, &busybox_image(Compression::Gzip));
    let path = reg.blob_data_path(&built.layers[2].digest);
    fs::remove_dir_all(path.parent().unwrap()).unwrap();
    pull_fails(
        &env,
        &reg,
        &["--retries", "1"],
        &["not found", "unknown", "404", "blob"],
    );
}

#[test]
fn wrong_diff_id_in_config() {
    let img = busybox_image(Compression::Gzip).with_wrong_diff_id(1);
    let (env, reg, _) = pushed(PushFormat::Docker, &img);
    pull_fails(
        &env,
        &reg,
        &[],
        &["diff_id", "diff id", "diffid", "mismatch"],
    );
}

// ---------------------------------------------------------------------------
// Missing things

#[test]
fn missing_tag_is_not_found() {
    let (env, reg, _) = pushed(PushFormat::Docker, &tiny_image("a.txt", "a"));
    let out = env.out("image.tar");
    let run = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri(REPO, "no-such-tag"),
            &tar_uri(&out),
        ])
        .run();
    assert_clean_failure(&env, &run, &["not found", "unknown", "404"]);
}

#[test]
fn missing_repository_is_not_found() {
    let (env, reg, _) = pushed(PushFormat::Docker, &tiny_image("a.txt", "a"));
    let out = env.out("image.tar");
    let run = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("nobody/here", "v1"),
            &tar_uri(&out),
        ])
        .run();
    assert_clean_failure(&env, &run, &["not found", "unknown", "404"]);
}

#[test]
fn wrong_manifest_digest_fails() {
    let (env, reg, _) = pushed(PushFormat::Docker, &tiny_image("a.txt", "a"));
    let out = env.out("image.tar");
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let run = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri(REPO, &digest),
            &tar_uri(&out),
        ])
        .run();
    assert_clean_failure(&env, &run, &["not found", "unknown", "404", "digest"]);
}

#[test]
fn unreachable_host() {
    let env = TestEnv::new();
    let closed = ClosedPort::new(); // bound, never listening: refuses connections
    let port = closed.port();
    let out = env.out("image.tar");
    let run = env
        .occy()
        .args([
            "--insecure",
            "--retries",
            "1",
            "process",
            &format!("registry://127.0.0.1:{port}/{REPO}:v1"),
            &tar_uri(&out),
        ])
        .run();
    let line = assert_clean_failure(&env, &run, &["connect", "refused", "unreachable"]);
    assert!(
        line.contains(&port.to_string()),
        "error should name the host it could not reach: {line}"
    );
    assert!(
        run.elapsed.as_secs() < 60,
        "giving up on a closed port took {:?}",
        run.elapsed
    );
}

// ---------------------------------------------------------------------------
// Authentication

#[test]
fn auth_required_without_credentials() {
    let env = TestEnv::new();
    let reg = Registry::start_with_htpasswd(USER, PASS);
    push_image(
        &env,
        &reg,
        "team/app:v1",
        &tiny_image("a.txt", "a"),
        PushFormat::Docker,
    );
    let line = pull_fails(&env, &reg, &[], &["auth"]);
    assert!(!line.contains(PASS));
}

#[test]
fn auth_wrong_password() {
    let env = TestEnv::new();
    let reg = Registry::start_with_htpasswd(USER, PASS);
    push_image(
        &env,
        &reg,
        "team/app:v1",
        &tiny_image("a.txt", "a"),
        PushFormat::Docker,
    );
    let wrong = "Wr0ng-Pa55word-also-secret";
    let out = env.out("image.tar");
    for args in [
        vec![
            "--insecure".to_string(),
            "--username".into(),
            USER.into(),
            "--password".into(),
            wrong.into(),
            "process".into(),
            reg.uri(REPO, "v1"),
            tar_uri(&out),
        ],
        vec![
            "--insecure".to_string(),
            "process".into(),
            format!("registry://{USER}:{wrong}@{}/{REPO}:v1", reg.host()),
            tar_uri(&out),
        ],
    ] {
        let run = env.occy().args(&args).run();
        assert_clean_failure(&env, &run, &["auth"]);
        for secret in [PASS, wrong] {
            assert!(
                !run.stderr.contains(secret) && !run.stdout.contains(secret),
                "a password appears in the output: {}",
                run.stderr
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Bad tar input

fn tar_input_fails(env: &TestEnv, input: &std::path::Path, words: &[&str]) -> String {
    let out = env.out("image.tar");
    let run = env
        .occy()
        .args(["process", &tar_uri(input), &tar_uri(&out)])
        .run();
    assert_clean_failure(env, &run, words)
}

#[test]
fn garbage_tar_input() {
    let env = TestEnv::new();
    let input = env.work("garbage.tar");
    fs::write(
        &input,
        crate::support::images::pseudo_random(100_000, 0xbad),
    )
    .unwrap();
    tar_input_fails(&env, &input, &[]);
}

#[test]
fn empty_tar_input() {
    let env = TestEnv::new();
    let input = env.work("empty.tar");
    fs::write(&input, b"").unwrap();
    tar_input_fails(&env, &input, &[]);
}

#[test]
fn missing_tar_input() {
    let env = TestEnv::new();
    let input = env.work("does-not-exist.tar");
    tar_input_fails(
        &env,
        &input,
        &["does-not-exist.tar", "no such file", "not found"],
    );
}

#[test]
fn tar_without_manifest_json() {
    let env = TestEnv::new();
    let input = env.work("plain.tar");
    crate::support::images::write_tar(&input, &[("hello.txt".to_string(), Some(b"hi\n".to_vec()))]);
    tar_input_fails(&env, &input, &["manifest"]);
}

#[test]
fn fixture_no_manifest_fails_cleanly() {
    let env = TestEnv::new();
    tar_input_fails(&env, &fixtures_dir().join("no_manifest.tar"), &["manifest"]);
}

#[test]
fn fixture_null_manifest_fails_cleanly() {
    let env = TestEnv::new();
    tar_input_fails(
        &env,
        &fixtures_dir().join("null_manifest.tar"),
        &["manifest"],
    );
}

#[test]
fn docker_save_layer_not_matching_diff_id() {
    // A hand-built save whose config promises another diff_id.
    let env = TestEnv::new();
    let built = tiny_image("a.txt", "a").with_wrong_diff_id(0).build();
    let input = env.work("bad-diff-id.tar");
    crate::support::images::write_docker_save(
        &input,
        &[(&built, vec!["example.com/bad:v1".into()])],
        crate::support::images::SaveStyle::Legacy,
        crate::support::images::ManifestPos::Sorted,
    );
    tar_input_fails(&env, &input, &["diff_id", "diff id", "diffid", "mismatch"]);
}

// ---------------------------------------------------------------------------
// Output side and usage

#[test]
fn output_directory_missing() {
    let (env, reg, _) = pushed(PushFormat::Docker, &tiny_image("a.txt", "a"));
    let out = env.out("no/such/dir/image.tar");
    let run = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri(REPO, "v1"),
            &tar_uri(&out),
        ])
        .run();
    assert_clean_failure(&env, &run, &[]);
}

#[test]
fn usage_errors_exit_2() {
    let env = TestEnv::new();
    for args in [
        vec!["process"],
        vec!["process", "registry://127.0.0.1:1/a:b"],
        vec!["--no-such-flag", "process", "tar:///x", "tar:///y"],
        vec!["no-such-command"],
    ] {
        let run = env.occy().args(&args).run();
        assert_no_panic(&run);
        assert_eq!(
            run.code,
            Some(2),
            "{args:?}: usage error exits 2\n{}",
            run.stderr
        );
        assert!(run.stderr.contains("error"), "{args:?}: {}", run.stderr);
        assert!(env.out_dir_entries().is_empty());
    }
}

#[test]
fn unknown_scheme_is_rejected() {
    let env = TestEnv::new();
    let out = env.out("image.tar");
    let run = env
        .occy()
        .args(["process", "gopher://example.com/x", &tar_uri(&out)])
        .run();
    assert_no_panic(&run);
    assert!(
        matches!(run.code, Some(1) | Some(2)),
        "unknown scheme: exit {:?}\n{}",
        run.code,
        run.stderr
    );
    assert!(
        run.stderr.contains("gopher"),
        "names the scheme: {}",
        run.stderr
    );
    assert!(env.out_dir_entries().is_empty());
}
