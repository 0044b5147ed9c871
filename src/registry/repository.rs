//! [`Repository`]: a registry client and a repository name, the handle a
//! source keeps for one image.

use std::sync::Arc;

use bytes::Bytes;

use super::client::Client;
use crate::digest::Digest;
use crate::error::Result;

impl Client {
    /// A handle on `repository` (`team/app`) of this registry.
    pub fn repo(self: &Arc<Self>, repository: &str) -> Repository {
        Repository::new(self, repository)
    }
}

/// One repository of a registry: a [`Client`] and a name. Cheap to clone;
/// every handle on a client shares its context.
#[derive(Clone, Debug)]
pub struct Repository {
    client: Arc<Client>,
    name: String,
}

impl Repository {
    /// A handle on `repository` (`team/app`) of `client`'s registry.
    pub fn new(client: &Arc<Client>, repository: &str) -> Self {
        Repository {
            client: client.clone(),
            name: repository.to_string(),
        }
    }

    /// The repository name (`team/app`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client this handle uses.
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// The registry host.
    pub fn host(&self) -> &str {
        self.client.host()
    }

    /// [`Client::get_manifest`] for this repository.
    pub async fn get_manifest(&self, reference: &str) -> Result<(Vec<u8>, Option<String>)> {
        self.client.get_manifest(&self.name, reference).await
    }

    /// [`Client::get_small_blob`] for this repository.
    pub async fn get_small_blob(&self, digest: &Digest, size: u64, max: u64) -> Result<Vec<u8>> {
        self.client
            .get_small_blob(&self.name, digest, size, max)
            .await
    }

    /// [`Client::tags_list`] for this repository.
    pub async fn tags_list(
        &self,
        n: Option<usize>,
        last: Option<&str>,
        max: u64,
    ) -> Result<Vec<u8>> {
        self.client.tags_list(&self.name, n, last, max).await
    }

    /// [`Client::stream_blob`] for this repository.
    pub async fn stream_blob(
        &self,
        digest: &Digest,
        size: u64,
        tx: tokio::sync::mpsc::Sender<Bytes>,
        progress: impl Fn(u64) + Send,
    ) -> Result<()> {
        self.client
            .stream_blob(&self.name, digest, size, tx, progress)
            .await
    }
}
