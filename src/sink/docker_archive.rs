//! docker-save tarball writer.
//!
//! Writes the layout `docker load` reads, which `podman load` and skopeo's
//! `docker-archive:` transport read as well: each layer uncompressed as
//! `<diff_id hex>/layer.tar`, the config as `<config hex>.json`, then
//! `manifest.json` and `repositories`. Layers go out as they arrive; the
//! config and manifest wait for `finish`, since filters may rewrite the
//! config after the last layer.
//!
//! With [`LayerForm::Compressed`] (`tar://FILE?layers=compressed`) each
//! layer goes as its blob as the source stores it, gzip or zstd (or a plain
//! tar, where the source holds one), under `<blob hex>.tar.gz` (`.tar.zst`,
//! `.tar`); `docker load`, `podman load` and skopeo sniff the compression
//! of what `manifest.json` names. Nothing is decompressed: the pipeline
//! checks each blob's size and digest only ([`Sink::blob_only`]), and the
//! diff_ids are the config's, stored byte for byte, for the loader to
//! check. `repositories` names a layer directory, which this form has
//! none of, so it is left out.
//!
//! The format is written by [`SaveWriter`] into any [`SaveOut`]: the
//! tarball's temp file here, an engine's load request in
//! [`super::engine`].
//!
//! The output is reproducible: every header has mtime 0 and owner 0:0, so
//! the same image always gives the same bytes.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tempfile::TempPath;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::format::docker_save::{self, MANIFEST, ManifestEntry, REPOSITORIES};
use crate::image::{Compression, FileSlice, Image, Layer, LayerInfo, LayerNeeds, LiveTar};
use crate::sink::{Sink, SinkReport};
use crate::tarfmt::write::{Member, padding_zeros, ustar_header};

const BLOCK: u64 = crate::tarfmt::BLOCK as u64;

/// Where a docker-save stream's bytes go: a `Write` that can also take a
/// verified file's bytes its own way.
pub(crate) trait SaveOut: Write + Send {
    /// Appends everything `from` holds; returns how many bytes that was.
    fn copy_file(&mut self, from: &mut io::Take<File>) -> io::Result<u64>;
}

impl SaveOut for File {
    fn copy_file(&mut self, from: &mut io::Take<File>) -> io::Result<u64> {
        // Straight from File to File (no BufWriter) so std can use
        // copy_file_range and the bytes never pass through user space.
        io::copy(from, self)
    }
}

/// The docker-save format written front to back into a [`SaveOut`]: a
/// layer's members when it arrives (once per diff_id), the config,
/// `manifest.json`, `repositories` and the end-of-archive blocks in
/// [`SaveWriter::finish`].
pub(crate) struct SaveWriter<W> {
    out: W,
    /// What the bytes go to (a path, a socket), for messages.
    target: PathBuf,
    /// What the output is called in messages (`docker-archive output`).
    label: &'static str,
    /// The member each diff_id's layer is already written as.
    written: HashMap<Digest, String>,
    /// Members written, so that no name goes in twice.
    names: HashSet<String>,
    /// diff_ids `wants_layer` has already asked for.
    wanted: HashSet<Digest>,
    bytes_written: u64,
}

impl<W: SaveOut> SaveWriter<W> {
    /// A writer into `out`; `target` and `label` name it in messages.
    pub(crate) fn new(out: W, target: &Path, label: &'static str) -> Self {
        SaveWriter {
            out,
            target: target.to_path_buf(),
            label,
            written: HashMap::new(),
            names: HashSet::new(),
            wanted: HashSet::new(),
            bytes_written: 0,
        }
    }

    /// The output.
    pub(crate) fn out(&self) -> &W {
        &self.out
    }

    /// The output, to write past the format (a flush).
    pub(crate) fn out_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Bytes written so far.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Whether a layer's bytes are still needed: an image that lists the
    /// same layer twice (empty layers in older images do) needs them once.
    pub(crate) fn wants_layer(&mut self, layer: &LayerInfo) -> bool {
        self.wanted.insert(layer.diff_id.clone())
    }

