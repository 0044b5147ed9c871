//! Stores someone else can write into (issue 11, classes 6, 10 and 11):
//! FIFOs, sockets and devices where a file is expected are refused at once;
//! symlinks below a store's root are never followed, for reading or
//! writing; SIGINT and SIGTERM end a blocked run within 2 s; and a failed
//! run leaves a store exactly as it found it.
//!
//! Inputs are built here as OCI layouts (no registry needed); a `dir://`
//! source store is made from one by occystrap itself and then tampered with.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::signals::{interrupt, spawn};
use crate::support::images::{BuiltImage, Image, OciLayout};
use crate::support::layer_tar::TarBuilder;
use crate::support::{
    Compression, Output, TestEnv, assert_no_panic, assert_success, occy_bin, run, sha256_hex,
};

/// A ceiling for a run that must be refused at once (it hung forever before).
const REFUSED_WITHIN: Duration = Duration::from_secs(10);
/// How long an interrupted run may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(2);

/// The kinds of special file planted where a regular file is expected.
#[derive(Clone, Copy, Debug)]
enum Special {
    Fifo,
    Socket,
    /// `/dev/zero`'s numbers: read, it never ends.
    CharDev,
}

const SPECIALS: [Special; 3] = [Special::Fifo, Special::Socket, Special::CharDev];

impl Special {
    /// Replaces whatever is at `path` with this kind of node.
    fn plant(self, path: &Path) {
        let _ = fs::remove_file(path);
        let _ = fs::remove_dir_all(path);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        match self {
            // SAFETY: mkfifo/mknod on a NUL-terminated path we own.
            Special::Fifo => assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0),
            Special::Socket => {
                // Bound at a short path (sun_path is 108 bytes), then moved.
                let short = tempfile::Builder::new()
                    .prefix("s")
                    .tempdir_in("/tmp")
                    .unwrap();
                let at = short.path().join("s");
                drop(std::os::unix::net::UnixListener::bind(&at).unwrap());
                fs::rename(&at, path).unwrap();
            }
            Special::CharDev => {
                let dev = libc::makedev(1, 5);
                // SAFETY: as above; the tests run as root.
                let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o644, dev) };
                assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
            }
        }
    }

    /// What the error line calls it.
    fn word(self) -> &'static str {
        match self {
            Special::Fifo => "fifo",
            Special::Socket => "socket",
            Special::CharDev => "character device",
        }
    }

    /// Whether `path` still is this kind of node.
    fn is_at(self, path: &Path) -> bool {
        let Ok(m) = fs::symlink_metadata(path) else {
            return false;
        };
        let t = m.file_type();
        match self {
            Special::Fifo => t.is_fifo(),
            Special::Socket => t.is_socket(),
            Special::CharDev => t.is_char_device(),
        }
    }
}

/// occystrap with the tests' isolated environment, bounded by `limit`.
fn occy_within(env: &TestEnv, args: &[&str], limit: Duration) -> Output {
    let mut cmd = Command::new(occy_bin());
    cmd.args(args)
        .current_dir(env.work(""))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", env.path().join("home"))
        .env("DOCKER_CONFIG", env.docker_config_dir())
        .env("TMPDIR", env.tmp_dir())
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1");
    // `run` kills the child and fails the test past the limit.
    let out = run(&mut cmd, limit);
    assert!(
        out.elapsed < limit,
        "{} took {:?}",
        out.cmdline,
        out.elapsed
    );
    out
}

/// Asserts a clean refusal: exit 1, one `error:` line mentioning one of
/// `words` (case-insensitive), no panic. Returns the line.
fn assert_refused(out: &Output, words: &[&str]) -> String {
    assert_no_panic(out);
    // 2 for a usage error (an output path that is not a file), else 1.
    assert!(
        matches!(out.code, Some(1 | 2)),
        "{}: {:?}\n{}",
        out.cmdline,
        out.code,
        out.stderr
    );
    let lines = crate::support::nonblank_lines(&out.stderr);
    assert_eq!(
        lines.len(),
        1,
        "one line from {}: {}",
        out.cmdline,
        out.stderr
    );
    let line = lines[0];
    eprintln!("[{}] {line}", out.cmdline);
    assert!(line.starts_with("error: "), "{line}");
    let lower = line.to_lowercase();
    assert!(
        words.iter().any(|w| lower.contains(w)),
        "error should mention one of {words:?}: {line}"
    );
    line.to_string()
}

