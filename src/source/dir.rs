//! Layer store reader (the Python occystrap's `DirReader`): an image from a
//! directory written by `dir://`, found through its `catalog.json`.
//!
//! Layers are served in place as the store's own files, after their sha256
//! is checked against the config's diff_ids: a store trusts a layer by its
//! presence, so this is where a damaged copy is caught.
//!
//! Every file is opened from the store's root without following a symlink
//! below it, and only regular files are read (see [`StoreRoot`]): a store
//! someone else can write into cannot make us read outside it, nor block
//! on a FIFO.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::format::dir::{CATALOG, checked_name, locate, read_store_catalog, same_image};
use crate::format::docker_save::{ManifestEntry, read_diff_ids, split_repo_tag};
use crate::fsutil::StoreRoot;
use crate::image::{FileSlice, Image, LayerInfo, media_type};
use crate::source::{FetchContext, LayerBlob, Source};

/// Largest manifest or config read into memory.
const METADATA_LIMIT: u64 = 8 << 20;

/// An image in a layer store directory, opened as a source.
pub struct DirSource {
    root: PathBuf,
    store: Arc<StoreRoot>,
    /// What was asked for, for messages.
    selection: Option<String>,
    image: Image,
    /// The store's file for each layer, in image order, relative to the root.
    files: Vec<PathBuf>,
}

impl DirSource {
    /// Opens the image `wanted` (`NAME` or `NAME:TAG`) tagged `tag` in the store
    /// at `root`. Without `image`, the store's only image, or its
    /// `manifest.json` when it has no catalog.
    pub fn open(root: &Path, wanted: Option<&str>, tag: Option<&str>) -> Result<Self> {
        let invalid = |message: String| Error::InvalidArchive {
            path: root.to_path_buf(),
            message,
        };
        let store = StoreRoot::open(root)?;
        let catalog = read_store_catalog(&store)?;
        let located = locate(catalog.as_ref(), wanted, tag).map_err(invalid)?;
        let raw = read_small(
            &store,
            checked_name(&located.manifest_file).map_err(invalid)?,
        )?;
        let entries: Vec<ManifestEntry> = serde_json::from_slice(&raw).map_err(|e| {
            invalid(format!(
                "{} is not a docker-save manifest: {e}",
                located.manifest_file
            ))
        })?;
        let Some(entry) = entries.into_iter().next() else {
            return Err(invalid(format!("{} lists no image", located.manifest_file)));
        };
        let repo_tag = entry
            .repo_tags
            .as_deref()
            .unwrap_or_default()
            .first()
            .map(|t| split_repo_tag(t));
        if let (Some((name, tag)), Some((want_name, want_tag))) = (&repo_tag, &located.catalog_name)
        {
            // Without unique_names every run rewrites manifest.json, so the
            // catalog's older entries end up pointing at another image.
            let last = |n: &str| n.rsplit('/').next().unwrap_or(n).to_string();
            if tag.as_deref().unwrap_or("latest") != want_tag || last(name) != last(want_name) {
                return Err(invalid(format!(
                    "{CATALOG} maps {want_name}:{want_tag} to {}, which now holds {}; a later \
                     run without unique_names=true replaced it",
                    located.manifest_file,
                    entry.repo_tags.as_deref().unwrap_or_default().join(", ")
                )));
            }
        }

        let config_raw = read_small(&store, checked_name(&entry.config).map_err(invalid)?)?;
        let diff_ids = read_diff_ids(&config_raw)
            .map_err(|e| invalid(format!("config {}: {e}", entry.config)))?;
        let names = entry.layers.unwrap_or_default();
        if names.len() != diff_ids.len() {
            return Err(invalid(format!(
                "{} lists {} layers but the config has {} diff_ids",
                located.manifest_file,
                names.len(),
                diff_ids.len()
            )));
        }
        let (layers, files) = store_layers(&store, root, &names, diff_ids)?;

        let (name, image_tag) = match (repo_tag, &located.catalog_name) {
            // The manifest keeps the registry host the catalog drops.
            (Some((n, t)), Some((key, _))) if same_image(&n, key) => (n, t),
            (_, Some((key, tag))) => (key.clone(), Some(tag.clone())),
            (Some((n, t)), None) => (n, t),
            (None, None) => (name_from_path(root), None),
        };
        let image = Image {
            name,
            tag: image_tag,
            manifest: None,
            config_digest: Digest::sha256_of(&config_raw),
            config_raw,
            config_media_type: media_type::DOCKER_CONFIG.to_string(),
            layers,
        };
        let selection = wanted.map(|i| match tag {
            Some(t) => format!("{i}:{t}"),
            None => i.to_string(),
        });
        Ok(DirSource {
            root: root.to_path_buf(),
            store: Arc::new(store),
            selection,
            image,
            files,
        })
    }
}

