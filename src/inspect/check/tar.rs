//! The full check's rules over one layer: compression against the declared
//! media type, tar well-formedness, whiteouts, and suspicious entries.
//! Each is a function of the layer's bytes as readers and its
//! [`LayerInfo`], apart from how they were fetched.

use std::collections::HashSet;
use std::io::{self, Read};

use super::report::{Finding, LayerFindings, Severity};
use crate::image::{Compression, LayerInfo};
use crate::inspect::{EntryKind, basename, classify, clean_name, plural};
use crate::tarfmt::{Archive, BufStream, Entry};

/// Full-check findings for one layer the source verified. `blob_head` is
/// the compression sniffed from the blob's first bytes, when the layer has
/// a declared media type to hold it against; `tar` reads the uncompressed
/// tar (`Ok(None)` when the source gave none).
pub(crate) fn layer_findings(
    info: &LayerInfo,
    blob_head: Option<io::Result<Compression>>,
    tar: io::Result<Option<Box<dyn Read + Send>>>,
) -> Vec<Finding> {
    let mut f = LayerFindings::new(info.index);
    match blob_head {
        Some(Ok(actual)) => compression_rule(info, actual, &mut f),
        Some(Err(e)) => f.push(
            Severity::Error,
            "compression",
            "",
            format!("layer {}: cannot read the blob: {e}", info.index),
        ),
        None => {}
    }
    match tar {
        Ok(Some(tar)) => check_tar(tar, &mut f),
        Ok(None) => f.push(
            Severity::Error,
            "tar",
            "",
            format!("layer {}: the source gave no tar", info.index),
        ),
        Err(e) => f.push(
            Severity::Error,
            "tar",
            "",
            format!("layer {}: cannot open the tar: {e}", info.index),
        ),
    }
    let mut out = f.finish();
    // Drop the empty paths of layer-wide findings.
    for x in &mut out {
        if x.path.as_deref() == Some("") {
            x.path = None;
        }
    }
    out
}

fn compression_rule(info: &LayerInfo, actual: Compression, f: &mut LayerFindings) {
    let named = crate::inspect::info::compression_of(&info.media_type);
    let actual_name = match actual {
        Compression::None => "none",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    };
    if named != "unknown" && named != actual_name {
        f.push(
            Severity::Error,
            "compression",
            "",
            format!(
                "layer {} is declared {} ({}) but the blob is {actual_name}",
                info.index, named, info.media_type
            ),
        );
    }
}

