//! A walker that records a directory tree entry by entry so two
//! extractions can be compared.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::sha256_hex;

/// One entry of a tree as the comparison sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `file`, `dir`, `symlink`, `fifo`, `char`, `block`, `socket`.
    pub kind: &'static str,
    /// Permission bits with setuid, setgid and sticky (0 for symlinks).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size of a regular file (0 otherwise).
    pub size: u64,
    /// sha256 of a regular file's content.
    pub sha256: Option<String>,
    /// A symlink's target.
    pub target: Option<String>,
    /// A device's number.
    pub rdev: u64,
    /// Extended attributes, `security.selinux` left out.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Modification time in seconds (layers carry whole seconds).
    pub mtime: i64,
}

/// A tree read entry by entry, with its hard link groups.
#[derive(Debug, Default)]
pub struct Tree {
    /// Every path below the root (relative), with what it is.
    pub nodes: BTreeMap<String, Node>,
    /// Sets of paths that are one inode (only groups of two or more).
    pub links: BTreeSet<Vec<String>>,
}

impl Tree {
    /// Walks `root` without following symlinks.
    pub fn scan(root: &Path) -> Tree {
        let mut tree = Tree::default();
        let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
        walk(root, root, &mut tree, &mut inodes);
        for (_, mut paths) in inodes {
            if paths.len() > 1 {
                paths.sort();
                tree.links.insert(paths);
            }
        }
        tree
    }

    /// Every difference from `other`, one line each (empty when equal).
    pub fn diff(&self, other: &Tree, mine: &str, theirs: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (p, n) in &self.nodes {
            match other.nodes.get(p) {
                None => out.push(format!("{p}: only in {mine} ({n:?})")),
                Some(o) if o != n => {
                    out.push(format!("{p}: differs\n  {mine}: {n:?}\n  {theirs}: {o:?}"))
                }
                _ => {}
            }
        }
        for (p, o) in &other.nodes {
            if !self.nodes.contains_key(p) {
                out.push(format!("{p}: only in {theirs} ({o:?})"));
            }
        }
        if self.links != other.links {
            out.push(format!(
                "hard links differ\n  {mine}: {:?}\n  {theirs}: {:?}",
                self.links, other.links
            ));
        }
        out
    }
}

fn walk(root: &Path, dir: &Path, tree: &mut Tree, inodes: &mut BTreeMap<(u64, u64), Vec<String>>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let meta = fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else {
            "socket"
        };
        let (size, sha256) = if ft.is_file() {
            let data = fs::read(&path).unwrap();
            (data.len() as u64, Some(sha256_hex(&data)))
        } else {
            (0, None)
        };
        if ft.is_file() && meta.nlink() > 1 {
            inodes
                .entry((meta.dev(), meta.ino()))
                .or_default()
                .push(rel.clone());
        }
        let node = Node {
            kind,
            mode: if ft.is_symlink() {
                0
            } else {
                meta.mode() & 0o7777
            },
            uid: meta.uid(),
            gid: meta.gid(),
            size,
            sha256,
            target: ft
                .is_symlink()
                .then(|| fs::read_link(&path).unwrap().display().to_string()),
            rdev: if ft.is_char_device() || ft.is_block_device() {
                meta.rdev()
            } else {
                0
            },
            xattrs: xattrs(&path),
            mtime: meta.mtime(),
        };
        tree.nodes.insert(rel, node);
        if ft.is_dir() {
            walk(root, &path, tree, inodes);
        }
    }
}

/// A path's xattrs (not following a symlink), `security.selinux` left out.
pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 64 * 1024];
    let n = match rustix::fs::llistxattr(path, &mut names) {
        Ok(n) => n,
        Err(_) => return out,
    };
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if name == "security.selinux" {
            continue;
        }
        let mut value = vec![0u8; 64 * 1024];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value).unwrap_or(0);
        value.truncate(len);
        out.insert(name, value);
    }
    out
}
