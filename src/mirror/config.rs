//! The `occystrap mirror` config file: YAML, parsed into typed structs and
//! checked whole before any network request.
//!
//! ```yaml
//! defaults:
//!   platforms: [linux/amd64, linux/arm64]   # or: all (the default)
//!   filters: [normalize-timestamps]         # as with -f; default none
//!   compression: gzip                       # or zstd; default gzip
//!   referrers: true                         # signatures, SBOMs, attestations; default false
//! mirrors:
//!   - from: registry://SRC/library          # a registry plus a namespace
//!     to: registry://DST/hub                # library/debian -> hub/debian
//!     repositories: [debian, "py*"]         # names or globs below the namespace
//!     tags:
//!       include: ['^bookworm', latest]      # regexes, any may match; default every tag
//!       exclude: ['-rc']                    # regexes, none may match
//!       semver: '>=3.12'                    # tags that are versions in this range
//!       newest: 5                           # the 5 newest of what is left
//!     immutable: ['^v?[0-9]+\.[0-9]+\.[0-9]+$']   # copied once, never re-checked
//!   - from: registry://SRC/team/*           # a glob over the catalog
//!     to: registry://DST/mirror/team/{repo} # {repo}: the name below the glob's namespace
//!     prune: false                          # true: delete destination tags the source dropped
//!   - from: registry://SRC/tools/jq         # one repository
//!     to: registry://DST/tools/jq
//! ```
//!
//! The three forms of `from`:
//! - with `repositories`: `from` is a namespace (possibly none:
//!   `registry://HOST`) and each entry a name or a glob below it; `to` is
//!   the destination namespace, or a template with `{repo}`.
//! - a glob (`*`, `?`, `[...]`, `{a,b}`; `*` stops at `/`, `**` does not):
//!   the catalog names it matches. `{repo}` is each name below the glob's
//!   leading literal components (`team/*` and `team/app` give `app`), and
//!   `to` must have it.
//! - a plain repository: that repository; `{repo}` is its last component,
//!   and `to` is the destination repository.
//!
//! Tag regexes are unanchored (write `^...$` for one exact tag). A semver
//! range (`>=3.12`, `^1.2`, `~1.4`, `>=1, <2`; a bare `1.2` means `^1.2`)
//! keeps the tags that read as versions, with an optional leading `v` and
//! missing parts taken as 0 (`3.12` is 3.12.0); a suffix after `-`
//! (`3.12-slim`, `1.0-rc1`) does not count for the range, so drop
//! pre-releases with `exclude`. `newest: N` keeps the N newest, by version
//! when every candidate tag is one, else by the image config's `created`.
//!
//! Entries may override `platforms`, `filters`, `compression` and
//! `referrers` of `defaults`. A registry is reached over HTTPS unless
//! `--insecure` is given or its URI ends in `?insecure=true`. Credentials
//! never go in this file: they come from the flags or Docker's
//! `config.json`, and a `user:pass@` in a URI is refused.
//!
//! Every error names the file, the line and the key (`mirrors[1].tags.include[0]`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::compress::Encoding;
use crate::error::{Error, Result};
use crate::wire::index_plan::{Selection, parse_platform};

/// Largest config file read, in bytes.
pub const MAX_CONFIG_FILE: usize = 4 << 20;
/// Most `mirrors` entries in one file.
pub const MAX_ENTRIES: usize = 10_000;
/// Compiled size a tag regex may take: a hostile pattern must not eat memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A checked config.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it came from (a file name), for messages.
    pub origin: String,
    /// The defaults, resolved.
    pub defaults: ImageOptions,
    /// The `mirrors` entries, in file order.
    pub entries: Vec<Entry>,
}

/// How images of an entry are copied: `defaults` with the entry's overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageOptions {
    /// Which platforms of an index (`all`: the index byte for byte).
    pub platforms: Selection,
    /// Filters as `-f` takes them, in order.
    pub filters: Vec<String>,
    /// Compression for layers a filter rewrote.
    pub compression: Encoding,
    /// Whether referrers (signatures, SBOMs, attestations) come along.
    pub referrers: bool,
}

impl Default for ImageOptions {
    /// Every platform, no filter, gzip, no referrers.
    fn default() -> Self {
        ImageOptions {
            platforms: Selection::All,
            filters: Vec::new(),
            compression: Encoding::Gzip,
            referrers: false,
        }
    }
}

/// A registry as a config names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistryRef {
    /// `host[:port]`.
    pub host: String,
    /// `?insecure=true`: plain HTTP.
    pub insecure: bool,
}

