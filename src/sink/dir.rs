//! Directory output: the Python occystrap's layer store (`dir://PATH`) and,
//! with `expand=true`, the image's merged root filesystem beside it.
//!
//! The store holds each layer once, uncompressed, as
//! `<diff_id hex>/layer.tar`, the config as `<config hex>.json` (the source's
//! bytes, so its digest still holds), a docker-save style manifest per image
//! (`manifest.json`, or `manifest-<image>-<tag>.json` with `unique_names`) and
//! `catalog.json` mapping image and tag to that manifest. Images written into
//! one store share layers: a layer already there is never fetched again.
//!
//! Every file appears complete or not at all (temp name, then rename), and
//! `catalog.json` is updated under a lock, so concurrent runs into one store
//! all land. A run keeps the layers it brings in a hidden directory of its
//! own (`.occystrap-run-*`) and moves them to their places only when it
//! succeeds, with the rootfs (built in a hidden temp directory and swapped
//! into place), the config, the manifest and the catalog: a failed run
//! leaves the store as it found it.
//!
//! Nothing below the store's root is followed if it is a symlink, and only
//! regular files are read or replaced (see [`StoreRoot`]): a store others
//! can write into cannot redirect our writes or reads, nor make us block on
//! a FIFO.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::format::blob::{self, BlobWriter};
use crate::format::dir::{
    CATALOG, LOCK_FILE, encode_catalog, layer_rel, layer_rel_of_run_name, manifest_stem,
    read_store_catalog, run_layer_name as layer_file, store_image_name, store_tag,
};
use crate::format::docker_save::{ManifestEntry, config_member};
use crate::fsutil::{self, RunDir, StoreRoot};
use crate::image::{FileSlice, Image, Layer, LayerInfo, LayerNeeds, LiveTar};
use crate::layer::{ExtractOptions, ExtractStats, WhiteoutMode, extract_layer};
use crate::sink::staging::StagedDir;
use crate::sink::{Sink, SinkReport};

/// How the directory output is written.
#[derive(Clone, Debug, Default)]
pub struct DirOptions {
    /// One manifest file per image and tag instead of a shared `manifest.json`.
    pub unique_names: bool,
    /// Also write the merged root filesystem.
    pub expand: bool,
    /// Skip layer entries that cannot be extracted safely instead of failing.
    pub skip_unsafe: bool,
    /// Extracting and waiting for the store's lock stop once this is cancelled.
    pub cancel: crate::cancel::CancelToken,
}

/// Writes images into a layer store directory (see the module docs).
pub struct DirSink {
    root: PathBuf,
    options: DirOptions,
    /// The store, from `begin` on.
    store: Option<StoreRoot>,
    /// This run's layers, until it succeeds.
    run: Option<RunDir>,
    /// diff_ids `wants_layer` has already answered for in this run.
    asked: HashSet<Digest>,
    /// The image's layers as `begin` saw them.
    layers: Vec<LayerInfo>,
    /// The rootfs being built, with `expand`.
    expand: Option<Expansion>,
    bytes_written: u64,
    notes: Vec<String>,
    /// Removes the store's root, if this run created it, when the run fails.
    /// Last, so that it is dropped after everything inside the root.
    created_root: Option<CreatedRoot>,
}

/// A store root this run created: removed again (if still empty) unless the
/// run succeeded.
struct CreatedRoot {
    path: PathBuf,
    keep: bool,
}

impl Drop for CreatedRoot {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// A merged rootfs under construction.
struct Expansion {
    tree: StagedDir,
    /// Where later layers are extracted ahead (in the store's root).
    stage: std::sync::Arc<crate::layer::StageDir>,
    /// The next layer index to apply: everything below it is in the tree.
    next_index: usize,
}

/// How messages name a layer.
fn layer_name(info: &LayerInfo) -> String {
    let full = info.diff_id.to_string();
    // `sha256:` and 12 hex digits, as docker shortens ids.
    let cut = full
        .find(':')
        .map_or(full.len(), |i| (i + 13).min(full.len()));
    format!("layer {} ({})", info.index, &full[..cut])
}

impl DirSink {
    /// A sink writing into the directory `root` (created if missing).
    pub fn new(root: &Path, options: DirOptions) -> Result<Self> {
        if root.as_os_str().is_empty() {
            return Err(Error::Usage("dir:// needs a path".into()));
        }
        Ok(DirSink {
            root: root.to_path_buf(),
            options,
            store: None,
            run: None,
            asked: HashSet::new(),
            layers: Vec::new(),
            expand: None,
            bytes_written: 0,
            notes: Vec::new(),
            created_root: None,
        })
    }

