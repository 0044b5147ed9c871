//! Copying an index: which of its children a copy takes ([`plan`]) and the
//! index it pushes after them ([`rebuild`]). Pure functions over the index's
//! bytes; the driver that runs the children is `pipeline::index`.
//!
//! What is taken:
//!
//! - image manifests (OCI or Docker schema 2) are the platforms: every one
//!   with [`Selection::All`], the best fit of each listed platform with
//!   [`Selection::Platforms`] (a listed platform the index lacks is an
//!   error naming it);
//! - attestation manifests (buildx's `unknown/unknown` entries, annotated
//!   `vnd.docker.reference.type: attestation-manifest`) are copied as
//!   `skopeo copy --all` copies them, so that an unfiltered copy keeps the
//!   index's digest; with `Platforms`, only those attesting a selected
//!   image; in a rebuilt index, only those beside the exact manifest they
//!   attest (a filtered image drops its attestation: it speaks of other
//!   bytes);
//! - nested indexes and other media types cannot be copied child by child:
//!   `All` refuses them (the copy could not keep the digest), `Platforms`
//!   passes over them.
//!
//! Hostile input: the index is capped at [`MAX_INDEX_BYTES`] and
//! [`MAX_CHILDREN`] entries, each child's declared size at the manifest
//! cap, and a digest listed twice, a bad digest or a missing field is a
//! clean error.

use std::collections::HashMap;
use std::str::FromStr;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Platform, media_type as mt};
use crate::wire::Descriptor;

/// Largest index (or child manifest, by its declared size) a copy reads.
pub const MAX_INDEX_BYTES: usize = 4 << 20;
/// Most children an index may list.
pub const MAX_CHILDREN: usize = 1000;

/// Annotation buildx puts on an attestation manifest: what it is.
const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// Annotation buildx puts on an attestation manifest: the manifest it attests.
const REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";

/// Which platforms of an index a copy takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every image of the index, then the index itself (`--all-platforms`).
    All,
    /// These platforms, and a new index of just them (`--platforms LIST`).
    Platforms(Vec<Platform>),
}

impl Selection {
    /// `--platforms LIST`: comma-separated `os/arch[/variant]`.
    pub fn parse_platforms(list: &str) -> Result<Selection> {
        let mut platforms = Vec::new();
        for part in list.split(',') {
            let p = parse_platform(part.trim())?;
            if !platforms.contains(&p) {
                platforms.push(p);
            }
        }
        Ok(Selection::Platforms(platforms))
    }
}

impl FromStr for Selection {
    type Err = Error;
    fn from_str(s: &str) -> Result<Selection> {
        Selection::parse_platforms(s)
    }
}

/// One `os/arch[/variant]`.
pub fn parse_platform(s: &str) -> Result<Platform> {
    let bad = || {
        Error::Usage(format!(
            "{:?} is not a platform such as linux/amd64 or linux/arm64/v8",
            crate::digest::truncate_for_error(s)
        ))
    };
    let parts: Vec<&str> = s.split('/').collect();
    let ok = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok(p)) {
        return Err(bad());
    }
    Ok(Platform {
        os: parts[0].to_string(),
        architecture: parts[1].to_string(),
        variant: parts.get(2).map(|v| v.to_string()),
    })
}

/// What an index entry points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildKind {
    /// An image manifest for a platform.
    Image,
    /// An attestation manifest (provenance, SBOM) about another entry.
    Attestation,
    /// An index inside the index.
    Index,
    /// Anything else (artifacts, schema 1, unknown types).
    Other,
}

/// A child the copy takes.
#[derive(Clone, Debug)]
pub struct PlannedChild {
    /// Its descriptor as the index lists it.
    pub descriptor: Descriptor,
    /// [`ChildKind::Image`] or [`ChildKind::Attestation`].
    pub kind: ChildKind,
    /// For an attestation, the digest of the manifest it attests.
    pub attests: Option<Digest>,
}

/// One entry of a parsed index: its descriptor and its JSON object.
struct Entry {
    descriptor: Descriptor,
    object: Map<String, Value>,
    kind: ChildKind,
    attests: Option<Digest>,
}

/// A checked index: the document and its entries in order.
struct Parsed {
    doc: Map<String, Value>,
    entries: Vec<Entry>,
}

fn invalid(message: String) -> Error {
    Error::InvalidImage(message)
}

