//! Test images built in Rust: layer tars (tar crate), gzip/zstd/plain
//! blobs, OCI configs and manifests, OCI image layouts with single images and
//! multi-platform indexes (pushed to the test registry by `push.rs`); and
//! hand-built docker-save tarballs of both Docker generations.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::layer_tar::TarBuilder;
use super::registry::Registry;
use super::tools::skopeo_ok;
use super::{sha256_digest, sha256_hex};

/// Fixed mtime for every tar entry, so builds are reproducible.
pub const MTIME: u64 = 1_700_000_000;
/// The `created` timestamp written into configs.
pub const CREATED: &str = "2023-11-14T22:13:20Z";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// gzip
    Gzip,
    /// Zstandard
    Zstd,
    /// a plain tar
    None,
}

impl Compression {
    /// Compresses a tar into a blob.
    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::Gzip => {
                let mut e = flate2::GzBuilder::new()
                    .mtime(0)
                    .write(Vec::new(), flate2::Compression::default());
                e.write_all(tar).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
            Compression::None => tar.to_vec(),
        }
    }

    /// The OCI layer media type.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), incompressible enough to
/// make blobs of a known size.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An image platform (`linux/arm/v7`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`
    pub os: String,
    /// `amd64`, `arm`, `arm64`
    pub architecture: String,
    /// `v7`, `v8`
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Platform {
        let mut it = s.split('/');
        Platform {
            os: it.next().unwrap().to_string(),
            architecture: it.next().expect("os/arch").to_string(),
            variant: it.next().map(str::to_string),
        }
    }

    /// `os/arch[/variant]`.
    pub fn name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }

    fn json(&self) -> Value {
        let mut p = json!({"architecture": self.architecture, "os": self.os});
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

/// One layer to build: its uncompressed tar and how to compress it.
#[derive(Clone)]
pub struct LayerSpec {
    /// The uncompressed tar.
    pub tar: Vec<u8>,
    /// Blob compression.
    pub compression: Compression,
    /// History `created_by`.
    pub created_by: String,
}

/// An image to build.
#[derive(Clone)]
pub struct Image {
    /// Layers, bottom first.
    pub layers: Vec<LayerSpec>,
    /// Its platform.
    pub platform: Platform,
    /// Write a wrong diff_id for this layer into the config.
    pub wrong_diff_id: Option<usize>,
}

impl Image {
    /// An image with no layers yet.
    pub fn new(platform: &str) -> Image {
        Image {
            layers: Vec::new(),
            platform: Platform::parse(platform),
            wrong_diff_id: None,
        }
    }

    /// Adds a layer on top.
    pub fn layer(mut self, tar: Vec<u8>, compression: Compression) -> Image {
        let n = self.layers.len() + 1;
        self.layers.push(LayerSpec {
            tar,
            compression,
            created_by: format!("/bin/sh -c #(nop) layer {n}"),
        });
        self
    }

    /// Makes the config lie about layer `idx`'s diff_id.
    pub fn with_wrong_diff_id(mut self, idx: usize) -> Image {
        self.wrong_diff_id = Some(idx);
        self
    }

    /// Builds blobs, config and OCI manifest.
    pub fn build(&self) -> BuiltImage {
        let layers: Vec<BuiltLayer> = self
            .layers
            .iter()
            .map(|l| {
                let blob = l.compression.compress(&l.tar);
                BuiltLayer {
                    digest: sha256_digest(&blob),
                    diff_id: sha256_digest(&l.tar),
                    media_type: l.compression.oci_media_type(),
                    compression: l.compression,
                    tar: l.tar.clone(),
                    blob,
                }
            })
            .collect();
        let mut diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
        if let Some(i) = self.wrong_diff_id {
            // Same shape, wrong value: the digest of something else.
            diff_ids[i] = sha256_digest(format!("not layer {i}").as_bytes());
        }
        let mut history: Vec<Value> = self
            .layers
            .iter()
            .map(|l| json!({"created": CREATED, "created_by": l.created_by}))
            .collect();
        // An empty_layer entry, as Dockerfile CMD/ENV steps leave.
        history.push(json!({
            "created": CREATED,
            "created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]",
            "empty_layer": true
        }));
        let mut config = json!({
            "architecture": self.platform.architecture,
            "os": self.platform.os,
        });
        if let Some(v) = &self.platform.variant {
            config["variant"] = json!(v);
        }
        config["created"] = json!(CREATED);
        config["config"] = json!({
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
            "WorkingDir": "/",
            "Labels": {"org.example.platform": self.platform.name()}
        });
        config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
        config["history"] = json!(history);
        let config = serde_json::to_vec(&config).unwrap();
        let config_digest = sha256_digest(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type, "digest": l.digest, "size": l.blob.len()
            })).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec_pretty(&manifest).unwrap();
        BuiltImage {
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config_digest,
            config,
            diff_ids,
            layers,
            platform: self.platform.clone(),
        }
    }
}

