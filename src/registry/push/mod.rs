//! What a push writes: blob existence checks (HEAD), cross-repository
//! mounts, manifests by tag or digest; streamed blob uploads are in
//! `upload.rs`. Every request asks for `push,pull` on the repository; a
//! mount also asks for `pull` on the repository the blob comes from.

use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, LOCATION};
use reqwest::{Method, StatusCode};

use super::client::Client;
use super::options::MAX_MANIFEST_BYTES;
use super::pull::MANIFEST_ACCEPT;
use super::repository::Repository;
use super::request::Request;
use super::tokens::{Actions, Scope};
use crate::digest::Digest;
use crate::error::{Error, Result};

mod upload;

pub use upload::BlobOpener;

/// The header in which a registry names a manifest's or blob's digest.
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

impl Client {
    /// `scheme://host/v2/REPO/SUFFIX`.
    fn v2_url(&self, repository: &str, suffix: &str) -> String {
        format!("{}/v2/{repository}/{suffix}", self.base)
    }

    /// An upload location the registry gave, made absolute against the
    /// registry. Only the registry's own origin is accepted: our token goes
    /// wherever this points.
    pub(super) fn upload_location(&self, op: &str, resp: &reqwest::Response) -> Result<url::Url> {
        let bad = |message: String| Error::Registry {
            registry: self.host.clone(),
            operation: op.to_string(),
            message,
            status: Some(resp.status().as_u16()),
            codes: Vec::new(),
        };
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| bad("upload response has no Location".into()))?;
        let base = url::Url::parse(&self.base).map_err(|_| bad("bad registry URL".into()))?;
        let url = base
            .join(loc)
            .map_err(|_| bad("upload Location is not a URL".into()))?;
        if url.origin() != base.origin() {
            return Err(bad(format!(
                "upload Location points to another host ({}); refusing to send blobs there",
                super::transport::authority(&url)
            )));
        }
        Ok(url)
    }

    /// HEAD of a blob in `repository`: its size when the registry has it.
    pub async fn blob_exists(&self, repository: &str, digest: &Digest) -> Result<Option<u64>> {
        let _slot = self.ctx.slot().await;
        let op = format!("HEAD blob {digest}");
        let url = self.v2_url(repository, &format!("blobs/{digest}"));
        let scope = Scope::new(repository, Actions::PushPull);
        let req = Request {
            pass: &[StatusCode::NOT_FOUND],
            ..Request::new(&op, &scope, Method::HEAD, &url)
        };
        let (resp, _) = self.send(&req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(header_u64(&resp, CONTENT_LENGTH).unwrap_or(0)))
    }

    /// Asks the registry to mount `digest` from repository `from` into
    /// `repository`. `true`: mounted. `false`: declined (the session the
    /// registry opened instead is cancelled) or refused, so upload it.
    pub async fn mount_blob(&self, repository: &str, digest: &Digest, from: &str) -> Result<bool> {
        let _slot = self.ctx.slot().await;
        let op = format!("POST blob mount {digest} from {from}");
        let mut url = url::Url::parse(&self.v2_url(repository, "blobs/uploads/"))
            .map_err(|e| Error::InvalidImage(format!("bad repository URL: {e}")))?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let scope = Scope::mount(repository, from);
        let req = Request::new(&op, &scope, Method::POST, url.as_str());
        let resp = match self.send(&req).await {
            Ok((resp, _)) => resp,
            // Not allowed to read `from`, or no such repository: upload.
            Err(e @ Error::Registry { .. }) => {
                tracing::debug!("{e}; uploading instead");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        if resp.status() == StatusCode::CREATED {
            return Ok(true);
        }
        // 202: an upload session we do not want; closing it is a courtesy.
        if let Ok(loc) = self.upload_location(&op, &resp) {
            self.cancel_upload(repository, &loc).await;
        }
        Ok(false)
    }

    /// Cancels an upload session, best effort: the registry reaps it anyway.
    pub(super) async fn cancel_upload(&self, repository: &str, location: &url::Url) {
        let op = "DELETE blob upload";
        let scope = Scope::new(repository, Actions::PushPull);
        let req = Request {
            pass: &[StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED],
            retry: false,
            ..Request::new(op, &scope, Method::DELETE, location.as_str())
        };
        if let Err(e) = self.send(&req).await {
            tracing::debug!("{e}");
        }
    }

    /// The digest of the manifest `reference` names in `repository`, from a
    /// HEAD with our Accept list; `None` when there is none.
    pub async fn manifest_digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Digest>> {
        self.manifest_digest_as(repository, reference, Actions::PushPull)
            .await
    }

    /// As [`Client::manifest_digest`], with a pull-only token: for a
    /// registry we only read from, which may refuse to grant `push`.
    pub async fn source_manifest_digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Digest>> {
        self.manifest_digest_as(repository, reference, Actions::Pull)
            .await
    }

    async fn manifest_digest_as(
        &self,
        repository: &str,
        reference: &str,
        actions: Actions,
    ) -> Result<Option<Digest>> {
        let op = format!("HEAD manifest {repository}{}{reference}", sep(reference));
        let url = self.v2_url(repository, &format!("manifests/{reference}"));
        let scope = Scope::new(repository, actions);
        let req = Request {
            accept: Some(MANIFEST_ACCEPT),
            pass: &[StatusCode::NOT_FOUND],
            ..Request::new(&op, &scope, Method::HEAD, &url)
        };
        let resp = {
            let _slot = self.ctx.slot().await;
            self.send(&req).await?.0
        };
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if let Some(d) = resp
            .headers()
            .get(DOCKER_CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<Digest>().ok())
        {
            return Ok(Some(d));
        }
        // No digest header: hash the manifest itself.
        let _slot = self.ctx.slot().await;
        let (body, _) = self
            .get_whole(&op, &scope, &url, Some(MANIFEST_ACCEPT), MAX_MANIFEST_BYTES)
            .await?;
        Ok(Some(Digest::sha256_of(&body)))
    }

    /// PUTs a manifest as `reference` (a tag, or its own digest) with
    /// `media_type`; returns the digest of `bytes`.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> Result<Digest> {
        let _slot = self.ctx.slot().await;
        let digest = Digest::sha256_of(&bytes);
        let op = format!("PUT manifest {repository}{}{reference}", sep(reference));
        let url = self.v2_url(repository, &format!("manifests/{reference}"));
        let scope = Scope::new(repository, Actions::PushPull);
        let body = bytes::Bytes::from(bytes);
        let len = body.len();
        let make = move || Ok(reqwest::Body::from(body.clone()));
        let headers = [
            (CONTENT_TYPE, media_type.to_string()),
            (CONTENT_LENGTH, len.to_string()),
        ];
        let req = Request {
            headers: &headers,
            body: Some(&make),
            ..Request::new(&op, &scope, Method::PUT, &url)
        };
        let (resp, _) = self.send(&req).await?;
        if let Some(theirs) = resp
            .headers()
            .get(DOCKER_CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<Digest>().ok())
            && theirs != digest
        {
            tracing::warn!(
                "{}: {op}: registry says {theirs}, we sent {digest}",
                self.host
            );
        }
        Ok(digest)
    }
}

