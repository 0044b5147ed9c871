//! Registry -> docker-save tarball: every manifest format, layer
//! compression, platform selection, pull by digest, basic auth, the legacy
//! `fetch-to-tarfile` command and the global flags.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::support::archive::Expect;
use crate::support::images::{
    BuiltImage, PLATFORMS, busybox_image, busybox_image_mixed, platform_image, registry_manifest,
};
use crate::support::push::{PushFormat, push_busybox, push_image, push_index};
use crate::support::{
    Compression, DockerSave, Registry, TestEnv, assert_clean_failure, http, tar_uri, verify_output,
};

const REPO: &str = "team/app";
const USER: &str = "tester";
const PASS: &str = "Pa55-w0rd-never-print-me";

fn start() -> (TestEnv, Registry) {
    (TestEnv::new(), Registry::start())
}

/// What the registry serves for a manifest reference, parsed, plus its
/// Content-Type.
fn served_manifest(reg: &Registry, repo: &str, reference: &str) -> (String, Value) {
    let r = http::get_manifest(&reg.host(), repo, reference).expect("GET manifest");
    assert_eq!(r.status, 200, "GET manifest {repo}:{reference}");
    let ct = r.header("content-type").unwrap_or_default().to_string();
    (ct, serde_json::from_slice(&r.body).unwrap())
}

fn assert_no_secret(out: &crate::support::Output, secret: &str) {
    assert!(
        !out.stderr.contains(secret) && !out.stdout.contains(secret),
        "the password appears in the output of {}:\n{}{}",
        out.cmdline,
        out.stdout,
        out.stderr
    );
}

// ---------------------------------------------------------------------------
// The harness itself (independent of occystrap)

/// `os/architecture[/variant]` of each entry of a manifest list or index.
fn platform_names(m: &Value) -> Vec<String> {
    m["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let p = &d["platform"];
            match p["variant"].as_str() {
                Some(v) => format!(
                    "{}/{}/{v}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap()
                ),
                None => format!(
                    "{}/{}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap()
                ),
            }
        })
        .collect()
}

/// The Docker v2 schema 2 manifest and its config, as pushed.
fn assert_v2s2_served(reg: &Registry, built: &BuiltImage) {
    let (ct, m) = served_manifest(reg, "h/img", "v2s2");
    assert_eq!(ct, "application/vnd.docker.distribution.manifest.v2+json");
    assert_eq!(m["config"]["digest"], built.config_digest.as_str());
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let cfg = http::request(
        &reg.host(),
        "GET",
        &format!("/v2/h/img/blobs/{}", built.config_digest),
        &[],
    )
    .unwrap();
    assert_eq!(cfg.body, built.config, "skopeo keeps the config bytes");
}

