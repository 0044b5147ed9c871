//! The OCI image layout: an `oci-layout` marker, `index.json` (an OCI index
//! whose entries name images by the `org.opencontainers.image.ref.name`
//! annotation) and content-addressed `blobs/ALG/HEX`. The reader and the
//! writer of `oci-layout://` both go through here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::digest::{Digest, HashingReader};
use crate::error::{Error, Result};
use crate::fsutil::StoreRoot;
use crate::image::media_type as mt;
use crate::registry::MAX_MANIFEST_BYTES;
use crate::wire::Descriptor;

/// The annotation that names an image in `index.json`.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation containerd and Docker 25+ put the full image name in.
pub(crate) const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The marker file's name.
pub(crate) const MARKER: &str = "oci-layout";
/// The marker file's content.
const LAYOUT_MARKER: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// The layout's index.
pub(crate) const INDEX: &str = "index.json";
/// Lock file serialising updates of `index.json` between processes.
const LOCK_FILE: &str = ".occystrap.lock";
/// Where sha256 blobs live, relative to the root.
pub(crate) const SHA256_BLOBS: &str = "blobs/sha256";

/// Where a blob lives in a layout, relative to its root.
pub(crate) fn blob_rel(d: &Digest) -> PathBuf {
    let algo = match d.algorithm() {
        crate::digest::Algorithm::Sha256 => "sha256",
        crate::digest::Algorithm::Sha512 => "sha512",
    };
    Path::new("blobs").join(algo).join(d.hex())
}

/// One entry of `index.json` as the reader takes it.
#[derive(Deserialize)]
pub(crate) struct IndexEntry {
    /// What it points to.
    #[serde(flatten)]
    pub(crate) descriptor: Descriptor,
    /// Its annotations (`ref.name` among them).
    #[serde(default)]
    pub(crate) annotations: HashMap<String, String>,
}

/// `index.json` as the reader takes it.
#[derive(Deserialize)]
pub(crate) struct TopIndex {
    /// The images (or nested indexes) of the layout.
    pub(crate) manifests: Vec<IndexEntry>,
}

/// Reads a file of the layout, at most `max` bytes.
pub(crate) fn read_capped(store: &StoreRoot, rel: &Path, max: u64) -> Result<Vec<u8>> {
    store.read_small(rel, max)?.ok_or_else(|| {
        Error::io(
            "reading",
            store.display(rel),
            std::io::ErrorKind::NotFound.into(),
        )
    })
}

/// Reads and parses the layout's `index.json` (at most a manifest's size).
pub(crate) fn read_index(store: &StoreRoot) -> Result<TopIndex> {
    let raw = read_capped(store, Path::new(INDEX), MAX_MANIFEST_BYTES)?;
    serde_json::from_slice(&raw).map_err(|e| Error::InvalidArchive {
        path: store.path().to_path_buf(),
        message: format!("index.json is not a valid OCI index: {e}"),
    })
}

/// Reads a small blob and checks it against its descriptor.
pub(crate) fn read_blob(store: &StoreRoot, d: &Descriptor, max: u64) -> Result<Vec<u8>> {
    let rel = blob_rel(&d.digest);
    let path = store.display(&rel);
    let data = read_capped(store, &rel, max)?;
    let mut h = HashingReader::new(&data[..], d.digest.algorithm());
    std::io::copy(&mut h, &mut std::io::sink()).map_err(|e| Error::io("reading", &path, e))?;
    let (found, size): (Digest, u64) = h.finish();
    if found != d.digest {
        return Err(Error::DigestMismatch {
            kind: crate::error::Mismatch::BlobDigest,
            what: format!("blob {}", d.digest),
            expected: d.digest.clone(),
            found,
        });
    }
    if size != d.size {
        return Err(Error::SizeMismatch {
            kind: crate::error::Mismatch::BlobSize,
            what: format!("blob {}", d.digest),
            expected: d.size,
            found: size,
        });
    }
    Ok(data)
}

/// Whether `root` has the marker as a regular file. A FIFO, device or
/// link as the marker is refused by name.
pub(crate) fn has_marker(root: &StoreRoot) -> Result<bool> {
    match root.kind(Path::new(MARKER))? {
        Some(rustix::fs::FileType::RegularFile) => Ok(true),
        None => Ok(false),
        Some(_) => root.open_file(Path::new(MARKER)).map(|_| true),
    }
}

