//! Reading docker-save tarballs (ours and others') and checking that
//! occystrap's output has exactly the shape the contract promises.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{sha256_digest, sha256_hex};

/// One `manifest.json` entry.
#[derive(Debug, Clone)]
pub struct ManifestEntry {
    /// `Config`
    pub config: String,
    /// `RepoTags` (empty for null)
    pub repo_tags: Vec<String>,
    /// `Layers`
    pub layers: Vec<String>,
}

/// A docker-save tarball read into memory (test images are small).
pub struct DockerSave {
    /// Where it was read from.
    pub path: PathBuf,
    /// Member names in archive order (directories included).
    pub members: Vec<String>,
    /// Regular file contents by name; symlinks and hardlinks resolved.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Parsed `manifest.json`.
    pub manifest: Vec<ManifestEntry>,
}

fn clean(name: &str) -> String {
    name.trim_start_matches("./").to_string()
}

/// Resolves a symlink target relative to the directory of `name`.
fn resolve_rel(name: &str, target: &str) -> String {
    let mut parts: Vec<&str> = name.split('/').collect();
    parts.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// Reads every member of a tar (uncompressed) into memory, resolving links
/// within the archive. Returns (names in order, files).
pub fn read_tar(bytes: &[u8]) -> (Vec<String>, BTreeMap<String, Vec<u8>>) {
    let mut ar = tar::Archive::new(bytes);
    let mut names = Vec::new();
    let mut files = BTreeMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    for e in ar.entries().expect("tar entries") {
        let mut e = e.expect("tar entry");
        let name = clean(&String::from_utf8_lossy(&e.path_bytes()));
        names.push(name.clone());
        match e.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut v = Vec::new();
                e.read_to_end(&mut v).expect("read tar member");
                files.insert(name, v);
            }
            tar::EntryType::Symlink => {
                let t = String::from_utf8_lossy(&e.link_name_bytes().unwrap()).into_owned();
                let target = if t.starts_with('/') {
                    clean(t.trim_start_matches('/'))
                } else {
                    resolve_rel(&name, &t)
                };
                links.push((name, target));
            }
            tar::EntryType::Link => {
                let t = String::from_utf8_lossy(&e.link_name_bytes().unwrap()).into_owned();
                links.push((name, clean(&t)));
            }
            _ => {}
        }
    }
    for (name, target) in links {
        if let Some(d) = files.get(&target).cloned() {
            files.insert(name, d);
        }
    }
    (names, files)
}

/// One file's contents from an (uncompressed) layer tar.
pub fn tar_member(tar_bytes: &[u8], path: &str) -> Option<Vec<u8>> {
    let (_, files) = read_tar(tar_bytes);
    files.get(path).cloned()
}

/// What a test expects of occystrap's docker-save output.
#[derive(Default, Debug, Clone)]
pub struct Expect {
    /// Exact `RepoTags`.
    pub repo_tags: Option<Vec<String>>,
    /// Config bytes, byte for byte.
    pub config: Option<Vec<u8>>,
    /// diff_ids.
    pub diff_ids: Option<Vec<String>>,
}

