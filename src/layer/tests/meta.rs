//! Modes, owners, times, xattrs, special files, sparse files and stats.

use super::*;

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
    crate::layer::extract::test_hooks::set_unprivileged(true);
    let stats = apply(
        r,
        Tar::new()
            .device(EntryType::Char, "dev/null", 1, 3)
            .device(EntryType::Block, "dev/loop0", 7, 0)
            .raw(EntryType::Fifo, "dev/fifo", "", b"", 0o600),
    );
    crate::layer::extract::test_hooks::set_unprivileged(false);
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
            // Counted only when extracted ahead (`OCCYSTRAP_TEST_STAGED`).
            dirs_moved: stats.dirs_moved,
            skipped_unsafe: vec![],
            warnings: vec![],
        }
    );
}
