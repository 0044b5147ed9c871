//! The registry client as a library, against the real registry: one client
//! over one shared context serving several repositories at once, and the
//! registry's error codes carried typed in the error.

use std::sync::Arc;

use occystrap::digest::Digest;
use occystrap::error::Error;
use occystrap::registry::{
    Client, ClientOptions, Context, ContextOptions, Credentials, ErrorCode, MAX_CONFIG_BYTES,
};
use serde_json::Value;

use crate::support::images::{BuiltImage, tiny_image};
use crate::support::push::{PushFormat, push_image};
use crate::support::{Registry, TestEnv};

const USER: &str = "tester";
const PASS: &str = "Pa55-w0rd-never-print-me";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn plain() -> ClientOptions {
    ClientOptions {
        insecure: true,
        retries: 0,
        ..ClientOptions::default()
    }
}

/// Pushes one tiny image to each `repos` entry (`REPO:v1`), each with its own
/// content.
fn push_each(env: &TestEnv, reg: &Registry, repos: &[&str]) -> Vec<BuiltImage> {
    repos
        .iter()
        .map(|repo| {
            let img = tiny_image("hello.txt", &format!("I am {repo}"));
            let dest = format!("{repo}:v1");
            push_image(env, reg, &dest, &img, PushFormat::Oci)
        })
        .collect()
}

fn digest(s: &str) -> Digest {
    s.parse().unwrap()
}

/// Everything of `repo:v1` through `client`: manifest, config, first layer.
async fn pull(client: Arc<Client>, repo: &str) -> (Value, Vec<u8>, Vec<u8>) {
    let (raw, ct) = client.get_manifest(repo, "v1").await.unwrap();
    assert_eq!(
        ct.as_deref(),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    let m: Value = serde_json::from_slice(&raw).unwrap();
    let config = client
        .get_small_blob(
            repo,
            &digest(m["config"]["digest"].as_str().unwrap()),
            m["config"]["size"].as_u64().unwrap(),
            MAX_CONFIG_BYTES,
        )
        .await
        .unwrap();
    let layer = &m["layers"][0];
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let collect = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(b) = rx.recv().await {
            all.extend_from_slice(&b);
        }
        all
    });
    client
        .stream_blob(
            repo,
            &digest(layer["digest"].as_str().unwrap()),
            layer["size"].as_u64().unwrap(),
            tx,
            |_| {},
        )
        .await
        .unwrap();
    (m, config, collect.await.unwrap())
}

#[test]
fn one_client_serves_two_repositories_at_once() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = push_each(&env, &reg, &["team/one", "other/two"]);
    runtime().block_on(async {
        let ctx = Context::new(ContextOptions {
            max_requests: Some(2),
            ..ContextOptions::default()
        });
        let client = Client::new(&ctx, &reg.host(), plain()).unwrap();
        let (one, two) = tokio::join!(
            pull(client.clone(), "team/one"),
            pull(client.clone(), "other/two")
        );
        for ((m, config, layer), b) in [one, two].into_iter().zip(&built) {
            assert_eq!(m["config"]["digest"], b.config_digest.as_str());
            assert_eq!(config, b.config);
            assert_eq!(layer, b.layers[0].blob);
        }
        // A handle fixes the repository and reads the same bytes.
        let handle = client.repo("other/two");
        assert_eq!(handle.name(), "other/two");
        let (raw, _) = handle.get_manifest("v1").await.unwrap();
        let (direct, _) = client.get_manifest("other/two", "v1").await.unwrap();
        assert_eq!(raw, direct);
        // Each repository sees only its own blobs: team/one's config is
        // unknown in other/two.
        let e = handle
            .get_small_blob(
                &digest(&built[0].config_digest),
                built[0].config.len() as u64,
                MAX_CONFIG_BYTES,
            )
            .await
            .unwrap_err();
        assert_eq!(e.registry_codes(), [ErrorCode::BlobUnknown], "{e}");
    });
}

/// The status and codes of a failed call.
fn codes_of(e: &Error) -> (Option<u16>, Vec<ErrorCode>) {
    match e {
        Error::Registry { status, codes, .. } => (*status, codes.clone()),
        other => panic!("not a registry error: {other}"),
    }
}

#[test]
fn registry_error_codes_are_typed() {
    let env = TestEnv::new();
    let reg = Registry::start();
    push_each(&env, &reg, &["team/one"]);
    runtime().block_on(async {
        let client = Client::standalone(&reg.host(), plain()).unwrap();
        let e = client.get_manifest("team/one", "nope").await.unwrap_err();
        assert_eq!(
            codes_of(&e),
            (Some(404), vec![ErrorCode::ManifestUnknown]),
            "{e}"
        );
        assert!(e.to_string().contains("MANIFEST_UNKNOWN"), "{e}");
        // distribution answers an unknown repository's manifest with
        // MANIFEST_UNKNOWN; the spec allows NAME_UNKNOWN too.
        let e = client.get_manifest("team/none", "v1").await.unwrap_err();
        let (status, codes) = codes_of(&e);
        assert_eq!(status, Some(404), "{e}");
        assert!(
            matches!(
                codes[..],
                [ErrorCode::ManifestUnknown | ErrorCode::NameUnknown]
            ),
            "{e}"
        );
        let missing = Digest::sha256_of(b"never pushed");
        let e = client
            .get_small_blob("team/one", &missing, 12, MAX_CONFIG_BYTES)
            .await
            .unwrap_err();
        assert_eq!(
            codes_of(&e),
            (Some(404), vec![ErrorCode::BlobUnknown]),
            "{e}"
        );
        let e = client
            .get_manifest("team/one", "sha256:not-hex")
            .await
            .unwrap_err();
        // Whatever distribution calls this (2.8: HTTP 500, `UNKNOWN`), the
        // code is kept as it was spelt, and named in the message.
        let (status, codes) = codes_of(&e);
        assert!(status.is_some(), "{e}");
        assert!(!codes.is_empty(), "{e}");
        for c in &codes {
            assert!(e.to_string().contains(c.as_str()), "{c}: {e}");
        }
    });
}

#[test]
fn unauthorized_is_typed_and_basic_auth_serves_two_repositories() {
    let env = TestEnv::new();
    let reg = Registry::start_with_htpasswd(USER, PASS);
    push_each(&env, &reg, &["team/one", "team/two"]);
    runtime().block_on(async {
        let ctx = Context::new(ContextOptions::default());
        let anon = Client::new(&ctx, &reg.host(), plain()).unwrap();
        let e = anon.get_manifest("team/one", "v1").await.unwrap_err();
        let (status, codes) = codes_of(&e);
        assert_eq!(status, Some(401), "{e}");
        assert_eq!(codes, [ErrorCode::Unauthorized], "{e}");
        let authed = Client::new(
            &ctx,
            &reg.host(),
            ClientOptions {
                credentials: Some(Credentials {
                    username: USER.into(),
                    password: PASS.into(),
                }),
                ..plain()
            },
        )
        .unwrap();
        for repo in ["team/one", "team/two", "team/one"] {
            authed.get_manifest(repo, "v1").await.unwrap();
        }
    });
}