    /// Whether the layer with this diff_id is already in the output: docker
    /// save stores a layer once even when the image lists it twice.
    pub(crate) fn has(&self, diff_id: &Digest) -> bool {
        self.written.contains_key(diff_id)
    }

    fn write_error(&self, e: io::Error) -> Error {
        Error::io("writing", &self.target, e)
    }

    /// One tar header (`kind` is `Directory` or `Regular`), written by
    /// `tarfmt`. Names are at most 64 hex digits plus a short suffix, well
    /// within ustar's limits.
    fn make_header(
        &self,
        name: &str,
        size: u64,
        kind: tar::EntryType,
    ) -> Result<[u8; BLOCK as usize]> {
        let kind = if kind == tar::EntryType::Directory {
            Member::Dir
        } else {
            Member::File
        };
        ustar_header(name, size, kind)
            .map_err(|e| self.write_error(io::Error::new(io::ErrorKind::InvalidInput, e)))
    }

    /// Writes one tar header at the end of the output.
    fn header(&mut self, name: &str, size: u64, kind: tar::EntryType) -> Result<()> {
        let h = self.make_header(name, size, kind)?;
        self.out.write_all(&h).map_err(|e| self.write_error(e))?;
        self.bytes_written += BLOCK;
        Ok(())
    }

    /// Pads the member just written to a whole block.
    fn pad(&mut self, size: u64) -> Result<()> {
        let zeros = padding_zeros(size);
        self.out.write_all(zeros).map_err(|e| self.write_error(e))?;
        self.bytes_written += zeros.len() as u64;
        Ok(())
    }

    /// Writes a small member held in memory.
    fn member(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.header(name, data.len() as u64, tar::EntryType::Regular)?;
        self.out.write_all(data).map_err(|e| self.write_error(e))?;
        self.bytes_written += data.len() as u64;
        self.pad(data.len() as u64)
    }

    /// Writes a layer that arrived as a verified file (not live).
    pub(crate) fn file_layer(&mut self, layer: &Layer) -> Result<()> {
        let Some(tar) = &layer.tar else {
            return Err(Error::InvalidImage(format!(
                "{}: layer {} arrived without its uncompressed tar",
                self.label, layer.info.index
            )));
        };
        self.slice_layer(&layer.info, tar)
    }

    /// Writes the layer `info` whose uncompressed tar is `tar`.
    pub(crate) fn slice_layer(&mut self, info: &LayerInfo, tar: &FileSlice) -> Result<()> {
        let dir = info.diff_id.hex().to_string();
        self.header(&format!("{dir}/"), 0, tar::EntryType::Directory)?;
        let name = docker_save::layer_member(&info.diff_id);
        self.file_member(&name, info, tar)?;
        self.record(info, name);
        Ok(())
    }

    fn record(&mut self, info: &LayerInfo, name: String) {
        self.names.insert(name.clone());
        self.written.insert(info.diff_id.clone(), name);
    }

    /// Writes the member `name` holding `slice`, the bytes of layer `info`.
    fn file_member(&mut self, name: &str, info: &LayerInfo, slice: &FileSlice) -> Result<()> {
        self.header(name, slice.len(), tar::EntryType::Regular)?;
        let mut reader = slice
            .open()
            .map_err(|e| Error::io("reading", slice.path(), e))?;
        let copied = self.out.copy_file(&mut reader).map_err(|e| {
            Error::stream(
                format!(
                    "copying layer {} from {} to {}",
                    info.index,
                    slice.path().display(),
                    self.target.display()
                ),
                e,
            )
        })?;
        if copied != slice.len() {
            // The header already promised slice.len() bytes; a short copy would
            // leave a corrupt tarball.
            return Err(Error::SizeMismatch {
                kind: crate::error::Mismatch::Copy,
                what: format!("layer {} ({})", info.index, slice.path().display()),
                expected: slice.len(),
                found: copied,
            });
        }
        self.bytes_written += copied;
        self.pad(copied)
    }

