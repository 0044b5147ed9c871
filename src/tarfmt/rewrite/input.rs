//! The reading side of a rewrite: bounded, position-aware, seekable (a
//! file) or forward-only (a stream, through [`Forward`]).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};

use crate::error::Error;
use crate::tarfmt::BLOCK;

/// The reading side: a buffered reader that knows where it is and how much
/// is left, so a size field pointing past the end is caught before anything
/// is skipped.
pub(super) struct Input<R> {
    pub(super) r: BufReader<R>,
    pub(super) pos: u64,
    pub(super) len: u64,
}

/// Why a rewrite failed, before the label is put on it.
pub(super) enum Fail {
    Read(io::Error),
    Write(io::Error),
    Bad { offset: u64, what: String },
    Filter(Error),
}

impl<R: Read + Seek> Input<R> {
    /// Reads one block; false at the end of the input.
    pub(super) fn block(&mut self, buf: &mut [u8; BLOCK]) -> std::result::Result<bool, Fail> {
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

    pub(super) fn truncated(&self) -> Fail {
        Fail::Bad {
            offset: self.pos,
            what: "the tar is truncated".into(),
        }
    }

    /// Checks that `n` more bytes exist.
    pub(super) fn need(&self, n: u64) -> std::result::Result<(), Fail> {
        if n > self.len.saturating_sub(self.pos) {
            return Err(self.truncated());
        }
        Ok(())
    }

    pub(super) fn read_vec(&mut self, n: u64) -> std::result::Result<Vec<u8>, Fail> {
        self.need(n)?;
        let mut v = vec![0; n as usize];
        self.r.read_exact(&mut v).map_err(|e| self.read_fail(e))?;
        self.pos += n;
        Ok(v)
    }

    pub(super) fn skip(&mut self, n: u64) -> std::result::Result<(), Fail> {
        self.need(n)?;
        let delta = i64::try_from(n).map_err(|_| self.truncated())?;
        self.r.seek_relative(delta).map_err(|e| self.read_fail(e))?;
        self.pos += n;
        Ok(())
    }

    /// Copies `n` bytes to `out`.
    pub(super) fn copy<W: Write>(&mut self, n: u64, out: &mut W) -> std::result::Result<(), Fail> {
        self.need(n)?;
        copy_exact(&mut self.r, n, out).map_err(|e| self.read_fail_or(e))?;
        self.pos += n;
        Ok(())
    }

    /// Copies `n` bytes from `offset` to `out`, then comes back.
    pub(super) fn copy_from<W: Write>(
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

    /// Reads the rest of the input, into `out` if given.
    pub(super) fn copy_rest<W: Write>(
        &mut self,
        mut out: Option<&mut W>,
    ) -> std::result::Result<(), Fail> {
        loop {
            let buf = match self.r.fill_buf() {
                Ok([]) => return Ok(()),
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fail::Read(e)),
            };
            if let Some(out) = &mut out {
                out.write_all(buf).map_err(Fail::Write)?;
            }
            let n = buf.len();
            self.r.consume(n);
            self.pos += n as u64;
        }
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

/// A byte range of a file, readable and seekable as if it were the file.
pub(super) struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Window {
    pub(super) fn new(mut file: File, start: u64, len: u64) -> io::Result<Window> {
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

/// A forward-only reader as the rewriter's input: moving ahead reads and
/// drops the bytes; moving back fails. Only [`super::Action::Materialize`]
/// moves back (the content of a hard link's target lies earlier in the
/// tar), so a rewrite that never materializes runs over a stream.
pub(super) struct Forward<R>(pub(super) R);

impl<R: Read> Read for Forward<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> Seek for Forward<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        match to {
            SeekFrom::Current(n) if n >= 0 => {
                let n = n as u64;
                let got = io::copy(&mut (&mut self.0).take(n), &mut io::sink())?;
                if got < n {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                // Positions are the Input's to keep.
                Ok(0)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a streamed layer cannot be read backwards (a hard link whose target \
                 was dropped needs the target's content from earlier in the tar)",
            )),
        }
    }
}
