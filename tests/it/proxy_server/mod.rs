//! `occystrap proxy` as a server, from the outside: the binary started on
//! an ephemeral loopback port in front of a real `docker-registry`, probed
//! with curl, skopeo, a raw hyper client and raw TCP. Client credentials
//! (`--htpasswd`), TLS (HTTP/1.1 and HTTP/2), hostile and slow clients, the
//! size limit on manifests, SIGTERM during an upload, and the JSON access
//! log.

mod harness;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::http;
use crate::support::push::{PushFormat, push_busybox};
use crate::support::tools;
use crate::support::{Registry, TestEnv, dir_entries};

use harness::{
    Served, TOOL_TIMEOUT, assert_api_error, basic, curl, error_code, htpasswd_file, skopeo_inspect,
    test_certs,
};

/// How long a proxy stopped by SIGTERM may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------
// The API version check
// ---------------------------------------------------------------------------

#[test]
fn proxy_server_base_endpoint_names_the_api_version() {
    let reg = Registry::start();
    let proxy = Served::start(&reg, &[], &[]);
    for method in ["GET", "HEAD"] {
        let r = http::request(&proxy.host, method, "/v2/", &[]).unwrap();
        assert_eq!(r.status, 200, "{method}");
        assert_eq!(
            r.header("docker-distribution-api-version"),
            Some("registry/2.0"),
            "{method}"
        );
    }
    // Errors carry it too: clients use it to tell a registry.
    let r = http::request(&proxy.host, "GET", "/v2/A/manifests/x", &[]).unwrap();
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    // HTTP/2 without TLS, by prior knowledge.
    let h2c = curl(&[
        "--http2-prior-knowledge",
        &format!("http://{}/v2/", proxy.host),
    ]);
    assert_eq!((h2c.version.as_str(), h2c.status), ("HTTP/2", 200));
}

// ---------------------------------------------------------------------------
// --htpasswd
// ---------------------------------------------------------------------------

#[test]
fn proxy_server_htpasswd_challenges_refuses_and_admits() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let file = htpasswd_file(&env, "user", "pass");
    let proxy = Served::start(&reg, &["--htpasswd", file.to_str().unwrap()], &[]);
    let cases: [(&str, Option<String>); 6] = [
        ("no credentials", None),
        ("wrong password", Some(basic("user:wrong"))),
        ("unknown user", Some(basic("nobody:pass"))),
        ("no password", Some(basic("user"))),
        ("not base64", Some("Basic %%%".into())),
        ("a bearer token", Some("Bearer dXNlcjpwYXNz".into())),
    ];
    for (what, value) in &cases {
        let headers: Vec<(&str, &str)> = value
            .iter()
            .map(|v| ("Authorization", v.as_str()))
            .collect();
        let r = http::request(&proxy.host, "GET", "/v2/", &headers).unwrap();
        assert_api_error(what, &r, 401, "UNAUTHORIZED");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Basic "), "{what}: {challenge:?}");
    }
    // Refused before routing: a client without credentials learns nothing
    // about paths either.
    let r = http::request(&proxy.host, "GET", "/v2/../x/manifests/y", &[]).unwrap();
    assert_api_error("hostile path, no credentials", &r, 401, "UNAUTHORIZED");
    // The right password, many times over one connection: one bcrypt, then
    // the remembered success.
    let mut conn = http::Conn::connect(&proxy.host).unwrap();
    let good = basic("user:pass");
    let t = Instant::now();
    for _ in 0..50 {
        let r = conn
            .send("GET", "/v2/", &[("Authorization", &good)])
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // curl's own Basic auth.
    let url = format!("http://{}/v2/", proxy.host);
    assert_eq!(curl(&["-u", "user:pass", &url]).status, 200);
    assert_eq!(curl(&["-u", "user:nope", &url]).status, 401);
}

