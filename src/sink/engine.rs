//! `docker://NAME[:TAG]` as a destination: the image loaded into a
//! container engine (Docker, Podman) through the Engine API.
//!
//! The sink writes the docker-save stream `tar://` writes (the same
//! [`SaveWriter`], RepoTags the destination's `NAME:TAG`) into the body of
//! one `POST /images/load`, as it is built: the sink's thread hands chunks
//! through a small bounded channel to the request, which runs on the
//! runtime the sink was opened in. No tarball is held in memory or staged
//! whole on disk. A layer that arrives as a verified file is sent from its
//! file; one that arrives live is first spooled to a temp file, since its
//! tar header must carry its size. Layers may come in any order (an
//! engine reads `manifest.json` only once it has the whole stream), so the
//! pipeline hands each over as soon as it is complete.
//!
//! The body ends cleanly only in `finish`, after the last member; a sink
//! dropped before that (a failed run) ends it with an error, which aborts
//! the request: the engine sees a cut-off stream and loads nothing.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::engine::{Body, Engine};
use crate::error::{Error, Result};
use crate::image::{FileSlice, Image, Layer, LayerInfo, LayerNeeds, LiveTar};
use crate::sink::docker_archive::{SaveOut, SaveWriter};
use crate::sink::{Sink, SinkReport};

/// Bytes per chunk handed to the request.
const CHUNK: usize = 1 << 20;

/// Chunks waiting for the request at most: with the one being filled,
/// memory stays a few MiB whatever the image's size.
const QUEUE: usize = 2;

/// How long the engine may take to read the next chunk.
const IDLE: Duration = Duration::from_secs(600);

/// How long the engine may take to say why it stopped reading.
const WHY: Duration = Duration::from_secs(60);

/// The load request while it runs: its answer is the engine's lines.
type Answer = JoinHandle<Result<Vec<String>>>;

/// Loads an image into the engine at a socket (see the module docs).
pub struct EngineSink {
    socket: PathBuf,
    /// `NAME:TAG`, the image's name in the engine.
    name: String,
    runtime: Handle,
    /// Where live layers are spooled.
    temp_dir: PathBuf,
    /// Set once `begin` started the request.
    started: Option<Started>,
}

struct Started {
    writer: SaveWriter<BodyWriter>,
    /// Set once every chunk is handed over: only then does the body end
    /// cleanly.
    complete: Arc<AtomicBool>,
    answer: Answer,
}

impl EngineSink {
    /// A sink loading into the engine at `socket` under `name`
    /// (`NAME[:TAG]`, `:latest` when no tag is given), its request run on
    /// `runtime`, live layers spooled in `temp_dir`. Nothing is asked of
    /// the engine before `begin`.
    pub fn new(socket: PathBuf, name: &str, runtime: Handle, temp_dir: PathBuf) -> Result<Self> {
        Ok(EngineSink {
            socket,
            name: destination_name(name)?,
            runtime,
            temp_dir,
            started: None,
        })
    }

    /// The name the image gets in the engine (a tag added when none was
    /// given).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn started(&mut self) -> Result<&mut Started> {
        self.started
            .as_mut()
            .ok_or_else(|| Error::InvalidImage("docker:// output: not begun".into()))
    }

    /// Runs one write of the stream; when it failed because the request
    /// stopped reading, the engine's answer says why.
    fn send(&mut self, f: impl FnOnce(&mut SaveWriter<BodyWriter>) -> Result<()>) -> Result<()> {
        let started = self.started()?;
        let result = f(&mut started.writer);
        match result {
            Err(e) if started.writer.out().is_closed() => Err(self.why_closed(e)),
            other => other,
        }
    }

    /// The engine's error after it stopped reading the stream; `e` when it
    /// gives none.
    fn why_closed(&mut self, e: Error) -> Error {
        let Some(started) = self.started.as_mut() else {
            return e;
        };
        let socket = self.socket.display().to_string();
        let answer = &mut started.answer;
        match self
            .runtime
            .block_on(async { tokio::time::timeout(WHY, answer).await })
        {
            Ok(Ok(Err(engine))) => engine,
            Ok(Ok(Ok(lines))) => Error::Engine {
                socket,
                operation: "load".into(),
                message: format!(
                    "the engine answered before the image was sent whole: {}",
                    lines.join("; ")
                ),
            },
            _ => e,
        }
    }

    /// Spools a live layer to a temp file, so that its header can carry
    /// its size.
    fn spool(&self, info: &LayerInfo, stream: &mut dyn LiveTar) -> Result<FileSlice> {
        let temp = tempfile::Builder::new()
            .prefix(".occystrap-load-")
            .tempfile_in(&self.temp_dir)
            .map_err(|e| Error::io("creating a temp file in", &self.temp_dir, e))?;
        let _cleanup = crate::cancel::remove_on_forced_exit(temp.path().to_path_buf(), false);
        let (mut file, path) = temp.into_parts();
        let len = stream.copy_to_file(&mut file).map_err(|e| {
            Error::stream(
                format!("spooling layer {} to {}", info.index, path.display()),
                e,
            )
        })?;
        Ok(FileSlice::temp(path, len))
    }
}

