//! A source for the unit tests of the inspect sinks: layer tars held in
//! memory and served as files, some layers failing as a source's
//! verification would, some slow so that layers finish out of order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::digest::Digest;
use crate::error::{Error, Mismatch, Result};
use crate::image::{FileSlice, Image, Layer, LayerInfo, LayerNeeds, media_type as mt};
use crate::pipeline::RunOptions;
use crate::source::{FetchContext, Source};

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
    /// The needs each fetch was asked for, by layer.
    pub(crate) asked: Mutex<HashMap<usize, LayerNeeds>>,
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
        let tar = match &self.layers[index] {
            Serve::Tar(t, _) | Serve::InPlace(t) => t.clone(),
            Serve::Fail(_) => format!("layer {index}").into_bytes(),
        };
        layer_info(index, &tar)
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
        needs: LayerNeeds,
        ctx: &'a FetchContext,
    ) -> BoxFuture<'a, Result<Layer>> {
        Box::pin(async move {
            self.asked.lock().unwrap().insert(layer.index, needs);
            match &self.layers[layer.index] {
                Serve::Fail(kind @ Mismatch::BlobSize) => Err(Error::SizeMismatch {
                    kind: *kind,
                    what: format!("layer {}", layer.index),
                    expected: layer.size,
                    found: layer.size + 1,
                }),
                Serve::Fail(kind) => Err(Error::DigestMismatch {
                    kind: *kind,
                    what: format!("layer {}", layer.index),
                    expected: layer.digest.clone(),
                    found: Digest::sha256_of(b"other"),
                }),
                Serve::InPlace(tar) => {
                    let path = self.dir.path().join(format!("input-{}", layer.index));
                    let mut bytes = vec![0x55u8; 1000];
                    bytes.extend_from_slice(tar);
                    bytes.extend_from_slice(&[0x55u8; 4096]);
                    std::fs::write(&path, bytes).unwrap();
                    let slice = FileSlice::range(Arc::new(path), 1000, tar.len() as u64);
                    Ok(Layer::files(layer.clone(), Some(slice), None))
                }
                Serve::Tar(tar, delay) => {
                    tokio::time::sleep(Duration::from_millis(*delay)).await;
                    let file = tempfile::NamedTempFile::new_in(&ctx.temp_dir).unwrap();
                    std::fs::write(file.path(), tar).unwrap();
                    let slice = FileSlice::temp(file.into_temp_path(), tar.len() as u64);
                    let blob = needs.blob.then(|| slice.clone());
                    let mut info = layer.clone();
                    if self.refine {
                        info.digest = Digest::sha256_of(b"refined");
                        info.media_type = mt::OCI_LAYER_GZIP.into();
                    }
                    Ok(Layer::files(info, Some(slice), blob))
                }
            }
        })
    }
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
