//! Copying one manifest of any artifact type between repositories exactly,
//! its digest preserved: an image manifest, an index, a cosign signature,
//! an SBOM, an attestation. Nothing is unpacked or rewritten; config and
//! layers may be any media type.
//!
//! The order makes an interrupted copy safe to repeat: every blob, and for
//! an index every child manifest, is in the destination before the
//! manifest that names it is PUT, and what the destination already holds
//! (a HEAD by digest) is not fetched again. Every byte taken from the
//! source is checked against the digest and size that named it before
//! anything made of it goes to the destination; a source that lies gets
//! no manifest written.
//!
//! A manifest's `subject` is not copied: it is the image the artifact is
//! about, which the caller copies (or already has).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Mismatch, Result};
use crate::image::media_type as mt;
use crate::registry::{BlobOpener, MAX_MANIFEST_BYTES, Repository};

/// How deep indexes may nest below the manifest asked for.
pub const MAX_DEPTH: usize = 4;
/// Manifests one copy may meet in all (the top one and every child).
pub const MAX_MANIFESTS: usize = 1024;
/// Blobs one manifest may name.
pub const MAX_BLOBS: usize = 1024;
/// Blobs up to this size are fetched into memory; larger ones are spooled
/// to a temporary file.
const IN_MEMORY: u64 = 1 << 20;
/// Blobs of one manifest in flight at once (the context's request limit
/// still applies).
const BLOBS_AT_ONCE: usize = 4;

/// What [`copy_raw`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawCopied {
    /// The manifest's digest, the same in both repositories.
    pub digest: Digest,
    /// Its media type, as it was PUT.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// Manifests PUT: this one and any children the destination lacked. 0
    /// when the destination already had it (under the tag, if one was given).
    pub manifests: usize,
    /// Blobs uploaded.
    pub blobs: usize,
    /// Bytes of blobs uploaded.
    pub bytes: u64,
}

impl RawCopied {
    /// Whether nothing had to be written.
    pub fn skipped(&self) -> bool {
        self.manifests == 0
    }
}

/// A descriptor as any manifest carries it; only what a copy needs.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct Desc {
    #[serde(default)]
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default)]
    urls: Option<Vec<String>>,
}

/// The parts of any manifest or index that name other content. `subject`
/// is left out on purpose.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Doc {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Desc>>,
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Option<Vec<Desc>>,
    /// The blobs of an OCI 1.1-rc artifact manifest.
    #[serde(default)]
    blobs: Option<Vec<Desc>>,
}

/// Running totals and bounds of one copy.
struct Tally {
    manifests_seen: usize,
    manifests_put: usize,
    blobs: usize,
    bytes: u64,
}

/// Copies the manifest `reference` (a tag, or a digest, which the bytes
/// are checked against) from `src` to `dst`, with everything it names; PUT
/// last under `tag`, or by its digest when `tag` is `None`. Blobs larger
/// than 1 MiB are spooled under `temp_dir`.
///
/// Costs nothing beyond HEADs when the destination already has it: by
/// digest, one HEAD on `dst` (and, with a tag, one of the tag); by tag,
/// the source manifest is read to learn its digest.
pub async fn copy_raw(
    src: &Repository,
    dst: &Repository,
    reference: &str,
    tag: Option<&str>,
    temp_dir: &Path,
) -> Result<RawCopied> {
    let wanted = match reference.contains(':') {
        true => Some(reference.parse::<Digest>()?),
        false => None,
    };
    let mut present = None;
    if let Some(d) = &wanted {
        let there = match tag {
            Some(t) => dst.manifest_digest(t).await?.as_ref() == Some(d),
            None => {
                present = Some(dst.manifest_digest(&d.to_string()).await?.is_some());
                present == Some(true)
            }
        };
        if there {
            // Its size and type are the destination's business; report
            // what the descriptor-free HEAD can give.
            return Ok(RawCopied {
                digest: d.clone(),
                media_type: String::new(),
                size: 0,
                manifests: 0,
                blobs: 0,
                bytes: 0,
            });
        }
    }
    let (bytes, content_type) = src.get_manifest(reference).await?;
    let digest = match &wanted {
        Some(d) => {
            check_manifest(d, None, &bytes, &format!("manifest {reference}"))?;
            d.clone()
        }
        None => Digest::sha256_of(&bytes),
    };
    let doc = parse_doc(&bytes)?;
    let media_type = media_type_of(&doc, content_type.as_deref())?;
    let done = |tally: &Tally| RawCopied {
        digest: digest.clone(),
        media_type: media_type.clone(),
        size: bytes.len() as u64,
        manifests: tally.manifests_put,
        blobs: tally.blobs,
        bytes: tally.bytes,
    };
    let mut tally = Tally {
        manifests_seen: 1,
        manifests_put: 0,
        blobs: 0,
        bytes: 0,
    };
    if let (None, Some(t)) = (&wanted, tag)
        && dst.manifest_digest(t).await?.as_ref() == Some(&digest)
    {
        return Ok(done(&tally));
    }
    let present = match present {
        Some(p) => p,
        None => dst.manifest_digest(&digest.to_string()).await?.is_some(),
    };
    if !present {
        copy_contents(src, dst, &doc, &media_type, 0, temp_dir, &mut tally).await?;
    }
    let target = tag.map_or_else(|| digest.to_string(), str::to_string);
    put(dst, &target, &media_type, bytes.clone(), &digest).await?;
    tally.manifests_put += 1;
    Ok(done(&tally))
}

