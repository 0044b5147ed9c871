//! The push path: a client's manifest PUT. (Skeleton: the contract.)

use bytes::Bytes;

use crate::digest::Digest;
use crate::error::Result;

use super::error::ApiResult;
use super::route::ManifestRef;
use super::{Proxy, ProxyConfig};

/// What a manifest PUT stored downstream.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The digest of the manifest stored downstream.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
}

/// The manifests pushed by digest, and what each became downstream.
pub struct PushState {}

impl PushState {
    /// Empty.
    pub fn new(_config: &ProxyConfig) -> Result<PushState> {
        Ok(PushState {})
    }
}

/// A client's `PUT /v2/<name>/manifests/<reference>` with `body` (already
/// read, within the manifest size limit).
pub async fn put_manifest(
    _proxy: &Proxy,
    _name: &str,
    _reference: &ManifestRef,
    _content_type: Option<&str>,
    _body: Bytes,
) -> ApiResult<Stored> {
    unimplemented!()
}