/// One built layer.
#[derive(Clone)]
pub struct BuiltLayer {
    /// Uncompressed tar.
    pub tar: Vec<u8>,
    /// The blob as stored (compressed or not).
    pub blob: Vec<u8>,
    /// Blob digest.
    pub digest: String,
    /// Digest of the uncompressed tar (the true diff_id).
    pub diff_id: String,
    /// OCI media type.
    pub media_type: &'static str,
    /// Compression.
    pub compression: Compression,
}

/// A built image: the exact bytes of its config and OCI manifest.
#[derive(Clone)]
pub struct BuiltImage {
    /// Layers, bottom first.
    pub layers: Vec<BuiltLayer>,
    /// Config bytes (unchanged by skopeo's manifest conversions).
    pub config: Vec<u8>,
    /// Config digest.
    pub config_digest: String,
    /// diff_ids as written in the config (wrong ones included).
    pub diff_ids: Vec<String>,
    /// OCI manifest bytes as written to the layout.
    pub manifest: Vec<u8>,
    /// Its digest (what the registry holds only for `PushFormat::Preserve`).
    pub manifest_digest: String,
    /// Platform.
    pub platform: Platform,
}

impl BuiltImage {
    /// The true diff_ids (digests of the layer tars).
    pub fn true_diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }
}

/// An OCI image layout directory being written.
pub struct OciLayout {
    /// The layout root.
    pub dir: PathBuf,
    refs: Vec<Value>,
}

impl OciLayout {
    /// Creates `oci-layout`, `index.json` and `blobs/sha256` under `dir`.
    pub fn create(dir: &Path) -> OciLayout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let l = OciLayout {
            dir: dir.to_path_buf(),
            refs: Vec::new(),
        };
        l.save_index();
        l
    }

    /// Writes a blob; returns its digest.
    pub fn write_blob(&self, data: &[u8]) -> String {
        let hex = sha256_hex(data);
        fs::write(self.dir.join("blobs/sha256").join(&hex), data).unwrap();
        format!("sha256:{hex}")
    }

    fn save_index(&self) {
        let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec_pretty(&idx).unwrap(),
        )
        .unwrap();
    }

    fn tag(&mut self, tag: &str, mut desc: Value) {
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.refs.retain(|r| {
            r["annotations"]["org.opencontainers.image.ref.name"].as_str() != Some(tag)
        });
        self.refs.push(desc);
        self.save_index();
    }

    fn write_image_blobs(&self, img: &BuiltImage) {
        for l in &img.layers {
            self.write_blob(&l.blob);
        }
        self.write_blob(&img.config);
        self.write_blob(&img.manifest);
    }

    /// Adds an image and tags it.
    pub fn add_image(&mut self, tag: &str, img: &BuiltImage) {
        self.write_image_blobs(img);
        let desc = json!({
            "mediaType": OCI_MANIFEST,
            "digest": img.manifest_digest,
            "size": img.manifest.len(),
        });
        self.tag(tag, desc);
    }

    /// Adds a multi-platform index over `imgs` and tags it; returns the index
    /// bytes.
    pub fn add_index(&mut self, tag: &str, imgs: &[BuiltImage]) -> Vec<u8> {
        let mut manifests = Vec::new();
        for img in imgs {
            self.write_image_blobs(img);
            manifests.push(json!({
                "mediaType": OCI_MANIFEST,
                "digest": img.manifest_digest,
                "size": img.manifest.len(),
                "platform": img.platform.json(),
            }));
        }
        let index = serde_json::to_vec_pretty(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
        )
        .unwrap();
        let digest = self.write_blob(&index);
        self.tag(
            tag,
            json!({"mediaType": OCI_INDEX, "digest": digest, "size": index.len()}),
        );
        index
    }
}

