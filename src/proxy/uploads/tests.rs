use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::sync::mpsc;

use super::*;

const NAME: &str = "team/app";

fn body(bytes: &[u8]) -> ReqBody {
    Full::new(Bytes::copy_from_slice(bytes))
        .map_err(|n| match n {})
        .boxed_unsync()
}

type Tx = mpsc::Sender<io::Result<Frame<Bytes>>>;

/// A body fed frame by frame; it ends when the sender is dropped.
fn channel_body() -> (Tx, ReqBody) {
    let (tx, rx) = mpsc::channel::<io::Result<Frame<Bytes>>>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (tx, StreamBody::new(stream).boxed_unsync())
}

fn data(tx: &Tx, bytes: &[u8]) -> impl Future<Output = bool> + use<> {
    let tx = tx.clone();
    let frame = Frame::data(Bytes::copy_from_slice(bytes));
    async move { tx.send(Ok(frame)).await.is_ok() }
}

/// Bytes that differ from one offset to the next.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

fn sha512_of(bytes: &[u8]) -> Digest {
    let mut h = Hasher::new(Algorithm::Sha512);
    h.update(bytes);
    h.finish()
}

fn staging(dir: &Path, limits: Limits) -> Staging {
    Staging::new(dir, &limits).unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn read_blob(s: &Staging, digest: &Digest) -> Vec<u8> {
    use std::io::Read;
    let (mut file, size) = s.open_blob(digest).expect("staged");
    let mut out = Vec::new();
    file.read_to_end(&mut out).unwrap();
    assert_eq!(out.len() as u64, size);
    out
}

fn used(s: &Staging) -> u64 {
    s.usage.bytes.load(Ordering::Acquire)
}

#[tokio::test]
async fn chunked_upload_stages_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let s = staging(dir.path(), Limits::default());
    let blob = pattern(3 << 20);
    let digest = Digest::sha256_of(&blob);
    let id = s.start(NAME).unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(s.offset(NAME, &id).unwrap(), 0);
    let cuts = [0, 1 << 20, (1 << 20) + 7, 5 << 19, blob.len() - 100];
    let forms = ["{s}-{e}", "bytes {s}-{e}", "bytes={s}-{e}", "{s}-{e}"];
    for (i, w) in cuts.windows(2).enumerate() {
        let (a, b) = (w[0], w[1]);
        let range = forms[i]
            .replace("{s}", &a.to_string())
            .replace("{e}", &(b - 1).to_string());
        let got = s.patch(NAME, &id, Some(&range), body(&blob[a..b])).await;
        assert_eq!(got.unwrap(), b as u64);
        assert_eq!(s.offset(NAME, &id).unwrap(), b as u64);
    }
    // The last bytes come with the PUT.
    let tail = &blob[blob.len() - 100..];
    let size = s.put(NAME, &id, &digest, body(tail)).await.unwrap();
    assert_eq!(size, blob.len() as u64);
    assert_eq!(s.blob_size(&digest), Some(blob.len() as u64));
    assert!(read_blob(&s, &digest) == blob);
    assert!(dir.path().join("blobs/sha256").join(digest.hex()).is_file());
    assert!(files_in(&dir.path().join("uploads")).is_empty());
    assert_eq!(used(&s), blob.len() as u64);
    // The session is over.
    let gone = s.offset(NAME, &id).unwrap_err();
    assert_eq!(gone.code, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn monolithic_upload() {
    let dir = tempfile::tempdir().unwrap();
    let s = staging(dir.path(), Limits::default());
    let blob = pattern(100_000);
    let digest = Digest::sha256_of(&blob);
    let id = s.start(NAME).unwrap();
    assert_eq!(
        s.put(NAME, &id, &digest, body(&blob)).await.unwrap(),
        100_000
    );
    assert!(read_blob(&s, &digest) == blob);
    // The same blob again: the staged copy stays, the session's goes.
    let id = s.start("other/repo").unwrap();
    s.put("other/repo", &id, &digest, body(&blob))
        .await
        .unwrap();
    assert!(files_in(&dir.path().join("uploads")).is_empty());
    assert_eq!(used(&s), 100_000);
    // An empty blob is a blob too.
    let empty = Digest::sha256_of(b"");
    let id = s.start(NAME).unwrap();
    assert_eq!(s.put(NAME, &id, &empty, body(b"")).await.unwrap(), 0);
    assert_eq!(s.blob_size(&empty), Some(0));
}

#[tokio::test]
async fn wrong_digest_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = staging(dir.path(), Limits::default());
    let id = s.start(NAME).unwrap();
    s.patch(NAME, &id, None, body(b"hello ")).await.unwrap();
    let claimed = Digest::sha256_of(b"hello world!");
    let err = s
        .put(NAME, &id, &claimed, body(b"world"))
        .await
        .unwrap_err();
    assert_eq!(err.code, "DIGEST_INVALID");
    assert_eq!(err.status, StatusCode::BAD_REQUEST);
    assert!(files_in(&dir.path().join("uploads")).is_empty());
    assert!(!dir.path().join("blobs/sha256").join(claimed.hex()).exists());
    assert_eq!(s.blob_size(&claimed), None);
    assert_eq!(s.offset(NAME, &id).unwrap_err().code, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(used(&s), 0);
}

#[tokio::test]
async fn a_chunk_not_at_the_offset_is_416() {
    let dir = tempfile::tempdir().unwrap();
    let s = staging(dir.path(), Limits::default());
    let id = s.start(NAME).unwrap();
    s.patch(NAME, &id, Some("0-9"), body(&[1; 10]))
        .await
        .unwrap();
    for range in [
        "5-14",
        "11-20",
        "0-9",
        "10-5",
        "ten-20",
        "bytes:10-19",
        "-",
        "",
    ] {
        let err = s
            .patch(NAME, &id, Some(range), body(&[2; 10]))
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
    }
    // A body that does not fill its declared range is refused and undone.
    let err = s
        .patch(NAME, &id, Some("10-29"), body(&[3; 10]))
        .await
        .unwrap_err();
    assert_eq!(err.code, "BLOB_UPLOAD_INVALID");
    let err = s
        .patch(NAME, &id, Some("10-14"), body(&[3; 10]))
        .await
        .unwrap_err();
    assert_eq!(err.code, "BLOB_UPLOAD_INVALID");
    assert_eq!(s.offset(NAME, &id).unwrap(), 10);
    assert_eq!(used(&s), 10);
    assert_eq!(
        std::fs::metadata(dir.path().join("uploads").join(&id))
            .unwrap()
            .len(),
        10
    );
    // The right one still goes on.
    let got = s.patch(NAME, &id, Some("bytes 10-19/20"), body(&[2; 10]));
    assert_eq!(got.await.unwrap(), 20);
}

#[tokio::test]
async fn a_session_belongs_to_its_repository() {
    let dir = tempfile::tempdir().unwrap();
    let s = staging(dir.path(), Limits::default());
    let id = s.start(NAME).unwrap();
    let d = Digest::sha256_of(b"x");
    let other = "team/other";
    assert_eq!(
        s.offset(other, &id).unwrap_err().code,
        "BLOB_UPLOAD_UNKNOWN"
    );
    let err = s.patch(other, &id, None, body(b"x")).await.unwrap_err();
    assert_eq!(err.code, "BLOB_UPLOAD_UNKNOWN");
    let err = s.put(other, &id, &d, body(b"x")).await.unwrap_err();
    assert_eq!(err.code, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(
        s.cancel(other, &id).unwrap_err().code,
        "BLOB_UPLOAD_UNKNOWN"
    );
    let missing = "0".repeat(32);
    assert_eq!(
        s.offset(NAME, &missing).unwrap_err().code,
        "BLOB_UPLOAD_UNKNOWN"
    );
    // None of that touched the owner's session.
    assert_eq!(s.offset(NAME, &id).unwrap(), 0);
    assert_eq!(s.put(NAME, &id, &d, body(b"x")).await.unwrap(), 1);
}

#[tokio::test]
async fn too_many_sessions_is_429() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_uploads: 2,
        ..Limits::default()
    };
    let s = staging(dir.path(), limits);
    let a = s.start(NAME).unwrap();
    let b = s.start(NAME).unwrap();
    assert_ne!(a, b);
    let err = s.start(NAME).unwrap_err();
    assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
    s.cancel(NAME, &a).unwrap();
    assert_eq!(s.cancel(NAME, &a).unwrap_err().code, "BLOB_UPLOAD_UNKNOWN");
    assert!(!dir.path().join("uploads").join(&a).exists());
    assert!(dir.path().join("uploads").join(&b).exists());
    s.start(NAME).unwrap();
}

#[tokio::test]
async fn a_blob_over_the_limit_is_refused_before_it_is_all_written() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_blob_bytes: 256 << 10,
        ..Limits::default()
    };
    let s = staging(dir.path(), limits);
    let id = s.start(NAME).unwrap();
    let (tx, req) = channel_body();
    let chunk = vec![7u8; 64 << 10];
    let sender = tokio::spawn(async move {
        let mut sent = 0;
        for _ in 0..64 {
            if !data(&tx, &chunk).await {
                break;
            }
            sent += 1;
        }
        sent
    });
    let err = s.patch(NAME, &id, None, req).await.unwrap_err();
    assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    let sent = sender.await.unwrap();
    assert!(sent < 10, "{sent} chunks were taken before the refusal");
    assert_eq!(s.offset(NAME, &id).unwrap(), 0);
    let path = dir.path().join("uploads").join(&id);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    assert_eq!(used(&s), 0);
    // A Content-Range past the limit is refused before any byte: this body
    // never sends one, so waiting for it would time out instead.
    let (_tx, stalled) = channel_body();
    let range = format!("0-{}", 256 << 10);
    let err = s.patch(NAME, &id, Some(&range), stalled).await.unwrap_err();
    assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Up to the limit is fine.
    let ok = s.patch(NAME, &id, None, body(&vec![1; 256 << 10])).await;
    assert_eq!(ok.unwrap(), 256 << 10);
    let err = s.patch(NAME, &id, None, body(b"x")).await.unwrap_err();
    assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn the_staging_area_has_a_limit() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_staging_bytes: 1 << 20,
        ..Limits::default()
    };
    let s = staging(dir.path(), limits);
    let blob = pattern(700 << 10);
    let digest = Digest::sha256_of(&blob);
    let id = s.start(NAME).unwrap();
    s.put(NAME, &id, &digest, body(&blob)).await.unwrap();
    let a = s.start(NAME).unwrap();
    let err = s
        .patch(NAME, &a, None, body(&pattern(400 << 10)))
        .await
        .unwrap_err();
    assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(used(&s), 700 << 10);
    // Declared up front: refused before reading (the body never comes).
    let (_tx, stalled) = channel_body();
    let err = s
        .patch(NAME, &a, Some(&format!("0-{}", 400 << 10)), stalled)
        .await
        .unwrap_err();
    assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    // What fits, fits; sessions count too.
    s.patch(NAME, &a, None, body(&pattern(200 << 10)))
        .await
        .unwrap();
    assert_eq!(used(&s), 900 << 10);
    let b = s.start(NAME).unwrap();
    let err = s
        .patch(NAME, &b, None, body(&pattern(200 << 10)))
        .await
        .unwrap_err();
    assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    // A cancelled session gives its bytes back.
    s.cancel(NAME, &a).unwrap();
    assert_eq!(used(&s), 700 << 10);
    s.patch(NAME, &b, None, body(&pattern(200 << 10)))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stalled_body_times_out_and_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        body_idle: Duration::from_secs(60),
        ..Limits::default()
    };
    let s = staging(dir.path(), limits);
    let blob = pattern(150);
    let id = s.start(NAME).unwrap();
    s.patch(NAME, &id, None, body(&blob[..100])).await.unwrap();
    let (tx, req) = channel_body();
    assert!(data(&tx, &blob[100..150]).await);
    let started = tokio::time::Instant::now();
    let err = s.patch(NAME, &id, None, req).await.unwrap_err();
    assert_eq!(err.status, StatusCode::REQUEST_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_secs(60));
    assert_eq!(s.offset(NAME, &id).unwrap(), 100);
    let path = dir.path().join("uploads").join(&id);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 100);
    assert_eq!(used(&s), 100);
    drop(tx);
    // The running hash was undone too: the retried chunk verifies.
    s.patch(NAME, &id, Some("100-149"), body(&blob[100..]))
        .await
        .unwrap();
    let digest = Digest::sha256_of(&blob);
    assert_eq!(s.put(NAME, &id, &digest, body(b"")).await.unwrap(), 150);
}

