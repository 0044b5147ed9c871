//! Streamed blob uploads: POST a session, then either PUT a small blob
//! whole, or PATCH the blob as one streamed body and PUT `?digest=` to
//! close it. What is sent is hashed as it goes, and the closing PUT is
//! never sent unless the digest and size are those the caller promised. A
//! session that breaks (connection, 5xx, 429, a session the registry lost)
//! restarts that blob from its start, within the client's retry budget.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};

use super::super::client::Client;
use super::super::request::{Request, backoff};
use super::super::tokens::{Actions, Scope};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Mismatch, RegistryErrorCode, Result};

/// Opens the blob's bytes from their start; called once per attempt, so a
/// restarted upload reads them again (a file, never a one-shot stream).
pub type BlobOpener = Arc<dyn Fn() -> io::Result<Box<dyn Read + Send>> + Send + Sync>;

/// Blobs up to this size go in one PUT, read into memory.
const MONOLITHIC_MAX: u64 = 1 << 20;
/// Bytes read from the blob at a time; a few are in flight at once.
const CHUNK: usize = 256 << 10;
/// Chunks queued between the reading thread and the connection.
const QUEUED: usize = 4;

const OCTET_STREAM: &str = "application/octet-stream";

/// A blob's bytes as they arrive; the last item is the verdict (the end
/// once verified, else an error).
pub type LiveChunks = futures_util::stream::BoxStream<'static, io::Result<Bytes>>;

/// What was read and sent of a blob: its digest and length.
type Sent = io::Result<(Digest, u64)>;

