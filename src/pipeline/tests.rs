//! The pipeline with an in-memory source and an async sink that hashes what
//! it reads.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use super::*;
use crate::digest::{Digest, Hasher};
use crate::error::Mismatch;
use crate::image::{Compression, media_type};
use crate::sink::SinkReport;
use crate::source::LayerBlob;

/// Layers held in memory; each read waits `delay` first, so that the
/// pipeline has made the layer the sink's next one before it ends.
struct MemSource {
    image: Image,
    blobs: Vec<Vec<u8>>,
    delay: Duration,
    /// The index of every layer fetched, in order.
    fetches: Arc<Mutex<Vec<usize>>>,
}

struct Slow {
    inner: io::Cursor<Vec<u8>>,
    delay: Duration,
}

impl Read for Slow {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std::thread::sleep(self.delay);
        // Small reads, so a layer arrives in many pieces.
        let n = buf.len().min(64 << 10);
        self.inner.read(&mut buf[..n])
    }
}

impl Source for MemSource {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn resolve<'a>(&'a self, _ctx: &'a FetchContext) -> BoxFuture<'a, Result<Image>> {
        Box::pin(async move { Ok(self.image.clone()) })
    }
    fn fetch<'a>(
        &'a self,
        layer: &'a LayerInfo,
        _ctx: &'a FetchContext,
    ) -> BoxFuture<'a, Result<LayerBlob>> {
        self.fetches.lock().unwrap().push(layer.index);
        let reader = Slow {
            inner: io::Cursor::new(self.blobs[layer.index].clone()),
            delay: self.delay,
        };
        Box::pin(async move { Ok(LayerBlob::new(layer, Box::new(reader))) })
    }
}

fn tar_of(seed: usize, n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 131 + seed * 7) % 251) as u8).collect()
}

fn compress(c: Compression, tar: &[u8]) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar).unwrap();
            gz.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(tar, 1).unwrap(),
    }
}

/// An image of three layers (gzip, zstd, plain) and their tars.
fn source(delay: Duration) -> (MemSource, Vec<Vec<u8>>) {
    let kinds = [Compression::Gzip, Compression::Zstd, Compression::None];
    let tars: Vec<Vec<u8>> = (0..3).map(|i| tar_of(i, (300 + i * 200) << 10)).collect();
    let blobs: Vec<Vec<u8>> = tars
        .iter()
        .zip(kinds)
        .map(|(t, c)| compress(c, t))
        .collect();
    let layers = tars
        .iter()
        .zip(&blobs)
        .enumerate()
        .map(|(index, (t, b))| LayerInfo {
            index,
            digest: Digest::sha256_of(b),
            size: b.len() as u64,
            media_type: media_type::OCI_LAYER_GZIP.into(),
            diff_id: Digest::sha256_of(t),
        })
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({"rootfs": {"type": "layers"}})).unwrap();
    let image = Image {
        name: "mem".into(),
        tag: Some("1".into()),
        manifest: None,
        config_digest: Digest::sha256_of(&config),
        config_raw: config,
        config_media_type: media_type::OCI_CONFIG.into(),
        layers,
    };
    (
        MemSource {
            image,
            blobs,
            delay,
            fetches: Arc::default(),
        },
        tars,
    )
}

/// What the sink saw of one layer.
#[derive(Debug)]
struct Seen {
    index: usize,
    bytes: u64,
    digest: Digest,
    error: Option<Mismatch>,
}

/// An async sink that reads each layer's chunks, counting and hashing them.
struct Counting {
    seen: Arc<Mutex<Vec<Seen>>>,
    ordered: bool,
}

