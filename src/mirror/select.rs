//! Choosing what an entry copies: its repositories (names, or globs over
//! the catalog) and, in each, its tags (include and exclude regexes, a
//! semver range, the newest N). [`discover`] does both against the source
//! registry.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::future::Future;

use futures_util::StreamExt;

use super::config::{Entry, Repositories, TagRules, join};
use crate::error::{Error, Result};
use crate::registry::Client;

/// Tag lists fetched at once by [`discover`].
const LIST_CONCURRENCY: usize = 8;
/// Configs asked for at once to order tags by `created`.
const CREATED_CONCURRENCY: usize = 8;

/// The source repositories `entry` takes, sorted: its plain names as they
/// are, its globs over `catalog`. `catalog` is needed only when
/// [`Entry::needs_catalog`]; without it such an entry is an error naming
/// the entry.
pub fn select_repositories(entry: &Entry, catalog: Option<&[String]>) -> Result<Vec<String>> {
    let need = || {
        Error::Usage(format!(
            "{} needs explicit repositories: its repositories are globs, and there is no \
             catalog listing to match them against",
            entry.describe()
        ))
    };
    let mut out = match &entry.repositories {
        Repositories::Single { repository } => vec![repository.clone()],
        Repositories::Listed {
            namespace,
            names,
            globs,
        } => {
            let mut out: Vec<String> = names
                .iter()
                .filter(|n| !super::config::is_glob(n))
                .map(|n| join(namespace, n))
                .collect();
            if let Some(globs) = globs {
                let catalog = catalog.ok_or_else(need)?;
                out.extend(
                    catalog
                        .iter()
                        .filter(|name| below(namespace, name).is_some_and(|r| globs.is_match(r)))
                        .cloned(),
                );
            }
            out
        }
        Repositories::Glob { glob, .. } => {
            let catalog = catalog.ok_or_else(need)?;
            catalog
                .iter()
                .filter(|name| glob.is_match(name.as_str()))
                .cloned()
                .collect()
        }
    };
    out.sort();
    out.dedup();
    Ok(out)
}

/// `name` below `namespace` (`team/app` below `team` is `app`); everything
/// is below the empty namespace.
pub(crate) fn below<'a>(namespace: &str, name: &'a str) -> Option<&'a str> {
    if namespace.is_empty() {
        return Some(name);
    }
    name.strip_prefix(namespace)?
        .strip_prefix('/')
        .filter(|r| !r.is_empty())
}

/// The tags that pass `include` (any), `exclude` (none) and the semver
/// range, sorted. `newest` is left to [`select_tags`].
pub fn filter_tags(rules: &TagRules, tags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = tags
        .iter()
        .filter(|t| rules.include.is_empty() || rules.include.iter().any(|r| r.is_match(t)))
        .filter(|t| !rules.exclude.iter().any(|r| r.is_match(t)))
        .filter(|t| match &rules.semver {
            None => true,
            Some(req) => TagVersion::parse(t).is_some_and(|v| req.matches(&v.core)),
        })
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The tags `rules` choose from `tags`, sorted. With `newest: N`, the N
/// newest of those [`filter_tags`] keeps: by version when every one reads
/// as a version, else by `created(tag)`, the image config's creation time,
/// which the caller fetches as it likes (tags it gives none for count as
/// oldest). Ties go to the greater tag name, so the choice is the same on
/// every run.
pub async fn select_tags<F, Fut>(
    rules: &TagRules,
    tags: &[String],
    created: F,
) -> Result<Vec<String>>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Option<Created>>>,
{
    let candidates = filter_tags(rules, tags);
    let Some(n) = rules.newest else {
        return Ok(candidates);
    };
    if candidates.len() <= n {
        return Ok(candidates);
    }
    let versions: Option<Vec<TagVersion>> =
        candidates.iter().map(|t| TagVersion::parse(t)).collect();
    let mut ranked: Vec<(usize, &String)> = candidates.iter().enumerate().collect();
    match versions {
        Some(v) => ranked.sort_by(|a, b| v[b.0].cmp(&v[a.0]).then_with(|| b.1.cmp(a.1))),
        None => {
            let times: Vec<Option<Created>> = futures_util::stream::iter(candidates.iter())
                .map(|t| created(t.clone()))
                .buffered(CREATED_CONCURRENCY)
                .collect::<Vec<Result<Option<Created>>>>()
                .await
                .into_iter()
                .collect::<Result<_>>()?;
            // `None` sorts before every `Some`: the oldest.
            ranked.sort_by(|a, b| times[b.0].cmp(&times[a.0]).then_with(|| b.1.cmp(a.1)));
        }
    }
    let mut out: Vec<String> = ranked.into_iter().take(n).map(|(_, t)| t.clone()).collect();
    out.sort();
    Ok(out)
}

/// A tag read as a version: an optional `v`, one to three dot-separated
/// numbers (missing ones are 0), and an optional `-suffix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagVersion {
    /// The numbers, without pre-release or build parts.
    pub core: semver::Version,
    /// What follows the first `-` (`slim` of `3.12-slim`), or empty.
    pub suffix: String,
}

