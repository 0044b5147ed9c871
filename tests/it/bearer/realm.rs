//! Where credentials may go: token realms and redirects named by an HTTPS
//! (or plain-HTTP) registry. The mock serves HTTPS with a throwaway CA
//! (`bearer/tls.rs`) that the binary trusts through `SSL_CERT_FILE`, and
//! serves the same registry on extra listeners (another port of 127.0.0.1,
//! or 127.0.0.2; plain or TLS) to play the realm or the redirect target.
//! Each refusal is checked from the mock's own log: the listener that must
//! not hear credentials got no request at all.

use std::ffi::OsStr;

use super::mock::{MockConfig, MockRegistry};
use super::tls::test_tls;
use super::{
    PASSWORD, Run, Scratch, USER, assert_clean_failure, assert_docker_save, assert_no_secret,
    occystrap_env,
};

fn with_credentials() -> MockConfig {
    MockConfig {
        basic: Some((USER.into(), PASSWORD.into())),
        ..MockConfig::default()
    }
}

/// An HTTPS mock.
fn https_mock(config: MockConfig) -> MockRegistry {
    MockRegistry::with_tls(config, test_tls().server.clone())
}

/// `occystrap [--username U --password P] EXTRA process registry://HOST/team/app:v1 tar://OUT`
/// trusting the test CA, without --insecure unless `extra` has it.
fn pull(mock: &MockRegistry, scratch: &Scratch, creds: bool, extra: &[&str]) -> Run {
    pull_env(mock, scratch, creds, extra, &[])
}