/// Parses and checks an index (see the module docs for the caps).
fn parse(raw: &[u8]) -> Result<Parsed> {
    if raw.len() > MAX_INDEX_BYTES {
        return Err(invalid(format!(
            "index is {} bytes, over the {MAX_INDEX_BYTES}-byte cap",
            raw.len()
        )));
    }
    let doc: Value = serde_json::from_slice(raw)
        .map_err(|e| invalid(format!("index is not valid JSON: {e}")))?;
    let Value::Object(mut doc) = doc else {
        return Err(invalid("index is not a JSON object".into()));
    };
    if doc.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
        return Err(Error::Unsupported(
            "index schemaVersion is not 2".to_string(),
        ));
    }
    // Taken out in place, so that a rebuilt index keeps the key's position.
    let Some(Value::Array(list)) = doc.get_mut("manifests").map(Value::take) else {
        return Err(invalid("index has no manifests list".into()));
    };
    if list.is_empty() {
        return Err(invalid("the index lists no manifests".into()));
    }
    if list.len() > MAX_CHILDREN {
        return Err(invalid(format!(
            "index lists {} manifests, over the cap of {MAX_CHILDREN}",
            list.len()
        )));
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(list.len());
    for (i, value) in list.into_iter().enumerate() {
        let descriptor = Descriptor::deserialize(&value)
            .map_err(|e| invalid(format!("index entry {i}: {e}")))?;
        let Value::Object(object) = value else {
            return Err(invalid(format!("index entry {i} is not an object")));
        };
        if descriptor.size > MAX_INDEX_BYTES as u64 {
            return Err(invalid(format!(
                "index entry {i} ({}) declares {} bytes, over the {MAX_INDEX_BYTES}-byte manifest cap",
                descriptor.digest, descriptor.size
            )));
        }
        if entries
            .iter()
            .any(|e| e.descriptor.digest == descriptor.digest)
        {
            return Err(invalid(format!(
                "index lists {} more than once",
                descriptor.digest
            )));
        }
        let (kind, attests) = kind_of(&descriptor, &object);
        entries.push(Entry {
            descriptor,
            object,
            kind,
            attests,
        });
    }
    Ok(Parsed { doc, entries })
}

/// What an entry is, and for an attestation what it attests.
fn kind_of(d: &Descriptor, object: &Map<String, Value>) -> (ChildKind, Option<Digest>) {
    let annotation = |k: &str| object.get("annotations").and_then(|a| a.get(k))?.as_str();
    match mt::essence(&d.media_type) {
        mt::OCI_INDEX | mt::DOCKER_MANIFEST_LIST => (ChildKind::Index, None),
        // An empty media type is left to the manifest itself, as the
        // sources do when they read it.
        "" | mt::OCI_MANIFEST | mt::DOCKER_MANIFEST => {
            let unknown = d
                .platform
                .as_ref()
                .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown");
            if unknown || annotation(REFERENCE_TYPE) == Some("attestation-manifest") {
                let attests = annotation(REFERENCE_DIGEST).and_then(|s| s.parse().ok());
                (ChildKind::Attestation, attests)
            } else {
                (ChildKind::Image, None)
            }
        }
        _ => (ChildKind::Other, None),
    }
}

/// `os/arch[/variant]` of an entry, for messages.
fn platform_name(d: &Descriptor) -> String {
    match &d.platform {
        None => "no platform".to_string(),
        Some(p) => match p.variant.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        },
    }
}

/// The children to copy, in index order, with what each is (see the module
/// docs for the choice).
pub fn plan_children(index_raw: &[u8], selection: &Selection) -> Result<Vec<PlannedChild>> {
    let parsed = parse(index_raw)?;
    let taken: Vec<bool> = match selection {
        Selection::All => {
            if let Some(e) = parsed
                .entries
                .iter()
                .find(|e| matches!(e.kind, ChildKind::Index | ChildKind::Other))
            {
                return Err(Error::Unsupported(format!(
                    "the index lists {} of media type {:?}, which is not an image manifest: \
                     nested indexes and artifacts cannot be copied with --all-platforms",
                    e.descriptor.digest,
                    crate::digest::truncate_for_error(&e.descriptor.media_type)
                )));
            }
            vec![true; parsed.entries.len()]
        }
        Selection::Platforms(wanted) => take_platforms(&parsed.entries, wanted)?,
    };
    Ok(parsed
        .entries
        .into_iter()
        .zip(taken)
        .filter(|(_, t)| *t)
        .map(|(e, _)| PlannedChild {
            descriptor: e.descriptor,
            kind: e.kind,
            attests: e.attests,
        })
        .collect())
}

/// Which entries `wanted` takes: each platform's best fit, and the
/// attestations of those.
fn take_platforms(entries: &[Entry], wanted: &[Platform]) -> Result<Vec<bool>> {
    let mut taken = vec![false; entries.len()];
    for want in wanted {
        let mut best: Option<(u8, usize)> = None;
        for (i, e) in entries.iter().enumerate() {
            let Some(p) = e
                .descriptor
                .platform
                .as_ref()
                .filter(|_| e.kind == ChildKind::Image)
            else {
                continue;
            };
            if let Some(score) = want.score(&p.os, &p.architecture, p.variant.as_deref())
                && best.is_none_or(|(s, _)| score > s)
            {
                best = Some((score, i));
            }
        }
        let Some((_, i)) = best else {
            let offered: Vec<String> = entries
                .iter()
                .filter(|e| e.kind == ChildKind::Image)
                .map(|e| platform_name(&e.descriptor))
                .collect();
            return Err(invalid(format!(
                "the index has no image for platform {want}; it offers: {}",
                if offered.is_empty() {
                    "no platforms".to_string()
                } else {
                    offered.join(", ")
                }
            )));
        };
        taken[i] = true;
    }
    let images: Vec<Digest> = entries
        .iter()
        .zip(&taken)
        .filter(|(_, t)| **t)
        .map(|(e, _)| e.descriptor.digest.clone())
        .collect();
    for (e, t) in entries.iter().zip(taken.iter_mut()) {
        if e.kind == ChildKind::Attestation
            && e.attests.as_ref().is_some_and(|a| images.contains(a))
        {
            *t = true;
        }
    }
    Ok(taken)
}

