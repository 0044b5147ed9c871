//! `docker://NAME:TAG` as a destination: images loaded into a real podman
//! service through its Engine API, then checked with the podman CLI on the
//! same storage (an independent reader).

use std::path::Path;

use crate::support::engine::Engine;
use crate::support::images::{
    ManifestPos, SaveStyle, busybox_image, pseudo_random, write_docker_save,
};
use crate::support::layer_tar::TarBuilder;
use crate::support::push::{PushFormat, push_image};
use crate::support::{
    Compression, DockerSave, Image, Registry, TestEnv, assert_clean_failure, dir_entries,
    fixtures_dir, nonblank_lines, tar_uri,
};

/// podman's `{{.RootFS.Layers}}` (`[sha256:a sha256:b]`) as a list.
fn engine_layers(engine: &Engine, name: &str) -> Vec<String> {
    engine
        .inspect(name, "{{.RootFS.Layers}}")
        .trim_matches(|c| c == '[' || c == ']')
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The image's id in podman, `sha256:` and the config's digest.
fn engine_id(engine: &Engine, name: &str) -> String {
    let id = engine.inspect(name, "{{.Id}}");
    if id.starts_with("sha256:") {
        id
    } else {
        format!("sha256:{id}")
    }
}

/// Every image the engine holds, dangling ones included.
fn engine_images(engine: &Engine) -> Vec<String> {
    engine
        .podman(&["images", "-a", "-q", "--no-trunc"])
        .expect_ok()
        .stdout
        .lines()
        .map(str::to_string)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

fn assert_tmp_empty(env: &TestEnv) {
    let left = dir_entries(&env.tmp_dir());
    assert!(left.is_empty(), "temp files left: {left:?}");
}

/// The summary line must carry the engine's answer.
fn assert_loaded(stderr: &str, socket: &Path, name: &str) {
    let last = nonblank_lines(stderr).last().copied().unwrap_or_default();
    assert!(
        last.contains(&format!("engine {}: Loaded image", socket.display())) && last.contains(name),
        "summary does not report the engine's answer: {stderr}"
    );
}

#[test]
fn loads_from_a_registry_and_reads_back() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let engine = Engine::start();
    let built = push_image(
        &env,
        &reg,
        "team/app:v1",
        &busybox_image(Compression::Gzip),
        PushFormat::Oci,
    );
    let out = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/app", "v1"),
            &engine.uri("app:v1"),
        ])
        .ok();
    assert_loaded(&out.stderr, engine.socket(), "app:v1");
    assert!(engine.has("app:v1"), "{}", engine.log());
    assert_eq!(engine_id(&engine, "app:v1"), built.config_digest);
    assert_eq!(engine_layers(&engine, "app:v1"), built.true_diff_ids());
    assert!(
        engine.inspect("app:v1", "{{.RepoTags}}").contains("app:v1"),
        "{}",
        engine.inspect("app:v1", "{{.RepoTags}}")
    );
    assert_tmp_empty(&env);

    // Read back through the engine as a source.
    let saved = env.out("back.tar");
    env.occy()
        .args(["process", &engine.uri("app:v1"), &tar_uri(&saved)])
        .ok();
    let back = DockerSave::read(&saved);
    back.assert_diff_ids_match();
    assert_eq!(back.diff_ids(0), built.true_diff_ids());
    assert_eq!(back.config_bytes(0), built.config.as_slice());

    // A name without a tag is :latest, and a second name of the same image
    // loads without copying anything new.
    env.occy()
        .args(["process", &tar_uri(&saved), &engine.uri("team/other")])
        .ok();
    assert!(engine.has("team/other:latest"));
    assert_eq!(engine_id(&engine, "team/other:latest"), built.config_digest);
}

