//! Upload sessions and staged blobs, on disk under the proxy's state
//! directory. (Skeleton: the contract the server calls.)

use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::Result;

use super::error::ApiResult;
use super::{Limits, ReqBody};

/// Upload sessions and the blobs they produced.
pub struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// The staging area in `dir` (created; leftovers of an earlier run are
    /// removed).
    pub fn new(dir: &Path, _limits: &Limits) -> Result<Staging> {
        Ok(Staging {
            dir: dir.to_path_buf(),
        })
    }

    /// A directory for the pipeline's temp files, on the same filesystem.
    pub fn temp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// The size of a staged blob, if it is staged.
    pub fn blob_size(&self, _digest: &Digest) -> Option<u64> {
        unimplemented!()
    }

    /// A staged blob opened for reading, with its size; marks it used.
    pub fn open_blob(&self, _digest: &Digest) -> Option<(std::fs::File, u64)> {
        unimplemented!()
    }

    /// Starts a session for repository `name`; returns its id.
    pub fn start(&self, _name: &str) -> ApiResult<String> {
        unimplemented!()
    }

    /// Appends `body` to session `id` (`content_range`: the request's
    /// `Content-Range` header, if any); returns the bytes received so far.
    pub async fn patch(
        &self,
        _name: &str,
        _id: &str,
        _content_range: Option<&str>,
        _body: ReqBody,
    ) -> ApiResult<u64> {
        unimplemented!()
    }

    /// The bytes session `id` has received.
    pub fn offset(&self, _name: &str, _id: &str) -> ApiResult<u64> {
        unimplemented!()
    }

    /// Appends `body`, then closes session `id` as blob `digest`, verified;
    /// returns its size.
    pub async fn put(
        &self,
        _name: &str,
        _id: &str,
        _digest: &Digest,
        _body: ReqBody,
    ) -> ApiResult<u64> {
        unimplemented!()
    }

    /// Drops session `id` and its file.
    pub fn cancel(&self, _name: &str, _id: &str) -> ApiResult<()> {
        unimplemented!()
    }

    /// Removes idle sessions and staged blobs past their time.
    pub fn sweep(&self) {}
}
