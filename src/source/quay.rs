//! `quay://[HOST/]ORG/GLOB:TAG`: the repositories of a quay organisation
//! whose names match a glob and which have a tag, found through quay's own
//! REST API (`/api/v1/`), not the distribution API, which has no
//! per-organisation listing. The Python occystrap's bulk source.
//!
//! Discovery takes two steps, as there: the organisation's repositories
//! (`GET /api/v1/repository?namespace=ORG&public=true`, following the
//! opaque `next_page` cursor), matched against the glob; then, for each
//! match, whether the tag exists and is active
//! (`GET /api/v1/repository/ORG/NAME/tag/?specificTag=TAG&onlyActiveTags=true&limit=1`).
//! `since=YYYY-MM-DD` drops repositories last modified before that day
//! (asked for with `last_modified=true`) and tags that started before it.
//!
//! The API is untrusted: bodies are read under a byte cap, the listing is
//! capped in pages and entries, a cursor that does not move ends it with an
//! error, names that are not repository names are dropped, and no redirect
//! is followed (the token goes nowhere but the host named). The token is
//! sent as `Authorization: Bearer` and never appears in a message.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;

use crate::error::{Error, Result};

/// Bytes one API response may have.
pub const MAX_API_BODY_BYTES: usize = 8 << 20;
/// Listing pages followed at most (quay gives 100 repositories a page).
pub const MAX_PAGES: usize = 2_000;
/// Repositories one listing returns at most.
pub const MAX_REPOSITORIES: usize = 100_000;
/// Tag checks in flight at once.
const TAG_CONCURRENCY: usize = 8;
/// The cursor is echoed into a URL: longer ones are refused.
const MAX_CURSOR_BYTES: usize = 4096;
/// The host a `quay://ORG/...` URI without one means.
pub const DEFAULT_HOST: &str = "quay.io";

/// A parsed `quay://` URI. Its `Debug` never shows the token.
#[derive(Clone)]
pub struct QuayUri {
    /// The quay host, which serves both the API and the registry
    /// (`quay.io`, `127.0.0.1:8080`).
    pub host: String,
    /// The organisation (quay's namespace).
    pub namespace: String,
    /// The glob repository names are matched against (`*`, `nova-*`).
    pub glob: String,
    /// The one tag wanted in each repository.
    pub tag: String,
    /// `since=`: the day, as a Unix time at 00:00 UTC.
    pub since: Option<i64>,
    /// `token=`: the API's bearer token.
    pub token: Option<String>,
    /// `insecure=true`: plain HTTP for the API and the registry.
    pub insecure: bool,
}

