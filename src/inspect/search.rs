//! `search`: find member paths matching a glob or regex in every layer of an
//! image, as the layers stand (whiteouts and entries a later layer deletes
//! included), without extracting anything.
//!
//! Layers are fetched and walked in parallel; only the matches are kept,
//! and they are handed out in layer order as soon as every lower layer is
//! done, so output starts before the largest layer has arrived.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::digest::{Algorithm, HashingReader};
use crate::error::{Error, Result};
use crate::escape::{Escaped, TextOut};
use crate::filter::{Filter, FilterContext, FilterSpec};
use crate::image::{Compression, FileSlice, Image, Layer, LayerInfo, LayerNeeds};
use crate::inspect::{
    AbortOnDrop, EntryKind, RunDir, SliceReader, WalkOptions, basename, classify, clean_name,
};
use crate::registry::Repository;
use crate::source::Source;
use crate::tarfmt::{Archive, Input, Seekable, Stream};

/// What member paths are matched against.
#[derive(Clone, Debug)]
pub enum Pattern {
    /// A shell glob (`*` and `?` cross `/`, as Python's fnmatch does),
    /// matched against the whole path and against its last component.
    Glob(globset::GlobMatcher),
    /// A regular expression, searched anywhere in the path.
    Regex(regex::Regex),
}

impl Pattern {
    /// Compiles a glob. A leading `/` or `./` is dropped, since member paths
    /// are matched without one.
    pub fn glob(pattern: &str) -> Result<Pattern> {
        let trimmed = pattern.trim_start_matches("./").trim_start_matches('/');
        let glob = globset::GlobBuilder::new(trimmed)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| Error::Usage(format!("invalid glob {pattern:?}: {e}")))?;
        Ok(Pattern::Glob(glob.compile_matcher()))
    }

    /// Compiles a regular expression (the `regex` crate's syntax).
    pub fn regex(pattern: &str) -> Result<Pattern> {
        let re = regex::Regex::new(pattern).map_err(|e| {
            let msg = e.to_string().replace('\n', " ");
            Error::Usage(format!(
                "invalid regular expression {pattern:?}: {}",
                msg.split_whitespace().collect::<Vec<_>>().join(" ")
            ))
        })?;
        Ok(Pattern::Regex(re))
    }

    /// Compiles `pattern` as a regex when `regex` is set, else as a glob.
    pub fn new(pattern: &str, regex: bool) -> Result<Pattern> {
        if regex {
            Pattern::regex(pattern)
        } else {
            Pattern::glob(pattern)
        }
    }

    /// Whether a cleaned path matches.
    pub fn is_match(&self, path: &str) -> bool {
        match self {
            Pattern::Glob(g) => g.is_match(path) || g.is_match(basename(path)),
            Pattern::Regex(r) => r.is_match(path),
        }
    }
}

/// One matching layer entry.
#[derive(Clone, Debug, Serialize)]
pub struct Match {
    /// The path the entry creates, or for a whiteout the path it deletes
    /// (for an opaque marker, the directory it empties).
    pub path: String,
    /// The member's own name in the layer tar (`etc/.wh.motd`).
    pub member: String,
    /// What the entry is.
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Size of the member's data in bytes (0 for all but regular files).
    pub size: u64,
    /// Where a symlink points, or what a hard link links to.
    pub link_target: Option<String>,
    /// Whether the entry deletes rather than adds.
    pub whiteout: bool,
}

/// The matches in one layer.
#[derive(Clone, Debug)]
pub struct LayerMatches {
    /// The layer.
    pub layer: LayerInfo,
    /// Entries in the layer.
    pub entries: u64,
    /// Matching entries, in tar order.
    pub matches: Vec<Match>,
}

/// Walks one layer tar and returns its entry count and matches. Member data
/// is seeked over, never read.
pub fn search_tar(tar: &FileSlice, pattern: &Pattern) -> std::io::Result<(u64, Vec<Match>)> {
    let reader = SliceReader::open(tar)?;
    collect_matches(Archive::new(Seekable(reader)), pattern)
}

