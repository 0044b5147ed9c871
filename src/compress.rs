//! Deterministic layer compression, for layers that are written anew.
//!
//! A layer that a filter rewrote, or that arrived as a plain tar (a
//! docker-save member), is compressed on its way to a registry. The same
//! tar, encoding and level always give the same bytes, whatever the number
//! of threads, so that a repeat run produces the same blob digest (and the
//! layer cache and the destination's "already have it" check keep working):
//!
//! - gzip: the header has mtime 0, no file name, no comment, no extra
//!   field, and OS byte 255 ("unknown"). The deflate stream is made of
//!   512 KiB blocks compressed in parallel, each primed with the 32 KiB before
//!   it (pigz's scheme, see `compress/parallel.rs`), so it depends only on the input
//!   and the level. Default level 6, zlib's own (and Docker's and skopeo's
//!   choice).
//! - zstd: zstd's own multi-threaded mode, always with at least one worker
//!   and a fixed job size: its output then does not depend on the number of
//!   workers (zstd documents this for streaming compression; only the
//!   single-threaded mode, with no workers, gives different bytes). No
//!   content checksum (the blob digest and diff_id already cover the
//!   bytes), no pledged content size (the tar's size is not known up
//!   front). Default level 3 (zstd's own default).
//!
//! One pass does everything: the tar is hashed (diff_id) and counted as it
//! goes in, and the output is hashed (blob digest) and counted as it comes
//! out. Memory use is a few blocks per thread, whatever the layer's size.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use crate::digest::{Algorithm, Digest, Hasher, HashingWriter};
use crate::error::Error;
use crate::image::media_type;

mod parallel;

#[cfg(test)]
use parallel::GZIP_OS_UNKNOWN;
use parallel::ParallelGzip;

/// Read size from the tar into the encoder.
const BUF: usize = 256 << 10;

/// zstd's job size in multi-threaded mode. Fixed, so that the output does
/// not depend on anything but the input and the level; small, so that the
/// jobs in flight stay a few MiB (zstd's default is 4 windows, 8 MiB at
/// level 3). Each job still sees the end of the one before. Measured on a
/// Debian rootfs tar at level 3: 1 MiB jobs cost 1.7% in size against
/// 2 MiB ones and save about 10 MiB of peak memory with 2 workers.
const ZSTD_JOB: u32 = 1 << 20;

/// At most this many compression threads per stream by default: several
/// layers are compressed at once anyway, and each thread holds a few
/// blocks.
const MAX_THREADS: usize = 4;

/// The number of compression threads [`Encoder::new`] and [`encode`] use:
/// the machine's parallelism, at most 4. The output is the same for any.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_THREADS)
}

/// A compression to write layers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Encoding {
    /// gzip (RFC 1952), which every registry and runtime reads.
    #[default]
    Gzip,
    /// Zstandard (RFC 8878): smaller and faster to decode; OCI media type only.
    Zstd,
}

impl Encoding {
    /// The layer media type for a blob of this encoding: OCI's `tar+gzip` /
    /// `tar+zstd` when `oci`, otherwise Docker schema2's
    /// `rootfs.diff.tar.gzip`. Docker has no zstd type, so zstd is always
    /// the OCI one.
    pub fn media_type(self, oci: bool) -> &'static str {
        match (self, oci) {
            (Encoding::Gzip, true) => media_type::OCI_LAYER_GZIP,
            (Encoding::Gzip, false) => media_type::DOCKER_LAYER_GZIP,
            (Encoding::Zstd, _) => media_type::OCI_LAYER_ZSTD,
        }
    }

    /// The name as the command line and URIs spell it (`gzip`, `zstd`).
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }

    /// The level used when none is given: 6 for gzip, 3 for zstd (each
    /// library's own default).
    pub fn default_level(self) -> i32 {
        match self {
            Encoding::Gzip => 6,
            Encoding::Zstd => 3,
        }
    }

    /// The levels this encoding accepts: 0..=9 for gzip (0 stores), and
    /// 1..=22 for zstd (its negative "fast" levels are not offered).
    pub fn levels(self) -> std::ops::RangeInclusive<i32> {
        match self {
            Encoding::Gzip => 0..=9,
            Encoding::Zstd => 1..=22,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Encoding {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gzip" => Ok(Encoding::Gzip),
            "zstd" => Ok(Encoding::Zstd),
            other => Err(Error::Usage(format!(
                "unknown compression {:?}: expected gzip or zstd",
                crate::digest::truncate_for_error(other)
            ))),
        }
    }
}

