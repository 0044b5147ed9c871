//! Streaming a layer straight into an ordered sink while it downloads.
//!
//! An ordered sink (a tarball, a rootfs) takes layers bottom to top, but
//! layers download in parallel. A layer that is not yet the sink's next one
//! spools its tar to a temp file; the one the sink is waiting for skips the
//! temp file and hands its bytes over as they are decompressed. A layer that
//! becomes the next one halfway through hands over what it has spooled so
//! far, then the rest live.
//!
//! Nothing unverified is ever taken as final: the stream's last read returns
//! end-of-file only after the blob digest, size and diff_id have checked
//! out, and an error otherwise, so a sink that reads to the end before
//! committing its output commits only verified bytes.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use tokio::sync::mpsc::{Receiver, Sender, channel};

use crate::error::Error;
use crate::image::{Layer, LayerInfo, LiveTar};

/// Chunks of decompressed tar in flight between a layer's writer and the
/// sink: bounds memory to a few MiB per streamed layer.
const STREAM_CHUNKS: usize = 8;
/// Bytes per chunk handed to the sink.
const CHUNK: usize = 256 << 10;

/// The meeting point of one layer's writer and the pipeline.
pub(crate) struct Handoff {
    next: AtomicBool,
    deliver: Mutex<Option<tokio::sync::oneshot::Sender<Layer>>>,
}

impl Handoff {
    /// A handoff and the receiver the pipeline waits on for the streamed
    /// layer. The receiver sees the sender dropped when the writer finished
    /// without streaming (the layer then comes back as a file, as usual).
    pub(crate) fn new() -> (Handoff, tokio::sync::oneshot::Receiver<Layer>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Handoff {
                next: AtomicBool::new(false),
                deliver: Mutex::new(Some(tx)),
            },
            rx,
        )
    }

    /// Says that the sink is now waiting for this layer.
    pub(crate) fn set_next(&self) {
        self.next.store(true, Ordering::Release);
    }

    pub(crate) fn is_next(&self) -> bool {
        self.next.load(Ordering::Acquire)
    }

    /// Gives up streaming: the pipeline will wait for the finished file.
    pub(crate) fn close(&self) {
        if let Ok(mut d) = self.deliver.lock() {
            d.take();
        }
    }
}

/// A layer's uncompressed tar as it arrives. See the module documentation
/// for when end-of-file is returned.
pub(crate) struct TarStream {
    /// What was spooled before the layer became the next one, and the temp
    /// file's owner (deleted when the stream is dropped).
    spooled: Option<(io::Take<File>, tempfile::TempPath)>,
    rx: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
    /// Read chunks go back to the writer to be filled again: a fresh 256 KiB
    /// buffer per chunk, freed on another thread, makes the allocator hand
    /// pages back and fault them in again (some 100,000 page faults per GiB).
    used: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
}

impl std::fmt::Debug for TarStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TarStream").finish_non_exhaustive()
    }
}

impl TarStream {
    /// Waits for the next live chunk; `false` at verified end-of-file.
    fn next_chunk(&mut self) -> io::Result<bool> {
        if self.done {
            return Ok(false);
        }
        let got = self.rx.blocking_recv();
        self.take_chunk(got)
    }

    fn take_chunk(&mut self, got: Option<io::Result<Vec<u8>>>) -> io::Result<bool> {
        match got {
            Some(Ok(v)) if v.is_empty() => {
                self.done = true;
                Ok(false)
            }
            Some(Ok(v)) => {
                let read = std::mem::replace(&mut self.current, v);
                if let Some(back) = &self.used
                    && read.capacity() == CHUNK
                {
                    // A writer that is done or has enough spares drops it.
                    let _ = back.try_send(read);
                }
                self.pos = 0;
                Ok(true)
            }
            Some(Err(e)) => Err(e),
            None => Err(io::Error::other(
                "layer stream ended before it was verified",
            )),
        }
    }

