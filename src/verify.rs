//! The one layer verifier every source's bytes go through.
//!
//! [`VerifiedTar`] reads a blob as stored (from a socket, a tarball member,
//! a store file), sniffs its compression, and yields the uncompressed tar.
//! In the same pass it counts and hashes the blob and hashes the tar. Its
//! last read is the verdict: end-of-file only when the blob size, the blob
//! digest and the diff_id all match, and otherwise an `io::Error` wrapping
//! the [`Error::SizeMismatch`] / [`Error::DigestMismatch`] with its
//! [`Mismatch`] kind (unwrap it with [`Error::stream`]).

use std::io::{self, BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};

use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, Mismatch, Result};
use crate::image::{Compression, LayerInfo, media_type};
use crate::progress::Reporter;

/// Read size between the blob and the decoder.
const BUF: usize = 256 << 10;
/// Progress is reported in steps of this many bytes.
const PROGRESS_STEP: u64 = 1 << 20;

/// A digest and byte count of a blob that its source computed on the way in
/// (e.g. on a thread of its own); called once the blob was read to its end.
pub type Prehashed = Box<dyn FnOnce() -> (Digest, u64) + Send>;

/// What the blob's descriptor promises, and how far to trust it.
pub(crate) struct Expect {
    /// The descriptor.
    pub info: LayerInfo,
    /// False when `info.digest`/`media_type` are placeholders (a docker-save
    /// member, known only by its diff_id): the bytes say what they are, and
    /// only the size and diff_id are checked.
    pub digest_known: bool,
    /// The source hashed the blob itself.
    pub prehashed: Option<Prehashed>,
}

/// The raw side: counts, hashes and reports the blob's bytes.
struct Raw {
    inner: Box<dyn Read + Send>,
    hasher: Option<Hasher>,
    count: u64,
    pending: u64,
    index: usize,
    reporter: Arc<dyn Reporter>,
    /// The source's own read error (a failed download): it explains
    /// whatever the decoder or the checks make of the bytes cut short.
    error: Option<io::Error>,
}

/// A clonable handle on [`Raw`]: the decoder reads through one, and the
/// verifier drains the rest through another once the decoder is done.
#[derive(Clone)]
struct RawHandle(Arc<Mutex<Raw>>);

impl Read for RawHandle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut raw = self
            .0
            .lock()
            .map_err(|_| io::Error::other("layer reader failed earlier"))?;
        let n = match raw.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                raw.error = Some(e);
                return Err(copy);
            }
        };
        if let Some(h) = &mut raw.hasher {
            h.update(&buf[..n]);
        }
        raw.count += n as u64;
        raw.pending += n as u64;
        if raw.pending >= PROGRESS_STEP || (n == 0 && raw.pending > 0) {
            raw.reporter.layer_bytes(raw.index, raw.pending);
            raw.pending = 0;
        }
        Ok(n)
    }
}

enum State {
    Reading,
    Verified,
    Failed,
}

/// A layer's uncompressed tar, verified by its last read (see the module
/// documentation).
pub struct VerifiedTar {
    raw: RawHandle,
    decoder: Box<dyn Read + Send>,
    tar_hash: Option<Hasher>,
    /// Plain tar whose diff_id is hashed with the blob's algorithm: the
    /// blob's digest is the diff_id, so the bytes are hashed once.
    reuse_blob_hash: bool,
    compression: Compression,
    expect: Expect,
    label: String,
    state: State,
    /// Whether the tar's diff_id is checked: not when only the blob is
    /// ([`Checks::BlobAsStored`], [`Checks::BlobDigest`]).
    checks_diff_id: bool,
}

/// What a [`VerifiedTar`] checks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Checks {
    /// Blob size, blob digest and diff_id ([`VerifiedTar::new`]).
    Full,
    /// The blob's size and digest; the tar is decompressed but not hashed.
    /// The blob digest is what ties the bytes to the manifest; this is for a
    /// reader that names layers by it and writes neither the tar nor the
    /// config out, so has no use for the config's diff_ids. A blob whose
    /// digest is not known (a docker-save member) is verified in full, and
    /// so is a plain tar, whose one hash is both.
    BlobDigest,
    /// The blob's size and digest, for a reader that wants the blob as
    /// stored (a copy): nothing is decompressed, and the reads give the
    /// blob's own bytes. A blob whose digest is not known has only its
    /// diff_id to be checked by, so it is verified in full.
    BlobAsStored,
}

