//! `docker://` as a source, against a real podman service.

use crate::support::engine::Engine;
use crate::support::{DockerSave, TestEnv, fixtures_dir};

fn sha256_hex(bytes: &[u8]) -> String {
    occystrap::digest::Digest::sha256_of(bytes)
        .hex()
        .to_string()
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
}
