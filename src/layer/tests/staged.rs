//! Extracting ahead: [`stage_layer`] then [`apply_staged`] (the whole suite
//! also runs that way with `OCCYSTRAP_TEST_STAGED=1`).

use super::*;

/// Stages `tar` in `area`; returns the skeleton and the staged files.
fn stage(area: &Path, tar: &[u8], whole: bool, skip_unsafe: bool) -> (Vec<u8>, StagedFiles) {
    let mut skeleton = Vec::new();
    let files = stage_layer(
        tar,
        &StageDir::create_in(area).unwrap(),
        &mut skeleton,
        whole,
        &opts(WhiteoutMode::Apply, skip_unsafe),
    )
    .expect("staging");
    (skeleton, files)
}

fn staged_names(files: &StagedFiles) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(files.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn file_data_moves_out_of_the_skeleton_and_into_place() {
    staged_files_go_into_place(false);
}

/// For a sink that keeps the tar as well, the skeleton is the whole tar and
/// the apply skips the staged files' data in it.
#[test]
fn a_whole_skeleton_is_applied_the_same() {
    staged_files_go_into_place(true);
}

fn staged_files_go_into_place(whole: bool) {
    let sb = sandbox();
    let big = "x".repeat(64 << 10);
    let long = format!("d/{}", "n".repeat(150));
    let mut t = Tar::new();
    t.dir("d")
        .file("d/big", &big)
        .pax(&[("SCHILY.xattr.user.note", b"kept")])
        .file(&long, "long")
        .symlink("d/link", "big")
        .hardlink("d/hard", "d/big")
        .file("d/empty", "")
        // Refused at the apply (an owner out of range): never staged, so
        // its data stays in the skeleton for the apply to skip.
        .owned(EntryType::Regular, "bad", 0o644, u64::from(u32::MAX), 0)
        .file("d/after", "after");
    let tar = t.bytes();
    let (skeleton, files) = stage(&sb.parent, &tar, whole, true);
    // Entries are counted from 0: d, d/big, (the PAX header is part of the
    // next entry) long, link, hard, empty, bad, after. The directory `d` is
    // staged as `0`, with the files under its name.
    assert_eq!(staged_names(&files), ["0"]);
    let mut inside: Vec<String> = fs::read_dir(files.path().join("0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    inside.sort();
    assert_eq!(inside, ["after", "big", "empty", &long[2..]]);
    if whole {
        assert_eq!(skeleton, tar);
    } else {
        assert!(
            skeleton.len() + big.len() <= tar.len(),
            "skeleton {} of a tar of {}",
            skeleton.len(),
            tar.len()
        );
    }
    assert_eq!(
        fs::read(files.path().join("0/big")).unwrap(),
        big.as_bytes()
    );
    // Nothing reaches the root before the apply.
    assert_eq!(fs::read_dir(&sb.root).unwrap().count(), 0);

    let stats = apply_staged(
        &sb.root,
        std::io::Cursor::new(&skeleton),
        &files,
        &opts(WhiteoutMode::Apply, true),
    )
    .unwrap();
    assert_eq!(stats.skipped_unsafe.len(), 1, "{:?}", stats.skipped_unsafe);
    assert_eq!(
        stats.bytes,
        (big.len() + "long".len() + "after".len()) as u64
    );
    let r = &sb.root;
    assert_eq!(fs::read(r.join("d/big")).unwrap(), big.as_bytes());
    assert_eq!(fs::read_to_string(r.join(&long)).unwrap(), "long");
    assert_eq!(fs::read_to_string(r.join("d/after")).unwrap(), "after");
    assert_eq!(fs::read(r.join("d/empty")).unwrap(), b"");
    assert_eq!(fs::read_link(r.join("d/link")).unwrap(), Path::new("big"));
    let md = |p: &str| fs::symlink_metadata(r.join(p)).unwrap();
    assert_eq!(md("d/hard").ino(), md("d/big").ino());
    assert_eq!(md("d/big").mode() & 0o7777, 0o644);
    assert_eq!(md("d/big").mtime(), MTIME as i64);
    // The directory's times are set after the renames into it.
    assert_eq!(md("d").mtime(), MTIME as i64);
    assert_eq!(
        getxattr(&r.join(&long), "user.note").as_deref(),
        Some(&b"kept"[..])
    );
    assert!(!r.join("bad").exists());
    // `d` holds a symlink and a hard link, which are not staged: it was
    // filled entry by entry, not moved.
    assert_eq!(stats.dirs_moved, 0);
    // Only the refused entry's file would stay behind, and it was never
    // staged; `d`'s staged directory is left empty.
    assert_eq!(staged_names(&files), ["0"]);
    assert_eq!(fs::read_dir(files.path().join("0")).unwrap().count(), 0);
    let dir = files.path().to_path_buf();
    let area = dir.parent().unwrap().to_path_buf();
    drop(files);
    assert!(!dir.exists(), "the layer's directory outlived it");
    assert!(
        !area.exists(),
        "the stage directory outlived its last layer"
    );
}

/// A layer staged before the layers below it are applied still replaces
/// and whites out what they leave.
#[test]
fn staged_ahead_of_the_layers_below() {
    let sb = sandbox();
    let mut upper = Tar::new();
    upper
        .file("d/x", "upper")
        .file(".wh.gone", "")
        .file("keep/new", "n");
    let (skeleton, files) = stage(&sb.parent, &upper.bytes(), false, false);
    apply(
        &sb.root,
        Tar::new()
            .dir("d")
            .dir("d/x")
            .file("d/x/inside", "lower")
            .file("gone", "lower")
            .dir("keep")
            .file("keep/old", "o"),
    );
    apply_staged(
        &sb.root,
        std::io::Cursor::new(&skeleton),
        &files,
        &opts(WhiteoutMode::Apply, false),
    )
    .unwrap();
    let r = &sb.root;
    assert_eq!(fs::read_to_string(r.join("d/x")).unwrap(), "upper");
    assert!(!r.join("gone").exists());
    assert_eq!(fs::read_to_string(r.join("keep/old")).unwrap(), "o");
    assert_eq!(fs::read_to_string(r.join("keep/new")).unwrap(), "n");
}

#[test]
fn a_truncated_layer_fails_while_staging_and_leaves_nothing() {
    let sb = sandbox();
    let mut tar = Tar::new().file("a", &"y".repeat(4096)).bytes();
    tar.truncate(512 + 1000);
    let mut skeleton = Vec::new();
    let e = stage_layer(
        &tar[..],
        &StageDir::create_in(&sb.parent).unwrap(),
        &mut skeleton,
        false,
        &opts(WhiteoutMode::Apply, false),
    )
    .unwrap_err();
    let chain = format!(
        "{e}: {}",
        std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(chain.contains("middle of an entry"), "{chain}");
    let left: Vec<_> = fs::read_dir(&sb.parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 3, "a staging directory was left: {left:?}");
}

/// Stages `upper` and applies it onto `root`.
fn stage_and_apply(area: &Path, root: &Path, upper: &mut Tar) -> (ExtractStats, StagedFiles) {
    let (skeleton, files) = stage(area, &upper.bytes(), false, false);
    let stats = apply_staged(
        root,
        std::io::Cursor::new(&skeleton),
        &files,
        &opts(WhiteoutMode::Apply, false),
    )
    .unwrap();
    (stats, files)
}

/// A directory that is new to the target arrives with one rename, and
/// still gets its owner, mode, times and xattrs, and its files theirs.
#[test]
fn a_new_directory_is_moved_into_place_whole() {
    let sb = sandbox();
    let mut t = Tar::new();
    t.raw(EntryType::Directory, "d", "", b"", 0o750)
        .file("d/x", "x")
        .pax(&[("SCHILY.xattr.user.note", b"on a dir")])
        .dir("d/sub")
        .owned(EntryType::Regular, "d/sub/owned", 0o4711, 1234, 5678)
        .raw(EntryType::Directory, "d/sub/deep", "", b"", 0o700)
        .file("d/sub/deep/y", "y")
        .file("top", "t");
    let (stats, files) = stage_and_apply(&sb.parent, &sb.root, &mut t);
    assert_eq!(stats.dirs_moved, 1);
    assert_eq!(stats.entries, 7);
    assert_eq!(stats.bytes, 3);
    let r = &sb.root;
    assert_eq!(fs::read_to_string(r.join("d/x")).unwrap(), "x");
    assert_eq!(fs::read_to_string(r.join("d/sub/deep/y")).unwrap(), "y");
    assert_eq!(fs::read_to_string(r.join("top")).unwrap(), "t");
    let md = |p: &str| fs::symlink_metadata(r.join(p)).unwrap();
    assert_eq!(md("d").mode() & 0o7777, 0o750);
    assert_eq!(md("d/sub/deep").mode() & 0o7777, 0o700);
    // Set after everything was moved in.
    for dir in ["d", "d/sub", "d/sub/deep"] {
        assert_eq!(md(dir).mtime(), MTIME as i64, "{dir}");
    }
    assert_eq!(
        getxattr(&r.join("d/sub"), "user.note").as_deref(),
        Some(&b"on a dir"[..])
    );
    let owned = md("d/sub/owned");
    assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
    assert_eq!(owned.mode() & 0o7777, 0o4711);
    // Nothing is left behind: not a file, not the directory.
    assert_eq!(staged_names(&files), Vec::<String>::new());
}

/// A directory a lower layer made is filled, not replaced; a directory new
/// inside it is still moved whole.
#[test]
fn a_directory_below_is_filled_and_one_new_inside_it_moved() {
    let sb = sandbox();
    apply(&sb.root, Tar::new().dir("d").file("d/old", "o"));
    let mut t = Tar::new();
    t.dir("d")
        .file("d/x", "x")
        .dir("d/new")
        .file("d/new/y", "y");
    let (stats, _files) = stage_and_apply(&sb.parent, &sb.root, &mut t);
    assert_eq!(stats.dirs_moved, 1);
    let r = &sb.root;
    assert_eq!(fs::read_to_string(r.join("d/old")).unwrap(), "o");
    assert_eq!(fs::read_to_string(r.join("d/x")).unwrap(), "x");
    assert_eq!(fs::read_to_string(r.join("d/new/y")).unwrap(), "y");
}

/// An entry that reaches into a new directory through a lower layer's
/// symlink, between that directory's entries, is applied in its turn: the
/// later entry still wins.
#[test]
fn an_entry_between_through_a_symlink_keeps_the_order() {
    let sb = sandbox();
    apply(&sb.root, Tar::new().symlink("s", "d"));
    let mut t = Tar::new();
    t.dir("d")
        .file("d/a", "first")
        .file("s/x", "through the link")
        .file("d/x", "later")
        .file("s/a", "replaces first");
    let (_, _files) = stage_and_apply(&sb.parent, &sb.root, &mut t);
    let r = &sb.root;
    assert_eq!(fs::read_to_string(r.join("d/x")).unwrap(), "later");
    assert_eq!(fs::read_to_string(r.join("d/a")).unwrap(), "replaces first");
}

/// Inside a new directory, a symlink and then a file of the same name: the
/// file is staged, the symlink is not, so the directory is not moved whole
/// and the file, later in the tar, wins.
#[test]
fn an_entry_left_in_the_skeleton_keeps_its_directory_from_moving() {
    let sb = sandbox();
    let mut t = Tar::new();
    t.dir("d")
        .file("d/x", "file")
        .symlink("d/x", "elsewhere")
        .file("d/y", "y")
        .symlink("d/y", "target")
        .file("d/y", "file wins");
    let (stats, _files) = stage_and_apply(&sb.parent, &sb.root, &mut t);
    assert_eq!(stats.dirs_moved, 0);
    let r = &sb.root;
    assert_eq!(
        fs::read_link(r.join("d/x")).unwrap(),
        Path::new("elsewhere")
    );
    assert_eq!(fs::read_to_string(r.join("d/y")).unwrap(), "file wins");
}

/// Entries sorted by whole path, as umoci writes them, put `a-b/` between
/// `a/` and its files: the directory around both still moves whole.
#[test]
fn a_tree_sorted_by_path_still_moves_whole() {
    let sb = sandbox();
    let mut t = Tar::new();
    t.dir("sp")
        .dir("sp/a")
        .dir("sp/a-b")
        .file("sp/a-b/f", "f")
        .file("sp/a/g", "g")
        .dir("sp/a/h")
        .file("sp/a/h/i", "i");
    let (stats, files) = stage_and_apply(&sb.parent, &sb.root, &mut t);
    assert_eq!(stats.dirs_moved, 1);
    let r = &sb.root;
    assert_eq!(fs::read_to_string(r.join("sp/a-b/f")).unwrap(), "f");
    assert_eq!(fs::read_to_string(r.join("sp/a/g")).unwrap(), "g");
    assert_eq!(fs::read_to_string(r.join("sp/a/h/i")).unwrap(), "i");
    assert_eq!(staged_names(&files), Vec::<String>::new());
}

/// Directories nested deep, each with an entry of its own, are staged and
/// applied with a few fds (under RLIMIT_NOFILE at 32): moved whole up to
/// 256 levels of staged directories, filled one by one below that.
#[test]
fn deep_staged_directories_need_few_fds() {
    for (depth, moved) in [(200, 1), (400, 0)] {
        let sb = sandbox();
        let mut t = Tar::new();
        let mut path = String::from("top");
        t.dir(&path);
        for _ in 0..depth {
            path.push_str("/d");
            t.dir(&path);
        }
        let deep = format!("{path}/file");
        t.file(&deep, "at the bottom");
        let tar = t.bytes();
        let (parent, root) = (sb.parent.clone(), sb.root.clone());
        let ok = crate::layer::depth_tests::with_fd_limit(32, || {
            let mut skeleton = Vec::new();
            let opts = opts(WhiteoutMode::Apply, false);
            let Ok(area) = StageDir::create_in(&parent) else {
                return false;
            };
            let Ok(files) = stage_layer(&tar[..], &area, &mut skeleton, false, &opts) else {
                return false;
            };
            apply_staged(&root, std::io::Cursor::new(&skeleton), &files, &opts)
                .is_ok_and(|s| s.dirs_moved == moved)
        });
        assert!(
            ok,
            "depth {depth}: failed under RLIMIT_NOFILE=32, or moved other than {moved}"
        );
        assert_eq!(
            fs::read_to_string(sb.root.join(&deep)).unwrap(),
            "at the bottom"
        );
    }
}
