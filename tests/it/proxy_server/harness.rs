//! The harness of the proxy server tests: `occystrap proxy` in front of a
//! test registry, a curl runner that parses responses, the spec's error
//! checks, htpasswd files and a test CA.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::http;
use crate::support::occy_proxy::OccyProxy;
use crate::support::tools::{self, Output};
use crate::support::{Registry, TestEnv, dir_entries};

/// How long any one tool run may take.
pub(super) const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// The proxy as a subprocess
// ---------------------------------------------------------------------------

/// A running `occystrap proxy` ([`OccyProxy`]) in front of a downstream
/// registry. Dropping it kills the process.
pub(super) struct Served {
    inner: OccyProxy,
    /// `127.0.0.1:PORT`.
    pub(super) host: String,
    /// The `--state-dir`.
    pub(super) state: PathBuf,
}

impl Served {
    /// `occystrap --insecure proxy ... -d registry://DOWN EXTRA...`, with
    /// `vars` in its environment; returns once it listens.
    pub(super) fn start(down: &Registry, extra: &[&str], vars: &[(&str, &str)]) -> Served {
        let down = format!("registry://{}", down.host());
        let mut args = vec!["-d", down.as_str()];
        args.extend(extra);
        let inner = OccyProxy::start_with_env(&args, vars);
        Served {
            host: inner.host(),
            state: inner.state_dir(),
            inner,
        }
    }

    /// What it printed on stderr so far.
    pub(super) fn stderr(&self) -> String {
        self.inner.stderr()
    }

    /// What is left in the staging area's upload sessions (nothing when
    /// the directory does not exist).
    pub(super) fn uploads_left(&self) -> Vec<String> {
        dir_entries(&self.state.join("staging/uploads"))
    }

    /// Sends SIGTERM and waits for the exit: the exit code, the time it
    /// took, and all of stderr.
    pub(super) fn stop(self) -> (Option<i32>, Duration, String) {
        let sent = Instant::now();
        let (code, stderr) = self.inner.stop();
        (code, sent.elapsed(), stderr)
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