/// PUTs a manifest and checks the digest the destination will name it by.
async fn put(
    dst: &Repository,
    target: &str,
    media_type: &str,
    bytes: Vec<u8>,
    digest: &Digest,
) -> Result<()> {
    let stored = dst.put_manifest(target, media_type, bytes).await?;
    if &stored != digest {
        // Only a sha512 manifest gets here: we hash what we send as sha256.
        tracing::debug!(
            "{}: {target} stored as {stored}, copied {digest}",
            dst.host()
        );
    }
    Ok(())
}

/// Puts into `dst` what the document names: for an index its children
/// (each PUT by digest), else its blobs.
async fn copy_contents(
    src: &Repository,
    dst: &Repository,
    doc: &Doc,
    media_type: &str,
    depth: usize,
    temp_dir: &Path,
    tally: &mut Tally,
) -> Result<()> {
    if is_index(doc, media_type) {
        let children = doc.manifests.as_deref().unwrap_or_default();
        tally.manifests_seen += children.len();
        if tally.manifests_seen > MAX_MANIFESTS {
            return Err(Error::InvalidImage(format!(
                "the index names more than {MAX_MANIFESTS} manifests in all; refusing to copy it"
            )));
        }
        let mut seen = HashSet::new();
        for child in children.iter().filter(|c| seen.insert(c.digest.clone())) {
            copy_child(src, dst, child, depth + 1, temp_dir, tally).await?;
        }
        return Ok(());
    }
    let mut blobs: Vec<&Desc> = doc.config.iter().collect();
    blobs.extend(doc.layers.iter().flatten());
    blobs.extend(doc.blobs.iter().flatten());
    if blobs.len() > MAX_BLOBS {
        return Err(Error::InvalidImage(format!(
            "the manifest names {} blobs, more than the {MAX_BLOBS} allowed",
            blobs.len()
        )));
    }
    let mut seen = HashSet::new();
    blobs.retain(|b| seen.insert(b.digest.clone()) && !foreign(b));
    // The futures are made up front: a closure inside the stream would
    // not be `Send` for every lifetime, which the boxed recursion needs.
    let copies: Vec<_> = blobs
        .into_iter()
        .map(|b| copy_blob(src, dst, b, temp_dir))
        .collect();
    let results: Vec<Result<Option<u64>>> = futures_util::stream::iter(copies)
        .buffer_unordered(BLOBS_AT_ONCE)
        .collect()
        .await;
    for r in results {
        if let Some(n) = r? {
            tally.blobs += 1;
            tally.bytes += n;
        }
    }
    Ok(())
}

