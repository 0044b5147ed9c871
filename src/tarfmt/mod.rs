//! The one reading of a tar header that every part of occystrap shares.
//!
//! A tar entry is described by its 512-byte header plus the extension
//! headers before it (PAX `x`, GNU long name `L` and long link `K`), and for
//! sparse files by a sparse map. Readers that resolve these differently
//! disagree about an entry's name, which lets a filter miss the file the
//! extractor writes. So there is exactly one resolution, [`resolve`], used
//! by the streaming reader ([`Archive`]: extraction, search, check, the
//! docker-save index) and by the block-level rewriter of the filters.
//!
//! Layouts that two reasonable readers could take differently are refused,
//! not guessed: two long names, a GNU long name and a different PAX path, a
//! prefix under a magic that has none, PAX sparse names without a sparse map.
//! Extension headers are metadata, capped at [`META_LIMIT`] before anything
//! is allocated; sparse maps are capped in segments and real size.

pub mod matcher;
mod names;
mod reader;
pub mod rewrite;
#[doc(hidden)]
pub mod testkit;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
pub(crate) mod write;

pub(crate) use names::{Whiteout, whiteout_target};
pub use reader::{Archive, BufSeek, BufStream, Data, Entry, Input, Seekable, Stream};

use std::fmt;
use std::io;
use std::ops::Range;

/// Bytes in a tar block.
pub const BLOCK: usize = 512;
/// An all-zero block: the end-of-archive marker.
pub const ZEROS: [u8; BLOCK] = [0; BLOCK];

/// The most metadata (PAX and GNU extension headers together, and a PAX 1.0
/// sparse map) one entry may carry. Real headers hold names, link targets
/// and xattrs: far below this. Anything bigger is an attempt to make a
/// reader allocate what the header declares.
pub const META_LIMIT: u64 = 1 << 20;
/// The largest data size an entry may declare (1 EiB): bigger sizes only
/// serve to overflow offset arithmetic.
pub const MAX_ENTRY_SIZE: u64 = 1 << 60;
/// The most segments a sparse file may have.
pub const MAX_SPARSE_SEGMENTS: usize = 1 << 16;
/// The largest real size a sparse file may declare (16 TiB, ext4's limit).
pub const MAX_SPARSE_REAL_SIZE: u64 = 1 << 44;

pub(crate) const NAME: Range<usize> = 0..100;
pub(crate) const MODE: Range<usize> = 100..108;
pub(crate) const UID: Range<usize> = 108..116;
pub(crate) const GID: Range<usize> = 116..124;
pub(crate) const SIZE: Range<usize> = 124..136;
pub(crate) const MTIME: Range<usize> = 136..148;
pub(crate) const CHKSUM: Range<usize> = 148..156;
pub(crate) const TYPEFLAG: usize = 156;
pub(crate) const LINKNAME: Range<usize> = 157..257;
pub(crate) const MAGIC: Range<usize> = 257..265;
pub(crate) const DEVMAJOR: Range<usize> = 329..337;
pub(crate) const DEVMINOR: Range<usize> = 337..345;
pub(crate) const PREFIX: Range<usize> = 345..500;
/// GNU headers keep access and change times where POSIX has the prefix.
pub(crate) const GNU_ATIME: Range<usize> = 345..357;
pub(crate) const GNU_CTIME: Range<usize> = 357..369;
const GNU_SPARSE: usize = 386;
pub(crate) const GNU_IS_EXTENDED: usize = 482;
const GNU_REALSIZE: Range<usize> = 483..495;
pub(crate) const GNU_SPARSE_EXT_IS_EXTENDED: usize = 504;
/// Sparse entries in an old GNU sparse extension block.
pub(crate) const GNU_SPARSE_EXT_ENTRIES: usize = 21;

const MAGIC_USTAR: &[u8] = b"ustar\x0000";
const MAGIC_GNU: &[u8] = b"ustar  \0";

