//! The harness of the proxy server tests: `occystrap proxy` as a
//! subprocess, a curl runner that parses responses, the spec's error
//! checks, htpasswd files and a test CA.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::http;
use crate::support::tools::{self, Output};
use crate::support::{Registry, TestEnv, dir_entries, occy_bin};

/// How long any one tool run may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// The proxy as a subprocess
// ---------------------------------------------------------------------------

/// A running `occystrap proxy`. Dropping it kills the process.
pub(super) struct Served {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub(super) host: String,
    /// The `--state-dir`.
    pub(super) state: PathBuf,
    stderr: Arc<Mutex<String>>,
    stderr_done: Option<thread::JoinHandle<()>>,
}

impl Served {
    /// `occystrap --insecure proxy -l 127.0.0.1:0 --state-dir ENV/state -d
    /// registry://DOWN EXTRA...`, with `vars` in its environment; returns
    /// once it says where it listens.
    pub(super) fn start(
        env: &TestEnv,
        down: &Registry,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Served {
        let state = env.path().join("state");
        let mut cmd = Command::new(occy_bin());
        cmd.current_dir(env.work(""))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", env.path().join("home"))
            .env("DOCKER_CONFIG", env.docker_config_dir())
            .env("XDG_RUNTIME_DIR", env.path().join("xdg"))
            .env("XDG_CONFIG_HOME", env.path().join("xdg"))
            .env("TMPDIR", env.tmp_dir())
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .args(["--insecure", "proxy", "-l", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .arg("-d")
            .arg(format!("registry://{}", down.host()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start occystrap proxy");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let stderr_done = thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                {
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
                // After the line is kept: the caller may look for it.
                if let Some(rest) = line.strip_prefix("proxy: listening on ") {
                    let _ = tx.send(rest.to_string());
                }
            }
        });
        let listening = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the proxy did not say it listens:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        // `http://127.0.0.1:PORT, downstream ...`
        let host = listening
            .split_once("://")
            .and_then(|(_, r)| r.split(',').next())
            .expect("address in the listening line")
            .to_string();
        Served {
            child,
            host,
            state,
            stderr,
            stderr_done: Some(stderr_done),
        }
    }

    /// What it printed on stderr so far.
    pub(super) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// What is left in the staging area's upload sessions (nothing when
    /// the directory does not exist).
    pub(super) fn uploads_left(&self) -> Vec<String> {
        dir_entries(&self.state.join("staging/uploads"))
    }

    /// Sends `signal` and waits (bounded) for the exit: the exit code, the
    /// time it took, and all of stderr.
    pub(super) fn stop(mut self, signal: i32) -> (Option<i32>, Duration, String) {
        let pid = i32::try_from(self.child.id()).unwrap();
        let sent = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            if sent.elapsed() > Duration::from_secs(30) {
                panic!("the proxy did not exit within 30 s of signal {signal}");
            }
            thread::sleep(Duration::from_millis(5));
        };
        let took = sent.elapsed();
        if let Some(t) = self.stderr_done.take() {
            let _ = t.join();
        }
        (status.code(), took, self.stderr())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// A curl response: HTTP version, status, headers (names lower-cased) and
/// body.
#[derive(Debug)]
pub(super) struct Curl {
    pub(super) version: String,
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl Curl {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// `curl -sS -i ARGS...`, its response parsed (the last one, after any
/// `100 Continue`).
pub(super) fn curl(args: &[&str]) -> Curl {
    let out = tools::run(
        Command::new("curl")
            .args(["-sS", "-i", "--max-time", "60"])
            .args(args),
        TOOL_TIMEOUT,
    )
    .expect_ok();
    let raw = out.stdout_bytes;
    let mut rest: &[u8] = &raw;
    loop {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let body = &rest[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut words = status_line.split(' ');
        let version = words.next().unwrap().to_string();
        let status: u16 = words.next().unwrap().parse().unwrap();
        if status == 100 {
            rest = body;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        return Curl {
            version,
            status,
            headers,
            body: body.to_vec(),
        };
    }
}

/// The first error code of a spec error body.
pub(super) fn error_code(body: &serde_json::Value) -> &str {
    body["errors"][0]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no errors[0].code in {body}"))
}

/// Asserts the spec's error answer: `status`, a JSON body with `code` (a
/// HEAD answer has no body to check).
pub(super) fn assert_api_error(what: &str, resp: &http::Response, status: u16, code: &str) {
    assert_eq!(
        resp.status,
        status,
        "{what}: {}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "{what}"
    );
    if !what.starts_with("HEAD ") {
        assert_eq!(error_code(&resp.json()), code, "{what}");
    }
}

/// `htpasswd -Bbn USER PASS` written to a file in the test's work dir.
pub(super) fn htpasswd_file(env: &TestEnv, user: &str, pass: &str) -> PathBuf {
    let out = tools::run(
        Command::new("htpasswd").args(["-Bbn", user, pass]),
        TOOL_TIMEOUT,
    )
    .expect_ok();
    let path = env.work("htpasswd");
    fs::write(&path, out.stdout.trim_end().to_string() + "\n").unwrap();
    path
}

pub(super) fn basic(user_pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

/// skopeo `inspect` of `docker://HOST/team/app:v1` with these options.
pub(super) fn skopeo_inspect(env: &TestEnv, host: &str, opts: &[&str]) -> Output {
    let mut c = tools::skopeo(&env.tool_tmp());
    c.arg("inspect")
        .args(opts)
        .arg(format!("docker://{host}/team/app:v1"));
    tools::run(&mut c, TOOL_TIMEOUT)
}

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it, made
/// with openssl in `dir`: (CA, certificate, key) files.
pub(super) fn test_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    fs::create_dir_all(dir).unwrap();
    let openssl = |args: &[&str]| {
        tools::run(
            Command::new("openssl").args(args).current_dir(dir),
            TOOL_TIMEOUT,
        )
        .expect_ok();
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec![
        "req", "-x509", "-days", "2", "-keyout", "ca.key", "-out", "ca.crt",
    ];
    ca.extend(ec);
    ca.extend([
        "-subj",
        "/CN=occystrap proxy test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca);
    let mut csr = vec!["req", "-keyout", "server.key", "-out", "server.csr"];
    csr.extend(ec);
    csr.extend(["-subj", "/CN=127.0.0.1"]);
    openssl(&csr);
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}
