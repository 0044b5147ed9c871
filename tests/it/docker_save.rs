//! docker-save tarball -> docker-save tarball: every generation of the
//! input format (skopeo's docker-archive, Docker < 25, Docker 25+),
//! member order, the real fixtures, and `?image=` selection.

use std::path::Path;

use crate::support::archive::Expect;
use crate::support::images::{
    BuiltImage, ManifestPos, SaveStyle, busybox_image, tiny_image, unique_dir, write_docker_save,
};
use crate::support::push::{PushFormat, push_busybox};
use crate::support::tools::{podman_load, skopeo_inspect_archive, skopeo_ok};
use crate::support::{
    Compression, DockerSave, OciLayout, Registry, TestEnv, assert_clean_failure, fixtures_dir,
    tar_uri, verify_output,
};

const TAG: &str = "example.com/team/app:v1";

/// Runs `process tar://IN[query] tar://OUT` and checks OUT against image
/// `idx` of IN: same config bytes, same diff_ids, `tags` as RepoTags when
/// given, and the peers can read it (podman too when there is a tag).
fn convert_and_check(
    env: &TestEnv,
    input: &Path,
    query: &str,
    idx: usize,
    tags: Option<&[&str]>,
) -> DockerSave {
    let src = DockerSave::read(input);
    src.assert_diff_ids_match();
    let out = unique_dir(&env.out_dir(), "o").join("image.tar");
    env.occy()
        .args([
            "process",
            &format!("{}{query}", tar_uri(input)),
            &tar_uri(&out),
        ])
        .ok();
    let mut exp = Expect::default()
        .config(src.config_bytes(idx))
        .diff_ids(&src.diff_ids(idx));
    if let Some(t) = tags {
        exp = exp.tags(t);
    }
    verify_output(env, &out, &exp, tags.and_then(|t| t.first().copied()))
}

fn hand_built(
    env: &TestEnv,
    style: SaveStyle,
    pos: ManifestPos,
) -> (std::path::PathBuf, BuiltImage) {
    let built = busybox_image(Compression::None).build();
    let path = env.work(&format!("{style:?}-{pos:?}.tar"));
    write_docker_save(&path, &[(&built, vec![TAG.to_string()])], style, pos);
    (path, built)
}

fn member_order(path: &Path) -> Vec<String> {
    DockerSave::read(path).members
}

#[test]
fn harness_hand_built_archives_load_in_peers() {
    let env = TestEnv::new();
    for (style, pos) in [
        (SaveStyle::Legacy, ManifestPos::Sorted),
        (SaveStyle::Legacy, ManifestPos::Last),
        (SaveStyle::Docker25, ManifestPos::Sorted),
        (SaveStyle::Docker25, ManifestPos::First),
    ] {
        let (path, built) = hand_built(&env, style, pos);
        let ds = DockerSave::read(&path);
        ds.assert_diff_ids_match();
        assert_eq!(ds.config_bytes(0), built.config.as_slice());
        let insp = skopeo_inspect_archive(&env.tool_tmp(), &path);
        assert_eq!(insp["Layers"][0], built.diff_ids[0].as_str(), "{style:?}");
        let state = unique_dir(&env.work("podman"), "state");
        podman_load(&state, &path, Some(TAG));
    }
    let (path, _) = hand_built(&env, SaveStyle::Legacy, ManifestPos::Last);
    assert_eq!(member_order(&path).last().unwrap(), "manifest.json");
}

#[test]
fn harness_output_checker_rejects_other_shapes() {
    // The checker must not pass archives that break the output contract:
    // skopeo's `<diff_id>.tar` layers, Docker's v1-id directories, Docker
    // 25's blobs/sha256 paths.
    let env = TestEnv::new();
    let built = busybox_image(Compression::Gzip).build();
    let dir = env.work("layout");
    let mut layout = OciLayout::create(&dir);
    layout.add_image("t", &built);
    let skopeo_tar = env.work("skopeo.tar");
    skopeo_ok(
        &env.tool_tmp(),
        &[
            "copy",
            "-q",
            &format!("oci:{}:t", dir.display()),
            &format!("docker-archive:{}:{TAG}", skopeo_tar.display()),
        ],
    );
    let (legacy, _) = hand_built(&env, SaveStyle::Legacy, ManifestPos::Sorted);
    let (d25, _) = hand_built(&env, SaveStyle::Docker25, ManifestPos::Sorted);
    for path in [&skopeo_tar, &legacy, &d25] {
        let ds = DockerSave::read(path);
        ds.assert_diff_ids_match();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ds.assert_occystrap_output(&Expect::default())
        }));
        assert!(r.is_err(), "{} passed the output checker", path.display());
    }
}

