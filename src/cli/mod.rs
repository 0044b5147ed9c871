//! Command-line interface: clap definitions, the legacy command aliases,
//! and the progress display.

mod copy;
mod engine_push;
mod env;
pub mod mirror;
mod output;
mod progress;
pub mod proxy;
mod quay;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use occystrap::cancel::CancelToken;
use occystrap::image::Platform;
use occystrap::pipeline::{self, Report, RunOptions};
use occystrap::reference::Reference;
use occystrap::registry::Credentials;
use occystrap::uri::{self, Settings, Uri};
use occystrap::wire::index_plan::Selection;

/// Move container images between registries, tarballs and directories without a Docker daemon.
#[derive(Parser, Debug)]
#[command(name = "occystrap", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats for commands that print results.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    /// Human-readable text.
    Text,
    /// JSON on stdout.
    Json,
}

/// Flags that apply to every command (the Python occystrap's global options).
#[derive(Args, Debug)]
pub struct Global {
    /// Debug logging for occystrap itself.
    #[arg(long, global = true)]
    pub verbose: bool,
    /// Debug logging for everything, including libraries.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Operating system to pick from a multi-platform image.
    #[arg(long, global = true, default_value = "linux", value_name = "OS")]
    pub os: String,
    /// CPU architecture to pick (default: this machine's).
    #[arg(long, global = true, value_name = "ARCH")]
    pub architecture: Option<String>,
    /// CPU variant to pick (e.g. v7, v8).
    #[arg(long, global = true, value_name = "VARIANT")]
    pub variant: Option<String>,
    /// Registry user name.
    #[arg(long, global = true, env = "OCCYSTRAP_USERNAME", value_name = "USER")]
    pub username: Option<String>,
    /// Registry password or token.
    #[arg(
        long,
        global = true,
        env = "OCCYSTRAP_PASSWORD",
        hide_env_values = true,
        value_name = "PASS"
    )]
    pub password: Option<String>,
    /// User name for a registry:// destination (default: --username).
    #[arg(
        long,
        global = true,
        env = "OCCYSTRAP_DEST_USERNAME",
        value_name = "USER"
    )]
    pub dest_username: Option<String>,
    /// Password or token for a registry:// destination.
    #[arg(
        long,
        global = true,
        env = "OCCYSTRAP_DEST_PASSWORD",
        hide_env_values = true,
        value_name = "PASS"
    )]
    pub dest_password: Option<String>,
    /// Compression for layers pushed to a registry that exist only as a tar
    /// (docker-save members, rewritten layers); the URI's ?compression= wins.
    #[arg(long, global = true, env = "OCCYSTRAP_COMPRESSION", value_name = "ALG",
          value_parser = ["gzip", "zstd"])]
    pub compression: Option<String>,
    /// After pushing to a registry, read back what was written (the
    /// manifest, a HEAD of every blob) and fail if anything is missing.
    #[arg(long, global = true)]
    pub verify: bool,
    /// Talk to registries over plain HTTP, and allow plain HTTP to any
    /// token realm or redirect target they name.
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Allow a token realm or redirect on HOST[:PORT] to be used over plain
    /// HTTP, credentials included (repeatable or comma-separated; without
    /// a port, any port; env OCCYSTRAP_INSECURE_HOSTS). Registries still
    /// need --insecure or ?insecure=true for plain HTTP.
    #[arg(long = "insecure-host", global = true, value_name = "HOST[:PORT]",
          value_delimiter = ',', value_parser = insecure_host)]
    pub insecure_hosts: Vec<String>,
    /// Layers downloaded at once.
    #[arg(short = 'j', long = "parallel", global = true, env = "OCCYSTRAP_PARALLEL", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64), value_name = "N")]
    pub parallel: u16,
    /// Images copied at once: the platforms of an index with
    /// --all-platforms or --platforms (default 1), the images of `mirror`
    /// (default 4); each still fetches -j layers at once.
    #[arg(short = 'J', long = "image-parallel", global = true, env = "OCCYSTRAP_IMAGE_PARALLEL",
          value_parser = clap::value_parser!(u16).range(1..=32), value_name = "N")]
    pub image_parallel: Option<u16>,
    /// Directory for temporary files (default: the system temp dir).
    #[arg(long, global = true, env = "OCCYSTRAP_TEMP_DIR", value_name = "PATH")]
    pub temp_dir: Option<PathBuf>,
    /// Times a failed request is retried.
    #[arg(long, global = true, default_value_t = 3, value_name = "N")]
    pub retries: u32,
    /// Seconds to wait for a registry connection (default 30; env
    /// OCCYSTRAP_CONNECT_TIMEOUT).
    #[arg(long, global = true, value_name = "SECS", value_parser = positive_seconds)]
    pub connect_timeout: Option<f64>,
    /// Seconds a registry response may stall before the request is retried
    /// (default 60; env OCCYSTRAP_READ_TIMEOUT).
    #[arg(long, global = true, value_name = "SECS", value_parser = positive_seconds)]
    pub read_timeout: Option<f64>,
    /// At most R registry requests per second across all downloads (env
    /// OCCYSTRAP_RATE_LIMIT).
    #[arg(long, global = true, value_name = "R", value_parser = positive_seconds)]
    pub rate_limit: Option<f64>,
    /// Seconds a manifest, config, token or error response may take in all,
    /// and a blob response to start, per attempt (default 60; env
    /// OCCYSTRAP_REQUEST_TIMEOUT).
    #[arg(long, global = true, value_name = "SECS", value_parser = positive_seconds)]
    pub request_timeout: Option<f64>,
    /// Slowest blob download in bytes a second (k, M: KiB, MiB) kept up over
    /// --min-speed-window before the connection is dropped and the download
    /// resumed on a new one; 0 turns it off (default 1k; env
    /// OCCYSTRAP_MIN_SPEED).
    #[arg(long, global = true, value_name = "BYTES", value_parser = byte_rate)]
    pub min_speed: Option<u64>,
    /// Seconds over which --min-speed is judged (default 30; env
    /// OCCYSTRAP_MIN_SPEED_WINDOW).
    #[arg(long, global = true, value_name = "SECS", value_parser = positive_seconds)]
    pub min_speed_window: Option<f64>,
    /// Connections one blob download may use, 1 to 16: a large blob that
    /// the network holds back is fetched in parts at once, the later parts
    /// spooled in --temp-dir; 1 turns it off (default 4; env
    /// OCCYSTRAP_CONNECTIONS_PER_BLOB).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=16))]
    pub connections_per_blob: Option<u8>,
    /// Skip layer entries that cannot be extracted safely (paths escaping the
    /// target, links out of it) instead of failing; they are listed after
    /// the summary.
    #[arg(long, global = true)]
    pub skip_unsafe: bool,
    /// Copy every platform of an index, then the index itself, its digest
    /// kept when nothing changed (registry:// destinations).
    #[arg(long, global = true, conflicts_with = "platforms")]
    pub all_platforms: bool,
    /// Copy only these platforms of an index (os/arch[/variant],
    /// comma-separated), and a new index of just them (registry://
    /// destinations).
    #[arg(long, global = true, value_name = "LIST", value_parser = platform_list)]
    pub platforms: Option<Selection>,
    /// Layer cache file for registry:// destinations: what each layer
    /// became under the rewriting filters and the compression, so that a
    /// later run skips the rewrite and the upload when the destination
    /// still has the result. Created if missing; shared safely by runs.
    #[arg(
        long,
        global = true,
        env = "OCCYSTRAP_LAYER_CACHE",
        value_name = "FILE"
    )]
    pub layer_cache: Option<PathBuf>,
    /// Output format for commands that print results.
    #[arg(short = 'O', long = "output-format", global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output_format: OutputFormat,
}