    fn store(&self) -> Result<&StoreRoot> {
        self.store
            .as_ref()
            .ok_or_else(|| Error::InvalidImage("dir output was never begun".into()))
    }

    fn run_dir(&self) -> Result<&RunDir> {
        self.run
            .as_ref()
            .ok_or_else(|| Error::InvalidImage("dir output was never begun".into()))
    }

    /// Where the store or this run keeps a layer (relative to the root),
    /// if either has it.
    fn find_layer(&self, diff_id: &Digest) -> Option<PathBuf> {
        if let Some(run) = &self.run
            && run.has(&layer_file(diff_id))
        {
            return Some(run.rel(&layer_file(diff_id)));
        }
        let rel = layer_rel(diff_id);
        self.store
            .as_ref()
            .is_some_and(|s| s.is_file(&rel))
            .then_some(rel)
    }

    fn stem(&self, image: &Image) -> String {
        manifest_stem(
            store_image_name(&image.name),
            &store_tag(image),
            self.options.unique_names,
        )
    }

    /// Copies a delivered layer into the store under a temp name, then
    /// renames it into place.
    fn store_layer(&self, layer: &Layer) -> Result<u64> {
        let info = &layer.info;
        if let Some(mut stream) = layer.take_live() {
            let reading = |e| Error::stream(format!("reading {}", layer_name(info)), e);
            return self.persist_layer(info, |out| match out {
                Some(file) => stream.copy_to_file(file).map_err(reading),
                // Already stored: the stream must still be read to its end
                // for the verification to finish.
                None => io::copy(&mut stream, &mut io::sink()).map_err(reading),
            });
        }
        let Some(tar) = &layer.tar else {
            return Err(Error::InvalidImage(format!(
                "dir output: {} arrived without its uncompressed tar",
                layer_name(info)
            )));
        };
        let dest = self.root.join(layer_rel(&info.diff_id));
        if self.link_whole_temp(info, tar)? {
            return Ok(tar.len());
        }
        self.persist_layer(info, |out| {
            let Some(file) = out else { return Ok(0) };
            let mut reader = tar
                .open()
                .map_err(|e| Error::io("reading", tar.path(), e))?;
            // File to File with nothing between, so std uses copy_file_range
            // and the bytes stay in the kernel.
            let copied = io::copy(&mut reader, file).map_err(|e| {
                Error::stream(
                    format!(
                        "copying {} from {} to {}",
                        layer_name(info),
                        tar.path().display(),
                        dest.display()
                    ),
                    e,
                )
            })?;
            if copied != tar.len() {
                return Err(Error::SizeMismatch {
                    kind: crate::error::Mismatch::Copy,
                    what: format!("{} ({})", layer_name(info), tar.path().display()),
                    expected: tar.len(),
                    found: copied,
                });
            }
            Ok(copied)
        })
    }

    /// Puts a verified temp file that is the whole layer into the store by
    /// hard-linking it: no copy when the run's temp dir (`--temp-dir`) is on
    /// the store's filesystem. `false` when that can't be done and the layer
    /// must be copied.
    fn link_whole_temp(&self, info: &LayerInfo, tar: &FileSlice) -> Result<bool> {
        if !blob::is_whole_temp(tar) {
            return Ok(false);
        }
        if self.find_layer(&info.diff_id).is_some() {
            return Ok(true);
        }
        let linked = blob::link_verified(
            self.store()?,
            self.run_dir()?,
            &layer_file(&info.diff_id),
            tar,
        )?;
        if linked {
            tracing::debug!("{} linked into the store", layer_name(info));
        }
        Ok(linked)
    }

    /// Writes a layer into the store through the blob writer with `fill`,
    /// then names it in the run's directory. `fill` gets `None` when the
    /// store has the layer already (another run stored it since
    /// `wants_layer` looked). The layer's bytes were verified by the source
    /// (a verified file, or a stream whose end is its verification), so they
    /// are not hashed again and a File-to-File copy stays in the kernel.
    fn persist_layer(
        &self,
        info: &LayerInfo,
        fill: impl FnOnce(Option<&mut File>) -> Result<u64>,
    ) -> Result<u64> {
        if self.find_layer(&info.diff_id).is_some() {
            fill(None)?;
            return Ok(0);
        }
        // In the run's own directory: the layer joins the store only when
        // the run succeeds, and a crash leaves nothing that looks like one.
        let name = layer_file(&info.diff_id);
        let mut out =
            BlobWriter::verified(self.store()?, self.run_dir()?, &name, &info.diff_id, None)?;
        let copied = fill(out.file())?;
        out.commit()?;
        Ok(copied)
    }

