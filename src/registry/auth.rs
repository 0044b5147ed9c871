//! Registry authentication: credentials, `WWW-Authenticate` challenges and
//! Docker's `config.json`.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// A username and password. `Debug` never prints the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// The value of an `Authorization: Basic` header.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            BASE64.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

/// One parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`: send credentials straight to the registry.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`: get a token from the realm.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter, if given.
        service: Option<String>,
        /// `scope` parameter, if given.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value. Parameters may come in any order,
/// quoted or not; unknown parameters are ignored.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => (&header[..i], header[i..].trim_start()),
        None => (header, ""),
    };
    let params = parse_params(rest);
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let realm = params.get("realm")?.clone();
    if realm.is_empty() {
        return None;
    }
    Some(Challenge::Bearer {
        realm,
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    })
}

fn parse_params(mut s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    loop {
        s = s.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        let Some(eq) = s.find('=') else { break };
        let key = s[..eq].trim().to_ascii_lowercase();
        s = s[eq + 1..].trim_start();
        let value;
        if let Some(stripped) = s.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = stripped.char_indices();
            let mut end = stripped.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    _ => v.push(c),
                }
            }
            value = v;
            s = &stripped[end.min(stripped.len())..];
        } else {
            let end = s.find(',').unwrap_or(s.len());
            value = s[..end].trim().to_string();
            s = &s[end..];
        }
        if !key.is_empty() {
            out.insert(key, value);
        }
    }
    out
}

/// Looks up credentials for `host` in the Docker client config at `path`
/// (the caller finds it: the CLI uses `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`): `auths` entries, then `credHelpers` /
/// `credsStore` helper programs.
pub fn docker_config_credentials(path: &Path, host: &str) -> Option<Credentials> {
    // Only a regular file, without blocking on a FIFO planted there.
    let mut data = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(crate::fsutil::open_regular(path).ok()??, (4 << 20) + 1),
        &mut data,
    )
    .ok()?;
    if data.len() > 4 << 20 {
        return None;
    }
    let config: serde_json::Value = serde_json::from_slice(&data).ok()?;
    let keys = config_keys(host);
    if let Some(auths) = config.get("auths").and_then(|a| a.as_object()) {
        for (key, entry) in auths {
            if !keys.iter().any(|k| normalize_key(key) == *k) {
                continue;
            }
            if let Some(c) = entry_credentials(entry) {
                return Some(c);
            }
        }
    }
    let helper = config
        .get("credHelpers")
        .and_then(|h| h.as_object())
        .and_then(|h| keys.iter().find_map(|k| h.get(k.as_str())))
        .or_else(|| config.get("credsStore"))
        .and_then(|v| v.as_str())?;
    credential_helper(helper, host)
}

/// The `auths` keys that can name `host` once scheme and path are stripped.
fn config_keys(host: &str) -> Vec<String> {
    if crate::reference::is_docker_hub(host) {
        vec![
            "index.docker.io".into(),
            "docker.io".into(),
            "registry-1.docker.io".into(),
        ]
    } else {
        vec![host.to_string()]
    }
}

fn normalize_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k).to_string()
}

fn entry_credentials(entry: &serde_json::Value) -> Option<Credentials> {
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_str())
        && !auth.is_empty()
    {
        let decoded = BASE64.decode(auth.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (u, p) = decoded.split_once(':')?;
        return Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        });
    }
    let u = entry.get("username")?.as_str()?;
    let p = entry.get("password")?.as_str()?;
    Some(Credentials {
        username: u.to_string(),
        password: p.to_string(),
    })
}

fn credential_helper(helper: &str, host: &str) -> Option<Credentials> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    if helper.is_empty()
        || !helper
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(host.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(Credentials {
        username: v.get("Username")?.as_str()?.to_string(),
        password: v.get("Secret")?.as_str()?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_any_order() {
        let a = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull""#,
        );
        let b = parse_challenge(
            r#"Bearer scope="repository:a/b:pull", service=reg,realm="https://auth.example/token""#,
        );
        assert_eq!(a, b);
        assert_eq!(
            a,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("reg".into()),
                scope: Some("repository:a/b:pull".into()),
            })
        );
    }

    #[test]
    fn scope_with_commas_stays_whole() {
        let c = parse_challenge(r#"Bearer realm="r",scope="repository:a:pull,push",service="s""#);
        match c {
            Some(Challenge::Bearer { scope, service, .. }) => {
                assert_eq!(scope.as_deref(), Some("repository:a:pull,push"));
                assert_eq!(service.as_deref(), Some("s"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn basic_and_garbage() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer"), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(""), None);
        assert_eq!(parse_challenge(r#"Bearer realm=""#), None);
    }

    #[test]
    fn debug_hides_password() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn config_entries() {
        let v: serde_json::Value = serde_json::json!({"auth": BASE64.encode("me:p:w")});
        let c = entry_credentials(&v).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("me", "p:w"));
        assert_eq!(
            normalize_key("https://index.docker.io/v1/"),
            "index.docker.io"
        );
        assert_eq!(normalize_key("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
