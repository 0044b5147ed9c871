//! `docker://` as a source, against a real engine: Debian's podman serving
//! its Docker-compatible API (`podman system service`), whose save stream
//! is Podman's format (`<hex>.tar` layers, `<id>/layer.tar` links to them,
//! `manifest.json` last).

use crate::support::engine::Engine;
use crate::support::fstree::Tree;
use crate::support::images::busybox_image;
use crate::support::push::{PushFormat, push_image};
use crate::support::{Compression, DockerSave, Registry, TestEnv, fixtures_dir};

fn sha256_hex(bytes: &[u8]) -> String {
    occystrap::digest::Digest::sha256_of(bytes)
        .hex()
        .to_string()
}

/// The engine's diff_ids of an image, as podman reports them.
fn engine_diff_ids(engine: &Engine, name: &str) -> Vec<String> {
    let json = engine.inspect(name, "{{json .RootFS.Layers}}");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

#[test]
fn saves_an_image_from_the_engine() {
    let env = TestEnv::new();
    let engine = Engine::start();
    let name = engine.load(&fixtures_dir().join("test_image_1.tar"));
    let out = env.out("img.tar");
    env.occy()
        .args([
            "process",
            &engine.uri(&name),
            &format!("tar://{}", out.display()),
        ])
        .run()
        .expect_ok();
    let saved = DockerSave::read(&out);
    saved.assert_diff_ids_match();
    assert_eq!(
        sha256_hex(saved.config_bytes(0)),
        engine
            .inspect(&name, "{{.Id}}")
            .trim_start_matches("sha256:"),
    );
    assert_eq!(saved.diff_ids(0), engine_diff_ids(&engine, &name));
    // Nothing of the save stream is left in the temp dir.
    assert_eq!(
        crate::support::dir_entries(&env.tmp_dir()),
        Vec::<String>::new()
    );
}

/// The same image, pulled into the engine by podman and read back from it,
/// expands to the same tree as straight from the registry.
#[test]
fn expand_from_the_engine_equals_the_registry_path() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let engine = Engine::start();
    push_image(
        &env,
        &reg,
        "team/app:v1",
        &busybox_image(Compression::Gzip),
        PushFormat::Docker,
    );
    let name = format!("{}/team/app:v1", reg.host());
    engine
        .podman(&["pull", "--tls-verify=false", &name])
        .expect_ok();

    let from_registry = env.out("from-registry");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/app", "v1"),
            &format!("dir://{}?expand=true", from_registry.display()),
        ])
        .run()
        .expect_ok();
    let from_engine = env.out("from-engine");
    env.occy()
        .args([
            "process",
            &engine.uri(&name),
            &format!("dir://{}?expand=true", from_engine.display()),
        ])
        .run()
        .expect_ok();
    let a = Tree::scan(&from_registry.join("manifest"));
    let b = Tree::scan(&from_engine.join("manifest"));
    let diff = a.diff(&b, "registry", "engine");
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    assert!(from_engine.join("manifest/bin/busybox").exists());
}

/// Without `?socket=`, `DOCKER_HOST=unix://…` names the engine; the
/// original `docker-to-tarfile` and `search-layers-docker` commands work.
#[test]
fn docker_host_names_the_socket() {
    let env = TestEnv::new();
    let engine = Engine::start();
    let name = engine.load(&fixtures_dir().join("test_image_1.tar"));
    let host = format!("unix://{}", engine.socket().display());
    let out = env.out("img.tar");
    env.occy()
        .env("DOCKER_HOST", &host)
        .args([
            "process",
            &format!("docker://{name}"),
            &format!("tar://{}", out.display()),
        ])
        .run()
        .expect_ok();
    assert_eq!(
        DockerSave::read(&out).diff_ids(0),
        engine_diff_ids(&engine, &name)
    );

    let (image, tag) = crate::support::images::split_repo_tag(&name);
    let alias = env.out("alias.tar");
    env.occy()
        .env("DOCKER_HOST", &host)
        .args(["docker-to-tarfile", image, tag])
        .arg(&alias)
        .run()
        .expect_ok();
    assert_eq!(std::fs::read(&alias).unwrap(), std::fs::read(&out).unwrap());

    let search = env
        .occy()
        .env("DOCKER_HOST", &host)
        .args(["search-layers-docker", "--script-friendly", image, tag, "*"])
        .run()
        .expect_ok();
    assert!(!search.stdout.trim().is_empty(), "{}", search.stdout);

    // A DOCKER_HOST that is not a unix socket is refused, not tried.
    let run = env
        .occy()
        .env("DOCKER_HOST", "tcp://127.0.0.1:2375")
        .args(["info", &format!("docker://{name}")])
        .run();
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("unix://"), "{}", run.stderr);
}

/// `info` reads the config from the engine without writing anything.
#[test]
fn info_from_the_engine() {
    let env = TestEnv::new();
    let engine = Engine::start();
    let name = engine.load(&fixtures_dir().join("test_image_1.tar"));
    let run = env
        .occy()
        .args(["-O", "json", "info", &engine.uri(&name)])
        .run()
        .expect_ok();
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let layers = v["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), engine_diff_ids(&engine, &name).len());
}

/// A name the engine lacks: one line naming it, exit 1, no output, and
/// nothing in the temp dir.
#[test]
fn an_image_the_engine_lacks_leaves_nothing() {
    let env = TestEnv::new();
    let engine = Engine::start();
    let out = env.out("img.tar");
    let run = env
        .occy()
        .args([
            "process",
            &engine.uri("no/such:v9"),
            &format!("tar://{}", out.display()),
        ])
        .run();
    let line = crate::support::assert_clean_failure(&env, &run, &["no such image"]);
    assert!(line.contains("no/such:v9"), "{line}");
    assert_eq!(
        crate::support::dir_entries(&env.tmp_dir()),
        Vec::<String>::new()
    );
}
