//! The pull-through cache. (Skeleton.)

use crate::error::Result;

use super::ProxyConfig;

/// Tag records and in-flight copies.
pub struct PullState {}

impl PullState {
    /// Over `config.state_dir`.
    pub fn new(_config: &ProxyConfig) -> Result<PullState> {
        Ok(PullState {})
    }
}

/// `occystrap proxy --purge REF`: forgets the cached tag `reference`
/// (`name:tag`) in `state_dir`; whether there was one.
pub fn purge(_state_dir: &std::path::Path, _reference: &str) -> Result<bool> {
    unimplemented!()
}
