//! Read-only commands over an image: `search` (find member paths in every
//! layer), `info` (what the manifest and config say, no layer download) and
//! `check` (is the image well formed).
//!
//! `search` and `check` share a layer driver: verified layers are fetched
//! N at a time through [`Source::fetch`], and each layer's tar is walked on a
//! blocking thread as soon as it is on disk, so a slow layer never holds up
//! the walk of the others. Walks read headers only and seek over file data,
//! so a walk costs little next to the fetch that decompressed the layer.

pub mod check;
pub mod info;
pub mod search;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::image::{FileSlice, Layer, LayerInfo, LayerNeeds};
use crate::progress::Reporter;

use crate::registry::Repository;
use crate::source::{FetchContext, Source};
use crate::uri::{Settings, Uri};

/// What a layer entry is, as `search` and `check` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A hard link to an earlier member.
    Hardlink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A named pipe.
    Fifo,
    /// A `.wh.NAME` entry: deletes NAME from the layers below.
    Whiteout,
    /// A `.wh..wh..opq` entry: hides the lower layers' content of its directory.
    Opaque,
    /// Anything else (sockets, global PAX headers, unknown types).
    Other,
}

impl EntryKind {
    /// The name used in text output.
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Hardlink => "hardlink",
            EntryKind::Char => "char",
            EntryKind::Block => "block",
            EntryKind::Fifo => "fifo",
            EntryKind::Whiteout => "whiteout",
            EntryKind::Opaque => "opaque",
            EntryKind::Other => "other",
        }
    }

    /// Whether the entry deletes something rather than adding it.
    pub fn is_whiteout(self) -> bool {
        matches!(self, EntryKind::Whiteout | EntryKind::Opaque)
    }
}

/// The whiteout prefix of the OCI image spec.
const WHITEOUT_PREFIX: &str = ".wh.";
/// The opaque-directory marker.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of AUFS bookkeeping names, which are not whiteouts.
const AUFS_META_PREFIX: &str = ".wh..wh.";

/// A member name as users write paths: no leading `/` or `./`, no empty or
/// `.` components, no trailing `/`. `..` is kept so that it stays visible.
pub fn clean_name(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    for comp in text.split('/') {
        if comp.is_empty() || comp == "." {
            continue;
        }
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(comp);
    }
    out
}

/// The last component of a cleaned path.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// What a member does to the image: its kind, and the path it adds or (for
/// whiteouts) removes.
pub fn classify(kind: tar::EntryType, name: &str) -> (EntryKind, String) {
    let (parent, base) = match name.rfind('/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => ("", name),
    };
    if base == OPAQUE_MARKER {
        return (EntryKind::Opaque, parent.to_string());
    }
    if let Some(deleted) = base.strip_prefix(WHITEOUT_PREFIX)
        && !base.starts_with(AUFS_META_PREFIX)
    {
        let path = if parent.is_empty() {
            deleted.to_string()
        } else {
            format!("{parent}/{deleted}")
        };
        return (EntryKind::Whiteout, path);
    }
    (kind_of(kind), name.to_string())
}

/// The kind a tar entry type stands for, whiteouts aside.
pub fn kind_of(kind: tar::EntryType) -> EntryKind {
    use tar::EntryType as T;
    match kind {
        T::Regular | T::Continuous | T::GNUSparse => EntryKind::File,
        T::Directory => EntryKind::Dir,
        T::Symlink => EntryKind::Symlink,
        T::Link => EntryKind::Hardlink,
        T::Char => EntryKind::Char,
        T::Block => EntryKind::Block,
        T::Fifo => EntryKind::Fifo,
        _ => EntryKind::Other,
    }
}

/// Size of the read-ahead of [`SliceReader`]: most members of a typical
/// layer are smaller, so one read usually covers several headers and the
/// data between them.
const READ_AHEAD: usize = 64 << 10;

/// A buffered `Read + Seek` over a [`FileSlice`], positions counted from the
/// slice's start, so the tar crate can seek over member data. Seeks that land
/// inside the buffer cost nothing, which keeps walks over many small files
/// from turning into a system call per header.
pub struct SliceReader {
    file: File,
    start: u64,
    len: u64,
    /// Position in the slice of `buf[0]`.
    buf_pos: u64,
    buf: Vec<u8>,
    /// Cursor inside `buf`.
    at: usize,
}

impl SliceReader {
    /// Opens the slice.
    pub fn open(slice: &FileSlice) -> io::Result<SliceReader> {
        let file = File::open(slice.path())?;
        Ok(SliceReader {
            file,
            start: slice.offset(),
            len: slice.len(),
            buf_pos: 0,
            buf: Vec::with_capacity(READ_AHEAD),
            at: 0,
        })
    }

    /// Bytes in the slice.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the slice is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn pos(&self) -> u64 {
        self.buf_pos + self.at as u64
    }
}

