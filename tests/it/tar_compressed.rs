//! `tar://FILE?layers=compressed`: each layer's blob stored as the source
//! serves it (gzip, zstd, or a plain tar where the source holds one), the
//! config byte for byte; read by podman, skopeo and our own `tar://`
//! source; a blob that fails its digest leaves nothing.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use crate::support::images::{BuiltImage, busybox_image, busybox_image_mixed, unique_dir};
use crate::support::push::{PushFormat, push_busybox, push_image};
use crate::support::tools::{
    podman_in, podman_load, skopeo_copy_archive_to_oci, skopeo_inspect_archive,
};
use crate::support::{
    Compression, DockerSave, Registry, TestEnv, assert_clean_failure, run, sha256_digest, tar_uri,
};

const REPO: &str = "team/app";

fn compressed_uri(path: &Path) -> String {
    format!("{}?layers=compressed", tar_uri(path))
}

/// `process registry://…/team/app:v1 DST`.
fn pull(env: &TestEnv, reg: &Registry, dst: &str) {
    env.occy()
        .args(["--insecure", "process", &reg.uri(REPO, "v1"), dst])
        .ok();
}

/// The member name a blob is stored under.
fn member_for(digest: &str, compression: Compression) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap();
    match compression {
        Compression::Gzip => format!("{hex}.tar.gz"),
        Compression::Zstd => format!("{hex}.tar.zst"),
        Compression::None => format!("{hex}.tar"),
    }
}

/// The tarball's layout: each layer is the registry's blob under its
/// digest, the config is the source's bytes, every header has mtime 0 and
/// owner 0:0, and no `repositories` (it would name a layer directory).
fn assert_blobs_stored(reg: &Registry, out: &Path, built: &BuiltImage) -> DockerSave {
    let ds = DockerSave::read(out);
    assert_eq!(ds.manifest.len(), 1);
    let entry = &ds.manifest[0];
    assert_eq!(ds.config_bytes(0), built.config.as_slice());
    assert_eq!(
        entry.config,
        format!(
            "{}.json",
            built.config_digest.strip_prefix("sha256:").unwrap()
        )
    );
    assert_eq!(ds.diff_ids(0), built.diff_ids);
    assert_eq!(entry.layers.len(), built.layers.len());
    for (name, layer) in entry.layers.iter().zip(&built.layers) {
        assert_eq!(name, &member_for(&layer.digest, layer.compression));
        let stored = ds.file(name);
        assert_eq!(sha256_digest(stored), layer.digest, "{name}");
        assert_eq!(stored, fs::read(reg.blob_data_path(&layer.digest)).unwrap());
    }
    let mut expected: Vec<String> = entry.layers.clone();
    expected.extend([entry.config.clone(), "manifest.json".into()]);
    assert_eq!(ds.members, expected);

    let mut archive = tar::Archive::new(fs::File::open(out).unwrap());
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_eq!(h.mode().unwrap(), 0o644);
    }
    ds
}

/// `podman load` into private storage, then the loaded image's layers.
fn podman_load_layers(env: &TestEnv, out: &Path, tag: &str) -> Vec<String> {
    let state = unique_dir(&env.work("podman"), "state");
    podman_load(&state, out, Some(tag));
    let mut inspect = podman_in(
        &state,
        &[
            "image",
            "inspect",
            "--format",
            "{{json .RootFS.Layers}}",
            tag,
        ],
    );
    let got = run(&mut inspect, Duration::from_secs(120)).expect_ok();
    serde_json::from_str(got.stdout.trim()).expect("podman prints the layers as JSON")
}

fn tag(reg: &Registry) -> String {
    format!("{}/{REPO}:v1", reg.host())
}

#[test]
fn gzip_layers_go_as_served_and_load_in_podman_and_skopeo() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = push_busybox(&env, &reg, PushFormat::Docker);
    let out = env.out("image.tar");
    pull(&env, &reg, &compressed_uri(&out));
    assert_blobs_stored(&reg, &out, &built);

    let insp = skopeo_inspect_archive(&env.tool_tmp(), &out);
    assert_eq!(insp["Layers"], serde_json::json!(built.diff_ids));
    let oci = unique_dir(&env.work("skopeo-oci"), "oci");
    skopeo_copy_archive_to_oci(&env.tool_tmp(), &out, &oci);
    assert_eq!(podman_load_layers(&env, &out, &tag(&reg)), built.diff_ids);

    // Reproducible: the same image gives the same bytes.
    let again = env.out("again.tar");
    pull(&env, &reg, &compressed_uri(&again));
    assert_eq!(fs::read(&out).unwrap(), fs::read(&again).unwrap());
}

