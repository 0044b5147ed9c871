//! Image references: parsing never panics, and what a parsed reference
//! prints parses back to the same reference.
#![no_main]

use libfuzzer_sys::fuzz_target;
use occystrap::reference::Reference;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(r) = Reference::parse(s) else {
        return;
    };
    let _ = (r.registry_host(), r.repository_name(), r.manifest_ref());
    let shown = r.to_string();
    let again = Reference::parse(&shown)
        .unwrap_or_else(|e| panic!("{s:?} parsed, but its display {shown:?} does not: {e}"));
    assert_eq!(again.to_string(), shown, "display of {s:?} is not stable");
});
