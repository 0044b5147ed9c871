//! Client credentials (`proxy --htpasswd`): an htpasswd file of bcrypt
//! hashes, checked against a request's `Authorization: Basic` header.
//!
//! bcrypt is slow by design, and a registry client sends hundreds of
//! requests with the same credentials, so a successful check is remembered
//! in memory under a salted sha256 of the credentials (never the password
//! itself). Failures are never remembered: every wrong guess pays a bcrypt,
//! at most [`CONCURRENT_VERIFIES`] at a time. An unknown user pays one too,
//! against a dummy hash, so that user names cannot be probed by timing.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// The largest htpasswd file read.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// The largest bcrypt cost accepted: every new client pays one bcrypt, and
/// so does every wrong guess; cost 14 is about a second already.
const MAX_COST: u32 = 14;
/// Successful verifications remembered.
const CACHE_ENTRIES: usize = 1024;
/// A longer `Authorization` value is refused without decoding it.
const MAX_HEADER_BYTES: usize = 4096;
/// bcrypt verifications run at once by [`Htpasswd::check_async`]; more wait.
pub const CONCURRENT_VERIFIES: usize = 2;
/// The hash schemes accepted: bcrypt's, as `htpasswd -B` and Docker's
/// registry write them.
const BCRYPT_PREFIXES: [&str; 3] = ["$2y$", "$2a$", "$2b$"];

/// The users of an htpasswd file.
pub struct Htpasswd {
    /// User name → bcrypt hash.
    users: HashMap<String, String>,
    /// Verified against when the user is unknown, at the file's highest
    /// cost, so that an unknown name costs what a known one does.
    dummy: String,
    /// Salts the cache's keys, so that they are no unsalted hash of a
    /// password.
    salt: [u8; 32],
    cache: Mutex<Cache>,
    verifying: tokio::sync::Semaphore,
}

/// Successful verifications, oldest first out.
#[derive(Default)]
struct Cache {
    users: HashMap<[u8; 32], String>,
    order: VecDeque<[u8; 32]>,
}

impl std::fmt::Debug for Htpasswd {
    // Neither hashes nor cache keys are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htpasswd")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// A load error: the file and what is wrong, never a hash.
fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Usage(format!("htpasswd file {}: {what}", path.display()))
}

