//! Hostile tar headers through every reader of the binary: metadata bombs
//! (PAX `x`/`g`, GNU `L`/`K` declaring 512 MiB or 2 GiB) refused in one line
//! with peak RSS under a ceiling; sparse files with terabyte holes extracted
//! in seconds; and name layouts readers could disagree on either refused or
//! excluded for real.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};

use occystrap::tarfmt::testkit::{Magic, RawTar, header, name_layouts};

use crate::support::limits::{Measured, run_measured};
use crate::support::push::{PushFormat, push_layout};
use crate::support::{
    Compression, Image, OciLayout, Registry, TestEnv, assert_clean_failure, assert_no_panic,
    sha256_digest, sha256_hex, tar_uri,
};

/// Peak RSS allowed for a run that meets a bomb: far above the tool's
/// normal footprint (tens of MB), far below what the headers declare.
const RSS_CEILING: u64 = 200 << 20;
/// Wall-clock ceiling for a layer with terabyte holes.
const SPARSE_CEILING: Duration = Duration::from_secs(20);

const MIB: u64 = 1 << 20;

/// A gzip member holding 1 MiB of zeros, made once.
fn zeros_member() -> &'static [u8] {
    static M: OnceLock<Vec<u8>> = OnceLock::new();
    M.get_or_init(|| gzip(&vec![0u8; MIB as usize]))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A gzip layer blob whose extension header of `kind` declares `declared`
/// bytes, all present (as zeros), followed by a file `after`: the blob is a
/// few MiB at most, the tar `declared` bytes. Returns the blob and the tar's
/// sha256 (computed by `sha256sum` as the zeros stream by, so the test
/// never holds the tar).
fn bomb_blob(kind: u8, declared: u64) -> (Vec<u8>, String) {
    type Built = ((u8, u64), (Vec<u8>, String));
    static CACHE: OnceLock<Mutex<Vec<Built>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some((_, v)) = cache
        .lock()
        .unwrap()
        .iter()
        .find(|(k, _)| *k == (kind, declared))
    {
        return v.clone();
    }
    assert_eq!(declared % MIB, 0);
    let magic = if matches!(kind, b'L' | b'K') {
        Magic::Gnu
    } else {
        Magic::Ustar
    };
    let mut head = RawTar::new();
    head.push(header(kind, b"././@Bomb", declared, magic), &[]);
    let head = head.bytes;
    let mut tail = RawTar::new();
    tail.file(b"after", b"after the bomb\n");
    let tail = tail.finish();
    let mut blob = gzip(&head);
    for _ in 0..declared / MIB {
        blob.extend_from_slice(zeros_member());
    }
    blob.extend_from_slice(&gzip(&tail));
    let mut sum = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    {
        let mut w = sum.stdin.take().unwrap();
        w.write_all(&head).unwrap();
        let zeros = vec![0u8; MIB as usize];
        for _ in 0..declared / MIB {
            w.write_all(&zeros).unwrap();
        }
        w.write_all(&tail).unwrap();
    }
    let out = sum.wait_with_output().unwrap();
    let hex = String::from_utf8(out.stdout).unwrap()[..64].to_string();
    let v = (blob, format!("sha256:{hex}"));
    cache.lock().unwrap().push(((kind, declared), v.clone()));
    v
}

/// A layer tar whose extension header of `kind` declares `declared` bytes
/// that are not there: the file after it follows at once. Cheap to build
/// at any size; a reader that trusts the header is caught as surely.
fn declared_bomb(kind: u8, declared: u64) -> Vec<u8> {
    let magic = if matches!(kind, b'L' | b'K') {
        Magic::Gnu
    } else {
        Magic::Ustar
    };
    let mut t = RawTar::new();
    t.push(header(kind, b"././@Bomb", declared, magic), &[]);
    t.file(b"after", b"after the bomb\n");
    t.finish()
}

