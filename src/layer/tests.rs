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

// ---- hostile archives -------------------------------------------------

#[test]
fn dotdot_name_is_refused() {
    assert_refused(
        |_| Tar::new().file("ok", "1").file("../x", "evil").bytes(),
        1,
    );
    assert_refused(|_| Tar::new().file("a/../../x", "evil").bytes(), 1);
    let sb = assert_refused(
        |_| Tar::new().dir("../d").file("../beside", "evil").bytes(),
        2,
    );
    assert_eq!(
        fs::read_to_string(sb.parent.join("beside")).unwrap(),
        "host data"
    );
}

#[test]
fn refusal_message_names_layer_and_entry() {
    let sb = sandbox();
    let err = extract_layer(
        &sb.root,
        &Tar::new().file("../x", "evil").bytes()[..],
        &opts(WhiteoutMode::Apply, false),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"layer 1 (sha256:abc): entry "../x" escapes the target directory"#
    );
}

#[test]
fn absolute_name_lands_inside_root() {
    assert_contained(
        |sb| {
            let abs = sb.outside.join("victim");
            Tar::new()
                .file("/abs/x", "1")
                .file(abs.to_str().unwrap(), "evil")
                .bytes()
        },
        |sb| {
            assert_eq!(fs::read_to_string(sb.root.join("abs/x")).unwrap(), "1");
            assert_eq!(
                fs::read_to_string(inside(sb, &sb.outside.join("victim"))).unwrap(),
                "evil"
            );
        },
    );
}

#[test]
fn absolute_symlink_parent_stays_inside() {
    let name = unique("tmp");
    assert_contained(
        |sb| {
            Tar::new()
                .symlink("link", "/tmp")
                .file(&format!("link/{name}"), "x")
                .symlink("out", sb.outside.to_str().unwrap())
                .file("out/victim", "evil")
                .file("out/dir/new", "evil")
                .bytes()
        },
        |sb| {
            assert!(!Path::new("/tmp").join(&name).exists());
            assert_eq!(
                fs::read_to_string(sb.root.join("tmp").join(&name)).unwrap(),
                "x"
            );
            let out = inside(sb, &sb.outside);
            assert_eq!(fs::read_to_string(out.join("victim")).unwrap(), "evil");
            assert_eq!(fs::read_to_string(out.join("dir/new")).unwrap(), "evil");
        },
    );
}

#[test]
fn relative_symlink_up_is_clamped_at_root() {
    assert_contained(
        |_| {
            Tar::new()
                .symlink("up", "../../..")
                .file("up/x", "1")
                .symlink("deep/up2", "../../../../../..")
                .file("deep/up2/beside", "evil")
                .dir("up/newdir")
                .bytes()
        },
        |sb| {
            assert_eq!(fs::read_to_string(sb.root.join("x")).unwrap(), "1");
            assert_eq!(fs::read_to_string(sb.root.join("beside")).unwrap(), "evil");
            assert!(sb.root.join("newdir").is_dir());
        },
    );
}

#[test]
fn hardlink_to_absolute_path_is_refused() {
    assert_refused(|_| Tar::new().hardlink("passwd", "/etc/passwd").bytes(), 1);
    assert_refused(
        |sb| {
            let abs = sb.outside.join("victim");
            Tar::new().hardlink("v", abs.to_str().unwrap()).bytes()
        },
        1,
    );
}

#[test]
fn hardlink_escaping_is_refused() {
    assert_refused(|_| Tar::new().hardlink("x", "../../x").bytes(), 1);
    assert_refused(|_| Tar::new().hardlink("x", "../outside/victim").bytes(), 1);
}

#[test]
fn hardlink_through_symlink_stays_inside() {
    // The link's directory resolves in the root, where no victim exists.
    assert_refused(
        |sb| {
            Tar::new()
                .symlink("out", sb.outside.to_str().unwrap())
                .hardlink("h", "out/victim")
                .bytes()
        },
        1,
    );
    // A hardlink to a symlink links the symlink, never what it points at.
    assert_contained(
        |sb| {
            Tar::new()
                .symlink("s", sb.outside.join("victim").to_str().unwrap())
                .hardlink("h", "s")
                .bytes()
        },
        |sb| {
            let md = fs::symlink_metadata(sb.root.join("h")).unwrap();
            assert!(md.file_type().is_symlink());
            assert_eq!(
                md.ino(),
                fs::symlink_metadata(sb.root.join("s")).unwrap().ino()
            );
        },
    );
}

