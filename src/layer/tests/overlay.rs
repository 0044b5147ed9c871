//! The overlay form of whiteouts, the root entry and aufs metadata.

use super::*;

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
