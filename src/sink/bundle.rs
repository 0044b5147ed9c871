//! OCI runtime bundle writer (`oci://PATH`): `rootfs/` (the merged layers,
//! through the safe extractor), a runtime-spec `config.json` built from the
//! image config, and the image config itself as `container-config.json`
//! (the Python occystrap's layout). `runc run --bundle PATH ID` runs it.
//!
//! `config.json` is deterministic: the same image gives the same bytes
//! (capability sets are written sorted), and it carries the device cgroup
//! rule `runc spec` starts with (deny everything not listed), so the
//! container's device access does not depend on the runtime's own defaults.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::runtime::{LinuxDeviceCgroup, Spec, User};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::image::{Image, Layer};
use crate::layer::{StageDir, WhiteoutMode};
use crate::sink::staging::{StagedDir, apply_layer, set_mode};
use crate::sink::{Sink, SinkReport, StageArea};

/// PATH when the image sets none (the same default Docker uses).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Writes an image as an OCI runtime bundle.
pub struct BundleSink {
    staged: StagedDir,
    /// Where later layers are extracted ahead: beside the bundle, so that
    /// it outlives any layer still being staged when the run fails.
    stage: Arc<StageDir>,
    readonly: bool,
    skip_unsafe: bool,
    cancel: crate::cancel::CancelToken,
    notes: Vec<String>,
}

impl BundleSink {
    /// A bundle that will appear at `path`; `readonly` sets `root.readonly`.
    /// Extracting stops once `cancel` is cancelled.
    pub fn new(
        path: &Path,
        readonly: bool,
        skip_unsafe: bool,
        cancel: crate::cancel::CancelToken,
    ) -> Result<Self> {
        // Only a directory (an earlier bundle) is replaced at the end; say
        // so now rather than after the work.
        if let Ok(m) = std::fs::symlink_metadata(path)
            && !m.is_dir()
        {
            let what = if m.file_type().is_symlink() {
                "a symbolic link"
            } else {
                "not a directory"
            };
            return Err(Error::Usage(format!(
                "{} exists and is {what}; refusing to replace it with a bundle",
                path.display()
            )));
        }
        let staged = StagedDir::new(path)?;
        let rootfs = staged.path().join("rootfs");
        std::fs::create_dir(&rootfs).map_err(|e| Error::io("creating", &rootfs, e))?;
        set_mode(&rootfs, 0o755)?;
        let beside = staged.path().parent().unwrap_or(Path::new("."));
        Ok(BundleSink {
            stage: StageDir::create_in(beside)?,
            staged,
            readonly,
            skip_unsafe,
            cancel,
            notes: Vec::new(),
        })
    }
}

impl Sink for BundleSink {
    fn begin(&mut self, _image: &Image) -> Result<()> {
        Ok(())
    }

    /// Layers are applied to the one rootfs, named by nothing.
    fn takes_rewritten_live(&self) -> bool {
        true
    }

    fn stage_area(&self) -> Option<StageArea> {
        Some(StageArea {
            dir: self.stage.clone(),
            whiteouts: WhiteoutMode::Apply,
            keep_tar: false,
            layer_name: crate::sink::staging::layer_name,
        })
    }

    fn layer(&mut self, layer: Layer) -> Result<()> {
        let rootfs = self.staged.path().join("rootfs");
        apply_layer(
            &rootfs,
            &layer,
            WhiteoutMode::Apply,
            self.skip_unsafe,
            &self.cancel,
            &mut self.notes,
        )
    }

    fn finish(mut self: Box<Self>, image: &Image) -> Result<SinkReport> {
        let config = image
            .config_json()
            .map_err(|e| Error::InvalidImage(format!("image config is not JSON: {e}")))?;
        let rootfs = self.staged.path().join("rootfs");
        let spec = runtime_spec(&config, &rootfs, self.readonly, &mut self.notes)?;
        let json = spec_json(&spec)?;
        let dir = self.staged.path().to_path_buf();
        write(&dir.join("config.json"), &json)?;
        write(&dir.join("container-config.json"), &image.config_raw)?;
        let target = self.staged.target().to_path_buf();
        self.staged
            .commit(|p| p.join("config.json").is_file() && p.join("rootfs").is_dir())?;
        Ok(SinkReport {
            output: target.display().to_string(),
            bytes_written: 0,
            notes: self.notes,
            ..SinkReport::default()
        })
    }
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).map_err(|e| Error::io("writing", path, e))?;
    set_mode(path, 0o644)
}