    /// The next bytes for an async reader: the spooled part read on a
    /// blocking thread a chunk at a time, the live part as it arrives.
    async fn next_async(mut self) -> Option<(io::Result<Bytes>, TarStream)> {
        if let Some((mut head, path)) = self.spooled.take() {
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; CHUNK];
                let n = head.read(&mut buf);
                (
                    n.map(|n| {
                        buf.truncate(n);
                        buf
                    }),
                    head,
                    path,
                )
            })
            .await;
            match read {
                Ok((Ok(buf), head, path)) if !buf.is_empty() => {
                    self.spooled = Some((head, path));
                    return Some((Ok(Bytes::from(buf)), self));
                }
                Ok((Ok(_), _, _)) => {}
                Ok((Err(e), _, _)) => return Some((Err(e), self.failed())),
                Err(e) => return Some((Err(io::Error::other(e)), self.failed())),
            }
        }
        if self.pos < self.current.len() {
            let rest = Bytes::from(std::mem::take(&mut self.current)).slice(self.pos..);
            self.pos = 0;
            return Some((Ok(rest), self));
        }
        if self.done {
            return None;
        }
        let got = self.rx.recv().await;
        match self.take_chunk(got) {
            Ok(true) => {
                let chunk = Bytes::from(std::mem::take(&mut self.current));
                Some((Ok(chunk), self))
            }
            Ok(false) => None,
            Err(e) => Some((Err(e), self.failed())),
        }
    }

    fn failed(mut self) -> TarStream {
        self.done = true;
        self.current.clear();
        self.pos = 0;
        self
    }
}

impl LiveTar for TarStream {
    fn copy_to_file(&mut self, out: &mut File) -> io::Result<u64> {
        let mut n = 0;
        if let Some((mut head, path)) = self.spooled.take() {
            n += io::copy(&mut head, out)?;
            drop(path);
        }
        loop {
            if self.pos < self.current.len() {
                out.write_all(&self.current[self.pos..])?;
                n += (self.current.len() - self.pos) as u64;
                self.pos = self.current.len();
            }
            if !self.next_chunk()? {
                return Ok(n);
            }
        }
    }

    fn into_chunks(self: Box<Self>) -> BoxStream<'static, io::Result<Bytes>> {
        Box::pin(futures_util::stream::unfold(*self, TarStream::next_async))
    }
}

impl Read for TarStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((head, _)) = &mut self.spooled {
            let n = head.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            self.spooled = None;
        }
        while self.pos >= self.current.len() {
            if !self.next_chunk()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Where a layer's writer puts the decompressed tar: a temp file until the
/// sink is waiting for the layer, the sink after that.
pub(crate) struct LayerOut<'a> {
    handoff: Option<&'a Handoff>,
    info: &'a LayerInfo,
    spool: Option<io::BufWriter<tempfile::NamedTempFile>>,
    live: Option<Sender<io::Result<Vec<u8>>>>,
    /// Chunks the reader is done with, to fill again.
    spare: Option<std::sync::mpsc::Receiver<Vec<u8>>>,
    /// The chunk being filled for the sink: `CHUNK` bytes long while live,
    /// its first `filled` bytes written.
    chunk: Vec<u8>,
    filled: usize,
    written: u64,
    /// The sink stopped reading: the rest is only hashed, so that a corrupt
    /// blob is still reported as such rather than as the sink's parse error.
    abandoned: bool,
}

/// What a layer's writer produced.
pub(crate) enum Spooled {
    /// The whole tar, in a temp file.
    File(tempfile::TempPath),
    /// Handed to the sink as it arrived.
    Streamed(Sender<io::Result<Vec<u8>>>),
    /// Nothing was kept (the sink did not ask for the tar).
    Nothing,
    /// The sink stopped reading the stream partway.
    Abandoned,
}

impl<'a> LayerOut<'a> {
    /// `keep` says whether the sink wants the tar at all; `handoff` is set
    /// when it may take the layer as a stream.
    pub(crate) fn new(
        keep: bool,
        handoff: Option<&'a Handoff>,
        info: &'a LayerInfo,
        temp_dir: &'a std::path::Path,
    ) -> io::Result<Self> {
        let mut out = LayerOut {
            handoff,
            info,
            spool: None,
            live: None,
            spare: None,
            chunk: Vec::new(),
            filled: 0,
            written: 0,
            abandoned: false,
        };
        if keep && !out.try_go_live()? {
            out.spool = Some(io::BufWriter::with_capacity(
                CHUNK,
                tempfile::Builder::new()
                    .prefix("tar-")
                    .tempfile_in(temp_dir)?,
            ));
        }
        Ok(out)
    }

