//! The editable view of one entry and of its extension headers.

use std::io::{self, Write};

use crate::tarfmt::write::{encode_record, set_checksum, set_time, write_numeric};
use crate::tarfmt::{self, BLOCK, Ext, LINKNAME, SIZE, TYPEFLAG, ZEROS, padding};

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
    pub(super) fn parse(
        block: [u8; BLOCK],
        data: Vec<u8>,
    ) -> std::result::Result<ExtHeader, String> {
        Ok(ExtHeader {
            ext: Ext::parse(block, data)?,
            records_edited: false,
            block_edited: false,
        })
    }

    /// The header as parsed, for [`tarfmt::resolve`].
    pub(super) fn ext(&self) -> &Ext {
        &self.ext
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
    pub(super) fn survives(&self) -> bool {
        !(self.records_edited && self.ext.records.is_empty())
    }

    pub(super) fn edited(&self) -> bool {
        self.records_edited || self.block_edited
    }

    /// Writes the header as it now is (nothing if it no longer survives).
    pub(super) fn write_to<W: Write>(&mut self, out: &mut W) -> io::Result<()> {
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
    pub(super) group: Vec<ExtHeader>,
    block: [u8; BLOCK],
    /// Old GNU sparse map blocks after the header, copied as they are.
    sparse: Vec<u8>,
    block_edited: bool,
    path: Vec<u8>,
    link: Vec<u8>,
    pub(super) size: u64,
    data_offset: u64,
    is_sparse: bool,
}

impl Entry {
    pub(super) fn new(
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

    pub(super) fn edited(&self) -> bool {
        self.block_edited || self.group.iter().any(ExtHeader::edited)
    }

    /// Turns a hard link into a regular file of `size` bytes.
    pub(super) fn materialize(&mut self, size: u64) {
        self.block[TYPEFLAG] = b'0';
        self.block[LINKNAME].fill(0);
        write_numeric(&mut self.block[SIZE], size);
        self.block_edited = true;
        self.group.retain(|h| h.kind() != b'K');
        self.remove_pax(|k| k == b"linkpath" || k == b"size");
        self.link.clear();
        self.size = size;
    }

    pub(super) fn write_headers<W: Write>(&mut self, out: &mut W) -> io::Result<()> {
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
