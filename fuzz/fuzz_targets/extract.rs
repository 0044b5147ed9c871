//! The layer extractor and its whiteout logic. The first byte picks the
//! mode (apply or overlay whiteouts, fail or skip on unsafe entries); the
//! rest is a layer tar, applied twice (onto an empty root, then onto what the
//! first pass left) into `sandbox/root`. Whatever happens, nothing beside the
//! root may appear, change or disappear.
#![no_main]

use std::fs;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use occystrap::layer::{ExtractOptions, WhiteoutMode, extract_layer};

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list sandbox")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, tar)) = data.split_first() else {
        return;
    };
    let sandbox = tempfile::Builder::new()
        .prefix("occy-fuzz-")
        .tempdir()
        .expect("sandbox");
    let root = sandbox.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::write(sandbox.path().join("outside"), b"keep").unwrap();
    fs::create_dir(sandbox.path().join("outside-dir")).unwrap();
    let opts = ExtractOptions {
        whiteouts: if sel & 1 == 0 {
            WhiteoutMode::Apply
        } else {
            WhiteoutMode::Overlay
        },
        skip_unsafe: sel & 2 != 0,
        layer_name: "fuzz layer".into(),
        cancel: Default::default(),
    };
    for _ in 0..2 {
        let _ = extract_layer(&root, tar, &opts);
        assert_eq!(
            listing(sandbox.path()),
            ["outside", "outside-dir", "root"],
            "something appeared beside the root"
        );
        assert_eq!(fs::read(sandbox.path().join("outside")).unwrap(), b"keep");
        assert!(
            listing(&sandbox.path().join("outside-dir")).is_empty(),
            "something appeared in a directory beside the root"
        );
        let meta = fs::symlink_metadata(&root).unwrap();
        assert!(meta.is_dir(), "the root is no longer a directory");
    }
    // Fuzzing runs as root (device nodes, ownership), so modes the layer set
    // do not stop the sandbox from being removed.
});
