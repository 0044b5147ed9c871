//! `process quay://HOST/ORG/GLOB:TAG DEST` against a small mock of quay's
//! listing API (`/api/v1/repository`, `/api/v1/repository/ORG/NAME/tag/`)
//! answered by the recording proxy in front of a real `docker-registry`
//! that holds the images: a real registry has no quay API, so that part
//! alone is mocked.

use std::sync::Arc;

use hyper::header::AUTHORIZATION;

use crate::support::images::{registry_manifest, tiny_image};
use crate::support::proxy::{Answerer, Proxy};
use crate::support::push::{PushFormat, push_image};
use crate::support::{Registry, TestEnv, assert_clean_failure, assert_no_panic};

const TOKEN: &str = "s3cret-quay-token";

/// One repository as the mock lists it: name, `last_modified`, and its
/// tags with their `start_ts`.
struct Repo {
    name: &'static str,
    last_modified: i64,
    tags: &'static [(&'static str, i64)],
}

/// The org the tests list: `alpaca` lacks `v1`; `alpine` and `beta` are
/// older than 2025-01-01 (1_735_689_600), `alpine` only by its tag.
const REPOS: &[Repo] = &[
    Repo {
        name: "alpha",
        last_modified: 1_740_000_000,
        tags: &[("v1", 1_740_000_000)],
    },
    Repo {
        name: "alpaca",
        last_modified: 1_740_000_000,
        tags: &[("v2", 1_740_000_000)],
    },
    Repo {
        name: "alpine",
        last_modified: 1_740_000_000,
        tags: &[("v1", 1_700_000_000)],
    },
    Repo {
        name: "beta",
        last_modified: 1_700_000_000,
        tags: &[("v1", 1_700_000_000)],
    },
];

fn query_pairs(uri: &hyper::Uri) -> Vec<(String, String)> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The mock of quay's API for org `org`: pages of two repositories behind
/// opaque cursors, the tag endpoint, and 401 without the bearer token.
fn quay_api() -> Answerer {
    Arc::new(|_method, uri, headers| {
        let path = uri.path();
        let rest = path.strip_prefix("/api/v1/")?;
        let json = |v: serde_json::Value| {
            Some((200, "application/json".into(), v.to_string().into_bytes()))
        };
        let authorised = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {TOKEN}"));
        if !authorised {
            return Some((
                401,
                "application/json".into(),
                br#"{"error":"unauthorized"}"#.to_vec(),
            ));
        }
        let q = query_pairs(uri);
        if rest == "repository" {
            assert_eq!(get(&q, "namespace"), Some("org"));
            let start: usize = get(&q, "next_page")
                .map(|c| c.strip_prefix("cursor-").unwrap().parse().unwrap())
                .unwrap_or(0);
            let with_time = get(&q, "last_modified") == Some("true");
            let page: Vec<serde_json::Value> = REPOS
                .iter()
                .skip(start)
                .take(2)
                .map(|r| {
                    let mut v =
                        serde_json::json!({"namespace": "org", "name": r.name, "is_public": true});
                    if with_time {
                        v["last_modified"] = r.last_modified.into();
                    }
                    v
                })
                .collect();
            let mut body = serde_json::json!({ "repositories": page });
            if start + 2 < REPOS.len() {
                body["next_page"] = format!("cursor-{}", start + 2).into();
            }
            return json(body);
        }
        let name = rest
            .strip_prefix("repository/org/")?
            .strip_suffix("/tag/")?;
        let Some(repo) = REPOS.iter().find(|r| r.name == name) else {
            return Some((404, "application/json".into(), b"{}".to_vec()));
        };
        assert_eq!(get(&q, "onlyActiveTags"), Some("true"));
        let want = get(&q, "specificTag").unwrap().to_string();
        let tags: Vec<serde_json::Value> = repo
            .tags
            .iter()
            .filter(|(t, _)| *t == want)
            .map(|(t, ts)| serde_json::json!({"name": t, "start_ts": ts, "manifest_digest": "sha256:00"}))
            .collect();
        json(serde_json::json!({ "tags": tags, "page": 1, "has_additional": false }))
    })
}

