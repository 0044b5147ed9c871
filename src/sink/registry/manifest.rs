//! Which manifest a registry push writes: the source's bytes when they
//! still describe what the destination holds (so the digest survives), or
//! a new OCI or Docker schema2 manifest over the blobs as pushed.

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::image::{Image, media_type as mt};

/// Docker's media type for an uncompressed layer.
const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// The manifest schema a push writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestFormat {
    /// `application/vnd.oci.image.manifest.v1+json`.
    Oci,
    /// `application/vnd.docker.distribution.manifest.v2+json`.
    Docker,
}

impl ManifestFormat {
    /// `oci` or `docker`, as `?format=` takes it.
    pub fn parse(s: &str) -> Option<ManifestFormat> {
        match s {
            "oci" => Some(ManifestFormat::Oci),
            "docker" => Some(ManifestFormat::Docker),
            _ => None,
        }
    }

    /// The manifest's media type.
    pub fn media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => mt::OCI_MANIFEST,
            ManifestFormat::Docker => mt::DOCKER_MANIFEST,
        }
    }

    /// The format a manifest media type is in, if either.
    pub fn of(media_type: &str) -> Option<ManifestFormat> {
        match media_type {
            mt::OCI_MANIFEST => Some(ManifestFormat::Oci),
            mt::DOCKER_MANIFEST => Some(ManifestFormat::Docker),
            _ => None,
        }
    }
}

/// A blob as the destination holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// Its digest.
    pub digest: crate::digest::Digest,
    /// Its size.
    pub size: u64,
    /// Its media type as the source or our compression named it.
    pub media_type: String,
}

/// The source's manifest bytes, when they name exactly `layers` and the
/// config the image now has, and are in `format` if one is forced.
pub fn raw_if_exact(
    image: &Image,
    layers: &[Pushed],
    format: Option<ManifestFormat>,
) -> Option<(Vec<u8>, String)> {
    let m = image.manifest.as_ref()?;
    if format.is_some_and(|f| f.media_type() != m.media_type) {
        return None;
    }
    let parsed: crate::wire::Manifest = serde_json::from_slice(&m.raw).ok()?;
    let same = parsed.config.digest == image.config_digest
        && parsed.layers.len() == layers.len()
        && parsed
            .layers
            .iter()
            .zip(layers)
            .all(|(d, l)| d.digest == l.digest && d.size == l.size);
    same.then(|| (m.raw.clone(), m.media_type.clone()))
}

/// A new manifest in `format` over `layers` and the image's config.
pub fn build(image: &Image, layers: &[Pushed], format: ManifestFormat) -> Result<Vec<u8>> {
    let layers = layers
        .iter()
        .map(|l| {
            Ok(json!({
                "mediaType": layer_type(&l.media_type, format)?,
                "digest": l.digest.to_string(),
                "size": l.size,
            }))
        })
        .collect::<Result<Vec<Value>>>()?;
    let config_type = match format {
        ManifestFormat::Oci => mt::OCI_CONFIG,
        ManifestFormat::Docker => mt::DOCKER_CONFIG,
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": format.media_type(),
        "config": {
            "mediaType": config_type,
            "digest": image.config_digest.to_string(),
            "size": image.config_raw.len(),
        },
        "layers": layers,
    });
    serde_json::to_vec(&manifest)
        .map_err(|e| Error::InvalidImage(format!("serialising manifest: {e}")))
}

/// A layer's media type spelled for `format`.
fn layer_type(media_type: &str, format: ManifestFormat) -> Result<&'static str> {
    let zstd = media_type.ends_with("zstd");
    let tar = media_type == mt::OCI_LAYER_TAR || media_type == DOCKER_LAYER_TAR;
    let foreign = media_type == mt::DOCKER_LAYER_FOREIGN;
    Ok(match format {
        ManifestFormat::Oci if zstd => mt::OCI_LAYER_ZSTD,
        ManifestFormat::Oci if tar => mt::OCI_LAYER_TAR,
        ManifestFormat::Oci => mt::OCI_LAYER_GZIP,
        ManifestFormat::Docker if zstd => {
            return Err(Error::Usage(
                "a Docker schema2 manifest cannot hold zstd layers; use format=oci".into(),
            ));
        }
        ManifestFormat::Docker if tar => DOCKER_LAYER_TAR,
        ManifestFormat::Docker if foreign => mt::DOCKER_LAYER_FOREIGN,
        ManifestFormat::Docker => mt::DOCKER_LAYER_GZIP,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_types_per_format() {
        let t = |m, f| layer_type(m, f).unwrap();
        assert_eq!(
            t(mt::DOCKER_LAYER_GZIP, ManifestFormat::Oci),
            mt::OCI_LAYER_GZIP
        );
        assert_eq!(
            t(mt::OCI_LAYER_GZIP, ManifestFormat::Docker),
            mt::DOCKER_LAYER_GZIP
        );
        assert_eq!(
            t(mt::OCI_LAYER_TAR, ManifestFormat::Docker),
            DOCKER_LAYER_TAR
        );
        assert_eq!(
            t(mt::OCI_LAYER_ZSTD, ManifestFormat::Oci),
            mt::OCI_LAYER_ZSTD
        );
        assert!(layer_type(mt::OCI_LAYER_ZSTD, ManifestFormat::Docker).is_err());
    }
}
