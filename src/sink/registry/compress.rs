//! Compressing a layer that exists only as a tar (a docker-save member, a
//! store's `layer.tar`, a layer a filter rewrote) before it is pushed, into
//! a temp file with [`crate::compress::encode`]: deterministic (the same
//! bytes on any number of compression threads), the blob's
//! digest and the tar's diff_id from the same pass.

use std::io::{self, BufWriter};
use std::path::Path;

use crate::compress::{Encoded, Encoding};
use crate::image::FileSlice;

/// Compresses the tar in `input` into a temp file in `dir`; returns the
/// file and what was written. Refuses a tar whose diff_id is not
/// `diff_id` (the file changed since it was verified).
pub fn compress_tar(
    input: &FileSlice,
    dir: &Path,
    how: Encoding,
    diff_id: &crate::digest::Digest,
) -> io::Result<(FileSlice, Encoded)> {
    let (file, path) = tempfile::Builder::new()
        .prefix("push-")
        .tempfile_in(dir)?
        .into_parts();
    let out = BufWriter::with_capacity(1 << 20, file);
    let encoded = crate::compress::encode(input.open()?, out, how, None)?;
    if &encoded.diff_id != diff_id {
        return Err(io::Error::other(format!(
            "layer tar is {}, not the {diff_id} verified",
            encoded.diff_id
        )));
    }
    Ok((FileSlice::temp(path, encoded.size), encoded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_tar_compresses_to_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("layer.tar");
        std::fs::write(&tar, vec![7u8; 100_000]).unwrap();
        let diff_id = crate::digest::Digest::sha256_of(&[7u8; 100_000]);
        let slice = FileSlice::range(std::sync::Arc::new(tar), 0, 100_000);
        for how in [Encoding::Gzip, Encoding::Zstd] {
            let (a, ea) = compress_tar(&slice, dir.path(), how, &diff_id).unwrap();
            let (b, eb) = compress_tar(&slice, dir.path(), how, &diff_id).unwrap();
            assert_eq!(ea, eb);
            assert_eq!(
                std::fs::read(a.path()).unwrap(),
                std::fs::read(b.path()).unwrap()
            );
            assert!(ea.size < 100_000);
        }
        let wrong = crate::digest::Digest::sha256_of(b"other");
        assert!(compress_tar(&slice, dir.path(), Encoding::Gzip, &wrong).is_err());
    }
}
