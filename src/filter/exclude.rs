//! `exclude:pattern=GLOB[,pattern=GLOB...]`: removes matching entries from
//! every layer.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::filter::rewriting::layer_tar;
use crate::filter::{Filter, FilterContext, FilterSpec};
use crate::image::Layer;
use crate::tarfmt::rewrite::{self, Action, Entry, Rewrite, clean_path};
use crate::tarfmt::{Whiteout, whiteout_target};

/// Removes the entries whose path matches one of the patterns, and what is
/// below a matching directory, from every layer.
///
/// Patterns are matched against the entry's full path without a leading
/// `./` or `/`. `*` and `?` do not match `/`; `**` matches across
/// directories (`**/*.pyc` is every `.pyc`, `usr/share/doc/**` everything
/// below `usr/share/doc`); `[abc]`, `[!abc]` and `{a,b}` work as in a
/// shell; `\` escapes. An entry is also removed when a directory above it
/// matches, so `usr/share/doc` and `usr/share/doc/*` remove the whole
/// tree (the first also the directory itself).
///
/// Whiteouts are matched by the path they delete: `.wh.NAME` goes when
/// `NAME` is excluded, an opaque marker (`.wh..wh..opq`) when its directory
/// is. Since the same patterns remove the path from every layer, such a
/// whiteout would hide nothing; every other whiteout is kept so that files
/// deleted by an upper layer stay deleted.
///
/// A hard link that is kept while the file it points to is excluded in the
/// same layer becomes a regular file with that content. A hard link to an
/// excluded file of a lower layer cannot be kept (its target is gone) and
/// is removed too, with a warning.
///
/// Exclusion works layer by layer: removing an entry from one layer does
/// not hide what a lower layer has at that path (only a whiteout would).
/// A file in a lower layer therefore stays visible unless it is excluded
/// there too. The patterns are applied to every layer of the image, so a
/// matching path goes from all of them; what survives is content reachable
/// under a name the patterns do not match (a symlink, or a hard link,
/// which becomes a copy). Each layer that loses entries gets a new diff_id
/// and the image a new config; a layer with nothing to exclude is passed
/// on unchanged.
#[derive(Debug)]
pub struct Exclude {
    patterns: Vec<String>,
    set: GlobSet,
}

impl Exclude {
    /// A filter removing what `patterns` match (see the type's docs).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Exclude> {
        if patterns.is_empty() {
            return Err(Error::Usage(
                "exclude needs at least one pattern (exclude:pattern=GLOB)".into(),
            ));
        }
        let mut builder = GlobSetBuilder::new();
        let mut kept = Vec::new();
        for raw in patterns {
            let raw = raw.as_ref();
            let p = clean_pattern(raw);
            if p.is_empty() {
                return Err(Error::Usage(format!(
                    "exclude: pattern {raw:?} matches no path"
                )));
            }
            let glob = GlobBuilder::new(p)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| Error::Usage(format!("exclude: bad pattern {raw:?}: {e}")))?;
            builder.add(glob);
            kept.push(raw.to_string());
        }
        let set = builder
            .build()
            .map_err(|e| Error::Usage(format!("exclude: bad patterns: {e}")))?;
        Ok(Exclude {
            patterns: kept,
            set,
        })
    }

    /// Builds the filter from `-f exclude:pattern=GLOB[,pattern=GLOB...]`.
    pub fn from_spec(spec: &FilterSpec) -> Result<Exclude> {
        spec.check_options(&["pattern"])?;
        Exclude::new(&spec.values("pattern"))
    }

    /// Whether `path` (cleaned: no leading `./` or `/`) or a directory above
    /// it matches a pattern.
    pub fn is_excluded(&self, path: &[u8]) -> bool {
        if path.is_empty() {
            return false;
        }
        let matches = |p: &[u8]| self.set.is_match(Path::new(OsStr::from_bytes(p)));
        path.iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .any(|(i, _)| i > 0 && matches(&path[..i]))
            || matches(path)
    }

    /// Whether an entry at `path` is to go, whiteouts judged by what they
    /// delete.
    fn drops(&self, path: &[u8]) -> bool {
        match whiteout_target(path) {
            Some(Whiteout::Opaque(dir)) => self.is_excluded(&dir),
            Some(Whiteout::Deletes(target)) => self.is_excluded(&target),
            None => self.is_excluded(path),
        }
    }
}

