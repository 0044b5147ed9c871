//! What refers to a manifest, and taking manifests away: the OCI 1.1
//! referrers API (`GET /v2/<name>/referrers/<digest>`) and
//! `DELETE /v2/<name>/manifests/<digest>`.
//!
//! A registry without the referrers API answers 404, and the caller falls
//! back to the tag schema (`sha256-<hex>`, an index of the referrers). The
//! answer is an index read under the manifest cap, page by page when the
//! registry paginates with `Link`, with at most [`MAX_REFERRERS`] entries
//! whose digests must parse: they go into URLs later.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::client::Client;

use super::options::MAX_MANIFEST_BYTES;
use super::repository::Repository;
use super::request::Request;
use super::tokens::{Actions, Scope};
use crate::digest::Digest;
use crate::error::{Error, RegistryErrorCode, Result};
use crate::image::media_type as mt;

/// Referrers of one subject read at most; past this the listing fails
/// rather than copy without end.
pub const MAX_REFERRERS: usize = 1000;
/// Pages of one referrers listing followed at most.
const MAX_PAGES: usize = 32;

/// One entry of a referrers index: a manifest whose `subject` is the
/// digest asked about. Unknown fields of the registry's descriptor are not
/// kept: a fallback index we write lists what the spec asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Referrer {
    /// The referrer's manifest media type.
    #[serde(default)]
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// What it is (a signature, an SBOM): its `artifactType`, else its
    /// config's media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Its annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The referrers in an index document (a referrers API answer, or a
/// fallback tag's index). Entries that are not descriptors with a valid
/// digest make the whole document an error.
pub fn parse_referrers_index(body: &[u8]) -> std::result::Result<Vec<Referrer>, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Index {
        #[serde(default)]
        manifests: Vec<Referrer>,
    }
    let index: Index = serde_json::from_slice(body)
        .map_err(|e| format!("the referrers list is not an OCI index: {e}"))?;
    if index.manifests.len() > MAX_REFERRERS {
        return Err(format!(
            "the referrers list has more than {MAX_REFERRERS} entries"
        ));
    }
    Ok(index.manifests)
}

/// An OCI index listing `referrers`, as a fallback tag holds it.
pub fn referrers_index(referrers: &[Referrer]) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Index<'a> {
        schema_version: u32,
        media_type: &'a str,
        manifests: &'a [Referrer],
    }
    serde_json::to_vec(&Index {
        schema_version: 2,
        media_type: mt::OCI_INDEX,
        manifests: referrers,
    })
    .expect("an index serialises")
}

impl Client {
    /// What refers to `subject` in `repository`, from the referrers API:
    /// `None` when the registry has no referrers API (404), so that the
    /// caller reads the fallback tag `sha256-<hex>` instead.
    pub async fn referrers(
        &self,
        repository: &str,
        subject: &Digest,
    ) -> Result<Option<Vec<Referrer>>> {
        let op = format!("GET referrers of {repository}@{subject}");
        let first = format!("{}/v2/{repository}/referrers/{subject}", self.base);
        let base = url::Url::parse(&self.base).map_err(|_| self.referrers_error(&op, "bad URL"))?;
        let mut url = url::Url::parse(&first).map_err(|_| self.referrers_error(&op, "bad URL"))?;
        let scope = Scope::new(repository, Actions::Pull);
        let mut all = Vec::new();
        for page in 0.. {
            if page == MAX_PAGES {
                return Err(self.referrers_error(
                    &op,
                    &format!("more than {MAX_PAGES} pages; refusing to read further"),
                ));
            }
            let Some((body, link)) = self.referrers_page(&op, &scope, url.as_str()).await? else {
                // A 404 on a later page is a registry losing track, not
                // one without the API.
                if page == 0 {
                    return Ok(None);
                }
                return Err(self.referrers_error(&op, "a later page is gone (HTTP 404)"));
            };
            let entries =
                parse_referrers_index(&body).map_err(|m| self.referrers_error(&op, &m))?;
            all.extend(entries);
            if all.len() > MAX_REFERRERS {
                return Err(self.referrers_error(
                    &op,
                    &format!("more than {MAX_REFERRERS} referrers; refusing to copy them"),
                ));
            }
            match link {
                Some(link) => {
                    let next = self.next_url(&op, &base, &url, &link)?;
                    if next == url {
                        break;
                    }
                    url = next;
                }
                None => break,
            }
        }
        Ok(Some(all))
    }

