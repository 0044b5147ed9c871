//! Rewriting a layer tar block by block, for the filters that change layers.
//!
//! Decoding entries with a tar library and encoding them again loses what
//! the library does not model (PAX records it does not know, the exact
//! header format, GNU extensions) and changes bytes nobody asked to change.
//! Here the tar is walked at the level of its 512-byte blocks instead: each
//! entry is its header plus the extension headers before it (PAX `x`, GNU
//! long name `L` and long link `K`), and unless a filter edits something,
//! those blocks and the entry's data are copied as they were. Only the
//! headers a filter touches are re-encoded, with a fresh checksum.
//!
//! The input is read once, front to back, and the output is written to a
//! temp file and hashed as it is written, so memory does not grow with the
//! layer. Only extension headers are held in memory, and they are bounded.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::digest::{Algorithm, Digest, HashingWriter};
use crate::error::{Error, Result};
use crate::image::FileSlice;

use crate::tarfmt::{
    self, BLOCK, CHKSUM, Ext, GNU_ATIME, GNU_CTIME, GNU_IS_EXTENDED, GNU_SPARSE_EXT_IS_EXTENDED,
    LINKNAME, MAX_SPARSE_EXT_BLOCKS, META_LIMIT, MTIME, SIZE, TYPEFLAG, ZEROS, checksum_ok,
    header_sums, is_gnu, padding, parse_numeric,
};

/// The largest time a ustar header holds as 11 octal digits (year 2242).
pub const MAX_USTAR_TIME: u64 = 0o777_7777_7777;

/// What to do with one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write the entry, with whatever edits were made through [`Entry`]; an
    /// entry nobody edited is copied byte for byte.
    Keep,
    /// Leave the entry out, together with the PAX and GNU extension headers
    /// that describe it (global headers stay: they apply to later entries).
    Drop,
    /// Write the entry as a regular file holding `size` bytes found at
    /// `data_offset` of the input tar: how a hard link survives the loss of
    /// the entry it pointed to (that entry's [`Entry::data_offset`]).
    Materialize {
        /// Where the content starts in the input tar.
        data_offset: u64,
        /// How many bytes.
        size: u64,
    },
}

/// A filter's per-entry decisions while a layer is rewritten.
pub trait Rewrite {
    /// Decides about one entry, after editing it if it wants to.
    fn entry(&mut self, entry: &mut Entry) -> Result<Action>;

    /// Sees (and may edit) a PAX global header, whose records apply to every
    /// entry after it. A global header left with no records is dropped.
    fn global(&mut self, _header: &mut ExtHeader) -> Result<()> {
        Ok(())
    }
}

/// What a rewrite did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Entries seen (extension headers not counted).
    pub entries: u64,
    /// Entries left out.
    pub dropped: u64,
    /// Hard links turned into regular files.
    pub materialized: u64,
    /// Whether anything differs from the input other than the end-of-archive
    /// padding, i.e. whether the rewritten tar is worth using.
    pub edited: bool,
}

/// The result of [`rewrite_layer`].
#[derive(Debug)]
pub struct Rewritten {
    /// The new tar, a temp file deleted when the last clone is dropped.
    pub tar: FileSlice,
    /// Its sha256: the layer's new diff_id.
    pub diff_id: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// What changed.
    pub stats: Stats,
}

/// An extension header: PAX (`x`, or `g` for global) or GNU long name (`L`)
/// or long link target (`K`), with its data.
#[derive(Clone, Debug)]
pub struct ExtHeader {
    ext: Ext,
    /// The records changed, so `data` must be encoded again.
    records_edited: bool,
    /// A header field changed, so the checksum must be computed again.
    block_edited: bool,
}

impl ExtHeader {
    fn parse(block: [u8; BLOCK], data: Vec<u8>) -> std::result::Result<ExtHeader, String> {
        Ok(ExtHeader {
            ext: Ext::parse(block, data)?,
            records_edited: false,
            block_edited: false,
        })
    }

    /// The type flag: `x`, `g`, `L` or `K`.
    pub fn kind(&self) -> u8 {
        self.ext.kind()
    }

    /// The PAX records as (key, value), in order.
    pub fn records(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.ext
            .records
            .iter()
            .map(|r| (r.key.as_slice(), r.value.as_slice()))
    }

    /// The value of the last record with `key`.
    pub fn record(&self, key: &[u8]) -> Option<&[u8]> {
        self.ext
            .records
            .iter()
            .rev()
            .find(|r| r.key == key)
            .map(|r| r.value.as_slice())
    }

    /// Removes the PAX records whose key `remove` accepts; returns how many.
    pub fn remove_records(&mut self, mut remove: impl FnMut(&[u8]) -> bool) -> usize {
        let before = self.ext.records.len();
        self.ext.records.retain(|r| !remove(&r.key));
        let removed = before - self.ext.records.len();
        if removed > 0 {
            self.records_edited = true;
        }
        removed
    }

    /// Sets the header block's own mtime (which GNU tar fills with the
    /// file's) so that the archive bytes carry no other time.
    pub fn set_mtime(&mut self, t: u64) {
        self.block_edited |= set_time(&mut self.ext.block, t);
    }

    /// Whether the header is written at all: a PAX header whose records were
    /// all removed is not.
    fn survives(&self) -> bool {
        !(self.records_edited && self.ext.records.is_empty())
    }

    fn edited(&self) -> bool {
        self.records_edited || self.block_edited
    }

