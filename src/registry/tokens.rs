//! Bearer tokens: scopes built from a repository and actions, the cache
//! keyed by (registry, credentials, repository, actions), and token
//! requests to a realm under the realm safety rules.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::header::AUTHORIZATION;

use super::auth::Challenge;
use super::client::Client;
use super::context::Identity;
use super::request::backoff;
use super::transport;
use crate::error::{Error, RegistryErrorCode, Result};

/// What a request needs to do to a repository, as token scopes name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Actions {
    /// Read manifests and blobs (`pull`).
    Pull,
    /// Read and write (`push,pull`).
    PushPull,
}

impl Actions {
    /// The actions as a scope writes them.
    pub fn as_str(self) -> &'static str {
        match self {
            Actions::Pull => "pull",
            Actions::PushPull => "push,pull",
        }
    }
}

/// A repository and what a request does to it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Scope {
    pub(crate) repository: String,
    pub(crate) actions: Actions,
}

impl Scope {
    pub(crate) fn new(repository: &str, actions: Actions) -> Self {
        Scope {
            repository: repository.to_string(),
            actions,
        }
    }

    /// `repository:NAME:ACTIONS`, as a token request asks for it.
    pub(crate) fn to_scope_string(&self) -> String {
        format!("repository:{}:{}", self.repository, self.actions.as_str())
    }
}

/// Whose token, for what.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TokenKey {
    /// `scheme://host` of the registry.
    pub(crate) registry: String,
    /// A digest of the credentials the token was got with, if any.
    pub(crate) identity: Option<Identity>,
    pub(crate) scope: Scope,
}

#[derive(Clone)]
struct TokenEntry {
    token: String,
    expires: Instant,
    /// The challenge that got it, to renew it from.
    challenge: Challenge,
}

/// Tokens held at most; past this, expired ones go, then all of them (a
/// refetch costs one request; unbounded growth costs memory forever).
const MAX_TOKENS: usize = 4096;

/// Bearer tokens of every client of a context.
#[derive(Default)]
pub(crate) struct TokenCache {
    map: std::sync::Mutex<HashMap<TokenKey, TokenEntry>>,
}

/// Says how many tokens there are, never what they are: a context may be
/// debug-printed (it sits in the CLI's settings).
impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenCache({} tokens)", self.lock().len())
    }
}

/// What the cache holds for a key.
pub(crate) enum Cached {
    /// A token still valid.
    Valid(String),
    /// An expired token, with the challenge to renew it from.
    Expired(Challenge),
    Missing,
}

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, TokenEntry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, key: &TokenKey) -> Cached {
        match self.lock().get(key) {
            Some(e) if Instant::now() < e.expires => Cached::Valid(e.token.clone()),
            Some(e) => Cached::Expired(e.challenge.clone()),
            None => Cached::Missing,
        }
    }

    pub(crate) fn insert(&self, key: TokenKey, token: String, ttl: Duration, challenge: Challenge) {
        let mut map = self.lock();
        if map.len() >= MAX_TOKENS && !map.contains_key(&key) {
            let now = Instant::now();
            map.retain(|_, e| now < e.expires);
            if map.len() >= MAX_TOKENS {
                map.clear();
            }
        }
        // Renew a little early so a token never expires in flight.
        let life = ttl
            .saturating_sub(Duration::from_secs(10))
            .max(Duration::from_secs(5));
        map.insert(
            key,
            TokenEntry {
                token,
                expires: Instant::now() + life,
                challenge,
            },
        );
    }

    /// Every token held for `registry` and `identity`, to keep them out of
    /// what we print.
    pub(crate) fn tokens_of(&self, registry: &str, identity: Option<&Identity>) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(k, _)| k.registry == registry && k.identity.as_ref() == identity)
            .map(|(_, e)| e.token.clone())
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The scope parameter of a token request: ours, and the challenge's when
/// it names something else (the registry may want more than we know of).
fn requested_scope(ours: &str, challenge: Option<&str>) -> String {
    match challenge {
        None => ours.to_string(),
        Some(theirs) if theirs.split(' ').any(|s| s == ours) => theirs.to_string(),
        Some(theirs) => format!("{ours} {theirs}"),
    }
}