/// REGISTRY IMAGE TAG, as the original commands take an image.
#[derive(Args, Debug)]
pub struct RegistryImage {
    /// Registry host (registry-1.docker.io, 127.0.0.1:5000).
    registry: String,
    /// Image path (library/busybox).
    image: String,
    /// Tag or digest.
    tag: String,
}

/// An image in a container engine, as the original `docker-*` commands
/// name it: IMAGE TAG and the engine's socket.
#[derive(Args, Debug)]
pub struct EngineImage {
    /// Image name as the engine has it (myimage, quay.io/team/app).
    image: String,
    /// Tag.
    tag: String,
    /// The engine's socket (default: $DOCKER_HOST, else
    /// /var/run/docker.sock; Podman: /run/podman/podman.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<String>,
}

/// The original commands' layer-store flags (`dir://` options).
#[derive(Args, Debug)]
pub struct StoreFlags {
    /// One manifest file per image and tag, so one store can hold several
    /// images (dir:// option unique_names=true).
    #[arg(long)]
    use_unique_names: bool,
    /// Also write the merged root filesystem (dir:// option expand=true).
    #[arg(long)]
    expand: bool,
}

/// How search matches and prints.
#[derive(Args, Debug)]
pub struct SearchFlags {
    /// Treat PATTERN as a regular expression instead of a glob.
    #[arg(long)]
    regex: bool,
    /// Print only `image:tag:layer-digest:path` lines, one per match.
    #[arg(long)]
    script_friendly: bool,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Read an image from SOURCE and write it to DEST.
    ///
    /// Sources: registry://[USER:PASS@]HOST/IMAGE[:TAG][@DIGEST] (options: insecure, os, arch,
    /// variant, max_workers), tar://FILE (option: image=NAME:TAG), dir://PATH (a layer store;
    /// options: image=NAME, tag=TAG), oci-layout://PATH[:TAG] (an OCI image layout),
    /// docker://IMAGE[:TAG] (a Docker or Podman engine; option: socket=PATH, default
    /// $DOCKER_HOST, else /var/run/docker.sock), dockerpush://IMAGE[:TAG] (the engine pushes
    /// the image into a registry occystrap runs on loopback; option: socket=PATH),
    /// quay://[HOST/]ORG[/GLOB[:TAG]] (many images, through quay's API).
    /// Destinations: tar://FILE (a docker-loadable tarball; option: layers=compressed to store
    /// each layer's blob as the source serves it, not inflated), dir://PATH (a layer store shared
    /// between images; options: unique_names=true for one manifest per image, expand=true to
    /// also write the merged root filesystem to PATH/manifest[-NAME-TAG]/), oci://PATH (an OCI
    /// runtime bundle for runc; option: readonly=false), mounts://PATH (one overlayfs layer
    /// directory per layer; option: mount=true), oci-layout://PATH[:TAG] (an OCI image layout),
    /// registry://HOST/IMAGE[:TAG] (a push), docker://IMAGE[:TAG] (a load into an engine;
    /// option: socket=PATH).
    Process {
        /// Where the image comes from.
        source: String,
        /// Where it goes.
        dest: String,
        /// A filter to apply (repeatable).
        #[arg(short = 'f', long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Fetch an image from a registry into a docker-loadable tarball
    /// (same as `process registry://REGISTRY/IMAGE:TAG tar://FILE`).
    FetchToTarfile {
        #[command(flatten)]
        from: RegistryImage,
        /// Output tarball.
        file: PathBuf,
    },
    /// Fetch an image from a registry into a layer store directory
    /// (same as `process registry://REGISTRY/IMAGE:TAG dir://DIR`).
    FetchToExtracted {
        #[command(flatten)]
        store: StoreFlags,
        #[command(flatten)]
        from: RegistryImage,
        /// Output directory.
        dir: PathBuf,
    },
    /// Extract a docker-save tarball into a layer store directory
    /// (same as `process tar://FILE dir://DIR`).
    TarfileToExtracted {
        #[command(flatten)]
        store: StoreFlags,
        /// Input tarball.
        file: PathBuf,
        /// Output directory.
        dir: PathBuf,
    },
    /// Fetch an image from a registry into an OCI runtime bundle
    /// (same as `process registry://REGISTRY/IMAGE:TAG oci://DIR`).
    FetchToOci {
        #[command(flatten)]
        from: RegistryImage,
        /// Output bundle directory.
        dir: PathBuf,
    },
    /// Fetch an image from a registry into overlayfs layer directories
    /// (same as `process registry://REGISTRY/IMAGE:TAG mounts://DIR`).
    FetchToMounts {
        #[command(flatten)]
        from: RegistryImage,
        /// Output directory.
        dir: PathBuf,
    },
    /// Search every layer of an image for member paths matching PATTERN.
    ///
    /// A glob (`*`, `?`, `[...]`, `{a,b}`; `*` also matches `/`) matches the
    /// whole path or its last component, so `*bash` finds `bin/bash`; paths
    /// have no leading `./` or `/`. With --regex, PATTERN is a regular
    /// expression found anywhere in the path. Every layer is searched as it
    /// is: whiteouts are reported as deletions of the path they delete, and
    /// entries a later layer deletes are still listed. Nothing is extracted.
    /// With -O json: one JSON object per match, one per line.
    Search {
        #[command(flatten)]
        how: SearchFlags,
        /// The image (same URIs as `process`).
        source: String,
        /// Glob, or regular expression with --regex.
        #[arg(allow_hyphen_values = true)]
        pattern: String,
    },
    /// Search a registry image's layers for paths matching PATTERN
    /// (same as `search registry://REGISTRY/IMAGE:TAG PATTERN`).
    SearchLayers {
        #[command(flatten)]
        how: SearchFlags,
        #[command(flatten)]
        from: RegistryImage,
        /// Glob, or regular expression with --regex.
        #[arg(allow_hyphen_values = true)]
        pattern: String,
    },
    /// Search a docker-save tarball's layers for paths matching PATTERN
    /// (same as `search tar://FILE PATTERN`).
    SearchLayersTarfile {
        #[command(flatten)]
        how: SearchFlags,
        /// Input tarball.
        file: PathBuf,
        /// Glob, or regular expression with --regex.
        #[arg(allow_hyphen_values = true)]
        pattern: String,
    },
    /// Show what an image's manifest and config say, without downloading
    /// any layer: digests, platform (and the platforms an index offers),
    /// layers, history, environment, entrypoint, labels. -O json for one
    /// JSON document.
    Info {
        /// The image (same URIs as `process`).
        source: String,
    },
    /// Check that an image is well formed; exit 1 if anything is wrong.
    ///
    /// Checks manifest and config consistency, then fetches every layer
    /// (verifying its digest and diff_id) and checks its tar: whiteouts,
    /// paths escaping the root, setuid world-writable files, device nodes,
    /// negative times. Findings are errors, warnings or info; -O json for
    /// one JSON document.
    Check {
        /// Check manifest and config only; download no layer.
        #[arg(long)]
        fast: bool,
        /// The image (same URIs as `process`).
        source: String,
    },
    /// Run a registry server that filters every image pushed to it and
    /// pushes the result downstream; with --upstream, also a pull-through
    /// cache that keeps its copies downstream.
    Proxy(Box<proxy::ProxyArgs>),
    /// Keep many repositories of one registry in step with another, as a
    /// YAML config says: copies what is missing or changed, skips the rest
    /// with one HEAD on each side per tag.
    Mirror(mirror::MirrorArgs),
    /// Save an image from a Docker or Podman engine as a docker-loadable
    /// tarball (same as `process docker://IMAGE:TAG tar://FILE`).
    DockerToTarfile {
        #[command(flatten)]
        from: EngineImage,
        /// Output tarball.
        file: PathBuf,
    },
    /// Save an image from a Docker or Podman engine into a layer store
    /// directory (same as `process docker://IMAGE:TAG dir://DIR`).
    DockerToExtracted {
        #[command(flatten)]
        store: StoreFlags,
        #[command(flatten)]
        from: EngineImage,
        /// Output directory.
        dir: PathBuf,
    },
    /// Save an image from a Docker or Podman engine into an OCI runtime
    /// bundle (same as `process docker://IMAGE:TAG oci://DIR`).
    DockerToOci {
        #[command(flatten)]
        from: EngineImage,
        /// Output bundle directory.
        dir: PathBuf,
    },
    /// Search an engine image's layers for paths matching PATTERN
    /// (same as `search docker://IMAGE:TAG PATTERN`).
    SearchLayersDocker {
        #[command(flatten)]
        how: SearchFlags,
        #[command(flatten)]
        from: EngineImage,
        /// Glob, or regular expression with --regex.
        #[arg(allow_hyphen_values = true)]
        pattern: String,
    },
    /// Write an image from a layer store directory as a docker-loadable
    /// tarball (same as `process "dir://DIR?image=IMAGE&tag=TAG" tar://FILE`).
    RecreateImage {
        /// The layer store.
        dir: PathBuf,
        /// Image name as the store's catalog has it (team/app).
        image: String,
        /// Tag.
        tag: String,
        /// Output tarball.
        file: PathBuf,
    },
}

/// What a command line asks for, once the original commands are mapped
/// onto the four general ones.
enum Job<'a> {
    Process {
        src: Uri,
        dst: Uri,
        filters: &'a [String],
    },
    Search {
        src: Uri,
        how: &'a SearchFlags,
        pattern: &'a str,
    },
    Info(Uri),
    Check(Uri, bool),
    Proxy(&'a proxy::ProxyArgs),
    Mirror(&'a mirror::MirrorArgs),
}

impl Command {
    /// The general command this one stands for: each original command is
    /// one row here.
    fn job(&self) -> Result<Job<'_>> {
        let copy = |src, dst| Job::Process {
            src,
            dst,
            filters: &[],
        };
        Ok(match self {
            Command::Process {
                source,
                dest,
                filters,
            } => Job::Process {
                src: Uri::parse(source)?,
                dst: Uri::parse(dest)?,
                filters,
            },
            Command::FetchToTarfile { from, file } => copy(from.uri()?, path_uri("tar", file)),
            Command::FetchToExtracted { store, from, dir } => copy(from.uri()?, store.uri(dir)),
            Command::TarfileToExtracted { store, file, dir } => {
                copy(path_uri("tar", file), store.uri(dir))
            }
            Command::FetchToOci { from, dir } => copy(from.uri()?, path_uri("oci", dir)),
            Command::FetchToMounts { from, dir } => copy(from.uri()?, path_uri("mounts", dir)),
            Command::DockerToTarfile { from, file } => copy(from.uri(), path_uri("tar", file)),
            Command::DockerToExtracted { store, from, dir } => copy(from.uri(), store.uri(dir)),
            Command::DockerToOci { from, dir } => copy(from.uri(), path_uri("oci", dir)),
            Command::SearchLayersDocker { how, from, pattern } => Job::Search {
                src: from.uri(),
                how,
                pattern,
            },
            Command::RecreateImage {
                dir,
                image,
                tag,
                file,
            } => {
                let mut src = path_uri("dir", dir);
                src.query = vec![("image".into(), image.clone()), ("tag".into(), tag.clone())];
                copy(src, path_uri("tar", file))
            }
            Command::Search {
                how,
                source,
                pattern,
            } => Job::Search {
                src: Uri::parse(source)?,
                how,
                pattern,
            },
            Command::SearchLayers { how, from, pattern } => Job::Search {
                src: from.uri()?,
                how,
                pattern,
            },
            Command::SearchLayersTarfile { how, file, pattern } => Job::Search {
                src: path_uri("tar", file),
                how,
                pattern,
            },
            Command::Info { source } => Job::Info(Uri::parse(source)?),
            Command::Check { fast, source } => Job::Check(Uri::parse(source)?, *fast),
            Command::Proxy(args) => Job::Proxy(args),
            Command::Mirror(args) => Job::Mirror(args),
        })
    }
}

impl Global {
    /// What a registry:// destination needs from the flags and the run.
    fn push_settings(
        &self,
        src: &Uri,
        settings: &Settings,
        filters: &[Box<dyn occystrap::filter::Filter>],
    ) -> occystrap::Result<uri::PushSettings> {
        let credentials = self.dest_username.as_ref().map(|u| Credentials {
            username: u.clone(),
            password: self.dest_password.clone().unwrap_or_default(),
        });
        let compression = match self.compression.as_deref() {
            Some("zstd") => occystrap::compress::Encoding::Zstd,
            _ => occystrap::compress::Encoding::Gzip,
        };
        let source = match src.scheme.as_str() {
            "registry" => Some(uri::registry_options(src, settings)?.0),
            _ => None,
        };
        Ok(uri::PushSettings {
            credentials,
            compression,
            exact: !filters.iter().any(|f| f.rewrites()),
            source,
            temp_dir: self.temp_dir.clone(),
            verify: self.verify,
            layer_cache: None,
            by_digest: false,
        })
    }

