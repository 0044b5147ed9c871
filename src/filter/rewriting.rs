//! What every rewriting filter does with a layer around the block-level
//! rewriter (`tarfmt::rewrite`), which runs the filter's policy: name the
//! layer and get its tar.

/// How errors and logs name a layer.
pub(crate) fn layer_label(layer: &crate::image::Layer) -> String {
    format!("layer {} ({})", layer.info.index, layer.info.diff_id)
}

/// A layer's label for messages and its tar, which every rewriting filter
/// needs; `filter` names the filter in the error when the tar is missing.
pub(crate) fn layer_tar(
    layer: &crate::image::Layer,
    filter: &str,
) -> crate::error::Result<(String, crate::image::FileSlice)> {
    let label = layer_label(layer);
    let tar = layer.tar.clone().ok_or_else(|| {
        crate::error::Error::InvalidImage(format!("{filter}: {label} reached it without its tar"))
    })?;
    Ok((label, tar))
}
