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
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fsutil::StoreRoot;
use crate::image::{FileSlice, Image, LayerInfo, media_type};
use crate::sink::dir::{CATALOG, Catalog, DEFAULT_MANIFEST, read_store_catalog, store_image_name};
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

/// One image of a store manifest.
#[derive(Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Option<Vec<String>>,
}

/// The part of an image config this reader needs.
#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: Rootfs,
}

#[derive(Deserialize)]
struct Rootfs {
    diff_ids: Vec<Digest>,
}

/// Where the manifest was found, and the name the catalog gives the image.
struct Located {
    manifest_file: String,
    catalog_name: Option<(String, String)>,
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
        let config: ConfigRootfs = serde_json::from_slice(&config_raw)
            .map_err(|e| invalid(format!("config {}: {e}", entry.config)))?;
        let names = entry.layers.unwrap_or_default();
        let diff_ids = config.rootfs.diff_ids;
        if names.len() != diff_ids.len() {
            return Err(invalid(format!(
                "{} lists {} layers but the config has {} diff_ids",
                located.manifest_file,
                names.len(),
                diff_ids.len()
            )));
        }
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

/// Finds the manifest file for the image asked for.
fn locate(
    catalog: Option<&Catalog>,
    image: Option<&str>,
    tag: Option<&str>,
) -> std::result::Result<Located, String> {
    let Some(want) = image else {
        if tag.is_some() {
            return Err("tag= needs image= as well".into());
        }
        let all: Vec<(&String, &String, &String)> = catalog
            .into_iter()
            .flatten()
            .flat_map(|(i, tags)| tags.iter().map(move |(t, f)| (i, t, f)))
            .collect();
        return match all.as_slice() {
            [] => Ok(Located {
                manifest_file: DEFAULT_MANIFEST.to_string(),
                catalog_name: None,
            }),
            [(i, t, f)] => Ok(Located {
                manifest_file: (*f).clone(),
                catalog_name: Some(((*i).clone(), (*t).clone())),
            }),
            _ => Err(format!(
                "the store holds several images; choose one with image=NAME&tag=TAG ({CATALOG} \
                 has: {})",
                listing(catalog)
            )),
        };
    };
    let (want_name, want_tag) = match tag {
        Some(t) => (want.to_string(), t.to_string()),
        None => {
            let (n, t) = split_repo_tag(want);
            (n, t.unwrap_or_else(|| "latest".to_string()))
        }
    };
    let Some(catalog) = catalog else {
        return Err(format!(
            "no {CATALOG}, so no image can be chosen by name; leave out image= and tag= to read \
             {DEFAULT_MANIFEST}"
        ));
    };
    let key = catalog
        .keys()
        .find(|k| **k == want_name)
        .or_else(|| catalog.keys().find(|k| same_image(k, &want_name)));
    let found = key.and_then(|k| catalog[k].get(&want_tag).map(|f| (k, f)));
    match found {
        Some((k, f)) => Ok(Located {
            manifest_file: f.clone(),
            catalog_name: Some((k.clone(), want_tag)),
        }),
        None => Err(format!(
            "no image {want_name}:{want_tag} in {CATALOG}; it has: {}",
            listing(Some(catalog))
        )),
    }
}

/// `a:1, a:2, b:latest`, or `nothing`.
fn listing(catalog: Option<&Catalog>) -> String {
    let all: Vec<String> = catalog
        .into_iter()
        .flatten()
        .flat_map(|(i, tags)| tags.keys().map(move |t| format!("{i}:{t}")))
        .collect();
    if all.is_empty() {
        "nothing".into()
    } else {
        all.join(", ")
    }
}

/// Whether two names mean the same repository once a registry host and
/// Docker Hub's `library/` are set aside.
fn same_image(a: &str, b: &str) -> bool {
    fn key(s: &str) -> &str {
        let s = store_image_name(s);
        s.strip_prefix("library/").unwrap_or(s)
    }
    key(a) == key(b)
}

/// A path inside the store as the manifest names it: relative, never `..`,
/// so a tampered manifest cannot make us read elsewhere.
fn checked_name(name: &str) -> std::result::Result<&Path, String> {
    let p = Path::new(name);
    let ok = !name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(p)
    } else {
        Err(format!(
            "{:?} is not a path inside the store",
            crate::digest::truncate_for_error(name)
        ))
    }
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

/// Splits `name:tag` at a `:` after the last `/`, so a registry port is not
/// taken for a tag.
fn split_repo_tag(s: &str) -> (String, Option<String>) {
    let after_slash = s.rfind('/').map_or(0, |i| i + 1);
    match s[after_slash..].rfind(':') {
        Some(i) => (
            s[..after_slash + i].to_string(),
            Some(s[after_slash + i + 1..].to_string()),
        ),
        None => (s.to_string(), None),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(entries: &[(&str, &str, &str)]) -> Catalog {
        let mut c = Catalog::new();
        for (i, t, f) in entries {
            c.entry(i.to_string())
                .or_default()
                .insert(t.to_string(), f.to_string());
        }
        c
    }

    #[test]
    fn lookup() {
        let c = catalog(&[
            ("team/app", "v1", "manifest-team_app-v1.json"),
            ("busybox", "latest", "manifest-busybox-latest.json"),
        ]);
        let f = |i: Option<&str>, t: Option<&str>| locate(Some(&c), i, t).map(|l| l.manifest_file);
        assert_eq!(
            f(Some("team/app"), Some("v1")).unwrap(),
            "manifest-team_app-v1.json"
        );
        assert_eq!(
            f(Some("127.0.0.1:5000/team/app:v1"), None).unwrap(),
            "manifest-team_app-v1.json"
        );
        assert_eq!(
            f(Some("library/busybox"), None).unwrap(),
            "manifest-busybox-latest.json"
        );
        assert_eq!(
            f(Some("docker.io/library/busybox"), Some("latest")).unwrap(),
            "manifest-busybox-latest.json"
        );
        let e = f(Some("team/app"), Some("v9")).unwrap_err();
        assert!(e.contains("busybox:latest, team/app:v1"), "{e}");
        assert!(f(None, None).unwrap_err().contains("several"));
        assert!(f(None, Some("v1")).is_err());
        assert_eq!(
            locate(None, None, None).unwrap().manifest_file,
            DEFAULT_MANIFEST
        );
        assert!(locate(None, Some("a"), None).is_err());
    }

    #[test]
    fn names_stay_inside() {
        assert!(checked_name("abc/layer.tar").is_ok());
        assert!(checked_name("../x").is_err());
        assert!(checked_name("/etc/passwd").is_err());
        assert!(checked_name("a/../../b").is_err());
        assert!(checked_name("").is_err());
    }
}