/// The pattern as paths are matched: no leading `./` or `/`, no trailing
/// `/`.
fn clean_pattern(p: &str) -> &str {
    let cleaned = clean_path(p.as_bytes());
    // clean_path only cuts ASCII bytes off the ends, so this stays UTF-8.
    std::str::from_utf8(cleaned).unwrap_or(p)
}

/// One layer's pass: what was dropped so far, for hard links to it.
struct Pass<'a> {
    exclude: &'a Exclude,
    /// Dropped regular files (and links to them) -> where their content is.
    dropped: HashMap<Vec<u8>, (u64, u64)>,
    label: &'a str,
}

impl Rewrite for Pass<'_> {
    fn entry(&mut self, entry: &mut Entry) -> Result<Action> {
        let path = clean_path(entry.path()).to_vec();
        let target_gone = entry.is_hardlink() && {
            let target = clean_path(entry.link_target());
            self.exclude.is_excluded(target)
        };
        if self.exclude.drops(&path) {
            if entry.is_regular() {
                self.dropped
                    .insert(path, (entry.data_offset(), entry.size()));
            } else if entry.is_hardlink() {
                let target = clean_path(entry.link_target());
                if let Some(&content) = self.dropped.get(target) {
                    self.dropped.insert(path, content);
                }
            }
            return Ok(Action::Drop);
        }
        if target_gone {
            let target = clean_path(entry.link_target());
            return match self.dropped.get(target) {
                Some(&(data_offset, size)) => Ok(Action::Materialize { data_offset, size }),
                None => {
                    tracing::warn!(
                        "exclude: {}: dropping hard link {} to excluded {} (its content is not in this layer)",
                        self.label,
                        path.escape_ascii(),
                        target.escape_ascii()
                    );
                    Ok(Action::Drop)
                }
            };
        }
        Ok(Action::Keep)
    }
}

