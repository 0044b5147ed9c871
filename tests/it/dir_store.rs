//! Registry -> layer store (`dir://`): layers shared between images and
//! never fetched twice, the catalog under concurrent writers, the legacy
//! `fetch-to-extracted` / `recreate-image` commands and the DirReader round
//! trip through skopeo.

use std::fs;
use std::path::Path;

use serde_json::{Value, json};

use crate::support::archive::Expect;
use crate::support::images::{
    BuiltImage, Image, busybox_image, pseudo_random, registry_manifest, tiny_image,
};
use crate::support::layer_tar::TarBuilder;
use crate::support::push::{PushFormat, push_image};
use crate::support::{
    Compression, Registry, TestEnv, assert_clean_failure, assert_success, sha256_digest, tar_uri,
    verify_output,
};

fn start() -> (TestEnv, Registry) {
    (TestEnv::new(), Registry::start())
}

/// A layer with one file of its own, big enough to show up in byte counts.
fn layer(n: u64) -> Vec<u8> {
    TarBuilder::new()
        .dir("data", 0o755)
        .file(
            &format!("data/layer-{n}.bin"),
            0o644,
            &pseudo_random(64 * 1024, n),
        )
        .finish()
}

/// Paths of the blob GETs in a stretch of the registry's log.
fn blob_gets(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("http.request.method=GET"))
        .filter_map(|l| {
            let rest = &l[l.find("http.request.uri=")? + "http.request.uri=".len()..];
            let uri = match rest.strip_prefix('"') {
                Some(q) => &q[..q.find('"')?],
                None => rest.split(' ').next()?,
            };
            uri.contains("/blobs/").then(|| uri.to_string())
        })
        .collect()
}

