//! `oci-layout://` layouts written for, and read back from, skopeo and umoci.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::archive::Expect;
use crate::support::images::{
    BuiltImage, Image, ManifestPos, OciLayout, PLATFORMS, SaveStyle, busybox_image_mixed,
    platform_image, registry_manifest, unique_dir, write_docker_save,
};
use crate::support::layer_tar::TarBuilder;
use crate::support::push::{PushFormat, push_built};
use crate::support::runtime::host_platform;
use crate::support::tools::skopeo_ok;
use crate::support::{
    Compression, DockerSave, Output, Registry, TestEnv, assert_clean_failure, run, sha256_hex,
    tar_uri, verify_output,
};

use super::{TOOL_TIMEOUT, assert_same_tree, expand, leftovers, mounts_uri, oci_uri};

fn layout_uri(path: &Path, tag: &str) -> String {
    format!("oci-layout://{}:{tag}", path.display())
}

/// `hex -> bytes` of every blob in a layout, after checking each is named by
/// its sha256 and nothing else sits in `blobs/sha256`.
fn layout_blobs(layout: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut blobs = BTreeMap::new();
    for e in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            e.file_type().unwrap().is_file(),
            "blobs/sha256/{name} is not a file"
        );
        let data = fs::read(e.path()).unwrap();
        assert_eq!(
            sha256_hex(&data),
            name,
            "blobs/sha256/{name} does not hash to its name"
        );
        blobs.insert(name, data);
    }
    blobs
}

fn read_index(layout: &Path) -> Value {
    serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap()
}

/// `tag -> digest` of the index's tagged entries, failing on a repeated tag.
fn index_tags(index: &Value) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    for m in index["manifests"].as_array().expect("manifests") {
        let tag = m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap_or_else(|| panic!("untagged index entry {m}"))
            .to_string();
        let digest = m["digest"].as_str().unwrap().to_string();
        assert!(
            tags.insert(tag.clone(), digest).is_none(),
            "tag {tag} twice in {index}"
        );
    }
    tags
}

/// The layer blob digests and config digest of a manifest.
fn manifest_blobs(manifest: &[u8]) -> (Vec<String>, String) {
    let m: Value = serde_json::from_slice(manifest).unwrap();
    let layers = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    (layers, m["config"]["digest"].as_str().unwrap().to_string())
}

/// The config blob of the image tagged `tag` in a layout.
fn layout_config(layout: &Path, tag: &str) -> Vec<u8> {
    let tags = index_tags(&read_index(layout));
    let manifest = fs::read(layout.join("blobs/sha256").join(&tags[tag][7..])).unwrap();
    let config = manifest_blobs(&manifest).1;
    fs::read(layout.join("blobs/sha256").join(&config[7..])).unwrap()
}

/// `umoci unpack --image IMAGE BUNDLE`; returns the rootfs.
fn umoci_unpack(env: &TestEnv, image: &str) -> PathBuf {
    let bundle = unique_dir(&env.work(""), "umoci").join("bundle");
    let out = run(
        Command::new("umoci")
            .env("TMPDIR", env.tool_tmp())
            .args(["unpack", "--image", image])
            .arg(&bundle),
        TOOL_TIMEOUT,
    );
    assert_eq!(
        out.code,
        Some(0),
        "umoci refuses the layout: {}\n{}",
        out.cmdline,
        out.stderr
    );
    bundle.join("rootfs")
}

