//! Whiteouts, replacement of what is in the way, hard links and long names.

use super::*;

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
