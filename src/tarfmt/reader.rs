//! The streaming tar reader: headers resolved by [`super::resolve`], data
//! handed out through a bounded reader, sparse maps parsed, metadata capped
//! before it is allocated.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};

use super::{
    BLOCK, Ext, GNU_IS_EXTENDED, GNU_SPARSE_EXT_IS_EXTENDED, MAX_SPARSE_EXT_BLOCKS, META_LIMIT,
    Record, Resolved, SIZE, Sparse, SparseLayout, TYPEFLAG, TarError, ZEROS, checksum_ok, fields,
    is_ext, is_gnu, padding, parse_map_10, parse_numeric, raw_name, resolve, validate_sparse,
};

/// What the reader reads from: bytes, and a way to pass over data.
pub trait Input: Read {
    /// Passes over `n` bytes. A seekable input may go past its end; the next
    /// read then finds nothing.
    fn skip(&mut self, n: u64) -> io::Result<()>;
}

/// A stream that cannot seek: skipping reads and drops.
pub struct Stream<R>(pub R);

impl<R: Read> Read for Stream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> Input for Stream<R> {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let got = io::copy(&mut (&mut self.0).take(n), &mut io::sink())?;
        if got < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

/// A buffered stream that cannot seek: skipping drops what the buffer holds,
/// with no copy, and the source fills the buffer in large reads (a
/// decompressor then runs a call per buffer, not per 8 KiB).
pub struct BufStream<R>(pub BufReader<R>);

impl<R: Read> BufStream<R> {
    /// Over `inner`, through a 256 KiB buffer.
    pub fn new(inner: R) -> Self {
        BufStream(BufReader::with_capacity(256 << 10, inner))
    }
}

impl<R: Read> Read for BufStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> Input for BufStream<R> {
    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            let got = self.0.fill_buf()?.len();
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let k = got.min(usize::try_from(n).unwrap_or(usize::MAX));
            self.0.consume(k);
            n -= k as u64;
        }
        Ok(())
    }
}

/// A seekable input (itself buffered, or cheap to seek).
pub struct Seekable<R>(pub R);

impl<R: Read> Read for Seekable<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read + Seek> Input for Seekable<R> {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let d = i64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.0.seek(SeekFrom::Current(d)).map(|_| ())
    }
}

/// A buffered seekable input, whose short skips stay inside its buffer.
pub struct BufSeek<R>(pub BufReader<R>);

impl<R: Read> Read for BufSeek<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read + Seek> Input for BufSeek<R> {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let d = i64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.0.seek_relative(d)
    }
}

impl<R: Read> BufRead for BufSeek<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.0.fill_buf()
    }
    fn consume(&mut self, n: usize) {
        self.0.consume(n)
    }
}

/// One entry: its resolved header and where its data is. The data is read
/// through [`Archive::data`] before the next call to [`Archive::next`].
#[derive(Debug)]
pub struct Entry {
    /// The header block.
    pub block: [u8; BLOCK],
    /// Name, link target, kind, size and sparse map.
    pub resolved: super::Resolved,
    /// The records of the entry's own PAX header, in order.
    pub pax: Vec<Record>,
    /// The sparse map of a sparse file, once read (PAX 1.0 included).
    pub sparse: Option<Sparse>,
    /// Where the header starts (its extension headers before it).
    pub header_offset: u64,
    /// Where the data (after a PAX 1.0 map, the segments) starts.
    pub data_offset: u64,
    /// Bytes of data from `data_offset` on.
    pub data_size: u64,
}

impl Entry {
    /// The entry's full name, raw.
    pub fn path(&self) -> &[u8] {
        &self.resolved.path
    }
    /// The link target, raw; empty for entries that are not links.
    pub fn link(&self) -> &[u8] {
        &self.resolved.link
    }
    /// The type flag (NUL read as `0`).
    pub fn kind(&self) -> u8 {
        self.resolved.kind
    }
    /// Permission bits field.
    pub fn mode(&self) -> Option<u32> {
        fields::mode(&self.block)
    }
    /// The header's owner id.
    pub fn uid(&self) -> Option<u64> {
        fields::uid(&self.block)
    }
    /// The header's group id.
    pub fn gid(&self) -> Option<u64> {
        fields::gid(&self.block)
    }
    /// The header's mtime, in seconds.
    pub fn mtime(&self) -> Option<u64> {
        fields::mtime(&self.block)
    }
    /// Device major and minor numbers (0 when the fields are empty).
    pub fn device(&self) -> (Option<u64>, Option<u64>) {
        fields::dev(&self.block)
    }
    /// The value of the entry's last PAX record with `key`.
    pub fn pax(&self, key: &[u8]) -> Option<&[u8]> {
        self.pax
            .iter()
            .rev()
            .find(|r| r.key == key)
            .map(|r| r.value.as_slice())
    }
}