    /// Writes the header as it now is (nothing if it no longer survives).
    fn write_to<W: Write>(&mut self, out: &mut W) -> io::Result<()> {
        if !self.survives() {
            return Ok(());
        }
        if self.records_edited {
            self.ext.data.clear();
            for r in &self.ext.records {
                encode_record(&r.key, &r.value, &mut self.ext.data);
            }
            write_numeric(&mut self.ext.block[SIZE], self.ext.data.len() as u64);
        }
        if self.edited() {
            set_checksum(&mut self.ext.block);
        }
        out.write_all(&self.ext.block)?;
        out.write_all(&self.ext.data)?;
        out.write_all(&ZEROS[..padding(self.ext.data.len() as u64)])
    }
}

/// One entry of the tar: its header, the extension headers before it, and
/// where its data is. Filters read it and may edit it before deciding.
#[derive(Debug)]
pub struct Entry {
    /// Extension headers before the entry, in archive order (global ones
    /// included: they are written even when the entry is dropped).
    group: Vec<ExtHeader>,
    block: [u8; BLOCK],
    /// Old GNU sparse map blocks after the header, copied as they are.
    sparse: Vec<u8>,
    block_edited: bool,
    path: Vec<u8>,
    link: Vec<u8>,
    size: u64,
    data_offset: u64,
    is_sparse: bool,
}

impl Entry {
    fn new(
        group: Vec<ExtHeader>,
        block: [u8; BLOCK],
        sparse: Vec<u8>,
        data_offset: u64,
        r: tarfmt::Resolved,
    ) -> Entry {
        let is_sparse = r.is_sparse();
        Entry {
            group,
            block,
            sparse,
            block_edited: false,
            path: r.path,
            link: r.link,
            size: r.size,
            data_offset,
            is_sparse,
        }
    }

    /// The entry's full name as [`tarfmt::resolve`] gives it (PAX sparse
    /// name, PAX `path`, GNU long name, or ustar prefix and name), leading
    /// `./` included.
    pub fn path(&self) -> &[u8] {
        &self.path
    }

    /// The link target of a hard or symbolic link (PAX `linkpath`, else the
    /// GNU long link, else the ustar link name); empty for other entries.
    pub fn link_target(&self) -> &[u8] {
        &self.link
    }

    /// The type flag (`0` regular file, `1` hard link, `2` symlink, `5`
    /// directory, ...), with the old NUL flag of a regular file read as `0`.
    pub fn kind(&self) -> u8 {
        match self.block[TYPEFLAG] {
            0 => b'0',
            k => k,
        }
    }

    /// Whether the entry is a regular file (including contiguous files)
    /// whose data is its content: sparse files are not (their data is a
    /// map's segments, not the file).
    pub fn is_regular(&self) -> bool {
        matches!(self.kind(), b'0' | b'7') && !self.is_sparse
    }

    /// Whether the entry is a sparse file, in any of the GNU formats.
    pub fn is_sparse(&self) -> bool {
        self.is_sparse
    }

    /// Whether the entry is a hard link.
    pub fn is_hardlink(&self) -> bool {
        self.kind() == b'1'
    }

    /// Bytes of data that follow the header in the archive.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the entry's data starts in the input tar.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The value of a PAX record of this entry (the last one, as readers
    /// take it).
    pub fn pax(&self, key: &[u8]) -> Option<&[u8]> {
        self.group
            .iter()
            .rev()
            .filter(|h| h.kind() == b'x')
            .find_map(|h| h.record(key))
    }

    /// Removes this entry's PAX records whose key `remove` accepts; returns
    /// how many. A PAX header left empty is dropped.
    pub fn remove_pax(&mut self, mut remove: impl FnMut(&[u8]) -> bool) -> usize {
        self.group
            .iter_mut()
            .filter(|h| h.kind() == b'x')
            .map(|h| h.remove_records(&mut remove))
            .sum()
    }

    /// Sets the mtime in the entry's header (and, for a GNU header that
    /// carries them, its atime and ctime), and in the headers of its
    /// extension headers, which GNU tar stamps with the file's time.
    pub fn set_mtime(&mut self, t: u64) {
        self.block_edited |= set_time(&mut self.block, t);
        for h in self.group.iter_mut().filter(|h| h.kind() != b'g') {
            h.set_mtime(t);
        }
    }

    fn edited(&self) -> bool {
        self.block_edited || self.group.iter().any(ExtHeader::edited)
    }

    /// Turns a hard link into a regular file of `size` bytes.
    fn materialize(&mut self, size: u64) {
        self.block[TYPEFLAG] = b'0';
        self.block[LINKNAME].fill(0);
        write_numeric(&mut self.block[SIZE], size);
        self.block_edited = true;
        self.group.retain(|h| h.kind() != b'K');
        self.remove_pax(|k| k == b"linkpath" || k == b"size");
        self.link.clear();
        self.size = size;
    }

    fn write_headers<W: Write>(&mut self, out: &mut W) -> io::Result<()> {
        for h in &mut self.group {
            h.write_to(out)?;
        }
        if self.block_edited {
            set_checksum(&mut self.block);
        }
        out.write_all(&self.block)?;
        out.write_all(&self.sparse)
    }
}

