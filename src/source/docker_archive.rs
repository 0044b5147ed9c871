//! docker-save tarball reader.
//!
//! Reads every generation of the format: Docker before 25 (`<id>/layer.tar`
//! and `<hex>.json`), Docker 25+ (an OCI layout inside, with `manifest.json`
//! pointing at `blobs/sha256/<hex>`) and skopeo's `docker-archive:` output
//! (`<hex>.tar` layers, `<hex>` config). All of them are described by
//! `manifest.json`, so the reader only follows the paths it names.
//!
//! The tarball is indexed once, header by header, seeking over member data;
//! layers are then served as byte ranges of the tarball itself whenever they
//! are stored uncompressed, so nothing is copied.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::format::docker_save::{
    MANIFEST, ManifestEntry, OCI_INDEX, REPOSITORIES, read_diff_ids, split_repo_tag,
};
use crate::image::{FileSlice, Image, LayerInfo, media_type};
use crate::source::{FetchContext, LayerBlob, Source};

/// Largest `manifest.json` or config we read into memory; real ones are a few
/// KiB, so anything bigger is a hostile or broken archive.
const METADATA_LIMIT: u64 = 8 << 20;

/// How many links may be followed to reach a member; more means a loop.
const MAX_LINK_HOPS: usize = 32;

/// A docker-save tarball (`docker save`, `podman save`, `skopeo copy
/// docker-archive:`) opened as an image source.
pub struct DockerArchiveSource {
    path: Arc<PathBuf>,
    select: Option<String>,
    image: Image,
    /// The member holding each layer, in image order.
    layers: Vec<Member>,
}

/// A regular file inside the tarball.
#[derive(Clone, Debug)]
struct Member {
    name: String,
    offset: u64,
    size: u64,
}

/// What a name in the tarball's index refers to.
enum IndexEntry {
    File(Member),
    /// A hard or symbolic link, already turned into the archive path it names.
    Link(String),
}

impl DockerArchiveSource {
    /// Indexes the tarball at `path` and reads its manifest and config.
    ///
    /// `select` picks an image by `NAME:TAG` from a tarball holding several;
    /// without it the first image is used.
    pub fn open(path: &Path, select: Option<&str>) -> Result<Self> {
        let invalid = |message: String| Error::InvalidArchive {
            path: path.to_path_buf(),
            message,
        };
        // Only a regular file: a FIFO, socket or device given as the input
        // is refused at once instead of blocking the run.
        let mut file = crate::fsutil::open_regular(path)?
            .ok_or_else(|| Error::io("opening", path, std::io::ErrorKind::NotFound.into()))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("reading", path, e))?
            .len();
        let index = index_members(&mut file, file_len).map_err(invalid)?;

        let manifest = manifest_member(&index).map_err(invalid)?;
        let raw = read_member(&mut file, &manifest).map_err(|e| match e {
            ReadError::Io(e) => Error::io("reading", path, e),
            ReadError::Invalid(m) => invalid(m),
        })?;
        let entries: Option<Vec<ManifestEntry>> = serde_json::from_slice(&raw)
            .map_err(|e| invalid(format!("manifest.json is not a docker-save manifest: {e}")))?;
        let entries = match entries {
            None => {
                return Err(invalid(
                    "manifest.json is null: the archive lists no image".into(),
                ));
            }
            Some(v) if v.is_empty() => {
                return Err(invalid(
                    "manifest.json is an empty list: the archive holds no image".into(),
                ));
            }
            Some(v) => v,
        };
        let (entry, repo_tag) = choose(&entries, select).map_err(invalid)?;

        let config_member = lookup(&index, &entry.config)
            .map_err(|e| invalid(format!("config {:?}: {e}", entry.config)))?;
        let config_raw = read_member(&mut file, &config_member).map_err(|e| match e {
            ReadError::Io(e) => Error::io("reading", path, e),
            ReadError::Invalid(m) => invalid(format!("config {:?}: {m}", entry.config)),
        })?;
        let diff_ids = read_diff_ids(&config_raw)
            .map_err(|e| invalid(format!("config {:?}: {e}", entry.config)))?;

