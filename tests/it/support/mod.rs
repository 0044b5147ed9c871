//! Shared test support: an isolated directory per test, a runner for the
//! occystrap binary and for the peer tools, a loopback registry, image
//! builders and a docker-save reader that checks the output format.

#![allow(dead_code)]

pub mod archive;
pub mod engine;
pub mod fstree;
pub mod http;
pub mod images;
pub mod layer_tar;
pub mod limits;
pub mod mirror_seed;
pub mod occy_proxy;
pub mod proxy;
pub mod push;
pub mod registry;
pub mod runtime;
pub mod server;
pub mod tools;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use archive::DockerSave;
pub use images::{Compression, Image, OciLayout, Platform};
pub use registry::Registry;
pub use tools::{Output, run};

/// How long one occystrap run may take before the test kills it.
pub const OCCY_TIMEOUT: Duration = Duration::from_secs(180);

/// The occystrap binary cargo built for this test run.
pub fn occy_bin() -> &'static str {
    env!("CARGO_BIN_EXE_occystrap")
}

/// Where the shared docker-save fixtures live (`shared/` beside the repo).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/docker-save"
    ))
}

/// One test's private directory tree. Everything a test writes lives here,
/// and the binary runs with HOME, TMPDIR and DOCKER_CONFIG pointing inside it
/// so the host's credentials and temp dir never leak in.
pub struct TestEnv {
    root: tempfile::TempDir,
}

impl TestEnv {
    /// A fresh tree: `home/`, `docker-config/`, `tmp/`, `out/`, `work/`.
    pub fn new() -> TestEnv {
        let root = tempfile::Builder::new()
            .prefix("occy-it-")
            .tempdir()
            .expect("create test tempdir");
        for d in [
            "home",
            "docker-config",
            "tmp",
            "out",
            "work",
            "xdg",
            "tooltmp",
        ] {
            fs::create_dir_all(root.path().join(d)).unwrap();
        }
        TestEnv { root }
    }

    /// The root of the tree.
    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// The directory outputs go to; failure tests assert it stays empty.
    pub fn out_dir(&self) -> PathBuf {
        self.root.path().join("out")
    }

    /// A path in the output directory.
    pub fn out(&self, name: &str) -> PathBuf {
        self.out_dir().join(name)
    }

    /// Scratch space for inputs (layouts, hand-built tarballs).
    pub fn work(&self, name: &str) -> PathBuf {
        self.root.path().join("work").join(name)
    }

    /// The TMPDIR the binary runs with.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.path().join("tmp")
    }

    /// TMPDIR for skopeo and podman (kept apart from the binary's).
    pub fn tool_tmp(&self) -> PathBuf {
        self.root.path().join("tooltmp")
    }

    /// The DOCKER_CONFIG directory the binary runs with (empty unless a test
    /// writes a config.json into it).
    pub fn docker_config_dir(&self) -> PathBuf {
        self.root.path().join("docker-config")
    }

    /// A command for the occystrap binary with an isolated environment.
    pub fn occy(&self) -> Occy {
        let mut cmd = Command::new(occy_bin());
        cmd.current_dir(self.root.path().join("work"))
            .env_remove("OCCYSTRAP_USERNAME")
            .env_remove("OCCYSTRAP_PASSWORD")
            .env_remove("OCCYSTRAP_PARALLEL")
            .env_remove("OCCYSTRAP_TEMP_DIR")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env_remove("RUST_LOG")
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .env_remove("OCCYSTRAP_INSECURE_HOSTS")
            .env("HOME", self.root.path().join("home"))
            .env("DOCKER_CONFIG", self.docker_config_dir())
            .env("XDG_RUNTIME_DIR", self.root.path().join("xdg"))
            .env("XDG_CONFIG_HOME", self.root.path().join("xdg"))
            .env("TMPDIR", self.tmp_dir())
            .env("NO_COLOR", "1")
            // A panic must show up loudly (and fail the no-backtrace checks).
            .env("RUST_BACKTRACE", "1");
        Occy { cmd }
    }

    /// True when the output directory holds nothing at all.
    pub fn out_dir_entries(&self) -> Vec<String> {
        dir_entries(&self.out_dir())
    }
}

impl Drop for TestEnv {
    /// Removes the tree with occystrap's own removal, which works at any
    /// depth (the temp dir's would run out of fds on a deep tree a test
    /// left, and leave it).
    fn drop(&mut self) {
        let _ = occystrap::rmtree::remove(self.root.path());
    }
}

/// Names in a directory (recursively, relative), sorted.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, acc: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            acc.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(base, &p, acc);
            }
        }
    }
    let mut acc = Vec::new();
    walk(dir, dir, &mut acc);
    acc.sort();
    acc
}

/// Builder for one occystrap invocation.
pub struct Occy {
    cmd: Command,
}

impl Occy {
    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Occy
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Occy {
        self.cmd.arg(arg);
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, val: impl AsRef<OsStr>) -> Occy {
        self.cmd.env(key, val);
        self
    }