/// The runtime spec for an image config: runc's usual defaults (namespaces,
/// masked and read-only paths, default capabilities) with the process taken
/// from the image.
pub fn runtime_spec(
    config: &Value,
    rootfs: &Path,
    readonly: bool,
    notes: &mut Vec<String>,
) -> Result<Spec> {
    let c = &config["config"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut args = strings(&c["Entrypoint"]);
    args.extend(strings(&c["Cmd"]));
    if args.is_empty() {
        notes.push("the image sets no Entrypoint or Cmd: set process.args in config.json before running it".into());
    }
    let mut env = strings(&c["Env"]);
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let cwd = c["WorkingDir"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("/")
        .to_string();
    if !cwd.starts_with('/') {
        return Err(Error::InvalidImage(format!(
            "WorkingDir {cwd:?} is not absolute"
        )));
    }
    let user = resolve_user(c["User"].as_str().unwrap_or(""), rootfs)?;
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        // As Docker and podman do: the user's home from the image's passwd,
        // `/` for a user it does not list.
        env.push(format!("HOME={}", home_dir(user.uid(), rootfs)));
    }

    let mut spec = Spec::default();
    spec.set_version("1.0.2".to_string());
    spec.set_hostname(Some("occystrap".to_string()));
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(PathBuf::from(cwd));
    process.set_user(user);
    process.set_terminal(Some(false));
    spec.set_process(Some(process));
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(Some(readonly));
    spec.set_root(Some(root));
    if let Some(linux) = spec.linux_mut()
        && let Some(resources) = linux.resources_mut()
    {
        let mut deny_all = LinuxDeviceCgroup::default();
        deny_all.set_allow(false);
        deny_all.set_access(Some("rwm".to_string()));
        resources.set_devices(Some(vec![deny_all]));
    }
    Ok(spec)
}

/// Serialises a spec as `config.json`. The spec types keep capabilities in
/// hash sets, which serialise in a different order every run; they are
/// written sorted so that one image always gives the same file.
pub fn spec_json(spec: &Spec) -> Result<Vec<u8>> {
    let bad = |e: serde_json::Error| Error::InvalidImage(format!("serialising config.json: {e}"));
    let mut value = serde_json::to_value(spec).map_err(bad)?;
    if let Some(caps) = value
        .pointer_mut("/process/capabilities")
        .and_then(Value::as_object_mut)
    {
        for set in caps.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    serde_json::to_vec_pretty(&value).map_err(bad)
}

/// Resolves an image `User` (`uid`, `uid:gid`, `name`, `name:group`) to ids,
/// reading names from the rootfs's `/etc/passwd` and `/etc/group` without
/// ever following a link out of the rootfs.
pub fn resolve_user(spec: &str, rootfs: &Path) -> Result<User> {
    let mut user = User::default();
    if spec.is_empty() {
        return Ok(user);
    }
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_in_root(rootfs, "etc/passwd").unwrap_or_default();
    let groups = read_in_root(rootfs, "etc/group").unwrap_or_default();
    // passwd: name:x:uid:gid:gecos:home:shell
    let pw_entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && (f[0] == u || (u.parse::<u32>().is_ok() && f[2] == u)));
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => pw_entry
            .as_ref()
            .and_then(|f| f[2].parse().ok())
            .ok_or_else(|| {
                Error::InvalidImage(format!("user {u:?} is not in the image's /etc/passwd"))
            })?,
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    Error::InvalidImage(format!("group {g:?} is not in the image's /etc/group"))
                })?,
        },
        None => pw_entry
            .as_ref()
            .and_then(|f| f[3].parse().ok())
            .unwrap_or(0),
    };
    // Supplementary groups: those that list the user by name, as a login would.
    if g.is_none()
        && let Some(name) = pw_entry.as_ref().map(|f| f[0])
    {
        let extra: Vec<u32> = groups
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .filter(|f| f.len() >= 4 && f[3].split(',').any(|m| m == name))
            .filter_map(|f| f[2].parse().ok())
            .filter(|&id| id != gid)
            .collect();
        if !extra.is_empty() {
            user.set_additional_gids(Some(extra));
        }
    }
    user.set_uid(uid);
    user.set_gid(gid);
    Ok(user)
}

/// The home directory `/etc/passwd` in the rootfs gives `uid`, or `/`.
pub fn home_dir(uid: u32, rootfs: &Path) -> String {
    read_in_root(rootfs, "etc/passwd")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 6 && f[2].parse() == Ok(uid))
        .map(|f| f[5].to_string())
        .filter(|h| h.starts_with('/'))
        .unwrap_or_else(|| "/".to_string())
}