impl VerifiedTar {
    /// Starts verifying `blob` against `expect`; `label` names the layer in
    /// errors (`layer 2 (sha256:…)`). Reads the first bytes to sniff the
    /// compression.
    pub(crate) fn new(
        blob: Box<dyn Read + Send>,
        expect: Expect,
        label: String,
        reporter: Arc<dyn Reporter>,
    ) -> Result<VerifiedTar> {
        VerifiedTar::open(blob, expect, label, reporter, Checks::Full)
    }

    /// As [`VerifiedTar::new`], checking what `checks` says.
    pub(crate) fn open(
        blob: Box<dyn Read + Send>,
        mut expect: Expect,
        label: String,
        reporter: Arc<dyn Reporter>,
        checks: Checks,
    ) -> Result<VerifiedTar> {
        let blob_only = checks == Checks::BlobAsStored && expect.digest_known;
        let hasher = expect
            .prehashed
            .is_none()
            .then(|| Hasher::new(expect.info.digest.algorithm()));
        let raw = RawHandle(Arc::new(Mutex::new(Raw {
            inner: blob,
            hasher,
            count: 0,
            pending: 0,
            index: expect.info.index,
            reporter,
            error: None,
        })));
        let mut buffered = BufReader::with_capacity(BUF, raw.clone());
        let head = match buffered.fill_buf() {
            Ok(head) => head,
            Err(e) => {
                let source = raw.0.lock().ok().and_then(|mut r| r.error.take());
                return Err(Error::stream(
                    format!("reading {label}"),
                    source.unwrap_or(e),
                ));
            }
        };
        let compression = Compression::sniff(head);
        let decoder: Box<dyn Read + Send> = match compression {
            _ if blob_only => Box::new(buffered),
            Compression::None => Box::new(buffered),
            Compression::Gzip => Box::new(crate::gzip::GzipReader::new(buffered)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(buffered)
                    .map_err(|e| Error::stream(format!("decompressing {label}"), e))?,
            ),
        };
        let same_algorithm = expect.info.diff_id.algorithm() == expect.info.digest.algorithm();
        let reuse_blob_hash = compression == Compression::None
            && same_algorithm
            && expect.prehashed.is_none()
            && !blob_only;
        let skip_diff_id =
            checks == Checks::BlobDigest && expect.digest_known && compression != Compression::None;
        let checks_diff_id = !blob_only && !skip_diff_id;
        if !expect.digest_known && compression != Compression::None {
            expect.info.media_type = match compression {
                Compression::Zstd => media_type::OCI_LAYER_ZSTD,
                _ => media_type::OCI_LAYER_GZIP,
            }
            .to_string();
        }
        Ok(VerifiedTar {
            raw,
            decoder,
            tar_hash: (!reuse_blob_hash && checks_diff_id).then(|| Hasher::new(Algorithm::Sha256)),
            reuse_blob_hash,
            compression,
            expect,
            label,
            state: State::Reading,
            checks_diff_id,
        })
    }

    /// How the blob is compressed.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The descriptor, refined by what the bytes showed: a docker-save
    /// member's media type once sniffed, and its blob digest once verified.
    pub fn info(&self) -> &LayerInfo {
        &self.expect.info
    }