    /// Stores a streamed layer and extracts it in the same pass, so the tree
    /// grows while the layer downloads. Both the store's copy and the tree
    /// stay unpublished until the stream ends verified.
    fn store_and_extract(
        &self,
        info: &LayerInfo,
        stream: &mut dyn LiveTar,
    ) -> Result<(u64, ExtractStats)> {
        let reading = |e| Error::stream(format!("reading {}", layer_name(info)), e);
        let mut stats = ExtractStats::default();
        let copied = self.persist_layer(info, |out| {
            let mut tee = TeeRead {
                inner: stream,
                copy: out.map(|f| io::BufWriter::with_capacity(256 << 10, f)),
                count: 0,
            };
            stats = self.extract(info, &mut tee)?;
            io::copy(&mut tee, &mut io::sink()).map_err(reading)?;
            if let Some(w) = &mut tee.copy {
                w.flush().map_err(reading)?;
            }
            Ok(tee.count)
        })?;
        Ok((copied, stats))
    }

    /// Applies the store's copies of the layers below `upto` not yet in the
    /// tree (those `wants_layer` said the store already had).
    fn apply_stored_below(&mut self, upto: usize) -> Result<()> {
        let Some(next) = self.expand.as_ref().map(|x| x.next_index) else {
            return Ok(());
        };
        for index in next..upto.min(self.layers.len()) {
            let info = self.layers[index].clone();
            self.apply_stored(&info)?;
            if let Some(x) = &mut self.expand {
                x.next_index = index + 1;
            }
        }
        Ok(())
    }

    /// Applies one layer from the store's copy, checking on the way that the
    /// copy still hashes to its diff_id: it was trusted by presence alone.
    fn apply_stored(&mut self, info: &LayerInfo) -> Result<()> {
        let store = self.store()?;
        let rel = self
            .find_layer(&info.diff_id)
            .unwrap_or_else(|| layer_rel(&info.diff_id));
        let path = store.display(&rel);
        let file = store
            .open_file(&rel)?
            .ok_or_else(|| Error::io("opening", &path, io::ErrorKind::NotFound.into()))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io("reading", &path, e))?
            .len();
        // The store's copy is a plain tar: its digest is its diff_id.
        let expect = crate::verify::Expect {
            info: LayerInfo {
                digest: info.diff_id.clone(),
                size,
                ..info.clone()
            },
            digest_known: true,
            prehashed: None,
        };
        let label = format!(
            "{} stored at {} (remove it and run again)",
            layer_name(info),
            path.display()
        );
        let mut verified = crate::verify::VerifiedTar::new(
            Box::new(file),
            expect,
            label,
            std::sync::Arc::new(crate::progress::Silent),
        )?;
        let stats = self.extract(info, &mut verified)?;
        // The tar reader stops at the end marker; the rest still counts, and
        // the last read is the verdict.
        io::copy(&mut verified, &mut io::sink()).map_err(|e| Error::stream("reading", e))?;
        self.record(info, stats);
        Ok(())
    }

    /// Extracts one layer tar onto the tree.
    fn extract(&self, info: &LayerInfo, tar: impl Read) -> Result<ExtractStats> {
        let Some(x) = &self.expand else {
            return Ok(ExtractStats::default());
        };
        extract_layer(x.tree.path(), tar, &self.extract_options(info))
    }

    /// Applies a layer extracted ahead onto the tree.
    fn apply_staged(
        &self,
        info: &LayerInfo,
        staged: &crate::image::StagedTar,
    ) -> Result<ExtractStats> {
        let Some(x) = &self.expand else {
            return Ok(ExtractStats::default());
        };
        crate::sink::staging::apply_staged_tar(x.tree.path(), staged, &self.extract_options(info))
    }

    fn extract_options(&self, info: &LayerInfo) -> ExtractOptions {
        ExtractOptions {
            whiteouts: WhiteoutMode::Apply,
            skip_unsafe: self.options.skip_unsafe,
            layer_name: layer_name(info),
            cancel: self.options.cancel.clone(),
        }
    }