impl Sink for EngineSink {
    fn needs(&self) -> LayerNeeds {
        LayerNeeds::TAR
    }

    fn ordered(&self) -> bool {
        false
    }

    fn begin(&mut self, _image: &Image) -> Result<()> {
        let engine = self.runtime.block_on(Engine::connect(&self.socket))?;
        let complete = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(QUEUE);
        let body = body(rx, complete.clone());
        let answer = self.runtime.spawn(async move { engine.load(body).await });
        let out = BodyWriter {
            buf: BytesMut::with_capacity(CHUNK),
            tx,
            runtime: self.runtime.clone(),
        };
        self.started = Some(Started {
            writer: SaveWriter::new(out, &self.socket, "docker:// output"),
            complete,
            answer,
        });
        Ok(())
    }

    fn wants_layer(&mut self, layer: &LayerInfo) -> bool {
        self.started
            .as_mut()
            .is_none_or(|s| s.writer.wants_layer(layer))
    }

    fn layer(&mut self, layer: Layer) -> Result<()> {
        if self.started()?.writer.has(&layer.info.diff_id) {
            return Ok(());
        }
        if let Some(mut stream) = layer.take_live() {
            let spooled = self.spool(&layer.info, &mut *stream)?;
            return self.send(|w| w.slice_layer(&layer.info, &spooled));
        }
        self.send(|w| w.file_layer(&layer))
    }

    fn finish(mut self: Box<Self>, image: &Image) -> Result<SinkReport> {
        // The engine names the image as the destination says.
        let mut named = image.clone();
        let (name, tag) = crate::format::docker_save::split_repo_tag(&self.name);
        named.name = name;
        named.tag = tag;
        self.send(|w| {
            w.finish(&named)?;
            Ok(())
        })?;
        let socket = self.socket.display().to_string();
        let flushed = self.started()?.writer.out_mut().flush();
        if let Err(e) = flushed {
            let e = Error::io("writing", &self.socket, e);
            return Err(if self.started()?.writer.out().is_closed() {
                self.why_closed(e)
            } else {
                e
            });
        }
        let Started {
            writer,
            answer,
            complete,
        } = self.started.take().expect("begun above");
        let bytes_written = writer.bytes_written();
        // Only now, with every byte handed over, may the body end cleanly:
        // the last sender gone, it ends.
        complete.store(true, Ordering::Release);
        drop(writer);
        let lines = self.runtime.block_on(answer).map_err(|e| Error::Engine {
            socket: socket.clone(),
            operation: "load".into(),
            message: format!("the request's task failed: {e}"),
        })??;
        let mut lines = lines.into_iter();
        let output = match lines.next() {
            Some(first) => format!("engine {socket}: {first}"),
            None => format!("engine {socket}: {}", self.name),
        };
        Ok(SinkReport {
            output,
            bytes_written,
            notes: lines.collect(),
            ..SinkReport::default()
        })
    }
}

/// The request body fed by `rx`: it ends cleanly only once `complete` is
/// set, and with an error (which aborts the request) when the sender is
/// dropped before.
fn body(mut rx: mpsc::Receiver<Bytes>, complete: Arc<AtomicBool>) -> Body {
    let mut ended = false;
    let stream = futures_util::stream::poll_fn(move |cx| {
        if ended {
            return Poll::Ready(None);
        }
        match rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(chunk)) => Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk)))),
            Poll::Ready(None) => {
                ended = true;
                if complete.load(Ordering::Acquire) {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(io::Error::other(
                        "the image stream was cut off: nothing is to be loaded",
                    ))))
                }
            }
        }
    });
    http_body_util::StreamBody::new(stream).boxed()
}

/// The sink's end of the request body: bytes gathered into chunks, each
/// handed over with a wait of at most [`IDLE`].
struct BodyWriter {
    buf: BytesMut,
    tx: mpsc::Sender<Bytes>,
    runtime: Handle,
}

impl BodyWriter {
    /// Whether the request stopped reading (it ended or failed).
    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Hands the gathered bytes to the request.
    fn hand_over(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, BytesMut::with_capacity(CHUNK)).freeze();
        // The timer is made inside the runtime: the sink's thread may be
        // one the runtime does not know.
        let tx = &self.tx;
        match self
            .runtime
            .block_on(async { tokio::time::timeout(IDLE, tx.send(chunk)).await })
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the engine stopped reading the image",
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the engine read nothing for {}s", IDLE.as_secs()),
            )),
        }
    }
}

impl Write for BodyWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (CHUNK - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.hand_over()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.hand_over()
    }
}