/// Makes `root` a layout: `blobs/sha256/` and the `oci-layout` marker.
pub(crate) fn prepare_layout(root: &StoreRoot) -> Result<()> {
    root.dir(Path::new(SHA256_BLOBS), true)?;
    match root.kind(Path::new(MARKER))? {
        None => root.atomic_write(Path::new(MARKER), LAYOUT_MARKER)?,
        Some(rustix::fs::FileType::RegularFile) => {}
        // A FIFO or link as the marker: refused, not opened or replaced.
        Some(_) => {
            root.open_file(Path::new(MARKER))?;
        }
    }
    Ok(())
}

/// The `index.json` entry naming the manifest `digest` (of `size` bytes,
/// of `media_type`) as `tag`.
pub(crate) fn index_entry(
    media_type: &str,
    digest: &Digest,
    size: usize,
    tag: Option<&str>,
) -> Value {
    let mut entry = json!({
        "mediaType": media_type,
        "digest": digest.to_string(),
        "size": size,
    });
    if let Some(t) = tag {
        entry["annotations"] = json!({ REF_NAME: t });
    }
    entry
}

/// Adds `entry` to the layout's `index.json` under the layout's lock,
/// replacing the entry with the same tag (or, untagged, the same digest).
/// Returns the bytes written.
/// `before_write` runs under the lock once the old index has been read.
pub(crate) fn add_to_index(
    root: &StoreRoot,
    entry: &Value,
    tag: Option<&str>,
    manifest_digest: &Digest,
    cancel: &crate::cancel::CancelToken,
    before_write: impl FnOnce() -> Result<()>,
) -> Result<u64> {
    let _lock = root.lock(LOCK_FILE, cancel)?;
    let index_rel = Path::new(INDEX);
    let index_path = root.display(index_rel);
    let mut index: Value = match root.read_small(index_rel, MAX_MANIFEST_BYTES)? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| Error::InvalidArchive {
            path: index_path.clone(),
            message: format!("existing index.json is not valid JSON: {e}"),
        })?,
        None => json!({"schemaVersion": 2, "mediaType": mt::OCI_INDEX, "manifests": []}),
    };
    let manifests = index
        .get_mut("manifests")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| Error::InvalidArchive {
            path: index_path.clone(),
            message: "index.json has no manifests array".into(),
        })?;
    // One entry per tag: re-pulling a tag replaces it. Untagged images
    // are kept once per digest.
    let digest = manifest_digest.to_string();
    manifests.retain(|m| match tag {
        Some(t) => m["annotations"][REF_NAME].as_str() != Some(t),
        None => m["digest"].as_str() != Some(digest.as_str()),
    });
    manifests.push(entry.clone());
    let bytes = serde_json::to_vec_pretty(&index)
        .map_err(|e| Error::InvalidImage(format!("serialising index.json: {e}")))?;
    before_write()?;
    root.atomic_write(index_rel, &bytes)?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_places() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(blob_rel(&d), Path::new(SHA256_BLOBS).join(d.hex()));
    }

    #[test]
    fn index_entries_are_replaced_by_tag_or_digest() {
        let dir = tempfile::tempdir().unwrap();
        let root = StoreRoot::open(dir.path()).unwrap();
        prepare_layout(&root).unwrap();
        assert!(has_marker(&root).unwrap());
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        let add = |d: &Digest, tag: Option<&str>| {
            let e = index_entry(mt::OCI_MANIFEST, d, 1, tag);
            add_to_index(
                &root,
                &e,
                tag,
                d,
                &crate::cancel::CancelToken::new(),
                || Ok(()),
            )
            .unwrap();
        };
        add(&a, Some("v1"));
        add(&b, Some("v1"));
        add(&a, None);
        add(&a, None);
        let index = read_index(&root).unwrap();
        let seen: Vec<(String, Option<&str>)> = index
            .manifests
            .iter()
            .map(|m| {
                (
                    m.descriptor.digest.to_string(),
                    m.annotations.get(REF_NAME).map(String::as_str),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![(b.to_string(), Some("v1")), (a.to_string(), None)]
        );
    }

    #[test]
    fn hostile_index_files_are_refused() {
        for bad in [
            &b"not json"[..],
            br#"{"manifests":{}}"#,
            br#"{"manifests":[{"digest":"sha256:0"}]}"#,
            br#"[]"#,
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(INDEX), bad).unwrap();
            let root = StoreRoot::open(dir.path()).unwrap();
            assert!(read_index(&root).is_err());
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INDEX), br#"{"manifests":5}"#).unwrap();
        let root = StoreRoot::open(dir.path()).unwrap();
        let e = index_entry(mt::OCI_MANIFEST, &Digest::sha256_of(b"a"), 1, None);
        let r = add_to_index(
            &root,
            &e,
            None,
            &Digest::sha256_of(b"a"),
            &crate::cancel::CancelToken::new(),
            || Ok(()),
        );
        assert!(r.unwrap_err().to_string().contains("no manifests array"));
    }
}