/// Everything under `dir`, not following links: path -> type and content
/// (a file's sha256, a link's target).
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let t = m.file_type();
            let what = if t.is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else if t.is_dir() {
                walk(root, &p, out);
                "dir".to_string()
            } else if t.is_file() {
                format!("file {}", sha256_hex(&fs::read(&p).unwrap()))
            } else {
                format!("special {:o}", std::os::unix::fs::MetadataExt::mode(&m))
            };
            out.insert(rel, what);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Asserts a store is as `before`, but for the empty `.occystrap.lock` a
/// failed run may leave (the README says so).
fn assert_unchanged(store: &Path, before: &BTreeMap<String, String>, what: &str) {
    let mut after = snapshot(store);
    if !before.contains_key(".occystrap.lock")
        && after.get(".occystrap.lock").map(String::as_str)
            == Some(&*format!("file {}", sha256_hex(b"")))
    {
        after.remove(".occystrap.lock");
    }
    assert_eq!(&after, before, "{what}: the store changed");
}

/// A two-layer image with a file in each layer.
fn image(seed: &str) -> BuiltImage {
    Image::new("linux/amd64")
        .layer(
            TarBuilder::new()
                .dir("etc", 0o755)
                .file("etc/base", 0o644, format!("base {seed}\n").as_bytes())
                .finish(),
            Compression::Gzip,
        )
        .layer(
            TarBuilder::new()
                .file(&format!("top-{seed}"), 0o644, b"top\n")
                .finish(),
            Compression::None,
        )
        .build()
}

/// An image whose second layer holds an entry the extractor refuses.
fn hostile_image() -> BuiltImage {
    Image::new("linux/amd64")
        .layer(
            TarBuilder::new()
                .dir("etc", 0o755)
                .file("etc/ok", 0o644, b"ok\n")
                .finish(),
            Compression::Gzip,
        )
        .layer(
            TarBuilder::new()
                .raw_file(b"../escape", b"escaped\n")
                .finish(),
            Compression::Gzip,
        )
        .build()
}

/// An OCI layout at `work/<name>` holding `images` under their tags.
fn layout(env: &TestEnv, name: &str, images: &[(&str, &BuiltImage)]) -> PathBuf {
    let dir = env.work(name);
    let mut l = OciLayout::create(&dir);
    for (tag, img) in images {
        l.add_image(tag, img);
    }
    dir
}

fn layout_uri(dir: &Path, tag: &str) -> String {
    format!("oci-layout://{}:{tag}", dir.display())
}

