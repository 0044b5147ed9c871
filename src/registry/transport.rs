//! Transport rules: which hosts may be spoken to in clear, how redirects are
//! followed, and the throughput floor that keeps a slow server from holding
//! a blob download forever.

use std::fmt;
use std::time::Duration;

use url::Url;

/// Hosts to which plain HTTP is allowed: the `--insecure-host` list, or
/// every host (`--insecure`). Credentials and tokens are only ever sent in
/// clear to a host this allows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct InsecureHosts {
    any: bool,
    /// Lower-case host (IPv6 in brackets) and port; no port matches any.
    hosts: Vec<(String, Option<u16>)>,
}

impl InsecureHosts {
    /// Plain HTTP to every host.
    pub fn any() -> Self {
        InsecureHosts {
            any: true,
            hosts: Vec::new(),
        }
    }

    /// Whether every host is allowed.
    pub fn allows_any(&self) -> bool {
        self.any
    }

    /// Adds `HOST`, `HOST:PORT`, `[V6]:PORT`, or `*` (every host).
    pub fn add(&mut self, entry: &str) -> Result<(), String> {
        let entry = entry.trim();
        if entry == "*" {
            self.any = true;
            return Ok(());
        }
        let bad = || format!("{entry:?} is not HOST or HOST:PORT");
        if entry.is_empty()
            || entry.contains(['/', '@', '?', '#'])
            || entry.contains(char::is_whitespace)
        {
            return Err(bad());
        }
        let url = Url::parse(&format!("http://{entry}/")).map_err(|_| bad())?;
        let host = url.host_str().ok_or_else(bad)?.to_ascii_lowercase();
        self.hosts.push((host, url.port()));
        Ok(())
    }

    /// Adds every entry of a comma-separated list (empty entries skipped).
    pub fn add_list(&mut self, list: &str) -> Result<(), String> {
        for e in list.split(',').filter(|e| !e.trim().is_empty()) {
            self.add(e)?;
        }
        Ok(())
    }

    /// Adds exactly this host and port.
    pub(crate) fn add_exact(&mut self, host: &str, port: Option<u16>) {
        self.hosts.push((host.to_ascii_lowercase(), port));
    }

    /// Whether plain HTTP to `host` (as in a URL, IPv6 in brackets) on
    /// `port` is allowed.
    pub fn allows(&self, host: &str, port: Option<u16>) -> bool {
        self.any
            || self
                .hosts
                .iter()
                .any(|(h, p)| h.eq_ignore_ascii_case(host) && (p.is_none() || *p == port))
    }

    /// Whether plain HTTP to `url`'s host and port is allowed.
    pub fn allows_url(&self, url: &Url) -> bool {
        match url.host_str() {
            Some(h) => self.allows(h, url.port_or_known_default()),
            None => false,
        }
    }
}

/// `scheme://host[:port]/path` of a URL: no user info, query or fragment,
/// which can carry secrets (pre-signed blob URLs, tokens in a realm).
pub fn redacted(url: &Url) -> String {
    let mut s = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(p) = url.port() {
        s.push_str(&format!(":{p}"));
    }
    s.push_str(url.path());
    crate::digest::truncate_for_error(&s)
}

/// `host[:port]` of a URL, as `--insecure-host` takes it.
pub fn authority(url: &Url) -> String {
    match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or("")),
        None => url.host_str().unwrap_or("").to_string(),
    }
}

/// Redirects followed at most per request.
pub const MAX_REDIRECTS: usize = 5;

/// Why a redirect was not followed.
#[derive(Debug)]
pub struct RedirectRefused(pub String);

impl fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedirectRefused {}

/// Whether a redirect from `previous` (the chain so far, oldest first) to
/// `next` may be followed: http(s) only, no user info, at most
/// [`MAX_REDIRECTS`], and plain HTTP only to a host `allowed` names.
/// reqwest drops `Authorization` itself when the host or port changes.
pub fn check_redirect(
    next: &Url,
    previous: &[Url],
    allowed: &InsecureHosts,
) -> Result<(), RedirectRefused> {
    if previous.len() > MAX_REDIRECTS {
        return Err(RedirectRefused(format!(
            "more than {MAX_REDIRECTS} redirects"
        )));
    }
    if !next.username().is_empty() || next.password().is_some() {
        return Err(RedirectRefused(
            "refusing a redirect to a URL with a user name or password in it".into(),
        ));
    }
    match next.scheme() {
        "https" => Ok(()),
        "http" if allowed.allows_url(next) => Ok(()),
        "http" => Err(RedirectRefused(format!(
            "refusing a redirect to plain HTTP ({}); give --insecure-host {} to allow it",
            redacted(next),
            authority(next)
        ))),
        other => Err(RedirectRefused(format!(
            "refusing a redirect to a {} URL",
            crate::digest::truncate_for_error(other)
        ))),
    }
}

/// The redirect policy of every registry client: [`check_redirect`].
pub fn redirect_policy(allowed: InsecureHosts) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        match check_redirect(attempt.url(), attempt.previous(), &allowed) {
            Ok(()) => attempt.follow(),
            Err(e) => attempt.error(e),
        }
    })
}

/// A throughput floor for a blob download: over every `window` of time
/// spent waiting on the network, at least `floor` bytes a second must
/// arrive, or the connection is given up (and the download resumed with
/// `Range` on a new one). Time the receiver takes to accept a chunk does
/// not count: a slow disk is not a slow server.
#[derive(Clone, Debug)]
pub struct SpeedFloor {
    floor: u64,
    window: Duration,
    waited: Duration,
    bytes: u64,
}

/// A window that fell below the floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooSlow {
    /// Bytes a second seen over the window.
    pub rate: u64,
}

