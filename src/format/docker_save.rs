//! The `docker save` format: a tarball with `manifest.json` (a list of
//! images, each naming its config and layer members), `repositories` (for
//! legacy readers) and the members those name. The layer store of
//! `dir://` ([`super::dir`]) writes the same manifest.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::image::{Compression, Image};

/// The member listing the images.
pub(crate) const MANIFEST: &str = "manifest.json";
/// The legacy member mapping repository -> tag -> top layer.
pub(crate) const REPOSITORIES: &str = "repositories";
/// What marks a tarball as an OCI layout rather than a docker-save one.
pub(crate) const OCI_INDEX: &str = "index.json";

/// One image of `manifest.json`, with docker's key names and order.
#[derive(Serialize, Deserialize)]
pub(crate) struct ManifestEntry {
    /// The config member.
    #[serde(rename = "Config")]
    pub(crate) config: String,
    /// `name:tag` of the image; absent or null reads as none.
    #[serde(rename = "RepoTags", default)]
    pub(crate) repo_tags: Option<Vec<String>>,
    /// The layer members, bottom first.
    #[serde(rename = "Layers", default)]
    pub(crate) layers: Option<Vec<String>>,
    /// The image's name, which the layer store adds with `unique_names`.
    /// Never read: a reader keys images by `RepoTags`.
    #[serde(
        rename = "ImageName",
        skip_deserializing,
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) image_name: Option<String>,
}

impl ManifestEntry {
    /// The entry for `image` as written: the config under the hash of its
    /// bytes (a filter may have changed them since the source computed
    /// `config_digest`), each layer under its diff_id.
    pub(crate) fn for_image(image: &Image) -> ManifestEntry {
        ManifestEntry::naming(image, |l| layer_member(&l.diff_id))
    }

    /// As [`ManifestEntry::for_image`], each layer under the member `name`
    /// gives it.
    pub(crate) fn naming(
        image: &Image,
        name: impl FnMut(&crate::image::LayerInfo) -> String,
    ) -> ManifestEntry {
        ManifestEntry {
            config: config_member(&image.config_raw),
            repo_tags: Some(image.repo_tag().into_iter().collect()),
            layers: Some(image.layers.iter().map(name).collect()),
            image_name: None,
        }
    }
}

/// The member (or store file) holding a config: `<sha256 hex>.json`.
pub(crate) fn config_member(config_raw: &[u8]) -> String {
    format!("{}.json", Digest::sha256_of(config_raw).hex())
}

/// The member (or store file) holding a layer: `<diff_id hex>/layer.tar`.
pub(crate) fn layer_member(diff_id: &Digest) -> String {
    format!("{}/layer.tar", diff_id.hex())
}

/// The member holding a layer stored as its blob (`tar://` with
/// `layers=compressed`): `<blob hex>` with the extension of its
/// compression, `.tar.gz`, `.tar.zst` or `.tar`. Readers go by
/// `manifest.json` and sniff the bytes; the extension is for people.
pub(crate) fn blob_member(digest: &Digest, compression: Compression) -> String {
    let ext = match compression {
        Compression::Gzip => "tar.gz",
        Compression::Zstd => "tar.zst",
        _ => "tar",
    };
    format!("{}.{ext}", digest.hex())
}

/// The `repositories` member for `image`: repository -> tag -> top layer
/// directory, empty for an untagged image.
pub(crate) fn repositories(image: &Image) -> serde_json::Map<String, serde_json::Value> {
    let mut repositories = serde_json::Map::new();
    if let (Some(tag), Some(top)) = (&image.tag, image.layers.last()) {
        let mut tags = serde_json::Map::new();
        tags.insert(tag.clone(), top.diff_id.hex().into());
        repositories.insert(image.name.clone(), tags.into());
    }
    repositories
}

/// The diff_ids of a config as docker-save readers take them: only
/// `rootfs.diff_ids` is looked at.
pub(crate) fn read_diff_ids(config: &[u8]) -> serde_json::Result<Vec<Digest>> {
    #[derive(Deserialize)]
    struct ConfigRootfs {
        rootfs: Rootfs,
    }
    #[derive(Deserialize)]
    struct Rootfs {
        diff_ids: Vec<Digest>,
    }
    serde_json::from_slice::<ConfigRootfs>(config).map(|c| c.rootfs.diff_ids)
}

/// Splits `name:tag` at the last `:` after the last `/`, so a registry port
/// (`localhost:5000/app`) is not taken for a tag.
pub(crate) fn split_repo_tag(s: &str) -> (String, Option<String>) {
    let after_slash = s.rfind('/').map_or(0, |i| i + 1);
    match s[after_slash..].rfind(':') {
        Some(i) => (
            s[..after_slash + i].to_string(),
            Some(s[after_slash + i + 1..].to_string()),
        ),
        None => (s.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_tags_split_after_the_last_slash() {
        assert_eq!(
            split_repo_tag("localhost:5000/app"),
            ("localhost:5000/app".into(), None)
        );
        assert_eq!(
            split_repo_tag("localhost:5000/app:v1"),
            ("localhost:5000/app".into(), Some("v1".into()))
        );
        assert_eq!(split_repo_tag("app:"), ("app".into(), Some(String::new())));
    }

    #[test]
    fn manifest_entries_keep_docker_keys_and_ignore_image_name_on_read() {
        let e = ManifestEntry {
            config: "c.json".into(),
            repo_tags: Some(vec![]),
            layers: Some(vec!["a/layer.tar".into()]),
            image_name: None,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"Config":"c.json","RepoTags":[],"Layers":["a/layer.tar"]}"#
        );
        // A hostile ImageName of any type is not looked at, as before.
        for extra in [r#""x""#, "5", "null", "[1]", r#"{"a":1}"#] {
            let raw = format!(r#"{{"Config":"c","ImageName":{extra}}}"#);
            let e: ManifestEntry = serde_json::from_str(&raw).unwrap();
            assert!(e.image_name.is_none() && e.layers.is_none());
        }
        for bad in [
            r#"{"RepoTags":[]}"#,
            r#"{"Config":5}"#,
            r#"{"Config":"c","Layers":"x"}"#,
        ] {
            assert!(serde_json::from_str::<ManifestEntry>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn diff_ids_read_leniently_but_typed() {
        let d = Digest::sha256_of(b"x");
        let ok = format!(r#"{{"rootfs":{{"type":5,"diff_ids":["{d}"]}}}}"#);
        assert_eq!(read_diff_ids(ok.as_bytes()).unwrap(), vec![d]);
        for bad in [
            r#"{}"#,
            r#"{"rootfs":{}}"#,
            r#"{"rootfs":{"diff_ids":["sha256:zz"]}}"#,
            r#"{"rootfs":{"diff_ids":"x"}}"#,
        ] {
            assert!(read_diff_ids(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
