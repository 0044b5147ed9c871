//! Copying an entry's data into the file written for it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::cancel::CancelToken;
use crate::tarfmt::Sparse;

pub(super) enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Streams an entry's data into `out`.
pub(super) fn copy(
    from: &mut impl Read,
    out: &mut File,
    buf: &mut [u8],
    cancel: &CancelToken,
) -> Result<u64, CopyError> {
    let mut total = 0u64;
    loop {
        if cancel.is_cancelled() {
            // Reported as Error::Interrupted by the caller.
            return Err(CopyError::Read(io::ErrorKind::Interrupted.into()));
        }
        let n = match from.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        out.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
    Ok(total)
}

/// Writes a sparse file's segments where its map puts them and sizes the
/// file: holes cost a seek each, never a read or a write of zeros.
pub(super) fn copy_sparse(
    from: &mut impl Read,
    out: &mut File,
    buf: &mut [u8],
    map: &Sparse,
    cancel: &CancelToken,
) -> Result<u64, CopyError> {
    let mut total = 0u64;
    for &(offset, len) in &map.segments {
        if len == 0 {
            continue;
        }
        out.seek(SeekFrom::Start(offset))
            .map_err(CopyError::Write)?;
        let n = copy(&mut from.take(len), out, buf, cancel)?;
        total += n;
        if n < len {
            return Ok(total);
        }
    }
    out.set_len(map.real_size).map_err(CopyError::Write)?;
    Ok(total)
}