#[tokio::test]
async fn one_request_at_a_time_per_session() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(staging(dir.path(), Limits::default()));
    let id = s.start(NAME).unwrap();
    let (tx, req) = channel_body();
    let first = {
        let (s, id) = (s.clone(), id.clone());
        tokio::spawn(async move { s.patch(NAME, &id, None, req).await })
    };
    assert!(data(&tx, b"first").await);
    // The first PATCH is now running (its body's first frame was taken
    // or is waiting in the channel); give it a moment to hold the lock.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = s.patch(NAME, &id, None, body(b"second")).await.unwrap_err();
    assert_eq!(err.code, "BLOB_UPLOAD_INVALID");
    let d = Digest::sha256_of(b"first");
    assert_eq!(
        s.put(NAME, &id, &d, body(b"")).await.unwrap_err().code,
        "BLOB_UPLOAD_INVALID"
    );
    drop(tx);
    assert_eq!(first.await.unwrap().unwrap(), 5);
    assert_eq!(s.put(NAME, &id, &d, body(b"")).await.unwrap(), 5);
}

#[tokio::test]
async fn cancel_stops_a_request_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(staging(dir.path(), Limits::default()));
    let id = s.start(NAME).unwrap();
    let (tx, req) = channel_body();
    let running = {
        let (s, id) = (s.clone(), id.clone());
        tokio::spawn(async move { s.patch(NAME, &id, None, req).await })
    };
    assert!(data(&tx, b"some").await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.cancel(NAME, &id).unwrap();
    let _ = data(&tx, b"more").await;
    drop(tx);
    let err = running.await.unwrap().unwrap_err();
    assert_eq!(err.code, "BLOB_UPLOAD_UNKNOWN");
    assert!(files_in(&dir.path().join("uploads")).is_empty());
    assert_eq!(used(&s), 0);
}