/// What [`encode`] wrote: the compressed blob's digest and size, and the
/// input tar's digest (its diff_id) and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// sha256 of the compressed output (the blob digest).
    pub digest: Digest,
    /// Bytes of compressed output.
    pub size: u64,
    /// sha256 of the uncompressed input (the layer's diff_id).
    pub diff_id: Digest,
    /// Bytes of uncompressed input.
    pub tar_size: u64,
}

/// The encoder proper, writing into the hashing writer.
enum Inner<W: Write> {
    Gzip(ParallelGzip<HashingWriter<W>>),
    Zstd(zstd::stream::write::Encoder<'static, HashingWriter<W>>),
}

/// A writer that takes a tar and writes it compressed into `W`, hashing
/// both sides; [`Encoder::finish`] ends the stream and says what was
/// written. For callers that are handed the tar piece by piece (an
/// upload); [`encode`] is the same over a reader.
pub struct Encoder<W: Write> {
    inner: Inner<W>,
    tar_hash: Hasher,
    tar_size: u64,
}

impl<W: Write> Encoder<W> {
    /// Starts a stream into `out` on [`default_threads`] threads. `level`
    /// defaults to [`Encoding::default_level`]; one outside
    /// [`Encoding::levels`] is an `InvalidInput` error.
    pub fn new(out: W, encoding: Encoding, level: Option<i32>) -> io::Result<Self> {
        Self::with_threads(out, encoding, level, default_threads())
    }

    /// [`Encoder::new`] with up to `threads` compression threads (0 counts
    /// as 1, more than 64 as 64, which bounds the blocks held in flight).
    /// The bytes written are the same for any number.
    pub fn with_threads(
        out: W,
        encoding: Encoding,
        level: Option<i32>,
        threads: usize,
    ) -> io::Result<Self> {
        let threads = threads.clamp(1, 64);
        let level = level.unwrap_or(encoding.default_level());
        if !encoding.levels().contains(&level) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{encoding} level {level} is outside {:?}",
                    encoding.levels()
                ),
            ));
        }
        let out = HashingWriter::new(out, Algorithm::Sha256);
        let inner = match encoding {
            Encoding::Gzip => {
                // `levels()` keeps this in 0..=9.
                Inner::Gzip(ParallelGzip::new(out, level.unsigned_abs(), threads)?)
            }
            Encoding::Zstd => {
                let mut z = zstd::stream::write::Encoder::new(out, level)?;
                // One worker or many give the same bytes; none (zstd's
                // default) would give others.
                z.multithread(u32::try_from(threads).unwrap_or(u32::MAX))?;
                z.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB))?;
                z.include_checksum(false)?;
                z.include_contentsize(false)?;
                z.include_dictid(false)?;
                Inner::Zstd(z)
            }
        };
        Ok(Encoder {
            inner,
            tar_hash: Hasher::new(Algorithm::Sha256),
            tar_size: 0,
        })
    }

    /// Ends the compressed stream, flushes `out`, and gives what was
    /// written and `out` back.
    pub fn finish(self) -> io::Result<(Encoded, W)> {
        let hashing = match self.inner {
            Inner::Gzip(g) => g.finish()?,
            Inner::Zstd(z) => z.finish()?,
        };
        let (digest, size, mut out) = hashing.finish();
        out.flush()?;
        let encoded = Encoded {
            digest,
            size,
            diff_id: self.tar_hash.finish(),
            tar_size: self.tar_size,
        };
        Ok((encoded, out))
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.inner {
            Inner::Gzip(g) => g.write(buf)?,
            Inner::Zstd(z) => z.write(buf)?,
        };
        // Only what the encoder took counts towards the diff_id.
        self.tar_hash.update(&buf[..n]);
        self.tar_size += n as u64;
        Ok(n)
    }
    /// Passes on what is compressed so far and flushes `out`. It never
    /// cuts the stream, so the bytes do not depend on when it is called.
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Gzip(g) => g.flush(),
            Inner::Zstd(z) => z.get_mut().flush(),
        }
    }
}

