//! What a header says beyond an entry's type and name (mode, owner, times,
//! xattrs), read from it and applied to what was written.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};

use super::{Extractor, Fail, MAX_XATTR_WARNINGS, shown};
use crate::Error;
use crate::tarfmt;

/// What a header says about an entry, beyond its type and name.
pub(super) struct Meta {
    /// Permission bits with setuid, setgid and sticky.
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) atime: Timespec,
    pub(super) mtime: Timespec,
    /// Names as they go to disk (already filtered and escaped).
    pub(super) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    pub(super) fn times(&self) -> Timestamps {
        Timestamps {
            last_access: self.atime,
            last_modification: self.mtime,
        }
    }
}

/// How an xattr could not be set, for one summary line.
pub(super) struct XattrFailure {
    pub(super) count: u64,
    pub(super) first_entry: String,
    pub(super) error: String,
}

/// Where xattrs go.
pub(super) enum XattrTarget<'f> {
    /// An open file or directory.
    Fd(BorrowedFd<'f>),
    /// A name in an open directory (symlinks, FIFOs, devices).
    At(BorrowedFd<'f>, &'f [u8]),
}

impl Extractor<'_> {
    /// Reads mode, owner, times and xattrs from the header and its PAX records.
    pub(super) fn read_meta(&mut self, entry: &tarfmt::Entry, raw: &[u8]) -> Result<Meta, Fail> {
        let bad = |field: &str| {
            Fail::Fatal(Error::InvalidArchive {
                path: PathBuf::from(&self.opts.layer_name),
                message: format!("entry {}: bad {field} field in its header", shown(raw)),
            })
        };
        let mode = entry.mode().ok_or_else(|| bad("mode"))? & 0o7777;
        // u32::MAX is the "no change" value of chown(2), never a real owner.
        let id = |v: u64| u32::try_from(v).ok().filter(|&v| v != u32::MAX);
        let uid = entry.uid().ok_or_else(|| bad("uid"))?;
        let gid = entry.gid().ok_or_else(|| bad("gid"))?;
        let (Some(uid), Some(gid)) = (id(uid), id(gid)) else {
            return Err(Fail::Refused(
                "has an owner or group id out of range".into(),
            ));
        };
        let secs = entry.mtime().ok_or_else(|| bad("mtime"))?;
        let mut mtime = Timespec {
            tv_sec: i64::try_from(secs).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let mut atime = None;
        let mut xattrs = Vec::new();
        let overlay = !self.apply_mode();
        {
            // Malformed records never get here: the reader refuses them.
            for rec in &entry.pax {
                let key = rec.key.as_slice();
                let value = rec.value.as_slice();
                if key == b"mtime" {
                    if let Some(t) = parse_pax_time(value) {
                        mtime = t;
                    }
                } else if key == b"atime" {
                    atime = parse_pax_time(value);
                } else if let Some(x) = key.strip_prefix(b"SCHILY.xattr.") {
                    if x == b"security.selinux" || x == b"system.nfs4_acl" {
                        // Host-specific labels: applying them would be wrong or refused.
                        *self.ignored_xattrs.entry(x.to_vec()).or_default() += 1;
                        continue;
                    }
                    let disk = match x.strip_prefix(b"trusted.overlay.") {
                        // Unescaped, overlayfs would obey them (redirects,
                        // opacity) instead of showing them to the container.
                        Some(rest) if overlay => [&b"trusted.overlay.overlay."[..], rest].concat(),
                        _ => x.to_vec(),
                    };
                    xattrs.push((disk, value.to_vec()));
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            atime: atime.unwrap_or(mtime),
            mtime,
            xattrs,
        })
    }

    pub(super) fn chown_fd(&self, fd: &impl AsFd, meta: &Meta, rel: &[u8]) -> Result<(), Fail> {
        if !self.privileged {
            return Ok(());
        }
        rustix::fs::fchown(
            fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| self.io_fail("setting the owner of", rel, e))
    }

    /// Removes xattrs a lower layer left on a directory this layer
    /// redefines, so the result carries exactly the layer's set.
    pub(super) fn clear_xattrs(&mut self, fd: &OwnedFd, meta: &Meta, rel: &[u8]) {
        let Ok(size) = rustix::fs::flistxattr_query(fd) else {
            return;
        };
        if size == 0 {
            return;
        }
        let mut list = vec![0u8; size];
        let Ok(n) = rustix::fs::flistxattr(fd, &mut list[..]) else {
            return;
        };
        for name in list[..n.min(size)]
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
        {
            let keep = meta.xattrs.iter().any(|(x, _)| x == name)
                || name == b"security.selinux"
                || name == b"system.nfs4_acl"
                // In overlay form this is ours (an opaque marker), not the image's.
                || (!self.apply_mode()
                    && name.starts_with(b"trusted.overlay.")
                    && !name.starts_with(b"trusted.overlay.overlay."));
            if keep {
                continue;
            }
            if let Err(e) = rustix::fs::fremovexattr(fd, name) {
                self.xattr_failed(name, rel, e);
            }
        }
    }

    pub(super) fn xattrs(&mut self, target: XattrTarget<'_>, meta: &Meta, rel: &[u8]) {
        if meta.xattrs.is_empty() {
            return;
        }
        // Symlinks and device nodes cannot be opened to get an fd (opening a
        // device runs its driver), and setxattrat(2) is too new to rely on:
        // go through our own fd in /proc, whose last component lsetxattr
        // does not follow.
        let proc_path = match target {
            XattrTarget::Fd(_) => None,
            XattrTarget::At(dir, name) => {
                let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
                p.extend_from_slice(name);
                Some(p)
            }
        };
        for (name, value) in &meta.xattrs {
            let r = match (&target, &proc_path) {
                (XattrTarget::Fd(fd), _) => {
                    rustix::fs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty())
                }
                (_, Some(path)) => rustix::fs::lsetxattr(
                    path.as_slice(),
                    name.as_slice(),
                    value,
                    XattrFlags::empty(),
                ),
                (XattrTarget::At(..), None) => continue,
            };
            if let Err(e) = r {
                self.xattr_failed(name, rel, e);
            }
        }
    }

    pub(super) fn xattr_failed(&mut self, name: &[u8], rel: &[u8], e: Errno) {
        let key = (name.to_vec(), io::Error::from(e).to_string());
        if let Some(f) = self.xattr_failures.get_mut(&key) {
            f.count += 1;
        } else if self.xattr_failures.len() < MAX_XATTR_WARNINGS {
            let error = key.1.clone();
            self.xattr_failures.insert(
                key,
                XattrFailure {
                    count: 1,
                    first_entry: shown(rel),
                    error,
                },
            );
        } else {
            self.xattr_failures_more += 1;
        }
    }
}

/// Parses a PAX time (`1700000000`, `1700000000.25`, `-1.5`).
// `tv_nsec` is not i64 on every target.
#[allow(clippy::useless_conversion)]
pub(super) fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut sec: i64 = int.parse().ok()?;
    let mut nsec: i64 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nsec += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
    }
    if neg {
        sec = -sec;
        if nsec > 0 {
            sec -= 1;
            nsec = 1_000_000_000 - nsec;
        }
    }
    Some(Timespec {
        tv_sec: sec,
        tv_nsec: nsec.try_into().ok()?,
    })
}