/// The store's file for each layer `names` lists, checked to be a regular
/// file in the store, with its layer's description.
fn store_layers(
    store: &StoreRoot,
    root: &Path,
    names: &[String],
    diff_ids: Vec<Digest>,
) -> Result<(Vec<LayerInfo>, Vec<PathBuf>)> {
    let invalid = |message: String| Error::InvalidArchive {
        path: root.to_path_buf(),
        message,
    };
    let mut files = Vec::with_capacity(names.len());
    let mut layers = Vec::with_capacity(names.len());
    for (index, (name, diff_id)) in names.iter().zip(diff_ids).enumerate() {
        let rel = checked_name(name).map_err(invalid)?;
        let meta = store
            .open_file(rel)?
            .ok_or_else(|| {
                Error::io(
                    "opening",
                    store.display(rel),
                    io::ErrorKind::NotFound.into(),
                )
            })?
            .metadata()
            .map_err(|e| Error::io("opening", store.display(rel), e))?;
        layers.push(LayerInfo {
            index,
            digest: diff_id.clone(),
            size: meta.len(),
            media_type: media_type::OCI_LAYER_TAR.to_string(),
            diff_id,
        });
        files.push(rel.to_path_buf());
    }
    Ok((layers, files))
}

/// Reads a manifest or config of the store, refusing anything implausibly
/// large.
fn read_small(store: &StoreRoot, rel: &Path) -> Result<Vec<u8>> {
    store.read_small(rel, METADATA_LIMIT)?.ok_or_else(|| {
        Error::io(
            "opening",
            store.display(rel),
            io::ErrorKind::NotFound.into(),
        )
    })
}

/// A repository name for an image with no name: the directory's, lowercased.
fn name_from_path(path: &Path) -> String {
    let name = path
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_lowercase()))
        .unwrap_or_default();
    if name.is_empty() {
        "image".to_string()
    } else {
        name
    }
}

impl Source for DirSource {
    fn describe(&self) -> String {
        match &self.selection {
            Some(s) => format!("dir {} ({s})", self.root.display()),
            None => format!("dir {}", self.root.display()),
        }
    }

    fn resolve<'a>(&'a self, _ctx: &'a FetchContext) -> BoxFuture<'a, Result<Image>> {
        // `open` read and checked everything, so a bad store fails before
        // the pipeline starts.
        Box::pin(async move { Ok(self.image.clone()) })
    }

    fn fetch<'a>(
        &'a self,
        layer: &'a LayerInfo,
        _ctx: &'a FetchContext,
    ) -> BoxFuture<'a, Result<LayerBlob>> {
        Box::pin(async move {
            let rel = self.files.get(layer.index).ok_or_else(|| {
                Error::InvalidImage(format!(
                    "{}: no layer {} (the image has {})",
                    self.describe(),
                    layer.index,
                    self.files.len()
                ))
            })?;
            let path = self.store.display(rel);
            let file = self
                .store
                .open_file(rel)?
                .ok_or_else(|| Error::io("opening", &path, io::ErrorKind::NotFound.into()))?;
            // A store keeps each layer as its tar: its digest is its diff_id.
            let mut blob = LayerBlob::new(layer, Box::new(file));
            blob.label = format!("layer {} ({})", layer.index, path.display());
            blob.in_place = Some(FileSlice::range(Arc::new(path), 0, layer.size));
            Ok(blob)
        })
    }
}