/// Old GNU sparse extension blocks one entry may have.
pub(crate) const MAX_SPARSE_EXT_BLOCKS: usize = MAX_SPARSE_SEGMENTS / GNU_SPARSE_EXT_ENTRIES + 1;

/// Why a tar could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum TarError {
    /// Reading the input failed.
    Io(io::Error),
    /// The tar is malformed, hostile or ambiguous.
    Bad {
        /// Where the header (or extension header) at fault starts.
        offset: u64,
        /// The entry's name, quoted for a message, when there is one.
        entry: Option<String>,
        /// What is wrong.
        what: String,
    },
}

impl TarError {
    pub(crate) fn bad(offset: u64, entry: Option<&[u8]>, what: impl Into<String>) -> TarError {
        TarError::Bad {
            offset,
            entry: entry.map(shown),
            what: what.into(),
        }
    }
}

impl fmt::Display for TarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TarError::Io(e) => write!(f, "{e}"),
            TarError::Bad {
                offset,
                entry: Some(name),
                what,
            } => write!(f, "entry {name}: {what} (tar header at byte {offset})"),
            TarError::Bad {
                offset,
                entry: None,
                what,
            } => write!(f, "{what} (tar header at byte {offset})"),
        }
    }
}

impl std::error::Error for TarError {}

impl From<io::Error> for TarError {
    fn from(e: io::Error) -> TarError {
        TarError::Io(e)
    }
}

impl From<TarError> for io::Error {
    fn from(e: TarError) -> io::Error {
        match e {
            TarError::Io(e) => e,
            bad => io::Error::new(io::ErrorKind::InvalidData, bad.to_string()),
        }
    }
}

/// A name quoted for a one-line message: control characters escaped, long
/// names cut.
pub fn shown(raw: &[u8]) -> String {
    const MAX_SHOWN: usize = 200;
    let s = String::from_utf8_lossy(raw);
    if s.chars().count() > MAX_SHOWN {
        let cut: String = s.chars().take(MAX_SHOWN).collect();
        format!("{cut:?}...")
    } else {
        format!("{s:?}")
    }
}

/// One PAX record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The key (`path`, `mtime`, `SCHILY.xattr.user.x`, ...).
    pub key: Vec<u8>,
    /// The value, raw.
    pub value: Vec<u8>,
}

/// An extension header (PAX `x` or `g`, GNU `L` or `K`) with its data.
#[derive(Clone, Debug)]
pub struct Ext {
    /// The header block.
    pub block: [u8; BLOCK],
    /// Its data.
    pub data: Vec<u8>,
    /// Parsed PAX records (empty for `L` and `K`).
    pub records: Vec<Record>,
}

impl Ext {
    /// Parses the records of a PAX header; checks the header's magic.
    pub fn parse(block: [u8; BLOCK], data: Vec<u8>) -> Result<Ext, String> {
        if !matches!(magic(&block), Magic::Ustar | Magic::Gnu) {
            return Err(format!(
                "extension header of type {:?} without a ustar or GNU magic",
                char::from(block[TYPEFLAG])
            ));
        }
        let records = match block[TYPEFLAG] {
            b'x' | b'g' => parse_records(&data)?,
            _ => Vec::new(),
        };
        Ok(Ext {
            block,
            data,
            records,
        })
    }

    /// The type flag: `x`, `g`, `L` or `K`.
    pub fn kind(&self) -> u8 {
        self.block[TYPEFLAG]
    }
}

/// Whether a type flag marks an extension header rather than an entry.
pub fn is_ext(kind: u8) -> bool {
    matches!(kind, b'x' | b'g' | b'L' | b'K')
}

/// A sparse file's layout: the real size and the data segments, in order,
/// whose bytes follow one another in the archive. Everything else is hole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sparse {
    /// The file's size once extracted.
    pub real_size: u64,
    /// (offset in the file, length) of each stored segment.
    pub segments: Vec<(u64, u64)>,
}

/// (offset in the file, length) of each stored segment of a sparse file.
pub type Segments = Vec<(u64, u64)>;

