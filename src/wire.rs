//! The wire types of images: descriptors, manifests, indexes, platforms and
//! the part of a config this crate reads, with the rules that read them
//! (what a manifest response is, which index entry fits a platform).
//!
//! Every source and sink that meets these documents (registries, OCI
//! layouts, inspection) reads them through here. They are parsed for what
//! they say, never re-serialised: the bytes as fetched are kept beside them
//! ([`crate::image::ManifestInfo`]), so a copy can reproduce their digests.
//!
//! These are serde types of our own rather than `oci-spec`'s: `oci-spec`
//! requires `mediaType` on every descriptor and parses digests more loosely
//! than [`Digest`], so switching would change which documents are accepted.

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Platform, media_type as mt};

pub mod index_plan;

/// A content descriptor as manifests carry it.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the target.
    #[serde(default)]
    pub media_type: String,
    /// Digest of the target.
    pub digest: Digest,
    /// Size of the target in bytes.
    pub size: u64,
    /// Platform, in index entries.
    #[serde(default)]
    pub platform: Option<PlatformSpec>,
    /// Alternative locations (foreign layers).
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

/// The platform object of an index entry.
#[derive(Deserialize, Debug, Clone)]
pub struct PlatformSpec {
    /// Architecture (`amd64`).
    #[serde(default)]
    pub architecture: String,
    /// Operating system (`linux`).
    #[serde(default)]
    pub os: String,
    /// CPU variant (`v7`).
    #[serde(default)]
    pub variant: Option<String>,
}

/// A single-image manifest (Docker schema 2 or OCI).
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Must be 2.
    pub schema_version: u32,
    /// Declared media type, if present.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
}

/// A multi-platform index (Docker manifest list or OCI index).
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Must be 2.
    pub schema_version: u32,
    /// The per-platform manifests.
    pub manifests: Vec<Descriptor>,
}

/// The parts of an image config this crate reads.
#[derive(Deserialize, Debug)]
pub struct ConfigRootfs {
    /// `rootfs` section.
    pub rootfs: Rootfs,
}

/// `rootfs` of an image config.
#[derive(Deserialize, Debug)]
pub struct Rootfs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Digests of the uncompressed layers, bottom first.
    pub diff_ids: Vec<Digest>,
}

/// What kind of document a manifest response is.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum Kind {
    /// A multi-platform index.
    Index,
    /// A single-image manifest.
    Manifest,
    /// A Docker v2 schema 1 manifest (not supported past classification).
    Schema1,
}

/// Says what a manifest response is, and its media type: a specific
/// `Content-Type` is trusted, a generic one falls back to the document.
pub(crate) fn classify(content_type: Option<&str>, body: &[u8]) -> Result<(Kind, String)> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<u32>,
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(body)
        .map_err(|e| Error::InvalidImage(format!("manifest is not valid JSON: {e}")))?;
    // Trust a specific Content-Type; fall back to the document when the server
    // sent a generic one.
    let declared = content_type
        .filter(|c| c.starts_with("application/vnd."))
        .map(str::to_string)
        .or(probe.media_type.clone());
    let kind = match declared.as_deref() {
        Some(mt::OCI_INDEX) | Some(mt::DOCKER_MANIFEST_LIST) => Kind::Index,
        Some(mt::OCI_MANIFEST) | Some(mt::DOCKER_MANIFEST) => Kind::Manifest,
        Some(mt::DOCKER_SCHEMA1) | Some(mt::DOCKER_SCHEMA1_SIGNED) => Kind::Schema1,
        Some(other) => {
            return Err(Error::Unsupported(format!(
                "unsupported manifest media type {}",
                crate::digest::truncate_for_error(other)
            )));
        }
        None if probe.schema_version == Some(1) => Kind::Schema1,
        None if probe.manifests.is_some() => Kind::Index,
        None if probe.config.is_some() => Kind::Manifest,
        None => {
            return Err(Error::InvalidImage(
                "manifest has neither a media type, layers nor manifests".into(),
            ));
        }
    };
    if kind != Kind::Schema1 && probe.schema_version.is_some_and(|v| v == 1) {
        return Ok((Kind::Schema1, mt::DOCKER_SCHEMA1.to_string()));
    }
    let name = declared.unwrap_or_else(|| match kind {
        Kind::Index => mt::OCI_INDEX.to_string(),
        _ => mt::OCI_MANIFEST.to_string(),
    });
    Ok((kind, name))
}

