//! `scheme://path?key=value` URIs for sources and sinks, as the Python
//! occystrap takes them (`scheme:path` works too).

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::image::Platform;
use crate::reference::Reference;
use crate::registry::{ClientOptions, Credentials};
use crate::sink::Sink;
use crate::source::Source;

/// A parsed URI: scheme, the part after it, and the query options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uri {
    /// Lower-case scheme (`registry`, `tar`, `dir`).
    pub scheme: String,
    /// Everything between the scheme and `?`.
    pub path: String,
    /// `key=value` pairs, percent-decoded, in order.
    pub query: Vec<(String, String)>,
}

impl Uri {
    /// Parses `scheme://rest[?k=v&...]` or `scheme:rest`.
    pub fn parse(s: &str) -> Result<Uri> {
        let (scheme, rest) = s.split_once(':').ok_or_else(|| {
            Error::Usage(format!(
                "{:?} is not a URI: expected SCHEME://PATH such as registry://HOST/IMAGE:TAG or tar://FILE",
                without_userinfo(s)
            ))
        })?;
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(Error::Usage(format!(
                "{:?} has no valid URI scheme",
                without_userinfo(s)
            )));
        }
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, q),
            None => (rest, ""),
        };
        let mut pairs = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, "true"));
            pairs.push((decode(k), decode(v)));
        }
        Ok(Uri {
            scheme: scheme.to_ascii_lowercase(),
            path: path.to_string(),
            query: pairs,
        })
    }

    /// The last value of option `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean option (`true`/`false`/`1`/`0`/`yes`/`no`).
    pub fn flag(&self, key: &str) -> Result<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(Error::Usage(format!(
                    "option {key}={v} must be true or false"
                ))),
            },
        }
    }

    /// Fails on any option not in `known`, naming the ones that are.
    pub fn check_options(&self, known: &[&str]) -> Result<()> {
        for (k, _) in &self.query {
            if !known.contains(&k.as_str()) {
                return Err(Error::Usage(format!(
                    "unknown option {k:?} for {}:// (known: {})",
                    self.scheme,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
        Ok(())
    }

    fn file_path(&self) -> Result<PathBuf> {
        if self.path.is_empty() {
            return Err(Error::Usage(format!("{}:// needs a path", self.scheme)));
        }
        Ok(PathBuf::from(&self.path))
    }
}

/// `s` for an error message, without anything that could be a password:
/// whatever comes before the last `@`.
fn without_userinfo(s: &str) -> String {
    match s.rfind('@') {
        Some(at) => format!("…{}", crate::digest::truncate_for_error(&s[at..])),
        None => crate::digest::truncate_for_error(s),
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Settings from the global command-line flags that sources and sinks use.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Platform to choose from an index.
    pub platform: Platform,
    /// Plain HTTP for registries.
    pub insecure: bool,
    /// Credentials from flags or environment.
    pub credentials: Option<Credentials>,
    /// Retries for failed requests.
    pub retries: u32,
    /// Layers fetched at once.
    pub parallel: usize,
    /// Skip layer entries that cannot be extracted safely instead of failing.
    pub skip_unsafe: bool,
    /// Connect timeout for registries (default: the client's).
    pub connect_timeout: Option<std::time::Duration>,
    /// Idle-read timeout for registries (default: the client's).
    pub read_timeout: Option<std::time::Duration>,
    /// What every registry client of the run shares: connection pools, the
    /// rate limiter, the token cache.
    pub registry: Arc<crate::registry::Context>,
    /// Docker's `config.json` to look credentials up in, if any (the CLI
    /// finds it from `DOCKER_CONFIG` or `HOME`).
    pub docker_config: Option<PathBuf>,
    /// Hosts besides an insecure registry itself that may hear plain HTTP
    /// (the CLI's `--insecure-host`, else `OCCYSTRAP_INSECURE_HOSTS`; none:
    /// no host); `insecure` allows every host.
    pub insecure_hosts: Option<crate::registry::transport::InsecureHosts>,
    /// Deadline for small responses (default: the client's).
    pub request_timeout: Option<std::time::Duration>,
    /// Throughput floor for blobs in bytes a second, 0 for none (default:
    /// the client's).
    pub min_speed: Option<u64>,
    /// Window over which the floor is judged (default: the client's).
    pub min_speed_window: Option<std::time::Duration>,
    /// Connections a blob download may use (default: the client's).
    pub connections_per_blob: Option<usize>,
    /// Where split blob downloads spool (default: the system temp dir).
    pub temp_dir: Option<PathBuf>,
    /// The run's cancellation, handed to the sinks that extract layers or
    /// wait for a store's lock.
    pub cancel: crate::cancel::CancelToken,
    /// Which platforms of an index to copy (`--all-platforms`,
    /// `--platforms LIST`); `None`: the one `platform` names.
    pub selection: Option<crate::wire::index_plan::Selection>,
    /// `$DOCKER_HOST`, where `docker://` finds its engine when the URI
    /// names no `socket=` (the CLI reads it; the library reads no
    /// variable).
    pub docker_host: Option<String>,
}

/// The reference and client options a `registry://` URI stands for:
/// credentials from the URI, then the flags, then Docker's config; the URI's
/// `insecure` option; timeouts and rate limit from the flags.
pub fn registry_options(uri: &Uri, settings: &Settings) -> Result<(Reference, ClientOptions)> {
    let (userinfo, rest) = split_userinfo(&uri.path);
    // An `@` that does not start a digest is user info that split_userinfo
    // could not see (a `/` in the password): never echo it.
    let is_digest = |d: &str| {
        !d.contains('/')
            && d.split_once(':').is_some_and(|(alg, hex)| {
                !alg.is_empty() && !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())
            })
    };
    let digest_at = rest.rfind('@').filter(|&at| is_digest(&rest[at + 1..]));
    if rest.find('@').is_some_and(|first| Some(first) != digest_at) {
        return Err(Error::Usage(
            "registry:// URI has an '@' that does not start a digest; percent-encode '/' and '@' \
             in a user name or password (%2F, %40)"
                .into(),
        ));
    }
    let reference = Reference::parse(rest)?;
    let credentials = userinfo
        .or_else(|| settings.credentials.clone())
        .or_else(|| {
            let config = settings.docker_config.as_deref()?;
            crate::registry::auth::docker_config_credentials(config, reference.registry_host())
        });
    let mut options = ClientOptions {
        credentials,
        retries: settings.retries,
        ..ClientOptions::default()
    };
    if let Some(h) = &settings.insecure_hosts {
        options.insecure_hosts = h.clone();
    }
    if settings.insecure {
        options.insecure_hosts = crate::registry::transport::InsecureHosts::any();
    }
    // Only --insecure or the URI's own option choose plain HTTP for the
    // registry; --insecure-host allows it for realms and redirects.
    options.insecure = settings.insecure || uri.flag("insecure")?;
    if let Some(t) = settings.connect_timeout {
        options.connect_timeout = t;
    }
    if let Some(t) = settings.read_timeout {
        options.read_timeout = t;
    }
    if let Some(t) = settings.request_timeout {
        options.request_timeout = t;
    }
    if let Some(b) = settings.min_speed {
        options.min_speed = b;
    }
    if let Some(t) = settings.min_speed_window {
        options.min_speed_window = t;
    }
    if let Some(n) = settings.connections_per_blob {
        options.connections_per_blob = n;
    }
    options.spool_dir = settings.temp_dir.clone();
    Ok((reference, options))
}

/// The reference a `registry://` URI names and a handle on its repository,
/// from a client over the run's shared registry context.
pub fn registry_repository(
    uri: &Uri,
    settings: &Settings,
) -> Result<(Reference, crate::registry::Repository)> {
    let (reference, options) = registry_options(uri, settings)?;
    let client =
        crate::registry::Client::new(&settings.registry, reference.registry_host(), options)?;
    let repo = client.repo(&reference.path);
    Ok((reference, repo))
}

/// The platform the flags ask for, with the URI's `os`, `arch` and `variant`
/// options taking precedence.
fn uri_platform(uri: &Uri, settings: &Settings) -> Platform {
    let mut platform = settings.platform.clone();
    if let Some(os) = uri.get("os") {
        platform.os = os.to_string();
    }
    if let Some(a) = uri.get("arch").or(uri.get("architecture")) {
        platform.architecture = a.to_string();
    }
    if let Some(v) = uri.get("variant") {
        platform.variant = Some(v.to_string()).filter(|v| !v.is_empty());
    }
    platform
}

/// Splits `user:pass@host/path` into credentials and the rest.
fn split_userinfo(path: &str) -> (Option<Credentials>, &str) {
    let first_slash = path.find('/').unwrap_or(path.len());
    match path[..first_slash].rfind('@') {
        Some(at) => {
            let (user, pass) = path[..at].split_once(':').unwrap_or((&path[..at], ""));
            (
                Some(Credentials {
                    username: decode(user),
                    password: decode(pass),
                }),
                &path[at + 1..],
            )
        }
        None => (None, path),
    }
}

/// Builds the source a URI names.
pub fn open_source(uri: &Uri, settings: &Settings) -> Result<(Arc<dyn Source>, usize)> {
    match uri.scheme.as_str() {
        "registry" => {
            uri.check_options(&[
                "insecure",
                "os",
                "arch",
                "architecture",
                "variant",
                "max_workers",
            ])?;
            let (reference, repo) = registry_repository(uri, settings)?;
            let platform = uri_platform(uri, settings);
            let parallel = match uri.get("max_workers") {
                Some(n) => parse_workers(n)?,
                None => settings.parallel,
            };
            let source = crate::source::registry::RegistrySource::new(reference, platform, repo);
            Ok((Arc::new(source), parallel))
        }
        "tar" => {
            uri.check_options(&["image"])?;
            let source = crate::source::docker_archive::DockerArchiveSource::open(
                &uri.file_path()?,
                uri.get("image"),
            )?;
            Ok((Arc::new(source), settings.parallel))
        }
        "dir" => {
            uri.check_options(&["image", "tag"])?;
            let source = crate::source::dir::DirSource::open(
                &uri.file_path()?,
                uri.get("image").filter(|s| !s.is_empty()),
                uri.get("tag").filter(|s| !s.is_empty()),
            )?;
            Ok((Arc::new(source), settings.parallel))
        }
        "oci-layout" => {
            uri.check_options(&["os", "arch", "architecture", "variant"])?;
            let (path, tag) = split_layout_tag(&uri.path)?;
            let platform = uri_platform(uri, settings);
            let source =
                crate::source::oci_layout::OciLayoutSource::open(&path, tag.as_deref(), &platform)?;
            Ok((Arc::new(source), settings.parallel))
        }
        "docker" => {
            uri.check_options(&["socket"])?;
            let source =
                crate::source::engine::EngineSource::new(engine_socket(uri, settings)?, &uri.path)?;
            Ok((Arc::new(source), settings.parallel))
        }
        "quay" => Err(Error::Usage(
            "quay:// names many images: it is a source for `process` only".into(),
        )),
        other => Err(Error::Usage(format!(
            "unknown source scheme {other}:// (supported: registry://, tar://, dir://, oci-layout://, docker://, dockerpush://)"
        ))),
    }
}

/// The engine socket a `docker://` or `dockerpush://` URI talks to:
/// `?socket=`, else `$DOCKER_HOST`, else Docker's default.
pub fn engine_socket(uri: &Uri, settings: &Settings) -> Result<PathBuf> {
    crate::engine::socket_path(uri.get("socket"), settings.docker_host.as_deref())
}

/// Splits `PATH[:TAG]` as skopeo's `oci:` transport does: a colon after the
/// last slash starts the tag.
fn split_layout_tag(path: &str) -> Result<(PathBuf, Option<String>)> {
    let last_slash = path.rfind('/').map_or(0, |i| i + 1);
    let (p, tag) = match path[last_slash..].rfind(':') {
        Some(i) => (&path[..last_slash + i], Some(&path[last_slash + i + 1..])),
        None => (path, None),
    };
    if p.is_empty() {
        return Err(Error::Usage("oci-layout:// needs a path".into()));
    }
    let tag = tag.filter(|t| !t.is_empty()).map(str::to_string);
    Ok((PathBuf::from(p), tag))
}

fn parse_workers(n: &str) -> Result<usize> {
    match n.parse::<usize>() {
        Ok(v) if (1..=64).contains(&v) => Ok(v),
        _ => Err(Error::Usage(format!(
            "max_workers={n} must be a number from 1 to 64"
        ))),
    }
}

/// How a `tar://` destination stores layers: `layers=uncompressed` (the
/// default) or `layers=compressed`.
fn tar_layers(uri: &Uri) -> Result<crate::sink::docker_archive::LayerForm> {
    use crate::sink::docker_archive::LayerForm;
    match uri.get("layers") {
        None | Some("uncompressed") => Ok(LayerForm::Uncompressed),
        Some("compressed") => Ok(LayerForm::Compressed),
        Some(other) => Err(Error::Usage(format!(
            "option layers={other:?} for tar:// must be compressed or uncompressed"
        ))),
    }
}

/// Builds the sink a URI names.
pub fn open_sink(uri: &Uri, settings: &Settings) -> Result<Box<dyn Sink>> {
    match uri.scheme.as_str() {
        "tar" => {
            uri.check_options(&["layers"])?;
            Ok(Box::new(
                crate::sink::docker_archive::DockerArchiveSink::with_layers(
                    &uri.file_path()?,
                    tar_layers(uri)?,
                )?,
            ))
        }
        "dir" => {
            uri.check_options(&["unique_names", "expand"])?;
            let options = crate::sink::dir::DirOptions {
                unique_names: uri.flag("unique_names")?,
                expand: uri.flag("expand")?,
                skip_unsafe: settings.skip_unsafe,
                cancel: settings.cancel.clone(),
            };
            Ok(Box::new(crate::sink::dir::DirSink::new(
                &uri.file_path()?,
                options,
            )?))
        }
        "oci" => {
            uri.check_options(&["readonly"])?;
            let readonly = match uri.get("readonly") {
                None => true,
                Some(_) => uri.flag("readonly")?,
            };
            Ok(Box::new(crate::sink::bundle::BundleSink::new(
                &uri.file_path()?,
                readonly,
                settings.skip_unsafe,
                settings.cancel.clone(),
            )?))
        }
        "mounts" => {
            uri.check_options(&["mount"])?;
            Ok(Box::new(crate::sink::mounts::MountsSink::new(
                &uri.file_path()?,
                uri.flag("mount")?,
                settings.skip_unsafe,
                settings.cancel.clone(),
            )?))
        }
        "oci-layout" => {
            uri.check_options(&[])?;
            let (path, tag) = split_layout_tag(&uri.path)?;
            Ok(Box::new(crate::sink::oci_layout::OciLayoutSink::new(
                &path,
                tag.as_deref(),
                settings.cancel.clone(),
            )?))
        }
        "docker" => open_engine_sink(uri, settings, None),
        "registry" => Err(Error::Usage(
            "registry:// is written asynchronously: open it with uri::open_any_sink".into(),
        )),
        other => Err(Error::Usage(format!(
            "unknown destination scheme {other}:// (supported: registry://, docker://, tar://, dir://, oci://, mounts://, oci-layout://)"
        ))),
    }
}

/// `docker://NAME[:TAG]` as a destination: a load into the engine at
/// `?socket=` (else `$DOCKER_HOST`, else Docker's default). Live layers are
/// spooled in `temp_dir` (default: the system's). Must be called inside
/// the tokio runtime the run goes on: the load request runs there.
fn open_engine_sink(
    uri: &Uri,
    settings: &Settings,
    temp_dir: Option<PathBuf>,
) -> Result<Box<dyn Sink>> {
    uri.check_options(&["socket"])?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        Error::Usage("docker:// as a destination must be opened inside a tokio runtime".into())
    })?;
    Ok(Box::new(crate::sink::engine::EngineSink::new(
        engine_socket(uri, settings)?,
        &uri.path,
        runtime,
        temp_dir.unwrap_or_else(std::env::temp_dir),
    )?))
}

/// What a `registry://` destination needs beyond [`Settings`].
#[derive(Clone, Debug, Default)]
pub struct PushSettings {
    /// Credentials for the destination (`--dest-username`/`--dest-password`);
    /// `user:pass@` in the URI wins, and without either the source's flags
    /// and then Docker's config apply.
    pub credentials: Option<Credentials>,
    /// Compression for tar-only layers (`--compression`); the URI's
    /// `compression=` wins.
    pub compression: crate::compress::Encoding,
    /// No filter rewrites layers: an up-to-date destination is left alone.
    pub exact: bool,
    /// The source's reference, when it is a registry: its repository is a
    /// mount candidate when it is on the destination's registry.
    pub source: Option<Reference>,
    /// Where compressed layers are written.
    pub temp_dir: Option<PathBuf>,
    /// Read back what was pushed (`--verify`).
    pub verify: bool,
    /// The layer cache (`--layer-cache`) and the run's rewriting filters.
    pub layer_cache: Option<crate::sink::registry::LayerCacheUse>,
    /// Push the manifest by its own digest only, tagging nothing (the
    /// children of an index); a digest in the URI is then not checked.
    pub by_digest: bool,
}

/// A sink as [`open_any_sink`] builds it: one that works on blocking
/// threads, or one that works asynchronously (a registry).
pub enum AnySink {
    /// A [`Sink`] (files, trees).
    Blocking(Box<dyn Sink>),
    /// An [`crate::sink::AsyncSink`] (`registry://`).
    Async(Box<dyn crate::sink::AsyncSink>),
}

/// Builds the sink a URI names, `registry://` included.
pub fn open_any_sink(uri: &Uri, settings: &Settings, push: &PushSettings) -> Result<AnySink> {
    if uri.scheme == "docker" {
        return open_engine_sink(uri, settings, push.temp_dir.clone()).map(AnySink::Blocking);
    }
    if uri.scheme == "tar"
        && !push.exact
        && tar_layers(uri)? == crate::sink::docker_archive::LayerForm::Compressed
    {
        // A rewritten layer exists only as a new tar: there is no blob as
        // stored to pass on, and compressing it would undo the point.
        return Err(Error::Usage(
            "tar://...?layers=compressed stores the source's blobs as they are; \
             a filter that rewrites layers (exclude, normalize-timestamps) makes new \
             tars, so drop layers=compressed to filter"
                .into(),
        ));
    }
    if uri.scheme != "registry" {
        return open_sink(uri, settings).map(AnySink::Blocking);
    }
    uri.check_options(&["insecure", "compression", "max_workers", "format"])?;
    let mut settings = settings.clone();
    if push.credentials.is_some() {
        settings.credentials = push.credentials.clone();
    }
    let (mut reference, repo) = registry_repository(uri, &settings)?;
    if push.by_digest {
        // The URI's digest names the index, not this child.
        reference.digest = None;
    }
    let compression = match uri.get("compression") {
        None => push.compression,
        Some(c) => c.parse::<crate::compress::Encoding>()?,
    };
    let format = match uri.get("format") {
        None => None,
        Some(f) => Some(
            crate::sink::registry::ManifestFormat::parse(f)
                .ok_or_else(|| Error::Usage(format!("format={f} must be oci or docker")))?,
        ),
    };
    if format == Some(crate::sink::registry::ManifestFormat::Docker)
        && compression == crate::compress::Encoding::Zstd
    {
        return Err(Error::Usage(
            "format=docker cannot hold zstd layers: use format=oci or compression=gzip".into(),
        ));
    }
    let max_workers = match uri.get("max_workers") {
        Some(n) => parse_workers(n)?,
        None => settings.parallel,
    };
    // The source's repository, when it is on this registry, may hold every
    // blob: mount from it rather than upload.
    let mount_from = push
        .source
        .as_ref()
        .filter(|s| s.registry_host() == reference.registry_host() && s.path != reference.path)
        .map(|s| vec![s.path.clone()])
        .unwrap_or_default();
    let options = crate::sink::registry::RegistrySinkOptions {
        compression,
        format,
        max_workers,
        exact: push.exact,
        mount_from,
        by_digest: push.by_digest,
        temp_dir: push.temp_dir.clone(),
        verify: push.verify,
        layer_cache: push.layer_cache.clone(),
        ledger: None,
        annotations: Default::default(),
        destination_digest: None,
    };
    Ok(AnySink::Async(Box::new(
        crate::sink::registry::RegistrySink::new(repo, reference, options),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let u = Uri::parse("registry://127.0.0.1:5000/team/app:v1?insecure=true").unwrap();
        assert_eq!(u.scheme, "registry");
        assert_eq!(u.path, "127.0.0.1:5000/team/app:v1");
        assert!(u.flag("insecure").unwrap());
        assert_eq!(Uri::parse("tar:out.tar").unwrap().path, "out.tar");
        assert_eq!(
            Uri::parse("tar:///abs/out.tar").unwrap().path,
            "/abs/out.tar"
        );
        assert_eq!(Uri::parse("tar://./x.tar").unwrap().path, "./x.tar");
        let u = Uri::parse("tar://in.tar?image=team%2Fapp:v1").unwrap();
        assert_eq!(u.get("image"), Some("team/app:v1"));
        assert!(Uri::parse("no-scheme").is_err());
        // Errors never echo what could be a password.
        for bad in ["bad scheme//u:s3cret@host/img", "u s3cret@x"] {
            let e = Uri::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("s3cret"), "{e}");
        }
        assert!(u.check_options(&[]).is_err());
        assert!(u.check_options(&["image"]).is_ok());
    }

    fn settings() -> Settings {
        Settings {
            platform: Platform::host(),
            insecure: false,
            credentials: None,
            retries: 3,
            parallel: 1,
            skip_unsafe: false,
            connect_timeout: None,
            read_timeout: None,
            registry: crate::registry::Context::new(Default::default()),
            docker_config: None,
            insecure_hosts: None,
            request_timeout: None,
            min_speed: None,
            min_speed_window: None,
            connections_per_blob: None,
            temp_dir: None,
            cancel: Default::default(),
            selection: None,
            docker_host: None,
        }
    }

    #[test]
    fn password_with_a_slash_is_never_echoed() {
        for bad in [
            "registry://u:pa/s3cret@host/img:v1",
            "registry://u:pa/s3cret@host:5000/img@sha256:0123",
            "registry://u:s3cret/x@host/img",
        ] {
            let e = registry_options(&Uri::parse(bad).unwrap(), &settings())
                .unwrap_err()
                .to_string();
            assert!(!e.contains("s3cret"), "{bad}: {e}");
            assert!(e.contains("percent-encode"), "{bad}: {e}");
        }
        let (r, o) = registry_options(
            &Uri::parse(&format!(
                "registry://u:p%2Fw@host.example:5000/img@sha256:{}",
                "0".repeat(64)
            ))
            .unwrap(),
            &settings(),
        )
        .map(|(r, o)| (r.path.clone(), o))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r, "img");
        assert_eq!(o.credentials.unwrap().password, "p/w");
    }

    #[test]
    fn insecure_host_allows_but_never_chooses_plain_http() {
        let mut s = settings();
        let mut h = crate::registry::transport::InsecureHosts::default();
        h.add("reg.example").unwrap();
        s.insecure_hosts = Some(h);
        let options =
            |uri: &str, s: &Settings| registry_options(&Uri::parse(uri).unwrap(), s).unwrap().1;
        let o = options("registry://reg.example:5000/a:b", &s);
        assert!(!o.insecure);
        assert!(o.insecure_hosts.allows("reg.example", Some(5001)));
        assert!(!o.insecure_hosts.allows("other.example", Some(80)));
        assert!(options("registry://reg.example/a:b?insecure=true", &s).insecure);
        s.insecure = true;
        let o = options("registry://other.example/a:b", &s);
        assert!(o.insecure && o.insecure_hosts.allows_any());
    }

    #[test]
    fn layout_tags() {
        let (p, t) = split_layout_tag("out/layout:v1").unwrap();
        assert_eq!(
            (p.to_str().unwrap(), t.as_deref()),
            ("out/layout", Some("v1"))
        );
        let (p, t) = split_layout_tag("/abs/layout").unwrap();
        assert_eq!((p.to_str().unwrap(), t), ("/abs/layout", None));
        let (p, t) = split_layout_tag("dir:x/layout").unwrap();
        assert_eq!((p.to_str().unwrap(), t), ("dir:x/layout", None));
        assert!(split_layout_tag(":v1").is_err());
    }

    #[test]
    fn userinfo() {
        let (c, rest) = split_userinfo("me:p%40ss@host:5000/a/b@sha256:00");
        let c = c.unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("me", "p@ss"));
        assert_eq!(rest, "host:5000/a/b@sha256:00");
        let (c, rest) = split_userinfo("host/a/b@sha256:00");
        assert!(c.is_none());
        assert_eq!(rest, "host/a/b@sha256:00");
    }

    #[test]
    fn registry_destination_options() {
        let open = |u: &str| {
            open_any_sink(
                &Uri::parse(u).unwrap(),
                &settings(),
                &PushSettings::default(),
            )
        };
        let ok = "registry://h:5000/a/b:v1?compression=zstd&format=oci&max_workers=2&insecure=true";
        assert!(matches!(open(ok), Ok(AnySink::Async(_))));
        for bad in [
            "registry://h/a:v1?compression=lz4",
            "registry://h/a:v1?format=v1",
            "registry://h/a:v1?max_workers=0",
            "registry://h/a:v1?tag=x",
            "registry://h/a:v1?compression=zstd&format=docker",
        ] {
            assert!(matches!(open(bad), Err(Error::Usage(_))), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let tar = format!("tar://{}", dir.path().join("x.tar").display());
        assert!(matches!(open(&tar), Ok(AnySink::Blocking(_))));
        assert!(matches!(
            open_sink(&Uri::parse("registry://h/a:v1").unwrap(), &settings()),
            Err(Error::Usage(_))
        ));
    }
}