/// `@` before a digest, `:` before a tag.
fn sep(reference: &str) -> char {
    if reference.contains(':') { '@' } else { ':' }
}

/// A header's value as a number.
fn header_u64(resp: &reqwest::Response, name: HeaderName) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.trim().parse().ok()
}

impl Repository {
    /// [`Client::blob_exists`] for this repository.
    pub async fn blob_exists(&self, digest: &Digest) -> Result<Option<u64>> {
        self.client().blob_exists(self.name(), digest).await
    }

    /// [`Client::mount_blob`] into this repository.
    pub async fn mount_blob(&self, digest: &Digest, from: &str) -> Result<bool> {
        self.client().mount_blob(self.name(), digest, from).await
    }

    /// [`Client::upload_blob`] into this repository.
    pub async fn upload_blob(&self, digest: &Digest, size: u64, open: BlobOpener) -> Result<()> {
        self.client()
            .upload_blob(self.name(), digest, size, open)
            .await
    }

    /// [`Client::upload_blob_live`] into this repository.
    pub async fn upload_blob_live(
        &self,
        digest: &Digest,
        size: u64,
        chunks: upload::LiveChunks,
        fallback: futures_util::future::BoxFuture<'static, Result<BlobOpener>>,
    ) -> Result<()> {
        self.client()
            .upload_blob_live(self.name(), digest, size, chunks, fallback)
            .await
    }

    /// [`Client::manifest_digest`] in this repository.
    pub async fn manifest_digest(&self, reference: &str) -> Result<Option<Digest>> {
        self.client().manifest_digest(self.name(), reference).await
    }

    /// [`Client::source_manifest_digest`] in this repository.
    pub async fn source_manifest_digest(&self, reference: &str) -> Result<Option<Digest>> {
        self.client()
            .source_manifest_digest(self.name(), reference)
            .await
    }

    /// [`Client::put_manifest`] in this repository.
    pub async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> Result<Digest> {
        self.client()
            .put_manifest(self.name(), reference, media_type, bytes)
            .await
    }
}
