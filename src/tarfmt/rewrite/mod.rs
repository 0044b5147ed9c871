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
//!
//! The filters hold only their policy (what to drop, which times to set);
//! the block format is all here: [`entry`] the editable entry and extension
//! headers, [`input`] the bounded reader, [`walk`] the pass over the blocks.

mod entry;
mod input;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
mod walk;

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::digest::{Algorithm, Digest, HashingWriter};
use crate::error::{Error, Result};
use crate::image::FileSlice;

pub use super::names::clean_path;
pub use entry::{Entry, ExtHeader};
use input::{Fail, Forward, Input, Window};

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
    walk::walk(&mut input, out, rewrite, false).map_err(|f| labelled(f, label))
}

/// Rewrites a tar read front to back from a stream into `out`, reading the
/// stream to its end (so that a verifying reader gives its verdict, as the
/// last read's error). When nothing was edited (`Stats::edited` false) the
/// output is the input byte for byte, end-of-archive padding included, so
/// it has the input's digest. A rewrite that materializes a hard link
/// fails: that reads content from earlier in the tar.
pub fn rewrite_forward<R: Read, W: Write>(
    input: R,
    out: &mut W,
    label: &str,
    rewrite: &mut dyn Rewrite,
) -> Result<Stats> {
    let mut input = Input {
        r: BufReader::with_capacity(256 << 10, Forward(input)),
        pos: 0,
        // Unknown: a size past the end shows as the stream ending early.
        len: u64::MAX,
    };
    walk::walk(&mut input, out, rewrite, true).map_err(|f| labelled(f, label))
}

/// A rewrite's failure as an error naming the layer.
fn labelled(f: Fail, label: &str) -> Error {
    match f {
        Fail::Read(e) => Error::stream(format!("reading {label}"), e),
        Fail::Write(e) => Error::stream(format!("writing the rewritten {label}"), e),
        Fail::Bad { offset, what } => {
            Error::InvalidImage(format!("{label}: {what} (tar header at byte {offset})"))
        }
        Fail::Filter(e) => e,
    }
}
