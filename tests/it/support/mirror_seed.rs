//! Seeding a source registry for the `mirror` tests: many small images
//! sharing base layers, in OCI and Docker formats, some multi-platform
//! (OCI indexes and Docker manifest lists), some with cosign-style
//! `sha256-<hex>.sig` tags, pushed straight over the registry API.
//!
//! Why not skopeo: a hundred `skopeo copy` runs cost tens of seconds, and
//! these tests need the bytes of every manifest (to compare digests) more
//! than another client's conversions. The images are still built by
//! `images.rs`; only the upload is done here, with the two-request
//! monolithic blob upload (POST, then PUT with `digest`) every registry
//! supports. Also what the tests check the destination and the proxies'
//! logs with.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use super::http;
use super::images::{BuiltImage, Compression, Image, pseudo_random};
use super::layer_tar::TarBuilder;
use super::proxy::{Proxy, Record};
use super::sha256_digest;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const COSIGN_LAYER: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// How a seeded tag is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One OCI image manifest.
    Oci,
    /// One Docker schema2 manifest.
    Docker,
    /// An OCI index over linux/amd64 and linux/arm64.
    OciIndex,
    /// A Docker manifest list over linux/amd64 and linux/arm64.
    DockerList,
}

/// What was pushed: every image tag's manifest digest, and the referrer
/// tags (which a mirror must not copy as images).
#[derive(Clone, Debug, Default)]
pub struct Seeded {
    /// `(repository, tag)` -> manifest digest, image tags only.
    pub images: BTreeMap<(String, String), String>,
    /// `(repository, tag)` -> its kind.
    pub kinds: BTreeMap<(String, String), Kind>,
    /// `(repository, tag)` of `sha256-<hex>[.sig|.att]` tags.
    pub referrer_tags: Vec<(String, String)>,
}

impl Seeded {
    /// The source repositories, sorted.
    pub fn repositories(&self) -> Vec<String> {
        let mut r: Vec<String> = self.images.keys().map(|(r, _)| r.clone()).collect();
        r.dedup();
        r
    }

    /// Records an image tag.
    pub fn add(&mut self, repo: &str, tag: &str, kind: Kind, digest: String) {
        let key = (repo.to_string(), tag.to_string());
        self.images.insert(key.clone(), digest);
        self.kinds.insert(key, kind);
    }
}

