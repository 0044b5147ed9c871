//! A [`crate::Source`] over a manifest a client pushed and the blobs it
//! staged, or that downstream already has: a client is told a blob is
//! present when downstream has it, so it may not upload it again.
//!
//! Staged blobs are opened when the source is made, so that a sweep of the
//! staging area while the copy runs cannot take a blob away from it (an
//! open file outlives its unlinking). They are read with positioned reads,
//! so that two layers of the same blob never share a file offset.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Mismatch, Result};
use crate::image::{Image, IndexInfo, LayerInfo, ManifestInfo, Platform, media_type as mt};
use crate::reference::Reference;
use crate::registry::{MAX_CONFIG_BYTES, Repository};
use crate::source::registry::{RegistrySource, layer_infos};
use crate::source::{FetchContext, LayerBlob, Source};
use crate::wire::{Descriptor, Manifest, parse_diff_ids};

use super::Proxy;

/// A manifest or index document as a client sent it.
#[derive(Clone, Debug)]
pub struct Doc {
    /// The exact bytes.
    pub raw: Arc<Vec<u8>>,
    /// Its media type, without parameters.
    pub media_type: String,
    /// The digest of `raw`.
    pub digest: Digest,
}

impl Doc {
    /// A document of `raw` with `media_type`; its digest is sha256.
    pub fn new(raw: Arc<Vec<u8>>, media_type: &str) -> Doc {
        Doc {
            digest: Digest::sha256_of(&raw),
            media_type: mt::essence(media_type).to_string(),
            raw,
        }
    }

    /// Whether it is an index (OCI index or Docker manifest list).
    pub fn is_index(&self) -> bool {
        matches!(
            self.media_type.as_str(),
            mt::OCI_INDEX | mt::DOCKER_MANIFEST_LIST
        )
    }
}

/// A staged blob, open.
#[derive(Clone)]
struct Opened {
    file: Arc<File>,
    size: u64,
}

/// An image (or index) a client pushed, read from the staging area and,
/// for what is not staged, from the client's repository downstream.
pub struct StagedSource {
    /// The client's repository name (for messages and the image's name).
    name: String,
    tag: Option<String>,
    doc: Doc,
    /// Blobs the document names that were staged, open.
    staged: HashMap<Digest, Opened>,
    /// The same repository downstream, for blobs that are not staged.
    repo: Repository,
    /// A reader of that repository's blobs, as the registry source reads them.
    downstream: RegistrySource,
    /// An index's children, by digest (see [`StagedSource::with_child`]).
    children: HashMap<Digest, Arc<StagedSource>>,
}

impl StagedSource {
    /// A source of `doc`, pushed to the client's repository `name` (with
    /// `tag`, if it was pushed by one). For an image manifest, the staged
    /// blobs it names are opened now; an unparseable manifest opens none
    /// (`resolve` then gives the error).
    pub fn new(proxy: &Proxy, name: &str, tag: Option<&str>, doc: Doc) -> StagedSource {
        let mut source = StagedSource::unopened(proxy, name, tag, doc);
        if !source.doc.is_index()
            && let Ok(m) = serde_json::from_slice::<Manifest>(&source.doc.raw)
        {
            let staged = &mut source.staged;
            for d in std::iter::once(&m.config).chain(&m.layers) {
                if staged.contains_key(&d.digest) {
                    continue;
                }
                if let Some((file, size)) = proxy.staging.open_blob(&d.digest) {
                    staged.insert(
                        d.digest.clone(),
                        Opened {
                            file: Arc::new(file),
                            size,
                        },
                    );
                }
            }
        }
        source
    }

    /// A source of `doc` that reads every blob from downstream: an index's
    /// child, which is either copied already (and never read) or a
    /// manifest downstream has, with its blobs.
    pub fn unopened(proxy: &Proxy, name: &str, tag: Option<&str>, doc: Doc) -> StagedSource {
        let repo = proxy.config.downstream.repo(name);
        StagedSource {
            name: name.to_string(),
            tag: tag.map(str::to_string),
            downstream: downstream_source(&repo, &doc.digest),
            repo,
            doc,
            staged: HashMap::new(),
            children: HashMap::new(),
        }
    }

