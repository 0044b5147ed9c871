//! Whiteouts, opaque directories and removal in trees far deeper than
//! `PATH_MAX` allows one name to reach: a layer gets there through a
//! symlink hop every [`HOP`] levels. Each test asserts the exact tree left.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::{ExtractOptions, WhiteoutMode, extract_layer};
use crate::rmtree;

/// Levels between two symlink hops: `d/` * 2000 is 4000 bytes, under
/// PATH_MAX with room for the hops before it.
const HOP: usize = 2000;

/// A layer tar under construction (GNU long names and links from the tar
/// crate).
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, size: usize) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(size as u64);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn dir(&mut self, name: &str) -> &mut Layer {
        let mut h = Self::header(tar::EntryType::Directory, 0);
        self.0.append_data(&mut h, name, std::io::empty()).unwrap();
        self
    }

    fn file(&mut self, name: &str, data: &str) -> &mut Layer {
        let mut h = Self::header(tar::EntryType::Regular, data.len());
        self.0.append_data(&mut h, name, data.as_bytes()).unwrap();
        self
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Layer {
        let mut h = Self::header(tar::EntryType::Symlink, 0);
        self.0.append_link(&mut h, name, target).unwrap();
        self
    }

    /// A chain `top/d/d/.../d` of `depth` directories, reached through a
    /// symlink `hop` every [`HOP`] levels (`top/d^(i*HOP)/hop -> d^HOP`).
    /// Returns, for each level with a hop, its level.
    fn chain(&mut self, top: &str, depth: usize, hop: &str) -> Vec<usize> {
        let seg = vec!["d"; HOP].join("/");
        let mut via = top.to_string();
        let mut level = 0;
        let mut hops = Vec::new();
        while depth - level > HOP {
            self.dir(&format!("{via}/{seg}"));
            self.symlink(&format!("{via}/{hop}"), &seg);
            hops.push(level);
            via = format!("{via}/{hop}");
            level += HOP;
        }
        self.dir(&format!("{via}/{}", vec!["d"; depth - level].join("/")));
        hops
    }

    /// The same chain made by one entry: dangling symlinks at the root
    /// (`{hop}1 -> top/d^HOP`, `{hop}2 -> {hop}1/d^HOP`, ...) and a file
    /// `name` through the last of them, whose parents are all made at
    /// once. Returns the links' names.
    fn chain_at_once(
        &mut self,
        top: &str,
        depth: usize,
        hop: &str,
        name: &str,
        data: &str,
    ) -> Vec<String> {
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
        self.file(&format!("{via}/{rest}/{name}"), data);
        links
    }

    /// `name` in the directory at `level` of a chain made by [`chain`],
    /// reached through its hops.
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

    fn bytes(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()))
            .into_inner()
            .unwrap()
    }
}

fn apply_as(root: &Path, layer: &mut Layer, mode: WhiteoutMode) {
    let opts = ExtractOptions {
        whiteouts: mode,
        skip_unsafe: false,
        layer_name: "layer".into(),
        cancel: Default::default(),
    };
    extract_layer(root, &layer.bytes()[..], &opts).unwrap();
}

fn apply(root: &Path, layer: &mut Layer) {
    apply_as(root, layer, WhiteoutMode::Apply);
}

/// What a chain holds: the root's names beside `top`; how deep the chain
/// of `d` goes below `top` (`None`: no `top`); and for each level of it
/// (0 is `top` itself), the names beside the next `d`, with what they are.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    root: BTreeMap<String, String>,
    depth: Option<usize>,
    extra: BTreeMap<usize, BTreeMap<String, String>>,
}

fn describe(dir: &OwnedFd, name: &[u8]) -> String {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => "dir".into(),
        FileType::Symlink => {
            let t = rustix::fs::readlinkat(dir, name, Vec::new()).unwrap();
            let t = t.to_string_lossy();
            // Hop targets are long: name them by their number of levels.
            format!("link:{}", t.matches('d').count())
        }
        FileType::RegularFile => {
            let fd = rustix::fs::openat(dir, name, OFlags::RDONLY, Mode::empty()).unwrap();
            let mut s = String::new();
            std::fs::File::from(fd).read_to_string(&mut s).unwrap();
            format!("file:{s}")
        }
        FileType::CharacterDevice => format!("chr:{}", st.st_rdev),
        other => format!("{other:?}"),
    }
}

