//! Split blob downloads. A registry or a link that caps each connection
//! (a CDN, a shaped link, a long round trip with a small window) holds a
//! large blob to one connection's speed. When the download is held back by
//! the network rather than by its reader, and enough of it is left, the
//! rest is cut into parts: the first stays with the connection already
//! streaming, and each later part is a `Range` request of its own whose
//! bytes go to an unlinked spool file. The reader still gets every byte in
//! order: the head's part live, then each part from the spool as it fills.
//! A part whose request fails, or whose answer is not exactly the range
//! asked for, is fetched again in its turn on the head's path, with the
//! head's resuming; a lying part is caught by the reader's digest check
//! like any other byte.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::CONTENT_RANGE;
use reqwest::{Method, StatusCode};
use tokio::sync::{SemaphorePermit, mpsc, oneshot, watch};

use super::client::Client;
use super::options::ClientOptions;
use super::pull::{BlobGet, Pumped, Span};
use super::request::{Request, backoff};
use crate::error::{Error, Result};

/// No part is smaller than this: below it, a request's round trip costs
/// more than the part saves.
const MIN_PART: u64 = 4 << 20;
/// How long the head streams before its speed is judged, and how often
/// after that.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// A split pays when the rest would take longer than this at the head's
/// network speed.
const WORTH: Duration = Duration::from_millis(1500);
/// Share of the head's time spent waiting on the network, at least, for
/// the network (not the reader) to be what holds it back.
const NETWORK_BOUND: f64 = 0.5;
/// No split above this network rate (bytes a second): what reads a layer
/// (inflate, hash) keeps up with little more, and a registry on the same
/// machine, starved of CPU, must not look like a capped link.
const MAX_SPLIT_RATE: f64 = (96 << 20) as f64;
/// Bytes read from the spool at once.
const SPOOL_READ: u64 = 1 << 20;

/// Whether `size` is large enough, and the options allow, for a split.
pub(super) fn worth_trying(options: &ClientOptions, size: u64) -> bool {
    options.connections_per_blob > 1 && size >= 2 * MIN_PART
}

/// A part's progress, as its lane reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PartState {
    /// Bytes of the part in the spool, from its start.
    written: u64,
    status: Status,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Running,
    Done,
    /// Given up: the head fetches what is not in the spool.
    Failed,
}

/// `[start, end)` of the blob, spooled at `spool_at`.
struct Part {
    start: u64,
    end: u64,
    spool_at: u64,
    state: watch::Sender<PartState>,
}

/// A split: its parts after the head's, their spool, and the request slots
/// their lanes hold.
struct Plan<'c> {
    parts: Vec<Part>,
    spool: std::fs::File,
    _slots: Vec<SemaphorePermit<'c>>,
}

/// Watches the head's speed and makes the split when it pays.
struct Splitter<'c> {
    client: &'c Client,
    size: u64,
    /// When the head's first byte came, its position and network time then.
    first: Option<(tokio::time::Instant, u64, Duration)>,
    next_look: Option<tokio::time::Instant>,
    to_lanes: Option<oneshot::Sender<Arc<Plan<'c>>>>,
    plan: Option<Arc<Plan<'c>>>,
}

