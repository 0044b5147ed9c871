//! `occystrap proxy`'s upload endpoints end to end: the binary serving on
//! loopback, driven with curl. Chunked and monolithic uploads land verified
//! in the staging area; bad chunks, wrong digests, another repository's
//! session and blobs over the limit are refused with the spec's codes; a
//! SIGTERM leaves no partial upload behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::tools::run;
use crate::support::{Registry, TestEnv, occy_bin, sha256_digest, sha256_hex};

const REPO: &str = "team/app";

/// A running `occystrap proxy`; killed when dropped.
struct Server {
    child: Child,
    addr: String,
    state: PathBuf,
}

impl Server {
    /// Starts the proxy in front of `downstream`, with `extra` flags.
    fn start(env: &TestEnv, downstream: &Registry, extra: &[&str]) -> Server {
        let state = env.path().join("proxy-state");
        let mut cmd = Command::new(occy_bin());
        cmd.current_dir(env.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", env.path().join("home"))
            .env("TMPDIR", env.tmp_dir())
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .args(["--insecure", "proxy", "-l", "127.0.0.1:0", "-d"])
            .arg(format!("registry://{}", downstream.host()))
            .arg("--state-dir")
            .arg(&state)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn occystrap proxy");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(rest) = line.strip_prefix("proxy: listening on http://") {
                        let addr = rest.split(',').next().unwrap_or("").to_string();
                        let _ = tx.send(addr);
                        sent = true;
                    }
                }
                // Keep draining so the proxy never blocks on its log.
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the proxy says where it listens");
        Server { child, addr, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn uploads(&self) -> PathBuf {
        self.state.join("staging/uploads")
    }

    fn staged(&self, hex: &str) -> PathBuf {
        self.state.join("staging/blobs/sha256").join(hex)
    }

    /// Sends SIGTERM and waits (10 s at most) for the exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: a plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the proxy did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response as curl saw it.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The spec's error code of a JSON error body.
    fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_default();
        v["errors"][0]["code"].as_str().unwrap_or("").to_string()
    }
}

/// `curl -X METHOD url` with `headers` and, if given, the file `body`.
fn curl(env: &TestEnv, method: &str, url: &str, headers: &[&str], body: Option<&Path>) -> Reply {
    let head = env.tmp_dir().join("curl-headers");
    let out = env.tmp_dir().join("curl-body");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--noproxy", "*", "-X", method, "-H", "Expect:", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&out)
        .args(["-w", "%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(b) = body {
        cmd.arg("--data-binary").arg(format!("@{}", b.display()));
    }
    cmd.arg(url);
    let done = run(&mut cmd, Duration::from_secs(30)).expect_ok();
    let headers = std::fs::read_to_string(&head)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status: done.stdout.trim().parse().expect("curl's status code"),
        headers,
        body: std::fs::read_to_string(&out).unwrap_or_default(),
    }
}

