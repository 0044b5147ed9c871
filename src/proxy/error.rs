//! The distribution spec's error responses: a status and a JSON body
//! `{"errors":[{"code":…,"message":…}]}`. Every handler returns
//! [`ApiResult`]; nothing else writes an error body.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

use super::Body;
use crate::error::{Error, RegistryErrorCode};

/// One error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The spec's code (`BLOB_UNKNOWN`).
    pub code: &'static str,
    /// A message for people; never holds secrets or raw control characters.
    pub message: String,
}

/// What a handler returns.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

macro_rules! codes {
    ($($fn:ident => $status:ident, $code:literal;)*) => {
        impl ApiError {
            $(
                #[doc = concat!("`", $code, "` (", stringify!($status), ").")]
                pub fn $fn(message: impl Into<String>) -> ApiError {
                    ApiError::new(StatusCode::$status, $code, message)
                }
            )*
        }
    };
}

codes! {
    blob_unknown => NOT_FOUND, "BLOB_UNKNOWN";
    blob_upload_invalid => BAD_REQUEST, "BLOB_UPLOAD_INVALID";
    blob_upload_unknown => NOT_FOUND, "BLOB_UPLOAD_UNKNOWN";
    digest_invalid => BAD_REQUEST, "DIGEST_INVALID";
    manifest_blob_unknown => BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN";
    manifest_invalid => BAD_REQUEST, "MANIFEST_INVALID";
    manifest_unknown => NOT_FOUND, "MANIFEST_UNKNOWN";
    name_invalid => BAD_REQUEST, "NAME_INVALID";
    name_unknown => NOT_FOUND, "NAME_UNKNOWN";
    size_invalid => BAD_REQUEST, "SIZE_INVALID";
    unauthorized => UNAUTHORIZED, "UNAUTHORIZED";
    denied => FORBIDDEN, "DENIED";
    unsupported => METHOD_NOT_ALLOWED, "UNSUPPORTED";
    too_many_requests => TOO_MANY_REQUESTS, "TOOMANYREQUESTS";
    range_invalid => RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID";
    too_large => PAYLOAD_TOO_LARGE, "SIZE_INVALID";
    timeout => REQUEST_TIMEOUT, "BLOB_UPLOAD_INVALID";
    unavailable => SERVICE_UNAVAILABLE, "UNAVAILABLE";
    upstream => BAD_GATEWAY, "UNAVAILABLE";
}

impl ApiError {
    /// An error with a status, a spec code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: crate::escape::escape(&message.into()).into_owned(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        let doc = serde_json::json!({
            "errors": [{ "code": self.code, "message": self.message, "detail": null }]
        });
        Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
    }

    /// The response: status, JSON body, and a Basic challenge on 401.
    pub fn into_response(self) -> http::Response<Body> {
        let mut resp = http::Response::new(super::full(self.body()));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"occystrap\""),
            );
        }
        resp
    }
}

/// An error of ours (reading downstream, running the filters) as the
/// client sees it. A downstream refusal keeps its code; our own failures
/// are a 502 or a 500 naming what failed.
impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let message = chain(&e);
        match &e {
            Error::Registry { codes, status, .. } => match codes.first() {
                Some(RegistryErrorCode::BlobUnknown) => ApiError::blob_unknown(message),
                Some(RegistryErrorCode::ManifestUnknown) => ApiError::manifest_unknown(message),
                Some(RegistryErrorCode::NameUnknown) => ApiError::name_unknown(message),
                Some(RegistryErrorCode::ManifestInvalid) => ApiError::manifest_invalid(message),
                Some(RegistryErrorCode::ManifestBlobUnknown) => {
                    ApiError::manifest_blob_unknown(message)
                }
                Some(RegistryErrorCode::Denied) => ApiError::denied(message),
                Some(RegistryErrorCode::TooManyRequests) => ApiError::too_many_requests(message),
                _ if *status == Some(404) => ApiError::manifest_unknown(message),
                _ => ApiError::upstream(message),
            },
            Error::Network { .. } => ApiError::upstream(message),
            Error::DigestMismatch { .. } => ApiError::digest_invalid(message),
            Error::SizeMismatch { .. } => ApiError::size_invalid(message),
            Error::InvalidImage(_) | Error::Digest(_) => ApiError::manifest_invalid(message),
            Error::Reference(_) => ApiError::name_invalid(message),
            Error::Unsupported(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", message)
            }
            Error::Interrupted => ApiError::unavailable("the proxy is shutting down"),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", message),
        }
    }
}

/// `e: its cause: its cause's cause`, as the binary prints errors.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}
