//! `normalize-timestamps[:ts=N]`: every entry's mtime becomes N (default 0),
//! so the same content always makes the same layer bytes and diff_ids.

use crate::error::{Error, Result};
use crate::filter::rewriting::layer_tar;
use crate::filter::{Filter, FilterContext, FilterSpec};
use crate::image::Layer;
use crate::tarfmt::rewrite::{self, Action, Entry, ExtHeader, MAX_USTAR_TIME, Rewrite};

/// PAX records that carry times. They override the header's mtime (and
/// tell extractors an atime), so they go; every other record, xattrs
/// included, stays.
const TIME_RECORDS: [&[u8]; 3] = [b"atime", b"ctime", b"mtime"];

/// Sets every entry's mtime to one value and removes the PAX `atime`,
/// `ctime` and `mtime` records (from global headers too), leaving the rest
/// of each layer byte for byte. The times in the extension headers' own
/// header blocks are set as well, so no original time is left in the
/// archive. A layer that already has only that time is passed on as it is.
#[derive(Debug)]
pub struct NormalizeTimestamps {
    ts: u64,
}

impl NormalizeTimestamps {
    /// A filter setting every mtime to `ts` seconds since the epoch. Fails
    /// when `ts` does not fit a ustar header's 11 octal digits.
    pub fn new(ts: u64) -> Result<NormalizeTimestamps> {
        if ts > MAX_USTAR_TIME {
            return Err(Error::Usage(format!(
                "normalize-timestamps: ts={ts} is too large (at most {MAX_USTAR_TIME})"
            )));
        }
        Ok(NormalizeTimestamps { ts })
    }

    /// Builds the filter from `-f normalize-timestamps[:ts=N]`.
    pub fn from_spec(spec: &FilterSpec) -> Result<NormalizeTimestamps> {
        spec.check_options(&["ts"])?;
        let ts = match spec.get("ts") {
            None => 0,
            Some(v) => v.trim().parse::<u64>().map_err(|_| {
                Error::Usage(format!(
                    "normalize-timestamps: ts={v:?} is not a whole number of seconds since 1970"
                ))
            })?,
        };
        NormalizeTimestamps::new(ts)
    }
}

struct Pass {
    ts: u64,
}

fn is_time_record(key: &[u8]) -> bool {
    TIME_RECORDS.contains(&key)
}

impl Rewrite for Pass {
    fn entry(&mut self, entry: &mut Entry) -> Result<Action> {
        entry.remove_pax(is_time_record);
        entry.set_mtime(self.ts);
        Ok(Action::Keep)
    }

    fn global(&mut self, header: &mut ExtHeader) -> Result<()> {
        header.remove_records(is_time_record);
        header.set_mtime(self.ts);
        Ok(())
    }
}

