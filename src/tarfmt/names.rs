//! Entry names as filters match them.

/// The name without leading `./` and `/` and without a trailing `/`: the
/// form filters match against (`./usr/share/` -> `usr/share`).
pub fn clean_path(mut p: &[u8]) -> &[u8] {
    loop {
        if let Some(rest) = p.strip_prefix(b"./") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix(b"/") {
            p = rest;
        } else {
            break;
        }
    }
    while let Some(rest) = p.strip_suffix(b"/") {
        p = rest;
    }
    if p == b"." { b"" } else { p }
}

/// What a whiteout entry deletes, by its cleaned path: `a/.wh.b` deletes
/// `a/b`, the opaque marker `a/.wh..wh..opq` hides what lower layers have
/// in `a`. `None` for an entry that is not a whiteout.
pub(crate) fn whiteout_target(path: &[u8]) -> Option<Whiteout> {
    let (dir, base) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&path[..0], path),
    };
    if base == b".wh..wh..opq" {
        return Some(Whiteout::Opaque(dir.to_vec()));
    }
    let name = base.strip_prefix(b".wh.")?;
    let mut target = dir.to_vec();
    if !target.is_empty() {
        target.push(b'/');
    }
    target.extend_from_slice(name);
    Some(Whiteout::Deletes(target))
}

/// What a whiteout entry says, as [`whiteout_target`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Whiteout {
    /// `DIR/.wh.NAME`: `DIR/NAME` is deleted.
    Deletes(Vec<u8>),
    /// `DIR/.wh..wh..opq`: `DIR` is opaque.
    Opaque(Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_name_what_they_delete() {
        let d = |p: &[u8]| Some(Whiteout::Deletes(p.to_vec()));
        let o = |p: &[u8]| Some(Whiteout::Opaque(p.to_vec()));
        assert_eq!(whiteout_target(b"a/b/.wh.c"), d(b"a/b/c"));
        assert_eq!(whiteout_target(b".wh.c"), d(b"c"));
        assert_eq!(whiteout_target(b"a/.wh..wh..opq"), o(b"a"));
        assert_eq!(whiteout_target(b".wh..wh..opq"), o(b""));
        for plain in [&b"a/b"[..], b"a/x.wh.b", b"", b"a/.wh/b", b"wh.x"] {
            assert_eq!(whiteout_target(plain), None, "{}", plain.escape_ascii());
        }
    }

    #[test]
    fn cleaning_drops_leading_dots_and_slashes_only() {
        for (raw, clean) in [
            (&b"./usr/share/"[..], &b"usr/share"[..]),
            (b"/././a", b"a"),
            (b".", b""),
            (b"./", b""),
            (b"a/./b", b"a/./b"),
            (b"..", b".."),
            (b"//a//", b"a"),
        ] {
            assert_eq!(clean_path(raw), clean, "{}", raw.escape_ascii());
        }
    }
}