/// Where a sparse file's map is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SparseLayout {
    /// Not sparse.
    None,
    /// Known from the headers (old GNU `S`, PAX 0.0 and 0.1).
    Map(Sparse),
    /// PAX 1.0: at the start of the data, which the reader parses.
    InData {
        /// The file's size once extracted.
        real_size: u64,
    },
}

/// What the headers of one entry say, resolved once for every reader.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The entry's full name, raw (leading `./` kept).
    pub path: Vec<u8>,
    /// The link target of a hard or symbolic link, raw; empty otherwise.
    pub link: Vec<u8>,
    /// The type flag, with the old NUL of a regular file read as `0`.
    pub kind: u8,
    /// Bytes of data after the header (and old GNU sparse blocks).
    pub size: u64,
    /// The sparse map, if the entry is a sparse file.
    pub sparse: SparseLayout,
}

impl Resolved {
    /// Whether the entry is a sparse file, in any format.
    pub fn is_sparse(&self) -> bool {
        self.sparse != SparseLayout::None
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Magic {
    /// POSIX ustar (`ustar\0` `00`): the prefix field is part of the name.
    Ustar,
    /// GNU (`ustar  \0`): no prefix; times and sparse data there instead.
    Gnu,
    /// Pre-POSIX: all zeros.
    V7,
    /// Anything else.
    Other,
}

fn magic(block: &[u8; BLOCK]) -> Magic {
    let m = &block[MAGIC];
    if m == MAGIC_USTAR {
        Magic::Ustar
    } else if m == MAGIC_GNU {
        Magic::Gnu
    } else if m.iter().all(|&b| b == 0) {
        Magic::V7
    } else {
        Magic::Other
    }
}

/// Whether a header has the GNU magic.
pub(crate) fn is_gnu(block: &[u8; BLOCK]) -> bool {
    magic(block) == Magic::Gnu
}

/// Resolves an entry's name, link target, size and sparse map from its
/// header `block`, the extension headers before it (`exts`, in archive
/// order, global ones included) and, for an old GNU sparse file, its
/// extension blocks (`sparse_ext`). The error says what is ambiguous or
/// malformed.
pub fn resolve<'a>(
    exts: impl IntoIterator<Item = &'a Ext>,
    block: &[u8; BLOCK],
    sparse_ext: &[u8],
) -> Result<Resolved, String> {
    let typeflag = match block[TYPEFLAG] {
        0 => b'0',
        k => k,
    };
    let mut size = parse_numeric(&block[SIZE]).ok_or("bad size field")?;
    let group = ExtGroup::gather(exts)?;
    let mut pax = PaxEntry::default();
    if let Some(h) = group.pax {
        pax = PaxEntry::read(h, &mut size)?;
    }
    if size > MAX_ENTRY_SIZE {
        return Err(format!(
            "entry declares {size} bytes of data, more than any tar holds"
        ));
    }
    let m = magic(block);
    if matches!(typeflag, b'S') && m != Magic::Gnu {
        return Err("old GNU sparse entry without the GNU magic".into());
    }
    let base = header_name(block, m)?;
    let sparse = sparse_layout(typeflag, &pax.sparse, block, sparse_ext, size)?;
    let (path, link) = pick_names(group, pax, base, block)?;
    Ok(Resolved {
        path,
        link,
        kind: typeflag,
        size,
        sparse,
    })
}

/// The extension headers of one entry, each kind at most once.
struct ExtGroup<'a> {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<&'a Ext>,
}