/// Pulls `team/app:v1` pushed in `format` into a layout and checks it
/// against the registry, skopeo and umoci.
fn layout_round_trip(format: PushFormat, compressions: [Compression; 3]) {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = busybox_image_mixed(&compressions).build();
    push_built(&env, &reg, "team/app:v1", &built, format);
    let (served, served_digest) = registry_manifest(&env.tool_tmp(), &reg, "team/app", "v1");
    let (served_layers, served_config) = manifest_blobs(&served);
    let layout = env.out("layout");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/app", "v1"),
            &layout_uri(&layout, "v1"),
        ])
        .ok();

    let marker: Value = serde_json::from_slice(&fs::read(layout.join("oci-layout")).unwrap())
        .expect("oci-layout is JSON");
    assert_eq!(marker["imageLayoutVersion"], "1.0.0");
    let index = read_index(&layout);
    assert_eq!(index["schemaVersion"], 2);
    let tags = index_tags(&index);
    assert_eq!(tags.keys().collect::<Vec<_>>(), ["v1"]);
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let blobs = layout_blobs(&layout);
    let manifest_hex = &tags["v1"][7..];
    let manifest = &blobs[manifest_hex];
    assert_eq!(entry["size"], json!(manifest.len()));
    if format != PushFormat::Docker {
        assert_eq!(
            tags["v1"], served_digest,
            "an OCI manifest is kept byte for byte"
        );
    }
    let (layers, config) = manifest_blobs(manifest);
    assert_eq!(layers, served_layers, "the layer blobs are the registry's");
    assert_eq!(config, served_config);
    // Blobs as the registry served them, each once, and nothing else.
    for d in &served_layers {
        assert_eq!(
            blobs[&d[7..]],
            fs::read(reg.blob_data_path(d)).unwrap(),
            "layer blob {d}"
        );
    }
    assert_eq!(blobs[&served_config[7..]], built.config);
    let mut expected: BTreeSet<String> = served_layers.iter().map(|d| d[7..].to_string()).collect();
    expected.insert(served_config[7..].to_string());
    expected.insert(manifest_hex.to_string());
    assert_eq!(blobs.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(leftovers(&layout).is_empty(), "{:?}", leftovers(&layout));
    assert!(leftovers(&layout.join("blobs/sha256")).is_empty());

    // skopeo reads it and copies it out.
    let image = format!("oci:{}:v1", layout.display());
    let inspect: Value =
        serde_json::from_str(&skopeo_ok(&env.tool_tmp(), &["inspect", &image]).stdout).unwrap();
    assert_eq!(inspect["Digest"], json!(tags["v1"]));
    assert_eq!(inspect["Layers"], json!(served_layers));
    let archive = env.work("from-layout.tar");
    skopeo_ok(
        &env.tool_tmp(),
        &[
            "copy",
            "-q",
            &image,
            &format!("docker-archive:{}:team/app:v1", archive.display()),
        ],
    );
    let ds = DockerSave::read(&archive);
    assert_eq!(ds.diff_ids(0), built.diff_ids);
    assert_eq!(ds.config_bytes(0), built.config.as_slice());

    // umoci unpacks it to the rootfs occystrap expands.
    let theirs = umoci_unpack(&env, &format!("{}:v1", layout.display()));
    assert_same_tree(
        &expand(&env, &reg, "team/app", "v1"),
        &theirs,
        "dir://?expand=true",
        "umoci unpack",
    );
}

#[test]
fn oci_layout_from_docker_manifest_is_read_by_skopeo_and_umoci() {
    layout_round_trip(PushFormat::Docker, [Compression::Gzip; 3]);
}

#[test]
fn oci_layout_keeps_oci_manifest_and_raw_layers() {
    layout_round_trip(
        PushFormat::Preserve,
        [Compression::Gzip, Compression::None, Compression::Gzip],
    );
}

/// The second image of the shared-blob test: the first one's base layer,
/// and a layer of its own.
fn image_sharing_the_base() -> BuiltImage {
    let base = TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/base.txt", 0o644, b"shared base layer\n")
        .finish();
    Image::new(host_platform())
        .layer(base, Compression::Gzip)
        .layer(
            TarBuilder::new()
                .dir("etc", 0o755)
                .file("etc/b", 0o644, b"image b\n")
                .finish(),
            Compression::Gzip,
        )
        .build()
}

/// The names of the blobs in a layout.
fn layout_blob_names(layout: &Path) -> BTreeSet<String> {
    layout_blobs(layout).keys().cloned().collect()
}