fn pull_env(
    mock: &MockRegistry,
    scratch: &Scratch,
    creds: bool,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Run {
    let src = mock.image_uri("v1");
    let dst = format!("tar://{}", scratch.tarball().display());
    let mut args: Vec<&str> = Vec::new();
    if creds {
        args.extend(["--username", USER, "--password", PASSWORD]);
    }
    args.extend(extra);
    args.extend(["process", src.as_str(), dst.as_str()]);
    let ca = test_tls().ca_file.clone();
    let mut all: Vec<(&str, &OsStr)> = vec![("SSL_CERT_FILE", ca.as_os_str())];
    all.extend(envs.iter().map(|(k, v)| (*k, OsStr::new(*v))));
    occystrap_env(scratch, &args, &all)
}

/// `127.0.0.1:PORT` of a `scheme://127.0.0.1:PORT` listener name.
fn authority(listener: &str) -> &str {
    listener.split_once("://").unwrap().1
}

/// No request anywhere carried the user's Basic credentials, except at
/// `allowed` listeners.
fn assert_basic_only_at(mock: &MockRegistry, allowed: &[&str]) {
    for r in mock.requests() {
        let basic = r
            .authorization
            .as_deref()
            .is_some_and(|a| a.to_ascii_lowercase().starts_with("basic "));
        assert!(
            !basic || allowed.contains(&r.listener.as_str()),
            "Basic credentials sent to {}:\n{}",
            r.listener,
            mock.describe_requests()
        );
    }
}

#[test]
fn https_registry_trusting_the_test_ca_pulls() {
    // The harness itself: an HTTPS registry with an HTTPS realm on itself.
    let mock = https_mock(with_credentials());
    let scratch = Scratch::new();
    let run = pull(&mock, &scratch, true, &[]);
    assert_docker_save(&mock, &scratch, &run);
    assert!(mock.base_url().starts_with("https://"));
    assert_no_secret(&run, USER, PASSWORD);
}

#[test]
fn https_registry_with_an_http_realm_is_refused() {
    // Same IP, another port; another IP. With and without credentials.
    for ip in ["127.0.0.1", "127.0.0.2"] {
        for creds in [true, false] {
            let mut mock = https_mock(if creds {
                with_credentials()
            } else {
                MockConfig::default()
            });
            let realm_listener = mock.listen(ip, None);
            mock.set_realm(&format!("{realm_listener}/token"));
            let scratch = Scratch::new();
            let run = pull(&mock, &scratch, creds, &[]);
            let line = assert_clean_failure(&scratch, &run);
            let at = authority(&realm_listener);
            assert!(
                line.contains("plain HTTP") && line.contains(&format!("--insecure-host {at}")),
                "{line}"
            );
            assert!(
                line.contains(if creds {
                    "credentials"
                } else {
                    "token request"
                }),
                "{line}"
            );
            assert!(
                mock.requests_at(&realm_listener).is_empty(),
                "the http realm was asked:\n{}",
                mock.describe_requests()
            );
            assert_eq!(mock.token_requests(), 0);
            assert_basic_only_at(&mock, &[]);
            assert_no_secret(&run, USER, PASSWORD);
        }
    }
}

#[test]
fn http_realm_is_used_when_its_host_is_allowed() {
    for how in ["flag", "flag-no-port", "env", "insecure"] {
        let mut mock = https_mock(with_credentials());
        let realm_listener = mock.listen("127.0.0.2", None);
        mock.set_realm(&format!("{realm_listener}/token"));
        let at = authority(&realm_listener).to_string();
        let scratch = Scratch::new();
        let run = match how {
            "flag" => pull(&mock, &scratch, true, &["--insecure-host", &at]),
            "flag-no-port" => pull(&mock, &scratch, true, &["--insecure-host", "127.0.0.2"]),
            "env" => pull_env(
                &mock,
                &scratch,
                true,
                &[],
                &[("OCCYSTRAP_INSECURE_HOSTS", &format!("other.example,{at}"))],
            ),
            // Global --insecure makes the registry plain HTTP too: the mock
            // speaks only TLS, so this one must fail, at the registry.
            _ => pull(&mock, &scratch, true, &["--insecure"]),
        };
        if how == "insecure" {
            assert_clean_failure(&scratch, &run);
            assert_eq!(mock.token_requests(), 0);
            continue;
        }
        assert_docker_save(&mock, &scratch, &run);
        let at_realm = mock.requests_at(&realm_listener);
        assert!(
            at_realm.iter().any(|r| r.path == "/token"
                && r.status == 200
                && r.authorization
                    .as_deref()
                    .is_some_and(|a| a.starts_with("Basic "))),
            "{how}: the allowed realm gets the credentials:\n{}",
            mock.describe_requests()
        );
        assert_basic_only_at(&mock, &[&realm_listener]);
        assert_no_secret(&run, USER, PASSWORD);
    }
}

#[test]
fn https_realm_on_another_host_gets_the_credentials() {
    // As Docker does: the registry names its token service, wherever it is.
    let mut mock = https_mock(with_credentials());
    let realm_listener = mock.listen("127.0.0.2", Some(test_tls().server.clone()));
    mock.set_realm(&format!("{realm_listener}/token"));
    let scratch = Scratch::new();
    let run = pull(&mock, &scratch, true, &[]);
    assert_docker_save(&mock, &scratch, &run);
    let tokens: Vec<_> = mock
        .requests_at(&realm_listener)
        .into_iter()
        .filter(|r| r.path == "/token")
        .collect();
    assert_eq!(tokens.len(), 1, "{}", mock.describe_requests());
    assert!(
        tokens[0]
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic ")),
        "{}",
        mock.describe_requests()
    );
    // The registry itself only ever saw the token.
    assert_basic_only_at(&mock, &[&realm_listener]);
    assert_no_secret(&run, USER, PASSWORD);
}

#[test]
fn realm_with_user_info_is_refused() {
    for realm_user in ["evil:pw-in-realm", "evil"] {
        let mock = https_mock(with_credentials());
        let realm = format!("https://{realm_user}@{}/token", authority(mock.base_url()));
        mock.set_realm(&realm);
        let scratch = Scratch::new();
        let run = pull(&mock, &scratch, true, &[]);
        let line = assert_clean_failure(&scratch, &run);
        assert!(line.contains("user name or password"), "{line}");
        assert!(!run.stderr.contains("pw-in-realm"), "{}", run.describe());
        assert_eq!(mock.token_requests(), 0, "{}", mock.describe_requests());
        assert_no_secret(&run, USER, PASSWORD);
    }
}

#[test]
fn insecure_registry_with_an_http_realm_on_another_host() {
    // `?insecure=true` allows plain HTTP to the registry alone: a realm on
    // another port or IP needs its own --insecure-host; global --insecure
    // allows every host.
    for ip in ["127.0.0.1", "127.0.0.2"] {
        let mut mock = MockRegistry::with_config(with_credentials());
        let realm_listener = mock.listen(ip, None);
        mock.set_realm(&format!("{realm_listener}/token"));
        let at = authority(&realm_listener).to_string();
        let src = format!("{}?insecure=true", mock.image_uri("v1"));
        let scratch = Scratch::new();
        let dst = format!("tar://{}", scratch.tarball().display());
        let base = ["--username", USER, "--password", PASSWORD];
        let run = occystrap_env(
            &scratch,
            &[&base[..], &["process", &src, &dst]].concat(),
            &[],
        );
        let line = assert_clean_failure(&scratch, &run);
        assert!(line.contains(&format!("--insecure-host {at}")), "{line}");
        assert!(mock.requests_at(&realm_listener).is_empty());
        assert_no_secret(&run, USER, PASSWORD);

        for extra in [vec!["--insecure-host", at.as_str()], vec!["--insecure"]] {
            let scratch = Scratch::new();
            let dst = format!("tar://{}", scratch.tarball().display());
            let args = [&base[..], &extra[..], &["process", &src, &dst]].concat();
            let run = occystrap_env(&scratch, &args, &[]);
            assert_docker_save(&mock, &scratch, &run);
        }
    }
}

#[test]
fn blob_redirect_to_plain_http_is_refused() {
    for ip in ["127.0.0.1", "127.0.0.2"] {
        let mut mock = https_mock(with_credentials());
        let target = mock.listen(ip, None);
        mock.set_blob_redirect(&target);
        let scratch = Scratch::new();
        let run = pull(&mock, &scratch, true, &[]);
        let line = assert_clean_failure(&scratch, &run);
        assert!(
            line.contains("redirect")
                && line.contains(&format!("--insecure-host {}", authority(&target))),
            "{line}"
        );
        assert!(
            mock.requests_at(&target).is_empty(),
            "{}",
            mock.describe_requests()
        );
        // Refused at once, not retried.
        let img = mock.image().clone();
        let layer_gets = mock
            .requests()
            .iter()
            .filter(|r| r.path.ends_with(&img.layer_digest) && r.status == 307)
            .count();
        assert_eq!(layer_gets, 1, "{}", mock.describe_requests());
    }
}

#[test]
fn allowed_or_https_redirect_targets_never_get_the_token() {
    for (tls, allow) in [(false, true), (true, false)] {
        let mut mock = https_mock(with_credentials());
        let target = mock.listen("127.0.0.2", tls.then(|| test_tls().server.clone()));
        mock.set_blob_redirect(&target);
        let scratch = Scratch::new();
        let at = authority(&target).to_string();
        let extra: Vec<&str> = if allow {
            vec!["--insecure-host", &at]
        } else {
            vec![]
        };
        let run = pull(&mock, &scratch, true, &extra);
        assert_docker_save(&mock, &scratch, &run);
        let there = mock.requests_at(&target);
        assert_eq!(there.len(), 1, "{}", mock.describe_requests());
        assert!(there[0].path.starts_with("/redirected/"));
        assert_eq!(
            there[0].authorization,
            None,
            "the redirect target got Authorization:\n{}",
            mock.describe_requests()
        );
    }
}

#[test]
fn verbose_and_debug_output_hold_no_secrets() {
    for flag in ["--verbose", "--debug"] {
        let mut mock = https_mock(with_credentials());
        let realm_listener = mock.listen("127.0.0.2", Some(test_tls().server.clone()));
        mock.set_realm(&format!("{realm_listener}/token?account=x"));
        let scratch = Scratch::new();
        let run = pull(&mock, &scratch, true, &[flag]);
        assert_eq!(run.status.code(), Some(0), "{}", run.describe());
        assert_no_secret(&run, USER, PASSWORD);
        for t in mock.issued_tokens() {
            assert!(!run.stderr.contains(&t), "token in {flag} output");
        }
        assert!(!run.stderr.to_ascii_lowercase().contains("authorization:"));
    }
}

#[test]
fn registry_echoing_our_secrets_does_not_make_us_print_them() {
    // A token endpoint that echoes the wrong password it was sent, and a
    // registry that echoes the bearer token in its DENIED message.
    let mock = https_mock(MockConfig {
        echo_authorization: true,
        ..with_credentials()
    });
    let scratch = Scratch::new();
    let wrong = "Wr0ng-echoed-pass";
    let src = mock.image_uri("v1");
    let dst = format!("tar://{}", scratch.tarball().display());
    let ca = test_tls().ca_file.clone();
    let run = occystrap_env(
        &scratch,
        &[
            "--username",
            USER,
            "--password",
            wrong,
            "process",
            &src,
            &dst,
        ],
        &[("SSL_CERT_FILE", ca.as_os_str())],
    );
    let line = assert_clean_failure(&scratch, &run);
    assert!(line.contains("<redacted>"), "{line}");
    assert_no_secret(&run, USER, wrong);

    let mock = https_mock(MockConfig {
        echo_authorization: true,
        deny: true,
        ..MockConfig::default()
    });
    let scratch = Scratch::new();
    let run = pull(&mock, &scratch, false, &[]);
    let line = assert_clean_failure(&scratch, &run);
    assert!(
        line.contains("DENIED") && line.contains("<redacted>"),
        "{line}"
    );
    let tokens = mock.issued_tokens();
    assert!(!tokens.is_empty());
    for t in tokens {
        assert!(!run.stderr.contains(&t), "token printed: {line}");
    }
}