    /// Writes what follows the layers: the config (named by the hash of the
    /// bytes written, which a filter may have changed since the source
    /// computed `config_digest`), `manifest.json` naming `image`'s
    /// `repo_tag`, `repositories` (when the top layer has the directory it
    /// names) and the end-of-archive blocks. Fails if a layer of `image`
    /// was never written.
    pub(crate) fn finish(&mut self, image: &Image) -> Result<()> {
        if let Some(missing) = image
            .layers
            .iter()
            .find(|l| !self.written.contains_key(&l.diff_id))
        {
            return Err(Error::InvalidImage(format!(
                "{}: layer {} ({}) was never written",
                self.label, missing.index, missing.diff_id
            )));
        }
        let entry = ManifestEntry::naming(image, |l| self.written[&l.diff_id].clone());
        self.member(&entry.config, &image.config_raw)?;
        let manifest = serde_json::to_vec(&[entry])
            .map_err(|e| Error::InvalidImage(format!("encoding {MANIFEST}: {e}")))?;
        self.member(MANIFEST, &manifest)?;

        // Legacy readers map repository -> tag -> top layer directory.
        let top_in_dir = image
            .layers
            .last()
            .is_none_or(|l| self.written[&l.diff_id] == docker_save::layer_member(&l.diff_id));
        if top_in_dir {
            let repositories = serde_json::to_vec(&docker_save::repositories(image))
                .map_err(|e| Error::InvalidImage(format!("encoding {REPOSITORIES}: {e}")))?;
            self.member(REPOSITORIES, &repositories)?;
        }

        let end = [0u8; 2 * BLOCK as usize];
        self.out.write_all(&end).map_err(|e| self.write_error(e))?;
        self.bytes_written += 2 * BLOCK;
        Ok(())
    }
}

impl SaveWriter<File> {
    /// Writes a layer as its blob as stored, under
    /// [`docker_save::blob_member`]; a layer that arrived only as a tar (a
    /// filter rewrote it) goes as that tar, which is then its blob. A blob
    /// the pipeline already wrote into this output (`own`, its path) right
    /// where the member goes (its [`crate::sink::BlobRegion`]) gets only its
    /// header, and the output moves past it.
    pub(crate) fn blob_layer(&mut self, layer: &Layer, own: &Path) -> Result<()> {
        let Some(blob) = layer.blob.as_ref().or(layer.tar.as_ref()) else {
            return Err(Error::InvalidImage(format!(
                "{}: layer {} arrived without its blob",
                self.label, layer.info.index
            )));
        };
        let info = &layer.info;
        // The bytes, not the manifest's media type, say what the member is.
        let compression = sniff(blob)?;
        let digest = match layer.blob {
            Some(_) => &info.digest,
            None => &info.diff_id,
        };
        let name = docker_save::blob_member(digest, compression);
        // Two diff_ids over one blob (a lying config): one member, which
        // the loader's diff_id check then refuses.
        if !self.names.contains(&name) {
            if blob.path() == own && blob.offset() == self.bytes_written + BLOCK {
                self.placed_member(&name, blob.len())?;
            } else {
                self.file_member(&name, info, blob)?;
            }
        }
        self.record(info, name);
        Ok(())
    }