/// An OCI layout at `dir` with one image, tag `t`, of one gzip layer given
/// as its blob and diff_id.
fn layout_with_blob(dir: &Path, blob: &[u8], diff_id: &str) {
    let mut built = Image::new("linux/amd64")
        .layer(RawTar::new().finish(), Compression::Gzip)
        .build();
    let mut config: Value = serde_json::from_slice(&built.config).unwrap();
    config["rootfs"]["diff_ids"] = json!([diff_id]);
    built.config = serde_json::to_vec(&config).unwrap();
    built.config_digest = sha256_digest(&built.config);
    let mut manifest: Value = serde_json::from_slice(&built.manifest).unwrap();
    manifest["config"]["digest"] = json!(built.config_digest);
    manifest["config"]["size"] = json!(built.config.len());
    let digest = format!("sha256:{}", sha256_hex(blob));
    manifest["layers"][0]["digest"] = json!(digest);
    manifest["layers"][0]["size"] = json!(blob.len());
    built.manifest = serde_json::to_vec_pretty(&manifest).unwrap();
    built.manifest_digest = sha256_digest(&built.manifest);
    built.layers[0].blob = blob.to_vec();
    built.layers[0].digest = digest;
    built.layers[0].diff_id = diff_id.to_string();
    built.diff_ids = vec![diff_id.to_string()];
    let mut l = OciLayout::create(dir);
    l.add_image("t", &built);
}

fn layout_with_tar(dir: &Path, tar: &[u8]) {
    let built = Image::new("linux/amd64")
        .layer(tar.to_vec(), Compression::Gzip)
        .build();
    let mut l = OciLayout::create(dir);
    l.add_image("t", &built);
}

/// [`assert_clean_failure`], except for what a `dir://` store keeps after a
/// failed run (that is the store's contract, tested with the store).
fn refused(env: &TestEnv, out: &crate::support::Output, any_of: &[&str]) -> String {
    let moved = env.work("kept-store");
    let store = env.out("store");
    if store.exists() {
        let _ = fs::remove_dir_all(&moved);
        fs::rename(&store, &moved).unwrap();
    }
    assert_clean_failure(env, out, any_of)
}

/// Asserts a clean one-line refusal naming the layer (when `layer`) and
/// the bomb header, under the RSS ceiling.
fn assert_bomb_refused(env: &TestEnv, m: &Measured, layer: bool) {
    let line = refused(env, &m.out, &["limit"]);
    assert!(line.contains("@Bomb"), "names the entry: {line}");
    if layer {
        assert!(line.contains("layer 0"), "names the layer: {line}");
    }
    assert!(
        m.peak_rss < RSS_CEILING,
        "{}: peak RSS {} MB, over {} MB",
        m.out.cmdline,
        m.peak_rss >> 20,
        RSS_CEILING >> 20
    );
    eprintln!("[{}] peak RSS {} MB", m.out.cmdline, m.peak_rss >> 20);
}

/// The sinks and commands that read a layer from an OCI layout source.
fn local_runs(env: &TestEnv, src: &str) -> Vec<(&'static str, Vec<String>)> {
    let out = |n: &str| env.out(n).display().to_string();
    vec![
        (
            "dir expand",
            vec![
                "process".into(),
                src.into(),
                format!("dir://{}?expand=true", out("store")),
            ],
        ),
        (
            "oci bundle",
            vec![
                "process".into(),
                src.into(),
                format!("oci://{}", out("bundle")),
            ],
        ),
        (
            "mounts",
            vec![
                "process".into(),
                src.into(),
                format!("mounts://{}", out("mounts")),
            ],
        ),
        ("search", vec!["search".into(), src.into(), "after".into()]),
        (
            "exclude",
            vec![
                "process".into(),
                src.into(),
                tar_uri(&env.out("x.tar")),
                "-f".into(),
                "exclude:pattern=nothing".into(),
            ],
        ),
        (
            "normalize-timestamps",
            vec![
                "process".into(),
                src.into(),
                tar_uri(&env.out("n.tar")),
                "-f".into(),
                "normalize-timestamps".into(),
            ],
        ),
    ]
}

#[test]
fn metadata_bombs_are_refused_by_every_local_reader() {
    for kind in [b'x', b'g', b'L', b'K'] {
        for declared in [512 * MIB, 2048 * MIB] {
            let env = TestEnv::new();
            let layout = env.work("layout");
            layout_with_tar(&layout, &declared_bomb(kind, declared));
            let src = format!("oci-layout://{}:t", layout.display());
            for (what, args) in local_runs(&env, &src) {
                eprintln!("== {} {declared}: {what}", char::from(kind));
                let m = run_measured(env.occy().args(&args));
                assert_bomb_refused(&env, &m, true);
            }
            assert_check_reports_bomb(&env, &src);
        }
    }
}

/// check reports a bomb as a finding rather than failing the run.
fn assert_check_reports_bomb(env: &TestEnv, src: &str) {
    let m = run_measured(env.occy().args(["check", src]));
    assert_no_panic(&m.out);
    assert_ne!(m.out.code, Some(0), "{}", m.out.stdout);
    let all = format!("{}{}", m.out.stdout, m.out.stderr);
    assert!(all.contains("limit") && all.contains("@Bomb"), "{all}");
    assert!(m.peak_rss < RSS_CEILING, "check: {} MB", m.peak_rss >> 20);
}

