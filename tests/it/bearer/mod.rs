//! The bearer-token flow against a mock registry (`bearer/mock.rs`), for
//! token realms a real registry can't be made to serve.
//!
//! The first tests check the mock itself with a plain hyper client
//! (`support/http.rs`) and with reqwest, so a failure in the binary tests
//! below can be told apart from a broken harness. The rest run the `occystrap` binary:
//! `occystrap --insecure [--username U --password P] process
//!  registry://127.0.0.1:PORT/team/app:v1 tar://OUT.tar`.

mod cache;
pub(crate) mod mock;
mod realm;
mod tls;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use mock::{ChallengeStyle, MockConfig, MockRegistry, TokenForm};

use crate::support::TestEnv;
use crate::support::http::{self, Conn};
use sha2::{Digest as _, Sha256};

// ---------------------------------------------------------------------------
// A plain hyper client, to check the mock apart from occystrap's own client
// ---------------------------------------------------------------------------

/// Sends one request on `conn` and reads the response (keep-alive).
fn raw_request(
    conn: &mut Conn,
    method: &str,
    target: &str,
    authorization: Option<&str>,
) -> http::Response {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    conn.send(method, target, &headers)
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

fn connect(mock: &MockRegistry) -> Conn {
    Conn::connect(&mock.host()).expect("connect to mock")
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Pulls out the parameters of a bearer challenge, whatever their order and
/// quoting (only the small grammar the mock writes).
fn challenge_params(header: &str) -> HashMap<String, String> {
    let (scheme, rest) = header.split_once(' ').expect("scheme");
    assert!(scheme.eq_ignore_ascii_case("bearer"), "{header}");
    let mut out = HashMap::new();
    let mut rest = rest.trim_start();
    while !rest.is_empty() {
        let eq = rest.find('=').expect("param =");
        let name = rest[..eq].trim().to_ascii_lowercase();
        rest = &rest[eq + 1..];
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"').expect("closing quote");
            value = r[..end].to_string();
            rest = &r[end + 1..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.insert(name, value);
    }
    out
}

/// Unauthenticated requests are challenged, with the scope once a
/// repository is named.
fn assert_challenges(c: &mut Conn, mock: &MockRegistry) {
    let r = raw_request(c, "GET", "/v2/", None);
    assert_eq!(r.status, 401);
    let p = challenge_params(r.header("WWW-Authenticate").unwrap());
    assert_eq!(p["realm"], format!("{}/token", mock.base_url()));
    assert_eq!(p["service"], "mock-registry");
    assert!(!p.contains_key("scope"));

    // Same connection: keep-alive works.
    let r = raw_request(c, "HEAD", "/v2/team/app/manifests/v1", None);
    assert_eq!(r.status, 401);
    let p = challenge_params(r.header("WWW-Authenticate").unwrap());
    assert_eq!(p["scope"], "repository:team/app:pull");
    let r = raw_request(c, "GET", "/v2/team/app/manifests/v1", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["errors"][0]["code"], "UNAUTHORIZED");
    assert_eq!(r.json()["errors"][0]["message"], "authentication required");
}

/// Asks the token endpoint for a pull token.
fn fetch_token(c: &mut Conn) -> String {
    let r = raw_request(
        c,
        "GET",
        "/token?service=mock-registry&scope=repository%3Ateam%2Fapp%3Apull",
        None,
    );
    assert_eq!(r.status, 200);
    r.json()["token"].as_str().unwrap().to_string()
}

/// With the token: the ping, and the manifest by tag (HEAD and GET) and by
/// digest.
fn assert_manifest_served(c: &mut Conn, img: &mock::MockImage, bearer: &str) {
    let r = raw_request(c, "GET", "/v2/", Some(bearer));
    assert_eq!(r.status, 200);
    let r = raw_request(c, "HEAD", "/v2/team/app/manifests/v1", Some(bearer));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Docker-Content-Digest"),
        Some(&*img.manifest_digest)
    );
    assert_eq!(
        r.header("Content-Length").unwrap(),
        img.manifest.len().to_string()
    );
    let r = raw_request(c, "GET", "/v2/team/app/manifests/v1", Some(bearer));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some(mock::MANIFEST_MEDIA_TYPE));
    assert_eq!(r.body, img.manifest);
    let m = r.json();
    assert_eq!(m["config"]["digest"], img.config_digest.as_str());
    assert_eq!(m["layers"][0]["digest"], img.layer_digest.as_str());
    let by_digest = format!("/v2/team/app/manifests/{}", img.manifest_digest);
    let r = raw_request(c, "GET", &by_digest, Some(bearer));
    assert_eq!(r.status, 200);
    assert_eq!(format!("sha256:{}", sha256(&r.body)), img.manifest_digest);
}

/// With the token: the config and the layer blob, down to the layer's files.
fn assert_blobs_served(c: &mut Conn, img: &mock::MockImage, bearer: &str) {
    let r = raw_request(
        c,
        "GET",
        &format!("/v2/team/app/blobs/{}", img.config_digest),
        Some(bearer),
    );
    assert_eq!(r.status, 200);
    assert_eq!(format!("sha256:{}", sha256(&r.body)), img.config_digest);
    let cfg = r.json();
    assert_eq!(cfg["rootfs"]["diff_ids"][0], img.diff_id.as_str());

    let r = raw_request(
        c,
        "GET",
        &format!("/v2/team/app/blobs/{}", img.layer_digest),
        Some(bearer),
    );
    assert_eq!(r.status, 200);
    assert_eq!(format!("sha256:{}", sha256(&r.body)), img.layer_digest);
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(format!("sha256:{}", sha256(&tar)), img.diff_id);
    let mut files = Vec::new();
    for e in tar::Archive::new(&tar[..]).entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() == tar::EntryType::Regular {
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            files.push((name, data));
        }
    }
    assert_eq!(files, img.files);
}

