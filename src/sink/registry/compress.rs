//! Compressing a layer that exists only as a tar (a docker-save member, a
//! store's `layer.tar`, a layer a filter rewrote) before it is pushed:
//! deterministic (no name, mtime 0, fixed level), hashed as written.

use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::digest::{Algorithm, Digest, HashingWriter};
use crate::image::{FileSlice, media_type as mt};

/// How a tar-only layer is compressed for a registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayerCompression {
    /// gzip (every client reads it).
    #[default]
    Gzip,
    /// zstd (smaller and faster; OCI manifests only).
    Zstd,
}

impl LayerCompression {
    /// `gzip` or `zstd`.
    pub fn parse(s: &str) -> Option<LayerCompression> {
        match s {
            "gzip" => Some(LayerCompression::Gzip),
            "zstd" => Some(LayerCompression::Zstd),
            _ => None,
        }
    }

    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            LayerCompression::Gzip => mt::OCI_LAYER_GZIP,
            LayerCompression::Zstd => mt::OCI_LAYER_ZSTD,
        }
    }
}

/// Compresses the tar in `input` into a temp file in `dir`; returns the
/// file, and the digest and size of what was written.
pub fn compress_tar(
    input: &FileSlice,
    dir: &Path,
    how: LayerCompression,
) -> io::Result<(FileSlice, Digest, u64)> {
    let (file, path) = tempfile::Builder::new()
        .prefix("push-")
        .tempfile_in(dir)?
        .into_parts();
    let out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file), Algorithm::Sha256);
    let mut tar = input.open()?;
    let out = match how {
        LayerCompression::Gzip => {
            let mut e = flate2::GzBuilder::new()
                .mtime(0)
                .write(out, flate2::Compression::new(6));
            io::copy(&mut tar, &mut e)?;
            e.finish()?
        }
        LayerCompression::Zstd => {
            let mut e = zstd::Encoder::new(out, 3)?;
            io::copy(&mut tar, &mut e)?;
            e.finish()?
        }
    };
    let (digest, size, mut w) = out.finish();
    w.flush()?;
    Ok((FileSlice::temp(path, size), digest, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_tar_compresses_to_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("layer.tar");
        std::fs::write(&tar, vec![7u8; 100_000]).unwrap();
        let slice = FileSlice::range(std::sync::Arc::new(tar), 0, 100_000);
        for how in [LayerCompression::Gzip, LayerCompression::Zstd] {
            let (a, da, sa) = compress_tar(&slice, dir.path(), how).unwrap();
            let (b, db, sb) = compress_tar(&slice, dir.path(), how).unwrap();
            assert_eq!((da, sa), (db, sb));
            assert_eq!(
                std::fs::read(a.path()).unwrap(),
                std::fs::read(b.path()).unwrap()
            );
            assert!(sa < 100_000);
        }
    }
}