/// The bombs with every declared byte present (as gzip'd zeros): what a
/// reader that trusts the header would really allocate.
#[test]
fn full_size_bombs_stay_under_the_memory_ceiling() {
    // Sources that verify a layer before handing it on decompress all of it
    // first (minutes for 2 GiB in a debug build): two picks suffice, since
    // every reader shares the one capped header reader.
    let picks: &[(u8, u64, &str)] = &[
        (b'x', 512 * MIB, "dir expand"),
        (b'g', 512 * MIB, "normalize-timestamps"),
    ];
    for &(kind, declared, path) in picks {
        let env = TestEnv::new();
        let (blob, diff_id) = bomb_blob(kind, declared);
        let layout = env.work("layout");
        layout_with_blob(&layout, &blob, &diff_id);
        let src = format!("oci-layout://{}:t", layout.display());
        let (_, args) = local_runs(&env, &src)
            .into_iter()
            .find(|(w, _)| *w == path)
            .unwrap();
        eprintln!("== {} {declared}: {path}", char::from(kind));
        let m = run_measured(env.occy().args(&args));
        assert_bomb_refused(&env, &m, true);
    }
}

#[test]
fn metadata_bombs_are_refused_in_a_registry_pull() {
    let env = TestEnv::new();
    let reg = Registry::start();
    // (kind, declared, whether the declared bytes are really there)
    for &(kind, declared, full) in &[
        (b'x', 512 * MIB, true),
        (b'g', 2048 * MIB, false),
        (b'L', 2048 * MIB, false),
        (b'K', 2048 * MIB, false),
    ] {
        let layout = env.work(&format!("layout-{}", char::from(kind)));
        if full {
            let (blob, diff_id) = bomb_blob(kind, declared);
            layout_with_blob(&layout, &blob, &diff_id);
        } else {
            layout_with_tar(&layout, &declared_bomb(kind, declared));
        }
        let repo = format!("bomb/{}", char::from(kind).to_ascii_lowercase());
        push_layout(
            &env,
            &reg,
            &layout,
            &format!("{repo}:v1"),
            PushFormat::Preserve,
        );
        let src = reg.uri(&repo, "v1");
        let store = env.out("store");
        let m = run_measured(env.occy().args([
            "--insecure",
            "process",
            &src,
            &format!("dir://{}?expand=true", store.display()),
        ]));
        assert_bomb_refused(&env, &m, true);
        // search streams the blob straight from the registry.
        let m = run_measured(env.occy().args(["--insecure", "search", &src, "after"]));
        assert_bomb_refused(&env, &m, true);
    }
}

/// A docker-save tarball whose first header is a PAX header declaring
/// `declared` bytes; the data is a hole in a sparse file, so the test costs
/// no disk.
#[test]
fn docker_save_tarball_with_a_bomb_header_is_refused() {
    for &(kind, declared) in &[(b'x', 512 * MIB), (b'L', 2048 * MIB), (b'g', 2048 * MIB)] {
        let env = TestEnv::new();
        let path = env.work("bomb.tar");
        let magic = if kind == b'L' {
            Magic::Gnu
        } else {
            Magic::Ustar
        };
        let mut head = RawTar::new();
        head.push(header(kind, b"././@Bomb", declared, magic), &[]);
        let mut tail = RawTar::new();
        tail.file(b"manifest.json", b"[]");
        let tail = tail.finish();
        let f = fs::File::create(&path).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&head.bytes, 0).unwrap();
        f.write_all_at(&tail, 512 + declared).unwrap();
        drop(f);
        let m = run_measured(env.occy().args([
            "process",
            &tar_uri(&path),
            &format!("dir://{}?expand=true", env.out("store").display()),
        ]));
        let line = refused(&env, &m.out, &["limit"]);
        assert!(line.contains("@Bomb"), "{line}");
        assert!(m.peak_rss < RSS_CEILING, "{} MB", m.peak_rss >> 20);
    }
}

fn sparse_layers() -> Vec<(&'static str, Vec<u8>)> {
    const TIB: u64 = 1 << 40;
    let segs: &[(u64, &[u8])] = &[(0, b"head"), (TIB / 2, b"middle"), (TIB - 4, b"tail")];
    let mut out = Vec::new();
    let mut t = RawTar::new();
    t.old_sparse(b"big", TIB, segs);
    out.push(("old GNU", t.finish()));
    let mut t = RawTar::new();
    t.pax_sparse_01(b"big", TIB, segs);
    out.push(("PAX 0.1", t.finish()));
    let mut t = RawTar::new();
    t.pax_sparse_10(b"big", TIB, segs);
    out.push(("PAX 1.0", t.finish()));
    out
}

