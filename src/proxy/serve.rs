//! Serving manifests, blobs and tag lists to clients, with and without an
//! upstream. A blob is served from the staging area when a client pushed
//! it there, else streamed from downstream; a manifest comes from
//! downstream, through [`super::pull`] first when there is an upstream.
//!
//! A downstream blob is hashed the first time this proxy serves it
//! ([`VerifiedBlobs`]); later serves check its size only. Hashing every hit
//! cost 0.25 CPU-s a pull of the 386 MB bench image, a fifth of the pull,
//! and every client hashes what it pulls anyway.
//!
//! `Range` is not supported: a blob GET is always answered 200 with the
//! whole body, which HTTP allows and every client handles.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::AsyncReadExt;

use crate::digest::{Digest, Hasher};
use crate::registry::Repository;

use super::error::{ApiError, ApiResult};
use super::route::{self, ManifestRef};
use super::{Body, Proxy, empty, full};

/// Chunks in flight between a downstream blob download and the client.
const BLOB_CHUNKS: usize = 8;
/// Read size for a staged blob's file.
const FILE_CHUNK: usize = 64 << 10;
/// Largest tag list accepted from downstream.
const MAX_TAGS_BYTES: u64 = 4 << 20;
/// Largest page a client may ask for.
const MAX_PAGE: usize = 10_000;
/// Blobs remembered as verified; the memory is dropped whole when full.
const MAX_VERIFIED: usize = 100_000;

/// Downstream blobs (digest and size) this proxy has hashed while serving
/// them and found whole. Storage that rots after that is caught by the
/// client's own digest check, as with a registry serving its storage.
#[derive(Clone, Default)]
pub struct VerifiedBlobs(Arc<Mutex<HashSet<(Digest, u64)>>>);

impl VerifiedBlobs {
    /// Whether `digest` at `size` was verified before.
    pub fn contains(&self, digest: &Digest, size: u64) -> bool {
        let set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        set.contains(&(digest.clone(), size))
    }

    /// Remembers `digest` at `size` as verified.
    fn insert(&self, digest: Digest, size: u64) {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() >= MAX_VERIFIED {
            set.clear();
        }
        set.insert((digest, size));
    }
}

/// `GET`/`HEAD /v2/<name>/blobs/<digest>` (`range`: the request's `Range`,
/// ignored: see the module's notes).
pub async fn blob(
    proxy: &Proxy,
    name: &str,
    digest: &Digest,
    head: bool,
    _range: Option<&str>,
) -> ApiResult<http::Response<Body>> {
    if let Some((file, size)) = proxy.staging.open_blob(digest) {
        let body = if head {
            empty()
        } else {
            file_body(tokio::fs::File::from_std(file), size)
        };
        return Ok(blob_response(digest, size, body));
    }
    if proxy.capture.is_some() {
        return Err(ApiError::blob_unknown(format!(
            "{name} has no blob {digest}"
        )));
    }
    let repo = proxy.config.downstream.repo(name);
    let Some(size) = repo.blob_exists(digest).await? else {
        return Err(ApiError::blob_unknown(format!(
            "{name} has no blob {digest}"
        )));
    };
    let body = if head {
        empty()
    } else {
        downstream_body(repo, digest.clone(), size, &proxy.verified)
    };
    Ok(blob_response(digest, size, body))
}

/// The headers every blob answer carries.
fn blob_response(digest: &Digest, size: u64, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    set(h, "docker-content-digest", &digest.to_string());
    resp
}

/// A staged file's first `size` bytes as a body; a file that turns out
/// shorter ends the body with an error, so the client sees a broken
/// transfer rather than a short blob.
fn file_body(file: tokio::fs::File, size: u64) -> Body {
    let chunks = futures_util::stream::unfold((file, size), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = BytesMut::with_capacity(FILE_CHUNK.min(left as usize));
        let item = match file.read_buf(&mut buf).await {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the staged blob ended {left} bytes early"),
            )),
            Ok(n) => {
                buf.truncate((n as u64).min(left) as usize);
                Ok(buf.freeze())
            }
            Err(e) => Err(e),
        };
        // After an error, nothing more.
        let left = match &item {
            Ok(b) => left - b.len() as u64,
            Err(_) => 0,
        };
        Some((item, (file, left)))
    });
    stream_body(chunks)
}

/// A downstream download in progress; dropping it (the client went away)
/// stops the download.
struct Download {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    task: Option<tokio::task::JoinHandle<crate::Result<()>>>,
    /// `None` for a blob verified before.
    hasher: Option<Hasher>,
    verified: VerifiedBlobs,
    digest: Digest,
    sent: u64,
    size: u64,
    /// The body ended with an error.
    failed: bool,
}

