//! Integration tests for occystrap: the binary against a real
//! `docker-registry` on loopback, images built here in Rust, and the output
//! checked with skopeo and podman.
//!
//! Needs, as root on Debian: docker-registry, skopeo, podman, busybox-static,
//! apache2-utils (htpasswd). `scripts/test.sh` installs them.

mod support;

mod bearer;
mod depth;
mod dir_store;
mod docker_save;
mod engine_hostile;
mod engine_load;
mod engine_push;
mod engine_source;
mod errors;
mod expand;
mod faults;
mod filters;
mod harness;
mod hostile_stores;
mod index_copy;
mod info_check;
mod layer_cache;
mod mirror_referrers;
mod mirror_run;
mod proxy_pull;
mod proxy_push;
mod proxy_server;
mod proxy_uploads;
mod quay;
mod registry_client;
mod registry_index;
mod registry_pull;
mod registry_push;
mod registry_repeat;
mod runtime;
mod search;
mod signals;
mod slow;
mod split_download;
mod tar_compressed;
mod tar_hostile;
mod terminal;
