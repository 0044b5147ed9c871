//! Helpers shared by the rewriter's and the filters' unit tests: tars from
//! the tar crate and from GNU tar, a rewrite over bytes in memory, and a raw
//! header scan.

use std::fs;
use std::io::{self, Cursor};
use std::path::Path;
use std::process::Command;

use super::*;
use crate::tarfmt::{
    BLOCK, GNU_IS_EXTENDED, GNU_SPARSE_EXT_IS_EXTENDED, MTIME, SIZE, TYPEFLAG, ZEROS, checksum_ok,
    is_gnu, padding, parse_numeric,
};
pub(crate) use crate::tarfmt::{NAME, parse_records, until_nul};

/// Rewrites `tar` in memory.
pub fn rewrite_bytes(tar: &[u8], rw: &mut dyn Rewrite) -> Result<(Vec<u8>, Stats)> {
    let mut out = Vec::new();
    let stats = rewrite_stream(Cursor::new(tar), &mut out, "test layer", rw)?;
    Ok((out, stats))
}

/// A rewrite that keeps everything and records each entry's path.
#[derive(Default)]
pub struct KeepAll {
    pub paths: Vec<Vec<u8>>,
    pub links: Vec<Vec<u8>>,
}

impl Rewrite for KeepAll {
    fn entry(&mut self, e: &mut Entry) -> Result<Action> {
        self.paths.push(e.path().to_vec());
        self.links.push(e.link_target().to_vec());
        Ok(Action::Keep)
    }
}

/// One header of a tar as its raw blocks show it.
#[derive(Debug)]
pub struct RawHeader {
    pub kind: u8,
    pub name: Vec<u8>,
    pub mtime: u64,
    pub data: Vec<u8>,
}

/// Every header block of a well-formed tar, extension headers
/// included, with the data of extension headers.
pub fn raw_headers(tar: &[u8]) -> Vec<RawHeader> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + BLOCK <= tar.len() {
        let block: [u8; BLOCK] = tar[pos..pos + BLOCK].try_into().unwrap();
        if block == ZEROS {
            break;
        }
        assert!(checksum_ok(&block), "checksum at {pos}");
        let size = parse_numeric(&block[SIZE]).unwrap() as usize;
        let kind = block[TYPEFLAG];
        pos += BLOCK;
        if kind == b'S' && is_gnu(&block) && block[GNU_IS_EXTENDED] != 0 {
            while tar[pos + GNU_SPARSE_EXT_IS_EXTENDED] != 0 {
                pos += BLOCK;
            }
            pos += BLOCK;
        }
        out.push(RawHeader {
            kind,
            name: until_nul(&block[NAME]).to_vec(),
            mtime: parse_numeric(&block[MTIME]).unwrap(),
            data: tar[pos..pos + size].to_vec(),
        });
        pos += size + padding(size as u64);
    }
    out
}