impl AsyncSink for Counting {
    fn ordered(&self) -> bool {
        self.ordered
    }
    fn begin<'a>(&'a mut self, _image: &'a Image) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn layer(&mut self, layer: Layer) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let index = layer.info.index;
            let mut chunks = layer.into_tar_chunks().expect("a tar");
            let mut h = Hasher::new(crate::digest::Algorithm::Sha256);
            let mut bytes = 0u64;
            let mut failed = None;
            while let Some(c) = chunks.next().await {
                match c {
                    Ok(c) => {
                        h.update(&c);
                        bytes += c.len() as u64;
                    }
                    Err(e) => {
                        failed = Some(Error::stream("reading", e));
                        break;
                    }
                }
            }
            let error = failed.as_ref().map(|e| match e {
                Error::DigestMismatch { kind, .. } | Error::SizeMismatch { kind, .. } => *kind,
                other => panic!("the sink got an error that is not a mismatch: {other}"),
            });
            self.seen.lock().unwrap().push(Seen {
                index,
                bytes,
                digest: h.finish(),
                error,
            });
            failed.map_or(Ok(()), Err)
        })
    }
    fn finish(self: Box<Self>, _image: Image) -> BoxFuture<'static, Result<SinkReport>> {
        Box::pin(async {
            Ok(SinkReport {
                output: "counted".into(),
                ..SinkReport::default()
            })
        })
    }
}

fn options(parallel: usize) -> RunOptions {
    RunOptions {
        parallel,
        temp_dir: None,
        reporter: Arc::new(crate::progress::Silent),
        cancel: crate::cancel::CancelToken::new(),
    }
}

fn run_counting(source: MemSource, ordered: bool, parallel: usize) -> (Result<Report>, Vec<Seen>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Box::new(Counting {
        seen: seen.clone(),
        ordered,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(run_async(
        Arc::new(source),
        Vec::new(),
        sink,
        options(parallel),
    ));
    drop(rt);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (r, seen)
}

#[test]
fn async_sink_reads_every_layer_verified() {
    for (ordered, parallel, delay) in [(true, 1, 0), (true, 3, 1), (false, 2, 0), (true, 2, 2)] {
        let (src, tars) = source(Duration::from_millis(delay));
        let (r, seen) = run_counting(src, ordered, parallel);
        let report = r.unwrap();
        assert_eq!(report.fetched, 3);
        assert_eq!(seen.len(), 3);
        if ordered {
            let order: Vec<usize> = seen.iter().map(|s| s.index).collect();
            assert_eq!(order, [0, 1, 2]);
        }
        for s in &seen {
            assert_eq!(s.bytes, tars[s.index].len() as u64, "layer {}", s.index);
            assert_eq!(s.digest, Digest::sha256_of(&tars[s.index]));
            assert!(s.error.is_none());
        }
    }
}

#[test]
fn verification_errors_reach_the_async_sink_with_their_kind() {
    type Spoil = fn(&mut MemSource);
    let cases: [(Spoil, Mismatch); 4] = [
        (
            |s| {
                let b = &mut s.blobs[0];
                let n = b.len();
                b[n / 2] ^= 0x40;
            },
            Mismatch::BlobDigest,
        ),
        (
            |s| s.image.layers[0].diff_id = Digest::sha256_of(b"no"),
            Mismatch::DiffId,
        ),
        (
            |s| {
                s.blobs[0].extend_from_slice(b"more");
            },
            Mismatch::BlobSize,
        ),
        (
            |s| {
                let n = s.blobs[0].len();
                s.blobs[0].truncate(n - 10);
            },
            Mismatch::BlobSize,
        ),
    ];
    for (spoil, want) in cases {
        // Slow enough that the sink is reading layer 0 live when it ends.
        let (mut src, _) = source(Duration::from_millis(3));
        spoil(&mut src);
        let (r, seen) = run_counting(src, true, 1);
        let e = r.unwrap_err();
        let kind = match &e {
            Error::DigestMismatch { kind, .. } | Error::SizeMismatch { kind, .. } => *kind,
            other => panic!("not a mismatch: {other}"),
        };
        assert_eq!(kind, want, "{e}");
        let first = seen.first().expect("the sink read layer 0");
        assert_eq!(first.index, 0);
        assert_eq!(first.error, Some(want), "{e}");
        assert_eq!(seen.len(), 1, "nothing after the failed layer");
    }
}

#[test]
fn files_carry_both_forms_and_errors_are_typed() {
    let (src, tars) = source(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let ctx = FetchContext::new(dir.path().to_path_buf(), Arc::new(crate::progress::Silent));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let both = LayerNeeds::TAR.union(LayerNeeds::BLOB);
    for (i, info) in src.image.layers.iter().enumerate() {
        let l = rt.block_on(fetch_layer(&src, info, both, &ctx)).unwrap();
        let mut tar = Vec::new();
        l.tar
            .as_ref()
            .unwrap()
            .open()
            .unwrap()
            .read_to_end(&mut tar)
            .unwrap();
        assert!(tar == tars[i]);
        let mut blob = Vec::new();
        l.blob
            .as_ref()
            .unwrap()
            .open()
            .unwrap()
            .read_to_end(&mut blob)
            .unwrap();
        assert!(blob == src.blobs[i]);
    }
    let mut bad = src.image.layers[1].clone();
    bad.diff_id = Digest::sha256_of(b"x");
    let e = rt
        .block_on(fetch_layer(&src, &bad, both, &ctx))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::DigestMismatch {
                kind: Mismatch::DiffId,
                ..
            }
        ),
        "{e}"
    );
    // Only the good layers' files were made, and they are gone with them.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A sink that knows what layer 1 became in an earlier run.
struct Knows {
    given: Arc<Mutex<Vec<usize>>>,
    asked: Arc<Mutex<Vec<usize>>>,
    finished: Arc<Mutex<Option<Image>>>,
    answer: LayerInfo,
}

impl AsyncSink for Knows {
    fn begin<'a>(&'a mut self, _image: &'a Image) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn known_rewrite<'a>(
        &'a mut self,
        layer: &'a LayerInfo,
    ) -> BoxFuture<'a, Result<Option<LayerInfo>>> {
        self.asked.lock().unwrap().push(layer.index);
        let answer = (layer.index == 1).then(|| self.answer.clone());
        Box::pin(async move { Ok(answer) })
    }
    fn layer(&mut self, layer: Layer) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.given.lock().unwrap().push(layer.info.index);
            let mut chunks = layer.into_tar_chunks().expect("a tar");
            while let Some(c) = chunks.next().await {
                c.map_err(|e| Error::stream("reading", e))?;
            }
            Ok(())
        })
    }
    fn finish(self: Box<Self>, image: Image) -> BoxFuture<'static, Result<SinkReport>> {
        *self.finished.lock().unwrap() = Some(image);
        Box::pin(async { Ok(SinkReport::default()) })
    }
}

