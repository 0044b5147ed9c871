//! A source for the unit tests of the inspect sinks: layer tars held in
//! memory, some layers' descriptors not matching their bytes so that the
//! verifier fails them, some slow so that layers finish out of order.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::digest::Digest;
use crate::error::{Mismatch, Result};
use crate::image::{FileSlice, Image, LayerInfo, media_type as mt};
use crate::pipeline::RunOptions;
use crate::source::{FetchContext, LayerBlob, Source};

/// How a layer of a [`FakeSource`] is served.
#[derive(Clone)]
pub(crate) enum Serve {
    /// The tar, after a delay in milliseconds.
    Tar(Vec<u8>, u64),
    /// The tar as a slice of a larger file, between bytes that are no tar.
    InPlace(Vec<u8>),
    /// A verification failure of this kind.
    Fail(Mismatch),
}

pub(crate) struct FakeSource {
    layers: Vec<Serve>,
    manifest: bool,
    /// Whether fetches refine the descriptor (as a docker-save source does
    /// for a blob it finds compressed).
    pub(crate) refine: bool,
    /// Holds the files of `InPlace` layers.
    dir: tempfile::TempDir,
    /// The layers fetched.
    pub(crate) asked: Mutex<HashSet<usize>>,
}

impl FakeSource {
    pub(crate) fn new(layers: Vec<Serve>, manifest: bool) -> Arc<FakeSource> {
        Arc::new(FakeSource {
            layers,
            manifest,
            refine: false,
            dir: tempfile::tempdir().unwrap(),
            asked: Mutex::default(),
        })
    }

    /// A source whose fetches refine each layer's descriptor.
    pub(crate) fn refined(layers: Vec<Serve>) -> Arc<FakeSource> {
        let mut s = Arc::into_inner(FakeSource::new(layers, true)).unwrap();
        s.refine = true;
        Arc::new(s)
    }

    fn info(&self, index: usize) -> LayerInfo {
        let mut info = match &self.layers[index] {
            Serve::Tar(t, _) | Serve::InPlace(t) => layer_info(index, t),
            Serve::Fail(_) => layer_info(index, &failing_bytes(index)),
        };
        match &self.layers[index] {
            Serve::Fail(Mismatch::BlobSize) => info.size += 1,
            Serve::Fail(Mismatch::DiffId) => {
                info.diff_id = Digest::sha256_of(format!("other {index}").as_bytes())
            }
            Serve::Fail(_) => info.digest = Digest::sha256_of(format!("other {index}").as_bytes()),
            Serve::Tar(..) if self.refine => {
                // A placeholder the bytes replace, as docker-save's is.
                info.digest = Digest::sha256_of(b"placeholder");
                info.media_type = mt::OCI_LAYER_GZIP.into();
            }
            _ => {}
        }
        info
    }
}

/// A plain-tar layer descriptor for `tar`.
pub(crate) fn layer_info(index: usize, tar: &[u8]) -> LayerInfo {
    LayerInfo {
        index,
        digest: Digest::sha256_of(tar),
        size: tar.len() as u64,
        media_type: mt::OCI_LAYER_TAR.into(),
        diff_id: Digest::sha256_of(tar),
    }
}

/// Options for a test run: four layers at once, no progress.
pub(crate) fn options() -> RunOptions {
    RunOptions {
        parallel: 4,
        temp_dir: None,
        reporter: Arc::new(crate::progress::Silent),
        cancel: crate::cancel::CancelToken::new(),
    }
}

impl Source for FakeSource {
    fn describe(&self) -> String {
        "fake".into()
    }

    fn resolve<'a>(&'a self, _ctx: &'a FetchContext) -> BoxFuture<'a, Result<Image>> {
        Box::pin(async move {
            let layers: Vec<LayerInfo> = (0..self.layers.len()).map(|i| self.info(i)).collect();
            let ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
            let config = serde_json::to_vec(&serde_json::json!({
                "os": "linux", "architecture": "amd64",
                "rootfs": {"type": "layers", "diff_ids": ids},
            }))
            .unwrap();
            let manifest = self.manifest.then(|| crate::image::ManifestInfo {
                digest: Digest::sha256_of(b"m"),
                media_type: mt::OCI_MANIFEST.into(),
                raw: b"{}".to_vec(),
                index: None,
            });
            Ok(Image {
                name: "team/app".into(),
                tag: Some("v1".into()),
                manifest,
                config_digest: Digest::sha256_of(&config),
                config_raw: config,
                config_media_type: mt::OCI_CONFIG.into(),
                layers,
            })
        })
    }

    fn fetch<'a>(
        &'a self,
        layer: &'a LayerInfo,
        _: &'a FetchContext,
    ) -> BoxFuture<'a, Result<LayerBlob>> {
        Box::pin(async move {
            self.asked.lock().unwrap().insert(layer.index);
            let blob = match &self.layers[layer.index] {
                // The descriptor (see `info`) is what does not match.
                Serve::Fail(_) => {
                    LayerBlob::new(layer, Box::new(io::Cursor::new(failing_bytes(layer.index))))
                }
                Serve::InPlace(tar) => {
                    let path = self.dir.path().join(format!("input-{}", layer.index));
                    let mut bytes = vec![0x55u8; 1000];
                    bytes.extend_from_slice(tar);
                    bytes.extend_from_slice(&[0x55u8; 4096]);
                    std::fs::write(&path, bytes).unwrap();
                    let slice = FileSlice::range(Arc::new(path), 1000, tar.len() as u64);
                    let mut blob = LayerBlob::new(layer, Box::new(slice.open().unwrap()));
                    blob.in_place = Some(slice);
                    blob
                }
                Serve::Tar(tar, delay) => {
                    tokio::time::sleep(Duration::from_millis(*delay)).await;
                    let mut blob = LayerBlob::new(layer, Box::new(io::Cursor::new(tar.clone())));
                    // As a docker-save source: the bytes say what the blob is.
                    blob.digest_known = !self.refine;
                    blob
                }
            };
            Ok(blob)
        })
    }
}

/// What a failing layer serves.
fn failing_bytes(index: usize) -> Vec<u8> {
    format!("layer {index}").into_bytes()
}

/// A tar of regular files, each holding its own name.
pub(crate) fn tar_of(names: &[&str]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for name in names {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(name.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, name.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}