#[test]
fn loads_a_filtered_tarball_as_tar_writes_it() {
    let env = TestEnv::new();
    let engine = Engine::start();
    let input = fixtures_dir().join("test_image_1.tar");
    let expected = env.out("expected.tar");
    env.occy()
        .args([
            "process",
            &tar_uri(&input),
            &tar_uri(&expected),
            "-f",
            "normalize-timestamps:ts=1700000000",
        ])
        .ok();
    let expected = DockerSave::read(&expected);
    let original = DockerSave::read(&input);
    assert_ne!(
        expected.diff_ids(0),
        original.diff_ids(0),
        "the filter should rewrite something"
    );
    let out = env
        .occy()
        .args([
            "process",
            &tar_uri(&input),
            &engine.uri("localhost/norm:v1"),
            "-f",
            "normalize-timestamps:ts=1700000000",
        ])
        .ok();
    assert_loaded(&out.stderr, engine.socket(), "norm:v1");
    assert_eq!(
        engine_layers(&engine, "localhost/norm:v1"),
        expected.diff_ids(0)
    );
    assert_eq!(
        engine_id(&engine, "localhost/norm:v1"),
        format!(
            "sha256:{}",
            crate::support::sha256_hex(expected.config_bytes(0))
        )
    );
    assert_tmp_empty(&env);

    // Without ?socket=, $DOCKER_HOST names the engine.
    env.occy()
        .args(["process", &tar_uri(&input), "docker://localhost/plain:v1"])
        .env(
            "DOCKER_HOST",
            format!("unix://{}", engine.socket().display()),
        )
        .ok();
    assert_eq!(
        engine_layers(&engine, "localhost/plain:v1"),
        original.diff_ids(0)
    );
}

#[test]
fn loads_live_layers_through_an_observing_filter() {
    // An observing filter keeps layers streaming: each reaches the sink
    // live and is spooled before it is sent.
    let env = TestEnv::new();
    let reg = Registry::start();
    let engine = Engine::start();
    let built = push_image(
        &env,
        &reg,
        "team/live:v1",
        &busybox_image(Compression::Gzip),
        PushFormat::Docker,
    );
    let jsonl = env.work("inspect.jsonl");
    let spool = env.work("spool");
    std::fs::create_dir(&spool).unwrap();
    env.occy()
        .args([
            "--insecure",
            "--temp-dir",
            &spool.display().to_string(),
            "process",
            &reg.uri("team/live", "v1"),
            &engine.uri("live:v1"),
            "-f",
            &format!("inspect:file={}", jsonl.display()),
        ])
        .ok();
    assert_eq!(engine_layers(&engine, "live:v1"), built.true_diff_ids());
    assert_eq!(engine_id(&engine, "live:v1"), built.config_digest);
    assert_tmp_empty(&env);
    assert_eq!(dir_entries(&spool), Vec::<String>::new());
}

#[test]
fn nothing_listening_is_one_line() {
    let env = TestEnv::new();
    let input = fixtures_dir().join("test_image_1.tar");
    let socket = env.work("no-engine.sock");
    let out = env
        .occy()
        .args([
            "process",
            &tar_uri(&input),
            &format!("docker://app:v1?socket={}", socket.display()),
        ])
        .run();
    let line = assert_clean_failure(&env, &out, &["nothing is there"]);
    assert!(line.contains(&socket.display().to_string()), "{line}");
    // A socket file nobody listens on.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(listener);
    let out = env
        .occy()
        .args([
            "process",
            &tar_uri(&input),
            &format!("docker://app:v1?socket={}", socket.display()),
        ])
        .run();
    assert_clean_failure(&env, &out, &["nothing listens"]);
    // A digest names no image to load into; an unknown option is refused.
    for dst in [
        format!(
            "docker://app@sha256:{}?socket={}",
            "a".repeat(64),
            socket.display()
        ),
        format!("docker://app:v1?sockt={}", socket.display()),
    ] {
        let out = env.occy().args(["process", &tar_uri(&input), &dst]).run();
        assert_eq!(out.code, Some(2), "{}", out.stderr);
        assert_eq!(nonblank_lines(&out.stderr).len(), 1, "{}", out.stderr);
    }
    assert_tmp_empty(&env);
}