#[test]
fn proxy_server_wrong_guesses_do_not_stall_admitted_clients() {
    let env = TestEnv::new();
    let reg = Registry::start();
    // Cost 12: a bcrypt takes a good fraction of a second.
    let out = tools::run(
        Command::new("htpasswd").args(["-Bbn", "-C", "12", "user", "pass"]),
        TOOL_TIMEOUT,
    )
    .expect_ok();
    let file = env.work("htpasswd");
    fs::write(&file, out.stdout.trim_end().to_string() + "\n").unwrap();
    let proxy = Served::start(&reg, &["--htpasswd", file.to_str().unwrap()], &[]);
    let good = basic("user:pass");
    let mut conn = http::Conn::connect(&proxy.host).unwrap();
    let t = Instant::now();
    assert_eq!(
        conn.send("GET", "/v2/", &[("Authorization", &good)])
            .unwrap()
            .status,
        200
    );
    let one_bcrypt = t.elapsed();
    // Wrong guesses from six clients at once: each costs a bcrypt, two at
    // a time, off the server's two runtime workers.
    let flood: Vec<_> = (0..6)
        .map(|i| {
            let host = proxy.host.clone();
            thread::spawn(move || {
                let wrong = basic(&format!("user:guess{i}"));
                http::request(&host, "GET", "/v2/", &[("Authorization", &wrong)])
                    .unwrap()
                    .status
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(50));
    // Meanwhile the admitted client's requests are answered from the
    // remembered success, without waiting for the guesses.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let r = conn
            .send("GET", "/v2/", &[("Authorization", &good)])
            .unwrap();
        assert_eq!(r.status, 200);
        slowest = slowest.max(t.elapsed());
    }
    for f in flood {
        assert_eq!(f.join().unwrap(), 401);
    }
    eprintln!("one bcrypt {one_bcrypt:?}, slowest remembered {slowest:?}");
    assert!(
        slowest * 3 < one_bcrypt,
        "a remembered credential took {slowest:?} during the guesses; one bcrypt takes {one_bcrypt:?}"
    );
}

#[test]
fn proxy_server_htpasswd_with_skopeo() {
    let env = TestEnv::new();
    let reg = Registry::start();
    push_busybox(&env, &reg, PushFormat::Docker);
    let file = htpasswd_file(&env, "user", "pass");
    let proxy = Served::start(&reg, &["--htpasswd", file.to_str().unwrap()], &[]);
    let ok = skopeo_inspect(
        &env,
        &proxy.host,
        &["--tls-verify=false", "--creds", "user:pass"],
    )
    .expect_ok();
    let doc: serde_json::Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(doc["Layers"].as_array().map(Vec::len), Some(3), "{doc}");
    let wrong = skopeo_inspect(
        &env,
        &proxy.host,
        &["--tls-verify=false", "--creds", "user:wrong"],
    );
    assert_ne!(wrong.code, Some(0), "{}", wrong.stderr);
    let lower = wrong.stderr.to_lowercase();
    assert!(
        lower.contains("unauthorized") || lower.contains("authentication"),
        "{}",
        wrong.stderr
    );
}

#[test]
fn proxy_server_bad_htpasswd_and_tls_files_stop_the_start() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let md5 = "$apr1$Vj1d4rB6$6nB0x7gqQqfDj1oQh0ZzC/";
    let file = env.work("htpasswd-md5");
    fs::write(&file, format!("# users\nuser:{md5}\n")).unwrap();
    let (_ca, cert, key) = test_certs(&env.work("tls"));
    let down = format!("registry://{}", reg.host());
    let runs: [(&[&str], &str); 2] = [
        (&["--htpasswd", file.to_str().unwrap()], "line 2"),
        (
            // Swapped: no certificate in the key file.
            &[
                "--tls-cert",
                key.to_str().unwrap(),
                "--tls-key",
                cert.to_str().unwrap(),
            ],
            "server.key",
        ),
    ];
    for (args, names) in runs {
        let out = env
            .occy()
            .args(["--insecure", "proxy", "-l", "127.0.0.1:0", "-d", &down])
            .arg("--state-dir")
            .arg(env.path().join("state"))
            .args(args)
            .run();
        assert_ne!(out.code, Some(0), "{args:?}");
        let lines = crate::support::nonblank_lines(&out.stderr);
        assert_eq!(lines.len(), 1, "{}", out.stderr);
        assert!(lines[0].starts_with("error: "), "{}", out.stderr);
        assert!(lines[0].contains(names), "{}", out.stderr);
        assert!(!out.stderr.contains(md5), "{}", out.stderr);
        assert!(!out.stderr.contains("listening"), "{}", out.stderr);
    }
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

#[test]
fn proxy_server_tls_http1_and_http2() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let (ca, cert, key) = test_certs(&env.work("tls"));
    let proxy = Served::start(
        &reg,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[("OCCYSTRAP_PROXY_HEADER_TIMEOUT", "2")],
    );
    assert!(
        proxy.stderr().contains("listening on https://"),
        "{}",
        proxy.stderr()
    );
    let url = format!("https://{}/v2/", proxy.host);
    let ca = ca.to_str().unwrap();
    let h1 = curl(&["--cacert", ca, "--http1.1", &url]);
    assert_eq!((h1.version.as_str(), h1.status), ("HTTP/1.1", 200));
    assert_eq!(
        h1.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let h2 = curl(&["--cacert", ca, "--http2", &url]);
    assert_eq!((h2.version.as_str(), h2.status), ("HTTP/2", 200), "{h2:?}");
    assert_eq!(
        h2.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    // An error over HTTP/2 is the same JSON.
    let bad = curl(&[
        "--cacert",
        ca,
        "--http2",
        &format!("https://{}/v2/A/manifests/x", proxy.host),
    ]);
    assert_eq!(bad.status, 400);
    assert_eq!(error_code(&bad.json()), "NAME_INVALID");
    // Without the CA the client refuses the certificate.
    let out = tools::run(Command::new("curl").args(["-sS", &url]), TOOL_TIMEOUT);
    assert_ne!(out.code, Some(0));
    // Plain HTTP to the TLS port gets no API answer.
    let out = tools::run(
        Command::new("curl").args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://{}/v2/", proxy.host),
        ]),
        TOOL_TIMEOUT,
    );
    assert!(!out.stdout.contains("{}"), "{}", out.stdout);
    // ... and the server goes on serving.
    assert_eq!(curl(&["--cacert", ca, &url]).status, 200);
    // A client that never finishes its handshake is cut off at the header
    // deadline (2 s here).
    let mut tcp = TcpStream::connect(&proxy.host).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let r = tcp.read(&mut buf);
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "cut off after {took:?}"
    );
}

