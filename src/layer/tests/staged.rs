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
    // next entry) long, link, hard, empty, bad, after.
    assert_eq!(staged_names(&files), ["1", "2", "5", "7"]);
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
    assert_eq!(fs::read(files.path().join("1")).unwrap(), big.as_bytes());
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
    // Only the refused entry's file would stay behind, and it was never staged.
    assert!(staged_names(&files).is_empty());
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
