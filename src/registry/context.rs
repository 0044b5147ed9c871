//! What several runs share: connection pools, the rate limiter, the token
//! cache and the request limit, in one [`Context`] instead of process state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore, SemaphorePermit};

use super::auth::Credentials;
use super::options::ClientOptions;
use super::tokens::{Identity, TokenCache};
use super::transport;
use crate::error::{Error, Result};

/// Told of the retries and rate limiting of a context's requests (the
/// mirror's progress events).
pub trait Listener: Send + Sync {
    /// A request to `host` failed with `why` and is sent again after `wait`.
    fn retry(&self, _host: &str, _op: &str, _why: &str, _wait: Duration) {}
    /// `host` asked us to slow down (429, or no requests left in its rate
    /// limit window): nothing more goes to it for `wait`.
    fn rate_limited(&self, _host: &str, _wait: Duration) {}
}

/// The [`Listener`] of a context, if any.
#[derive(Clone, Default)]
pub struct Listening(pub Option<Arc<dyn Listener>>);

impl std::fmt::Debug for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Listening(yes)"
        } else {
            "Listening(no)"
        })
    }
}

/// Longest a registry's rate limit holds its requests back at once.
pub const MAX_HOLD: Duration = Duration::from_secs(300);

/// What a [`Context`] limits.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// Requests per second, on average, across every client of the context
    /// (token requests included); `None`: no limit.
    pub rate_limit: Option<f64>,
    /// Registry operations (a manifest, a config, a whole blob download) in
    /// flight at once across every client of the context; `None`: no limit
    /// beyond the callers' own.
    pub max_requests: Option<usize>,
    /// Told of retries and of registries slowing us down.
    pub listener: Listening,
}

/// Shared state of the registry clients built from it: one connection pool
/// per transport setting, one rate limiter, one token cache, one request
/// limit. Give one `Context` to every client of a run, or of several runs
/// (several images) that should share them; it is `Send + Sync`.
#[derive(Debug)]
pub struct Context {
    limiter: Option<RateLimiter>,
    requests: Option<Semaphore>,
    pub(crate) tokens: TokenCache,
    /// Mixed into the digest that tells credentials apart in the token
    /// cache, so that the digest says nothing about a password.
    salt: [u8; 16],
    pools: std::sync::Mutex<HashMap<PoolKey, reqwest::Client>>,
    /// Per host: no request before this (a 429, an exhausted rate limit),
    /// for every client of the context at once.
    holds: std::sync::Mutex<HashMap<String, tokio::time::Instant>>,
    listener: Listening,
}

/// Clients whose transport settings are equal share a connection pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    connect_timeout: Duration,
    read_timeout: Duration,
    /// The redirect policy is built from this, so it is part of the key.
    allowed: transport::InsecureHosts,
}

impl Context {
    /// A context with these limits.
    pub fn new(options: ContextOptions) -> Arc<Self> {
        Arc::new(Context {
            limiter: options
                .rate_limit
                .filter(|r| r.is_finite() && *r > 0.0)
                .map(RateLimiter::new),
            requests: options.max_requests.map(|n| Semaphore::new(n.max(1))),
            tokens: TokenCache::default(),
            salt: rand::random(),
            pools: std::sync::Mutex::new(HashMap::new()),
            holds: std::sync::Mutex::new(HashMap::new()),
            listener: options.listener,
        })
    }

    /// Holds every request to `host` back for `wait` (at most
    /// [`MAX_HOLD`]), as the registry asked.
    pub(crate) fn hold(&self, host: &str, wait: Duration) {
        let wait = wait.min(MAX_HOLD);
        let until = tokio::time::Instant::now() + wait;
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        let h = holds.entry(host.to_string()).or_insert(until);
        if *h < until {
            *h = until;
        }
        drop(holds);
        if let Some(l) = &self.listener.0 {
            l.rate_limited(host, wait);
        }
    }

    /// Tells the listener of a retry.
    pub(crate) fn retrying(&self, host: &str, op: &str, why: &str, wait: Duration) {
        if let Some(l) = &self.listener.0 {
            l.retry(host, op, why, wait);
        }
    }

    /// Waits out a hold on `host`, then the rate limiter.
    pub(crate) async fn pace_host(&self, host: &str) {
        let until = {
            let holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
            holds.get(host).copied()
        };
        if let Some(t) = until
            && t > tokio::time::Instant::now()
        {
            tokio::time::sleep_until(t).await;
        }
        self.pace().await;
    }

    /// Who `credentials` make a client, for the token cache.
    pub(crate) fn identity(&self, credentials: &Credentials) -> Identity {
        Identity::of(&self.salt, credentials)
    }

    /// Waits for the rate limiter, if there is one.
    pub(crate) async fn pace(&self) {
        if let Some(l) = &self.limiter {
            l.acquire().await;
        }
    }