/// Rewrites the layer tar `input` into a temp file in `temp_dir`, asking
/// `rewrite` about every entry. `label` names the layer in errors.
pub fn rewrite_layer(
    input: &FileSlice,
    temp_dir: &Path,
    label: &str,
    rewrite: &mut dyn Rewrite,
) -> Result<Rewritten> {
    let file = File::open(input.path()).map_err(|e| Error::io("opening", input.path(), e))?;
    let window = Window::new(file, input.offset(), input.len())
        .map_err(|e| Error::io("reading", input.path(), e))?;
    let tmp = tempfile::Builder::new()
        .prefix("rewritten-")
        .suffix(".tar")
        .tempfile_in(temp_dir)
        .map_err(|e| Error::io("creating a temp file in", temp_dir, e))?;
    let (file, path) = tmp.into_parts();
    let mut out = HashingWriter::new(BufWriter::with_capacity(256 << 10, file), Algorithm::Sha256);
    let stats = rewrite_stream(window, &mut out, label, rewrite)?;
    let (diff_id, size, buffered) = out.finish();
    buffered
        .into_inner()
        .map_err(|e| Error::io("writing", &*path, e.into_error()))?;
    Ok(Rewritten {
        tar: FileSlice::temp(path, size),
        diff_id,
        size,
        stats,
    })
}

/// The reading side: a buffered reader that knows where it is and how much
/// is left, so a size field pointing past the end is caught before anything
/// is skipped.
struct Input<R> {
    r: BufReader<R>,
    pos: u64,
    len: u64,
}

/// Why a rewrite failed, before the label is put on it.
enum Fail {
    Read(io::Error),
    Write(io::Error),
    Bad { offset: u64, what: String },
    Filter(Error),
}

