//! A layer's blob handed to a sink as it downloads
//! ([`AsyncSink::takes_live_blob`](crate::sink::AsyncSink::takes_live_blob)).
//!
//! The layer's verifying thread writes the blob, as it arrives, to a temp
//! file and says how much is in it; the sink's stream reads the file behind
//! it. So the download never waits for the sink (an upload that waits for
//! a worker, or is slower), memory stays a chunk per reader, and a sink
//! whose upload broke part-way starts again from the whole file once the
//! layer is verified ([`LiveBlob::file`]). The stream's end comes only
//! after the verdict: the blob's size and digest (nothing is decompressed,
//! see [`crate::verify::VerifiedTar::blob_only`]).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, oneshot, watch};

use super::deliver::{self, StopOnDrop};
use crate::error::{Error, Result};
use crate::image::{FileSlice, Layer, LayerInfo, LiveBlob};
use crate::source::{FetchContext, LayerBlob, Source};

/// Bytes the writer gathers before it writes them and tells the reader.
const STEP: usize = 256 << 10;
/// Bytes the reader hands over at most per chunk (larger chunks gave no
/// speed, only a higher peak RSS).
const CHUNK: u64 = 256 << 10;

/// How far the writer got, and its verdict once done.
#[derive(Clone, Default)]
struct Progress {
    written: u64,
    end: Option<Arc<Result<()>>>,
}

/// Fetches one layer and gives it back as soon as its download started,
/// its blob live (see the module documentation); the layer's verifying
/// thread holds `permit` (one of the run's `-j` download slots) until it
/// is done. A blob that lies in a local file, or whose digest only its
/// bytes tell (a docker-save member), comes back as a verified file.
pub(super) async fn fetch(
    source: &dyn Source,
    info: &LayerInfo,
    ctx: &FetchContext,
    permit: OwnedSemaphorePermit,
) -> Result<Layer> {
    ctx.reporter.layer_started(info);
    let blob = source.fetch(info, ctx).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let reporter = ctx.reporter.clone();
    let temp = ctx.temp_dir.clone();
    let index = info.index;
    if blob.in_place.is_some() || !blob.digest_known {
        let _stop = StopOnDrop(stop.clone());
        let layer = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            deliver::verify_blob_only(blob, &temp, None, reporter, stop)
        })
        .await
        .map_err(super::join_error)??;
        ctx.reporter.layer_done(index);
        return Ok(layer);
    }
    let spool = tempfile::Builder::new()
        .prefix("blob-")
        .tempfile_in(&temp)
        .map_err(|e| Error::io("creating temp file in", &temp, e))?;
    let reading = spool
        .as_file()
        .try_clone()
        .map_err(|e| Error::io("opening", spool.path(), e))?;
    let (progress, watching) = watch::channel(Progress::default());
    let progress = Arc::new(progress);
    let (file_tx, file_rx) = oneshot::channel();
    let layer_info = blob.info.clone();
    let done_reporter = ctx.reporter.clone();
    let stopper = Arc::new(StopOnDrop(stop.clone()));
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let result = spool_and_verify(blob, spool, progress.clone(), reporter, stop);
        let (end, file) = match result {
            Ok(file) => {
                // Before the verdict, which lets the run finish.
                done_reporter.layer_done(index);
                (Ok(()), Ok(file))
            }
            Err(e) => {
                let copy = Error::stream("verifying", crate::verify::duplicate(&e));
                (Err(e), Err(copy))
            }
        };
        progress.send_modify(|p| p.end = Some(Arc::new(end)));
        let _ = file_tx.send(file);
    });
    let live = live_parts(reading, watching, file_rx, stopper);
    Ok(Layer::live_blob(layer_info, live))
}

