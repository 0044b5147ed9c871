//! From a config and what discovery found to the list of copies to make
//! (a [`Job`] per tag), in an order that is the same on every run; and
//! sharding that list across machines by destination repository.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::config::{Config, Entry, ImageOptions, RegistryRef, Repositories};
use super::select::{Discovered, below};
use crate::error::{Error, Result};

/// One image: a registry, a repository and a tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// The registry.
    pub registry: RegistryRef,
    /// The repository.
    pub repository: String,
    /// The tag.
    pub tag: String,
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.registry.host, self.repository, self.tag)
    }
}

/// One copy to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// The config entry it comes from.
    pub entry: usize,
    /// What to copy.
    pub source: ImageRef,
    /// Where to.
    pub destination: ImageRef,
    /// The tag matches the entry's `immutable`: when the destination has
    /// it, the source need not be asked.
    pub immutable: bool,
    /// How to copy it (shared by the entry's jobs).
    pub options: Arc<ImageOptions>,
}

/// The source repository's name below the entry's namespace: what
/// `{repo}` stands for (the last component for a single repository).
pub fn relative_name<'a>(entry: &Entry, source_repository: &'a str) -> Option<&'a str> {
    match &entry.repositories {
        Repositories::Listed { namespace, .. } | Repositories::Glob { namespace, .. } => {
            below(namespace, source_repository)
        }
        Repositories::Single { .. } => source_repository.rsplit('/').next(),
    }
}

/// Where `entry` puts `source_repository`: `{repo}` in `to` replaced by
/// its relative name; else, for a namespace or glob, the relative name
/// below `to`'s path (`library/debian` from `library` to `hub` is
/// `hub/debian`); else, for a single repository, `to`'s path (or the
/// same name when `to` has none).
pub fn map_destination(entry: &Entry, source_repository: &str) -> Result<String> {
    let bad = |what: String| Error::Usage(format!("{}: {what}", entry.describe()));
    let rel = relative_name(entry, source_repository).ok_or_else(|| {
        bad(format!(
            "repository {source_repository:?} is not below the entry's namespace"
        ))
    })?;
    let dest = if entry.to_path.contains("{repo}") {
        entry.to_path.replace("{repo}", rel)
    } else {
        match &entry.repositories {
            Repositories::Single { repository } if entry.to_path.is_empty() => repository.clone(),
            Repositories::Single { .. } => entry.to_path.clone(),
            _ => super::config::join(&entry.to_path, rel),
        }
    };
    if !crate::registry::is_repository_name(&dest) {
        return Err(bad(format!(
            "{source_repository} would go to {:?}, which is not a repository name",
            crate::digest::truncate_for_error(&dest)
        )));
    }
    Ok(dest)
}

/// The jobs for `config` given what discovery found (one [`Discovered`]
/// per entry it covered), sorted by destination then source. Two entries
/// that land on one destination repository are an error naming both.
pub fn plan(config: &Config, discovered: &[Discovered]) -> Result<Vec<Job>> {
    // Destination repository -> (entry, source repository) that writes it.
    let mut writers: BTreeMap<(String, String), (usize, String)> = BTreeMap::new();
    let mut jobs = Vec::new();
    for found in discovered {
        let entry = config.entries.get(found.entry).ok_or_else(|| {
            Error::Usage(format!("no mirror entry {} in the config", found.entry))
        })?;
        let options = Arc::new(entry.options.clone());
        for (repo, tags) in &found.repositories {
            let dest = map_destination(entry, repo)?;
            let key = (entry.destination.host.clone(), dest.clone());
            match writers.get(&key) {
                Some((other, other_repo)) if *other != entry.index || other_repo != repo => {
                    let first = &config.entries[*other];
                    return Err(Error::Usage(format!(
                        "{}: {} would write registry://{}/{dest}, which {} writes from {}: \
                         two sources must not share a destination",
                        config.origin,
                        entry.describe(),
                        key.0,
                        first.describe(),
                        other_repo
                    )));
                }
                Some(_) => {}
                None => {
                    writers.insert(key, (entry.index, repo.clone()));
                }
            }
            for tag in tags {
                jobs.push(Job {
                    entry: entry.index,
                    source: ImageRef {
                        registry: entry.source.clone(),
                        repository: repo.clone(),
                        tag: tag.clone(),
                    },
                    destination: ImageRef {
                        registry: entry.destination.clone(),
                        repository: dest.clone(),
                        tag: tag.clone(),
                    },
                    immutable: entry.is_immutable(tag),
                    options: options.clone(),
                });
            }
        }
    }
    jobs.sort_by(|a, b| {
        (&a.destination, &a.source, a.entry).cmp(&(&b.destination, &b.source, b.entry))
    });
    jobs.dedup_by(|a, b| a.destination == b.destination && a.source == b.source);
    Ok(jobs)
}