    /// Runs with RLIMIT_NOFILE (soft and hard) set to `n`, so the binary
    /// cannot raise it: for proving that work at depth needs few fds.
    pub fn fd_limit(mut self, n: u64) -> Occy {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
        unsafe {
            self.cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        self
    }

    /// Runs to completion (killed after [`OCCY_TIMEOUT`]).
    pub fn run(mut self) -> Output {
        run(&mut self.cmd, OCCY_TIMEOUT)
    }

    /// Runs and asserts success (exit 0, no panic, a summary line).
    pub fn ok(self) -> Output {
        let out = self.run();
        assert_success(&out);
        out
    }
}

/// Asserts a successful run: exit 0, no panic, and a one-line summary at the
/// end of stderr.
pub fn assert_success(out: &Output) {
    assert_eq!(
        out.code,
        Some(0),
        "occystrap failed: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.cmdline,
        out.stdout,
        out.stderr
    );
    assert_no_panic(out);
    let last = out.stderr.lines().rev().find(|l| !l.trim().is_empty());
    // Shown with --nocapture, or when the test fails.
    eprintln!("[{}] {}", out.cmdline, last.unwrap_or(""));
    assert!(
        last.is_some(),
        "expected a summary line on stderr after {}; stderr was empty",
        out.cmdline
    );
    assert!(
        !last.unwrap().starts_with("error"),
        "success but the last stderr line is an error: {}",
        out.stderr
    );
}

/// Asserts the output shows no panic or backtrace.
pub fn assert_no_panic(out: &Output) {
    for needle in ["panicked", "stack backtrace", "RUST_BACKTRACE", "SIGSEGV"] {
        assert!(
            !out.stderr.contains(needle) && !out.stdout.contains(needle),
            "{} shows a panic ({needle}):\n--- stdout\n{}\n--- stderr\n{}",
            out.cmdline,
            out.stdout,
            out.stderr
        );
    }
}

/// Asserts a clean failure: exit code 1, stderr is exactly one non-empty line
/// starting `error: ` that mentions at least one of `any_of` (case-insensitive;
/// empty means no wording check), no panic, and nothing left in the output
/// directory (neither the output file nor temp files). Returns the error line.
pub fn assert_clean_failure(env: &TestEnv, out: &Output, any_of: &[&str]) -> String {
    assert_no_panic(out);
    assert_eq!(
        out.code,
        Some(1),
        "expected exit code 1 from {}\n--- stdout\n{}\n--- stderr\n{}",
        out.cmdline,
        out.stdout,
        out.stderr
    );
    let lines = nonblank_lines(&out.stderr);
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line on stderr from {}, got:\n{}",
        out.cmdline,
        out.stderr
    );
    let line = lines[0].to_string();
    // Shown with --nocapture, or when the test fails.
    eprintln!("[{}] {line}", out.cmdline);
    assert!(
        line.starts_with("error: "),
        "stderr line does not start with 'error: ': {line}"
    );
    // A clear message: no raw bytes echoed from the input (which could
    // carry newlines or terminal escapes).
    assert!(
        !line
            .chars()
            .any(|c| c == '\u{fffd}' || (c.is_control() && c != '\t')),
        "error line contains raw binary/control characters: {line:?}"
    );
    if !any_of.is_empty() {
        let lower = line.to_lowercase();
        assert!(
            any_of.iter().any(|w| lower.contains(&w.to_lowercase())),
            "error message should mention one of {any_of:?}: {line}"
        );
    }
    let left = env.out_dir_entries();
    assert!(
        left.is_empty(),
        "failed run left files in the output directory: {left:?}\nstderr: {}",
        out.stderr
    );
    line
}

/// The lines of `text` that are not blank (what a one-line error check
/// counts).
pub fn nonblank_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Hex sha256 of some bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(data))
}

/// A tar:// URI for a path.
pub fn tar_uri(path: &Path) -> String {
    format!("tar://{}", path.display())
}

/// Checks occystrap's docker-save output: the format contract
/// ([`DockerSave::assert_occystrap_output`] with `expect`), then the peers:
/// `skopeo inspect` (its layer list must equal the diff_ids), `skopeo copy`
/// into an OCI layout, and, with `podman_tag`, `podman load` into private
/// storage followed by `podman image exists TAG`.
pub fn verify_output(
    env: &TestEnv,
    path: &Path,
    expect: &archive::Expect,
    podman_tag: Option<&str>,
) -> DockerSave {
    let ds = DockerSave::read(path);
    ds.assert_occystrap_output(expect);
    let insp = tools::skopeo_inspect_archive(&env.tool_tmp(), path);
    let layers: Vec<String> = insp["Layers"]
        .as_array()
        .expect("skopeo inspect shows Layers")
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert_eq!(layers, ds.diff_ids(0), "skopeo inspect layers vs diff_ids");
    let oci = images::unique_dir(&env.work("skopeo-oci"), "oci");
    tools::skopeo_copy_archive_to_oci(&env.tool_tmp(), path, &oci);
    if let Some(tag) = podman_tag {
        let state = images::unique_dir(&env.work("podman"), "state");
        tools::podman_load(&state, path, Some(tag));
    }
    ds
}