/// The compression a blob's first bytes name.
pub(crate) fn sniff(mut blob: impl Read) -> io::Result<Compression> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        let n = blob.read(&mut head[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(Compression::sniff(&head[..got]))
}

/// Whether a raw tar numeric field holds a negative number (GNU base-256
/// with the sign bit set).
fn negative_field(field: &[u8]) -> bool {
    field.first().is_some_and(|b| *b == 0xff)
}

/// A reader that counts what it hands out: the tar's length, once read to
/// its end.
struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// What a walk over a layer tar counts.
#[derive(Default)]
struct TarStats {
    entries: u64,
    file_bytes: u64,
    whiteouts: u64,
    /// Where the data of the furthest member ends.
    end: u64,
    dirs: NameSet,
}

fn check_tar(tar: impl Read, f: &mut LayerFindings) {
    let index = f.index;
    let mut counted = Counted { inner: tar, n: 0 };
    // The shared reader: the names the extractor and filters see, and the
    // same refusals of hostile headers.
    // Buffered, so that the decompressor under it runs in large calls.
    let mut archive = Archive::new(BufStream::new(&mut counted));
    let mut stats = TarStats::default();
    let failed = loop {
        match archive.next_entry() {
            Ok(Some(entry)) => check_entry(&entry, &mut stats, f),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    // The rest (padding, or what follows a bad header) gives the length;
    // what the buffer holds was counted as it was read.
    drop(archive);
    let drained = io::copy(&mut counted, &mut io::sink());
    let len = counted.n;
    if stats.end > len {
        // A member whose data the tar does not hold to the end.
        f.push(
            Severity::Error,
            "tar",
            "",
            format!(
                "layer {index} is truncated: its last member needs {} bytes, the tar has {len}",
                stats.end
            ),
        );
    } else if let Some(e) = failed {
        f.push(
            Severity::Error,
            "tar",
            "",
            format!(
                "layer {index} is not a valid tar after {} entries: {e}",
                stats.entries
            ),
        );
        return;
    } else if let Err(e) = drained {
        f.push(
            Severity::Error,
            "tar",
            "",
            format!("layer {index}: cannot read the tar: {e}"),
        );
        return;
    }
    f.push(
        Severity::Info,
        "layer",
        "",
        format!(
            "layer {index}: {}, {} of file data, {}",
            plural(stats.entries, "entry"),
            plural(stats.file_bytes, "byte"),
            plural(stats.whiteouts, "whiteout")
        ),
    );
}

/// The rules for one entry.
fn check_entry(entry: &Entry, stats: &mut TarStats, f: &mut LayerFindings) {
    let etype = tar::EntryType::new(entry.kind());
    stats.entries += 1;
    stats.end = stats
        .end
        .max(entry.data_offset.saturating_add(entry.data_size));
    let raw = entry.path();
    let name = clean_name(raw);
    let (kind, path) = classify(etype, &name);
    if kind == EntryKind::File {
        stats.file_bytes += entry.resolved.size;
    }
    path_rules(raw, f);
    match kind {
        EntryKind::Dir => stats.dirs.insert(&name),
        EntryKind::Char | EntryKind::Block => {
            let (maj, min) = entry.device();
            let (maj, min) = (maj.unwrap_or(0), min.unwrap_or(0));
            f.push(
                Severity::Warning,
                "device",
                &name,
                format!("{name} is a {} device node ({maj}:{min})", kind.name()),
            );
        }
        EntryKind::Hardlink => hardlink_rules(entry.link(), &name, f),
        EntryKind::Whiteout | EntryKind::Opaque => {
            stats.whiteouts += 1;
            whiteout_rules(entry, kind, &name, &path, &stats.dirs, f);
        }
        _ => {}
    }
    if kind != EntryKind::Opaque && name.split('/').any(|c| c.starts_with(".wh..wh.")) {
        f.push(
            Severity::Warning,
            "whiteout",
            &name,
            format!("{name} is AUFS metadata, not a whiteout; runtimes ignore or mishandle it"),
        );
    }
    let mode = entry.mode().unwrap_or(0);
    let special = mode & 0o6000 != 0;
    if special && mode & 0o002 != 0 && !matches!(kind, EntryKind::Symlink | EntryKind::Dir) {
        f.push(
            Severity::Error,
            "permissions",
            &name,
            format!(
                "{name} is set{} and world-writable (mode {mode:04o})",
                if mode & 0o4000 != 0 { "uid" } else { "gid" }
            ),
        );
    }
    if negative_field(&entry.block[136..148]) {
        f.push(
            Severity::Warning,
            "mtime",
            &name,
            format!("{name} has a negative modification time"),
        );
    }
}

/// A member name that escapes the root, or is absolute.
fn path_rules(raw: &[u8], f: &mut LayerFindings) {
    let shown = String::from_utf8_lossy(raw).into_owned();
    if raw.split(|b| *b == b'/').any(|c| c == b"..") {
        f.push(
            Severity::Error,
            "path-escape",
            &shown,
            format!("{shown:?} has a `..` component: it would escape the root"),
        );
    } else if raw.starts_with(b"/") {
        f.push(
            Severity::Warning,
            "absolute-path",
            &shown,
            format!("{shown:?} is an absolute path (extractors strip the leading /)"),
        );
    }
}

/// A hard link's target must stay inside the layer.
fn hardlink_rules(target: &[u8], name: &str, f: &mut LayerFindings) {
    let t = String::from_utf8_lossy(target).into_owned();
    if target.starts_with(b"/") || target.split(|b| *b == b'/').any(|c| c == b"..") {
        f.push(
            Severity::Error,
            "link-escape",
            name,
            format!("{name} is a hard link to {t:?}, outside the layer's root"),
        );
    } else if target.is_empty() {
        f.push(
            Severity::Error,
            "tar",
            name,
            format!("{name} is a hard link with no target"),
        );
    }
}

/// Whiteouts are empty regular files that name something; an opaque marker
/// comes with its directory.
fn whiteout_rules(
    entry: &Entry,
    kind: EntryKind,
    name: &str,
    path: &str,
    dirs: &NameSet,
    f: &mut LayerFindings,
) {
    let etype = tar::EntryType::new(entry.kind());
    let regular = matches!(etype, tar::EntryType::Regular | tar::EntryType::Continuous);
    if !regular {
        f.push(
            Severity::Error,
            "whiteout",
            name,
            format!(
                "whiteout {name} is a {}, not an empty regular file",
                kind_name(etype)
            ),
        );
    } else if entry.resolved.size != 0 {
        f.push(
            Severity::Warning,
            "whiteout",
            name,
            format!(
                "whiteout {name} holds {} bytes; whiteouts are empty files",
                entry.resolved.size
            ),
        );
    }
    if kind == EntryKind::Whiteout && basename(path).is_empty() {
        f.push(
            Severity::Error,
            "whiteout",
            name,
            format!("whiteout {name} names nothing to delete"),
        );
    }
    if kind == EntryKind::Opaque && !path.is_empty() && !dirs.contains(path) {
        f.push(
            Severity::Warning,
            "whiteout",
            name,
            format!("opaque marker {name} comes without an entry for its directory {path}"),
        );
    }
}

fn kind_name(t: tar::EntryType) -> &'static str {
    crate::inspect::kind_of(t).name()
}

/// Names kept as 128-bit keyed hashes, so that remembering every directory
/// of a layer costs the same per directory however long its name is.
#[derive(Default)]
struct NameSet {
    keys: (std::hash::RandomState, std::hash::RandomState),
    seen: HashSet<(u64, u64)>,
}

impl NameSet {
    fn key(&self, name: &str) -> (u64, u64) {
        use std::hash::BuildHasher;
        (self.keys.0.hash_one(name), self.keys.1.hash_one(name))
    }
    fn insert(&mut self, name: &str) {
        let k = self.key(name);
        self.seen.insert(k);
    }
    fn contains(&self, name: &str) -> bool {
        self.seen.contains(&self.key(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::check::report::MAX_PER_KIND;

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn entry(b: &mut tar::Builder<Vec<u8>>, t: tar::EntryType, path: &str, mode: u32, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(t);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn run_tar(bytes: &[u8]) -> Vec<Finding> {
        let mut f = LayerFindings::new(0);
        check_tar(bytes, &mut f);
        f.finish()
    }

    fn checks(found: &[Finding], sev: Severity) -> Vec<&'static str> {
        found
            .iter()
            .filter(|f| f.severity == sev)
            .map(|f| f.check)
            .collect()
    }

    #[test]
    fn good_tar_has_only_info() {
        use tar::EntryType as T;
        let bytes = tar_with(|b| {
            entry(b, T::Directory, "etc", 0o755, b"");
            entry(b, T::Regular, "etc/passwd", 0o644, b"root");
            entry(b, T::Regular, "etc/.wh.motd", 0o644, b"");
            entry(b, T::Directory, "etc/apt", 0o755, b"");
            entry(b, T::Regular, "etc/apt/.wh..wh..opq", 0o644, b"");
            entry(b, T::Regular, "usr/bin/sudo", 0o4755, b"x");
        });
        let found = run_tar(&bytes);
        assert!(
            found.iter().all(|f| f.severity == Severity::Info),
            "{found:?}"
        );
        assert!(found[0].message.contains("6 entries"), "{found:?}");
        assert!(found[0].message.contains("2 whiteouts"), "{found:?}");
    }

    #[test]
    fn bad_entries_are_found() {
        use tar::EntryType as T;
        let mut bytes = tar_with(|b| {
            entry(b, T::Regular, "etc/.wh.motd", 0o644, b"not empty");
            entry(b, T::Directory, "etc/.wh.dir", 0o755, b"");
            entry(b, T::Regular, "var/.wh..wh..opq", 0o644, b"");
            entry(b, T::Regular, "bin/evil", 0o4777, b"x");
            entry(b, T::Char, "dev/null", 0o666, b"");
            entry(b, T::Regular, ".wh..wh.plnk/1", 0o644, b"");
        });
        // A `..` name, written past the tar crate's own checks.
        let mut h = tar::Header::new_old();
        h.set_entry_type(T::Regular);
        h.set_size(0);
        h.set_mode(0o644);
        let name = b"../escape";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        let end = bytes.len() - 1024;
        bytes.splice(end..end, h.as_bytes().iter().copied());
        let found = run_tar(&bytes);
        let errors = checks(&found, Severity::Error);
        let warnings = checks(&found, Severity::Warning);
        assert!(errors.contains(&"whiteout"), "{found:?}");
        assert!(errors.contains(&"permissions"), "{found:?}");
        assert!(errors.contains(&"path-escape"), "{found:?}");
        assert!(warnings.contains(&"device"), "{found:?}");
        assert_eq!(
            warnings.iter().filter(|c| **c == "whiteout").count(),
            3,
            "{found:?}"
        );
    }

    #[test]
    fn truncated_and_garbage_tars() {
        use tar::EntryType as T;
        let bytes = tar_with(|b| entry(b, T::Regular, "big", 0o644, &[1u8; 5000]));
        let found = run_tar(&bytes[..2048]);
        assert!(
            checks(&found, Severity::Error).contains(&"tar"),
            "{found:?}"
        );
        let found = run_tar(&[0x55u8; 1024]);
        assert!(
            checks(&found, Severity::Error).contains(&"tar"),
            "{found:?}"
        );
    }

    #[test]
    fn caps_repeated_findings() {
        use tar::EntryType as T;
        let bytes = tar_with(|b| {
            for i in 0..30 {
                entry(b, T::Char, &format!("dev/d{i}"), 0o600, b"");
            }
        });
        let found = run_tar(&bytes);
        let devices = found.iter().filter(|f| f.check == "device").count();
        assert_eq!(devices, MAX_PER_KIND + 1, "{found:?}");
    }

    #[test]
    fn a_truncated_member_is_reported_with_the_sizes() {
        use tar::EntryType as T;
        let bytes = tar_with(|b| {
            entry(b, T::Regular, "small", 0o644, b"x");
            entry(b, T::Regular, "big", 0o644, &[1u8; 5000]);
        });
        // Cut inside the data of the last member, at several points.
        for cut in [1024 + 512 + 1, 3000, 6535] {
            let found = run_tar(&bytes[..cut]);
            let tar: Vec<_> = found.iter().filter(|f| f.check == "tar").collect();
            assert_eq!(tar.len(), 1, "{cut}: {found:?}");
            assert_eq!(
                tar[0].message,
                format!(
                    "layer 0 is truncated: its last member needs 6536 bytes, the tar has {cut}"
                ),
            );
            // The layer's totals still follow.
            assert!(
                found
                    .iter()
                    .any(|f| f.check == "layer" && f.message.contains("2 entries"))
            );
        }
        // A header cut short is not a truncated member but a bad tar.
        let found = run_tar(&bytes[..1024 + 100]);
        assert!(
            found
                .iter()
                .any(|f| f.message.contains("is not a valid tar after 1 entries")),
            "{found:?}"
        );
        assert!(!found.iter().any(|f| f.check == "layer"), "{found:?}");
    }

    #[test]
    fn layer_findings_hold_compression_and_missing_tars() {
        let info = crate::inspect::testsource::layer_info(4, b"x");
        let gz = [0x1f, 0x8b, 8, 0];
        let tar = || -> io::Result<Option<Box<dyn Read + Send>>> {
            Ok(Some(Box::new(io::Cursor::new(tar_with(|_| {})))))
        };
        // A plain-tar media type whose blob is gzip.
        let found = layer_findings(&info, Some(sniff(&gz[..])), tar());
        let e = checks(&found, Severity::Error);
        assert_eq!(e, vec!["compression"], "{found:?}");
        assert!(found[0].message.contains("declared none"), "{found:?}");
        assert_eq!(found[0].layer, Some(4));
        assert_eq!(found[0].path, None);
        // No blob head to hold it against: nothing said.
        assert!(checks(&layer_findings(&info, None, tar()), Severity::Error).is_empty());
        let unread = layer_findings(&info, Some(Err(io::ErrorKind::NotFound.into())), tar());
        assert!(
            unread[0].message.contains("cannot read the blob"),
            "{unread:?}"
        );
        for (given, says) in [
            (Ok(None), "the source gave no tar"),
            (
                Err(io::ErrorKind::PermissionDenied.into()),
                "cannot open the tar",
            ),
        ] {
            let found = layer_findings(&info, None, given);
            assert_eq!(checks(&found, Severity::Error), vec!["tar"]);
            assert!(found[0].message.contains(says), "{found:?}");
        }
    }
}
