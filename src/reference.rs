//! Image references: `[host[:port]/]path[:tag][@sha256:hex]`.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, truncate_for_error};

/// The registry that a reference without a host, or with `docker.io`, means.
pub const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Registry host as given (`docker.io`, `ghcr.io`, `localhost:5000`).
    pub host: String,
    /// Repository path (`library/busybox`, `org/app`).
    pub path: String,
    /// Tag, when one was given or defaulted.
    pub tag: Option<String>,
    /// Manifest digest that pins the image.
    pub digest: Option<Digest>,
}

/// Why a reference did not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct InvalidReference {
    /// The offending input (shortened).
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn is_path_component(s: &str) -> bool {
    // distribution grammar: [a-z0-9]+ joined by '.', '_', '__' or '-'+
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    let b = s.as_bytes();
    if !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    b.iter()
        .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
        && !s.contains("..")
}

fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn is_host(s: &str) -> bool {
    let (name, port) = match s.rsplit_once(':') {
        Some((n, p)) if !n.contains(']') || s.starts_with('[') => (n, Some(p)),
        _ => (s, None),
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()))
    {
        return false;
    }
    if name.starts_with('[') {
        return name.ends_with(']') && name.len() > 2;
    }
    !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-'))
}

impl Reference {
    /// Parses a reference; see the module docs for the grammar.
    pub fn parse(input: &str) -> Result<Self, InvalidReference> {
        let err = |reason| InvalidReference {
            input: truncate_for_error(input),
            reason,
        };
        if input.is_empty() {
            return Err(err("empty"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (
                r,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| err("digest must be sha256:<64 hex digits>"))?,
                ),
            ),
            None => (input, None),
        };
        // A first component is a host if it looks like one: has '.', ':' or is localhost.
        let (host, remainder) = match rest.split_once('/') {
            Some((first, r))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !is_host(first) {
                    return Err(err("bad registry host"));
                }
                (first.to_string(), r)
            }
            _ => ("docker.io".to_string(), rest),
        };
        let (path, tag) = match remainder.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => {
                if !is_tag(t) {
                    return Err(err("bad tag"));
                }
                (p, Some(t.to_string()))
            }
            _ => (remainder, None),
        };
        if path.is_empty() || !path.split('/').all(is_path_component) {
            return Err(err(
                "repository path must be lowercase letters, digits and separators",
            ));
        }
        let mut path = path.to_string();
        if is_docker_hub(&host) && !path.contains('/') {
            path = format!("library/{path}");
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            host,
            path,
            tag,
            digest,
        })
    }

    /// Builds a reference from the separate parts the original commands take
    /// (`fetch-to-tarfile REGISTRY IMAGE TAG FILE`); `TAG` may be a digest.
    pub fn from_parts(registry: &str, image: &str, tag: &str) -> Result<Self, InvalidReference> {
        if !is_host(registry) {
            return Err(InvalidReference {
                input: truncate_for_error(registry),
                reason: "bad registry host",
            });
        }
        let sep = if tag.contains(':') { '@' } else { ':' };
        let mut r = Reference::parse(&format!("{image}{sep}{tag}"))?;
        if r.host != "docker.io" {
            return Err(InvalidReference {
                input: truncate_for_error(image),
                reason: "image name must not include a registry host",
            });
        }
        r.host = registry.to_string();
        // parse() prefixed "library/" for a one-component name, which only Docker Hub wants.
        if !is_docker_hub(registry) && !image.contains('/') {
            r.path = image.to_string();
        }
        Ok(r)
    }

    /// The host to connect to (`registry-1.docker.io` for Docker Hub).
    pub fn registry_host(&self) -> &str {
        if is_docker_hub(&self.host) {
            DOCKER_HUB_REGISTRY
        } else {
            &self.host
        }
    }

    /// What the image is called in `docker images`: `busybox`, `org/app`, `ghcr.io/org/app`.
    pub fn repository_name(&self) -> String {
        if is_docker_hub(&self.host) {
            self.path
                .strip_prefix("library/")
                .unwrap_or(&self.path)
                .to_string()
        } else {
            format!("{}/{}", self.host, self.path)
        }
    }

    /// The manifest reference to request: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

/// Whether a host name means Docker Hub.
pub fn is_docker_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com"
    )
}

impl FromStr for Reference {
    type Err = InvalidReference;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_defaults() {
        let r = p("busybox");
        assert_eq!(r.host, "docker.io");
        assert_eq!(r.registry_host(), "registry-1.docker.io");
        assert_eq!(r.path, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.repository_name(), "busybox");
        let r = p("docker.io/library/busybox:1.36");
        assert_eq!(r.path, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("1.36"));
        assert_eq!(p("docker.io/busybox").path, "library/busybox");
        assert_eq!(p("someone/tool:v2").repository_name(), "someone/tool");
    }

    #[test]
    fn hosts_and_ports() {
        let r = p("localhost:5000/foo");
        assert_eq!(r.host, "localhost:5000");
        assert_eq!(r.path, "foo");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let r = p("127.0.0.1:5000/team/app:v1");
        assert_eq!(r.registry_host(), "127.0.0.1:5000");
        assert_eq!(r.path, "team/app");
        assert_eq!(r.repository_name(), "127.0.0.1:5000/team/app");
        let r = p("ghcr.io/org/app:v1");
        assert_eq!(r.repository_name(), "ghcr.io/org/app");
        assert_eq!(p("localhost/foo").host, "localhost");
    }

    #[test]
    fn digests() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = p(&format!("ghcr.io/org/app@{d}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().unwrap().to_string(), d);
        assert_eq!(r.manifest_ref(), d);
        let r = p(&format!("ghcr.io/org/app:v1@{d}"));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.manifest_ref(), d);
    }

    #[test]
    fn rejects_bad() {
        for s in [
            "",
            "UPPER/case",
            "a/../b",
            "host:5000/",
            "app:bad tag",
            "app@sha256:abc",
            "app:",
            "/abs",
            "a//b",
            "ho$t.io/app",
        ] {
            assert!(Reference::parse(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn from_parts() {
        let r = Reference::from_parts("registry-1.docker.io", "busybox", "latest").unwrap();
        assert_eq!(r.path, "library/busybox");
        assert_eq!(r.repository_name(), "busybox");
        let r = Reference::from_parts("127.0.0.1:5000", "team/app", "v1").unwrap();
        assert_eq!(r.host, "127.0.0.1:5000");
        assert_eq!(r.tag.as_deref(), Some("v1"));
    }
}
