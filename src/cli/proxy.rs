//! `occystrap proxy`: flags, the proxy's configuration, and the server's
//! run until SIGINT/SIGTERM; `--purge REF` edits the pull-through cache's
//! records and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};

use occystrap::proxy::{self, Endpoint, Limits, ProxyConfig};
use occystrap::registry::{Client, Credentials};
use occystrap::uri::{self, Settings, Uri};
use occystrap::wire::index_plan::Selection;

use super::Global;

/// The access log's format.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of text per request.
    Text,
    /// One JSON object per request, per line.
    Json,
}

/// `occystrap proxy`'s flags.
#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Address to listen on (loopback unless told otherwise).
    #[arg(
        short = 'l',
        long,
        default_value = "127.0.0.1:5050",
        env = "OCCYSTRAP_PROXY_LISTEN",
        value_name = "ADDR:PORT"
    )]
    pub listen: SocketAddr,
    /// Where filtered images go and what pulls are served from:
    /// registry://HOST[/NAMESPACE] (options: insecure, compression, format,
    /// max_workers).
    #[arg(
        short = 'd',
        long,
        value_name = "URI",
        required_unless_present = "purge"
    )]
    pub downstream: Option<String>,
    /// Pull-through cache: fetch what downstream lacks from this
    /// registry://HOST[/NAMESPACE] (option: insecure).
    #[arg(short = 'u', long, value_name = "URI")]
    pub upstream: Option<String>,
    /// A filter every image goes through (repeatable).
    #[arg(short = 'f', long = "filter", value_name = "FILTER")]
    pub filters: Vec<String>,
    /// How long a cached tag is served before upstream is asked again
    /// (a manifest HEAD): 30s, 10m, 2h, 0 for every time.
    #[arg(long, default_value = "10m", value_parser = duration, value_name = "DURATION")]
    pub cache_ttl: Duration,
    /// Forget the cached tag REPO:TAG (the next pull asks upstream), and
    /// exit (repeatable).
    #[arg(long, value_name = "REPO:TAG")]
    pub purge: Vec<String>,
    /// The proxy's own files: staged uploads and the cache's tag records
    /// (default: $OCCYSTRAP_PROXY_STATE, else $XDG_STATE_HOME/occystrap/proxy,
    /// else ~/.local/state/occystrap/proxy).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Ask clients for HTTP Basic credentials from this htpasswd file
    /// (bcrypt entries, as `htpasswd -B` writes them).
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,
    /// User name for the upstream registry.
    #[arg(long, env = "OCCYSTRAP_UPSTREAM_USERNAME", value_name = "USER")]
    pub upstream_username: Option<String>,
    /// Password or token for the upstream registry.
    #[arg(
        long,
        env = "OCCYSTRAP_UPSTREAM_PASSWORD",
        hide_env_values = true,
        value_name = "PASS"
    )]
    pub upstream_password: Option<String>,
    /// Access log format, on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Largest manifest a client may push, in bytes.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    pub max_manifest_size: usize,
    /// Largest blob a client may push, in bytes.
    #[arg(long, default_value_t = 16 << 30, value_name = "BYTES")]
    pub max_blob_size: u64,
    /// Upload sessions open at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_uploads: usize,
    /// Bytes the staging area may hold at once.
    #[arg(long, default_value_t = 64 << 30, value_name = "BYTES")]
    pub max_staging: u64,
}

/// `30s`, `10m`, `2h`, `1d`, or plain seconds.
fn duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s, 10m or 2h"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?} is not a duration such as 30s, 10m or 2h")),
    };
    Ok(Duration::from_secs(n.saturating_mul(mult)))
}

/// The state directory the flags, then the environment, name.
fn state_dir(args: &ProxyArgs) -> Result<PathBuf> {
    if let Some(d) = &args.state_dir {
        return Ok(d.clone());
    }
    if let Some(d) = std::env::var_os("OCCYSTRAP_PROXY_STATE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("occystrap/proxy"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".local/state/occystrap/proxy")),
        None => bail!("no --state-dir given and no HOME to default it under"),
    }
}

/// `registry://HOST[/NAMESPACE][?options]` as an endpoint, with these
/// credentials (else the URI's, else Docker's config).
fn endpoint(
    text: &str,
    settings: &Settings,
    credentials: Option<Credentials>,
    known: &[&str],
) -> Result<(Endpoint, Uri)> {
    let uri = Uri::parse(text)?;
    if uri.scheme != "registry" {
        bail!("{text}: the proxy's registries are registry://HOST[/NAMESPACE]");
    }
    uri.check_options(known)?;
    let path = uri.path.trim_end_matches('/');
    let (host_part, prefix) = match path.rsplit_once('@') {
        // user:pass@host/ns: the namespace follows the host.
        Some((_, after)) => match after.split_once('/') {
            Some((_, ns)) => (&path[..path.len() - ns.len() - 1], ns),
            None => (path, ""),
        },
        None => match path.split_once('/') {
            Some((h, ns)) => (h, ns),
            None => (path, ""),
        },
    };
    if !prefix.is_empty() {
        occystrap::proxy::route::name_of(prefix)
            .map_err(|_| anyhow::anyhow!("{text}: {prefix:?} is not a repository namespace"))?;
    }
    // The client options a repository of this registry would get.
    let probe = Uri {
        scheme: uri.scheme.clone(),
        path: format!("{host_part}/occystrap-probe"),
        query: uri.query.clone(),
    };
    let mut settings = settings.clone();
    if credentials.is_some() {
        settings.credentials = credentials;
    }
    let (reference, options) = uri::registry_options(&probe, &settings)?;
    let client = Client::new(&settings.registry, reference.registry_host(), options)?;
    Ok((
        Endpoint {
            client,
            prefix: prefix.to_string(),
        },
        uri,
    ))
}