/// Reads a small file at `rel` inside `root`, resolving every component as
/// if `root` were `/`: a hostile image's `etc/passwd -> /etc/shadow` link
/// reads the image's own file, never the host's. Only a regular file is
/// read: a FIFO there must not block the run, and a device node must not be
/// read from.
pub fn read_in_root(root: &Path, rel: &str) -> Option<String> {
    use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
    let dir = rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    // O_NONBLOCK: opening a FIFO without a writer returns at once; O_NOCTTY:
    // a terminal device never becomes ours. Neither matters for a file.
    let fd = rustix::fs::openat2(
        &dir,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    let stat = rustix::fs::fstat(&fd).ok()?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return None;
    }
    let mut s = String::new();
    std::fs::File::from(fd)
        .take(1 << 20)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\napp:x:1001:\nwheel:x:10:app\nstaff:x:50:\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn user_forms() {
        let r = rootfs();
        let u = resolve_user("", r.path()).unwrap();
        assert_eq!((u.uid(), u.gid()), (0, 0));
        let u = resolve_user("app", r.path()).unwrap();
        assert_eq!((u.uid(), u.gid()), (1000, 1001));
        assert_eq!(u.additional_gids().as_deref(), Some(&[10][..]));
        let u = resolve_user("1000", r.path()).unwrap();
        assert_eq!((u.uid(), u.gid()), (1000, 1001));
        let u = resolve_user("4242:77", r.path()).unwrap();
        assert_eq!((u.uid(), u.gid()), (4242, 77));
        let u = resolve_user("app:staff", r.path()).unwrap();
        assert_eq!((u.uid(), u.gid()), (1000, 50));
        assert!(resolve_user("nobody", r.path()).is_err());
        assert!(resolve_user("app:nogroup", r.path()).is_err());
    }

    #[test]
    fn passwd_link_cannot_escape() {
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir(r.path().join("etc")).unwrap();
        // An absolute link resolves inside the rootfs, where there is no such file.
        std::os::unix::fs::symlink("/etc/hostname", r.path().join("etc/passwd")).unwrap();
        assert_eq!(read_in_root(r.path(), "etc/passwd"), None);
        std::os::unix::fs::symlink("../../../../../../etc/hostname", r.path().join("etc/group"))
            .unwrap();
        assert_eq!(read_in_root(r.path(), "etc/group"), None);
    }

    #[test]
    fn passwd_that_is_not_a_file_is_not_read() {
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir(r.path().join("etc")).unwrap();
        // A FIFO with no writer would block a plain open(2) forever.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.path().join("etc/passwd"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let root = r.path().to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(read_in_root(&root, "etc/passwd"));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO /etc/passwd must not block");
        assert_eq!(got, None);
        std::fs::create_dir(r.path().join("etc/group")).unwrap();
        assert_eq!(read_in_root(r.path(), "etc/group"), None);
        assert!(resolve_user("app", r.path()).is_err());
        assert_eq!(resolve_user("1:2", r.path()).unwrap().uid(), 1);
    }

    #[test]
    fn spec_from_config() {
        let r = rootfs();
        let cfg: Value = serde_json::json!({"config": {
            "Entrypoint": ["/bin/echo"], "Cmd": ["hi"], "Env": ["A=1"],
            "WorkingDir": "/srv", "User": "app"}});
        let mut notes = vec![];
        let s = runtime_spec(&cfg, r.path(), true, &mut notes).unwrap();
        let p = s.process().as_ref().unwrap();
        assert_eq!(
            p.args().as_deref(),
            Some(&["/bin/echo".to_string(), "hi".to_string()][..])
        );
        assert_eq!(
            p.env().as_deref(),
            Some(
                &[
                    DEFAULT_PATH.to_string(),
                    "A=1".into(),
                    "HOME=/home/app".into()
                ][..]
            )
        );
        assert_eq!(p.cwd(), &PathBuf::from("/srv"));
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(p.terminal(), Some(false));
        assert!(notes.is_empty());
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        let json: Value = serde_json::from_slice(&spec_json(&s).unwrap()).unwrap();
        assert_eq!(
            json["linux"]["resources"]["devices"],
            serde_json::json!([{"allow": false, "access": "rwm"}])
        );
    }

    #[test]
    fn home_from_passwd() {
        let r = rootfs();
        assert_eq!(home_dir(1000, r.path()), "/home/app");
        assert_eq!(home_dir(0, r.path()), "/root");
        assert_eq!(home_dir(4242, r.path()), "/");
        // An image's own HOME wins.
        let cfg: Value = serde_json::json!({"config": {"Env": ["HOME=/data"], "User": "app"}});
        let s = runtime_spec(&cfg, r.path(), true, &mut vec![]).unwrap();
        let env = s.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(env.iter().filter(|e| e.starts_with("HOME=")).count(), 1);
        assert!(env.contains(&"HOME=/data".to_string()));
    }

    #[test]
    fn config_json_is_deterministic() {
        let r = rootfs();
        let cfg: Value = serde_json::json!({"config": {"Cmd": ["/bin/true"]}});
        let bytes = |_| {
            let s = runtime_spec(&cfg, r.path(), true, &mut vec![]).unwrap();
            spec_json(&s).unwrap()
        };
        let first = bytes(0);
        for i in 1..20 {
            assert_eq!(bytes(i), first);
        }
        let json: Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(
            json["process"]["capabilities"]["bounding"],
            serde_json::json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"])
        );
    }
}