impl<'a> ExtGroup<'a> {
    fn gather(exts: impl IntoIterator<Item = &'a Ext>) -> Result<ExtGroup<'a>, String> {
        let mut g = ExtGroup {
            long_name: None,
            long_link: None,
            pax: None,
        };
        for h in exts {
            match h.kind() {
                b'L' | b'K' => {
                    let slot = if h.kind() == b'L' {
                        &mut g.long_name
                    } else {
                        &mut g.long_link
                    };
                    if slot.is_some() {
                        return Err(format!(
                            "two GNU long {} headers for one entry",
                            if h.kind() == b'L' { "name" } else { "link" }
                        ));
                    }
                    let v = until_nul(&h.data);
                    if h.data[v.len()..].iter().any(|&b| b != 0) {
                        return Err("GNU long name or link with data after its NUL".into());
                    }
                    if v.is_empty() {
                        return Err("empty GNU long name or link".into());
                    }
                    *slot = Some(v.to_vec());
                }
                b'x' => {
                    if g.pax.is_some() {
                        return Err("two PAX headers for one entry".into());
                    }
                    g.pax = Some(h);
                }
                b'g' => {
                    // Global records apply to every later entry; one that
                    // names or sizes entries would make each reader guess.
                    if let Some(r) = h.records.iter().find(|r| entry_key(&r.key)) {
                        return Err(format!(
                            "PAX global header sets {:?}, which only an entry's own header may",
                            String::from_utf8_lossy(&r.key)
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(g)
    }
}

/// What an entry's own PAX header says about its name, link and sparse map.
#[derive(Default)]
struct PaxEntry {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    sparse: PaxSparse,
}

impl PaxEntry {
    /// Reads the records; a `size` record replaces `size`.
    fn read(h: &Ext, size: &mut u64) -> Result<PaxEntry, String> {
        let mut p = PaxEntry::default();
        let mut seen: Vec<&[u8]> = Vec::new();
        for r in &h.records {
            let k = r.key.as_slice();
            if entry_key(k) && k != b"GNU.sparse.offset" && k != b"GNU.sparse.numbytes" {
                if seen.contains(&k) {
                    return Err(format!(
                        "PAX header sets {:?} twice",
                        String::from_utf8_lossy(k)
                    ));
                }
                seen.push(k);
            }
            match k {
                b"path" => p.path = Some(name_value(&r.value, "PAX path")?),
                b"linkpath" => p.link = Some(name_value(&r.value, "PAX linkpath")?),
                b"size" => *size = parse_decimal(&r.value).ok_or("bad PAX size record")?,
                _ if k.starts_with(b"GNU.sparse.") => p.sparse.add(k, &r.value)?,
                _ => {}
            }
        }
        Ok(p)
    }
}

/// The name the header block itself gives, as its magic says to read it.
fn header_name(block: &[u8; BLOCK], m: Magic) -> Result<Vec<u8>, String> {
    let prefix = &block[PREFIX];
    Ok(match m {
        Magic::Ustar => {
            let name = until_nul(&block[NAME]);
            let prefix = until_nul(prefix);
            if prefix.is_empty() {
                name.to_vec()
            } else {
                [prefix, b"/", name].concat()
            }
        }
        Magic::Gnu => until_nul(&block[NAME]).to_vec(),
        Magic::V7 | Magic::Other => {
            if prefix.iter().any(|&b| b != 0) {
                return Err(
                    "header has data in its prefix field under a magic that has no prefix".into(),
                );
            }
            until_nul(&block[NAME]).to_vec()
        }
    })
}

/// The sparse map: from old GNU sparse blocks or from PAX records, never both.
fn sparse_layout(
    typeflag: u8,
    keys: &PaxSparse,
    block: &[u8; BLOCK],
    sparse_ext: &[u8],
    size: u64,
) -> Result<SparseLayout, String> {
    if typeflag == b'S' {
        if keys.any() {
            return Err("old GNU sparse entry with PAX sparse records".into());
        }
        Ok(SparseLayout::Map(old_gnu_sparse(block, sparse_ext, size)?))
    } else if keys.any() {
        if !matches!(typeflag, b'0' | b'7') {
            return Err("PAX sparse records on an entry that is not a regular file".into());
        }
        keys.layout(size)
    } else {
        Ok(SparseLayout::None)
    }
}

/// The one name and link target, refusing headers that disagree about them.
fn pick_names(
    group: ExtGroup<'_>,
    mut pax: PaxEntry,
    base: Vec<u8>,
    block: &[u8; BLOCK],
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let path = match (group.long_name, pax.path, pax.sparse.name.take()) {
        (Some(l), Some(p), _) if l != p => {
            return Err("GNU long name and PAX path disagree".into());
        }
        (Some(_), _, Some(_)) => {
            return Err("GNU long name on a PAX sparse file".into());
        }
        (_, _, Some(n)) => n,
        (_, Some(p), None) => p,
        (Some(l), None, None) => l,
        (None, None, None) => base,
    };
    let link = match (group.long_link, pax.link) {
        (Some(l), Some(p)) if l != p => {
            return Err("GNU long link and PAX linkpath disagree".into());
        }
        (_, Some(p)) => p,
        (Some(l), None) => l,
        (None, None) => until_nul(&block[LINKNAME]).to_vec(),
    };
    if path.is_empty() {
        return Err("entry without a name".into());
    }
    // Twice PATH_MAX leaves room for `./` and `//` spellings of a name the
    // extractor can still use, and keeps what a reader holds per entry
    // small: without it, a layer of many entries with 1 MiB names costs a
    // search or check memory far beyond its compressed size.
    for (what, v) in [("name", &path), ("link target", &link)] {
        if v.len() > MAX_NAME {
            return Err(format!(
                "{what} of {} bytes, more than the {MAX_NAME} allowed",
                v.len()
            ));
        }
    }
    Ok((path, link))
}

/// Longest entry name or link target any reader accepts.
pub const MAX_NAME: usize = 8192;

/// PAX keys that decide what an entry is, rather than describe it.
fn entry_key(k: &[u8]) -> bool {
    matches!(k, b"path" | b"linkpath" | b"size") || k.starts_with(b"GNU.sparse.")
}

fn name_value(v: &[u8], what: &str) -> Result<Vec<u8>, String> {
    if v.is_empty() {
        return Err(format!("empty {what}"));
    }
    if v.contains(&0) {
        return Err(format!("{what} with a NUL byte"));
    }
    Ok(v.to_vec())
}

/// The GNU.sparse.* records of one PAX header.
#[derive(Default)]
struct PaxSparse {
    major: Option<u64>,
    minor: Option<u64>,
    name: Option<Vec<u8>>,
    size: Option<u64>,
    realsize: Option<u64>,
    numblocks: Option<u64>,
    map: Option<Vec<u8>>,
    /// 0.0's offset/numbytes pairs, in order.
    pairs: Vec<(u64, u64)>,
    pending_offset: Option<u64>,
    any: bool,
}

impl PaxSparse {
    fn add(&mut self, k: &[u8], v: &[u8]) -> Result<(), String> {
        self.any = true;
        let num = || {
            parse_decimal(v).ok_or_else(|| {
                format!(
                    "bad PAX sparse record {:?}",
                    String::from_utf8_lossy(k).into_owned()
                )
            })
        };
        match k {
            b"GNU.sparse.major" => self.major = Some(num()?),
            b"GNU.sparse.minor" => self.minor = Some(num()?),
            b"GNU.sparse.name" => self.name = Some(name_value(v, "GNU.sparse.name")?),
            b"GNU.sparse.size" => self.size = Some(num()?),
            b"GNU.sparse.realsize" => self.realsize = Some(num()?),
            b"GNU.sparse.numblocks" => self.numblocks = Some(num()?),
            b"GNU.sparse.map" => self.map = Some(v.to_vec()),
            b"GNU.sparse.offset" => {
                if self.pending_offset.replace(num()?).is_some() {
                    return Err("PAX sparse offset without its numbytes".into());
                }
                if self.pairs.len() >= MAX_SPARSE_SEGMENTS {
                    return Err(too_many_segments());
                }
            }
            b"GNU.sparse.numbytes" => {
                let off = self
                    .pending_offset
                    .take()
                    .ok_or("PAX sparse numbytes without its offset")?;
                self.pairs.push((off, num()?));
            }
            _ => {
                return Err(format!(
                    "unknown PAX sparse record {:?}",
                    String::from_utf8_lossy(k).into_owned()
                ));
            }
        }
        Ok(())
    }

    fn any(&self) -> bool {
        self.any
    }

    fn layout(&self, size: u64) -> Result<SparseLayout, String> {
        if self.pending_offset.is_some() {
            return Err("PAX sparse offset without its numbytes".into());
        }
        match (self.major, self.minor) {
            (Some(1), Some(0)) => {
                if self.map.is_some() || self.numblocks.is_some() || !self.pairs.is_empty() {
                    return Err("PAX 1.0 sparse file with a 0.x sparse map too".into());
                }
                if self.name.is_none() {
                    return Err("PAX 1.0 sparse file without GNU.sparse.name".into());
                }
                let real_size = self
                    .realsize
                    .ok_or("PAX 1.0 sparse file without GNU.sparse.realsize")?;
                check_real_size(real_size)?;
                Ok(SparseLayout::InData { real_size })
            }
            // GNU tar writes no version for 0.0 and 0.1; other writers name it.
            (None, None) | (Some(0), Some(0 | 1)) => {
                let real_size = self.size.ok_or("PAX sparse file without GNU.sparse.size")?;
                let n = self
                    .numblocks
                    .ok_or("PAX sparse file without GNU.sparse.numblocks")?;
                let segments = match (&self.map, self.pairs.is_empty()) {
                    (Some(map), true) => parse_map_01(map)?,
                    (None, false) => self.pairs.clone(),
                    (Some(_), false) => {
                        return Err("PAX sparse file with both a 0.0 and a 0.1 map".into());
                    }
                    (None, true) => return Err("PAX sparse file without a sparse map".into()),
                };
                if segments.len() as u64 != n {
                    return Err("PAX sparse map does not match GNU.sparse.numblocks".into());
                }
                let sparse = Sparse {
                    real_size,
                    segments,
                };
                validate_sparse(&sparse, size)?;
                Ok(SparseLayout::Map(sparse))
            }
            (major, minor) => Err(format!(
                "unsupported PAX sparse format {}.{}",
                major.map_or("?".into(), |v| v.to_string()),
                minor.map_or("?".into(), |v| v.to_string())
            )),
        }
    }
}

fn too_many_segments() -> String {
    format!("sparse map with more than {MAX_SPARSE_SEGMENTS} segments")
}

fn check_real_size(real_size: u64) -> Result<(), String> {
    if real_size > MAX_SPARSE_REAL_SIZE {
        return Err(format!(
            "sparse file declares a size of {real_size} bytes, more than the \
             {MAX_SPARSE_REAL_SIZE}-byte limit"
        ));
    }
    Ok(())
}

/// `off,len,off,len,...`
fn parse_map_01(map: &[u8]) -> Result<Vec<(u64, u64)>, String> {
    if map.is_empty() {
        return Ok(Vec::new());
    }
    let mut nums = Vec::new();
    for part in map.split(|&b| b == b',') {
        if nums.len() >= 2 * MAX_SPARSE_SEGMENTS {
            return Err(too_many_segments());
        }
        nums.push(parse_decimal(part).ok_or("bad number in GNU.sparse.map")?);
    }
    if nums.len() % 2 != 0 {
        return Err("GNU.sparse.map with an odd count of numbers".into());
    }
    Ok(nums.chunks(2).map(|c| (c[0], c[1])).collect())
}

/// Checks a sparse map: segments in order, not overlapping, inside the real
/// size, their lengths adding up to the data stored (`stored`).
pub(crate) fn validate_sparse(s: &Sparse, stored: u64) -> Result<(), String> {
    check_real_size(s.real_size)?;
    if s.segments.len() > MAX_SPARSE_SEGMENTS {
        return Err(too_many_segments());
    }
    let mut end = 0u64;
    let mut total = 0u64;
    for &(off, len) in &s.segments {
        if off < end {
            return Err("sparse map with segments out of order or overlapping".into());
        }
        end = off
            .checked_add(len)
            .filter(|&e| e <= s.real_size)
            .ok_or("sparse map with a segment beyond the file's size")?;
        total = total.checked_add(len).ok_or("sparse map too large")?;
    }
    if total != stored {
        return Err(format!(
            "sparse map holds {total} bytes of data but the entry stores {stored}"
        ));
    }
    Ok(())
}

/// Reads the old GNU sparse map: four entries in the header, 21 in each
/// extension block.
fn old_gnu_sparse(block: &[u8; BLOCK], ext: &[u8], size: u64) -> Result<Sparse, String> {
    let real_size = parse_numeric(&block[GNU_REALSIZE]).ok_or("bad GNU sparse real size")?;
    let mut segments = Vec::new();
    let mut read = |area: &[u8], n: usize| -> Result<(), String> {
        let mut ended = false;
        for i in 0..n {
            let e = &area[i * 24..i * 24 + 24];
            if e[0] == 0 {
                ended = true;
                continue;
            }
            if ended {
                return Err("GNU sparse map with an entry after an empty one".into());
            }
            if segments.len() >= MAX_SPARSE_SEGMENTS {
                return Err(too_many_segments());
            }
            let off = parse_numeric(&e[..12]).ok_or("bad GNU sparse offset")?;
            let len = parse_numeric(&e[12..]).ok_or("bad GNU sparse length")?;
            segments.push((off, len));
        }
        Ok(())
    };
    read(&block[GNU_SPARSE..GNU_SPARSE + 96], 4)?;
    for ext in ext.chunks(BLOCK) {
        read(&ext[..GNU_SPARSE_EXT_ENTRIES * 24], GNU_SPARSE_EXT_ENTRIES)?;
    }
    let s = Sparse {
        real_size,
        segments,
    };
    validate_sparse(&s, size)?;
    Ok(s)
}

/// Bytes of zero padding after `size` bytes of data.
pub fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

/// The bytes before the first NUL.
pub(crate) fn until_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

/// Reads a numeric header field: octal digits (space or NUL padded), or
/// the GNU base-256 form for big values. None for anything else, negative
/// base-256 values included.
pub fn parse_numeric(field: &[u8]) -> Option<u64> {
    let first = *field.first()?;
    if first & 0x80 != 0 {
        if first & 0x40 != 0 {
            return None;
        }
        let mut v = u64::from(first & 0x3f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let start = field.iter().position(|&b| b != b' ').unwrap_or(field.len());
    let mut v: u64 = 0;
    let mut i = start;
    while i < field.len() && (b'0'..=b'7').contains(&field[i]) {
        v = v.checked_mul(8)?.checked_add(u64::from(field[i] - b'0'))?;
        i += 1;
    }
    field[i..].iter().all(|&b| b == b' ' || b == 0).then_some(v)
}

pub(crate) fn header_sums(block: &[u8; BLOCK]) -> (u64, i64) {
    let mut unsigned = 0u64;
    let mut signed = 0i64;
    for (i, &b) in block.iter().enumerate() {
        let b = if CHKSUM.contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    (unsigned, signed)
}

/// Whether the stored checksum matches (some old writers summed signed
/// bytes; readers accept both).
pub fn checksum_ok(block: &[u8; BLOCK]) -> bool {
    let Some(stored) = parse_numeric(&block[CHKSUM]) else {
        return false;
    };
    let (unsigned, signed) = header_sums(block);
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

pub(crate) fn parse_decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Parses PAX records, `LEN key=value\n` each, where LEN counts the whole
/// record. Trailing NUL bytes, which some writers leave, end the list.
pub fn parse_records(data: &[u8]) -> Result<Vec<Record>, String> {
    let bad = |why: &str| format!("malformed PAX header: {why}");
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let space = rest
            .iter()
            .take(21)
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("record without a length"))?;
        let len = parse_decimal(&rest[..space]).ok_or_else(|| bad("bad record length"))?;
        let len = usize::try_from(len).map_err(|_| bad("bad record length"))?;
        if len <= space + 1 || len > rest.len() {
            return Err(bad("record length out of range"));
        }
        let record = &rest[space + 1..len];
        let Some(body) = record.strip_suffix(b"\n") else {
            return Err(bad("record does not end with a newline"));
        };
        let eq = body
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("record without '='"))?;
        if eq == 0 {
            return Err(bad("record with an empty key"));
        }
        out.push(Record {
            key: body[..eq].to_vec(),
            value: body[eq + 1..].to_vec(),
        });
        rest = &rest[len..];
    }
    Ok(out)
}

/// The ustar name of a header block (name field, with the prefix when the
/// magic has one), for naming a header that could not be resolved.
pub(crate) fn raw_name(block: &[u8; BLOCK]) -> Vec<u8> {
    let name = until_nul(&block[NAME]);
    let prefix = until_nul(&block[PREFIX]);
    if magic(block) == Magic::Ustar && !prefix.is_empty() {
        [prefix, b"/", name].concat()
    } else {
        name.to_vec()
    }
}

/// The name to quote for an entry whose headers could not be resolved: the
/// one its extension headers most likely meant, else its ustar name.
pub(crate) fn guess_name<'a>(
    group: impl Iterator<Item = &'a Ext> + Clone,
    ustar: &[u8],
) -> Vec<u8> {
    for key in [&b"GNU.sparse.name"[..], b"path"] {
        let mut pax = group.clone().filter(|h| h.kind() == b'x');
        if let Some(r) = pax.find_map(|h| h.records.iter().find(|r| r.key == key)) {
            return r.value.clone();
        }
    }
    match group.clone().find(|h| h.kind() == b'L') {
        Some(h) => until_nul(&h.data).to_vec(),
        None => ustar.to_vec(),
    }
}

/// Parses a PAX 1.0 sparse map from the start of an entry's data: decimal
/// numbers, one per line (the count, then offset and length pairs). Returns
/// None while `buf` does not hold the whole map yet, else the segments and
/// the bytes of `buf` the map used.
pub(crate) fn parse_map_10(buf: &[u8]) -> Result<Option<(Segments, usize)>, String> {
    let mut at = 0;
    let next = |at: &mut usize| -> Result<Option<u64>, String> {
        let Some(nl) = buf[*at..].iter().take(21).position(|&b| b == b'\n') else {
            if buf.len() - *at > 20 {
                return Err("bad number in the PAX 1.0 sparse map".into());
            }
            return Ok(None);
        };
        let v = parse_decimal(&buf[*at..*at + nl]).ok_or("bad number in the PAX 1.0 sparse map")?;
        *at += nl + 1;
        Ok(Some(v))
    };
    let Some(n) = next(&mut at)? else {
        return Ok(None);
    };
    if n > MAX_SPARSE_SEGMENTS as u64 {
        return Err(too_many_segments());
    }
    let mut segments = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let Some(off) = next(&mut at)? else {
            return Ok(None);
        };
        let Some(len) = next(&mut at)? else {
            return Ok(None);
        };
        segments.push((off, len));
    }
    Ok(Some((segments, at)))
}

/// Header fields that the readers parse on demand.
pub(crate) mod fields {
    use super::*;

    pub fn mode(b: &[u8; BLOCK]) -> Option<u32> {
        parse_numeric(&b[MODE]).and_then(|m| u32::try_from(m).ok())
    }
    pub fn uid(b: &[u8; BLOCK]) -> Option<u64> {
        parse_numeric(&b[UID])
    }
    pub fn gid(b: &[u8; BLOCK]) -> Option<u64> {
        parse_numeric(&b[GID])
    }
    pub fn mtime(b: &[u8; BLOCK]) -> Option<u64> {
        parse_numeric(&b[MTIME])
    }
    pub fn dev(b: &[u8; BLOCK]) -> (Option<u64>, Option<u64>) {
        let field = |r: Range<usize>| {
            if b[r.clone()].iter().all(|&c| c == 0) {
                Some(0)
            } else {
                parse_numeric(&b[r])
            }
        };
        (field(DEVMAJOR), field(DEVMINOR))
    }
}
