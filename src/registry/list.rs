//! Listing what a registry holds: `/v2/_catalog` and
//! `/v2/<name>/tags/list`, page by page.
//!
//! A page's successor comes from its `Link: <...>; rel="next"` header
//! (relative or absolute, on the registry's own origin only: our token goes
//! where it points). A registry that sends no `Link` but filled the page we
//! asked for (`n`) is asked again with `last=` the page's last entry, as the
//! distribution spec's `n`/`last` parameters allow. Each page is read whole
//! under a byte cap, the whole listing is capped in entries, and names that
//! are not valid repository names or tags are dropped (they would go into
//! URLs and paths later).

use reqwest::Method;
use reqwest::header::LINK;

use super::client::Client;
use super::request::{Request, backoff};
use super::tokens::{Actions, Scope};
use crate::error::{Error, RegistryErrorCode, Result};

/// Entries asked for per page.
pub const LIST_PAGE_SIZE: u32 = 1000;
/// Entries one listing returns at most; past this it fails rather than
/// grow without end.
pub const MAX_LIST_ENTRIES: usize = 100_000;
/// Bytes one page's body may have.
pub const MAX_LIST_PAGE_BYTES: u64 = 8 << 20;

/// What is being listed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Catalog,
    Tags,
}

impl Client {
    /// Every repository the registry's catalog lists, sorted, following
    /// pagination (pages of [`LIST_PAGE_SIZE`]). A registry that refuses to
    /// list its catalog gives an error for which [`refuses_listing`] is true.
    pub async fn catalog(&self) -> Result<Vec<String>> {
        self.catalog_paged(LIST_PAGE_SIZE).await
    }

    /// [`Client::catalog`] asking for `page_size` entries a page.
    pub async fn catalog_paged(&self, page_size: u32) -> Result<Vec<String>> {
        let scope = Scope::catalog();
        self.list(Kind::Catalog, "GET catalog", "_catalog", &scope, page_size)
            .await
    }

    /// Every tag of `repository`, sorted, following pagination (pages of
    /// [`LIST_PAGE_SIZE`]).
    pub async fn tags(&self, repository: &str) -> Result<Vec<String>> {
        self.tags_paged(repository, LIST_PAGE_SIZE).await
    }

    /// [`Client::tags`] asking for `page_size` entries a page.
    pub async fn tags_paged(&self, repository: &str, page_size: u32) -> Result<Vec<String>> {
        if !is_repository_name(repository) {
            return Err(Error::Usage(format!(
                "{:?} is not a repository name",
                crate::digest::truncate_for_error(repository)
            )));
        }
        let scope = Scope::new(repository, Actions::Pull);
        let op = format!("GET tags of {repository}");
        let path = format!("{repository}/tags/list");
        self.list(Kind::Tags, &op, &path, &scope, page_size).await
    }

    /// Follows the pages of `/v2/{path}`.
    async fn list(
        &self,
        kind: Kind,
        op: &str,
        path: &str,
        scope: &Scope,
        page_size: u32,
    ) -> Result<Vec<String>> {
        let page_size = page_size.max(1);
        let base =
            url::Url::parse(&self.base).map_err(|_| self.list_error(op, "bad registry URL"))?;
        let first = format!("{}/v2/{path}", self.base);
        let mut url = url::Url::parse(&first).map_err(|_| self.list_error(op, "bad URL"))?;
        url.query_pairs_mut()
            .append_pair("n", &page_size.to_string());
        let mut all: Vec<String> = Vec::new();
        loop {
            let (body, link) = self.get_page(op, scope, url.as_str()).await?;
            let entries = parse_page(kind, &body).map_err(|m| self.list_error(op, m))?;
            let got = entries.len();
            let last = entries.last().cloned();
            for e in entries {
                let ok = match kind {
                    Kind::Catalog => is_repository_name(&e),
                    Kind::Tags => is_tag(&e),
                };
                if ok {
                    all.push(e);
                } else {
                    tracing::warn!(
                        "{}: {op}: skipping {:?}, not a valid name",
                        self.host,
                        crate::digest::truncate_for_error(&e)
                    );
                }
            }
            if all.len() > MAX_LIST_ENTRIES {
                return Err(self.list_error(
                    op,
                    &format!("more than {MAX_LIST_ENTRIES} entries; refusing to list further"),
                ));
            }
            // An empty page ends the listing whatever it links to: a
            // registry that links on forever must at least give something.
            if got == 0 {
                break;
            }
            let next = match link {
                Some(link) => Some(self.next_url(op, &base, &url, &link)?),
                None if got >= page_size as usize => {
                    let mut next = url::Url::parse(&first).expect("parsed above");
                    next.query_pairs_mut()
                        .append_pair("n", &page_size.to_string())
                        .append_pair("last", last.as_deref().unwrap_or(""));
                    Some(next)
                }
                None => None,
            };
            match next {
                // A registry that ignores `last` (or links to the page we
                // just read) would keep us here: stop when nothing moves.
                Some(n) if n != url => url = n,
                _ => break,
            }
        }
        all.sort();
        all.dedup();
        Ok(all)
    }

