//! `info`: what an image's manifest and config say, read without fetching a
//! single layer blob: a sink that wants no layer, so the pipeline only
//! runs [`Source::resolve`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Image, Layer, LayerInfo, media_type as mt};
use crate::inspect::{Slot, fill, run_sink};
use crate::pipeline::RunOptions;
use crate::sink::{Sink, SinkReport};
use crate::source::Source;

/// Everything `info` reports.
#[derive(Clone, Debug, Serialize)]
pub struct ImageInfo {
    /// The source as messages name it (`registry 127.0.0.1:5000/app:v1`).
    pub source: String,
    /// `name:tag`, or `name@manifest-digest` when there is no tag.
    pub reference: String,
    /// Repository name.
    pub name: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// The image manifest, when the source has one (not docker-save archives).
    pub manifest: Option<ManifestSummary>,
    /// The index the manifest was chosen from, if any.
    pub index: Option<IndexSummary>,
    /// Platform, from the config.
    pub platform: PlatformInfo,
    /// Creation time, from the config.
    pub created: Option<String>,
    /// Author, from the config.
    pub author: Option<String>,
    /// The config blob.
    pub config: BlobSummary,
    /// Layers, bottom first.
    pub layers: Vec<LayerSummary>,
    /// Sum of the layer blob sizes.
    pub total_size: u64,
    /// The config's history, oldest first.
    pub history: Vec<HistoryEntry>,
    /// What a container gets from the config's `config` section.
    pub runtime: RuntimeConfig,
}

/// The manifest an image was resolved through.
#[derive(Clone, Debug, Serialize)]
pub struct ManifestSummary {
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its `schemaVersion`.
    pub schema_version: Option<u64>,
    /// Its size in bytes.
    pub size: u64,
}

/// A multi-platform index and what it offers.
#[derive(Clone, Debug, Serialize)]
pub struct IndexSummary {
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its entries; `None` when the index could not be read again to list
    /// them (the reason is in `platforms_error`).
    pub platforms: Option<Vec<IndexEntry>>,
    /// Why `platforms` is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platforms_error: Option<String>,
}

/// One entry of an index.
#[derive(Clone, Debug, Serialize)]
pub struct IndexEntry {
    /// Operating system (empty when the entry has no platform).
    pub os: String,
    /// Architecture.
    pub architecture: String,
    /// CPU variant.
    pub variant: Option<String>,
    /// The entry's manifest digest.
    pub digest: Digest,
    /// The entry's media type.
    pub media_type: String,
    /// The entry's manifest size.
    pub size: u64,
    /// Whether this is the manifest `info` describes.
    pub selected: bool,
}

impl IndexEntry {
    /// `os/arch[/variant]`.
    pub fn platform(&self) -> String {
        platform_name(&self.os, &self.architecture, self.variant.as_deref())
    }
}

/// The platform an image is for.
#[derive(Clone, Debug, Serialize)]
pub struct PlatformInfo {
    /// Operating system.
    pub os: Option<String>,
    /// Architecture.
    pub architecture: Option<String>,
    /// CPU variant.
    pub variant: Option<String>,
}

impl PlatformInfo {
    /// `os/arch[/variant]`, `?` for what is missing.
    pub fn name(&self) -> String {
        platform_name(
            self.os.as_deref().unwrap_or("?"),
            self.architecture.as_deref().unwrap_or("?"),
            self.variant.as_deref(),
        )
    }
}

fn platform_name(os: &str, arch: &str, variant: Option<&str>) -> String {
    match variant.filter(|v| !v.is_empty()) {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    }
}

/// A blob's descriptor.
#[derive(Clone, Debug, Serialize)]
pub struct BlobSummary {
    /// Digest.
    pub digest: Digest,
    /// Media type.
    pub media_type: String,
    /// Size in bytes.
    pub size: u64,
}

