//! The one way tests put an image into the test registry: written into an
//! OCI layout under the test's work directory, then `skopeo copy` (with the
//! registry's credentials when it has some).

use std::path::{Path, PathBuf};

use super::TestEnv;
use super::images::{BuiltImage, Image, OciLayout, unique_dir};
use super::registry::Registry;
use super::tools::skopeo_ok;

/// Which manifest format skopeo writes to the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushFormat {
    /// `--format v2s2`: Docker schema2 manifest (with `--all`: Docker
    /// manifest list). Layers must be gzip; uncompressed ones get gzipped.
    Docker,
    /// `--format oci`: OCI manifest (with `--all`: OCI index). Uncompressed
    /// layers get gzipped.
    Oci,
    /// `--preserve-digests`: the layout's bytes exactly (OCI; keeps
    /// uncompressed and zstd layers and the manifest digest).
    Preserve,
}

/// Builds `img` and pushes it as `dest` (`REPO:TAG`); returns what was built.
pub fn push_image(
    env: &TestEnv,
    reg: &Registry,
    dest: &str,
    img: &Image,
    format: PushFormat,
) -> BuiltImage {
    let built = img.build();
    push_built(env, reg, dest, &built, format);
    built
}

/// The copy tests' source image: busybox with gzip layers, pushed as
/// `team/app:v1`.
pub fn push_busybox(env: &TestEnv, reg: &Registry, format: PushFormat) -> BuiltImage {
    let img = crate::support::images::busybox_image(crate::support::images::Compression::Gzip);
    push_image(env, reg, "team/app:v1", &img, format)
}

/// Pushes an image built already (perhaps tampered with) as `dest`; returns
/// the layout it was pushed from (tag `t`).
pub fn push_built(
    env: &TestEnv,
    reg: &Registry,
    dest: &str,
    built: &BuiltImage,
    format: PushFormat,
) -> PathBuf {
    let dir = unique_dir(&env.work(""), "layout");
    OciLayout::create(&dir).add_image("t", built);
    copy(env, reg, &dir, dest, format, false);
    dir
}

/// Builds the images into one layout with an index over them and pushes all
/// of it as `dest` (a Docker manifest list for `PushFormat::Docker`, an OCI
/// index otherwise).
pub fn push_index(
    env: &TestEnv,
    reg: &Registry,
    dest: &str,
    imgs: &[Image],
    format: PushFormat,
) -> Vec<BuiltImage> {
    let built: Vec<BuiltImage> = imgs.iter().map(Image::build).collect();
    let dir = unique_dir(&env.work(""), "layout");
    OciLayout::create(&dir).add_index("t", &built);
    copy(env, reg, &dir, dest, format, true);
    built
}

/// Pushes tag `t` of a layout written already as `dest`.
pub fn push_layout(env: &TestEnv, reg: &Registry, layout: &Path, dest: &str, format: PushFormat) {
    copy(env, reg, layout, dest, format, false);
}

/// `skopeo copy oci:LAYOUT:t docker://HOST/DEST`; `all` copies every image
/// of an index.
fn copy(env: &TestEnv, reg: &Registry, layout: &Path, dest: &str, format: PushFormat, all: bool) {
    let src = format!("oci:{}:t", layout.display());
    let dst = format!("docker://{}/{dest}", reg.host());
    let mut args: Vec<String> = vec!["copy".into(), "-q".into(), "--dest-tls-verify=false".into()];
    if let Some((u, p)) = reg.creds() {
        args.push("--dest-creds".into());
        args.push(format!("{u}:{p}"));
    }
    match format {
        PushFormat::Docker => args.extend(["--format".into(), "v2s2".into()]),
        PushFormat::Oci => args.extend(["--format".into(), "oci".into()]),
        PushFormat::Preserve => args.push("--preserve-digests".into()),
    }
    if all {
        args.push("--all".into());
    }
    args.push(src);
    args.push(dst);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    skopeo_ok(&env.tool_tmp(), &refs);
}
