//! `dockerpush://` as a source, against a real podman service: the engine
//! pushes the image into occystrap's embedded capture registry, which the
//! run then reads. Checked: the image arrives whole (the engine's config,
//! its diff_ids), into a registry and into a tarball; an image the engine
//! lacks fails cleanly; and no run, good or failing, leaves a temporary
//! tag in the engine or a file of the capture in TMPDIR.

use serde_json::Value;

use crate::support::engine::Engine;
use crate::support::images::{ManifestPos, SaveStyle, busybox_image, write_docker_save};
use crate::support::registry::ClosedPort;
use crate::support::tools::skopeo_ok;
use crate::support::{
    Compression, DockerSave, Registry, TestEnv, assert_clean_failure, dir_entries, sha256_hex,
};

const TAG: &str = "occy/busybox:v1";

/// The 3-layer busybox image, loaded into the engine; returns its name
/// there and the diff_ids it was built with.
fn load_busybox(env: &TestEnv, engine: &Engine) -> (String, Vec<String>) {
    let built = busybox_image(Compression::None).build();
    let path = env.work("busybox-save.tar");
    write_docker_save(
        &path,
        &[(&built, vec![TAG.to_string()])],
        SaveStyle::Legacy,
        ManifestPos::Sorted,
    );
    let name = engine.load(&path);
    let diff_ids = built.layers.iter().map(|l| l.diff_id.clone()).collect();
    (name, diff_ids)
}

fn push_uri(engine: &Engine, name: &str) -> String {
    format!("dockerpush://{name}?{}", engine.query())
}

/// No name of the capture registry (`127.0.0.1:PORT/...`) is left in the
/// engine, and nothing is left in the binary's TMPDIR.
fn assert_no_leftovers(env: &TestEnv, engine: &Engine) {
    let names = engine
        .podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .expect_ok()
        .stdout;
    assert!(
        !names.contains("127.0.0.1:"),
        "the engine keeps a capture tag:\n{names}"
    );
    let left = dir_entries(&env.tmp_dir());
    assert!(left.is_empty(), "TMPDIR keeps {left:?}");
}

/// The engine's image id, `sha256:HEX` (its config's digest).
fn image_id(engine: &Engine, name: &str) -> String {
    let id = engine.inspect(name, "{{.Id}}");
    format!("sha256:{}", id.trim_start_matches("sha256:"))
}

/// `rootfs.diff_ids` of a config.
fn diff_ids(config: &Value) -> Vec<String> {
    config["rootfs"]["diff_ids"]
        .as_array()
        .expect("a config with diff_ids")
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_engine_pushes_into_a_registry_through_the_capture() {
    let env = TestEnv::new();
    let engine = Engine::start();
    let registry = Registry::start();
    let (name, built_ids) = load_busybox(&env, &engine);
    let dst = registry.uri("team/app", "v1");
    env.occy()
        .args(["--insecure", "process", &push_uri(&engine, &name), &dst])
        .run()
        .expect_ok();
    let tmp = env.tool_tmp();
    let src = format!("docker://{}/team/app:v1", registry.host());
    let config: Value = serde_json::from_str(
        &skopeo_ok(&tmp, &["inspect", "--config", "--tls-verify=false", &src]).stdout,
    )
    .unwrap();
    assert_eq!(diff_ids(&config), built_ids);
    // The engine's own config, unchanged: its digest is the image id.
    let manifest: Value = serde_json::from_str(
        &skopeo_ok(&tmp, &["inspect", "--raw", "--tls-verify=false", &src]).stdout,
    )
    .unwrap();
    assert_eq!(
        manifest["config"]["digest"].as_str().unwrap(),
        image_id(&engine, &name),
        "{manifest}"
    );
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 3);
    // What docker:// (the save stream) reads has the same layers.
    let saved = env.out("saved.tar");
    env.occy()
        .args([
            "process",
            &engine.uri(&name),
            &format!("tar://{}", saved.display()),
        ])
        .run()
        .expect_ok();
    assert_eq!(DockerSave::read(&saved).diff_ids(0), built_ids);
    // info takes dockerpush:// too.
    let info = env
        .occy()
        .args(["info", &push_uri(&engine, &name)])
        .run()
        .expect_ok();
    assert!(info.stdout.contains(&built_ids[0]), "{}", info.stdout);
    assert_no_leftovers(&env, &engine);
}

