//! Resource ceilings for hostile-input tests: run the binary and read its
//! own peak RSS from `wait4(2)`'s rusage.
//!
//! The figure must be the binary's own. Linux folds the high-water RSS of
//! the image a process had before `exec` into its `ru_maxrss`, and a child
//! spawned straight from the test starts as (a vfork of) the test process,
//! which can be hundreds of MB while other tests run. So the binary is
//! started by a small fresh process (a few lines of Python: fork, exec,
//! `os.wait4`), whose own image is ~10 MB; its report is the child's figure.

use std::io::Read;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use super::{OCCY_TIMEOUT, Occy, Output};

/// A finished run and what it cost.
pub struct Measured {
    /// What it printed and how it exited.
    pub out: Output,
    /// Peak resident set size of the child, in bytes.
    pub peak_rss: u64,
}

/// Runs `occy` to completion (killed after [`OCCY_TIMEOUT`]) and measures it.
pub fn run_measured(occy: Occy) -> Measured {
    let inner = occy.cmd;
    let cmdline = format!("{inner:?}");
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c")
        .arg(MEASURE)
        .arg(report.path())
        .arg(inner.get_program())
        .args(inner.get_args());
    if let Some(dir) = inner.get_current_dir() {
        cmd.current_dir(dir);
    }
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let start = Instant::now();
    // Its own process group, so a timeout ends the helper and the binary.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"));
    let pid = child.id() as libc::pid_t;
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
        let mut status: libc::c_int = 0;
        // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our own unreaped child; the pointers are valid.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break status;
        }
        assert!(r == 0, "wait4: {}", std::io::Error::last_os_error());
        if start.elapsed() > OCCY_TIMEOUT {
            // SAFETY: signals the process group made for this run only.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            panic!("{cmdline} did not finish within {OCCY_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    // Reaped by wait4 above: std's Child must not wait for it again.
    std::mem::forget(child);
    let stdout_bytes = t_out.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let kib: u64 = std::fs::read_to_string(report.path())
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("no RSS report from the measuring helper: {e}"));
    assert!(code != Some(125), "the measuring helper failed");
    Measured {
        out: Output {
            cmdline,
            code,
            stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
            stderr,
            stdout_bytes,
            elapsed: start.elapsed(),
        },
        // Linux reports ru_maxrss in KiB.
        peak_rss: kib * 1024,
    }
}

/// The measuring helper: runs argv[2:] and writes its child's `ru_maxrss`
/// (KiB) to argv[1]; exits as the child did.
const MEASURE: &str = r#"
import os, sys
report, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(125)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    f.write(str(usage.ru_maxrss))
if os.WIFEXITED(status):
    sys.exit(os.WEXITSTATUS(status))
sys.exit(128 + os.WTERMSIG(status))
"#;
