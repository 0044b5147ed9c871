//! Filters: steps between a source and a sink that observe or rewrite
//! layers (`-f NAME[:KEY=VALUE[,KEY=VALUE...]]`). One file per filter.

use std::io::Read;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::image::{Image, Layer, LayerInfo};

pub mod exclude;
pub mod inspect;
pub mod normalize;
mod rewriting;
pub mod search;

/// What a filter gets besides the layer.
#[derive(Clone, Debug)]
pub struct FilterContext {
    /// Directory for rewritten layers (removed at the end of the run).
    pub temp_dir: PathBuf,
}

/// A look at one layer's uncompressed tar as it arrives, given the image's
/// descriptor of the layer; see [`Filter::observer`]. The reader ends only
/// once the layer is verified, and fails if the layer did; an error fails
/// the layer (and the run).
pub type LayerObserver =
    std::sync::Arc<dyn Fn(&mut dyn Read, &LayerInfo) -> Result<()> + Send + Sync>;

/// Makes one layer's rewrite; see [`Filter::stream_rewrite`].
pub type RewriteFactory =
    std::sync::Arc<dyn Fn() -> Box<dyn crate::tarfmt::rewrite::Rewrite + Send> + Send + Sync>;

/// A step in the chain. The pipeline calls `begin`, then `layer` for every
/// layer bottom to top, then `finish` with the metadata as the whole chain
/// left it.
pub trait Filter: Send {
    /// The name used on the command line.
    fn name(&self) -> &'static str;
    /// Whether `layer` may change a layer's bytes. A rewritten layer must come
    /// back with `tar` set and `info.diff_id` the sha256 of the new tar; the
    /// pipeline then rewrites the config's `rootfs.diff_ids`.
    fn rewrites(&self) -> bool {
        false
    }
    /// Called once before any layer.
    fn begin(&mut self, _image: &Image) -> Result<()> {
        Ok(())
    }
    /// For a filter that does not rewrite: its look at each layer, which
    /// the pipeline runs over the tar as the layer arrives (on a thread of
    /// its own, several layers at once), so that the layer can still
    /// stream to the sink instead of being spooled for the filter. When
    /// every filter of a run gives one and none rewrites, `layer` is then
    /// called in order once the layer's observation and verification both
    /// passed, with the layer in whatever form the sink takes (possibly
    /// neither tar nor blob), and must not read its bytes; otherwise the
    /// observer is not used and `layer` gets the verified files as usual.
    /// `None` (the default): `layer` always gets the files.
    fn observer(&self) -> Option<LayerObserver> {
        None
    }
    /// For a rewriting filter whose rewrite reads a tar front to back only
    /// (it never materializes a hard link, which reads back): a fresh
    /// rewrite per layer. When it is the run's only filter and the sink
    /// takes rewritten layers live (`takes_rewritten_live`: `oci://`), the
    /// pipeline runs it over each layer as it arrives
    /// (`tarfmt::rewrite::rewrite_forward`) and `layer` is not called.
    /// `None` (the default): `layer` gets verified files.
    fn stream_rewrite(&self) -> Option<RewriteFactory> {
        None
    }
    /// One verified layer (with its tar, unless the layer was observed:
    /// see [`Filter::observer`]), in manifest order.
    fn layer(&mut self, layer: Layer, ctx: &FilterContext) -> Result<Layer>;
    /// Called once after the last layer.
    fn finish(&mut self, _image: &Image) -> Result<()> {
        Ok(())
    }
}

/// A parsed `-f` argument: the name and its `key=value` options in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterSpec {
    /// Filter name.
    pub name: String,
    /// Options, in the order given (a key may repeat, e.g. `pattern`).
    pub options: Vec<(String, String)>,
}

impl FilterSpec {
    /// Parses `name[:key=value[,key=value...]]`. A comma starts a new option
    /// only when what follows looks like `key=`, so values may hold commas
    /// (`pattern={a,b}*`).
    pub fn parse(s: &str) -> Result<FilterSpec> {
        let (name, rest) = s.split_once(':').unwrap_or((s, ""));
        if name.is_empty() {
            return Err(Error::Usage(format!("empty filter name in {s:?}")));
        }
        let mut options: Vec<(String, String)> = Vec::new();
        for piece in split_options(rest) {
            let (k, v) = piece.split_once('=').ok_or_else(|| {
                Error::Usage(format!("filter option {piece:?} in {s:?} is not KEY=VALUE"))
            })?;
            options.push((k.trim().to_string(), v.to_string()));
        }
        Ok(FilterSpec {
            name: name.to_string(),
            options,
        })
    }

