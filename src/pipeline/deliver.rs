//! One layer's way from its source's bytes to a [`Layer`]: through the
//! verifier, into a spooled temp file, to the sink live (see
//! [`super::handoff`]), or served where it lies once read to its end.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};
use crate::image::{Compression, FileSlice, Layer, LayerNeeds};
use crate::progress::Reporter;
use crate::sink::{BlobRegion, StageArea};
use crate::source::LayerBlob;
use crate::verify::{Checks, Expect, VerifiedTar};

use super::handoff::{self, Handoff, LayerOut, Spooled};

pub(super) const BUF: usize = 256 << 10;

/// The verifier over `blob`'s bytes, stoppable through `stop`; with where
/// the bytes lie locally and the layer's label; `checks` says what it checks.
pub(super) fn open(
    blob: LayerBlob,
    reporter: Arc<dyn Reporter>,
    stop: Arc<AtomicBool>,
    checks: Checks,
) -> Result<(VerifiedTar, Option<FileSlice>, String)> {
    let LayerBlob {
        info,
        reader,
        in_place,
        digest_known,
        prehashed,
        label,
    } = blob;
    let reader: Box<dyn Read + Send> = Box::new(Stoppable {
        inner: reader,
        stop,
    });
    let expect = Expect {
        info,
        digest_known,
        prehashed,
    };
    let verified = VerifiedTar::open(reader, expect, label.clone(), reporter, checks)?;
    Ok((verified, in_place, label))
}

/// Runs a sink's per-layer `work` over `blob`'s verified tar as it arrives,
/// then reads the rest: the layer's verdict is the last read. `info` is the
/// image's descriptor, which the work names the layer by.
pub(crate) fn work_layer(
    blob: LayerBlob,
    info: &crate::image::LayerInfo,
    work: &crate::sink::LayerWork,
    checks: Checks,
    reporter: Arc<dyn Reporter>,
    stop: Arc<AtomicBool>,
) -> Result<Layer> {
    let (mut verified, _, label) = open(blob, reporter, stop, checks)?;
    work(&mut verified, info)?;
    io::copy(&mut verified, &mut io::sink())
        .map_err(|e| Error::stream(format!("reading {label}"), e))?;
    Ok(Layer::files(verified.info().clone(), None, None))
}

/// Reads `blob` to its end through the verifier and returns the layer in
/// the forms `needs` asks for. With a `handoff`, the tar goes to the sink
/// live once the sink waits for this layer; the returned layer then has no
/// tar (the sink took the live one from the handoff). `passing` is what
/// the filters do to the tar on its way: observe it (see
/// [`super::observe`]) or rewrite it (see [`super::rewrite`]).
pub(crate) fn verify_layer(
    blob: LayerBlob,
    needs: LayerNeeds,
    to: To<'_>,
    passing: &super::Passing,
    reporter: Arc<dyn Reporter>,
    stop: Arc<AtomicBool>,
) -> Result<Layer> {
    let how = How {
        needs,
        handoff: to.handoff,
        passing,
        checks: Checks::Full,
        region: None,
        stage: to.stage,
    };
    verify(blob, how, to.temp_dir, reporter, stop)
}

/// Where [`verify_layer`] may put a layer: temp files, the sink live, or
/// the sink's stage area (a layer not yet the sink's next one is then
/// extracted ahead, see [`crate::layer::stage_layer`]).
pub(crate) struct To<'a> {
    pub(crate) temp_dir: &'a Path,
    pub(crate) handoff: Option<&'a Handoff>,
    pub(crate) stage: Option<&'a StageArea>,
}

/// A blob for a sink that reads only the blob, with no filter: verified by
/// its size and digest, as a file (the source's own, the sink's `region` of
/// its output, or a temp file).
pub(super) fn verify_blob_only(
    blob: LayerBlob,
    temp_dir: &Path,
    region: Option<BlobRegion>,
    reporter: Arc<dyn Reporter>,
    stop: Arc<AtomicBool>,
) -> Result<Layer> {
    let passing = super::Passing {
        observers: Arc::new([]),
        rewrite: None,
        info: blob.info.clone(),
    };
    let how = How {
        needs: LayerNeeds::BLOB,
        handoff: None,
        passing: &passing,
        checks: Checks::BlobAsStored,
        region,
        stage: None,
    };
    verify(blob, how, temp_dir, reporter, stop)
}

/// What [`verify`] makes of a layer.
struct How<'a> {
    needs: LayerNeeds,
    handoff: Option<&'a Handoff>,
    passing: &'a super::Passing,
    checks: Checks,
    /// Where the blob goes in the sink's output, if the sink gave a place.
    region: Option<BlobRegion>,
    stage: Option<&'a StageArea>,
}

