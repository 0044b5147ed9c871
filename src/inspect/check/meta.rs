//! The `--fast` rules: manifest and config, without a layer.

use std::collections::HashSet;

use serde_json::Value;

use super::report::{Finding, Severity};
use crate::image::{Image, LayerInfo, media_type as mt};
use crate::inspect::info::history_of;
use crate::inspect::plural;

const KNOWN_LAYER_TYPES: &[&str] = &[
    mt::DOCKER_LAYER_GZIP,
    mt::OCI_LAYER_TAR,
    mt::OCI_LAYER_GZIP,
    mt::OCI_LAYER_ZSTD,
];

/// Largest layer blob that passes without a warning.
const LARGE_LAYER: u64 = 1 << 30;

/// The `--fast` checks: manifest and config consistency.
pub fn check_metadata(image: &Image) -> Vec<Finding> {
    let mut out = Vec::new();
    let e = |check, msg: String| Finding::new(Severity::Error, check, msg);
    let i = |check, msg: String| Finding::new(Severity::Info, check, msg);

    match &image.manifest {
        None => out.push(i(
            "manifest",
            "the source has no registry manifest (a docker-save archive or a layer store); \
             manifest checks skipped"
                .into(),
        )),
        Some(m) => {
            if let Some(crate::image::IndexInfo {
                digest,
                media_type: media,
                ..
            }) = &m.index
            {
                out.push(i(
                    "index",
                    format!(
                        "manifest {} was chosen from index {digest} ({media})",
                        m.digest
                    ),
                ));
            }
            match serde_json::from_slice::<Value>(&m.raw) {
                Err(err) => out.push(e("manifest", format!("manifest is not JSON: {err}"))),
                Ok(doc) => check_manifest(image, &m.media_type, &doc, &mut out),
            }
        }
    }

    check_config(image, &mut out);
    out
}

/// The config's own consistency: a JSON object, layers, history, platform.
fn check_config(image: &Image, out: &mut Vec<Finding>) {
    let e = |check, msg: String| Finding::new(Severity::Error, check, msg);
    let w = |check, msg: String| Finding::new(Severity::Warning, check, msg);
    let i = |check, msg: String| Finding::new(Severity::Info, check, msg);
    let config: Value = match image.config_json() {
        Ok(c) if c.is_object() => c,
        Ok(_) => {
            out.push(e("config", "the image config is not a JSON object".into()));
            return;
        }
        Err(err) => {
            out.push(e("config", format!("the image config is not JSON: {err}")));
            return;
        }
    };
    let rootfs_type = config
        .get("rootfs")
        .and_then(|r| r.get("type"))
        .and_then(Value::as_str);
    if rootfs_type != Some("layers") {
        out.push(e(
            "rootfs",
            format!(
                "config rootfs.type is {}, expected \"layers\"",
                rootfs_type.map_or("missing".to_string(), |t| format!("{t:?}"))
            ),
        ));
    }
    let diff_ids = config
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if diff_ids != image.layers.len() {
        out.push(e(
            "layer-count",
            format!(
                "the image has {} but the config has {}",
                plural(image.layers.len() as u64, "layer"),
                plural(diff_ids as u64, "diff_id")
            ),
        ));
    }
    match config.get("history") {
        None | Some(Value::Null) => out.push(i(
            "history",
            "the config has no history (allowed, but `docker history` shows nothing)".into(),
        )),
        Some(Value::Array(_)) => {
            let history = history_of(&config);
            let made = history.iter().filter(|h| !h.empty_layer).count();
            if made != image.layers.len() {
                out.push(e(
                    "history",
                    format!(
                        "the config history has {made} entries that made a layer \
                         (empty_layer not set) but the image has {}",
                        plural(image.layers.len() as u64, "layer")
                    ),
                ));
            }
        }
        Some(_) => out.push(e("history", "config history is not a list".into())),
    }
    for key in ["os", "architecture"] {
        if config
            .get(key)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            out.push(w(
                "platform",
                format!("the config has no {key} (the OCI image spec requires it)"),
            ));
        }
    }
    if config
        .get("config")
        .and_then(|c| c.get("ArgsEscaped"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        out.push(w(
            "args-escaped",
            "config.ArgsEscaped is set: a deprecated, Windows-only Docker field".into(),
        ));
    }
}