/// The layer digests the registry's manifest for `repo:tag` lists.
fn layer_digests(env: &TestEnv, reg: &Registry, repo: &str, tag: &str) -> Vec<String> {
    let (raw, _) = registry_manifest(&env.tool_tmp(), reg, repo, tag);
    let m: Value = serde_json::from_slice(&raw).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// The summary line (the one with `->`) of a run's stderr.
fn summary(out: &crate::support::Output) -> String {
    out.stderr
        .lines()
        .find(|l| l.contains(" -> "))
        .unwrap_or_else(|| panic!("no summary line in:\n{}", out.stderr))
        .to_string()
}

fn read_json(path: &Path) -> Value {
    let data = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&data).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Checks one image of a store: its manifest file names the config (stored
/// byte for byte) and each layer, which hashes to its diff_id.
fn assert_stored(store: &Path, manifest_file: &str, built: &crate::support::images::BuiltImage) {
    let m = read_json(&store.join(manifest_file));
    let entry = &m.as_array().expect("manifest is a list")[0];
    let config = entry["Config"].as_str().unwrap();
    assert_eq!(config, format!("{}.json", &built.config_digest[7..]));
    assert_eq!(
        fs::read(store.join(config)).unwrap(),
        built.config,
        "config bytes are the registry's"
    );
    let layers: Vec<&str> = entry["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(layers.len(), built.layers.len());
    for (name, l) in layers.iter().zip(&built.layers) {
        assert_eq!(*name, format!("{}/layer.tar", &l.diff_id[7..]));
        let data = fs::read(store.join(name)).unwrap();
        assert_eq!(
            sha256_digest(&data),
            l.diff_id,
            "{name} hashes to its diff_id"
        );
    }
}

/// The first pull into the store fetches each of `digests` once.
fn assert_first_pull_fetches_each_once(
    env: &TestEnv,
    reg: &Registry,
    uri: &str,
    digests: &[String],
) {
    let before = reg.log().len();
    let out = env
        .occy()
        .args(["--insecure", "process", &reg.uri("team/app", "v1"), uri])
        .ok();
    let log = reg.log();
    let gets = blob_gets(&log[before..]);
    for d in digests {
        assert_eq!(
            gets.iter().filter(|g| g.ends_with(d.as_str())).count(),
            1,
            "first run fetches {d} once; GETs: {gets:?}"
        );
    }
    assert!(summary(&out).contains("(4 fetched)"), "{}", summary(&out));
}

/// The second image through the legacy command: only its last layer is new.
fn assert_legacy_fetches_only_the_new_layer(
    env: &TestEnv,
    reg: &Registry,
    store: &Path,
    b2: &BuiltImage,
    d2: &[String],
) {
    let before = reg.log().len();
    let out = env
        .occy()
        .args([
            "--insecure",
            "fetch-to-extracted",
            "--use-unique-names",
            &reg.host(),
            "team/app",
            "v2",
        ])
        .arg(store)
        .ok();
    let gets = blob_gets(&reg.log()[before..]);
    let layer_gets: Vec<&String> = gets
        .iter()
        .filter(|g| !g.ends_with(&b2.config_digest))
        .collect();
    assert_eq!(
        layer_gets.len(),
        1,
        "second run fetches one layer blob; GETs: {gets:?}"
    );
    assert!(layer_gets[0].ends_with(&d2[3]), "{layer_gets:?}");
    let line = summary(&out);
    assert!(
        line.contains("1 fetched, 3 already present"),
        "summary should count the shared layers: {line}"
    );
}

/// Both images are in the catalog, each with its own manifest, and the five
/// layers are stored once each.
fn assert_store_holds_both(reg: &Registry, store: &Path, b1: &BuiltImage, b2: &BuiltImage) {
    // Both images are in the catalog, each with its own manifest.
    assert_eq!(
        read_json(&store.join("catalog.json")),
        json!({"team/app": {
            "v1": "manifest-team_app-v1.json",
            "v2": "manifest-team_app-v2.json"
        }})
    );
    assert_stored(store, "manifest-team_app-v1.json", b1);
    assert_stored(store, "manifest-team_app-v2.json", b2);
    let m = read_json(&store.join("manifest-team_app-v2.json"));
    assert_eq!(m[0]["ImageName"], "team/app");
    assert_eq!(
        m[0]["RepoTags"],
        json!([format!("{}/team/app:v2", reg.host())])
    );
    // Five layers, stored once each; nothing half-written left about.
    let mut names: Vec<String> = fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names.iter().filter(|n| n.len() == 64).count(),
        5,
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.contains("partial") || n.contains("tmp")),
        "{names:?}"
    );
}

/// The same image again: nothing is fetched.
fn assert_repeat_fetches_nothing(env: &TestEnv, reg: &Registry, uri: &str, b1: &BuiltImage) {
    let before = reg.log().len();
    let out = env
        .occy()
        .args(["--insecure", "process", &reg.uri("team/app", "v1"), uri])
        .ok();
    let gets = blob_gets(&reg.log()[before..]);
    assert!(
        gets.iter().all(|g| g.ends_with(&b1.config_digest)),
        "{gets:?}"
    );
    assert!(summary(&out).contains("0 fetched, 4 already present"));
}

#[test]
fn second_image_fetches_only_its_new_layers() {
    let (env, reg) = start();
    let v1 = Image::new("linux/amd64")
        .layer(layer(1), Compression::Gzip)
        .layer(layer(2), Compression::Gzip)
        .layer(layer(3), Compression::Gzip)
        .layer(layer(4), Compression::Gzip);
    let v2 = Image::new("linux/amd64")
        .layer(layer(1), Compression::Gzip)
        .layer(layer(2), Compression::Gzip)
        .layer(layer(3), Compression::Gzip)
        .layer(layer(5), Compression::Gzip);
    let b1 = push_image(&env, &reg, "team/app:v1", &v1, PushFormat::Docker);
    let b2 = push_image(&env, &reg, "team/app:v2", &v2, PushFormat::Docker);
    let d1 = layer_digests(&env, &reg, "team/app", "v1");
    let d2 = layer_digests(&env, &reg, "team/app", "v2");
    assert_eq!(d1[..3], d2[..3], "the images share three layers");

    let store = env.out("store");
    let uri = format!("dir://{}?unique_names=true", store.display());
    assert_first_pull_fetches_each_once(&env, &reg, &uri, &d1);
    assert_legacy_fetches_only_the_new_layer(&env, &reg, &store, &b2, &d2);
    assert_store_holds_both(&reg, &store, &b1, &b2);
    assert_repeat_fetches_nothing(&env, &reg, &uri, &b1);
}

#[test]
fn store_without_unique_names_writes_manifest_json() {
    let (env, reg) = start();
    let img = tiny_image("hello.txt", "hello\n");
    let built = push_image(&env, &reg, "team/tiny:v1", &img, PushFormat::Docker);
    let store = env.out("store");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/tiny", "v1"),
            &format!("dir://{}", store.display()),
        ])
        .ok();
    assert_stored(&store, "manifest.json", &built);
    let m = read_json(&store.join("manifest.json"));
    assert!(m[0].get("ImageName").is_none(), "{m}");
    // The Python occystrap writes the catalog in both modes.
    assert_eq!(
        read_json(&store.join("catalog.json")),
        json!({"team/tiny": {"v1": "manifest.json"}})
    );
    // Read back without naming the image: the store's only one.
    let out = env.out("back.tar");
    env.occy()
        .args([
            "process",
            &format!("dir://{}", store.display()),
            &tar_uri(&out),
        ])
        .ok();
    let tag = format!("{}/team/tiny:v1", reg.host());
    verify_output(
        &env,
        &out,
        &Expect::default()
            .tags(&[&tag])
            .config(&built.config)
            .diff_ids(&built.true_diff_ids()),
        None,
    );
}

