//! A real container engine for the engine tests: Debian's podman serving
//! its Docker-compatible API on a private unix socket, over private vfs
//! storage, started by the test and killed by its PID on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tools::{Output, podman_in, run};

/// How long podman may take to start listening.
const START: Duration = Duration::from_secs(60);

/// How long one podman command of a test may take.
const PODMAN_TIMEOUT: Duration = Duration::from_secs(180);

/// `podman system service` on `<state>/engine.sock`.
pub struct Engine {
    state: tempfile::TempDir,
    child: Child,
    socket: PathBuf,
}

impl Engine {
    /// Starts the service and waits until `/version` answers.
    pub fn start() -> Engine {
        let state = tempfile::Builder::new()
            .prefix("occy-engine-")
            .tempdir()
            .expect("engine state dir");
        let socket = state.path().join("engine.sock");
        let log = std::fs::File::create(state.path().join("service.log")).unwrap();
        let child = podman_in(state.path(), &[])
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start podman system service (is podman installed?)");
        let engine = Engine {
            state,
            child,
            socket,
        };
        let deadline = Instant::now() + START;
        loop {
            if engine.socket.exists() && engine.answers() {
                return engine;
            }
            assert!(
                Instant::now() < deadline,
                "podman system service did not answer within {START:?}: {}",
                engine.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn answers(&self) -> bool {
        std::os::unix::net::UnixStream::connect(&self.socket).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            if s.write_all(b"GET /version HTTP/1.0\r\nHost: d\r\n\r\n")
                .is_err()
            {
                return false;
            }
            let mut head = [0u8; 12];
            s.read_exact(&mut head).is_ok()
                && head.starts_with(b"HTTP/1.")
                && &head[9..12] == b"200"
        })
    }

    /// The socket the service listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `?socket=PATH` for an engine URI.
    pub fn query(&self) -> String {
        format!("socket={}", self.socket.display())
    }

    /// `docker://NAME?socket=…`.
    pub fn uri(&self, name: &str) -> String {
        format!("docker://{name}?{}", self.query())
    }

    /// The engine's storage directory (for the independent podman CLI).
    pub fn state(&self) -> &Path {
        self.state.path()
    }

    /// A podman command on the same storage as the service.
    pub fn podman(&self, args: &[&str]) -> Output {
        run(&mut podman_in(self.state.path(), args), PODMAN_TIMEOUT)
    }

    /// `podman load -i PATH` on the engine's storage; returns the name
    /// podman gave the image (`Loaded image: NAME`).
    pub fn load(&self, path: &Path) -> String {
        let out = self
            .podman(&["load", "-i", &path.display().to_string()])
            .expect_ok();
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix("Loaded image: "))
            .or_else(|| {
                out.stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("Loaded image(s): "))
            })
            .unwrap_or_else(|| panic!("podman load named no image: {}", out.stdout))
            .trim()
            .to_string()
    }

    /// Whether the engine has an image by this name.
    pub fn has(&self, name: &str) -> bool {
        self.podman(&["image", "exists", name]).code == Some(0)
    }

    /// `podman image inspect --format FORMAT NAME`, trimmed.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.podman(&["image", "inspect", "--format", format, name])
            .expect_ok()
            .stdout
            .trim()
            .to_string()
    }

    /// The service's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("service.log")).unwrap_or_default()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // podman's vfs layers can hold read-only directories: occystrap's
        // removal handles them where the temp dir's would not.
        let _ = occystrap::rmtree::remove(self.state.path());
    }
}

/// A plain `Command` for podman on the engine's storage, for tests that
/// need to set more than arguments.
pub fn podman_command(engine: &Engine, args: &[&str]) -> Command {
    podman_in(engine.state(), args)
}