/// Walks a tar stream to its end-of-archive marker and returns its entry
/// count and matches. Member data is read (a stream cannot seek) and
/// dropped.
pub fn search_stream(tar: impl Read, pattern: &Pattern) -> std::io::Result<(u64, Vec<Match>)> {
    collect_matches(Archive::new(Stream(tar)), pattern)
}

/// Entries come from the shared reader, so names are the ones the
/// extractor and the filters see, and hostile headers fail the same way.
fn collect_matches<S: Input>(
    mut archive: Archive<S>,
    pattern: &Pattern,
) -> std::io::Result<(u64, Vec<Match>)> {
    let mut entries = 0;
    let mut matches = Vec::new();
    while let Some(entry) = archive.next_entry()? {
        entries += 1;
        let member = clean_name(entry.path());
        if member.is_empty() {
            // The layer's root directory (`./`).
            continue;
        }
        let (kind, path) = classify(tar::EntryType::new(entry.kind()), &member);
        let hit = pattern.is_match(&path) || (path != member && pattern.is_match(&member));
        if !hit {
            continue;
        }
        let link_target = match kind {
            EntryKind::Symlink | EntryKind::Hardlink => {
                Some(String::from_utf8_lossy(entry.link()).into_owned())
            }
            _ => None,
        };
        matches.push(Match {
            path,
            member,
            kind,
            size: entry.resolved.size,
            link_target,
            whiteout: kind.is_whiteout(),
        });
    }
    Ok((entries, matches))
}

/// Where `search` reads layers from.
#[derive(Clone)]
pub enum LayerAccess {
    /// [`Source::fetch`]: verified temp files, for every kind of source.
    Fetch,
    /// Straight from the registry the image is in: each blob streams
    /// through its digest check, the decompressor and the matcher at once,
    /// and never touches the disk.
    Stream {
        /// A client for the image's repository.
        client: Arc<Repository>,
        /// Also hash the uncompressed tar against the config's diff_id. The
        /// blob digest already proves the bytes searched are the ones the
        /// manifest names; the diff_id only proves the config agrees, which
        /// is `check`'s business, and hashing the tar costs about a fifth of
        /// a search's CPU time.
        verify_diff_id: bool,
    },
}

/// Chunks in flight between a download and its walker: a few MiB per layer
/// at most, whatever the layer's size.
const STREAM_CHUNKS: usize = 8;

/// Read buffer over the compressed stream.
const STREAM_BUF: usize = 256 << 10;

/// One pass over a layer blob: hash it, decompress it, walk the tar (and
/// hash it, with `verify_diff_id`); then verify size, digest and diff_id.
/// Every byte is read even when the tar turns out broken, so that a corrupt
/// blob is reported as one.
pub fn walk_blob(
    input: impl Read,
    info: &LayerInfo,
    pattern: &Pattern,
    verify_diff_id: bool,
) -> Result<(u64, Vec<Match>)> {
    let what = |s: &str| format!("layer {} ({}) {s}", info.index, info.digest);
    let hashed = HashingReader::new(input, info.digest.algorithm());
    let mut buffered = BufReader::with_capacity(STREAM_BUF, hashed);
    let head = buffered
        .fill_buf()
        .map_err(|e| Error::stream(what("read"), e))?;
    let compression = Compression::sniff(head);
    let walked = compression.decoder(&mut buffered).and_then(|decoded| {
        if !verify_diff_id {
            let mut tar = decoded;
            let found = search_stream(&mut tar, pattern)?;
            // Read to the end, so that the blob digest covers every byte.
            io::copy(&mut tar, &mut io::sink())?;
            return Ok((found, None));
        }
        let mut tar = HashingReader::new(decoded, Algorithm::Sha256);
        let found = search_stream(&mut tar, pattern)?;
        // Padding after the end-of-archive blocks is part of the diff_id.
        io::copy(&mut tar, &mut io::sink())?;
        Ok((found, Some(tar.finish().0)))
    });
    let drained = io::copy(&mut buffered, &mut io::sink());
    let (digest, size) = buffered.into_inner().finish();
    crate::verify::check_blob(info, size, digest, what("blob"))?;
    drained.map_err(|e| Error::stream(what("read"), e))?;
    let (found, diff_id) =
        walked.map_err(|e| Error::stream(what(&format!("reading as a {compression:?} tar")), e))?;
    if let Some(diff_id) = diff_id {
        crate::verify::check_diff_id(info, diff_id)?;
    }
    Ok(found)
}