/// One layer as the manifest and config describe it.
#[derive(Clone, Debug, Serialize)]
pub struct LayerSummary {
    /// Position, 0 = bottom.
    pub index: usize,
    /// Blob digest.
    pub digest: Digest,
    /// Blob size (compressed, for a registry).
    pub size: u64,
    /// Blob media type.
    pub media_type: String,
    /// Compression the media type names (`gzip`, `zstd`, `none`, `unknown`).
    pub compression: &'static str,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// The `created_by` of the history entry that made this layer, if the
    /// history lines up with the layers.
    pub created_by: Option<String>,
}

/// One history entry.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When.
    #[serde(default)]
    pub created: Option<String>,
    /// The command.
    #[serde(default)]
    pub created_by: Option<String>,
    /// Who.
    #[serde(default)]
    pub author: Option<String>,
    /// A comment.
    #[serde(default)]
    pub comment: Option<String>,
    /// Whether the step made no layer.
    #[serde(default)]
    pub empty_layer: bool,
}

/// The config's `config` section: how a container runs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RuntimeConfig {
    /// Environment, `KEY=value`.
    pub env: Vec<String>,
    /// Entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Exposed ports (`80/tcp`).
    pub exposed_ports: Vec<String>,
    /// Volumes.
    pub volumes: Vec<String>,
    /// Labels, in the config's order.
    pub labels: serde_json::Map<String, Value>,
    /// Stop signal.
    pub stop_signal: Option<String>,
}

/// The compression a layer media type names.
pub fn compression_of(media_type: &str) -> &'static str {
    let m = mt::essence(media_type);
    if m.ends_with("+zstd") || m.ends_with(".zstd") {
        "zstd"
    } else if m.ends_with("+gzip") || m.ends_with(".gzip") {
        "gzip"
    } else if m.ends_with(".tar") || m == mt::OCI_LAYER_TAR {
        "none"
    } else {
        "unknown"
    }
}