/// The raw manifest the registry serves for `repo:reference`, via
/// `skopeo inspect --raw`, and its digest.
pub fn registry_manifest(tmp: &Path, reg: &Registry, repo: &str, tag: &str) -> (Vec<u8>, String) {
    let mut args: Vec<String> = vec![
        "inspect".into(),
        "--raw".into(),
        "--tls-verify=false".into(),
    ];
    if let Some((u, p)) = reg.creds() {
        args.push("--creds".into());
        args.push(format!("{u}:{p}"));
    }
    args.push(format!("docker://{}/{repo}:{tag}", reg.host()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = skopeo_ok(tmp, &refs);
    let digest = sha256_digest(&out.stdout_bytes);
    (out.stdout_bytes, digest)
}

/// A new directory `base/prefix-N` that does not exist yet.
pub fn unique_dir(base: &Path, prefix: &str) -> PathBuf {
    fs::create_dir_all(base).unwrap();
    for n in 0.. {
        let d = base.join(format!("{prefix}-{n}"));
        if fs::create_dir(&d).is_ok() {
            return d;
        }
    }
    unreachable!()
}

// ---------------------------------------------------------------------------
// Standard test images

/// A small but realistic image: the static busybox binary with applet
/// symlinks, a hardlink, a long name, a ~512 KiB incompressible file and a
/// whiteout in the top layer. Three layers, all with `compression`.
pub fn busybox_image(compression: Compression) -> Image {
    busybox_image_mixed(&[compression, compression, compression])
}

/// [`busybox_image`] with each of the three layers compressed its own way.
pub fn busybox_image_mixed(c: &[Compression; 3]) -> Image {
    let busybox = fs::read("/usr/bin/busybox")
        .expect("read /usr/bin/busybox (install the busybox-static package)");
    let base = TarBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, &busybox)
        .symlink("bin/sh", "busybox")
        .symlink("bin/ls", "/bin/busybox")
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )
        .file("etc/motd", 0o644, b"welcome to the occystrap test image\n")
        .dir("tmp", 0o1777)
        .finish();
    let long = format!(
        "usr/share/{}/{}.txt",
        "d".repeat(90),
        "long-name-".repeat(12)
    );
    let data = TarBuilder::new()
        .dir("usr", 0o755)
        .dir("usr/share", 0o755)
        .file("usr/share/data.txt", 0o644, b"layer two data\n")
        .hardlink("usr/share/data-link.txt", "usr/share/data.txt")
        .dir(&format!("usr/share/{}", "d".repeat(90)), 0o755)
        .file(&long, 0o644, b"a file with a name longer than 100 bytes\n")
        .file(
            "usr/share/random.bin",
            0o644,
            &pseudo_random(512 * 1024, 0x5eed),
        )
        .finish();
    let top = TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/.wh.motd", 0o644, b"")
        .file("etc/hostname", 0o644, b"occystrap-test\n")
        .finish();
    Image::new("linux/amd64")
        .layer(base, c[0])
        .layer(data, c[1])
        .layer(top, c[2])
}

/// A tiny image whose top layer holds `etc/platform` = the platform name,
/// over a base layer shared by every platform.
pub fn platform_image(platform: &str, compression: Compression) -> Image {
    let base = TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/base.txt", 0o644, b"shared base layer\n")
        .finish();
    let top = TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/platform", 0o644, format!("{platform}\n").as_bytes())
        .finish();
    Image::new(platform)
        .layer(base, compression)
        .layer(top, compression)
}