/// A filter that says it rewrites but leaves every layer as it is, or
/// (`rewrites: false`) only watches; both record what they saw.
struct Pass {
    rewrites: bool,
    seen: Arc<Mutex<Vec<usize>>>,
}

impl Filter for Pass {
    fn name(&self) -> &'static str {
        "pass"
    }
    fn rewrites(&self) -> bool {
        self.rewrites
    }
    fn layer(&mut self, layer: Layer, _ctx: &FilterContext) -> Result<Layer> {
        self.seen.lock().unwrap().push(layer.info.index);
        Ok(layer)
    }
}

/// What a run with [`Knows`] and the given filters did.
struct KnownRun {
    report: Report,
    fetches: Vec<usize>,
    given: Vec<usize>,
    asked: Vec<usize>,
    filtered: Vec<usize>,
    image: Image,
}

fn run_knows(watch_too: bool, answer: &LayerInfo) -> KnownRun {
    let (src, _) = source(Duration::ZERO);
    let fetches = src.fetches.clone();
    let filtered = Arc::new(Mutex::new(Vec::new()));
    let mut filters: Vec<Box<dyn Filter>> = vec![Box::new(Pass {
        rewrites: true,
        seen: filtered.clone(),
    })];
    if watch_too {
        filters.push(Box::new(Pass {
            rewrites: false,
            seen: Arc::default(),
        }));
    }
    let sink = Knows {
        given: Arc::default(),
        asked: Arc::default(),
        finished: Arc::default(),
        answer: answer.clone(),
    };
    let (given, asked, finished) = (
        sink.given.clone(),
        sink.asked.clone(),
        sink.finished.clone(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = rt
        .block_on(run_async(
            Arc::new(src),
            filters,
            Box::new(sink),
            options(2),
        ))
        .unwrap();
    drop(rt);
    let take = |v: &Arc<Mutex<Vec<usize>>>| std::mem::take(&mut *v.lock().unwrap());
    KnownRun {
        report,
        fetches: take(&fetches),
        given: take(&given),
        asked: take(&asked),
        filtered: take(&filtered),
        image: finished.lock().unwrap().take().expect("finished"),
    }
}

#[test]
fn a_known_rewrite_is_neither_fetched_nor_filtered_nor_given() {
    let answer = LayerInfo {
        // The pipeline sets the index; the sink's is ignored.
        index: 99,
        digest: Digest::sha256_of(b"cached blob"),
        size: 1234,
        media_type: media_type::OCI_LAYER_ZSTD.into(),
        diff_id: Digest::sha256_of(b"cached tar"),
    };
    let (original, _) = source(Duration::ZERO);
    let run = run_knows(false, &answer);
    assert_eq!(run.asked, [0, 1, 2]);
    let mut fetches = run.fetches.clone();
    fetches.sort();
    assert_eq!(fetches, [0, 2], "layer 1 was fetched");
    assert_eq!(run.filtered, [0, 2]);
    assert_eq!(run.given, [0, 2]);
    assert_eq!(run.report.fetched, 2);
    assert_eq!(run.report.skipped, 1);
    // The image the sink finishes holds the known layer in its place.
    let layer1 = &run.image.layers[1];
    assert_eq!(layer1.index, 1);
    assert_eq!(layer1.digest, answer.digest);
    assert_eq!(layer1.size, 1234);
    assert_eq!(layer1.media_type, media_type::OCI_LAYER_ZSTD);
    assert_eq!(
        run.image.layers[0].diff_id,
        original.image.layers[0].diff_id
    );
    // And its diff_id went into the config, which has a new digest.
    let config: serde_json::Value = serde_json::from_slice(&run.image.config_raw).unwrap();
    let ids: Vec<String> = original
        .image
        .layers
        .iter()
        .map(|l| l.diff_id.to_string())
        .collect();
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([ids[0], answer.diff_id.to_string(), ids[2]])
    );
    assert_eq!(
        run.image.config_digest,
        Digest::sha256_of(&run.image.config_raw)
    );
    assert_ne!(run.image.config_digest, original.image.config_digest);
    assert!(run.image.manifest.is_none());
}

#[test]
fn an_observing_filter_sees_every_layer() {
    let answer = LayerInfo {
        index: 1,
        digest: Digest::sha256_of(b"cached blob"),
        size: 1,
        media_type: media_type::OCI_LAYER_GZIP.into(),
        diff_id: Digest::sha256_of(b"cached tar"),
    };
    // A filter that only watches would miss a skipped layer: the sink is
    // not asked, and every layer is fetched.
    let run = run_knows(true, &answer);
    assert!(run.asked.is_empty());
    let mut fetches = run.fetches;
    fetches.sort();
    assert_eq!(fetches, [0, 1, 2]);
    assert_eq!(run.given, [0, 1, 2]);
}

/// What the observing sink saw of one layer.
#[derive(Debug)]
struct SeenLive {
    index: usize,
    live: bool,
    digest: Option<Digest>,
}

/// A blocking sink that records whether each layer came live, and reads it.
struct LiveSink {
    seen: Arc<Mutex<Vec<SeenLive>>>,
    finished: Arc<Mutex<bool>>,
    /// Says it takes rewritten layers live; records the final diff_ids.
    rewritten_live: Option<Arc<Mutex<Vec<Digest>>>>,
}

impl Sink for LiveSink {
    fn begin(&mut self, _image: &Image) -> Result<()> {
        Ok(())
    }
    fn wants_layer(&mut self, _layer: &LayerInfo) -> bool {
        true
    }
    fn takes_rewritten_live(&self) -> bool {
        self.rewritten_live.is_some()
    }
    fn layer(&mut self, layer: Layer) -> Result<()> {
        let live = layer.is_live();
        let mut r = layer
            .tar_reader()
            .map_err(|e| Error::stream("t", e))?
            .unwrap();
        let mut h = Hasher::new(crate::digest::Algorithm::Sha256);
        let mut buf = vec![0u8; 64 << 10];
        let read = loop {
            match r.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => h.update(&buf[..n]),
                Err(e) => break Err(Error::stream("reading", e)),
            }
        };
        self.seen.lock().unwrap().push(SeenLive {
            index: layer.info.index,
            live,
            digest: read.is_ok().then(|| h.finish()),
        });
        read
    }
    fn finish(self: Box<Self>, image: &Image) -> Result<SinkReport> {
        if let Some(ids) = &self.rewritten_live {
            *ids.lock().unwrap() = image.layers.iter().map(|l| l.diff_id.clone()).collect();
        }
        *self.finished.lock().unwrap() = true;
        Ok(SinkReport::default())
    }
}

