//! On-disk formats, each with its reading and writing side in one place:
//! what a format's files are called, where they live and what their JSON
//! looks like. The sources and sinks of a format both use its module here,
//! so neither imports the other.
//!
//! - [`docker_save`]: `docker save` tarballs (`manifest.json`, `repositories`);
//! - [`dir`]: the layer store of `dir://` (a docker-save manifest per image,
//!   `catalog.json`, `<diff_id hex>/layer.tar`);
//! - [`oci_layout`]: the OCI image layout (`oci-layout`, `index.json`,
//!   `blobs/ALG/HEX`);
//! - [`blob`]: the one writer that puts a verified file into a store.

pub(crate) mod blob;
pub(crate) mod dir;
pub(crate) mod docker_save;
pub(crate) mod oci_layout;