        let layer_names = entry.layers.as_deref().unwrap_or_default();
        if layer_names.len() != diff_ids.len() {
            return Err(invalid(format!(
                "manifest.json lists {} layers but the config has {} diff_ids",
                layer_names.len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::with_capacity(layer_names.len());
        let mut infos = Vec::with_capacity(layer_names.len());
        for (i, (name, diff_id)) in layer_names.iter().zip(diff_ids).enumerate() {
            let member = lookup(&index, name).map_err(|e| invalid(format!("layer {i}: {e}")))?;
            infos.push(LayerInfo {
                index: i,
                digest: diff_id.clone(),
                size: member.size,
                media_type: media_type::OCI_LAYER_TAR.to_string(),
                diff_id,
            });
            layers.push(member);
        }

        let (name, tag) = match repo_tag {
            Some(rt) => split_repo_tag(rt),
            None => (name_from_path(path), None),
        };
        let image = Image {
            name,
            tag,
            manifest: None,
            config_digest: Digest::sha256_of(&config_raw),
            config_raw,
            config_media_type: media_type::DOCKER_CONFIG.to_string(),
            layers: infos,
        };
        Ok(DockerArchiveSource {
            path: Arc::new(path.to_path_buf()),
            select: select.map(str::to_string),
            image,
            layers,
        })
    }
}

/// The tarball's manifest.json; without one, says what the tarball looks
/// like instead (a pre-1.10 docker save, an OCI layout).
fn manifest_member(index: &HashMap<String, IndexEntry>) -> std::result::Result<Member, String> {
    match lookup(index, MANIFEST) {
        Ok(m) => Ok(m),
        Err(_) if index.contains_key(REPOSITORIES) => Err(
            "legacy docker-save format (before Docker 1.10: `repositories` but no \
             manifest.json) is not supported; re-save the image with a current docker"
                .into(),
        ),
        Err(_) if index.contains_key(OCI_INDEX) => {
            Err("no manifest.json: this is an OCI image layout, not a docker-save archive".into())
        }
        Err(e) => Err(format!("not a docker-save archive: {e}")),
    }
}

impl Source for DockerArchiveSource {
    fn describe(&self) -> String {
        match &self.select {
            Some(s) => format!("docker-archive {} ({s})", self.path.display()),
            None => format!("docker-archive {}", self.path.display()),
        }
    }

    fn resolve<'a>(&'a self, _ctx: &'a FetchContext) -> BoxFuture<'a, Result<Image>> {
        // Everything was read and checked by `open`, so a bad archive fails
        // before the pipeline starts.
        Box::pin(async move { Ok(self.image.clone()) })
    }

    fn fetch<'a>(
        &'a self,
        layer: &'a LayerInfo,
        _ctx: &'a FetchContext,
    ) -> BoxFuture<'a, Result<LayerBlob>> {
        Box::pin(async move {
            let member = self.layers.get(layer.index).ok_or_else(|| {
                Error::InvalidImage(format!(
                    "{}: no layer {} (the image has {})",
                    self.describe(),
                    layer.index,
                    self.layers.len()
                ))
            })?;
            let path: &Path = &self.path;
            let mut file = crate::fsutil::open_regular(path)?
                .ok_or_else(|| Error::io("opening", path, io::ErrorKind::NotFound.into()))?;
            file.seek(SeekFrom::Start(member.offset))
                .map_err(|e| Error::io("reading", path, e))?;
            let mut blob = LayerBlob::new(layer, Box::new(file.take(member.size)));
            blob.in_place = Some(FileSlice::range(
                self.path.clone(),
                member.offset,
                member.size,
            ));
            // Known by its diff_id only: a compressed member's bytes say its
            // blob digest and media type.
            blob.digest_known = false;
            blob.label = format!(
                "layer {} ({}) of {}",
                layer.index,
                short(&member.name),
                path.display()
            );
            Ok(blob)
        })
    }
}

/// Reads every header of the tarball, seeking over the data, and records where
/// each member's bytes are.
fn index_members(
    file: &mut File,
    file_len: u64,
) -> std::result::Result<HashMap<String, IndexEntry>, String> {
    // The shared reader: extension headers capped before allocation, names
    // resolved as everywhere else.
    let mut archive = crate::tarfmt::Archive::new(crate::tarfmt::BufSeek(BufReader::new(file)));
    let mut index = HashMap::new();
    loop {
        let entry = match archive.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => {
                return Err(format!(
                    "not a readable tar archive (after {} members): {e}",
                    index.len()
                ));
            }
        };
        let Ok(raw_name) = std::str::from_utf8(entry.path()).map(str::to_string) else {
            // manifest.json can only name UTF-8 paths, so these are never used.
            continue;
        };
        let name = clean(&raw_name);
        if name.is_empty() {
            continue;
        }
        let kind = tar::EntryType::new(entry.kind());
        let regular = matches!(entry.kind(), b'0' | b'7') && !entry.resolved.is_sparse();
        let record = if regular {
            let offset = entry.data_offset;
            let size = entry.data_size;
            if offset.checked_add(size).is_none_or(|end| end > file_len) {
                return Err(format!(
                    "truncated: member {:?} claims {size} bytes at offset {offset} but the file is \
                     {file_len} bytes",
                    short(&name)
                ));
            }
            IndexEntry::File(Member {
                name: name.clone(),
                offset,
                size,
            })
        } else if kind.is_hard_link() || kind.is_symlink() {
            let Ok(target) = std::str::from_utf8(entry.link()).map(str::to_string) else {
                continue;
            };
            // A hard link names an archive path; a symlink is relative to
            // the directory holding it unless absolute.
            let target = if kind.is_hard_link() || target.starts_with('/') {
                clean(&target)
            } else {
                let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                clean(&format!("{dir}/{target}"))
            };
            IndexEntry::Link(target)
        } else {
            continue;
        };
        index.insert(name, record);
    }
    Ok(index)
}

