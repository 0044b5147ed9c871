//! `oci://` runtime bundles, run with runc.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::{Value, json};

use crate::support::images::{BuiltImage, Image};
use crate::support::layer_tar::TarBuilder;
use crate::support::push::{PushFormat, push_built};
use crate::support::runtime::{Runc, host_platform, with_config};
use crate::support::{Compression, Registry, TestEnv};

use super::{assert_same_tree, expand, leftovers, oci_uri, registry_blob};

/// What the test image's process prints: the runtime's view of env, cwd
/// and ids.
const SHOW: &str = "echo FOO=$FOO; pwd; id -u; id -g";
/// A process that tells whether it may write to /srv (owned by `app`).
const WRITE_PROBE: &str = "touch /srv/probe 2>/dev/null && echo writable || echo read-only";

/// busybox with applet links, a user `app` (1000:1000) and its group.
fn busybox_base() -> Vec<u8> {
    let busybox = fs::read("/usr/bin/busybox")
        .expect("read /usr/bin/busybox (install the busybox-static package)");
    let mut t = TarBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, &busybox);
    for applet in ["sh", "id", "pwd", "echo", "touch", "cat", "ls"] {
        t = t.symlink(&format!("bin/{applet}"), "busybox");
    }
    t.dir("etc", 0o755)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )
        .file("etc/group", 0o644, b"root:x:0:\napp:x:1000:\n")
        .dir("tmp", 0o1777)
        .finish()
}

/// The application layer: the working directory and a home, owned by `app`.
fn app_layer() -> Vec<u8> {
    TarBuilder::new()
        .dir_owned("srv", 0o755, (1000, 1000))
        .file("srv/hello.txt", 0o644, b"hello from the image\n")
        .dir("home", 0o755)
        .dir_owned("home/app", 0o700, (1000, 1000))
        .finish()
}

/// The runtime test image, running as `user`: Entrypoint + Cmd print
/// `$FOO`, the working directory and the ids.
fn runtime_image(user: &str) -> BuiltImage {
    let img = Image::new(host_platform())
        .layer(busybox_base(), Compression::Gzip)
        .layer(app_layer(), Compression::Gzip);
    with_config(img.build(), |c| {
        c["Entrypoint"] = json!(["/bin/sh", "-c"]);
        c["Cmd"] = json!([SHOW]);
        c["Env"] = json!(["PATH=/usr/bin:/bin", "FOO=bar"]);
        c["WorkingDir"] = json!("/srv");
        c["User"] = json!(user);
    })
}

/// Reads a bundle's config.json, checking it parses as a runtime-spec
/// document.
fn read_spec(bundle: &Path) -> Value {
    let raw = fs::read(bundle.join("config.json")).expect("bundle has config.json");
    if let Err(e) = serde_json::from_slice::<oci_spec::runtime::Spec>(&raw) {
        panic!(
            "config.json is not a runtime-spec document: {e}\n{}",
            String::from_utf8_lossy(&raw)
        );
    }
    serde_json::from_slice(&raw).unwrap()
}

/// The parts of config.json the image decides, and the ones the bundle
/// contract fixes.
fn assert_spec(spec: &Value, readonly: bool, uid: u32, gid: u32) {
    assert!(
        spec["ociVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "ociVersion: {spec}"
    );
    let p = &spec["process"];
    assert_eq!(p["terminal"], json!(false), "process.terminal");
    assert_eq!(
        p["args"],
        json!(["/bin/sh", "-c", SHOW]),
        "Entrypoint + Cmd"
    );
    assert_eq!(p["cwd"], json!("/srv"));
    assert_eq!(p["user"]["uid"], json!(uid));
    assert_eq!(p["user"]["gid"], json!(gid));
    let env: Vec<&str> = p["env"]
        .as_array()
        .expect("process.env")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"FOO=bar"), "{env:?}");
    assert_eq!(
        env.iter()
            .filter(|e| e.starts_with("PATH="))
            .collect::<Vec<_>>(),
        [&"PATH=/usr/bin:/bin"],
        "the image's PATH, once"
    );
    assert_eq!(spec["root"]["path"], json!("rootfs"));
    assert_eq!(spec["root"]["readonly"], json!(readonly));
    let namespaces: Vec<&str> = spec["linux"]["namespaces"]
        .as_array()
        .expect("linux.namespaces")
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    for ns in ["pid", "mount", "ipc", "uts", "network"] {
        assert!(namespaces.contains(&ns), "namespace {ns}: {namespaces:?}");
    }
}