/// A filter that only observes: hashes each layer's tar as it passes, or
/// fails after `fail_after` bytes of layer `fail_layer`. Records the order
/// of its `layer` calls and whether they carried a tar.
struct Watching {
    hashes: Arc<Mutex<Vec<(usize, Digest)>>>,
    calls: Arc<Mutex<Vec<(usize, bool)>>>,
    fail: Option<(usize, u64)>,
}

impl Filter for Watching {
    fn name(&self) -> &'static str {
        "watching"
    }
    fn observer(&self) -> Option<LayerObserver> {
        let (hashes, fail) = (self.hashes.clone(), self.fail);
        Some(Arc::new(move |tar, info| {
            let mut h = Hasher::new(crate::digest::Algorithm::Sha256);
            let mut buf = vec![0u8; 4096];
            let mut n = 0u64;
            loop {
                let got = tar.read(&mut buf).map_err(|e| Error::stream("watch", e))?;
                if got == 0 {
                    break;
                }
                h.update(&buf[..got]);
                n += got as u64;
                if fail.is_some_and(|(l, after)| l == info.index && n >= after) {
                    return Err(Error::InvalidImage("watching: this layer is bad".into()));
                }
            }
            hashes.lock().unwrap().push((info.index, h.finish()));
            Ok(())
        }))
    }
    fn layer(&mut self, layer: Layer, _ctx: &FilterContext) -> Result<Layer> {
        let has_tar = layer.tar.is_some() || layer.is_live();
        self.calls.lock().unwrap().push((layer.info.index, has_tar));
        Ok(layer)
    }
}

