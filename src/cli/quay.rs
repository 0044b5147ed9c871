//! `process quay://[HOST/]ORG/GLOB:TAG DEST`: every repository of a quay
//! organisation that matches the glob and has the tag, each copied as
//! `process registry://HOST/ORG/NAME:TAG` would copy it, into a destination
//! that holds many images: `registry://DST[/PREFIX]` (each image to
//! `DST/PREFIX/NAME:TAG`, or `DST/ORG/NAME:TAG` without a prefix) or
//! `dir://PATH?unique_names=true`. An image that fails does not stop the
//! others; the run fails at the end, naming them.

use std::io::Write as _;

use anyhow::{Result, bail};
use futures_util::StreamExt as _;

use occystrap::source::quay::{self, ApiOptions, QuayUri};
use occystrap::uri::{Settings, Uri};

use super::Global;

/// Runs the copy of every image `src` names into `dst`.
pub(super) async fn process(
    global: &Global,
    settings: &Settings,
    src: &Uri,
    dst: &Uri,
    filters: &[String],
) -> Result<i32> {
    let q = QuayUri::parse(&src.path, &src.query)?;
    // Checked before any request: a destination that would keep only the
    // last image is a mistake to report now, not after the listing.
    let target = Target::new(dst)?;
    let options = ApiOptions {
        insecure: settings.insecure || q.insecure,
        // As in the Python tool: the URI's token, else --password.
        token: q.token.clone().or_else(|| global.password.clone()),
        connect_timeout: settings
            .connect_timeout
            .unwrap_or(occystrap::registry::DEFAULT_CONNECT_TIMEOUT),
        request_timeout: settings
            .request_timeout
            .unwrap_or(occystrap::registry::DEFAULT_REQUEST_TIMEOUT),
        retries: settings.retries,
    };
    let found = quay::discover(&q, &options, &settings.registry).await?;
    let mut err = occystrap::escape::TextOut::new(std::io::stderr().lock());
    let _ = writeln!(
        err,
        "{}: {} of {} repositories match and have the tag{}{}",
        q.describe(),
        found.repositories.len(),
        found.listed,
        if found.without_tag > 0 {
            format!(" ({} matching ones do not)", found.without_tag)
        } else {
            String::new()
        },
        if found.too_old > 0 {
            format!(", {} older than since", found.too_old)
        } else {
            String::new()
        },
    );
    drop(err);
    if found.repositories.is_empty() {
        return Ok(0);
    }
    let total = found.repositories.len();
    let jobs = found.repositories.iter().map(|name| {
        let q = &q;
        let target = &target;
        async move {
            let image = format!("{}/{}/{name}:{}", q.host, q.namespace, q.tag);
            let result = async {
                let mut from = Uri::parse(&format!("registry://{image}"))?;
                if q.insecure {
                    from.query.push(("insecure".into(), "true".into()));
                }
                let to = target.for_image(&q.namespace, name, &q.tag)?;
                copy_one(global, settings, &from, &to, filters).await
            }
            .await;
            (image, result)
        }
    });
    let mut failed = Vec::new();
    let mut done = 0usize;
    let mut results = futures_util::stream::iter(jobs)
        .buffer_unordered(usize::from(global.image_parallel.unwrap_or(4)));
    while let Some((image, result)) = results.next().await {
        done += 1;
        let mut err = occystrap::escape::TextOut::new(std::io::stderr().lock());
        match result {
            Ok(0) => {
                let _ = writeln!(err, "[{done}/{total}] {image}");
            }
            Ok(code) => {
                let _ = writeln!(err, "[{done}/{total}] {image}: failed (exit {code})");
                failed.push(image);
            }
            Err(e) => {
                let _ = writeln!(err, "[{done}/{total}] {image}: failed: {e:#}");
                failed.push(image);
            }
        }
        settings.cancel.check()?;
    }
    if !failed.is_empty() {
        failed.sort();
        bail!(
            "{}: {} of {total} images failed: {}",
            q.describe(),
            failed.len(),
            failed.join(", ")
        );
    }
    let mut err = occystrap::escape::TextOut::new(std::io::stderr().lock());
    let images = if total == 1 { "image" } else { "images" };
    let _ = writeln!(err, "{}: {total} {images} copied", q.describe());
    Ok(0)
}

/// One image, as `process` copies one.
async fn copy_one(
    global: &Global,
    settings: &Settings,
    src: &Uri,
    dst: &Uri,
    filters: &[String],
) -> Result<i32> {
    if let Some(selection) = &settings.selection
        && dst.scheme == "registry"
        && let Some(code) =
            super::copy::process_index(global, settings, src, dst, filters, selection).await?
    {
        return Ok(code);
    }
    super::process_filtered(global, settings, src, dst, filters).await
}

/// Where each image goes.
enum Target {
    /// `registry://[USER:PASS@]HOST[/PREFIX][?options]`.
    Registry {
        /// Everything before the prefix (user info and host).
        host: String,
        /// The prefix, without slashes at either end; empty: the source's
        /// organisation.
        prefix: String,
        query: Vec<(String, String)>,
    },
    /// `dir://PATH?unique_names=true`: one manifest per image and tag.
    Dir(Uri),
}

impl Target {
    fn new(dst: &Uri) -> Result<Target> {
        match dst.scheme.as_str() {
            "registry" => {
                // User info ends at the last '@' before the first '/'.
                let first_slash = dst.path.find('/').unwrap_or(dst.path.len());
                let (host, prefix) = dst.path.split_at(first_slash);
                let prefix = prefix.trim_matches('/');
                if host.is_empty() || host.ends_with('@') {
                    bail!("registry:// destination needs a host: registry://HOST[/PREFIX]");
                }
                if prefix.contains([':', '@']) {
                    bail!(
                        "a quay:// source copies many images, each keeping its own name and tag: \
                         give the destination as registry://HOST[/PREFIX], without a tag or digest"
                    );
                }
                Ok(Target::Registry {
                    host: host.to_string(),
                    prefix: prefix.to_string(),
                    query: dst.query.clone(),
                })
            }
            "dir" => {
                if !dst.flag("unique_names")? {
                    bail!(
                        "a quay:// source copies many images, and dir:// without unique_names=true \
                         keeps one manifest: use dir://{}?unique_names=true",
                        dst.path
                    );
                }
                Ok(Target::Dir(dst.clone()))
            }
            other => bail!(
                "a quay:// source copies many images, and {other}:// holds one: use \
                 registry://HOST[/PREFIX] or dir://PATH?unique_names=true"
            ),
        }
    }

    /// The destination of `ORG/NAME:TAG`.
    fn for_image(&self, namespace: &str, name: &str, tag: &str) -> Result<Uri> {
        match self {
            Target::Registry {
                host,
                prefix,
                query,
            } => {
                let prefix = if prefix.is_empty() { namespace } else { prefix };
                Ok(Uri {
                    scheme: "registry".into(),
                    path: format!("{host}/{prefix}/{name}:{tag}"),
                    query: query.clone(),
                })
            }
            Target::Dir(uri) => Ok(uri.clone()),
        }
    }
}
