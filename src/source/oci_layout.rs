//! OCI image layout reader (`oci-layout://PATH[:TAG]`): picks the image by
//! its `org.opencontainers.image.ref.name`, follows an index to the platform
//! asked for, and serves blobs in place after verifying them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::Deserialize;

use crate::digest::{Digest, HashingReader};
use crate::error::{Error, Result};
use crate::image::{
    FileSlice, Image, Layer, LayerInfo, LayerNeeds, ManifestInfo, Platform, media_type as mt,
};
use crate::registry::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};
use crate::sink::oci_layout::{REF_NAME, blob_path};
use crate::source::registry::{
    Descriptor, Index, Manifest, choose_platform, parse_diff_ids, write_layer,
};
use crate::source::{FetchContext, Source};

/// An image in an OCI image layout directory.
pub struct OciLayoutSource {
    root: PathBuf,
    image: Image,
}

#[derive(Deserialize)]
struct IndexEntry {
    #[serde(flatten)]
    descriptor: Descriptor,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

#[derive(Deserialize)]
struct TopIndex {
    manifests: Vec<IndexEntry>,
}

impl OciLayoutSource {
    /// Opens the layout at `root` and resolves the image tagged `tag` (the
    /// only image, when no tag is given), choosing `platform` from an index.
    pub fn open(root: &Path, tag: Option<&str>, platform: &Platform) -> Result<Self> {
        let bad = |message: String| Error::InvalidArchive {
            path: root.to_path_buf(),
            message,
        };
        let index_path = root.join("index.json");
        let raw = read_capped(&index_path, MAX_MANIFEST_BYTES)?;
        let index: TopIndex = serde_json::from_slice(&raw)
            .map_err(|e| bad(format!("index.json is not a valid OCI index: {e}")))?;
        let names: Vec<&str> = index
            .manifests
            .iter()
            .filter_map(|m| m.annotations.get(REF_NAME).map(String::as_str))
            .collect();
        let entry = match tag {
            Some(t) => index
                .manifests
                .iter()
                .find(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some(t))
                .ok_or_else(|| {
                    bad(format!(
                        "no image tagged {t:?}; the layout has: {}",
                        if names.is_empty() {
                            "no tagged images".into()
                        } else {
                            names.join(", ")
                        }
                    ))
                })?,
            None if index.manifests.len() == 1 => &index.manifests[0],
            None => {
                return Err(bad(format!(
                    "the layout holds {} images: name one with oci-layout://PATH:TAG ({})",
                    index.manifests.len(),
                    names.join(", ")
                )));
            }
        };
        let name = tag
            .map(str::to_string)
            .or_else(|| entry.annotations.get(REF_NAME).cloned());
        let mut descriptor = entry.descriptor.clone();
        let mut from_index = None;
        let mut body = read_blob(root, &descriptor, MAX_MANIFEST_BYTES)?;
        let mut media = mt::essence(&descriptor.media_type).to_string();
        if media == mt::OCI_INDEX || media == mt::DOCKER_MANIFEST_LIST {
            let nested: Index = serde_json::from_slice(&body)
                .map_err(|e| bad(format!("invalid image index {}: {e}", descriptor.digest)))?;
            let chosen = choose_platform(&nested, platform)?.clone();
            from_index = Some((descriptor.digest.clone(), media));
            body = read_blob(root, &chosen, MAX_MANIFEST_BYTES)?;
            media = mt::essence(&chosen.media_type).to_string();
            descriptor = chosen;
        }
        if media != mt::OCI_MANIFEST && media != mt::DOCKER_MANIFEST {
            return Err(Error::Unsupported(format!(
                "manifest media type {media:?} in the layout is not supported"
            )));
        }
        let manifest: Manifest = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("invalid manifest {}: {e}", descriptor.digest)))?;
        let config_raw = read_blob(root, &manifest.config, MAX_CONFIG_BYTES)?;
        let diff_ids = parse_diff_ids(&config_raw)?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(Error::InvalidImage(format!(
                "manifest lists {} layers but the config has {} diff_ids",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let layers = manifest
            .layers
            .iter()
            .zip(diff_ids)
            .enumerate()
            .map(|(index, (d, diff_id))| LayerInfo {
                index,
                digest: d.digest.clone(),
                size: d.size,
                media_type: mt::essence(&d.media_type).to_string(),
                diff_id,
            })
            .collect();
        let (image_name, image_tag) = match name.as_deref().and_then(|n| n.rsplit_once(':')) {
            Some((repo, t)) if !t.contains('/') && !repo.is_empty() => {
                (repo.to_string(), Some(t.to_string()))
            }
            _ => (
                root.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "image".into()),
                name,
            ),
        };
        Ok(OciLayoutSource {
            root: root.to_path_buf(),
            image: Image {
                name: image_name,
                tag: image_tag,
                manifest: Some(ManifestInfo {
                    digest: descriptor.digest.clone(),
                    media_type: media,
                    raw: body,
                    index: from_index,
                }),
                config_digest: manifest.config.digest.clone(),
                config_media_type: match mt::essence(&manifest.config.media_type) {
                    "" => mt::OCI_CONFIG.to_string(),
                    m => m.to_string(),
                },
                config_raw,
                layers,
            },
        })
    }

    fn fetch_blocking(
        root: &Path,
        layer: &LayerInfo,
        needs: LayerNeeds,
        temp_dir: &Path,
    ) -> Result<Layer> {
        let path = blob_path(root, &layer.digest);
        let file = std::fs::File::open(&path).map_err(|e| Error::io("opening blob", &path, e))?;
        // One pass verifies the blob digest and the diff_id; the tar is kept
        // only if asked for, and the blob is served where it lies.
        let mut out = write_layer(
            std::io::BufReader::with_capacity(256 << 10, file),
            layer,
            LayerNeeds {
                tar: needs.tar,
                blob: false,
            },
            temp_dir,
        )?;
        if needs.blob {
            out.blob = Some(FileSlice::range(Arc::new(path), 0, layer.size));
        }
        Ok(out)
    }
}

fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("reading", path, e))?;
    if buf.len() as u64 > max {
        return Err(Error::InvalidArchive {
            path: path.to_path_buf(),
            message: format!("more than the {max} bytes allowed for metadata"),
        });
    }
    Ok(buf)
}