impl TagVersion {
    /// `v1.2.3`, `1.2`, `3`, `3.12-slim`; `None` for anything else
    /// (`latest`, `1.2.3.4`, `1..2`).
    pub fn parse(tag: &str) -> Option<TagVersion> {
        let t = tag
            .strip_prefix('v')
            .or_else(|| tag.strip_prefix('V'))
            .unwrap_or(tag);
        let (core, suffix) = match t.split_once('-') {
            Some((c, s)) if !s.is_empty() => (c, s),
            Some(_) => return None,
            None => (t, ""),
        };
        let mut nums = [0u64; 3];
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() > 3 {
            return None;
        }
        for (slot, p) in nums.iter_mut().zip(&parts) {
            if p.is_empty() || p.len() > 19 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            *slot = p.parse().ok()?;
        }
        Some(TagVersion {
            core: semver::Version::new(nums[0], nums[1], nums[2]),
            suffix: suffix.to_string(),
        })
    }
}

impl Ord for TagVersion {
    /// By the numbers; for equal numbers the plain version is the newest,
    /// then suffixes by name.
    fn cmp(&self, other: &Self) -> Ordering {
        self.core.cmp(&other.core).then_with(|| {
            match (self.suffix.is_empty(), other.suffix.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.suffix.cmp(&other.suffix),
            }
        })
    }
}

impl PartialOrd for TagVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// When an image was made: its config's `created`, as nanoseconds since
/// the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Created(pub i128);

impl Created {
    /// An RFC 3339 time as image configs write it
    /// (`2024-05-01T12:00:00.123456789Z`, `2024-05-01T14:00:00+02:00`).
    pub fn parse(s: &str) -> Option<Created> {
        let b = s.as_bytes();
        if b.len() < 20 || !s.is_ascii() {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let part = s.get(r)?;
            if part.bytes().all(|c| c.is_ascii_digit()) {
                part.parse().ok()
            } else {
                None
            }
        };
        let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
        if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
            return None;
        }
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        let mut i = 19;
        let mut nanos: i128 = 0;
        if b[i] == b'.' {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let digits = &s[start..i];
            if digits.is_empty() {
                return None;
            }
            let mut frac = digits[..digits.len().min(9)].to_string();
            while frac.len() < 9 {
                frac.push('0');
            }
            nanos = frac.parse().ok()?;
        }
        let offset_secs: i64 = match &s[i..] {
            "Z" | "z" => 0,
            tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) => {
                if tz.as_bytes()[3] != b':' {
                    return None;
                }
                let oh = num(i + 1..i + 3)?;
                let om = num(i + 4..i + 6)?;
                let off = oh * 3600 + om * 60;
                if tz.starts_with('-') { -off } else { off }
            }
            _ => return None,
        };
        let days = days_from_civil(y, mo, d);
        let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_secs;
        Some(Created(secs as i128 * 1_000_000_000 + nanos))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// When the image `tag` of `repo` was created, from its config (an
