//! The one writer that puts a blob (a layer, a config, a manifest) into a
//! store (`dir://`, `oci-layout://`): the bytes go to a temp file in the
//! run's own directory ([`RunDir`]), hashed as they are written, and the
//! file takes its name there only once its digest and size check out. The
//! run's files join the store's places when the run succeeds
//! ([`publish_run`]); a blob already in place is kept.
//!
//! Two fast paths keep copies cheap:
//! - a verified temp file that is the whole blob is hard-linked instead of
//!   copied when it is on the store's filesystem ([`link_verified`]);
//! - bytes the source has already verified in this run (a verified
//!   [`FileSlice`], or a stream whose end-of-file is its verification) can
//!   be written without a second hash ([`BlobWriter::verified`]), so that a
//!   File-to-File copy stays in the kernel (`copy_file_range`).
//!
//! Every path goes through [`StoreRoot`]: nothing below the store's root is
//! followed if it is a link.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use rustix::fs::FileType;

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Mismatch, Result};
use crate::fsutil::{self, RunDir, StoreRoot, StoreTemp};
use crate::image::FileSlice;

/// Copy buffer when bytes pass through the hash.
const COPY_BUFFER: usize = 256 << 10;

/// A blob being written into a run's directory of a store.
pub(crate) struct BlobWriter<'s> {
    store: &'s StoreRoot,
    run: &'s RunDir,
    /// Its name in the run's directory.
    name: String,
    temp: StoreTemp,
    /// `None` for bytes the source has verified already.
    hasher: Option<Hasher>,
    expected: Digest,
    size: Option<u64>,
}

impl<'s> BlobWriter<'s> {
    /// A writer for the blob `expected` (of `size` bytes, when known), to be
    /// named `name` in `run`; what is written is hashed and checked.
    pub(crate) fn new(
        store: &'s StoreRoot,
        run: &'s RunDir,
        name: &str,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<Self> {
        let mut w = Self::verified(store, run, name, expected, size)?;
        w.hasher = Some(Hasher::new(expected.algorithm()));
        Ok(w)
    }

    /// A writer for bytes the source has already verified against
    /// `expected` in this run: only the size (when known) is checked, and
    /// the temp file may be filled directly through [`BlobWriter::file`].
    pub(crate) fn verified(
        store: &'s StoreRoot,
        run: &'s RunDir,
        name: &str,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<Self> {
        Ok(BlobWriter {
            temp: store.create_temp(run.name(), ".blob-")?,
            store,
            run,
            name: name.to_string(),
            hasher: None,
            expected: expected.clone(),
            size,
        })
    }

    /// The temp file, for filling verified bytes File to File (so std can
    /// use `copy_file_range`). `None` for a hashing writer: its bytes must
    /// go through [`Write`].
    pub(crate) fn file(&mut self) -> Option<&mut File> {
        match self.hasher {
            None => Some(self.temp.file()),
            Some(_) => None,
        }
    }

    /// Copies `slice` into the blob: in the kernel for a verified writer,
    /// through the hash otherwise. Returns the bytes copied.
    pub(crate) fn copy_slice(&mut self, slice: &FileSlice) -> Result<u64> {
        let mut src = slice
            .open()
            .map_err(|e| Error::io("reading", slice.path(), e))?;
        let shown = self.temp.path().to_path_buf();
        let copied = if self.hasher.is_none() {
            io::copy(&mut src, self.temp.file())
        } else {
            copy_buffered(&mut src, self)
        };
        copied.map_err(|e| {
            let what = format!("copying {} to {}", slice.path().display(), shown.display());
            Error::stream(what, e)
        })
    }

    /// Checks the digest (for a hashing writer) and the size, syncs the
    /// file and names it in the run's directory. `false` when the run holds
    /// the blob already: that copy is kept and this one removed. On any
    /// error nothing is named and the temp file is gone.
    pub(crate) fn commit(mut self) -> Result<bool> {
        let shown = self.temp.path().to_path_buf();
        let what = || format!("blob {} ({})", self.expected, shown.display());
        if let Some(h) = self.hasher.take() {
            let found = h.finish();
            if found != self.expected {
                return Err(Error::DigestMismatch {
                    kind: Mismatch::BlobDigest,
                    what: what(),
                    expected: self.expected.clone(),
                    found,
                });
            }
        }
        let file = self.temp.file();
        // The file's own length: a verified writer is filled directly.
        let len = file
            .metadata()
            .map_err(|e| Error::io("writing", &shown, e))?
            .len();
        if let Some(size) = self.size
            && size != len
        {
            return Err(Error::SizeMismatch {
                kind: Mismatch::BlobSize,
                what: what(),
                expected: size,
                found: len,
            });
        }
        // Later runs trust a blob by its presence alone, so it must not be
        // able to appear truncated after a crash.
        file.sync_data()
            .map_err(|e| Error::io("writing", &shown, e))?;
        fsutil::set_readable(file);
        // Recorded first: the run dir's removal must know every name in it.
        self.run.add(&self.name);
        self.temp
            .persist(self.store, &self.run.rel(&self.name), true)
    }
}

impl Write for BlobWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.temp.file().write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.temp.file().flush()
    }
}

/// `io::copy` through a buffer of [`COPY_BUFFER`] bytes.
fn copy_buffered(src: &mut impl Read, out: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut n = 0u64;
    loop {
        let got = match src.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..got])?;
        n += got as u64;
    }
}

/// Whether `slice` is a whole verified temp file of this run, which
/// [`link_verified`] can put into a store without a copy.
pub(crate) fn is_whole_temp(slice: &FileSlice) -> bool {
    slice.is_temp()
        && slice.offset() == 0
        && std::fs::metadata(slice.path()).is_ok_and(|m| m.len() == slice.len())
}

/// Names a verified temp file that is the whole blob `name` in `run` by a
/// hard link: no copy when the run's temp dir is on the store's
/// filesystem. `false` when that can't be done (another filesystem, links
/// not allowed, not a whole temp file) and the blob must be copied.
pub(crate) fn link_verified(
    store: &StoreRoot,
    run: &RunDir,
    name: &str,
    slice: &FileSlice,
) -> Result<bool> {
    if !slice.is_temp() || slice.offset() != 0 {
        return Ok(false);
    }
    let Ok(file) = File::open(slice.path()) else {
        return Ok(false);
    };
    if file.metadata().map(|m| m.len()).ok() != Some(slice.len()) {
        return Ok(false);
    }
    // Later runs trust a blob by its presence alone.
    file.sync_data()
        .map_err(|e| Error::io("writing", slice.path(), e))?;
    match store.link_from(slice.path(), &run.rel(name)) {
        Ok(_) => {
            fsutil::set_readable(&file);
            run.add(name);
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// Moves the run's files to their places in the store (`dest` of each
/// name), when the run succeeds. Every place is checked before anything
/// moves, so a run that fails here has added nothing; a blob another run
/// put in place meanwhile is kept (it has the same content).
pub(crate) fn publish_run(
    store: &StoreRoot,
    run: &RunDir,
    dest: impl Fn(&str) -> PathBuf,
) -> Result<()> {
    let names = run.names();
    for name in &names {
        fsutil::check_free_or(store, &dest(name), FileType::RegularFile)?;
    }
    for name in &names {
        if !store.rename(&run.rel(name), &dest(name), true)? {
            fsutil::check_free_or(store, &dest(name), FileType::RegularFile)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