/// A tar read front to back.
pub struct Archive<S> {
    src: S,
    pos: u64,
    /// Data of the current entry not yet read.
    left: u64,
    /// Padding after the current entry's data.
    pad: u64,
    done: bool,
}

impl<S: Input> Archive<S> {
    /// Reads a tar from `src`; positions count from where it is now.
    pub fn new(src: S) -> Archive<S> {
        Archive {
            src,
            pos: 0,
            left: 0,
            pad: 0,
            done: false,
        }
    }

    /// Where the reader is in the input.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The input, for reading past the archive's end.
    pub fn into_inner(self) -> S {
        self.src
    }

    /// The input, while the archive reads it.
    pub fn input_mut(&mut self) -> &mut S {
        &mut self.src
    }

    /// Passes over the padding after the current entry's data, which must
    /// have been read to its end; the next read is the next header.
    pub fn skip_padding(&mut self) -> Result<(), TarError> {
        if self.left > 0 {
            return Err(TarError::bad(
                self.pos,
                None,
                "the entry's data was not read to its end",
            ));
        }
        let pad = std::mem::take(&mut self.pad);
        self.skip(pad)
    }

    /// Says that the current entry's data and padding are not in the input
    /// (a skeleton tar whose file data lies elsewhere): the next header
    /// follows this one's.
    pub fn elide_data(&mut self) {
        self.left = 0;
        self.pad = 0;
    }

    fn skip(&mut self, n: u64) -> Result<(), TarError> {
        if n > 0 {
            self.src.skip(n).map_err(|e| self.io(e))?;
            self.pos += n;
        }
        Ok(())
    }