/// An unknown tag is a 404; a forged token is challenged again.
fn assert_unknown_and_forged_refused(c: &mut Conn, bearer: &str) {
    let r = raw_request(c, "GET", "/v2/team/app/manifests/v2", Some(bearer));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["errors"][0]["code"], "MANIFEST_UNKNOWN");
    let r = raw_request(c, "GET", "/v2/team/app/manifests/v1", Some("Bearer forged"));
    assert_eq!(r.status, 401);
}

#[test]
fn mock_speaks_the_bearer_flow_to_a_raw_client() {
    for style in [
        ChallengeStyle::Standard,
        ChallengeStyle::Reordered,
        ChallengeStyle::Relaxed,
    ] {
        let mock = MockRegistry::with_config(MockConfig {
            challenge: style,
            ..MockConfig::default()
        });
        let img = mock.image().clone();
        let mut c = connect(&mock);

        assert_challenges(&mut c, &mock);
        let token = fetch_token(&mut c);
        let bearer = format!("Bearer {token}");
        assert_manifest_served(&mut c, &img, &bearer);
        assert_blobs_served(&mut c, &img, &bearer);
        assert_unknown_and_forged_refused(&mut c, &bearer);

        assert_eq!(mock.token_requests(), 1);
        let log = mock.requests();
        assert_eq!(log.len(), 12, "{}", mock.describe_requests());
        assert!(!log[0].had_authorization());
        assert_eq!(log[3].path, "/token");
        assert_eq!(log[4].bearer(), Some(token.as_str()));
    }
}