/// The names in `dir` except `next` (if a directory), and whether `next`
/// is there as a directory.
fn level(dir: &OwnedFd, next: &[u8]) -> (BTreeMap<String, String>, bool) {
    let mut here = BTreeMap::new();
    let mut has_next = false;
    for (name, _) in rmtree::list(dir.as_fd()).unwrap() {
        let kind = describe(dir, &name);
        if name == next && kind == "dir" {
            has_next = true;
        } else {
            here.insert(String::from_utf8(name).unwrap(), kind);
        }
    }
    (here, has_next)
}

/// Walks a chain one fd at a time (so any depth).
fn shape(root: &Path) -> Shape {
    let cur = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    let (root_names, has_top) = level(&cur, b"top");
    let mut extra = BTreeMap::new();
    if !has_top {
        return Shape {
            root: root_names,
            depth: None,
            extra,
        };
    }
    let mut cur = rmtree::open_child_dir(cur.as_fd(), b"top").unwrap();
    let mut depth = 0;
    loop {
        let (here, has_next) = level(&cur, b"d");
        if !here.is_empty() {
            extra.insert(depth, here);
        }
        if !has_next {
            break;
        }
        cur = rmtree::open_child_dir(cur.as_fd(), b"d").unwrap();
        depth += 1;
    }
    Shape {
        root: root_names,
        depth: Some(depth),
        extra,
    }
}

fn hops_at(levels: &[usize]) -> BTreeMap<usize, BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for &l in levels {
        m.insert(
            l,
            BTreeMap::from([("j".to_string(), format!("link:{HOP}"))]),
        );
    }
    m
}

const DEPTHS: [usize; 3] = [4_000, 6_000, 20_000];

/// A scratch directory, on tmpfs when there is one: deep trees are slow
/// to make and remove on a journalled disk (about 3 ms a level on ext4
/// here, against 0.1 ms on tmpfs). Dropped, it is removed with the removal
/// under test: the standard library's recurses once per level and would
/// overflow the stack on the deepest trees when a test fails.
pub(crate) struct Sandbox(tempfile::TempDir);

impl Sandbox {
    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = rmtree::remove(self.0.path());
    }
}

pub(crate) fn sandbox() -> Sandbox {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::Builder::new()
            .prefix("occy-depth-")
            .tempdir_in(shm)
        {
            return Sandbox(t);
        }
    }
    Sandbox(tempfile::tempdir().unwrap())
}

/// Removes what a test built, with the removal under test (the harness's
/// own would run out of fds on the deepest trees and leave them).
fn done(t: Sandbox) {
    rmtree::remove(t.path()).unwrap();
    assert!(!t.path().exists());
}

/// Runs `f` in a forked child with RLIMIT_NOFILE set to `limit`; the
/// child's exit status says whether `f` returned true. The child first
/// closes the descriptors it inherited (other tests' open files), which
/// would otherwise take the low numbers the limit allows.
pub(crate) fn with_fd_limit(limit: u64, f: impl FnOnce() -> bool) -> bool {
    // SAFETY: the child runs `f` and exits without returning. The only
    // lock it may share with the harness's other threads is the
    // allocator's, which glibc resets in a forked child.
    match unsafe { libc::fork() } {
        0 => {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: plain system calls on the child's own descriptors.
            unsafe {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                libc::_exit(if f() { 0 } else { 1 })
            }
        }
        -1 => panic!("fork failed"),
        pid => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
        }
    }
}

#[test]
fn same_layer_deep_file_survives_a_whiteout_of_its_top() {
    for depth in DEPTHS {
        // The whiteout before the tree, too (once: the order is not what
        // depth changes).
        let orders: &[bool] = if depth == 6_000 {
            &[false, true]
        } else {
            &[false]
        };
        for &whiteout_first in orders {
            let t = sandbox();
            let root = t.path();
            let mut l = Layer::new();
            if whiteout_first {
                l.file(".wh.top", "");
            }
            let hops = l.chain("top", depth, "j");
            l.file(&Layer::at("top", depth, "j", "deep"), "mine");
            if !whiteout_first {
                l.file(".wh.top", "");
            }
            apply(root, &mut l);
            let mut want = hops_at(&hops);
            want.entry(depth)
                .or_default()
                .insert("deep".into(), "file:mine".into());
            let got = shape(root);
            assert!(got.root.is_empty(), "{:?}", got.root);
            assert_eq!(got.depth, Some(depth), "depth {depth}");
            assert_eq!(
                got.extra, want,
                "depth {depth}, whiteout first {whiteout_first}"
            );
            done(t);
        }
    }
}