/// The standard seed: 30 repositories × 3 tags (`lib/app-00` to
/// `lib/app-19` with `1.0.0`, `1.1.0`, `latest`; `team/svc-a` to
/// `team/svc-j` with `v1`, `v2`, `edge`), every image over one shared base
/// layer; OCI and Docker manifests, indexes and manifest lists, and
/// signature tags on every third repository.
pub fn seed_standard(host: &str) -> Seeded {
    let mut repos: Vec<(String, [&str; 3])> = (0..20)
        .map(|i| (format!("lib/app-{i:02}"), ["1.0.0", "1.1.0", "latest"]))
        .collect();
    repos.extend((b'a'..=b'j').map(|c| (format!("team/svc-{}", c as char), ["v1", "v2", "edge"])));
    let repos: Vec<(usize, String, [&str; 3])> = repos
        .into_iter()
        .enumerate()
        .map(|(i, (r, t))| (i, r, t))
        .collect();
    // Pushers at once: the registry's latency is the slow part.
    let parts: Vec<Seeded> = std::thread::scope(|s| {
        let chunks: Vec<_> = repos.chunks(repos.len().div_ceil(6)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    let mut seeded = Seeded::default();
                    for (i, repo, tags) in chunk {
                        let i = *i;
                        for (k, tag) in tags.iter().enumerate() {
                            let kind = standard_kind(i, k);
                            let d = push_kind(host, repo, tag, kind, 0);
                            seeded.add(repo, tag, kind, d);
                        }
                        add_signatures(host, repo, i, tags, &mut seeded);
                    }
                    seeded
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = Seeded::default();
    for p in parts {
        all.images.extend(p.images);
        all.kinds.extend(p.kinds);
        all.referrer_tags.extend(p.referrer_tags);
    }
    all
}

fn standard_kind(i: usize, k: usize) -> Kind {
    match (k, i % 6, i % 5) {
        (2, 0, _) => Kind::OciIndex,
        (2, 3, _) => Kind::DockerList,
        (_, _, 2) => Kind::Docker,
        _ => Kind::Oci,
    }
}

fn add_signatures(host: &str, repo: &str, i: usize, tags: &[&str; 3], seeded: &mut Seeded) {
    let digest_of = |t: &str| seeded.images[&(repo.to_string(), t.to_string())].clone();
    let mut sigs = Vec::new();
    if i % 3 == 0 {
        sigs.push((digest_of(tags[2]), ".sig"));
    }
    if i % 7 == 1 {
        sigs.push((digest_of(tags[0]), ".att"));
    }
    if i % 7 == 2 {
        sigs.push((digest_of(tags[1]), ""));
    }
    for (d, suffix) in sigs {
        let tag = push_signature(host, repo, &d, suffix);
        seeded.referrer_tags.push((repo.to_string(), tag));
    }
}

/// The layer every seeded image starts with.
pub fn base_layer() -> Vec<u8> {
    TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/os-release", 0o644, b"NAME=seed\nID=seed\n")
        .dir("usr", 0o755)
        .file("usr/libseed.so", 0o644, &pseudo_random(8 * 1024, 0xba5e))
        .finish()
}

/// A two-layer image for `repo:tag` (generation `generation`, to change a
/// tag upstream) on `platform`: the shared base, then a layer of its own.
pub fn seed_image(repo: &str, tag: &str, platform: &str, generation: u32) -> Image {
    let own = TarBuilder::new()
        .dir("app", 0o755)
        .file(
            "app/id",
            0o644,
            format!("{repo}:{tag} {platform} #{generation}\n").as_bytes(),
        )
        .finish();
    Image::new(platform)
        .layer(base_layer(), Compression::Gzip)
        .layer(own, Compression::Gzip)
}

/// Pushes `repo:tag` as `kind`; returns the manifest digest.
pub fn push_kind(host: &str, repo: &str, tag: &str, kind: Kind, generation: u32) -> String {
    let one = |p: &str| seed_image(repo, tag, p, generation).build();
    match kind {
        Kind::Oci => push_image(host, repo, tag, &one("linux/amd64"), false),
        Kind::Docker => push_image(host, repo, tag, &one("linux/amd64"), true),
        Kind::OciIndex | Kind::DockerList => {
            let imgs = [one("linux/amd64"), one("linux/arm64")];
            push_index(host, repo, tag, &imgs, kind == Kind::DockerList)
        }
    }
}

/// `img` with another config `created` (for "newest N" by date).
pub fn restamp(img: &BuiltImage, created: &str) -> BuiltImage {
    let mut config: Value = serde_json::from_slice(&img.config).unwrap();
    config["created"] = json!(created);
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = sha256_digest(&config);
    let mut manifest: Value = serde_json::from_slice(&img.manifest).unwrap();
    manifest["config"]["digest"] = json!(config_digest);
    manifest["config"]["size"] = json!(config.len());
    let manifest = serde_json::to_vec_pretty(&manifest).unwrap();
    BuiltImage {
        manifest_digest: sha256_digest(&manifest),
        manifest,
        config_digest,
        config,
        ..img.clone()
    }
}

/// The manifest bytes for `img`: its OCI manifest, or the same as Docker
/// schema2 (gzip layers only).
fn manifest_bytes(img: &BuiltImage, docker: bool) -> (Vec<u8>, &'static str) {
    if !docker {
        return (img.manifest.clone(), OCI_MANIFEST);
    }
    let m = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "digest": img.config_digest, "size": img.config.len()},
        "layers": img.layers.iter().map(|l| {
            assert_eq!(l.compression, Compression::Gzip, "Docker manifests take gzip layers");
            json!({"mediaType": DOCKER_LAYER, "digest": l.digest, "size": l.blob.len()})
        }).collect::<Vec<_>>(),
    });
    (serde_json::to_vec_pretty(&m).unwrap(), DOCKER_MANIFEST)
}

fn push_blobs(host: &str, repo: &str, img: &BuiltImage) {
    for l in &img.layers {
        push_blob(host, repo, &l.blob);
    }
    push_blob(host, repo, &img.config);
}

/// Pushes one image as `repo:reference`; returns its manifest digest.
pub fn push_image(
    host: &str,
    repo: &str,
    reference: &str,
    img: &BuiltImage,
    docker: bool,
) -> String {
    push_blobs(host, repo, img);
    let (bytes, media_type) = manifest_bytes(img, docker);
    put_manifest(host, repo, reference, media_type, &bytes)
}

