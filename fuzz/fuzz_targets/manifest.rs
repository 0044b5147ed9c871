//! Registry documents: the manifest, index and config parsers, the
//! classification of a manifest response (first byte picks the
//! Content-Type), and platform choice from an index.
#![no_main]

use libfuzzer_sys::fuzz_target;
use occystrap::image::Platform;
use occystrap::wire::{Index, Manifest, choose_platform, classify_for_fuzzing, parse_diff_ids};

const CONTENT_TYPES: [Option<&str>; 8] = [
    None,
    Some("application/json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
    Some("application/vnd.example.unknown+json"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let ct = CONTENT_TYPES[usize::from(sel) % CONTENT_TYPES.len()];
    let _ = classify_for_fuzzing(ct, body);
    let _ = serde_json::from_slice::<Manifest>(body);
    if let Ok(index) = serde_json::from_slice::<Index>(body) {
        let want = Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: (sel & 0x80 != 0).then(|| "v7".to_string()),
        };
        if let Ok(d) = choose_platform(&index, &want) {
            assert!(index.manifests.iter().any(|m| m.digest == d.digest));
        }
    }
    let _ = parse_diff_ids(body);
});
