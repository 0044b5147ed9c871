//! Writing tar headers: the numeric fields, times and checksums the
//! rewriter edits in place, PAX records, and whole ustar headers for the
//! members a writer names itself (the docker-save tarball's).

use super::{BLOCK, CHKSUM, GNU_ATIME, GNU_CTIME, MTIME, header_sums, is_gnu, parse_numeric};
use super::{GID, MAGIC, MODE, NAME, SIZE, TYPEFLAG, UID};

/// Writes `v` into a numeric field: zero-padded octal and a NUL when it
/// fits, else base-256.
pub(crate) fn write_numeric(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let octal = format!("{v:0digits$o}");
    if octal.len() <= digits {
        field[..digits].copy_from_slice(octal.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        let n = field.len();
        for (i, b) in v.to_be_bytes().iter().rev().enumerate() {
            if i < n {
                field[n - 1 - i] = *b;
            }
        }
        field[0] |= 0x80;
    }
}

/// Sets the mtime (and a GNU header's atime and ctime when present) to `t`;
/// true when a byte changed. A field already holding `t` in octal is left
/// as it is, so an archive that is already normalized comes out unchanged.
pub(crate) fn set_time(block: &mut [u8; BLOCK], t: u64) -> bool {
    let mut changed = false;
    let mut fields = vec![MTIME];
    if is_gnu(block) {
        for f in [GNU_ATIME, GNU_CTIME] {
            if block[f.clone()].iter().any(|&b| b != 0) {
                fields.push(f);
            }
        }
    }
    for f in fields {
        let field = &mut block[f];
        let octal = field[0] & 0x80 == 0;
        if octal && parse_numeric(field) == Some(t) {
            continue;
        }
        write_numeric(field, t);
        changed = true;
    }
    changed
}

/// Computes and stores the checksum as GNU tar writes it: six octal
/// digits, NUL, space.
pub(crate) fn set_checksum(block: &mut [u8; BLOCK]) {
    let (sum, _) = header_sums(block);
    let field = format!("{sum:06o}\0 ");
    block[CHKSUM].copy_from_slice(&field.as_bytes()[..8]);
}

/// Appends one PAX record; its length prefix counts its own digits.
pub(crate) fn encode_record(key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    // " " + key + "=" + value + "\n"
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    loop {
        let total = body + decimal_digits(len);
        if total == len {
            break;
        }
        len = total;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

pub(crate) fn decimal_digits(n: usize) -> usize {
    n.to_string().len()
}

/// What a header written by [`ustar_header`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Member {
    /// A regular file, mode 0644.
    File,
    /// A directory, mode 0755 (its name should end in `/`).
    Dir,
}

/// A ustar header for a member named by the writer, not by an image:
/// owner 0:0, mtime 0 and a fixed mode, so that the same members always
/// give the same bytes. The name must fit the 100-byte name field (no
/// prefix split) and hold no NUL; sizes past the octal field's reach are
/// written in base-256, as GNU tar and the tar crate do.
pub(crate) fn ustar_header(name: &str, size: u64, kind: Member) -> Result<[u8; BLOCK], String> {
    let raw = name.as_bytes();
    if raw.is_empty() || raw.len() > NAME.len() || raw.contains(&0) {
        return Err(format!(
            "tar member name {name:?} does not fit a ustar header"
        ));
    }
    let mut block = [0u8; BLOCK];
    block[..raw.len()].copy_from_slice(raw);
    let (mode, flag) = match kind {
        Member::File => (0o644, b'0'),
        Member::Dir => (0o755, b'5'),
    };
    write_numeric(&mut block[MODE], mode);
    write_numeric(&mut block[UID], 0);
    write_numeric(&mut block[GID], 0);
    write_numeric(&mut block[SIZE], size);
    write_numeric(&mut block[MTIME], 0);
    block[TYPEFLAG] = flag;
    block[MAGIC].copy_from_slice(b"ustar\x0000");
    // Seven octal digits and a NUL, where the rewriter keeps GNU tar's
    // six, NUL, space: the tar crate's form, which earlier output used.
    let (sum, _) = header_sums(&block);
    write_numeric(&mut block[CHKSUM], sum);
    Ok(block)
}

/// Zeros that pad a member of `size` bytes to a whole block.
pub(crate) fn padding_zeros(size: u64) -> &'static [u8] {
    &super::ZEROS[..super::padding(size)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The headers the tar crate wrote for the docker-save sink before, for
    /// names and sizes of every shape it writes.
    #[test]
    fn ustar_headers_match_the_tar_crate_byte_for_byte() {
        let hex = "ab".repeat(32);
        let names = [
            (format!("{hex}/"), Member::Dir),
            (format!("{hex}/layer.tar"), Member::File),
            (format!("{hex}.json"), Member::File),
            ("manifest.json".to_string(), Member::File),
            ("repositories".to_string(), Member::File),
            ("x".repeat(100), Member::File),
        ];
        let sizes = [
            0,
            1,
            511,
            512,
            0o77_777_777_777,
            0o7777_7777_7777,
            1 << 33,
            u64::MAX >> 1,
        ];
        for (name, kind) in &names {
            for &size in &sizes {
                let mut h = tar::Header::new_ustar();
                h.set_path(name).unwrap();
                h.set_size(size);
                h.set_entry_type(match kind {
                    Member::File => tar::EntryType::Regular,
                    Member::Dir => tar::EntryType::Directory,
                });
                h.set_mode(if *kind == Member::Dir { 0o755 } else { 0o644 });
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
                h.set_cksum();
                let ours = ustar_header(name, size, *kind).unwrap();
                assert!(ours[..] == h.as_bytes()[..], "{name} {size}");
                assert!(super::super::checksum_ok(&ours));
                assert_eq!(parse_numeric(&ours[SIZE]), Some(size), "{name} {size}");
            }
        }
    }

    #[test]
    fn names_a_ustar_header_cannot_hold_are_refused() {
        for bad in [
            String::new(),
            "x".repeat(101),
            "a\0b".into(),
            "é".repeat(51),
        ] {
            assert!(ustar_header(&bad, 0, Member::File).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn padding_fills_to_a_block() {
        for (size, pad) in [(0, 0), (1, 511), (511, 1), (512, 0), (513, 511)] {
            assert_eq!(padding_zeros(size).len(), pad);
            assert_eq!((size + pad as u64) % BLOCK as u64, 0);
        }
    }
}