impl Client {
    pub(super) fn token_key(&self, scope: &Scope) -> TokenKey {
        TokenKey {
            registry: self.base.clone(),
            identity: self.identity.clone(),
            scope: scope.clone(),
        }
    }

    /// The `Authorization` header for a request in `scope`: a cached
    /// token (renewed first when it has expired), else Basic when the
    /// registry asked for it, else none.
    pub(super) async fn current_auth(&self, scope: &Scope) -> Result<Option<String>> {
        let key = self.token_key(scope);
        match self.ctx.tokens.get(&key) {
            Cached::Valid(token) => return Ok(Some(format!("Bearer {token}"))),
            Cached::Expired(challenge) => {
                // Refresh before it is refused rather than after.
                self.answer_challenge("refreshing token", scope, challenge)
                    .await?;
                if let Cached::Valid(token) = self.ctx.tokens.get(&key) {
                    return Ok(Some(format!("Bearer {token}")));
                }
            }
            Cached::Missing => {}
        }
        if self.uses_basic() {
            return Ok(self.options.credentials.as_ref().map(|c| c.basic_header()));
        }
        Ok(None)
    }

    /// Answers a `WWW-Authenticate` challenge for a request in `scope`.
    pub(super) async fn answer_challenge(
        &self,
        op: &str,
        scope: &Scope,
        challenge: Challenge,
    ) -> Result<()> {
        match &challenge {
            Challenge::Basic => {
                if self.options.credentials.is_none() {
                    return Err(Error::Registry {
                        registry: self.host.clone(),
                        operation: op.to_string(),
                        message: "HTTP 401 Unauthorized (authentication required: give --username/--password)".into(),
                        status: Some(401),
                        codes: vec![RegistryErrorCode::Unauthorized],
                    });
                }
                self.set_basic();
                Ok(())
            }
            Challenge::Bearer {
                realm,
                service,
                scope: theirs,
            } => {
                let wanted = requested_scope(&scope.to_scope_string(), theirs.as_deref());
                let (token, ttl) = self
                    .fetch_token(op, realm, service.as_deref(), &wanted)
                    .await?;
                self.ctx
                    .tokens
                    .insert(self.token_key(scope), token, ttl, challenge);
                Ok(())
            }
        }
    }

    /// Whether credentials may go to a token realm: http(s) only, no user
    /// name or password in it, and never plain HTTP to a host the user did
    /// not allow (`--insecure`, `?insecure=true` for the registry itself,
    /// `--insecure-host`). A realm on another host over HTTPS gets them, as
    /// Docker sends them: the registry names its token service.
    pub(super) fn check_realm(&self, url: &url::Url) -> std::result::Result<(), String> {
        if !url.username().is_empty() || url.password().is_some() {
            return Err("token realm has a user name or password in it; refusing to use it".into());
        }
        match url.scheme() {
            "https" => Ok(()),
            "http" if self.allowed.allows_url(url) => Ok(()),
            "http" => Err(format!(
                "token realm {} is plain HTTP{}: refusing to send {} in clear; \
                 give --insecure-host {} to allow it",
                transport::redacted(url),
                if self.options.insecure {
                    " on another host than the registry"
                } else {
                    " but the registry is HTTPS"
                },
                if self.options.credentials.is_some() {
                    "credentials"
                } else {
                    "a token request"
                },
                transport::authority(url)
            )),
            other => Err(format!(
                "token realm is not http(s) but {}",
                crate::digest::truncate_for_error(other)
            )),
        }
    }

    /// An error about the token exchange, with no response to blame.
    fn token_error(&self, op: &str, message: String) -> Error {
        Error::Registry {
            registry: self.host.clone(),
            operation: op.to_string(),
            message,
            status: None,
            codes: Vec::new(),
        }
    }