/// Runs `occystrap proxy`.
pub(super) async fn run(global: &Global, settings: &Settings, args: &ProxyArgs) -> Result<i32> {
    let state = state_dir(args)?;
    if !args.purge.is_empty() {
        return purge(&state, &args.purge);
    }
    let Some(down) = &args.downstream else {
        bail!("--downstream is required");
    };
    let dest_creds = global.dest_username.as_ref().map(|u| Credentials {
        username: u.clone(),
        password: global.dest_password.clone().unwrap_or_default(),
    });
    let (downstream, down_uri) = endpoint(
        down,
        settings,
        dest_creds,
        &["insecure", "compression", "format", "max_workers"],
    )?;
    let upstream = match &args.upstream {
        None => None,
        Some(u) => {
            let creds = args.upstream_username.as_ref().map(|u| Credentials {
                username: u.clone(),
                password: args.upstream_password.clone().unwrap_or_default(),
            });
            Some(endpoint(u, settings, creds, &["insecure"])?.0)
        }
    };
    let sink = downstream_sink(global, settings, &down_uri)?;
    let htpasswd = match &args.htpasswd {
        Some(p) => Some(Arc::new(proxy::auth::Htpasswd::load(p)?)),
        None => None,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(proxy::tls::server_config(c, k)?),
        _ => None,
    };
    let config = ProxyConfig {
        downstream,
        upstream,
        filters: args.filters.clone(),
        sink,
        parallel: settings.parallel,
        platforms: settings.selection.clone().unwrap_or(Selection::All),
        cache_ttl: args.cache_ttl,
        state_dir: state.clone(),
        limits: Limits {
            max_manifest_bytes: args.max_manifest_size,
            max_blob_bytes: args.max_blob_size,
            max_uploads: args.max_uploads,
            max_staging_bytes: args.max_staging,
            ..Limits::default()
        },
        htpasswd,
        cancel: settings.cancel.clone(),
    };
    // The filters are checked now, not at the first push.
    config.build_filters()?;
    let proxy = proxy::Proxy::new(config)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr()?;
    {
        let mut err = occystrap::escape::TextOut::new(std::io::stderr().lock());
        use std::io::Write as _;
        let _ = writeln!(
            err,
            "proxy: listening on {}://{local}, downstream {}{}",
            if tls.is_some() { "https" } else { "http" },
            down_uri.path,
            args.upstream
                .as_ref()
                .map(|u| format!(", upstream {u}"))
                .unwrap_or_default()
        );
    }
    // SIGINT/SIGTERM drop this future (main.rs): uploads in progress are
    // aborted, their files removed, and no manifest of a push that did not
    // finish reaches downstream (the sink pushes it last).
    proxy::server::serve(
        proxy,
        listener,
        proxy::server::ServeOptions {
            tls,
            header_timeout: header_timeout_override(),
        },
        std::future::pending(),
    )
    .await?;
    Ok(0)
}

/// `--purge REF...`: forgets each cached tag, saying which were cached.
fn purge(state: &std::path::Path, refs: &[String]) -> Result<i32> {
    use std::io::Write as _;
    for r in refs {
        let forgot = proxy::pull::purge(state, r)?;
        let mut err = occystrap::escape::TextOut::new(std::io::stderr().lock());
        let said = if forgot {
            "forgotten"
        } else {
            "was not cached"
        };
        let _ = writeln!(err, "{r}: {said}");
    }
    Ok(0)
}

/// How pushes go downstream: the global `--compression` and `--verify`,
/// `-j`, and the downstream URI's `compression=`, `format=` and
/// `max_workers=`.
fn downstream_sink(
    global: &Global,
    settings: &Settings,
    down_uri: &occystrap::uri::Uri,
) -> Result<occystrap::sink::registry::RegistrySinkOptions> {
    let mut sink = occystrap::sink::registry::RegistrySinkOptions {
        compression: match down_uri
            .get("compression")
            .or(global.compression.as_deref())
        {
            None => occystrap::compress::Encoding::Gzip,
            Some(c) => c.parse()?,
        },
        max_workers: settings.parallel,
        verify: global.verify,
        temp_dir: None,
        ..Default::default()
    };
    if let Some(f) = down_uri.get("format") {
        sink.format = Some(
            occystrap::sink::registry::ManifestFormat::parse(f)
                .ok_or_else(|| anyhow::anyhow!("format={f} must be oci or docker"))?,
        );
    }
    if let Some(n) = down_uri.get("max_workers") {
        sink.max_workers = n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=64).contains(n))
            .ok_or_else(|| anyhow::anyhow!("max_workers={n} must be 1 to 64"))?;
    }
    Ok(sink)
}

/// `OCCYSTRAP_PROXY_HEADER_TIMEOUT` (seconds): a hidden override of the
/// 30 s request-header deadline, so that tests of slow clients run fast.
fn header_timeout_override() -> Option<Duration> {
    std::env::var("OCCYSTRAP_PROXY_HEADER_TIMEOUT")
        .ok()?
        .parse::<u64>()
        .ok()
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
}