    /// One page: its body (capped) and its `Link` header, retrying a body
    /// that breaks off as [`Client::send`] retries failed requests.
    async fn get_page(
        &self,
        op: &str,
        scope: &Scope,
        url: &str,
    ) -> Result<(Vec<u8>, Option<String>)> {
        let mut attempt = 0u32;
        loop {
            let req = Request {
                accept: Some("application/json"),
                ..Request::new(op, scope, Method::GET, url)
            };
            let (resp, deadline) = {
                let _slot = self.ctx.slot().await;
                self.send(&req).await?
            };
            let link = resp
                .headers()
                .get_all(LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(next_link)
                .map(str::to_string);
            match self
                .read_capped(op, resp, MAX_LIST_PAGE_BYTES, deadline)
                .await
            {
                Ok(body) => return Ok((body, link)),
                Err(e @ Error::Network { .. }) if attempt < self.options.retries => {
                    attempt += 1;
                    tracing::warn!("{}: {e}; retrying", self.host);
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next page's URL from a `Link` target, made absolute against the
    /// page we read; only the registry's own origin.
    fn next_url(
        &self,
        op: &str,
        base: &url::Url,
        current: &url::Url,
        link: &str,
    ) -> Result<url::Url> {
        let next = current
            .join(link)
            .map_err(|_| self.list_error(op, "the Link to the next page is not a URL"))?;
        if next.origin() != base.origin() {
            return Err(self.list_error(
                op,
                &format!(
                    "the Link to the next page points to another host ({}); refusing to follow it",
                    super::transport::authority(&next)
                ),
            ));
        }
        Ok(next)
    }

    fn list_error(&self, op: &str, message: &str) -> Error {
        Error::Registry {
            registry: self.host.clone(),
            operation: op.to_string(),
            message: message.to_string(),
            status: None,
            codes: Vec::new(),
        }
    }
}

/// Whether `err` says the registry will not list (its catalog, or a
/// repository's tags) for us: 401, 403, 404 or 405, or `UNSUPPORTED`,
/// `DENIED`, `UNAUTHORIZED` in its body. A mirror turns it into "this entry
/// needs explicit repositories".
pub fn refuses_listing(err: &Error) -> bool {
    match err {
        Error::Registry { status, codes, .. } => {
            matches!(status, Some(401 | 403 | 404 | 405))
                || codes.iter().any(|c| {
                    matches!(
                        c,
                        RegistryErrorCode::Unsupported
                            | RegistryErrorCode::Denied
                            | RegistryErrorCode::Unauthorized
                    )
                })
        }
        _ => false,
    }
}

/// The target of a `rel="next"` link in one `Link` header value, which may
/// hold several comma-separated links.
fn next_link(value: &str) -> Option<&str> {
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        let after = &rest[close + 1..];
        // This link's parameters run to the next link's '<'.
        let params = &after[..after.find('<').unwrap_or(after.len())];
        let is_next = params.split(';').any(|p| {
            let p = p.trim().trim_end_matches(',').trim();
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            })
        });
        if is_next {
            return Some(target);
        }
        rest = after;
    }
    None
}

/// The entries of one page: `repositories` of a catalog, `tags` of a tag
/// list (either may be `null`).
fn parse_page(kind: Kind, body: &[u8]) -> std::result::Result<Vec<String>, &'static str> {
    #[derive(serde::Deserialize)]
    struct Page {
        repositories: Option<Vec<String>>,
        tags: Option<Vec<String>>,
    }
    let page: Page = serde_json::from_slice(body).map_err(|_| match kind {
        Kind::Catalog => "the catalog is not JSON with a list of repositories",
        Kind::Tags => "the tag list is not JSON with a list of tags",
    })?;
    Ok(match kind {
        Kind::Catalog => page.repositories,
        Kind::Tags => page.tags,
    }
    .unwrap_or_default())
}

/// A repository name as the distribution spec has them: `/`-separated
/// components of lowercase letters and digits joined by `.`, `_`, `__` or
/// `-`s, 255 bytes at most.
pub(crate) fn is_repository_name(s: &str) -> bool {
    s.len() <= 255 && !s.is_empty() && s.split('/').all(is_component)
}

fn is_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut sep = 0usize;
    let mut sep_kind = 0u8;
    for &ch in b {
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            sep = 0;
            continue;
        }
        match ch {
            b'.' | b'_' | b'-' => {
                if sep > 0 && !(ch == sep_kind && (ch == b'-' || (ch == b'_' && sep < 2))) {
                    return false;
                }
                sep += 1;
                sep_kind = ch;
            }
            _ => return false,
        }
    }
    true
}