#[tokio::test]
async fn sweep_drops_idle_sessions_and_old_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        upload_idle: Duration::from_millis(300),
        staged_ttl: Duration::from_millis(300),
        ..Limits::default()
    };
    let s = staging(dir.path(), limits);
    let old_blob = pattern(1000);
    let old = Digest::sha256_of(&old_blob);
    let kept_blob = pattern(2000);
    let kept = Digest::sha256_of(&kept_blob);
    let id = s.start(NAME).unwrap();
    s.put(NAME, &id, &old, body(&old_blob)).await.unwrap();
    let id = s.start(NAME).unwrap();
    s.put(NAME, &id, &kept, body(&kept_blob)).await.unwrap();
    let idle = s.start(NAME).unwrap();
    s.patch(NAME, &idle, None, body(&[1; 500])).await.unwrap();
    let busy = s.start(NAME).unwrap();
    s.patch(NAME, &busy, None, body(&[1; 300])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Used recently: the session and the blob survive.
    s.offset(NAME, &busy).unwrap();
    assert!(s.open_blob(&kept).is_some());
    s.sweep();
    assert_eq!(
        s.offset(NAME, &idle).unwrap_err().code,
        "BLOB_UPLOAD_UNKNOWN"
    );
    assert_eq!(s.offset(NAME, &busy).unwrap(), 300);
    assert_eq!(files_in(&dir.path().join("uploads")), vec![busy.clone()]);
    assert_eq!(s.blob_size(&old), None);
    assert!(s.open_blob(&old).is_none());
    assert!(!dir.path().join("blobs/sha256").join(old.hex()).exists());
    assert_eq!(s.blob_size(&kept), Some(2000));
    assert_eq!(used(&s), 2000 + 300);
}

