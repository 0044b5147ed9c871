//! Slow-drip servers: a response that keeps trickling in, never stalling
//! long enough for the idle read timeout, must not hold a run. Small
//! responses (manifests, configs, tokens, error bodies, and every response's
//! headers) meet `--request-timeout`; blob bodies keep up `--min-speed` over
//! `--min-speed-window` or are resumed with `Range` on a new connection.
//! Retries are bounded, so every failing case ends within a wall-clock
//! ceiling (generous: the machine is loaded).

use std::time::{Duration, Instant};

use crate::support::proxy::Fault;
use crate::support::{
    DockerSave, Output, assert_clean_failure, assert_success, sha256_digest, tar_uri,
};

use crate::faults::{self, REPO, TAG};
/// 2 bytes a second.
const TWO_BPS: Fault = Fault::Drip {
    bytes: 1,
    every: Duration::from_millis(500),
};

/// The image and proxy of the fault tests, with the timing helpers here.
struct Setup(faults::Setup);

impl std::ops::Deref for Setup {
    type Target = faults::Setup;
    fn deref(&self) -> &faults::Setup {
        &self.0
    }
}

fn setup() -> Setup {
    Setup(faults::setup())
}

impl Setup {
    /// `occystrap --insecure ARGS process registry://PROXY/team/app:v1 tar://OUT`,
    /// timed.
    fn pull(&self, args: &[&str], envs: &[(&str, &str)]) -> (Output, Duration) {
        let mut all = vec!["--insecure".to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        all.push("process".into());
        all.push(self.proxy.uri(REPO, TAG));
        all.push(tar_uri(&self.env.out("image.tar")));
        let mut cmd = self.env.occy().args(&all);
        for (k, v) in envs {
            cmd = cmd.env(k, v);
        }
        let started = Instant::now();
        let out = cmd.run();
        (out, started.elapsed())
    }

    fn config_path(&self) -> String {
        format!("/blobs/{}", self.built.config_digest)
    }

    /// The pull succeeded and every layer hashes to its diff_id.
    fn ok(&self, out: &Output) {
        assert_eq!(
            out.code,
            Some(0),
            "{}\n{}\nproxy log:\n{}",
            out.cmdline,
            out.stderr,
            self.proxy.describe()
        );
        assert_success(out);
        let ds = DockerSave::read(&self.env.out("image.tar"));
        let diff_ids = ds.diff_ids(0);
        assert_eq!(diff_ids, self.built.true_diff_ids());
        for (l, id) in diff_ids.iter().enumerate() {
            assert_eq!(&sha256_digest(ds.layer(0, l)), id, "layer {l}");
        }
    }

    /// A clean one-line failure naming one of `words`, within `ceiling`.
    fn fails(&self, out: &Output, took: Duration, ceiling: Duration, words: &[&str]) -> String {
        let line = assert_clean_failure(&self.env, out, words);
        assert!(
            took < ceiling,
            "took {took:?} (ceiling {ceiling:?}): {line}\n{}",
            self.proxy.describe()
        );
        line
    }
}

const DEADLINE_WORDS: &[&str] = &["request-timeout"];
/// Idle timeout far above the deadline, so that only the deadline can end
/// a drip (a drip never idles that long anyway).
const LONG_IDLE: [&str; 2] = ["--read-timeout", "60"];

// ---------------------------------------------------------------------------
// Small responses: one deadline for headers and body

#[test]
fn manifest_at_two_bytes_a_second_meets_the_deadline() {
    let s = setup();
    s.proxy.always("/manifests/", TWO_BPS);
    let (out, took) = s.pull(
        &[
            "--request-timeout",
            "3",
            "--retries",
            "1",
            "--read-timeout",
            "2",
        ],
        &[],
    );
    let line = s.fails(&out, took, Duration::from_secs(20), DEADLINE_WORDS);
    assert!(line.contains("manifest"), "{line}");
    // Each attempt ran out its 3 s: the deadline, not an idle timeout.
    assert!(took >= Duration::from_secs(6), "took {took:?}");
    assert_eq!(
        s.proxy.requests_to("/manifests/").len(),
        2,
        "{}",
        s.proxy.describe()
    );
}

#[test]
fn request_timeout_from_the_environment() {
    let s = setup();
    s.proxy.always("/manifests/", TWO_BPS);
    let (out, took) = s.pull(&["--retries", "0"], &[("OCCYSTRAP_REQUEST_TIMEOUT", "2")]);
    s.fails(&out, took, Duration::from_secs(15), DEADLINE_WORDS);
    assert_eq!(s.proxy.requests_to("/manifests/").len(), 1);
}

#[test]
fn dripped_manifest_once_is_retried_and_the_pull_succeeds() {
    let s = setup();
    s.proxy.once("/manifests/", TWO_BPS);
    let (out, took) = s.pull(&["--request-timeout", "2"], &[]);
    s.ok(&out);
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_eq!(s.proxy.requests_to("/manifests/").len(), 2);
}

#[test]
fn dripped_config_meets_the_deadline() {
    let s = setup();
    s.proxy.always(&s.config_path(), TWO_BPS);
    let (out, took) = s.pull(
        &[
            "--request-timeout",
            "2",
            "--retries",
            "1",
            "--read-timeout",
            "60",
        ],
        &[],
    );
    let line = s.fails(&out, took, Duration::from_secs(20), DEADLINE_WORDS);
    assert!(line.contains(&s.built.config_digest), "{line}");
}

#[test]
fn dripped_token_meets_the_deadline() {
    let s = setup();
    s.proxy.require_bearer(100);
    s.proxy.always("/token", TWO_BPS);
    let (out, took) = s.pull(&["--request-timeout", "2", "--retries", "1"], &[]);
    let line = s.fails(&out, took, Duration::from_secs(20), DEADLINE_WORDS);
    assert!(line.contains("token"), "{line}");
    assert_eq!(
        s.proxy.requests_to("/token").len(),
        2,
        "{}",
        s.proxy.describe()
    );
}

#[test]
fn server_that_never_sends_a_status_line() {
    for target in ["/manifests/", "/token", "blob"] {
        let s = setup();
        let path = match target {
            "blob" => s.layer_path(1),
            "/token" => {
                s.proxy.require_bearer(100);
                "/token".to_string()
            }
            other => other.to_string(),
        };
        s.proxy.always(&path, Fault::Silent);
        let mut args = vec!["--request-timeout", "2", "--retries", "1"];
        args.extend(LONG_IDLE);
        let (out, took) = s.pull(&args, &[]);
        s.fails(&out, took, Duration::from_secs(20), DEADLINE_WORDS);
        assert_eq!(
            s.proxy.requests_to(&path).len(),
            2,
            "{target}: {}",
            s.proxy.describe()
        );
    }
}

#[test]
fn headers_dripped_a_byte_at_a_time() {
    for path in ["/manifests/", "blob"] {
        let s = setup();
        let path = if path == "blob" {
            s.layer_path(0)
        } else {
            path.to_string()
        };
        s.proxy.always(
            &path,
            Fault::DripAll {
                bytes: 1,
                every: Duration::from_millis(200),
            },
        );
        let mut args = vec!["--request-timeout", "2", "--retries", "1"];
        args.extend(LONG_IDLE);
        let (out, took) = s.pull(&args, &[]);
        s.fails(&out, took, Duration::from_secs(20), DEADLINE_WORDS);
    }
}

#[test]
fn registry_error_body_dripped_slowly() {
    // 404: not retried, and its body is read for the registry's words; 503:
    // retried, then read. Either way the body gets the deadline and the
    // status is still reported.
    for (status, words) in [(404u16, ["404"]), (503, ["503"])] {
        let s = setup();
        s.proxy.always(
            "/manifests/",
            Fault::DripError {
                status,
                every: Duration::from_millis(100),
            },
        );
        let mut args = vec!["--request-timeout", "2", "--retries", "1"];
        args.extend(LONG_IDLE);
        let (out, took) = s.pull(&args, &[]);
        s.fails(&out, took, Duration::from_secs(20), &words);
    }
}

// ---------------------------------------------------------------------------
// Blobs: a throughput floor, resumed with Range

/// 512 bytes a second, under a 4 KiB/s floor judged over 2 s.
const SLOW_BLOB: Fault = Fault::Drip {
    bytes: 512,
    every: Duration::from_secs(1),
};
const FLOOR: [&str; 4] = ["--min-speed", "4k", "--min-speed-window", "2"];

#[test]
fn blob_below_the_floor_is_resumed_with_range_and_ends_exact() {
    let s = setup();
    s.proxy.once(&s.layer_path(1), SLOW_BLOB);
    let (out, took) = s.pull(&FLOOR, &[]);
    s.ok(&out);
    assert!(took < Duration::from_secs(40), "took {took:?}");
    let reqs = s.proxy.requests_to(&s.layer_path(1));
    assert_eq!(reqs.len(), 2, "{}", s.proxy.describe());
    assert_eq!(reqs[0].range, None);
    let from: u64 = reqs[1]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("second request must resume: {}", s.proxy.describe()));
    // What the drip delivered in its window, not the whole blob again.
    assert!(from > 0 && from < 16 << 10, "resumed from {from}");
    assert_eq!(reqs[1].status, 206, "{}", s.proxy.describe());
}