impl Htpasswd {
    /// Reads `path`: `user:hash` lines, bcrypt hashes only; blank lines and
    /// `#` comments are skipped.
    pub fn load(path: &Path) -> Result<Htpasswd> {
        use std::io::Read as _;
        let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let mut bytes = Vec::new();
        // `take`: the file may grow, or be a pipe, after any size check.
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("reading", path, e))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(bad(path, "larger than 1 MiB"));
        }
        Htpasswd::parse(path, &bytes)
    }

    /// The users of the file `path` holding `bytes`.
    fn parse(path: &Path, bytes: &[u8]) -> Result<Htpasswd> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            bad(path, format!("line {line}: not UTF-8 text"))
        })?;
        let mut users = HashMap::new();
        let mut first_seen = HashMap::new();
        let mut max_cost = 0;
        for (i, line) in text.split('\n').enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(bad(path, format!("line {n}: not user:hash")));
            };
            let (user, hash) = (user.trim(), hash.trim());
            if user.is_empty() {
                return Err(bad(path, format!("line {n}: no user name")));
            }
            if !BCRYPT_PREFIXES.iter().any(|p| hash.starts_with(p)) {
                return Err(bad(
                    path,
                    format!(
                        "line {n}: not a bcrypt hash ($2y$, $2a$ or $2b$; \
                         `htpasswd -B` makes them)"
                    ),
                ));
            }
            let parts: bcrypt::HashParts = hash
                .parse()
                .map_err(|_| bad(path, format!("line {n}: a malformed bcrypt hash")))?;
            let cost = parts.get_cost();
            if !(4..=MAX_COST).contains(&cost) {
                return Err(bad(
                    path,
                    format!("line {n}: bcrypt cost {cost} is outside 4 to {MAX_COST}"),
                ));
            }
            if let Some(first) = first_seen.insert(user.to_string(), n) {
                return Err(bad(
                    path,
                    format!(
                        "line {n}: user {} is on line {first} already",
                        crate::escape::escape(user)
                    ),
                ));
            }
            max_cost = max_cost.max(cost);
            users.insert(user.to_string(), hash.to_string());
        }
        if users.is_empty() {
            return Err(bad(path, "no user:hash lines"));
        }
        let dummy = bcrypt::hash_with_salt(rand::random::<[u8; 16]>(), max_cost, rand::random())
            .map_err(|e| Error::Usage(format!("making a dummy bcrypt hash: {e}")))?
            .format_for_version(bcrypt::Version::TwoY);
        Ok(Htpasswd {
            users,
            dummy,
            salt: rand::random(),
            cache: Mutex::default(),
            verifying: tokio::sync::Semaphore::new(CONCURRENT_VERIFIES),
        })
    }

    /// How many users the file has.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users (never, once loaded).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether the request's `Authorization` header value is a Basic
    /// credential of a user in the file. Blocks for a bcrypt unless the
    /// credential was verified before: async callers use
    /// [`Htpasswd::check_async`].
    pub fn check(&self, authorization: Option<&str>) -> bool {
        let Some(credential) = authorization.and_then(basic) else {
            return false;
        };
        let key = self.key(&credential);
        self.cached(&key) || self.verify(&credential, key)
    }

    /// [`Htpasswd::check`] for the server: a remembered credential is
    /// answered at once; a bcrypt runs on the blocking pool, at most
    /// [`CONCURRENT_VERIFIES`] at a time, so that a flood of wrong guesses
    /// neither stalls the runtime's workers nor takes every core.
    pub async fn check_async(self: &Arc<Self>, authorization: Option<&str>) -> bool {
        let Some(credential) = authorization.and_then(basic) else {
            return false;
        };
        let key = self.key(&credential);
        if self.cached(&key) {
            return true;
        }
        let Ok(_permit) = self.verifying.acquire().await else {
            return false;
        };
        // Another request with the same credential may have verified it
        // while this one waited.
        if self.cached(&key) {
            return true;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.verify(&credential, key))
            .await
            .unwrap_or(false)
    }

    /// The cache key of a decoded `user:pass`.
    fn key(&self, credential: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(credential);
        h.finalize().into()
    }

    fn cached(&self, key: &[u8; 32]) -> bool {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.users.contains_key(key)
    }

    /// The bcrypt check of a decoded `user:pass`; remembered when it
    /// succeeds.
    fn verify(&self, credential: &[u8], key: [u8; 32]) -> bool {
        let Some(colon) = credential.iter().position(|&b| b == b':') else {
            // Still a bcrypt: a malformed credential costs what a wrong
            // one does.
            let _ = bcrypt::verify(credential, &self.dummy);
            return false;
        };
        let (user, pass) = (&credential[..colon], &credential[colon + 1..]);
        let hash = std::str::from_utf8(user)
            .ok()
            .and_then(|u| self.users.get_key_value(u));
        let Some((user, hash)) = hash else {
            let _ = bcrypt::verify(pass, &self.dummy);
            return false;
        };
        if !bcrypt::verify(pass, hash).unwrap_or(false) {
            return false;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if !cache.users.contains_key(&key) {
            if cache.order.len() >= CACHE_ENTRIES
                && let Some(old) = cache.order.pop_front()
            {
                cache.users.remove(&old);
            }
            cache.users.insert(key, user.clone());
            cache.order.push_back(key);
        }
        true
    }
}