impl std::fmt::Debug for QuayUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuayUri")
            .field("host", &self.host)
            .field("namespace", &self.namespace)
            .field("glob", &self.glob)
            .field("tag", &self.tag)
            .field("since", &self.since)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl QuayUri {
    /// Parses a `quay://` URI: `[HOST/]ORG[/GLOB[:TAG]]`, where a first
    /// component with a `.` or `:`, or `localhost`, is a host as in image
    /// references (so a dotted organisation needs the host spelt out). The
    /// glob defaults to `*` and the tag to `latest`, as in the Python tool.
    /// `path` is what follows `quay://`, `options` its query's pairs
    /// (`token`, `since`, `insecure`), decoded.
    pub fn parse(path: &str, options: &[(String, String)]) -> Result<QuayUri> {
        let usage = |m: String| Error::Usage(format!("quay:// {m}"));
        let get = |key: &str| {
            options
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        if let Some((k, _)) = options
            .iter()
            .find(|(k, _)| !["token", "since", "insecure"].contains(&k.as_str()))
        {
            return Err(usage(format!(
                "has no option {:?} (known: token, since, insecure)",
                crate::digest::truncate_for_error(k)
            )));
        }
        let insecure = match get("insecure").map(str::to_ascii_lowercase).as_deref() {
            None | Some("true" | "1" | "yes" | "on") => get("insecure").is_some(),
            Some("false" | "0" | "no" | "off") => false,
            Some(_) => return Err(usage("option insecure must be true or false".into())),
        };
        let path = path.trim_matches('/');
        let (host, rest) = match path.split_once('/') {
            Some((first, rest)) if is_host(first) => (first.to_string(), rest),
            None if is_host(path) => {
                return Err(usage(
                    "needs an organisation: quay://[HOST/]ORG/GLOB:TAG".into(),
                ));
            }
            _ => (DEFAULT_HOST.to_string(), path),
        };
        let (namespace, pattern) = rest.split_once('/').unwrap_or((rest, ""));
        if !is_name(namespace) {
            return Err(usage(format!(
                "organisation {:?} is not a quay namespace (lower-case letters, digits, '.', '_', '-')",
                crate::digest::truncate_for_error(namespace)
            )));
        }
        let (glob, tag) = match pattern.rsplit_once(':') {
            Some((g, t)) => (g, t),
            None => (pattern, ""),
        };
        let glob = if glob.is_empty() { "*" } else { glob };
        let tag = if tag.is_empty() { "latest" } else { tag };
        if glob.contains('/') {
            return Err(usage(format!(
                "glob {:?} has a '/': quay repositories are one level below the organisation",
                crate::digest::truncate_for_error(glob)
            )));
        }
        compile(glob)?;
        if !is_tag(tag) {
            return Err(usage(format!(
                "tag {:?} is not a tag",
                crate::digest::truncate_for_error(tag)
            )));
        }
        let since = match get("since") {
            None | Some("") => None,
            Some(s) => Some(parse_day(s).ok_or_else(|| {
                usage(format!(
                    "since={} is not a date such as 2025-01-31 (YYYY-MM-DD)",
                    crate::digest::truncate_for_error(s)
                ))
            })?),
        };
        Ok(QuayUri {
            host,
            namespace: namespace.to_string(),
            glob: glob.to_string(),
            tag: tag.to_string(),
            since,
            token: get("token").filter(|t| !t.is_empty()).map(str::to_string),
            insecure,
        })
    }

    /// `quay://HOST/ORG/GLOB:TAG`, without the token, for messages.
    pub fn describe(&self) -> String {
        format!(
            "quay://{}/{}/{}:{}",
            self.host, self.namespace, self.glob, self.tag
        )
    }
}

/// How the API is reached.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// Plain HTTP (`--insecure`, `?insecure=true`); HTTPS otherwise.
    pub insecure: bool,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// Time one whole request (head and body) may take.
    pub request_timeout: Duration,
    /// Retries of a request that failed on the network, 429 or 5xx.
    pub retries: u32,
}

/// What discovery found.
#[derive(Clone, Debug, Default)]
pub struct Found {
    /// Repository names (below the organisation) that match the glob, pass
    /// `since`, and have the tag: sorted.
    pub repositories: Vec<String>,
    /// Repositories the organisation listed.
    pub listed: usize,
    /// Of those, dropped by `since` (repository or tag too old).
    pub too_old: usize,
    /// Matching repositories without the tag.
    pub without_tag: usize,
}