async fn stream_layer(
    client: Arc<Repository>,
    info: LayerInfo,
    pattern: Arc<Pattern>,
    verify_diff_id: bool,
) -> Result<(u64, Vec<Match>)> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(STREAM_CHUNKS);
    let job = info.clone();
    let walker = tokio::task::spawn_blocking(move || {
        let reader = crate::source::registry::ChannelReader::new(rx);
        walk_blob(reader, &job, &pattern, verify_diff_id)
    });
    let download = client
        .stream_blob(&info.digest, info.size, tx, |_| {})
        .await;
    let walked = match walker.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::Interrupted),
    };
    // A download error explains a walker that saw the stream end early.
    download?;
    walked
}

type LayerResults = BoxStream<'static, (LayerInfo, Result<(u64, Vec<Match>)>)>;

fn stream_layers(
    client: Arc<Repository>,
    verify_diff_id: bool,
    layers: Vec<LayerInfo>,
    parallel: usize,
    pattern: Arc<Pattern>,
) -> LayerResults {
    futures_util::stream::iter(layers)
        .map(move |info| {
            let task = AbortOnDrop(tokio::spawn(stream_layer(
                client.clone(),
                info.clone(),
                pattern.clone(),
                verify_diff_id,
            )));
            async move {
                let result = match task.await {
                    Ok(r) => r,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => Err(Error::Interrupted),
                };
                (info, result)
            }
        })
        .buffer_unordered(parallel.max(1))
        .boxed()
}

/// The repository path of an image name, without its registry host
/// (`127.0.0.1:5000/team/app` -> `team/app`), as the Python occystrap's
/// `--script-friendly` lines name images: a host's `:PORT` would add a
/// field to lines that scripts split on `:`.
pub fn repository_path(name: &str) -> &str {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            rest
        }
        _ => name,
    }
}

/// One `--script-friendly` line: `image:tag:layer-hex:member`, the layer
/// named by its digest's hex alone, as the Python occystrap prints it.
/// Name, tag and member are [`Escaped`]: one line of printable text, with
/// control characters and backslashes escaped, that a script can decode.
pub fn script_line(image: &Image, layer: &LayerInfo, m: &Match) -> String {
    format!(
        "{}:{}:{}:{}",
        Escaped(repository_path(&image.name)),
        Escaped(image.tag.as_deref().unwrap_or("")),
        layer.digest.hex(),
        Escaped(&m.member)
    )
}

/// Totals of a search.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The image searched.
    pub image: Image,
    /// Entries walked, all layers.
    pub entries: u64,
    /// Matches, all layers.
    pub matches: u64,
    /// Layers with at least one match.
    pub layers_with_matches: usize,
}

/// Searches every layer of `source` for `pattern`. `on_layer` sees each
/// layer's matches in layer order, as soon as that layer and every one below
/// it are done. The first layer that cannot be fetched or read ends the
/// search with its error.
pub async fn search(
    source: Arc<dyn Source>,
    pattern: Arc<Pattern>,
    options: WalkOptions,
    access: LayerAccess,
    mut on_layer: impl FnMut(&Image, &LayerMatches) -> Result<()>,
) -> Result<Summary> {
    let run = RunDir::new(options.temp_dir.as_ref(), options.reporter.clone())?;
    let image = source.resolve(&run.ctx).await?;
    options.reporter.begin(&image, &image.layers);
    let mut stream = match access {
        LayerAccess::Fetch => fetch_layers(source, &image, pattern, &options, &run),
        LayerAccess::Stream {
            client,
            verify_diff_id,
        } => stream_layers(
            client,
            verify_diff_id,
            image.layers.clone(),
            options.parallel,
            pattern,
        ),
    };
    let mut done: BTreeMap<usize, LayerMatches> = BTreeMap::new();
    let mut next = 0;
    let mut summary = Summary {
        image: image.clone(),
        entries: 0,
        matches: 0,
        layers_with_matches: 0,
    };
    while let Some((info, result)) = stream.next().await {
        let (entries, matches) = result?;
        done.insert(
            info.index,
            LayerMatches {
                layer: info,
                entries,
                matches,
            },
        );
        while let Some(lm) = done.remove(&next) {
            summary.entries += lm.entries;
            summary.matches += lm.matches.len() as u64;
            if !lm.matches.is_empty() {
                summary.layers_with_matches += 1;
            }
            on_layer(&image, &lm)?;
            next += 1;
        }
    }
    options.reporter.end();
    Ok(summary)
}