/// The OCI manifest, the Docker manifest list and the OCI index.
fn assert_oci_and_lists_served(reg: &Registry) {
    let (ct, _) = served_manifest(reg, "h/img", "oci");
    assert_eq!(ct, "application/vnd.oci.image.manifest.v1+json");

    let (ct, m) = served_manifest(reg, "h/multi", "list");
    assert_eq!(
        ct,
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let plat_names = platform_names(&m);
    assert_eq!(plat_names, PLATFORMS);

    let (ct, m) = served_manifest(reg, "h/multi", "index");
    assert_eq!(ct, "application/vnd.oci.image.index.v1+json");
    assert_eq!(
        m["manifests"][1]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
}

/// Images pushed with their digests preserved: uncompressed and zstd layers.
fn assert_preserved_served(tmp: &Path, reg: &Registry, raw: &BuiltImage, zst: &BuiltImage) {
    let (_, m) = served_manifest(reg, "h/img", "raw");
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert_eq!(m["layers"][0]["digest"], raw.diff_ids[0].as_str());
    let (_, digest) = registry_manifest(tmp, reg, "h/img", "raw");
    assert_eq!(
        digest, raw.manifest_digest,
        "--preserve-digests keeps the manifest"
    );

    let (_, m) = served_manifest(reg, "h/img", "zstd");
    assert_eq!(
        m["layers"][2]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(m["layers"][2]["digest"], zst.layers[2].digest.as_str());
}

#[test]
fn harness_registry_holds_each_manifest_format() {
    let (env, reg) = start();
    let img = busybox_image(Compression::Gzip);
    let tmp = env.tool_tmp();
    let built = push_image(&env, &reg, "h/img:v2s2", &img, PushFormat::Docker);
    push_image(&env, &reg, "h/img:oci", &img, PushFormat::Oci);
    let plats: Vec<_> = PLATFORMS
        .iter()
        .map(|p| platform_image(p, Compression::Gzip))
        .collect();
    push_index(&env, &reg, "h/multi:list", &plats, PushFormat::Docker);
    push_index(&env, &reg, "h/multi:index", &plats, PushFormat::Oci);
    let raw = push_image(
        &env,
        &reg,
        "h/img:raw",
        &busybox_image(Compression::None),
        PushFormat::Preserve,
    );
    let zst = push_image(
        &env,
        &reg,
        "h/img:zstd",
        &busybox_image(Compression::Zstd),
        PushFormat::Preserve,
    );

    assert_v2s2_served(&reg, &built);
    assert_oci_and_lists_served(&reg);
    assert_preserved_served(&tmp, &reg, &raw, &zst);

    // The blob path the corruption tests rely on.
    assert!(reg.blob_data_path(&built.layers[0].digest).is_file());

    // skopeo can read back what was pushed.
    crate::support::tools::skopeo_ok(
        &tmp,
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/h/multi:list", reg.host()),
        ],
    );
}

#[test]
fn harness_htpasswd_registry_requires_auth() {
    let reg = Registry::start_with_htpasswd(USER, PASS);
    let r = http::request(&reg.host(), "GET", "/v2/", &[]).unwrap();
    assert_eq!(r.status, 401);
    let token = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{USER}:{PASS}"),
    );
    let r = http::request(
        &reg.host(),
        "GET",
        "/v2/",
        &[("Authorization", &format!("Basic {token}"))],
    )
    .unwrap();
    assert_eq!(r.status, 200);
}

// ---------------------------------------------------------------------------
// Round trips per manifest format and compression

fn round_trip(format: PushFormat, repo: &str, compressions: [Compression; 3]) {
    let (env, reg) = start();
    let img = busybox_image_mixed(&compressions);
    let built = push_image(&env, &reg, &format!("{repo}:v1"), &img, format);
    let out = env.out("image.tar");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri(repo, "v1"),
            &tar_uri(&out),
        ])
        .ok();
    let tag = format!("{}/{repo}:v1", reg.host());
    let ds = verify_output(
        &env,
        &out,
        &Expect::default()
            .tags(&[&tag])
            .config(&built.config)
            .diff_ids(&built.true_diff_ids()),
        Some(&tag),
    );
    // Real content made it through: the busybox binary, byte for byte.
    let busybox = fs::read("/usr/bin/busybox").unwrap();
    assert!(
        ds.find_in_layers("bin/busybox").as_deref() == Some(busybox.as_slice()),
        "bin/busybox differs from /usr/bin/busybox"
    );
    for (i, l) in built.layers.iter().enumerate() {
        assert_eq!(ds.layer(0, i), l.tar.as_slice(), "layer {i} bytes");
    }
}

#[test]
fn docker_schema2_gzip_round_trip() {
    round_trip(PushFormat::Docker, REPO, [Compression::Gzip; 3]);
}

#[test]
fn oci_manifest_gzip_round_trip() {
    round_trip(PushFormat::Oci, "org/team/app", [Compression::Gzip; 3]);
}

#[test]
fn oci_zstd_layers_round_trip() {
    round_trip(PushFormat::Preserve, REPO, [Compression::Zstd; 3]);
}

#[test]
fn oci_uncompressed_layers_round_trip() {
    round_trip(PushFormat::Preserve, REPO, [Compression::None; 3]);
}

#[test]
fn oci_mixed_compression_round_trip() {
    round_trip(
        PushFormat::Preserve,
        REPO,
        [Compression::Gzip, Compression::Zstd, Compression::None],
    );
}

// ---------------------------------------------------------------------------
// Multi-platform images

fn push_platforms(env: &TestEnv, reg: &Registry, format: PushFormat) {
    let imgs: Vec<_> = PLATFORMS
        .iter()
        .map(|p| platform_image(p, Compression::Gzip))
        .collect();
    push_index(env, reg, "team/multi:v1", &imgs, format);
}

/// Pulls `team/multi:v1` with extra global flags (and URI query) and checks
/// the platform that arrived.
fn pull_platform(env: &TestEnv, reg: &Registry, flags: &[&str], query: &str, want: &str) {
    let out = env.out(&format!("{}.tar", want.replace('/', "-")));
    let _ = fs::remove_file(&out);
    let src = format!("{}{query}", reg.uri("team/multi", "v1"));
    let mut args = vec!["--insecure"];
    args.extend_from_slice(flags);
    let out_uri = tar_uri(&out);
    args.extend(["process", &src, &out_uri]);
    env.occy().args(&args).ok();
    let tag = format!("{}/team/multi:v1", reg.host());
    let ds = verify_output(env, &out, &Expect::default().tags(&[&tag]), None);
    assert_eq!(
        ds.find_in_layers("etc/platform").as_deref(),
        Some(format!("{want}\n").as_bytes()),
        "flags {flags:?} query {query:?} should select {want}"
    );
    let want_p = crate::support::Platform::parse(want);
    let cfg = ds.config(0);
    assert_eq!(cfg["architecture"], want_p.architecture.as_str());
    if let Some(v) = &want_p.variant {
        assert_eq!(cfg["variant"], v.as_str());
    }
    let insp = crate::support::tools::skopeo_inspect_archive(&env.tool_tmp(), &out);
    assert_eq!(insp["Architecture"], want_p.architecture.as_str());
}