/// index's first linux image's): for `newest` over tags that are not
/// versions. `None` when the config has no readable `created`.
pub async fn created_of(repo: &crate::registry::Repository, tag: &str) -> Result<Option<Created>> {
    let parse = |body: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(body)
            .map_err(|e| Error::InvalidImage(format!("manifest of {tag}: {e}")))
    };
    let digest_of = |v: &serde_json::Value| {
        v.get("digest")
            .and_then(|d| d.as_str())
            .and_then(|d| d.parse::<crate::digest::Digest>().ok())
    };
    let (body, _) = repo.get_manifest(tag).await?;
    let mut manifest = parse(&body)?;
    if let Some(children) = manifest.get("manifests").and_then(|m| m.as_array()) {
        let linux = |d: &&serde_json::Value| {
            d.pointer("/platform/os").and_then(|o| o.as_str()) == Some("linux")
        };
        let Some(child) = children.iter().find(linux).and_then(digest_of) else {
            return Ok(None);
        };
        let (body, _) = repo.get_manifest(&child.to_string()).await?;
        if crate::digest::Digest::sha256_of(&body) != child {
            return Err(Error::InvalidImage(format!(
                "{tag}: the manifest {child} hashed to another digest"
            )));
        }
        manifest = parse(&body)?;
    }
    let Some(config) = manifest.get("config") else {
        return Ok(None);
    };
    let (Some(digest), Some(size)) = (
        digest_of(config),
        config.get("size").and_then(|s| s.as_u64()),
    ) else {
        return Ok(None);
    };
    let max = crate::registry::MAX_CONFIG_BYTES;
    let raw = repo.get_small_blob(&digest, size, max).await?;
    Ok(serde_json::from_slice::<serde_json::Value>(&raw)
        .ok()
        .and_then(|c| {
            c.get("created")
                .and_then(|c| c.as_str())
                .and_then(Created::parse)
        }))
}

/// Whether `tag` is a referrer's rather than an image's: `sha256-<hex>`
/// (the OCI referrers fallback tag) or cosign's `sha256-<hex>.sig`,
/// `.att` and `.sbom`. They are copied with the image they name, never as
/// images of their own.
pub fn is_referrer_tag(tag: &str) -> bool {
    let Some(rest) = tag.strip_prefix("sha256-") else {
        return false;
    };
    let (hex, suffix) = rest.split_at(rest.len().min(64));
    hex.len() == 64
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && matches!(suffix, "" | ".sig" | ".att" | ".sbom")
}

/// What [`discover`] found for one entry.
#[derive(Debug)]
pub struct Discovered {
    /// The entry's index in the config.
    pub entry: usize,
    /// Each source repository with the tags chosen in it, sorted by name.
    pub repositories: Vec<(String, Vec<String>)>,
    /// Every tag each of those repositories has, referrer tags included
    /// (for referrers and prune).
    pub listed: BTreeMap<String, Vec<String>>,
    /// The source's catalog, when the entry needed it.
    pub catalog: Option<Vec<String>>,
    /// Repositories whose tags could not be listed (or chosen), with why;
    /// the others go on.
    pub failed: Vec<(String, Error)>,
}

/// Lists and chooses what `entry` takes from the source registry behind
/// `client`: the catalog when the entry has globs, then each repository's
/// tags, chosen by the entry's rules. `created(repository, tag)` gives an
/// image's creation time for `newest` over tags that are not versions.
/// A registry that will not list its catalog is an error naming the entry:
/// it needs explicit repositories.
pub async fn discover<F, Fut>(entry: &Entry, client: &Client, created: F) -> Result<Discovered>
where
    F: Fn(String, String) -> Fut,
    Fut: Future<Output = Result<Option<Created>>>,
{
    discover_some(entry, client, None, |_| true, created).await
}

