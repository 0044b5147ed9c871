//! `docker://` against a lying engine: a unix-socket server that answers
//! the Engine API with crafted save streams, for what a real engine cannot
//! be made to send (traversal names, links out, a cut stream, a config
//! that lies), and for Docker's save formats, which no Docker engine here
//! can produce.

use std::sync::Arc;

use bytes::Bytes;

use crate::support::images::{ManifestPos, SaveStyle, tiny_image, write_docker_save, write_tar};
use crate::support::layer_tar::TarBuilder;
use crate::support::server::{self, Handler, Server};
use crate::support::{TestEnv, assert_clean_failure, dir_entries, fixtures_dir};

/// How the fake engine answers `GET /images/{name}/get`.
#[derive(Clone)]
enum Save {
    /// These bytes, whole.
    Bytes(Vec<u8>),
    /// The first `n` of these bytes, then the connection is cut.
    Cut(Vec<u8>, usize),
}

/// A fake engine on `<tmp>/fake.sock` that knows one image, `app:v1`.
struct FakeEngine {
    _server: Server,
    socket: std::path::PathBuf,
}

impl FakeEngine {
    fn start(env: &TestEnv, api: &'static str, save: Save) -> FakeEngine {
        let socket = env.work("fake.sock");
        let server = Server::new("fake-engine");
        let handler: Handler = Arc::new(move |req, info| {
            let save = save.clone();
            Box::pin(async move {
                let path = req.uri().path().to_string();
                let json = |status: u16, body: String| {
                    hyper::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(server::full(body))
                        .unwrap()
                };
                if path == "/version" {
                    return json(
                        200,
                        format!(
                            r#"{{"ApiVersion":"{api}","MinAPIVersion":"1.12","Version":"fake"}}"#
                        ),
                    );
                }
                let known = path.contains("/images/app:v1/");
                if path.ends_with("/json") {
                    return if known {
                        json(200, r#"{"Id":"sha256:00","RepoTags":["app:v1"]}"#.into())
                    } else {
                        json(404, r#"{"message":"No such image"}"#.into())
                    };
                }
                if path.ends_with("/get") && known {
                    return match save {
                        Save::Bytes(b) => hyper::Response::new(server::full(b)),
                        Save::Cut(b, n) => {
                            let (tx, body) = server::channel();
                            tokio::spawn(async move {
                                let _ = tx.send(Ok(Bytes::from(b[..n].to_vec()))).await;
                                info.settle().await;
                                let _ = tx.send(Err(std::io::Error::other("cut"))).await;
                            });
                            hyper::Response::new(body)
                        }
                    };
                }
                json(404, r#"{"message":"page not found"}"#.into())
            })
        });
        server.listen_unix(&socket, handler);
        FakeEngine {
            _server: server,
            socket,
        }
    }

    fn uri(&self, name: &str) -> String {
        format!("docker://{name}?socket={}", self.socket.display())
    }
}

/// Runs `process docker://app:v1 tar://OUT` against a fake engine.
fn process(env: &TestEnv, engine: &FakeEngine) -> crate::support::Output {
    let out = env.out("image.tar");
    env.occy()
        .args([
            "process",
            &engine.uri("app:v1"),
            &format!("tar://{}", out.display()),
        ])
        .run()
}

/// The run failed cleanly and left nothing in the output or temp dirs.
fn refused(env: &TestEnv, engine: &FakeEngine, words: &[&str]) -> String {
    let run = process(env, engine);
    let line = assert_clean_failure(env, &run, words);
    assert_eq!(
        dir_entries(&env.tmp_dir()),
        Vec::<String>::new(),
        "temp files left"
    );
    line
}

/// Tar members: a name, and its bytes (`None`: a directory).
type Members = Vec<(String, Option<Vec<u8>>)>;

fn save_of(env: &TestEnv, members: &Members) -> Vec<u8> {
    let path = env.work("crafted.tar");
    write_tar(&path, members);
    std::fs::read(path).unwrap()
}

#[test]
fn a_layer_that_fails_its_diff_id_is_refused() {
    let env = TestEnv::new();
    let built = tiny_image("a.txt", "a").with_wrong_diff_id(0).build();
    let path = env.work("bad.tar");
    write_docker_save(
        &path,
        &[(&built, vec!["app:v1".into()])],
        SaveStyle::Legacy,
        ManifestPos::Last,
    );
    let engine = FakeEngine::start(&env, "1.41", Save::Bytes(std::fs::read(&path).unwrap()));
    refused(&env, &engine, &["diff_id", "mismatch"]);
}

#[test]
fn traversal_names_and_links_out_are_refused() {
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"]}}"#;
    let cases: Vec<(&str, Members)> = vec![
        (
            "a layer named outside the archive",
            vec![
                ("c.json".into(), Some(config.to_vec())),
                (
                    "manifest.json".into(),
                    Some(br#"[{"Config":"c.json","RepoTags":["app:v1"],"Layers":["../../../etc/passwd"]}]"#.to_vec()),
                ),
            ],
        ),
        (
            "a config named by an absolute path",
            vec![(
                "manifest.json".into(),
                Some(br#"[{"Config":"/etc/passwd","RepoTags":["app:v1"],"Layers":[]}]"#.to_vec()),
            )],
        ),
    ];
    for (what, members) in cases {
        let env = TestEnv::new();
        let engine = FakeEngine::start(&env, "1.41", Save::Bytes(save_of(&env, &members)));
        let line = refused(&env, &engine, &[]);
        assert!(!line.contains("root:"), "{what}: {line}");
    }

    // layer.tar as a link that leaves the archive, as Podman's layout has
    // links inside it.
    for target in ["/etc/passwd", "../../../../etc/passwd"] {
        let env = TestEnv::new();
        let tar = TarBuilder::new()
            .file("c.json", 0o644, config)
            .symlink("abc/layer.tar", target)
            .file(
                "manifest.json",
                0o644,
                br#"[{"Config":"c.json","RepoTags":["app:v1"],"Layers":["abc/layer.tar"]}]"#,
            )
            .finish();
        let engine = FakeEngine::start(&env, "1.41", Save::Bytes(tar));
        refused(&env, &engine, &[]);
    }
}

#[test]
fn a_stream_cut_off_is_refused() {
    let env = TestEnv::new();
    let built = tiny_image("a.txt", "a").build();
    let path = env.work("good.tar");
    write_docker_save(
        &path,
        &[(&built, vec!["app:v1".into()])],
        SaveStyle::Legacy,
        ManifestPos::Last,
    );
    let bytes = std::fs::read(&path).unwrap();
    let half = bytes.len() / 2;
    let engine = FakeEngine::start(&env, "1.41", Save::Cut(bytes, half));
    refused(&env, &engine, &["broke off", "save"]);
}

#[test]
fn garbage_and_empty_saves_are_refused() {
    for bytes in [Vec::new(), crate::support::images::pseudo_random(50_000, 7)] {
        let env = TestEnv::new();
        let engine = FakeEngine::start(&env, "1.41", Save::Bytes(bytes));
        refused(&env, &engine, &[]);
    }
}

#[test]
fn an_image_the_engine_lacks_is_a_clear_error() {
    let env = TestEnv::new();
    let engine = FakeEngine::start(&env, "1.41", Save::Bytes(Vec::new()));
    let out = env.out("image.tar");
    let run = env
        .occy()
        .args([
            "process",
            &engine.uri("nope:v1"),
            &format!("tar://{}", out.display()),
        ])
        .run();
    let line = assert_clean_failure(&env, &run, &["no such image"]);
    assert!(line.contains("nope:v1"), "{line}");
}

#[test]
fn an_engine_too_old_is_refused() {
    let env = TestEnv::new();
    let engine = FakeEngine::start(&env, "1.12", Save::Bytes(Vec::new()));
    refused(&env, &engine, &["1.12"]);
}

#[test]
fn nothing_listening_is_a_clear_error() {
    let env = TestEnv::new();
    let out = env.out("image.tar");
    let run = env
        .occy()
        .args([
            "process",
            &format!("docker://app:v1?socket={}", env.work("none.sock").display()),
            &format!("tar://{}", out.display()),
        ])
        .run();
    assert_clean_failure(&env, &run, &["nothing is there"]);
}

/// Docker's two save formats (before 25: `<id>/layer.tar`; 25+: an OCI
/// layout inside), with `manifest.json` last as Docker writes it, give
/// the same tarball through the engine as read from the file.
#[test]
fn docker_save_formats_through_the_engine() {
    for fixture in ["hello-world-v25.tar", "test_image_1.tar"] {
        let env = TestEnv::new();
        let path = fixtures_dir().join(fixture);
        let engine = FakeEngine::start(&env, "1.43", Save::Bytes(std::fs::read(&path).unwrap()));
        let via_engine = env.out("engine.tar");
        let via_file = env.out("file.tar");
        env.occy()
            .args([
                "process",
                &engine.uri("app:v1"),
                &format!("tar://{}", via_engine.display()),
            ])
            .run()
            .expect_ok();
        env.occy()
            .args([
                "process",
                &format!("tar://{}", path.display()),
                &format!("tar://{}", via_file.display()),
            ])
            .run()
            .expect_ok();
        assert_eq!(
            std::fs::read(&via_engine).unwrap(),
            std::fs::read(&via_file).unwrap(),
            "{fixture}"
        );
    }
}