/// A whole deep tree made by one entry (its parents through dangling
/// symlinks): marking its ancestors must reach the top in one go.
#[test]
fn tree_made_by_one_entry_survives_its_own_whiteout() {
    for depth in DEPTHS {
        let t = sandbox();
        let root = t.path();
        let mut l = Layer::new();
        let links = l.chain_at_once("top", depth, "h", "deep", "mine");
        l.file(".wh.top", "");
        l.file("top/.wh..wh..opq", "");
        apply(root, &mut l);
        let got = shape(root);
        let want_root: BTreeMap<String, String> = links
            .iter()
            .map(|n| (n.clone(), format!("link:{HOP}")))
            .collect();
        assert_eq!(got.root, want_root, "depth {depth}");
        assert_eq!(got.depth, Some(depth), "depth {depth}");
        assert_eq!(
            got.extra,
            BTreeMap::from([(
                depth,
                BTreeMap::from([("deep".to_string(), "file:mine".to_string())])
            )]),
            "depth {depth}"
        );
        // The next layer's whiteout takes it all.
        apply(root, Layer::new().file(".wh.top", ""));
        let got = shape(root);
        assert_eq!(got.depth, None, "depth {depth}");
        assert_eq!(got.root, want_root, "depth {depth}");
        done(t);
    }
}

#[test]
fn lower_deep_tree_is_whited_out() {
    for depth in DEPTHS {
        let t = sandbox();
        let root = t.path();
        let mut l = Layer::new();
        l.chain("top", depth, "j");
        l.file(&Layer::at("top", depth, "j", "old"), "lower");
        l.file("beside", "stays");
        apply(root, &mut l);
        apply(root, Layer::new().file(".wh.top", ""));
        let got = shape(root);
        assert_eq!(
            got,
            Shape {
                root: BTreeMap::from([("beside".to_string(), "file:stays".to_string())]),
                depth: None,
                extra: BTreeMap::new(),
            },
            "depth {depth}"
        );
        done(t);
    }
}

#[test]
fn whiteout_over_a_rewritten_deep_tree_removes_only_the_lower_part() {
    for depth in DEPTHS {
        let t = sandbox();
        let root = t.path();
        let mut lower = Layer::new();
        let hops = lower.chain("top", depth, "j");
        for &h in &hops {
            lower.file(&Layer::at("top", h, "j", "x"), "lower");
        }
        lower.file(&Layer::at("top", depth, "j", "old"), "lower");
        apply(root, &mut lower);
        // The upper layer reaches the bottom through hops of its own, so
        // the lower layer's hops and files are all lower content.
        let mut upper = Layer::new();
        let mut seg_via = "top".to_string();
        let mut level = 0;
        let mut khops = Vec::new();
        while depth - level > HOP {
            upper.symlink(&format!("{seg_via}/k"), &vec!["d"; HOP].join("/"));
            khops.push(level);
            seg_via.push_str("/k");
            level += HOP;
        }
        upper.file(&Layer::at("top", depth, "k", "new"), "upper");
        upper.file(".wh.top", "");
        apply(root, &mut upper);
        let mut want = BTreeMap::new();
        for &h in &khops {
            want.insert(
                h,
                BTreeMap::from([("k".to_string(), format!("link:{HOP}"))]),
            );
        }
        want.entry(depth)
            .or_insert_with(BTreeMap::new)
            .insert("new".to_string(), "file:upper".to_string());
        let got = shape(root);
        assert_eq!(got.depth, Some(depth), "depth {depth}");
        assert_eq!(got.extra, want, "depth {depth}");
        done(t);
    }
}

