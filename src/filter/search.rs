//! `-f search:pattern=GLOB[,regex=true]`: prints the matches of each layer
//! on stdout as the layer passes, in the `--script-friendly` form of the
//! `search` command, and leaves the layer as it is.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::escape::{Escaped, TextOut};
use crate::filter::{Filter, FilterContext, FilterSpec, LayerObserver};
use crate::image::{Image, Layer, LayerInfo};
use crate::tarfmt::matcher::{Match, Pattern, find_matches};

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

/// Each observed layer's matches, by layer index, until `layer` prints them.
type Found = Arc<Mutex<HashMap<usize, Vec<Match>>>>;

/// The `search` filter: observes only. Layers are searched as they arrive
/// (its [`Filter::observer`]), several at once, and each layer's matches
/// printed in manifest order by `layer`.
pub struct SearchFilter {
    pattern: Arc<Pattern>,
    image: Option<Image>,
    found: Found,
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
            pattern: Arc::new(Pattern::new(pattern, regex)?),
            image: None,
            found: Found::default(),
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

    fn observer(&self) -> Option<LayerObserver> {
        let (pattern, found) = (self.pattern.clone(), self.found.clone());
        Some(Arc::new(move |tar, info| {
            let (_, matches) = find_matches(tar, &pattern)
                .map_err(|e| Error::stream(format!("searching layer {}", info.index), e))?;
            found
                .lock()
                .map_err(|_| Error::InvalidImage("search: a layer's search failed".into()))?
                .insert(info.index, matches);
            Ok(())
        }))
    }

    fn layer(&mut self, layer: Layer, _ctx: &FilterContext) -> Result<Layer> {
        let observed = self
            .found
            .lock()
            .ok()
            .and_then(|mut f| f.remove(&layer.info.index));
        let matches = match observed {
            Some(m) => m,
            None => search_files(&layer, &self.pattern)?,
        };
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

/// Searches a layer's verified tar file (when it was not observed).
fn search_files(layer: &Layer, pattern: &Pattern) -> Result<Vec<Match>> {
    let what = || format!("searching layer {}", layer.info.index);
    let tar = layer
        .tar_reader()
        .map_err(|e| Error::stream(what(), e))?
        .ok_or_else(|| {
            Error::InvalidImage(format!("layer {}: no tar to search", layer.info.index))
        })?;
    let (_, matches) = find_matches(tar, pattern).map_err(|e| Error::stream(what(), e))?;
    Ok(matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_paths() {
        assert_eq!(repository_path("127.0.0.1:5000/team/app"), "team/app");
        assert_eq!(repository_path("ghcr.io/org/app"), "org/app");
        assert_eq!(repository_path("localhost/app"), "app");
        assert_eq!(repository_path("team/app"), "team/app");
        assert_eq!(repository_path("busybox"), "busybox");
    }

    #[test]
    fn options_are_checked() {
        for bad in [
            "search",
            "search:regex=true",
            "search:pattern=a[",
            "search:pattern=x,regex=maybe",
            "search:pattern=x,other=1",
        ] {
            let e = SearchFilter::from_spec(&FilterSpec::parse(bad).unwrap()).err();
            assert!(e.is_some_and(|e| e.is_usage()), "{bad}");
        }
        for ok in [
            "search:pattern=*.conf",
            "search:pattern=^etc,regex=TRUE",
            "search:pattern=x,regex=no",
        ] {
            assert!(
                SearchFilter::from_spec(&FilterSpec::parse(ok).unwrap()).is_ok(),
                "{ok}"
            );
        }
    }
}
