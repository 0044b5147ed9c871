//! Request paths of the distribution API, parsed and validated before any
//! handler sees them: a repository name must match the spec's grammar (so
//! it cannot climb out of anything with `..` or carry `%2F`), a tag the tag
//! grammar, a digest the digest grammar.

use crate::digest::Digest;

use super::error::{ApiError, ApiResult};

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// Repository.
        name: String,
        /// A tag or a digest.
        reference: ManifestRef,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// Repository.
        name: String,
        /// The blob.
        digest: Digest,
    },
    /// `/v2/<name>/blobs/uploads/`: start an upload (or a mount).
    UploadStart {
        /// Repository.
        name: String,
    },
    /// `/v2/<name>/blobs/uploads/<id>`: an upload session.
    Upload {
        /// Repository.
        name: String,
        /// The session's id.
        id: String,
    },
    /// `/v2/<name>/tags/list`.
    Tags {
        /// Repository.
        name: String,
    },
    /// `/v2/_catalog`.
    Catalog,
}

/// A manifest reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestRef {
    /// A tag.
    Tag(String),
    /// A digest.
    Digest(Digest),
}

impl std::fmt::Display for ManifestRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManifestRef::Tag(t) => f.write_str(t),
            ManifestRef::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// Longest repository name (the spec's and distribution's limit).
const MAX_NAME: usize = 255;

/// Parses a request path. `Err` is the spec's error for the client; `Ok(None)`
/// is a path outside the API (a plain 404).
pub fn parse(path: &str) -> ApiResult<Option<Route>> {
    let Some(rest) = path.strip_prefix("/v2") else {
        return Ok(None);
    };
    if rest.is_empty() || rest == "/" {
        return Ok(Some(Route::Base));
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Ok(None);
    };
    if rest == "_catalog" {
        return Ok(Some(Route::Catalog));
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Some(Route::Tags {
            name: name_of(name)?,
        }));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or(rest.strip_suffix("/blobs/uploads"))
    {
        return Ok(Some(Route::UploadStart {
            name: name_of(name)?,
        }));
    }
    if let Some((name, id)) = rest.rsplit_once("/blobs/uploads/") {
        return Ok(Some(Route::Upload {
            name: name_of(name)?,
            id: session_id(id)?,
        }));
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        let name = name_of(name)?;
        let digest = digest
            .parse::<Digest>()
            .map_err(|e| ApiError::digest_invalid(e.to_string()))?;
        return Ok(Some(Route::Blob { name, digest }));
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        let name = name_of(name)?;
        return Ok(Some(Route::Manifest {
            name,
            reference: manifest_ref(reference)?,
        }));
    }
    Ok(None)
}

/// A repository name by the spec's grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
pub fn name_of(name: &str) -> ApiResult<String> {
    let bad = || ApiError::name_invalid("invalid repository name");
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(bad());
    }
    for component in name.split('/') {
        if !component_ok(component) {
            return Err(bad());
        }
    }
    Ok(name.to_string())
}

/// One path component: alphanumeric runs joined by `.`, `_`, `__` or `-+`.
fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`) or a digest.
pub fn manifest_ref(s: &str) -> ApiResult<ManifestRef> {
    if s.contains(':') {
        return s
            .parse::<Digest>()
            .map(ManifestRef::Digest)
            .map_err(|e| ApiError::digest_invalid(e.to_string()));
    }
    let b = s.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let ok = !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-');
    if ok {
        Ok(ManifestRef::Tag(s.to_string()))
    } else {
        Err(ApiError::manifest_invalid("invalid tag"))
    }
}

/// An upload session id as [`super::uploads`] makes them: hex only.
fn session_id(id: &str) -> ApiResult<String> {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_string())
    } else {
        Err(ApiError::blob_upload_unknown("unknown upload session"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn routes() {
        assert_eq!(parse("/v2/").unwrap(), Some(Route::Base));
        assert_eq!(parse("/v2").unwrap(), Some(Route::Base));
        assert_eq!(parse("/other").unwrap(), None);
        assert_eq!(
            parse("/v2/team/app/manifests/v1").unwrap(),
            Some(Route::Manifest {
                name: "team/app".into(),
                reference: ManifestRef::Tag("v1".into())
            })
        );
        assert!(matches!(
            parse(&format!("/v2/a/blobs/{D}")).unwrap(),
            Some(Route::Blob { .. })
        ));
        assert_eq!(
            parse("/v2/a/b/blobs/uploads/").unwrap(),
            Some(Route::UploadStart { name: "a/b".into() })
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/00ff").unwrap(),
            Some(Route::Upload {
                name: "a".into(),
                id: "00ff".into()
            })
        );
        // A repository may itself be called `blobs` or `manifests`.
        assert_eq!(
            parse("/v2/blobs/manifests/manifests/latest").unwrap(),
            Some(Route::Manifest {
                name: "blobs/manifests".into(),
                reference: ManifestRef::Tag("latest".into())
            })
        );
    }

    #[test]
    fn hostile_names_refused() {
        for bad in [
            "/v2/../etc/manifests/x",
            "/v2/a/../b/manifests/x",
            "/v2/A/manifests/x",
            "/v2/a%2Fb/manifests/x",
            "/v2/a//b/manifests/x",
            "/v2/-a/manifests/x",
            "/v2/a./manifests/x",
            "/v2/a/manifests/../../x",
            "/v2/a/manifests/-x",
            "/v2/a/blobs/sha256:zz",
            "/v2/a/blobs/uploads/../../x",
        ] {
            let r = parse(bad);
            assert!(r.is_err(), "{bad} gave {r:?}");
        }
        let long = format!("/v2/{}/manifests/x", "a".repeat(256));
        assert!(parse(&long).is_err());
    }
}