    /// Reads the rest of the blob (bytes after the end of the compressed
    /// stream still count towards its size and digest) and gives its digest
    /// and size.
    fn drain_blob(&mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self.raw, &mut io::sink())?;
        let mut raw = self
            .raw
            .0
            .lock()
            .map_err(|_| io::Error::other("layer reader failed earlier"))?;
        let count = raw.count;
        // Unblocks a source's hasher that waits to forward a chunk.
        raw.inner = Box::new(io::empty());
        let hashed = match raw.hasher.take() {
            Some(h) => (h.finish(), count),
            None => match self.expect.prehashed.take() {
                Some(f) => {
                    drop(raw);
                    f()
                }
                None => return Err(io::Error::other("layer blob hashed twice")),
            },
        };
        Ok(hashed)
    }

    /// The source's read error, if it had one.
    fn source_error(&self) -> Option<Error> {
        let e = self.raw.0.lock().ok()?.error.take()?;
        Some(Error::stream(format!("reading {}", self.label), e))
    }

    /// The checks at end-of-file.
    fn verdict(&mut self) -> Result<()> {
        let drained = self.drain_blob();
        if let Some(e) = self.source_error() {
            return Err(e);
        }
        let (digest, size) =
            drained.map_err(|e| Error::stream(format!("reading {}", self.label), e))?;
        let diff_id = match self.tar_hash.take() {
            Some(h) => h.finish(),
            None => digest.clone(),
        };
        // A plain tar whose descriptor names its diff_id as its digest (a
        // store's layer file): the one hash is checked as the diff_id.
        let blob_is_tar =
            self.reuse_blob_hash && self.expect.info.digest == self.expect.info.diff_id;
        if !self.expect.digest_known || blob_is_tar {
            self.expect.info.digest = digest.clone();
        }
        check_blob(
            &self.expect.info,
            size,
            digest,
            format!("{} blob", self.label),
        )?;
        if !self.checks_diff_id {
            return Ok(());
        }
        check_diff_id(&self.expect.info, diff_id)
    }

    /// A decode error: a wrong blob explains it, so that is checked first.
    fn decode_failed(&mut self, e: io::Error) -> Error {
        let compression = self.compression;
        let decode = Error::stream(format!("{} decompressing ({compression:?})", self.label), e);
        let drained = self.drain_blob();
        if let Some(e) = self.source_error() {
            return e;
        }
        match drained {
            Ok((digest, size)) => {
                let label = format!("{} blob", self.label);
                if !self.expect.digest_known {
                    // Nothing to compare the digest with; the size still.
                    let mut info = self.expect.info.clone();
                    info.digest = digest.clone();
                    return check_blob(&info, size, digest, label)
                        .err()
                        .unwrap_or(decode);
                }
                check_blob(&self.expect.info, size, digest, label)
                    .err()
                    .unwrap_or(decode)
            }
            Err(_) => decode,
        }
    }
}

impl Read for VerifiedTar {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.state {
            State::Verified => return Ok(0),
            State::Failed => return Err(io::Error::other("layer failed verification")),
            State::Reading => {}
        }
        loop {
            return match self.decoder.read(buf) {
                Ok(0) if !buf.is_empty() => {
                    let v = self.verdict();
                    self.state = match v {
                        Ok(()) => State::Verified,
                        Err(_) => State::Failed,
                    };
                    v.map(|()| 0).map_err(into_io)
                }
                Ok(n) => {
                    if let Some(h) = &mut self.tar_hash {
                        h.update(&buf[..n]);
                    }
                    Ok(n)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.state = State::Failed;
                    Err(into_io(self.decode_failed(e)))
                }
            };
        }
    }
}

impl std::fmt::Debug for VerifiedTar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTar")
            .field("label", &self.label)
            .field("compression", &self.compression)
            .field("reuse_blob_hash", &self.reuse_blob_hash)
            .finish_non_exhaustive()
    }
}

