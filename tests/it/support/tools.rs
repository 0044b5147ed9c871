//! Running external commands with a deadline, and the peer tools (skopeo,
//! podman) used to check what occystrap writes.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What a finished command printed and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub cmdline: String,
    /// Exit code (None when killed by a signal).
    pub code: Option<i32>,
    /// Captured stdout (lossy UTF-8).
    pub stdout: String,
    /// Captured stderr (lossy UTF-8).
    pub stderr: String,
    /// Raw stdout bytes.
    pub stdout_bytes: Vec<u8>,
    /// Wall time.
    pub elapsed: Duration,
}

impl Output {
    /// Panics with the command's output unless it exited 0.
    pub fn expect_ok(self) -> Output {
        assert_eq!(
            self.code,
            Some(0),
            "command failed: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.cmdline,
            self.stdout,
            self.stderr
        );
        self
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with no stdin, capturing its output; kills it and panics
/// if it runs longer than `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let cmdline = describe(cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for child") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
            panic!("{cmdline} did not finish within {timeout:?}; stderr so far:\n{stderr}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout_bytes = t_out.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Output {
        cmdline,
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
        stderr,
        stdout_bytes,
        elapsed: start.elapsed(),
    }
}

const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// A skopeo command that never touches the host's registries.conf auth or
/// signature policy in surprising ways: insecure policy, TMPDIR in `tmp`.
pub fn skopeo(tmp: &Path) -> Command {
    let mut c = Command::new("skopeo");
    c.env("TMPDIR", tmp).arg("--insecure-policy");
    c
}

/// Runs skopeo with arguments, panicking on failure.
pub fn skopeo_ok(tmp: &Path, args: &[&str]) -> Output {
    let mut c = skopeo(tmp);
    c.args(args);
    run(&mut c, TOOL_TIMEOUT).expect_ok()
}

/// `skopeo inspect docker-archive:PATH` as JSON.
pub fn skopeo_inspect_archive(tmp: &Path, path: &Path) -> serde_json::Value {
    let out = skopeo_ok(
        tmp,
        &["inspect", &format!("docker-archive:{}", path.display())],
    );
    serde_json::from_str(&out.stdout).expect("skopeo inspect prints JSON")
}

/// `skopeo inspect --config docker-archive:PATH` as JSON.
pub fn skopeo_inspect_archive_config(tmp: &Path, path: &Path) -> serde_json::Value {
    let out = skopeo_ok(
        tmp,
        &[
            "inspect",
            "--config",
            &format!("docker-archive:{}", path.display()),
        ],
    );
    serde_json::from_str(&out.stdout).expect("skopeo inspect --config prints JSON")
}

/// Copies a docker-save tarball into an OCI layout with skopeo (which reads
/// and verifies every blob).
pub fn skopeo_copy_archive_to_oci(tmp: &Path, path: &Path, layout: &Path) {
    skopeo_ok(
        tmp,
        &[
            "copy",
            "-q",
            &format!("docker-archive:{}", path.display()),
            &format!("oci:{}:x", layout.display()),
        ],
    );
}

/// A podman command on private vfs storage under `state` (created).
pub fn podman_in(state: &Path, args: &[&str]) -> Command {
    let tmp = state.join("tmp");
    for d in ["root", "runroot", "tmp"] {
        std::fs::create_dir_all(state.join(d)).unwrap();
    }
    let mut c = Command::new("podman");
    c.env("TMPDIR", &tmp)
        .arg("--root")
        .arg(state.join("root"))
        .arg("--runroot")
        .arg(state.join("runroot"))
        .arg("--tmpdir")
        .arg(&tmp)
        .args([
            "--storage-driver",
            "vfs",
            "--events-backend",
            "none",
            "--cgroup-manager",
            "cgroupfs",
        ])
        .args(args);
    c
}

/// `podman load` into private storage under `state`; returns podman's output.
/// Asserts that `expect_tag` (if any) then exists in that storage.
pub fn podman_load(state: &Path, path: &Path, expect_tag: Option<&str>) -> Output {
    let podman = |args: &[&str]| podman_in(state, args);
    let p = path.display().to_string();
    let out = run(&mut podman(&["load", "-i", &p]), TOOL_TIMEOUT).expect_ok();
    if let Some(tag) = expect_tag {
        run(&mut podman(&["image", "exists", tag]), TOOL_TIMEOUT).expect_ok();
    }
    out
}
