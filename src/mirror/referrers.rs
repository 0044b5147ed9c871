//! Copying what refers to a manifest: signatures, SBOMs, attestations.
//!
//! Two schemes exist side by side, and both are copied:
//! - cosign's tags: `sha256-<hex>.sig`, `.att`, `.sbom` beside the image,
//!   each an ordinary manifest. They are found in the source's tag list,
//!   which the caller already has, so looking costs nothing.
//! - OCI 1.1 referrers: manifests whose `subject` is the image. A registry
//!   with the referrers API lists them; one without keeps the list itself
//!   as an index under the fallback tag `sha256-<hex>`.
//!
//! Referrers are copied by digest, exactly. When the source lists them
//! through its API and the destination has no API, the destination's
//! fallback tag is kept up to date, merged with what it already lists.
//! When the source keeps a fallback tag, it is copied byte for byte unless
//! the destination's lists something the source's does not (then the two
//! are merged).
//!
//! Referrers of referrers (a signature on an attestation) are followed one
//! level further only through the source's tag list, which needs no
//! request; the referrers API is asked about the caller's subjects only.

use std::collections::{HashSet, VecDeque};
use std::path::Path;

use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::image::media_type as mt;
use crate::registry::{Referrer, Repository, parse_referrers_index, referrers_index};

use super::raw::{RawCopied, copy_raw};

/// Cosign's tag suffixes.
const COSIGN_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];

/// What [`copy_referrers`] did, over all its subjects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReferrersCopied {
    /// Referrers found in the source: cosign-style tags and OCI referrers.
    pub found: usize,
    /// Manifests PUT in the destination: referrers, their children, and
    /// fallback indexes.
    pub manifests: usize,
    /// Blobs uploaded.
    pub blobs: usize,
    /// Bytes of blobs uploaded.
    pub bytes: u64,
    /// Tags written in the destination, in the order written.
    pub tags: Vec<String>,
}

impl ReferrersCopied {
    fn add(&mut self, c: &RawCopied) {
        self.manifests += c.manifests;
        self.blobs += c.blobs;
        self.bytes += c.bytes;
    }
}

/// Reads a tag of the referrer schemes: `sha256-<hex>` (the OCI fallback
/// tag) gives the subject and `None`; `sha256-<hex>.sig`, `.att` or
/// `.sbom` (cosign's) give the subject and the suffix (`"sig"`).
pub fn referrer_tag(tag: &str) -> Option<(Digest, Option<&str>)> {
    let rest = tag.strip_prefix("sha256-")?;
    let (hex, suffix) = match rest.split_once('.') {
        Some((hex, s)) if COSIGN_SUFFIXES.contains(&s) => (hex, Some(s)),
        Some(_) => return None,
        None => (rest, None),
    };
    let digest = format!("sha256:{hex}").parse().ok()?;
    Some((digest, suffix))
}

/// The OCI fallback tag of `subject`, for sha256 digests (the schema's
/// only form a tag can hold whole).
pub fn fallback_tag(subject: &Digest) -> Option<String> {
    (subject.algorithm() == Algorithm::Sha256).then(|| format!("sha256-{}", subject.hex()))
}

/// What is known of one side's referrers API during a call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Unknown,
    Yes,
    No,
}

/// Copies from `src` to `dst` what refers to each of `subjects` (manifests
/// already in `dst`): the cosign-style tags among `source_tags` (the
/// source repository's tags), and the OCI referrers, through the source's
/// referrers API when it has one, else through its fallback tags. Spooled
/// blobs go under `temp_dir`. The first failure stops the copy.
pub async fn copy_referrers(
    src: &Repository,
    dst: &Repository,
    subjects: &[Digest],
    source_tags: &[String],
    temp_dir: &Path,
) -> Result<ReferrersCopied> {
    let mut run = Run {
        src,
        dst,
        temp_dir,
        tags: source_tags.iter().map(String::as_str).collect(),
        src_api: Api::Unknown,
        dst_api: Api::Unknown,
        out: ReferrersCopied::default(),
    };
    let mut queue: VecDeque<(Digest, usize)> = subjects.iter().map(|d| (d.clone(), 0)).collect();
    let mut done = HashSet::new();
    while let Some((subject, depth)) = queue.pop_front() {
        if !done.insert(subject.clone()) {
            continue;
        }
        let found = run.one_subject(&subject, depth == 0).await?;
        if depth == 0 {
            queue.extend(found.into_iter().map(|d| (d, 1)));
        }
    }
    Ok(run.out)
}