#[test]
fn mock_token_endpoint_options() {
    // access_token form
    let mock = MockRegistry::with_config(MockConfig {
        token_form: TokenForm::AccessToken,
        ..MockConfig::default()
    });
    let mut c = connect(&mock);
    let r = raw_request(
        &mut c,
        "GET",
        "/token?scope=repository:team/app:pull&service=mock-registry",
        None,
    );
    assert_eq!(r.status, 200);
    let j = r.json();
    assert!(j.get("token").is_none());
    assert_eq!(j["expires_in"], 300);
    let bearer = format!("Bearer {}", j["access_token"].as_str().unwrap());
    let r = raw_request(&mut c, "GET", "/v2/team/app/manifests/v1", Some(&bearer));
    assert_eq!(r.status, 200);

    // A token without the pull scope does not open the repository.
    let r = raw_request(&mut c, "GET", "/token?service=mock-registry", None);
    let weak = format!("Bearer {}", r.json()["access_token"].as_str().unwrap());
    let r = raw_request(&mut c, "GET", "/v2/", Some(&weak));
    assert_eq!(r.status, 200);
    let r = raw_request(&mut c, "GET", "/v2/team/app/manifests/v1", Some(&weak));
    assert_eq!(r.status, 401);

    // Basic credentials on the token endpoint.
    let mock = MockRegistry::with_config(MockConfig {
        basic: Some(("alice".into(), "pw-1".into())),
        ..MockConfig::default()
    });
    let mut c = connect(&mock);
    let q = "/token?service=mock-registry&scope=repository:team/app:pull";
    let r = raw_request(&mut c, "GET", q, None);
    assert_eq!(r.status, 401);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let r = raw_request(
        &mut c,
        "GET",
        q,
        Some(&format!("Basic {}", b64("alice:nope"))),
    );
    assert_eq!(r.status, 401);
    let r = raw_request(
        &mut c,
        "GET",
        q,
        Some(&format!("Basic {}", b64("alice:pw-1"))),
    );
    assert_eq!(r.status, 200);
    assert!(r.json()["token"].is_string());
    assert_eq!(mock.token_requests(), 3);

    // A token that runs out after two uses.
    let mock = MockRegistry::with_config(MockConfig {
        token_uses: Some(2),
        ..MockConfig::default()
    });
    let mut c = connect(&mock);
    let r = raw_request(&mut c, "GET", q, None);
    let bearer = format!("Bearer {}", r.json()["token"].as_str().unwrap());
    for want in [200, 200, 401] {
        let r = raw_request(&mut c, "GET", "/v2/team/app/manifests/v1", Some(&bearer));
        assert_eq!(r.status, want);
    }

    // Deny mode: tokens are issued, the repository is refused.
    let mock = MockRegistry::with_config(MockConfig {
        deny: true,
        ..MockConfig::default()
    });
    let mut c = connect(&mock);
    let r = raw_request(&mut c, "GET", q, None);
    let bearer = format!("Bearer {}", r.json()["token"].as_str().unwrap());
    let r = raw_request(&mut c, "GET", "/v2/team/app/manifests/v1", Some(&bearer));
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["errors"][0]["code"], "DENIED");
}