fn platform_selection(format: PushFormat) {
    let (env, reg) = start();
    push_platforms(&env, &reg, format);
    if cfg!(target_arch = "x86_64") {
        // No flags: the default platform, linux/amd64 on this host.
        pull_platform(&env, &reg, &[], "", "linux/amd64");
    }
    pull_platform(
        &env,
        &reg,
        &["--architecture", "arm", "--variant", "v7"],
        "",
        "linux/arm/v7",
    );
    pull_platform(
        &env,
        &reg,
        &["--architecture", "arm64"],
        "",
        "linux/arm64/v8",
    );
    pull_platform(
        &env,
        &reg,
        &["--os", "linux", "--architecture", "amd64"],
        "",
        "linux/amd64",
    );
}

#[test]
fn docker_manifest_list_selects_platform() {
    platform_selection(PushFormat::Docker);
}

#[test]
fn oci_index_selects_platform() {
    platform_selection(PushFormat::Oci);
}

#[test]
fn platform_from_uri_query() {
    let (env, reg) = start();
    push_platforms(&env, &reg, PushFormat::Docker);
    pull_platform(&env, &reg, &[], "?arch=arm&variant=v7", "linux/arm/v7");
    pull_platform(&env, &reg, &[], "?os=linux&arch=arm64", "linux/arm64/v8");
}

#[test]
fn unavailable_platform_lists_offered_platforms() {
    let (env, reg) = start();
    push_platforms(&env, &reg, PushFormat::Oci);
    let out = env.out("none.tar");
    let run = env
        .occy()
        .args([
            "--insecure",
            "--architecture",
            "s390x",
            "process",
            &reg.uri("team/multi", "v1"),
            &tar_uri(&out),
        ])
        .run();
    let line = assert_clean_failure(&env, &run, &["s390x", "platform"]);
    for p in ["linux/amd64", "linux/arm/v7", "arm64"] {
        assert!(
            line.contains(p),
            "error should list offered platform {p}: {line}"
        );
    }
}

// ---------------------------------------------------------------------------
// Pull by digest

#[test]
fn pull_by_manifest_digest() {
    let (env, reg) = start();
    let built = push_busybox(&env, &reg, PushFormat::Docker);
    let (_, digest) = registry_manifest(&env.tool_tmp(), &reg, REPO, "v1");
    let out = env.out("by-digest.tar");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri(REPO, &digest),
            &tar_uri(&out),
        ])
        .ok();
    let ds = verify_output(
        &env,
        &out,
        &Expect::default()
            .config(&built.config)
            .diff_ids(&built.true_diff_ids()),
        None,
    );
    // A digest reference names no tag; whatever RepoTags says must not
    // invent one that was not asked for.
    for t in &ds.manifest[0].repo_tags {
        assert!(
            !t.ends_with(":v1"),
            "RepoTags {t} names a tag not asked for"
        );
    }
}

#[test]
fn pull_index_by_digest_with_platform() {
    let (env, reg) = start();
    push_platforms(&env, &reg, PushFormat::Oci);
    let (_, digest) = registry_manifest(&env.tool_tmp(), &reg, "team/multi", "v1");
    let out = env.out("arm.tar");
    env.occy()
        .args([
            "--insecure",
            "--architecture",
            "arm",
            "--variant",
            "v7",
            "process",
            &reg.uri("team/multi", &digest),
            &tar_uri(&out),
        ])
        .ok();
    let ds = verify_output(&env, &out, &Expect::default(), None);
    assert_eq!(
        ds.find_in_layers("etc/platform").as_deref(),
        Some(&b"linux/arm/v7\n"[..])
    );
}

// ---------------------------------------------------------------------------
// Command forms and flags

#[test]
fn fetch_to_tarfile_matches_process() {
    let (env, reg) = start();
    push_busybox(&env, &reg, PushFormat::Docker);
    let a = env.out("process.tar");
    let b = env.out("legacy.tar");
    env.occy()
        .args(["--insecure", "process", &reg.uri(REPO, "v1"), &tar_uri(&a)])
        .ok();
    env.occy()
        .args([
            "--insecure",
            "fetch-to-tarfile",
            &reg.host(),
            REPO,
            "v1",
            b.to_str().unwrap(),
        ])
        .ok();
    let tag = format!("{}/{REPO}:v1", reg.host());
    let da = verify_output(&env, &a, &Expect::default().tags(&[&tag]), None);
    let db = verify_output(&env, &b, &Expect::default().tags(&[&tag]), None);
    assert_eq!(
        da.files, db.files,
        "fetch-to-tarfile and process write the same members"
    );
}