impl Filter for Exclude {
    fn name(&self) -> &'static str {
        "exclude"
    }

    fn rewrites(&self) -> bool {
        true
    }

    fn layer(&mut self, mut layer: Layer, ctx: &FilterContext) -> Result<Layer> {
        let (label, tar) = layer_tar(&layer, self.name())?;
        let mut pass = Pass {
            exclude: self,
            dropped: HashMap::new(),
            label: &label,
        };
        let out = rewrite::rewrite_layer(&tar, &ctx.temp_dir, &label, &mut pass)?;
        if !out.stats.edited {
            return Ok(layer);
        }
        tracing::info!(
            "exclude {:?}: {label}: removed {} of {} entries",
            self.patterns,
            out.stats.dropped,
            out.stats.entries
        );
        layer.tar = Some(out.tar);
        layer.info.diff_id = out.diff_id;
        Ok(layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tarfmt::rewrite::testutil::*;

    fn ex(patterns: &[&str]) -> Exclude {
        Exclude::new(patterns).unwrap()
    }

    #[test]
    fn glob_dialect() {
        let e = ex(&[
            "usr/share/doc/*",
            "**/*.pyc",
            "/opt/{a,b}/x?",
            "./var/cache",
        ]);
        for yes in [
            "usr/share/doc/pkg",
            "usr/share/doc/pkg/README",
            "usr/share/doc/.hidden",
            "a.pyc",
            "usr/lib/python3/x/y.pyc",
            "opt/a/x1",
            "opt/b/xy/below",
            "var/cache",
            "var/cache/apt/pkgcache.bin",
        ] {
            assert!(e.is_excluded(yes.as_bytes()), "{yes} should be excluded");
        }
        for no in [
            "usr/share/doc",
            "usr/share/docs/x",
            "usr/share",
            "a.pyc.txt",
            "opt/c/x1",
            "opt/a/x12",
            "var/cached",
            "var",
            "",
        ] {
            assert!(!e.is_excluded(no.as_bytes()), "{no} should stay");
        }
        // `*` does not cross `/`.
        let e = ex(&["usr/*.txt"]);
        assert!(e.is_excluded(b"usr/a.txt"));
        assert!(!e.is_excluded(b"usr/share/a.txt"));
        let e = ex(&["*.txt"]);
        assert!(!e.is_excluded(b"usr/a.txt"));
        // `**` does.
        let e = ex(&["usr/**/a.txt"]);
        assert!(e.is_excluded(b"usr/a.txt"));
        assert!(e.is_excluded(b"usr/x/y/a.txt"));
    }

    #[test]
    fn whiteouts_go_with_what_they_delete() {
        let e = ex(&["usr/share/doc/*"]);
        assert!(e.drops(b"usr/share/doc/.wh.pkg"));
        assert!(e.drops(b"usr/share/doc/pkg/.wh.README"));
        assert!(e.drops(b"usr/share/doc/pkg/.wh..wh..opq"));
        // The directory itself stays, so its opaque marker does too: it
        // still hides what lower layers have there.
        assert!(!e.drops(b"usr/share/doc/.wh..wh..opq"));
        assert!(!e.drops(b"usr/share/.wh.doc"));
        assert!(!e.drops(b".wh..wh..opq"));
        let e = ex(&["etc/motd"]);
        assert!(e.drops(b"etc/.wh.motd"));
        assert!(!e.drops(b"etc/.wh.hostname"));
        assert!(!e.drops(b"etc/.wh..wh..opq"));
        let e = ex(&["motd"]);
        assert!(e.drops(b".wh.motd"));
    }

    #[test]
    fn options() {
        let s = FilterSpec::parse("exclude:pattern=usr/share/doc/**,pattern={a,b}/*.txt").unwrap();
        let e = Exclude::from_spec(&s).unwrap();
        assert_eq!(e.patterns, vec!["usr/share/doc/**", "{a,b}/*.txt"]);
        assert!(e.is_excluded(b"b/x.txt"));
        assert!(e.is_excluded(b"usr/share/doc/x"));
        for bad in [
            "exclude",
            "exclude:pattern=",
            "exclude:pattern=./",
            "exclude:pattern=[",
            "exclude:pattern=a,glob=b",
        ] {
            let e = Exclude::from_spec(&FilterSpec::parse(bad).unwrap()).unwrap_err();
            assert!(e.is_usage(), "{bad}: {e}");
        }
    }

    fn pass(e: &Exclude, tar: &[u8]) -> (Vec<u8>, rewrite::Stats) {
        let mut p = Pass {
            exclude: e,
            dropped: HashMap::new(),
            label: "test layer",
        };
        rewrite_bytes(tar, &mut p).unwrap()
    }

    #[test]
    fn excluded_entries_leave_and_nothing_else_does() {
        let (tar, _) = gnu_tree_tar("pax");
        let e = ex(&["usr/share/doc/**", "**/*.txt"]);
        let (out, stats) = pass(&e, &tar);
        let before = tar_crate_list(&tar);
        let after = tar_crate_list(&out);
        let gone: Vec<&str> = before
            .iter()
            .map(|l| l.0.as_str())
            .filter(|p| !after.iter().any(|a| a.0 == *p))
            .collect();
        assert_eq!(
            gone.len() as u64,
            stats.dropped,
            "each dropped entry is one gone"
        );
        assert!(gone.contains(&"./usr/share/doc/pkg/README"));
        assert!(gone.contains(&"./usr/share/doc/pkg/copyright"));
        assert!(gone.contains(&"./usr/share/doc/pkg/"));
        assert!(gone.iter().any(|p| p.ends_with(".txt")));
        assert_eq!(gone.len(), 4, "{gone:?}");
        for a in &after {
            let b = before.iter().find(|b| b.0 == a.0).unwrap();
            assert_eq!(a, b, "kept entries are unchanged");
        }
        gnu_list(&out);
    }

    #[test]
    fn hard_links_to_excluded_files() {
        // etc/doc-link -> usr/share/doc/README, in the same layer: kept as
        // a regular file with the content.
        let e = ex(&["usr/share/doc"]);
        let (out, stats) = pass(&e, &tar_crate_tar());
        assert_eq!(stats.materialized, 1);
        let l = tar_crate_list(&out);
        assert!(!l.iter().any(|x| x.0.starts_with("usr/share/doc")));
        let link = l.iter().find(|x| x.0 == "etc/doc-link").unwrap();
        assert_eq!((link.2, link.3.as_slice()), (b'0', &b"docs\n"[..]));
        // Both the file and the link excluded: both go.
        let e = ex(&["usr/share/doc", "etc/doc-link"]);
        let (out, stats) = pass(&e, &tar_crate_tar());
        assert_eq!((stats.dropped, stats.materialized), (3, 0));
        assert!(!tar_crate_list(&out).iter().any(|x| x.0 == "etc/doc-link"));
        // A link to an excluded file of a lower layer has nothing to point
        // to and goes too.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "etc/lower-link", "usr/share/doc/x")
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "etc/other-link", "usr/lib/x")
            .unwrap();
        let (out, _) = pass(&ex(&["usr/share/doc"]), &b.into_inner().unwrap());
        let l = tar_crate_list(&out);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].0, "etc/other-link");
    }

    #[test]
    fn hard_links_to_excluded_sparse_files_are_not_filled_with_the_map() {
        use crate::tarfmt::testkit::{Magic, RawTar, header, set_link};
        for old_gnu in [false, true] {
            let mut t = RawTar::new();
            if old_gnu {
                t.old_sparse(b"s", 1 << 30, &[(0, b"abc"), (1 << 29, b"def")]);
            } else {
                t.pax_sparse_10(b"s", 1 << 30, &[(0, b"abc"), (1 << 29, b"def")]);
            }
            let mut h = header(b'1', b"link", 0, Magic::Gnu);
            set_link(&mut h, b"s");
            t.push(h, b"");
            let (out, stats) = pass(&ex(&["s"]), &t.finish());
            // The stored bytes are not the file: the link goes with it.
            assert_eq!((stats.dropped, stats.materialized), (2, 0));
            assert!(tar_crate_list(&out).is_empty());
        }
    }

    #[test]
    fn a_layer_with_nothing_to_exclude_is_passed_on() {
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_crate_tar();
        let p = dir.path().join("layer.tar");
        std::fs::write(&p, &tar).unwrap();
        let d = crate::digest::Digest::sha256_of(&tar);
        let layer = Layer::files(
            crate::image::LayerInfo {
                index: 0,
                digest: d.clone(),
                size: tar.len() as u64,
                media_type: crate::image::media_type::OCI_LAYER_TAR.into(),
                diff_id: d.clone(),
            },
            Some(crate::image::FileSlice::range(
                Arc::new(p.clone()),
                0,
                tar.len() as u64,
            )),
            None,
        );
        let ctx = FilterContext {
            temp_dir: dir.path().to_path_buf(),
        };
        let mut e = ex(&["nothing/here"]);
        let out = e.layer(layer.clone(), &ctx).unwrap();
        assert_eq!(out.info.diff_id, d);
        assert_eq!(out.tar.unwrap().path(), p);
        let out = ex(&["etc"]).layer(layer, &ctx).unwrap();
        assert_ne!(out.info.diff_id, d);
        // Nothing left behind but the input and the new layer.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