    /// The member `name` whose `len` bytes are already in the output right
    /// after its header: writes the header and moves past them.
    fn placed_member(&mut self, name: &str, len: u64) -> Result<()> {
        use std::io::Seek;
        self.header(name, len, tar::EntryType::Regular)?;
        let skip = i64::try_from(len).map_err(|_| {
            self.write_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "blob too large",
            ))
        })?;
        self.out
            .seek(io::SeekFrom::Current(skip))
            .map_err(|e| self.write_error(e))?;
        self.bytes_written += len;
        self.pad(len)
    }

    /// Writes a layer whose size is known only at its end: the header goes
    /// in with size 0 and is rewritten in place once the stream is verified.
    fn live_layer_in_place(&mut self, info: &LayerInfo, stream: &mut dyn LiveTar) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let dir = info.diff_id.hex().to_string();
        self.header(&format!("{dir}/"), 0, tar::EntryType::Directory)?;
        let name = docker_save::layer_member(&info.diff_id);
        let at = self.bytes_written;
        self.header(&name, 0, tar::EntryType::Regular)?;
        let copied = stream.copy_to_file(&mut self.out).map_err(|e| {
            Error::stream(
                format!("writing layer {} to {}", info.index, self.target.display()),
                e,
            )
        })?;
        self.bytes_written += copied;
        let h = self.make_header(&name, copied, tar::EntryType::Regular)?;
        self.out
            .write_all_at(&h, at)
            .map_err(|e| self.write_error(e))?;
        self.pad(copied)?;
        self.record(info, name);
        Ok(())
    }
}

/// The compression of the bytes in `slice`, from their first bytes.
fn sniff(slice: &FileSlice) -> Result<Compression> {
    let mut head = Vec::with_capacity(4);
    slice
        .open()
        .and_then(|f| f.take(4).read_to_end(&mut head))
        .map_err(|e| Error::io("reading", slice.path(), e))?;
    Ok(Compression::sniff(&head))
}

/// How `tar://` stores each layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayerForm {
    /// The uncompressed tar, `<diff_id hex>/layer.tar`, as `docker save`
    /// writes it: every layer decompressed and checked against its diff_id.
    #[default]
    Uncompressed,
    /// The blob as the source stores it (`layers=compressed`; see the
    /// module documentation): checked by its size and digest, never
    /// decompressed.
    Compressed,
}

/// Writes an image as a docker-save tarball at a path, atomically: the
/// tarball is built in a hidden temp file beside the target and renamed into
/// place by `finish`, so an interrupted run leaves nothing behind.
pub struct DockerArchiveSink {
    path: PathBuf,
    /// The temp file's name, removed when dropped.
    temp: TempPath,
    /// Removes the temp file if the process is ended while the run is stuck.
    _cleanup: crate::cancel::CleanupGuard,
    writer: SaveWriter<File>,
    form: LayerForm,
    /// Where each layer's blob goes (offset, size) when layers are stored
    /// compressed: planned in `begin` as `layer` will lay the members out.
    regions: HashMap<usize, (u64, u64)>,
}

impl DockerArchiveSink {
    /// Starts a tarball that will appear at `path` when the sink finishes.
    pub fn new(path: &Path) -> Result<Self> {
        DockerArchiveSink::with_layers(path, LayerForm::Uncompressed)
    }

    /// As [`DockerArchiveSink::new`], storing layers in `form`.
    pub fn with_layers(path: &Path, form: LayerForm) -> Result<Self> {
        // The tarball replaces what is at `path` by a rename; a FIFO, socket,
        // device or directory there is not ours to replace.
        if let Ok(meta) = std::fs::metadata(path)
            && !meta.is_file()
        {
            let ft = meta.file_type();
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_dir() {
                "a directory"
            } else if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_char_device() {
                "a character device"
            } else if ft.is_block_device() {
                "a block device"
            } else {
                "not a regular file"
            };
            return Err(Error::Usage(format!(
                "{} exists and is {kind}; the tarball would replace it, refusing",
                path.display()
            )));
        }
        // The temp file must be on the target's filesystem for the final
        // rename to be atomic.
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".occystrap-")
            .suffix(".tar.partial")
            .tempfile_in(parent)
            .map_err(|e| Error::io("creating a temp file in", parent, e))?;
        let cleanup = crate::cancel::remove_on_forced_exit(temp.path().to_path_buf(), false);
        let (file, temp) = temp.into_parts();
        Ok(DockerArchiveSink {
            writer: SaveWriter::new(file, path, "docker-archive output"),
            path: path.to_path_buf(),
            _cleanup: cleanup,
            temp,
            form,
            regions: HashMap::new(),
        })
    }
}