#[test]
fn concurrent_writers_keep_every_catalog_entry() {
    let (env, reg) = start();
    const N: usize = 6;
    for i in 0..N {
        // One shared layer and one of each image's own, so the writers also
        // race to store the same layer.
        let img = Image::new("linux/amd64")
            .layer(layer(100), Compression::Gzip)
            .layer(layer(200 + i as u64), Compression::Gzip);
        push_image(
            &env,
            &reg,
            &format!("team/app{i}:t{i}"),
            &img,
            PushFormat::Docker,
        );
    }
    let store = env.out("store");
    let outputs: Vec<crate::support::Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                // The last writer shares manifest.json, as the Python
                // default does; the others have their own.
                let query = if i + 1 == N { "" } else { "?unique_names=true" };
                let cmd = env.occy().args([
                    "--insecure".to_string(),
                    "process".to_string(),
                    reg.uri(&format!("team/app{i}"), &format!("t{i}")),
                    format!("dir://{}{query}", store.display()),
                ]);
                s.spawn(move || cmd.run())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for out in &outputs {
        assert_success(out);
    }
    let catalog = read_json(&store.join("catalog.json"));
    let mut want = serde_json::Map::new();
    for i in 0..N {
        let file = if i + 1 == N {
            "manifest.json".to_string()
        } else {
            format!("manifest-team_app{i}-t{i}.json")
        };
        want.insert(format!("team/app{i}"), json!({ format!("t{i}"): file }));
        assert!(store.join(&file).is_file(), "{file} missing");
    }
    assert_eq!(catalog, Value::Object(want));
    // One copy of the shared layer, no temp files.
    let names: Vec<String> = fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.iter().filter(|n| n.len() == 64).count(), N + 1);
    assert!(
        !names
            .iter()
            .any(|n| n.contains("partial") || n.contains("tmp")),
        "{names:?}"
    );
}

/// skopeo copies the recreated tarball into an OCI layout whose layers are
/// the diff_ids.
fn assert_skopeo_copy_keeps_diff_ids(env: &TestEnv, out: &Path, built: &BuiltImage) {
    let oci = env.work("oci");
    crate::support::tools::skopeo_ok(
        &env.tool_tmp(),
        &[
            "copy",
            "-q",
            &format!("docker-archive:{}", out.display()),
            &format!("oci:{}:x", oci.display()),
        ],
    );
    let index = read_json(&oci.join("index.json"));
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = read_json(&oci.join("blobs/sha256").join(&mdigest[7..]));
    let cdigest = manifest["config"]["digest"].as_str().unwrap();
    let config = read_json(&oci.join("blobs/sha256").join(&cdigest[7..]));
    assert_eq!(
        config["rootfs"]["diff_ids"],
        json!(built.true_diff_ids()),
        "config diff_ids"
    );
    for (i, l) in manifest["layers"].as_array().unwrap().iter().enumerate() {
        let d = l["digest"].as_str().unwrap();
        let blob = fs::read(oci.join("blobs/sha256").join(&d[7..])).unwrap();
        let tar = if blob.starts_with(&[0x1f, 0x8b]) {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&blob[..]), &mut v)
                .unwrap();
            v
        } else {
            blob
        };
        assert_eq!(sha256_digest(&tar), built.diff_ids[i], "layer {i}");
    }
}

/// The URI form, naming the image with its registry host, gives the same
/// bytes as `recreate-image` wrote to `out`.
fn assert_uri_form_same_bytes(env: &TestEnv, reg: &Registry, store: &Path, out: &Path) {
    let again = env.out("again.tar");
    env.occy()
        .args([
            "process",
            &format!(
                "dir://{}?image={}/team/app&tag=v1",
                store.display(),
                reg.host()
            ),
            &tar_uri(&again),
        ])
        .ok();
    assert_eq!(fs::read(&again).unwrap(), fs::read(out).unwrap());
    fs::remove_file(&again).unwrap();
    fs::remove_file(out).unwrap();
}