/// A two-layer gzip image: `big.bin` of `len` incompressible bytes (from
/// `seed`), then a small `small.txt`.
pub fn big_and_small_image(len: usize, seed: u64) -> Image {
    use crate::support::layer_tar::TarBuilder;
    Image::new("linux/amd64")
        .layer(
            TarBuilder::new()
                .file("big.bin", 0o644, &pseudo_random(len, seed))
                .finish(),
            Compression::Gzip,
        )
        .layer(
            TarBuilder::new()
                .file("small.txt", 0o644, b"small\n")
                .finish(),
            Compression::Gzip,
        )
}

/// A one-layer image with a file `name` holding `content`.
pub fn tiny_image(name: &str, content: &str) -> Image {
    Image::new("linux/amd64").layer(
        TarBuilder::new()
            .file(name, 0o644, content.as_bytes())
            .finish(),
        Compression::Gzip,
    )
}

/// The three platforms of the multi-platform tests.
pub const PLATFORMS: [&str; 3] = ["linux/amd64", "linux/arm/v7", "linux/arm64/v8"];

// ---------------------------------------------------------------------------
// Hand-built docker-save tarballs

/// Which `docker save` generation to imitate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveStyle {
    /// Docker < 25: `<v1 id>/{VERSION,json,layer.tar}`, `<hex>.json`,
    /// `manifest.json`, `repositories`.
    Legacy,
    /// Docker 25+: an OCI layout (`blobs/sha256`, `index.json`,
    /// `oci-layout`) plus `manifest.json` and `repositories` pointing into it.
    Docker25,
}

/// Where `manifest.json` goes in the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestPos {
    /// Members sorted by name, as `docker save` writes them.
    Sorted,
    /// `manifest.json` first.
    First,
    /// `manifest.json` the very last member.
    Last,
}

/// The members of a docker-save tarball: name -> bytes (None for a directory).
type Members = BTreeMap<String, Option<Vec<u8>>>;

/// Adds one image's members in the legacy layout (`<id>/layer.tar` with v1
/// json, config at the top); returns its config name, layer names and top
/// layer id.
fn add_legacy_image(members: &mut Members, img: &BuiltImage) -> (String, Vec<String>, String) {
    let mut parent: Option<String> = None;
    let mut names = Vec::new();
    for (i, l) in img.layers.iter().enumerate() {
        let id =
            sha256_hex(format!("{}+{}", parent.clone().unwrap_or_default(), l.diff_id).as_bytes());
        let mut v1 = json!({"id": id, "created": CREATED, "os": "linux"});
        if let Some(p) = &parent {
            v1["parent"] = json!(p);
        }
        if i + 1 == img.layers.len() {
            v1["architecture"] = json!(img.platform.architecture);
            v1["config"] = json!({"Cmd": ["sh"]});
        }
        members.insert(format!("{id}/"), None);
        members.insert(format!("{id}/VERSION"), Some(b"1.0".to_vec()));
        members.insert(format!("{id}/json"), Some(serde_json::to_vec(&v1).unwrap()));
        members.insert(format!("{id}/layer.tar"), Some(l.tar.clone()));
        names.push(format!("{id}/layer.tar"));
        parent = Some(id);
    }
    let cfg = format!("{}.json", &img.config_digest[7..]);
    members.insert(cfg.clone(), Some(img.config.clone()));
    (cfg, names, parent.unwrap_or_default())
}