/// Finds the regular file a manifest path names, following links.
fn lookup(index: &HashMap<String, IndexEntry>, name: &str) -> std::result::Result<Member, String> {
    let mut current = clean(name);
    for _ in 0..MAX_LINK_HOPS {
        match index.get(&current) {
            Some(IndexEntry::File(m)) => return Ok(m.clone()),
            Some(IndexEntry::Link(target)) => current = target.clone(),
            None if current == clean(name) => {
                return Err(format!("{:?} is not in the archive", short(name)));
            }
            None => {
                return Err(format!(
                    "{:?} links to {:?}, which is not in the archive",
                    short(name),
                    short(&current)
                ));
            }
        }
    }
    Err(format!("{:?}: too many levels of links", short(name)))
}

/// The lexical form of an archive path: no leading `/` or `./`, no `.` or
/// empty components, `..` applied (and clamped at the root).
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// Shortens a name from the archive for an error message.
fn short(s: &str) -> String {
    crate::digest::truncate_for_error(s)
}

enum ReadError {
    Io(io::Error),
    Invalid(String),
}

/// Reads a small member (manifest or config) into memory.
fn read_member(file: &mut File, member: &Member) -> std::result::Result<Vec<u8>, ReadError> {
    if member.size > METADATA_LIMIT {
        return Err(ReadError::Invalid(format!(
            "{:?} is {} bytes, more than the {} MiB limit",
            short(&member.name),
            member.size,
            METADATA_LIMIT >> 20
        )));
    }
    file.seek(SeekFrom::Start(member.offset))
        .map_err(ReadError::Io)?;
    // The size is capped above, so this cast cannot truncate.
    let mut buf = vec![0; member.size as usize];
    file.read_exact(&mut buf).map_err(ReadError::Io)?;
    Ok(buf)
}

/// Picks the manifest entry `select` names (or the first) and its RepoTag.
fn choose<'m>(
    entries: &'m [ManifestEntry],
    select: Option<&str>,
) -> std::result::Result<(&'m ManifestEntry, Option<&'m str>), String> {
    let tags = |e: &'m ManifestEntry| e.repo_tags.iter().flatten().map(String::as_str);
    let Some(want) = select else {
        let first = entries.first().ok_or("the archive holds no image")?;
        return Ok((first, tags(first).next()));
    };
    let want_key = tag_key(want);
    for entry in entries {
        if let Some(tag) = tags(entry).find(|t| tag_key(t) == want_key) {
            return Ok((entry, Some(tag)));
        }
    }
    let available: Vec<&str> = entries.iter().flat_map(tags).collect();
    Err(if available.is_empty() {
        format!(
            "no image tagged {:?}: the archive's images have no tags",
            short(want)
        )
    } else {
        format!(
            "no image tagged {:?}; available: {}",
            short(want),
            available.join(", ")
        )
    })
}

/// A RepoTag in the form used for matching: the Docker Hub prefixes docker
/// adds or drops depending on version are removed, and a missing tag means
/// `latest`, as it does for `docker run`.
fn tag_key(s: &str) -> String {
    let mut s = s.trim();
    for prefix in ["docker.io/", "index.docker.io/", "library/"] {
        s = s.strip_prefix(prefix).unwrap_or(s);
    }
    let (name, tag) = split_repo_tag(s);
    format!("{}:{}", name, tag.as_deref().unwrap_or("latest"))
}

