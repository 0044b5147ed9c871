//! The pass over a tar's blocks: extension headers are gathered, each entry
//! is resolved the one way every reader resolves it, the filter decides,
//! and the blocks are copied, edited or left out.

use std::io::{Read, Seek, Write};

use super::entry::{Entry, ExtHeader};
use super::input::{Fail, Input};
use super::{Action, Rewrite, Stats};
use crate::tarfmt::{
    self, BLOCK, GNU_IS_EXTENDED, GNU_SPARSE_EXT_IS_EXTENDED, MAX_SPARSE_EXT_BLOCKS, META_LIMIT,
    SIZE, TYPEFLAG, ZEROS, checksum_ok, is_gnu, padding, parse_numeric,
};

/// A failure about the header at `offset`.
fn bad(offset: u64, what: impl Into<String>) -> Fail {
    Fail::Bad {
        offset,
        what: what.into(),
    }
}

/// What the walk carries from one header to the next.
struct Walk<'a, R, W> {
    input: &'a mut Input<R>,
    out: &'a mut W,
    rewrite: &'a mut dyn Rewrite,
    stats: Stats,
    /// Extension headers read since the last entry.
    group: Vec<ExtHeader>,
    /// Their size with their header blocks, bounded per entry.
    group_bytes: u64,
}

/// Rewrites the whole tar; the output ends with two zero blocks. With
/// `stream`, the input is read to its very end, and when nothing was edited
/// the output is the input, end-of-archive padding and all.
pub(super) fn walk<R: Read + Seek, W: Write>(
    input: &mut Input<R>,
    out: &mut W,
    rewrite: &mut dyn Rewrite,
    stream: bool,
) -> Result<Stats, Fail> {
    let mut w = Walk {
        input,
        out,
        rewrite,
        stats: Stats::default(),
        group: Vec::new(),
        group_bytes: 0,
    };
    let at_zero = loop {
        let at = w.input.pos;
        let mut block = [0u8; BLOCK];
        if !w.input.block(&mut block)? {
            // No end-of-archive blocks: readers accept that, and so do we.
            break false;
        }
        if block == ZEROS {
            break true;
        }
        if !checksum_ok(&block) {
            return Err(bad(at, "bad header checksum"));
        }
        let size = parse_numeric(&block[SIZE]).ok_or_else(|| bad(at, "bad size field"))?;
        match block[TYPEFLAG] {
            b'x' | b'g' | b'L' | b'K' => w.ext_header(at, block, size)?,
            _ => w.entry(at, block)?,
        }
    };
    w.finish(stream, at_zero)
}