    fn settings(&self, cancel: CancelToken) -> Settings {
        let mut platform = Platform::host();
        platform.os = self.os.clone();
        if let Some(a) = &self.architecture {
            platform.architecture = a.clone();
        }
        platform.variant = self.variant.clone().filter(|v| !v.is_empty());
        let credentials = match (&self.username, &self.password) {
            (Some(u), p) => Some(Credentials {
                username: u.clone(),
                password: p.clone().unwrap_or_default(),
            }),
            _ => None,
        };
        // Flags first, then the OCCYSTRAP_* variables, then the client's
        // defaults (a `None` here).
        let secs = |flag: Option<f64>, var: &str| {
            flag.map(std::time::Duration::from_secs_f64)
                .or_else(|| env::seconds(var))
        };
        let rate_limit = self.rate_limit.or_else(|| env::number(env::ENV_RATE_LIMIT));
        Settings {
            platform,
            insecure: self.insecure,
            credentials,
            retries: self.retries,
            parallel: self.parallel as usize,
            skip_unsafe: self.skip_unsafe,
            connect_timeout: secs(self.connect_timeout, env::ENV_CONNECT_TIMEOUT),
            read_timeout: secs(self.read_timeout, env::ENV_READ_TIMEOUT),
            registry: occystrap::registry::Context::new(occystrap::registry::ContextOptions {
                rate_limit,
                ..Default::default()
            }),
            docker_config: env::docker_config(),
            insecure_hosts: if self.insecure_hosts.is_empty() {
                env::insecure_hosts()
            } else {
                let mut h = occystrap::registry::transport::InsecureHosts::default();
                for e in &self.insecure_hosts {
                    // Checked by the value parser.
                    let _ = h.add(e);
                }
                Some(h)
            },
            request_timeout: secs(self.request_timeout, env::ENV_REQUEST_TIMEOUT),
            min_speed: self
                .min_speed
                .or_else(|| env::byte_rate(env::ENV_MIN_SPEED)),
            min_speed_window: secs(self.min_speed_window, env::ENV_MIN_SPEED_WINDOW),
            connections_per_blob: self.connections_per_blob.map(usize::from).or_else(|| {
                env::number(env::ENV_CONNECTIONS_PER_BLOB)
                    .filter(|n| n.fract() == 0.0 && *n <= 16.0)
                    .map(|n| n as usize)
            }),
            temp_dir: self.temp_dir.clone(),
            cancel,
            selection: match &self.platforms {
                Some(list) => Some(list.clone()),
                None => self.all_platforms.then_some(Selection::All),
            },
            docker_host: std::env::var("DOCKER_HOST").ok(),
        }
    }
}

/// A `--platforms` list: `linux/amd64,linux/arm64/v8`.
fn platform_list(s: &str) -> std::result::Result<Selection, String> {
    Selection::parse_platforms(s).map_err(|e| e.to_string())
}

/// Refuses `--all-platforms`/`--platforms` where the run cannot honour
/// them: for now only a copy to a registry:// destination can (`dst` is
/// the run's destination, `None` for commands without one).
fn check_selection(settings: &Settings, dst: Option<&Uri>) -> occystrap::Result<()> {
    let Some(selection) = &settings.selection else {
        return Ok(());
    };
    if dst.is_some_and(|d| d.scheme == "registry") {
        return Ok(());
    }
    let flag = match selection {
        Selection::All => "--all-platforms",
        Selection::Platforms(_) => "--platforms",
    };
    Err(occystrap::Error::Usage(format!(
        "{flag} needs a registry:// destination"
    )))
}

/// A `--insecure-host` entry: HOST or HOST:PORT.
fn insecure_host(s: &str) -> std::result::Result<String, String> {
    occystrap::registry::transport::InsecureHosts::default().add(s)?;
    Ok(s.trim().to_string())
}

/// A byte rate: `2048`, `64k`, `1M`.
fn byte_rate(s: &str) -> std::result::Result<u64, String> {
    occystrap::registry::parse_byte_rate(s)
        .ok_or_else(|| format!("{s:?} is not a byte rate such as 1024, 64k or 1M"))
}

/// A positive, finite number (at most a day's worth of seconds).
fn positive_seconds(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

/// Runs the parsed command line; returns the process exit code. Blocking
/// work stops once `cancel` is cancelled.
pub async fn run(cli: Cli, cancel: CancelToken) -> Result<i32> {
    let settings = cli.global.settings(cancel);
    let global = &cli.global;
    let job = cli.command.job()?;
    let dst = match &job {
        Job::Process { dst, .. } => Some(dst),
        _ => None,
    };
    if !matches!(job, Job::Proxy(_) | Job::Mirror(_)) {
        check_selection(&settings, dst)?;
    }
    match job {
        Job::Process { src, dst, filters } => {
            if src.scheme == "quay" {
                return quay::process(global, &settings, &src, &dst, filters).await;
            }
            if let Some(selection) = &settings.selection
                && dst.scheme == "registry"
                && let Some(code) =
                    copy::process_index(global, &settings, &src, &dst, filters, selection).await?
            {
                return Ok(code);
            }
            process_filtered(global, &settings, &src, &dst, filters).await
        }
        Job::Search { src, how, pattern } => {
            let style = output::SearchStyle::pick(how.script_friendly, global.output_format);
            output::search(global, &settings, &src, pattern, how.regex, style).await
        }
        Job::Info(src) => output::info(global, &settings, &src).await,
        Job::Check(src, fast) => output::check(global, &settings, &src, fast).await,
        Job::Proxy(args) => proxy::run(global, &settings, args).await,
        Job::Mirror(args) => mirror::run(global, &settings, args).await,
    }
}

impl RegistryImage {
    /// The `registry://` URI that REGISTRY IMAGE TAG stand for.
    fn uri(&self) -> Result<Uri> {
        let reference = Reference::from_parts(&self.registry, &self.image, &self.tag)?;
        Ok(Uri {
            scheme: "registry".into(),
            path: reference.to_string(),
            query: vec![],
        })
    }
}

impl EngineImage {
    /// The `docker://` URI that IMAGE TAG and --socket stand for.
    fn uri(&self) -> Uri {
        let mut uri = Uri {
            scheme: "docker".into(),
            path: format!("{}:{}", self.image, self.tag),
            query: vec![],
        };
        if let Some(s) = &self.socket {
            uri.query.push(("socket".into(), s.clone()));
        }
        uri
    }
}

/// A `scheme://PATH` URI without options.
fn path_uri(scheme: &str, path: &std::path::Path) -> Uri {
    Uri {
        scheme: scheme.into(),
        path: path.to_string_lossy().into_owned(),
        query: vec![],
    }
}

impl StoreFlags {
    /// The `dir://` URI these flags and DIR stand for.
    fn uri(&self, dir: &std::path::Path) -> Uri {
        let mut uri = path_uri("dir", dir);
        if self.use_unique_names {
            uri.query.push(("unique_names".into(), "true".into()));
        }
        if self.expand {
            uri.query.push(("expand".into(), "true".into()));
        }
        uri
    }
}

async fn process_filtered(
    global: &Global,
    settings: &Settings,
    src: &Uri,
    dst: &Uri,
    filter_args: &[String],
) -> Result<i32> {
    let specs = filter_args
        .iter()
        .map(|f| occystrap::filter::FilterSpec::parse(f))
        .collect::<occystrap::Result<Vec<_>>>()?;
    let filters = specs
        .iter()
        .map(occystrap::filter::build)
        .collect::<occystrap::Result<Vec<_>>>()?;
    let (source, parallel) = engine_push::open_source(src, settings)?;
    let mut push = global.push_settings(src, settings, &filters)?;
    push.layer_cache = layer_cache(global, settings, dst, &specs, &filters)?;
    let sink = uri::open_any_sink(dst, settings, &push)?;
    let reporter = Arc::new(progress::Bars::new());
    let options = RunOptions {
        parallel,
        temp_dir: global.temp_dir.clone(),
        reporter: reporter.clone(),
        cancel: settings.cancel.clone(),
    };
    let report = match sink {
        uri::AnySink::Blocking(sink) => {
            pipeline::run_filtered(source.clone(), filters, sink, options).await
        }
        uri::AnySink::Async(sink) => {
            pipeline::run_async(source.clone(), filters, sink, options).await
        }
    }
    .with_context(|| source.describe());
    reporter.clear();
    let report = report?;
    // Image names, output paths and skipped entry names: escaped.
    let mut err = occystrap::escape::TextOut::new(std::io::stderr().lock());
    let _ = writeln!(err, "{}", summary(&report));
    for note in &report.notes {
        let _ = writeln!(err, "note: {note}");
    }
    Ok(0)
}

/// The layer cache a registry:// destination uses, opened (and checked)
/// before any work; other destinations take none.
fn layer_cache(
    global: &Global,
    settings: &Settings,
    dst: &Uri,
    specs: &[occystrap::filter::FilterSpec],
    filters: &[Box<dyn occystrap::filter::Filter>],
) -> occystrap::Result<Option<occystrap::sink::registry::LayerCacheUse>> {
    let Some(path) = &global.layer_cache else {
        return Ok(None);
    };
    if dst.scheme != "registry" {
        return Ok(None);
    }
    let cache =
        occystrap::layer_cache::LayerCache::open(path)?.with_cancel(settings.cancel.clone());
    let specs = specs
        .iter()
        .zip(filters)
        .filter(|(_, f)| f.rewrites())
        .map(|(s, _)| s.clone())
        .collect();
    Ok(Some(occystrap::sink::registry::LayerCacheUse {
        cache: Arc::new(cache),
        specs,
    }))
}

fn summary(r: &Report) -> String {
    let mut s = format!(
        "{} -> {}: {} layers ({} fetched",
        r.image, r.output, r.layers, r.fetched
    );
    if r.skipped > 0 {
        s.push_str(&format!(", {} already present", r.skipped));
    }
    s.push_str(&format!(
        "), {} fetched, {} written in {:.2}s",
        progress::human_bytes(r.bytes_fetched),
        progress::human_bytes(r.bytes_written),
        r.elapsed.as_secs_f64()
    ));
    s
}