/// Pulling a tag again replaces its entry; so does pointing it elsewhere.
fn assert_tags_replaced(
    pull: &dyn Fn(&str, &str) -> Output,
    layout: &Path,
    b_digest: &str,
    expected_blobs: &BTreeSet<String>,
) {
    let out = pull("team/a", "a");
    assert!(out.stderr.contains("2 already present"), "{}", out.stderr);
    assert_eq!(read_index(layout)["manifests"].as_array().unwrap().len(), 2);
    pull("team/b", "a");
    let tags = index_tags(&read_index(layout));
    assert_eq!(
        tags,
        BTreeMap::from([
            ("a".into(), b_digest.to_string()),
            ("b".into(), b_digest.to_string())
        ])
    );
    assert_eq!(
        layout_blob_names(layout),
        *expected_blobs,
        "blobs are kept (garbage collection is left to the user)"
    );
}

#[test]
fn oci_layout_shares_blobs_and_replaces_tags() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let a = platform_image(host_platform(), Compression::Gzip).build();
    let b = image_sharing_the_base();
    assert_eq!(
        a.layers[0].digest, b.layers[0].digest,
        "the images share their base layer blob"
    );
    push_built(&env, &reg, "team/a:v1", &a, PushFormat::Oci);
    push_built(&env, &reg, "team/b:v1", &b, PushFormat::Oci);
    let (_, a_digest) = registry_manifest(&env.tool_tmp(), &reg, "team/a", "v1");
    let (_, b_digest) = registry_manifest(&env.tool_tmp(), &reg, "team/b", "v1");
    let layout = env.out("layout");
    let pull = |repo: &str, tag: &str| {
        env.occy()
            .args([
                "--insecure",
                "process",
                &reg.uri(repo, "v1"),
                &layout_uri(&layout, tag),
            ])
            .ok()
    };
    pull("team/a", "a");
    let out = pull("team/b", "b");
    assert!(
        out.stderr.contains("1 fetched, 1 already present"),
        "the shared blob is not fetched again: {}",
        out.stderr
    );
    let expected_blobs: BTreeSet<String> = [
        &a.layers[0].digest,
        &a.layers[1].digest,
        &b.layers[1].digest,
        &a.config_digest,
        &b.config_digest,
        &a_digest,
        &b_digest,
    ]
    .iter()
    .map(|d| d[7..].to_string())
    .collect();
    let tags = index_tags(&read_index(&layout));
    assert_eq!(
        tags,
        BTreeMap::from([
            ("a".into(), a_digest.clone()),
            ("b".into(), b_digest.clone())
        ])
    );
    assert_eq!(layout_blob_names(&layout), expected_blobs);

    assert_tags_replaced(&pull, &layout, &b_digest, &expected_blobs);
    for tag in ["a", "b"] {
        skopeo_ok(
            &env.tool_tmp(),
            &["inspect", &format!("oci:{}:{tag}", layout.display())],
        );
    }
    assert!(leftovers(&layout).is_empty(), "{:?}", leftovers(&layout));
}

/// `process oci-layout://LAYOUT:TAG tar://OUT` and the usual checks of a
/// docker-save output (skopeo inspect and copy, podman load).
fn layout_to_tar(
    env: &TestEnv,
    layout: &Path,
    tag: &str,
    expect: &Expect,
    podman_tag: Option<&str>,
) -> DockerSave {
    let out = unique_dir(&env.work(""), "tar").join("image.tar");
    env.occy()
        .args(["process", &layout_uri(layout, tag), &tar_uri(&out)])
        .ok();
    verify_output(env, &out, expect, podman_tag)
}