/// Compresses `tar` into `out` deterministically (see the module docs),
/// giving the output's digest and size and the input's diff_id and size,
/// all from the same pass, on [`default_threads`] threads. Reads with one
/// fixed buffer; `out` is flushed at the end.
pub fn encode(
    tar: impl Read,
    out: impl Write,
    encoding: Encoding,
    level: Option<i32>,
) -> io::Result<Encoded> {
    encode_with_threads(tar, out, encoding, level, default_threads())
}

/// [`encode`] with up to `threads` compression threads; the bytes are the
/// same for any number.
pub fn encode_with_threads(
    mut tar: impl Read,
    out: impl Write,
    encoding: Encoding,
    level: Option<i32>,
    threads: usize,
) -> io::Result<Encoded> {
    let mut encoder = Encoder::with_threads(out, encoding, level, threads)?;
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match tar.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        encoder.write_all(&buf[..n])?;
    }
    encoder.finish().map(|(encoded, _)| encoded)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::image::LayerInfo;
    use crate::verify::{Expect, VerifiedTar};

    /// A fixed, mildly compressible input: a counter pattern.
    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i / 7) % 251) as u8).collect()
    }

    /// Deterministic noise (xorshift64), which no level can shrink.
    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    /// Several gzip blocks and zstd jobs of both kinds, with block edges
    /// inside each kind: text, noise, then text again.
    fn mixed() -> Vec<u8> {
        let mut v = sample(2_500_000);
        v.extend(noise(1_700_000));
        v.extend(sample(1_300_001));
        v
    }

    fn decode(blob: &[u8]) -> Vec<u8> {
        let c = crate::image::Compression::sniff(blob);
        let mut d = c.decoder(blob).unwrap();
        let mut out = Vec::new();
        d.read_to_end(&mut out).unwrap();
        out
    }

    fn encoded(tar: &[u8], encoding: Encoding, level: Option<i32>) -> (Vec<u8>, Encoded) {
        let mut out = Vec::new();
        let e = encode(tar, &mut out, encoding, level).unwrap();
        (out, e)
    }

    #[test]
    fn round_trips_and_reports_both_sides() {
        let tar = sample(3 << 20);
        for encoding in [Encoding::Gzip, Encoding::Zstd] {
            let (blob, e) = encoded(&tar, encoding, None);
            assert_eq!(decode(&blob), tar, "{encoding}");
            assert_eq!(e.size, blob.len() as u64);
            assert_eq!(e.digest, Digest::sha256_of(&blob));
            assert_eq!(e.tar_size, tar.len() as u64);
            assert_eq!(e.diff_id, Digest::sha256_of(&tar));
            assert!(e.size < e.tar_size / 4, "{encoding} did not compress");
        }
    }

    #[test]
    fn same_input_same_bytes() {
        let tar = sample(1 << 20);
        for encoding in [Encoding::Gzip, Encoding::Zstd] {
            for level in [None, Some(1), Some(9)] {
                let (a, ea) = encoded(&tar, encoding, level);
                let (b, eb) = encoded(&tar, encoding, level);
                assert_eq!(a, b, "{encoding} {level:?}");
                assert_eq!(ea, eb);
            }
        }
    }

    /// Pins the bytes: a change here means a library or setting change
    /// that alters every rewritten layer's digest (and so the layer cache's
    /// hits). Update only on purpose.
    #[test]
    fn golden_digests() {
        let tar = sample(64 << 10);
        let (_, gz) = encoded(&tar, Encoding::Gzip, None);
        let (_, zs) = encoded(&tar, Encoding::Zstd, None);
        let (_, gz_blocks) = encoded(&mixed(), Encoding::Gzip, None);
        let (_, zs_jobs) = encoded(&mixed(), Encoding::Zstd, None);
        assert_eq!(
            gz_blocks.digest.to_string(),
            "sha256:eef2d76caac1194d6c5ac955fda54a0dfbf34650aa3bba2756ffd939c62e43eb"
        );
        assert_eq!(
            zs_jobs.digest.to_string(),
            "sha256:927f0f8a199e5ab2bc99b86495855300df88052d71dc4730de167867911fde74"
        );
        assert_eq!(
            gz.digest.to_string(),
            "sha256:c654652874308e812fd2fb8e4f5c2676ba3c01003d990c2edd1081dbd2441275"
        );
        assert_eq!(
            zs.digest.to_string(),
            "sha256:ad33212d0bbc075f3b19fe71d6ea3c215249f1f3f9490008cbf3f6896dc14539"
        );
    }

    /// Other clients check what ours skip: gzip's CRC-32 and ISIZE, and a
    /// well-formed zstd frame.
    #[test]
    fn strict_decoders_accept_it() {
        let tar = mixed();
        let (gz, _) = encoded(&tar, Encoding::Gzip, None);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, tar);
        let mut spoiled = gz.clone();
        let n = spoiled.len();
        spoiled[n - 8] ^= 1; // the CRC
        let mut sink = Vec::new();
        assert!(
            flate2::read::GzDecoder::new(&spoiled[..])
                .read_to_end(&mut sink)
                .is_err()
        );
        let (zs, _) = encoded(&tar, Encoding::Zstd, None);
        assert_eq!(zstd::decode_all(&zs[..]).unwrap(), tar);
    }

    #[test]
    fn gzip_header_is_fixed() {
        let (blob, _) = encoded(b"hello", Encoding::Gzip, None);
        // magic, deflate, no flags (no name/comment/extra), mtime 0.
        assert_eq!(&blob[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
        assert_eq!(blob[9], GZIP_OS_UNKNOWN);
    }

    #[test]
    fn zstd_frame_has_no_checksum_or_size() {
        let (blob, _) = encoded(b"hello", Encoding::Zstd, None);
        assert_eq!(&blob[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        let descriptor = blob[4];
        assert_eq!(descriptor & 0x04, 0, "content checksum flag set");
        assert_eq!(descriptor >> 6, 0, "frame content size present");
        assert_eq!(descriptor & 0x03, 0, "dictionary id present");
    }

    #[test]
    fn empty_input() {
        for encoding in [Encoding::Gzip, Encoding::Zstd] {
            let (blob, e) = encoded(b"", encoding, None);
            assert_eq!(e.tar_size, 0);
            assert_eq!(e.diff_id, Digest::sha256_of(b""));
            assert!(decode(&blob).is_empty());
        }
    }

    #[test]
    fn writer_matches_reader() {
        let tar = mixed();
        for encoding in [Encoding::Gzip, Encoding::Zstd] {
            let (blob, e) = encoded(&tar, encoding, Some(2));
            let mut enc = Encoder::new(Vec::new(), encoding, Some(2)).unwrap();
            for piece in tar.chunks(12_345) {
                enc.write_all(piece).unwrap();
            }
            let (e2, out) = enc.finish().unwrap();
            assert_eq!(out, blob);
            assert_eq!(e2, e);
        }
    }

    #[test]
    fn levels_are_checked() {
        for (encoding, level) in [
            (Encoding::Gzip, 10),
            (Encoding::Gzip, -1),
            (Encoding::Zstd, 0),
            (Encoding::Zstd, 23),
        ] {
            let err = encode(&b"x"[..], io::sink(), encoding, Some(level)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        assert!(encode(&b"x"[..], io::sink(), Encoding::Gzip, Some(0)).is_ok());
        assert!(encode(&b"x"[..], io::sink(), Encoding::Zstd, Some(22)).is_ok());
    }

    #[test]
    fn input_error_is_returned() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("cut"))
            }
        }
        let err = encode(Broken, io::sink(), Encoding::Gzip, None).unwrap_err();
        assert_eq!(err.to_string(), "cut");
    }

    #[test]
    fn parses_names_and_media_types() {
        assert_eq!("gzip".parse::<Encoding>().unwrap(), Encoding::Gzip);
        assert_eq!("zstd".parse::<Encoding>().unwrap(), Encoding::Zstd);
        assert!("xz".parse::<Encoding>().is_err());
        assert!("GZIP".parse::<Encoding>().is_err());
        assert_eq!(Encoding::Zstd.to_string(), "zstd");
        assert_eq!(
            Encoding::Gzip.media_type(false),
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
        assert_eq!(
            Encoding::Gzip.media_type(true),
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        for oci in [true, false] {
            assert_eq!(
                Encoding::Zstd.media_type(oci),
                "application/vnd.oci.image.layer.v1.tar+zstd"
            );
        }
    }

    /// The promise that makes parallel compression safe for digests: the
    /// bytes do not depend on the number of threads.
    #[test]
    fn same_bytes_for_any_thread_count() {
        let tar = mixed();
        for encoding in [Encoding::Gzip, Encoding::Zstd] {
            for level in [None, Some(1)] {
                let one = {
                    let mut out = Vec::new();
                    encode_with_threads(&tar[..], &mut out, encoding, level, 1).unwrap();
                    out
                };
                assert_eq!(decode(&one), tar, "{encoding} {level:?}");
                for threads in [0, 2, 3, 8] {
                    let mut out = Vec::new();
                    let e =
                        encode_with_threads(&tar[..], &mut out, encoding, level, threads).unwrap();
                    assert!(out == one, "{encoding} {level:?}: {threads} threads differ");
                    assert_eq!(e.digest, Digest::sha256_of(&one));
                }
            }
        }
    }

    /// gzip(1) checks the CRC and length of what we wrote, across blocks.
    #[test]
    fn gzip_tool_accepts_it() {
        use std::process::{Command, Stdio};
        let (blob, _) = encoded(&mixed(), Encoding::Gzip, None);
        let mut child = match Command::new("gzip")
            .args(["-t", "-"])
            .stdin(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => panic!("gzip: {e}"),
        };
        child.stdin.take().unwrap().write_all(&blob).unwrap();
        assert!(child.wait().unwrap().success(), "gzip -t refused it");
    }

    /// Noise is stored rather than searched: no level makes it grow by more
    /// than the stored blocks' headers.
    #[test]
    fn noise_is_stored_at_every_level() {
        let tar = noise(3 << 20);
        for level in [1, 6, 9] {
            let (blob, e) = encoded(&tar, Encoding::Gzip, Some(level));
            assert!(
                e.size < e.tar_size + e.tar_size / 1000 + 64,
                "level {level}"
            );
            assert_eq!(decode(&blob), tar);
        }
    }

    #[test]
    fn dropping_an_unfinished_encoder_is_clean() {
        let tar = mixed();
        let mut enc = Encoder::with_threads(Vec::new(), Encoding::Gzip, None, 4).unwrap();
        enc.write_all(&tar).unwrap();
        enc.flush().unwrap();
        drop(enc);
    }

    fn verify(blob: Vec<u8>, info: LayerInfo) -> io::Result<Vec<u8>> {
        let expect = Expect {
            info,
            digest_known: true,
            prehashed: None,
        };
        let reporter = Arc::new(crate::progress::Silent);
        let mut v = VerifiedTar::new(
            Box::new(io::Cursor::new(blob)),
            expect,
            "layer 0".into(),
            reporter,
        )
        .map_err(crate::verify::into_io)?;
        let mut tar = Vec::new();
        v.read_to_end(&mut tar)?;
        Ok(tar)
    }

    #[test]
    fn verifier_accepts_what_was_encoded() {
        let tar = mixed();
        for encoding in [Encoding::Gzip, Encoding::Zstd] {
            let (blob, e) = encoded(&tar, encoding, None);
            let info = LayerInfo {
                index: 0,
                digest: e.digest.clone(),
                size: e.size,
                media_type: encoding.media_type(true).to_string(),
                diff_id: e.diff_id.clone(),
            };
            assert_eq!(verify(blob.clone(), info.clone()).unwrap(), tar);
            // And a wrong diff_id is still caught, so the test can fail.
            let wrong = LayerInfo {
                diff_id: Digest::sha256_of(b"other"),
                ..info
            };
            assert!(verify(blob, wrong).is_err());
        }
    }
}
