//! Member names as a layer tar spells them, reduced to root-relative paths.
//!
//! These checks are a first filter that gives clear messages; the guarantee
//! that nothing lands outside the root comes from the resolver, which never
//! trusts a name to be clean.

/// Longest name we accept, as the kernel's `PATH_MAX` counts it (with its NUL).
const MAX_PATH: usize = 4095;

/// The whiteout prefix of the OCI image spec (AUFS heritage).
pub(crate) const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Marks a directory opaque: lower layers' content in it is hidden.
pub(crate) const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Prefix of AUFS bookkeeping names (`.wh..wh.plnk`, `.wh..wh.aufs`).
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// Why a name cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BadName {
    /// A `..` component.
    Escapes,
    /// A NUL byte, which no system call can carry.
    Nul,
    /// Longer than `PATH_MAX`.
    TooLong,
}

impl BadName {
    /// The reason as it reads after `entry "NAME"`.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            BadName::Escapes => "escapes the target directory",
            BadName::Nul => "has a NUL byte in its name",
            BadName::TooLong => "has a name longer than PATH_MAX",
        }
    }
}

/// A root-relative path: components joined by `/`, none empty, `.` or `..`.
/// The empty path is the root itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RelPath(Vec<u8>);

impl RelPath {
    /// Cleans a member name: drops leading `/` and `./`, empty and `.`
    /// components; refuses `..` anywhere, since OCI layers never need it and
    /// tools disagree on what it would mean.
    pub(crate) fn parse(raw: &[u8]) -> Result<RelPath, BadName> {
        if raw.contains(&0) {
            return Err(BadName::Nul);
        }
        if raw.len() > MAX_PATH {
            return Err(BadName::TooLong);
        }
        let mut out = Vec::with_capacity(raw.len());
        for comp in raw.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => return Err(BadName::Escapes),
                _ => {
                    if !out.is_empty() {
                        out.push(b'/');
                    }
                    out.extend_from_slice(comp);
                }
            }
        }
        Ok(RelPath(out))
    }

    /// The path's bytes (`""` for the root).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether this is the root itself.
    pub(crate) fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The parent directory and the final component; the root has neither.
    pub(crate) fn split_last(&self) -> Option<(&[u8], &[u8])> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => (&self.0[..i], &self.0[i + 1..]),
            None => (&[][..], &self.0[..]),
        })
    }

    /// Whether any component is AUFS bookkeeping (`.wh..wh.plnk/...`), which
    /// the OCI spec says to ignore. The opaque marker is not bookkeeping.
    pub(crate) fn is_aufs_meta(&self) -> bool {
        self.0
            .split(|&b| b == b'/')
            .any(|c| c.starts_with(AUFS_META_PREFIX) && c != OPAQUE_MARKER)
    }
}

/// What a member's final component says it is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Whiteout<'a> {
    /// Not a whiteout.
    None,
    /// `.wh..wh..opq`: the parent is opaque.
    Opaque,
    /// `.wh.NAME`: NAME (in the same parent) is deleted.
    Name(&'a [u8]),
    /// `.wh.`, `.wh..` or `.wh...`: names nothing usable.
    Invalid,
}

/// Classifies a final component. Matching is on the whole component, so
/// `etc/.wh.x` names `etc/x` and nothing else.
pub(crate) fn whiteout(last: &[u8]) -> Whiteout<'_> {
    if last == OPAQUE_MARKER {
        return Whiteout::Opaque;
    }
    match last.strip_prefix(WHITEOUT_PREFIX) {
        None => Whiteout::None,
        Some(b"" | b"." | b"..") => Whiteout::Invalid,
        Some(name) => Whiteout::Name(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> Result<String, BadName> {
        RelPath::parse(s.as_bytes()).map(|p| String::from_utf8(p.0).unwrap())
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean("./etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(clean("/abs/x").unwrap(), "abs/x");
        assert_eq!(clean("//a/./b//c/").unwrap(), "a/b/c");
        assert_eq!(clean("./").unwrap(), "");
        assert_eq!(clean("..."), Ok("...".into()));
        assert_eq!(clean("../x"), Err(BadName::Escapes));
        assert_eq!(clean("a/../../x"), Err(BadName::Escapes));
        assert_eq!(clean("a/.."), Err(BadName::Escapes));
        assert_eq!(RelPath::parse(b"a\0b"), Err(BadName::Nul));
        assert_eq!(RelPath::parse(&vec![b'a'; 5000]), Err(BadName::TooLong));
    }

    #[test]
    fn splitting() {
        let p = RelPath::parse(b"a/b/c").unwrap();
        assert_eq!(p.split_last(), Some((&b"a/b"[..], &b"c"[..])));
        let p = RelPath::parse(b"c").unwrap();
        assert_eq!(p.split_last(), Some((&b""[..], &b"c"[..])));
        assert_eq!(RelPath::parse(b"/").unwrap().split_last(), None);
    }

    #[test]
    fn whiteouts_by_component() {
        assert_eq!(whiteout(b".wh..wh..opq"), Whiteout::Opaque);
        assert_eq!(whiteout(b".wh.x"), Whiteout::Name(b"x"));
        assert_eq!(whiteout(b".wh..x"), Whiteout::Name(b".x"));
        assert_eq!(whiteout(b".wh."), Whiteout::Invalid);
        assert_eq!(whiteout(b".wh.."), Whiteout::Invalid);
        assert_eq!(whiteout(b".wh..."), Whiteout::Invalid);
        assert_eq!(whiteout(b"x.wh.y"), Whiteout::None);
        assert!(RelPath::parse(b".wh..wh.plnk/1").unwrap().is_aufs_meta());
        assert!(!RelPath::parse(b"a/.wh..wh..opq").unwrap().is_aufs_meta());
        assert!(!RelPath::parse(b"a/.wh.b").unwrap().is_aufs_meta());
    }
}