#[test]
fn oci_layout_source_reads_skopeo_and_harness_layouts() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = busybox_image_mixed(&[Compression::Gzip; 3]).build();
    push_built(&env, &reg, "team/app:v1", &built, PushFormat::Docker);
    // skopeo's own layout of the registry image.
    // A directory name that is no repository name: the image is named
    // `skopeo-layout` in the output, which podman loads.
    let skopeo_layout = env.work("Skopeo Layout");
    skopeo_ok(
        &env.tool_tmp(),
        &[
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{}/team/app:v1", reg.host()),
            &format!("oci:{}:latest", skopeo_layout.display()),
        ],
    );
    // Converting the Docker manifest to OCI, skopeo re-serialises the
    // config: the layout's own config is the one to expect.
    let config = layout_config(&skopeo_layout, "latest");
    let ds = layout_to_tar(
        &env,
        &skopeo_layout,
        "latest",
        &Expect::default()
            .config(&config)
            .diff_ids(&built.diff_ids)
            .tags(&["skopeo-layout:latest"]),
        Some("localhost/skopeo-layout:latest"),
    );
    assert_eq!(
        ds.find_in_layers("etc/hostname").as_deref(),
        Some(&b"occystrap-test\n"[..])
    );

    // The harness's layout: a plain, a gzip and a zstd layer.
    let mixed =
        busybox_image_mixed(&[Compression::None, Compression::Gzip, Compression::Zstd]).build();
    let harness_layout = env.work("harness-layout");
    OciLayout::create(&harness_layout).add_image("mixed", &mixed);
    layout_to_tar(
        &env,
        &harness_layout,
        "mixed",
        &Expect::default()
            .config(&mixed.config)
            .diff_ids(&mixed.diff_ids)
            .tags(&["harness-layout:mixed"]),
        None,
    );
    // A ref.name that is a full reference names the image itself.
    let named = env.work("named");
    OciLayout::create(&named).add_image("example.com/team/app:v2", &mixed);
    let out = env.work("named.tar");
    env.occy()
        .args([
            "process",
            &format!("oci-layout://{}", named.display()),
            &tar_uri(&out),
        ])
        .ok();
    verify_output(
        &env,
        &out,
        &Expect::default().tags(&["example.com/team/app:v2"]),
        None,
    );
    // Into a layout and back: the same manifest, byte for byte.
    let copy = env.out("copy");
    env.occy()
        .args([
            "process",
            &layout_uri(&harness_layout, "mixed"),
            &layout_uri(&copy, "again"),
        ])
        .ok();
    assert_eq!(
        index_tags(&read_index(&copy))["again"],
        mixed.manifest_digest
    );
    let blobs = layout_blobs(&copy);
    for l in &mixed.layers {
        assert_eq!(blobs[&l.digest[7..]], l.blob, "blob {}", l.digest);
    }
}

#[test]
fn oci_layout_source_reads_umoci_layout() {
    let env = TestEnv::new();
    let layout = env.work("umoci-layout");
    let umoci = |args: &[&str]| {
        run(
            Command::new("umoci")
                .env("TMPDIR", env.tool_tmp())
                .args(args),
            TOOL_TIMEOUT,
        )
        .expect_ok()
    };
    let l = layout.display().to_string();
    umoci(&["init", "--layout", &l]);
    umoci(&["new", "--image", &format!("{l}:base")]);
    let bundle = env.work("umoci-bundle");
    umoci(&[
        "unpack",
        "--image",
        &format!("{l}:base"),
        &bundle.display().to_string(),
    ]);
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(rootfs.join("etc/app")).unwrap();
    fs::write(rootfs.join("etc/app/hello"), b"written under umoci\n").unwrap();
    std::os::unix::fs::symlink("app/hello", rootfs.join("etc/hello-link")).unwrap();
    umoci(&[
        "repack",
        "--image",
        &format!("{l}:v1"),
        &bundle.display().to_string(),
    ]);
    umoci(&[
        "config",
        "--image",
        &format!("{l}:v1"),
        "--config.env",
        "FOO=bar",
    ]);
    let config = layout_config(&layout, "v1");
    let ds = layout_to_tar(
        &env,
        &layout,
        "v1",
        &Expect::default().config(&config),
        None,
    );
    assert_eq!(
        ds.find_in_layers("etc/app/hello").as_deref(),
        Some(&b"written under umoci\n"[..])
    );
    assert!(
        ds.config(0)["config"]["Env"]
            .as_array()
            .unwrap()
            .contains(&json!("FOO=bar"))
    );
}