#[test]
fn long_symlink_chain_stays_inside() {
    assert_contained(
        |sb| {
            let mut t = Tar::new();
            for i in 0..30 {
                t.symlink(&format!("l{i}"), &format!("l{}", i + 1));
            }
            t.symlink("l30", sb.outside.to_str().unwrap());
            t.file("l0/victim", "evil");
            t.file("l0/dir/new", "evil");
            t.file("l0/sub/deeper/f", "evil");
            t.bytes()
        },
        |sb| {
            let out = inside(sb, &sb.outside);
            assert_eq!(fs::read_to_string(out.join("victim")).unwrap(), "evil");
            assert_eq!(
                fs::read_to_string(out.join("sub/deeper/f")).unwrap(),
                "evil"
            );
        },
    );
}

#[test]
fn symlink_loop_is_refused() {
    assert_refused(
        |_| {
            Tar::new()
                .symlink("a", "b")
                .symlink("b", "a")
                .file("a/x", "1")
                .bytes()
        },
        1,
    );
}

#[test]
fn final_symlink_is_replaced_not_followed() {
    assert_contained(
        |sb| {
            let victim = sb.outside.join("victim");
            Tar::new()
                .symlink("f", victim.to_str().unwrap())
                .file("f", "mine")
                .symlink("d", sb.outside.to_str().unwrap())
                .raw(EntryType::Directory, "d", "", b"", 0o777)
                .file("d/x", "1")
                .symlink("n", victim.to_str().unwrap())
                .raw(EntryType::Fifo, "n", "", b"", 0o666)
                .symlink("s", victim.to_str().unwrap())
                .symlink("s", "/elsewhere")
                .bytes()
        },
        |sb| {
            assert_eq!(fs::read_to_string(sb.root.join("f")).unwrap(), "mine");
            assert!(fs::symlink_metadata(sb.root.join("d")).unwrap().is_dir());
            assert!(sb.root.join("d/x").is_file());
            assert!(
                fs::symlink_metadata(sb.root.join("n"))
                    .unwrap()
                    .file_type()
                    .is_fifo()
            );
            assert_eq!(
                fs::read_link(sb.root.join("s")).unwrap(),
                Path::new("/elsewhere")
            );
        },
    );
}

#[test]
fn whiteouts_through_symlinks_stay_inside() {
    assert_contained(
        |sb| {
            Tar::new()
                .symlink("out", sb.outside.to_str().unwrap())
                .file("out/.wh.victim", "")
                .file("out/.wh..wh..opq", "")
                .bytes()
        },
        |_| {},
    );
}

#[test]
fn lower_layer_symlink_does_not_leak() {
    let sb = sandbox();
    let before = snapshot(&sb.parent, &sb.root);
    apply(
        &sb.root,
        Tar::new().symlink("etc", sb.outside.to_str().unwrap()),
    );
    apply(
        &sb.root,
        Tar::new()
            .file("etc/victim", "evil")
            .file("etc/.wh.dir", ""),
    );
    assert_eq!(before, snapshot(&sb.parent, &sb.root));
    assert_eq!(
        fs::read_to_string(inside(&sb, &sb.outside).join("victim")).unwrap(),
        "evil"
    );
}

#[test]
fn bad_whiteout_names_are_refused() {
    assert_refused(|_| Tar::new().file("a/.wh...", "").bytes(), 1);
    assert_refused(|_| Tar::new().file("a/.wh.", "").bytes(), 1);
    assert_refused(|_| Tar::new().symlink("./", "/etc").bytes(), 1);
    assert_refused(|_| Tar::new().file(".", "x").bytes(), 1);
    assert_refused(|_| Tar::new().hardlink("x", ".").bytes(), 1);
}

// ---- whiteouts --------------------------------------------------------

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

#[test]
fn whiteout_removes_trees() {
    let sb = sandbox();
    let r = &sb.root;
    apply(
        r,
        Tar::new()
            .dir("a")
            .dir("a/b")
            .dir("a/b/c")
            .file("a/b/c/file", "1")
            .symlink("a/b/c/link", "/")
            .file("a/b/d", "2")
            .dir("gone")
            .file("gone/deep/er/f", "3"),
    );
    apply(r, Tar::new().file("a/b/.wh.c", "").file(".wh.gone", ""));
    assert!(!exists(&r.join("a/b/c")));
    assert!(r.join("a/b/d").is_file());
    assert!(!exists(&r.join("gone")));
    assert!(r.is_dir());
}

