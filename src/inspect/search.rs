//! `search`: find member paths matching a glob or regex in every layer of an
//! image, as the layers stand (whiteouts and entries a later layer deletes
//! included), without extracting anything.
//!
//! A `SearchSink` run by the pipeline: layers download in parallel, and
//! the sink takes them bottom to top, each as a stream while it downloads
//! when the source can stream (a registry), so matches are printed before
//! the largest layer has arrived and nothing the search reads is spooled
//! unless it arrived ahead of its turn. The source verifies every layer;
//! the sink reads each tar to its end, which is where a mismatch shows.

use std::collections::HashMap;
use std::io::{self, BufReader, Read};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::image::{Image, Layer, LayerInfo};
use crate::inspect::{Slot, fill, run_sink};
use crate::pipeline::RunOptions;
use crate::sink::{LayerWork, Sink, SinkReport};
use crate::source::Source;
use crate::tarfmt::BufSeek;
use crate::tarfmt::matcher::{find_matches, find_matches_in};

pub use crate::filter::search::{SearchFilter, repository_path, script_line};
pub use crate::tarfmt::matcher::{Match, Pattern};

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

/// Searches one layer: walks its tar (from `tar`, read to its very end so
/// that a streamed layer's verdict is seen) and returns its matches.
pub fn search_layer(
    mut tar: impl Read,
    info: &LayerInfo,
    pattern: &Pattern,
) -> Result<LayerMatches> {
    let what = || format!("reading layer {} ({}) as a tar", info.index, info.digest);
    let (entries, matches) =
        find_matches(&mut tar, pattern).map_err(|e| Error::stream(what(), e))?;
    // Padding after the end-of-archive blocks: the stream's last read is
    // the source's verdict on the layer.
    io::copy(&mut tar, &mut io::sink()).map_err(|e| Error::stream(what(), e))?;
    Ok(LayerMatches {
        layer: info.clone(),
        entries,
        matches,
    })
}

/// The path of a layer's tar when it is a whole verified temp file of the
/// run (not a stream, not a slice of an input): the walk may then seek.
fn whole_temp_file(layer: &Layer) -> Option<&std::path::Path> {
    match (layer.is_live(), &layer.tar) {
        (false, Some(t)) if t.is_temp() && t.offset() == 0 => Some(t.path()),
        _ => None,
    }
}

/// [`search_layer`] over a verified file of its own, passing over member
/// data instead of reading it.
fn search_file(
    path: &std::path::Path,
    info: &LayerInfo,
    pattern: &Pattern,
) -> Result<LayerMatches> {
    let what = || format!("reading layer {} ({}) as a tar", info.index, info.digest);
    let file = std::fs::File::open(path).map_err(|e| Error::stream(what(), e))?;
    let input = BufSeek(BufReader::with_capacity(SEEK_BUF, file));
    let (entries, matches) =
        find_matches_in(input, pattern).map_err(|e| Error::stream(what(), e))?;
    Ok(LayerMatches {
        layer: info.clone(),
        entries,
        matches,
    })
}

/// Read-ahead over a layer file: most members of a typical layer are
/// smaller, so one read covers several headers and the data between them.
const SEEK_BUF: usize = 64 << 10;

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

/// What `search` calls with each layer's matches, in layer order.
pub(crate) type OnLayer = Box<dyn FnMut(&Image, &LayerMatches) -> Result<()> + Send>;

/// The sink `search` runs: ordered, reads only tars (live when the layer is
/// the next one, so a registry layer is searched as it downloads).
pub(crate) struct SearchSink {
    pattern: Arc<Pattern>,
    /// What `layer_work` found, by layer, until `layer` reports it in order.
    found: Arc<Mutex<HashMap<usize, LayerMatches>>>,
    on_layer: OnLayer,
    summary: Option<Summary>,
    slot: Slot<Summary>,
}

impl Sink for SearchSink {
    fn layer_work(&self) -> Option<LayerWork> {
        let (pattern, found) = (self.pattern.clone(), self.found.clone());
        Some(Arc::new(move |tar, info| {
            let matches = search_layer(tar, info, &pattern)?;
            found
                .lock()
                .map_err(|_| Error::InvalidImage("search: a layer's walk failed".into()))?
                .insert(info.index, matches);
            Ok(())
        }))
    }