/// Where the blob as stored is kept while it is verified.
enum BlobCopy {
    Temp(tempfile::NamedTempFile),
    Region(BlobRegion),
}

fn verify(
    blob: LayerBlob,
    how: How<'_>,
    temp_dir: &Path,
    reporter: Arc<dyn Reporter>,
    stop: Arc<AtomicBool>,
) -> Result<Layer> {
    let How {
        needs,
        handoff,
        passing,
        checks,
        region,
        stage,
    } = how;
    // The blob as stored, when asked for and not already in a file.
    let blob_copy = match region {
        _ if !needs.blob || blob.in_place.is_some() => None,
        Some(r) => Some(BlobCopy::Region(r)),
        None => Some(BlobCopy::Temp(temp_file(temp_dir, "blob-")?)),
    };
    let blob = match &blob_copy {
        Some(copy) => blob.map_reader(|reader| -> Result<Box<dyn Read + Send>> {
            let to: Box<dyn Write + Send> = match copy {
                BlobCopy::Temp(f) => Box::new(
                    f.as_file()
                        .try_clone()
                        .map_err(|e| Error::io("writing", f.path(), e))?,
                ),
                BlobCopy::Region(r) => Box::new(RegionWriter {
                    file: r.file.clone(),
                    at: r.offset,
                    end: r.offset + r.len,
                }),
            };
            Ok(Box::new(Tee {
                inner: reader,
                copy: BufWriter::with_capacity(BUF, to),
            }))
        })?,
        None => blob,
    };
    let (mut verified, in_place, label) = open(blob, reporter, stop, checks)?;
    // The pipeline offers a stage only to a run that reads the tar alone,
    // with no filter. Decided once: a layer that becomes the next one while
    // it is staged is applied from its staged files when done.
    if let (Some(area), Some(h)) = (stage, handoff)
        && !h.is_next()
    {
        h.close();
        return stage_tar(verified, area, &label);
    }
    // A plain tar in a local file is served where it lies once verified.
    let tar_in_place = in_place
        .as_ref()
        .filter(|_| verified.compression() == Compression::None);
    // A rewritten tar is a new file, wherever the source's lies.
    let keep_tar = needs.tar && (tar_in_place.is_none() || passing.rewrite.is_some());
    // A reader of both forms reads files.
    let handoff = handoff.filter(|_| keep_tar && !needs.blob);
    let live_info = verified.info().clone();
    let out = LayerOut::new(keep_tar, handoff, &live_info, temp_dir)
        .map_err(|e| Error::io("creating temp file in", temp_dir, e))?;
    let (result, out, rewritten) = pass(&mut verified, out, passing, &label);
    let (spooled, tar_size) = out
        .finish()
        .map_err(|e| Error::stream(format!("writing {label}"), e))?;
    let tar = match spooled {
        Spooled::Streamed(tx) => {
            handoff::end_stream(tx, result.as_ref().map(|_| ()));
            None
        }
        Spooled::File(path) => Some(FileSlice::temp(path, tar_size)),
        Spooled::Nothing => tar_in_place.filter(|_| needs.tar).cloned(),
        Spooled::Abandoned => {
            result?;
            // BrokenPipe tells the pipeline to report the sink's own error.
            return Err(Error::stream(
                format!("streaming {label}"),
                io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the output stopped reading this layer",
                ),
            ));
        }
    };
    result?;
    let blob = match blob_copy {
        Some(BlobCopy::Temp(f)) => Some(FileSlice::temp(f.into_temp_path(), verified.info().size)),
        Some(BlobCopy::Region(r)) => Some(FileSlice::range(r.path, r.offset, verified.info().size)),
        None if needs.blob => in_place,
        None => None,
    };
    let mut info = verified.info().clone();
    if let Some((diff_id, size)) = rewritten {
        // A rewritten layer exists only as a tar; that is its blob too.
        info.digest = diff_id.clone();
        info.diff_id = diff_id;
        info.size = size;
        info.media_type = crate::image::media_type::OCI_LAYER_TAR.to_string();
    }
    Ok(Layer::files(info, tar, blob))
}

