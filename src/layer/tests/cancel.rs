//! Cancellation: a cancelled token stops an extraction at its next check,
//! between entries or in the middle of a file's data, and a token of
//! another run does not.

use std::io::Read;

use super::*;
use crate::cancel::CancelToken;

/// A tar reader that cancels `token` once `after` bytes have been read.
struct CancelAfter<'a> {
    tar: &'a [u8],
    read: usize,
    after: usize,
    token: CancelToken,
}

impl Read for CancelAfter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.tar.len() - self.read).min(4096);
        buf[..n].copy_from_slice(&self.tar[self.read..self.read + n]);
        self.read += n;
        if self.read >= self.after {
            self.token.cancel();
        }
        Ok(n)
    }
}

fn layer() -> Vec<u8> {
    let big = "x".repeat(4 << 20);
    Tar::new()
        .dir("a")
        .file("a/small", "s")
        .file("a/big", &big)
        .file("a/after", "z")
        .bytes()
}

fn with_token(token: &CancelToken) -> ExtractOptions {
    ExtractOptions {
        cancel: token.clone(),
        ..opts(WhiteoutMode::Apply, false)
    }
}

#[test]
fn a_cancelled_token_stops_before_the_first_entry() {
    let sb = sandbox();
    let token = CancelToken::new();
    token.cancel();
    let e = extract_layer(&sb.root, &layer()[..], &with_token(&token)).unwrap_err();
    assert!(matches!(e, Error::Interrupted), "{e}");
    assert!(!sb.root.join("a").exists());
}

#[test]
fn cancelling_mid_layer_stops_between_entries_or_inside_a_file() {
    let tar = layer();
    // Cancelled while the header block area is read, inside the big file's
    // data, and near its end: every point stops with Interrupted, and the
    // entry after the big file is never written.
    for after in [1024, 1 << 20, (4 << 20) - 4096] {
        let sb = sandbox();
        let token = CancelToken::new();
        let reader = CancelAfter {
            tar: &tar,
            read: 0,
            after,
            token: token.clone(),
        };
        let e = extract_layer(&sb.root, reader, &with_token(&token)).unwrap_err();
        assert!(matches!(e, Error::Interrupted), "after {after}: {e}");
        assert!(!sb.root.join("a/after").exists(), "after {after}");
    }
}

#[test]
fn another_runs_token_does_not_stop_this_one() {
    let sb = sandbox();
    let other = CancelToken::new();
    other.cancel();
    let mine = CancelToken::new();
    let stats = extract_layer(&sb.root, &layer()[..], &with_token(&mine)).unwrap();
    assert_eq!(stats.entries, 4);
    assert_eq!(fs::read(sb.root.join("a/after")).unwrap(), b"z");
}