/// Where each layer's blob member will start (after its header) and its
/// size, as `SaveWriter::blob_layer` writes them from an empty output: in
/// manifest order, a diff_id or a blob once. Only sha256 blobs, whose member
/// names fit one ustar header.
fn plan_regions(image: &Image) -> HashMap<usize, (u64, u64)> {
    let (mut at, mut regions) = (0u64, HashMap::new());
    let (mut diff_ids, mut blobs) = (HashSet::new(), HashSet::new());
    for l in &image.layers {
        if l.digest.algorithm() != crate::digest::Algorithm::Sha256 {
            return HashMap::new();
        }
        if !diff_ids.insert(&l.diff_id) || !blobs.insert(&l.digest) {
            continue;
        }
        regions.insert(l.index, (at + BLOCK, l.size));
        let Some(next) = l
            .size
            .checked_next_multiple_of(BLOCK)
            .and_then(|n| n.checked_add(at + BLOCK))
        else {
            return HashMap::new();
        };
        at = next;
    }
    regions
}

impl Sink for DockerArchiveSink {
    fn needs(&self) -> LayerNeeds {
        match self.form {
            LayerForm::Uncompressed => LayerNeeds::TAR,
            LayerForm::Compressed => LayerNeeds::BLOB,
        }
    }

    fn blob_only(&self) -> bool {
        self.form == LayerForm::Compressed
    }

    fn ordered(&self) -> bool {
        // Members in manifest order: the same image gives the same bytes.
        true
    }

    fn begin(&mut self, image: &Image) -> Result<()> {
        if self.form == LayerForm::Compressed && self.writer.bytes_written() == 0 {
            self.regions = plan_regions(image);
        }
        Ok(())
    }

    fn blob_regions(&self) -> HashMap<usize, crate::sink::BlobRegion> {
        let Ok(file) = self.writer.out().try_clone() else {
            return HashMap::new();
        };
        let (file, path) = (Arc::new(file), Arc::new(self.temp.to_path_buf()));
        self.regions
            .iter()
            .map(|(&i, &(offset, len))| {
                let region = crate::sink::BlobRegion {
                    file: file.clone(),
                    path: path.clone(),
                    offset,
                    len,
                };
                (i, region)
            })
            .collect()
    }

    fn wants_layer(&mut self, layer: &LayerInfo) -> bool {
        self.writer.wants_layer(layer)
    }

    fn layer(&mut self, layer: Layer) -> Result<()> {
        if self.writer.has(&layer.info.diff_id) {
            return Ok(());
        }
        if let Some(mut stream) = layer.take_live() {
            return self.writer.live_layer_in_place(&layer.info, &mut *stream);
        }
        match self.form {
            LayerForm::Uncompressed => self.writer.file_layer(&layer),
            LayerForm::Compressed => self.writer.blob_layer(&layer, &self.temp),
        }
    }

    fn finish(mut self: Box<Self>, image: &Image) -> Result<SinkReport> {
        self.writer.finish(image)?;
        // A region planned past what was written (a member `layer` did not
        // write in place) must not leave bytes after the archive's end.
        let end = self.writer.bytes_written();
        self.writer
            .out()
            .set_len(end)
            .map_err(|e| Error::io("writing", &self.path, e))?;

        // tempfile creates 0600; a saved image is an ordinary shareable file.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            self.writer
                .out()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(|e| Error::io("writing", &self.path, e))?;
        }