/// Copies the child manifest `d` of an index, PUT by digest, unless the
/// destination has it.
fn copy_child<'a>(
    src: &'a Repository,
    dst: &'a Repository,
    d: &'a Desc,
    depth: usize,
    temp_dir: &'a Path,
    tally: &'a mut Tally,
) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        if depth > MAX_DEPTH {
            return Err(Error::InvalidImage(format!(
                "indexes nest more than {MAX_DEPTH} deep; refusing to copy them"
            )));
        }
        let reference = d.digest.to_string();
        if dst.manifest_digest(&reference).await?.is_some() {
            return Ok(());
        }
        if d.size > MAX_MANIFEST_BYTES {
            return Err(Error::InvalidImage(format!(
                "manifest {} is {} bytes, more than the {MAX_MANIFEST_BYTES} allowed",
                d.digest, d.size
            )));
        }
        let (bytes, content_type) = src.get_manifest(&reference).await?;
        check_manifest(
            &d.digest,
            Some(d.size),
            &bytes,
            &format!("manifest {reference}"),
        )?;
        let doc = parse_doc(&bytes)?;
        // Without a type of its own, the index's word for it is what a
        // client reading the index expects.
        let hint = Some(d.media_type.as_str()).filter(|m| !m.is_empty());
        let media_type = media_type_of(&doc, hint.or(content_type.as_deref()))?;
        copy_contents(src, dst, &doc, &media_type, depth, temp_dir, tally).await?;
        put(dst, &reference, &media_type, bytes, &d.digest).await?;
        tally.manifests_put += 1;
        Ok(())
    })
}

/// Copies one blob unless the destination has it: the bytes uploaded, or
/// `None`.
async fn copy_blob(
    src: &Repository,
    dst: &Repository,
    d: &Desc,
    temp_dir: &Path,
) -> Result<Option<u64>> {
    if let Some(have) = dst.blob_exists(&d.digest).await? {
        // A registry that leaves out Content-Length on a HEAD says 0.
        if have != 0 && have != d.size {
            return Err(Error::SizeMismatch {
                kind: Mismatch::BlobSize,
                what: format!("blob {} (as the destination holds it)", d.digest),
                expected: d.size,
                found: have,
            });
        }
        return Ok(None);
    }
    let open: BlobOpener = if d.size <= IN_MEMORY {
        let body = Arc::new(src.get_small_blob(&d.digest, d.size, IN_MEMORY).await?);
        Arc::new(move || {
            Ok(Box::new(std::io::Cursor::new(ArcBytes(body.clone())))
                as Box<dyn std::io::Read + Send>)
        })
    } else {
        let path = Arc::new(spool(src, d, temp_dir).await?);
        Arc::new(move || {
            let f = std::fs::File::open(&**path)?;
            Ok(Box::new(f) as Box<dyn std::io::Read + Send>)
        })
    };
    dst.upload_blob(&d.digest, d.size, open).await?;
    Ok(Some(d.size))
}