/// Runs GNU tar in `dir` with `args`, returning its stdout.
pub fn gnu_tar(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("tar")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run GNU tar");
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// GNU tar's verbose listing (`tar -tvv --full-time`) of a tar.
pub fn gnu_list(tar: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.tar");
    fs::write(&p, tar).unwrap();
    String::from_utf8(gnu_tar(
        dir.path(),
        &["--xattrs", "--full-time", "-tvf", "t.tar"],
    ))
    .unwrap()
}

/// A long directory name and a file below it, together well over 255
/// bytes (beyond ustar's prefix + name).
pub fn long_path() -> (String, String) {
    let dir = format!("long/{}/{}", "d".repeat(120), "e".repeat(110));
    let file = format!("{dir}/{}.txt", "long-name-".repeat(11));
    (dir, file)
}

/// Whether `path` got the xattr (security.* needs root).
pub fn try_setxattr(path: &Path, name: &str, value: &[u8]) -> bool {
    rustix::fs::setxattr(path, name, value, rustix::fs::XattrFlags::empty()).is_ok()
}

/// The capability xattr of a file with `cap_net_bind_service=ep`.
pub const CAP: &[u8] =
    b"\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";

/// A tree with every kind of entry GNU tar writes extension headers
/// for: long names and link targets, xattrs, hard links; old mtimes.
/// Returns whether the security.capability xattr could be set.
pub fn make_tree(root: &Path) -> bool {
    let (dir, file) = long_path();
    fs::create_dir_all(root.join(&dir)).unwrap();
    fs::create_dir_all(root.join("usr/share/doc/pkg")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join(&file), b"a file with a very long name\n").unwrap();
    fs::write(root.join("usr/share/doc/pkg/README"), b"docs\n").unwrap();
    fs::write(root.join("usr/share/doc/pkg/copyright"), b"(c)\n").unwrap();
    fs::write(root.join("usr/bin/ping"), b"#!/bin/sh\necho ping\n").unwrap();
    fs::write(root.join("etc/conf"), vec![b'c'; 1000]).unwrap();
    fs::hard_link(root.join("etc/conf"), root.join("etc/conf-link")).unwrap();
    fs::hard_link(
        root.join("usr/share/doc/pkg/README"),
        root.join("usr/bin/README-link"),
    )
    .unwrap();
    std::os::unix::fs::symlink(format!("/{file}"), root.join("etc/long-symlink")).unwrap();
    assert!(try_setxattr(&root.join("etc/conf"), "user.foo", b"bar"));
    let cap = try_setxattr(&root.join("usr/bin/ping"), "security.capability", CAP);
    // Old, distinct times, so normalizing visibly changes them.
    let out = Command::new("find")
        .arg(root)
        .args([
            "-exec",
            "touch",
            "-h",
            "-d",
            "2001-02-03 04:05:06",
            "{}",
            "+",
        ])
        .status()
        .unwrap();
    assert!(out.success());
    cap
}

/// GNU tar of `make_tree` in `format` (`pax`, `gnu`), with xattrs for
/// pax; sorted names so the archive is reproducible.
pub fn gnu_tree_tar(format: &str) -> (Vec<u8>, bool) {
    let dir = tempfile::tempdir().unwrap();
    let cap = make_tree(dir.path());
    let fmt = format!("--format={format}");
    let mut args = vec![fmt.as_str(), "--sort=name", "-cf", "-"];
    if format == "pax" {
        args.insert(0, "--xattrs");
        args.insert(1, "--xattrs-include=*");
    }
    args.push(".");
    (gnu_tar(dir.path(), &args), cap)
}

/// A tar written by the tar crate: GNU headers with long names and
/// link targets, a PAX header with xattrs, a hard link.
pub fn tar_crate_tar() -> Vec<u8> {
    let (dir, file) = long_path();
    let mut b = tar::Builder::new(Vec::new());
    let head = |kind: tar::EntryType, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_mtime(981_173_106);
        h
    };
    for d in ["etc", "long", &dir, "usr", "usr/share", "usr/share/doc"] {
        let mut h = head(tar::EntryType::Directory, 0);
        b.append_data(&mut h, d, io::empty()).unwrap();
    }
    let mut h = head(tar::EntryType::Regular, 5);
    b.append_data(&mut h, "usr/share/doc/README", &b"docs\n"[..])
        .unwrap();
    let mut h = head(tar::EntryType::Regular, 4);
    b.append_data(&mut h, &file, &b"long"[..]).unwrap();
    b.append_pax_extensions([
        ("SCHILY.xattr.user.foo", &b"bar"[..]),
        ("SCHILY.xattr.security.capability", CAP),
    ])
    .unwrap();
    let mut h = head(tar::EntryType::Regular, 3);
    b.append_data(&mut h, "etc/xattr", &b"xa\n"[..]).unwrap();
    let mut h = head(tar::EntryType::Link, 0);
    b.append_link(&mut h, "etc/doc-link", "usr/share/doc/README")
        .unwrap();
    let mut h = head(tar::EntryType::Symlink, 0);
    b.append_link(&mut h, "etc/long-symlink", format!("/{file}"))
        .unwrap();
    b.into_inner().unwrap()
}

/// Every entry as the tar crate reads it: (path, mtime, type, content,
/// link target, PAX records as "key=value").
pub type Listed = (String, u64, u8, Vec<u8>, String, Vec<String>);

/// Reads a tar with the tar crate.
pub fn tar_crate_list(tar: &[u8]) -> Vec<Listed> {
    let mut ar = tar::Archive::new(tar);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let mut pax = Vec::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                pax.push(format!(
                    "{}={}",
                    x.key().unwrap(),
                    String::from_utf8_lossy(x.value_bytes())
                ));
            }
        }
        let mtime = e.header().mtime().unwrap();
        let kind = e.header().entry_type().as_byte();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((path, mtime, kind, data, link, pax));
    }
    out
}