/// The sink's two handles on a spooling layer; both hold `stopper`, so the
/// download stops once the sink dropped both.
fn live_parts(
    reading: File,
    watching: watch::Receiver<Progress>,
    file_rx: oneshot::Receiver<Result<FileSlice>>,
    stopper: Arc<StopOnDrop>,
) -> LiveBlob {
    let holder = stopper.clone();
    let file = Box::pin(async move {
        let _holder = holder;
        file_rx.await.unwrap_or_else(|_| {
            Err(Error::stream(
                "verifying",
                io::Error::other("layer stopped before it was verified"),
            ))
        })
    });
    let state = Reader {
        file: Arc::new(reading),
        at: 0,
        watching,
        done: false,
        _stopper: stopper,
    };
    LiveBlob {
        chunks: Box::pin(futures_util::stream::unfold(state, Reader::next)),
        file,
    }
}

/// Reads the spool file behind its writer.
struct Reader {
    file: Arc<File>,
    at: u64,
    watching: watch::Receiver<Progress>,
    done: bool,
    _stopper: Arc<StopOnDrop>,
}

impl Reader {
    async fn next(mut self) -> Option<(io::Result<Bytes>, Reader)> {
        if self.done {
            return None;
        }
        loop {
            let now = self.watching.borrow_and_update().clone();
            if self.at < now.written {
                let want = (now.written - self.at).min(CHUNK) as usize;
                let (file, at) = (self.file.clone(), self.at);
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; want];
                    file.read_exact_at(&mut buf, at).map(|()| buf)
                })
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
                return Some(match read {
                    Ok(buf) => {
                        self.at += buf.len() as u64;
                        (Ok(Bytes::from(buf)), self)
                    }
                    Err(e) => self.fail(e),
                });
            }
            match now.end.as_deref() {
                Some(Ok(())) => return None,
                Some(Err(e)) => return Some(self.fail(crate::verify::duplicate(e))),
                None => {}
            }
            if self.watching.changed().await.is_err() {
                let e = io::Error::other("layer stream ended before it was verified");
                return Some(self.fail(e));
            }
        }
    }

    fn fail(mut self, e: io::Error) -> (io::Result<Bytes>, Reader) {
        self.done = true;
        (Err(e), self)
    }
}

/// On the layer's blocking thread: reads the blob through the verifier
/// (size and digest), spooling it to `spool` and telling the reader how far
/// it got; returns the verified file.
fn spool_and_verify(
    blob: LayerBlob,
    spool: tempfile::NamedTempFile,
    progress: Arc<watch::Sender<Progress>>,
    reporter: Arc<dyn crate::progress::Reporter>,
    stop: Arc<AtomicBool>,
) -> Result<FileSlice> {
    let writing = spool
        .as_file()
        .try_clone()
        .map_err(|e| Error::io("writing", spool.path(), e))?;
    let blob = blob.map_reader(|reader| -> Result<Box<dyn Read + Send>> {
        Ok(Box::new(SpoolTee {
            inner: reader,
            file: writing,
            buf: Vec::with_capacity(STEP),
            written: 0,
            progress,
        }))
    })?;
    let (mut verified, _, label) =
        deliver::open(blob, reporter, stop, crate::verify::Checks::BlobAsStored)?;
    io::copy(&mut verified, &mut io::sink())
        .map_err(|e| Error::stream(format!("reading {label}"), e))?;
    Ok(FileSlice::temp(
        spool.into_temp_path(),
        verified.info().size,
    ))
}

/// Copies what it reads into the spool file, a step at a time, and says
/// how much the file holds.
struct SpoolTee<R> {
    inner: R,
    file: File,
    buf: Vec<u8>,
    written: u64,
    progress: Arc<watch::Sender<Progress>>,
}

impl<R> SpoolTee<R> {
    fn flush_step(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        let written = self.written;
        self.progress.send_modify(|p| p.written = written);
        Ok(())
    }
}

impl<R: Read> Read for SpoolTee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.buf.extend_from_slice(&buf[..n]);
        if n == 0 || self.buf.len() >= STEP {
            self.flush_step()?;
        }
        Ok(n)
    }
}