fn fetch_layers(
    source: Arc<dyn Source>,
    image: &Image,
    pattern: Arc<Pattern>,
    options: &WalkOptions,
    run: &RunDir,
) -> LayerResults {
    crate::inspect::walk_layers(
        source,
        image.layers.clone(),
        LayerNeeds::TAR,
        options.parallel,
        run.ctx.clone(),
        move |layer: Layer| {
            let tar = layer.tar.as_ref().ok_or_else(|| {
                Error::InvalidImage(format!(
                    "layer {}: the source gave no tar",
                    layer.info.index
                ))
            })?;
            search_tar(tar, &pattern).map_err(|e| {
                Error::stream(
                    format!(
                        "reading layer {} ({}) as a tar",
                        layer.info.index, layer.info.digest
                    ),
                    e,
                )
            })
        },
    )
}

/// `-f search:pattern=GLOB[,regex=true]`: prints the matches of each layer
/// on stdout as the layer passes, and leaves the layer as it is.
pub struct SearchFilter {
    pattern: Pattern,
    image: Option<Image>,
}

impl SearchFilter {
    /// Builds the filter from its `-f` options.
    pub fn from_spec(spec: &FilterSpec) -> Result<SearchFilter> {
        spec.check_options(&["pattern", "regex"])?;
        let pattern = spec
            .get("pattern")
            .ok_or_else(|| Error::Usage("filter search needs pattern=GLOB".into()))?;
        let regex = match spec.get("regex") {
            None => false,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => {
                    return Err(Error::Usage(format!(
                        "filter search: regex={v} must be true or false"
                    )));
                }
            },
        };
        Ok(SearchFilter {
            pattern: Pattern::new(pattern, regex)?,
            image: None,
        })
    }
}