/// Replaces the bundle's process.args with `sh -c SCRIPT`.
fn set_script(bundle: &Path, script: &str) {
    let path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    spec["process"]["args"] = json!(["/bin/sh", "-c", script]);
    fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

#[test]
fn oci_bundle_runs_under_runc() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = runtime_image("app");
    push_built(&env, &reg, "team/run:v1", &built, PushFormat::Oci);
    let bundle = env.out("bundle");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/run", "v1"),
            &oci_uri(&bundle, ""),
        ])
        .ok();
    assert_spec(&read_spec(&bundle), true, 1000, 1000);
    assert_eq!(
        fs::read(bundle.join("container-config.json")).unwrap(),
        registry_blob(&reg, "team/run", &built.config_digest),
        "container-config.json is the registry's config, byte for byte"
    );
    assert!(leftovers(&env.out_dir()).is_empty());
    // The rootfs is the merged image (before runc adds its mount points).
    assert_same_tree(
        &bundle.join("rootfs"),
        &expand(&env, &reg, "team/run", "v1"),
        "oci:// rootfs",
        "dir://?expand=true",
    );

    let runc = Runc::new(&env);
    assert_eq!(
        runc.run_lines(&env, &bundle),
        ["FOO=bar", "/srv", "1000", "1000"],
        "Env, WorkingDir and User as the image says"
    );
    // HOME comes from the image's passwd, as under Docker.
    set_script(&bundle, "echo HOME=$HOME");
    assert_eq!(runc.run_lines(&env, &bundle), ["HOME=/home/app"]);
    // A read-only root by default: `app` owns /srv but cannot write it.
    set_script(&bundle, WRITE_PROBE);
    assert_eq!(runc.run_lines(&env, &bundle), ["read-only"]);
    assert!(!bundle.join("rootfs/srv/probe").exists());

    let rw = env.out("bundle-rw");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/run", "v1"),
            &oci_uri(&rw, "?readonly=false"),
        ])
        .ok();
    assert_spec(&read_spec(&rw), false, 1000, 1000);
    assert_eq!(
        runc.run_lines(&env, &rw),
        ["FOO=bar", "/srv", "1000", "1000"]
    );
    set_script(&rw, WRITE_PROBE);
    assert_eq!(runc.run_lines(&env, &rw), ["writable"]);
    let probe = fs::symlink_metadata(rw.join("rootfs/srv/probe")).unwrap();
    assert_eq!((probe.uid(), probe.gid()), (1000, 1000));
    assert_eq!(runc.leftover_containers(), Vec::<String>::new());
}

#[test]
fn oci_bundle_numeric_users() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let runc = Runc::new(&env);
    // uid:gid that no passwd entry names; a bare uid takes its group from
    // /etc/passwd.
    for (user, uid, gid, home) in [
        ("4242:77", 4242, 77, "/"),
        ("1000", 1000, 1000, "/home/app"),
        ("app:0", 1000, 0, "/home/app"),
    ] {
        let tag = format!("u{uid}-{gid}");
        let built = runtime_image(user);
        push_built(
            &env,
            &reg,
            &format!("team/run:{tag}"),
            &built,
            PushFormat::Docker,
        );
        let bundle = env.out(&format!("bundle-{tag}"));
        env.occy()
            .args([
                "--insecure",
                "process",
                &reg.uri("team/run", &tag),
                &oci_uri(&bundle, ""),
            ])
            .ok();
        assert_spec(&read_spec(&bundle), true, uid, gid);
        assert_eq!(
            runc.run_lines(&env, &bundle),
            ["FOO=bar", "/srv", &uid.to_string(), &gid.to_string()],
            "User {user:?}"
        );
        set_script(&bundle, "echo HOME=$HOME");
        assert_eq!(
            runc.run_lines(&env, &bundle),
            [format!("HOME={home}")],
            "User {user:?}"
        );
    }
    assert_eq!(runc.leftover_containers(), Vec::<String>::new());
}

#[test]
fn fetch_to_oci_matches_process() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let built = runtime_image("app");
    push_built(&env, &reg, "team/run:v1", &built, PushFormat::Oci);
    let via_process = env.out("process");
    env.occy()
        .args([
            "--insecure",
            "process",
            &reg.uri("team/run", "v1"),
            &oci_uri(&via_process, ""),
        ])
        .ok();
    let legacy = env.out("legacy");
    env.occy()
        .args(["--insecure", "fetch-to-oci"])
        .arg(reg.host())
        .args(["team/run", "v1"])
        .arg(&legacy)
        .ok();
    for f in ["config.json", "container-config.json"] {
        assert_eq!(
            fs::read_to_string(legacy.join(f)).unwrap(),
            fs::read_to_string(via_process.join(f)).unwrap(),
            "{f} from fetch-to-oci and process"
        );
    }
    assert_same_tree(
        &legacy.join("rootfs"),
        &via_process.join("rootfs"),
        "fetch-to-oci",
        "process oci://",
    );
    let runc = Runc::new(&env);
    assert_eq!(
        runc.run_lines(&env, &legacy),
        ["FOO=bar", "/srv", "1000", "1000"]
    );
    assert_eq!(runc.leftover_containers(), Vec::<String>::new());
}