/// Extracts the verified tar ahead into the sink's stage area, its skeleton
/// into a temp file there; the verdict is the stager's last read.
fn stage_tar(mut verified: VerifiedTar, area: &StageArea, label: &str) -> Result<Layer> {
    // Beside the staged files: a sink that keeps the tar links it from there.
    let skeleton = temp_file(area.dir.path(), ".skeleton-")?;
    let out = skeleton
        .as_file()
        .try_clone()
        .map_err(|e| Error::io("writing", skeleton.path(), e))?;
    let opts = crate::layer::ExtractOptions {
        whiteouts: area.whiteouts,
        skip_unsafe: false,
        layer_name: (area.layer_name)(verified.info()),
        cancel: crate::cancel::CancelToken::new(),
    };
    let staged = crate::layer::stage_layer(&mut verified, &area.dir, out, area.keep_tar, &opts);
    let files = match staged {
        Ok(files) => files,
        Err(e) => {
            // A damaged download shows as a bad tar: its verdict says why.
            io::copy(&mut verified, &mut io::sink())
                .map_err(|v| Error::stream(format!("reading {label}"), v))?;
            return Err(e);
        }
    };
    let len = skeleton
        .as_file()
        .metadata()
        .map_err(|e| Error::io("reading", skeleton.path(), e))?
        .len();
    tracing::debug!("{label}: extracted ahead into {}", files.path().display());
    let skeleton = FileSlice::temp(skeleton.into_temp_path(), len);
    let tar = area.keep_tar.then(|| skeleton.clone());
    let mut layer = Layer::files(verified.info().clone(), tar, None);
    layer.staged = Some(Arc::new(crate::image::StagedTar { skeleton, files }));
    Ok(layer)
}

/// Takes the verified tar through what the filters do on its way into
/// `out`: returns the result (an observer's or the rewrite's error, which
/// fails the layer before a live sink sees its end), the output, and the
/// rewritten tar's diff_id and size if it was changed.
fn pass<'a>(
    verified: &mut VerifiedTar,
    out: LayerOut<'a>,
    passing: &super::Passing,
    label: &str,
) -> (
    Result<()>,
    LayerOut<'a>,
    Option<(crate::digest::Digest, u64)>,
) {
    if let Some(make) = &passing.rewrite {
        return super::rewrite::pump_rewritten(verified, out, make, label);
    }
    let (pumped, out, observed) = if passing.observers.is_empty() {
        let (pumped, out) = pump(verified, out);
        (pumped, out, Ok(()))
    } else {
        super::observe::pump_observed(verified, out, &passing.observers, &passing.info)
    };
    let result = pumped
        .map_err(|e| match e {
            PumpError::Read(e) => Error::stream(format!("reading {label}"), e),
            PumpError::Write(e) => Error::stream(format!("writing {label}"), e),
        })
        .and(observed);
    (result, out, None)
}

fn temp_file(dir: &Path, prefix: &str) -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempfile_in(dir)
        .map_err(|e| Error::io("creating temp file in", dir, e))
}

/// Which side of a copy failed.
pub(super) enum PumpError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies the verified tar into `out` in large blocks, so decompression
/// runs in long stretches; keeps read and write failures apart.
fn pump<'a>(r: &mut VerifiedTar, mut out: LayerOut<'a>) -> (Result<(), PumpError>, LayerOut<'a>) {
    let mut buf = vec![0u8; BUF];
    loop {
        // Live, the tar is read straight into the chunk the sink gets.
        let (n, live) = {
            let (dst, live) = match out.live_room() {
                Ok(Some(room)) => (room, true),
                Ok(None) => (&mut buf[..], false),
                Err(e) => return (Err(PumpError::Write(e)), out),
            };
            match r.read(dst) {
                Ok(0) => return (Ok(()), out),
                Ok(n) => (n, live),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return (Err(PumpError::Read(e)), out),
            }
        };
        let wrote = match live {
            true => out.filled_live(n),
            false => out.write_all(&buf[..n]),
        };
        if let Err(e) = wrote {
            return (Err(PumpError::Write(e)), out);
        }
    }
}

/// Copies everything read into a file: the blob as stored, kept while it
/// is verified.
struct Tee<R> {
    inner: R,
    copy: BufWriter<Box<dyn Write + Send>>,
}

/// Writes at a place in a file shared with other writers, never past `end`.
struct RegionWriter {
    file: Arc<File>,
    at: u64,
    end: u64,
}

impl Write for RegionWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if buf.len() as u64 > self.end.saturating_sub(self.at) {
            return Err(io::Error::other(
                "the blob runs past the size the manifest gives",
            ));
        }
        self.file.write_all_at(buf, self.at)?;
        self.at += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        if n == 0 {
            self.copy.flush()?;
        }
        Ok(n)
    }
}

/// Fails the next read once the run gave up on the layer, so that its
/// blocking thread stops and drops the source's reader (and with it, a
/// download).
struct Stoppable {
    inner: Box<dyn Read + Send>,
    stop: Arc<AtomicBool>,
}

impl Read for Stoppable {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("the run stopped"));
        }
        self.inner.read(buf)
    }
}

/// Sets the stop flag when dropped: held by the task that waits for the
/// layer, so that an aborted run stops reading.
pub(crate) struct StopOnDrop(pub(crate) Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