#[test]
fn nested_whiteouts() {
    let sb = sandbox();
    let r = &sb.root;
    apply(
        r,
        Tar::new()
            .file("a/b/c/x", "1")
            .file("a/b/c/y", "2")
            .file("a/z", "3"),
    );
    apply(
        r,
        Tar::new()
            .file("a/b/c/.wh.x", "")
            .file("a/b/.wh.c", "")
            .file("a/.wh.b", ""),
    );
    assert!(!exists(&r.join("a/b")));
    assert!(r.join("a/z").is_file());
}

#[test]
fn deep_tree_is_removed() {
    let sb = sandbox();
    let r = &sb.root;
    let deep = vec!["d"; 1500].join("/");
    apply(r, Tar::new().file(&format!("top/{deep}/f"), "1"));
    apply(r, Tar::new().file(".wh.top", ""));
    assert!(!exists(&r.join("top")));
}

#[test]
fn opaque_keeps_same_layer_additions() {
    for marker_first in [true, false] {
        let sb = sandbox();
        let r = &sb.root;
        apply(
            r,
            Tar::new()
                .dir("d")
                .file("d/old1", "1")
                .dir("d/sub")
                .file("d/sub/old2", "2")
                .file("d/keep/old3", "3")
                .file("other/x", "4"),
        );
        let mut t = Tar::new();
        if marker_first {
            t.file("d/.wh..wh..opq", "");
        }
        t.dir("d")
            .file("d/new1", "n")
            .dir("d/sub")
            .file("d/sub/new2", "n");
        t.file("d/implicit/new3", "n");
        if !marker_first {
            t.file("d/.wh..wh..opq", "");
        }
        apply(r, &mut t);
        let names = |p: &str| {
            let mut v: Vec<String> = fs::read_dir(r.join(p))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names("d"),
            ["implicit", "new1", "sub"],
            "marker first: {marker_first}"
        );
        assert_eq!(names("d/sub"), ["new2"]);
        assert_eq!(names("d/implicit"), ["new3"]);
        assert!(r.join("other/x").is_file());
        assert!(!exists(&r.join("d/.wh..wh..opq")));
    }
}

#[test]
fn whiteouts_match_whole_components() {
    let sb = sandbox();
    let r = &sb.root;
    apply(
        r,
        Tar::new()
            .file("usr/lib/a", "1")
            .file("usr/lib64/b", "2")
            .file("usr/libexec", "3")
            .file("etc/x", "4")
            .file("etc/xy", "5")
            .file("etc/x.d/f", "6"),
    );
    apply(
        r,
        Tar::new()
            .file("usr/lib/.wh..wh..opq", "")
            .file("etc/.wh.x", ""),
    );
    assert!(r.join("usr/lib").is_dir());
    assert!(!exists(&r.join("usr/lib/a")));
    assert!(r.join("usr/lib64/b").is_file());
    assert!(r.join("usr/libexec").is_file());
    assert!(!exists(&r.join("etc/x")));
    assert!(r.join("etc/xy").is_file());
    assert!(r.join("etc/x.d/f").is_file());
}

#[test]
fn whiteout_of_missing_path_is_ignored() {
    let sb = sandbox();
    let r = &sb.root;
    apply(r, Tar::new().file("etc/y", "1"));
    let stats = apply(
        r,
        Tar::new()
            .file(".wh.ghost", "")
            .file("nope/.wh.x", "")
            .file("nope/deeper/.wh..wh..opq", "")
            .file("etc/y/.wh.z", ""),
    );
    assert_eq!(stats.entries, 4);
    assert!(!exists(&r.join("nope")));
    assert!(r.join("etc/y").is_file());
}

#[test]
fn same_layer_whiteout_spares_the_layer() {
    let sb = sandbox();
    let r = &sb.root;
    apply(r, Tar::new().file("d/lower", "1").file("x", "lower"));
    apply(
        r,
        Tar::new()
            .file("x", "upper")
            .file(".wh.x", "")
            .file("d/upper", "2")
            .file(".wh.d", ""),
    );
    assert_eq!(fs::read_to_string(r.join("x")).unwrap(), "upper");
    assert!(r.join("d/upper").is_file());
    assert!(!exists(&r.join("d/lower")));
}

