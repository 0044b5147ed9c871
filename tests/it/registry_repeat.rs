//! What a repeat copy costs: the requests an exact registry-to-registry
//! copy makes when the destination already has the image, counted at both
//! registries through the recording proxy. Pinned, so that a change that
//! adds a request to the up-to-date path shows here.

use crate::support::proxy::Proxy;
use crate::support::push::{PushFormat, push_busybox};
use crate::support::{Registry, TestEnv};

#[test]
fn registry_repeat_copy_makes_three_requests() {
    let env = TestEnv::new();
    let (src, dst) = (Registry::start(), Registry::start());
    push_busybox(&env, &src, PushFormat::Docker);
    let (sp, dp) = (Proxy::start(&src.host()), Proxy::start(&dst.host()));
    let run = || {
        let from = sp.uri("team/app", "v1");
        let to = dp.uri("mirror/app", "v1");
        let out = env.occy().args(["--insecure", "process", &from, &to]).run();
        assert!(out.code == Some(0), "{}\n{}", out.cmdline, out.stderr);
        out
    };
    run();
    let (s0, d0) = (sp.requests().len(), dp.requests().len());
    let out = run();
    assert!(out.stderr.contains("up to date"), "{}", out.stderr);
    let lines = |p: &Proxy, skip: usize| -> Vec<String> {
        p.requests()
            .into_iter()
            .skip(skip)
            .map(|r| {
                let what = match r.path.rsplit_once('/') {
                    Some((dir, _)) => dir.rsplit('/').next().unwrap_or("").to_string(),
                    None => String::new(),
                };
                format!("{} {what}", r.method)
            })
            .collect()
    };
    // The source: its manifest and the config the image is resolved from;
    // the destination: one HEAD of the tag. No ping, no token, no blob.
    assert_eq!(
        lines(&sp, s0),
        ["GET manifests", "GET blobs"],
        "{}",
        sp.describe()
    );
    assert_eq!(lines(&dp, d0), ["HEAD manifests"], "{}", dp.describe());
}

#[test]
fn registry_repeat_copy_with_basic_auth_is_one_challenge_and_one_head() {
    let env = TestEnv::new();
    let src = Registry::start();
    let dst = Registry::start_with_htpasswd("pusher", "s3cret-push");
    push_busybox(&env, &src, PushFormat::Docker);
    let dp = Proxy::start(&dst.host());
    let run = || {
        let from = src.uri("team/app", "v1");
        let to = dp.uri("mirror/app", "v1");
        let out = env
            .occy()
            .args([
                "--insecure",
                "--dest-username",
                "pusher",
                "--dest-password",
                "s3cret-push",
                "process",
                &from,
                &to,
            ])
            .run();
        assert!(out.code == Some(0), "{}\n{}", out.cmdline, out.stderr);
    };
    run();
    let d0 = dp.requests().len();
    run();
    let again: Vec<String> = dp
        .requests()
        .into_iter()
        .skip(d0)
        .map(|r| format!("{} {}", r.method, r.status))
        .collect();
    // One challenge (credentials are sent only once the registry asks for
    // them, since a bearer registry's realm may be another host), then the
    // HEAD with Basic: nothing else.
    assert_eq!(again, ["HEAD 401", "HEAD 200"], "{}", dp.describe());
}
