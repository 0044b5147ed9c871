//! SIGINT and SIGTERM during a large pull: occystrap must exit within 2 s,
//! non-zero, leaving no temp files (`.occystrap-*` or a staging tree beside
//! the target, `occystrap-*` in its TMPDIR) and the target as it was.
//!
//! The image has a ~200 MiB incompressible layer of 25,600 files (slow to
//! download through the throttling proxy, and slow to extract), built once
//! per test process into an OCI layout under the cargo target dir and pushed
//! to each test's own registry.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::images::{Compression, Image, OciLayout, pseudo_random};
use crate::support::layer_tar::TarBuilder;
use crate::support::proxy::Proxy;
use crate::support::push::{PushFormat, push_layout};
use crate::support::{Registry, TestEnv, dir_entries, occy_bin, tar_uri};

const REPO: &str = "big/img";
const FILES: usize = 25_600;
const FILE_SIZE: usize = 8 << 10;
/// How long an interrupted run may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(2);

/// The big image's OCI layout (tag `t`) and its big layer's digest.
struct BigImage {
    layout: PathBuf,
    big_layer: String,
}

fn big_image() -> &'static BigImage {
    static BIG: OnceLock<BigImage> = OnceLock::new();
    BIG.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("occystrap-signals-layout");
        let _ = fs::remove_dir_all(&dir);
        let data = pseudo_random(FILES * FILE_SIZE, 0x51_6e_a1);
        let mut tar = TarBuilder::new();
        for d in 0..FILES / 256 {
            tar = tar.dir(&format!("d{d:03}"), 0o755);
            for f in 0..256 {
                let i = d * 256 + f;
                tar = tar.file(
                    &format!("d{d:03}/f{f:03}"),
                    0o644,
                    &data[i * FILE_SIZE..(i + 1) * FILE_SIZE],
                );
            }
        }
        drop(data);
        let small = TarBuilder::new()
            .file("top.txt", 0o644, b"small top layer\n")
            .finish();
        let built = Image::new("linux/amd64")
            .layer(tar.finish(), Compression::None)
            .layer(small, Compression::None)
            .build();
        let mut layout = OciLayout::create(&dir);
        layout.add_image("t", &built);
        BigImage {
            layout: dir,
            big_layer: built.layers[0].digest.clone(),
        }
    })
}

/// A registry holding the big image as `big/img:v1`, a proxy in front.
fn setup(env: &TestEnv) -> (Registry, Proxy, &'static BigImage) {
    let big = big_image();
    let reg = Registry::start();
    push_layout(
        env,
        &reg,
        &big.layout,
        &format!("{REPO}:v1"),
        PushFormat::Preserve,
    );
    let proxy = Proxy::start(&reg.host());
    (reg, proxy, big)
}

/// occystrap with the isolated environment of `TestEnv::occy`, spawned.
pub(crate) fn spawn(env: &TestEnv, args: &[String]) -> Child {
    Command::new(occy_bin())
        .args(args)
        .current_dir(env.work(""))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", env.path().join("home"))
        .env("DOCKER_CONFIG", env.docker_config_dir())
        .env("XDG_RUNTIME_DIR", env.path().join("xdg"))
        .env("XDG_CONFIG_HOME", env.path().join("xdg"))
        .env("TMPDIR", env.tmp_dir())
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start occystrap")
}