struct Watched {
    result: Result<Report>,
    seen: Vec<SeenLive>,
    finished: bool,
    hashes: Vec<(usize, Digest)>,
    calls: Vec<(usize, bool)>,
}

fn run_watched(src: MemSource, fail: Option<(usize, u64)>, parallel: usize) -> Watched {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let finished = Arc::new(Mutex::new(false));
    let hashes = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let filter = Watching {
        hashes: hashes.clone(),
        calls: calls.clone(),
        fail,
    };
    let sink = LiveSink {
        seen: seen.clone(),
        finished: finished.clone(),
        rewritten_live: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(run_filtered(
        Arc::new(src),
        vec![Box::new(filter)],
        Box::new(sink),
        options(parallel),
    ));
    drop(rt);
    Watched {
        result,
        seen: std::mem::take(&mut *seen.lock().unwrap()),
        finished: *finished.lock().unwrap(),
        hashes: std::mem::take(&mut *hashes.lock().unwrap()),
        calls: std::mem::take(&mut *calls.lock().unwrap()),
    }
}

#[test]
fn an_observing_filter_keeps_layers_streaming() {
    for parallel in [1, 3] {
        let (src, tars) = source(Duration::from_millis(2));
        let w = run_watched(src, None, parallel);
        w.result.unwrap();
        assert!(w.finished);
        let order: Vec<usize> = w.seen.iter().map(|s| s.index).collect();
        assert_eq!(order, [0, 1, 2]);
        // The sink waits for layer 0 from the start: it is never spooled.
        assert!(w.seen[0].live, "layer 0 reached the sink live");
        for s in &w.seen {
            assert_eq!(s.digest, Some(Digest::sha256_of(&tars[s.index])));
        }
        // The filter saw every layer's bytes, and was called in order
        // without them.
        let mut hashes = w.hashes.clone();
        hashes.sort_by_key(|h| h.0);
        let want: Vec<(usize, Digest)> = tars
            .iter()
            .enumerate()
            .map(|(i, t)| (i, Digest::sha256_of(t)))
            .collect();
        assert_eq!(hashes, want);
        assert_eq!(w.calls, [(0, false), (1, false), (2, false)]);
    }
}

#[test]
fn an_observer_failing_midstream_fails_the_run_before_the_sink_commits() {
    let (src, _) = source(Duration::from_millis(2));
    let w = run_watched(src, Some((1, 100 << 10)), 1);
    let e = w.result.unwrap_err();
    assert!(e.to_string().contains("this layer is bad"), "{e}");
    assert!(!w.finished, "the sink was not finished");
    // Layer 1 failed before it was whole: if it reached the sink (live, or
    // spooled while layer 0 was being read, as timing decides), its stream
    // ended in an error, not in end-of-file; nothing came after it.
    assert!(matches!(w.seen.len(), 1 | 2), "{:?}", w.seen);
    assert!(w.seen[0].digest.is_some());
    if let Some(one) = w.seen.get(1) {
        assert_eq!(one.index, 1);
        assert!(one.live);
        assert_eq!(one.digest, None);
    }
    assert_eq!(w.calls, [(0, false)]);
}

#[test]
fn a_verification_failure_reaches_the_observer_as_an_error() {
    let (mut src, _) = source(Duration::from_millis(1));
    src.image.layers[0].diff_id = Digest::sha256_of(b"no");
    let w = run_watched(src, None, 2);
    let e = w.result.unwrap_err();
    assert!(
        matches!(
            e,
            Error::DigestMismatch {
                kind: Mismatch::DiffId,
                ..
            }
        ),
        "{e}"
    );
    // The observer read layer 0 to its end and was told it failed.
    assert!(w.hashes.iter().all(|h| h.0 != 0), "{:?}", w.hashes);
    assert!(w.calls.is_empty());
    assert!(!w.finished);
}

/// A one-layer source of `tar` (gzip), read slowly.
fn tar_source(tar: &[u8]) -> MemSource {
    let (mut src, _) = source(Duration::from_millis(2));
    let blob = compress(Compression::Gzip, tar);
    src.image.layers.truncate(1);
    src.image.layers[0].digest = Digest::sha256_of(&blob);
    src.image.layers[0].size = blob.len() as u64;
    src.image.layers[0].diff_id = Digest::sha256_of(tar);
    src.blobs = vec![blob];
    src
}

/// A tar of one 1 MiB file and one small one, both with mtime 5.
fn timed_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, len) in [("big.bin", 1usize << 20), ("after", 10)] {
        let mut h = tar::Header::new_ustar();
        h.set_size(len as u64);
        h.set_mode(0o644);
        h.set_mtime(5);
        h.set_cksum();
        b.append_data(&mut h, name, &tar_of(3, len)[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn run_rewritten(src: MemSource) -> (Result<Report>, Vec<SeenLive>, bool, Vec<Digest>) {
    let (seen, finished, ids) = Default::default();
    let sink = LiveSink {
        seen: Arc::clone(&seen),
        finished: Arc::clone(&finished),
        rewritten_live: Some(Arc::clone(&ids)),
    };
    let filter = crate::filter::normalize::NormalizeTimestamps::new(0).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(run_filtered(
        Arc::new(src),
        vec![Box::new(filter)],
        Box::new(sink),
        options(1),
    ));
    drop(rt);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let ids = std::mem::take(&mut *ids.lock().unwrap());
    let finished = *finished.lock().unwrap();
    (r, seen, finished, ids)
}

#[test]
fn a_stream_rewrite_reaches_a_sink_that_takes_it_live() {
    let tar = timed_tar();
    let filter = crate::filter::normalize::NormalizeTimestamps::new(0).unwrap();
    let mut rw = filter.stream_rewrite().expect("normalize streams")();
    let (want, stats) = crate::tarfmt::rewrite::testutil::rewrite_bytes(&tar, &mut *rw).unwrap();
    assert!(stats.edited);
    let (r, seen, finished, ids) = run_rewritten(tar_source(&tar));
    r.unwrap();
    assert!(finished);
    assert_eq!(seen.len(), 1);
    assert!(seen[0].live, "the rewritten layer went to the sink live");
    assert_eq!(seen[0].digest, Some(Digest::sha256_of(&want)));
    // The image the sink finishes with names the rewritten tar.
    assert_eq!(ids, [Digest::sha256_of(&want)]);
}

#[test]
fn a_stream_rewrite_failing_midstream_fails_the_run_before_the_sink_commits() {
    let mut tar = timed_tar();
    // Spoil the second header's checksum, past the 1 MiB file.
    let second = 512 + (1 << 20);
    tar[second + 148] ^= 0x01;
    let (r, seen, finished, _) = run_rewritten(tar_source(&tar));
    let e = r.unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    assert!(!finished);
    assert_eq!(seen.len(), 1);
    assert!(seen[0].live);
    assert_eq!(seen[0].digest, None, "the stream ended in an error");
}

/// What a live-blob sink saw of one layer: the chunks' bytes, or the
/// mismatch they ended with, and whether the verified file matched.
type BlobSeen = (usize, std::result::Result<Vec<u8>, Mismatch>, bool);

/// An async sink that takes blobs live, reads the chunks to their verdict,
/// then the verified file.
struct LiveBlobs {
    seen: Arc<Mutex<Vec<BlobSeen>>>,
}

impl AsyncSink for LiveBlobs {
    fn needs(&self) -> LayerNeeds {
        LayerNeeds::BLOB
    }
    fn takes_live_blob(&self) -> bool {
        true
    }
    fn begin<'a>(&'a mut self, _image: &'a Image) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn layer(&mut self, layer: Layer) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let index = layer.info.index;
            let live = layer.take_live_blob().expect("the blob arrives live");
            let mut chunks = live.chunks;
            let mut got = Vec::new();
            let mut verdict = Ok(());
            while let Some(c) = chunks.next().await {
                match c {
                    Ok(c) => got.extend_from_slice(&c),
                    Err(e) => {
                        verdict = Err(Error::stream("reading", e));
                        break;
                    }
                }
            }
            let file = live.file.await;
            let same = match &file {
                Ok(f) => std::fs::read(f.path()).unwrap() == got,
                Err(_) => false,
            };
            let kind = |e: &Error| match e {
                Error::DigestMismatch { kind, .. } | Error::SizeMismatch { kind, .. } => *kind,
                other => panic!("not a mismatch: {other}"),
            };
            let seen = verdict.as_ref().map(|()| got).map_err(kind);
            self.seen.lock().unwrap().push((index, seen, same));
            verdict.and(file.map(|_| ()))
        })
    }
    fn finish(self: Box<Self>, _image: Image) -> BoxFuture<'static, Result<SinkReport>> {
        Box::pin(async { Ok(SinkReport::default()) })
    }
}