#[test]
fn oci_layout_source_reads_docker_save_dirs_and_sloppy_layouts() {
    let env = TestEnv::new();
    let built = busybox_image_mixed(&[Compression::Gzip; 3]).build();
    // Docker 25+'s `docker save`, unpacked, is a layout whose ref.name is a
    // bare tag and whose io.containerd.image.name is the full name.
    let saved = env.work("saved.tar");
    write_docker_save(
        &saved,
        &[(&built, vec!["team/app:v1".to_string()])],
        SaveStyle::Docker25,
        ManifestPos::Sorted,
    );
    let unpacked = env.work("unpacked");
    fs::create_dir_all(&unpacked).unwrap();
    run(
        Command::new("tar")
            .arg("-xf")
            .arg(&saved)
            .arg("-C")
            .arg(&unpacked),
        TOOL_TIMEOUT,
    )
    .expect_ok();
    layout_to_tar(
        &env,
        &unpacked,
        "v1",
        &Expect::default()
            .tags(&["team/app:v1"])
            .config(&built.config)
            .diff_ids(&built.diff_ids),
        Some("localhost/team/app:v1"),
    );

    // Descriptors without mediaType (the spec wants one; some writers
    // leave it out): the document says what it is.
    let sloppy = env.work("sloppy");
    OciLayout::create(&sloppy).add_image("t", &built);
    let mut index = read_index(&sloppy);
    index["manifests"][0]
        .as_object_mut()
        .unwrap()
        .remove("mediaType");
    fs::write(
        sloppy.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    layout_to_tar(
        &env,
        &sloppy,
        "t",
        &Expect::default().diff_ids(&built.diff_ids),
        None,
    );

    // A FIFO where a blob should be fails at once instead of hanging.
    let blob = sloppy
        .join("blobs/sha256")
        .join(&built.layers[2].digest[7..]);
    fs::remove_file(&blob).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &blob,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let out = env
        .occy()
        .args([
            "process",
            &layout_uri(&sloppy, "t"),
            &tar_uri(&env.out("x.tar")),
        ])
        .run();
    assert!(
        out.elapsed < Duration::from_secs(60),
        "took {:?}",
        out.elapsed
    );
    assert_clean_failure(&env, &out, &["not a regular file"]);
}

#[test]
fn oci_layout_source_picks_the_platform() {
    let env = TestEnv::new();
    let layout = env.work("multi");
    let imgs: Vec<BuiltImage> = PLATFORMS
        .iter()
        .map(|p| platform_image(p, Compression::Gzip).build())
        .collect();
    OciLayout::create(&layout).add_index("multi", &imgs);
    let platform_of = |args: &[&str], uri: &str| -> String {
        let out = unique_dir(&env.work(""), "tar").join("image.tar");
        env.occy()
            .args(args)
            .args(["process", uri, &tar_uri(&out)])
            .ok();
        let ds = DockerSave::read(&out);
        String::from_utf8(ds.find_in_layers("etc/platform").unwrap()).unwrap()
    };
    let uri = layout_uri(&layout, "multi");
    assert_eq!(
        platform_of(&["--architecture", "arm64"], &uri),
        "linux/arm64/v8\n"
    );
    assert_eq!(
        platform_of(&["--architecture", "arm", "--variant", "v7"], &uri),
        "linux/arm/v7\n"
    );
    assert_eq!(
        platform_of(&["--architecture", "arm64"], &format!("{uri}?arch=amd64")),
        "linux/amd64\n",
        "the URI's arch= overrides the flag"
    );
    let out = env
        .occy()
        .args([
            "--architecture",
            "s390x",
            "process",
            &uri,
            &tar_uri(&env.out("x.tar")),
        ])
        .run();
    let line = assert_clean_failure(&env, &out, &["platform"]);
    assert!(
        PLATFORMS.iter().all(|p| line.contains(p)),
        "the error lists the platforms offered: {line}"
    );
    // The chosen image's manifest is verified and kept into a layout.
    let copy = env.out("copy");
    env.occy()
        .args([
            "--architecture",
            "arm64",
            "process",
            &uri,
            &layout_uri(&copy, "arm64"),
        ])
        .ok();
    assert_eq!(
        index_tags(&read_index(&copy))["arm64"],
        imgs[2].manifest_digest
    );
}

#[test]
fn oci_layout_source_wrong_tag_lists_tags() {
    let env = TestEnv::new();
    let layout = env.work("layout");
    let mut l = OciLayout::create(&layout);
    l.add_image(
        "first",
        &crate::support::images::tiny_image("a", "a").build(),
    );
    l.add_image(
        "second",
        &crate::support::images::tiny_image("b", "b").build(),
    );
    let out = env
        .occy()
        .args([
            "process",
            &layout_uri(&layout, "nope"),
            &tar_uri(&env.out("x.tar")),
        ])
        .run();
    let line = assert_clean_failure(&env, &out, &["nope"]);
    assert!(
        line.contains("first") && line.contains("second"),
        "the error lists the tags: {line}"
    );
    // Without a tag, a layout of two images is ambiguous.
    let out = env
        .occy()
        .args([
            "process",
            &format!("oci-layout://{}", layout.display()),
            &tar_uri(&env.out("x.tar")),
        ])
        .run();
    let line = assert_clean_failure(&env, &out, &["first"]);
    assert!(line.contains("second"), "{line}");
}

fn flip_byte(path: &Path, offset: usize) {
    let mut data = fs::read(path).unwrap();
    data[offset] ^= 0xff;
    fs::write(path, data).unwrap();
}

#[test]
fn oci_layout_corrupt_blob_fails_without_output() {
    let env = TestEnv::new();
    let built = busybox_image_mixed(&[Compression::Gzip; 3]).build();
    let layout = env.work("layout");
    OciLayout::create(&layout).add_image("t", &built);
    let blob = |d: &str| layout.join("blobs/sha256").join(&d[7..]);
    // A layer blob with one byte changed: every kind of output refuses it
    // and none is left behind.
    let layer = blob(&built.layers[1].digest);
    flip_byte(&layer, 100);
    let src = layout_uri(&layout, "t");
    for dest in [
        tar_uri(&env.out("image.tar")),
        format!("oci-layout://{}:t", env.out("layout").display()),
        oci_uri(&env.out("bundle"), ""),
        mounts_uri(&env.out("mounts"), ""),
    ] {
        let out = env.occy().args(["process", &src, &dest]).run();
        let line = assert_clean_failure(&env, &out, &["digest"]);
        assert!(
            line.contains(&built.layers[1].digest),
            "the error names the blob: {line}"
        );
    }
    flip_byte(&layer, 100);
    // The config, and the manifest, are checked as well.
    for (what, d) in [
        ("config", &built.config_digest),
        ("manifest", &built.manifest_digest),
    ] {
        flip_byte(&blob(d), 5);
        let out = env
            .occy()
            .args(["process", &src, &tar_uri(&env.out("image.tar"))])
            .run();
        let line = assert_clean_failure(&env, &out, &["digest"]);
        assert!(line.contains(&d[7..]), "the {what} is named: {line}");
        flip_byte(&blob(d), 5);
    }
    // Restored, it goes through.
    env.occy()
        .args(["process", &src, &tar_uri(&env.out("image.tar"))])
        .ok();
}

#[test]
fn oci_layout_output_left_nothing_after_failed_pull() {
    let env = TestEnv::new();
    let reg = Registry::start();
    push_built(
        &env,
        &reg,
        "team/app:v1",
        &crate::support::images::tiny_image("a", "a").build(),
        PushFormat::Oci,
    );
    // A tag the registry lacks: the layout (and the other directory
    // outputs) must not appear.
    for dest in [
        layout_uri(&env.out("layout"), "v2"),
        mounts_uri(&env.out("mounts"), ""),
        oci_uri(&env.out("bundle"), ""),
    ] {
        let out = env
            .occy()
            .args(["--insecure", "process", &reg.uri("team/app", "v2"), &dest])
            .run();
        assert_clean_failure(&env, &out, &["not found", "unknown", "v2"]);
    }
    // A directory that is neither empty nor a layout is not written into.
    let other = env.work("not-a-layout");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("notes.txt"), b"mine\n").unwrap();
    let out = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/app", "v1"),
            &layout_uri(&other, "v1"),
        ])
        .run();
    assert_ne!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("is not empty and not an OCI layout (it has no oci-layout file); refusing"),
        "{}",
        out.stderr
    );
    assert_eq!(crate::support::dir_entries(&other), ["notes.txt"]);
    // An empty one is.
    let empty = env.work("empty");
    fs::create_dir_all(&empty).unwrap();
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/app", "v1"),
            &layout_uri(&empty, "v1"),
        ])
        .ok();
    skopeo_ok(
        &env.tool_tmp(),
        &["inspect", &format!("oci:{}:v1", empty.display())],
    );
}