/// This machine's share of the work: shard `index` (1-based) of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 1 to `count`.
    pub index: u32,
    /// How many shards in all.
    pub count: u32,
}

/// Most shards a run may be split into.
pub const MAX_SHARDS: u32 = 100_000;

impl Shard {
    fn new(index: u64, count: u64, what: &str) -> Result<Shard> {
        if count == 0 || count > MAX_SHARDS as u64 {
            return Err(Error::Usage(format!(
                "{what}: the number of shards must be 1 to {MAX_SHARDS}"
            )));
        }
        if index == 0 || index > count {
            return Err(Error::Usage(format!(
                "{what}: shard {index} is not one of 1 to {count}"
            )));
        }
        Ok(Shard {
            index: index as u32,
            count: count as u32,
        })
    }

    /// Whether a job for `destination` falls in this shard.
    pub fn takes(&self, destination: &ImageRef) -> bool {
        shard_of(destination, self.count) == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;
    /// `I/N`: shard I (1-based) of N.
    fn from_str(s: &str) -> Result<Shard> {
        let what = format!("--shard {:?}", crate::digest::truncate_for_error(s));
        let (i, n) = s
            .split_once('/')
            .and_then(|(i, n)| Some((number(i)?, number(n)?)))
            .ok_or_else(|| {
                Error::Usage(format!("{what}: expected I/N such as 2/8 (shard 2 of 8)"))
            })?;
        Shard::new(i, n, &what)
    }
}

fn number(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The shard of a Kubernetes Indexed Job's pod from its
/// `JOB_COMPLETION_INDEX` (0-based) and `JOB_COMPLETIONS`: index I is shard
/// I+1. `None` unless both are set.
pub fn shard_from_env(index: Option<&str>, completions: Option<&str>) -> Result<Option<Shard>> {
    let (Some(i), Some(n)) = (index, completions) else {
        return Ok(None);
    };
    let what = "JOB_COMPLETION_INDEX/JOB_COMPLETIONS";
    let bad = |name: &str, v: &str| {
        Error::Usage(format!(
            "{name}={:?} is not a number",
            crate::digest::truncate_for_error(v)
        ))
    };
    let i = number(i).ok_or_else(|| bad("JOB_COMPLETION_INDEX", i))?;
    let n = number(n).ok_or_else(|| bad("JOB_COMPLETIONS", n))?;
    Shard::new(i + 1, n, what).map(Some)
}

/// The shard a run takes: `--shard` when given, else the environment's
/// (see [`shard_from_env`]), else none (all the work).
pub fn choose_shard(
    flag: Option<&str>,
    env_index: Option<&str>,
    env_completions: Option<&str>,
) -> Result<Option<Shard>> {
    match flag {
        Some(f) => f.parse().map(Some),
        None => shard_from_env(env_index, env_completions),
    }
}

/// The shard (1-based, of `count`) that `destination`'s repository falls
/// in: the first 8 bytes of the SHA-256 of `host/repository`, modulo
/// `count`. Every tag of a repository lands in one shard, on every machine.
pub fn shard_of(destination: &ImageRef, count: u32) -> u32 {
    let h = Sha256::digest(
        format!("{}/{}", destination.registry.host, destination.repository).as_bytes(),
    );
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    (u64::from_be_bytes(first) % count.max(1) as u64) as u32 + 1
}

/// The jobs of `jobs` in `shard`, in their order.
pub fn shard(jobs: Vec<Job>, shard: Shard) -> Vec<Job> {
    jobs.into_iter()
        .filter(|j| shard.takes(&j.destination))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, "t.yaml").unwrap()
    }