/// Waits (bounded) until `ready` says so; panics with `what` otherwise.
fn wait_until(what: &str, limit: Duration, child: &mut Child, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("occystrap exited ({st}) before {what}:\n{err}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out waiting until {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal`, then waits (bounded) for the exit. Returns the exit
/// code, the time it took and stderr.
pub(crate) fn interrupt(child: &mut Child, signal: i32) -> (Option<i32>, Duration, String) {
    let pid = i32::try_from(child.id()).unwrap();
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    let deadline = sent + Duration::from_secs(30);
    let mut trace = String::new();
    let mut next_sample = sent;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() >= next_sample {
            // What each thread is doing, for the failure message of a slow exit.
            next_sample += Duration::from_millis(250);
            trace.push_str(&format!("  +{:?}:", sent.elapsed()));
            for t in fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let read = |f: &str| {
                    fs::read_to_string(t.path().join(f))
                        .unwrap_or_default()
                        .trim()
                        .to_string()
                };
                let state = read("stat")
                    .rsplit(") ")
                    .next()
                    .and_then(|r| r.split(' ').next().map(str::to_string))
                    .unwrap_or_default();
                trace.push_str(&format!(" [{} {state} {}]", read("comm"), read("wchan")));
            }
            trace.push('\n');
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("occystrap did not exit within 30 s of signal {signal}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let took = sent.elapsed();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if took > EXIT_WITHIN {
        err.push_str("\n--- threads after the signal:\n");
        err.push_str(&trace);
    }
    (status.code(), took, err)
}

/// Names directly in `dir` that start with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_interrupted(env: &TestEnv, code: Option<i32>, took: Duration, stderr: &str) {
    assert!(
        matches!(code, Some(c) if c != 0),
        "expected a non-zero exit code, got {code:?}; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "occystrap panicked:\n{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("error:") && l.contains("interrupted")),
        "stderr should say it was interrupted:\n{stderr}"
    );
    assert!(
        took <= EXIT_WITHIN,
        "exit took {took:?}, more than {EXIT_WITHIN:?}; stderr:\n{stderr}"
    );
    // Shown with --nocapture.
    eprintln!("exited {took:?} after the signal with {code:?}");
    let tmp = named(&env.tmp_dir(), "occystrap-");
    assert!(tmp.is_empty(), "temp dirs left in TMPDIR: {tmp:?}");
    let hidden: Vec<String> = dir_entries(&env.out_dir())
        .into_iter()
        .filter(|p| {
            let name = p.rsplit('/').next().unwrap_or(p);
            name.starts_with(".occystrap-")
                || name.contains(".tmp-")
                || name.starts_with(".old-")
                || name.ends_with(".partial")
        })
        .collect();
    assert!(
        hidden.is_empty(),
        "temp files left in the output dir: {hidden:?}"
    );
}

/// Pulls into a tarball that already exists and interrupts mid-download.
fn interrupt_tarball_pull(signal: i32) {
    let env = TestEnv::new();
    let (_reg, proxy, big) = setup(&env);
    // 40 MiB/s: the big layer takes about 5 s.
    proxy.throttle(40 << 20);
    let target = env.out("image.tar");
    fs::write(&target, b"an earlier tarball, to be kept").unwrap();
    let args = vec![
        "--insecure".to_string(),
        "process".into(),
        proxy.uri(REPO, "v1"),
        tar_uri(&target),
    ];
    let mut child = spawn(&env, &args);
    let blob = format!("/blobs/{}", big.big_layer);
    wait_until(
        "the big layer is requested",
        Duration::from_secs(60),
        &mut child,
        || !proxy.requests_to_now(&blob).is_empty(),
    );
    // Well into the download (and the tarball's temp file exists).
    thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "occystrap finished before it could be interrupted (throttle too fast?)"
    );
    assert_eq!(
        proxy.requests_to_now(&blob)[0].status,
        0,
        "the big layer was already downloaded:\n{}",
        proxy.describe()
    );
    assert!(
        !named(&env.out_dir(), ".occystrap-").is_empty(),
        "expected the tarball's temp file while downloading: {:?}",
        dir_entries(&env.out_dir())
    );
    let (code, took, stderr) = interrupt(&mut child, signal);
    assert_interrupted(&env, code, took, &stderr);
    assert_eq!(
        fs::read(&target).unwrap(),
        b"an earlier tarball, to be kept",
        "the existing target was changed"
    );
    assert_eq!(dir_entries(&env.out_dir()), ["image.tar"]);
    // The download was cut short, not finished.
    let reqs = proxy.requests_to(&blob);
    assert_eq!(reqs.len(), 1, "{}", proxy.describe());
}

#[test]
fn sigint_during_download_leaves_nothing() {
    interrupt_tarball_pull(libc::SIGINT);
}

#[test]
fn sigterm_during_download_leaves_nothing() {
    interrupt_tarball_pull(libc::SIGTERM);
}

#[test]
fn sigint_during_extraction_leaves_nothing() {
    let env = TestEnv::new();
    let (_reg, proxy, _big) = setup(&env);
    let store = env.out("store");
    let args = vec![
        "--insecure".to_string(),
        "process".into(),
        proxy.uri(REPO, "v1"),
        format!("dir://{}?expand=true", store.display()),
    ];
    let mut child = spawn(&env, &args);
    // The rootfs is built in `store/.manifest.tmp-*`; wait until the big
    // layer's files are landing there.
    let staging_files = || -> usize {
        named(&store, ".manifest.tmp-")
            .first()
            .map(|s| named(&store.join(s), "d").len())
            .unwrap_or(0)
    };
    wait_until(
        "extraction has started",
        Duration::from_secs(120),
        &mut child,
        || staging_files() >= 2,
    );
    let (code, took, stderr) = interrupt(&mut child, libc::SIGINT);
    assert_interrupted(&env, code, took, &stderr);
    let left = named(&store, ".manifest.tmp-");
    assert!(left.is_empty(), "staging tree left behind: {left:?}");
    assert!(
        !store.join("manifest").exists(),
        "an incomplete rootfs was put in place"
    );
}