#[test]
fn skopeo_docker_archive_input() {
    let env = TestEnv::new();
    let built = busybox_image(Compression::Gzip).build();
    let dir = env.work("layout");
    let mut layout = OciLayout::create(&dir);
    layout.add_image("t", &built);
    let input = env.work("skopeo.tar");
    skopeo_ok(
        &env.tool_tmp(),
        &[
            "copy",
            "-q",
            &format!("oci:{}:t", dir.display()),
            &format!("docker-archive:{}:{TAG}", input.display()),
        ],
    );
    let ds = convert_and_check(&env, &input, "", 0, Some(&[TAG]));
    assert_eq!(ds.config_bytes(0), built.config.as_slice());
    assert_eq!(ds.diff_ids(0), built.true_diff_ids());
}

#[test]
fn docker_legacy_layout_input() {
    let env = TestEnv::new();
    let (input, built) = hand_built(&env, SaveStyle::Legacy, ManifestPos::Sorted);
    let ds = convert_and_check(&env, &input, "", 0, Some(&[TAG]));
    assert_eq!(ds.config_bytes(0), built.config.as_slice());
}

#[test]
fn docker25_oci_layout_input() {
    let env = TestEnv::new();
    let (input, built) = hand_built(&env, SaveStyle::Docker25, ManifestPos::Sorted);
    let ds = convert_and_check(&env, &input, "", 0, Some(&[TAG]));
    assert_eq!(ds.config_bytes(0), built.config.as_slice());
}

#[test]
fn manifest_json_last_member() {
    let env = TestEnv::new();
    for style in [SaveStyle::Legacy, SaveStyle::Docker25] {
        let (input, _) = hand_built(&env, style, ManifestPos::Last);
        assert_eq!(member_order(&input).last().unwrap(), "manifest.json");
        convert_and_check(&env, &input, "", 0, Some(&[TAG]));
    }
}

#[test]
fn manifest_json_first_member() {
    let env = TestEnv::new();
    let (input, _) = hand_built(&env, SaveStyle::Legacy, ManifestPos::First);
    assert_eq!(member_order(&input)[0], "manifest.json");
    convert_and_check(&env, &input, "", 0, Some(&[TAG]));
}

#[test]
fn own_output_round_trips() {
    // registry -> tar -> tar: the second conversion changes nothing.
    let env = TestEnv::new();
    let reg = Registry::start();
    push_busybox(&env, &reg, PushFormat::Docker);
    let first = env.out("first.tar");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/app", "v1"),
            &tar_uri(&first),
        ])
        .ok();
    let tag = format!("{}/team/app:v1", reg.host());
    let second = convert_and_check(&env, &first, "", 0, Some(&[&tag]));
    assert_eq!(DockerSave::read(&first).files, second.files);
}

// ---------------------------------------------------------------------------
// Several images in one tarball

fn multi_image_tar(env: &TestEnv, style: SaveStyle) -> (std::path::PathBuf, Vec<BuiltImage>) {
    let imgs: Vec<BuiltImage> = [("one", "first"), ("two", "second"), ("three", "third")]
        .iter()
        .map(|(n, c)| tiny_image(&format!("{n}.txt"), c).build())
        .collect();
    let path = env.work(&format!("multi-{style:?}.tar"));
    write_docker_save(
        &path,
        &[
            (&imgs[0], vec!["example.com/team/one:v1".into()]),
            (
                &imgs[1],
                vec!["example.com/team/two:v2".into(), "localhost/alias:x".into()],
            ),
            (&imgs[2], vec!["localhost/three:latest".into()]),
        ],
        style,
        ManifestPos::Sorted,
    );
    (path, imgs)
}