fn strings(v: &Value) -> Option<Vec<String>> {
    let a = v.as_array()?;
    Some(
        a.iter()
            .map(|s| match s {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
    )
}

fn string(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// The history entries of a config, oldest first (empty when it has none
/// or they are not a list).
pub fn history_of(config: &Value) -> Vec<HistoryEntry> {
    config
        .get("history")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|h| serde_json::from_value(h.clone()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

/// Builds the report from resolved metadata. `index` is filled in by the
/// caller, which knows how to reach the source's index.
pub fn describe(source: &str, image: &Image) -> Result<ImageInfo> {
    let config: Value = image
        .config_json()
        .map_err(|e| Error::InvalidImage(format!("image config is not JSON: {e}")))?;
    let history = history_of(&config);
    let made_layers: Vec<&HistoryEntry> = history.iter().filter(|h| !h.empty_layer).collect();
    let aligned = made_layers.len() == image.layers.len();
    let layers = image
        .layers
        .iter()
        .map(|l| LayerSummary {
            index: l.index,
            digest: l.digest.clone(),
            size: l.size,
            media_type: l.media_type.clone(),
            compression: compression_of(&l.media_type),
            diff_id: l.diff_id.clone(),
            created_by: if aligned {
                made_layers[l.index].created_by.clone()
            } else {
                None
            },
        })
        .collect();
    let manifest = image.manifest.as_ref().map(|m| {
        let schema_version = serde_json::from_slice::<Value>(&m.raw)
            .ok()
            .and_then(|v| v.get("schemaVersion").and_then(Value::as_u64));
        ManifestSummary {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            schema_version,
            size: m.raw.len() as u64,
        }
    });
    let index = image
        .manifest
        .as_ref()
        .and_then(|m| m.index.as_ref())
        .map(|ix| IndexSummary {
            digest: ix.digest.clone(),
            media_type: ix.media_type.clone(),
            platforms: None,
            platforms_error: None,
        });
    let c = config.get("config").cloned().unwrap_or(Value::Null);
    let runtime = RuntimeConfig {
        env: c.get("Env").and_then(strings).unwrap_or_default(),
        entrypoint: c.get("Entrypoint").and_then(strings),
        cmd: c.get("Cmd").and_then(strings),
        working_dir: c.get("WorkingDir").and_then(string),
        user: c.get("User").and_then(string),
        exposed_ports: c.get("ExposedPorts").map(keys).unwrap_or_default(),
        volumes: c.get("Volumes").map(keys).unwrap_or_default(),
        labels: c
            .get("Labels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        stop_signal: c.get("StopSignal").and_then(string),
    };
    let reference = match (&image.tag, &image.manifest) {
        (Some(t), _) => format!("{}:{t}", image.name),
        (None, Some(m)) => format!("{}@{}", image.name, m.digest),
        (None, None) => image.name.clone(),
    };
    Ok(ImageInfo {
        source: source.to_string(),
        reference,
        name: image.name.clone(),
        tag: image.tag.clone(),
        manifest,
        index,
        platform: PlatformInfo {
            os: config.get("os").and_then(string),
            architecture: config.get("architecture").and_then(string),
            variant: config.get("variant").and_then(string),
        },
        created: config.get("created").and_then(string),
        author: config.get("author").and_then(string),
        config: BlobSummary {
            digest: image.config_digest.clone(),
            media_type: image.config_media_type.clone(),
            size: image.config_raw.len() as u64,
        },
        total_size: image.layers.iter().map(|l| l.size).sum(),
        layers,
        history,
        runtime,
    })
}

/// The sink `info` runs: it takes the image's metadata and wants no layer,
/// so the pipeline only resolves.
struct MetadataSink {
    slot: Slot<Image>,
}

impl Sink for MetadataSink {
    fn begin(&mut self, image: &Image) -> Result<()> {
        fill(&self.slot, image.clone());
        Ok(())
    }

    fn wants_layer(&mut self, _layer: &LayerInfo) -> bool {
        false
    }

    fn layer(&mut self, layer: Layer) -> Result<()> {
        Err(Error::InvalidImage(format!(
            "info: layer {} fetched though none was wanted",
            layer.info.index
        )))
    }

    fn finish(self: Box<Self>, _image: &Image) -> Result<SinkReport> {
        Ok(SinkReport::default())
    }
}

/// Resolves `source` (manifest and config only) and describes the image.
/// For an image chosen from an index, the platforms the index offers are
/// listed from the index's bytes as the source read them.
pub async fn info(source: Arc<dyn Source>, options: RunOptions) -> Result<ImageInfo> {
    let slot = Slot::default();
    let sink = MetadataSink { slot: slot.clone() };
    let image = run_sink(source.clone(), Box::new(sink), &slot, options).await?;
    let mut info = describe(&source.describe(), &image)?;
    if let Some(index) = &mut info.index {
        let selected = image.manifest.as_ref().map(|m| m.digest.clone());
        let kept = image.manifest.as_ref().and_then(|m| m.index.as_ref());
        match kept.map_or_else(
            || Err(Error::InvalidImage("the source kept no index".into())),
            index_entries,
        ) {
            Ok(mut entries) => {
                for e in &mut entries {
                    e.selected = Some(&e.digest) == selected.as_ref();
                }
                index.platforms = Some(entries);
            }
            Err(e) => index.platforms_error = Some(e.to_string()),
        }
    }
    Ok(info)
}

#[derive(Deserialize)]
struct RawIndex {
    #[serde(default)]
    manifests: Vec<RawDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: String,
    digest: Digest,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

/// The entries of an index document.
pub fn parse_index(raw: &[u8]) -> Result<Vec<IndexEntry>> {
    let index: RawIndex = serde_json::from_slice(raw)
        .map_err(|e| Error::InvalidImage(format!("invalid image index: {e}")))?;
    Ok(index
        .manifests
        .into_iter()
        .map(|d| {
            let p = d.platform.unwrap_or(RawPlatform {
                os: String::new(),
                architecture: String::new(),
                variant: None,
            });
            IndexEntry {
                os: p.os,
                architecture: p.architecture,
                variant: p.variant.filter(|v| !v.is_empty()),
                digest: d.digest,
                media_type: d.media_type,
                size: d.size,
                selected: false,
            }
        })
        .collect())
}

/// The platforms an index offers, from the bytes the source kept (checked
/// against the digest once more, since they are what is listed).
fn index_entries(index: &crate::image::IndexInfo) -> Result<Vec<IndexEntry>> {
    let found = Digest::sha256_of(&index.raw);
    if found != index.digest {
        return Err(Error::DigestMismatch {
            kind: crate::error::Mismatch::Index,
            what: "image index".into(),
            expected: index.digest.clone(),
            found,
        });
    }
    parse_index(&index.raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{LayerInfo, ManifestInfo};

    fn image(config: &str, tag: Option<&str>) -> Image {
        let d = |s: &str| Digest::sha256_of(s.as_bytes());
        Image {
            name: "team/app".into(),
            tag: tag.map(Into::into),
            manifest: Some(ManifestInfo {
                digest: d("m"),
                media_type: mt::OCI_MANIFEST.into(),
                raw: br#"{"schemaVersion":2}"#.to_vec(),
                index: Some(crate::image::IndexInfo {
                    digest: d("i"),
                    media_type: mt::OCI_INDEX.into(),
                    raw: br#"{"schemaVersion":2,"manifests":[]}"#.to_vec(),
                }),
            }),
            config_raw: config.as_bytes().to_vec(),
            config_digest: d(config),
            config_media_type: mt::OCI_CONFIG.into(),
            layers: (0..2)
                .map(|i| LayerInfo {
                    index: i,
                    digest: d(&format!("b{i}")),
                    size: 100 + i as u64,
                    media_type: if i == 0 {
                        mt::OCI_LAYER_GZIP.into()
                    } else {
                        mt::OCI_LAYER_ZSTD.into()
                    },
                    diff_id: d(&format!("t{i}")),
                })
                .collect(),
        }
    }

    #[test]
    fn describes_config_and_layers() {
        let config = r#"{"architecture":"arm","os":"linux","variant":"v7","created":"2024-01-01T00:00:00Z",
            "config":{"Env":["A=1"],"Entrypoint":["/e"],"Cmd":["sh"],"WorkingDir":"/w","User":"1000",
            "ExposedPorts":{"80/tcp":{}},"Volumes":{"/data":{}},"Labels":{"b":"2","a":"1"}},
            "rootfs":{"type":"layers","diff_ids":[]},
            "history":[{"created_by":"one"},{"created_by":"env","empty_layer":true},{"created_by":"two"}]}"#;
        let i = describe("test", &image(config, Some("v1"))).unwrap();
        assert_eq!(i.reference, "team/app:v1");
        assert_eq!(i.platform.name(), "linux/arm/v7");
        assert_eq!(i.layers[0].compression, "gzip");
        assert_eq!(i.layers[1].compression, "zstd");
        assert_eq!(i.layers[1].created_by.as_deref(), Some("two"));
        assert_eq!(i.total_size, 201);
        assert_eq!(i.history.len(), 3);
        assert!(i.history[1].empty_layer);
        assert_eq!(i.runtime.exposed_ports, vec!["80/tcp"]);
        assert_eq!(i.runtime.volumes, vec!["/data"]);
        let labels: Vec<&String> = i.runtime.labels.keys().collect();
        assert_eq!(labels, vec!["b", "a"]);
        assert_eq!(i.manifest.as_ref().unwrap().schema_version, Some(2));
        assert!(i.index.is_some());

        let bare = describe("test", &image("{}", None)).unwrap();
        assert!(bare.reference.starts_with("team/app@sha256:"));
        assert!(bare.layers[0].created_by.is_none());
        assert!(describe("test", &image("not json", None)).is_err());
    }

    #[test]
    fn compression_names() {
        assert_eq!(compression_of(mt::DOCKER_LAYER_GZIP), "gzip");
        assert_eq!(compression_of(mt::OCI_LAYER_TAR), "none");
        assert_eq!(compression_of(mt::OCI_LAYER_ZSTD), "zstd");
        assert_eq!(compression_of("application/x-foo"), "unknown");
    }

    #[test]
    fn index_parsing() {
        let raw = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":3,
             "platform":{"os":"linux","architecture":"arm","variant":"v7"}},
            {"mediaType":"y","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":4}]}"#;
        let e = parse_index(raw).unwrap();
        assert_eq!(e[0].platform(), "linux/arm/v7");
        assert_eq!(e[1].os, "");
    }
}
