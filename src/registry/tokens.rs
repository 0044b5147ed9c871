//! Bearer tokens as data: scopes built from a repository and actions, the
//! cache keyed by (registry, credentials, repository, actions), and the
//! token endpoint's reply. Getting tokens is in `request.rs`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::auth::{Challenge, Credentials};
use crate::digest::Digest;

/// What a request needs to do to a repository, as token scopes name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Actions {
    /// Read manifests and blobs (`pull`).
    Pull,
    /// Read and write (`push,pull`).
    PushPull,
    /// Delete manifests (`delete`): what distribution's token server grants
    /// a `DELETE`, which `push` does not cover.
    Delete,
}

impl Actions {
    /// The actions as a scope writes them.
    pub fn as_str(self) -> &'static str {
        match self {
            Actions::Pull => "pull",
            Actions::PushPull => "push,pull",
            Actions::Delete => "delete",
        }
    }
}

/// The token scope of a catalog listing.
const CATALOG_SCOPE: &str = "registry:catalog:*";

/// A repository and what a request does to it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Scope {
    pub(crate) repository: String,
    pub(crate) actions: Actions,
    /// For a cross-repository mount: the repository the blob comes from,
    /// which the token must also let us pull.
    pub(crate) mount_from: Option<String>,
}

impl Scope {
    pub(crate) fn new(repository: &str, actions: Actions) -> Self {
        Scope {
            repository: repository.to_string(),
            actions,
            mount_from: None,
        }
    }

    /// `push,pull` on `repository` and `pull` on `from`, for a mount.
    pub(crate) fn mount(repository: &str, from: &str) -> Self {
        Scope {
            mount_from: Some(from.to_string()),
            ..Scope::new(repository, Actions::PushPull)
        }
    }

    /// `registry:catalog:*`, for listing the catalog. A repository name
    /// never holds a `:`, so this one cannot be mistaken for a repository.
    pub(crate) fn catalog() -> Self {
        Scope::new(CATALOG_SCOPE, Actions::Pull)
    }

    /// The second scope a mount's token request carries, if any.
    pub(crate) fn extra_scope_string(&self) -> Option<String> {
        self.mount_from
            .as_ref()
            .map(|from| format!("repository:{from}:pull"))
    }

    /// `repository:NAME:ACTIONS`, as a token request asks for it.
    pub(crate) fn to_scope_string(&self) -> String {
        if self.repository == CATALOG_SCOPE {
            return CATALOG_SCOPE.to_string();
        }
        format!("repository:{}:{}", self.repository, self.actions.as_str())
    }
}

/// A salted digest of a client's credentials: equal for equal credentials
/// under one salt (one context). `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Identity(Digest);

impl Identity {
    /// The identity `credentials` give under `salt`.
    pub(crate) fn of(salt: &[u8], credentials: &Credentials) -> Self {
        let mut bytes = salt.to_vec();
        bytes.extend_from_slice(credentials.basic_header().as_bytes());
        Identity(Digest::sha256_of(&bytes))
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(<redacted>)")
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
    /// One renewal at a time per key: requests refused together (parts of
    /// one blob whose token expired) wait for the first one's token
    /// instead of each asking the realm.
    gates: std::sync::Mutex<HashMap<TokenKey, std::sync::Arc<tokio::sync::Mutex<()>>>>,
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

    /// The gate renewals of `key` pass one at a time.
    pub(crate) fn gate(&self, key: &TokenKey) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        if gates.len() >= MAX_TOKENS && !gates.contains_key(key) {
            gates.retain(|_, g| std::sync::Arc::strong_count(g) > 1);
        }
        gates.entry(key.clone()).or_default().clone()
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
pub(crate) fn requested_scope(ours: &str, challenge: Option<&str>) -> String {
    match challenge {
        None => ours.to_string(),
        Some(theirs) if theirs.split(' ').any(|s| s == ours) => theirs.to_string(),
        Some(theirs) => format!("{ours} {theirs}"),
    }
}

/// The token and its lifetime from a token endpoint's JSON reply.
pub(crate) fn parse_token_reply(
    body: &[u8],
) -> std::result::Result<(String, Duration), &'static str> {
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