impl Drop for Download {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Download {
    /// The next piece of the body: a chunk, or the error that ends it.
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.failed {
            return None;
        }
        let result = match self.rx.recv().await {
            Some(chunk) => {
                self.sent += chunk.len() as u64;
                if let Some(h) = &mut self.hasher {
                    h.update(&chunk);
                }
                // The last chunk goes out only if the blob is the one asked
                // for: a client would reject it anyway, but a cache between
                // us might not.
                match self.sent >= self.size {
                    true => self.verify().map(|()| chunk),
                    false => Ok(chunk),
                }
            }
            None => {
                let task = self.task.take()?;
                match task.await {
                    Ok(Ok(())) if self.sent == self.size => match self.verify() {
                        Ok(()) => return None,
                        Err(e) => Err(e),
                    },
                    Ok(Ok(())) => Err(format!(
                        "downstream sent {} of the {} bytes of {}",
                        self.sent, self.size, self.digest
                    )),
                    Ok(Err(e)) => Err(super::error::chain(&e)),
                    Err(_) => Err("the download stopped".to_string()),
                }
            }
        };
        Some(result.map_err(|failure| {
            tracing::warn!(
                "serving blob {}: {}",
                self.digest,
                crate::escape::escape(&failure)
            );
            self.failed = true;
            if let Some(t) = self.task.take() {
                t.abort();
            }
            io::Error::other(failure)
        }))
    }

    /// Whether what was sent hashes to the digest asked for (checked once).
    fn verify(&mut self) -> Result<(), String> {
        let Some(h) = self.hasher.take() else {
            return Ok(());
        };
        let found = h.finish();
        if found == self.digest {
            self.verified.insert(found, self.size);
            Ok(())
        } else {
            Err(format!(
                "downstream's blob {} hashes to {found}",
                self.digest
            ))
        }
    }
}

/// Blob `digest` of `repo`, `size` bytes, streamed as it arrives (a few
/// chunks in memory at most) and checked as it goes: more or fewer bytes
/// than `size`, or (unless `verified` has it) bytes of another digest, end
/// the body with an error.
fn downstream_body(repo: Repository, digest: Digest, size: u64, verified: &VerifiedBlobs) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(BLOB_CHUNKS);
    let d = digest.clone();
    let task = tokio::spawn(async move { repo.stream_blob(&d, size, tx, |_| {}).await });
    let download = Download {
        rx,
        task: Some(task),
        hasher: (!verified.contains(&digest, size)).then(|| Hasher::new(digest.algorithm())),
        verified: verified.clone(),
        digest,
        sent: 0,
        size,
        failed: false,
    };
    let chunks = futures_util::stream::unfold(download, |mut d| async move {
        let item = d.next().await?;
        Some((item, d))
    });
    stream_body(chunks)
}