impl<'c> Splitter<'c> {
    /// Called after each chunk of the head: `Some(end)` when it splits.
    fn look(&mut self, pos: u64, network: Duration) -> Option<u64> {
        self.to_lanes.as_ref()?;
        let now = tokio::time::Instant::now();
        let Some((t0, p0, n0)) = self.first else {
            self.first = Some((now, pos, network));
            self.next_look = Some(now + LOOK_EVERY);
            return None;
        };
        if self.next_look.is_some_and(|t| now < t) {
            return None;
        }
        self.next_look = Some(now + LOOK_EVERY);
        let (elapsed, waited) = (now - t0, network.saturating_sub(n0));
        let got = pos - p0;
        if got == 0 || waited.as_secs_f64() < NETWORK_BOUND * elapsed.as_secs_f64() {
            return None;
        }
        let rate = got as f64 / waited.as_secs_f64().max(1e-6);
        let left = self.size - pos;
        if rate > MAX_SPLIT_RATE
            || (left as f64) < rate * WORTH.as_secs_f64()
            || left < 2 * MIN_PART
        {
            return None;
        }
        let want = (self.client.options.connections_per_blob.saturating_sub(1))
            .min((left / MIN_PART - 1) as usize);
        // Under a request limit, as many lanes as there are free slots.
        let (mut slots, mut lanes) = (Vec::new(), 0usize);
        for _ in 0..want {
            match self.client.ctx.try_slot() {
                Some(Some(p)) => slots.push(p),
                Some(None) => {}
                None => break,
            }
            lanes += 1;
        }
        if lanes == 0 {
            return None;
        }
        let dir = spool_dir(self.client);
        let spool = match tempfile::tempfile_in(&dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!("no spool in {} ({e}): one connection", dir.display());
                self.to_lanes = None;
                return None;
            }
        };
        let share = left / (lanes as u64 + 1);
        let head_end = pos + share;
        let parts = (0..lanes as u64)
            .map(|i| {
                let start = head_end + i * share;
                let end = if i + 1 == lanes as u64 {
                    self.size
                } else {
                    start + share
                };
                Part {
                    start,
                    end,
                    spool_at: start - head_end,
                    state: watch::Sender::new(PartState {
                        written: 0,
                        status: Status::Running,
                    }),
                }
            })
            .collect();
        let plan = Arc::new(Plan {
            parts,
            spool,
            _slots: slots,
        });
        tracing::debug!(
            "{}: split at {pos} of {}: {lanes} more connection(s) from {head_end}",
            self.client.host,
            self.size
        );
        let _ = self.to_lanes.take()?.send(plan.clone());
        self.plan = Some(plan);
        Some(head_end)
    }
}

/// [`Client::stream_blob`] with splitting: the head streams, the lanes
/// start when the splitter says, and the head then hands on each part.
pub(super) async fn stream_split(
    client: &Client,
    blob: &BlobGet<'_>,
    tx: &mpsc::Sender<Bytes>,
    progress: &mut (impl Fn(u64) + Send),
) -> Result<()> {
    let (to_lanes, from_head) = oneshot::channel();
    let mut splitter = Splitter {
        client,
        size: blob.size,
        first: None,
        next_look: None,
        to_lanes: Some(to_lanes),
        plan: None,
    };
    let head = async {
        let (reached, end) = client
            .fetch_span(blob, 0, blob.size, tx, progress, &mut |pos, net| {
                splitter.look(pos, net)
            })
            .await?;
        let Some(plan) = splitter.plan.take() else {
            return Ok(());
        };
        if tx.is_closed() {
            return Ok(());
        }
        if reached < end {
            return Err(short(client, blob, 0, end, reached));
        }
        deliver(client, blob, &plan, tx, progress).await
    };
    let lanes = async {
        match from_head.await {
            Ok(plan) => {
                futures_util::future::join_all(
                    plan.parts.iter().map(|p| lane(client, blob, &plan, p)),
                )
                .await;
            }
            // No split: nothing to do while the head finishes.
            Err(_) => std::future::pending().await,
        }
    };
    let (head, lanes) = (std::pin::pin!(head), std::pin::pin!(lanes));
    match futures_util::future::select(head, lanes).await {
        futures_util::future::Either::Left((r, _)) => r,
        futures_util::future::Either::Right(((), head)) => head.await,
    }
}

/// The error of a range answered short although complete.
fn short(client: &Client, blob: &BlobGet<'_>, start: u64, end: u64, reached: u64) -> Error {
    Error::Network {
        registry: client.host.clone(),
        operation: blob.op.clone(),
        message: format!(
            "the answer to bytes={start}-{} ended after {} bytes",
            end - 1,
            reached - start
        ),
    }
}