fn check_manifest(image: &Image, media_type: &str, doc: &Value, out: &mut Vec<Finding>) {
    let e = |check, msg: String| Finding::new(Severity::Error, check, msg);
    let w = |check, msg: String| Finding::new(Severity::Warning, check, msg);
    let i = |check, msg: String| Finding::new(Severity::Info, check, msg);
    match doc.get("schemaVersion").and_then(Value::as_u64) {
        Some(2) => {}
        Some(v) => out.push(e(
            "schema-version",
            format!("manifest schemaVersion is {v}, expected 2"),
        )),
        None => out.push(e("schema-version", "manifest has no schemaVersion".into())),
    }
    let docker = media_type == mt::DOCKER_MANIFEST;
    match doc.get("mediaType").and_then(Value::as_str) {
        Some(declared) if mt::essence(declared) != media_type => out.push(e(
            "media-type",
            format!("manifest declares mediaType {declared} but was served as {media_type}"),
        )),
        Some(_) => {}
        None if docker => out.push(w(
            "media-type",
            "Docker schema 2 manifest without a mediaType field".into(),
        )),
        None => out.push(i(
            "media-type",
            "manifest has no mediaType field (optional in OCI, but recommended)".into(),
        )),
    }
    out.push(i(
        "media-type",
        if docker {
            format!("manifest uses Docker schema 2 media types ({media_type})")
        } else {
            format!(
                "manifest uses OCI media types ({media_type}); Docker before 1.10 cannot pull it"
            )
        },
    ));

    check_config_descriptor(image, doc, out);
    check_layer_descriptors(image, docker, doc, out);
}

/// The manifest's config descriptor against the config the source served.
fn check_config_descriptor(image: &Image, doc: &Value, out: &mut Vec<Finding>) {
    let e = |check, msg: String| Finding::new(Severity::Error, check, msg);
    let w = |check, msg: String| Finding::new(Severity::Warning, check, msg);
    match doc.get("config") {
        None | Some(Value::Null) => out.push(e(
            "config-descriptor",
            "manifest has no config descriptor".into(),
        )),
        Some(c) => {
            let cmt = c.get("mediaType").and_then(Value::as_str).unwrap_or("");
            let known = [mt::DOCKER_CONFIG, mt::OCI_CONFIG];
            if !known.contains(&mt::essence(cmt)) {
                out.push(w(
                    "config-descriptor",
                    format!(
                        "config media type {} is not an image config type",
                        if cmt.is_empty() { "(missing)" } else { cmt }
                    ),
                ));
            }
            let digest = c.get("digest").and_then(Value::as_str).unwrap_or("");
            if digest != image.config_digest.to_string() {
                out.push(e(
                    "config-descriptor",
                    format!(
                        "config descriptor digest {digest:?} is not the config's digest {}",
                        image.config_digest
                    ),
                ));
            }
            let found = crate::digest::Digest::sha256_of(&image.config_raw);
            if image.config_digest.algorithm() == crate::digest::Algorithm::Sha256
                && found != image.config_digest
            {
                out.push(e(
                    "config-descriptor",
                    format!(
                        "the config blob hashes to {found}, not {}",
                        image.config_digest
                    ),
                ));
            }
            let size = c.get("size").and_then(Value::as_u64);
            if size != Some(image.config_raw.len() as u64) {
                out.push(e(
                    "config-descriptor",
                    format!(
                        "config descriptor size {} is not the config's size {}",
                        size.map_or("(missing)".into(), |s| s.to_string()),
                        image.config_raw.len()
                    ),
                ));
            }
        }
    }
}

/// The manifest's layer descriptors: count, media types, sizes, duplicates.
fn check_layer_descriptors(image: &Image, docker: bool, doc: &Value, out: &mut Vec<Finding>) {
    let e = |check, msg: String| Finding::new(Severity::Error, check, msg);
    let w = |check, msg: String| Finding::new(Severity::Warning, check, msg);
    let i = |check, msg: String| Finding::new(Severity::Info, check, msg);
    let declared_layers = doc
        .get("layers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if declared_layers != image.layers.len() {
        out.push(e(
            "layer-count",
            format!(
                "manifest lists {} but the image has {}",
                plural(declared_layers as u64, "layer"),
                image.layers.len()
            ),
        ));
    }
    let mut zstd = 0;
    let mut seen = HashSet::new();
    for l in &image.layers {
        let m = mt::essence(&l.media_type);
        out.extend(layer_media_type(l, m, docker));
        if m == mt::OCI_LAYER_ZSTD {
            zstd += 1;
        }
        if l.size == 0 {
            out.push(
                e(
                    "layer-size",
                    format!("layer {} has a size of 0 bytes", l.index),
                )
                .layer(l.index),
            );
        } else if l.size > LARGE_LAYER {
            out.push(
                w(
                    "layer-size",
                    format!(
                        "layer {} is {} bytes compressed (over 1 GiB); pulls may be slow or time out",
                        l.index, l.size
                    ),
                )
                .layer(l.index),
            );
        }
        if !seen.insert(l.digest.clone()) {
            out.push(
                i(
                    "duplicate-layer",
                    format!("layer {} ({}) appears more than once", l.index, l.digest),
                )
                .layer(l.index),
            );
        }
    }
    if zstd > 0 {
        out.push(w(
            "zstd",
            format!(
                "{} zstd-compressed: Docker before 20.10 and containerd before 1.5 cannot pull it",
                if zstd == 1 {
                    "1 layer is".to_string()
                } else {
                    format!("{zstd} layers are")
                }
            ),
        ));
    }
}