impl Client {
    /// Uploads the blob `open` reads into `repository`, as `digest` of
    /// `size` bytes: a small one in one PUT, a larger one streamed. Fails
    /// without completing the upload if the bytes are not what was
    /// promised.
    pub async fn upload_blob(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        open: BlobOpener,
    ) -> Result<()> {
        let mut attempt = 0u32;
        loop {
            match self.upload_once(repository, digest, size, &open).await {
                Ok(()) => return Ok(()),
                Err(e) if restartable(&e) && attempt < self.options.retries => {
                    attempt += 1;
                    tracing::warn!("{e}; restarting the upload of {digest}");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Uploads a blob that is still arriving: `chunks` are sent as they
    /// come, in one PATCH after the POST; the closing PUT goes only once
    /// `fallback` resolved, which it does once its producer verified the
    /// whole blob (its error, such as a digest mismatch, is the blob's). If
    /// that session fails for a reason other than the registry's refusal,
    /// the blob is uploaded again, with the usual restarts, from what
    /// `fallback` opens (a spooled file). A small blob goes whole from
    /// `fallback`.
    pub async fn upload_blob_live(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        chunks: LiveChunks,
        fallback: futures_util::future::BoxFuture<'static, Result<BlobOpener>>,
    ) -> Result<()> {
        let mut fallback = Some(fallback);
        let mut opened = None;
        if size > MONOLITHIC_MAX {
            let live = self
                .upload_live_once(repository, digest, size, chunks, &mut fallback, &mut opened)
                .await;
            match live {
                Ok(()) => return Ok(()),
                Err(e @ Error::Registry { .. }) if !restartable(&e) => return Err(e),
                // The blob failed verification: nothing to upload again.
                Err(e) if opened.is_none() && fallback.is_none() => return Err(e),
                Err(e) => tracing::debug!("{e}; uploading {digest} again from its spooled copy"),
            }
        } else {
            drop(chunks);
        }
        let open = match (opened, fallback) {
            (Some(open), _) => open,
            (None, Some(f)) => f.await?,
            (None, None) => return Err(Error::InvalidImage(format!("blob {digest} is gone"))),
        };
        self.upload_blob(repository, digest, size, open).await
    }

    /// One session of a live upload: POST, the streamed PATCH, then the PUT
    /// once `fallback` says the blob verified (what it opens goes into
    /// `opened`, for a retry).
    async fn upload_live_once(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        chunks: LiveChunks,
        fallback: &mut Option<futures_util::future::BoxFuture<'static, Result<BlobOpener>>>,
        opened: &mut Option<BlobOpener>,
    ) -> Result<()> {
        let _slot = self.ctx.slot().await;
        let scope = Scope::new(repository, Actions::PushPull);
        let op = format!("POST blob upload {digest}");
        let url = self.v2_url(repository, "blobs/uploads/");
        let (resp, _) = self
            .send(&Request::new(&op, &scope, Method::POST, &url))
            .await?;
        let location = self.upload_location(&op, &resp)?;
        let done = match self
            .patch_live(&scope, location.clone(), digest, size, chunks)
            .await
        {
            Ok(next) => match fallback.take() {
                // The closing PUT only once the producer verified the blob.
                Some(verified) => match verified.await {
                    Ok(open) => {
                        *opened = Some(open);
                        self.close_upload(&scope, next, digest, size, None).await
                    }
                    Err(e) => Err(e),
                },
                None => Err(Error::InvalidImage(format!("blob {digest} is gone"))),
            },
            Err(e) => Err(e),
        };
        if done.is_err() {
            self.cancel_upload(repository, &location).await;
        }
        done
    }

    /// One PATCH of `size` bytes from the body `make` gives, not retried
    /// here (the caller restarts the blob).
    async fn send_patch(
        &self,
        op: &str,
        scope: &Scope,
        location: &url::Url,
        size: u64,
        make: &crate::registry::request::BodyMaker<'_>,
    ) -> Result<reqwest::Response> {
        let headers = [
            (CONTENT_TYPE, OCTET_STREAM.to_string()),
            (CONTENT_LENGTH, size.to_string()),
        ];
        let req = Request {
            headers: &headers,
            body: Some(make),
            retry: false,
            body_len: size,
            ..Request::new(op, scope, Method::PATCH, location.as_str())
        };
        Ok(self.send(&req).await?.0)
    }

    /// The PATCH carrying a live blob's chunks; the next location.
    async fn patch_live(
        &self,
        scope: &Scope,
        location: url::Url,
        digest: &Digest,
        size: u64,
        chunks: LiveChunks,
    ) -> Result<url::Url> {
        let op = format!("PATCH blob {digest}");
        let body = Mutex::new(Some(reqwest::Body::wrap_stream(chunks)));
        let make = || -> Result<reqwest::Body> {
            body.lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .ok_or_else(|| Error::InvalidImage(format!("{op}: a live blob is sent only once")))
        };
        let resp = self.send_patch(&op, scope, &location, size, &make).await?;
        self.upload_location(&op, &resp)
    }

    /// One upload session, from POST to the closing PUT.
    async fn upload_once(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        open: &BlobOpener,
    ) -> Result<()> {
        let _slot = self.ctx.slot().await;
        let scope = Scope::new(repository, Actions::PushPull);
        let op = format!("POST blob upload {digest}");
        let url = self.v2_url(repository, "blobs/uploads/");
        let (resp, _) = self
            .send(&Request::new(&op, &scope, Method::POST, &url))
            .await?;
        let location = self.upload_location(&op, &resp)?;
        let done = if size <= MONOLITHIC_MAX {
            self.put_whole(&scope, location.clone(), digest, size, open)
                .await
        } else {
            self.patch_then_put(&scope, location.clone(), digest, size, open)
                .await
        };
        if done.is_err() {
            self.cancel_upload(repository, &location).await;
        }
        done
    }

    /// A small blob: read whole, checked, sent in the closing PUT.
    async fn put_whole(
        &self,
        scope: &Scope,
        location: url::Url,
        digest: &Digest,
        size: u64,
        open: &BlobOpener,
    ) -> Result<()> {
        let open = open.clone();
        let body = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
            let mut body = Vec::with_capacity(size as usize);
            open()?.take(MONOLITHIC_MAX + 1).read_to_end(&mut body)?;
            Ok(body)
        })
        .await
        .map_err(|e| Error::InvalidImage(format!("upload task failed: {e}")))?
        .map_err(|e| Error::stream(format!("reading blob {digest}"), e))?;
        let mut hasher = Hasher::new(digest.algorithm());
        hasher.update(&body);
        check_sent(digest, size, Ok((hasher.finish(), body.len() as u64)))?;
        let body = Bytes::from(body);
        let make = move || Ok(reqwest::Body::from(body.clone()));
        self.close_upload(scope, location, digest, size, Some(&make))
            .await
    }

    /// A larger blob: one PATCH streaming it from `open`, hashed as sent,
    /// then the closing PUT once digest and size check out.
    async fn patch_then_put(
        &self,
        scope: &Scope,
        location: url::Url,
        digest: &Digest,
        size: u64,
        open: &BlobOpener,
    ) -> Result<()> {
        let op = format!("PATCH blob {digest}");
        // The latest attempt's verdict (an auth challenge makes a second).
        let sent: Mutex<Option<tokio::sync::oneshot::Receiver<Sent>>> = Mutex::new(None);
        let algorithm = digest.algorithm();
        let make = || -> Result<reqwest::Body> {
            let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(QUEUED);
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            *sent.lock().unwrap_or_else(|p| p.into_inner()) = Some(done_rx);
            let open = open.clone();
            tokio::task::spawn_blocking(move || {
                let _ = done_tx.send(read_into(&*open, algorithm, &tx));
            });
            let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            Ok(reqwest::Body::wrap_stream(chunks))
        };
        let resp = self.send_patch(&op, scope, &location, size, &make).await?;
        let next = self.upload_location(&op, &resp)?;
        let verdict = sent.lock().unwrap_or_else(|p| p.into_inner()).take();
        let verdict = match verdict {
            Some(rx) => rx.await.unwrap_or_else(|_| {
                Err(io::Error::other("the blob reader stopped before the end"))
            }),
            None => Err(io::Error::other("no body was sent")),
        };
        check_sent(digest, size, verdict)?;
        self.close_upload(scope, next, digest, size, None).await
    }

    /// The closing `PUT ?digest=`, with the whole body or none.
    async fn close_upload(
        &self,
        scope: &Scope,
        mut location: url::Url,
        digest: &Digest,
        size: u64,
        body: Option<&super::super::request::BodyMaker<'_>>,
    ) -> Result<()> {
        location
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let op = format!("PUT blob {digest}");
        let len = if body.is_some() { size } else { 0 };
        let empty = || Ok(reqwest::Body::from(Bytes::new()));
        let headers = [
            (CONTENT_TYPE, OCTET_STREAM.to_string()),
            (CONTENT_LENGTH, len.to_string()),
        ];
        let req = Request {
            headers: &headers,
            body: Some(body.unwrap_or(&empty)),
            retry: false,
            body_len: len,
            ..Request::new(&op, scope, Method::PUT, location.as_str())
        };
        self.send(&req).await?;
        Ok(())
    }
}

/// Reads the blob into `tx` chunk by chunk, hashing it; the digest and
/// length of what was read, or why reading stopped.
fn read_into(
    open: &(dyn Fn() -> io::Result<Box<dyn Read + Send>> + Send + Sync),
    algorithm: crate::digest::Algorithm,
    tx: &tokio::sync::mpsc::Sender<io::Result<Bytes>>,
) -> Sent {
    let mut hasher = Hasher::new(algorithm);
    let mut count = 0u64;
    let fail = |e: io::Error| {
        // The connection sees the failure too, so the request ends.
        let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
        Err(e)
    };
    let mut reader = match open() {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    loop {
        let mut buf = vec![0u8; CHUNK];
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok((hasher.finish(), count)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return fail(e),
        };
        buf.truncate(n);
        hasher.update(&buf);
        count += n as u64;
        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the upload connection closed",
            ));
        }
    }
}

