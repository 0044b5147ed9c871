//! Extraction tests: hostile archives, whiteouts, metadata.
//!
//! Archives are built entry by entry with raw headers, since `tar::Builder`
//! refuses the names an attacker would use.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::*;
use crate::Error;

mod cancel;
mod hostile;
mod meta;
mod overlay;
mod staged;
mod whiteouts;

const MTIME: u64 = 1_600_000_000;

/// A layer tar under construction.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    /// Appends an entry exactly as given, with GNU long name/link records
    /// for names over 100 bytes.
    fn raw(&mut self, kind: EntryType, name: &str, link: &str, data: &[u8], mode: u32) -> &mut Tar {
        for (long, text) in [
            (EntryType::GNULongName, name),
            (EntryType::GNULongLink, link),
        ] {
            if text.len() > 100 {
                let mut h = Header::new_gnu();
                h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
                h.set_entry_type(long);
                h.set_size(text.len() as u64 + 1);
                h.set_mode(0o644);
                h.set_cksum();
                let mut body = text.as_bytes().to_vec();
                body.push(0);
                self.0.append(&h, &body[..]).unwrap();
            }
        }
        let mut h = Header::new_gnu();
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name.as_bytes()[..n]);
        let l = link.len().min(100);
        h.as_old_mut().linkname[..l].copy_from_slice(&link.as_bytes()[..l]);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn dir(&mut self, name: &str) -> &mut Tar {
        self.raw(EntryType::Directory, name, "", b"", 0o755)
    }
    fn file(&mut self, name: &str, data: &str) -> &mut Tar {
        self.raw(EntryType::Regular, name, "", data.as_bytes(), 0o644)
    }
    fn symlink(&mut self, name: &str, target: &str) -> &mut Tar {
        self.raw(EntryType::Symlink, name, target, b"", 0o777)
    }
    fn hardlink(&mut self, name: &str, target: &str) -> &mut Tar {
        self.raw(EntryType::Link, name, target, b"", 0o644)
    }
    /// PAX records for the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Tar {
        self.0
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }
    /// An entry with owner and mode set.
    fn owned(&mut self, kind: EntryType, name: &str, mode: u32, uid: u64, gid: u64) -> &mut Tar {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if kind == EntryType::Symlink {
            h.as_old_mut().linkname[..6].copy_from_slice(b"target");
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(0);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(MTIME);
        h.set_cksum();
        self.0.append(&h, &b""[..]).unwrap();
        self
    }
    fn device(&mut self, kind: EntryType, name: &str, major: u32, minor: u32) -> &mut Tar {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o640);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.0.append(&h, &b""[..]).unwrap();
        self
    }
    fn bytes(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

fn opts(mode: WhiteoutMode, skip_unsafe: bool) -> ExtractOptions {
    ExtractOptions {
        whiteouts: mode,
        skip_unsafe,
        layer_name: "layer 1 (sha256:abc)".into(),
        cancel: Default::default(),
    }
}

fn apply(root: &Path, tar: &mut Tar) -> ExtractStats {
    extract_layer(root, &tar.bytes()[..], &opts(WhiteoutMode::Apply, false)).unwrap()
}

fn overlay(root: &Path, tar: &mut Tar) -> ExtractStats {
    extract_layer(root, &tar.bytes()[..], &opts(WhiteoutMode::Overlay, false)).unwrap()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A parent directory holding the extraction root and, beside it, host
/// files an attack would aim at.
struct Sandbox {
    _tmp: tempfile::TempDir,
    parent: PathBuf,
    root: PathBuf,
    /// `parent/outside`, with a file `victim` in it.
    outside: PathBuf,
}

fn sandbox() -> Sandbox {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("parent");
    let root = parent.join("root");
    let outside = parent.join("outside");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::write(outside.join("victim"), "host data").unwrap();
    fs::set_permissions(outside.join("victim"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(parent.join("beside"), "host data").unwrap();
    Sandbox {
        _tmp: tmp,
        parent,
        root,
        outside,
    }
}

type Snapshot = BTreeMap<PathBuf, (String, u64, i64, u32, u32)>;

/// Everything under `dir` except `skip`: type, size, mtime, mode, owner.
fn snapshot(dir: &Path, skip: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        if d == skip {
            continue;
        }
        let md = fs::symlink_metadata(&d).unwrap();
        out.insert(
            d.clone(),
            (
                format!("{:?}", md.file_type()),
                md.len(),
                md.mtime(),
                md.mode(),
                md.uid(),
            ),
        );
        if md.is_dir() {
            for e in fs::read_dir(&d).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
        if md.is_file() {
            let data = fs::read(&d).unwrap();
            out.insert(
                d.join("<content>"),
                (String::from_utf8_lossy(&data).into(), 0, 0, 0, 0),
            );
        }
    }
    out
}

/// A name nobody else uses, for checks against the host's /tmp.
fn unique(tag: &str) -> String {
    format!(
        "occystrap-test-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    )
}

/// Runs `build` against a fresh sandbox, once failing and once skipping:
/// the default must fail naming the layer and entry, skipping must list
/// `skipped` entries, and neither may change anything outside the root.
fn assert_refused(build: impl Fn(&Sandbox) -> Vec<u8>, skipped: usize) -> Sandbox {
    let sb = sandbox();
    let before = snapshot(&sb.parent, &sb.root);
    let err = extract_layer(&sb.root, &build(&sb)[..], &opts(WhiteoutMode::Apply, false))
        .expect_err("unsafe layer must fail by default");
    let msg = err.to_string();
    assert!(matches!(err, Error::InvalidArchive { .. }), "{msg}");
    assert!(msg.starts_with("layer 1 (sha256:abc): entry \""), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    assert_eq!(before, snapshot(&sb.parent, &sb.root));

    let sb = sandbox();
    let before = snapshot(&sb.parent, &sb.root);
    let stats = extract_layer(&sb.root, &build(&sb)[..], &opts(WhiteoutMode::Apply, true)).unwrap();
    assert_eq!(
        stats.skipped_unsafe.len(),
        skipped,
        "{:?}",
        stats.skipped_unsafe
    );
    assert_eq!(before, snapshot(&sb.parent, &sb.root));
    sb
}

/// Runs `build` against a fresh sandbox in both modes and checks that
/// nothing outside the root changed.
fn assert_contained(build: impl Fn(&Sandbox) -> Vec<u8>, check: impl Fn(&Sandbox)) {
    for mode in [WhiteoutMode::Apply, WhiteoutMode::Overlay] {
        if mode == WhiteoutMode::Overlay && !is_root() {
            // Overlay whiteouts are device nodes: root only.
            continue;
        }
        let sb = sandbox();
        let before = snapshot(&sb.parent, &sb.root);
        let stats = extract_layer(&sb.root, &build(&sb)[..], &opts(mode, false)).unwrap();
        assert!(stats.skipped_unsafe.is_empty());
        assert_eq!(before, snapshot(&sb.parent, &sb.root), "{mode:?}");
        check(&sb);
    }
}

/// `host` (an absolute path) as the root sees it.
fn inside(sb: &Sandbox, host: &Path) -> PathBuf {
    sb.root.join(host.strip_prefix("/").unwrap())
}

/// Whether anything, a dangling link included, is at `p`.
fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// An xattr of `p` itself (not of what it links to).
fn getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(p, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}