    /// Adds a child manifest that [`Source::child`] hands out for its
    /// digest (the caller made sure it is the document's digest).
    pub fn with_child(mut self, child: StagedSource) -> StagedSource {
        self.children
            .insert(child.doc.digest.clone(), Arc::new(child));
        self
    }

    /// The document.
    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    /// The size of blob `digest` if it was staged (and is held open by
    /// this source).
    pub fn staged_size(&self, digest: &Digest) -> Option<u64> {
        self.staged.get(digest).map(|o| o.size)
    }

    async fn resolve_inner(&self) -> Result<Image> {
        if self.doc.is_index() {
            return Err(Error::Unsupported(format!(
                "{} is an index: copy it child by child",
                self.describe()
            )));
        }
        let manifest: Manifest = serde_json::from_slice(&self.doc.raw)
            .map_err(|e| Error::InvalidImage(format!("invalid image manifest: {e}")))?;
        if manifest.schema_version != 2 {
            return Err(Error::Unsupported(format!(
                "manifest schemaVersion {} is not supported",
                manifest.schema_version
            )));
        }
        let config = &manifest.config;
        let config_raw = match self.staged.get(&config.digest) {
            Some(opened) => read_small(opened, config.size, MAX_CONFIG_BYTES)?,
            None => {
                self.repo
                    .get_small_blob(&config.digest, config.size, MAX_CONFIG_BYTES)
                    .await?
            }
        };
        check_digest(&config_raw, &config.digest, "config")?;
        let layers = layer_infos(&manifest, parse_diff_ids(&config_raw)?)?;
        Ok(Image {
            name: self.name.clone(),
            tag: self.tag.clone(),
            manifest: Some(ManifestInfo {
                digest: self.doc.digest.clone(),
                media_type: self.doc.media_type.clone(),
                raw: self.doc.raw.as_ref().clone(),
                index: None,
            }),
            config_digest: config.digest.clone(),
            config_media_type: match mt::essence(&config.media_type) {
                "" => mt::OCI_CONFIG.to_string(),
                m => m.to_string(),
            },
            config_raw,
            layers,
        })
    }
}

/// A registry source over the downstream repository, for its blob reads.
fn downstream_source(repo: &Repository, digest: &Digest) -> RegistrySource {
    let reference = Reference {
        host: repo.host().to_string(),
        path: repo.name().to_string(),
        tag: None,
        digest: Some(digest.clone()),
    };
    RegistrySource::new(reference, Platform::host(), repo.clone())
}

/// A staged blob of at most `max` bytes, whole, checked against the size
/// its descriptor gives.
fn read_small(opened: &Opened, size: u64, max: u64) -> Result<Vec<u8>> {
    if size > max {
        return Err(Error::InvalidImage(format!(
            "the config is {size} bytes; at most {max} are accepted"
        )));
    }
    if opened.size != size {
        return Err(Error::SizeMismatch {
            kind: Mismatch::Config,
            what: "config".into(),
            expected: size,
            found: opened.size,
        });
    }
    let mut out = Vec::with_capacity(size as usize);
    At::new(opened.clone())
        .read_to_end(&mut out)
        .map_err(|e| Error::stream("reading a staged config", e))?;
    Ok(out)
}

/// Fails unless `bytes` hash to `digest`.
fn check_digest(bytes: &[u8], digest: &Digest, what: &str) -> Result<()> {
    let mut h = Hasher::new(digest.algorithm());
    h.update(bytes);
    let found = h.finish();
    if &found != digest {
        return Err(Error::DigestMismatch {
            kind: Mismatch::Config,
            what: what.to_string(),
            expected: digest.clone(),
            found,
        });
    }
    Ok(())
}

/// A reader of a staged blob from its start, by positioned reads.
struct At {
    opened: Opened,
    pos: u64,
}

impl At {
    fn new(opened: Opened) -> At {
        At { opened, pos: 0 }
    }
}

impl Read for At {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.opened.size.saturating_sub(self.pos);
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.opened.file.read_at(&mut buf[..want], self.pos)?;
        // A staged file shorter than it was staged as ends early; the
        // pipeline's size check names it.
        self.pos += n as u64;
        Ok(n)
    }
}

