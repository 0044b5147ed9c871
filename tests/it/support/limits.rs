//! Resource ceilings for hostile-input tests: run the binary and read its
//! own peak RSS from `wait4(2)`'s rusage (the child's figure, not the test
//! process's nor its other children's).

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
    let mut cmd = occy.cmd;
    let cmdline = format!("{cmd:?}");
    let start = Instant::now();
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
    let (status, usage) = loop {
        let mut status: libc::c_int = 0;
        // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our own unreaped child; the pointers are valid.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break (status, usage);
        }
        assert!(r == 0, "wait4: {}", std::io::Error::last_os_error());
        if start.elapsed() > OCCY_TIMEOUT {
            let _ = child.kill();
            panic!("{cmdline} did not finish within {OCCY_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    // Reaped by wait4 above: std's Child must not wait for it again.
    std::mem::forget(child);
    let stdout_bytes = t_out.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
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
        peak_rss: usage.ru_maxrss as u64 * 1024,
    }
}
