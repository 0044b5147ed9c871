//! Read-only commands over an image: `search` (find member paths in every
//! layer), `info` (what the manifest and config say, no layer download) and
//! `check` (is the image well formed).
//!
//! Each is a [`Sink`](crate::sink::Sink) run by [`pipeline::run`] over any
//! [`Source`](crate::source::Source), exactly as `process` runs an output:
//! the pipeline fetches and verifies the layers, and the sink's per-layer
//! work is a function of a reader of the layer's tar and its `LayerInfo`
//! (`search::search_layer`, `check::layer_findings`). Entry naming and path
//! matching are shared with the `search` filter through the leaf
//! [`crate::tarfmt::matcher`].

pub mod check;
pub mod info;
pub mod search;
#[cfg(test)]
mod testsource;

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::pipeline::{self, RunOptions};
use crate::sink::Sink;
use crate::source::Source;

pub use crate::tarfmt::matcher::{EntryKind, basename, classify, clean_name, kind_of};

/// Where a sink leaves what it collected: the pipeline consumes the sink,
/// so its result comes back through a shared slot.
pub(crate) type Slot<T> = Arc<Mutex<Option<T>>>;

/// Puts `value` into `slot`.
pub(crate) fn fill<T>(slot: &Slot<T>, value: T) {
    if let Ok(mut s) = slot.lock() {
        *s = Some(value);
    }
}

/// Runs `sink` over `source` through the pipeline and takes what the sink
/// left in `slot` when it finished.
pub(crate) async fn run_sink<T>(
    source: Arc<dyn Source>,
    sink: Box<dyn Sink>,
    slot: &Slot<T>,
    options: RunOptions,
) -> Result<T> {
    pipeline::run(source, sink, options).await?;
    slot.lock()
        .ok()
        .and_then(|mut s| s.take())
        .ok_or_else(|| Error::InvalidImage("the run ended without a result".into()))
}

/// `{n} {word}`, the word in its plural form unless `n` is 1 (`1 match`,
/// `2 matches`, `3 entries`, `4 layers`).
pub fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        return format!("1 {word}");
    }
    let many = if word.ends_with("ch") || word.ends_with("sh") || word.ends_with('s') {
        format!("{word}es")
    } else if let Some(stem) = word.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{word}s")
    };
    format!("{n} {many}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned() {
        assert_eq!(clean_name(b"./usr/bin/"), "usr/bin");
        assert_eq!(clean_name(b"/etc//passwd"), "etc/passwd");
        assert_eq!(clean_name(b"./"), "");
        assert_eq!(clean_name(b"a/./b/../c"), "a/b/../c");
        assert_eq!(basename("a/b/c"), "c");
        assert_eq!(basename("c"), "c");
        assert_eq!(plural(1, "match"), "1 match");
        assert_eq!(plural(2, "match"), "2 matches");
        assert_eq!(plural(0, "entry"), "0 entries");
        assert_eq!(plural(3, "layer"), "3 layers");
    }

    #[test]
    fn whiteouts_are_classified() {
        let reg = tar::EntryType::Regular;
        assert_eq!(
            classify(reg, "etc/.wh.motd"),
            (EntryKind::Whiteout, "etc/motd".into())
        );
        assert_eq!(
            classify(reg, ".wh.top"),
            (EntryKind::Whiteout, "top".into())
        );
        assert_eq!(
            classify(reg, "etc/apt/.wh..wh..opq"),
            (EntryKind::Opaque, "etc/apt".into())
        );
        assert_eq!(
            classify(reg, ".wh..wh.plnk/1.2"),
            (EntryKind::File, ".wh..wh.plnk/1.2".into())
        );
        assert_eq!(
            classify(tar::EntryType::Symlink, "bin/sh"),
            (EntryKind::Symlink, "bin/sh".into())
        );
    }
}