    /// Switches to handing bytes to the sink if it is waiting for this layer.
    fn try_go_live(&mut self) -> io::Result<bool> {
        let Some(h) = self.handoff else {
            return Ok(false);
        };
        if !h.is_next() {
            return Ok(false);
        }
        let Some(deliver) = h.deliver.lock().ok().and_then(|mut d| d.take()) else {
            return Ok(false);
        };
        let spooled = match self.spool.take() {
            Some(w) => {
                let temp = w.into_inner().map_err(|e| e.into_error())?;
                let (file, path) = temp.into_parts();
                let mut file = file;
                use std::io::Seek;
                file.seek(io::SeekFrom::Start(0))?;
                Some((file.take(self.written), path))
            }
            None => None,
        };
        let (tx, rx) = channel(STREAM_CHUNKS);
        let (used, spare) = std::sync::mpsc::sync_channel(STREAM_CHUNKS);
        let layer = Layer::live(
            self.info.clone(),
            Box::new(TarStream {
                spooled,
                rx,
                current: Vec::new(),
                pos: 0,
                done: false,
                used: Some(used),
            }),
        );
        // The pipeline may have gone (a failed run); then nobody reads.
        deliver
            .send(layer)
            .map_err(|_| io::Error::other("the run stopped waiting for this layer"))?;
        self.chunk = vec![0; CHUNK];
        self.filled = 0;
        self.live = Some(tx);
        self.spare = Some(spare);
        self.handoff = None;
        Ok(true)
    }

    /// Where the reader may put the next bytes for the sink, when the layer
    /// streams to it live: the chunk itself, so they are not copied again.
    /// Say how many it wrote with [`LayerOut::filled_live`].
    pub(crate) fn live_room(&mut self) -> io::Result<Option<&mut [u8]>> {
        if self.spool.is_some() {
            self.try_go_live()?;
        }
        if self.spool.is_some() || self.live.is_none() || self.abandoned {
            return Ok(None);
        }
        Ok(Some(&mut self.chunk[self.filled..]))
    }

    /// `n` bytes were put in the [`LayerOut::live_room`].
    pub(crate) fn filled_live(&mut self, n: usize) -> io::Result<()> {
        self.filled = (self.filled + n).min(CHUNK);
        self.written += n as u64;
        if self.filled == CHUNK {
            self.send_chunk()?;
        }
        Ok(())
    }

    fn send_chunk(&mut self) -> io::Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        // A chunk comes back as long as the reader got it, which is full
        // but for a layer's last.
        let next = self
            .spare
            .as_ref()
            .and_then(|s| s.try_recv().ok())
            .map(|mut v| {
                v.resize(CHUNK, 0);
                v
            })
            .unwrap_or_else(|| vec![0; CHUNK]);
        let mut full = std::mem::replace(&mut self.chunk, next);
        full.truncate(self.filled);
        self.filled = 0;
        if let Some(tx) = &self.live
            && tx.blocking_send(Ok(full)).is_err()
        {
            self.live = None;
            self.abandoned = true;
        }
        Ok(())
    }

    /// Flushes and says where the tar went. Closes the handoff, so the
    /// pipeline waits for the file instead.
    pub(crate) fn finish(mut self) -> io::Result<(Spooled, u64)> {
        if let Some(h) = self.handoff {
            h.close();
        }
        let written = self.written;
        if self.abandoned {
            return Ok((Spooled::Abandoned, written));
        }
        if self.live.is_some() {
            self.send_chunk()?;
            // The last chunk can find the sink gone (an interrupted run).
            return Ok(match self.live.take() {
                Some(tx) => (Spooled::Streamed(tx), written),
                None => (Spooled::Abandoned, written),
            });
        }
        match self.spool.take() {
            Some(w) => {
                let temp = w.into_inner().map_err(|e| e.into_error())?;
                Ok((Spooled::File(temp.into_temp_path()), written))
            }
            None => Ok((Spooled::Nothing, written)),
        }
    }
}

impl Drop for LayerOut<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.handoff {
            h.close();
        }
    }
}