/// An error carried through `io`: [`Error::stream`] takes it out again.
pub(crate) fn into_io(e: Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A copy of a verification failure, for a second reader of the same
/// verdict (the sink that streamed the layer, besides the pipeline).
pub(crate) fn duplicate(e: &Error) -> io::Error {
    match e {
        Error::DigestMismatch {
            kind,
            what,
            expected,
            found,
        } => into_io(Error::DigestMismatch {
            kind: *kind,
            what: what.clone(),
            expected: expected.clone(),
            found: found.clone(),
        }),
        Error::SizeMismatch {
            kind,
            what,
            expected,
            found,
        } => into_io(Error::SizeMismatch {
            kind: *kind,
            what: what.clone(),
            expected: *expected,
            found: *found,
        }),
        other => io::Error::other(other.to_string()),
    }
}

/// Checks a blob's size and digest against its descriptor; `what` names it
/// in the error.
pub(crate) fn check_blob(info: &LayerInfo, size: u64, digest: Digest, what: String) -> Result<()> {
    if size != info.size {
        return Err(Error::SizeMismatch {
            kind: Mismatch::BlobSize,
            what,
            expected: info.size,
            found: size,
        });
    }
    if digest != info.digest {
        return Err(Error::DigestMismatch {
            kind: Mismatch::BlobDigest,
            what,
            expected: info.digest.clone(),
            found: digest,
        });
    }
    Ok(())
}

/// Checks the sha256 of a layer's uncompressed tar against its diff_id.
pub(crate) fn check_diff_id(info: &LayerInfo, diff_id: Digest) -> Result<()> {
    if diff_id != info.diff_id {
        return Err(Error::DigestMismatch {
            kind: Mismatch::DiffId,
            what: format!(
                "layer {} diff_id (sha256 of the uncompressed tar)",
                info.index
            ),
            expected: info.diff_id.clone(),
            found: diff_id,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn info_for(blob: &[u8], tar: &[u8]) -> LayerInfo {
        LayerInfo {
            index: 0,
            digest: Digest::sha256_of(blob),
            size: blob.len() as u64,
            media_type: media_type::OCI_LAYER_GZIP.into(),
            diff_id: Digest::sha256_of(tar),
        }
    }

    fn read(blob: Vec<u8>, info: LayerInfo, digest_known: bool) -> Result<(Vec<u8>, LayerInfo)> {
        read_through(Checks::Full, blob, info, digest_known)
    }

    /// `blob` read to its end through a verifier checking what `checks` says.
    fn read_through(
        checks: Checks,
        blob: Vec<u8>,
        info: LayerInfo,
        digest_known: bool,
    ) -> Result<(Vec<u8>, LayerInfo)> {
        let expect = Expect {
            info,
            digest_known,
            prehashed: None,
        };
        let mut v = VerifiedTar::open(
            Box::new(io::Cursor::new(blob)),
            expect,
            "layer 0".into(),
            Arc::new(crate::progress::Silent),
            checks,
        )?;
        let mut out = Vec::new();
        v.read_to_end(&mut out)
            .map_err(|e| Error::stream("reading", e))?;
        Ok((out, v.info().clone()))
    }

    fn kind(e: &Error) -> Mismatch {
        match e {
            Error::DigestMismatch { kind, .. } | Error::SizeMismatch { kind, .. } => *kind,
            other => panic!("not a mismatch: {other}"),
        }
    }

    fn tar_of(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 253) as u8).collect()
    }

    #[test]
    fn every_compression_verifies_and_yields_the_tar() {
        let tar = tar_of(700 << 10);
        let blobs = [
            tar.clone(),
            gzip(&tar),
            zstd::encode_all(&tar[..], 3).unwrap(),
            // Two gzip members.
            [gzip(&tar[..1000]), gzip(&tar[1000..])].concat(),
        ];
        for blob in blobs {
            let (out, _) = read(blob.clone(), info_for(&blob, &tar), true).unwrap();
            assert!(out == tar);
        }
    }

    #[test]
    fn each_mismatch_is_its_kind_at_the_last_read() {
        let tar = tar_of(300 << 10);
        for blob in [
            gzip(&tar),
            tar.clone(),
            zstd::encode_all(&tar[..], 1).unwrap(),
        ] {
            let good = info_for(&blob, &tar);
            let mut bad = good.clone();
            bad.diff_id = Digest::sha256_of(b"other");
            assert_eq!(
                kind(&read(blob.clone(), bad, true).unwrap_err()),
                Mismatch::DiffId
            );
            let mut bad = good.clone();
            bad.size += 1;
            assert_eq!(
                kind(&read(blob.clone(), bad, true).unwrap_err()),
                Mismatch::BlobSize
            );
            let mut bad = good.clone();
            bad.digest = Digest::sha256_of(b"x");
            // Checked before the diff_id, even for a plain tar whose digest is its diff_id.
            assert_eq!(
                kind(&read(blob.clone(), bad, true).unwrap_err()),
                Mismatch::BlobDigest
            );
            // Corrupt and truncated blobs.
            let mut corrupt = blob.clone();
            let n = corrupt.len();
            corrupt[n / 2] ^= 0x55;
            // A plain tar's digest is its diff_id: that is what fails.
            let want = if blob == tar {
                Mismatch::DiffId
            } else {
                Mismatch::BlobDigest
            };
            assert_eq!(kind(&read(corrupt, good.clone(), true).unwrap_err()), want);
            let short = blob[..n - 7].to_vec();
            assert_eq!(
                kind(&read(short, good.clone(), true).unwrap_err()),
                Mismatch::BlobSize
            );
            // Bytes after the compressed stream count towards the blob.
            let mut longer = blob.clone();
            longer.extend_from_slice(b"trailing");
            assert_eq!(
                kind(&read(longer, good, true).unwrap_err()),
                Mismatch::BlobSize
            );
        }
    }

    #[test]
    fn unknown_digest_is_learnt_and_the_diff_id_still_checked() {
        let tar = tar_of(100 << 10);
        let blob = gzip(&tar);
        // A docker-save member: known by its diff_id only.
        let mut info = info_for(&tar, &tar);
        info.size = blob.len() as u64;
        info.media_type = media_type::OCI_LAYER_TAR.into();
        let (out, refined) = read(blob.clone(), info.clone(), false).unwrap();
        assert!(out == tar);
        assert_eq!(refined.digest, Digest::sha256_of(&blob));
        assert_eq!(refined.media_type, media_type::OCI_LAYER_GZIP);
        let mut bad = info;
        bad.diff_id = Digest::sha256_of(b"y");
        assert_eq!(kind(&read(blob, bad, false).unwrap_err()), Mismatch::DiffId);
    }

    #[test]
    fn prehashed_blob_is_checked_with_the_sources_digest() {
        let tar = tar_of(10_000);
        let blob = gzip(&tar);
        let info = info_for(&blob, &tar);
        for (digest, ok) in [
            (info.digest.clone(), true),
            (Digest::sha256_of(b"z"), false),
        ] {
            let size = info.size;
            let expect = Expect {
                info: info.clone(),
                digest_known: true,
                prehashed: Some(Box::new(move || (digest, size))),
            };
            let mut v = VerifiedTar::new(
                Box::new(io::Cursor::new(blob.clone())),
                expect,
                "layer 0".into(),
                Arc::new(crate::progress::Silent),
            )
            .unwrap();
            let r = v.read_to_end(&mut Vec::new());
            assert_eq!(r.is_ok(), ok);
        }
    }

    fn read_blob_only(blob: Vec<u8>, info: LayerInfo, digest_known: bool) -> Result<Vec<u8>> {
        read_through(Checks::BlobAsStored, blob, info, digest_known).map(|(out, _)| out)
    }

    #[test]
    fn blob_only_gives_the_blob_and_checks_its_digest_and_size_only() {
        let tar = tar_of(50_000);
        let blob = gzip(&tar);
        let info = info_for(&blob, &tar);
        assert!(read_blob_only(blob.clone(), info.clone(), true).unwrap() == blob);
        // Nothing is decompressed, so a wrong diff_id goes unseen.
        let mut other_tar = info.clone();
        other_tar.diff_id = Digest::sha256_of(b"other");
        assert!(read_blob_only(blob.clone(), other_tar.clone(), true).is_ok());
        // ...unless the digest is unknown: then the diff_id is all there is.
        let e = read_blob_only(blob.clone(), other_tar, false).unwrap_err();
        assert_eq!(kind(&e), Mismatch::DiffId);
        let mut corrupt = blob.clone();
        corrupt[blob.len() / 2] ^= 1;
        let e = read_blob_only(corrupt, info.clone(), true).unwrap_err();
        assert_eq!(kind(&e), Mismatch::BlobDigest);
        let e = read_blob_only(blob[..blob.len() - 1].to_vec(), info, true).unwrap_err();
        assert_eq!(kind(&e), Mismatch::BlobSize);
    }

    #[test]
    fn by_blob_digest_gives_the_tar_and_checks_the_blob_not_the_diff_id() {
        let by_blob = |blob: &[u8], info: &LayerInfo, digest_known| {
            read_through(
                Checks::BlobDigest,
                blob.to_vec(),
                info.clone(),
                digest_known,
            )
            .map(|(out, _)| out)
        };
        let tar = tar_of(50_000);
        let blob = gzip(&tar);
        let info = info_for(&blob, &tar);
        assert!(by_blob(&blob, &info, true).unwrap() == tar);
        // The tar is not hashed, so a config's wrong diff_id goes unseen...
        let mut other_tar = info.clone();
        other_tar.diff_id = Digest::sha256_of(b"other");
        assert!(by_blob(&blob, &other_tar, true).unwrap() == tar);
        // ...but not when the digest is unknown, nor for a plain tar, whose
        // one hash is both.
        let e = by_blob(&blob, &other_tar, false).unwrap_err();
        assert_eq!(kind(&e), Mismatch::DiffId);
        let mut plain = info_for(&tar, &tar);
        plain.media_type = media_type::OCI_LAYER_TAR.into();
        assert!(by_blob(&tar, &plain, true).is_ok());
        plain.diff_id = Digest::sha256_of(b"other");
        assert_eq!(
            kind(&by_blob(&tar, &plain, true).unwrap_err()),
            Mismatch::DiffId
        );
        // The blob itself is checked as ever.
        let mut corrupt = blob.clone();
        corrupt[blob.len() / 2] ^= 1;
        assert!(by_blob(&corrupt, &info, true).is_err());
        let short = &blob[..blob.len() - 1];
        assert_eq!(
            kind(&by_blob(short, &info, true).unwrap_err()),
            Mismatch::BlobSize
        );
    }
}
