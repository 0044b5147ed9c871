//! `occystrap proxy` as a test runs it: the built binary on a free
//! loopback port with a state directory of its own, ready once it printed
//! its `proxy: listening on` line. Its stderr (the access log) is kept for
//! assertions. Dropping it kills the process.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::registry::free_port;

/// How long the proxy may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `occystrap proxy`.
pub struct OccyProxy {
    child: Option<Child>,
    port: u16,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    _state: tempfile::TempDir,
}

impl OccyProxy {
    /// Starts `occystrap --insecure proxy -l 127.0.0.1:PORT --state-dir DIR
    /// ARGS…` (global flags such as `-j` go in `args` too; clap takes them
    /// after the subcommand) and waits until it listens. Panics with its
    /// stderr if it exits or stays silent for 20 s.
    pub fn start(args: &[&str]) -> OccyProxy {
        OccyProxy::start_with_env(args, &[])
    }

    /// [`OccyProxy::start`] with `vars` set in the proxy's environment.
    pub fn start_with_env(args: &[&str], vars: &[(&str, &str)]) -> OccyProxy {
        let mut last = String::new();
        // A port probed free can be taken before the proxy binds it: retry.
        for _ in 0..3 {
            match OccyProxy::launch(args, vars) {
                Ok(p) => return p,
                Err(e) => last = e,
            }
        }
        panic!("occystrap proxy did not start: {last}");
    }

    fn launch(args: &[&str], vars: &[(&str, &str)]) -> Result<OccyProxy, String> {
        let state = tempfile::Builder::new()
            .prefix("occy-proxy-")
            .tempdir()
            .expect("proxy state dir");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(super::occy_bin());
        cmd.arg("--insecure")
            .arg("proxy")
            .args(["-l", &listen])
            .arg("--state-dir")
            .arg(state.path().join("state"))
            .args(args)
            .env("HOME", state.path())
            .env("TMPDIR", state.path())
            .env("DOCKER_CONFIG", state.path().join("docker"))
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .env_remove("RUST_LOG")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        // SAFETY: prctl is async-signal-safe; the proxy dies with the test.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let pipe = child.stderr.take().expect("piped stderr");
        let log = stderr.clone();
        let reader = std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                {
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
                // Once the line is kept: the caller may look for it.
                if line.contains("proxy: listening on")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ready_rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let _ = reader.join();
                let log = stderr.lock().unwrap().clone();
                return Err(format!("exited with {status}:\n{log}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = stderr.lock().unwrap().clone();
                panic!("occystrap proxy not listening after {START_TIMEOUT:?}:\n{log}");
            }
        }
        Ok(OccyProxy {
            child: Some(child),
            port,
            stderr,
            reader: Some(reader),
            _state: state,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its `--state-dir` (staged uploads, the pull-through cache's tag
    /// records), for a test that runs `proxy --purge` over it.
    pub fn state_dir(&self) -> std::path::PathBuf {
        self._state.path().join("state")
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What it printed on stderr so far (the access log among it).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for it to exit (killing it after 20 s);
    /// returns its exit code and all of its stderr.
    pub fn stop(mut self) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("running");
        // SAFETY: a plain kill(2) of our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Ok(Some(st)) = child.try_wait() {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status.and_then(|s| s.code()), self.stderr())
    }
}

impl Drop for OccyProxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
