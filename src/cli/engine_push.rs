//! `dockerpush://IMAGE[:TAG]?socket=PATH` as a source: the engine pushes
//! the image into a capture proxy on loopback
//! (`occystrap::proxy::engine_push`), which then serves it to the run. It
//! cannot be built in `uri::open_source`, which sits below the proxy, so
//! every command that opens a source does it through [`open_source`].

use std::sync::Arc;

use occystrap::source::Source;
use occystrap::uri::{self, Settings, Uri};

/// The source `src` names, with the layers to fetch at once: a
/// `dockerpush://` source here, any other through `uri::open_source`.
pub(super) fn open_source(
    src: &Uri,
    settings: &Settings,
) -> occystrap::Result<(Arc<dyn Source>, usize)> {
    if src.scheme != "dockerpush" {
        return uri::open_source(src, settings);
    }
    src.check_options(&["socket"])?;
    let source = occystrap::proxy::engine_push::EnginePushSource::new(
        uri::engine_socket(src, settings)?,
        &src.path,
        settings.cancel.clone(),
    )?
    .with_platform(settings.platform.clone());
    Ok((Arc::new(source), settings.parallel))
}
