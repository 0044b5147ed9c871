//! OCI image layout reader (`oci-layout://PATH[:TAG]`): picks the image by
//! its `org.opencontainers.image.ref.name`, follows an index to the platform
//! asked for, and serves blobs in place after verifying them.
//!
//! The image is named for outputs that need a name (docker-save `RepoTags`,
//! store catalogs) from its `ref.name`: a full reference
//! (`example.com/team/app:v1`) is used as such; a bare tag (`v1`) is paired
//! with the layout directory's name, made a valid repository name
//! (`My Layout` -> `my-layout`), so that `docker load` accepts the result.
//!
//! Files are opened from the layout's root without following a symlink
//! below it, and only regular files are read (see [`StoreRoot`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::error::{Error, Result};
use crate::format::oci_layout::{
    CONTAINERD_NAME, IndexEntry, REF_NAME, TopIndex, blob_rel, read_blob, read_index,
};
use crate::fsutil::StoreRoot;
use crate::image::{
    FileSlice, Image, IndexInfo, LayerInfo, ManifestInfo, Platform, media_type as mt,
};
use crate::registry::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};
use crate::source::{FetchContext, LayerBlob, Source};
use crate::wire::{Descriptor, Index, Manifest, choose_platform, media_type_of, parse_diff_ids};

/// An image in an OCI image layout directory.
pub struct OciLayoutSource {
    root: PathBuf,
    store: Arc<StoreRoot>,
    /// The image's name as the layout gives it (see the module docs).
    name: Option<String>,
    /// The manifest or index the source stands for.
    entry: Descriptor,
    platform: Platform,
    /// The image, read when the source was opened; `None` when the entry is
    /// an index it could not be read through (`resolve` then gives the
    /// error, while the index itself can still be copied whole).
    image: Option<Image>,
}

impl OciLayoutSource {
    /// Opens the layout at `root` and resolves the image tagged `tag` (the
    /// only image, when no tag is given), choosing `platform` from an index.
    pub fn open(root: &Path, tag: Option<&str>, platform: &Platform) -> Result<Self> {
        let store = StoreRoot::open(root)?;
        let index = read_index(&store)?;
        let entry = pick_entry(&index, tag, root)?;
        // Docker 25's `docker save` layouts carry the full name beside a
        // bare-tag ref.name.
        let name = entry
            .annotations
            .get(CONTAINERD_NAME)
            .filter(|n| crate::reference::Reference::parse(n).is_ok())
            .cloned()
            .or_else(|| tag.map(str::to_string))
            .or_else(|| entry.annotations.get(REF_NAME).cloned());
        let mut source = OciLayoutSource {
            root: root.to_path_buf(),
            store: Arc::new(store),
            name,
            entry: entry.descriptor.clone(),
            platform: platform.clone(),
            image: None,
        };
        match source.load() {
            Ok(image) => source.image = Some(image),
            // An index without the platform asked for (or with a broken
            // child) may still be copied platform by platform.
            Err(e) if source.top_index()?.is_none() => return Err(e),
            Err(_) => {}
        }
        Ok(source)
    }

    /// The entry's index, when it is one.
    fn top_index(&self) -> Result<Option<IndexInfo>> {
        let body = read_blob(&self.store, &self.entry, MAX_MANIFEST_BYTES)?;
        let media_type = media_type_of(&self.entry, &body);
        Ok(
            (media_type == mt::OCI_INDEX || media_type == mt::DOCKER_MANIFEST_LIST).then(|| {
                IndexInfo {
                    digest: self.entry.digest.clone(),
                    media_type,
                    raw: body,
                }
            }),
        )
    }

