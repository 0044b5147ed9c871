//! Hostile archives: every name, link and whiteout stays inside the root.

use super::*;

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
