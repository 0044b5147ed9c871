//! What a pull reads: manifests, small blobs (configs) whole and verified,
//! layers streamed in order and resumed with `Range` when a connection
//! breaks off or falls below the speed floor.

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};

use super::client::Client;
use super::lanes;
use super::options::MAX_MANIFEST_BYTES;
use super::request::{Request, backoff, describe_reqwest};
use super::tokens::{Actions, Scope};
use super::transport;
use crate::digest::Digest;
use crate::error::{Error, Mismatch, Result};

/// Accept header for manifest requests: every type we understand, plus
/// schema1 so that we can name it in the error instead of getting a 404.
pub(super) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json;q=0.9, \
application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.1";

impl Client {
    /// Fetches a manifest of `repository` by tag or digest: its bytes and
    /// Content-Type.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<(Vec<u8>, Option<String>)> {
        let _slot = self.ctx.slot().await;
        let sep = if reference.contains(':') { '@' } else { ':' };
        let op = format!("GET manifest {repository}{sep}{reference}");
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base);
        let scope = Scope::new(repository, Actions::Pull);
        let (body, ct) = self
            .get_whole(&op, &scope, &url, Some(MANIFEST_ACCEPT), MAX_MANIFEST_BYTES)
            .await?;
        let ct = ct.map(|s| crate::image::media_type::essence(&s).to_string());
        Ok((body, ct))
    }

    /// Lists the tags of `repository` (`GET /v2/REPO/tags/list`), one page
    /// when `n` is given, starting after `last`: the response body whole,
    /// at most `max` bytes. The caller parses it.
    pub async fn tags_list(
        &self,
        repository: &str,
        n: Option<usize>,
        last: Option<&str>,
        max: u64,
    ) -> Result<Vec<u8>> {
        let _slot = self.ctx.slot().await;
        let op = format!("GET tags of {repository}");
        let mut url = url::Url::parse(&format!("{}/v2/{repository}/tags/list", self.base))
            .map_err(|e| Error::InvalidImage(format!("bad repository URL: {e}")))?;
        if let Some(n) = n {
            url.query_pairs_mut().append_pair("n", &n.to_string());
        }
        if let Some(last) = last {
            url.query_pairs_mut().append_pair("last", last);
        }
        let scope = Scope::new(repository, Actions::Pull);
        let (body, _) = self.get_whole(&op, &scope, url.as_str(), None, max).await?;
        Ok(body)
    }

    /// Fetches a small blob (a config) of `repository` whole, verifying
    /// digest and size.
    pub async fn get_small_blob(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        max: u64,
    ) -> Result<Vec<u8>> {
        let op = format!("GET blob {digest}");
        if size > max {
            return Err(Error::InvalidImage(format!(
                "blob {digest} is {size} bytes, more than the {max} allowed for metadata"
            )));
        }
        let _slot = self.ctx.slot().await;
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base);
        let scope = Scope::new(repository, Actions::Pull);
        // Read no more than the descriptor promised: a server that sends
        // more is wrong, and need not be believed up to `max`.
        let (body, _) = self.get_whole(&op, &scope, &url, None, size).await?;
        let found = Digest::sha256_of(&body);
        if &found != digest {
            return Err(Error::DigestMismatch {
                kind: Mismatch::BlobDigest,
                what: format!("blob {digest}"),
                expected: digest.clone(),
                found,
            });
        }
        if body.len() as u64 != size {
            return Err(Error::SizeMismatch {
                kind: Mismatch::BlobSize,
                what: format!("blob {digest}"),
                expected: size,
                found: body.len() as u64,
            });
        }
        Ok(body)
    }

    /// Streams a blob of `repository` into `tx`, in order, resuming with a
    /// `Range` request when the connection breaks off. A download the
    /// network holds back is split over several connections (see
    /// [`super::ClientOptions::connections_per_blob`]); `tx` still gets the
    /// bytes in order. `progress` sees each chunk's length. Stops with an
    /// error if the server sends more than `size` bytes. Verification of the
    /// digest is the receiver's job: it sees every byte.
    pub async fn stream_blob(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        tx: tokio::sync::mpsc::Sender<Bytes>,
        mut progress: impl Fn(u64) + Send,
    ) -> Result<()> {
        let _slot = self.ctx.slot().await;
        let blob = BlobGet {
            op: format!("GET blob {digest}"),
            url: format!("{}/v2/{repository}/blobs/{digest}", self.base),
            scope: Scope::new(repository, Actions::Pull),
            digest,
            size,
        };
        if lanes::worth_trying(&self.options, size) {
            return lanes::stream_split(self, &blob, &tx, &mut progress).await;
        }
        // One that was complete but short is the registry's whole blob:
        // the receiver reports the size mismatch.
        self.fetch_span(&blob, 0, size, &tx, &mut progress, &mut |_, _| None)
            .await
            .map(|_| ())
    }

    /// Streams `[start, end)` of a blob into `tx`, resuming on a new
    /// connection when one breaks off. `split` is asked after every chunk
    /// (with the position and the time spent waiting on the network) and
    /// may bring the end forward, to no less than the position: the rest is
    /// fetched elsewhere. Returns the position reached and the end: less
    /// than the end only when a complete response was short, or `tx` closed.
    pub(super) async fn fetch_span(
        &self,
        blob: &BlobGet<'_>,
        start: u64,
        end: u64,
        tx: &tokio::sync::mpsc::Sender<Bytes>,
        progress: &mut (impl Fn(u64) + Send),
        split: &mut (dyn FnMut(u64, std::time::Duration) -> Option<u64> + Send),
    ) -> Result<(u64, u64)> {
        let (op, size) = (&blob.op, blob.size);
        let mut pos = start;
        let mut end = end.min(size);
        let mut attempt = 0u32;
        loop {
            let range = match (pos, end) {
                (0, e) if e == size => None,
                (p, e) if e == size => Some(format!("bytes={p}-")),
                (p, e) => Some(format!("bytes={p}-{}", e - 1)),
            };
            let req = Request {
                range: range.as_deref(),
                ..Request::new(op, &blob.scope, Method::GET, &blob.url)
            };
            let (resp, _) = self.send(&req).await?;
            // A server that ignores Range replays from byte 0: skip what we have.
            let mut skip = if pos > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
                pos
            } else {
                0
            };
            // Without a Content-Length, an early end of the body is all a
            // broken connection looks like.
            let delimited_by_close = resp.content_length().is_none();
            let span = Span {
                skip: &mut skip,
                received: &mut pos,
                end: &mut end,
                size,
            };
            let pumped = self.pump_response(resp, span, tx, progress, split).await;
            let broke = match pumped {
                Ok(Pumped::Ended) if pos < end && delimited_by_close => {
                    "the response ended early".to_string()
                }
                Ok(Pumped::Ended | Pumped::Reached | Pumped::ReceiverGone) => {
                    return Ok((pos, end));
                }
                Ok(Pumped::Broke(msg)) => msg,
                Err(found) => {
                    return Err(Error::SizeMismatch {
                        kind: Mismatch::BlobSize,
                        what: format!("blob {}", blob.digest),
                        expected: size,
                        found,
                    });
                }
            };
            attempt += 1;
            if attempt > self.options.retries || pos >= end {
                return Err(Error::Network {
                    registry: self.host.clone(),
                    operation: op.clone(),
                    message: format!("connection broke off after {pos} bytes: {broke}"),
                });
            }
            tracing::warn!(
                "{}: {op}: broke off after {pos} of {size} bytes ({broke}); resuming",
                self.host
            );
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    /// [`pump_body`] over one response's body, under the speed floor
    /// (which each connection must keep up on its own).
    pub(super) async fn pump_response(
        &self,
        resp: reqwest::Response,
        span: Span<'_>,
        tx: &tokio::sync::mpsc::Sender<Bytes>,
        progress: &mut (impl Fn(u64) + Send),
        split: &mut (dyn FnMut(u64, std::time::Duration) -> Option<u64> + Send),
    ) -> std::result::Result<Pumped, u64> {
        let floor =
            transport::SpeedFloor::new(self.options.min_speed, self.options.min_speed_window);
        let too_slow = |slow| self.too_slow(slow);
        let mut stream = resp.bytes_stream();
        pump_body(
            &mut stream,
            floor,
            span,
            tx,
            progress,
            describe_reqwest,
            &too_slow,
            split,
        )
        .await
    }

    /// Why a connection below the throughput floor was given up.
    pub(super) fn too_slow(&self, slow: transport::TooSlow) -> String {
        format!(
            "slower than {} bytes/s for {} s ({} bytes/s; --min-speed)",
            self.options.min_speed,
            self.options.min_speed_window.as_secs_f64(),
            slow.rate
        )
    }
}