/// A repository name for an untagged image: the archive's file name, in the
/// lowercase docker insists on.
fn name_from_path(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if stem.is_empty() {
        "image".to_string()
    } else {
        stem
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::LayerNeeds;
    use crate::progress::Silent;
    use std::io::Write;

    pub(crate) const FIXTURES: [&str; 6] = [
        "hello-world-v25.tar",
        "test_image_1.tar",
        "test_bundle.tar",
        "test_link.tar",
        "whiteout_image.tar",
        "overwritten_file.tar",
    ];

    pub(crate) fn fixture(name: &str) -> PathBuf {
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/docker-save"
        ))
        .join(name)
    }

    pub(crate) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    pub(crate) fn context(temp_dir: &Path) -> FetchContext {
        FetchContext::new(temp_dir.to_path_buf(), Arc::new(Silent))
    }

    /// Every RepoTag of a fixture, so multi-image archives are read whole.
    pub(crate) fn repo_tags(path: &Path) -> Vec<String> {
        let mut archive = tar::Archive::new(File::open(path).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap() == Path::new("manifest.json") {
                let mut raw = Vec::new();
                entry.read_to_end(&mut raw).unwrap();
                let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
                return v
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|e| e["RepoTags"].as_array().cloned().unwrap_or_default())
                    .map(|t| t.as_str().unwrap().to_string())
                    .collect();
            }
        }
        Vec::new()
    }

    pub(crate) fn read_slice(slice: &FileSlice) -> Vec<u8> {
        let mut out = Vec::new();
        slice.open().unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, slice.len());
        out
    }

    /// Fetches every layer with both forms and checks what came back.
    fn fetch_all(source: &DockerArchiveSource, temp: &Path) -> Image {
        let ctx = context(temp);
        let rt = runtime();
        let image = rt.block_on(source.resolve(&ctx)).unwrap();
        let both = LayerNeeds::TAR.union(LayerNeeds::BLOB);
        for info in &image.layers {
            let layer = rt
                .block_on(crate::pipeline::fetch_layer(source, info, both, &ctx))
                .unwrap();
            let tar = read_slice(layer.tar.as_ref().unwrap());
            assert_eq!(Digest::sha256_of(&tar), info.diff_id);
            let blob = read_slice(layer.blob.as_ref().unwrap());
            assert_eq!(Digest::sha256_of(&blob), layer.info.digest);
            assert_eq!(blob.len() as u64, layer.info.size);
        }
        image
    }

    #[test]
    fn reads_every_fixture() {
        let temp = tempfile::tempdir().unwrap();
        for name in FIXTURES {
            let path = fixture(name);
            let source =
                DockerArchiveSource::open(&path, None).unwrap_or_else(|e| panic!("{name}: {e}"));
            let image = fetch_all(&source, temp.path());
            assert!(!image.layers.is_empty(), "{name}");
            assert_eq!(image.config_digest, Digest::sha256_of(&image.config_raw));
            for tag in repo_tags(&path) {
                let source = DockerArchiveSource::open(&path, Some(&tag))
                    .unwrap_or_else(|e| panic!("{name} {tag}: {e}"));
                fetch_all(&source, temp.path());
            }
        }
        assert_eq!(std::fs::read_dir(temp.path()).unwrap().count(), 0);
    }

    #[test]
    fn names_and_tags() {
        let s = DockerArchiveSource::open(&fixture("test_image_1.tar"), None).unwrap();
        assert_eq!(s.image.name, "bazel/v1/tarball");
        assert_eq!(s.image.tag.as_deref(), Some("test_image_1"));
        // RepoTags is null in this one, so the file names the image.
        let s = DockerArchiveSource::open(&fixture("hello-world-v25.tar"), None).unwrap();
        assert_eq!(s.image.name, "hello-world-v25");
        assert_eq!(s.image.tag, None);
        assert_eq!(
            split_repo_tag("localhost:5000/app"),
            ("localhost:5000/app".into(), None)
        );
        assert_eq!(
            split_repo_tag("localhost:5000/app:v1"),
            ("localhost:5000/app".into(), Some("v1".into()))
        );
        assert_eq!(tag_key("docker.io/library/busybox"), "busybox:latest");
        assert_eq!(tag_key("library/busybox:1"), tag_key("busybox:1"));
    }

    #[test]
    fn bundle_selects_by_tag() {
        let path = fixture("test_bundle.tar");
        let one = DockerArchiveSource::open(&path, Some("test_image_1")).unwrap();
        let two = DockerArchiveSource::open(&path, Some("test_image_2:latest")).unwrap();
        let first = DockerArchiveSource::open(&path, None).unwrap();
        assert_ne!(one.image.config_raw, two.image.config_raw);
        assert_eq!(first.image.config_raw, two.image.config_raw);
        assert_eq!(one.image.name, "test_image_1");
        let hub = DockerArchiveSource::open(&path, Some("docker.io/library/test_image_1")).unwrap();
        assert_eq!(hub.image.config_raw, one.image.config_raw);

        let err = DockerArchiveSource::open(&path, Some("nope:1"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("test_image_1") && err.contains("test_image_2"),
            "{err}"
        );
        assert!(err.contains("nope:1"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn link_shares_a_layer() {
        let path = fixture("test_link.tar");
        let s = DockerArchiveSource::open(&path, Some("bazel/v1/tarball:test_image_3")).unwrap();
        let target =
            DockerArchiveSource::open(&path, Some("bazel/v1/tarball:test_image_1")).unwrap();
        assert_eq!(s.layers[0].offset, target.layers[0].offset);
    }

    #[test]
    fn legacy_and_null_manifests_are_clear_errors() {
        let err = DockerArchiveSource::open(&fixture("no_manifest.tar"), None)
            .err()
            .unwrap();
        assert!(matches!(err, Error::InvalidArchive { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("legacy") && msg.contains("not supported"),
            "{msg}"
        );

        let err = DockerArchiveSource::open(&fixture("null_manifest.tar"), None)
            .err()
            .unwrap();
        assert!(matches!(err, Error::InvalidArchive { .. }));
        assert!(err.to_string().contains("manifest.json is null"), "{err}");
    }

    /// A tar member for hand-built archives.
    pub(crate) enum Item<'a> {
        File(&'a str, &'a [u8]),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
    }

    pub(crate) fn build_tar(items: &[Item]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for item in items {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_mtime(0);
            match item {
                Item::File(name, data) => {
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, name, *data).unwrap();
                }
                Item::Symlink(name, target) | Item::Hardlink(name, target) => {
                    h.set_entry_type(if matches!(item, Item::Symlink(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    h.set_size(0);
                    b.append_link(&mut h, name, target).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn config_for(tars: &[&[u8]]) -> Vec<u8> {
        let diff_ids: Vec<String> = tars
            .iter()
            .map(|t| Digest::sha256_of(t).to_string())
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A skopeo-style archive: `./`-prefixed names, `<hex>.tar` layers (one
    /// gzip, one zstd), an extensionless config, a layer reached by symlink.
    #[test]
    fn skopeo_style_with_compressed_layers() {
        let layer1 = build_tar(&[Item::File("etc/a", b"one")]);
        let layer2 = build_tar(&[Item::File("etc/b", b"two two")]);
        let layer3 = build_tar(&[Item::File("etc/c", b"three")]);
        let blob1 = gzip(&layer1);
        let blob2 = zstd::encode_all(&layer2[..], 3).unwrap();
        let config = config_for(&[&layer1, &layer2, &layer3]);
        let config_hex = Digest::sha256_of(&config).hex().to_string();
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": config_hex,
            "RepoTags": ["registry.example:5000/team/app:v2"],
            "Layers": ["b1.tar", "./b2.tar", "link/l3.tar"],
        }]))
        .unwrap();
        let archive = build_tar(&[
            Item::File("./b1.tar", &blob1),
            Item::File("./b2.tar", &blob2),
            Item::File("./real/l3.tar", &layer3),
            Item::Symlink("./link/l3.tar", "../real/../real/l3.tar"),
            Item::File(&format!("./{config_hex}"), &config),
            Item::File("./manifest.json", &manifest),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skopeo.tar");
        std::fs::write(&path, archive).unwrap();

        let source = DockerArchiveSource::open(&path, None).unwrap();
        assert_eq!(source.image.name, "registry.example:5000/team/app");
        assert_eq!(source.image.tag.as_deref(), Some("v2"));
        let temp = dir.path().join("tmp");
        std::fs::create_dir(&temp).unwrap();
        let ctx = context(&temp);
        let rt = runtime();
        let image = rt.block_on(source.resolve(&ctx)).unwrap();
        let both = LayerNeeds::TAR.union(LayerNeeds::BLOB);
        let l0 = rt
            .block_on(crate::pipeline::fetch_layer(
                &source,
                &image.layers[0],
                both,
                &ctx,
            ))
            .unwrap();
        assert_eq!(l0.info.media_type, media_type::OCI_LAYER_GZIP);
        assert_eq!(l0.info.digest, Digest::sha256_of(&blob1));
        assert_eq!(read_slice(l0.tar.as_ref().unwrap()), layer1);
        assert_eq!(read_slice(l0.blob.as_ref().unwrap()), blob1);
        let l1 = rt
            .block_on(crate::pipeline::fetch_layer(
                &source,
                &image.layers[1],
                LayerNeeds::TAR,
                &ctx,
            ))
            .unwrap();
        assert_eq!(l1.info.media_type, media_type::OCI_LAYER_ZSTD);
        assert_eq!(read_slice(l1.tar.as_ref().unwrap()), layer2);
        assert!(l1.blob.is_none());
        let l2 = rt
            .block_on(crate::pipeline::fetch_layer(
                &source,
                &image.layers[2],
                both,
                &ctx,
            ))
            .unwrap();
        assert_eq!(l2.info.media_type, media_type::OCI_LAYER_TAR);
        assert_eq!(l2.tar.as_ref().unwrap().path(), path.as_path());
        assert_eq!(read_slice(l2.tar.as_ref().unwrap()), layer3);

        // Temp files live exactly as long as the slices pointing at them.
        assert_eq!(std::fs::read_dir(&temp).unwrap().count(), 2);
        drop((l0, l1, l2));
        assert_eq!(std::fs::read_dir(&temp).unwrap().count(), 0);
    }

    #[test]
    fn corrupt_layer_is_a_digest_mismatch() {
        let layer = build_tar(&[Item::File("a", b"hello")]);
        let config = config_for(&[&build_tar(&[Item::File("a", b"HELLO")])]);
        let manifest = br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l/layer.tar"]}]"#;
        let archive = build_tar(&[
            Item::File("l/layer.tar", &layer),
            Item::File("c.json", &config),
            Item::File("manifest.json", manifest),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.tar");
        std::fs::write(&path, archive).unwrap();
        let source = DockerArchiveSource::open(&path, None).unwrap();
        let ctx = context(dir.path());
        let rt = runtime();
        let err = rt
            .block_on(crate::pipeline::fetch_layer(
                &source,
                &source.image.layers[0],
                LayerNeeds::TAR,
                &ctx,
            ))
            .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    }

    #[test]
    fn hostile_archives_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            DockerArchiveSource::open(&path, None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };

        // A member claiming far more bytes than the file holds.
        let mut archive = build_tar(&[Item::File("manifest.json", b"[]")]);
        let mut header = tar::Header::new_gnu();
        header.set_path("big").unwrap();
        header.set_size(1 << 50);
        header.set_cksum();
        let end = archive.len() - 1024;
        archive.splice(end..end, header.as_bytes().iter().copied());
        assert!(open("big.tar", &archive).contains("truncated"));

        // Links that loop.
        let archive = build_tar(&[
            Item::Symlink("manifest.json", "a"),
            Item::Hardlink("a", "manifest.json"),
        ]);
        assert!(open("loop.tar", &archive).contains("too many levels"));

        // An empty image list, a manifest naming a missing config, and garbage.
        let archive = build_tar(&[Item::File("manifest.json", b"[]")]);
        assert!(open("empty.tar", &archive).contains("empty list"));
        let archive = build_tar(&[Item::File(
            "manifest.json",
            br#"[{"Config":"../../etc/passwd","Layers":[]}]"#,
        )]);
        assert!(open("missing.tar", &archive).contains("not in the archive"));
        assert!(!open("junk.tar", &[7u8; 2048]).is_empty());
        assert!(!open("zero.tar", b"").is_empty());
    }

    #[test]
    fn layer_count_must_match_diff_ids() {
        let layer = build_tar(&[Item::File("a", b"hello")]);
        let config = config_for(&[&layer, &layer]);
        let manifest = br#"[{"Config":"c.json","RepoTags":null,"Layers":["l.tar"]}]"#;
        let archive = build_tar(&[
            Item::File("l.tar", &layer),
            Item::File("c.json", &config),
            Item::File("manifest.json", manifest),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("count.tar");
        std::fs::write(&path, archive).unwrap();
        let err = DockerArchiveSource::open(&path, None).err().unwrap();
        assert!(
            err.to_string().contains("1 layers but the config has 2"),
            "{err}"
        );
    }
}