impl Write for LayerOut<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.spool.is_some() {
            self.try_go_live()?;
        }
        if let Some(w) = &mut self.spool {
            w.write_all(buf)?;
        } else if self.live.is_some() && !self.abandoned {
            let n = buf.len().min(CHUNK - self.filled);
            self.chunk[self.filled..self.filled + n].copy_from_slice(&buf[..n]);
            self.filled_live(n)?;
            return Ok(n);
        }
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.spool {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// Ends a streamed layer: end-of-file when `verified` is Ok, a copy of the
/// error (the same [`Error`] variant and kind) otherwise.
pub(crate) fn end_stream(tx: Sender<io::Result<Vec<u8>>>, verified: Result<(), &Error>) {
    // A sink that already stopped reading has its own error to report.
    let _ = tx.blocking_send(match verified {
        Ok(()) => Ok(Vec::new()),
        Err(e) => Err(crate::verify::duplicate(e)),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn info() -> LayerInfo {
        LayerInfo {
            index: 0,
            digest: Digest::sha256_of(b"x"),
            size: 1,
            media_type: crate::image::media_type::OCI_LAYER_GZIP.into(),
            diff_id: Digest::sha256_of(b"x"),
        }
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Writes `before` bytes, makes the layer the next one, writes the rest;
    /// returns the delivered stream and what the writer reported.
    fn promote_midway(
        before: usize,
        total: &[u8],
        verified: Result<(), Error>,
    ) -> (Box<dyn LiveTar>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (h, mut rx) = Handoff::new();
        let info = info();
        let mut out = LayerOut::new(true, Some(&h), &info, dir.path()).unwrap();
        out.write_all(&total[..before]).unwrap();
        assert!(rx.try_recv().is_err(), "not the next layer yet");
        h.set_next();
        out.write_all(&total[before..]).unwrap();
        let (spooled, n) = out.finish().unwrap();
        assert_eq!(n, total.len() as u64);
        let Spooled::Streamed(tx) = spooled else {
            panic!("expected a streamed layer")
        };
        end_stream(tx, verified.as_ref().map(|_| ()));
        let layer = rx.try_recv().expect("stream delivered");
        assert!(layer.tar.is_none());
        (layer.take_live().unwrap(), dir)
    }

    #[test]
    fn a_sink_gone_before_the_last_chunk_abandons_the_layer() {
        let dir = tempfile::tempdir().unwrap();
        let (h, mut rx) = Handoff::new();
        let info = info();
        let mut out = LayerOut::new(true, Some(&h), &info, dir.path()).unwrap();
        h.set_next();
        out.write_all(&data(4 << 10)).unwrap();
        // The sink took the live layer and went away (an interrupted run).
        drop(rx.try_recv().expect("the layer went live"));
        let (spooled, n) = out.finish().unwrap();
        assert_eq!(n, 4 << 10);
        assert!(matches!(spooled, Spooled::Abandoned));
    }

    #[test]
    fn spooled_part_then_live_part_in_order() {
        let total = data(700 << 10);
        let (mut s, dir) = promote_midway(300 << 10, &total, Ok(()));
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert!(got == total, "bytes differ");
        drop(s);
        // The spool file is gone once read.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn copy_to_file_gives_the_same_bytes() {
        let total = data(600 << 10);
        let (mut s, dir) = promote_midway(100 << 10, &total, Ok(()));
        let path = dir.path().join("out");
        let mut f = File::create(&path).unwrap();
        assert_eq!(s.copy_to_file(&mut f).unwrap(), total.len() as u64);
        assert!(std::fs::read(&path).unwrap() == total);
    }

    #[test]
    fn failed_verification_is_an_error_at_the_end() {
        let total = data(10_000);
        let mismatch = Error::DigestMismatch {
            kind: crate::error::Mismatch::DiffId,
            what: "layer 0".into(),
            expected: Digest::sha256_of(b"a"),
            found: Digest::sha256_of(b"b"),
        };
        let (mut s, _dir) = promote_midway(0, &total, Err(mismatch));
        let mut got = Vec::new();
        let e = Error::stream("reading", s.read_to_end(&mut got).unwrap_err());
        assert!(
            matches!(
                e,
                Error::DigestMismatch {
                    kind: crate::error::Mismatch::DiffId,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn writer_gone_without_verdict_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (h, mut rx) = Handoff::new();
        h.set_next();
        let info = info();
        let mut out = LayerOut::new(true, Some(&h), &info, dir.path()).unwrap();
        out.write_all(&data(1000)).unwrap();
        drop(out.finish().unwrap());
        let mut s = rx.try_recv().unwrap().take_live().unwrap();
        let e = s.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("before it was verified"), "{e}");
    }

    #[test]
    fn finished_before_its_turn_comes_back_as_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let (h, mut rx) = Handoff::new();
        let info = info();
        let mut out = LayerOut::new(true, Some(&h), &info, dir.path()).unwrap();
        out.write_all(&data(5000)).unwrap();
        let (spooled, _) = out.finish().unwrap();
        assert!(matches!(spooled, Spooled::File(_)));
        // The pipeline sees the handoff closed and waits for the file.
        assert!(matches!(
            rx.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ));
    }

    #[test]
    fn sink_that_stops_reading_is_noticed_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let (h, mut rx) = Handoff::new();
        h.set_next();
        let info = info();
        let mut out = LayerOut::new(true, Some(&h), &info, dir.path()).unwrap();
        drop(rx.try_recv().unwrap());
        // Far more than the channel holds: would block if still sending.
        out.write_all(&data(8 << 20)).unwrap();
        let (spooled, n) = out.finish().unwrap();
        assert!(matches!(spooled, Spooled::Abandoned));
        assert_eq!(n, 8 << 20);
    }
}