/// Refuses a blob whose bytes were not the promised digest and size.
fn check_sent(digest: &Digest, size: u64, sent: Sent) -> Result<()> {
    let (found, count) = sent.map_err(|e| Error::stream(format!("reading blob {digest}"), e))?;
    if count != size {
        return Err(Error::SizeMismatch {
            kind: Mismatch::BlobSize,
            what: format!("blob {digest} to upload"),
            expected: size,
            found: count,
        });
    }
    if &found != digest {
        return Err(Error::DigestMismatch {
            kind: Mismatch::BlobDigest,
            what: format!("blob {digest} to upload"),
            expected: digest.clone(),
            found,
        });
    }
    Ok(())
}

/// Whether a failed session is worth starting again: the connection broke,
/// the registry was overloaded or failing, or it lost the session.
fn restartable(e: &Error) -> bool {
    match e {
        Error::Network { .. } => true,
        Error::Registry {
            status: Some(s),
            codes,
            ..
        } => {
            *s >= 500
                || *s == 429
                || *s == 408
                || *s == 404
                || codes.contains(&RegistryErrorCode::BlobUploadUnknown)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_bytes_are_checked() {
        let d = Digest::sha256_of(b"abc");
        assert!(check_sent(&d, 3, Ok((d.clone(), 3))).is_ok());
        assert!(matches!(
            check_sent(&d, 4, Ok((d.clone(), 3))),
            Err(Error::SizeMismatch { .. })
        ));
        let other = Digest::sha256_of(b"abd");
        assert!(matches!(
            check_sent(&d, 3, Ok((other, 3))),
            Err(Error::DigestMismatch { .. })
        ));
    }

    #[test]
    fn what_restarts() {
        let reg = |status, codes| Error::Registry {
            registry: "r".into(),
            operation: "PATCH".into(),
            message: "m".into(),
            status: Some(status),
            codes,
        };
        assert!(restartable(&reg(503, vec![])));
        assert!(restartable(&reg(429, vec![])));
        assert!(restartable(&reg(
            404,
            vec![RegistryErrorCode::BlobUploadUnknown]
        )));
        assert!(!restartable(&reg(403, vec![RegistryErrorCode::Denied])));
        assert!(!restartable(&reg(
            400,
            vec![RegistryErrorCode::DigestInvalid]
        )));
    }
}