    /// One page of a referrers listing: its body and its next link, or
    /// `None` on a 404. A 200 that is not an index (a web page for unknown
    /// paths) fails the caller's parse, which names it.
    async fn referrers_page(
        &self,
        op: &str,
        scope: &Scope,
        url: &str,
    ) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let page = super::list::Page {
            accept: mt::OCI_INDEX,
            max: MAX_MANIFEST_BYTES,
            missing_is_none: true,
        };
        self.get_page_as(op, scope, url, &page).await
    }

    fn referrers_error(&self, op: &str, message: &str) -> Error {
        Error::Registry {
            registry: self.host.clone(),
            operation: op.to_string(),
            message: message.to_string(),
            status: None,
            codes: Vec::new(),
        }
    }

    /// Deletes the manifest `digest` of `repository` (and so every tag on
    /// it). `Ok(false)`: there was no such manifest. A registry with
    /// deletes disabled gives an error for which [`deletes_disabled`] is
    /// true, saying so.
    pub async fn delete_manifest(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let _slot = self.ctx.slot().await;
        let op = format!("DELETE manifest {repository}@{digest}");
        let url = format!("{}/v2/{repository}/manifests/{digest}", self.base);
        let scope = Scope::new(repository, Actions::Delete);
        let req = Request {
            pass: &[StatusCode::NOT_FOUND],
            ..Request::new(&op, &scope, Method::DELETE, &url)
        };
        match self.send(&req).await {
            Ok((resp, _)) => Ok(resp.status() != StatusCode::NOT_FOUND),
            Err(e) if deletes_disabled(&e) => Err(match e {
                Error::Registry {
                    registry,
                    operation,
                    message,
                    status,
                    mut codes,
                } => {
                    if !codes.contains(&RegistryErrorCode::Unsupported) {
                        codes.push(RegistryErrorCode::Unsupported);
                    }
                    Error::Registry {
                        registry,
                        operation,
                        message: format!(
                            "{message} (deletes are disabled on this registry; for \
                             distribution, set storage.delete.enabled: true, or \
                             REGISTRY_STORAGE_DELETE_ENABLED=true)"
                        ),
                        status,
                        codes,
                    }
                }
                other => other,
            }),
            Err(e) => Err(e),
        }
    }
}

/// Whether `err` is a registry refusing deletes altogether: HTTP 405, or
/// `UNSUPPORTED` (what distribution answers with deletes disabled).
pub fn deletes_disabled(err: &Error) -> bool {
    match err {
        Error::Registry { status, codes, .. } => {
            *status == Some(405) || codes.contains(&RegistryErrorCode::Unsupported)
        }
        _ => false,
    }
}

impl Repository {
    /// [`Client::referrers`] in this repository.
    pub async fn referrers(&self, subject: &Digest) -> Result<Option<Vec<Referrer>>> {
        self.client().referrers(self.name(), subject).await
    }

    /// [`Client::delete_manifest`] in this repository.
    pub async fn delete_manifest(&self, digest: &Digest) -> Result<bool> {
        self.client().delete_manifest(self.name(), digest).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn referrers_index_round_trips() {
        let r = Referrer {
            media_type: mt::OCI_MANIFEST.into(),
            digest: D.parse().unwrap(),
            size: 7,
            artifact_type: Some("application/spdx+json".into()),
            annotations: Some(BTreeMap::from([("a".into(), "b".into())])),
        };
        let doc = referrers_index(std::slice::from_ref(&r));
        let v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], mt::OCI_INDEX);
        assert_eq!(parse_referrers_index(&doc).unwrap(), [r]);
        let bare = Referrer {
            artifact_type: None,
            annotations: None,
            ..parse_referrers_index(&doc).unwrap().remove(0)
        };
        let doc = String::from_utf8(referrers_index(&[bare])).unwrap();
        assert!(
            !doc.contains("artifactType") && !doc.contains("annotations"),
            "{doc}"
        );
    }

    #[test]
    fn hostile_referrers_lists_are_refused() {
        assert_eq!(parse_referrers_index(b"{}").unwrap(), []);
        for bad in [
            &b"<html>"[..],
            br#"{"manifests":[{"digest":"sha256:../../x","size":1}]}"#,
            br#"{"manifests":[{"digest":"sha256:abc","size":1}]}"#,
            br#"{"manifests":[{"size":1}]}"#,
            br#"{"manifests":[{"digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":-1}]}"#,
            br#"{"manifests":{}}"#,
        ] {
            assert!(
                parse_referrers_index(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let one = format!(r#"{{"digest":"{D}","size":1}}"#);
        let many = format!(
            r#"{{"manifests":[{}]}}"#,
            vec![one; MAX_REFERRERS + 1].join(",")
        );
        assert!(parse_referrers_index(many.as_bytes()).is_err());
    }

    #[test]
    fn what_deletes_disabled_means() {
        let reg = |status, codes| Error::Registry {
            registry: "r".into(),
            operation: "DELETE".into(),
            message: "m".into(),
            status,
            codes,
        };
        assert!(deletes_disabled(&reg(Some(405), vec![])));
        assert!(deletes_disabled(&reg(
            Some(400),
            vec![RegistryErrorCode::Unsupported]
        )));
        assert!(!deletes_disabled(&reg(
            Some(403),
            vec![RegistryErrorCode::Denied]
        )));
        assert!(!deletes_disabled(&Error::Usage("x".into())));
    }
}