        let DockerArchiveSink {
            path, temp, writer, ..
        } = *self;
        let bytes_written = writer.bytes_written();
        drop(writer);
        temp.persist(&path)
            .map_err(|e| Error::io("renaming into place", &path, e.error))?;
        Ok(SinkReport {
            output: path.display().to_string(),
            bytes_written,
            ..SinkReport::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{FileSlice, media_type};
    use crate::source::Source;
    use crate::source::docker_archive::DockerArchiveSource;
    use crate::source::docker_archive::tests::{
        FIXTURES, Item, build_tar, context, fixture, repo_tags, runtime,
    };

    /// Copies one image through the sink and returns what the sink reported.
    fn copy(source: &DockerArchiveSource, out: &Path, temp: &Path) -> SinkReport {
        let ctx = context(temp);
        let rt = runtime();
        let image = rt.block_on(source.resolve(&ctx)).unwrap();
        let mut sink: Box<dyn Sink> = Box::new(DockerArchiveSink::new(out).unwrap());
        sink.begin(&image).unwrap();
        for info in &image.layers {
            let layer = rt
                .block_on(crate::pipeline::fetch_layer(
                    source,
                    info,
                    sink.needs(),
                    &ctx,
                ))
                .unwrap();
            sink.layer(layer).unwrap();
        }
        sink.finish(&image).unwrap()
    }

    fn member_names(path: &Path) -> Vec<String> {
        let mut archive = tar::Archive::new(File::open(path).unwrap());
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                assert_eq!(h.mtime().unwrap(), 0);
                assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
                String::from_utf8(e.path_bytes().into_owned()).unwrap()
            })
            .collect()
    }