impl SaveOut for BodyWriter {
    fn copy_file(&mut self, from: &mut io::Take<File>) -> io::Result<u64> {
        // Read straight into the chunk: no second copy of the bytes.
        let mut total = 0u64;
        loop {
            let filled = self.buf.len();
            self.buf.resize(CHUNK, 0);
            let read = loop {
                match from.read(&mut self.buf[filled..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(filled);
                    return Err(e);
                }
            };
            self.buf.truncate(filled + n);
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
            if self.buf.len() >= CHUNK {
                self.hand_over()?;
            }
        }
    }
}

/// `NAME[:TAG]` as the image is to be named: a name without a tag means
/// `:latest`; a digest names no image to load into.
fn destination_name(name: &str) -> Result<String> {
    let name = name.trim_start_matches('/');
    if name.is_empty() {
        return Err(Error::Usage(
            "docker:// needs an image name (docker://NAME:TAG)".into(),
        ));
    }
    if name.contains('@') {
        return Err(Error::Usage(format!(
            "docker://{}: a loaded image is named NAME:TAG, not by a digest",
            name.escape_debug()
        )));
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    let name = if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    };
    crate::reference::Reference::parse(&name)
        .map_err(|e| Error::Usage(format!("docker://: {e}")))?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(destination_name("app").unwrap(), "app:latest");
        assert_eq!(destination_name("app:v1").unwrap(), "app:v1");
        assert_eq!(
            destination_name("localhost:5000/team/app").unwrap(),
            "localhost:5000/team/app:latest"
        );
        assert_eq!(
            destination_name("/quay.io/team/app:v2").unwrap(),
            "quay.io/team/app:v2"
        );
        for bad in ["", "app@sha256:00", "App:v1", "app:v 1", "app:\n"] {
            assert!(destination_name(bad).is_err(), "{bad:?}");
        }
    }

    fn collect(body: Body, rt: &tokio::runtime::Runtime) -> (Vec<u8>, Option<String>) {
        rt.block_on(async move {
            let mut body = body;
            let mut data = Vec::new();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => data.extend_from_slice(&f.into_data().unwrap()),
                    Err(e) => return (data, Some(e.to_string())),
                }
            }
            (data, None)
        })
    }

    fn writer(rt: &tokio::runtime::Runtime) -> (BodyWriter, Body, Arc<AtomicBool>) {
        let complete = Arc::new(AtomicBool::new(false));
        // Wide enough that the test's writes never wait for a reader.
        let (tx, rx) = mpsc::channel(64);
        let w = BodyWriter {
            buf: BytesMut::with_capacity(CHUNK),
            tx,
            runtime: rt.handle().clone(),
        };
        (w, body(rx, complete.clone()), complete)
    }

    #[test]
    fn a_body_ends_cleanly_only_when_complete() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (mut w, body, complete) = writer(&rt);
        let data = crate::digest::Digest::sha256_of(b"x")
            .to_string()
            .repeat(70_000);
        w.write_all(data.as_bytes()).unwrap();
        w.flush().unwrap();
        complete.store(true, Ordering::Release);
        drop(w);
        assert_eq!(collect(body, &rt), (data.into_bytes(), None));

        let (mut w, body, _complete) = writer(&rt);
        w.write_all(b"partial").unwrap();
        w.flush().unwrap();
        drop(w);
        let (got, err) = collect(body, &rt);
        assert_eq!(got, b"partial");
        assert!(err.unwrap().contains("cut off"));
    }

    #[test]
    fn files_are_sent_whole_in_chunks() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3 * CHUNK + 77).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let (mut w, body, complete) = writer(&rt);
        w.write_all(b"head").unwrap();
        let slice = FileSlice::range(Arc::new(path), 10, data.len() as u64 - 20);
        let copied = w.copy_file(&mut slice.open().unwrap()).unwrap();
        assert_eq!(copied, data.len() as u64 - 20);
        w.flush().unwrap();
        complete.store(true, Ordering::Release);
        drop(w);
        let (got, err) = collect(body, &rt);
        assert_eq!(err, None);
        assert_eq!(&got[..4], b"head");
        assert_eq!(&got[4..], &data[10..data.len() - 10]);
    }

    #[test]
    fn a_closed_request_is_seen() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (mut w, body, _complete) = writer(&rt);
        drop(body);
        assert!(w.is_closed());
        w.write_all(b"x").unwrap();
        let e = w.flush().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn nothing_listening_fails_in_begin() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut sink = EngineSink::new(
            dir.path().join("none.sock"),
            "app:v1",
            rt.handle().clone(),
            dir.path().to_path_buf(),
        )
        .unwrap();
        let image = Image {
            name: "x".into(),
            tag: None,
            manifest: None,
            config_digest: crate::digest::Digest::sha256_of(b"{}"),
            config_raw: b"{}".to_vec(),
            config_media_type: crate::image::media_type::DOCKER_CONFIG.into(),
            layers: vec![],
        };
        let e = sink.begin(&image).unwrap_err().to_string();
        assert!(
            e.contains("none.sock") && e.contains("nothing is there"),
            "{e}"
        );
    }
}