/// One call's state.
struct Run<'a> {
    src: &'a Repository,
    dst: &'a Repository,
    temp_dir: &'a Path,
    tags: HashSet<&'a str>,
    src_api: Api,
    dst_api: Api,
    out: ReferrersCopied,
}

impl Run<'_> {
    /// Copies the referrers of `subject`; returns their digests. `ask_api`:
    /// whether the source's referrers API may be asked.
    async fn one_subject(&mut self, subject: &Digest, ask_api: bool) -> Result<Vec<Digest>> {
        let mut found = Vec::new();
        let Some(fallback) = fallback_tag(subject) else {
            return Ok(found);
        };
        for suffix in COSIGN_SUFFIXES {
            let tag = format!("{fallback}.{suffix}");
            if self.tags.contains(tag.as_str())
                && let Some(d) = self.copy_tag(&tag).await?
            {
                self.out.found += 1;
                found.push(d);
            }
        }
        let listed = match (ask_api, self.src_api) {
            (true, Api::Yes | Api::Unknown) => {
                let listed = self.src.referrers(subject).await?;
                self.src_api = if listed.is_some() { Api::Yes } else { Api::No };
                listed
            }
            _ => None,
        };
        match listed {
            Some(referrers) => {
                self.out.found += referrers.len();
                self.copy_each(&referrers).await?;
                found.extend(referrers.iter().map(|r| r.digest.clone()));
                if !referrers.is_empty() && !self.dst_has_api(subject).await? {
                    self.merge_fallback(&fallback, &referrers, None).await?;
                }
            }
            None if self.tags.contains(fallback.as_str()) => {
                let referrers = self.copy_fallback(&fallback).await?;
                self.out.found += referrers.len();
                found.extend(referrers);
            }
            None => {}
        }
        Ok(found)
    }

    /// Copies a tag unless the destination's points where the source's
    /// does; the digest it names, `None` when the source lost it.
    async fn copy_tag(&mut self, tag: &str) -> Result<Option<Digest>> {
        let Some(digest) = self.src.source_manifest_digest(tag).await? else {
            return Ok(None);
        };
        let c = copy_raw(
            self.src,
            self.dst,
            &digest.to_string(),
            Some(tag),
            self.temp_dir,
        )
        .await?;
        if !c.skipped() {
            self.out.tags.push(tag.to_string());
        }
        self.out.add(&c);
        Ok(Some(digest))
    }

    /// Whether the destination keeps referrers itself (it has the API):
    /// asked once a call.
    async fn dst_has_api(&mut self, subject: &Digest) -> Result<bool> {
        if self.dst_api == Api::Unknown {
            self.dst_api = match self.dst.referrers(subject).await? {
                Some(_) => Api::Yes,
                None => Api::No,
            };
        }
        Ok(self.dst_api == Api::Yes)
    }

    /// Copies the source's fallback tag `tag`, its referrers first; their
    /// digests.
    async fn copy_fallback(&mut self, tag: &str) -> Result<Vec<Digest>> {
        let Some(theirs) = self.src.source_manifest_digest(tag).await? else {
            return Ok(Vec::new());
        };
        let (bytes, _) = self.src.get_manifest(&theirs.to_string()).await?;
        if Digest::sha256_of(&bytes) != theirs {
            return Err(Error::InvalidImage(format!(
                "{}: fallback tag {tag} is not the manifest its digest {theirs} names",
                self.src.host()
            )));
        }
        let referrers = parse_referrers_index(&bytes)
            .map_err(|m| Error::InvalidImage(format!("{}: tag {tag}: {m}", self.src.host())))?;
        let digests = referrers.iter().map(|r| r.digest.clone()).collect();
        if self.dst.manifest_digest(tag).await?.as_ref() == Some(&theirs) {
            return Ok(digests);
        }
        self.copy_each(&referrers).await?;
        self.merge_fallback(tag, &referrers, Some(bytes)).await?;
        Ok(digests)
    }

    /// Copies each of `referrers` by digest.
    async fn copy_each(&mut self, referrers: &[Referrer]) -> Result<()> {
        for r in referrers {
            let digest = r.digest.to_string();
            let c = copy_raw(self.src, self.dst, &digest, None, self.temp_dir).await?;
            self.out.add(&c);
        }
        Ok(())
    }

    /// Makes the destination's fallback tag `tag` list `referrers` as well
    /// as what it listed: `exact` (the source's own index) goes as it is
    /// when the destination lists nothing it lacks; otherwise the union is
    /// written, the destination's entries first. Nothing is written when
    /// the destination lists them all already.
    async fn merge_fallback(
        &mut self,
        tag: &str,
        referrers: &[Referrer],
        exact: Option<Vec<u8>>,
    ) -> Result<()> {
        let existing = match self.dst.manifest_digest(tag).await? {
            None => Vec::new(),
            Some(d) => {
                let (bytes, _) = self.dst.get_manifest(&d.to_string()).await?;
                parse_referrers_index(&bytes).map_err(|m| {
                    Error::InvalidImage(format!(
                        "{}: tag {tag}, which should list referrers: {m}; leaving it",
                        self.dst.host()
                    ))
                })?
            }
        };
        let theirs: HashSet<&Digest> = referrers.iter().map(|r| &r.digest).collect();
        let ours: HashSet<&Digest> = existing.iter().map(|r| &r.digest).collect();
        let body = match exact {
            Some(bytes) if ours.iter().all(|d| theirs.contains(d)) => bytes,
            _ if theirs.iter().all(|d| ours.contains(d)) && !existing.is_empty() => return Ok(()),
            _ => {
                let mut merged = existing.clone();
                merged.extend(
                    referrers
                        .iter()
                        .filter(|r| !ours.contains(&r.digest))
                        .cloned(),
                );
                referrers_index(&merged)
            }
        };
        self.dst.put_manifest(tag, mt::OCI_INDEX, body).await?;
        self.out.manifests += 1;
        self.out.tags.push(tag.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn referrer_tags() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(
            referrer_tag(&format!("sha256-{HEX}")),
            Some((d.clone(), None))
        );
        for s in ["sig", "att", "sbom"] {
            assert_eq!(
                referrer_tag(&format!("sha256-{HEX}.{s}")),
                Some((d.clone(), Some(s)))
            );
        }
        assert_eq!(fallback_tag(&d).as_deref(), Some(&*format!("sha256-{HEX}")));
    }

    #[test]
    fn tags_that_are_not_referrers() {
        let upper = HEX.to_ascii_uppercase();
        for t in [
            "latest".to_string(),
            "sha256-".to_string(),
            format!("sha256-{}", &HEX[..63]),
            format!("sha256-{HEX}0"),
            format!("sha256-{upper}"),
            format!("sha256-{HEX}.sig.sig"),
            format!("sha256-{HEX}.txt"),
            format!("sha256-{HEX}."),
            format!("sha512-{HEX}"),
            format!("sha256:{HEX}"),
            format!("Sha256-{HEX}.sig"),
            format!("v1-sha256-{HEX}"),
        ] {
            assert_eq!(referrer_tag(&t), None, "{t}");
        }
        let sha512: Digest = format!("sha512:{}", "a".repeat(128)).parse().unwrap();
        assert_eq!(fallback_tag(&sha512), None);
    }
}