#[test]
fn file_and_directory_replace_each_other() {
    let sb = sandbox();
    let r = &sb.root;
    apply(
        r,
        Tar::new()
            .dir("p")
            .file("p/q/r", "1")
            .file("f", "file")
            .symlink("s", "/x"),
    );
    apply(
        r,
        Tar::new()
            .file("p", "now a file")
            .dir("f")
            .file("f/inner", "2")
            .dir("s"),
    );
    assert_eq!(fs::read_to_string(r.join("p")).unwrap(), "now a file");
    assert!(r.join("f/inner").is_file());
    assert!(fs::symlink_metadata(r.join("s")).unwrap().is_dir());
    apply(r, Tar::new().dir("p").file("p/new", "3").symlink("f", "p"));
    assert!(r.join("p/new").is_file());
    assert_eq!(fs::read_link(r.join("f")).unwrap(), Path::new("p"));
}

#[test]
fn existing_directory_is_kept() {
    let sb = sandbox();
    let r = &sb.root;
    apply(r, Tar::new().dir("d").file("d/a", "1"));
    apply(
        r,
        Tar::new()
            .raw(EntryType::Directory, "d", "", b"", 0o700)
            .file("d/b", "2"),
    );
    assert!(r.join("d/a").is_file());
    assert!(r.join("d/b").is_file());
    assert_eq!(fs::metadata(r.join("d")).unwrap().mode() & 0o7777, 0o700);
}

#[test]
fn hardlink_to_lower_layer_file() {
    let sb = sandbox();
    let r = &sb.root;
    apply(r, Tar::new().file("bin/busybox", "v1"));
    apply(
        r,
        Tar::new()
            .hardlink("bin/sh", "bin/busybox")
            .hardlink("./usr/sh", "./bin/sh"),
    );
    let ino = fs::metadata(r.join("bin/busybox")).unwrap().ino();
    assert_eq!(fs::metadata(r.join("bin/sh")).unwrap().ino(), ino);
    assert_eq!(fs::metadata(r.join("usr/sh")).unwrap().ino(), ino);
    // A later layer replaces the file; it must not write through the link.
    apply(r, Tar::new().file("bin/busybox", "v2"));
    assert_eq!(fs::read_to_string(r.join("bin/busybox")).unwrap(), "v2");
    assert_eq!(fs::read_to_string(r.join("bin/sh")).unwrap(), "v1");
    // Repeating a link is harmless.
    apply(
        r,
        Tar::new()
            .hardlink("bin/sh2", "bin/sh")
            .hardlink("bin/sh2", "bin/sh"),
    );
    assert_eq!(fs::read_to_string(r.join("bin/sh2")).unwrap(), "v1");
}

#[test]
fn hardlink_to_missing_target_is_refused() {
    assert_refused(|_| Tar::new().hardlink("a", "nothing/here").bytes(), 1);
}

#[test]
fn long_names_and_link_targets() {
    let sb = sandbox();
    let r = &sb.root;
    let dir = format!("{}/{}", "d".repeat(120), "e".repeat(90));
    let name = format!("{dir}/{}", "f".repeat(150));
    let target = format!("/{}", "t".repeat(250));
    let mut t = Tar::new();
    t.file(&name, "long")
        .symlink(&format!("{dir}/link"), &target)
        .hardlink("hl", &name)
        .pax(&[("path", format!("{dir}/pax-{}", "p".repeat(200)).as_bytes())])
        .file("short", "pax");
    apply(r, &mut t);
    assert_eq!(fs::read_to_string(r.join(&name)).unwrap(), "long");
    assert_eq!(
        fs::read_link(r.join(&dir).join("link")).unwrap(),
        Path::new(&target)
    );
    assert_eq!(fs::read_to_string(r.join("hl")).unwrap(), "long");
    let pax = r.join(&dir).join(format!("pax-{}", "p".repeat(200)));
    assert_eq!(fs::read_to_string(pax).unwrap(), "pax");
}

// ---- metadata ---------------------------------------------------------

