//! Split blob downloads: a large layer that the network holds back is
//! fetched over several connections (`Range: bytes=A-B` parts), and the
//! tarball is still exact. The registry is real; the proxy in front caps
//! each response at 4 MiB/s, as a link that limits every connection does,
//! and injects the faults a registry cannot be made to show: a part
//! answered whole, cut off, corrupted, or as a 206 that is not the range
//! asked for.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::faults::verify_tarball;
use crate::support::images::{BuiltImage, big_and_small_image};
use crate::support::proxy::{Fault, Proxy, Record};
use crate::support::push::{PushFormat, push_image};
use crate::support::{Output, Registry, TestEnv, assert_clean_failure, assert_success, tar_uri};

const REPO: &str = "team/app";
const TAG: &str = "v1";
/// Bytes a second each response gets through the proxy.
const RATE: usize = 4 << 20;

struct Setup {
    env: TestEnv,
    reg: Registry,
    proxy: Proxy,
    built: BuiltImage,
}

/// A registry holding an image with one incompressible 24 MiB layer (6 s
/// over one throttled connection) and a small one, behind a proxy.
fn setup() -> Setup {
    let env = TestEnv::new();
    let reg = Registry::start();
    let img = big_and_small_image(24 << 20, 0x5b1);
    let built = push_image(&env, &reg, &format!("{REPO}:{TAG}"), &img, PushFormat::Oci);
    let proxy = Proxy::start(&reg.host());
    proxy.throttle(RATE);
    Setup {
        env,
        reg,
        proxy,
        built,
    }
}