    fn io(&self, e: io::Error) -> TarError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            self.truncated()
        } else {
            TarError::Io(e)
        }
    }

    fn truncated(&self) -> TarError {
        TarError::bad(self.pos, None, "tar ends in the middle of an entry")
    }

    /// Fills `buf`; false at a clean end of input.
    fn block(&mut self, buf: &mut [u8; BLOCK]) -> Result<bool, TarError> {
        let mut got = 0;
        while got < BLOCK {
            match self.src.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        self.pos += got as u64;
        match got {
            0 => Ok(false),
            BLOCK => Ok(true),
            _ => Err(self.truncated()),
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), TarError> {
        self.src.read_exact(buf).map_err(|e| self.io(e))?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// The next entry, after passing over what is left of the current one;
    /// None at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        if self.done {
            return Ok(None);
        }
        let (left, pad) = (self.left, self.pad);
        self.left = 0;
        self.pad = 0;
        self.skip(left + pad)?;
        let mut group: Vec<Ext> = Vec::new();
        let mut meta: u64 = 0;
        let mut start = self.pos;
        loop {
            let at = self.pos;
            let mut block = [0u8; BLOCK];
            if !self.block(&mut block)? || block == ZEROS {
                // One zero block ends the archive, as for other readers.
                self.done = true;
                return Ok(None);
            }
            // Names are only built for messages: no allocation per header.
            let bad = |what: String| TarError::bad(at, Some(&raw_name(&block)), what);
            if !checksum_ok(&block) {
                return Err(TarError::bad(at, None, "bad header checksum"));
            }
            let size = parse_numeric(&block[SIZE]).ok_or_else(|| bad("bad size field".into()))?;
            if is_ext(block[TYPEFLAG]) {
                // Checked before anything is allocated, and for the run of
                // extension headers as a whole.
                // Each header counts its block too, so a run of empty ones is
                // bounded as well.
                meta = meta.saturating_add(size).saturating_add(BLOCK as u64);
                if meta > META_LIMIT {
                    return Err(bad(format!(
                        "extension header of type {:?} declares {size} bytes, over the \
                         {META_LIMIT}-byte limit for an entry's metadata",
                        char::from(block[TYPEFLAG])
                    )));
                }
                let mut data = vec![0u8; size as usize];
                self.read_exact(&mut data)?;
                self.skip(padding(size) as u64)?;
                group.push(Ext::parse(block, data).map_err(bad)?);
                continue;
            }
            let sparse_ext = self.old_gnu_sparse_blocks(&block, at)?;
            if group.is_empty() {
                start = at;
            }
            let resolved = resolve(&group, &block, &sparse_ext).map_err(|w| {
                TarError::bad(
                    at,
                    Some(&super::guess_name(group.iter(), &raw_name(&block))),
                    w,
                )
            })?;
            let pax = group
                .into_iter()
                .find(|h| h.kind() == b'x')
                .map(|h| h.records)
                .unwrap_or_default();
            let total = resolved.size;
            let data_start = self.pos;
            let (sparse, map_bytes) = self.sparse_map(&resolved, at)?;
            self.left = total - map_bytes;
            self.pad = padding(total) as u64;
            return Ok(Some(Entry {
                block,
                pax,
                sparse,
                header_offset: start,
                data_offset: data_start + map_bytes,
                data_size: total - map_bytes,
                resolved,
            }));
        }
    }

    /// Reads an old GNU sparse header's extension blocks, if it has any.
    fn old_gnu_sparse_blocks(&mut self, block: &[u8; BLOCK], at: u64) -> Result<Vec<u8>, TarError> {
        let mut sparse_ext = Vec::new();
        if block[TYPEFLAG] != b'S' || !is_gnu(block) || block[GNU_IS_EXTENDED] == 0 {
            return Ok(sparse_ext);
        }
        loop {
            if sparse_ext.len() / BLOCK >= MAX_SPARSE_EXT_BLOCKS {
                return Err(TarError::bad(
                    at,
                    Some(&raw_name(block)),
                    "sparse map too large",
                ));
            }
            let mut ext = [0u8; BLOCK];
            if !self.block(&mut ext)? {
                return Err(self.truncated());
            }
            sparse_ext.extend_from_slice(&ext);
            if ext[GNU_SPARSE_EXT_IS_EXTENDED] == 0 {
                return Ok(sparse_ext);
            }
        }
    }

    /// The entry's sparse map and how many data bytes it took (a PAX 1.0
    /// map is read from the start of the data).
    fn sparse_map(
        &mut self,
        resolved: &Resolved,
        at: u64,
    ) -> Result<(Option<Sparse>, u64), TarError> {
        let total = resolved.size;
        Ok(match &resolved.sparse {
            SparseLayout::None => (None, 0),
            SparseLayout::Map(s) => (Some(s.clone()), 0),
            SparseLayout::InData { real_size } => {
                let (segments, used) = self
                    .read_map(total)
                    .map_err(|e| e.named(&resolved.path, at))?;
                let s = Sparse {
                    real_size: *real_size,
                    segments,
                };
                validate_sparse(&s, total - used)
                    .map_err(|w| TarError::bad(at, Some(&resolved.path), w))?;
                (Some(s), used)
            }
        })
    }

    /// Reads a PAX 1.0 map, in whole blocks, from the data; returns the
    /// segments and the bytes read.
    fn read_map(&mut self, total: u64) -> Result<(Vec<(u64, u64)>, u64), TarError> {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            if buf.len() as u64 + BLOCK as u64 > total.min(META_LIMIT) {
                return Err(TarError::bad(
                    self.pos,
                    None,
                    "PAX 1.0 sparse map missing, or over the metadata limit",
                ));
            }
            let mut block = [0u8; BLOCK];
            self.read_exact(&mut block)?;
            buf.extend_from_slice(&block);
            match parse_map_10(&buf).map_err(|w| TarError::bad(self.pos, None, w))? {
                Some((segments, _)) => return Ok((segments, buf.len() as u64)),
                None => continue,
            }
        }
    }

    /// A reader over the current entry's data (for a sparse file, its
    /// segments one after another).
    pub fn data(&mut self) -> Data<'_, S> {
        Data { a: self }
    }
}

impl TarError {
    fn named(self, name: &[u8], offset: u64) -> TarError {
        match self {
            TarError::Bad { what, .. } => TarError::bad(offset, Some(name), what),
            e => e,
        }
    }
}

/// The data of the current entry; ends where the entry does.
pub struct Data<'a, S> {
    a: &'a mut Archive<S>,
}

impl<S: Input> Data<'_, S> {
    /// Bytes not yet read.
    pub fn left(&self) -> u64 {
        self.a.left
    }
}

impl<S: Input> Read for Data<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = buf
            .len()
            .min(usize::try_from(self.a.left).unwrap_or(usize::MAX));
        if max == 0 {
            return Ok(0);
        }
        let n = self.a.src.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tar ends in the middle of an entry",
            ));
        }
        self.a.left -= n as u64;
        self.a.pos += n as u64;
        Ok(n)
    }
}
