//! Tests of the client as a whole: deadlines and the speed floor against
//! loopback servers that misbehave as no real registry can, the realm
//! rules, and the token cache.

use std::time::Duration;

use super::auth::Challenge;
use super::tokens::{Actions, Scope};
use super::*;
use crate::digest::Digest;

/// A loopback server that answers every connection with `head`, then
/// `body` one piece of `step` bytes every `every` (nothing at all when
/// `head` is empty). Returns `127.0.0.1:PORT`.
fn drip_server(head: &'static str, body: Vec<u8>, step: usize, every: Duration) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(4) {
            let Ok(mut conn) = conn else { return };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                if head.is_empty() {
                    std::thread::sleep(Duration::from_secs(20));
                    return;
                }
                let _ = conn.write_all(head.as_bytes());
                for piece in body.chunks(step) {
                    if conn.write_all(piece).is_err() {
                        return;
                    }
                    std::thread::sleep(every);
                }
            });
        }
    });
    addr
}

fn quick_options() -> ClientOptions {
    ClientOptions {
        insecure: true,
        retries: 0,
        read_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_millis(600),
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn dripped_manifest_meets_the_deadline() {
    let body = vec![b' '; 2000];
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n\r\n";
    let host = drip_server(head, body, 1, Duration::from_millis(50));
    let client = Client::standalone(&host, quick_options()).unwrap();
    let started = std::time::Instant::now();
    let e = client
        .get_manifest("a/b", "v1")
        .await
        .unwrap_err()
        .to_string();
    let took = started.elapsed();
    assert!(
        e.contains("not complete within") && e.contains("--request-timeout"),
        "{e}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

#[tokio::test]
async fn silent_server_meets_the_deadline() {
    let host = drip_server("", Vec::new(), 1, Duration::ZERO);
    let client = Client::standalone(&host, quick_options()).unwrap();
    let started = std::time::Instant::now();
    let e = client
        .get_manifest("a/b", "v1")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no response within"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let d = Digest::sha256_of(b"x");
    let (tx, _rx) = tokio::sync::mpsc::channel(4);
    let e = client
        .stream_blob("a/b", &d, 1, tx, |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no response within"), "{e}");
    // Over HTTPS, a server that never answers the TLS handshake.
    let tls = Client::standalone(
        &host,
        ClientOptions {
            insecure: false,
            connect_timeout: Duration::from_secs(30),
            ..quick_options()
        },
    )
    .unwrap();
    let started = std::time::Instant::now();
    let e = tls.get_manifest("a/b", "v1").await.unwrap_err().to_string();
    assert!(e.contains("no response within"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn blob_below_the_floor_is_given_up() {
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    // 200 bytes a second against a 2000 bytes a second floor.
    let host = drip_server(head, vec![7; 100_000], 20, Duration::from_millis(100));
    let options = ClientOptions {
        min_speed: 2000,
        min_speed_window: Duration::from_millis(500),
        ..quick_options()
    };
    let client = Client::standalone(&host, options).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let started = std::time::Instant::now();
    let d = Digest::sha256_of(b"x");
    let e = client
        .stream_blob("a/b", &d, 100_000, tx, |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("slower than 2000 bytes/s") && e.contains("--min-speed"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    drain.await.unwrap();
}

#[test]
fn realm_scheme_rules() {
    let u = |s: &str| url::Url::parse(s).unwrap();
    let with_creds = |insecure: bool, hosts: &[&str]| {
        let mut h = transport::InsecureHosts::default();
        for e in hosts {
            h.add(e).unwrap();
        }
        let options = ClientOptions {
            insecure,
            credentials: Some(Credentials {
                username: "u".into(),
                password: "pw".into(),
            }),
            insecure_hosts: h,
            ..ClientOptions::default()
        };
        Client::standalone("reg.example:5000", options).unwrap()
    };
    // HTTPS registry.
    let c = with_creds(false, &[]);
    assert!(c.check_realm(&u("https://auth.example/token")).is_ok());
    let e = c
        .check_realm(&u("http://reg.example:5000/token"))
        .unwrap_err();
    assert!(
        e.contains("but the registry is HTTPS") && e.contains("credentials"),
        "{e}"
    );
    assert!(e.contains("--insecure-host reg.example:5000"), "{e}");
    assert!(
        c.check_realm(&u("http://auth.example/token?secret=1"))
            .is_err()
    );
    assert!(c.check_realm(&u("https://x:y@auth.example/token")).is_err());
    assert!(c.check_realm(&u("https://x@auth.example/token")).is_err());
    assert!(c.check_realm(&u("ftp://auth.example/token")).is_err());
    let e = c
        .check_realm(&u("http://auth.example/t?secret=s3"))
        .unwrap_err();
    assert!(!e.contains("s3"), "{e}");
    // Allowed by --insecure-host, with or without a port.
    let c = with_creds(false, &["auth.example:8080", "other.example"]);
    assert!(c.check_realm(&u("http://auth.example:8080/token")).is_ok());
    assert!(c.check_realm(&u("http://auth.example/token")).is_err());
    assert!(c.check_realm(&u("http://other.example:1234/token")).is_ok());
    // A plain-HTTP registry: its own host and port only.
    let c = with_creds(true, &[]);
    assert!(c.check_realm(&u("http://reg.example:5000/token")).is_ok());
    let e = c
        .check_realm(&u("http://reg.example:5001/token"))
        .unwrap_err();
    assert!(e.contains("another host"), "{e}");
    assert!(c.check_realm(&u("http://auth.example/token")).is_err());
    assert!(c.check_realm(&u("https://auth.example/token")).is_ok());
}

fn creds(user: &str, password: &str) -> Option<Credentials> {
    Some(Credentials {
        username: user.into(),
        password: password.into(),
    })
}

fn challenge() -> Challenge {
    Challenge::Bearer {
        realm: "https://auth.example/token".into(),
        service: Some("reg".into()),
        scope: None,
    }
}

/// The header a request in `repository` with `actions` would carry.
async fn auth_for(c: &Client, repository: &str, actions: Actions) -> Option<String> {
    c.current_auth(&Scope::new(repository, actions))
        .await
        .unwrap()
}

#[tokio::test]
async fn tokens_are_cached_per_repository_and_actions() {
    let ctx = Context::new(ContextOptions::default());
    let c = Client::new(&ctx, "reg.example", ClientOptions::default()).unwrap();
    let put = |repo: &str, actions, token: &str| {
        let key = c.token_key(&Scope::new(repo, actions));
        ctx.tokens
            .insert(key, token.into(), Duration::from_secs(300), challenge());
    };
    put("team/a", Actions::Pull, "a-pull");
    put("team/b", Actions::Pull, "b-pull");
    put("team/a", Actions::PushPull, "a-push");
    assert_eq!(ctx.tokens.len(), 3);
    assert_eq!(
        auth_for(&c, "team/a", Actions::Pull).await.as_deref(),
        Some("Bearer a-pull")
    );
    assert_eq!(
        auth_for(&c, "team/b", Actions::Pull).await.as_deref(),
        Some("Bearer b-pull")
    );
    assert_eq!(
        auth_for(&c, "team/a", Actions::PushPull).await.as_deref(),
        Some("Bearer a-push")
    );
    // Nothing cached for another repository, nor for push on team/b.
    assert_eq!(auth_for(&c, "team/c", Actions::Pull).await, None);
    assert_eq!(auth_for(&c, "team/b", Actions::PushPull).await, None);
    // The same key is served from the cache, again and again.
    for _ in 0..3 {
        assert_eq!(
            auth_for(&c, "team/a", Actions::Pull).await.as_deref(),
            Some("Bearer a-pull")
        );
    }
    // Storing the same key again replaces, never duplicates.
    put("team/a", Actions::Pull, "a-pull-2");
    assert_eq!(ctx.tokens.len(), 3);
    assert_eq!(
        auth_for(&c, "team/a", Actions::Pull).await.as_deref(),
        Some("Bearer a-pull-2")
    );
}

#[tokio::test]
async fn tokens_are_not_shared_across_registries_or_credentials() {
    let ctx = Context::new(ContextOptions::default());
    let anon = Client::new(&ctx, "reg.example", ClientOptions::default()).unwrap();
    let alice = Client::new(
        &ctx,
        "reg.example",
        ClientOptions {
            credentials: creds("alice", "pw-a"),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let bob = Client::new(
        &ctx,
        "reg.example",
        ClientOptions {
            credentials: creds("alice", "pw-b"),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let other = Client::new(&ctx, "other.example", ClientOptions::default()).unwrap();
    let plain = Client::new(
        &ctx,
        "reg.example",
        ClientOptions {
            insecure: true,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let scope = Scope::new("team/a", Actions::Pull);
    ctx.tokens.insert(
        alice.token_key(&scope),
        "alice-token".into(),
        Duration::from_secs(300),
        challenge(),
    );
    assert_eq!(
        auth_for(&alice, "team/a", Actions::Pull).await.as_deref(),
        Some("Bearer alice-token")
    );
    for c in [&anon, &bob, &other, &plain] {
        assert_eq!(
            auth_for(c, "team/a", Actions::Pull).await,
            None,
            "{}",
            c.base
        );
    }
    // Nor does debug output show it.
    for shown in [
        format!("{ctx:?}"),
        format!("{alice:?}"),
        format!("{:?}", alice.repo("x")),
    ] {
        assert!(
            !shown.contains("alice-token") && !shown.contains("pw-a"),
            "{shown}"
        );
    }
    // Only the client whose token it is scrubs it from what a registry says.
    assert_eq!(alice.scrub("echo alice-token".into()), "echo <redacted>");
    assert_eq!(anon.scrub("echo alice-token".into()), "echo alice-token");
}

#[tokio::test]
async fn basic_is_sent_once_asked_for_and_a_token_wins_over_it() {
    let ctx = Context::new(ContextOptions::default());
    let c = Client::new(
        &ctx,
        "reg.example",
        ClientOptions {
            credentials: creds("u", "pw"),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    assert_eq!(auth_for(&c, "team/a", Actions::Pull).await, None);
    let scope = Scope::new("team/a", Actions::Pull);
    c.answer_challenge("GET", &scope, Challenge::Basic, None)
        .await
        .unwrap();
    let basic = creds("u", "pw").unwrap().basic_header();
    assert_eq!(auth_for(&c, "team/b", Actions::Pull).await, Some(basic));
    ctx.tokens.insert(
        c.token_key(&scope),
        "t0k".into(),
        Duration::from_secs(300),
        challenge(),
    );
    assert_eq!(
        auth_for(&c, "team/a", Actions::Pull).await.as_deref(),
        Some("Bearer t0k")
    );
    // Basic without credentials is a clean refusal.
    let anon = Client::new(&ctx, "reg.example", ClientOptions::default()).unwrap();
    let e = anon
        .answer_challenge("GET manifest team/a:v1", &scope, Challenge::Basic, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--username"), "{e}");
}

#[test]
fn token_cache_stays_bounded() {
    let ctx = Context::new(ContextOptions::default());
    let c = Client::new(&ctx, "reg.example", ClientOptions::default()).unwrap();
    for i in 0..10_000 {
        let key = c.token_key(&Scope::new(&format!("r/{i}"), Actions::Pull));
        ctx.tokens
            .insert(key, format!("t{i}"), Duration::from_secs(300), challenge());
        assert!(ctx.tokens.len() <= 4096);
    }
}

#[test]
fn scopes_are_built_from_repository_and_actions() {
    assert_eq!(
        Scope::new("team/app", Actions::Pull).to_scope_string(),
        "repository:team/app:pull"
    );
    assert_eq!(
        Scope::new("a", Actions::PushPull).to_scope_string(),
        "repository:a:push,pull"
    );
}

#[test]
fn clients_with_equal_transport_share_a_pool() {
    let ctx = Context::new(ContextOptions::default());
    let o = ClientOptions::default();
    Client::new(&ctx, "a.example", o.clone()).unwrap();
    Client::new(&ctx, "b.example", o.clone()).unwrap();
    assert_eq!(ctx.pool_count(), 1);
    let slow = ClientOptions {
        connect_timeout: Duration::from_secs(1),
        ..o
    };
    Client::new(&ctx, "a.example", slow).unwrap();
    assert_eq!(ctx.pool_count(), 2);
}

#[test]
fn insecure_registries_under_any_share_a_pool() {
    // --insecure: every host may hear plain HTTP already; naming each
    // registry too would split the pools (and load the roots per host).
    let ctx = Context::new(ContextOptions::default());
    let o = ClientOptions {
        insecure: true,
        insecure_hosts: crate::registry::transport::InsecureHosts::any(),
        ..ClientOptions::default()
    };
    Client::new(&ctx, "127.0.0.1:5000", o.clone()).unwrap();
    Client::new(&ctx, "127.0.0.1:5001", o).unwrap();
    assert_eq!(ctx.pool_count(), 1);
    // Without `any`, each insecure registry is allowed alone.
    let only = ClientOptions {
        insecure: true,
        ..ClientOptions::default()
    };
    let a = Client::new(&ctx, "127.0.0.1:5002", only.clone()).unwrap();
    assert!(a.allowed.allows("127.0.0.1", Some(5002)));
    assert!(!a.allowed.allows("127.0.0.1", Some(5003)));
}

#[tokio::test]
async fn an_upload_location_on_another_host_is_refused() {
    let head = "HTTP/1.1 202 Accepted\r\nLocation: http://elsewhere.example:5000/v2/a/b/blobs/uploads/x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let host = drip_server(head, Vec::new(), 1, Duration::ZERO);
    let client = Client::standalone(&host, quick_options()).unwrap();
    let open: BlobOpener = std::sync::Arc::new(|| {
        Ok(Box::new(std::io::Cursor::new(b"abc".to_vec())) as Box<dyn std::io::Read + Send>)
    });
    let digest = Digest::sha256_of(b"abc");
    let e = client
        .upload_blob("a/b", &digest, 3, open)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("another host"), "{e}");
}

#[tokio::test]
async fn a_renewal_is_skipped_when_another_left_a_new_token() {
    let ctx = Context::new(ContextOptions::default());
    let c = Client::new(&ctx, "reg.example", ClientOptions::default()).unwrap();
    let scope = Scope::new("team/a", Actions::Pull);
    // A realm nothing answers: asking it is an error.
    let dead = Challenge::Bearer {
        realm: "https://127.0.0.1:9/token".into(),
        service: None,
        scope: None,
    };
    ctx.tokens.insert(
        c.token_key(&scope),
        "new".into(),
        Duration::from_secs(300),
        dead.clone(),
    );
    // Refused with the old token while another request renewed it: no
    // request to the realm, and the new token is what goes next.
    c.answer_challenge("GET", &scope, dead.clone(), Some("old"))
        .await
        .unwrap();
    assert_eq!(
        auth_for(&c, "team/a", Actions::Pull).await.as_deref(),
        Some("Bearer new")
    );
    // Refused with the token the cache holds: the realm must be asked.
    let e = c
        .answer_challenge("GET", &scope, dead, Some("new"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("token"), "{e}");
}