impl Filter for SearchFilter {
    fn name(&self) -> &'static str {
        "search"
    }

    fn begin(&mut self, image: &Image) -> Result<()> {
        self.image = Some(image.clone());
        Ok(())
    }

    fn layer(&mut self, layer: Layer, _ctx: &FilterContext) -> Result<Layer> {
        let tar = layer.tar.as_ref().ok_or_else(|| {
            Error::InvalidImage(format!("layer {}: no tar to search", layer.info.index))
        })?;
        let (_, matches) = search_tar(tar, &self.pattern)
            .map_err(|e| Error::stream(format!("searching layer {}", layer.info.index), e))?;
        let mut out = TextOut::new(std::io::stdout().lock());
        if let Some(image) = &self.image {
            for m in &matches {
                writeln!(out, "{}", script_line(image, &layer.info, m))
                    .map_err(|e| Error::stream("writing search results", e))?;
            }
        }
        Ok(layer)
    }

    fn finish(&mut self, _image: &Image) -> Result<()> {
        std::io::stdout()
            .flush()
            .map_err(|e| Error::stream("writing search results", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_path_or_basename() {
        let p = Pattern::glob("bin/*sh").unwrap();
        assert!(p.is_match("bin/bash"));
        assert!(p.is_match("bin/sh"));
        assert!(!p.is_match("usr/bin/bash"));
        let p = Pattern::glob("*bash").unwrap();
        assert!(p.is_match("bin/bash"));
        assert!(p.is_match("usr/share/bash"));
        let p = Pattern::glob("*.conf").unwrap();
        assert!(p.is_match("etc/ld.so.conf"));
        assert!(p.is_match("etc/a/b/x.conf"));
        assert!(!p.is_match("etc/x.conf.d"));
        let p = Pattern::glob("/etc/passwd").unwrap();
        assert!(p.is_match("etc/passwd"));
        let p = Pattern::glob("passwd").unwrap();
        assert!(p.is_match("etc/passwd"));
        assert!(!p.is_match("etc/passwd-"));
        assert!(Pattern::glob("a[").is_err());
    }

    #[test]
    fn repository_paths() {
        assert_eq!(repository_path("127.0.0.1:5000/team/app"), "team/app");
        assert_eq!(repository_path("ghcr.io/org/app"), "org/app");
        assert_eq!(repository_path("localhost/app"), "app");
        assert_eq!(repository_path("team/app"), "team/app");
        assert_eq!(repository_path("busybox"), "busybox");
    }

    #[test]
    fn regexes_are_unanchored() {
        let p = Pattern::regex(r".*\.py$").unwrap();
        assert!(p.is_match("usr/lib/x.py"));
        assert!(!p.is_match("usr/lib/x.pyc"));
        let p = Pattern::regex("bin/b").unwrap();
        assert!(p.is_match("usr/bin/bash"));
        assert!(Pattern::regex("(").is_err());
    }

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
    }

    #[test]
    fn walks_a_tar_with_whiteouts() {
        let bytes = tar_of(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, "./", std::io::empty()).unwrap();
            file(b, "./bin/bash", &[7u8; 3000]);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "bin/sh", "bash").unwrap();
            file(b, "etc/.wh.bashrc", b"");
            file(b, "etc/skel/.wh..wh..opq", b"");
            file(b, "etc/motd", b"hi");
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.tar");
        std::fs::write(&path, &bytes).unwrap();
        let slice = FileSlice::range(Arc::new(path), 0, bytes.len() as u64);

        let (n, m) = search_tar(&slice, &Pattern::glob("*sh").unwrap()).unwrap();
        assert_eq!(n, 6);
        let got: Vec<_> = m.iter().map(|m| (m.path.as_str(), m.kind)).collect();
        assert_eq!(
            got,
            vec![
                ("bin/bash", EntryKind::File),
                ("bin/sh", EntryKind::Symlink)
            ]
        );
        assert_eq!(m[0].size, 3000);
        assert_eq!(m[1].link_target.as_deref(), Some("bash"));

        let (_, m) = search_tar(&slice, &Pattern::glob("*bashrc").unwrap()).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].path, "etc/bashrc");
        assert_eq!(m[0].member, "etc/.wh.bashrc");
        assert!(m[0].whiteout);

        let (_, m) = search_tar(&slice, &Pattern::regex("^etc/skel$").unwrap()).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].kind, EntryKind::Opaque);

        // The raw whiteout name matches too.
        let (_, m) = search_tar(&slice, &Pattern::glob(".wh.*").unwrap()).unwrap();
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn blobs_are_walked_and_verified_in_one_pass() {
        use crate::digest::Digest;
        let tar = tar_of(|b| {
            file(b, "bin/bash", &[1u8; 70_000]);
            file(b, "etc/.wh.motd", b"");
        });
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let blob = gz.finish().unwrap();
        let info = LayerInfo {
            index: 3,
            digest: Digest::sha256_of(&blob),
            size: blob.len() as u64,
            media_type: crate::image::media_type::OCI_LAYER_GZIP.into(),
            diff_id: Digest::sha256_of(&tar),
        };
        let p = Pattern::glob("*").unwrap();
        let (n, m) = walk_blob(&blob[..], &info, &p, true).unwrap();
        assert_eq!((n, m.len()), (2, 2));
        assert!(m[1].whiteout);

        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        let mut z = info.clone();
        z.digest = Digest::sha256_of(&zst);
        z.size = zst.len() as u64;
        assert_eq!(walk_blob(&zst[..], &z, &p, true).unwrap().0, 2);

        let mut lie = info.clone();
        lie.diff_id = Digest::sha256_of(b"other");
        let e = walk_blob(&blob[..], &lie, &p, true).unwrap_err();
        assert!(e.to_string().contains("diff_id"), "{e}");
        assert!(walk_blob(&blob[..], &lie, &p, false).is_ok());

        // Garbage in the middle: the tar may fail to parse, but the digest
        // is what gets reported.
        let mut bad = blob.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        let e = walk_blob(&bad[..], &info, &p, false).unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
        let e = walk_blob(&blob[..blob.len() - 5], &info, &p, false).unwrap_err();
        assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
    }
}