    /// Matches name layers by blob digest, and nothing of the config is
    /// written out: the blob digest is the check that matters here (see
    /// [`Sink::work_checks_diff_ids`]); `check` is the command that also
    /// checks the config's diff_ids.
    fn work_checks_diff_ids(&self) -> bool {
        false
    }

    fn begin(&mut self, image: &Image) -> Result<()> {
        self.summary = Some(Summary {
            image: image.clone(),
            entries: 0,
            matches: 0,
            layers_with_matches: 0,
        });
        Ok(())
    }

    fn layer(&mut self, layer: Layer) -> Result<()> {
        let summary = self
            .summary
            .as_mut()
            .ok_or_else(|| Error::InvalidImage("search: a layer before the image".into()))?;
        // Matches name the layer as the image does: a source may refine the
        // descriptor it fetched by (a docker-save blob found compressed).
        let info = summary
            .image
            .layers
            .get(layer.info.index)
            .unwrap_or(&layer.info)
            .clone();
        let walked = self
            .found
            .lock()
            .ok()
            .and_then(|mut f| f.remove(&info.index));
        let found = match (walked, whole_temp_file(&layer)) {
            (Some(found), _) => found,
            (None, Some(path)) => search_file(path, &info, &self.pattern)?,
            (None, None) => {
                let tar = layer
                    .tar_reader()
                    .map_err(|e| Error::stream(format!("opening layer {}", info.index), e))?
                    .ok_or_else(|| {
                        Error::InvalidImage(format!("layer {}: the source gave no tar", info.index))
                    })?;
                search_layer(tar, &info, &self.pattern)?
            }
        };
        summary.entries += found.entries;
        summary.matches += found.matches.len() as u64;
        if !found.matches.is_empty() {
            summary.layers_with_matches += 1;
        }
        (self.on_layer)(&summary.image, &found)
    }

    fn finish(self: Box<Self>, _image: &Image) -> Result<SinkReport> {
        if let Some(summary) = self.summary {
            fill(&self.slot, summary);
        }
        Ok(SinkReport::default())
    }
}

