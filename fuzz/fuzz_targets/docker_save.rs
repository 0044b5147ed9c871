//! docker-save tarballs: opening one (indexing the tar, reading and
//! checking manifest.json and the config) never panics, hangs or allocates
//! without bound, whatever the bytes.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use occystrap::source::docker_archive::DockerArchiveSource;

fuzz_target!(|data: &[u8]| {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(data).expect("write input");
    f.flush().expect("flush");
    let _ = DockerArchiveSource::open(f.path(), None);
    let _ = DockerArchiveSource::open(f.path(), Some("example.com/a/b:c"));
});