/// A wrong tag or image names what the catalog has.
fn assert_wrong_names_list_the_catalog(env: &TestEnv, store: &Path) {
    let bad = env
        .occy()
        .args(["recreate-image"])
        .arg(store)
        .args(["team/app", "v9"])
        .arg(env.out("nope.tar"))
        .run();
    let line = assert_clean_failure(env, &bad, &["team/app:v9"]);
    assert!(
        line.contains("team/app:v1") && line.contains("team/other:v3"),
        "the error lists the catalog: {line}"
    );
    let bad = env
        .occy()
        .args([
            "process",
            &format!("dir://{}?image=nobody/here", store.display()),
            &tar_uri(&env.out("nope.tar")),
        ])
        .run();
    assert_clean_failure(env, &bad, &["nobody/here:latest"]);
}

/// A damaged layer in the store is caught, not passed on.
fn assert_damaged_layer_caught(env: &TestEnv, store: &Path, built: &BuiltImage) {
    let victim = store.join(&built.diff_ids[1][7..]).join("layer.tar");
    let mut data = fs::read(&victim).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(&victim, data).unwrap();
    let bad = env
        .occy()
        .args(["recreate-image"])
        .arg(store)
        .args(["team/app", "v1"])
        .arg(env.out("bad.tar"))
        .run();
    assert_clean_failure(env, &bad, &["digest mismatch"]);
}

#[test]
fn recreate_image_round_trips_through_skopeo() {
    let (env, reg) = start();
    let img = busybox_image(Compression::Gzip);
    let built = push_image(&env, &reg, "team/app:v1", &img, PushFormat::Oci);
    let other = push_image(
        &env,
        &reg,
        "team/other:v3",
        &tiny_image("x", "x\n"),
        PushFormat::Docker,
    );
    let store = env.work("store");
    for (repo, tag) in [("team/app", "v1"), ("team/other", "v3")] {
        env.occy()
            .args([
                "--insecure",
                "process",
                &reg.uri(repo, tag),
                &format!("dir://{}?unique_names=true", store.display()),
            ])
            .ok();
    }

    let out = env.out("app-v1.tar");
    env.occy()
        .args(["recreate-image"])
        .arg(&store)
        .args(["team/app", "v1"])
        .arg(&out)
        .ok();
    let tag = format!("{}/team/app:v1", reg.host());
    let ds = verify_output(
        &env,
        &out,
        &Expect::default()
            .tags(&[&tag])
            .config(&built.config)
            .diff_ids(&built.true_diff_ids()),
        Some(&tag),
    );
    for (i, l) in built.layers.iter().enumerate() {
        assert_eq!(ds.layer(0, i), l.tar.as_slice(), "layer {i} bytes");
    }
    assert_skopeo_copy_keeps_diff_ids(&env, &out, &built);
    assert_uri_form_same_bytes(&env, &reg, &store, &out);
    assert_eq!(other.layers.len(), 1);
    assert_wrong_names_list_the_catalog(&env, &store);
    assert_damaged_layer_caught(&env, &store, &built);
}

/// With the run's temp dir on the store's filesystem, verified layers are
/// hard-linked into the store instead of copied; they must still be whole,
/// readable, and the only name left for the data.
#[test]
fn temp_dir_on_the_store_filesystem_links_layers_in() {
    use std::os::unix::fs::MetadataExt;
    let (env, reg) = start();
    let img = Image::new("linux/amd64")
        .layer(layer(1), Compression::Gzip)
        .layer(layer(2), Compression::Gzip);
    let built = push_image(&env, &reg, "team/app:v1", &img, PushFormat::Docker);
    let store = env.out("store");
    let temp = env.work("tmp");
    fs::create_dir_all(&temp).unwrap();
    let out = env
        .occy()
        .args([
            "--insecure",
            "--verbose",
            "--temp-dir",
            temp.to_str().unwrap(),
            "process",
            &reg.uri("team/app", "v1"),
            &format!("dir://{}", store.display()),
        ])
        .ok();
    assert_eq!(
        out.stderr.matches("linked into the store").count(),
        2,
        "{}",
        out.stderr
    );
    assert_stored(&store, "manifest.json", &built);
    for l in &built.layers {
        let meta = fs::metadata(store.join(&l.diff_id[7..]).join("layer.tar")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o644);
        assert_eq!(meta.nlink(), 1, "the temp name is gone");
    }
    assert_eq!(fs::read_dir(&temp).unwrap().count(), 0);
}