    #[test]
    fn round_trips_every_fixture() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join("tmp");
        std::fs::create_dir(&temp).unwrap();
        for name in FIXTURES {
            let path = fixture(name);
            let mut selections: Vec<Option<String>> = vec![None];
            selections.extend(repo_tags(&path).into_iter().map(Some));
            for select in selections {
                let what = format!("{name} {select:?}");
                let source = DockerArchiveSource::open(&path, select.as_deref()).unwrap();
                let out = dir.path().join("out.tar");
                let report = copy(&source, &out, &temp);
                assert_eq!(report.bytes_written, std::fs::metadata(&out).unwrap().len());
                assert_eq!(report.bytes_written % 512, 0);

                let again = DockerArchiveSource::open(&out, None).unwrap();
                let ctx = context(&temp);
                let rt = runtime();
                let a = rt.block_on(source.resolve(&ctx)).unwrap();
                let b = rt.block_on(again.resolve(&ctx)).unwrap();
                assert_eq!(a.config_raw, b.config_raw, "{what}");
                let ids = |i: &Image| {
                    i.layers
                        .iter()
                        .map(|l| l.diff_id.clone())
                        .collect::<Vec<_>>()
                };
                assert_eq!(ids(&a), ids(&b), "{what}");
                if a.tag.is_some() {
                    assert_eq!((&a.name, &a.tag), (&b.name, &b.tag), "{what}");
                }
                for info in &b.layers {
                    rt.block_on(crate::pipeline::fetch_layer(
                        &again,
                        info,
                        LayerNeeds::TAR,
                        &ctx,
                    ))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                }

                // Deterministic: the same image gives the same bytes.
                let first = std::fs::read(&out).unwrap();
                copy(&source, &out, &temp);
                assert_eq!(first, std::fs::read(&out).unwrap(), "{what}");
            }
        }
        // Only the output remains: no temp files beside it or in the temp dir.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(std::fs::read_dir(&temp).unwrap().count(), 0);
    }

    #[test]
    fn layout_is_docker_save() {
        let dir = tempfile::tempdir().unwrap();
        let source = DockerArchiveSource::open(&fixture("whiteout_image.tar"), None).unwrap();
        let out = dir.path().join("w.tar");
        copy(&source, &out, dir.path());
        let names = member_names(&out);
        let image = &source.resolve_now();
        let config = format!("{}.json", image.config_digest.hex());
        let mut expected = Vec::new();
        for l in &image.layers {
            expected.push(format!("{}/", l.diff_id.hex()));
            expected.push(format!("{}/layer.tar", l.diff_id.hex()));
        }
        expected.extend([
            config.clone(),
            "manifest.json".into(),
            "repositories".into(),
        ]);
        assert_eq!(names, expected);

        let mut archive = tar::Archive::new(File::open(&out).unwrap());
        let mut json = std::collections::HashMap::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            if name == "manifest.json" || name == "repositories" {
                let mut s = String::new();
                io::Read::read_to_string(&mut e, &mut s).unwrap();
                json.insert(name, s);
            }
        }
        let top = image.layers.last().unwrap().diff_id.hex().to_string();
        assert_eq!(
            json["repositories"],
            format!(r#"{{"bazel/pkg/v1/mutate":{{"whiteout_image":"{top}"}}}}"#)
        );
        assert!(json["manifest.json"].starts_with(&format!(
            r#"[{{"Config":"{config}","RepoTags":["bazel/pkg/v1/mutate:whiteout_image"],"Layers":["#
        )));
    }

    #[test]
    fn repeated_layer_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let tar_bytes = build_tar(&[Item::File("a", b"same")]);
        let tar_path = dir.path().join("layer.tar");
        std::fs::write(&tar_path, &tar_bytes).unwrap();
        let diff_id = Digest::sha256_of(&tar_bytes);
        let config = serde_json::to_vec(&serde_json::json!({
            "rootfs": {"type": "layers", "diff_ids": [diff_id, diff_id]}
        }))
        .unwrap();
        let info = |index| LayerInfo {
            index,
            digest: diff_id.clone(),
            size: tar_bytes.len() as u64,
            media_type: media_type::OCI_LAYER_TAR.into(),
            diff_id: diff_id.clone(),
        };
        let image = Image {
            name: "twice".into(),
            tag: None,
            manifest: None,
            config_digest: Digest::sha256_of(&config),
            config_raw: config,
            config_media_type: media_type::DOCKER_CONFIG.into(),
            layers: vec![info(0), info(1)],
        };
        let out = dir.path().join("twice.tar");
        let mut sink: Box<dyn Sink> = Box::new(DockerArchiveSink::new(&out).unwrap());
        sink.begin(&image).unwrap();
        assert!(sink.wants_layer(&info(0)));
        assert!(!sink.wants_layer(&info(1)));
        let slice = FileSlice::range(std::sync::Arc::new(tar_path), 0, tar_bytes.len() as u64);
        // Delivered once, as a pipeline that fetches each digest once would.
        sink.layer(Layer::files(info(0), Some(slice), None))
            .unwrap();
        sink.finish(&image).unwrap();

        let names = member_names(&out);
        let layer_tars = names.iter().filter(|n| n.ends_with("/layer.tar")).count();
        assert_eq!(layer_tars, 1, "{names:?}");
        let again = DockerArchiveSource::open(&out, None).unwrap();
        let read = again.resolve_now();
        assert_eq!(read.layers.len(), 2);
        assert_eq!(read.name, "twice");
        assert_eq!(read.tag, None);
    }

    #[test]
    fn missing_layer_fails_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let source = DockerArchiveSource::open(&fixture("test_image_1.tar"), None).unwrap();
        let image = source.resolve_now();
        let out = dir.path().join("never.tar");
        let mut sink: Box<dyn Sink> = Box::new(DockerArchiveSink::new(&out).unwrap());
        sink.begin(&image).unwrap();
        let err = sink.finish(&image).unwrap_err();
        assert!(err.to_string().contains("never written"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn dropped_sink_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let source = DockerArchiveSource::open(&fixture("test_image_1.tar"), None).unwrap();
        let ctx = context(dir.path());
        let image = source.resolve_now();
        let out = dir.path().join("partial.tar");
        let mut sink = DockerArchiveSink::new(&out).unwrap();
        sink.begin(&image).unwrap();
        let layer = runtime()
            .block_on(crate::pipeline::fetch_layer(
                &source,
                &image.layers[0],
                LayerNeeds::TAR,
                &ctx,
            ))
            .unwrap();
        sink.layer(layer).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(sink);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    impl DockerArchiveSource {
        fn resolve_now(&self) -> Image {
            let dir = tempfile::tempdir().unwrap();
            runtime()
                .block_on(self.resolve(&context(dir.path())))
                .unwrap()
        }
    }
}