#[test]
fn modes_owners_and_times() {
    let sb = sandbox();
    let r = &sb.root;
    let (uid, gid) = if is_root() { (1000, 1001) } else { (0, 0) };
    let mut t = Tar::new();
    t.owned(EntryType::Regular, "suid", 0o4755, uid, gid)
        .owned(EntryType::Regular, "sgid", 0o2711, uid, gid)
        .owned(EntryType::Directory, "tmp", 0o1777, uid, gid)
        .owned(EntryType::Directory, "shared", 0o2775, uid, gid)
        .owned(EntryType::Directory, "locked", 0o500, uid, gid)
        .file("locked/inside", "1")
        .owned(EntryType::Symlink, "link", 0o777, uid, gid)
        .pax(&[("mtime", b"1700000000.123456789")])
        .file("precise", "x");
    let stats = apply(r, &mut t);
    assert_eq!(stats.entries, 8);
    let md = |p: &str| fs::symlink_metadata(r.join(p)).unwrap();
    assert_eq!(md("suid").mode() & 0o7777, 0o4755);
    assert_eq!(md("sgid").mode() & 0o7777, 0o2711);
    assert_eq!(md("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(md("shared").mode() & 0o7777, 0o2775);
    assert_eq!(md("locked").mode() & 0o7777, 0o500);
    if is_root() {
        for p in ["suid", "tmp", "link", "locked"] {
            assert_eq!((md(p).uid(), md(p).gid()), (1000, 1001), "{p}");
        }
    }
    // Directories get their times after their contents are written.
    for p in ["suid", "tmp", "locked", "link", "locked/inside"] {
        assert_eq!(md(p).mtime(), MTIME as i64, "{p}");
    }
    assert_eq!(md("precise").mtime(), 1_700_000_000);
    assert_eq!(md("precise").mtime_nsec(), 123_456_789);
}

#[test]
fn parent_times_are_restored() {
    let sb = sandbox();
    let r = &sb.root;
    apply(r, Tar::new().dir("d").file("d/a", "1"));
    let before = fs::metadata(r.join("d")).unwrap().mtime();
    assert_eq!(before, MTIME as i64);
    apply(r, Tar::new().file("d/b", "2").file("d/.wh.a", ""));
    assert_eq!(fs::metadata(r.join("d")).unwrap().mtime(), before);
}

/// A layer that writes into one directory under two names (the real path and
/// a symlink to it) must still leave the directory's original times: the
/// first write changes them, so only the times seen before it count.
#[test]
fn parent_times_restored_when_reached_by_two_names() {
    // The bug depended on hash order; a few rounds make a miss unlikely.
    for _ in 0..8 {
        let sb = sandbox();
        let r = &sb.root;
        apply(
            r,
            Tar::new()
                .dir("real")
                .file("real/x", "1")
                .symlink("link", "real"),
        );
        let before = fs::metadata(r.join("real")).unwrap().mtime();
        assert_eq!(before, MTIME as i64);
        apply(r, Tar::new().file("real/f", "2").file("link/g", "3"));
        assert_eq!(fs::metadata(r.join("real")).unwrap().mtime(), before);
        assert_eq!(fs::read_to_string(r.join("real/g")).unwrap(), "3");
    }
}

fn getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(p, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// security.capability, v2, CAP_NET_BIND_SERVICE permitted and effective.
const CAP_NET_BIND: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

#[test]
fn xattrs_survive() {
    let sb = sandbox();
    let r = &sb.root;
    let mut t = Tar::new();
    t.pax(&[
        ("SCHILY.xattr.user.note", b"hello"),
        ("SCHILY.xattr.user.bin", b"\x00\xff"),
    ])
    .file("f", "1")
    .pax(&[("SCHILY.xattr.user.dir", b"d")])
    .dir("d")
    .pax(&[(
        "SCHILY.xattr.security.selinux",
        b"system_u:object_r:etc_t:s0",
    )])
    .file("labelled", "1");
    if is_root() {
        t.pax(&[
            ("SCHILY.xattr.security.capability", &CAP_NET_BIND[..]),
            ("SCHILY.xattr.trusted.t", b"v"),
        ])
        .owned(EntryType::Regular, "ping", 0o4755, 0, 0)
        .pax(&[("SCHILY.xattr.trusted.l", b"on a link")])
        .symlink("l", "/nowhere");
    }
    let stats = apply(r, &mut t);
    assert_eq!(
        getxattr(&r.join("f"), "user.note").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(
        getxattr(&r.join("f"), "user.bin").as_deref(),
        Some(&b"\x00\xff"[..])
    );
    assert_eq!(
        getxattr(&r.join("d"), "user.dir").as_deref(),
        Some(&b"d"[..])
    );
    assert!(
        stats
            .warnings
            .iter()
            .any(|w| w.contains("security.selinux")),
        "{:?}",
        stats.warnings
    );
    if is_root() {
        assert_eq!(
            getxattr(&r.join("ping"), "security.capability").as_deref(),
            Some(&CAP_NET_BIND[..])
        );
        assert_eq!(
            getxattr(&r.join("ping"), "trusted.t").as_deref(),
            Some(&b"v"[..])
        );
        assert_eq!(
            fs::metadata(r.join("ping")).unwrap().mode() & 0o7777,
            0o4755
        );
        assert_eq!(
            getxattr(&r.join("l"), "trusted.l").as_deref(),
            Some(&b"on a link"[..])
        );
    }
    // A directory redefined by a later layer carries only that layer's xattrs.
    apply(
        r,
        Tar::new()
            .pax(&[("SCHILY.xattr.user.other", b"o")])
            .dir("d"),
    );
    assert_eq!(getxattr(&r.join("d"), "user.dir"), None);
    assert_eq!(
        getxattr(&r.join("d"), "user.other").as_deref(),
        Some(&b"o"[..])
    );
}

#[test]
fn fifos_and_devices() {
    let sb = sandbox();
    let r = &sb.root;
    let stats = apply(
        r,
        Tar::new()
            .raw(EntryType::Fifo, "dev/fifo", "", b"", 0o620)
            .device(EntryType::Char, "dev/null", 1, 3)
            .device(EntryType::Block, "dev/loop0", 7, 0),
    );
    let fifo = fs::symlink_metadata(r.join("dev/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o620);
    if is_root() {
        let null = fs::symlink_metadata(r.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        assert_eq!(null.mode() & 0o7777, 0o640);
        let lp = fs::symlink_metadata(r.join("dev/loop0")).unwrap();
        assert!(lp.file_type().is_block_device());
        assert_eq!(lp.rdev(), rustix::fs::makedev(7, 0));
        assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);
    } else {
        assert!(!exists(&r.join("dev/null")));
        assert_eq!(stats.warnings.len(), 1, "{:?}", stats.warnings);
    }
}

#[test]
fn devices_without_root_give_one_warning() {
    let sb = sandbox();
    let r = &sb.root;
    super::extract::test_hooks::set_unprivileged(true);
    let stats = apply(
        r,
        Tar::new()
            .device(EntryType::Char, "dev/null", 1, 3)
            .device(EntryType::Block, "dev/loop0", 7, 0)
            .raw(EntryType::Fifo, "dev/fifo", "", b"", 0o600),
    );
    super::extract::test_hooks::set_unprivileged(false);
    assert!(!exists(&r.join("dev/null")));
    assert!(!exists(&r.join("dev/loop0")));
    assert!(
        fs::symlink_metadata(r.join("dev/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(stats.warnings.len(), 1, "{:?}", stats.warnings);
    assert!(
        stats.warnings[0].contains("2 device node(s)"),
        "{:?}",
        stats.warnings
    );
}

#[test]
fn overlong_component_is_refused() {
    assert_refused(|_| Tar::new().file(&"n".repeat(300), "x").bytes(), 1);
    assert_refused(
        |_| {
            Tar::new()
                .file(&format!("{}/x", "d".repeat(300)), "x")
                .bytes()
        },
        1,
    );
    assert_refused(|_| Tar::new().dir(&"d".repeat(300)).bytes(), 1);
}

#[test]
fn sparse_file() {
    // A GNU sparse entry: 512 bytes of data at 1 MiB, nothing before.
    fn octal(dst: &mut [u8], v: u64) {
        let s = format!("{v:0width$o}", width = dst.len() - 1);
        dst[..s.len()].copy_from_slice(s.as_bytes());
    }
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..6].copy_from_slice(b"sparse");
    h.set_entry_type(EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(512);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    let gnu = h.as_gnu_mut().unwrap();
    octal(&mut gnu.sparse[0].offset, 1 << 20);
    octal(&mut gnu.sparse[0].numbytes, 512);
    octal(&mut gnu.realsize, (1 << 20) + 512);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &[7u8; 512][..]).unwrap();
    let tar = b.into_inner().unwrap();
    let sb = sandbox();
    let stats = extract_layer(&sb.root, &tar[..], &opts(WhiteoutMode::Apply, false)).unwrap();
    let data = fs::read(sb.root.join("sparse")).unwrap();
    assert_eq!(data.len(), (1 << 20) + 512);
    assert!(data[..1 << 20].iter().all(|&b| b == 0));
    assert!(data[1 << 20..].iter().all(|&b| b == 7));
    assert_eq!(stats.bytes, (1 << 20) + 512);
    // The hole stays a hole.
    assert!(fs::metadata(sb.root.join("sparse")).unwrap().blocks() < 1024);
}

#[test]
fn truncated_tar_fails() {
    let mut t = Tar::new();
    let mut bytes = t.file("big", &"x".repeat(5000)).bytes();
    bytes.truncate(512 + 1024);
    let sb = sandbox();
    assert!(extract_layer(&sb.root, &bytes[..], &opts(WhiteoutMode::Apply, false)).is_err());
}

#[test]
fn stats_count_entries_and_bytes() {
    let sb = sandbox();
    let stats = apply(
        &sb.root,
        Tar::new().dir("a").file("a/b", "12345").file("c", "678"),
    );
    assert_eq!(
        stats,
        ExtractStats {
            entries: 3,
            bytes: 8,
            skipped_unsafe: vec![],
            warnings: vec![],
        }
    );
}

// ---- overlay form -----------------------------------------------------

#[test]
fn overlay_whiteouts() {
    if !is_root() {
        return;
    }
    let sb = sandbox();
    let r = &sb.root;
    overlay(
        r,
        Tar::new()
            .file("etc/.wh.x", "")
            .file("a/b/.wh.c", "")
            .file("keep", "mine")
            .file(".wh.keep", "")
            .file("opq/.wh..wh..opq", "")
            .file("opq/new", "1")
            .dir("opq")
            .file("made/by/marker/.wh..wh..opq", "")
            .pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/elsewhere")])
            .file("redirected", ""),
    );
    for p in ["etc/x", "a/b/c"] {
        let md = fs::symlink_metadata(r.join(p)).unwrap();
        assert!(md.file_type().is_char_device(), "{p}");
        assert_eq!(md.rdev(), 0, "{p}");
    }
    assert!(!exists(&r.join("etc/.wh.x")));
    assert_eq!(fs::read_to_string(r.join("keep")).unwrap(), "mine");
    assert_eq!(
        getxattr(&r.join("opq"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(r.join("opq/new").is_file());
    assert!(!exists(&r.join("opq/.wh..wh..opq")));
    assert_eq!(
        getxattr(&r.join("made/by/marker"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        getxattr(&r.join("redirected"), "trusted.overlay.redirect"),
        None
    );
    assert_eq!(
        getxattr(&r.join("redirected"), "trusted.overlay.overlay.redirect").as_deref(),
        Some(&b"/elsewhere"[..])
    );
}

#[test]
fn overlay_whiteout_through_symlink_stays_inside() {
    if !is_root() {
        return;
    }
    let sb = sandbox();
    let before = snapshot(&sb.parent, &sb.root);
    overlay(
        &sb.root,
        Tar::new()
            .symlink("out", sb.outside.to_str().unwrap())
            .file("out/.wh.newname", ""),
    );
    assert_eq!(before, snapshot(&sb.parent, &sb.root));
    let wh = inside(&sb, &sb.outside).join("newname");
    assert!(
        fs::symlink_metadata(wh)
            .unwrap()
            .file_type()
            .is_char_device()
    );
}

#[test]
fn root_entry_sets_root_metadata() {
    let sb = sandbox();
    apply(
        &sb.root,
        Tar::new()
            .raw(EntryType::Directory, "./", "", b"", 0o751)
            .file("x", "1"),
    );
    let md = fs::metadata(&sb.root).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o751);
    assert_eq!(md.mtime(), MTIME as i64);
}

#[test]
fn aufs_metadata_is_ignored() {
    let sb = sandbox();
    apply(
        &sb.root,
        Tar::new()
            .file(".wh..wh.plnk/123.456", "x")
            .dir(".wh..wh.aufs")
            .file("ok", "1"),
    );
    let names: Vec<_> = fs::read_dir(&sb.root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["ok"]);
}