#[test]
fn proxy_server_tls_with_skopeo() {
    let env = TestEnv::new();
    let reg = Registry::start();
    push_busybox(&env, &reg, PushFormat::Docker);
    let (ca, cert, key) = test_certs(&env.work("tls"));
    // skopeo trusts the *.crt files of a --cert-dir.
    let certs = env.work("certs.d");
    fs::create_dir_all(&certs).unwrap();
    fs::copy(&ca, certs.join("ca.crt")).unwrap();
    let proxy = Served::start(
        &reg,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let certs = certs.to_str().unwrap();
    let ok = skopeo_inspect(&env, &proxy.host, &["--cert-dir", certs]).expect_ok();
    let doc: serde_json::Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(doc["Layers"].as_array().map(Vec::len), Some(3), "{doc}");
    // A copy out of the proxy over TLS, into an OCI layout.
    let layout = env.work("copied");
    let mut c = tools::skopeo(&env.tool_tmp());
    c.args(["copy", "--src-cert-dir", certs])
        .arg(format!("docker://{}/team/app:v1", proxy.host))
        .arg(format!("oci:{}:t", layout.display()));
    tools::run(&mut c, TOOL_TIMEOUT).expect_ok();
    // Without the CA, skopeo refuses the certificate.
    let refused = skopeo_inspect(&env, &proxy.host, &[]);
    assert_ne!(refused.code, Some(0), "{}", refused.stdout);
}

// ---------------------------------------------------------------------------
// Bad clients
// ---------------------------------------------------------------------------

const ZERO: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn proxy_server_refuses_hostile_paths() {
    let reg = Registry::start();
    let proxy = Served::start(&reg, &[], &[]);
    let cases: Vec<(String, &str, u16, &str)> = vec![
        ("/v2/../x/manifests/y".into(), "GET", 400, "NAME_INVALID"),
        (
            "/v2/%2e%2e/x/manifests/y".into(),
            "GET",
            400,
            "NAME_INVALID",
        ),
        (
            "/v2/a/%2e%2e/%2e%2e/manifests/y".into(),
            "GET",
            400,
            "NAME_INVALID",
        ),
        ("/v2/a%2Fb/manifests/y".into(), "GET", 400, "NAME_INVALID"),
        (
            "/v2/Team/app/manifests/v1".into(),
            "GET",
            400,
            "NAME_INVALID",
        ),
        (
            "/v2/team//app/blobs/uploads/".into(),
            "POST",
            400,
            "NAME_INVALID",
        ),
        (
            format!("/v2/{}/tags/list", "a".repeat(300)),
            "GET",
            400,
            "NAME_INVALID",
        ),
        (
            "/v2/team/app/manifests/-v1".into(),
            "GET",
            400,
            "MANIFEST_INVALID",
        ),
        (
            "/v2/team/app/manifests/..".into(),
            "PUT",
            400,
            "MANIFEST_INVALID",
        ),
        (
            format!("/v2/team/app/manifests/{}", "t".repeat(129)),
            "GET",
            400,
            "MANIFEST_INVALID",
        ),
        (
            "/v2/team/app/manifests/sha256:abc".into(),
            "GET",
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/team/app/blobs/sha256:zz".into(),
            "GET",
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/team/app/blobs/md5:00".into(),
            "HEAD",
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/team/app/blobs/..%2f..%2fetc".into(),
            "GET",
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/team/app/blobs/uploads/?mount=sha256:nothex&from=team/b".into(),
            "POST",
            400,
            "DIGEST_INVALID",
        ),
        (
            format!("/v2/team/app/blobs/uploads/?mount={ZERO}&from=../etc"),
            "POST",
            400,
            "NAME_INVALID",
        ),
        (
            "/v2/team/app/blobs/uploads/..%2f..%2fx".into(),
            "PATCH",
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        (
            "/v2/team/app/blobs/uploads/not-hex".into(),
            "GET",
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        (
            "/v2/team/app/blobs/uploads/zz".into(),
            "DELETE",
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
    ];
    for (path, method, status, code) in &cases {
        let r = http::request(&proxy.host, method, path, &[]).unwrap();
        assert_api_error(&format!("{method} {path}"), &r, *status, code);
        if *method == "HEAD" {
            continue;
        }
        let message = r.json()["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!message.chars().any(char::is_control), "{message:?}");
    }
    // The same through curl, which must be told not to tidy the path.
    let r = curl(&[
        "--path-as-is",
        &format!("http://{}/v2/../x/manifests/y", proxy.host),
    ]);
    assert_eq!(r.status, 400);
    assert_eq!(error_code(&r.json()), "NAME_INVALID");
    assert!(
        proxy.uploads_left().is_empty(),
        "{:?}",
        proxy.uploads_left()
    );
    let (code, _, stderr) = proxy.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn proxy_server_unknown_upload_sessions() {
    let reg = Registry::start();
    let proxy = Served::start(&reg, &[], &[]);
    let id = "0123456789abcdef0123456789abcdef";
    let path = format!("/v2/team/app/blobs/uploads/{id}");
    for method in ["GET", "PATCH", "DELETE"] {
        let r = http::request(&proxy.host, method, &path, &[]).unwrap();
        assert_api_error(&format!("{method} {path}"), &r, 404, "BLOB_UPLOAD_UNKNOWN");
    }
    let url = format!("http://{}{path}?digest={ZERO}", proxy.host);
    let r = curl(&["-X", "PUT", "--data-binary", "x", &url]);
    assert_eq!(r.status, 404);
    assert_eq!(error_code(&r.json()), "BLOB_UPLOAD_UNKNOWN");
    // A real session of another repository is unknown to this one.
    let start = curl(&[
        "-X",
        "POST",
        &format!("http://{}/v2/team/a/blobs/uploads/", proxy.host),
    ]);
    assert_eq!(start.status, 202, "{start:?}");
    let location = start.header("location").unwrap().to_string();
    let theirs = location.replace("/team/a/", "/team/b/");
    let r = http::request(&proxy.host, "GET", &theirs, &[]).unwrap();
    assert_api_error(&format!("GET {theirs}"), &r, 404, "BLOB_UPLOAD_UNKNOWN");
    let r = http::request(&proxy.host, "DELETE", &location, &[]).unwrap();
    assert_eq!(r.status, 204);
    assert!(
        proxy.uploads_left().is_empty(),
        "{:?}",
        proxy.uploads_left()
    );
}

#[test]
fn proxy_server_cuts_off_a_slow_client() {
    let reg = Registry::start();
    let proxy = Served::start(&reg, &[], &[("OCCYSTRAP_PROXY_HEADER_TIMEOUT", "2")]);
    let mut tcp = TcpStream::connect(&proxy.host).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let request = format!(
        "GET /v2/ HTTP/1.1\r\nHost: {}\r\nX-Slow: {}\r\n\r\n",
        proxy.host,
        "a".repeat(40)
    );
    let started = Instant::now();
    let mut cut_off = None;
    // One byte a second: the whole request would take over a minute.
    'send: for b in request.as_bytes() {
        if tcp.write_all(&[*b]).is_err() {
            cut_off = Some(started.elapsed());
            break;
        }
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            let mut buf = [0u8; 512];
            match tcp.read(&mut buf) {
                Ok(0) => {
                    cut_off = Some(started.elapsed());
                    break 'send;
                }
                Ok(n) => {
                    // An answer (a 408) may come first; the close follows.
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    assert!(!text.contains(" 200 "), "a slow client was served: {text}");
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => {
                    cut_off = Some(started.elapsed());
                    break 'send;
                }
            }
        }
    }
    let took = cut_off.expect("the slow client was never cut off");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "cut off after {took:?}"
    );
    // Others are served meanwhile and after.
    let r = http::request(&proxy.host, "GET", "/v2/", &[]).unwrap();
    assert_eq!(r.status, 200);
    // Clients that connect and then stop: before the HTTP version is told
    // (nothing, or one byte of either), after HTTP/2's preface, and idle
    // after a first request. All of them at once.
    let stalled: Vec<_> = [
        &b""[..],
        b"P",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    .into_iter()
    .map(|sent| {
        let host = proxy.host.clone();
        thread::spawn(move || (sent, closed_after(&host, sent)))
    })
    .collect();
    for t in stalled {
        let (sent, took) = t.join().unwrap();
        let sent = String::from_utf8_lossy(sent);
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
            "{sent:?}: closed after {took:?}"
        );
    }
}

/// Connects, sends `sent`, then waits (reading whatever comes) until the
/// server closes the connection; how long that took.
fn closed_after(host: &str, sent: &[u8]) -> Duration {
    let mut tcp = TcpStream::connect(host).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp.write_all(sent).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return t.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return t.elapsed(),
            Err(e) => panic!(
                "{:?}: {e} after {:?}",
                String::from_utf8_lossy(sent),
                t.elapsed()
            ),
        }
    }
}

#[test]
fn proxy_server_refuses_an_oversized_manifest() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let proxy = Served::start(&reg, &["--max-manifest-size", "1024"], &[]);
    let big = env.work("manifest.json");
    let doc = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"annotations\":{{\"x\":\"{}\"}}}}",
        "y".repeat(2000)
    );
    fs::write(&big, &doc).unwrap();
    let url = format!("http://{}/v2/team/app/manifests/v1", proxy.host);
    let data = format!("@{}", big.display());
    let ct = "Content-Type: application/vnd.oci.image.manifest.v1+json";
    // With a Content-Length, and chunked without one.
    for extra in [&[][..], &["-H", "Transfer-Encoding: chunked"][..]] {
        let mut args = vec!["-X", "PUT", "-H", ct, "--data-binary", &data];
        args.extend(extra);
        args.push(&url);
        let r = curl(&args);
        assert_eq!(
            r.status,
            413,
            "{extra:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(error_code(&r.json()), "MANIFEST_INVALID", "{extra:?}");
    }
    assert!(
        proxy.uploads_left().is_empty(),
        "{:?}",
        proxy.uploads_left()
    );
    // Nothing reached downstream.
    let r = http::get_manifest(&reg.host(), "team/app", "v1").unwrap();
    assert_eq!(r.status, 404);
}

// ---------------------------------------------------------------------------
// SIGTERM
// ---------------------------------------------------------------------------

#[test]
fn proxy_server_sigterm_during_an_upload() {
    let reg = Registry::start();
    let proxy = Served::start(&reg, &[], &[]);
    let start = curl(&[
        "-X",
        "POST",
        &format!("http://{}/v2/team/app/blobs/uploads/", proxy.host),
    ]);
    assert_eq!(start.status, 202, "{start:?}");
    let location = start.header("location").unwrap().to_string();
    // A 1 GiB PATCH, sent slowly from a thread: 64 KiB every 20 ms.
    let host = proxy.host.clone();
    let sender = thread::spawn(move || {
        let Ok(mut tcp) = TcpStream::connect(&host) else {
            return;
        };
        let head = format!(
            "PATCH {location} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            1u64 << 30
        );
        if tcp.write_all(head.as_bytes()).is_err() {
            return;
        }
        let chunk = vec![0x5au8; 64 << 10];
        for _ in 0..(1 << 14) {
            if tcp.write_all(&chunk).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    });
    // Until the session's file holds some of it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let uploads = proxy.state.join("staging/uploads");
    while Instant::now() < deadline {
        let size: u64 = fs::read_dir(&uploads)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        if size > 256 << 10 {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !proxy.uploads_left().is_empty(),
        "the upload never reached staging/uploads"
    );
    let state = proxy.state.clone();
    let (code, took, stderr) = proxy.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(took < EXIT_WITHIN, "exit took {took:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let left = dir_entries(&state.join("staging/uploads"));
    assert!(left.is_empty(), "left behind: {left:?}");
    let _ = sender.join();
    let r = http::get_manifest(&reg.host(), "team/app", "v1").unwrap();
    assert_eq!(r.status, 404);
}

// ---------------------------------------------------------------------------
// The access log
// ---------------------------------------------------------------------------

#[test]
fn proxy_server_json_access_log() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let file = htpasswd_file(&env, "user", "s3cret-pass");
    let proxy = Served::start(
        &reg,
        &["--log-format", "json", "--htpasswd", file.to_str().unwrap()],
        &[],
    );
    let good = basic("user:s3cret-pass");
    let wrong = basic("user:wr0ng-pass");
    let sent: [(&str, &str, Option<&str>, u16); 4] = [
        ("GET", "/v2/", Some(&good), 200),
        ("HEAD", "/v2/", Some(&good), 200),
        ("GET", "/v2/", Some(&wrong), 401),
        ("GET", "/v2/Bad/manifests/x", Some(&good), 400),
    ];
    for (method, path, auth, status) in sent {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        let r = http::request(&proxy.host, method, path, &headers).unwrap();
        assert_eq!(r.status, status, "{method} {path}");
    }
    let (code, _, stderr) = proxy.stop();
    assert_eq!(code, Some(0), "{stderr}");
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let access: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["target"] == "occystrap::access")
        .collect();
    assert_eq!(access.len(), sent.len(), "{stderr}");
    for (e, (method, path, _, status)) in access.iter().zip(sent) {
        assert_eq!(e["method"], method, "{e}");
        assert_eq!(e["path"], path, "{e}");
        assert_eq!(e["status"], status, "{e}");
        assert!(e["timestamp"].is_string(), "{e}");
    }
    // Everything else on stderr is a plain status line, not a log event.
    for line in stderr.lines().filter(|l| !l.starts_with('{')) {
        assert!(line.starts_with("proxy: "), "{line}");
    }
    for secret in [
        &good[6..],
        &wrong[6..],
        "s3cret-pass",
        "wr0ng-pass",
        "Basic ",
    ] {
        assert!(!stderr.contains(secret), "{secret} in the log:\n{stderr}");
    }
}