impl<R: Read + Seek, W: Write> Walk<'_, R, W> {
    /// Reads an extension header into the group of the next entry.
    fn ext_header(&mut self, at: u64, block: [u8; BLOCK], size: u64) -> Result<(), Fail> {
        // Bounded per entry, not just per header: a run of headers before
        // one entry is held in memory as a whole.
        self.group_bytes = self
            .group_bytes
            .saturating_add(size)
            .saturating_add(BLOCK as u64);
        if self.group_bytes > META_LIMIT {
            return Err(bad(
                at,
                format!(
                    "entry {}: extension header of type {:?} declares {size} bytes, over \
                     the {META_LIMIT}-byte limit for an entry's metadata",
                    tarfmt::shown(&tarfmt::raw_name(&block)),
                    char::from(block[TYPEFLAG])
                ),
            ));
        }
        let data = self.input.read_vec(size)?;
        self.input.skip(padding(size) as u64)?;
        let mut h = ExtHeader::parse(block, data).map_err(|e| {
            bad(
                at,
                format!("entry {}: {e}", tarfmt::shown(&tarfmt::raw_name(&block))),
            )
        })?;
        if h.kind() == b'g' {
            self.rewrite.global(&mut h).map_err(Fail::Filter)?;
        }
        self.group.push(h);
        Ok(())
    }

    /// Reads an old GNU sparse header's extension blocks.
    fn sparse_blocks(&mut self, at: u64, block: &[u8; BLOCK]) -> Result<Vec<u8>, Fail> {
        let mut sparse = Vec::new();
        if block[TYPEFLAG] != b'S' || !is_gnu(block) || block[GNU_IS_EXTENDED] == 0 {
            return Ok(sparse);
        }
        loop {
            let mut ext = [0u8; BLOCK];
            if !self.input.block(&mut ext)? {
                return Err(self.input.truncated());
            }
            sparse.extend_from_slice(&ext);
            if ext[GNU_SPARSE_EXT_IS_EXTENDED] == 0 {
                return Ok(sparse);
            }
            if sparse.len() >= MAX_SPARSE_EXT_BLOCKS * BLOCK {
                return Err(bad(at, "sparse map too large"));
            }
        }
    }

    /// Resolves an entry, asks the filter about it and writes what it says.
    fn entry(&mut self, at: u64, block: [u8; BLOCK]) -> Result<(), Fail> {
        let sparse = self.sparse_blocks(at, &block)?;
        let data_offset = self.input.pos;
        self.group_bytes = 0;
        // The one resolution every reader uses: what is excluded here is
        // what the extractor would have written.
        let exts = self.group.iter().map(|h| h.ext());
        let r = tarfmt::resolve(exts, &block, &sparse).map_err(|e| {
            let raw = tarfmt::raw_name(&block);
            let name = tarfmt::guess_name(self.group.iter().map(|h| h.ext()), &raw);
            bad(at, format!("entry {}: {e}", tarfmt::shown(&name)))
        })?;
        let group = std::mem::take(&mut self.group);
        let mut entry = Entry::new(group, block, sparse, data_offset, r);
        self.stats.entries += 1;
        let action = self.rewrite.entry(&mut entry).map_err(Fail::Filter)?;
        self.apply(entry, action)
    }

    /// Writes (or leaves out) an entry the filter has decided about.
    fn apply(&mut self, mut entry: Entry, action: Action) -> Result<(), Fail> {
        let size = entry.size;
        let (input, out, w) = (&mut *self.input, &mut *self.out, Fail::Write);
        match action {
            Action::Keep => {
                self.stats.edited |= entry.edited();
                entry.write_headers(out).map_err(w)?;
                input.copy(size, out)?;
                input.skip(padding(size) as u64)?;
                out.write_all(&ZEROS[..padding(size)]).map_err(w)?;
            }
            Action::Drop => {
                self.stats.dropped += 1;
                self.stats.edited = true;
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
                self.stats.materialized += 1;
                self.stats.edited = true;
                input.skip(size)?;
                input.skip(padding(size) as u64)?;
                entry.materialize(new_size);
                entry.write_headers(out).map_err(w)?;
                input.copy_from(data_offset, new_size, out)?;
                out.write_all(&ZEROS[..padding(new_size)]).map_err(w)?;
            }
        }
        Ok(())
    }

    /// Writes what is left and the end-of-archive blocks; for a `stream`,
    /// reads the input to its end (the zero block the walk stopped at, if
    /// `at_zero`, and what follows it), kept as it was if nothing was edited.
    fn finish(mut self, stream: bool, at_zero: bool) -> Result<Stats, Fail> {
        // Extension headers with no entry after them: kept as they were found.
        for h in &mut self.group {
            self.stats.edited |= h.edited();
            h.write_to(self.out).map_err(Fail::Write)?;
        }
        if stream {
            let unchanged = !self.stats.edited;
            if unchanged && at_zero {
                self.out.write_all(&ZEROS).map_err(Fail::Write)?;
            }
            self.input.copy_rest(unchanged.then_some(&mut *self.out))?;
            if unchanged {
                return Ok(self.stats);
            }
        }
        self.out.write_all(&ZEROS).map_err(Fail::Write)?;
        self.out.write_all(&ZEROS).map_err(Fail::Write)?;
        Ok(self.stats)
    }
}
