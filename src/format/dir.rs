//! The layer store of `dir://` (the Python occystrap's layout): each layer
//! once, uncompressed, as `<diff_id hex>/layer.tar`; each config as
//! `<sha256 hex>.json`; a docker-save manifest per image (`manifest.json`,
//! or `manifest-<image>-<tag>.json` with `unique_names`); and `catalog.json`
//! mapping image and tag to that manifest, updated under `.occystrap.lock`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::format::docker_save::split_repo_tag;
use crate::fsutil::StoreRoot;
use crate::image::Image;

/// The store's index: image -> tag -> manifest file name.
pub(crate) const CATALOG: &str = "catalog.json";
/// The manifest file of a store written without `unique_names`.
pub(crate) const DEFAULT_MANIFEST: &str = "manifest.json";
/// Lock file serialising updates of the catalog between processes.
pub(crate) const LOCK_FILE: &str = ".occystrap.lock";
/// Largest catalog we read; a real one is a few KiB per image.
const CATALOG_LIMIT: u64 = 64 << 20;

/// A store's catalog: image -> tag -> manifest file name.
pub(crate) type Catalog = BTreeMap<String, BTreeMap<String, String>>;

/// The name an image is filed under in a store: its repository without a
/// registry host (`127.0.0.1:5000/team/app` -> `team/app`), which is what the
/// Python occystrap keys its catalog by.
pub(crate) fn store_image_name(name: &str) -> &str {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            rest
        }
        _ => name,
    }
}

/// The catalog's tag for an image: its tag, else the digest it was pulled by,
/// else `latest`.
pub(crate) fn store_tag(image: &Image) -> String {
    match (&image.tag, &image.manifest) {
        (Some(t), _) => t.clone(),
        (None, Some(m)) => m.digest.to_string(),
        (None, None) => "latest".to_string(),
    }
}

/// The manifest file's name without `.json`; also the name of the expanded
/// rootfs directory, as in the Python occystrap.
pub(crate) fn manifest_stem(image_key: &str, tag: &str, unique_names: bool) -> String {
    if unique_names {
        format!(
            "manifest-{}-{}",
            image_key.replace('/', "_"),
            tag.replace(['/', ':'], "_")
        )
    } else {
        "manifest".to_string()
    }
}

/// Where a layer lives in a store, relative to its root.
pub(crate) fn layer_rel(diff_id: &Digest) -> PathBuf {
    Path::new(&diff_id.hex()).join("layer.tar")
}

/// A layer's file name in a run's own directory (see [`fsutil::RunDir`]).
pub(crate) fn run_layer_name(diff_id: &Digest) -> String {
    format!("{}.tar", diff_id.hex())
}

/// Where a layer a run holds as `name` ([`run_layer_name`]) goes in the
/// store.
pub(crate) fn layer_rel_of_run_name(name: &str) -> PathBuf {
    let hex = name.strip_suffix(".tar").unwrap_or(name);
    Path::new(hex).join("layer.tar")
}

/// Reads a store's `catalog.json`, not following a link; `None` when there
/// is none.
pub(crate) fn read_store_catalog(store: &StoreRoot) -> Result<Option<Catalog>> {
    let rel = Path::new(CATALOG);
    let Some(file) = store.open_file(rel)? else {
        return Ok(None);
    };
    parse_catalog(file, &store.display(rel))
}

fn parse_catalog(file: File, path: &Path) -> Result<Option<Catalog>> {
    let mut raw = Vec::new();
    file.take(CATALOG_LIMIT + 1)
        .read_to_end(&mut raw)
        .map_err(|e| Error::io("reading", path, e))?;
    if raw.len() as u64 > CATALOG_LIMIT {
        return Err(Error::InvalidArchive {
            path: path.to_path_buf(),
            message: format!("larger than the {} MiB limit", CATALOG_LIMIT >> 20),
        });
    }
    serde_json::from_slice(&raw)
        .map(Some)
        .map_err(|e| Error::InvalidArchive {
            path: path.to_path_buf(),
            message: format!("not a catalog ({{image: {{tag: manifest file}}}}): {e}"),
        })
}

/// The catalog with the image filed under its store name and tag, encoded
/// as the store keeps it.
pub(crate) fn encode_catalog(
    mut catalog: Catalog,
    image: &Image,
    manifest_file: &str,
) -> Result<Vec<u8>> {
    catalog
        .entry(store_image_name(&image.name).to_string())
        .or_default()
        .insert(store_tag(image), manifest_file.to_string());
    let mut data = serde_json::to_vec_pretty(&catalog)
        .map_err(|e| Error::InvalidImage(format!("encoding {CATALOG}: {e}")))?;
    data.push(b'\n');
    Ok(data)
}

/// Where the manifest was found, and the name the catalog gives the image.
pub(crate) struct Located {
    /// The manifest file, as the catalog names it (unchecked).
    pub(crate) manifest_file: String,
    /// The image's name and tag in the catalog, when it has one.
    pub(crate) catalog_name: Option<(String, String)>,
}

/// Finds the manifest file for the image asked for.
pub(crate) fn locate(
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
pub(crate) fn same_image(a: &str, b: &str) -> bool {
    fn key(s: &str) -> &str {
        let s = store_image_name(s);
        s.strip_prefix("library/").unwrap_or(s)
    }
    key(a) == key(b)
}

/// A path inside the store as a manifest names it: relative, never `..`,
/// so a tampered manifest cannot make us read elsewhere.
pub(crate) fn checked_name(name: &str) -> std::result::Result<&Path, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_keys() {
        assert_eq!(store_image_name("127.0.0.1:5000/team/app"), "team/app");
        assert_eq!(store_image_name("ghcr.io/org/app"), "org/app");
        assert_eq!(store_image_name("localhost/app"), "app");
        assert_eq!(store_image_name("busybox"), "busybox");
        assert_eq!(store_image_name("team/app"), "team/app");
        assert_eq!(store_image_name("library/busybox"), "library/busybox");
        assert_eq!(
            manifest_stem("team/app", "v1", true),
            "manifest-team_app-v1"
        );
        assert_eq!(manifest_stem("team/app", "v1", false), "manifest");
    }

    #[test]
    fn run_names_map_to_store_places() {
        let d = Digest::sha256_of(b"layer");
        assert_eq!(layer_rel_of_run_name(&run_layer_name(&d)), layer_rel(&d));
        assert_eq!(
            layer_rel(&d).to_str().unwrap(),
            crate::format::docker_save::layer_member(&d)
        );
    }

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
