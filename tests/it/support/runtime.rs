//! Support for the runtime-output tests: images with a chosen image config,
//! a runc runner that keeps its state private and always deletes its
//! containers, and overlay mounts that are unmounted however a test ends.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::images::{BuiltImage, unique_dir};
use super::tools::{Output, run};
use super::{TestEnv, sha256_digest};

/// How long one container may run.
pub const RUNC_TIMEOUT: Duration = Duration::from_secs(120);

/// `os/arch` of this machine in OCI spelling: the test images carry the
/// host's busybox, so they are images for this platform.
pub fn host_platform() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        "s390x" => "linux/s390x",
        "powerpc64" => "linux/ppc64le",
        "riscv64" => "linux/riscv64",
        other => panic!("no OCI architecture name known for host architecture {other}"),
    }
}

/// Rewrites the image config's `config` section (Entrypoint, Env, User...)
/// and refreshes the config digest and the manifest that names it.
pub fn with_config(mut built: BuiltImage, edit: impl FnOnce(&mut Value)) -> BuiltImage {
    let mut config: Value = serde_json::from_slice(&built.config).unwrap();
    edit(&mut config["config"]);
    built.config = serde_json::to_vec(&config).unwrap();
    built.config_digest = sha256_digest(&built.config);
    let mut manifest: Value = serde_json::from_slice(&built.manifest).unwrap();
    manifest["config"]["digest"] = json!(built.config_digest);
    manifest["config"]["size"] = json!(built.config.len());
    built.manifest = serde_json::to_vec_pretty(&manifest).unwrap();
    built.manifest_digest = sha256_digest(&built.manifest);
    built
}

static CONTAINERS: AtomicU32 = AtomicU32::new(0);

/// runc with its state under the test's directory (`runc --root`), so tests
/// neither see nor disturb other containers on the host.
pub struct Runc {
    state: PathBuf,
}

/// Deletes a container when dropped, whatever happened to the test.
struct Container<'a> {
    runc: &'a Runc,
    id: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        // `runc run` removes a container whose process exited; this catches
        // the ones a failed or killed run left behind.
        let _ = self
            .runc
            .cmd()
            .args(["delete", "-f", &self.id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Runc {
    /// A private runc state directory inside the test's tree.
    pub fn new(env: &TestEnv) -> Runc {
        let state = env.path().join("runc-state");
        fs::create_dir_all(&state).unwrap();
        Runc { state }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&self.state);
        c
    }

    /// `runc run --bundle BUNDLE ID` with a fresh id, to completion; the
    /// container is deleted afterwards (`runc delete -f`).
    pub fn run(&self, bundle: &Path) -> Output {
        let id = format!(
            "occy-it-{}-{}",
            std::process::id(),
            CONTAINERS.fetch_add(1, Ordering::SeqCst)
        );
        let _container = Container {
            runc: self,
            id: id.clone(),
        };
        let mut c = self.cmd();
        c.arg("run").arg("--bundle").arg(bundle).arg(&id);
        run(&mut c, RUNC_TIMEOUT)
    }

    /// Ids of containers runc still knows about in this state directory.
    pub fn leftover_containers(&self) -> Vec<String> {
        let out = run(self.cmd().args(["list", "-q"]), RUNC_TIMEOUT).expect_ok();
        out.stdout.lines().map(str::to_string).collect()
    }

    /// Runs a bundle and returns its stdout lines. When runc fails, tells
    /// the environment's fault from ours before failing the test: the same
    /// rootfs is run under runc's own `runc spec` configuration, and the
    /// message says which of the two runc refused.
    pub fn run_lines(&self, env: &TestEnv, bundle: &Path) -> Vec<String> {
        let out = self.run(bundle);
        if out.code != Some(0) {
            let control = self.control_run(env, &bundle.join("rootfs"));
            if control.code == Some(0) {
                panic!(
                    "runc refuses occystrap's bundle but runs its own default spec over the same \
                     rootfs, so occystrap's config.json is at fault.\n--- {} (exit {:?})\n\
                     stdout:\n{}\nstderr:\n{}\n--- config.json:\n{}",
                    out.cmdline,
                    out.code,
                    out.stdout,
                    out.stderr,
                    fs::read_to_string(bundle.join("config.json")).unwrap_or_default()
                );
            }
            panic!(
                "runc cannot run containers in this environment: even its own `runc spec` \
                 bundle fails, so the oci:// bundle could not be checked (environment problem, \
                 not occystrap).\n--- ours: {} (exit {:?}):\n{}\n--- runc's own spec: {} \
                 (exit {:?}):\n{}",
                out.cmdline, out.code, out.stderr, control.cmdline, control.code, control.stderr
            );
        }
        out.stdout.lines().map(str::to_string).collect()
    }

    /// Runs `/bin/sh -c 'echo control'` in `rootfs` under the configuration
    /// `runc spec` generates.
    fn control_run(&self, env: &TestEnv, rootfs: &Path) -> Output {
        let bundle = unique_dir(&env.work(""), "runc-control");
        run(
            Command::new("runc").args(["spec", "--bundle"]).arg(&bundle),
            RUNC_TIMEOUT,
        )
        .expect_ok();
        let path = bundle.join("config.json");
        let mut spec: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(["/bin/sh", "-c", "echo control"]);
        spec["root"]["path"] = json!(rootfs.display().to_string());
        fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        self.run(&bundle)
    }
}

/// An overlay (or any) mount on `point`, unmounted when dropped unless the
/// test already did.
pub struct Mounted {
    point: PathBuf,
}

impl Mounted {
    /// Takes charge of a mount made by someone else (occystrap, a script).
    pub fn adopt(point: &Path) -> Mounted {
        Mounted {
            point: point.to_path_buf(),
        }
    }

    /// Unmounts now, failing the test if that fails.
    pub fn unmount(self) {
        let out = run(
            Command::new("umount").arg(&self.point),
            Duration::from_secs(60),
        );
        assert_eq!(
            out.code,
            Some(0),
            "umount {}: {}",
            self.point.display(),
            out.stderr
        );
        assert!(
            !is_mount_point(&self.point),
            "{} is still mounted after umount",
            self.point.display()
        );
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Never leave a mount behind: the test's tempdir could not be
        // removed and later tests would see it.
        for _ in 0..3 {
            if !is_mount_point(&self.point) {
                return;
            }
            let _ = Command::new("umount").arg(&self.point).status();
        }
        if is_mount_point(&self.point) {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
    }
}

/// The mount points of this process's mount namespace, from
/// `/proc/self/mountinfo` (with its octal escapes undone).
pub fn mount_points() -> Vec<(PathBuf, String)> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some((
                PathBuf::from(unescape_mountinfo(fields.get(4)?)),
                fields.get(sep + 1)?.to_string(),
            ))
        })
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a mount point right now.
pub fn is_mount_point(path: &Path) -> bool {
    let abs = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mount_points().iter().any(|(p, _)| *p == abs)
}

/// The filesystem type mounted on `path`, if it is a mount point.
pub fn mount_type(path: &Path) -> Option<String> {
    let abs = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mount_points()
        .into_iter()
        .rev()
        .find(|(p, _)| *p == abs)
        .map(|(_, t)| t)
}