/// As [`discover`], listing the tags only of the repositories `wanted`
/// takes (a shard's): the others are left out of the result. `catalog`:
/// the source's catalog when an earlier entry listed it already.
pub async fn discover_some<W, F, Fut>(
    entry: &Entry,
    client: &Client,
    catalog: Option<&[String]>,
    wanted: W,
    created: F,
) -> Result<Discovered>
where
    W: Fn(&str) -> bool,
    F: Fn(String, String) -> Fut,
    Fut: Future<Output = Result<Option<Created>>>,
{
    let catalog = if !entry.needs_catalog() {
        None
    } else if let Some(c) = catalog {
        Some(c.to_vec())
    } else {
        match client.catalog().await {
            Ok(c) => Some(c),
            Err(e) if crate::registry::refuses_listing(&e) => {
                return Err(Error::Usage(format!(
                    "{} needs explicit repositories: registry {} does not list its catalog ({e}); \
                     name them in `repositories`",
                    entry.describe(),
                    entry.source.host
                )));
            }
            Err(e) => return Err(e),
        }
    };
    let mut repositories = select_repositories(entry, catalog.as_deref())?;
    let listed_catalog = catalog;
    repositories.retain(|r| wanted(r));
    let created = &created;
    type Listed = (String, Result<(Vec<String>, Vec<String>)>);
    let results: Vec<Listed> = futures_util::stream::iter(repositories)
        .map(|repo| async move {
            let chosen = match client.tags(&repo).await {
                Ok(tags) => {
                    let r = repo.clone();
                    let ordinary: Vec<String> = tags
                        .iter()
                        .filter(|t| !is_referrer_tag(t))
                        .cloned()
                        .collect();
                    select_tags(&entry.tags, &ordinary, move |tag| created(r.clone(), tag))
                        .await
                        .map(|chosen| (chosen, tags))
                }
                Err(e) => Err(e),
            };
            (repo, chosen)
        })
        .buffered(LIST_CONCURRENCY)
        .collect()
        .await;
    let mut found = Discovered {
        entry: entry.index,
        repositories: Vec::new(),
        listed: BTreeMap::new(),
        catalog: listed_catalog,
        failed: Vec::new(),
    };
    for (repo, r) in results {
        match r {
            Ok((tags, all)) => {
                found.listed.insert(repo.clone(), all);
                found.repositories.push((repo, tags));
            }
            Err(e) => found.failed.push((repo, e)),
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::mirror::config::Config;

    fn config(text: &str) -> Config {
        Config::parse(text, "t.yaml").unwrap()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn entry_with_tags(tags: &str) -> Entry {
        let c = config(&format!(
            "mirrors:\n- from: registry://s/a\n  to: registry://d/a\n  tags: {tags}\n"
        ));
        c.entries[0].clone()
    }

    /// `select_tags` with a fake `created` that must not be called.
    async fn chosen(tags: &str, from: &[&str]) -> Vec<String> {
        let e = entry_with_tags(tags);
        select_tags(&e.tags, &strings(from), |t| async move {
            panic!("asked for the config of {t}")
        })
        .await
        .unwrap()
    }

    const CATALOG: &[&str] = &[
        "library/debian",
        "library/python",
        "library/pypy",
        "library/ubuntu",
        "library/py/deep",
        "team/app",
        "team/api",
        "team/sub/tool",
        "teamx/app",
        "other",
    ];

    #[test]
    fn referrer_tags_are_told_from_image_tags() {
        let hex = "a".repeat(64);
        for t in ["", ".sig", ".att", ".sbom"] {
            assert!(is_referrer_tag(&format!("sha256-{hex}{t}")), "{t}");
        }
        for t in [
            format!("sha256-{}", "a".repeat(63)),
            format!("sha256-{hex}.txt"),
            format!("sha256-{}", "A".repeat(64)),
            "sha256-".into(),
            "latest".into(),
            format!("v1-{hex}"),
        ] {
            assert!(!is_referrer_tag(&t), "{t}");
        }
    }

    #[test]
    fn repositories_by_name_and_glob() {
        let c = config(crate::mirror::config::tests::EXAMPLE);
        let catalog = strings(CATALOG);
        // Names, and `py*` below `library` (not across a `/`).
        let got = select_repositories(&c.entries[0], Some(&catalog)).unwrap();
        assert_eq!(got, ["library/debian", "library/pypy", "library/python"]);
        // `team/*`: one level, and not `teamx`.
        let got = select_repositories(&c.entries[1], Some(&catalog)).unwrap();
        assert_eq!(got, ["team/api", "team/app"]);
        // `**` crosses levels.
        let deep = config("mirrors:\n- from: registry://s/team/**\n  to: registry://d/m/{repo}\n");
        let got = select_repositories(&deep.entries[0], Some(&catalog)).unwrap();
        assert_eq!(got, ["team/api", "team/app", "team/sub/tool"]);
        // Without a catalog, globs are an error naming the entry; plain names are not.
        let e = select_repositories(&c.entries[1], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mirrors[1] (line 16") && e.contains("explicit repositories"),
            "{e}"
        );
        let plain = config(
            "mirrors:\n- from: registry://s/library\n  to: registry://d/hub\n  repositories: [debian, debian, ubuntu]\n",
        );
        assert!(!plain.entries[0].needs_catalog());
        let got = select_repositories(&plain.entries[0], None).unwrap();
        assert_eq!(got, ["library/debian", "library/ubuntu"]);
        // A root namespace.
        let root =
            config("mirrors:\n- from: registry://s\n  to: registry://d/m\n  repositories: ['*']\n");
        let got = select_repositories(&root.entries[0], Some(&catalog)).unwrap();
        assert_eq!(got, ["other"]);
    }

    #[tokio::test]
    async fn include_and_exclude_regexes() {
        let all = [
            "bookworm",
            "bookworm-slim",
            "bullseye",
            "latest",
            "latest-rc",
            "12-rc1",
        ];
        assert_eq!(chosen("{}", &all).await.len(), all.len());
        assert_eq!(
            chosen("{include: ['^bookworm', latest], exclude: ['-rc']}", &all).await,
            ["bookworm", "bookworm-slim", "latest"]
        );
        assert_eq!(
            chosen("{include: ['^bookworm$']}", &all).await,
            ["bookworm"]
        );
        assert_eq!(chosen("{exclude: ['^b', '-rc']}", &all).await, ["latest"]);
    }

    #[tokio::test]
    async fn semver_ranges_are_lenient() {
        let all = [
            "3.11",
            "3.12",
            "v3.12.1",
            "3.13-slim",
            "3.13.0-rc1",
            "4",
            "latest",
            "3.12.1.2",
            "bookworm",
            "V3.14",
        ];
        assert_eq!(
            chosen("{semver: '>=3.12, <4'}", &all).await,
            ["3.12", "3.13-slim", "3.13.0-rc1", "V3.14", "v3.12.1"]
        );
        assert_eq!(
            chosen("{semver: '>=3.12', exclude: ['-rc']}", &all).await,
            ["3.12", "3.13-slim", "4", "V3.14", "v3.12.1"]
        );
        assert_eq!(chosen("{semver: '~3.12'}", &all).await, ["3.12", "v3.12.1"]);
        assert_eq!(
            chosen("{semver: '3'}", &all).await,
            [
                "3.11",
                "3.12",
                "3.13-slim",
                "3.13.0-rc1",
                "V3.14",
                "v3.12.1"
            ]
        );
    }

    #[test]
    fn tag_versions() {
        let v = |s: &str| TagVersion::parse(s);
        assert_eq!(v("3.12").unwrap().core, semver::Version::new(3, 12, 0));
        assert_eq!(v("v1.2.3").unwrap().core, semver::Version::new(1, 2, 3));
        assert_eq!(v("7").unwrap().core, semver::Version::new(7, 0, 0));
        assert_eq!(v("3.12-slim").unwrap().suffix, "slim");
        for bad in [
            "latest",
            "1.2.3.4",
            "1..2",
            "1.",
            "-1",
            "1-",
            "v",
            "1.x",
            "99999999999999999999",
        ] {
            assert!(v(bad).is_none(), "{bad}");
        }
        assert!(v("1.2.10").unwrap() > v("1.2.9").unwrap());
        assert!(v("1.2").unwrap() > v("1.2-rc1").unwrap());
        assert!(v("1.3-rc1").unwrap() > v("1.2").unwrap());
    }

    #[tokio::test]
    async fn newest_by_version() {
        let all = ["1.9", "1.10", "v1.10.1", "1.2", "2.0-rc1", "0.9"];
        assert_eq!(
            chosen("{newest: 3}", &all).await,
            ["1.10", "2.0-rc1", "v1.10.1"]
        );
        assert_eq!(
            chosen("{newest: 2, exclude: ['-rc']}", &all).await,
            ["1.10", "v1.10.1"]
        );
        // Fewer candidates than N: all of them, no ordering needed.
        assert_eq!(
            chosen("{newest: 10, include: [latest]}", &["latest"]).await,
            ["latest"]
        );
    }

    #[tokio::test]
    async fn newest_by_created_when_tags_are_not_versions() {
        let e = entry_with_tags("{newest: 2, exclude: [old]}");
        let times: HashMap<&str, Option<&str>> = [
            ("bookworm", Some("2023-06-10T00:00:00Z")),
            ("bullseye", Some("2021-08-14T00:00:00.5+02:00")),
            ("latest", Some("2024-01-01T00:00:00.000000001Z")),
            ("nightly", None),
            ("sid", Some("2024-01-01T00:00:00Z")),
            ("old", Some("2030-01-01T00:00:00Z")),
        ]
        .into_iter()
        .collect();
        let asked = Mutex::new(Vec::new());
        let tags: Vec<String> = times.keys().map(|s| s.to_string()).collect();
        let got = select_tags(&e.tags, &tags, |t| {
            asked.lock().unwrap().push(t.clone());
            let c = times[t.as_str()].map(|s| Created::parse(s).unwrap());
            async move { Ok(c) }
        })
        .await
        .unwrap();
        assert_eq!(got, ["latest", "sid"]);
        let mut asked = asked.into_inner().unwrap();
        asked.sort();
        // Excluded tags are never looked at.
        assert_eq!(asked, ["bookworm", "bullseye", "latest", "nightly", "sid"]);
        // An error from the callback is the selection's error.
        let e = select_tags(&e.tags, &tags, |_| async {
            Err(Error::InvalidImage("no config".into()))
        })
        .await
        .unwrap_err();
        assert!(e.to_string().contains("no config"));
    }

    #[test]
    fn created_times() {
        let c = |s: &str| Created::parse(s).map(|c| c.0);
        assert_eq!(c("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(c("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(c("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(c("2000-03-01T00:00:00Z"), Some(951_868_800 * 1_000_000_000));
        assert_eq!(c("1969-12-31T23:59:59-00:00"), Some(-1_000_000_000));
        assert!(c("2024-01-01T00:00:00.1234567891Z").is_some());
        for bad in [
            "",
            "2024-01-01",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T25:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00+0100",
            "2024-01-01T00:00:00Zjunk",
            "２024-01-01T00:00:00Z",
        ] {
            assert!(c(bad).is_none(), "{bad}");
        }
    }
}