#[test]
fn multi_image_select_by_name() {
    let env = TestEnv::new();
    for style in [SaveStyle::Legacy, SaveStyle::Docker25] {
        let (input, imgs) = multi_image_tar(&env, style);
        let ds = convert_and_check(
            &env,
            &input,
            "?image=example.com/team/two:v2",
            1,
            Some(&["example.com/team/two:v2"]),
        );
        assert_eq!(ds.config_bytes(0), imgs[1].config.as_slice());
        assert_eq!(
            ds.find_in_layers("two.txt").as_deref(),
            Some(&b"second"[..])
        );
        // The second tag of the same image selects it too.
        let ds = convert_and_check(
            &env,
            &input,
            "?image=localhost/alias:x",
            1,
            Some(&["localhost/alias:x"]),
        );
        assert_eq!(ds.config_bytes(0), imgs[1].config.as_slice());
        let ds = convert_and_check(
            &env,
            &input,
            "?image=localhost/three:latest",
            2,
            Some(&["localhost/three:latest"]),
        );
        assert_eq!(
            ds.find_in_layers("three.txt").as_deref(),
            Some(&b"third"[..])
        );
    }
}

#[test]
fn multi_image_wrong_name_lists_the_others() {
    let env = TestEnv::new();
    let (input, _) = multi_image_tar(&env, SaveStyle::Legacy);
    let out = env.out("x.tar");
    let run = env
        .occy()
        .args([
            "process",
            &format!("{}?image=example.com/team/nope:v9", tar_uri(&input)),
            &tar_uri(&out),
        ])
        .run();
    let line = assert_clean_failure(&env, &run, &["nope"]);
    for t in [
        "example.com/team/one:v1",
        "example.com/team/two:v2",
        "localhost/three:latest",
    ] {
        assert!(line.contains(t), "error should list {t}: {line}");
    }
}

// ---------------------------------------------------------------------------
// Real docker-save tarballs (go-containerregistry test data)

fn fixture(name: &str) -> std::path::PathBuf {
    let p = fixtures_dir().join(name);
    assert!(
        p.is_file(),
        "fixture {} missing (shared/ must sit beside the repo)",
        p.display()
    );
    p
}

#[test]
fn fixture_hello_world_docker25() {
    let env = TestEnv::new();
    convert_and_check(&env, &fixture("hello-world-v25.tar"), "", 0, None);
}

#[test]
fn fixture_test_image_1_legacy() {
    let env = TestEnv::new();
    convert_and_check(
        &env,
        &fixture("test_image_1.tar"),
        "",
        0,
        Some(&["bazel/v1/tarball:test_image_1"]),
    );
}

#[test]
fn fixture_test_bundle_select_each_image() {
    let env = TestEnv::new();
    let input = fixture("test_bundle.tar");
    // RepoTags in this file carry no tag ("test_image_2"); select by that name.
    convert_and_check(&env, &input, "?image=test_image_2", 0, None);
    convert_and_check(&env, &input, "?image=test_image_1", 1, None);
}

#[test]
fn fixture_test_link_shared_layers() {
    let env = TestEnv::new();
    let input = fixture("test_link.tar");
    convert_and_check(
        &env,
        &input,
        "?image=bazel/v1/tarball:test_image_1",
        0,
        Some(&["bazel/v1/tarball:test_image_1"]),
    );
    // test_image_3's first layer.tar is a symlink to test_image_1's.
    convert_and_check(
        &env,
        &input,
        "?image=bazel/v1/tarball:test_image_3",
        1,
        Some(&["bazel/v1/tarball:test_image_3"]),
    );
}

#[test]
fn fixture_whiteout_image() {
    let env = TestEnv::new();
    convert_and_check(
        &env,
        &fixture("whiteout_image.tar"),
        "",
        0,
        Some(&["bazel/pkg/v1/mutate:whiteout_image"]),
    );
}

#[test]
fn fixture_overwritten_file() {
    let env = TestEnv::new();
    convert_and_check(
        &env,
        &fixture("overwritten_file.tar"),
        "",
        0,
        Some(&["bazel/pkg/v1/mutate:overwritten_file"]),
    );
}