/// How a manifest response would be read: `"index"`, `"manifest"` or
/// `"schema1"`, and its media type. Exposed for the fuzz targets only.
#[doc(hidden)]
pub fn classify_for_fuzzing(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(&'static str, String)> {
    let (kind, media) = classify(content_type, body)?;
    let kind = match kind {
        Kind::Index => "index",
        Kind::Manifest => "manifest",
        Kind::Schema1 => "schema1",
    };
    Ok((kind, media))
}

/// Picks the index entry that best fits `want`, or lists what is offered.
pub fn choose_platform<'a>(index: &'a Index, want: &Platform) -> Result<&'a Descriptor> {
    let mut best: Option<(u8, &Descriptor)> = None;
    for d in &index.manifests {
        let Some(p) = &d.platform else { continue };
        if let Some(score) = want.score(&p.os, &p.architecture, p.variant.as_deref())
            && best.is_none_or(|(s, _)| score > s)
        {
            best = Some((score, d));
        }
    }
    if let Some((_, d)) = best {
        return Ok(d);
    }
    let offered: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| match p.variant.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    Err(Error::InvalidImage(format!(
        "no image for platform {want} in the index; it offers: {}",
        if offered.is_empty() {
            "no platforms".to_string()
        } else {
            offered.join(", ")
        }
    )))
}

/// Reads `rootfs.diff_ids` from an image config.
pub fn parse_diff_ids(config: &[u8]) -> Result<Vec<Digest>> {
    let c: ConfigRootfs = serde_json::from_slice(config)
        .map_err(|e| Error::InvalidImage(format!("invalid image config: {e}")))?;
    if !c.rootfs.kind.is_empty() && c.rootfs.kind != "layers" {
        return Err(Error::InvalidImage(format!(
            "image config rootfs.type is {:?}, expected \"layers\"",
            crate::digest::truncate_for_error(&c.rootfs.kind)
        )));
    }
    Ok(c.rootfs.diff_ids)
}

/// The media type of a manifest or index met through descriptor `d`: the
/// descriptor's, or, when it leaves it out, the document's own `mediaType`,
/// or what its shape says (`manifests` makes an index, `config` a manifest).
pub(crate) fn media_type_of(d: &Descriptor, body: &[u8]) -> String {
    let declared = mt::essence(&d.media_type);
    if !declared.is_empty() {
        return declared.to_string();
    }
    let doc: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if let Some(m) = doc["mediaType"].as_str() {
        return mt::essence(m).to_string();
    }
    if doc.get("manifests").is_some() {
        mt::OCI_INDEX.to_string()
    } else if doc.get("config").is_some() {
        mt::OCI_MANIFEST.to_string()
    } else {
        String::new()
    }
}

/// `raw` (a manifest or index this run built) with `annotations` merged
/// into its top-level `annotations`, re-serialized.
pub fn annotate(
    raw: &[u8],
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut doc: serde_json::Value = serde_json::from_slice(raw)
        .map_err(|e| Error::InvalidImage(format!("annotating a manifest: {e}")))?;
    let object = doc
        .as_object_mut()
        .ok_or_else(|| Error::InvalidImage("annotating a manifest that is not an object".into()))?;
    let entry = object
        .entry("annotations")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    let map = entry
        .as_object_mut()
        .ok_or_else(|| Error::InvalidImage("a manifest's annotations are not an object".into()))?;
    for (k, v) in annotations {
        map.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    serde_json::to_vec(&doc).map_err(|e| Error::InvalidImage(format!("annotating a manifest: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_by_header_and_body() {
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(classify(Some(mt::OCI_INDEX), idx).unwrap().0, Kind::Index);
        assert_eq!(
            classify(Some("application/json"), idx).unwrap().0,
            Kind::Index
        );
        let s1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        assert_eq!(classify(None, s1).unwrap().0, Kind::Schema1);
        assert!(classify(Some("application/vnd.foo+json"), idx).is_err());
        assert!(classify(None, b"not json").is_err());
    }

    #[test]
    fn platform_error_lists_offers() {
        let index: Index = serde_json::from_str(
            r#"{"schemaVersion":2,"manifests":[
            {"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":1,"platform":{"os":"linux","architecture":"arm","variant":"v7"}},
            {"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}"#,
        )
        .unwrap();
        let want = Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
            variant: None,
        };
        let e = choose_platform(&index, &want).unwrap_err().to_string();
        assert!(
            e.contains("linux/arm/v7") && e.contains("linux/arm64/v8"),
            "{e}"
        );
    }
}
