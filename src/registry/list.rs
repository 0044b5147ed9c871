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

use reqwest::header::LINK;
use reqwest::{Method, StatusCode};

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

/// How [`Client::get_page_as`] reads a page of a listing.
pub(super) struct Page {
    /// The `Accept` header.
    pub accept: &'static str,
    /// Largest body read.
    pub max: u64,
    /// A 404 means the listing is not there: `None`.
    pub missing_is_none: bool,
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
                // A registry that sent more than asked ignores `n`: that was all.
                None if got == page_size as usize => {
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
        let page = Page {
            accept: "application/json",
            max: MAX_LIST_PAGE_BYTES,
            missing_is_none: false,
        };
        match self.get_page_as(op, scope, url, &page).await? {
            Some(p) => Ok(p),
            None => Err(Error::InvalidImage(format!("{op}: no page"))),
        }
    }

    /// [`Client::get_page`] as `page` says: its `Accept`, its cap, and
    /// whether a 404 is `None` (a listing the registry does not have)
    /// rather than an error.
    pub(super) async fn get_page_as(
        &self,
        op: &str,
        scope: &Scope,
        url: &str,
        page: &Page,
    ) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let pass: &[StatusCode] = if page.missing_is_none {
            &[StatusCode::NOT_FOUND]
        } else {
            &[]
        };
        let mut attempt = 0u32;
        loop {
            let req = Request {
                accept: Some(page.accept),
                pass,
                ..Request::new(op, scope, Method::GET, url)
            };
            let (resp, deadline) = {
                let _slot = self.ctx.slot().await;
                self.send(&req).await?
            };
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let link = resp
                .headers()
                .get_all(LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(next_link)
                .map(str::to_string);
            match self.read_capped(op, resp, page.max, deadline).await {
                Ok(body) => return Ok(Some((body, link))),
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
    pub(super) fn next_url(
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
pub(super) fn next_link(value: &str) -> Option<&str> {
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

    /// A loopback server that answers each request with `answer(request
    /// line, host)`'s full HTTP response and records the request lines.
    /// Returns `127.0.0.1:PORT` and the record.
    fn fake(
        answer: impl Fn(&str, &str) -> String + Send + Sync + 'static,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (h, record) = (host.clone(), seen.clone());
        let answer = std::sync::Arc::new(answer);
        std::thread::spawn(move || {
            for conn in listener.incoming().take(64) {
                let Ok(conn) = conn else { return };
                let (h, record, answer) = (h.clone(), record.clone(), answer.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut conn = conn;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut auth = String::new();
                        loop {
                            let mut header = String::new();
                            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                                return;
                            }
                            if header.to_ascii_lowercase().starts_with("authorization:") {
                                auth = header.trim().to_string();
                            }
                            if header == "\r\n" {
                                break;
                            }
                        }
                        let line = format!("{} {auth}", line.trim());
                        record.lock().unwrap().push(line.trim().to_string());
                        let resp = answer(&line, &h);
                        if conn.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (host, seen)
    }

    fn json(body: &str, link: Option<&str>) -> String {
        let link = link.map(|l| format!("Link: {l}\r\n")).unwrap_or_default();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{link}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn client(host: &str) -> std::sync::Arc<Client> {
        let options = crate::registry::ClientOptions {
            insecure: true,
            retries: 0,
            ..Default::default()
        };
        Client::standalone(host, options).unwrap()
    }

    #[tokio::test]
    async fn follows_relative_and_absolute_links() {
        let (host, seen) = fake(|line, host| {
            if line.contains("last=b") {
                json(
                    r#"{"repositories":["c","d"]}"#,
                    Some(&format!(
                        "<http://{host}/v2/_catalog?last=d&n=2>; rel=\"next\""
                    )),
                )
            } else if line.contains("last=d") {
                json(r#"{"repositories":["e", "../evil", "F"]}"#, None)
            } else {
                json(
                    r#"{"repositories":["b","a"]}"#,
                    Some(r#"</v2/_catalog?last=b&n=2>; rel="next""#),
                )
            }
        });
        let got = client(&host).catalog_paged(2).await.unwrap();
        assert_eq!(got, ["a", "b", "c", "d", "e"]);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen[0].starts_with("GET /v2/_catalog?n=2 "), "{seen:?}");
    }

    #[tokio::test]
    async fn n_and_last_without_links() {
        let (host, seen) = fake(|line, _| {
            if line.contains("last=v2") {
                json(r#"{"name":"a","tags":["v3","v4"]}"#, None)
            } else if line.contains("last=v4") {
                json(r#"{"name":"a","tags":["v5"]}"#, None)
            } else {
                json(r#"{"name":"a","tags":["v1","v2"]}"#, None)
            }
        });
        let got = client(&host).tags_paged("a", 2).await.unwrap();
        assert_eq!(got, ["v1", "v2", "v3", "v4", "v5"]);
        assert_eq!(seen.lock().unwrap().len(), 3);
        // A registry that ignores `n` and sends everything: one request.
        let (host, seen) = fake(|_, _| json(r#"{"tags":["a","b","c"]}"#, None));
        assert_eq!(client(&host).tags_paged("x", 2).await.unwrap().len(), 3);
        assert_eq!(seen.lock().unwrap().len(), 1);
        // One that ignores `last`: stops once nothing moves.
        let (host, seen) = fake(|_, _| json(r#"{"tags":["a","b"]}"#, None));
        assert_eq!(client(&host).tags_paged("x", 2).await.unwrap(), ["a", "b"]);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_link_to_another_host_is_refused() {
        let (host, seen) = fake(|_, _| {
            json(
                r#"{"repositories":["a"]}"#,
                Some(r#"<http://198.51.100.7/v2/_catalog?last=a>; rel="next""#),
            )
        });
        let e = client(&host)
            .catalog_paged(1)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("another host") && e.contains("198.51.100.7"),
            "{e}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn listings_are_bounded() {
        // A page linking to itself forever with new names: stops at the cap.
        let (host, _) = fake(|line, _| {
            let n: usize = line
                .split("last=")
                .nth(1)
                .and_then(|r| r.split(['&', ' ']).next())
                .and_then(|v| v.trim_start_matches('r').parse().ok())
                .map_or(0, |v: usize| v + 1);
            let names: Vec<String> = (n..n + 5000).map(|i| format!("\"r{i:07}\"")).collect();
            json(
                &format!(r#"{{"repositories":[{}]}}"#, names.join(",")),
                Some(&format!(
                    "</v2/_catalog?last=r{:07}&n=5000>; rel=\"next\"",
                    n + 4999
                )),
            )
        });
        let e = client(&host)
            .catalog_paged(5000)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 100000 entries"), "{e}");
        // A page over the byte cap.
        let (host, _) = fake(|_, _| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                MAX_LIST_PAGE_BYTES + 1
            )
        });
        let e = client(&host).catalog().await.unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
        let (host, _) = fake(|_, _| json("<html>", None));
        let e = client(&host).catalog().await.unwrap_err().to_string();
        assert!(e.contains("not JSON"), "{e}");
    }

    #[tokio::test]
    async fn catalog_tokens_ask_for_the_catalog_scope() {
        let (host, seen) = fake(|line, host| {
            if line.starts_with("GET /token") {
                json(r#"{"token":"tok"}"#, None)
            } else if line.contains("Bearer tok") {
                json(r#"{"repositories":["a"]}"#, None)
            } else {
                format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{host}/token\",service=\"reg\",scope=\"registry:catalog:*\"\r\nContent-Length: 0\r\n\r\n"
                )
            }
        });
        assert_eq!(client(&host).catalog().await.unwrap(), ["a"]);
        let seen = seen.lock().unwrap().clone();
        let token = seen.iter().find(|l| l.starts_with("GET /token")).unwrap();
        assert!(token.contains("scope=registry%3Acatalog%3A*"), "{token}");
        assert!(!token.contains("repository"), "{token}");
        // Refused: a typed error the mirror can name.
        let (host, _) = fake(|_, _| {
            let body = r#"{"errors":[{"code":"UNSUPPORTED","message":"catalog disabled"}]}"#;
            format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        });
        let e = client(&host).catalog().await.unwrap_err();
        assert!(refuses_listing(&e), "{e}");
    }
}
