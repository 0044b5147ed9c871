//! Client credentials: an htpasswd file of bcrypt hashes. (Skeleton.)

use std::path::Path;

use crate::error::Result;

/// The users of an htpasswd file.
#[derive(Debug)]
pub struct Htpasswd {}

impl Htpasswd {
    /// Reads `path`.
    pub fn load(_path: &Path) -> Result<Htpasswd> {
        unimplemented!()
    }

    /// Whether the request's `Authorization` header value is a Basic
    /// credential of a user in the file.
    pub fn check(&self, _authorization: Option<&str>) -> bool {
        unimplemented!()
    }
}