/// Pushes the images and an index (or Docker manifest list) over them as
/// `repo:tag`; returns the index digest.
pub fn push_index(host: &str, repo: &str, tag: &str, imgs: &[BuiltImage], docker: bool) -> String {
    let mut children = Vec::new();
    for img in imgs {
        let (bytes, media_type) = manifest_bytes(img, docker);
        push_blobs(host, repo, img);
        let digest = put_manifest(host, repo, &sha256_digest(&bytes), media_type, &bytes);
        let mut platform =
            json!({"architecture": img.platform.architecture, "os": img.platform.os});
        if let Some(v) = &img.platform.variant {
            platform["variant"] = json!(v);
        }
        children.push(json!({
            "mediaType": media_type, "digest": digest, "size": bytes.len(), "platform": platform,
        }));
    }
    let media_type = if docker { DOCKER_LIST } else { OCI_INDEX };
    let index = serde_json::to_vec_pretty(
        &json!({"schemaVersion": 2, "mediaType": media_type, "manifests": children}),
    )
    .unwrap();
    put_manifest(host, repo, tag, media_type, &index)
}

/// Pushes a cosign-style signature of `digest` as `sha256-<hex><suffix>`
/// (`.sig`, `.att`, or `""` for the OCI fallback tag); returns the tag.
pub fn push_signature(host: &str, repo: &str, digest: &str, suffix: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let payload = serde_json::to_vec(&json!({
        "critical": {"identity": {"docker-reference": repo}, "image": {"docker-manifest-digest": digest},
                     "type": "cosign container image signature"},
        "optional": null,
    }))
    .unwrap();
    let config =
        br#"{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    push_blob(host, repo, &payload);
    push_blob(host, repo, config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": config.len()},
        "layers": [{
            "mediaType": COSIGN_LAYER, "digest": sha256_digest(&payload), "size": payload.len(),
            "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQDtest"},
        }],
    }))
    .unwrap();
    let tag = format!("sha256-{hex}{suffix}");
    put_manifest(host, repo, &tag, OCI_MANIFEST, &manifest);
    tag
}

thread_local! {
    /// `(host, repo, digest)` this thread has uploaded: a registry this slow
    /// (tens of ms a request) makes the shared base layer's re-uploads count.
    static UPLOADED: std::cell::RefCell<std::collections::HashSet<(String, String, String)>> =
        Default::default();
}