/// The request of one blob download, shared by its connections.
pub(super) struct BlobGet<'a> {
    /// `GET blob DIGEST`, for messages.
    pub(super) op: String,
    pub(super) url: String,
    pub(super) scope: Scope,
    pub(super) digest: &'a Digest,
    pub(super) size: u64,
}

/// Where a body goes in its blob: `received` counts from the blob's byte 0
/// (so it starts at the first byte asked for), the first `skip` bytes of
/// the body are dropped (a server that ignored `Range`), and nothing at or
/// past `end` is delivered; past `size` is an error.
pub(super) struct Span<'a> {
    pub(super) skip: &'a mut u64,
    pub(super) received: &'a mut u64,
    pub(super) end: &'a mut u64,
    pub(super) size: u64,
}

/// How one blob response body ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pumped {
    /// The body ended.
    Ended,
    /// The span's end, short of the blob's, was reached.
    Reached,
    /// The connection broke, or fell below the throughput floor: why.
    Broke(String),
    /// The receiver hung up.
    ReceiverGone,
}

/// Moves one blob response body into `tx` as `span` places it, and gives
/// up when `floor` judges the connection too slow. `split` is asked after
/// each chunk, with the position and the time spent waiting on the
/// network so far, and may bring the span's end forward. `Err(found)` when
/// the body runs past the blob's size.
#[allow(clippy::too_many_arguments)]
pub(super) async fn pump_body<S, E>(
    stream: &mut S,
    mut floor: transport::SpeedFloor,
    span: Span<'_>,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
    progress: &mut (impl Fn(u64) + Send),
    describe: impl Fn(&E) -> String,
    too_slow: &(dyn Fn(transport::TooSlow) -> String + Sync),
    split: &mut (dyn FnMut(u64, std::time::Duration) -> Option<u64> + Send),
) -> std::result::Result<Pumped, u64>
where
    S: futures_util::Stream<Item = std::result::Result<Bytes, E>> + Unpin,
{
    let Span {
        skip,
        received,
        end,
        size,
    } = span;
    let mut network = std::time::Duration::ZERO;
    loop {
        if *end < size && *received >= *end {
            return Ok(Pumped::Reached);
        }
        let waiting = tokio::time::Instant::now();
        let item = match floor.budget() {
            None => stream.next().await,
            Some(budget) => match tokio::time::timeout(budget, stream.next()).await {
                Ok(item) => item,
                // A whole window passed without a byte: judge it.
                Err(_) => match floor.record(0, waiting.elapsed()) {
                    Ok(()) => continue,
                    Err(slow) => return Ok(Pumped::Broke(too_slow(slow))),
                },
            },
        };
        let Some(item) = item else {
            return Ok(Pumped::Ended);
        };
        let mut chunk = match item {
            Ok(c) => c,
            Err(e) => return Ok(Pumped::Broke(describe(&e))),
        };
        // Time the receiver takes below is not the server's.
        let waited = waiting.elapsed();
        network += waited;
        let judged = floor.record(chunk.len() as u64, waited);
        if *skip > 0 {
            let n = (*skip).min(chunk.len() as u64);
            chunk = chunk.slice(n as usize..);
            *skip -= n;
        }
        if !chunk.is_empty() {
            if let Some(e) = split(*received, network) {
                *end = e.max(*received).min(*end);
            }
            if *end < size {
                let room = (*end - *received).min(chunk.len() as u64);
                chunk = chunk.slice(..room as usize);
            }
            *received += chunk.len() as u64;
            if *received > size {
                return Err(*received);
            }
            progress(chunk.len() as u64);
            if !chunk.is_empty() && tx.send(chunk).await.is_err() {
                return Ok(Pumped::ReceiverGone);
            }
        }
        if let Err(slow) = judged {
            return Ok(Pumped::Broke(too_slow(slow)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `n` chunks of `bytes` bytes, one every `every` (tokio's clock).
    fn ticking(
        n: usize,
        bytes: usize,
        every: Duration,
    ) -> impl futures_util::Stream<Item = std::result::Result<Bytes, std::convert::Infallible>> + Unpin
    {
        Box::pin(futures_util::stream::unfold(0, move |i| async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Bytes::from(vec![1u8; bytes])), i + 1))
        }))
    }

    async fn pump_all<S>(
        mut stream: S,
        floor: transport::SpeedFloor,
        size: u64,
        channel: usize,
        reader_pause: Duration,
    ) -> (std::result::Result<Pumped, u64>, u64, u64)
    where
        S: futures_util::Stream<Item = std::result::Result<Bytes, std::convert::Infallible>>
            + Unpin,
    {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(channel);
        let reader = tokio::spawn(async move {
            let mut got = 0u64;
            while let Some(b) = rx.recv().await {
                got += b.len() as u64;
                tokio::time::sleep(reader_pause).await;
            }
            got
        });
        let (mut skip, mut received, mut end) = (0, 0, size);
        let span = Span {
            skip: &mut skip,
            received: &mut received,
            end: &mut end,
            size,
        };
        let r = pump_body(
            &mut stream,
            floor,
            span,
            &tx,
            &mut |_| {},
            |e: &std::convert::Infallible| match *e {},
            &|slow| format!("slow {}", slow.rate),
            &mut |_, _| None,
        )
        .await;
        drop(tx);
        (r, received, reader.await.unwrap())
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn pump_gives_up_a_drip_after_one_window() {
        // 10 B/s against 100 B/s over 5 s.
        let started = tokio::time::Instant::now();
        let floor = transport::SpeedFloor::new(100, Duration::from_secs(5));
        let (r, received, got) = pump_all(
            ticking(1000, 10, Duration::from_secs(1)),
            floor,
            10_000,
            64,
            Duration::ZERO,
        )
        .await;
        assert_eq!(r, Ok(Pumped::Broke("slow 10".into())));
        assert_eq!((received, got), (50, 50));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn pump_keeps_a_connection_above_the_floor() {
        let floor = transport::SpeedFloor::new(5, Duration::from_secs(5));
        let (r, received, _) = pump_all(
            ticking(30, 10, Duration::from_secs(1)),
            floor,
            300,
            64,
            Duration::ZERO,
        )
        .await;
        assert_eq!((r, received), (Ok(Pumped::Ended), 300));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn pump_gives_up_a_silent_body_at_the_window() {
        let started = tokio::time::Instant::now();
        let floor = transport::SpeedFloor::new(1, Duration::from_secs(7));
        let silent = Box::pin(futures_util::stream::pending());
        let (r, received, _) = pump_all(silent, floor, 10, 1, Duration::ZERO).await;
        assert_eq!((r, received), (Ok(Pumped::Broke("slow 0".into())), 0));
        assert_eq!(started.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn pump_does_not_blame_the_server_for_a_slow_receiver() {
        // The server is instant; the receiver takes 10 s a chunk. A floor
        // of 100 B/s over 5 s would fail if waiting on the receiver counted.
        let floor = transport::SpeedFloor::new(100, Duration::from_secs(5));
        let fast = ticking(6, 10, Duration::ZERO);
        let (r, received, got) = pump_all(fast, floor, 60, 1, Duration::from_secs(10)).await;
        assert_eq!((r, received, got), (Ok(Pumped::Ended), 60, 60));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn pump_stops_past_the_size() {
        let off = transport::SpeedFloor::new(0, Duration::ZERO);
        let (r, _, _) = pump_all(ticking(3, 10, Duration::ZERO), off, 25, 8, Duration::ZERO).await;
        assert_eq!(r, Err(30));
    }
}
