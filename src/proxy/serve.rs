//! Serving manifests and blobs to clients: staged blobs, then downstream;
//! with an upstream, a miss goes through [`super::pull`]. (Skeleton.)

use crate::digest::Digest;

use super::error::ApiResult;
use super::route::ManifestRef;
use super::{Body, Proxy};

/// `GET`/`HEAD /v2/<name>/blobs/<digest>` (`range`: the request's `Range`).
pub async fn blob(
    _proxy: &Proxy,
    _name: &str,
    _digest: &Digest,
    _head: bool,
    _range: Option<&str>,
) -> ApiResult<http::Response<Body>> {
    unimplemented!()
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>` (`accept`: the request's
/// `Accept` values).
pub async fn manifest(
    _proxy: &Proxy,
    _name: &str,
    _reference: &ManifestRef,
    _head: bool,
    _accept: &[String],
) -> ApiResult<http::Response<Body>> {
    unimplemented!()
}

/// `GET /v2/<name>/tags/list` (`query`: the request's query string).
pub async fn tags(
    _proxy: &Proxy,
    _name: &str,
    _query: Option<&str>,
) -> ApiResult<http::Response<Body>> {
    unimplemented!()
}