    /// Keeps what an extraction has to say: the binary logs only errors by
    /// default, so notes go into the report as well as the log.
    fn record(&mut self, info: &LayerInfo, stats: ExtractStats) {
        let name = layer_name(info);
        for skipped in stats.skipped_unsafe {
            tracing::warn!("{name}: skipped {skipped}");
            self.notes.push(format!("{name}: skipped {skipped}"));
        }
        for warning in stats.warnings {
            tracing::warn!("{name}: {warning}");
            self.notes.push(format!("{name}: {warning}"));
        }
        self.bytes_written += stats.bytes;
    }

    /// Writes the manifest file and adds the image to the catalog, under the
    /// store's lock so that concurrent runs neither lose entries nor leave a
    /// catalog that names another run's manifest.json.
    ///
    /// Everything that can refuse (the lock, the catalog) is looked at
    /// before the run's layers and tree are moved into place.
    fn publish(&mut self, image: &Image, manifest_file: &str, manifest: &[u8]) -> Result<()> {
        let store = self
            .store
            .take()
            .ok_or_else(|| Error::InvalidImage("dir output was never begun".into()))?;
        let _lock = store.lock(LOCK_FILE, &self.options.cancel)?;
        let catalog = read_store_catalog(&store)?.unwrap_or_default();
        let config_name = config_member(&image.config_raw);
        // Whatever could refuse is looked at before anything becomes
        // visible: a run that fails here has changed nothing.
        use rustix::fs::FileType;
        fsutil::check_free_or(&store, Path::new(&config_name), FileType::RegularFile)?;
        fsutil::check_free_or(&store, Path::new(manifest_file), FileType::RegularFile)?;
        if let Some(name) = self
            .expand
            .as_ref()
            .and_then(|x| x.tree.target().file_name())
        {
            fsutil::check_free_or(&store, Path::new(name), FileType::Directory)?;
        }
        self.move_run_layers(&store)?;
        if let Some(x) = self.expand.take() {
            // The tree has the image's name in the store: replacing it is
            // what a second expand of the same image means.
            x.tree.commit(|_| true)?;
        }

        // Named by the hash of the bytes written, which a filter may have
        // changed since the source computed config_digest.
        let config_rel = Path::new(&config_name);
        let same = store.is_file(config_rel)
            && store
                .read_small(config_rel, image.config_raw.len() as u64)
                .ok()
                .flatten()
                .as_deref()
                == Some(image.config_raw.as_slice());
        if !same {
            store.atomic_write(config_rel, &image.config_raw)?;
            self.bytes_written += image.config_raw.len() as u64;
        }

        store.atomic_write(Path::new(manifest_file), manifest)?;
        self.bytes_written += manifest.len() as u64;

        let data = encode_catalog(catalog, image, manifest_file)?;
        store.atomic_write(Path::new(CATALOG), &data)?;
        self.bytes_written += data.len() as u64;
        if let Some(c) = &mut self.created_root {
            c.keep = true;
        }
        self.store = Some(store);
        Ok(())
    }

    /// Moves this run's layers to their places in the store. A layer another
    /// run stored meanwhile is kept: it has the same content.
    fn move_run_layers(&self, store: &StoreRoot) -> Result<()> {
        match &self.run {
            Some(run) => blob::publish_run(store, run, layer_rel_of_run_name),
            None => Ok(()),
        }
    }
}

impl Sink for DirSink {
    fn needs(&self) -> LayerNeeds {
        LayerNeeds::TAR
    }

    fn ordered(&self) -> bool {
        // A store takes layers as they come; a rootfs must be built bottom up.
        self.options.expand
    }

    /// With `expand`: in the store's root, beside the tree.
    fn stage_area(&self) -> Option<super::StageArea> {
        Some(super::StageArea {
            dir: self.expand.as_ref()?.stage.clone(),
            whiteouts: WhiteoutMode::Apply,
            keep_tar: true,
            layer_name,
        })
    }