#[test]
fn a_layer_failing_mid_run_loads_nothing() {
    // The top layer's diff_id is wrong: the layers below were already sent
    // when it fails, and the engine must see a cut-off stream.
    let env = TestEnv::new();
    let engine = Engine::start();
    let built = busybox_image(Compression::None)
        .with_wrong_diff_id(2)
        .build();
    let input = env.work("bad.tar");
    write_docker_save(
        &input,
        &[(&built, vec!["bad:v1".to_string()])],
        SaveStyle::Legacy,
        ManifestPos::Last,
    );
    let out = env
        .occy()
        .args(["process", &tar_uri(&input), &engine.uri("bad:v1")])
        .run();
    assert_clean_failure(&env, &out, &["digest", "diff_id", "mismatch"]);
    assert!(!engine.has("bad:v1"));
    assert_eq!(engine_images(&engine), Vec::<String>::new());
    assert_tmp_empty(&env);
}

#[test]
fn an_image_the_engine_refuses_is_its_error() {
    // A layer that is no tar at all: occystrap passes it on as it is (its
    // diff_id is right), and the engine fails to apply it.
    let env = TestEnv::new();
    let engine = Engine::start();
    let good = TarBuilder::new().file("etc/ok", 0o644, b"ok\n").finish();
    let built = Image::new("linux/amd64")
        .layer(good, Compression::None)
        .layer(pseudo_random(64 * 1024, 7), Compression::None)
        .build();
    let input = env.work("refused.tar");
    write_docker_save(
        &input,
        &[(&built, vec!["refused:v1".to_string()])],
        SaveStyle::Legacy,
        ManifestPos::Last,
    );
    let out = env
        .occy()
        .args(["process", &tar_uri(&input), &engine.uri("refused:v1")])
        .run();
    let line = assert_clean_failure(&env, &out, &["tar header"]);
    assert!(
        line.contains(&format!("engine {}: load: ", engine.socket().display())),
        "{line}"
    );
    assert!(!engine.has("refused:v1"));
    assert_tmp_empty(&env);
}

#[test]
fn an_engine_that_answers_early_is_its_error() {
    // podman writes the stream to a file in its temp dir before it loads
    // it; with a file where that dir was, it answers at once, having read
    // little of the stream, and closes the connection.
    let env = TestEnv::new();
    let engine = Engine::start();
    let input = env.work("early.tar");
    let built = busybox_image(Compression::None).build();
    write_docker_save(
        &input,
        &[(&built, vec!["early:v1".to_string()])],
        SaveStyle::Legacy,
        ManifestPos::Last,
    );
    let tmp = engine.state().join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let out = env
        .occy()
        .args(["process", &tar_uri(&input), &engine.uri("early:v1")])
        .run();
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    let line = assert_clean_failure(&env, &out, &["not a directory"]);
    assert!(
        line.contains(&format!("engine {}: load: ", engine.socket().display())),
        "{line}"
    );
    assert!(!line.to_lowercase().contains("broken pipe"), "{line}");
    assert!(!engine.has("early:v1"));
    assert_tmp_empty(&env);
}

/// Peak RSS of loading an image whose one layer is `mib` MiB.
fn load_rss(env: &TestEnv, engine: &Engine, mib: usize) -> u64 {
    use crate::support::limits::run_measured;
    let tar = TarBuilder::new()
        .file("blob.bin", 0o644, &pseudo_random(mib << 20, mib as u64))
        .finish();
    let built = Image::new("linux/amd64")
        .layer(tar, Compression::None)
        .build();
    let input = env.work(&format!("big{mib}.tar"));
    let name = format!("big:m{mib}");
    write_docker_save(
        &input,
        &[(&built, vec![name.clone()])],
        SaveStyle::Legacy,
        ManifestPos::Last,
    );
    let m = run_measured(
        env.occy()
            .args(["process", &tar_uri(&input), &engine.uri(&name)]),
    );
    assert!(m.out.code == Some(0), "{}", m.out.stderr);
    eprintln!("[{}] peak RSS {} MB", m.out.cmdline, m.peak_rss >> 20);
    assert_eq!(engine_layers(engine, &name), built.true_diff_ids());
    std::fs::remove_file(&input).unwrap();
    m.peak_rss
}

#[test]
fn memory_stays_flat_as_layers_grow() {
    let env = TestEnv::new();
    let engine = Engine::start();
    let small = load_rss(&env, &engine, 2);
    let large = load_rss(&env, &engine, 64);
    assert!(
        large < small + (16 << 20),
        "peak RSS grew with the layer: {} MB for 2 MiB, {} MB for 64 MiB",
        small >> 20,
        large >> 20
    );
}