    fn found(entry: usize, repos: &[(&str, &[&str])]) -> Discovered {
        Discovered {
            entry,
            repositories: repos
                .iter()
                .map(|(r, t)| (r.to_string(), t.iter().map(|t| t.to_string()).collect()))
                .collect(),
            listed: Default::default(),
            catalog: None,
            failed: Vec::new(),
        }
    }

    fn again_found(d: &Discovered) -> Discovered {
        Discovered {
            entry: d.entry,
            repositories: d.repositories.iter().rev().cloned().collect(),
            listed: Default::default(),
            catalog: None,
            failed: Vec::new(),
        }
    }

    fn pairs(jobs: &[Job]) -> Vec<String> {
        jobs.iter()
            .map(|j| format!("{} -> {}", j.source, j.destination))
            .collect()
    }

    #[test]
    fn names_map_by_namespace_and_template() {
        let c = config(crate::mirror::config::tests::EXAMPLE);
        let (a, b) = (&c.entries[0], &c.entries[1]);
        assert_eq!(map_destination(a, "library/debian").unwrap(), "hub/debian");
        assert_eq!(map_destination(b, "team/app").unwrap(), "mirror/team/app");
        assert!(map_destination(a, "other/debian").is_err());
        let c = config(
            "mirrors:\n\
             - from: registry://s/tools/jq\n  to: registry://d/x/jq\n\
             - from: registry://s/tools/yq\n  to: registry://d/y/{repo}-mirror\n\
             - from: registry://s/tools/zq\n  to: registry://d\n\
             - from: registry://s\n  to: registry://d/root\n  repositories: [a/b]\n\
             - from: registry://s/deep/**\n  to: registry://d/{repo}\n",
        );
        let m = |i: usize, r: &str| map_destination(&c.entries[i], r).unwrap();
        assert_eq!(m(0, "tools/jq"), "x/jq");
        assert_eq!(m(1, "tools/yq"), "y/yq-mirror");
        assert_eq!(m(2, "tools/zq"), "tools/zq");
        assert_eq!(m(3, "a/b"), "root/a/b");
        assert_eq!(m(4, "deep/a/b"), "a/b");
    }

    #[test]
    fn the_plan_is_sorted_mapped_and_flags_immutable_tags() {
        let c = config(crate::mirror::config::tests::EXAMPLE);
        let discovered = [
            found(1, &[("team/app", &["v2", "v1"])]),
            found(
                0,
                &[
                    ("library/python", &["3.12.1", "3.13-slim"]),
                    ("library/debian", &[]),
                ],
            ),
        ];
        let jobs = plan(&c, &discovered).unwrap();
        assert_eq!(
            pairs(&jobs),
            [
                "SRC/library/python:3.12.1 -> DST/hub/python:3.12.1",
                "SRC/library/python:3.13-slim -> DST/hub/python:3.13-slim",
                "SRC/team/app:v1 -> DST/mirror/team/app:v1",
                "SRC/team/app:v2 -> DST/mirror/team/app:v2",
            ]
        );
        assert!(jobs[0].immutable && !jobs[1].immutable && !jobs[2].immutable);
        assert_eq!(jobs[0].entry, 0);
        assert_eq!(*jobs[0].options, c.entries[0].options);
        // The same input in another order: the same plan.
        let again = plan(
            &c,
            &[again_found(&discovered[1]), again_found(&discovered[0])],
        )
        .unwrap();
        assert_eq!(again, jobs);
    }