/// Uploads a blob (unless this thread did already): POST for a session,
/// PUT of the whole body with its digest.
pub fn push_blob(host: &str, repo: &str, data: &[u8]) {
    let key = (host.to_string(), repo.to_string(), sha256_digest(data));
    if UPLOADED.with(|u| u.borrow().contains(&key)) {
        return;
    }
    let r = send(host, "POST", &format!("/v2/{repo}/blobs/uploads/"), "", &[]);
    assert_eq!(r.status, 202, "starting an upload to {repo}: {r:?}");
    let loc = r.location.expect("upload Location");
    let path = match loc.find("/v2/") {
        Some(i) => &loc[i..],
        None => panic!("odd upload Location {loc}"),
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let target = format!("{path}{sep}digest={}", sha256_digest(data));
    let r = send(host, "PUT", &target, "application/octet-stream", data);
    assert_eq!(r.status, 201, "finishing an upload to {repo}: {r:?}");
    UPLOADED.with(|u| u.borrow_mut().insert(key));
}

/// PUTs a manifest; returns the digest the registry names it by (checked
/// against the bytes' own).
pub fn put_manifest(
    host: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> String {
    let r = send(
        host,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        media_type,
        body,
    );
    assert_eq!(r.status, 201, "PUT manifest {repo}:{reference}: {r:?}");
    let digest = sha256_digest(body);
    assert_eq!(
        r.digest.as_deref(),
        Some(digest.as_str()),
        "registry digest of {repo}:{reference}"
    );
    digest
}

/// The digest `repo:reference` has in the registry at `host` (a GET, the
/// digest of the bytes served), or none when it is not there.
pub fn manifest_digest(host: &str, repo: &str, reference: &str) -> Option<String> {
    let r = http::get_manifest(host, repo, reference).expect("GET manifest");
    match r.status {
        200 => Some(sha256_digest(&r.body)),
        404 => None,
        s => panic!("GET {host}/{repo}:{reference}: {s}"),
    }
}

/// The tags of `repo` at `host`, sorted (empty when the repository is not
/// there).
pub fn tags(host: &str, repo: &str) -> Vec<String> {
    let r = http::request(host, "GET", &format!("/v2/{repo}/tags/list?n=1000"), &[]).unwrap();
    if r.status == 404 {
        return Vec::new();
    }
    assert_eq!(r.status, 200, "tags of {repo}");
    let mut t: Vec<String> = r.json()["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    t.sort();
    t
}

/// Every repository at `host` with at least one tag, sorted.
pub fn repositories(host: &str) -> Vec<String> {
    let r = http::request(host, "GET", "/v2/_catalog?n=1000", &[]).unwrap();
    assert_eq!(r.status, 200, "catalog");
    let mut names: Vec<String> = r.json()["repositories"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.retain(|n| !tags(host, n).is_empty());
    names.sort();
    names
}

/// Asserts `repo:tag` at `host` is `digest` and complete: every child
/// manifest, config and layer it names is there.
pub fn assert_complete(host: &str, repo: &str, tag: &str, digest: &str) {
    let mut conn = http::Conn::connect(host).unwrap();
    let accept = "application/vnd.docker.distribution.manifest.v2+json, \
                  application/vnd.docker.distribution.manifest.list.v2+json, \
                  application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
    let mut pending = vec![tag.to_string()];
    let mut first = true;
    while let Some(reference) = pending.pop() {
        let r = conn
            .send(
                "GET",
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("Accept", accept)],
            )
            .unwrap();
        assert_eq!(r.status, 200, "{host}/{repo}:{reference} is missing");
        if first {
            assert_eq!(
                sha256_digest(&r.body),
                digest,
                "digest of {host}/{repo}:{tag}"
            );
            first = false;
        }
        let m: Value = serde_json::from_slice(&r.body).unwrap();
        if let Some(children) = m["manifests"].as_array() {
            pending.extend(
                children
                    .iter()
                    .map(|c| c["digest"].as_str().unwrap().to_string()),
            );
            continue;
        }
        let blobs =
            std::iter::once(&m["config"]).chain(m["layers"].as_array().into_iter().flatten());
        for b in blobs {
            let d = b["digest"].as_str().unwrap();
            let r = conn
                .send("HEAD", &format!("/v2/{repo}/blobs/{d}"), &[])
                .unwrap();
            assert_eq!(r.status, 200, "{host}/{repo}: blob {d} of {tag} is missing");
        }
    }
}

/// An answer to one raw request.
#[derive(Debug)]
pub struct RawResponse {
    /// HTTP status.
    pub status: u16,
    /// `Location`, when given.
    pub location: Option<String>,
    /// `Docker-Content-Digest`, when given.
    pub digest: Option<String>,
    /// The head and body as text, for messages.
    pub text: String,
}

/// One request with a body, on a connection of its own (`Connection:
/// close`: the answer ends when the registry hangs up).
fn send(host: &str, method: &str, target: &str, content_type: &str, body: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !content_type.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    // One write: a head and a body written apart wait out the peer's
    // delayed ACK (40 ms) under Nagle's algorithm.
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    s.set_nodelay(true).unwrap();
    s.write_all(&request).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status from {host}: {text:?}"));
    let header = |name: &str| {
        text.split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
    };
    RawResponse {
        status,
        location: header("location"),
        digest: header("docker-content-digest"),
        text,
    }
}

/// `repo:tag` for a (repository, tag) pair.
pub fn rt(repo: &str, tag: &str) -> String {
    format!("{repo}:{tag}")
}

/// Destination `repo:tag` -> source digest, for every image of the seed.
pub fn expected(seeded: &Seeded, map: impl Fn(&str) -> String) -> BTreeMap<String, String> {
    seeded
        .images
        .iter()
        .map(|((r, t), d)| (rt(&map(r), t), d.clone()))
        .collect()
}

/// Asserts the destination holds exactly `want` (`repo:tag` -> digest):
/// these repositories, these tags and nothing else, each complete.
pub fn assert_destination(host: &str, want: &BTreeMap<String, String>) {
    let mut have = BTreeMap::new();
    for repo in repositories(host) {
        for tag in tags(host, &repo) {
            have.insert(rt(&repo, &tag), ());
        }
    }
    let have: BTreeSet<&String> = have.keys().collect();
    let wanted: BTreeSet<&String> = want.keys().collect();
    assert_eq!(have, wanted, "the destination's tags");
    for (dest, digest) in want {
        let (repo, tag) = dest.rsplit_once(':').unwrap();
        assert_complete(host, repo, tag, digest);
    }
}

/// The requests since `from` that are not `/v2/` pings, as
/// `METHOD /path`.
pub fn requests_since(p: &Proxy, from: usize) -> Vec<Record> {
    p.requests()
        .into_iter()
        .skip(from)
        .filter(|r| r.path != "/v2/" && r.path != "/v2")
        .collect()
}

/// Counts `METHOD path` of `reqs`.
pub fn tally(reqs: &[Record]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in reqs {
        *m.entry(format!("{} {}", r.method, r.path)).or_insert(0) += 1;
    }
    m
}

pub fn manifest_path(repo: &str, tag: &str) -> String {
    format!("/v2/{repo}/manifests/{tag}")
}