/// The decoded `user:pass` of a `Basic` header value.
fn basic(value: &str) -> Option<Vec<u8>> {
    if value.len() > MAX_HEADER_BYTES {
        return None;
    }
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    BASE64.decode(rest.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{Duration, Instant};

    fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn hash(pass: &str) -> String {
        bcrypt::hash(pass, 4).unwrap()
    }

    fn header(user_pass: &str) -> String {
        format!("Basic {}", BASE64.encode(user_pass))
    }

    fn users() -> (tempfile::TempDir, Htpasswd) {
        let text = format!(
            "# users\n\nalice:{}\r\n  bob : {}  \n",
            hash("secret"),
            hash("pa:ss wörd")
        );
        let (dir, path) = file(&text);
        let h = Htpasswd::load(&path).unwrap();
        (dir, h)
    }

    fn load_err(text: &str) -> String {
        let (_dir, path) = file(text);
        Htpasswd::load(&path).unwrap_err().to_string()
    }

    #[test]
    fn loads_users_skipping_comments_and_blank_lines() {
        let (_d, h) = users();
        assert_eq!(h.len(), 2);
        assert!(h.check(Some(&header("alice:secret"))));
        assert!(h.check(Some(&header("bob:pa:ss wörd"))));
        assert!(format!("{h:?}").contains("users: 2"));
        assert!(!format!("{h:?}").contains("$2"));
    }

    #[test]
    fn accepts_each_bcrypt_prefix() {
        let h = hash("x");
        let body = &h[4..];
        for prefix in BCRYPT_PREFIXES {
            let (_d, path) = file(&format!("u:{prefix}{body}\n"));
            let users = Htpasswd::load(&path).unwrap();
            assert!(users.check(Some(&header("u:x"))), "{prefix}");
        }
    }

    #[test]
    fn other_schemes_are_refused_naming_the_line_not_the_hash() {
        for line in [
            "u:$apr1$abcdefgh$0123456789abcdefghijkl",
            "u:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
            "u:plaintextpw",
            "u:$2x$04$......................21jzCB1r6pN6rp5O2Ev0ejjTAboskKm",
        ] {
            let e = load_err(&format!("# c\nok:{}\n{line}\n", hash("a")));
            assert!(e.contains("line 3"), "{e}");
            assert!(e.contains("bcrypt"), "{e}");
            let secret = line.split_once(':').unwrap().1;
            assert!(!e.contains(secret), "{e} names the hash");
        }
    }

    #[test]
    fn malformed_lines_are_refused() {
        assert!(load_err("justauser\n").contains("line 1: not user:hash"));
        assert!(load_err(&format!(":{}\n", hash("a"))).contains("no user name"));
        let e = load_err("u:$2y$04$short\n");
        assert!(e.contains("line 1: a malformed bcrypt hash"), "{e}");
        assert!(!e.contains("short"), "{e}");
        let e = load_err("u:$2y$31$......................21jzCB1r6pN6rp5O2Ev0ejjTAboskKm\n");
        assert!(e.contains("cost 31"), "{e}");
        let e = load_err(&format!("u:{}\nu:{}\n", hash("a"), hash("b")));
        assert!(e.contains("line 2: user u is on line 1"), "{e}");
        assert!(load_err("# nobody\n\n").contains("no user:hash lines"));
        let (_d, path) = file("");
        std::fs::write(&path, b"a:b\n\xff\xfe\n").unwrap();
        let e = Htpasswd::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 2: not UTF-8"), "{e}");
    }

    #[test]
    fn a_file_over_1_mib_is_refused() {
        let mut text = format!("u:{}\n", hash("a"));
        text.push_str(&"#".repeat(1 << 20));
        let e = load_err(&text);
        assert!(e.contains("larger than 1 MiB"), "{e}");
        let missing = Htpasswd::load(Path::new("/nonexistent/htpasswd")).unwrap_err();
        assert!(
            crate::proxy::error::chain(&missing).contains("/nonexistent/htpasswd"),
            "{missing}"
        );
    }

    #[test]
    fn wrong_and_malformed_credentials_are_refused() {
        let (_d, h) = users();
        for value in [
            None,
            Some(String::new()),
            Some(header("alice:wrong")),
            Some(header("alice:")),
            Some(header("alice")),
            Some(header("carol:secret")),
            Some(header(":secret")),
            Some(header("bob:pa:ss")),
            Some("Basic".to_string()),
            Some("Basic !!!notbase64".to_string()),
            Some(format!("Bearer {}", BASE64.encode("alice:secret"))),
            Some(format!("Basic {}", "A".repeat(8192))),
        ] {
            assert!(!h.check(value.as_deref()), "{value:?}");
        }
        // The scheme's case does not matter (RFC 7617).
        assert!(h.check(Some(&format!("basic {}", BASE64.encode("alice:secret")))));
    }

    #[test]
    fn success_is_remembered_failure_is_not() {
        let (_d, h) = users();
        assert!(!h.check(Some(&header("alice:wrong"))));
        assert!(h.cache.lock().unwrap().users.is_empty());
        assert!(h.check(Some(&header("alice:secret"))));
        assert_eq!(h.cache.lock().unwrap().users.len(), 1);
        // A remembered success lets nothing else in.
        assert!(!h.check(Some(&header("alice:secre"))));
        assert!(!h.check(Some(&header("alice:secret2"))));
        assert!(!h.check(Some(&header("bob:secret"))));
        assert!(h.check(Some(&header("alice:secret"))));
        // The password is nowhere in the cache: the key is a salted hash.
        let cache = h.cache.lock().unwrap();
        let key = cache.order[0];
        assert_ne!(key, <[u8; 32]>::from(Sha256::digest(b"alice:secret")));
        assert_eq!(cache.users[&key], "alice");
    }

    #[test]
    fn the_cache_is_bounded() {
        let (_d, h) = users();
        // Fill it with keys of credentials never seen, then verify one.
        {
            let mut cache = h.cache.lock().unwrap();
            for i in 0..CACHE_ENTRIES as u32 {
                let key = h.key(format!("x{i}:y").as_bytes());
                cache.users.insert(key, "x".into());
                cache.order.push_back(key);
            }
        }
        assert!(h.check(Some(&header("alice:secret"))));
        let cache = h.cache.lock().unwrap();
        assert_eq!(cache.users.len(), CACHE_ENTRIES);
        assert_eq!(cache.order.len(), CACHE_ENTRIES);
        assert!(!cache.users.contains_key(&h.key(b"x0:y")));
        assert!(cache.users.contains_key(&h.key(b"alice:secret")));
    }

    #[test]
    fn a_remembered_credential_is_fast() {
        // Cost 10: a bcrypt takes tens of milliseconds at least.
        let (_d, path) = file(&format!("u:{}\n", bcrypt::hash("p", 10).unwrap()));
        let h = Htpasswd::load(&path).unwrap();
        let value = header("u:p");
        let t = Instant::now();
        assert!(h.check(Some(&value)));
        let first = t.elapsed();
        let t = Instant::now();
        for _ in 0..100 {
            assert!(h.check(Some(&value)));
        }
        let hundred = t.elapsed();
        assert!(
            hundred < first,
            "100 cached checks {hundred:?}, one bcrypt {first:?}"
        );
    }

    #[test]
    fn an_unknown_user_costs_a_bcrypt() {
        let (_d, path) = file(&format!("u:{}\n", bcrypt::hash("p", 10).unwrap()));
        let h = Htpasswd::load(&path).unwrap();
        let time = |v: &str| {
            let t = Instant::now();
            assert!(!h.check(Some(&header(v))));
            t.elapsed()
        };
        // Best of five, taken in turns, so that a loaded stretch of the
        // machine slows all three alike rather than one.
        let (mut known, mut unknown, mut nocolon) = (Duration::MAX, Duration::MAX, Duration::MAX);
        for _ in 0..5 {
            known = known.min(time("u:wrong"));
            unknown = unknown.min(time("nobody:wrong"));
            nocolon = nocolon.min(time("nobody"));
        }
        assert!(unknown * 2 > known, "unknown {unknown:?}, known {known:?}");
        assert!(nocolon * 2 > known, "no colon {nocolon:?}, known {known:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_async_agrees_with_check() {
        let (_d, h) = users();
        let h = Arc::new(h);
        assert!(!h.check_async(None).await);
        assert!(!h.check_async(Some(&header("alice:wrong"))).await);
        assert!(h.check_async(Some(&header("alice:secret"))).await);
        assert!(h.check_async(Some(&header("alice:secret"))).await);
        assert!(!h.check_async(Some(&header("bob:secret"))).await);
        let many: Vec<_> = (0..8)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(async move { h.check_async(Some(&header("bob:pa:ss wörd"))).await })
            })
            .collect();
        for t in many {
            assert!(t.await.unwrap());
        }
    }
}
