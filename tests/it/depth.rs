//! Trees far deeper than one name can reach (a symlink hop every 2,000
//! levels), in every sink that extracts: a refused entry after one leaves
//! nothing behind, even when the binary may hold only a few fds; and
//! whiteouts at depth delete exactly what is below them.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::support::layer_tar::TarBuilder;
use crate::support::{Compression, Image, OciLayout, Output, TestEnv, assert_no_panic};

/// Levels between two symlink hops.
const HOP: usize = 2000;
/// RLIMIT_NOFILE for the runs: far below the depths tried, so a removal
/// (or a whiteout walk) needing one fd per level fails.
const FDS: u64 = 128;

/// A layer tar built entry by entry (GNU long names and links), on the
/// tests' [`TarBuilder`], with helpers for deep chains.
#[derive(Default)]
struct Deep(TarBuilder);

impl Deep {
    fn new() -> Deep {
        Deep::default()
    }

    fn with(&mut self, f: impl FnOnce(TarBuilder) -> TarBuilder) -> &mut Deep {
        self.0 = f(std::mem::take(&mut self.0));
        self
    }

    fn dir(&mut self, name: &str) -> &mut Deep {
        self.with(|t| t.dir(name, 0o755))
    }

    fn file(&mut self, name: &str, data: &str) -> &mut Deep {
        self.with(|t| t.file(name, 0o644, data.as_bytes()))
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Deep {
        self.with(|t| t.symlink(name, target))
    }

    /// A file whose name goes into the header as is (`..` included).
    fn raw_file(&mut self, name: &str) -> &mut Deep {
        self.with(|t| t.raw_file(name.as_bytes(), b"x"))
    }

    /// `top/d/.../d`, `depth` levels, with a symlink `hop -> d^HOP` every
    /// [`HOP`] levels to reach further than PATH_MAX.
    fn chain(&mut self, top: &str, depth: usize, hop: &str) -> &mut Deep {
        let seg = vec!["d"; HOP].join("/");
        let mut via = top.to_string();
        let mut level = 0;
        while depth - level > HOP {
            self.dir(&format!("{via}/{seg}"));
            self.symlink(&format!("{via}/{hop}"), &seg);
            via = format!("{via}/{hop}");
            level += HOP;
        }
        self.dir(&format!("{via}/{}", vec!["d"; depth - level].join("/")))
    }

    /// The same chain made by one file entry `name`, through dangling
    /// symlinks at the root (`{hop}1 -> top/d^HOP`, `{hop}2 -> {hop}1/d^HOP`,
    /// ...), so all its directories are made at once. Returns the links.
    fn chain_at_once(&mut self, top: &str, depth: usize, hop: &str, name: &str) -> Vec<String> {
        let seg = vec!["d"; HOP].join("/");
        let mut via = top.to_string();
        let mut level = 0;
        let mut links = Vec::new();
        while depth - level > HOP {
            let link = format!("{hop}{}", links.len() + 1);
            self.symlink(&link, &format!("{via}/{seg}"));
            via = link.clone();
            links.push(link);
            level += HOP;
        }
        let rest = vec!["d"; depth - level].join("/");
        self.file(&format!("{via}/{rest}/{name}"), name);
        links
    }

    fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0).finish()
    }
}

/// `name` at `level` of a chain, reached through its hops.
fn at(top: &str, level: usize, hop: &str, name: &str) -> String {
    let hops = level.saturating_sub(1) / HOP;
    let mut p = top.to_string();
    for _ in 0..hops {
        p.push('/');
        p.push_str(hop);
    }
    for _ in 0..level - hops * HOP {
        p.push_str("/d");
    }
    format!("{p}/{name}")
}

/// Scratch space for outputs: on tmpfs when there is one (a deep tree is
/// slow to make and remove on a journalled disk), removed at any depth.
struct Scratch(PathBuf);

impl Scratch {
    fn new(env: &TestEnv) -> Scratch {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            env.work("")
        };
        let dir = tempfile::Builder::new()
            .prefix("occy-depth-")
            .tempdir_in(base)
            .unwrap()
            .keep();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = occystrap::rmtree::remove(&self.0);
    }
}

/// An OCI layout in the test's work dir holding an image of `layers`.
fn layout(env: &TestEnv, name: &str, layers: Vec<Vec<u8>>) -> String {
    let mut img = Image::new("linux/amd64");
    for l in layers {
        img = img.layer(l, Compression::Gzip);
    }
    let dir = env.work(name);
    OciLayout::create(&dir).add_image("t", &img.build());
    format!("oci-layout://{}:t", dir.display())
}

/// Names under `dir`, three levels down at most (leftovers are shallow).
fn shallow(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), String::new(), 0)];
    while let Some((d, prefix, depth)) = todo.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            if depth < 3 && e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push((e.path(), format!("{name}/"), depth + 1));
            }
            out.push(name);
        }
    }
    out.sort();
    out
}

/// Exit 1, one `error:` line naming the refused entry.
fn assert_refused(out: &Output) {
    assert_no_panic(out);
    assert_eq!(out.code, Some(1), "{}\n{}", out.cmdline, out.stderr);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "{}: {}", out.cmdline, out.stderr);
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("escapes"),
        "{}",
        lines[0]
    );
}