/// A registry holding `org/NAME:TAG` for every listed tag, behind a
/// proxy that answers the API.
fn seeded(env: &TestEnv) -> (Registry, Proxy) {
    let reg = Registry::start();
    for r in REPOS {
        for (tag, _) in r.tags {
            let img = tiny_image(&format!("{}.txt", r.name), r.name);
            push_image(
                env,
                &reg,
                &format!("org/{}:{tag}", r.name),
                &img,
                PushFormat::Docker,
            );
        }
    }
    let proxy = Proxy::start(&reg.host());
    proxy.answer_with(quay_api());
    (reg, proxy)
}

fn api_requests(proxy: &Proxy) -> Vec<String> {
    proxy
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/"))
        .map(|r| format!("{}?{}", r.path, r.query.unwrap_or_default()))
        .collect()
}

#[test]
fn quay_copies_each_matching_repository_with_the_tag_into_a_registry() {
    let env = TestEnv::new();
    let (src, proxy) = seeded(&env);
    let dst = Registry::start();
    let from = format!(
        "quay://{}/org/al*:v1?insecure=true&token={TOKEN}",
        proxy.host()
    );
    let to = format!("registry://{}/mirror?insecure=true", dst.host());
    let out = env.occy().args(["process", &from, &to]).ok();
    assert!(
        !out.stderr.contains(TOKEN) && !out.stdout.contains(TOKEN),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("2 of 4 repositories"), "{}", out.stderr);
    for name in ["alpha", "alpine"] {
        let (_, want) = registry_manifest(&env.tool_tmp(), &src, &format!("org/{name}"), "v1");
        let (_, got) = registry_manifest(&env.tool_tmp(), &dst, &format!("mirror/{name}"), "v1");
        assert_eq!(got, want, "{name}");
    }
    // Two pages, the second by the first's cursor, then one tag check per
    // glob match; nothing outside the glob is asked about.
    let api = api_requests(&proxy);
    assert_eq!(api.len(), 2 + 3, "{api:?}");
    assert!(api[1].contains("next_page=cursor-2"), "{api:?}");
    assert!(api.iter().all(|r| !r.contains("/beta/")), "{api:?}");
    let pulled: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/manifests/"))
        .map(|r| r.path)
        .collect();
    assert!(
        pulled
            .iter()
            .all(|p| !p.contains("alpaca") && !p.contains("beta")),
        "{pulled:?}"
    );
}

#[test]
fn quay_since_drops_old_repositories_and_old_tags() {
    let env = TestEnv::new();
    let (_src, proxy) = seeded(&env);
    let dst = Registry::start();
    let from = format!(
        "quay://{}/org/*:v1?insecure=true&since=2025-01-01&token={TOKEN}",
        proxy.host()
    );
    // With no prefix, the images keep the organisation's name.
    let to = format!("registry://{}?insecure=true", dst.host());
    let out = env.occy().args(["process", &from, &to]).ok();
    assert!(out.stderr.contains("1 of 4 repositories"), "{}", out.stderr);
    let api = api_requests(&proxy);
    assert!(api[0].contains("last_modified=true"), "{api:?}");
    // beta was dropped by the listing's last_modified: never asked about.
    assert!(api.iter().all(|r| !r.contains("/beta/")), "{api:?}");
    registry_manifest(&env.tool_tmp(), &dst, "org/alpha", "v1");
    let tags =
        crate::support::http::request(&dst.host(), "GET", "/v2/org/alpine/tags/list", &[]).unwrap();
    assert_eq!(tags.status, 404, "alpine's tag is older than since");
}