    #[test]
    fn two_sources_on_one_destination_are_refused() {
        // Statically fine (globs), but the catalog makes them collide.
        let c = config(
            "mirrors:\n\
             - from: registry://s/a/*\n  to: registry://d/m/{repo}\n\
             - from: registry://s/b\n  to: registry://d/m\n  repositories: ['*']\n",
        );
        let e = plan(
            &c,
            &[found(0, &[("a/x", &["v1"])]), found(1, &[("b/x", &["v2"])])],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("d/m/x")
                && e.contains("mirrors[0] (line 2")
                && e.contains("mirrors[1] (line 4"),
            "{e}"
        );
        assert!(
            plan(
                &c,
                &[found(0, &[("a/x", &["v1"])]), found(1, &[("b/y", &["v1"])])]
            )
            .is_ok()
        );
    }

    #[test]
    fn shard_flags_and_environment() {
        assert_eq!(
            "2/8".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 8 }
        );
        assert_eq!(
            "1/1".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 1 }
        );
        for bad in [
            "0/3",
            "4/3",
            "1/0",
            "x/3",
            "3",
            "1/2/3",
            "-1/3",
            "",
            "1/999999999",
        ] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(
                e.is_usage() && e.to_string().contains("--shard"),
                "{bad}: {e}"
            );
        }
        assert_eq!(shard_from_env(None, Some("3")).unwrap(), None);
        assert_eq!(shard_from_env(Some("0"), None).unwrap(), None);
        assert_eq!(
            shard_from_env(Some("0"), Some("3")).unwrap(),
            Some(Shard { index: 1, count: 3 })
        );
        assert_eq!(
            shard_from_env(Some("2"), Some("3")).unwrap(),
            Some(Shard { index: 3, count: 3 })
        );
        assert!(shard_from_env(Some("3"), Some("3")).is_err());
        assert!(
            shard_from_env(Some("a"), Some("3"))
                .unwrap_err()
                .to_string()
                .contains("JOB_COMPLETION_INDEX")
        );
        // The flag wins over the environment.
        assert_eq!(
            choose_shard(Some("1/2"), Some("4"), Some("5")).unwrap(),
            Some(Shard { index: 1, count: 2 })
        );
        assert_eq!(
            choose_shard(None, Some("4"), Some("5")).unwrap(),
            Some(Shard { index: 5, count: 5 })
        );
        assert_eq!(choose_shard(None, None, None).unwrap(), None);
    }

    #[test]
    fn shards_are_disjoint_cover_everything_and_keep_repositories_whole() {
        let c = config("mirrors:\n- from: registry://s/ns/*\n  to: registry://d/m/{repo}\n");
        let repos: Vec<(String, Vec<String>)> = (0..60)
            .map(|i| {
                (
                    format!("ns/r{i}"),
                    (0..4).map(|t| format!("t{t}")).collect(),
                )
            })
            .collect();
        let jobs = plan(
            &c,
            &[Discovered {
                entry: 0,
                repositories: repos,
                listed: Default::default(),
                catalog: None,
                failed: Vec::new(),
            }],
        )
        .unwrap();
        assert_eq!(jobs.len(), 240);
        for n in [1u32, 2, 3, 8] {
            let mut union = Vec::new();
            for i in 1..=n {
                let part = shard(jobs.clone(), Shard { index: i, count: n });
                if n <= 3 {
                    assert!(!part.is_empty(), "shard {i}/{n} is empty");
                }
                // Every tag of a repository in this shard is in it.
                for j in &part {
                    let all_tags = jobs
                        .iter()
                        .filter(|k| k.destination.repository == j.destination.repository);
                    for k in all_tags {
                        assert!(
                            part.contains(k),
                            "{} split from its repository",
                            k.destination
                        );
                    }
                }
                union.extend(part);
            }
            union.sort_by(|a, b| a.destination.cmp(&b.destination));
            // Disjoint and complete: the union is the whole plan, once each.
            assert_eq!(union, jobs, "shards of {n}");
        }
        // Stable: the hash does not depend on the run.
        let r = &jobs[0].destination;
        assert_eq!(shard_of(r, 8), shard_of(&r.clone(), 8));
        assert_eq!(shard_of(r, 1), 1);
    }
}