/// A body over a stream of chunks.
fn stream_body(
    chunks: impl futures_util::Stream<Item = io::Result<Bytes>> + Send + Sync + 'static,
) -> Body {
    use futures_util::StreamExt as _;
    BodyExt::boxed(StreamBody::new(chunks.map(|c| c.map(Frame::data))))
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>` (`accept`: the request's
/// `Accept` values). The stored manifest is served as it is, whatever the
/// client accepts: converting it would change its digest.
pub async fn manifest(
    proxy: &Proxy,
    name: &str,
    reference: &ManifestRef,
    head: bool,
    _accept: &[String],
) -> ApiResult<http::Response<Body>> {
    if let Some(pull) = &proxy.pull {
        return super::pull::manifest(proxy, pull, name, reference, head).await;
    }
    let expect = match reference {
        ManifestRef::Tag(_) => None,
        ManifestRef::Digest(d) => Some(d),
    };
    downstream_manifest(proxy, name, &reference.to_string(), expect, head).await
}

/// Manifest `reference` of `name` downstream, answered to the client;
/// `expect`: the digest it must have. Unknown: `MANIFEST_UNKNOWN`.
pub(super) async fn downstream_manifest(
    proxy: &Proxy,
    name: &str,
    reference: &str,
    expect: Option<&Digest>,
    head: bool,
) -> ApiResult<Response<Body>> {
    let repo = proxy.config.downstream.repo(name);
    let (bytes, content_type) = repo.get_manifest(reference).await.map_err(|e| {
        let e = ApiError::from(e);
        if e.status == StatusCode::NOT_FOUND {
            ApiError::manifest_unknown(format!("{name} has no manifest {reference}"))
        } else {
            e
        }
    })?;
    let digest = Digest::sha256_of(&bytes);
    if let Some(want) = expect
        && *want != digest
    {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "UNAVAILABLE",
            format!("downstream answered {name}@{want} with a manifest of digest {digest}"),
        ));
    }
    // The stored type; a registry that sent a generic one gets the
    // document's own.
    let media_type = match content_type.filter(|c| c.starts_with("application/vnd.")) {
        Some(c) => c,
        None => crate::wire::classify(None, &bytes)
            .map(|(_, m)| m)
            .map_err(|e| ApiError::upstream(format!("downstream's {name}:{reference}: {e}")))?,
    };
    Ok(manifest_response(bytes, &media_type, &digest, head))
}

/// A manifest answer: its bytes (none for HEAD), type, digest and length.
pub(super) fn manifest_response(
    bytes: Vec<u8>,
    media_type: &str,
    digest: &Digest,
    head: bool,
) -> Response<Body> {
    let len = bytes.len();
    let mut resp = Response::new(if head { empty() } else { full(bytes) });
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    set(h, "content-type", media_type);
    set(h, "docker-content-digest", &digest.to_string());
    resp
}

/// `GET /v2/<name>/tags/list` (`query`: the request's query string, with
/// the spec's `n` and `last`): downstream's list, under the client's name.
/// With an upstream that is the tags cached so far.
pub async fn tags(
    proxy: &Proxy,
    name: &str,
    query: Option<&str>,
) -> ApiResult<http::Response<Body>> {
    let (n, last) = page(query)?;
    let repo = proxy.config.downstream.repo(name);
    // One more than asked for tells whether there is a next page.
    let body = repo
        .tags_list(n.map(|n| n + 1), last.as_deref(), MAX_TAGS_BYTES)
        .await?;
    #[derive(serde::Deserialize)]
    struct Listed {
        tags: Option<Vec<String>>,
    }
    let listed: Listed = serde_json::from_slice(&body)
        .map_err(|e| ApiError::upstream(format!("downstream's tag list of {name}: {e}")))?;
    // Paged here as well: a registry that ignores `n` and `last` (as
    // distribution 2.x does for tags) sends the whole list.
    let mut tags = listed.tags.unwrap_or_default();
    tags.sort();
    tags.dedup();
    if let Some(last) = &last {
        tags.retain(|t| t > last);
    }
    let more = n.is_some_and(|n| tags.len() > n);
    if let Some(n) = n {
        tags.truncate(n);
    }
    let doc = serde_json::json!({ "name": name, "tags": tags });
    let mut resp = Response::new(full(serde_json::to_vec(&doc).unwrap_or_default()));
    set(resp.headers_mut(), "content-type", "application/json");
    // The spec's Link to the next page.
    if let (true, Some(n), Some(last)) = (more, n, tags.last())
        && route::manifest_ref(last).is_ok_and(|r| matches!(r, ManifestRef::Tag(_)))
    {
        set(
            resp.headers_mut(),
            "link",
            &format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\""),
        );
    }
    Ok(resp)
}

/// The `n` and `last` of a tag list query, checked.
fn page(query: Option<&str>) -> ApiResult<(Option<usize>, Option<String>)> {
    let bad_n = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "PAGINATION_NUMBER_INVALID",
            format!("n must be a number from 0 to {MAX_PAGE}"),
        )
    };
    let (mut n, mut last) = (None, None);
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "n" => {
                let parsed = v.parse::<usize>().map_err(|_| bad_n())?;
                if parsed > MAX_PAGE {
                    return Err(bad_n());
                }
                n = Some(parsed);
            }
            "last" => match route::manifest_ref(&v)? {
                ManifestRef::Tag(t) => last = Some(t),
                ManifestRef::Digest(_) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "TAG_INVALID",
                        "last must be a tag",
                    ));
                }
            },
            _ => {}
        }
    }
    Ok((n, last))
}

/// Sets a header whose value we made or checked (names, tags, digests and
/// media types are ASCII once they got here; one that is not is left out).
fn set(h: &mut http::HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(body: Body) -> Result<Vec<u8>, io::Error> {
        body.collect().await.map(|c| c.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn a_file_body_is_its_first_size_bytes() {
        let mut f = tempfile::tempfile().unwrap();
        use std::io::Write as _;
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        f.write_all(&data).unwrap();
        use std::io::Seek as _;
        f.rewind().unwrap();
        let got = collect(file_body(tokio::fs::File::from_std(f), 150_000))
            .await
            .unwrap();
        assert_eq!(got, data[..150_000]);
    }

    #[tokio::test]
    async fn a_short_file_ends_the_body_with_an_error() {
        let mut f = tempfile::tempfile().unwrap();
        use std::io::Write as _;
        f.write_all(b"0123456789").unwrap();
        use std::io::Seek as _;
        f.rewind().unwrap();
        let err = collect(file_body(tokio::fs::File::from_std(f), 11))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("1 bytes early"), "{err}");
    }

    #[test]
    fn page_checks_n_and_last() {
        assert_eq!(page(None).unwrap(), (None, None));
        assert_eq!(
            page(Some("n=5&last=v1.0")).unwrap(),
            (Some(5), Some("v1.0".to_string()))
        );
        assert_eq!(
            page(Some("n=x")).unwrap_err().code,
            "PAGINATION_NUMBER_INVALID"
        );
        assert_eq!(
            page(Some("n=10001")).unwrap_err().code,
            "PAGINATION_NUMBER_INVALID"
        );
        assert!(page(Some("last=..%2F")).is_err());
        assert!(page(Some("last=sha256:0000")).is_err());
    }
}