    /// Reads the image the entry stands for, through an index to the
    /// platform asked for.
    fn load(&self) -> Result<Image> {
        let root = &self.root;
        let store = &self.store;
        let bad = |message: String| Error::InvalidArchive {
            path: root.to_path_buf(),
            message,
        };
        let mut descriptor = self.entry.clone();
        let mut from_index = None;
        let mut body = read_blob(store, &descriptor, MAX_MANIFEST_BYTES)?;
        let mut media = media_type_of(&descriptor, &body);
        if media == mt::OCI_INDEX || media == mt::DOCKER_MANIFEST_LIST {
            let nested: Index = serde_json::from_slice(&body)
                .map_err(|e| bad(format!("invalid image index {}: {e}", descriptor.digest)))?;
            let chosen = choose_platform(&nested, &self.platform)?.clone();
            from_index = Some(IndexInfo {
                digest: descriptor.digest.clone(),
                media_type: media,
                raw: body,
            });
            body = read_blob(store, &chosen, MAX_MANIFEST_BYTES)?;
            media = media_type_of(&chosen, &body);
            descriptor = chosen;
        }
        if media != mt::OCI_MANIFEST && media != mt::DOCKER_MANIFEST {
            return Err(Error::Unsupported(format!(
                "manifest media type {media:?} in the layout is not supported"
            )));
        }
        let manifest: Manifest = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("invalid manifest {}: {e}", descriptor.digest)))?;
        let config_raw = read_blob(store, &manifest.config, MAX_CONFIG_BYTES)?;
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
        let (image_name, image_tag) = name_and_tag(self.name.as_deref(), root);
        Ok(Image {
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
        })
    }
}

/// The entry of the layout's index that `tag` names (by its ref.name), or
/// its only entry when no tag is given.
fn pick_entry<'a>(index: &'a TopIndex, tag: Option<&str>, root: &Path) -> Result<&'a IndexEntry> {
    let bad = |message: String| Error::InvalidArchive {
        path: root.to_path_buf(),
        message,
    };
    let names: Vec<&str> = index
        .manifests
        .iter()
        .filter_map(|m| m.annotations.get(REF_NAME).map(String::as_str))
        .collect();
    match tag {
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
            }),
        None if index.manifests.len() == 1 => Ok(&index.manifests[0]),
        None => Err(bad(format!(
            "the layout holds {} images: name one with oci-layout://PATH:TAG ({})",
            index.manifests.len(),
            names.join(", ")
        ))),
    }
}

/// The repository name and tag outputs give the image a layout calls
/// `ref_name` (see the module docs).
fn name_and_tag(ref_name: Option<&str>, root: &Path) -> (String, Option<String>) {
    let Some(r) = ref_name.filter(|r| !r.is_empty()) else {
        return (dir_repo_name(root), None);
    };
    if (r.contains('/') || r.contains(':'))
        && let Ok(reference) = crate::reference::Reference::parse(r)
    {
        let tag = reference.tag.clone().or_else(|| Some("latest".into()));
        return (reference.repository_name(), tag);
    }
    (dir_repo_name(root), Some(valid_tag(r)))
}

/// `tag` as a Docker tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`): other
/// characters become `_`.
fn valid_tag(tag: &str) -> String {
    let mut t: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.starts_with(['.', '-']) {
        t.insert(0, '_');
    }
    t.truncate(128);
    t
}

/// The layout directory's name as a repository name: lower case, runs of
/// other characters turned into single dashes; `image` if nothing is left.
fn dir_repo_name(root: &Path) -> String {
    let dir = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let raw = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let words: Vec<&str> = raw
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|w| !w.is_empty())
        .collect();
    let valid_as_is = !raw.is_empty()
        && raw.len() <= 128
        && raw.starts_with(|c: char| c.is_ascii_alphanumeric())
        && raw.ends_with(|c: char| c.is_ascii_alphanumeric())
        && raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        && !raw.contains("..");
    if valid_as_is {
        raw
    } else if words.is_empty() {
        "image".to_string()
    } else {
        let mut name = words.join("-");
        name.truncate(128);
        name.trim_end_matches('-').to_string()
    }
}

impl Source for OciLayoutSource {
    fn describe(&self) -> String {
        format!("OCI layout {}", self.root.display())
    }

    fn resolve<'a>(&'a self, _ctx: &'a FetchContext) -> BoxFuture<'a, Result<Image>> {
        Box::pin(async move {
            match &self.image {
                Some(image) => Ok(image.clone()),
                // Gives the error `open` put off.
                None => self.load(),
            }
        })
    }

    fn index<'a>(&'a self, _ctx: &'a FetchContext) -> BoxFuture<'a, Result<Option<IndexInfo>>> {
        Box::pin(async move { self.top_index() })
    }