impl Setup {
    fn pull(&self, extra: &[&str]) -> Output {
        let mut args = vec!["--insecure".to_string(), "--retries".into(), "1".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("process".into());
        args.push(self.proxy.uri(REPO, TAG));
        args.push(tar_uri(&self.env.out("image.tar")));
        self.env.occy().args(&args).run()
    }

    fn big(&self) -> String {
        format!("/blobs/{}", self.built.layers[0].digest)
    }

    fn big_size(&self) -> u64 {
        self.built.layers[0].blob.len() as u64
    }

    /// The GETs of the big layer.
    fn gets(&self) -> Vec<Record> {
        self.proxy
            .requests_to(&self.big())
            .into_iter()
            .filter(|r| r.method == "GET")
            .collect()
    }

    /// `(A, B)` of each GET of the big layer for a closed range.
    fn parts(&self) -> Vec<(u64, u64)> {
        self.gets()
            .iter()
            .filter_map(|r| closed(r.range.as_deref()?))
            .collect()
    }

    fn verify(&self) {
        verify_tarball(&self.env.out("image.tar"), &self.reg, &self.built);
        let tmp = std::fs::read_dir(self.env.tmp_dir()).unwrap().count();
        assert_eq!(tmp, 0, "files left in TMPDIR");
    }
}

fn closed(range: &str) -> Option<(u64, u64)> {
    let (a, b) = range.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[test]
fn a_held_back_layer_is_fetched_in_parts_and_comes_out_exact() {
    let s = setup();
    let out = s.pull(&[]);
    assert_success(&out);
    s.verify();
    let gets = s.gets();
    assert_eq!(gets[0].range, None, "{}", s.proxy.describe());
    let mut parts = s.parts();
    parts.sort();
    assert!(
        (1..=3).contains(&parts.len()),
        "1 to 3 parts beside the head:\n{}",
        s.proxy.describe()
    );
    // The parts tile the blob's tail, and the head stopped where they begin.
    assert_eq!(parts.last().unwrap().1, s.big_size() - 1);
    for w in parts.windows(2) {
        assert_eq!(w[0].1 + 1, w[1].0, "{parts:?}");
    }
    assert!(
        gets[0].body_sent < s.big_size() && gets[0].body_sent >= parts[0].0,
        "the head sent {} bytes, parts from {}\n{}",
        gets[0].body_sent,
        parts[0].0,
        s.proxy.describe()
    );
    for r in gets.iter().filter(|r| r.range.is_some()) {
        assert_eq!(r.status, 206, "{}", s.proxy.describe());
    }
}

#[test]
fn one_connection_per_blob_when_asked() {
    let s = setup();
    assert_success(&s.pull(&["--connections-per-blob", "1"]));
    s.verify();
    assert!(s.parts().is_empty(), "{}", s.proxy.describe());
    assert_eq!(s.gets().len(), 1, "{}", s.proxy.describe());
}

#[test]
fn parts_answered_whole_are_fetched_in_turn() {
    let s = setup();
    // Every part answered 200 with the whole blob: the lanes give up, and
    // the stream fetches each part itself when it gets there.
    s.proxy.parts(Some(3), &s.big(), Fault::IgnoreRange);
    assert_success(&s.pull(&[]));
    s.verify();
    let whole = s
        .gets()
        .iter()
        .filter(|r| r.range.is_some() && r.fault == Some("ignore-range"))
        .count();
    assert!(whole >= 1, "{}", s.proxy.describe());
}

#[test]
fn a_part_cut_off_is_resumed_from_where_it_stopped() {
    let s = setup();
    s.proxy.parts(Some(1), &s.big(), Fault::CutAfter(1 << 20));
    assert_success(&s.pull(&[]));
    s.verify();
    let gets = s.gets();
    let cut = gets
        .iter()
        .find(|r| r.fault == Some("cut"))
        .expect("a part was cut");
    let (a, b) = closed(cut.range.as_deref().unwrap()).unwrap();
    // The rest of that part, from past what the cut part had delivered.
    let rest = s
        .parts()
        .into_iter()
        .find(|&(ra, rb)| rb == b && ra > a)
        .unwrap_or_else(|| panic!("no resume of {a}-{b}:\n{}", s.proxy.describe()));
    assert!(rest.0 <= a + cut.body_sent, "{}", s.proxy.describe());
}

#[test]
fn a_206_that_is_not_the_range_asked_for_is_not_believed() {
    let s = setup();
    // The first three part requests get a 206 of the right length but
    // without the Content-Range that would say which bytes they are.
    let served = Arc::new(AtomicUsize::new(0));
    let big = s.built.layers[0].digest.clone();
    let n = served.clone();
    s.proxy.answer_with(Arc::new(move |_, uri, headers| {
        let range = headers.get("range")?.to_str().ok()?;
        let (a, b) = closed(range)?;
        if !uri.path().contains(&big) || n.fetch_add(1, Ordering::SeqCst) >= 3 {
            return None;
        }
        Some((
            206,
            "application/octet-stream".into(),
            vec![0; (b - a + 1) as usize],
        ))
    }));
    assert_success(&s.pull(&[]));
    s.verify();
    assert!(served.load(Ordering::SeqCst) >= 1, "{}", s.proxy.describe());
}

#[test]
fn a_corrupt_part_fails_the_pull_with_nothing_written() {
    let s = setup();
    s.proxy.parts(Some(1), &s.big(), Fault::Corrupt(4096));
    let out = s.pull(&[]);
    let err = assert_clean_failure(&s.env, &out, &["digest", "sha256"]);
    assert!(!s.env.out("image.tar").exists(), "{err}");
    assert!(
        s.gets().iter().any(|r| r.fault == Some("corrupt")),
        "{}",
        s.proxy.describe()
    );
}

#[test]
fn parts_behind_bearer_tokens_that_expire_get_new_ones() {
    let s = setup();
    // Each token serves 4 requests: the manifest, the config and the two
    // layers take the first, and the parts find it expired.
    s.proxy.require_bearer(4);
    assert_success(&s.pull(&[]));
    s.verify();
    let log = s.proxy.requests();
    let tokens = log.iter().filter(|r| r.path == "/token").count();
    assert!(tokens >= 2, "{}", s.proxy.describe());
    let parts = s.parts();
    assert!(!parts.is_empty(), "{}", s.proxy.describe());
    let refused_parts = s
        .gets()
        .iter()
        .filter(|r| r.status == 401 && r.range.as_deref().and_then(closed).is_some())
        .count();
    assert!(refused_parts >= 1, "{}", s.proxy.describe());
}