/// A `dir://` store at `work/<name>` holding `img` (its layout is
/// `work/<name>-src`, tag `t`), with or without `unique_names`.
fn dir_store(env: &TestEnv, name: &str, img: &BuiltImage, unique: bool) -> PathBuf {
    let src = layout(env, &format!("{name}-src"), &[("t", img)]);
    let store = env.work(name);
    let uri = if unique {
        format!("dir://{}?unique_names=true", store.display())
    } else {
        format!("dir://{}", store.display())
    };
    env.occy()
        .args(["process", &layout_uri(&src, "t"), &uri])
        .ok();
    store
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

/// The files of a `dir://` store holding `img`: (what, relative path).
fn store_files(store: &Path, img: &BuiltImage) -> Vec<(&'static str, PathBuf)> {
    let manifest = if store.join("manifest.json").exists() {
        "manifest.json".to_string()
    } else {
        let catalog: serde_json::Value =
            serde_json::from_slice(&fs::read(store.join("catalog.json")).unwrap()).unwrap();
        let first = catalog.as_object().unwrap().values().next().unwrap();
        first
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    };
    vec![
        ("catalog", PathBuf::from("catalog.json")),
        ("manifest", PathBuf::from(manifest)),
        (
            "config",
            PathBuf::from(format!("{}.json", hex(&img.config_digest))),
        ),
        (
            "layer",
            Path::new(hex(&img.layers[1].diff_id)).join("layer.tar"),
        ),
    ]
}

// ---------------------------------------------------------------------------
// Class 6: FIFOs, sockets and devices where a file is expected

#[test]
fn special_files_in_a_dir_source_are_refused_at_once() {
    let env = TestEnv::new();
    let img = image("a");
    for unique in [true, false] {
        let name = format!("store-{unique}");
        let store = dir_store(&env, &name, &img, unique);
        let pristine = env.work(&format!("{name}-pristine"));
        copy_tree(&store, &pristine);
        for (what, rel) in store_files(&store, &img) {
            for kind in SPECIALS {
                fs::remove_dir_all(&store).unwrap();
                copy_tree(&pristine, &store);
                kind.plant(&store.join(&rel));
                let out_tar = env.out("x.tar");
                let out = occy_within(
                    &env,
                    &[
                        "process",
                        &format!("dir://{}", store.display()),
                        &format!("tar://{}", out_tar.display()),
                    ],
                    REFUSED_WITHIN,
                );
                let line = assert_refused(&out, &[kind.word()]);
                assert!(
                    line.contains(&rel.to_string_lossy().into_owned()),
                    "{what}: {line}"
                );
                assert!(env.out_dir_entries().is_empty(), "{what} {kind:?}");
            }
        }
    }
}

#[test]
fn special_files_in_a_dir_output_never_block() {
    let env = TestEnv::new();
    let img = image("a");
    let second = image("b");
    let src = layout(&env, "src", &[("t", &second)]);
    for unique in [true, false] {
        for (rel, refused) in [
            ("catalog.json", true),
            (".occystrap.lock", true),
            // Not opened, but not replaced either: only a regular file
            // is; with unique_names the run writes another manifest file.
            ("manifest.json", !unique),
        ] {
            for kind in SPECIALS {
                let store = dir_store(&env, &format!("out-{unique}-{rel}-{kind:?}"), &img, unique);
                kind.plant(&store.join(rel));
                let before = snapshot(&store);
                let uri = format!(
                    "dir://{}?unique_names={unique}&expand=true",
                    store.display()
                );
                let out = occy_within(
                    &env,
                    &["process", &layout_uri(&src, "t"), &uri],
                    REFUSED_WITHIN,
                );
                if refused {
                    assert_refused(&out, &[kind.word()]);
                    assert_unchanged(&store, &before, &format!("{rel} {kind:?}: store changed"));
                    assert!(kind.is_at(&store.join(rel)));
                } else {
                    assert_success(&out);
                }
            }
        }
    }
}

#[test]
fn special_files_in_an_oci_layout_source_are_refused_at_once() {
    let env = TestEnv::new();
    let img = image("a");
    let files = [
        PathBuf::from("index.json"),
        Path::new("blobs/sha256").join(hex(&img.manifest_digest)),
        Path::new("blobs/sha256").join(hex(&img.config_digest)),
        Path::new("blobs/sha256").join(hex(&img.layers[0].digest)),
    ];
    for (i, rel) in files.iter().enumerate() {
        for kind in SPECIALS {
            let dir = layout(&env, &format!("l-{i}-{kind:?}"), &[("t", &img)]);
            kind.plant(&dir.join(rel));
            for dest in ["tar", "dir"] {
                let out = occy_within(
                    &env,
                    &[
                        "process",
                        &layout_uri(&dir, "t"),
                        &format!("{dest}://{}", env.out("x").display()),
                    ],
                    REFUSED_WITHIN,
                );
                assert_refused(&out, &[kind.word()]);
                assert!(env.out_dir_entries().is_empty(), "{rel:?} {kind:?}");
            }
        }
    }
}

#[test]
fn special_files_in_an_oci_layout_output_are_refused_at_once() {
    let env = TestEnv::new();
    let img = image("a");
    let src = layout(&env, "src", &[("t", &image("b"))]);
    for rel in ["index.json", "oci-layout", ".occystrap.lock"] {
        for kind in SPECIALS {
            let out_layout = layout(&env, &format!("out-{rel}-{kind:?}"), &[("old", &img)]);
            kind.plant(&out_layout.join(rel));
            let before = snapshot(&out_layout);
            let out = occy_within(
                &env,
                &[
                    "process",
                    &layout_uri(&src, "t"),
                    &layout_uri(&out_layout, "new"),
                ],
                REFUSED_WITHIN,
            );
            assert_refused(&out, &[kind.word()]);
            assert_unchanged(
                &out_layout,
                &before,
                &format!("{rel} {kind:?}: layout changed"),
            );
        }
    }
}

#[test]
fn special_files_in_a_mounts_output_are_refused_at_once() {
    let env = TestEnv::new();
    let src = layout(&env, "src", &[("t", &image("b"))]);
    for rel in ["catalog.json", ".occystrap.lock"] {
        for kind in SPECIALS {
            let tree = env.work(&format!("m-{rel}-{kind:?}"));
            let uri = format!("mounts://{}", tree.display());
            env.occy()
                .args([
                    "process",
                    &layout_uri(
                        &layout(&env, &format!("a-{rel}-{kind:?}"), &[("t", &image("a"))]),
                        "t",
                    ),
                    &uri,
                ])
                .ok();
            kind.plant(&tree.join(rel));
            let before = snapshot(&tree);
            let out = occy_within(
                &env,
                &["process", &layout_uri(&src, "t"), &uri],
                REFUSED_WITHIN,
            );
            assert_refused(&out, &[kind.word()]);
            assert_unchanged(&tree, &before, &format!("{rel} {kind:?}: tree changed"));
        }
    }
}

#[test]
fn special_files_as_tar_input_or_output_are_refused_at_once() {
    let env = TestEnv::new();
    let src = layout(&env, "src", &[("t", &image("a"))]);
    for kind in SPECIALS {
        let input = env.work(&format!("in-{kind:?}.tar"));
        kind.plant(&input);
        let out = occy_within(
            &env,
            &[
                "process",
                &format!("tar://{}", input.display()),
                &format!("dir://{}", env.out("x").display()),
            ],
            REFUSED_WITHIN,
        );
        assert_refused(&out, &[kind.word()]);
        assert!(env.out_dir_entries().is_empty());

        let output = env.work(&format!("out-{kind:?}.tar"));
        kind.plant(&output);
        let out = occy_within(
            &env,
            &[
                "process",
                &layout_uri(&src, "t"),
                &format!("tar://{}", output.display()),
            ],
            REFUSED_WITHIN,
        );
        assert_refused(&out, &[kind.word()]);
        assert!(kind.is_at(&output), "the {kind:?} was replaced");

        // An OCI bundle where the special file is.
        let out = occy_within(
            &env,
            &[
                "process",
                &layout_uri(&src, "t"),
                &format!("oci://{}", output.display()),
            ],
            REFUSED_WITHIN,
        );
        assert_refused(&out, &["not a directory"]);
        assert!(kind.is_at(&output), "the {kind:?} was replaced");
    }
    // Docker's config.json as a FIFO: a registry pull looks for credentials
    // there; it must neither block nor fail the run on its account.
    Special::Fifo.plant(&env.docker_config_dir().join("config.json"));
    let out = occy_within(
        &env,
        &[
            "--insecure",
            "--retries",
            "0",
            "process",
            "registry://127.0.0.1:9/none/such:v1",
            &format!("tar://{}", env.out("y.tar").display()),
        ],
        Duration::from_secs(60),
    );
    assert_no_panic(&out);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// Class 6: signals while blocked

/// A run waiting for a store lock another process holds ends within 2 s of
/// SIGTERM or SIGINT, leaving the store as it was.
#[test]
fn signal_ends_a_run_waiting_for_the_store_lock() {
    let env = TestEnv::new();
    let src = layout(&env, "src", &[("t", &image("b"))]);
    for (signal, name) in [(libc::SIGTERM, "term"), (libc::SIGINT, "int")] {
        for scheme in ["dir", "oci-layout", "mounts"] {
            let store = env.work(&format!("{scheme}-{name}"));
            fs::create_dir_all(&store).unwrap();
            if scheme == "oci-layout" {
                OciLayout::create(&store);
            }
            let lock = fs::File::create(store.join(".occystrap.lock")).unwrap();
            // SAFETY: flock on a file we own.
            assert_eq!(
                unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
                0
            );
            let before = snapshot(&store);
            let dest = match scheme {
                "oci-layout" => layout_uri(&store, "v1"),
                _ => format!("{scheme}://{}", store.display()),
            };
            let mut child = spawn(&env, &["process".into(), layout_uri(&src, "t"), dest]);
            // The tiny image takes well under this; the run is then waiting.
            std::thread::sleep(Duration::from_millis(1500));
            assert!(
                child.try_wait().unwrap().is_none(),
                "{scheme}: the run did not wait for the lock"
            );
            let (code, took, stderr) = interrupt(&mut child, signal);
            assert!(
                took < EXIT_WITHIN,
                "{scheme} {name}: exit took {took:?}\n{stderr}"
            );
            assert_eq!(code, Some(1), "{scheme} {name}: {stderr}");
            assert!(stderr.contains("interrupted"), "{stderr}");
            assert_unchanged(&store, &before, &format!("{scheme} {name}: store changed"));
            drop(lock);
        }
    }
}

/// A run stuck in a blocking open (a FIFO the user named as the inspect
/// filter's output, which has no reader) still ends within 2 s of a signal.
#[test]
fn signal_ends_a_run_stuck_in_a_blocking_open() {
    let env = TestEnv::new();
    let src = layout(&env, "src", &[("t", &image("a"))]);
    for (signal, name) in [(libc::SIGTERM, "term"), (libc::SIGINT, "int")] {
        let fifo = env.work(&format!("inspect-{name}.fifo"));
        Special::Fifo.plant(&fifo);
        let mut child = spawn(
            &env,
            &[
                "process".into(),
                layout_uri(&src, "t"),
                format!("tar://{}", env.out("x.tar").display()),
                "-f".into(),
                format!("inspect:file={}", fifo.display()),
            ],
        );
        std::thread::sleep(Duration::from_millis(1500));
        // The filter opens its file for appending at the start: with no
        // reader on the FIFO, that open blocks.
        assert!(
            child.try_wait().unwrap().is_none(),
            "{name}: the run did not block on the FIFO"
        );
        let (code, took, stderr) = interrupt(&mut child, signal);
        assert!(took < EXIT_WITHIN, "{name}: exit took {took:?}\n{stderr}");
        assert_ne!(code, Some(0), "{name}: {stderr}");
        assert!(stderr.contains("interrupted"), "{stderr}");
        // The tarball's temp file goes too, though the run never unwound.
        assert!(
            env.out_dir_entries().is_empty(),
            "{:?}",
            env.out_dir_entries()
        );
    }
}

// ---------------------------------------------------------------------------
// Class 11: symlinks below a store's root

#[test]
fn symlinked_lock_files_are_refused_and_their_targets_never_created() {
    let env = TestEnv::new();
    let src = layout(&env, "src", &[("t", &image("b"))]);
    for scheme in ["dir", "dir-expand", "oci-layout", "mounts"] {
        let store = env.work(&format!("{scheme}-store"));
        fs::create_dir_all(&store).unwrap();
        if scheme == "oci-layout" {
            OciLayout::create(&store);
        }
        let victim = env.work(&format!("{scheme}-victim"));
        for target in [victim.clone(), PathBuf::from(format!("../{scheme}-victim"))] {
            let _ = fs::remove_file(store.join(".occystrap.lock"));
            symlink(&target, store.join(".occystrap.lock")).unwrap();
            let before = snapshot(&store);
            let dest = match scheme {
                "oci-layout" => layout_uri(&store, "v1"),
                "dir-expand" => format!("dir://{}?expand=true", store.display()),
                _ => format!("{scheme}://{}", store.display()),
            };
            let out = occy_within(
                &env,
                &["process", &layout_uri(&src, "t"), &dest],
                REFUSED_WITHIN,
            );
            assert_refused(&out, &["symbolic link"]);
            assert!(
                fs::symlink_metadata(&victim).is_err(),
                "{scheme}: the link's target was created"
            );
            assert_unchanged(&store, &before, &format!("{scheme}: store changed"));
        }
    }
}

#[test]
fn symlinked_layer_dirs_in_outputs_are_refused_and_their_targets_untouched() {
    let env = TestEnv::new();
    let img = image("b");
    let src = layout(&env, "src", &[("t", &img)]);
    let layer_hex = hex(&img.layers[1].diff_id);
    let blob_hex = hex(&img.layers[1].digest);
    let cases: Vec<(&str, PathBuf)> = vec![
        ("dir", PathBuf::from(layer_hex)),
        ("dir-expand", PathBuf::from(layer_hex)),
        ("mounts", PathBuf::from(layer_hex)),
        ("mounts", Path::new(layer_hex).join("layer")),
        ("oci-layout", PathBuf::from("blobs/sha256")),
        ("oci-layout", PathBuf::from("blobs")),
    ];
    for (i, (scheme, rel)) in cases.iter().enumerate() {
        let store = env.work(&format!("s{i}"));
        if *scheme == "oci-layout" {
            OciLayout::create(&store);
            fs::remove_dir_all(store.join(rel)).unwrap();
        } else {
            fs::create_dir_all(store.join(rel).parent().unwrap()).unwrap();
        }
        let victim = env.work(&format!("victim{i}"));
        fs::create_dir_all(&victim).unwrap();
        fs::write(victim.join("keep"), b"precious\n").unwrap();
        symlink(&victim, store.join(rel)).unwrap();
        let before = snapshot(&store);
        let dest = match *scheme {
            "oci-layout" => layout_uri(&store, "v1"),
            "dir-expand" => format!("dir://{}?expand=true", store.display()),
            s => format!("{s}://{}", store.display()),
        };
        let out = occy_within(
            &env,
            &["process", &layout_uri(&src, "t"), &dest],
            REFUSED_WITHIN,
        );
        assert_refused(&out, &["symbolic link"]);
        assert_eq!(
            snapshot(&victim).keys().collect::<Vec<_>>(),
            vec!["keep"],
            "{scheme} {rel:?}: written through the link"
        );
        assert_unchanged(&store, &before, &format!("{scheme} {rel:?}: store changed"));
    }

    // A blob planted as a link to a file outside: the file is never
    // written, and the layout is not left with a link as its blob.
    let store = layout(&env, "blob-link", &[]);
    let victim = env.work("victim-file");
    fs::write(&victim, b"precious\n").unwrap();
    symlink(&victim, store.join("blobs/sha256").join(blob_hex)).unwrap();
    let out = occy_within(
        &env,
        &["process", &layout_uri(&src, "t"), &layout_uri(&store, "v1")],
        REFUSED_WITHIN,
    );
    assert_refused(&out, &["not a regular file", "symbolic link"]);
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
}

#[test]
fn symlinks_in_a_dir_source_are_not_followed() {
    let env = TestEnv::new();
    let img = image("a");
    let store = dir_store(&env, "store", &img, true);
    let pristine = env.work("pristine");
    copy_tree(&store, &pristine);
    let mut cases: Vec<PathBuf> = store_files(&store, &img)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    cases.push(PathBuf::from(hex(&img.layers[0].diff_id)));
    for rel in cases {
        // The link points at a good copy outside: reading it would succeed.
        fs::remove_dir_all(&store).unwrap();
        copy_tree(&pristine, &store);
        let outside = env.work("outside");
        let _ = fs::remove_dir_all(&outside);
        fs::create_dir_all(&outside).unwrap();
        let target = outside.join(rel.file_name().unwrap());
        fs::rename(store.join(&rel), &target).unwrap();
        symlink(&target, store.join(&rel)).unwrap();
        let out = occy_within(
            &env,
            &[
                "process",
                &format!("dir://{}", store.display()),
                &format!("tar://{}", env.out("x.tar").display()),
            ],
            REFUSED_WITHIN,
        );
        assert_refused(&out, &["symbolic link"]);
        assert!(env.out_dir_entries().is_empty(), "{rel:?}");
    }

    // The root itself is the user's choice: reached through a link, fine.
    fs::remove_dir_all(&store).unwrap();
    copy_tree(&pristine, &store);
    let via = env.work("via-link");
    symlink(&store, &via).unwrap();
    env.occy()
        .args([
            "process",
            &format!("dir://{}", via.display()),
            &format!("tar://{}", env.out("ok.tar").display()),
        ])
        .ok();
}

#[test]
fn symlinks_in_an_oci_layout_source_are_not_followed() {
    let env = TestEnv::new();
    let img = image("a");
    let cases = [
        PathBuf::from("index.json"),
        PathBuf::from("blobs"),
        PathBuf::from("blobs/sha256"),
        Path::new("blobs/sha256").join(hex(&img.manifest_digest)),
        Path::new("blobs/sha256").join(hex(&img.layers[0].digest)),
    ];
    for (i, rel) in cases.iter().enumerate() {
        let dir = layout(&env, &format!("l{i}"), &[("t", &img)]);
        let outside = env.work(&format!("outside{i}"));
        fs::create_dir_all(&outside).unwrap();
        let target = outside.join(rel.file_name().unwrap());
        fs::rename(dir.join(rel), &target).unwrap();
        symlink(&target, dir.join(rel)).unwrap();
        let out = occy_within(
            &env,
            &[
                "process",
                &layout_uri(&dir, "t"),
                &format!("tar://{}", env.out("x.tar").display()),
            ],
            REFUSED_WITHIN,
        );
        assert_refused(&out, &["symbolic link"]);
        assert!(env.out_dir_entries().is_empty(), "{rel:?}");
    }
}

// ---------------------------------------------------------------------------
// Class 10: a failed run leaves nothing behind

#[test]
fn failed_runs_leave_stores_exactly_as_they_were() {
    let env = TestEnv::new();
    let good = image("a");
    let hostile = hostile_image();
    let src = layout(&env, "src", &[("good", &good), ("evil", &hostile)]);
    // A layout whose second layer blob does not match its digest.
    let mut corrupt_img = image("c");
    let corrupt = layout(&env, "corrupt", &[("t", &corrupt_img)]);
    let blob = corrupt
        .join("blobs/sha256")
        .join(hex(&corrupt_img.layers[1].digest));
    let mut bytes = fs::read(&blob).unwrap();
    bytes[600] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();
    corrupt_img.layers.clear();

    let runs: Vec<(&str, String, String)> = vec![
        (
            "dir?expand=true",
            layout_uri(&src, "good"),
            layout_uri(&src, "evil"),
        ),
        (
            "dir?unique_names=true&expand=true",
            layout_uri(&src, "good"),
            layout_uri(&src, "evil"),
        ),
        ("dir", layout_uri(&src, "good"), layout_uri(&corrupt, "t")),
        (
            "oci-layout",
            layout_uri(&src, "good"),
            layout_uri(&corrupt, "t"),
        ),
        ("mounts", layout_uri(&src, "good"), layout_uri(&src, "evil")),
        (
            "mounts",
            layout_uri(&src, "good"),
            layout_uri(&corrupt, "t"),
        ),
    ];
    for (i, (kind, first, second)) in runs.iter().enumerate() {
        let store = env.work(&format!("store{i}"));
        let (scheme, query) = kind.split_once('?').map_or((*kind, ""), |(s, q)| (s, q));
        let uri = |tag: &str| match scheme {
            "oci-layout" => layout_uri(&store, tag),
            _ if query.is_empty() => format!("{scheme}://{}", store.display()),
            _ => format!("{scheme}://{}?{query}", store.display()),
        };
        // Into a directory that does not exist: it does not exist after.
        let out = occy_within(
            &env,
            &["process", second, &uri("v2")],
            Duration::from_secs(60),
        );
        assert_refused(&out, &["layer", "digest", "escape", "mismatch"]);
        assert!(
            fs::symlink_metadata(&store).is_err(),
            "{kind}: {} was left",
            store.display()
        );

        // Into an existing store: exactly as it was.
        env.occy().args(["process", first, &uri("v1")]).ok();
        let before = snapshot(&store);
        let out = occy_within(
            &env,
            &["process", second, &uri("v2")],
            Duration::from_secs(60),
        );
        assert_refused(&out, &["layer", "digest", "escape", "mismatch"]);
        assert_unchanged(
            &store,
            &before,
            &format!("{kind}: the failed run changed the store"),
        );
    }
}

/// Copies a tree of directories and regular files.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            copy_tree(&p, &to.join(e.file_name()));
        } else if t.is_file() {
            fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// Something in the way of the last steps (a linked rootfs directory, a
/// directory where the config or manifest goes) is found before any of the
/// run's layers become visible: the store is left as it was.
#[test]
fn things_in_the_way_are_refused_before_anything_moves() {
    let env = TestEnv::new();
    let img = image("b");
    let src = layout(&env, "src", &[("t", &img)]);
    let config = format!("{}.json", hex(&img.config_digest));
    let config_blob = format!("blobs/sha256/{}", hex(&img.config_digest));
    let cases: [(&str, &str, bool); 6] = [
        ("dir?expand=true", "manifest", true),
        ("dir", &config, false),
        ("dir", "manifest.json", false),
        ("mounts", "manifest.json", false),
        ("mounts", &config, false),
        ("oci-layout", &config_blob, false),
    ];
    for (i, (kind, rel, link)) in cases.iter().enumerate() {
        let store = env.work(&format!("s{i}"));
        let (scheme, query) = kind.split_once('?').unwrap_or((kind, ""));
        if scheme == "oci-layout" {
            OciLayout::create(&store);
        }
        let victim = env.work(&format!("victim{i}"));
        fs::create_dir_all(&victim).unwrap();
        fs::write(victim.join("keep"), b"precious\n").unwrap();
        fs::create_dir_all(store.join(rel).parent().unwrap()).unwrap();
        if *link {
            symlink(&victim, store.join(rel)).unwrap();
        } else {
            fs::create_dir_all(store.join(rel).join("sub")).unwrap();
        }
        let before = snapshot(&store);
        let dest = match scheme {
            "oci-layout" => layout_uri(&store, "v1"),
            _ if query.is_empty() => format!("{scheme}://{}", store.display()),
            _ => format!("{scheme}://{}?{query}", store.display()),
        };
        let out = occy_within(
            &env,
            &["process", &layout_uri(&src, "t"), &dest],
            REFUSED_WITHIN,
        );
        assert_refused(&out, &["symbolic link", "directory"]);
        assert_unchanged(&store, &before, &format!("{kind} {rel}"));
        assert_eq!(
            snapshot(&victim).keys().collect::<Vec<_>>(),
            vec!["keep"],
            "{kind} {rel}"
        );
    }
}
