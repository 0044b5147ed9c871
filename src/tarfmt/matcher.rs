//! What a layer entry is and whether its path matches a pattern: shared by
//! `search`, `check` and the `search` filter, so that they name entries
//! alike. A leaf: it uses only the tar reader and the error type.

use std::io::Read;

use serde::Serialize;

use super::{Archive, BufStream, Input};
use crate::error::{Error, Result};

/// What a layer entry is, as `search` and `check` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A hard link to an earlier member.
    Hardlink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A named pipe.
    Fifo,
    /// A `.wh.NAME` entry: deletes NAME from the layers below.
    Whiteout,
    /// A `.wh..wh..opq` entry: hides the lower layers' content of its directory.
    Opaque,
    /// Anything else (sockets, global PAX headers, unknown types).
    Other,
}

impl EntryKind {
    /// The name used in text output.
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Hardlink => "hardlink",
            EntryKind::Char => "char",
            EntryKind::Block => "block",
            EntryKind::Fifo => "fifo",
            EntryKind::Whiteout => "whiteout",
            EntryKind::Opaque => "opaque",
            EntryKind::Other => "other",
        }
    }

    /// Whether the entry deletes something rather than adding it.
    pub fn is_whiteout(self) -> bool {
        matches!(self, EntryKind::Whiteout | EntryKind::Opaque)
    }
}

/// The whiteout prefix of the OCI image spec.
const WHITEOUT_PREFIX: &str = ".wh.";
/// The opaque-directory marker.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of AUFS bookkeeping names, which are not whiteouts.
const AUFS_META_PREFIX: &str = ".wh..wh.";

/// A member name as users write paths: no leading `/` or `./`, no empty or
/// `.` components, no trailing `/`. `..` is kept so that it stays visible.
pub fn clean_name(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    for comp in text.split('/') {
        if comp.is_empty() || comp == "." {
            continue;
        }
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(comp);
    }
    out
}

/// The last component of a cleaned path.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// What a member does to the image: its kind, and the path it adds or (for
/// whiteouts) removes.
pub fn classify(kind: tar::EntryType, name: &str) -> (EntryKind, String) {
    let (parent, base) = match name.rfind('/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => ("", name),
    };
    if base == OPAQUE_MARKER {
        return (EntryKind::Opaque, parent.to_string());
    }
    if let Some(deleted) = base.strip_prefix(WHITEOUT_PREFIX)
        && !base.starts_with(AUFS_META_PREFIX)
    {
        let path = if parent.is_empty() {
            deleted.to_string()
        } else {
            format!("{parent}/{deleted}")
        };
        return (EntryKind::Whiteout, path);
    }
    (kind_of(kind), name.to_string())
}

/// The kind a tar entry type stands for, whiteouts aside.
pub fn kind_of(kind: tar::EntryType) -> EntryKind {
    use tar::EntryType as T;
    match kind {
        T::Regular | T::Continuous | T::GNUSparse => EntryKind::File,
        T::Directory => EntryKind::Dir,
        T::Symlink => EntryKind::Symlink,
        T::Link => EntryKind::Hardlink,
        T::Char => EntryKind::Char,
        T::Block => EntryKind::Block,
        T::Fifo => EntryKind::Fifo,
        _ => EntryKind::Other,
    }
}

/// What member paths are matched against.
#[derive(Clone, Debug)]
pub enum Pattern {
    /// A shell glob (`*` and `?` cross `/`, as Python's fnmatch does),
    /// matched against the whole path and against its last component.
    Glob(globset::GlobMatcher),
    /// A regular expression, searched anywhere in the path.
    Regex(regex::Regex),
}

impl Pattern {
    /// Compiles a glob. A leading `/` or `./` is dropped, since member paths
    /// are matched without one.
    pub fn glob(pattern: &str) -> Result<Pattern> {
        let trimmed = pattern.trim_start_matches("./").trim_start_matches('/');
        let glob = globset::GlobBuilder::new(trimmed)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| Error::Usage(format!("invalid glob {pattern:?}: {e}")))?;
        Ok(Pattern::Glob(glob.compile_matcher()))
    }

    /// Compiles a regular expression (the `regex` crate's syntax).
    pub fn regex(pattern: &str) -> Result<Pattern> {
        let re = regex::Regex::new(pattern).map_err(|e| {
            let msg = e.to_string().replace('\n', " ");
            Error::Usage(format!(
                "invalid regular expression {pattern:?}: {}",
                msg.split_whitespace().collect::<Vec<_>>().join(" ")
            ))
        })?;
        Ok(Pattern::Regex(re))
    }

    /// Compiles `pattern` as a regex when `regex` is set, else as a glob.
    pub fn new(pattern: &str, regex: bool) -> Result<Pattern> {
        if regex {
            Pattern::regex(pattern)
        } else {
            Pattern::glob(pattern)
        }
    }

    /// Whether a cleaned path matches.
    pub fn is_match(&self, path: &str) -> bool {
        match self {
            Pattern::Glob(g) => g.is_match(path) || g.is_match(basename(path)),
            Pattern::Regex(r) => r.is_match(path),
        }
    }
}

/// One matching layer entry.
#[derive(Clone, Debug, Serialize)]
pub struct Match {
    /// The path the entry creates, or for a whiteout the path it deletes
    /// (for an opaque marker, the directory it empties).
    pub path: String,
    /// The member's own name in the layer tar (`etc/.wh.motd`).
    pub member: String,
    /// What the entry is.
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Size of the member's data in bytes (0 for all but regular files).
    pub size: u64,
    /// Where a symlink points, or what a hard link links to.
    pub link_target: Option<String>,
    /// Whether the entry deletes rather than adds.
    pub whiteout: bool,
}

/// Walks a layer tar to its end-of-archive marker and returns its entry
/// count and the entries matching `pattern`, in tar order. Entries come from
/// the shared reader, so names are the ones the extractor and the filters
/// see, and hostile headers fail the same way. Member data is read (a
/// stream cannot seek) and dropped; what the buffer read past the
/// end-of-archive marker is dropped too.
pub(crate) fn find_matches(
    tar: impl Read,
    pattern: &Pattern,
) -> std::io::Result<(u64, Vec<Match>)> {
    find_matches_in(BufStream::new(tar), pattern)
}

/// [`find_matches`] over any input: a seekable one passes over member data
/// without reading it.
pub(crate) fn find_matches_in<S: Input>(
    src: S,
    pattern: &Pattern,
) -> std::io::Result<(u64, Vec<Match>)> {
    let mut archive = Archive::new(src);
    let mut entries = 0;
    let mut matches = Vec::new();
    while let Some(entry) = archive.next_entry()? {
        entries += 1;
        let member = clean_name(entry.path());
        if member.is_empty() {
            // The layer's root directory (`./`).
            continue;
        }
        let (kind, path) = classify(tar::EntryType::new(entry.kind()), &member);
        let hit = pattern.is_match(&path) || (path != member && pattern.is_match(&member));
        if !hit {
            continue;
        }
        let link_target = match kind {
            EntryKind::Symlink | EntryKind::Hardlink => {
                Some(String::from_utf8_lossy(entry.link()).into_owned())
            }
            _ => None,
        };
        matches.push(Match {
            path,
            member,
            kind,
            size: entry.resolved.size,
            link_target,
            whiteout: kind.is_whiteout(),
        });
    }
    Ok((entries, matches))
}
