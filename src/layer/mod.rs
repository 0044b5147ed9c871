//! Layer tars: safe extraction onto a directory.
//!
//! Extraction is where image tools get attacked, so nothing here trusts a
//! member name. Paths are resolved by the kernel with `openat2(2)` and
//! `RESOLVE_IN_ROOT` relative to a directory fd of the root: `..` and
//! absolute symlinks met on the way stay inside the root, whatever the
//! layer (or a lower one) put there. A final component is never followed:
//! what is in the way is removed and replaced. Names with a `..` component,
//! and hardlinks to absolute or escaping targets, are refused outright.
//! Leading `/` and `./` are dropped, so `/abs/x` lands at `ROOT/abs/x`, as
//! Docker and umoci do.
//!
//! The tar crate only parses; every write goes through the resolver.

#[cfg(test)]
mod depth_tests;
mod extract;
mod path;
#[cfg(test)]
mod proptests;
mod resolve;
#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) use depth_tests::{sandbox as depth_sandbox, with_fd_limit as depth_with_fd_limit};
pub use extract::{StageDir, StagedFiles, apply_staged, extract_layer, stage_layer};

/// What to do with whiteout entries (`.wh.NAME`, `.wh..wh..opq`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhiteoutMode {
    /// Delete what they hide from lower layers already in the directory:
    /// for a merged root filesystem.
    #[default]
    Apply,
    /// Write them in overlayfs form (a 0:0 character device for a deleted
    /// name, `trusted.overlay.opaque=y` on an opaque directory): for one
    /// directory per layer, to be stacked by an overlay mount.
    Overlay,
}

/// How to extract a layer.
#[derive(Clone, Debug, Default)]
pub struct ExtractOptions {
    /// Whiteout handling.
    pub whiteouts: WhiteoutMode,
    /// Skip unsafe entries (listing them in the stats) instead of failing.
    pub skip_unsafe: bool,
    /// How messages name the layer, e.g. `layer 2 (sha256:…)`.
    pub layer_name: String,
    /// The run's cancellation, checked between entries and while copying.
    pub cancel: crate::cancel::CancelToken,
}

/// What an extraction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Entries applied (whiteouts included).
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Directories extracted ahead that were moved into place whole, with
    /// everything in them (the directories inside are not counted).
    pub dirs_moved: u64,
    /// One line per entry skipped as unsafe (with `skip_unsafe`).
    pub skipped_unsafe: Vec<String>,
    /// Things that did not stop the extraction but were not done as the
    /// layer asked (device nodes without root, refused xattrs).
    pub warnings: Vec<String>,
}