fn write(env: &TestEnv, name: &str, bytes: &[u8]) -> PathBuf {
    let path = env.tmp_dir().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Bytes that differ from one offset to the next.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 509) as u8).collect()
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn proxy_uploads_chunked_and_monolithic() {
    let env = TestEnv::new();
    let registry = Registry::start();
    let server = Server::start(&env, &registry, &[]);
    let blob = pattern(3 << 20);
    let digest = sha256_digest(&blob);
    let (one, two) = (1 << 20, (5 << 20) / 2);

    let started = curl(
        &env,
        "POST",
        &server.url(&format!("/v2/{REPO}/blobs/uploads/")),
        &[],
        None,
    );
    assert_eq!(started.status, 202, "{}", started.body);
    let location = started.header("location").unwrap().to_string();
    let id = started.header("docker-upload-uuid").unwrap().to_string();
    assert_eq!(location, format!("/v2/{REPO}/blobs/uploads/{id}"));
    assert_eq!(started.header("range"), Some("0-0"));
    assert_eq!(entries(&server.uploads()), 1);

    let part = write(&env, "part1", &blob[..one]);
    let range = format!("Content-Range: 0-{}", one - 1);
    let r = curl(
        &env,
        "PATCH",
        &server.url(&location),
        &[&range],
        Some(&part),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.header("range"), Some(format!("0-{}", one - 1).as_str()));

    // A chunk that skips ahead is refused, and changes nothing.
    let part = write(&env, "part2", &blob[one..two]);
    let wrong = format!("Content-Range: {}-{}", one + 10, two + 9);
    let r = curl(
        &env,
        "PATCH",
        &server.url(&location),
        &[&wrong],
        Some(&part),
    );
    assert_eq!((r.status, r.code().as_str()), (416, "BLOB_UPLOAD_INVALID"));
    // Another repository cannot see or touch the session.
    let theirs = format!("/v2/team/other/blobs/uploads/{id}");
    let r = curl(&env, "GET", &server.url(&theirs), &[], None);
    assert_eq!((r.status, r.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    let r = curl(&env, "DELETE", &server.url(&theirs), &[], None);
    assert_eq!(r.status, 404);

    let r = curl(&env, "GET", &server.url(&location), &[], None);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("range"), Some(format!("0-{}", one - 1).as_str()));

    let range = format!("Content-Range: bytes {one}-{}", two - 1);
    let r = curl(
        &env,
        "PATCH",
        &server.url(&location),
        &[&range],
        Some(&part),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    // The rest comes with the PUT.
    let rest = write(&env, "rest", &blob[two..]);
    let put = format!("{location}?digest={digest}");
    let r = curl(&env, "PUT", &server.url(&put), &[], Some(&rest));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/{REPO}/blobs/{digest}").as_str())
    );
    let staged = std::fs::read(server.staged(&sha256_hex(&blob))).unwrap();
    assert!(staged == blob, "the staged blob is the bytes sent");
    assert_eq!(entries(&server.uploads()), 0);
    let r = curl(&env, "GET", &server.url(&location), &[], None);
    assert_eq!(r.status, 404);

    // Monolithic: POST with the digest and the whole blob.
    let small = pattern(5000);
    let file = write(&env, "small", &small);
    let url = format!("/v2/{REPO}/blobs/uploads/?digest={}", sha256_digest(&small));
    let r = curl(&env, "POST", &server.url(&url), &[], Some(&file));
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(server.staged(&sha256_hex(&small)).is_file());

    // A wrong digest: refused, and nothing is left of the upload.
    let url = format!(
        "/v2/{REPO}/blobs/uploads/?digest={}",
        sha256_digest(b"else")
    );
    let r = curl(&env, "POST", &server.url(&url), &[], Some(&file));
    assert_eq!((r.status, r.code().as_str()), (400, "DIGEST_INVALID"));
    assert!(!server.staged(&sha256_hex(b"else")).exists());
    assert_eq!(entries(&server.uploads()), 0);

    // A cancelled session is gone.
    let started = curl(
        &env,
        "POST",
        &server.url(&format!("/v2/{REPO}/blobs/uploads/")),
        &[],
        None,
    );
    let location = started.header("location").unwrap().to_string();
    assert_eq!(
        curl(&env, "DELETE", &server.url(&location), &[], None).status,
        204
    );
    assert_eq!(
        curl(&env, "DELETE", &server.url(&location), &[], None).status,
        404
    );
    assert_eq!(entries(&server.uploads()), 0);
}

#[test]
fn proxy_uploads_over_the_limit_are_413() {
    let env = TestEnv::new();
    let registry = Registry::start();
    let server = Server::start(&env, &registry, &["--max-blob-size", "100000"]);
    let started = curl(
        &env,
        "POST",
        &server.url(&format!("/v2/{REPO}/blobs/uploads/")),
        &[],
        None,
    );
    let location = started.header("location").unwrap().to_string();
    let big = write(&env, "big", &pattern(1 << 20));
    let r = curl(&env, "PATCH", &server.url(&location), &[], Some(&big));
    assert_eq!((r.status, r.code().as_str()), (413, "SIZE_INVALID"));
    // The session is as it was, and its file empty.
    let r = curl(&env, "GET", &server.url(&location), &[], None);
    assert_eq!((r.status, r.header("range")), (204, Some("0-0")));
    let file = server
        .uploads()
        .join(started.header("docker-upload-uuid").unwrap());
    assert_eq!(std::fs::metadata(file).unwrap().len(), 0);
}

#[test]
fn proxy_uploads_sigterm_leaves_no_partial_upload() {
    let env = TestEnv::new();
    let registry = Registry::start();
    let mut server = Server::start(&env, &registry, &[]);
    let small = pattern(5000);
    let file = write(&env, "small", &small);
    let url = format!("/v2/{REPO}/blobs/uploads/?digest={}", sha256_digest(&small));
    assert_eq!(
        curl(&env, "POST", &server.url(&url), &[], Some(&file)).status,
        201
    );
    for _ in 0..2 {
        let started = curl(
            &env,
            "POST",
            &server.url(&format!("/v2/{REPO}/blobs/uploads/")),
            &[],
            None,
        );
        let location = started.header("location").unwrap().to_string();
        assert_eq!(
            curl(&env, "PATCH", &server.url(&location), &[], Some(&file)).status,
            202
        );
    }
    assert_eq!(entries(&server.uploads()), 2);
    server.terminate();
    assert_eq!(entries(&server.uploads()), 0, "partial uploads are removed");
    assert_eq!(entries(&server.state.join("staging/tmp")), 0);
    // A verified blob is kept for the next run.
    assert!(server.staged(&sha256_hex(&small)).is_file());
}