/// A deep tree, then a refused entry.
fn deep_then_refused(env: &TestEnv, depth: usize) -> String {
    let mut l = Deep::new();
    l.chain("top", depth, "j")
        .file(&at("top", depth, "j", "f"), "deep")
        .raw_file("../escape");
    layout(env, &format!("refused-{depth}"), vec![l.finish()])
}

const DEPTHS: [usize; 3] = [4_000, 6_000, 24_000];

#[test]
fn refused_after_deep_tree_leaves_nothing_in_oci_bundles() {
    let env = TestEnv::new();
    for depth in DEPTHS {
        let src = deep_then_refused(&env, depth);
        let out_dir = Scratch::new(&env);
        let bundle = out_dir.0.join("bundle");
        let out = env
            .occy()
            .fd_limit(FDS)
            .args(["process", &src, &format!("oci://{}", bundle.display())])
            .run();
        assert_refused(&out);
        assert_eq!(shallow(&out_dir.0), Vec::<String>::new(), "depth {depth}");
    }
}

#[test]
fn refused_after_deep_tree_leaves_nothing_in_expanded_stores() {
    let env = TestEnv::new();
    for depth in DEPTHS {
        let src = deep_then_refused(&env, depth);
        let out_dir = Scratch::new(&env);
        let store = out_dir.0.join("store");
        let out = env
            .occy()
            .fd_limit(FDS)
            .args([
                "process",
                &src,
                &format!("dir://{}?expand=true", store.display()),
            ])
            .run();
        assert_refused(&out);
        // What the store keeps of a failed run is its own business (the
        // verified layer, maybe); no tree, staged or not, is left.
        let left = shallow(&out_dir.0);
        assert!(
            left.iter()
                .all(|n| !n.contains(".tmp-") && !n.contains(".old-") && !n.ends_with("/top")),
            "depth {depth}: {left:?}"
        );
        assert!(!store.join("manifest").exists(), "depth {depth}");
    }
}

#[test]
fn refused_after_deep_tree_leaves_nothing_in_mounts() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let env = TestEnv::new();
    for depth in DEPTHS {
        let src = deep_then_refused(&env, depth);
        let out_dir = Scratch::new(&env);
        // A new store, which appears only if the run succeeds; and an
        // existing one, which must not keep the failed layer's directory.
        let new = out_dir.0.join("new");
        let existing = out_dir.0.join("existing");
        fs::create_dir(&existing).unwrap();
        for m in [&new, &existing] {
            let out = env
                .occy()
                .fd_limit(FDS)
                .args(["process", &src, &format!("mounts://{}", m.display())])
                .run();
            assert_refused(&out);
        }
        assert_eq!(
            shallow(&out_dir.0),
            vec!["existing".to_string()],
            "depth {depth}"
        );
    }
}

// ---------------------------------------------------------------------------
// Whiteouts at depth, through the binary

/// The image: a lower layer with a deep `top` (a file `old` at its
/// bottom) and a deep `gone`. The upper layer writes `new` at the bottom of
/// `top` (through the lower layer's hops), makes that bottom opaque (`old`
/// goes, `new` stays) and whites out `top` (the lower hops go, the
/// directories it wrote into and `new` stay); whites out `gone` (all of
/// it goes); and makes a deep `mine` in one entry and whites it out (its
/// own: it stays). Returns the source and the links `mine` was made with.
fn whiteout_image(env: &TestEnv, depth: usize) -> (String, Vec<String>) {
    let mut lower = Deep::new();
    lower
        .chain("top", depth, "j")
        .file(&at("top", depth, "j", "old"), "lower")
        .chain("gone", depth, "j");
    let mut upper = Deep::new();
    upper
        .file(&at("top", depth, "j", "new"), "upper")
        .file(&at("top", depth, "j", ".wh..wh..opq"), "")
        .file(".wh.top", "")
        .file(".wh.gone", "");
    let links = upper.chain_at_once("mine", depth, "m", "deep");
    upper.file(".wh.mine", "");
    let src = layout(
        env,
        &format!("whiteouts-{depth}"),
        vec![lower.finish(), upper.finish()],
    );
    (src, links)
}

/// A chain's shape, one fd at a time: how deep `d` goes, and the names
/// beside it at each level (0 is the chain's top), with what they are.
fn chain_shape(root: &OwnedFd, top: &str) -> Option<(usize, BTreeMap<usize, Vec<String>>)> {
    let open = |dir: &OwnedFd, name: &str| {
        rustix::fs::openat2(
            dir,
            name,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        )
        .ok()
    };
    let mut cur = open(root, top)?;
    let mut depth = 0;
    let mut extra = BTreeMap::new();
    loop {
        let mut here = Vec::new();
        let mut next = false;
        for (name, _) in occystrap_list(&cur) {
            let st = rustix::fs::statat(&cur, name.as_str(), AtFlags::SYMLINK_NOFOLLOW).unwrap();
            let kind = FileType::from_raw_mode(st.st_mode);
            if name == "d" && kind == FileType::Directory {
                next = true;
                continue;
            }
            let what = match kind {
                FileType::Symlink => "link",
                FileType::RegularFile => "file",
                FileType::CharacterDevice => "chr",
                FileType::Directory => "dir",
                _ => "other",
            };
            here.push(format!("{name}:{what}"));
        }
        here.sort();
        if !here.is_empty() {
            extra.insert(depth, here);
        }
        if !next {
            return Some((depth, extra));
        }
        cur = open(&cur, "d").unwrap();
        depth += 1;
    }
}

