//! TLS for the listener. (Skeleton.)

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;

/// A server configuration from PEM files: a certificate chain and its key.
pub fn server_config(_cert: &Path, _key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    unimplemented!()
}