    /// Waits for a slot under the request limit; hold it for the operation.
    pub(crate) async fn slot(&self) -> Option<SemaphorePermit<'_>> {
        match &self.requests {
            // Never closed, so acquire cannot fail.
            Some(s) => s.acquire().await.ok(),
            None => None,
        }
    }

    /// A slot under the request limit if one is free now: `None` when none
    /// is, `Some(None)` when there is no limit.
    pub(crate) fn try_slot(&self) -> Option<Option<SemaphorePermit<'_>>> {
        match &self.requests {
            Some(s) => s.try_acquire().ok().map(Some),
            None => Some(None),
        }
    }

    /// The pooled HTTP client for these settings, built on first use.
    pub(crate) fn http(
        &self,
        host: &str,
        options: &ClientOptions,
        allowed: &transport::InsecureHosts,
    ) -> Result<reqwest::Client> {
        let key = PoolKey {
            connect_timeout: options.connect_timeout,
            read_timeout: options.read_timeout,
            allowed: allowed.clone(),
        };
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = pools.get(&key) {
            return Ok(c.clone());
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("occystrap/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .redirect(transport::redirect_policy(allowed.clone()))
            .build()
            .map_err(|e| Error::Network {
                registry: host.to_string(),
                operation: "creating HTTP client".into(),
                message: e.to_string(),
            })?;
        pools.insert(key, http.clone());
        Ok(http)
    }

    /// How many connection pools this context holds.
    #[cfg(test)]
    pub(crate) fn pool_count(&self) -> usize {
        self.pools.lock().unwrap().len()
    }
}

/// A token bucket: at most `rate` requests a second on average, bursts of up
/// to `rate` (at least one). Shared by all download workers.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    // tokio's clock, so tests can run it paused.
    state: Mutex<(f64, tokio::time::Instant)>,
}

impl RateLimiter {
    /// A limiter for `rate` requests per second (must be > 0).
    pub fn new(rate: f64) -> Self {
        let burst = rate.max(1.0);
        RateLimiter {
            rate,
            state: Mutex::new((burst, tokio::time::Instant::now())),
        }
    }

    /// Waits until a request may be sent.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut st = self.state.lock().await;
                let now = tokio::time::Instant::now();
                let burst = self.rate.max(1.0);
                st.0 = (st.0 + now.duration_since(st.1).as_secs_f64() * self.rate).min(burst);
                st.1 = now;
                if st.0 >= 1.0 {
                    st.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - st.0) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn rate_limiter_spaces_requests() {
        let l = RateLimiter::new(4.0);
        let start = tokio::time::Instant::now();
        for _ in 0..12 {
            l.acquire().await;
        }
        // A burst of 4, then 8 more at 4 a second: about 2 s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_millis(2300),
            "{took:?}"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn one_limiter_paces_every_client_of_a_context() {
        let ctx = Context::new(ContextOptions {
            rate_limit: Some(4.0),
            ..ContextOptions::default()
        });
        let start = tokio::time::Instant::now();
        for _ in 0..6 {
            ctx.pace().await;
            ctx.pace().await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1900), "{took:?}");
        // Nonsense rates mean no limit rather than a panic or a hang.
        for r in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let ctx = Context::new(ContextOptions {
                rate_limit: Some(r),
                ..ContextOptions::default()
            });
            let start = tokio::time::Instant::now();
            for _ in 0..100 {
                ctx.pace().await;
            }
            assert_eq!(start.elapsed(), Duration::ZERO, "{r}");
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_hold_on_a_host_delays_its_requests_only() {
        let ctx = Context::new(ContextOptions::default());
        ctx.hold("a", Duration::from_secs(10));
        ctx.hold("a", Duration::from_secs(2));
        let start = tokio::time::Instant::now();
        ctx.pace_host("b").await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        ctx.pace_host("a").await;
        assert!(
            start.elapsed() >= Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        ctx.hold("a", Duration::from_secs(86_400));
        let start = tokio::time::Instant::now();
        ctx.pace_host("a").await;
        assert!(start.elapsed() <= MAX_HOLD + Duration::from_secs(1));
    }

    #[tokio::test]
    async fn request_limit_holds_operations() {
        let ctx = Context::new(ContextOptions {
            max_requests: Some(2),
            ..ContextOptions::default()
        });
        let a = ctx.slot().await;
        let b = ctx.slot().await;
        assert!(a.is_some() && b.is_some());
        let third = tokio::time::timeout(Duration::from_millis(100), ctx.slot()).await;
        assert!(third.is_err(), "a third slot while two are held");
        drop(a);
        let third = tokio::time::timeout(Duration::from_secs(10), ctx.slot()).await;
        assert!(third.is_ok());
    }
}
