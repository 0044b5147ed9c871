//! The environment variables the CLI reads for the registry client, as
//! fallbacks for flags not given: the library reads none of them.

use std::path::PathBuf;
use std::time::Duration;

use occystrap::registry::transport::InsecureHosts;

/// Fallback for `--connect-timeout` (seconds, fractions allowed).
pub const ENV_CONNECT_TIMEOUT: &str = "OCCYSTRAP_CONNECT_TIMEOUT";
/// Fallback for `--read-timeout` (seconds).
pub const ENV_READ_TIMEOUT: &str = "OCCYSTRAP_READ_TIMEOUT";
/// Fallback for `--rate-limit` (requests a second).
pub const ENV_RATE_LIMIT: &str = "OCCYSTRAP_RATE_LIMIT";
/// Fallback for `--request-timeout` (seconds).
pub const ENV_REQUEST_TIMEOUT: &str = "OCCYSTRAP_REQUEST_TIMEOUT";
/// Fallback for `--min-speed` (bytes a second; `0` turns the floor off).
pub const ENV_MIN_SPEED: &str = "OCCYSTRAP_MIN_SPEED";
/// Fallback for `--min-speed-window` (seconds).
pub const ENV_MIN_SPEED_WINDOW: &str = "OCCYSTRAP_MIN_SPEED_WINDOW";
/// Fallback for `--connections-per-blob`.
pub const ENV_CONNECTIONS_PER_BLOB: &str = "OCCYSTRAP_CONNECTIONS_PER_BLOB";
/// Fallback for `--insecure-host` (a comma-separated list).
pub const ENV_INSECURE_HOSTS: &str = "OCCYSTRAP_INSECURE_HOSTS";

/// A positive, finite number from the environment; anything else is
/// ignored.
pub fn number(name: &str) -> Option<f64> {
    let v: f64 = std::env::var(name).ok()?.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then_some(v)
}

/// Seconds from the environment as a duration (at most a day).
pub fn seconds(name: &str) -> Option<Duration> {
    number(name).map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

/// A byte rate from the environment (`1024`, `64k`, `2M`).
pub fn byte_rate(name: &str) -> Option<u64> {
    occystrap::registry::parse_byte_rate(&std::env::var(name).ok()?)
}

/// The `OCCYSTRAP_INSECURE_HOSTS` list; one that does not parse is ignored
/// with a warning.
pub fn insecure_hosts() -> Option<InsecureHosts> {
    let list = std::env::var(ENV_INSECURE_HOSTS).ok()?;
    let mut h = InsecureHosts::default();
    if h.add_list(&list).is_err() {
        tracing::warn!("ignoring {ENV_INSECURE_HOSTS}: not a list of HOST[:PORT]");
        return None;
    }
    Some(h)
}

/// Docker's client config: `$DOCKER_CONFIG/config.json`, else
/// `$HOME/.docker/config.json`.
pub fn docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".docker").join("config.json"))
}