/// Shared bytes a cursor can read.
struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Streams a blob from `src` into a temporary file under `dir`, checking
/// its digest and size; the file goes when the path is dropped.
async fn spool(src: &Repository, d: &Desc, dir: &Path) -> Result<tempfile::TempPath> {
    let (file, path) = tempfile::Builder::new()
        .prefix(".occy-raw-")
        .tempfile_in(dir)
        .map_err(|e| Error::io("creating a temporary file in", dir, e))?
        .into_parts();
    let mut out = tokio::fs::File::from_std(file);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let write = async {
        let mut hasher = Hasher::new(d.digest.algorithm());
        let mut count = 0u64;
        while let Some(chunk) = rx.recv().await {
            hasher.update(&chunk);
            count += chunk.len() as u64;
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        std::io::Result::Ok((hasher.finish(), count))
    };
    let (streamed, written) = tokio::join!(src.stream_blob(&d.digest, d.size, tx, |_| {}), write);
    streamed?;
    let (found, count) = written.map_err(|e| Error::io("writing", &*path, e))?;
    let what = || format!("blob {}", d.digest);
    if count != d.size {
        return Err(Error::SizeMismatch {
            kind: Mismatch::BlobSize,
            what: what(),
            expected: d.size,
            found: count,
        });
    }
    if found != d.digest {
        return Err(Error::DigestMismatch {
            kind: Mismatch::BlobDigest,
            what: what(),
            expected: d.digest.clone(),
            found,
        });
    }
    Ok(path)
}

/// Refuses manifest bytes that are not `digest` (and `size`, when a
/// descriptor gave one).
fn check_manifest(digest: &Digest, size: Option<u64>, bytes: &[u8], what: &str) -> Result<()> {
    if let Some(size) = size
        && bytes.len() as u64 != size
    {
        return Err(Error::SizeMismatch {
            kind: Mismatch::Manifest,
            what: what.to_string(),
            expected: size,
            found: bytes.len() as u64,
        });
    }
    let mut h = Hasher::new(digest.algorithm());
    h.update(bytes);
    let found = h.finish();
    if &found != digest {
        return Err(Error::DigestMismatch {
            kind: Mismatch::Manifest,
            what: what.to_string(),
            expected: digest.clone(),
            found,
        });
    }
    Ok(())
}

fn parse_doc(bytes: &[u8]) -> Result<Doc> {
    let doc: Doc = serde_json::from_slice(bytes)
        .map_err(|e| Error::InvalidImage(format!("manifest is not one we can copy: {e}")))?;
    if doc.schema_version == Some(1) {
        return Err(Error::Unsupported(
            "Docker schema 1 manifests cannot be copied exactly".into(),
        ));
    }
    Ok(doc)
}

/// The media type to PUT a manifest with: the document's own, else a
/// specific Content-Type, else what its shape says.
fn media_type_of(doc: &Doc, content_type: Option<&str>) -> Result<String> {
    if let Some(m) = doc.media_type.as_deref().map(mt::essence)
        && !m.is_empty()
    {
        return Ok(m.to_string());
    }
    if let Some(c) = content_type
        .map(mt::essence)
        .filter(|c| c.starts_with("application/vnd."))
    {
        return Ok(c.to_string());
    }
    if doc.manifests.is_some() {
        Ok(mt::OCI_INDEX.to_string())
    } else if doc.config.is_some() {
        Ok(mt::OCI_MANIFEST.to_string())
    } else {
        Err(Error::InvalidImage(
            "manifest has neither a media type, a config nor manifests".into(),
        ))
    }
}

fn is_index(doc: &Doc, media_type: &str) -> bool {
    match media_type {
        mt::OCI_INDEX | mt::DOCKER_MANIFEST_LIST => true,
        mt::OCI_MANIFEST | mt::DOCKER_MANIFEST => false,
        _ => doc.manifests.is_some() && doc.config.is_none(),
    }
}

/// A layer that lives elsewhere (`urls`), which registries need not hold.
fn foreign(d: &Desc) -> bool {
    d.urls.as_ref().is_some_and(|u| !u.is_empty())
        && (d.media_type.contains("foreign") || d.media_type.contains("nondistributable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn media_types_come_from_the_document_first() {
        let doc = parse_doc(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0}}"#).unwrap();
        assert_eq!(
            media_type_of(&doc, Some(mt::DOCKER_MANIFEST)).unwrap(),
            mt::OCI_MANIFEST
        );
        let bare = parse_doc(br#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
        assert_eq!(
            media_type_of(&bare, Some("application/json")).unwrap(),
            mt::OCI_INDEX
        );
        assert_eq!(
            media_type_of(&bare, Some(mt::DOCKER_MANIFEST_LIST)).unwrap(),
            mt::DOCKER_MANIFEST_LIST
        );
        assert!(is_index(&bare, mt::OCI_INDEX));
        let nothing = parse_doc(br#"{"schemaVersion":2}"#).unwrap();
        assert!(media_type_of(&nothing, None).is_err());
    }

    #[test]
    fn hostile_documents_are_refused() {
        for bad in [
            &b"not json"[..],
            br#"{"schemaVersion":1,"fsLayers":[]}"#,
            br#"{"schemaVersion":2,"config":{"digest":"sha256:../x","size":1}}"#,
            br#"{"schemaVersion":2,"layers":[{"digest":"sha256:e3b0","size":1}]}"#,
            br#"{"schemaVersion":2,"manifests":[{"size":1}]}"#,
        ] {
            assert!(parse_doc(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn manifests_are_checked_against_their_descriptor() {
        let d: Digest = D.parse().unwrap();
        assert!(check_manifest(&d, Some(0), b"", "m").is_ok());
        assert!(matches!(
            check_manifest(&d, Some(1), b"", "m"),
            Err(Error::SizeMismatch { .. })
        ));
        assert!(matches!(
            check_manifest(&d, None, b"x", "m"),
            Err(Error::DigestMismatch { .. })
        ));
    }

    #[test]
    fn foreign_layers_are_left_where_they_are() {
        let d = |mt: &str, urls: Option<Vec<String>>| Desc {
            media_type: mt.into(),
            digest: D.parse().unwrap(),
            size: 1,
            urls,
        };
        let urls = Some(vec!["https://example.com/l".to_string()]);
        assert!(foreign(&d(mt::DOCKER_LAYER_FOREIGN, urls.clone())));
        assert!(!foreign(&d(mt::DOCKER_LAYER_FOREIGN, None)));
        assert!(!foreign(&d(mt::OCI_LAYER_GZIP, urls)));
    }
}