impl SpeedFloor {
    /// `floor` bytes a second over `window`; a zero floor or window turns
    /// the rule off.
    pub fn new(floor: u64, window: Duration) -> Self {
        SpeedFloor {
            floor,
            window,
            waited: Duration::ZERO,
            bytes: 0,
        }
    }

    fn enabled(&self) -> bool {
        self.floor > 0 && !self.window.is_zero()
    }

    /// How long the next read may wait before the window must be judged;
    /// `None` when there is no floor.
    pub fn budget(&self) -> Option<Duration> {
        self.enabled()
            .then(|| self.window.saturating_sub(self.waited))
    }

    /// Records `bytes` that took `waited` to arrive. At the end of a
    /// window, judges it and starts the next.
    pub fn record(&mut self, bytes: u64, waited: Duration) -> Result<(), TooSlow> {
        if !self.enabled() {
            return Ok(());
        }
        self.waited += waited;
        self.bytes = self.bytes.saturating_add(bytes);
        if self.waited < self.window {
            return Ok(());
        }
        let secs = self.waited.as_secs_f64();
        let rate = (self.bytes as f64 / secs) as u64;
        self.waited = Duration::ZERO;
        self.bytes = 0;
        if (rate as f64) < self.floor as f64 {
            Err(TooSlow { rate })
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn insecure_host_entries() {
        let mut h = InsecureHosts::default();
        assert!(!h.allows_url(&u("http://reg.example/token")));
        h.add("Reg.Example").unwrap();
        h.add("127.0.0.2:5001").unwrap();
        h.add("[::1]:8080").unwrap();
        assert!(h.allows_url(&u("http://reg.example/token")));
        assert!(h.allows_url(&u("http://reg.example:9999/token")));
        assert!(h.allows_url(&u("http://127.0.0.2:5001/t")));
        assert!(!h.allows_url(&u("http://127.0.0.2:5002/t")));
        assert!(!h.allows_url(&u("http://127.0.0.2/t")));
        assert!(h.allows_url(&u("http://[::1]:8080/t")));
        assert!(!h.allows_url(&u("http://other.example/t")));
        assert!(!h.allows_url(&u("http://reg.example.evil/t")));
        for bad in ["", "a/b", "u:p@h", "h?x", "h:99999", "a b", "h:port"] {
            assert!(InsecureHosts::default().add(bad).is_err(), "{bad:?}");
        }
        let mut any = InsecureHosts::default();
        any.add_list("a.example, *").unwrap();
        assert!(any.allows_any());
        assert!(any.allows_url(&u("http://x.example/")));
    }

    #[test]
    fn redirects_to_plain_http_need_the_host_allowed() {
        let none = InsecureHosts::default();
        let from = [u("https://reg.example/v2/a/blobs/sha256:00")];
        assert!(check_redirect(&u("https://cdn.example/b?sig=x"), &from, &none).is_ok());
        let e = check_redirect(&u("http://cdn.example:8080/b?sig=secret"), &from, &none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--insecure-host cdn.example:8080"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        // Same host and port in clear: reqwest would keep Authorization.
        assert!(check_redirect(&u("http://reg.example:443/b"), &from, &none).is_err());
        // Even from a plain-HTTP registry, another host in clear needs allowing.
        let mut reg = InsecureHosts::default();
        reg.add_exact("reg.example", Some(80));
        let from_http = [u("http://reg.example/v2/a/blobs/sha256:00")];
        assert!(check_redirect(&u("http://reg.example/b"), &from_http, &reg).is_ok());
        assert!(check_redirect(&u("http://cdn.example/b"), &from_http, &reg).is_err());
        assert!(check_redirect(&u("http://cdn.example/b"), &from, &InsecureHosts::any()).is_ok());
        assert!(check_redirect(&u("https://user:pw@cdn.example/b"), &from, &none).is_err());
        assert!(check_redirect(&u("file:///etc/passwd"), &from, &InsecureHosts::any()).is_err());
        let chain: Vec<Url> = (0..=MAX_REDIRECTS).map(|_| from[0].clone()).collect();
        assert!(check_redirect(&u("https://cdn.example/b"), &chain, &none).is_err());
    }

    #[test]
    fn redacted_drops_secrets() {
        let r = redacted(&u(
            "https://user:pw@auth.example:8443/token?account=a&sig=s#f",
        ));
        assert_eq!(r, "https://auth.example:8443/token");
    }

    #[test]
    fn speed_floor_judges_whole_windows() {
        let w = Duration::from_secs(10);
        let mut f = SpeedFloor::new(1000, w);
        assert_eq!(f.budget(), Some(w));
        // 9 s at 2000 B/s: no judgement yet.
        for _ in 0..9 {
            f.record(2000, Duration::from_secs(1)).unwrap();
        }
        assert_eq!(f.budget(), Some(Duration::from_secs(1)));
        // The tenth second ends the window: 18 000 B in 10 s passes.
        f.record(0, Duration::from_secs(1)).unwrap();
        assert_eq!(f.budget(), Some(w));
        // The next window drips: 10 B/s.
        for _ in 0..9 {
            f.record(10, Duration::from_secs(1)).unwrap();
        }
        assert_eq!(
            f.record(10, Duration::from_secs(1)),
            Err(TooSlow { rate: 10 })
        );
        // A complete stall over a window fails too.
        assert_eq!(
            f.record(0, Duration::from_secs(10)),
            Err(TooSlow { rate: 0 })
        );
        // Off.
        let mut off = SpeedFloor::new(0, w);
        assert_eq!(off.budget(), None);
        assert!(off.record(0, Duration::from_secs(1000)).is_ok());
        assert_eq!(SpeedFloor::new(5, Duration::ZERO).budget(), None);
    }
}