#[test]
fn zstd_and_plain_layers_go_as_served() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let img = busybox_image_mixed(&[Compression::Zstd, Compression::Gzip, Compression::None]);
    let built = push_image(&env, &reg, "team/app:v1", &img, PushFormat::Preserve);
    let out = env.out("image.tar");
    pull(&env, &reg, &compressed_uri(&out));
    assert_blobs_stored(&reg, &out, &built);

    // skopeo and podman (containers/image) sniff zstd members too.
    let insp = skopeo_inspect_archive(&env.tool_tmp(), &out);
    assert_eq!(insp["Layers"], serde_json::json!(built.diff_ids));
    let oci = unique_dir(&env.work("skopeo-oci"), "oci");
    skopeo_copy_archive_to_oci(&env.tool_tmp(), &out, &oci);
    assert_eq!(podman_load_layers(&env, &out, &tag(&reg)), built.diff_ids);
}

/// Our `tar://` source reads the compressed-layer tarball back, and the
/// default tarball made from it is the one the registry gives.
#[test]
fn reads_back_as_the_default_tarball() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let img = busybox_image_mixed(&[Compression::Zstd, Compression::Gzip, Compression::None]);
    push_image(&env, &reg, "team/app:v1", &img, PushFormat::Preserve);
    let compressed = env.out("compressed.tar");
    pull(&env, &reg, &compressed_uri(&compressed));
    let direct = env.out("direct.tar");
    pull(&env, &reg, &tar_uri(&direct));
    let plain = env.out("plain.tar");
    env.occy()
        .args(["process", &tar_uri(&compressed), &tar_uri(&plain)])
        .ok();
    assert_eq!(fs::read(&plain).unwrap(), fs::read(&direct).unwrap());

    // And back again: a docker-save source's uncompressed members go as
    // they are, named by their digest (their diff_id).
    let again = env.out("again.tar");
    env.occy()
        .args(["process", &tar_uri(&plain), &compressed_uri(&again)])
        .ok();
    let ds = DockerSave::read(&again);
    let src = DockerSave::read(&plain);
    assert_eq!(ds.config_bytes(0), src.config_bytes(0));
    for (l, id) in src.diff_ids(0).iter().enumerate() {
        assert_eq!(ds.manifest[0].layers[l], member_for(id, Compression::None));
        assert_eq!(ds.layer(0, l), src.layer(0, l));
    }
    let insp = skopeo_inspect_archive(&env.tool_tmp(), &again);
    assert_eq!(insp["Layers"], serde_json::json!(src.diff_ids(0)));
}

fn flip_byte(path: &Path, offset: u64) {
    let data = fs::read(path).unwrap();
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[data[offset as usize] ^ 0xff]).unwrap();
}

/// A blob the registry serves with other bytes than its digest names fails
/// the run with one line, and no tarball (nor temp file) is left.
#[test]
fn tampered_blob_fails_cleanly_and_leaves_nothing() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = push_busybox(&env, &reg, PushFormat::Docker);
    // Byte 4 is gzip's MTIME: the stream still inflates to the same tar, so
    // only the blob digest catches it. Then a byte in the middle of the
    // deflate stream, which nothing here inflates to notice.
    let middle = built.layers[1].blob.len() as u64 / 2;
    for (layer, offset) in [(1, 4), (0, middle)] {
        let path = reg.blob_data_path(&built.layers[layer].digest);
        flip_byte(&path, offset);
        let out = env.out("image.tar");
        let run = env
            .occy()
            .args(["--insecure", "process", &reg.uri(REPO, "v1")])
            .arg(compressed_uri(&out))
            .run();
        assert_clean_failure(&env, &run, &["digest", "mismatch"]);
        assert!(!out.exists());
        flip_byte(&path, offset);
    }
}

/// What this mode does not check: a config whose diff_id does not match
/// its layer is passed on as it is (nothing is inflated to see it), where
/// the default mode refuses it; the loader then refuses it.
#[test]
fn a_wrong_diff_id_is_the_loaders_to_catch() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let img = busybox_image(Compression::Gzip).with_wrong_diff_id(1);
    let built = push_image(&env, &reg, "team/app:v1", &img, PushFormat::Docker);
    let out = env.out("image.tar");
    pull(&env, &reg, &compressed_uri(&out));
    assert_eq!(DockerSave::read(&out).diff_ids(0), built.diff_ids);
    let state = unique_dir(&env.work("podman"), "state");
    let p = out.display().to_string();
    let load = run(
        &mut podman_in(&state, &["load", "-i", &p]),
        Duration::from_secs(120),
    );
    assert_ne!(load.code, Some(0), "podman loaded a lying diff_id");
    fs::remove_file(&out).unwrap();

    let default = run_default(&env, &reg, &out);
    assert_clean_failure(&env, &default, &["diff_id", "digest", "mismatch"]);
}