#[test]
fn quay_into_a_dir_store_with_unique_names() {
    let env = TestEnv::new();
    let (_src, proxy) = seeded(&env);
    let store = env.out("store");
    let from = format!("quay://{}/org/alp*:v1?insecure=true", proxy.host());
    let to = format!("dir://{}?unique_names=true", store.display());
    // The token from --password, as in the Python tool.
    env.occy()
        .args(["--password", TOKEN, "process", &from, &to])
        .ok();
    let names = crate::support::dir_entries(&store);
    for name in ["alpha", "alpine"] {
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("manifest-") && n.contains(name)),
            "{names:?}"
        );
    }
}

#[test]
fn quay_refuses_destinations_that_hold_one_image_before_any_request() {
    let env = TestEnv::new();
    let proxy = Proxy::start("127.0.0.1:9");
    proxy.answer_with(quay_api());
    let from = format!(
        "quay://{}/org/*:v1?insecure=true&token={TOKEN}",
        proxy.host()
    );
    let dir = env.out("store");
    for (to, words) in [
        (format!("dir://{}", dir.display()), "unique_names=true"),
        (format!("tar://{}", env.out("x.tar").display()), "holds one"),
        (
            "registry://127.0.0.1:1/team:v1".to_string(),
            "without a tag",
        ),
        (format!("oci://{}", dir.display()), "holds one"),
    ] {
        let out = env.occy().args(["process", &from, &to]).run();
        let line = assert_clean_failure(&env, &out, &[words]);
        assert!(!line.contains(TOKEN), "{line}");
    }
    assert!(proxy.requests().is_empty(), "{}", proxy.describe());
}

/// Runs against an API that answers every listing with `answer`, and
/// expects a one-line refusal mentioning one of `words`, without the token.
fn refused(answer: (u16, &'static str, Vec<u8>), words: &[&str]) {
    let env = TestEnv::new();
    let proxy = Proxy::start("127.0.0.1:9");
    let (status, ctype, body) = answer;
    proxy.answer_with(Arc::new(move |_, uri, _| {
        uri.path()
            .starts_with("/api/")
            .then(|| (status, ctype.to_string(), body.clone()))
    }));
    let from = format!(
        "quay://{}/org/*:v1?insecure=true&token={TOKEN}",
        proxy.host()
    );
    let to = format!("dir://{}?unique_names=true", env.out("store").display());
    let out = env
        .occy()
        .args(["--retries", "0", "process", &from, &to])
        .run();
    let line = assert_clean_failure(&env, &out, words);
    assert!(!line.contains(TOKEN), "{line}");
}

#[test]
fn quay_refuses_a_lying_api_cleanly() {
    refused(
        (200, "text/html", b"<html>login</html>".to_vec()),
        &["not JSON"],
    );
    refused((401, "application/json", b"{}".to_vec()), &["token"]);
    // An error body that echoes the token is not shown.
    refused(
        (500, "text/plain", format!("bad {TOKEN}").into_bytes()),
        &["HTTP 500"],
    );
    // A cursor that never moves, and an answer too large to read.
    let same = br#"{"repositories":[{"name":"a"}],"next_page":"again"}"#.to_vec();
    refused((200, "application/json", same), &["repeats"]);
    let huge = vec![b' '; (8 << 20) + 1];
    refused((200, "application/json", huge), &["larger than"]);
}

#[test]
fn quay_reaches_the_api_over_https_unless_insecure() {
    let env = TestEnv::new();
    let proxy = Proxy::start("127.0.0.1:9");
    proxy.answer_with(quay_api());
    let from = format!("quay://{}/org/*:v1?token={TOKEN}", proxy.host());
    let to = format!("dir://{}?unique_names=true", env.out("store").display());
    let out = env
        .occy()
        .args(["--retries", "0", "process", &from, &to])
        .run();
    assert_no_panic(&out);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(!out.stderr.contains(TOKEN), "{}", out.stderr);
    // A TLS handshake is not an HTTP request: the plain-HTTP mock never
    // saw one, so the token never went out in clear.
    assert!(api_requests(&proxy).is_empty(), "{}", proxy.describe());
}