impl<R: Read + Seek> Input<R> {
    /// Reads one block; false at the end of the input.
    fn block(&mut self, buf: &mut [u8; BLOCK]) -> std::result::Result<bool, Fail> {
        let mut got = 0;
        while got < BLOCK {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Fail::Read(e)),
            }
        }
        self.pos += got as u64;
        match got {
            0 => Ok(false),
            BLOCK => Ok(true),
            _ => Err(self.truncated()),
        }
    }

    fn truncated(&self) -> Fail {
        Fail::Bad {
            offset: self.pos,
            what: "the tar is truncated".into(),
        }
    }

    /// Checks that `n` more bytes exist.
    fn need(&self, n: u64) -> std::result::Result<(), Fail> {
        if n > self.len.saturating_sub(self.pos) {
            return Err(self.truncated());
        }
        Ok(())
    }

    fn read_vec(&mut self, n: u64) -> std::result::Result<Vec<u8>, Fail> {
        self.need(n)?;
        let mut v = vec![0; n as usize];
        self.r.read_exact(&mut v).map_err(|e| self.read_fail(e))?;
        self.pos += n;
        Ok(v)
    }

    fn skip(&mut self, n: u64) -> std::result::Result<(), Fail> {
        self.need(n)?;
        let delta = i64::try_from(n).map_err(|_| self.truncated())?;
        self.r.seek_relative(delta).map_err(Fail::Read)?;
        self.pos += n;
        Ok(())
    }

    /// Copies `n` bytes to `out`.
    fn copy<W: Write>(&mut self, n: u64, out: &mut W) -> std::result::Result<(), Fail> {
        self.need(n)?;
        copy_exact(&mut self.r, n, out).map_err(|e| self.read_fail_or(e))?;
        self.pos += n;
        Ok(())
    }

    /// Copies `n` bytes from `offset` to `out`, then comes back.
    fn copy_from<W: Write>(
        &mut self,
        offset: u64,
        n: u64,
        out: &mut W,
    ) -> std::result::Result<(), Fail> {
        if offset.checked_add(n).is_none_or(|end| end > self.len) {
            return Err(Fail::Bad {
                offset: self.pos,
                what: "content to copy lies outside the tar".into(),
            });
        }
        let back = self.pos;
        self.r.seek(SeekFrom::Start(offset)).map_err(Fail::Read)?;
        copy_exact(&mut self.r, n, out).map_err(|e| self.read_fail_or(e))?;
        self.r.seek(SeekFrom::Start(back)).map_err(Fail::Read)?;
        Ok(())
    }

    fn read_fail(&self, e: io::Error) -> Fail {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            self.truncated()
        } else {
            Fail::Read(e)
        }
    }

    fn read_fail_or(&self, e: CopyError) -> Fail {
        match e {
            CopyError::Read(e) => self.read_fail(e),
            CopyError::Write(e) => Fail::Write(e),
        }
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies exactly `n` bytes straight out of the reader's buffer, telling
/// read failures (or a short input) from write failures.
fn copy_exact<R: Read, W: Write>(
    r: &mut BufReader<R>,
    mut n: u64,
    out: &mut W,
) -> std::result::Result<(), CopyError> {
    while n > 0 {
        let buf = match r.fill_buf() {
            Ok([]) => return Err(CopyError::Read(io::ErrorKind::UnexpectedEof.into())),
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        out.write_all(&buf[..take]).map_err(CopyError::Write)?;
        r.consume(take);
        n -= take as u64;
    }
    Ok(())
}

/// Rewrites a tar read from `input` (positions are relative to its start)
/// into `out`. The output always ends with exactly two zero blocks.
pub fn rewrite_stream<R: Read + Seek, W: Write>(
    mut input: R,
    out: &mut W,
    label: &str,
    rewrite: &mut dyn Rewrite,
) -> Result<Stats> {
    let len = input
        .seek(SeekFrom::End(0))
        .and_then(|len| input.seek(SeekFrom::Start(0)).map(|_| len))
        .map_err(|e| Error::stream(format!("reading {label}"), e))?;
    let mut input = Input {
        r: BufReader::with_capacity(256 << 10, input),
        pos: 0,
        len,
    };
    walk(&mut input, out, rewrite).map_err(|f| match f {
        Fail::Read(e) => Error::stream(format!("reading {label}"), e),
        Fail::Write(e) => Error::stream(format!("writing the rewritten {label}"), e),
        Fail::Bad { offset, what } => {
            Error::InvalidImage(format!("{label}: {what} (tar header at byte {offset})"))
        }
        Fail::Filter(e) => e,
    })
}

fn walk<R: Read + Seek, W: Write>(
    input: &mut Input<R>,
    out: &mut W,
    rewrite: &mut dyn Rewrite,
) -> std::result::Result<Stats, Fail> {
    let mut stats = Stats::default();
    let mut group: Vec<ExtHeader> = Vec::new();
    let mut group_bytes: u64 = 0;
    let w = Fail::Write;
    loop {
        let at = input.pos;
        let bad = |what: &str| Fail::Bad {
            offset: at,
            what: what.to_string(),
        };
        let mut block = [0u8; BLOCK];
        if !input.block(&mut block)? {
            // No end-of-archive blocks: readers accept that, and so do we.
            break;
        }
        if block == ZEROS {
            break;
        }
        if !checksum_ok(&block) {
            return Err(bad("bad header checksum"));
        }
        let size = parse_numeric(&block[SIZE]).ok_or_else(|| bad("bad size field"))?;
        match block[TYPEFLAG] {
            b'x' | b'g' | b'L' | b'K' => {
                // Bounded per entry, not just per header: a run of headers
                // before one entry is held in memory as a whole.
                group_bytes = group_bytes
                    .saturating_add(size)
                    .saturating_add(BLOCK as u64);
                if group_bytes > META_LIMIT {
                    return Err(bad(&format!(
                        "entry {}: extension header of type {:?} declares {size} bytes, over \
                         the {META_LIMIT}-byte limit for an entry's metadata",
                        tarfmt::shown(&tarfmt::raw_name(&block)),
                        char::from(block[TYPEFLAG])
                    )));
                }
                let data = input.read_vec(size)?;
                input.skip(padding(size) as u64)?;
                let mut h = ExtHeader::parse(block, data).map_err(|e| {
                    bad(&format!(
                        "entry {}: {e}",
                        tarfmt::shown(&tarfmt::raw_name(&block))
                    ))
                })?;
                if h.kind() == b'g' {
                    rewrite.global(&mut h).map_err(Fail::Filter)?;
                }
                group.push(h);
            }
            kind => {
                let mut sparse = Vec::new();
                if kind == b'S' && is_gnu(&block) && block[GNU_IS_EXTENDED] != 0 {
                    loop {
                        let mut ext = [0u8; BLOCK];
                        if !input.block(&mut ext)? {
                            return Err(input.truncated());
                        }
                        sparse.extend_from_slice(&ext);
                        if ext[GNU_SPARSE_EXT_IS_EXTENDED] == 0 {
                            break;
                        }
                        if sparse.len() >= MAX_SPARSE_EXT_BLOCKS * BLOCK {
                            return Err(bad("sparse map too large"));
                        }
                    }
                }
                let data_offset = input.pos;
                group_bytes = 0;
                // The one resolution every reader uses: what is excluded here
                // is what the extractor would have written.
                let r = tarfmt::resolve(group.iter().map(|h| &h.ext), &block, &sparse).map_err(
                    |e| {
                        let name = tarfmt::guess_name(
                            group.iter().map(|h| &h.ext),
                            &tarfmt::raw_name(&block),
                        );
                        bad(&format!("entry {}: {e}", tarfmt::shown(&name)))
                    },
                )?;
                let mut entry =
                    Entry::new(std::mem::take(&mut group), block, sparse, data_offset, r);
                stats.entries += 1;
                let action = rewrite.entry(&mut entry).map_err(Fail::Filter)?;
                let size = entry.size;
                match action {
                    Action::Keep => {
                        stats.edited |= entry.edited();
                        entry.write_headers(out).map_err(w)?;
                        input.copy(size, out)?;
                        input.skip(padding(size) as u64)?;
                        out.write_all(&ZEROS[..padding(size)]).map_err(w)?;
                    }
                    Action::Drop => {
                        stats.dropped += 1;
                        stats.edited = true;
                        for h in entry.group.iter_mut().filter(|h| h.kind() == b'g') {
                            h.write_to(out).map_err(w)?;
                        }
                        input.skip(size)?;
                        input.skip(padding(size) as u64)?;
                    }
                    Action::Materialize {
                        data_offset,
                        size: new_size,
                    } => {
                        stats.materialized += 1;
                        stats.edited = true;
                        input.skip(size)?;
                        input.skip(padding(size) as u64)?;
                        entry.materialize(new_size);
                        entry.write_headers(out).map_err(w)?;
                        input.copy_from(data_offset, new_size, out)?;
                        out.write_all(&ZEROS[..padding(new_size)]).map_err(w)?;
                    }
                }
            }
        }
    }
    // Extension headers with no entry after them: kept as they were found.
    for h in &mut group {
        stats.edited |= h.edited();
        h.write_to(out).map_err(w)?;
    }
    out.write_all(&ZEROS).map_err(w)?;
    out.write_all(&ZEROS).map_err(w)?;
    Ok(stats)
}

/// A byte range of a file, readable and seekable as if it were the file.
struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Window {
    fn new(mut file: File, start: u64, len: u64) -> io::Result<Window> {
        file.seek(SeekFrom::Start(start))?;
        Ok(Window {
            file,
            start,
            len,
            pos: 0,
        })
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if max == 0 {
            return Ok(0);
        }
        let n = self.file.read(&mut buf[..max])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        let target = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek outside the layer"))?;
        let abs = self
            .start
            .checked_add(target)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek outside the layer"))?;
        self.file.seek(SeekFrom::Start(abs))?;
        self.pos = target;
        Ok(target)
    }
}

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

/// How errors and logs name a layer.
pub(crate) fn layer_label(layer: &crate::image::Layer) -> String {
    format!("layer {} ({})", layer.info.index, layer.info.diff_id)
}

/// A layer's label for messages and its tar, which every rewriting filter
/// needs; `filter` names the filter in the error when the tar is missing.
pub(crate) fn layer_tar(
    layer: &crate::image::Layer,
    filter: &str,
) -> crate::error::Result<(String, crate::image::FileSlice)> {
    let label = layer_label(layer);
    let tar = layer.tar.clone().ok_or_else(|| {
        crate::error::Error::InvalidImage(format!("{filter}: {label} reached it without its tar"))
    })?;
    Ok((label, tar))
}

/// Writes `v` into a numeric field: zero-padded octal and a NUL when it
/// fits, else base-256.
fn write_numeric(field: &mut [u8], v: u64) {
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
fn set_time(block: &mut [u8; BLOCK], t: u64) -> bool {
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
fn set_checksum(block: &mut [u8; BLOCK]) {
    let (sum, _) = header_sums(block);
    let field = format!("{sum:06o}\0 ");
    block[CHKSUM].copy_from_slice(&field.as_bytes()[..8]);
}

/// Appends one PAX record; its length prefix counts its own digits.
fn encode_record(key: &[u8], value: &[u8], out: &mut Vec<u8>) {
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

fn decimal_digits(n: usize) -> usize {
    n.to_string().len()
}

/// Helpers shared by the filters' unit tests: tars from the tar crate and
/// from GNU tar, a rewrite over bytes in memory, and a raw header scan.
#[cfg(test)]
pub(crate) mod testutil {
    use std::fs;
    use std::io::Cursor;
    use std::path::Path;
    use std::process::Command;

    use super::*;
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
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::testutil::*;
    use super::*;

    fn keep_all(tar: &[u8]) -> (Vec<u8>, Stats, KeepAll) {
        let mut k = KeepAll::default();
        let (out, stats) = rewrite_bytes(tar, &mut k).unwrap();
        (out, stats, k)
    }

    #[test]
    fn untouched_tar_crate_output_is_byte_identical() {
        let tar = tar_crate_tar();
        let (out, stats, k) = keep_all(&tar);
        assert!(out == tar, "a keep-everything rewrite changed bytes");
        assert!(!stats.edited);
        assert_eq!(stats.entries, 11);
        let listed: Vec<String> = tar_crate_list(&tar).into_iter().map(|l| l.0).collect();
        let seen: Vec<String> = k
            .paths
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        assert_eq!(seen, listed, "full paths as the tar crate reads them");
        assert!(k.links.iter().any(|l| l.len() > 255), "long link target");
    }

    #[test]
    fn untouched_gnu_tar_output_keeps_every_block() {
        for format in ["pax", "gnu"] {
            let (tar, _) = gnu_tree_tar(format);
            let (out, stats, k) = keep_all(&tar);
            assert!(!stats.edited, "{format}");
            // Everything but GNU tar's blocking padding, then two zero blocks.
            let body = out.len() - 2 * BLOCK;
            assert_eq!(&out[..body], &tar[..body], "{format}");
            assert!(out[body..].iter().all(|&b| b == 0));
            assert!(tar[body..].iter().all(|&b| b == 0));
            assert_eq!(gnu_list(&out), gnu_list(&tar), "{format}");
            let listed: Vec<String> = tar_crate_list(&tar).into_iter().map(|l| l.0).collect();
            let seen: Vec<String> = k
                .paths
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            assert_eq!(seen, listed, "{format}: full paths");
            assert!(
                seen.iter().any(|p| p.len() > 255),
                "{format}: long name seen"
            );
        }
    }

    /// Sets every mtime to `ts` and removes PAX time records, like
    /// normalize-timestamps (which has its own tests on top of these).
    struct Times(u64);

    impl Rewrite for Times {
        fn entry(&mut self, e: &mut Entry) -> Result<Action> {
            e.remove_pax(|k| k == b"atime" || k == b"ctime" || k == b"mtime");
            e.set_mtime(self.0);
            Ok(Action::Keep)
        }
        fn global(&mut self, h: &mut ExtHeader) -> Result<()> {
            h.remove_records(|k| k == b"mtime");
            h.set_mtime(self.0);
            Ok(())
        }
    }

    #[test]
    fn edited_gnu_pax_tar_keeps_xattrs_and_drops_emptied_headers() {
        let (tar, cap) = gnu_tree_tar("pax");
        let before = raw_headers(&tar);
        assert!(
            before.iter().filter(|h| h.kind == b'x').count() > 5,
            "GNU tar writes a PAX header (atime, ctime) for every file"
        );
        let (out, stats) = rewrite_bytes(&tar, &mut Times(1_700_000_000)).unwrap();
        assert!(stats.edited);
        for h in raw_headers(&out) {
            assert_eq!(h.mtime, 1_700_000_000, "header {:?}", h.name.escape_ascii());
            if h.kind == b'x' {
                let recs = parse_records(&h.data).unwrap();
                assert!(!recs.is_empty(), "an emptied PAX header was written");
                for r in &recs {
                    assert!(
                        !matches!(r.key.as_slice(), b"atime" | b"ctime" | b"mtime"),
                        "time record left"
                    );
                    // Lengths were encoded again and still count themselves.
                    let mut enc = Vec::new();
                    encode_record(&r.key, &r.value, &mut enc);
                    assert!(h.data.windows(enc.len()).any(|w| w == enc.as_slice()));
                }
            }
        }
        let out_s = String::from_utf8_lossy(&out);
        assert!(out_s.contains("29 SCHILY.xattr.user.foo=bar\n"));
        if cap {
            let mut want = b"57 SCHILY.xattr.security.capability=".to_vec();
            want.extend_from_slice(CAP);
            want.push(b'\n');
            assert!(out.windows(want.len()).any(|w| w == want.as_slice()));
        }
        // What remains are the headers holding something: xattrs, long
        // names (path, linkpath).
        let xs = raw_headers(&out)
            .into_iter()
            .filter(|h| h.kind == b'x')
            .count();
        let holding = before
            .iter()
            .filter(|h| h.kind == b'x')
            .filter(|h| {
                parse_records(&h.data)
                    .unwrap()
                    .iter()
                    .any(|r| !matches!(r.key.as_slice(), b"atime" | b"ctime" | b"mtime"))
            })
            .count();
        // Two long directories, the long file, the long symlink target, etc/conf, usr/bin/ping.
        assert_eq!(holding, if cap { 6 } else { 5 });
        assert_eq!(xs, holding, "{}", gnu_list(&out));
        // GNU tar reads it back: same entries, times all 2023-11-14.
        let listing = gnu_list(&out);
        for line in listing.lines() {
            assert!(line.contains("2023-11-14 22:13:20"), "{line}");
        }
        let strip = |s: &str| -> Vec<String> {
            s.lines()
                .map(|l| l.split_whitespace().skip(5).collect::<Vec<_>>().join(" "))
                .collect()
        };
        assert_eq!(strip(&listing), strip(&gnu_list(&tar)));
        assert_eq!(listing.matches(" link to ./").count(), 2, "{listing}");
        // And extracts it with the xattrs.
        let x = tempfile::tempdir().unwrap();
        fs::write(x.path().join("t.tar"), &out).unwrap();
        fs::create_dir(x.path().join("root")).unwrap();
        gnu_tar(
            &x.path().join("root"),
            &["--xattrs", "--xattrs-include=*", "-xf", "../t.tar"],
        );
        let mut v = [0u8; 16];
        let n = rustix::fs::getxattr(x.path().join("root/etc/conf"), "user.foo", &mut v).unwrap();
        assert_eq!(&v[..n], b"bar");
        let (_, long) = long_path();
        let meta = fs::metadata(x.path().join("root").join(long)).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.mtime(), 1_700_000_000);
    }

    #[test]
    fn edited_gnu_format_tar_sets_times_in_long_name_headers() {
        let (tar, _) = gnu_tree_tar("gnu");
        assert!(raw_headers(&tar).iter().any(|h| h.kind == b'L'));
        assert!(raw_headers(&tar).iter().any(|h| h.kind == b'K'));
        let (out, _) = rewrite_bytes(&tar, &mut Times(0)).unwrap();
        for h in raw_headers(&out) {
            assert_eq!(h.mtime, 0);
        }
        let a = tar_crate_list(&tar);
        let b = tar_crate_list(&out);
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((&x.0, x.2, &x.3, &x.4), (&y.0, y.2, &y.3, &y.4));
            assert_eq!(y.1, 0);
        }
        gnu_list(&out);
    }

    /// Drops the entries under a prefix.
    struct DropUnder(&'static [u8]);

    impl Rewrite for DropUnder {
        fn entry(&mut self, e: &mut Entry) -> Result<Action> {
            Ok(if clean_path(e.path()).starts_with(self.0) {
                Action::Drop
            } else {
                Action::Keep
            })
        }
    }

    #[test]
    fn dropping_takes_the_extension_headers_along() {
        for format in ["pax", "gnu"] {
            let (tar, _) = gnu_tree_tar(format);
            let (out, stats) = rewrite_bytes(&tar, &mut DropUnder(b"long")).unwrap();
            assert_eq!(stats.dropped, 4, "{format}");
            let before = tar_crate_list(&tar);
            let after = tar_crate_list(&out);
            let want: Vec<_> = before
                .iter()
                .filter(|l| !l.0.trim_start_matches("./").starts_with("long"))
                .collect();
            assert_eq!(after.iter().collect::<Vec<_>>(), want, "{format}");
            // No long-name header survives: the only long thing left is
            // the symlink's target, in a K or a PAX linkpath.
            let raw = raw_headers(&out);
            assert!(!raw.iter().any(|h| h.kind == b'L'), "{format}");
            let long_x = raw
                .iter()
                .filter(|h| String::from_utf8_lossy(&h.data).contains(" path="))
                .count();
            assert_eq!(long_x, 0, "{format}");
            gnu_list(&out);
        }
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for vlen in 0..1200 {
            let value = vec![b'v'; vlen];
            let mut rec = Vec::new();
            encode_record(b"SCHILY.xattr.user.k", &value, &mut rec);
            let space = rec.iter().position(|&b| b == b' ').unwrap();
            let n: usize = std::str::from_utf8(&rec[..space]).unwrap().parse().unwrap();
            assert_eq!(n, rec.len(), "value length {vlen}");
            let parsed = parse_records(&rec).unwrap();
            assert_eq!(parsed[0].value, value);
        }
        // Where the length gains a digit, some lengths cannot be: a record
        // of 10 (or 100) bytes would need the digit it does not have.
        let enc = |v: &[u8]| {
            let mut r = Vec::new();
            encode_record(b"a", v, &mut r);
            r
        };
        assert_eq!(enc(b"1234"), b"9 a=1234\n");
        assert_eq!(enc(b"12345"), b"11 a=12345\n");
        assert_eq!(enc(&[b'x'; 93]).len(), 99);
        assert_eq!(&enc(&[b'x'; 93])[..3], b"99 ");
        assert_eq!(enc(&[b'x'; 94]).len(), 101);
        assert_eq!(&enc(&[b'x'; 94])[..4], b"101 ");
    }

    fn raw_header(kind: u8, name: &[u8], size: u64) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000644\0");
        write_numeric(&mut h[108..116], 0);
        write_numeric(&mut h[116..124], 0);
        write_numeric(&mut h[SIZE], size);
        write_numeric(&mut h[MTIME], 12345);
        h[TYPEFLAG] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        set_checksum(&mut h);
        h
    }

    fn member(tar: &mut Vec<u8>, kind: u8, name: &[u8], data: &[u8]) {
        tar.extend_from_slice(&raw_header(kind, name, data.len() as u64));
        tar.extend_from_slice(data);
        tar.extend_from_slice(&ZEROS[..padding(data.len() as u64)]);
    }

    fn records(rs: &[(&str, &str)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (k, val) in rs {
            encode_record(k.as_bytes(), val.as_bytes(), &mut v);
        }
        v
    }

    #[test]
    fn global_headers_lose_time_records_and_survive_drops() {
        let mut tar = Vec::new();
        member(
            &mut tar,
            b'g',
            b"g1",
            &records(&[("mtime", "5"), ("comment", "hi")]),
        );
        member(&mut tar, b'g', b"g2", &records(&[("mtime", "6")]));
        member(&mut tar, b'0', b"a", b"a\n");
        tar.extend_from_slice(&[0; 1024]);
        let (out, _) = rewrite_bytes(&tar, &mut Times(7)).unwrap();
        let raw = raw_headers(&out);
        assert_eq!(raw.len(), 2, "the emptied global header is gone");
        assert_eq!(raw[0].kind, b'g');
        assert_eq!(raw[0].data, b"14 comment=hi\n");
        assert_eq!(raw[1].mtime, 7);
        // A dropped entry keeps the global header before it.
        let (out, _) = rewrite_bytes(&tar, &mut DropUnder(b"a")).unwrap();
        let raw = raw_headers(&out);
        assert_eq!(raw.iter().map(|h| h.kind).collect::<Vec<_>>(), b"gg");
    }

    #[test]
    fn end_of_archive_is_two_zero_blocks() {
        let mut tar = Vec::new();
        member(&mut tar, b'0', b"a", b"abc");
        // No end blocks at all.
        let (out, _) = rewrite_bytes(&tar, &mut KeepAll::default()).unwrap();
        assert_eq!(out.len(), tar.len() + 1024);
        // A lot of padding after them.
        let mut padded = tar.clone();
        padded.extend_from_slice(&[0; 20 * BLOCK]);
        let (out2, _) = rewrite_bytes(&padded, &mut KeepAll::default()).unwrap();
        assert_eq!(out2, out);
    }

    #[test]
    fn base256_sizes_and_signed_checksums_are_read() {
        let mut tar = Vec::new();
        let mut h = raw_header(b'0', b"big", 0);
        h[SIZE].fill(0);
        h[SIZE.start] = 0x80;
        h[SIZE.end - 1] = 3;
        set_checksum(&mut h);
        tar.extend_from_slice(&h);
        tar.extend_from_slice(b"abc");
        tar.extend_from_slice(&ZEROS[..509]);
        // A header with a high byte, its checksum summed as signed bytes.
        let mut h = raw_header(b'0', "ü".as_bytes(), 1);
        let (_, signed) = header_sums(&h);
        h[CHKSUM].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
        tar.extend_from_slice(&h);
        tar.extend_from_slice(b"x");
        tar.extend_from_slice(&ZEROS[..511]);
        let (out, stats, k) = keep_all(&tar);
        assert_eq!(stats.entries, 2);
        assert_eq!(&out[..tar.len()], &tar[..]);
        assert_eq!(k.paths, vec![b"big".to_vec(), "ü".as_bytes().to_vec()]);
    }

    #[test]
    fn materialized_link_holds_the_content() {
        struct DropReadme(Option<(u64, u64)>);
        impl Rewrite for DropReadme {
            fn entry(&mut self, e: &mut Entry) -> Result<Action> {
                if e.path() == b"usr/share/doc/README" {
                    self.0 = Some((e.data_offset(), e.size()));
                    return Ok(Action::Drop);
                }
                if e.is_hardlink() {
                    let (data_offset, size) = self.0.unwrap();
                    return Ok(Action::Materialize { data_offset, size });
                }
                Ok(Action::Keep)
            }
        }
        let (out, stats) = rewrite_bytes(&tar_crate_tar(), &mut DropReadme(None)).unwrap();
        assert_eq!((stats.dropped, stats.materialized), (1, 1));
        let l = tar_crate_list(&out);
        let link = l.iter().find(|e| e.0 == "etc/doc-link").unwrap();
        assert_eq!(link.2, b'0');
        assert_eq!(link.3, b"docs\n");
        assert!(link.4.is_empty());
        gnu_list(&out);
    }

    #[test]
    fn old_gnu_and_pax_sparse_files_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let f = fs::File::create(dir.path().join("sparse")).unwrap();
        use std::os::unix::fs::FileExt;
        // Many data islands, so the old GNU format needs extension blocks.
        for i in 0..40u64 {
            f.write_at(format!("island {i}").as_bytes(), i * 65536 + 100)
                .unwrap();
        }
        f.set_len(41 * 65536).unwrap();
        drop(f);
        for format in ["gnu", "pax"] {
            let tar = gnu_tar(
                dir.path(),
                &[&format!("--format={format}"), "-S", "-cf", "-", "sparse"],
            );
            let (out, stats) = rewrite_bytes(&tar, &mut Times(0)).unwrap();
            assert!(stats.edited);
            let (_, _, k) = keep_all(&tar);
            assert_eq!(k.paths, vec![b"sparse".to_vec()], "{format}");
            let x = tempfile::tempdir().unwrap();
            fs::write(x.path().join("t.tar"), &out).unwrap();
            gnu_tar(x.path(), &["-xf", "t.tar"]);
            let a = fs::read(dir.path().join("sparse")).unwrap();
            let b = fs::read(x.path().join("sparse")).unwrap();
            assert!(a == b, "{format}: sparse content differs after the rewrite");
        }
    }

    #[test]
    fn hostile_tars_fail_cleanly() {
        let good = tar_crate_tar();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated data", good[..BLOCK * 8 + 100].to_vec()),
            ("truncated header", good[..BLOCK + 100].to_vec()),
            ("bad checksum", {
                let mut t = good.clone();
                t[5] ^= 1;
                t
            }),
            ("size past the end", {
                let mut t = Vec::new();
                t.extend_from_slice(&raw_header(b'0', b"a", 1 << 40));
                t.extend_from_slice(&[0; 1024]);
                t
            }),
            ("huge base-256 size", {
                let mut h = raw_header(b'0', b"a", 0);
                h[SIZE].fill(0xff);
                h[SIZE.start] = 0x80;
                set_checksum(&mut h);
                h.to_vec()
            }),
            ("negative size", {
                let mut h = raw_header(b'0', b"a", 0);
                h[SIZE].fill(0xff);
                set_checksum(&mut h);
                h.to_vec()
            }),
            ("non-octal size", {
                let mut h = raw_header(b'0', b"a", 0);
                h[SIZE.start..SIZE.start + 3].copy_from_slice(b"9x9");
                set_checksum(&mut h);
                h.to_vec()
            }),
            ("huge PAX header", {
                let mut t = raw_header(b'x', b"x", 1 << 30).to_vec();
                t.extend_from_slice(&[0; 4096]);
                t
            }),
            ("many PAX headers before one entry", {
                let mut t = Vec::new();
                let big = records(&[("comment", &"c".repeat(1 << 20))]);
                for _ in 0..20 {
                    member(&mut t, b'x', b"x", &big);
                }
                member(&mut t, b'0', b"a", b"");
                t
            }),
            ("malformed PAX record", {
                let mut t = Vec::new();
                member(&mut t, b'x', b"x", b"99 path=a\n");
                member(&mut t, b'0', b"a", b"");
                t
            }),
            ("PAX record without newline", {
                let mut t = Vec::new();
                member(&mut t, b'x', b"x", b"9 path=ab");
                member(&mut t, b'0', b"a", b"");
                t
            }),
            ("bad PAX size", {
                let mut t = Vec::new();
                member(&mut t, b'x', b"x", &records(&[("size", "-1")]));
                member(&mut t, b'0', b"a", b"");
                t
            }),
            ("PAX size past the end", {
                let mut t = Vec::new();
                member(&mut t, b'x', b"x", &records(&[("size", "99999999999")]));
                member(&mut t, b'0', b"a", b"");
                t
            }),
        ];
        for (what, tar) in cases {
            let r = rewrite_bytes(&tar, &mut Times(0));
            let Err(e) = r else {
                panic!("{what}: accepted");
            };
            let msg = e.to_string();
            assert!(msg.starts_with("test layer: "), "{what}: {msg}");
            assert!(!msg.chars().any(char::is_control), "{what}: {msg:?}");
        }
    }

    #[test]
    fn mangled_tars_never_panic() {
        let mut tars = vec![
            tar_crate_tar(),
            gnu_tree_tar("pax").0,
            gnu_tree_tar("gnu").0,
        ];
        for t in &mut tars {
            t.truncate(t.len().min(16 * 1024));
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..3000 {
            let mut t = tars[round % tars.len()].clone();
            for _ in 0..1 + next() % 8 {
                let i = (next() as usize) % t.len();
                t[i] = next() as u8;
                // Keep the checksum right half the time, so the damage
                // reaches the parsing behind it.
                if next() % 2 == 0 {
                    let start = i - i % BLOCK;
                    if start + BLOCK <= t.len() {
                        let mut b: [u8; BLOCK] = t[start..start + BLOCK].try_into().unwrap();
                        set_checksum(&mut b);
                        t[start..start + BLOCK].copy_from_slice(&b);
                    }
                }
            }
            let _ = rewrite_bytes(&t, &mut Times(0));
            let _ = rewrite_bytes(&t, &mut DropUnder(b"usr"));
        }
    }

    #[test]
    fn numeric_fields() {
        assert_eq!(parse_numeric(b"0000644\0"), Some(0o644));
        assert_eq!(parse_numeric(b"   644 \0"), Some(0o644));
        assert_eq!(parse_numeric(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_numeric(b"12 4"), None);
        let mut f = [0u8; 12];
        write_numeric(&mut f, 0o777_7777_7777);
        assert_eq!(&f, b"77777777777\0");
        write_numeric(&mut f, 1 << 40);
        assert_eq!(f[0], 0x80);
        assert_eq!(parse_numeric(&f), Some(1 << 40));
        assert_eq!(clean_path(b"./usr/share/"), b"usr/share");
        assert_eq!(clean_path(b"/./a"), b"a");
        assert_eq!(clean_path(b"./"), b"");
        assert_eq!(clean_path(b"."), b"");
    }
}