/// Sends each part to `tx` in turn: from the spool as its lane fills it,
/// and what a failed lane left, over the head's path.
async fn deliver(
    client: &Client,
    blob: &BlobGet<'_>,
    plan: &Plan<'_>,
    tx: &mpsc::Sender<Bytes>,
    progress: &mut (impl Fn(u64) + Send),
) -> Result<()> {
    for part in &plan.parts {
        let mut state = part.state.subscribe();
        let mut sent = 0u64;
        loop {
            let now = *state.borrow_and_update();
            if now.written > sent {
                let n = (now.written - sent).min(SPOOL_READ);
                let mut buf = vec![0u8; n as usize];
                let at = part.spool_at + sent;
                plan.spool.read_exact_at(&mut buf, at).map_err(|e| {
                    Error::io("reading the download spool in", spool_dir(client), e)
                })?;
                // What has been read is not needed again.
                let _ = rustix::fs::fallocate(
                    &plan.spool,
                    rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                    at,
                    n,
                );
                sent += n;
                progress(n);
                if tx.send(Bytes::from(buf)).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            if now.status == Status::Done || sent == part.end - part.start {
                break;
            }
            // A lane's state outlives it (the plan holds it), so `changed`
            // fails only if that ever stops being so.
            if now.status == Status::Failed || state.changed().await.is_err() {
                let from = part.start + sent;
                let (reached, _) = client
                    .fetch_span(blob, from, part.end, tx, progress, &mut |_, _| None)
                    .await?;
                if tx.is_closed() {
                    return Ok(());
                }
                if reached < part.end {
                    return Err(short(client, blob, from, part.end, reached));
                }
                break;
            }
        }
    }
    Ok(())
}

/// Where the client's split downloads spool.
fn spool_dir(client: &Client) -> std::path::PathBuf {
    client
        .options
        .spool_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
}

/// Fetches one part into the spool, resuming where a broken answer left
/// off as the head does; whatever happens, its state ends Done or Failed.
async fn lane(client: &Client, blob: &BlobGet<'_>, plan: &Plan<'_>, part: &Part) {
    let mut attempt = 0u32;
    let status = loop {
        let from = part.start + part.state.borrow().written;
        // Every byte is in, whatever broke after the last one.
        if from == part.end {
            break Status::Done;
        }
        match fetch_part(client, blob, plan, part, from).await {
            Ok(()) => break Status::Done,
            Err(why) => {
                let resumable = matches!(why, Why::Broke(_));
                let why = match why {
                    Why::Broke(w) | Why::Refused(w) => w,
                };
                attempt += 1;
                if !resumable || attempt > client.options.retries {
                    tracing::info!(
                        "{}: {}: part bytes={from}-{}: {why}; fetching it in its turn",
                        client.host,
                        blob.op,
                        part.end - 1
                    );
                    break Status::Failed;
                }
                tracing::warn!(
                    "{}: {}: part bytes={from}-{}: {why}; resuming",
                    client.host,
                    blob.op,
                    part.end - 1
                );
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    };
    part.state.send_modify(|s| s.status = status);
}

/// Why a part's answer was given up.
enum Why {
    /// The connection broke or went below the floor: worth resuming.
    Broke(String),
    /// The answer is not what was asked for, or the request failed after
    /// its own retries: the head's path takes over.
    Refused(String),
}

/// Fetches `[from, part.end)` into the part's place in the spool.
async fn fetch_part(
    client: &Client,
    blob: &BlobGet<'_>,
    plan: &Plan<'_>,
    part: &Part,
    from: u64,
) -> std::result::Result<(), Why> {
    let range = format!("bytes={from}-{}", part.end - 1);
    let req = Request {
        range: Some(&range),
        ..Request::new(&blob.op, &blob.scope, Method::GET, &blob.url)
    };
    let (resp, _) = client
        .send(&req)
        .await
        .map_err(|e| Why::Refused(e.to_string()))?;
    if resp.status() != StatusCode::PARTIAL_CONTENT {
        return Err(Why::Refused(format!(
            "answered {} to a Range request",
            resp.status()
        )));
    }
    let len = part.end - from;
    let said = resp
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok());
    let right = said
        .and_then(parse_content_range)
        .is_some_and(|(a, b, total)| {
            a == from && b + 1 == part.end && total.is_none_or(|t| t == blob.size)
        });
    if !right {
        return Err(Why::Refused(format!(
            "Content-Range {said:?} is not the range asked for"
        )));
    }
    if resp.content_length().is_some_and(|n| n != len) {
        return Err(Why::Refused(format!(
            "Content-Length {:?} for {len} bytes",
            resp.content_length()
        )));
    }
    let (ltx, mut lrx) = mpsc::channel::<Bytes>(8);
    let pump = async move {
        let (mut skip, mut got, mut end) = (0, 0, len);
        let span = Span {
            skip: &mut skip,
            received: &mut got,
            end: &mut end,
            size: len,
        };
        let r = client
            .pump_response(resp, span, &ltx, &mut |_| {}, &mut |_, _| None)
            .await;
        (r, got)
    };
    let write = async {
        let mut at = from - part.start;
        while let Some(b) = lrx.recv().await {
            plan.spool
                .write_all_at(&b, part.spool_at + at)
                .map_err(|e| format!("writing the download spool: {e}"))?;
            at += b.len() as u64;
            part.state.send_modify(|s| s.written = at);
        }
        Ok::<_, String>(())
    };
    let ((pumped, got), written) = tokio::join!(pump, write);
    written.map_err(Why::Refused)?;
    match pumped {
        Ok(Pumped::Ended) if got == len => Ok(()),
        Ok(Pumped::Ended) => Err(Why::Broke(format!(
            "the answer ended after {got} of {len} bytes"
        ))),
        Ok(Pumped::Broke(why)) => Err(Why::Broke(why)),
        Ok(Pumped::Reached | Pumped::ReceiverGone) => Err(Why::Refused("the spool stopped".into())),
        Err(found) => Err(Why::Refused(format!("{found} bytes for a part of {len}"))),
    }
}

/// `bytes A-B/TOTAL` (TOTAL may be `*`): `(A, B, TOTAL)`.
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (a <= b && total.is_none_or(|t| b < t)).then_some((a, b, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn client(connections: usize) -> Arc<Client> {
        let options = ClientOptions {
            insecure: true,
            connections_per_blob: connections,
            ..ClientOptions::default()
        };
        Client::standalone("127.0.0.1:1", options).unwrap()
    }

    /// The splitter's answer after `elapsed` of streaming, with `pos` bytes
    /// in and `network` of that time spent waiting on the network; and the
    /// parts it planned.
    async fn decide(
        connections: usize,
        size: u64,
        elapsed: Duration,
        pos: u64,
        network: Duration,
    ) -> (Option<u64>, Vec<(u64, u64)>) {
        let c = client(connections);
        let (tx, _rx) = oneshot::channel();
        let mut s = Splitter {
            client: &c,
            size,
            first: None,
            next_look: None,
            to_lanes: Some(tx),
            plan: None,
        };
        assert_eq!(s.look(0, Duration::ZERO), None, "never at the first chunk");
        tokio::time::advance(elapsed).await;
        let end = s.look(pos, network);
        let parts = s
            .plan
            .map(|p| p.parts.iter().map(|p| (p.start, p.end)).collect())
            .unwrap_or_default();
        (end, parts)
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_download_the_network_holds_back_is_split_into_equal_parts() {
        // 10 MiB/s on the network for 0.6 s: 94 MiB left, 9 s more.
        let ms = Duration::from_millis;
        let (end, parts) = decide(4, 100 * MIB, ms(600), 6 * MIB, ms(590)).await;
        let share = 94 * MIB / 4;
        assert_eq!(end, Some(6 * MIB + share));
        let want = [1, 2, 3].map(|i| (6 * MIB + i * share, 6 * MIB + (i + 1) * share));
        assert_eq!(parts[..2], want[..2]);
        assert_eq!(
            parts[2],
            (want[2].0, 100 * MIB),
            "the last part runs to the end"
        );
        // Two connections: the head keeps half of the rest.
        let (end, parts) = decide(2, 100 * MIB, ms(600), 6 * MIB, ms(590)).await;
        assert_eq!(end, Some(6 * MIB + 47 * MIB));
        assert_eq!(parts, [(53 * MIB, 100 * MIB)]);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn no_split_when_it_would_not_pay() {
        let ms = Duration::from_millis;
        // The reader holds it back: 50 ms of 600 waiting on the network.
        assert_eq!(decide(4, 100 * MIB, ms(600), 6 * MIB, ms(50)).await.0, None);
        // Too early to judge.
        assert_eq!(
            decide(4, 100 * MIB, ms(300), 3 * MIB, ms(300)).await.0,
            None
        );
        // Fast enough that what is left takes under 1.5 s (60 MiB/s).
        assert_eq!(
            decide(4, 100 * MIB, ms(600), 36 * MIB, ms(600)).await.0,
            None
        );
        // Over the rate at which a split no longer pays (200 MiB/s).
        assert_eq!(
            decide(4, 4000 * MIB, ms(500), 100 * MIB, ms(500)).await.0,
            None
        );
        // Less than two parts' worth left.
        assert_eq!(decide(4, 12 * MIB, ms(600), 5 * MIB, ms(600)).await.0, None);
        // Turned off.
        assert_eq!(
            decide(1, 100 * MIB, ms(600), 6 * MIB, ms(590)).await.0,
            None
        );
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-9/10"), Some((0, 9, Some(10))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9, None)));
        for bad in [
            "bytes 9-5/10",
            "bytes 0-10/10",
            "bytes */10",
            "items 0-9/10",
            "bytes 0-9",
            "bytes -1-9/10",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }
}