impl Filter for NormalizeTimestamps {
    fn name(&self) -> &'static str {
        "normalize-timestamps"
    }

    fn rewrites(&self) -> bool {
        true
    }

    /// Never materializes: it can rewrite a layer as it streams.
    fn stream_rewrite(&self) -> Option<crate::filter::RewriteFactory> {
        let ts = self.ts;
        Some(std::sync::Arc::new(move || Box::new(Pass { ts })))
    }

    fn layer(&mut self, mut layer: Layer, ctx: &FilterContext) -> Result<Layer> {
        let (label, tar) = layer_tar(&layer, self.name())?;
        let out = rewrite::rewrite_layer(&tar, &ctx.temp_dir, &label, &mut Pass { ts: self.ts })?;
        if !out.stats.edited {
            return Ok(layer);
        }
        tracing::debug!(
            "normalize-timestamps: {label}: {} entries, now {}",
            out.stats.entries,
            out.diff_id
        );
        layer.tar = Some(out.tar);
        layer.info.diff_id = out.diff_id;
        Ok(layer)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;
    use std::sync::Arc;

    use super::*;
    use crate::digest::Digest;
    use crate::image::{FileSlice, LayerInfo};
    use crate::tarfmt::rewrite::testutil::*;

    fn spec(s: &str) -> FilterSpec {
        FilterSpec::parse(s).unwrap()
    }

    #[test]
    fn options() {
        assert_eq!(
            NormalizeTimestamps::from_spec(&spec("normalize-timestamps"))
                .unwrap()
                .ts,
            0
        );
        assert_eq!(
            NormalizeTimestamps::from_spec(&spec("normalize-timestamps:ts=1700000000"))
                .unwrap()
                .ts,
            1_700_000_000
        );
        for bad in [
            "normalize-timestamps:ts=abc",
            "normalize-timestamps:ts=-1",
            "normalize-timestamps:ts=",
            "normalize-timestamps:ts=8589934592",
            "normalize-timestamps:when=0",
        ] {
            let e = NormalizeTimestamps::from_spec(&spec(bad)).unwrap_err();
            assert!(e.is_usage(), "{bad}: {e}");
        }
        assert!(NormalizeTimestamps::new(MAX_USTAR_TIME).is_ok());
    }

    /// A layer whose tar sits at an offset inside a bigger file, the way a
    /// docker-save source hands layers over.
    fn layer_in_file(dir: &std::path::Path, tar: &[u8]) -> Layer {
        let path = dir.join("archive");
        let mut f = fs::File::create(&path).unwrap();
        f.write_all(&[0x55; 1536]).unwrap();
        f.write_all(tar).unwrap();
        f.write_all(&[0xaa; 700]).unwrap();
        Layer::files(
            LayerInfo {
                index: 3,
                digest: Digest::sha256_of(tar),
                size: tar.len() as u64,
                media_type: crate::image::media_type::OCI_LAYER_TAR.into(),
                diff_id: Digest::sha256_of(tar),
            },
            Some(FileSlice::range(Arc::new(path), 1536, tar.len() as u64)),
            None,
        )
    }

    fn read(slice: &FileSlice) -> Vec<u8> {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut slice.open().unwrap(), &mut v).unwrap();
        v
    }

    #[test]
    fn layers_get_one_time_and_a_new_diff_id() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = FilterContext {
            temp_dir: dir.path().to_path_buf(),
        };
        let (tar, cap) = gnu_tree_tar("pax");
        let mut f = NormalizeTimestamps::new(1_700_000_000).unwrap();
        assert!(f.rewrites());
        let input = layer_in_file(dir.path(), &tar);
        let out = f.layer(input.clone(), &ctx).unwrap();
        let bytes = read(out.tar.as_ref().unwrap());
        assert_eq!(out.info.diff_id, Digest::sha256_of(&bytes));
        assert_ne!(out.info.diff_id, input.info.diff_id);
        assert_eq!(out.info.index, 3);
        for (path, mtime, _, _, _, pax) in tar_crate_list(&bytes) {
            assert_eq!(mtime, 1_700_000_000, "{path}");
            for r in &pax {
                assert!(
                    !r.starts_with("atime=")
                        && !r.starts_with("ctime=")
                        && !r.starts_with("mtime="),
                    "{path}: {r}"
                );
            }
            if path == "./etc/conf" {
                assert_eq!(pax, vec!["SCHILY.xattr.user.foo=bar".to_string()]);
            }
            if path == "./usr/bin/ping" && cap {
                assert_eq!(pax.len(), 1);
                assert!(pax[0].starts_with("SCHILY.xattr.security.capability="));
            }
        }
        // The same input again: the same bytes.
        let again = f.layer(input.clone(), &ctx).unwrap();
        assert_eq!(again.info.diff_id, out.info.diff_id);
        assert!(read(again.tar.as_ref().unwrap()) == bytes);
        // Already normalized: passed on untouched.
        let twice = f.layer(out.clone(), &ctx).unwrap();
        assert_eq!(twice.info.diff_id, out.info.diff_id);
        assert_eq!(
            twice.tar.as_ref().unwrap().path(),
            out.tar.as_ref().unwrap().path()
        );
        // A tar crate layer too, default time.
        let mut zero = NormalizeTimestamps::new(0).unwrap();
        let out = zero
            .layer(layer_in_file(dir.path(), &tar_crate_tar()), &ctx)
            .unwrap();
        let listed = tar_crate_list(&read(out.tar.as_ref().unwrap()));
        assert_eq!(listed.len(), 11);
        assert!(listed.iter().all(|l| l.1 == 0));
        let xattr = listed.iter().find(|l| l.0 == "etc/xattr").unwrap();
        assert_eq!(xattr.5.len(), 2, "{:?}", xattr.5);
    }

    #[test]
    fn a_layer_without_its_tar_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = FilterContext {
            temp_dir: dir.path().to_path_buf(),
        };
        let mut l = layer_in_file(dir.path(), &tar_crate_tar());
        l.tar = None;
        assert!(NormalizeTimestamps::new(0).unwrap().layer(l, &ctx).is_err());
    }
}
