//! The test server itself: the fault proxy (in front of the bearer mock's
//! unauthenticated `/redirected/` blobs) does to a body exactly what a
//! fault says, seen through the plain hyper client, so that a fault test
//! failing can be told apart from a harness that does not inject.

use crate::bearer::mock::MockRegistry;
use crate::support::http;
use crate::support::proxy::{Fault, Proxy};

/// A mock, a proxy in front of it, and the path of its layer blob.
fn setup() -> (MockRegistry, Proxy, String, Vec<u8>) {
    let mock = MockRegistry::start();
    let proxy = Proxy::start(&mock.host());
    let blob = mock.image().layer_gz.clone();
    let path = format!("/redirected/{}", mock.image().layer_digest);
    (mock, proxy, path, blob)
}

#[test]
fn proxy_forwards_a_body_whole_and_cuts_it_where_told() {
    let (_mock, proxy, path, blob) = setup();
    let r = http::request(&proxy.host(), "GET", &path, &[]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, blob);
    assert_eq!(r.header("content-length"), Some(&*blob.len().to_string()));
    let len = blob.len() as u64;
    for n in [0, 1, 100, len / 2, len - 1] {
        proxy.once(&path, Fault::CutAfter(n));
        // The length is promised, the body stops short: the client sees an
        // incomplete body, not a clean end.
        let r = http::request(&proxy.host(), "GET", &path, &[]);
        assert!(r.is_err(), "cut after {n}: {r:?}");
        let rec = proxy.requests_to(&path).pop().unwrap();
        assert_eq!(
            (rec.status, rec.body_sent),
            (200, n),
            "{}",
            proxy.describe()
        );
    }
}

#[test]
fn proxy_ends_a_body_without_length_cleanly_and_corrupts_one_byte() {
    let (_mock, proxy, path, blob) = setup();
    let len = blob.len() as u64;
    for n in [0, 7, len / 3] {
        proxy.once(&path, Fault::CutAfterNoLength(n));
        let r = http::request(&proxy.host(), "GET", &path, &[]).unwrap();
        assert_eq!(r.header("content-length"), None, "cut at {n}");
        assert_eq!(r.body, blob[..n as usize], "cut at {n}");
    }
    for at in [0, 1, len - 1] {
        proxy.once(&path, Fault::Corrupt(at));
        let r = http::request(&proxy.host(), "GET", &path, &[]).unwrap();
        assert_eq!(r.body.len(), blob.len());
        let differ: Vec<usize> = (0..blob.len()).filter(|&i| r.body[i] != blob[i]).collect();
        assert_eq!(differ, [at as usize], "corrupt at {at}");
    }
}

#[test]
fn proxy_serves_canned_answers_and_drips_them() {
    let (_mock, proxy, path, _) = setup();
    for (content_length, status) in [(true, 200), (false, 200)] {
        proxy.once(
            &path,
            Fault::Serve {
                content_type: "text/plain".into(),
                body: b"served by the test".to_vec(),
                content_length,
            },
        );
        let r = http::request(&proxy.host(), "GET", &path, &[]).unwrap();
        assert_eq!(r.status, status);
        assert_eq!(r.body, b"served by the test");
        assert_eq!(r.header("content-length").is_some(), content_length);
    }
    proxy.once(
        &path,
        Fault::Status {
            status: 429,
            retry_after: Some("3".into()),
            code: Some("TOOMANYREQUESTS".into()),
        },
    );
    let r = http::request(&proxy.host(), "GET", &path, &[]).unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("3"));
    assert_eq!(r.json()["errors"][0]["code"], "TOOMANYREQUESTS");
    // Head and body a few bytes at a time: still a whole answer.
    let every = std::time::Duration::from_millis(2);
    proxy.once(&path, Fault::DripAll { bytes: 16, every });
    let started = std::time::Instant::now();
    let r = http::request(&proxy.host(), "GET", &path, &[]).unwrap();
    assert_eq!(r.status, 200);
    // At least one pause per 16 bytes of head and body.
    let pieces = (r.body.len() + 100) / 16;
    assert!(
        started.elapsed() >= every * pieces as u32,
        "{:?} for {pieces} pieces",
        started.elapsed()
    );
}
