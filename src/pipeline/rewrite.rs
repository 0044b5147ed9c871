//! A rewriting filter run over a layer as it streams (see
//! `filter::Filter::stream_rewrite`): the verified tar goes through
//! `tarfmt::rewrite::rewrite_forward` on the layer's verifying thread, and
//! the rewritten tar, hashed as it is written, to the sink live or to the
//! spool. The new diff_id is known at the end, which is why only a sink
//! that names no layer by it in `layer` (`takes_rewritten_live`) gets this.

use std::io;

use crate::digest::{Algorithm, Digest, HashingWriter};
use crate::error::Result;
use crate::filter::RewriteFactory;
use crate::verify::VerifiedTar;

use super::handoff::LayerOut;

/// Rewrites the verified tar into `out`; returns the result (a rewrite's
/// error, or the verifier's verdict, the stream's last read), the output
/// back, and the new tar's diff_id and size when the rewrite changed it.
pub(super) fn pump_rewritten<'a>(
    r: &mut VerifiedTar,
    out: LayerOut<'a>,
    make: &RewriteFactory,
    label: &str,
) -> (Result<()>, LayerOut<'a>, Option<(Digest, u64)>) {
    let mut rewrite = make();
    let mut hashed = HashingWriter::new(out, Algorithm::Sha256);
    let done = crate::tarfmt::rewrite::rewrite_forward(&mut *r, &mut hashed, label, &mut *rewrite);
    // Whatever the rewrite left unread still counts towards the verdict.
    let done = done.and_then(|stats| {
        io::copy(r, &mut io::sink())
            .map_err(|e| crate::error::Error::stream(format!("reading {label}"), e))?;
        Ok(stats)
    });
    let (diff_id, size, out) = hashed.finish();
    match done {
        Ok(stats) if stats.edited => (Ok(()), out, Some((diff_id, size))),
        Ok(_) => (Ok(()), out, None),
        Err(e) => (Err(e), out, None),
    }
}