    /// The realm URL with `service` and `scope`, after the safety rules.
    fn token_url(
        &self,
        op: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<url::Url> {
        let mut url = url::Url::parse(realm).map_err(|_| {
            // Up to any query, which could carry something secret.
            self.token_error(
                op,
                format!(
                    "token realm {:?} is not a URL",
                    crate::digest::truncate_for_error(realm.split('?').next().unwrap_or(""))
                ),
            )
        })?;
        self.check_realm(&url)
            .map_err(|m| self.token_error(op, m))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        Ok(url)
    }

    async fn fetch_token(
        &self,
        op: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Duration)> {
        let url = self.token_url(op, realm, service, scope)?;
        let top = format!("GET token for {scope}");
        let body = self.get_token_body(&top, &url).await?;
        parse_token_reply(&body).map_err(|m| self.token_error(&top, m.into()))
    }

    /// GETs the token reply, retrying network failures and 5xx.
    async fn get_token_body(&self, top: &str, url: &url::Url) -> Result<Vec<u8>> {
        let mut attempt = 0;
        loop {
            self.ctx.pace().await;
            let mut req = self.http.get(url.clone());
            if let Some(c) = &self.options.credentials {
                req = req.header(AUTHORIZATION, c.basic_header());
            }
            tracing::debug!("GET {} (token)", transport::redacted(url));
            // Headers and body within one deadline, as for a manifest.
            let deadline = tokio::time::Instant::now() + self.options.request_timeout;
            let failure: Option<Error> = match tokio::time::timeout_at(deadline, req.send()).await {
                Ok(Ok(r)) if r.status().is_server_error() && attempt < self.options.retries => None,
                Ok(Ok(r)) if !r.status().is_success() => {
                    return Err(self.status_error(top, r, deadline).await);
                }
                Ok(Ok(r)) => match self.read_capped(top, r, 1 << 20, deadline).await {
                    Ok(body) => return Ok(body),
                    Err(e @ Error::Network { .. }) => Some(e),
                    Err(e) => return Err(e),
                },
                Ok(Err(e)) if e.is_redirect() => return Err(self.network_error(top, &e)),
                Ok(Err(e)) => Some(self.network_error(top, &e)),
                Err(_) => Some(self.deadline_error(top, None)),
            };
            if let Some(e) = failure {
                if attempt >= self.options.retries {
                    return Err(e);
                }
                tracing::warn!("{e}; retrying");
            }
            attempt += 1;
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
}

/// The token and its lifetime from a token endpoint's JSON reply.
fn parse_token_reply(body: &[u8]) -> std::result::Result<(String, Duration), &'static str> {
    #[derive(serde::Deserialize)]
    struct TokenReply {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let reply: TokenReply =
        serde_json::from_slice(body).map_err(|_| "token endpoint did not return JSON")?;
    let token = reply
        .token
        .filter(|t| !t.is_empty())
        .or(reply.access_token.filter(|t| !t.is_empty()))
        .ok_or("token endpoint reply has no token")?;
    // The distribution spec's default lifetime when none is given.
    let ttl = Duration::from_secs(reply.expires_in.unwrap_or(60).clamp(1, 86_400));
    Ok((token, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_scope_adds_what_the_challenge_names() {
        let ours = "repository:team/a:pull";
        assert_eq!(requested_scope(ours, None), ours);
        assert_eq!(requested_scope(ours, Some(ours)), ours);
        let both = "repository:team/b:pull repository:team/a:pull";
        assert_eq!(requested_scope(ours, Some(both)), both);
        assert_eq!(
            requested_scope(ours, Some("repository:team/a:push,pull")),
            "repository:team/a:pull repository:team/a:push,pull"
        );
    }

    #[test]
    fn token_replies() {
        let ok = |b: &str| parse_token_reply(b.as_bytes()).unwrap();
        assert_eq!(
            ok(r#"{"token":"t"}"#),
            ("t".into(), Duration::from_secs(60))
        );
        assert_eq!(
            ok(r#"{"token":"","access_token":"a","expires_in":300}"#),
            ("a".into(), Duration::from_secs(300))
        );
        assert_eq!(
            ok(r#"{"token":"t","expires_in":0}"#).1,
            Duration::from_secs(1)
        );
        assert_eq!(
            ok(r#"{"token":"t","expires_in":99999999999}"#).1,
            Duration::from_secs(86_400)
        );
        for bad in [
            "",
            "<html>",
            "{}",
            r#"{"token":""}"#,
            r#"{"token":7}"#,
            r#"{"expires_in":-1,"token":"t"}"#,
        ] {
            assert!(parse_token_reply(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