/// Searches every layer of `source` for `pattern`. `on_layer` sees each
/// layer's matches in layer order, as soon as that layer and every one below
/// it are done. The first layer that cannot be fetched, verified or read
/// ends the search with its error.
pub async fn search(
    source: Arc<dyn Source>,
    pattern: Arc<Pattern>,
    options: RunOptions,
    on_layer: impl FnMut(&Image, &LayerMatches) -> Result<()> + Send + 'static,
) -> Result<Summary> {
    let slot = Slot::default();
    let sink = SearchSink {
        found: Arc::default(),
        pattern,
        on_layer: Box::new(on_layer),
        summary: None,
        slot: slot.clone(),
    };
    run_sink(source, Box::new(sink), &slot, options).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Mismatch;
    use crate::inspect::EntryKind;

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
        let info = layer_info(0, &bytes);
        let search_tar =
            |p: &Pattern| search_layer(&bytes[..], &info, p).map(|lm| (lm.entries, lm.matches));

        let (n, m) = search_tar(&Pattern::glob("*sh").unwrap()).unwrap();
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

        let (_, m) = search_tar(&Pattern::glob("*bashrc").unwrap()).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].path, "etc/bashrc");
        assert_eq!(m[0].member, "etc/.wh.bashrc");
        assert!(m[0].whiteout);

        let (_, m) = search_tar(&Pattern::regex("^etc/skel$").unwrap()).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].kind, EntryKind::Opaque);

        // The raw whiteout name matches too.
        let (_, m) = search_tar(&Pattern::glob(".wh.*").unwrap()).unwrap();
        assert_eq!(m.len(), 2);
    }

    use crate::inspect::testsource::{FakeSource, Serve, layer_info, options, tar_of as files};

    /// Runs a search over `layers` and returns the layers the callback saw,
    /// in the order it saw them, with their match counts.
    fn run_search(layers: Vec<Serve>) -> (Result<Summary>, Vec<(usize, usize)>) {
        run_over(FakeSource::new(layers, true))
    }

    fn run_over(source: Arc<FakeSource>) -> (Result<Summary>, Vec<(usize, usize)>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let result = rt.block_on(search(
            source,
            Arc::new(Pattern::glob("*.conf").unwrap()),
            options(),
            move |_, lm| {
                log.lock().unwrap().push((lm.layer.index, lm.matches.len()));
                Ok(())
            },
        ));
        let seen = seen.lock().unwrap().clone();
        (result, seen)
    }

    #[test]
    fn layers_are_reported_in_order_whatever_order_they_finish_in() {
        // Layer 0 is the slowest, layer 3 the fastest.
        let layers = (0..4)
            .map(|i| {
                let names: Vec<String> = (0..=i).map(|j| format!("etc/{i}-{j}.conf")).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                Serve::Tar(files(&names), 200 - 50 * i as u64)
            })
            .collect();
        let (result, seen) = run_search(layers);
        let summary = result.unwrap();
        assert_eq!(seen, vec![(0, 1), (1, 2), (2, 3), (3, 4)]);
        assert_eq!((summary.matches, summary.entries), (10, 10));
        assert_eq!(summary.layers_with_matches, 4);
        assert_eq!(summary.image.layers.len(), 4);
    }

    #[test]
    fn the_sources_verdict_ends_the_search_typed() {
        for (bad, kind) in [
            (0, Mismatch::BlobDigest),
            (2, Mismatch::DiffId),
            (3, Mismatch::BlobSize),
        ] {
            let layers = (0..4)
                .map(|i| {
                    if i == bad {
                        Serve::Fail(kind)
                    } else {
                        Serve::Tar(files(&["a.conf"]), 10)
                    }
                })
                .collect();
            let (result, seen) = run_search(layers);
            let e = result.unwrap_err();
            assert_eq!(e.mismatch(), Some(kind), "{e}");
            // Nothing at or above the bad layer was reported.
            assert!(seen.iter().all(|(i, _)| *i < bad), "{seen:?}");
        }
    }

    #[test]
    fn a_layer_that_is_not_a_tar_is_a_one_line_error() {
        // A verified tar cut short is walked as far as it goes, as before.
        for garbage in [
            vec![0x55u8; 1024],
            vec![0xffu8; 512],
            b"not a tar".repeat(100),
        ] {
            let layers = vec![Serve::Tar(files(&["a.conf"]), 0), Serve::Tar(garbage, 0)];
            let (result, seen) = run_search(layers);
            let e = result.unwrap_err().to_string();
            assert!(e.contains("reading layer 1"), "{e}");
            assert!(!e.contains('\n'), "{e}");
            assert_eq!(seen, vec![(0, 1)]);
        }
    }

    #[test]
    fn matches_name_layers_as_the_image_does_and_slices_stay_bounded() {
        let mut unterminated = files(&["etc/in-place.conf", "etc/x"]);
        // No end-of-archive blocks: the slice's end is the tar's end, and
        // what follows it in the file is no tar.
        unterminated.truncate(unterminated.len() - 1024);
        let layers = vec![
            Serve::Tar(files(&["a.conf"]), 30),
            Serve::InPlace(unterminated),
            Serve::Tar(files(&["b.conf", "c.conf"]), 0),
        ];
        let src = FakeSource::refined(layers);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let summary = rt
            .block_on(search(
                src,
                Arc::new(Pattern::glob("*.conf").unwrap()),
                options(),
                move |image, lm| {
                    let declared = &image.layers[lm.layer.index];
                    log.lock().unwrap().push((
                        lm.layer.digest == declared.digest,
                        lm.layer.media_type == declared.media_type,
                        lm.matches.len(),
                        lm.entries,
                    ));
                    Ok(())
                },
            ))
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![(true, true, 1, 1), (true, true, 1, 2), (true, true, 2, 2)]
        );
        assert_eq!((summary.matches, summary.entries), (4, 5));
    }
}