#[tokio::test]
async fn drop_removes_sessions_and_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = staging(dir.path(), Limits::default());
    let id = s.start(NAME).unwrap();
    s.patch(NAME, &id, None, body(b"partial")).await.unwrap();
    s.start(NAME).unwrap();
    let staged = s.start(NAME).unwrap();
    let digest = Digest::sha256_of(b"staged");
    s.put(NAME, &staged, &digest, body(b"staged"))
        .await
        .unwrap();
    std::fs::create_dir(s.temp_dir().join("work")).unwrap();
    std::fs::write(s.temp_dir().join("work/file"), b"x").unwrap();
    assert_eq!(files_in(&dir.path().join("uploads")).len(), 2);
    drop(s);
    assert!(files_in(&dir.path().join("uploads")).is_empty());
    assert!(files_in(&dir.path().join("tmp")).is_empty());
    // Staged blobs are kept for the next run.
    assert!(dir.path().join("blobs/sha256").join(digest.hex()).is_file());
}

#[tokio::test]
async fn new_cleans_leftovers_and_keeps_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let blob = pattern(4096);
    let digest = Digest::sha256_of(&blob);
    for d in ["uploads", "tmp/run/deep", "blobs/sha256", "blobs/md5"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("uploads/0123abcd"), b"crashed").unwrap();
    std::fs::write(root.join("tmp/run/deep/f"), b"crashed").unwrap();
    std::fs::write(root.join("tmp/loose"), b"crashed").unwrap();
    std::fs::write(root.join("blobs/sha256").join(digest.hex()), &blob).unwrap();
    std::fs::write(root.join("blobs/sha256/not-a-digest"), b"x").unwrap();
    std::fs::write(root.join("blobs/md5/abc"), b"x").unwrap();
    std::fs::write(root.join("blobs/stray"), b"x").unwrap();
    // A symlink out of our directory is removed, not followed.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("keep"), b"keep").unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("tmp/link")).unwrap();
    let s = staging(root, Limits::default());
    assert!(files_in(&root.join("uploads")).is_empty());
    assert!(files_in(&root.join("tmp")).is_empty());
    assert!(outside.path().join("keep").is_file());
    assert_eq!(files_in(&root.join("blobs")), vec!["sha256".to_string()]);
    assert_eq!(
        files_in(&root.join("blobs/sha256")),
        vec![digest.hex().to_string()]
    );
    assert_eq!(s.blob_size(&digest), Some(4096));
    assert!(read_blob(&s, &digest) == blob);
    assert_eq!(used(&s), 4096);
}