impl Source for StagedSource {
    fn describe(&self) -> String {
        format!("pushed manifest {}@{}", self.name, self.doc.digest)
    }

    fn resolve<'a>(&'a self, _ctx: &'a FetchContext) -> BoxFuture<'a, Result<Image>> {
        Box::pin(self.resolve_inner())
    }

    /// The staged file when the blob was staged (the pipeline verifies what
    /// it reads), else a download from downstream.
    fn fetch<'a>(
        &'a self,
        layer: &'a LayerInfo,
        ctx: &'a FetchContext,
    ) -> BoxFuture<'a, Result<LayerBlob>> {
        Box::pin(async move {
            match self.staged.get(&layer.digest) {
                // The staging area hands out an open file, not a path, so
                // the blob cannot be offered in place.
                Some(opened) => Ok(LayerBlob::new(layer, Box::new(At::new(opened.clone())))),
                None => self.downstream.fetch(layer, ctx).await,
            }
        })
    }

    fn index<'a>(&'a self, _ctx: &'a FetchContext) -> BoxFuture<'a, Result<Option<IndexInfo>>> {
        Box::pin(async move {
            Ok(self.doc.is_index().then(|| IndexInfo {
                digest: self.doc.digest.clone(),
                media_type: self.doc.media_type.clone(),
                raw: self.doc.raw.as_ref().clone(),
            }))
        })
    }

    fn child(&self, descriptor: &Descriptor) -> Result<Arc<dyn Source>> {
        crate::source::refuse_nested(descriptor)?;
        match self.children.get(&descriptor.digest) {
            Some(c) => Ok(c.clone()),
            None => Err(Error::InvalidImage(format!(
                "manifest {} of the index was neither pushed nor is downstream",
                descriptor.digest
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(bytes: &[u8]) -> (tempfile::NamedTempFile, Opened) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        let file = File::open(f.path()).unwrap();
        let o = Opened {
            file: Arc::new(file),
            size: bytes.len() as u64,
        };
        (f, o)
    }

    #[test]
    fn readers_of_one_blob_do_not_share_an_offset() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (_f, o) = opened(&data);
        let (mut a, mut b) = (At::new(o.clone()), At::new(o));
        let mut first = vec![0; 1000];
        a.read_exact(&mut first).unwrap();
        let mut all_b = Vec::new();
        b.read_to_end(&mut all_b).unwrap();
        let mut rest_a = Vec::new();
        a.read_to_end(&mut rest_a).unwrap();
        first.extend(rest_a);
        assert_eq!(first, data);
        assert_eq!(all_b, data);
    }

    #[test]
    fn a_reader_stops_at_the_staged_size() {
        let (_f, mut o) = opened(b"0123456789");
        o.size = 4;
        let mut out = Vec::new();
        At::new(o).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"0123");
    }

    #[test]
    fn a_staged_config_is_bounded_sized_and_hashed() {
        let config = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let (_f, o) = opened(config);
        let n = config.len() as u64;
        assert_eq!(read_small(&o, n, 1 << 20).unwrap(), config);
        assert!(matches!(
            read_small(&o, n + 1, 1 << 20),
            Err(Error::SizeMismatch { .. })
        ));
        assert!(matches!(
            read_small(&o, n, n - 1),
            Err(Error::InvalidImage(_))
        ));
        assert!(check_digest(config, &Digest::sha256_of(config), "config").is_ok());
        assert!(matches!(
            check_digest(config, &Digest::sha256_of(b"other"), "config"),
            Err(Error::DigestMismatch { .. })
        ));
    }

    #[test]
    fn a_doc_knows_an_index_by_its_media_type() {
        let raw = Arc::new(b"{}".to_vec());
        let index = Doc::new(raw.clone(), &format!("{}; charset=utf-8", mt::OCI_INDEX));
        assert!(index.is_index());
        assert_eq!(index.media_type, mt::OCI_INDEX);
        assert!(Doc::new(raw.clone(), mt::DOCKER_MANIFEST_LIST).is_index());
        assert!(!Doc::new(raw.clone(), mt::OCI_MANIFEST).is_index());
        assert_eq!(
            Doc::new(raw, mt::OCI_MANIFEST).digest,
            Digest::sha256_of(b"{}")
        );
    }
}