#[test]
fn blob_always_below_the_floor_fails_within_bounds() {
    let s = setup();
    s.proxy.always(&s.layer_path(1), SLOW_BLOB);
    let mut args = FLOOR.to_vec();
    args.extend(["--retries", "2"]);
    let (out, took) = s.pull(&args, &[]);
    let line = s.fails(&out, took, Duration::from_secs(40), &["min-speed"]);
    assert!(line.contains(&s.built.layers[1].digest), "{line}");
    assert_eq!(
        s.proxy.requests_to(&s.layer_path(1)).len(),
        3,
        "{}",
        s.proxy.describe()
    );
}

#[test]
fn min_speed_from_the_environment() {
    let s = setup();
    s.proxy.always(&s.layer_path(1), SLOW_BLOB);
    let (out, took) = s.pull(
        &["--retries", "0"],
        &[
            ("OCCYSTRAP_MIN_SPEED", "4096"),
            ("OCCYSTRAP_MIN_SPEED_WINDOW", "2"),
        ],
    );
    s.fails(&out, took, Duration::from_secs(30), &["min-speed"]);
    assert_eq!(s.proxy.requests_to(&s.layer_path(1)).len(), 1);
}

#[test]
fn min_speed_zero_turns_the_floor_off() {
    let s = setup();
    // About 160 KiB/s: under a 1 MiB/s floor, but it finishes.
    s.proxy.once(
        &s.layer_path(0),
        Fault::Drip {
            bytes: 16 << 10,
            every: Duration::from_millis(100),
        },
    );
    // The flag overrides a floor from the environment that would give up.
    let (out, _) = s.pull(
        &["--min-speed", "0", "--min-speed-window", "1"],
        &[("OCCYSTRAP_MIN_SPEED", "1M")],
    );
    s.ok(&out);
    assert_eq!(s.proxy.requests_to(&s.layer_path(0)).len(), 1);
}

#[test]
fn bad_min_speed_values_are_usage_errors() {
    let s = setup();
    for bad in ["fast", "-1", "1G", ""] {
        let (out, _) = s.pull(&["--min-speed", bad], &[]);
        assert_eq!(out.code, Some(2), "{bad:?}: {}", out.stderr);
    }
    for bad in ["0", "-3", "x"] {
        let (out, _) = s.pull(&["--request-timeout", bad], &[]);
        assert_eq!(out.code, Some(2), "{bad:?}: {}", out.stderr);
    }
}