/// What the media type of layer `l` (`m`, without parameters) says about
/// it in a Docker (`docker`) or OCI manifest.
fn layer_media_type(l: &LayerInfo, m: &str, docker: bool) -> Option<Finding> {
    let e = |check, msg: String| Finding::new(Severity::Error, check, msg);
    let w = |check, msg: String| Finding::new(Severity::Warning, check, msg);
    let i = |check, msg: String| Finding::new(Severity::Info, check, msg);
    if m == mt::DOCKER_LAYER_FOREIGN || m.contains("nondistributable") {
        Some(
            w(
                "layer-media-type",
                format!(
                    "layer {} is a foreign (non-distributable) layer ({m})",
                    l.index
                ),
            )
            .layer(l.index),
        )
    } else if !KNOWN_LAYER_TYPES.contains(&m) {
        Some(
            e(
                "layer-media-type",
                format!("layer {} has an unknown media type {m:?}", l.index),
            )
            .layer(l.index),
        )
    } else if docker && m.starts_with("application/vnd.oci.") {
        Some(
            w(
                "layer-media-type",
                format!(
                    "layer {} has an OCI media type ({m}) in a Docker manifest",
                    l.index
                ),
            )
            .layer(l.index),
        )
    } else if !docker && m.starts_with("application/vnd.docker.") {
        Some(
            i(
                "layer-media-type",
                format!(
                    "layer {} has a Docker media type ({m}) in an OCI manifest",
                    l.index
                ),
            )
            .layer(l.index),
        )
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::image::ManifestInfo;

    fn checks(found: &[Finding], sev: Severity) -> Vec<&'static str> {
        found
            .iter()
            .filter(|f| f.severity == sev)
            .map(|f| f.check)
            .collect()
    }

    fn image(config: &str, manifest: &str) -> Image {
        let d = |s: &str| Digest::sha256_of(s.as_bytes());
        Image {
            name: "a".into(),
            tag: Some("v".into()),
            manifest: Some(ManifestInfo {
                digest: d(manifest),
                media_type: mt::OCI_MANIFEST.into(),
                raw: manifest.as_bytes().to_vec(),
                index: None,
            }),
            config_raw: config.as_bytes().to_vec(),
            config_digest: d(config),
            config_media_type: mt::OCI_CONFIG.into(),
            layers: vec![LayerInfo {
                index: 0,
                digest: d("l"),
                size: 10,
                media_type: mt::OCI_LAYER_ZSTD.into(),
                diff_id: d("t"),
            }],
        }
    }

    #[test]
    fn metadata_checks() {
        let config = r#"{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":["x"]},
            "history":[{"created_by":"a"},{"created_by":"b","empty_layer":true}]}"#;
        let cd = Digest::sha256_of(config.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{cd}","size":{}}},"layers":[{{}}]}}"#,
            mt::OCI_MANIFEST,
            mt::OCI_CONFIG,
            config.len()
        );
        let found = check_metadata(&image(config, &manifest));
        assert!(checks(&found, Severity::Error).is_empty(), "{found:?}");
        assert!(checks(&found, Severity::Warning).contains(&"zstd"));

        let bad_config = r#"{"rootfs":{"type":"foo","diff_ids":[]},"history":[{"created_by":"a"},{"created_by":"b"}],
            "config":{"ArgsEscaped":true}}"#;
        let bad_manifest = r#"{"schemaVersion":1,"layers":[]}"#;
        let found = check_metadata(&image(bad_config, bad_manifest));
        let errors = checks(&found, Severity::Error);
        for c in [
            "schema-version",
            "rootfs",
            "layer-count",
            "history",
            "config-descriptor",
        ] {
            assert!(errors.contains(&c), "{c}: {found:?}");
        }
        let warnings = checks(&found, Severity::Warning);
        assert!(warnings.contains(&"platform") && warnings.contains(&"args-escaped"));
    }
}