#[test]
fn mock_works_with_reqwest() {
    let mock = MockRegistry::start();
    let base = mock.base_url().to_string();
    let img = mock.image().clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let r = client.get(format!("{base}/v2/")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let p = challenge_params(r.headers()["www-authenticate"].to_str().unwrap());
        let r = client
            .get(&p["realm"])
            .query(&[
                ("service", p["service"].as_str()),
                ("scope", "repository:team/app:pull"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let j: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        let token = j["token"].as_str().unwrap().to_string();
        for (path, want) in [
            ("manifests/v1".to_string(), &img.manifest),
            (format!("blobs/{}", img.config_digest), &img.config),
            (format!("blobs/{}", img.layer_digest), &img.layer_gz),
        ] {
            let r = client
                .get(format!("{base}/v2/team/app/{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "{path}");
            assert_eq!(&r.bytes().await.unwrap()[..], &want[..], "{path}");
        }
    });
    assert_eq!(mock.token_requests(), 1);
    assert_eq!(mock.requests().len(), 5, "{}", mock.describe_requests());
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// How a run of the binary ended (from the harness's [`Occy`] runner).
struct Run {
    status: Status,
    stdout: String,
    stderr: String,
}

/// The exit of a run, read as `status.code()`.
struct Status(Option<i32>);

impl Status {
    fn code(&self) -> Option<i32> {
        self.0
    }
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status.code(),
            self.stdout,
            self.stderr
        )
    }
}

/// A test's private tree ([`TestEnv`]: HOME and DOCKER_CONFIG inside it, so
/// no credentials of the machine's are picked up); the output goes to its
/// `out/`.
struct Scratch {
    env: TestEnv,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            env: TestEnv::new(),
        }
    }

    fn tarball(&self) -> PathBuf {
        self.env.out("OUT.tar")
    }

    fn out_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.env.out_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

fn occystrap(scratch: &Scratch, args: &[&str]) -> Run {
    occystrap_env(scratch, args, &[])
}

/// [`occystrap`] with extra environment variables.
fn occystrap_env(scratch: &Scratch, args: &[&str], envs: &[(&str, &std::ffi::OsStr)]) -> Run {
    let mut occy = scratch.env.occy().args(args);
    for (k, v) in envs {
        occy = occy.env(k, v);
    }
    let out = occy.run();
    Run {
        status: Status(out.code),
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

/// `occystrap --insecure [--username U --password P] process SRC tar://OUT`
fn pull(mock: &MockRegistry, scratch: &Scratch, tag: &str, creds: Option<(&str, &str)>) -> Run {
    let src = mock.image_uri(tag);
    let dst = format!("tar://{}", scratch.tarball().display());
    let mut args = vec!["--insecure"];
    if let Some((u, p)) = creds {
        args.extend(["--username", u, "--password", p]);
    }
    args.extend(["process", src.as_str(), dst.as_str()]);
    occystrap(scratch, &args)
}

/// Reads a tarball into path -> bytes (regular files only).
fn read_tar(path: &Path) -> HashMap<String, Vec<u8>> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut ar = tar::Archive::new(f);
    let mut out = HashMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = e.path().unwrap().display().to_string();
        let name = name.trim_start_matches("./").to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(name, data);
    }
    out
}

/// The output is a docker-save tarball of the mock's image.
fn assert_docker_save(mock: &MockRegistry, scratch: &Scratch, run: &Run) {
    assert_eq!(run.status.code(), Some(0), "{}", run.describe());
    let img = mock.image();
    let files = read_tar(&scratch.tarball());
    let manifest = files
        .get("manifest.json")
        .unwrap_or_else(|| panic!("no manifest.json in {:?}", files.keys()));
    let manifest: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    let entries = manifest.as_array().expect("manifest.json is an array");
    assert_eq!(entries.len(), 1, "{manifest}");
    let entry = &entries[0];

    let config_hex = img.config_digest.trim_start_matches("sha256:");
    let config_name = format!("{config_hex}.json");
    assert_eq!(entry["Config"], config_name.as_str(), "{manifest}");
    assert_eq!(
        files.get(&config_name),
        Some(&img.config),
        "config must be byte-identical to the registry's"
    );

    let tags = entry["RepoTags"].as_array().expect("RepoTags array");
    assert_eq!(tags.len(), 1, "{manifest}");
    let tag = tags[0].as_str().unwrap();
    assert!(tag.ends_with("team/app:v1"), "RepoTags {tag}");

    let diff_hex = img.diff_id.trim_start_matches("sha256:");
    let layer_name = format!("{diff_hex}/layer.tar");
    assert_eq!(
        entry["Layers"],
        serde_json::json!([layer_name.clone()]),
        "{manifest}"
    );
    let layer = files
        .get(&layer_name)
        .unwrap_or_else(|| panic!("no {layer_name} in {:?}", files.keys()));
    assert_eq!(
        sha256(layer),
        diff_hex,
        "layer.tar must hash to its diff_id"
    );
    assert_eq!(layer, &img.layer_tar);
}

/// The token was fetched once; every registry request after it carried that
/// token; the manifest, config and layer were each fetched with it.
fn assert_token_fetched_once_and_reused(mock: &MockRegistry) {
    let log = mock.requests();
    let described = mock.describe_requests();
    assert_eq!(mock.token_requests(), 1, "token requests:\n{described}");
    let tokens = mock.issued_tokens();
    assert_eq!(tokens.len(), 1, "{described}");
    let token = tokens[0].as_str();
    let at = log.iter().position(|r| r.path == "/token").unwrap();
    let token_req = &log[at];
    assert_eq!(token_req.status, 200, "{described}");
    let q: HashMap<String, String> = url::form_urlencoded::parse(token_req.query.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(
        q.get("service").map(String::as_str),
        Some("mock-registry"),
        "{described}"
    );
    assert!(
        q.get("scope")
            .is_some_and(|s| s.split(' ').any(|s| s == "repository:team/app:pull")),
        "token request must ask for repository:team/app:pull:\n{described}"
    );
    for r in &log[at + 1..] {
        assert_eq!(
            r.bearer(),
            Some(token),
            "request after the token fetch without the token:\n{described}"
        );
        assert_ne!(r.status, 401, "{described}");
    }
    let img = mock.image();
    for path in [
        None,
        Some(format!("/v2/team/app/blobs/{}", img.config_digest)),
        Some(format!("/v2/team/app/blobs/{}", img.layer_digest)),
    ] {
        let hit = log[at + 1..].iter().any(|r| {
            r.method == "GET"
                && r.status == 200
                && match &path {
                    Some(p) => &r.path == p,
                    None => {
                        r.path == "/v2/team/app/manifests/v1"
                            || r.path == format!("/v2/team/app/manifests/{}", img.manifest_digest)
                    }
                }
        });
        assert!(
            hit,
            "no authorised GET of {}:\n{described}",
            path.as_deref().unwrap_or("the manifest")
        );
    }
}

/// Exit 1, one `error: ` line on stderr, nothing written to the output
/// directory. Returns the error line.
fn assert_clean_failure(scratch: &Scratch, run: &Run) -> String {
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    let lines = crate::support::nonblank_lines(&run.stderr);
    assert_eq!(
        lines.len(),
        1,
        "stderr must be one line:\n{}",
        run.describe()
    );
    assert!(lines[0].starts_with("error: "), "{}", run.describe());
    assert!(!scratch.tarball().exists(), "output file left behind");
    assert_eq!(
        scratch.out_entries(),
        Vec::<String>::new(),
        "files left in the output directory"
    );
    lines[0].to_string()
}

fn assert_no_secret(run: &Run, user: &str, password: &str) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    for (what, text) in [("stderr", &run.stderr), ("stdout", &run.stdout)] {
        assert!(
            !text.contains(password),
            "password leaked on {what}:\n{}",
            run.describe()
        );
        assert!(
            !text.contains(&basic),
            "basic credentials leaked on {what}:\n{}",
            run.describe()
        );
    }
}

/// An anonymous pull from a mock with `config`: the image is written, and
/// one token was fetched and reused.
fn anonymous_pull(config: MockConfig) -> (MockRegistry, Run) {
    let mock = MockRegistry::with_config(config);
    let scratch = Scratch::new();
    let run = pull(&mock, &scratch, "v1", None);
    assert_docker_save(&mock, &scratch, &run);
    assert_token_fetched_once_and_reused(&mock);
    (mock, run)
}

#[test]
fn anonymous_bearer_pull_fetches_the_token_once() {
    let (mock, run) = anonymous_pull(MockConfig::default());
    // No token leaks either.
    for t in mock.issued_tokens() {
        assert!(!run.stderr.contains(&t), "{}", run.describe());
    }
}

#[test]
fn access_token_reply_with_expires_in() {
    anonymous_pull(MockConfig {
        token_form: TokenForm::AccessToken,
        ..MockConfig::default()
    });
}

#[test]
fn challenge_with_scope_first_and_realm_last() {
    anonymous_pull(MockConfig {
        challenge: ChallengeStyle::Reordered,
        ..MockConfig::default()
    });
}

#[test]
fn challenge_with_lowercase_scheme_spaces_and_unquoted_token() {
    anonymous_pull(MockConfig {
        challenge: ChallengeStyle::Relaxed,
        ..MockConfig::default()
    });
}

const USER: &str = "occy-user";
const PASSWORD: &str = "Zq7-s3cret-pass-word!";

#[test]
fn token_endpoint_with_basic_credentials() {
    let mock = MockRegistry::with_config(MockConfig {
        basic: Some((USER.into(), PASSWORD.into())),
        ..MockConfig::default()
    });
    let scratch = Scratch::new();
    let run = pull(&mock, &scratch, "v1", Some((USER, PASSWORD)));
    assert_docker_save(&mock, &scratch, &run);
    assert_token_fetched_once_and_reused(&mock);
    assert_no_secret(&run, USER, PASSWORD);
    let log = mock.requests();
    let token_req = log.iter().find(|r| r.path == "/token").unwrap();
    let auth = token_req.authorization.as_deref().unwrap_or("");
    assert!(
        auth.to_ascii_lowercase().starts_with("basic "),
        "token request must carry Basic credentials:\n{}",
        mock.describe_requests()
    );
}

#[test]
fn token_endpoint_rejects_wrong_credentials() {
    let mock = MockRegistry::with_config(MockConfig {
        basic: Some((USER.into(), PASSWORD.into())),
        ..MockConfig::default()
    });
    let scratch = Scratch::new();
    let wrong = "Wr0ng-pass-Kx9";
    let run = pull(&mock, &scratch, "v1", Some((USER, wrong)));
    let line = assert_clean_failure(&scratch, &run);
    let lower = line.to_ascii_lowercase();
    assert!(
        lower.contains("401") || lower.contains("authenticat") || lower.contains("unauthorized"),
        "error should say authentication failed: {line}"
    );
    assert_no_secret(&run, USER, wrong);
    assert_no_secret(&run, USER, PASSWORD);
    assert!(mock.token_requests() >= 1, "{}", mock.describe_requests());
    // Nothing past the token endpoint was served.
    assert!(
        !mock
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/v2/team/app/") && r.status == 200),
        "{}",
        mock.describe_requests()
    );
}

#[test]
fn token_endpoint_rejects_anonymous_when_it_wants_credentials() {
    let mock = MockRegistry::with_config(MockConfig {
        basic: Some((USER.into(), PASSWORD.into())),
        ..MockConfig::default()
    });
    let scratch = Scratch::new();
    let run = pull(&mock, &scratch, "v1", None);
    let line = assert_clean_failure(&scratch, &run);
    let lower = line.to_ascii_lowercase();
    assert!(
        lower.contains("401") || lower.contains("authenticat") || lower.contains("unauthorized"),
        "error should say authentication failed: {line}"
    );
}

#[test]
fn refused_token_is_renewed_mid_pull() {
    // Each token opens one request: the manifest, config and layer each
    // meet a 401 with a fresh challenge, as when a token expires during a
    // long pull, and the client has to fetch a new token every time.
    let mock = MockRegistry::with_config(MockConfig {
        token_uses: Some(1),
        ..MockConfig::default()
    });
    let scratch = Scratch::new();
    let run = pull(&mock, &scratch, "v1", None);
    assert_docker_save(&mock, &scratch, &run);
    let described = mock.describe_requests();
    assert!(mock.token_requests() >= 3, "{described}");
    assert!(mock.token_requests() <= 6, "{described}");
}

#[test]
fn denied_repository_is_reported() {
    let mock = MockRegistry::with_config(MockConfig {
        deny: true,
        ..MockConfig::default()
    });
    let scratch = Scratch::new();
    let run = pull(&mock, &scratch, "v1", None);
    let line = assert_clean_failure(&scratch, &run);
    assert!(
        line.contains("DENIED") || line.contains("requested access to the resource is denied"),
        "error should name DENIED: {line}"
    );
}

#[test]
fn unknown_tag_is_reported() {
    let mock = MockRegistry::start();
    let scratch = Scratch::new();
    let run = pull(&mock, &scratch, "no-such-tag", None);
    let line = assert_clean_failure(&scratch, &run);
    assert!(
        line.contains("MANIFEST_UNKNOWN") || line.to_ascii_lowercase().contains("not found"),
        "error should say the manifest is unknown: {line}"
    );
}

#[test]
fn pull_by_digest_through_bearer() {
    let mock = MockRegistry::start();
    let scratch = Scratch::new();
    let src = format!(
        "registry://{}/team/app@{}",
        mock.host(),
        mock.image().manifest_digest
    );
    let dst = format!("tar://{}", scratch.tarball().display());
    let run = occystrap(&scratch, &["--insecure", "process", &src, &dst]);
    assert_eq!(run.status.code(), Some(0), "{}", run.describe());
    let files = read_tar(&scratch.tarball());
    let img = mock.image();
    let config_name = format!("{}.json", img.config_digest.trim_start_matches("sha256:"));
    assert_eq!(files.get(&config_name), Some(&img.config));
    let layer_name = format!("{}/layer.tar", img.diff_id.trim_start_matches("sha256:"));
    assert_eq!(files.get(&layer_name), Some(&img.layer_tar));
    assert_eq!(mock.token_requests(), 1, "{}", mock.describe_requests());
    let log = mock.requests();
    assert!(
        log.iter().all(|r| r.path != "/v2/team/app/manifests/v1"),
        "a digest pull has no business asking for the tag"
    );
}

/// Runs a mock for manual poking (curl, a dev build of the binary):
/// `BEARER_MOCK_SECS=120 BEARER_MOCK_MODE=basic cargo test --test it -- --ignored bearer::serve_mock --nocapture`
/// Modes: `standard` (default), `access_token`, `reordered`, `relaxed`,
/// `basic` (user `occy-user`, the password in `PASSWORD`), `deny`.
#[test]
#[ignore = "manual: serves a mock until BEARER_MOCK_SECS run out"]
fn serve_mock() {
    let secs: u64 = std::env::var("BEARER_MOCK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mode = std::env::var("BEARER_MOCK_MODE").unwrap_or_default();
    let mut config = MockConfig::default();
    match mode.as_str() {
        "" | "standard" => {}
        "access_token" => config.token_form = TokenForm::AccessToken,
        "reordered" => config.challenge = ChallengeStyle::Reordered,
        "relaxed" => config.challenge = ChallengeStyle::Relaxed,
        "basic" => config.basic = Some((USER.into(), PASSWORD.into())),
        "deny" => config.deny = true,
        other => panic!("unknown BEARER_MOCK_MODE {other:?}"),
    }
    let mock = MockRegistry::with_config(config);
    println!("mock registry at {} for {secs} s", mock.base_url());
    println!("image: {}", mock.image_uri(mock::TAG));
    std::thread::sleep(Duration::from_secs(secs));
    print!("{}", mock.describe_requests());
}