/// Reads a small blob and checks it against its descriptor.
fn read_blob(root: &Path, d: &Descriptor, max: u64) -> Result<Vec<u8>> {
    let path = blob_path(root, &d.digest);
    let data = read_capped(&path, max)?;
    let mut h = HashingReader::new(&data[..], d.digest.algorithm());
    std::io::copy(&mut h, &mut std::io::sink()).map_err(|e| Error::io("reading", &path, e))?;
    let (found, size): (Digest, u64) = h.finish();
    if found != d.digest {
        return Err(Error::DigestMismatch {
            what: format!("blob {}", d.digest),
            expected: d.digest.clone(),
            found,
        });
    }
    if size != d.size {
        return Err(Error::SizeMismatch {
            what: format!("blob {}", d.digest),
            expected: d.size,
            found: size,
        });
    }
    Ok(data)
}

impl Source for OciLayoutSource {
    fn describe(&self) -> String {
        format!("OCI layout {}", self.root.display())
    }

    fn resolve<'a>(&'a self, _ctx: &'a FetchContext) -> BoxFuture<'a, Result<Image>> {
        Box::pin(async move { Ok(self.image.clone()) })
    }

    fn fetch<'a>(
        &'a self,
        layer: &'a LayerInfo,
        needs: LayerNeeds,
        ctx: &'a FetchContext,
    ) -> BoxFuture<'a, Result<Layer>> {
        let root = self.root.clone();
        let info = layer.clone();
        let ctx = ctx.clone();
        Box::pin(async move {
            ctx.reporter.layer_started(&info);
            let index = info.index;
            let temp = ctx.temp_dir.clone();
            let out = tokio::task::spawn_blocking(move || {
                Self::fetch_blocking(&root, &info, needs, &temp)
            })
            .await
            .map_err(|e| Error::InvalidImage(format!("layer task failed: {e}")))??;
            ctx.reporter.layer_bytes(index, out.info.size);
            ctx.reporter.layer_done(index);
            Ok(out)
        })
    }
}
