//! A private `docker-registry` (CNCF distribution 2.8) on 127.0.0.1 with an
//! ephemeral port and filesystem storage in a tempdir, optionally behind
//! htpasswd basic auth. Killed when dropped (and, through PR_SET_PDEATHSIG,
//! when the test process dies without unwinding).

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::http;

/// Path of the registry binary (Debian's docker-registry package).
pub const REGISTRY_BIN: &str = "docker-registry";

/// A running registry. Dropping it kills the process.
pub struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    creds: Option<(String, String)>,
}

impl Registry {
    /// Starts an anonymous registry.
    pub fn start() -> Registry {
        Registry::launch(None)
    }

    /// Starts a registry that requires basic auth with this one user.
    pub fn start_with_htpasswd(user: &str, pass: &str) -> Registry {
        Registry::launch(Some((user.to_string(), pass.to_string())))
    }

    fn launch(creds: Option<(String, String)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("occy-registry-")
            .tempdir()
            .expect("registry tempdir");
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).unwrap();
        let mut auth = String::new();
        if let Some((user, pass)) = &creds {
            let out = super::tools::run(
                Command::new("htpasswd").args(["-Bbn", user, pass]),
                Duration::from_secs(30),
            )
            .expect_ok();
            let path = dir.path().join("htpasswd");
            fs::write(&path, out.stdout.trim_end().to_string() + "\n").unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: occystrap-test\n    path: {}\n",
                path.display()
            );
        }
        // A port picked by the kernel can be taken by someone else between
        // our probe and the registry's bind; the registry then exits (or never
        // logs that it listens), and we try again with another port.
        let mut last_log = String::new();
        for _attempt in 0..8 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            fs::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
                     \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
                     http:\n  addr: 127.0.0.1:{port}\n  secret: occystrap-integration-tests\n\
                     {auth}",
                    storage = storage.display(),
                ),
            )
            .unwrap();
            let log_path = dir.path().join("registry.log");
            let mut child = spawn(&config, &log_path);
            match wait_ready(&mut child, port, &log_path) {
                Ok(()) => {
                    return Registry {
                        child,
                        port,
                        dir,
                        creds,
                    };
                }
                Err(log) => {
                    last_log = log;
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("docker-registry did not start:\n{last_log}");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The credentials it requires, if any.
    pub fn creds(&self) -> Option<(&str, &str)> {
        self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The filesystem driver's root directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the filesystem driver keeps a blob's bytes.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `registry://127.0.0.1:PORT/REPO:TAG` (or `@sha256:...` when `reference`
    /// starts with `sha256:`).
    pub fn uri(&self, repo: &str, reference: &str) -> String {
        if reference.starts_with("sha256:") {
            format!("registry://{}/{repo}@{reference}", self.host())
        } else {
            format!("registry://{}/{repo}:{reference}", self.host())
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config: &Path, log_path: &Path) -> Child {
    let log = fs::File::create(log_path).unwrap();
    let mut cmd = Command::new(REGISTRY_BIN);
    cmd.arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .env_remove("REGISTRY_HTTP_ADDR");
    // SAFETY: prctl is async-signal-safe and touches no memory of ours; it
    // makes the kernel kill the registry if the test process dies.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start {REGISTRY_BIN}: {e} (is the docker-registry package installed?)")
    })
}

/// Waits until the registry logs that it listens and answers `/v2/` (200, or
/// 401 behind auth). On failure returns the log.
fn wait_ready(child: &mut Child, port: u16, log_path: &Path) -> Result<(), String> {
    let host = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = fs::read_to_string(log_path).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("registry exited with {status}:\n{log}"));
        }
        if log.contains("listening on") {
            if let Ok(r) = http::request(&host, "GET", "/v2/", &[]) {
                if r.status == 200 || r.status == 401 {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("registry not ready after 30s:\n{log}"));
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().unwrap().port()
}

/// A loopback port that refuses connections for as long as this value lives:
/// a TCP socket bound to it but never listening. Unlike a port probed and
/// closed, nobody else can start listening there in the meantime.
pub struct ClosedPort {
    _fd: std::os::fd::OwnedFd,
    port: u16,
}

impl ClosedPort {
    /// Reserves a port.
    pub fn new() -> ClosedPort {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a descriptor we own; the sockaddr
        // structures are zero-initialised and sized for AF_INET.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            addr.sin_port = 0;
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(fd, (&raw const addr).cast(), len);
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let mut got: libc::sockaddr_in = std::mem::zeroed();
            let mut got_len = len;
            let rc = libc::getsockname(fd, (&raw mut got).cast(), &mut got_len);
            assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
            ClosedPort {
                _fd: owned,
                port: u16::from_be(got.sin_port),
            }
        }
    }

    /// The port number.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        ClosedPort::new()
    }
}

impl Registry {
    /// Starts an anonymous registry whose storage refuses deletes (as
    /// distribution's default config does): started as usual, then
    /// restarted on its port with `delete: enabled: false`.
    pub fn start_without_deletes() -> Registry {
        let mut reg = Registry::start();
        let _ = reg.child.kill();
        let _ = reg.child.wait();
        let config = reg.dir.path().join("config.yml");
        let text = fs::read_to_string(&config).unwrap();
        let off = text.replace("delete:\n    enabled: true", "delete:\n    enabled: false");
        assert_ne!(text, off, "the registry config has no delete switch");
        fs::write(&config, off).unwrap();
        let log_path = reg.dir.path().join("registry.log");
        reg.child = spawn(&config, &log_path);
        if let Err(log) = wait_ready(&mut reg.child, reg.port, &log_path) {
            panic!("docker-registry did not restart without deletes:\n{log}");
        }
        reg
    }
}