/// Finds the repositories `q` names, pacing requests with `ctx`'s rate
/// limiter.
pub async fn discover(
    q: &QuayUri,
    options: &ApiOptions,
    ctx: &Arc<crate::registry::Context>,
) -> Result<Found> {
    let api = Api::new(q, options, ctx.clone())?;
    let glob = compile(&q.glob)?;
    let (listed, mut too_old) = api.list(q).await?;
    let matched: Vec<String> = listed
        .iter()
        .filter(|n| glob.is_match(n.as_str()))
        .cloned()
        .collect();
    let checks = futures_util::stream::iter(matched.iter().map(|name| api.tag(q, name)))
        .buffered(TAG_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut found = Found {
        listed: listed.len() + too_old,
        ..Found::default()
    };
    for (name, check) in matched.iter().zip(checks) {
        match check? {
            TagState::Present => found.repositories.push(name.clone()),
            TagState::TooOld => too_old += 1,
            TagState::Missing => found.without_tag += 1,
        }
    }
    found.too_old = too_old;
    found.repositories.sort();
    Ok(found)
}

/// A tag check's answer.
enum TagState {
    Present,
    TooOld,
    Missing,
}

/// The API of one quay host.
struct Api {
    http: reqwest::Client,
    base: String,
    host: String,
    options: ApiOptions,
    ctx: Arc<crate::registry::Context>,
}

impl Api {
    fn new(q: &QuayUri, options: &ApiOptions, ctx: Arc<crate::registry::Context>) -> Result<Api> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("occystrap/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(options.connect_timeout)
            // The token must go to this host only.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Network {
                registry: q.host.clone(),
                operation: "creating HTTP client".into(),
                message: e.to_string(),
            })?;
        let scheme = if options.insecure { "http" } else { "https" };
        Ok(Api {
            http,
            base: format!("{scheme}://{}/api/v1", q.host),
            host: q.host.clone(),
            options: options.clone(),
            ctx,
        })
    }

    fn error(&self, op: &str, message: impl Into<String>) -> Error {
        Error::Registry {
            registry: self.host.clone(),
            operation: format!("quay API: {op}"),
            message: message.into(),
            status: None,
            codes: Vec::new(),
        }
    }

    /// The organisation's repositories that pass `since`, and how many
    /// `since` dropped.
    async fn list(&self, q: &QuayUri) -> Result<(Vec<String>, usize)> {
        let op = format!("listing repositories of {}", q.namespace);
        let mut params = vec![
            ("namespace", q.namespace.clone()),
            ("public", "true".to_string()),
        ];
        if q.since.is_some() {
            params.push(("last_modified", "true".into()));
        }
        let mut names = Vec::new();
        let mut too_old = 0usize;
        let mut seen_cursors = std::collections::HashSet::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = self.url(&op, "/repository")?;
            {
                let mut pairs = url.query_pairs_mut();
                for (k, v) in &params {
                    pairs.append_pair(k, v);
                }
                if let Some(c) = &cursor {
                    pairs.append_pair("next_page", c);
                }
            }
            let (status, body) = self.get(&op, url).await?;
            if status != 200 {
                return Err(self.status_error(&op, status));
            }
            let page: RepoPage = serde_json::from_slice(&body).map_err(|_| {
                self.error(&op, "the answer is not JSON with a list of repositories")
            })?;
            for repo in page.repositories.unwrap_or_default() {
                let Some(name) = repo.name.filter(|n| is_name(n)) else {
                    tracing::warn!(
                        "{}: {op}: skipping an entry without a valid name",
                        self.host
                    );
                    continue;
                };
                if repo.namespace.as_ref().is_some_and(|n| n != &q.namespace) {
                    tracing::warn!(
                        "{}: {op}: skipping {name:?}, listed in another namespace",
                        self.host
                    );
                    continue;
                }
                if let Some(since) = q.since
                    && repo.last_modified.unwrap_or(0.0) < since as f64
                {
                    too_old += 1;
                    continue;
                }
                names.push(name);
            }
            if names.len() + too_old > MAX_REPOSITORIES {
                return Err(self.error(
                    &op,
                    format!("more than {MAX_REPOSITORIES} repositories; refusing to list further"),
                ));
            }
            match page.next_page.filter(|c| !c.is_empty()) {
                None => {
                    names.sort();
                    names.dedup();
                    return Ok((names, too_old));
                }
                Some(c) if c.len() > MAX_CURSOR_BYTES => {
                    return Err(self.error(&op, "the next_page cursor is too long"));
                }
                Some(c) if !seen_cursors.insert(c.clone()) => {
                    return Err(self.error(
                        &op,
                        "the next_page cursor repeats an earlier one; refusing to loop",
                    ));
                }
                Some(c) => cursor = Some(c),
            }
        }
        Err(self.error(
            &op,
            format!("more than {MAX_PAGES} pages; refusing to list further"),
        ))
    }

    /// Whether `name` has the tag, active, and new enough for `since`.
    async fn tag(&self, q: &QuayUri, name: &str) -> Result<TagState> {
        let op = format!("checking tag {} of {}/{name}", q.tag, q.namespace);
        let mut url = self.url(&op, "/repository")?;
        url.path_segments_mut()
            .map_err(|_| self.error(&op, "bad URL"))?
            .push(&q.namespace)
            .push(name)
            .push("tag")
            .push("");
        url.query_pairs_mut()
            .append_pair("specificTag", &q.tag)
            .append_pair("onlyActiveTags", "true")
            .append_pair("limit", "1");
        let (status, body) = self.get(&op, url).await?;
        match status {
            200 => {}
            404 => return Ok(TagState::Missing),
            s => return Err(self.status_error(&op, s)),
        }
        let page: TagPage = serde_json::from_slice(&body)
            .map_err(|_| self.error(&op, "the answer is not JSON with a list of tags"))?;
        // specificTag is exact, but a lying answer must not stand in for it.
        let Some(tag) = page
            .tags
            .unwrap_or_default()
            .into_iter()
            .find(|t| t.name.as_deref() == Some(q.tag.as_str()))
        else {
            return Ok(TagState::Missing);
        };
        if let Some(since) = q.since
            && tag.start_ts.unwrap_or(0.0) < since as f64
        {
            return Ok(TagState::TooOld);
        }
        Ok(TagState::Present)
    }

    fn url(&self, op: &str, path: &str) -> Result<url::Url> {
        url::Url::parse(&format!("{}{path}", self.base)).map_err(|_| self.error(op, "bad URL"))
    }

    fn status_error(&self, op: &str, status: u16) -> Error {
        let message = match status {
            401 | 403 => format!(
                "HTTP {status}: not allowed; a private organisation needs an API token \
                 (?token=, or --password)"
            ),
            300..=399 => format!("HTTP {status}: redirected; not followed"),
            _ => format!("HTTP {status}"),
        };
        Error::Registry {
            registry: self.host.clone(),
            operation: format!("quay API: {op}"),
            message,
            status: Some(status),
            codes: Vec::new(),
        }
    }

    /// One GET, its body read whole under [`MAX_API_BODY_BYTES`]; network
    /// failures, 429 and 5xx are retried.
    async fn get(&self, op: &str, url: url::Url) -> Result<(u16, Vec<u8>)> {
        let mut attempt = 0u32;
        loop {
            self.ctx.pace().await;
            let result = tokio::time::timeout(self.options.request_timeout, self.once(op, &url))
                .await
                .unwrap_or_else(|_| Err(self.network(op, "timed out")));
            let retry = match &result {
                Ok((s, _)) => *s == 429 || (500..600).contains(s),
                Err(Error::Network { .. }) => true,
                Err(_) => false,
            };
            if !retry || attempt >= self.options.retries {
                return result;
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(250u64 << attempt.min(6))).await;
        }
    }

    async fn once(&self, op: &str, url: &url::Url) -> Result<(u16, Vec<u8>)> {
        let mut req = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(t) = &self.options.token {
            req = req.bearer_auth(t);
        }
        // reqwest's errors name the URL, which holds nothing secret, but
        // say it in our words anyway.
        let mut resp = req
            .send()
            .await
            .map_err(|e| self.network(op, &describe(&e)))?;
        let status = resp.status().as_u16();
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_API_BODY_BYTES as u64)
        {
            return Err(self.error(op, too_big()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.network(op, &describe(&e)))?
        {
            if body.len() + chunk.len() > MAX_API_BODY_BYTES {
                return Err(self.error(op, too_big()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }

    fn network(&self, op: &str, message: &str) -> Error {
        Error::Network {
            registry: self.host.clone(),
            operation: format!("quay API: {op}"),
            message: message.to_string(),
        }
    }
}

fn too_big() -> String {
    format!("the answer is larger than {MAX_API_BODY_BYTES} bytes; refused")
}

/// A reqwest error without its URL.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {}", crate::digest::truncate_for_error(&detail))
    }
}

#[derive(serde::Deserialize)]
struct RepoPage {
    repositories: Option<Vec<RepoEntry>>,
    next_page: Option<String>,
}

#[derive(serde::Deserialize)]
struct RepoEntry {
    #[serde(default, deserialize_with = "lenient_string")]
    name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    namespace: Option<String>,
    #[serde(default, deserialize_with = "lenient_number")]
    last_modified: Option<f64>,
}

#[derive(serde::Deserialize)]
struct TagPage {
    tags: Option<Vec<TagEntry>>,
}

#[derive(serde::Deserialize)]
struct TagEntry {
    #[serde(default, deserialize_with = "lenient_string")]
    name: Option<String>,
    #[serde(default, deserialize_with = "lenient_number")]
    start_ts: Option<f64>,
}

/// A string, or nothing for any other JSON value.
fn lenient_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    let v: serde_json::Value = serde::Deserialize::deserialize(d)?;
    Ok(v.as_str().map(str::to_string))
}

/// A finite number, or nothing for any other JSON value.
fn lenient_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<f64>, D::Error> {
    let v: serde_json::Value = serde::Deserialize::deserialize(d)?;
    Ok(v.as_f64().filter(|f| f.is_finite()))
}

/// A glob as Python's `fnmatch` reads one: `*`, `?`, `[...]`.
fn compile(glob: &str) -> Result<globset::GlobMatcher> {
    globset::GlobBuilder::new(glob)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| {
            Error::Usage(format!(
                "quay:// glob {:?} is not valid: {e}",
                crate::digest::truncate_for_error(glob)
            ))
        })
}