fn run_default(env: &TestEnv, reg: &Registry, out: &Path) -> crate::support::Output {
    env.occy()
        .args(["--insecure", "process", &reg.uri(REPO, "v1"), &tar_uri(out)])
        .run()
}

/// An unknown `layers=` value, and `layers=compressed` with a filter that
/// rewrites layers (there is no served blob of a new tar), are usage errors.
#[test]
fn bad_layers_value_and_rewriting_filter_are_usage_errors() {
    let env = TestEnv::new();
    let reg = Registry::start();
    push_busybox(&env, &reg, PushFormat::Docker);
    let out = env.out("image.tar");
    let src = reg.uri(REPO, "v1");
    for value in ["gzip", "", "Compressed", "compressed&layers=zstd"] {
        let dst = format!("{}?layers={value}", tar_uri(&out));
        let run = env.occy().args(["--insecure", "process", &src, &dst]).run();
        assert_eq!(run.code, Some(2), "{value}: {}", run.stderr);
        assert!(run.stderr.contains("layers"), "{}", run.stderr);
    }
    for filter in ["normalize-timestamps", "exclude:pattern=**/*.txt"] {
        let run = env
            .occy()
            .args(["--insecure", "process", &src, &compressed_uri(&out)])
            .args(["-f", filter])
            .run();
        assert_eq!(run.code, Some(2), "{filter}: {}", run.stderr);
        assert!(run.stderr.contains("layers=compressed"), "{}", run.stderr);
    }
    assert!(env.out_dir_entries().is_empty());
}

/// The blobs of a registry pull are written straight into their places in
/// the tarball as they download; the result is the same bytes as when
/// every blob is copied in from local files (an OCI layout), with a layer
/// the image lists twice stored once, and no temp file left.
#[test]
fn blobs_written_in_place_give_the_same_tarball_as_copied_ones() {
    use crate::support::layer_tar::TarBuilder;
    let env = TestEnv::new();
    let reg = Registry::start();
    let base = TarBuilder::new()
        .file("base.txt", 0o644, b"base layer\n")
        .finish();
    let big = TarBuilder::new()
        .file(
            "big.bin",
            0o644,
            &crate::support::images::pseudo_random(3 << 20, 11),
        )
        .finish();
    let img = crate::support::Image::new("linux/amd64")
        .layer(base.clone(), Compression::Gzip)
        .layer(big, Compression::Zstd)
        .layer(base, Compression::Gzip)
        .layer(
            TarBuilder::new().file("top.txt", 0o644, b"top\n").finish(),
            Compression::None,
        );
    let built = img.build();
    assert_eq!(built.layers[0].digest, built.layers[2].digest);
    push_image(&env, &reg, "team/app:v1", &img, PushFormat::Preserve);
    let dir = unique_dir(&env.out_dir(), "layout");
    crate::support::OciLayout::create(&dir).add_image("t", &built);

    let from_registry = env.out("registry.tar");
    pull(&env, &reg, &compressed_uri(&from_registry));
    let from_layout = env.out("layout.tar");
    env.occy()
        .args([
            "process",
            &format!("oci-layout://{}:t", dir.display()),
            &compressed_uri(&from_layout),
        ])
        .ok();
    // Byte for byte up to the config (manifest.json names the image
    // differently).
    let config_at = {
        let mut archive = tar::Archive::new(fs::File::open(&from_registry).unwrap());
        let mut entries = archive.entries().unwrap();
        let config = entries
            .find(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .ends_with(".json")
            })
            .unwrap()
            .unwrap();
        config.raw_header_position() as usize
    };
    let (a, b) = (
        fs::read(&from_registry).unwrap(),
        fs::read(&from_layout).unwrap(),
    );
    assert!(config_at > 3 << 20);
    assert!(
        a[..config_at] == b[..config_at],
        "the two tarballs' layers differ"
    );
    let ds = DockerSave::read(&from_registry);
    assert_eq!(ds.manifest[0].layers.len(), 4);
    assert_eq!(ds.manifest[0].layers[0], ds.manifest[0].layers[2]);
    assert_eq!(
        ds.members.len(),
        3 + 2,
        "three blobs, the config and manifest.json"
    );
    let tmp: Vec<_> = fs::read_dir(env.tmp_dir()).unwrap().collect();
    assert!(tmp.is_empty(), "left in TMPDIR: {tmp:?}");
    // podman takes it.
    let layers = podman_load_layers(&env, &from_registry, &tag(&reg));
    assert_eq!(layers.len(), 4);
}