/// Adds one image's members in the Docker 25 layout (an OCI layout inside);
/// pushes its index entry; returns its config name, layer names and top
/// layer id.
fn add_docker25_image(
    members: &mut Members,
    index_entries: &mut Vec<Value>,
    img: &BuiltImage,
    tags: &[String],
) -> (String, Vec<String>, String) {
    members.insert("blobs/".into(), None);
    members.insert("blobs/sha256/".into(), None);
    let mut names = Vec::new();
    let mut descs = Vec::new();
    for l in &img.layers {
        let hex = &l.diff_id[7..];
        members.insert(format!("blobs/sha256/{hex}"), Some(l.tar.clone()));
        names.push(format!("blobs/sha256/{hex}"));
        descs.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": l.diff_id,
            "size": l.tar.len(),
        }));
    }
    let cfg = format!("blobs/sha256/{}", &img.config_digest[7..]);
    members.insert(cfg.clone(), Some(img.config.clone()));
    let man = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": img.config_digest, "size": img.config.len()},
        "layers": descs,
    }))
    .unwrap();
    let man_hex = sha256_hex(&man);
    members.insert(format!("blobs/sha256/{man_hex}"), Some(man.clone()));
    let mut desc = json!({
        "mediaType": OCI_MANIFEST,
        "digest": format!("sha256:{man_hex}"),
        "size": man.len(),
    });
    if let Some(t) = tags.first() {
        let (_, tag) = split_repo_tag(t);
        desc["annotations"] = json!({
            "io.containerd.image.name": t,
            "org.opencontainers.image.ref.name": tag,
        });
    }
    index_entries.push(desc);
    let top = img
        .layers
        .last()
        .map(|l| l.diff_id[7..].to_string())
        .unwrap_or_default();
    (cfg, names, top)
}

/// The members in tar order, with manifest.json placed as `pos` says.
fn order_members(
    members: Members,
    manifest_bytes: Vec<u8>,
    pos: ManifestPos,
) -> Vec<(String, Option<Vec<u8>>)> {
    let mut ordered: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    let man = ("manifest.json".to_string(), Some(manifest_bytes));
    if pos == ManifestPos::First {
        ordered.push(man.clone());
    }
    let mut rest: Vec<(String, Option<Vec<u8>>)> = members.into_iter().collect();
    if pos == ManifestPos::Sorted {
        rest.push(man.clone());
        rest.sort_by(|a, b| a.0.cmp(&b.0));
    }
    ordered.extend(rest);
    if pos == ManifestPos::Last {
        ordered.push(man);
    }
    ordered
}

/// Writes a docker-save tarball holding `images`, each with its RepoTags.
/// Layers are stored uncompressed. Shared layers are stored once.
pub fn write_docker_save(
    path: &Path,
    images: &[(&BuiltImage, Vec<String>)],
    style: SaveStyle,
    pos: ManifestPos,
) {
    let mut members: Members = BTreeMap::new();
    let mut manifest = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut index_entries = Vec::new();
    for (img, tags) in images {
        let (config_name, layer_names, top) = match style {
            SaveStyle::Legacy => add_legacy_image(&mut members, img),
            SaveStyle::Docker25 => add_docker25_image(&mut members, &mut index_entries, img, tags),
        };
        for t in tags {
            let (repo, tag) = split_repo_tag(t);
            repositories
                .entry(repo.to_string())
                .or_default()
                .insert(tag.to_string(), top.clone());
        }
        manifest.push(json!({"Config": config_name, "RepoTags": tags, "Layers": layer_names}));
    }
    if style == SaveStyle::Docker25 {
        members.insert(
            "oci-layout".into(),
            Some(br#"{"imageLayoutVersion": "1.0.0"}"#.to_vec()),
        );
        members.insert(
            "index.json".into(),
            Some(
                serde_json::to_vec(&json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_INDEX,
                    "manifests": index_entries,
                }))
                .unwrap(),
            ),
        );
    }
    members.insert(
        "repositories".into(),
        Some(serde_json::to_vec(&repositories).unwrap()),
    );
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();

    write_tar(path, &order_members(members, manifest_bytes, pos));
}

/// Writes a plain tar of `(name, Some(data) | None for a directory)`.
pub fn write_tar(path: &Path, members: &[(String, Option<Vec<u8>>)]) {
    let mut b = TarBuilder::new();
    for (name, data) in members {
        b = match data {
            Some(d) => b.file(name, 0o644, d),
            None => b.dir(name.trim_end_matches('/'), 0o755),
        };
    }
    fs::write(path, b.finish()).unwrap();
}

/// Splits `host:port/repo:tag` into (`host:port/repo`, `tag`), defaulting the
/// tag to `latest`.
pub fn split_repo_tag(s: &str) -> (&str, &str) {
    let slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
    match s[slash..].rfind(':') {
        Some(i) => (&s[..slash + i], &s[slash + i + 1..]),
        None => (s, "latest"),
    }
}
