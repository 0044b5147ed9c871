//! Filters' observers (`filter::Filter::observer`) run over a layer's tar
//! while the layer's verifying thread pumps it to the sink or its spool.
//!
//! Each observer reads on a thread of its own, fed the same chunks the
//! sink gets through a small bounded channel. An observer is pull-based
//! (it parses the tar through a `Read`), so two of them cannot share one
//! reader on one thread, and on a thread of its own its parsing runs beside
//! the decompression instead of after it. The channel is bounded, so a slow
//! observer slows the layer down rather than buffering it; one that is done
//! early (a search past the end-of-archive blocks) drops its end and is fed
//! no more.
//!
//! An observer sees end-of-file only once the verifier did, and an error if
//! the layer failed; its own error fails the layer before the sink is told
//! the stream ended, so a sink reading the layer live never commits it.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::filter::LayerObserver;
use crate::image::LayerInfo;
use crate::verify::VerifiedTar;

use super::deliver::{BUF, PumpError};
use super::handoff::LayerOut;

/// Chunks in flight to each observer.
const CHUNKS: usize = 4;

/// What [`pump_observed`] ended with: the copy's result, the output back,
/// and the first observer's error.
pub(crate) type Observed<'a> = (std::result::Result<(), PumpError>, LayerOut<'a>, Result<()>);

/// Copies the verified tar into `out` as `deliver::pump` does, and feeds
/// every observer the same bytes; `info` is the image's descriptor, which
/// the observers name the layer by.
pub(crate) fn pump_observed<'a>(
    r: &mut VerifiedTar,
    out: LayerOut<'a>,
    observers: &[LayerObserver],
    info: &LayerInfo,
) -> Observed<'a> {
    std::thread::scope(|s| {
        let mut feeds: Vec<Feed<'_>> = observers
            .iter()
            .map(|observe| {
                let (tx, rx) = sync_channel(CHUNKS);
                let observe = observe.clone();
                let info = info.clone();
                let thread = s.spawn(move || {
                    let mut reader = ChannelReader {
                        rx,
                        current: Bytes::new(),
                    };
                    observe(&mut reader, &info)
                });
                Feed {
                    tx: Some(tx),
                    thread: Some(thread),
                }
            })
            .collect();
        let (pumped, out, failed) = feed_all(r, out, &mut feeds);
        if pumped.is_err() || failed.is_some() {
            // Nobody takes a cut-short stream for a whole one.
            for f in &mut feeds {
                if let Some(tx) = f.tx.take() {
                    let _ = tx.send(Err(io::Error::other("the layer failed")));
                }
            }
        }
        let mut observed = failed.map_or(Ok(()), Err);
        for f in &mut feeds {
            // Dropping the sender is the observer's end-of-file.
            f.tx = None;
            let r = f.join();
            if observed.is_ok() {
                observed = r;
            }
        }
        (pumped, out, observed)
    })
}

/// One observer's channel and thread.
struct Feed<'s> {
    tx: Option<SyncSender<io::Result<Bytes>>>,
    thread: Option<std::thread::ScopedJoinHandle<'s, Result<()>>>,
}

impl Feed<'_> {
    /// Waits for the observer's verdict.
    fn join(&mut self) -> Result<()> {
        match self.thread.take().map(|t| t.join()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(Error::InvalidImage(
                "a filter's layer observer panicked".into(),
            )),
        }
    }
}

/// The pump itself: returns the copy's result, the output, and an
/// observer's error that stopped it.
fn feed_all<'a>(
    r: &mut VerifiedTar,
    mut out: LayerOut<'a>,
    feeds: &mut [Feed<'_>],
) -> (
    std::result::Result<(), PumpError>,
    LayerOut<'a>,
    Option<Error>,
) {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return (Ok(()), out, None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (Err(PumpError::Read(e)), out, None),
        };
        if let Err(e) = out.write_all(&buf[..n]) {
            return (Err(PumpError::Write(e)), out, None);
        }
        // One copy shared by every observer.
        let chunk = Bytes::copy_from_slice(&buf[..n]);
        for f in feeds.iter_mut() {
            let Some(tx) = &f.tx else { continue };
            if tx.send(Ok(chunk.clone())).is_err() {
                // The observer returned: done early, or failed.
                f.tx = None;
                if let Err(e) = f.join() {
                    return (Ok(()), out, Some(e));
                }
            }
        }
    }
}

/// An observer's view of the tar: the chunks as they come, end-of-file when
/// the pump drops its sender after the verifier's end-of-file.
struct ChannelReader {
    rx: Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => self.current = chunk,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}
