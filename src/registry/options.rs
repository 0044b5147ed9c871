//! How to reach a registry: [`ClientOptions`]. The defaults are constants;
//! nothing here reads the environment (the CLI does, and passes values in).

use std::time::Duration;

use super::auth::Credentials;
use super::transport;

/// Largest manifest or index we accept.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config we accept.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// Default for [`ClientOptions::retries`].
pub const DEFAULT_RETRIES: u32 = 3;
/// Default for [`ClientOptions::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`ClientOptions::read_timeout`].
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for [`ClientOptions::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for [`ClientOptions::min_speed`]: 1 KiB/s.
pub const DEFAULT_MIN_SPEED: u64 = 1024;
/// Default for [`ClientOptions::min_speed_window`].
pub const DEFAULT_MIN_SPEED_WINDOW: Duration = Duration::from_secs(30);
/// Default for [`ClientOptions::connections_per_blob`].
pub const DEFAULT_CONNECTIONS_PER_BLOB: usize = 4;

/// How to reach a registry.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// Credentials, if any were given.
    pub credentials: Option<Credentials>,
    /// How many times a failed request is retried.
    pub retries: u32,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// How long a response may stall between bytes.
    pub read_timeout: Duration,
    /// Hosts besides an `insecure` registry itself that may be spoken to
    /// over plain HTTP: token realms and redirect targets. Credentials and
    /// tokens never go in clear to any other host.
    pub insecure_hosts: transport::InsecureHosts,
    /// Deadline for a whole small response (manifest, config, token, error
    /// body) and for the headers of a blob response, per attempt.
    pub request_timeout: Duration,
    /// Bytes a second a blob download must keep up over each
    /// `min_speed_window`, or it is resumed on a new connection; 0: no floor.
    pub min_speed: u64,
    /// See `min_speed`.
    pub min_speed_window: Duration,
    /// Connections one blob download may use at most: a download that the
    /// network, not the reader, holds back is split into `Range` parts
    /// fetched at once, the later parts spooled to an unlinked file in
    /// `spool_dir` until their turn comes. 1: one connection a blob.
    pub connections_per_blob: usize,
    /// Where split downloads spool their later parts (`None`: the
    /// system's temp dir).
    pub spool_dir: Option<std::path::PathBuf>,
}

impl Default for ClientOptions {
    /// HTTPS, no credentials, the `DEFAULT_*` constants of this module (three
    /// retries, a 30 s connect timeout, a 60 s read timeout, a 60 s request
    /// deadline, a 1 KiB/s floor over 30 s for blobs, up to 4 connections
    /// a blob) and no extra plain-HTTP hosts.
    fn default() -> Self {
        ClientOptions {
            insecure: false,
            credentials: None,
            retries: DEFAULT_RETRIES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            insecure_hosts: transport::InsecureHosts::default(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            min_speed: DEFAULT_MIN_SPEED,
            min_speed_window: DEFAULT_MIN_SPEED_WINDOW,
            connections_per_blob: DEFAULT_CONNECTIONS_PER_BLOB,
            spool_dir: None,
        }
    }
}

/// A byte rate (`1024`, `64k`, `2M`; k and M are powers of 1024), as
/// `--min-speed` and `OCCYSTRAP_MIN_SPEED` take it.
pub fn parse_byte_rate(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1024u64),
        b'm' | b'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let n: u64 = num.trim().parse().ok()?;
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_rates() {
        assert_eq!(parse_byte_rate("1024"), Some(1024));
        assert_eq!(parse_byte_rate("64k"), Some(64 << 10));
        assert_eq!(parse_byte_rate(" 2M "), Some(2 << 20));
        assert_eq!(parse_byte_rate("0"), Some(0));
        for bad in ["", "k", "-1", "1.5k", "1G", "99999999999999999999M"] {
            assert_eq!(parse_byte_rate(bad), None, "{bad:?}");
        }
    }
}