/// Which source repositories an entry takes.
#[derive(Clone, Debug)]
pub enum Repositories {
    /// `repositories:` below `namespace` (`""`: the registry's root).
    Listed {
        /// The namespace `from` names.
        namespace: String,
        /// Names below it, as written.
        names: Vec<String>,
        /// The globs among them, compiled; `None` when all are plain names
        /// (no catalog needed).
        globs: Option<globset::GlobSet>,
    },
    /// A glob in `from` over the whole catalog.
    Glob {
        /// The glob's leading literal components (`team` of `team/*`).
        namespace: String,
        /// The glob as written.
        pattern: String,
        /// Compiled.
        glob: globset::GlobMatcher,
    },
    /// `from` is one repository.
    Single {
        /// Its name.
        repository: String,
    },
}

/// Which tags of a repository an entry takes.
#[derive(Clone, Debug, Default)]
pub struct TagRules {
    /// Any may match; empty: every tag.
    pub include: Vec<regex::Regex>,
    /// None may match.
    pub exclude: Vec<regex::Regex>,
    /// Tags that read as versions in this range.
    pub semver: Option<semver::VersionReq>,
    /// The N newest of what is left.
    pub newest: Option<usize>,
}

/// One `mirrors` entry, checked.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its index in `mirrors` (0-based, as keys are written: `mirrors[0]`).
    pub index: usize,
    /// The line it starts on (1-based).
    pub line: usize,
    /// `from` as written.
    pub from: String,
    /// `to` as written.
    pub to: String,
    /// The source registry.
    pub source: RegistryRef,
    /// The source repositories.
    pub repositories: Repositories,
    /// The destination registry.
    pub destination: RegistryRef,
    /// The destination path, perhaps with `{repo}`.
    pub to_path: String,
    /// Tag selection.
    pub tags: TagRules,
    /// Tags that are copied once and never checked again.
    pub immutable: Vec<regex::Regex>,
    /// Delete destination tags the source no longer has.
    pub prune: bool,
    /// How its images are copied.
    pub options: ImageOptions,
}

impl Entry {
    /// `mirrors[N] (line L, from FROM)`, for messages about the entry.
    pub fn describe(&self) -> String {
        format!(
            "mirrors[{}] (line {}, from {})",
            self.index, self.line, self.from
        )
    }

    /// Whether choosing its repositories needs the source's catalog.
    pub fn needs_catalog(&self) -> bool {
        match &self.repositories {
            Repositories::Listed { globs, .. } => globs.is_some(),
            Repositories::Glob { .. } => true,
            Repositories::Single { .. } => false,
        }
    }

    /// Whether `tag` is one of the entry's immutable tags.
    pub fn is_immutable(&self, tag: &str) -> bool {
        self.immutable.iter().any(|r| r.is_match(tag))
    }
}