#[test]
fn the_engine_pushes_into_a_tarball_and_a_failing_run_leaves_nothing() {
    let env = TestEnv::new();
    let engine = Engine::start();
    let (name, built_ids) = load_busybox(&env, &engine);
    let out = env.out("img.tar");
    env.occy()
        .args([
            "process",
            &push_uri(&engine, &name),
            &format!("tar://{}", out.display()),
        ])
        .run()
        .expect_ok();
    let saved = DockerSave::read(&out);
    saved.assert_diff_ids_match();
    assert_eq!(saved.diff_ids(0), built_ids);
    assert_eq!(
        format!("sha256:{}", sha256_hex(saved.config_bytes(0))),
        image_id(&engine, &name),
    );
    assert_eq!(saved.manifest[0].repo_tags, vec![name.clone()]);
    assert_no_leftovers(&env, &engine);

    // Captured, then refused by the destination: the tag and the capture's
    // files still go.
    std::fs::remove_file(&out).unwrap();
    let closed = ClosedPort::new();
    let failed = env
        .occy()
        .args([
            "--insecure",
            "process",
            &push_uri(&engine, &name),
            &format!("registry://127.0.0.1:{}/team/app:v1", closed.port()),
        ])
        .run();
    assert_clean_failure(&env, &failed, &[]);
    assert_no_leftovers(&env, &engine);
    assert!(engine.has(&name), "the engine lost the image");
}

#[test]
fn an_image_the_engine_lacks_fails_cleanly() {
    let env = TestEnv::new();
    let engine = Engine::start();
    let out = env.out("img.tar");
    let failed = env
        .occy()
        .args([
            "process",
            &push_uri(&engine, "no/such-image:v1"),
            &format!("tar://{}", out.display()),
        ])
        .run();
    assert_clean_failure(&env, &failed, &["no such image"]);
    assert!(!out.exists());
    assert_no_leftovers(&env, &engine);
    // An unknown option is a usage error, before the engine is asked.
    let usage = env
        .occy()
        .args([
            "process",
            &format!("{}&bogus=1", push_uri(&engine, "x:v1")),
            &format!("tar://{}", out.display()),
        ])
        .run();
    assert_eq!(usage.code, Some(2), "{}", usage.stderr);
}

/// Whether an upload into the capture is under way: a session file in
/// `TMPDIR/occystrap-*/capture-*/staging/uploads/`.
fn uploading(tmp: &std::path::Path) -> bool {
    let entries = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect::<Vec<_>>()
    };
    entries(tmp).iter().any(|run| {
        entries(run).iter().any(|capture| {
            let uploads = capture.join("staging").join("uploads");
            !entries(&uploads).is_empty()
        })
    })
}

#[test]
fn an_interrupted_capture_untags_and_removes_its_files() {
    let env = TestEnv::new();
    let engine = Engine::start();
    // One incompressible layer large enough that the engine is still
    // uploading it when the signal comes.
    let big = crate::support::layer_tar::TarBuilder::new()
        .file(
            "big.bin",
            0o644,
            &crate::support::images::pseudo_random(96 << 20, 0xb16),
        )
        .finish();
    let built = crate::support::Image::new("linux/amd64")
        .layer(big, Compression::None)
        .build();
    let path = env.work("big-save.tar");
    write_docker_save(
        &path,
        &[(&built, vec!["occy/big:v1".to_string()])],
        SaveStyle::Legacy,
        ManifestPos::Sorted,
    );
    let name = engine.load(&path);
    std::fs::remove_file(&path).unwrap();
    let out = env.out("img.tar");
    let mut child = crate::signals::spawn(
        &env,
        &[
            "process".to_string(),
            push_uri(&engine, &name),
            format!("tar://{}", out.display()),
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !uploading(&env.tmp_dir()) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "occystrap ended before the engine uploaded"
        );
        assert!(std::time::Instant::now() < deadline, "no upload began");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (code, took, stderr) = crate::signals::interrupt(&mut child, libc::SIGINT);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        took < std::time::Duration::from_secs(3),
        "took {took:?}: {stderr}"
    );
    assert!(!out.exists());
    assert_no_leftovers(&env, &engine);
    assert!(engine.has(&name), "the engine lost the image");
}