fn occystrap_list(dir: &OwnedFd) -> Vec<(String, ())> {
    let mut out = Vec::new();
    let mut it = rustix::fs::Dir::read_from(dir.as_fd()).unwrap();
    while let Some(e) = it.read() {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().into_owned();
        if n != "." && n != ".." {
            out.push((n, ()));
        }
    }
    out
}

fn open_dir(p: &Path) -> OwnedFd {
    rustix::fs::open(p, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap()
}

/// What a chain holds beside `d`: `hop` links every [`HOP`] levels (none
/// when `hop` is empty) and `bottom` at level `depth`.
fn hops(hop: &str, bottom: &[&str], depth: usize) -> BTreeMap<usize, Vec<String>> {
    let mut m = BTreeMap::new();
    if !hop.is_empty() {
        for i in 0..(depth - 1) / HOP {
            m.insert(i * HOP, vec![format!("{hop}:link")]);
        }
    }
    if !bottom.is_empty() {
        let mut b: Vec<String> = bottom.iter().map(|s| s.to_string()).collect();
        b.sort();
        m.entry(depth).or_insert_with(Vec::new).extend(b);
    }
    m
}

#[test]
fn whiteouts_at_depth_in_oci_bundles() {
    let env = TestEnv::new();
    for depth in [4_000, 6_000, 20_000] {
        let (src, links) = whiteout_image(&env, depth);
        let out_dir = Scratch::new(&env);
        let bundle = out_dir.0.join("bundle");
        let out = env
            .occy()
            .fd_limit(FDS)
            .args(["process", &src, &format!("oci://{}", bundle.display())])
            .run();
        assert_eq!(out.code, Some(0), "depth {depth}: {}", out.stderr);
        let rootfs = open_dir(&bundle.join("rootfs"));
        let mut names: Vec<String> = occystrap_list(&rootfs).into_iter().map(|n| n.0).collect();
        names.sort();
        let mut want = links.clone();
        want.extend(["mine".to_string(), "top".to_string()]);
        want.sort();
        assert_eq!(names, want, "depth {depth}");
        assert_eq!(
            chain_shape(&rootfs, "mine"),
            Some((depth, hops("", &["deep:file"], depth))),
            "depth {depth}"
        );
        assert_eq!(
            chain_shape(&rootfs, "top"),
            Some((depth, hops("", &["new:file"], depth))),
            "depth {depth}"
        );
    }
}

#[test]
fn whiteouts_at_depth_in_mounts() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let env = TestEnv::new();
    let depth = 6_000;
    let (src, links) = whiteout_image(&env, depth);
    let out_dir = Scratch::new(&env);
    let m = out_dir.0.join("m");
    let out = env
        .occy()
        .fd_limit(FDS)
        .args(["process", &src, &format!("mounts://{}", m.display())])
        .run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // The upper layer's directory, in overlay form: `gone` a 0:0 device;
    // `top` and `mine` the layer's own, which its whiteouts do not hide.
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(m.join("manifest.json")).unwrap()).unwrap();
    let upper = m.join(manifest[0]["Layers"][1].as_str().unwrap());
    let gone = fs::symlink_metadata(upper.join("gone")).unwrap();
    assert!(gone.file_type().is_char_device());
    let root = open_dir(&upper);
    let mut names: Vec<String> = occystrap_list(&root).into_iter().map(|n| n.0).collect();
    names.sort();
    let mut want = links.clone();
    want.extend(["gone".to_string(), "mine".to_string(), "top".to_string()]);
    want.sort();
    assert_eq!(names, want);
    assert_eq!(
        chain_shape(&root, "mine"),
        Some((depth, hops("", &["deep:file"], depth)))
    );
    // The layer names `top/j/...` literally: alone in its directory, its
    // `j`s are plain directories. The bottom holds `new` and is opaque.
    let bottom = at("top", depth, "j", "");
    let mut cur = open_dir(&upper);
    for (i, c) in bottom.split('/').filter(|c| !c.is_empty()).enumerate() {
        let here: Vec<String> = occystrap_list(&cur).into_iter().map(|n| n.0).collect();
        if i > 0 {
            assert_eq!(here, [c.to_string()], "beside {c}");
        }
        cur = rustix::fs::openat(
            &cur,
            c,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .unwrap();
    }
    let here: Vec<String> = occystrap_list(&cur).into_iter().map(|n| n.0).collect();
    assert_eq!(here, ["new"]);
    let mut v = [0u8; 4];
    let n = rustix::fs::fgetxattr(&cur, "trusted.overlay.opaque", &mut v).unwrap();
    assert_eq!(&v[..n], b"y");
}