#[tokio::test]
async fn sha512_digests_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    let s = staging(dir.path(), Limits::default());
    let blob = pattern(300_000);
    let digest = sha512_of(&blob);
    let id = s.start(NAME).unwrap();
    s.patch(NAME, &id, Some("0-99999"), body(&blob[..100_000]))
        .await
        .unwrap();
    let size = s.put(NAME, &id, &digest, body(&blob[100_000..])).await;
    assert_eq!(size.unwrap(), 300_000);
    assert!(dir.path().join("blobs/sha512").join(digest.hex()).is_file());
    assert!(read_blob(&s, &digest) == blob);
    // Another SHA-512 does not pass.
    let wrong = sha512_of(&blob[1..]);
    let id = s.start(NAME).unwrap();
    let err = s.put(NAME, &id, &wrong, body(&blob)).await.unwrap_err();
    assert_eq!(err.code, "DIGEST_INVALID");
    assert_eq!(s.blob_size(&wrong), None);
}

#[test]
fn content_ranges() {
    assert_eq!(parse_range("0-99"), Some((0, 99)));
    assert_eq!(parse_range("bytes 5-5"), Some((5, 5)));
    assert_eq!(parse_range("bytes=10-19"), Some((10, 19)));
    assert_eq!(parse_range("bytes 10-19/20"), Some((10, 19)));
    assert_eq!(parse_range("10-19/*"), Some((10, 19)));
    for bad in [
        "",
        "-",
        "5-",
        "-5",
        "9-3",
        "+1-2",
        "1-+2",
        "bytes",
        "bytes5-6",
        "a-b",
        "1-2/x",
        "1-2-3",
        "99999999999999999999-1",
    ] {
        assert_eq!(parse_range(bad), None, "{bad:?}");
    }
}

#[tokio::test]
async fn a_request_dropped_mid_body_leaves_the_session_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(staging(dir.path(), Limits::default()));
    let blob = pattern(200_000);
    let id = s.start(NAME).unwrap();
    s.patch(NAME, &id, None, body(&blob[..1000])).await.unwrap();
    // The client goes away part-way: hyper drops the handler's future.
    let (tx, req) = channel_body();
    let dropped = {
        let (s, id) = (s.clone(), id.clone());
        tokio::spawn(async move { s.patch(NAME, &id, None, req).await })
    };
    assert!(data(&tx, &[0xee; 150_000]).await);
    assert!(data(&tx, &[0xee; 150_000]).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());
    assert_eq!(s.offset(NAME, &id).unwrap(), 1000);
    assert_eq!(used(&s), 1000);
    // The retry from the offset: the stray bytes are gone from the file,
    // not just from the count.
    s.patch(NAME, &id, Some("1000-199999"), body(&blob[1000..]))
        .await
        .unwrap();
    let digest = Digest::sha256_of(&blob);
    assert_eq!(s.put(NAME, &id, &digest, body(b"")).await.unwrap(), 200_000);
    assert!(read_blob(&s, &digest) == blob);
}