/// A tag as the distribution spec has them: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub(crate) fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links() {
        assert_eq!(
            next_link(r#"</v2/_catalog?last=b&n=2>; rel="next""#),
            Some("/v2/_catalog?last=b&n=2")
        );
        assert_eq!(
            next_link(r#"<https://a/x>; rel="prev", <https://a/y>; rel=next"#),
            Some("https://a/y")
        );
        assert_eq!(next_link(r#"<a>; rel="prev next""#), Some("a"));
        assert_eq!(next_link(r#"<a>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
        assert_eq!(next_link("<unclosed; rel=next"), None);
    }

    #[test]
    fn names() {
        for ok in ["a", "team/app", "a.b/c_d/e__f/g-h", "a--b", "x0/9"] {
            assert!(is_repository_name(ok), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "../a", "a/..", "a/./b", "-a", "a_", "a___b", "a._b",
            "a b", "a%2f",
        ] {
            assert!(!is_repository_name(bad), "{bad}");
        }
        assert!(!is_repository_name(&"a".repeat(256)));
        assert!(is_tag("v1.2.3-rc_1") && is_tag("_x") && is_tag("LATEST"));
        assert!(!is_tag("") && !is_tag(".x") && !is_tag("a/b") && !is_tag(&"a".repeat(129)));
    }

    #[test]
    fn pages() {
        assert_eq!(
            parse_page(Kind::Catalog, br#"{"repositories":["a","b"]}"#).unwrap(),
            ["a", "b"]
        );
        assert!(
            parse_page(Kind::Tags, br#"{"name":"a","tags":null}"#)
                .unwrap()
                .is_empty()
        );
        assert!(parse_page(Kind::Tags, b"<html>").is_err());
        assert!(parse_page(Kind::Catalog, br#"{"repositories":[1]}"#).is_err());
    }

    #[test]
    fn refusals() {
        let e = |status, codes| Error::Registry {
            registry: "r".into(),
            operation: "GET catalog".into(),
            message: String::new(),
            status,
            codes,
        };
        assert!(refuses_listing(&e(Some(401), vec![])));
        assert!(refuses_listing(&e(Some(404), vec![])));
        assert!(refuses_listing(&e(
            Some(400),
            vec![RegistryErrorCode::Unsupported]
        )));
        assert!(!refuses_listing(&e(Some(500), vec![])));
        assert!(!refuses_listing(&Error::InvalidImage("x".into())));
    }
}