#[test]
fn opaque_directories_at_depth() {
    for depth in DEPTHS {
        // The same layer's content survives its own opaque markers, at the
        // top and at the bottom.
        let t = sandbox();
        let root = t.path();
        let mut l = Layer::new();
        l.file("top/.wh..wh..opq", "");
        let hops = l.chain("top", depth, "j");
        l.file(&Layer::at("top", depth, "j", "deep"), "mine");
        l.file(&Layer::at("top", depth, "j", ".wh..wh..opq"), "");
        l.file("top/.wh..wh..opq", "");
        apply(root, &mut l);
        let mut want = hops_at(&hops);
        want.entry(depth)
            .or_default()
            .insert("deep".into(), "file:mine".into());
        let got = shape(root);
        assert_eq!(got.depth, Some(depth), "depth {depth}");
        assert_eq!(got.extra, want, "same layer, depth {depth}");

        // A lower layer's content: an opaque bottom loses its files only.
        apply(
            root,
            Layer::new().file(&Layer::at("top", depth, "j", ".wh..wh..opq"), ""),
        );
        let got = shape(root);
        assert_eq!(got.depth, Some(depth), "depth {depth}");
        assert_eq!(got.extra, hops_at(&hops), "opaque bottom, depth {depth}");

        // An opaque top loses everything below it, and stays.
        apply(root, Layer::new().file("top/.wh..wh..opq", ""));
        let got = shape(root);
        assert_eq!(got.depth, Some(0), "opaque top, depth {depth}");
        assert!(got.extra.is_empty(), "opaque top, depth {depth}: {got:?}");
        done(t);
    }
}

#[test]
fn overlay_whiteouts_at_depth() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let depth = 6_000;
    let t = sandbox();
    let root = t.path();
    let mut l = Layer::new();
    let hops = l.chain("top", depth, "j");
    l.file(&Layer::at("top", depth, "j", ".wh.gone"), "");
    l.file(&Layer::at("top", depth, "j", "kept"), "k");
    apply_as(root, &mut l, WhiteoutMode::Overlay);
    let mut want = hops_at(&hops);
    let bottom = want.entry(depth).or_default();
    bottom.insert("gone".into(), "chr:0".into());
    bottom.insert("kept".into(), "file:k".into());
    let got = shape(root);
    assert_eq!(got.depth, Some(depth));
    assert_eq!(got.extra, want);
    done(t);
}

/// Extraction, whiteouts and removal of a 24,000-deep tree need only a
/// handful of fds: run in a forked child with RLIMIT_NOFILE at 64.
#[test]
fn deep_layers_need_few_fds() {
    let depth = 24_000;
    let t = sandbox();
    let root = t.path().to_path_buf();
    let mut lower = Layer::new();
    lower.chain("top", depth, "j");
    lower.file(&Layer::at("top", depth, "j", "old"), "lower");
    lower.chain("gone", 6_000, "j");
    let lower = lower.bytes();
    let mut upper = Layer::new();
    upper.file(&Layer::at("top", depth, "j", "new"), "upper");
    upper.file(".wh.top", "");
    upper.file(".wh.gone", "");
    let upper = upper.bytes();
    let run = || {
        let opts = ExtractOptions {
            whiteouts: WhiteoutMode::Apply,
            skip_unsafe: false,
            layer_name: "layer".into(),
            cancel: Default::default(),
        };
        extract_layer(&root, &lower[..], &opts).is_ok()
            && extract_layer(&root, &upper[..], &opts).is_ok()
    };
    let ok = with_fd_limit(64, run);
    assert!(ok, "extraction failed under RLIMIT_NOFILE=64");
    // The lower layer's hops were lower content, and went with the rest:
    // what the upper layer wrote through them stays.
    let got = shape(&root);
    assert!(got.root.is_empty(), "{:?}", got.root);
    assert_eq!(got.depth, Some(depth));
    let want = BTreeMap::from([(
        depth,
        BTreeMap::from([("new".to_string(), "file:upper".to_string())]),
    )]);
    assert_eq!(got.extra, want);
    done(t);
}

/// Scale rather than depth: a whiteout of a directory holding 50,000
/// lower-layer entries, and an opaque marker on one where the same layer
/// added one entry among 50,000.
#[test]
fn whiteouts_of_wide_directories() {
    const N: usize = 50_000;
    let t = sandbox();
    let root = t.path();
    let mut lower = Layer::new();
    for i in 0..N {
        lower.file(&format!("wide/f{i}"), "");
        lower.file(&format!("opq/f{i}"), "");
    }
    apply(root, &mut lower);
    let mut upper = Layer::new();
    upper.file("opq/mine", "m");
    upper.file("opq/.wh..wh..opq", "");
    upper.file(".wh.wide", "");
    apply(root, &mut upper);
    let names = |p: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root.join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(""), ["opq"]);
    assert_eq!(names("opq"), ["mine"]);
    done(t);
}