/// The child manifests to copy, in index order (see [`plan_children`]).
pub fn plan(index_raw: &[u8], selection: &Selection) -> Result<Vec<Descriptor>> {
    Ok(plan_children(index_raw, selection)?
        .into_iter()
        .map(|c| c.descriptor)
        .collect())
}

/// An index to push in place of the source's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebuiltIndex {
    /// The new index's bytes.
    pub raw: Vec<u8>,
    /// Its media type.
    pub media_type: String,
}

/// The index to push after the children: `None` when the source's bytes
/// can be pushed as they are (every child was pushed and kept its digest),
/// otherwise a new index of only the children in `pushed` (pairs of the
/// descriptor as the index lists it and the one pushed), in index order,
/// with their new digests, sizes and media types. Everything else is kept:
/// the index's own fields (`schemaVersion`, `annotations`, ...) and each
/// child's (`platform`, `annotations`, ...), in their order; an
/// attestation stays only beside the exact manifest it attests. A Docker
/// manifest list whose children became OCI manifests becomes an OCI index.
/// The output is a function of the inputs alone.
pub fn rebuild(
    index_raw: &[u8],
    media_type: &str,
    pushed: &[(Descriptor, Descriptor)],
) -> Result<Option<RebuiltIndex>> {
    let parsed = parse(index_raw)?;
    let mut map: HashMap<&Digest, &Descriptor> = HashMap::new();
    for (old, new) in pushed {
        if !parsed
            .entries
            .iter()
            .any(|e| e.descriptor.digest == old.digest)
        {
            return Err(invalid(format!("{} is not in the index", old.digest)));
        }
        map.insert(&old.digest, new);
    }
    // The same digest is the same document, whatever a descriptor calls it.
    let same = |e: &Entry, new: &Descriptor| {
        new.digest == e.descriptor.digest && new.size == e.descriptor.size
    };
    let unchanged = parsed
        .entries
        .iter()
        .all(|e| map.get(&e.descriptor.digest).is_some_and(|n| same(e, n)));
    if unchanged {
        return Ok(None);
    }
    let media_type = match mt::essence(media_type) {
        m @ (mt::OCI_INDEX | mt::DOCKER_MANIFEST_LIST) => m,
        other => {
            return Err(Error::Unsupported(format!(
                "{:?} is not an index media type",
                crate::digest::truncate_for_error(other)
            )));
        }
    };
    let images: Vec<&Digest> = parsed
        .entries
        .iter()
        .filter(|e| e.kind != ChildKind::Attestation)
        .filter_map(|e| map.get(&e.descriptor.digest).map(|n| &n.digest))
        .collect();
    let mut manifests = Vec::new();
    let mut any_oci = false;
    for e in parsed.entries {
        let Some(new) = map.get(&e.descriptor.digest) else {
            continue;
        };
        if e.kind == ChildKind::Attestation
            && !e.attests.as_ref().is_some_and(|a| images.contains(&a))
        {
            continue;
        }
        let child_type = match mt::essence(&new.media_type) {
            "" => mt::essence(&e.descriptor.media_type).to_string(),
            m => m.to_string(),
        };
        any_oci |= child_type == mt::OCI_MANIFEST;
        let mut object = e.object;
        if !child_type.is_empty() {
            object.insert("mediaType".into(), Value::String(child_type));
        }
        object.insert("digest".into(), Value::String(new.digest.to_string()));
        object.insert("size".into(), Value::from(new.size));
        manifests.push(Value::Object(object));
    }
    if manifests.is_empty() {
        return Err(invalid("no manifest of the index was copied".into()));
    }
    let media_type = if media_type == mt::DOCKER_MANIFEST_LIST && any_oci {
        mt::OCI_INDEX
    } else {
        media_type
    };
    let mut doc = parsed.doc;
    doc.insert("mediaType".into(), Value::String(media_type.to_string()));
    doc.insert("manifests".into(), Value::Array(manifests));
    let raw = serde_json::to_vec(&Value::Object(doc))
        .map_err(|e| invalid(format!("cannot write the index: {e}")))?;
    Ok(Some(RebuiltIndex {
        raw,
        media_type: media_type.to_string(),
    }))
}

#[cfg(test)]
mod tests;