#[test]
fn scheme_colon_form_and_insecure_query() {
    let (env, reg) = start();
    let built = push_busybox(&env, &reg, PushFormat::Oci);
    let out = env.out("colon.tar");
    // `scheme:path` and `?insecure=true` instead of --insecure.
    env.occy()
        .args([
            "process",
            &format!("registry:{}/{REPO}:v1?insecure=true", reg.host()),
            &format!("tar:{}", out.display()),
        ])
        .ok();
    let tag = format!("{}/{REPO}:v1", reg.host());
    verify_output(
        &env,
        &out,
        &Expect::default().tags(&[&tag]).config(&built.config),
        None,
    );
}

#[test]
fn parallel_retries_and_temp_dir_flags() {
    let (env, reg) = start();
    let built = push_busybox(&env, &reg, PushFormat::Docker);
    let scratch = env.path().join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    for j in ["1", "8"] {
        let out = env.out(&format!("j{j}.tar"));
        env.occy()
            .args([
                "--insecure",
                "-j",
                j,
                "--retries",
                "2",
                "--temp-dir",
                scratch.to_str().unwrap(),
                "process",
                &reg.uri(REPO, "v1"),
                &tar_uri(&out),
            ])
            .ok();
        verify_output(
            &env,
            &out,
            &Expect::default().diff_ids(&built.true_diff_ids()),
            None,
        );
        let left = crate::support::dir_entries(&scratch);
        assert!(left.is_empty(), "--temp-dir left files behind: {left:?}");
    }
    // --parallel long form and --verbose still succeed.
    let out = env.out("verbose.tar");
    env.occy()
        .args([
            "--insecure",
            "--parallel",
            "2",
            "--verbose",
            "process",
            &reg.uri(REPO, "v1"),
            &tar_uri(&out),
        ])
        .ok();
    DockerSave::read(&out).assert_occystrap_output(&Expect::default());
}

// ---------------------------------------------------------------------------
// Basic auth

fn auth_setup() -> (TestEnv, Registry, crate::support::images::BuiltImage) {
    let env = TestEnv::new();
    let reg = Registry::start_with_htpasswd(USER, PASS);
    let built = push_busybox(&env, &reg, PushFormat::Docker);
    (env, reg, built)
}

fn check_auth_pull(
    env: &TestEnv,
    reg: &Registry,
    built: &crate::support::images::BuiltImage,
    run: &crate::support::Output,
    out: &std::path::Path,
) {
    assert_no_secret(run, PASS);
    let tag = format!("{}/{REPO}:v1", reg.host());
    verify_output(
        env,
        out,
        &Expect::default().tags(&[&tag]).config(&built.config),
        None,
    );
}

#[test]
fn basic_auth_with_flags() {
    let (env, reg, built) = auth_setup();
    let out = env.out("auth.tar");
    let run = env
        .occy()
        .args([
            "--insecure",
            "--username",
            USER,
            "--password",
            PASS,
            "process",
            &reg.uri(REPO, "v1"),
            &tar_uri(&out),
        ])
        .ok();
    check_auth_pull(&env, &reg, &built, &run, &out);
}

#[test]
fn basic_auth_with_env_vars() {
    let (env, reg, built) = auth_setup();
    let out = env.out("auth.tar");
    let run = env
        .occy()
        .env("OCCYSTRAP_USERNAME", USER)
        .env("OCCYSTRAP_PASSWORD", PASS)
        .args([
            "--insecure",
            "process",
            &reg.uri(REPO, "v1"),
            &tar_uri(&out),
        ])
        .ok();
    check_auth_pull(&env, &reg, &built, &run, &out);
}

#[test]
fn basic_auth_in_uri() {
    let (env, reg, built) = auth_setup();
    let out = env.out("auth.tar");
    let run = env
        .occy()
        .args([
            "--insecure",
            "process",
            &format!("registry://{USER}:{PASS}@{}/{REPO}:v1", reg.host()),
            &tar_uri(&out),
        ])
        .ok();
    check_auth_pull(&env, &reg, &built, &run, &out);
}

#[test]
fn basic_auth_from_docker_config() {
    let (env, reg, built) = auth_setup();
    let token = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{USER}:{PASS}"),
    );
    let config = serde_json::json!({
        "auths": {
            "example.invalid": {"auth": "bm90OnRoaXM="},
            reg.host(): {"auth": token},
        }
    });
    fs::write(
        env.docker_config_dir().join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    let out = env.out("auth.tar");
    let run = env
        .occy()
        .args([
            "--insecure",
            "process",
            &reg.uri(REPO, "v1"),
            &tar_uri(&out),
        ])
        .ok();
    check_auth_pull(&env, &reg, &built, &run, &out);
}