/// A host as image references tell one: a `.` or `:`, or `localhost`.
fn is_host(s: &str) -> bool {
    s.contains(['.', ':']) || s == "localhost"
}

/// A quay namespace or repository name: one component of a repository
/// name (lower-case letters, digits and single separators).
fn is_name(s: &str) -> bool {
    !s.contains('/') && crate::registry::is_repository_name(s)
}

/// A tag as the distribution spec has them: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `YYYY-MM-DD` as the Unix time of 00:00 UTC that day.
fn parse_day(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = &s[r];
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > days_in[(m - 1) as usize] {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<QuayUri> {
        let u = crate::uri::Uri::parse(s).unwrap();
        QuayUri::parse(&u.path, &u.query)
    }

    #[test]
    fn forms() {
        let q = parse("quay://kolla").unwrap();
        assert_eq!(
            (
                q.host.as_str(),
                q.namespace.as_str(),
                q.glob.as_str(),
                q.tag.as_str()
            ),
            ("quay.io", "kolla", "*", "latest")
        );
        let q = parse("quay://kolla/nova-*:2025.1?since=2025-01-02&token=s3cret").unwrap();
        assert_eq!((q.glob.as_str(), q.tag.as_str()), ("nova-*", "2025.1"));
        assert_eq!(q.since, Some(1_735_776_000));
        assert!(!format!("{q:?}").contains("s3cret"));
        assert!(!q.describe().contains("s3cret"));
        let q = parse("quay://127.0.0.1:8080/org/*:v1?insecure=true").unwrap();
        assert_eq!(
            (q.host.as_str(), q.namespace.as_str()),
            ("127.0.0.1:8080", "org")
        );
        assert!(q.insecure);
        assert_eq!(parse("quay://quay.io/kolla/x").unwrap().tag, "latest");
        for bad in [
            "quay://quay.io",
            "quay://Kolla/*:v1",
            "quay://kolla/a/b:v1",
            "quay://kolla/*:bad tag",
            "quay://kolla/[:v1",
            "quay://kolla/*:v1?since=2025-13-01",
            "quay://kolla/*:v1?since=yesterday",
            "quay://kolla/*:v1?page=2",
            "quay://kolla/*:v1?insecure=maybe",
        ] {
            assert!(matches!(parse(bad), Err(Error::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn days() {
        assert_eq!(parse_day("1970-01-01"), Some(0));
        assert_eq!(parse_day("2024-02-29"), Some(1_709_164_800));
        assert_eq!(parse_day("2023-02-29"), None);
        assert_eq!(parse_day("2024-1-01"), None);
        assert_eq!(parse_day("+024-01-01"), None);
    }

    #[test]
    fn lenient_entries() {
        let p: RepoPage = serde_json::from_str(
            r#"{"repositories":[{"name":5,"last_modified":"x"},{"name":"a","last_modified":12}],"next_page":null}"#,
        )
        .unwrap();
        let r = p.repositories.unwrap();
        assert_eq!(r[0].name, None);
        assert_eq!(
            (r[1].name.as_deref(), r[1].last_modified),
            (Some("a"), Some(12.0))
        );
    }
}