// ---- The file as serde reads it. ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    defaults: RawOptions,
    mirrors: Vec<RawEntry>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOptions {
    platforms: Option<RawPlatforms>,
    filters: Option<Vec<String>>,
    compression: Option<RawCompression>,
    referrers: Option<bool>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawCompression {
    Gzip,
    Zstd,
}

/// `all`, or a list of `os/arch[/variant]`.
#[derive(Clone)]
enum RawPlatforms {
    All,
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for RawPlatforms {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawPlatforms;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`all` or a list of platforms such as [linux/amd64, linux/arm64]")
            }
            fn visit_str<E: serde::de::Error>(
                self,
                s: &str,
            ) -> std::result::Result<Self::Value, E> {
                if s == "all" {
                    Ok(RawPlatforms::All)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(s), &self))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut list = Vec::new();
                while let Some(p) = seq.next_element::<String>()? {
                    list.push(p);
                }
                Ok(RawPlatforms::List(list))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    from: String,
    to: String,
    repositories: Option<Vec<String>>,
    #[serde(default)]
    tags: RawTags,
    #[serde(default)]
    immutable: Vec<String>,
    #[serde(default)]
    prune: bool,
    platforms: Option<RawPlatforms>,
    filters: Option<Vec<String>>,
    compression: Option<RawCompression>,
    referrers: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTags {
    include: Option<Vec<String>>,
    #[serde(default)]
    exclude: Vec<String>,
    semver: Option<String>,
    newest: Option<usize>,
}

// ---- Errors that name a line. ----

/// One step of a key path: a map key or a list index.
#[derive(Clone, Copy, Debug)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// `mirrors[1].tags.include[0]`.
fn key_name(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// The text being checked and where it came from.
struct Source<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Source<'_> {
    /// An error about the value at `path`: `ORIGIN: line L: KEY: MESSAGE`.
    fn error(&self, path: &[Seg], message: impl std::fmt::Display) -> Error {
        let at = match locate(self.text, path) {
            Some(line) => format!("line {line}: "),
            None => String::new(),
        };
        Error::Usage(format!(
            "{}: {at}{}: {message}",
            self.origin,
            key_name(path)
        ))
    }

    fn line(&self, path: &[Seg]) -> usize {
        locate(self.text, path).unwrap_or(0)
    }
}

/// The marker error [`locate`] raises at the node it looks for.
const HERE: &str = "occystrap-locate-here";

/// The line (1-based) of the value at `path` in `text`. The YAML parser
/// knows where each node is but hands no positions to what it builds, only
/// to its errors; so this walks the document again and fails on purpose at
/// the node wanted, and reads the line from the error.
fn locate(text: &str, path: &[Seg]) -> Option<usize> {
    use serde::de::DeserializeSeed;
    let de = serde_yaml_ng::Deserializer::from_str(text);
    match (Find { path }).deserialize(de) {
        // The visitor at the target accepts nothing, so the error it gets
        // is an "invalid type" that names it.
        Err(e) if e.to_string().contains(HERE) => e.location().map(|l| l.line()),
        _ => None,
    }
}

/// Walks to `path`, ignoring everything else.
struct Find<'p, 'a> {
    path: &'p [Seg<'a>],
}

impl<'de> serde::de::DeserializeSeed<'de> for Find<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        if self.path.is_empty() {
            d.deserialize_any(Here)
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Find<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("anything")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<(), A::Error> {
        let (first, rest) = self.path.split_first().expect("not empty");
        while let Some(key) = map.next_key::<serde_yaml_ng::Value>()? {
            match (first, key.as_str()) {
                (Seg::Key(want), Some(k)) if *want == k => {
                    map.next_value_seed(Find { path: rest })?;
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        let (first, rest) = self.path.split_first().expect("not empty");
        let mut i = 0;
        loop {
            let more = match first {
                Seg::Index(want) if *want == i => {
                    seq.next_element_seed(Find { path: rest })?.is_some()
                }
                _ => seq.next_element::<serde::de::IgnoredAny>()?.is_some(),
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }
    // Scalars: the path goes no further.
    fn visit_bool<E>(self, _: bool) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> std::result::Result<(), E> {
        Ok(())
    }
}

/// The target node's visitor: fails whatever it sees, so that the parser
/// attaches the node's position to the error.
struct Here;

impl serde::de::Visitor<'_> for Here {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(HERE)
    }
}

// ---- Checking. ----

impl Config {
    /// Reads and checks the config file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Config> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let mut text = String::new();
        file.take(MAX_CONFIG_FILE as u64 + 1)
            .read_to_string(&mut text)
            .map_err(|e| Error::io("reading", path, e))?;
        if text.len() > MAX_CONFIG_FILE {
            return Err(Error::Usage(format!(
                "{}: more than {MAX_CONFIG_FILE} bytes; is this a mirror config?",
                path.display()
            )));
        }
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and checks config `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let src = Source { text, origin };
        let raw: RawConfig = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(origin, &e))?;
        if raw.mirrors.is_empty() {
            return Err(src.error(&[Seg::Key("mirrors")], "lists no mirror"));
        }
        if raw.mirrors.len() > MAX_ENTRIES {
            return Err(src.error(
                &[Seg::Key("mirrors")],
                format!("more than {MAX_ENTRIES} entries"),
            ));
        }
        let defaults = options(
            &src,
            &[Seg::Key("defaults")],
            &ImageOptions::default(),
            &raw.defaults,
        )?;
        let mut entries = Vec::with_capacity(raw.mirrors.len());
        for (i, e) in raw.mirrors.iter().enumerate() {
            entries.push(entry(&src, i, e, &defaults)?);
        }
        check_destinations(&src, &entries)?;
        Ok(Config {
            origin: origin.to_string(),
            defaults,
            entries,
        })
    }
}

/// A YAML or shape error, as `ORIGIN: line L: MESSAGE`.
fn yaml_error(origin: &str, e: &serde_yaml_ng::Error) -> Error {
    let mut msg = e.to_string();
    match e.location() {
        Some(loc) => {
            // The message ends with the position; say it first, once.
            let tail = format!(" at line {} column {}", loc.line(), loc.column());
            if let Some(cut) = msg.rfind(&tail) {
                msg.truncate(cut);
            }
            Error::Usage(format!("{origin}: line {}: {msg}", loc.line()))
        }
        None => Error::Usage(format!("{origin}: {msg}")),
    }
}

/// `defaults` under `base`, or an entry's overrides of them.
fn options<'a>(
    src: &Source,
    at: &[Seg<'a>],
    base: &ImageOptions,
    raw: &RawOptions,
) -> Result<ImageOptions> {
    let mut out = base.clone();
    let path = |k: &'static str| -> Vec<Seg<'a>> {
        let mut p: Vec<Seg> = at.to_vec();
        p.push(Seg::Key(k));
        p
    };
    if let Some(p) = &raw.platforms {
        out.platforms = match p {
            RawPlatforms::All => Selection::All,
            RawPlatforms::List(list) if list.is_empty() => {
                return Err(src.error(&path("platforms"), "is empty: list platforms, or say all"));
            }
            RawPlatforms::List(list) => {
                let mut parsed = Vec::new();
                for (j, s) in list.iter().enumerate() {
                    let mut p = path("platforms");
                    p.push(Seg::Index(j));
                    let platform = parse_platform(s).map_err(|e| src.error(&p, e))?;
                    if !parsed.contains(&platform) {
                        parsed.push(platform);
                    }
                }
                Selection::Platforms(parsed)
            }
        };
    }
    if let Some(filters) = &raw.filters {
        for (j, f) in filters.iter().enumerate() {
            let mut p = path("filters");
            p.push(Seg::Index(j));
            crate::filter::FilterSpec::parse(f)
                .and_then(|spec| crate::filter::build(&spec))
                .map_err(|e| src.error(&p, e))?;
        }
        out.filters = filters.clone();
    }
    if let Some(c) = raw.compression {
        out.compression = match c {
            RawCompression::Gzip => Encoding::Gzip,
            RawCompression::Zstd => Encoding::Zstd,
        };
    }
    if let Some(r) = raw.referrers {
        out.referrers = r;
    }
    Ok(out)
}

fn entry(src: &Source, i: usize, raw: &RawEntry, defaults: &ImageOptions) -> Result<Entry> {
    let at = [Seg::Key("mirrors"), Seg::Index(i)];
    let key = |k: &'static str| [Seg::Key("mirrors"), Seg::Index(i), Seg::Key(k)];
    let (source, from_path) = registry_uri(&raw.from).map_err(|m| src.error(&key("from"), m))?;
    let (destination, to_path) = registry_uri(&raw.to).map_err(|m| src.error(&key("to"), m))?;
    if from_path.contains("{repo}") {
        return Err(src.error(
            &key("from"),
            "{repo} belongs in `to`; in `from` write a glob such as registry://SRC/team/*",
        ));
    }
    let has_repo = to_path.contains("{repo}");
    check_to_path(&to_path).map_err(|m| src.error(&key("to"), m))?;
    let repositories = if is_glob(&from_path) {
        if raw.repositories.is_some() {
            return Err(src.error(
                &key("repositories"),
                "cannot go with a glob in `from`: give a namespace in `from`, or drop `repositories`",
            ));
        }
        if !has_repo {
            return Err(src.error(
                &key("to"),
                format!(
                    "`from` is a glob ({}), so `to` needs {{repo}} to say where each repository \
                     goes, such as registry://{}/mirror/{{repo}}",
                    raw.from, destination.host
                ),
            ));
        }
        let namespace = literal_prefix(&from_path);
        let glob = compile_glob(&from_path).map_err(|m| src.error(&key("from"), m))?;
        Repositories::Glob {
            namespace,
            pattern: from_path.clone(),
            glob: glob.compile_matcher(),
        }
    } else if let Some(names) = &raw.repositories {
        listed(src, i, &from_path, names)?
    } else {
        if from_path.is_empty() {
            return Err(src.error(
                &key("from"),
                "names no repository: add one (registry://HOST/REPO), a glob \
                 (registry://HOST/team/*), or `repositories`",
            ));
        }
        if !crate::registry::is_repository_name(&from_path) {
            return Err(src.error(&key("from"), "is not a repository name"));
        }
        Repositories::Single {
            repository: from_path.clone(),
        }
    };
    let tags = tag_rules(src, i, &raw.tags)?;
    let mut immutable = Vec::new();
    for (j, r) in raw.immutable.iter().enumerate() {
        let p = [
            Seg::Key("mirrors"),
            Seg::Index(i),
            Seg::Key("immutable"),
            Seg::Index(j),
        ];
        immutable.push(compile_regex(r).map_err(|m| src.error(&p, m))?);
    }
    let overrides = RawOptions {
        platforms: raw.platforms.clone(),
        filters: raw.filters.clone(),
        compression: raw.compression,
        referrers: raw.referrers,
    };
    let options = options(src, &at, defaults, &overrides)?;
    Ok(Entry {
        index: i,
        line: src.line(&at),
        from: raw.from.clone(),
        to: raw.to.clone(),
        source,
        repositories,
        destination,
        to_path,
        tags,
        immutable,
        prune: raw.prune,
        options,
    })
}

/// A `from` namespace with a `repositories` list of names and globs.
fn listed(src: &Source, i: usize, from_path: &str, names: &[String]) -> Result<Repositories> {
    let key = |k: &'static str| [Seg::Key("mirrors"), Seg::Index(i), Seg::Key(k)];
    if !from_path.is_empty() && !crate::registry::is_repository_name(from_path) {
        return Err(src.error(&key("from"), "is not a registry namespace"));
    }
    if names.is_empty() {
        return Err(src.error(
            &key("repositories"),
            "is empty: list names or globs, or leave it out",
        ));
    }
    let mut set = globset::GlobSetBuilder::new();
    let mut any_glob = false;
    for (j, name) in names.iter().enumerate() {
        let p = [
            Seg::Key("mirrors"),
            Seg::Index(i),
            Seg::Key("repositories"),
            Seg::Index(j),
        ];
        if is_glob(name) {
            set.add(compile_glob(name).map_err(|m| src.error(&p, m))?);
            any_glob = true;
        } else if !crate::registry::is_repository_name(name) {
            return Err(src.error(
                &p,
                format!(
                    "{:?} is not a repository name (lowercase letters, digits, . _ - and /) \
                     nor a glob",
                    crate::digest::truncate_for_error(name)
                ),
            ));
        }
    }
    let globs = if any_glob {
        Some(
            set.build()
                .map_err(|e| src.error(&key("repositories"), e))?,
        )
    } else {
        None
    };
    Ok(Repositories::Listed {
        namespace: from_path.to_string(),
        names: names.to_vec(),
        globs,
    })
}

fn tag_rules(src: &Source, i: usize, raw: &RawTags) -> Result<TagRules> {
    let key = |k: &'static str, j: Option<usize>| {
        let mut p = vec![
            Seg::Key("mirrors"),
            Seg::Index(i),
            Seg::Key("tags"),
            Seg::Key(k),
        ];
        p.extend(j.map(Seg::Index));
        p
    };
    let mut rules = TagRules::default();
    for (j, r) in raw.include.iter().flatten().enumerate() {
        let re = compile_regex(r).map_err(|m| src.error(&key("include", Some(j)), m))?;
        rules.include.push(re);
    }
    if raw.include.as_ref().is_some_and(Vec::is_empty) {
        return Err(src.error(
            &key("include", None),
            "is empty, so no tag would be copied: leave it out to copy every tag",
        ));
    }
    for (j, r) in raw.exclude.iter().enumerate() {
        let re = compile_regex(r).map_err(|m| src.error(&key("exclude", Some(j)), m))?;
        rules.exclude.push(re);
    }
    if let Some(s) = &raw.semver {
        let req = semver::VersionReq::parse(s.trim()).map_err(|e| {
            src.error(
                &key("semver", None),
                format!(
                    "{:?} is not a semver range such as '>=3.12', '^1.2' or '>=1, <2': {e}",
                    crate::digest::truncate_for_error(s)
                ),
            )
        })?;
        rules.semver = Some(req);
    }
    if let Some(n) = raw.newest {
        if n == 0 {
            return Err(src.error(&key("newest", None), "must be at least 1"));
        }
        rules.newest = Some(n);
    }
    Ok(rules)
}

/// A tag regex, size-bounded.
fn compile_regex(s: &str) -> std::result::Result<regex::Regex, String> {
    regex::RegexBuilder::new(s)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            format!(
                "{:?} is not a valid regex: {}",
                crate::digest::truncate_for_error(s),
                one_line(&e.to_string())
            )
        })
}

/// The regex crate's multi-line messages on one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a repository pattern has glob syntax in it.
pub(crate) fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

/// A repository glob: `*` and `?` stop at `/`, `**` crosses it.
pub(crate) fn compile_glob(s: &str) -> std::result::Result<globset::Glob, String> {
    globset::GlobBuilder::new(s)
        .literal_separator(true)
        .build()
        .map_err(|e| {
            format!(
                "{:?} is not a valid glob: {e}",
                crate::digest::truncate_for_error(s)
            )
        })
}

/// The components of a glob before the first with glob syntax, joined.
fn literal_prefix(glob: &str) -> String {
    glob.split('/')
        .take_while(|c| !is_glob(c))
        .collect::<Vec<_>>()
        .join("/")
}

/// Checks a destination path: a repository name, perhaps with `{repo}`s.
fn check_to_path(path: &str) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    let probe = path.replace("{repo}", "x");
    if probe.contains(['{', '}']) {
        return Err("the only placeholder is {repo}".into());
    }
    if is_glob(&probe) {
        return Err("a destination cannot be a glob: use {repo}".into());
    }
    if !crate::registry::is_repository_name(&probe) {
        return Err(format!(
            "{:?} is not a repository path (lowercase letters, digits, . _ - and /)",
            crate::digest::truncate_for_error(path)
        ));
    }
    Ok(())
}

/// `registry://HOST[/PATH][?insecure=true]` as (registry, path).
fn registry_uri(s: &str) -> std::result::Result<(RegistryRef, String), String> {
    let shown = || crate::digest::truncate_for_error(s.split('@').next_back().unwrap_or(""));
    let uri = crate::uri::Uri::parse(s).map_err(|e| e.to_string())?;
    if uri.scheme != "registry" {
        return Err(format!(
            "{:?} is not a registry:// URI such as registry://HOST/NAMESPACE",
            shown()
        ));
    }
    uri.check_options(&["insecure"])
        .map_err(|e| e.to_string())?;
    let insecure = uri.flag("insecure").map_err(|e| e.to_string())?;
    let (host, path) = uri.path.split_once('/').unwrap_or((&uri.path, ""));
    if host.contains('@') {
        return Err(
            "has credentials in it (user:pass@): they do not belong in the config file; give \
             them with --username/--password (or --dest-username/--dest-password) or \
             `docker login` (Docker's config.json)"
                .into(),
        );
    }
    if !is_host(host) {
        return Err(format!("{:?} has no valid registry host", shown()));
    }
    let path = path.trim_end_matches('/');
    if path
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
        || path.contains('@')
    {
        return Err(
            "names a tag or digest: `from` and `to` name repositories; choose tags with `tags`"
                .into(),
        );
    }
    Ok((
        RegistryRef {
            host: host.to_string(),
            insecure,
        },
        path.to_string(),
    ))
}

fn is_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// Two entries must not write the same destination repository. Plain
/// names are compared as names; a template with `{repo}` or a namespace
/// with globs under it is compared as written, since what it produces is
/// known only after listing (the plan checks those again).
fn check_destinations(src: &Source, entries: &[Entry]) -> Result<()> {
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in entries {
        for dest in static_destinations(e) {
            let k = (e.destination.host.clone(), dest);
            if let Some(&other) = seen.get(&k) {
                let first = &entries[other];
                if first.index != e.index {
                    return Err(src.error(
                        &[Seg::Key("mirrors"), Seg::Index(e.index), Seg::Key("to")],
                        format!(
                            "maps onto registry://{}/{} as {} does: two entries must not \
                             write the same destination",
                            k.0,
                            k.1,
                            first.describe()
                        ),
                    ));
                }
            } else {
                seen.insert(k, e.index);
            }
        }
    }
    Ok(())
}

/// What an entry writes, as far as it is known before listing: plain names,
/// or its `to` as written (prefixed so that it never equals a name).
fn static_destinations(e: &Entry) -> Vec<String> {
    match &e.repositories {
        Repositories::Single { repository } => {
            vec![super::plan::map_destination(e, repository).unwrap_or_default()]
        }
        Repositories::Listed {
            namespace, names, ..
        } => {
            let mut out = Vec::new();
            let mut templated = false;
            for n in names {
                if is_glob(n) {
                    templated = true;
                } else {
                    let full = join(namespace, n);
                    out.push(super::plan::map_destination(e, &full).unwrap_or_default());
                }
            }
            if templated {
                out.push(format!("{{template}}{}", e.to_path));
            }
            out
        }
        Repositories::Glob { .. } => vec![format!("{{template}}{}", e.to_path)],
    }
}

/// `a/b` from `a` and `b`, or `b` when `a` is empty.
pub(crate) fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
pub(crate) mod tests;