#[test]
fn terabyte_holes_extract_in_seconds() {
    use std::os::unix::fs::FileExt;
    for (what, tar) in sparse_layers() {
        let env = TestEnv::new();
        let layout = env.work("layout");
        layout_with_tar(&layout, &tar);
        let src = format!("oci-layout://{}:t", layout.display());
        let store = env.out("store");
        let m = run_measured(env.occy().args([
            "process",
            &src,
            &format!("dir://{}?expand=true", store.display()),
        ]));
        assert_eq!(m.out.code, Some(0), "{what}: {}", m.out.stderr);
        assert!(
            m.out.elapsed < SPARSE_CEILING,
            "{what}: {:?}",
            m.out.elapsed
        );
        let found = find(&store, "big").unwrap_or_else(|| panic!("{what}: no big"));
        let f = fs::File::open(&found).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 1 << 40, "{what}");
        let mut b = [0u8; 6];
        f.read_exact_at(&mut b, 1 << 39).unwrap();
        assert_eq!(&b, b"middle", "{what}");
        f.read_exact_at(&mut b[..4], (1 << 40) - 4).unwrap();
        assert_eq!(&b[..4], b"tail", "{what}");
        for cmd in [vec!["search", &src, "big"], vec!["check", &src]] {
            let m = run_measured(env.occy().args(&cmd));
            assert_no_panic(&m.out);
            assert!(m.out.elapsed < SPARSE_CEILING, "{what}: {cmd:?}");
        }
    }
}

#[test]
fn bad_sparse_maps_are_refused_in_one_line() {
    let mut cases = Vec::new();
    let mut t = RawTar::new();
    t.old_sparse(b"bad", 100, &[(50, b"a"), (10, b"b")]);
    cases.push(("out of order", t.finish()));
    let mut t = RawTar::new();
    t.pax_sparse_10(b"bad", 100, &[(10, b"aaaa"), (12, b"b")]);
    cases.push(("overlapping", t.finish()));
    let mut t = RawTar::new();
    t.pax_sparse_01(b"bad", 100, &[(99, b"ab")]);
    cases.push(("beyond the real size", t.finish()));
    let mut t = RawTar::new();
    t.old_sparse(b"bad", 1 << 50, &[(0, b"a")]);
    cases.push(("real size over the cap", t.finish()));
    for (what, tar) in cases {
        let env = TestEnv::new();
        let layout = env.work("layout");
        layout_with_tar(&layout, &tar);
        let src = format!("oci-layout://{}:t", layout.display());
        let out = env
            .occy()
            .args([
                "process",
                &src,
                &format!("dir://{}?expand=true", env.out("store").display()),
            ])
            .run();
        let line = refused(&env, &out, &["sparse"]);
        assert!(
            line.contains("layer 0") && line.contains("bad"),
            "{what}: {line}"
        );
    }
}

fn find(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if e.file_name() == name {
            return Some(p);
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if let Some(f) = find(&p, name) {
                return Some(f);
            }
        }
    }
    None
}

#[test]
fn exclude_removes_what_the_extractor_would_write() {
    for (what, tar) in name_layouts() {
        let env = TestEnv::new();
        let layout = env.work("layout");
        layout_with_tar(&layout, &tar);
        let src = format!("oci-layout://{}:t", layout.display());
        let store = env.out("store");
        let out = env
            .occy()
            .args([
                "process",
                &src,
                &format!("dir://{}?expand=true", store.display()),
                "-f",
                "exclude:pattern=**/victim,pattern=victim",
            ])
            .run();
        assert_no_panic(&out);
        match out.code {
            Some(0) => assert!(
                find(&store, "victim").is_none(),
                "{what}: the excluded file was extracted"
            ),
            Some(1) => {
                refused(&env, &out, &[]);
            }
            c => panic!("{what}: exit {c:?}: {}", out.stderr),
        }
        // Without the filter the same layout is refused or gives victim:
        // the test would catch an exclude that matched nothing.
        let plain = env.out("plain");
        let out = env
            .occy()
            .args([
                "process",
                &src,
                &format!("dir://{}?expand=true", plain.display()),
            ])
            .run();
        if out.code == Some(0) {
            assert!(find(&plain, "victim").is_some(), "{what}: {}", out.stderr);
        }
    }
}