impl Expect {
    /// Expect these RepoTags.
    pub fn tags(mut self, tags: &[&str]) -> Expect {
        self.repo_tags = Some(tags.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Expect this config, byte for byte.
    pub fn config(mut self, config: &[u8]) -> Expect {
        self.config = Some(config.to_vec());
        self
    }

    /// Expect these diff_ids.
    pub fn diff_ids(mut self, ids: &[String]) -> Expect {
        self.diff_ids = Some(ids.to_vec());
        self
    }
}

impl DockerSave {
    /// Reads and parses a docker-save tarball.
    pub fn read(path: &Path) -> DockerSave {
        let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let (members, files) = read_tar(&bytes);
        let manifest_bytes = files
            .get("manifest.json")
            .unwrap_or_else(|| panic!("{}: no manifest.json; members {members:?}", path.display()));
        let v: Value = serde_json::from_slice(manifest_bytes).expect("manifest.json is JSON");
        let manifest = v
            .as_array()
            .expect("manifest.json is an array")
            .iter()
            .map(|m| ManifestEntry {
                config: m["Config"].as_str().expect("Config").to_string(),
                repo_tags: m["RepoTags"]
                    .as_array()
                    .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default(),
                layers: m["Layers"]
                    .as_array()
                    .expect("Layers")
                    .iter()
                    .map(|l| l.as_str().unwrap().to_string())
                    .collect(),
            })
            .collect();
        DockerSave {
            path: path.to_path_buf(),
            members,
            files,
            manifest,
        }
    }

    /// A member's bytes.
    pub fn file(&self, name: &str) -> &[u8] {
        self.files
            .get(name)
            .unwrap_or_else(|| panic!("{}: no member {name}", self.path.display()))
    }

    /// Config bytes of image `i`.
    pub fn config_bytes(&self, i: usize) -> &[u8] {
        self.file(&self.manifest[i].config)
    }

    /// Parsed config of image `i`.
    pub fn config(&self, i: usize) -> Value {
        serde_json::from_slice(self.config_bytes(i)).expect("config is JSON")
    }

    /// The config's rootfs.diff_ids of image `i`.
    pub fn diff_ids(&self, i: usize) -> Vec<String> {
        self.config(i)["rootfs"]["diff_ids"]
            .as_array()
            .expect("rootfs.diff_ids")
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect()
    }

    /// Layer `l` of image `i`, uncompressed tar bytes.
    pub fn layer(&self, i: usize, l: usize) -> &[u8] {
        self.file(&self.manifest[i].layers[l])
    }

    /// A file's content from the topmost layer of image 0 that has it.
    pub fn find_in_layers(&self, path: &str) -> Option<Vec<u8>> {
        (0..self.manifest[0].layers.len())
            .rev()
            .find_map(|l| tar_member(self.layer(0, l), path))
    }

    /// For input archives: every image's layers hash to its diff_ids.
    pub fn assert_diff_ids_match(&self) {
        for (i, m) in self.manifest.iter().enumerate() {
            let ids = self.diff_ids(i);
            assert_eq!(ids.len(), m.layers.len(), "layer count vs diff_ids");
            for (l, id) in ids.iter().enumerate() {
                assert_eq!(
                    &sha256_digest(self.layer(i, l)),
                    id,
                    "layer {l} of image {i}"
                );
            }
        }
    }

    /// Checks everything the contract promises of occystrap's output: one
    /// image; config stored as `<sha256>.json` under its own digest; each
    /// layer uncompressed as `<diff_id hex>/layer.tar`, hashing to its
    /// diff_id; `repositories` mapping each RepoTag to the top layer; plus
    /// whatever `expect` adds.
    pub fn assert_occystrap_output(&self, expect: &Expect) {
        let p = self.path.display();
        assert_eq!(self.manifest.len(), 1, "{p}: one image in manifest.json");
        let m = &self.manifest[0];

        let mut seen = BTreeSet::new();
        for name in &self.members {
            assert!(
                !name.starts_with('/') && !name.split('/').any(|c| c == ".."),
                "{p}: unsafe member name {name}"
            );
            assert!(
                seen.insert(name.trim_end_matches('/')),
                "{p}: duplicate member {name}"
            );
        }

        let cfg_hex = m
            .config
            .strip_suffix(".json")
            .unwrap_or_else(|| panic!("{p}: Config {} is not <hex>.json", m.config));
        assert_eq!(cfg_hex.len(), 64, "{p}: Config name {}", m.config);
        let config = self.file(&m.config);
        assert_eq!(
            sha256_hex(config),
            cfg_hex,
            "{p}: config hashes to its name"
        );
        if let Some(c) = &expect.config {
            assert!(
                config == c.as_slice(),
                "{p}: config differs from the source's\n--- got\n{}\n--- want\n{}",
                String::from_utf8_lossy(config),
                String::from_utf8_lossy(c)
            );
        }

        let diff_ids = self.diff_ids(0);
        assert_eq!(
            diff_ids.len(),
            m.layers.len(),
            "{p}: Layers count equals rootfs.diff_ids count"
        );
        for (i, (name, id)) in m.layers.iter().zip(&diff_ids).enumerate() {
            let hex = id.strip_prefix("sha256:").expect("sha256 diff_id");
            assert_eq!(
                name,
                &format!("{hex}/layer.tar"),
                "{p}: layer {i} stored as <diff_id hex>/layer.tar"
            );
            let data = self.file(name);
            assert_eq!(
                &sha256_digest(data),
                id,
                "{p}: layer {i} hashes to its diff_id"
            );
            assert!(
                data.len() >= 1024 && data.len() % 512 == 0,
                "{p}: layer {i} is an uncompressed tar ({} bytes)",
                data.len()
            );
        }
        if let Some(want) = &expect.diff_ids {
            assert_eq!(&diff_ids, want, "{p}: diff_ids");
        }
        if let Some(want) = &expect.repo_tags {
            assert_eq!(&m.repo_tags, want, "{p}: RepoTags");
        }

        if !m.repo_tags.is_empty() {
            let repos: Value =
                serde_json::from_slice(self.file("repositories")).expect("repositories is JSON");
            let top = m
                .layers
                .last()
                .map(|l| l.trim_end_matches("/layer.tar").to_string())
                .unwrap_or_default();
            for t in &m.repo_tags {
                let (repo, tag) = super::images::split_repo_tag(t);
                assert_eq!(
                    repos[repo][tag].as_str(),
                    Some(top.as_str()),
                    "{p}: repositories[{repo}][{tag}] names the top layer; repositories = {repos}"
                );
            }
        }
    }
}