fn run_live_blobs(source: MemSource) -> (Result<Report>, Vec<BlobSeen>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Box::new(LiveBlobs { seen: seen.clone() });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(run_async(Arc::new(source), Vec::new(), sink, options(2)));
    drop(rt);
    let mut seen = std::mem::take(&mut *seen.lock().unwrap());
    seen.sort_by_key(|s| s.0);
    (r, seen)
}

#[test]
fn live_blobs_arrive_as_stored_and_are_checked_by_digest_and_size_only() {
    let (mut src, _) = source(Duration::from_millis(1));
    // Nothing is decompressed: a wrong diff_id goes unseen by a copy.
    src.image.layers[1].diff_id = Digest::sha256_of(b"not this tar");
    let blobs = src.blobs.clone();
    let (r, seen) = run_live_blobs(src);
    r.unwrap();
    assert_eq!(seen.len(), 3);
    for (index, got, same) in seen {
        assert!(got.unwrap() == blobs[index], "layer {index}");
        assert!(same, "layer {index}: the verified file differs");
    }
}

#[test]
fn a_corrupt_live_blob_ends_with_its_mismatch() {
    let (mut src, _) = source(Duration::from_millis(1));
    let at = src.blobs[0].len() / 2;
    src.blobs[0][at] ^= 1;
    let (r, seen) = run_live_blobs(src);
    assert!(r.is_err());
    let first = seen.iter().find(|s| s.0 == 0).expect("layer 0 was given");
    assert_eq!(first.1.as_ref().err(), Some(&Mismatch::BlobDigest));
    assert!(!first.2, "no verified file for a corrupt blob");
}