    /// The child by digest in the same layout, under the same name; its
    /// manifest is read (and its digest checked) here.
    fn child(&self, descriptor: &Descriptor) -> Result<Arc<dyn Source>> {
        crate::source::refuse_nested(descriptor)?;
        let mut child = OciLayoutSource {
            root: self.root.clone(),
            store: self.store.clone(),
            name: self.name.clone(),
            entry: descriptor.clone(),
            platform: self.platform.clone(),
            image: None,
        };
        child.image = Some(child.load()?);
        Ok(Arc::new(child))
    }

    fn fetch<'a>(
        &'a self,
        layer: &'a LayerInfo,
        _ctx: &'a FetchContext,
    ) -> BoxFuture<'a, Result<LayerBlob>> {
        Box::pin(async move {
            let rel = blob_rel(&layer.digest);
            let path = self.store.display(&rel);
            let file = self.store.open_file(&rel)?.ok_or_else(|| {
                Error::io("opening blob", &path, std::io::ErrorKind::NotFound.into())
            })?;
            let mut blob = LayerBlob::new(layer, Box::new(file));
            blob.in_place = Some(FileSlice::range(Arc::new(path), 0, layer.size));
            Ok(blob)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    #[test]
    fn names_from_ref_names() {
        let root = Path::new("/nonexistent/My Layout");
        let nt = |r: Option<&str>| name_and_tag(r, root);
        assert_eq!(nt(Some("v1")), ("my-layout".into(), Some("v1".into())));
        assert_eq!(nt(Some("V1.0")), ("my-layout".into(), Some("V1.0".into())));
        assert_eq!(
            nt(Some("1.0+build 7")),
            ("my-layout".into(), Some("1.0_build_7".into()))
        );
        assert_eq!(nt(None), ("my-layout".into(), None));
        assert_eq!(
            nt(Some("example.com/team/app:v2")),
            ("example.com/team/app".into(), Some("v2".into()))
        );
        assert_eq!(
            nt(Some("docker.io/library/busybox:latest")),
            ("busybox".into(), Some("latest".into()))
        );
        assert_eq!(
            nt(Some("localhost:5000/app")),
            ("localhost:5000/app".into(), Some("latest".into()))
        );
        assert_eq!(nt(Some("app:v3")), ("app".into(), Some("v3".into())));
        assert_eq!(
            dir_repo_name(Path::new("/x/skopeo-layout")),
            "skopeo-layout"
        );
        assert_eq!(dir_repo_name(Path::new("/x/a_b.c")), "a_b.c");
        assert_eq!(dir_repo_name(Path::new("/x/--")), "image");
        assert_eq!(dir_repo_name(Path::new("/x/Ünï Çode")), "n-ode");
    }

    /// The index an image is chosen from is kept byte for byte, as the
    /// manifest is, so that a copy can reproduce both digests.
    #[test]
    fn index_and_manifest_bytes_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let put = |data: &[u8]| {
            let d = Digest::sha256_of(data);
            let p = dir.path().join(blob_rel(&d));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
            d
        };
        let config = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = put(config);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{c}","size":{}}},"layers":[]}}"#,
            mt::OCI_MANIFEST,
            mt::OCI_CONFIG,
            config.len()
        );
        let m = put(manifest.as_bytes());
        // Odd spacing on purpose: a re-serialised index would differ.
        let index = format!(
            r#"{{ "schemaVersion": 2, "manifests": [ {{"mediaType":"{}","digest":"{m}","size":{},"platform":{{"os":"linux","architecture":"arm64"}}}} ] }}"#,
            mt::OCI_MANIFEST,
            manifest.len()
        );
        let i = put(index.as_bytes());
        let top = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{i}","size":{},"annotations":{{"{REF_NAME}":"v1"}}}}]}}"#,
            mt::OCI_INDEX,
            index.len()
        );
        std::fs::write(dir.path().join("index.json"), top).unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let platform = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: None,
        };
        let source = OciLayoutSource::open(dir.path(), Some("v1"), &platform).unwrap();
        let got = source.image.as_ref().unwrap().manifest.as_ref().unwrap();
        assert_eq!(got.raw, manifest.as_bytes());
        assert_eq!(got.digest, m);
        let ix = got.index.as_ref().unwrap();
        assert_eq!(ix.raw, index.as_bytes());
        assert_eq!(Digest::sha256_of(&ix.raw), ix.digest);
        assert_eq!(ix.digest, i);
        assert_eq!(ix.media_type, mt::OCI_INDEX);
    }
}