    fn begin(&mut self, image: &Image) -> Result<()> {
        let (store, created) = StoreRoot::create(&self.root)?;
        if created {
            self.created_root = Some(CreatedRoot {
                path: self.root.clone(),
                keep: false,
            });
        }
        // A catalog we could not update should stop the run before any work.
        read_store_catalog(&store)?;
        self.run = Some(RunDir::create(&store)?);
        self.store = Some(store);
        self.layers = image.layers.clone();
        if self.options.expand {
            let tree = StagedDir::new(&self.root.join(self.stem(image)))?;
            self.expand = Some(Expansion {
                tree,
                stage: crate::layer::StageDir::create_in(&self.root)?,
                next_index: 0,
            });
        }
        Ok(())
    }

    fn wants_layer(&mut self, layer: &LayerInfo) -> bool {
        // After a rewriting filter this is asked with the new diff_id, which
        // is the one to apply from the store if the answer is no.
        if let Some(slot) = self.layers.get_mut(layer.index) {
            *slot = layer.clone();
        }
        // A layer the image lists twice is fetched once; the store's copy of
        // it serves the second place.
        self.asked.insert(layer.diff_id.clone()) && self.find_layer(&layer.diff_id).is_none()
    }

    fn layer(&mut self, layer: Layer) -> Result<()> {
        let index = layer.info.index;
        self.apply_stored_below(index)?;
        if let Some(slot) = self.layers.get_mut(index) {
            *slot = layer.info.clone();
        }
        if self.expand.is_some()
            && let Some(mut stream) = layer.take_live()
        {
            let (copied, stats) = self.store_and_extract(&layer.info, &mut *stream)?;
            self.bytes_written += copied;
            self.record(&layer.info, stats);
            if let Some(x) = &mut self.expand {
                x.next_index = x.next_index.max(index + 1);
            }
            return Ok(());
        }
        let (stored, stats) = match (&self.expand, &layer.tar) {
            (Some(_), Some(tar)) => {
                let this = &*self;
                // The store's copy and the extraction read the same verified
                // file: side by side they take the time of the slower.
                std::thread::scope(|scope| {
                    let store = scope.spawn(|| this.store_layer(&layer));
                    let stats = match &layer.staged {
                        Some(staged) => this.apply_staged(&layer.info, staged),
                        None => tar
                            .open()
                            .map_err(|e| Error::io("reading", tar.path(), e))
                            .and_then(|r| this.extract(&layer.info, r)),
                    };
                    let stored = store
                        .join()
                        .map_err(|_| Error::InvalidImage("storing a layer failed".into()))?;
                    Ok::<_, Error>((stored, stats?))
                })?
            }
            _ => (Ok(self.store_layer(&layer)?), ExtractStats::default()),
        };
        self.bytes_written += stored?;
        if self.expand.is_some() {
            self.record(&layer.info, stats);
            if let Some(x) = &mut self.expand {
                x.next_index = x.next_index.max(index + 1);
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, image: &Image) -> Result<SinkReport> {
        if let Some(missing) = image
            .layers
            .iter()
            .find(|l| self.find_layer(&l.diff_id).is_none())
        {
            return Err(Error::InvalidImage(format!(
                "dir output: {} is not in {}",
                layer_name(missing),
                self.root.display()
            )));
        }
        // The final metadata: filters may have rewritten layers since `begin`.
        self.layers = image.layers.clone();
        self.apply_stored_below(self.layers.len())?;

        let output = match &self.expand {
            Some(x) => x.tree.target().display().to_string(),
            None => self.root.display().to_string(),
        };
        let key = store_image_name(&image.name);
        let entry = [ManifestEntry {
            image_name: self.options.unique_names.then(|| key.to_string()),
            ..ManifestEntry::for_image(image)
        }];
        let mut manifest = serde_json::to_vec_pretty(&entry)
            .map_err(|e| Error::InvalidImage(format!("encoding the manifest: {e}")))?;
        manifest.push(b'\n');
        let manifest_file = format!("{}.json", self.stem(image));
        self.publish(image, &manifest_file, &manifest)?;

        Ok(SinkReport {
            output,
            bytes_written: self.bytes_written,
            notes: std::mem::take(&mut self.notes),
            ..SinkReport::default()
        })
    }
}

/// A reader that copies what passes through it into a writer.
struct TeeRead<'a, R: Read + ?Sized, W: io::Write> {
    inner: &'a mut R,
    copy: Option<W>,
    count: u64,
}

impl<R: Read + ?Sized, W: io::Write> Read for TeeRead<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(w) = &mut self.copy {
            w.write_all(&buf[..n])?;
        }
        self.count += n as u64;
        Ok(n)
    }
}