impl Read for SliceReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at >= self.buf.len() {
            let pos = self.pos();
            if pos >= self.len {
                return Ok(0);
            }
            let remaining = self.len - pos;
            // Large reads go straight to the caller's buffer.
            if out.len() >= READ_AHEAD {
                let direct = remaining.min(out.len() as u64) as usize;
                let n = read_at(&self.file, &mut out[..direct], self.start + pos)?;
                self.buf.clear();
                self.buf_pos = pos + n as u64;
                self.at = 0;
                return Ok(n);
            }
            let want = remaining.min(READ_AHEAD as u64) as usize;
            self.buf.resize(want, 0);
            let n = read_at(&self.file, &mut self.buf, self.start + pos)?;
            self.buf.truncate(n);
            self.buf_pos = pos;
            self.at = 0;
            if n == 0 {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Seek for SliceReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos().checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        let end = self.buf_pos + self.buf.len() as u64;
        if target >= self.buf_pos && target <= end {
            self.at = (target - self.buf_pos) as usize;
        } else {
            self.buf.clear();
            self.buf_pos = target;
            self.at = 0;
        }
        Ok(target)
    }
}

fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    loop {
        match file.read_at(buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// How the layer driver runs.
#[derive(Clone)]
pub struct WalkOptions {
    /// Layers fetched (and walked) at once.
    pub parallel: usize,
    /// Where verified temp files go (default: the system temp dir).
    pub temp_dir: Option<PathBuf>,
    /// Progress callbacks.
    pub reporter: Arc<dyn Reporter>,
}

/// The temp directory of one run, removed when dropped, and the fetch
/// context that points into it.
pub struct RunDir {
    _dir: tempfile::TempDir,
    /// What sources get for `resolve` and `fetch`.
    pub ctx: FetchContext,
}

impl RunDir {
    /// A fresh `occystrap-*` directory under `temp_dir` (or the system's).
    pub fn new(temp_dir: Option<&PathBuf>, reporter: Arc<dyn Reporter>) -> Result<RunDir> {
        let root = temp_dir.cloned().unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("occystrap-")
            .tempdir_in(&root)
            .map_err(|e| Error::io("creating temp dir in", &root, e))?;
        let ctx = FetchContext::new(dir.path().to_path_buf(), reporter);
        Ok(RunDir { _dir: dir, ctx })
    }
}

pub(crate) use crate::pipeline::AbortOnDrop;

/// Fetches `layers` (verified, in the forms `needs` names), `parallel` at a
/// time, and runs `walk` on each on a blocking thread as soon as it is
/// fetched. Yields each layer with the fetch's or the walk's outcome, in the
/// order they finish. The layer's temp files are gone once `walk` returns,
/// so disk use stays at about `parallel` layers.
pub fn walk_layers<T, F>(
    source: Arc<dyn Source>,
    layers: Vec<LayerInfo>,
    needs: LayerNeeds,
    parallel: usize,
    ctx: FetchContext,
    walk: F,
) -> BoxStream<'static, (LayerInfo, Result<T>)>
where
    T: Send + 'static,
    F: Fn(Layer) -> Result<T> + Send + Sync + 'static,
{
    let walk = Arc::new(walk);
    futures_util::stream::iter(layers)
        .map(move |info| {
            let source = source.clone();
            let ctx = ctx.clone();
            let walk = walk.clone();
            let job_info = info.clone();
            let task = AbortOnDrop(tokio::spawn(async move {
                let layer = crate::pipeline::fetch_layer(&*source, &job_info, needs, &ctx).await?;
                match tokio::task::spawn_blocking(move || walk(layer)).await {
                    Ok(r) => r,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => Err(Error::Interrupted),
                }
            }));
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

/// A registry client for a `registry://` URI, with the credentials and
/// options `uri::open_source` would use: `info` rereads an index through
/// it, and `search` streams blobs through it.
pub fn registry_client(uri: &Uri, settings: &Settings) -> Result<Repository> {
    Ok(crate::uri::registry_repository(uri, settings)?.1)
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

    #[test]
    fn slice_reader_reads_and_seeks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let slice = FileSlice::range(Arc::new(path), 1000, 200_000);
        let mut r = SliceReader::open(&slice).unwrap();
        let mut b = [0u8; 10];
        r.read_exact(&mut b).unwrap();
        assert_eq!(&b, &data[1000..1010]);
        r.seek(SeekFrom::Current(5)).unwrap();
        r.read_exact(&mut b).unwrap();
        assert_eq!(&b, &data[1015..1025]);
        assert_eq!(r.seek(SeekFrom::Start(150_000)).unwrap(), 150_000);
        r.read_exact(&mut b).unwrap();
        assert_eq!(&b, &data[151_000..151_010]);
        let mut big = vec![0u8; 100_000];
        r.seek(SeekFrom::Start(10)).unwrap();
        r.read_exact(&mut big).unwrap();
        assert_eq!(&big[..], &data[1010..101_010]);
        r.seek(SeekFrom::End(-4)).unwrap();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(&rest[..], &data[200_996..201_000]);
        r.seek(SeekFrom::Start(500_000)).unwrap();
        assert_eq!(r.read(&mut b).unwrap(), 0);
    }
}