    /// Every value of option `key`.
    pub fn values(&self, key: &str) -> Vec<&str> {
        self.options
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The last value of option `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values(key).last().copied()
    }

    /// Fails on options other than `known`.
    pub fn check_options(&self, known: &[&str]) -> Result<()> {
        for (k, _) in &self.options {
            if !known.contains(&k.as_str()) {
                return Err(Error::Usage(format!(
                    "unknown option {k:?} for filter {} (known: {})",
                    self.name,
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
        Ok(())
    }
}

fn split_options(rest: &str) -> Vec<&str> {
    if rest.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = rest.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b',' {
            let next = &rest[i + 1..];
            let key_like = next.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty()
                    && k.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
            });
            if key_like {
                out.push(&rest[start..i]);
                start = i + 1;
            }
        }
    }
    out.push(&rest[start..]);
    out
}

/// A canonical string for a filter chain with its options, in order: the
/// same `-f` arguments give the same string and any difference in a name,
/// a key, a value or their order gives another. It is JSON (an array of
/// `[name, [[key, value], ...]]`), so no choice of names or values can make
/// two chains collide. Used as part of the layer cache's key.
pub fn chain_key(specs: &[FilterSpec]) -> String {
    let chain: Vec<(&str, &[(String, String)])> = specs
        .iter()
        .map(|s| (s.name.as_str(), s.options.as_slice()))
        .collect();
    // Serialising strings and tuples cannot fail.
    serde_json::to_string(&chain).unwrap_or_default()
}

/// Builds the filter a `-f` argument names.
pub fn build(spec: &FilterSpec) -> Result<Box<dyn Filter>> {
    match spec.name.as_str() {
        "normalize-timestamps" => Ok(Box::new(normalize::NormalizeTimestamps::from_spec(spec)?)),
        "exclude" => Ok(Box::new(exclude::Exclude::from_spec(spec)?)),
        "inspect" => Ok(Box::new(inspect::Inspect::from_spec(spec)?)),
        "search" => Ok(Box::new(search::SearchFilter::from_spec(spec)?)),
        other => Err(Error::Usage(format!("unknown filter {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(args: &[&str]) -> String {
        let specs: Vec<FilterSpec> = args.iter().map(|a| FilterSpec::parse(a).unwrap()).collect();
        chain_key(&specs)
    }

    #[test]
    fn chain_keys() {
        let a = [
            "normalize-timestamps:ts=0",
            "exclude:pattern=*.pyc,pattern=a/*",
        ];
        assert_eq!(key(&a), key(&a));
        assert_eq!(
            key(&a),
            r#"[["normalize-timestamps",[["ts","0"]]],["exclude",[["pattern","*.pyc"],["pattern","a/*"]]]]"#
        );
        let different: [&[&str]; 8] = [
            &[],
            &["normalize-timestamps"],
            &["normalize-timestamps:ts=1"],
            &[
                "exclude:pattern=*.pyc,pattern=a/*",
                "normalize-timestamps:ts=0",
            ],
            &[
                "normalize-timestamps:ts=0",
                "exclude:pattern=a/*,pattern=*.pyc",
            ],
            &["normalize-timestamps:ts=0", "exclude:pattern=*.pyc"],
            // A value that holds what a naive join would use as separators.
            &[
                "normalize-timestamps:ts=0",
                r#"exclude:pattern=*.pyc,pattern=a/*"],["x",[]]"#,
            ],
            &[
                "normalize-timestamps:ts=0,pattern=*.pyc",
                "exclude:pattern=a/*",
            ],
        ];
        let mut seen = std::collections::HashSet::new();
        seen.insert(key(&a));
        for d in different {
            assert!(seen.insert(key(d)), "{d:?} collides");
        }
    }

    #[test]
    fn specs() {
        let s = FilterSpec::parse("exclude:pattern=usr/share/doc/*,pattern=*.pyc").unwrap();
        assert_eq!(s.name, "exclude");
        assert_eq!(s.values("pattern"), vec!["usr/share/doc/*", "*.pyc"]);
        let s = FilterSpec::parse("exclude:pattern={a,b}/*.txt").unwrap();
        assert_eq!(s.values("pattern"), vec!["{a,b}/*.txt"]);
        let s = FilterSpec::parse("normalize-timestamps").unwrap();
        assert!(s.options.is_empty());
        let s = FilterSpec::parse("normalize-timestamps:ts=0").unwrap();
        assert_eq!(s.get("ts"), Some("0"));
        assert!(FilterSpec::parse("x:novalue").is_err());
        assert!(FilterSpec::parse(":a=b").is_err());
    }
}
