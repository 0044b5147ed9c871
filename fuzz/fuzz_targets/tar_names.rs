//! One answer to "what is this entry's name": the streaming reader (what
//! the extractor consumes) and the block-level rewriter (what `exclude` and
//! `normalize-timestamps` use) must name every entry of any input alike, and
//! an entry the rewriter drops must never reach the extracted tree.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use occystrap::tarfmt::rewrite::{Action, Entry, Rewrite, clean_path, rewrite_stream};
use occystrap::layer::{ExtractOptions, WhiteoutMode, extract_layer};
use occystrap::tarfmt::{Archive, Stream};

/// Names until the first error, and whether the walk ended cleanly.
fn reader_names(tar: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut a = Archive::new(Stream(tar));
    let mut names = Vec::new();
    loop {
        match a.next_entry() {
            Ok(Some(e)) => names.push(e.path().to_vec()),
            Ok(None) => return (names, true),
            Err(_) => return (names, false),
        }
    }
}

fn has_victim(name: &[u8]) -> bool {
    clean_path(name).split(|&b| b == b'/').any(|c| c == b"victim")
}

struct DropVictim(Vec<Vec<u8>>);

impl Rewrite for DropVictim {
    fn entry(&mut self, e: &mut Entry) -> occystrap::Result<Action> {
        self.0.push(e.path().to_vec());
        Ok(if has_victim(e.path()) {
            Action::Drop
        } else {
            Action::Keep
        })
    }
}

fn tree_has_victim(dir: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        e.file_name() == "victim"
            || (e.file_type().is_ok_and(|t| t.is_dir()) && tree_has_victim(&e.path()))
    })
}

fuzz_target!(|tar: &[u8]| {
    let (read, read_ok) = reader_names(tar);
    let mut rw = DropVictim(Vec::new());
    let mut out = Vec::new();
    let rewritten = rewrite_stream(Cursor::new(tar), &mut out, "fuzz layer", &mut rw);
    let n = read.len().min(rw.0.len());
    assert_eq!(read[..n], rw.0[..n], "the reader and the rewriter disagree");
    if read_ok && rewritten.is_ok() {
        assert_eq!(read, rw.0, "the reader and the rewriter see different entries");
    }
    if rewritten.is_err() {
        return;
    }
    let (after, _) = reader_names(&out);
    assert!(
        !after.iter().any(|n| has_victim(n)),
        "an excluded name survived the rewrite"
    );
    let sandbox = tempfile::Builder::new()
        .prefix("occy-fuzz-names-")
        .tempdir()
        .expect("sandbox");
    let opts = ExtractOptions {
        whiteouts: WhiteoutMode::Apply,
        skip_unsafe: true,
        layer_name: "fuzz layer".into(),
        cancel: Default::default(),
    };
    let _ = extract_layer(sandbox.path(), &out[..], &opts);
    assert!(
        !tree_has_victim(sandbox.path()),
        "the extractor wrote a file the exclude removed"
    );
});
