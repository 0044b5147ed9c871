use std::os::unix::fs::MetadataExt;

use super::*;

struct Store {
    _dir: tempfile::TempDir,
    root: StoreRoot,
    run: RunDir,
}

fn store() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let root = StoreRoot::open(dir.path()).unwrap();
    let run = RunDir::create(&root).unwrap();
    Store {
        _dir: dir,
        root,
        run,
    }
}

impl Store {
    /// Every name in the run's directory.
    fn run_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.display(self.run.name()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn write(&self, name: &str, expected: &Digest, size: Option<u64>, data: &[u8]) -> Result<bool> {
        let mut w = BlobWriter::new(&self.root, &self.run, name, expected, size)?;
        w.write_all(data).unwrap();
        w.commit()
    }
}

#[test]
fn a_wrong_digest_or_size_leaves_nothing() {
    let data = b"the blob's bytes";
    let right = Digest::sha256_of(data);
    let n = data.len() as u64;
    // Each variant: a digest or size that does not match what is written.
    let cases: [(&[u8], Digest, Option<u64>); 5] = [
        (data, Digest::sha256_of(b"other"), Some(n)),
        (data, Digest::sha256_of(b"other"), None),
        (data, right.clone(), Some(n + 1)),
        (&data[..3], right.clone(), Some(n)),
        (b"", right.clone(), None),
    ];
    for (bytes, expected, size) in cases {
        let s = store();
        let e = s.write(right.hex(), &expected, size, bytes).unwrap_err();
        assert!(
            matches!(
                e,
                Error::DigestMismatch {
                    kind: Mismatch::BlobDigest,
                    ..
                } | Error::SizeMismatch {
                    kind: Mismatch::BlobSize,
                    ..
                }
            ),
            "{e}"
        );
        assert!(s.run_files().is_empty(), "{:?}", s.run_files());
        assert!(!s.run.has(right.hex()));
    }
}

#[test]
fn a_verified_writer_still_checks_the_size() {
    let data = b"verified elsewhere";
    let d = Digest::sha256_of(data);
    let s = store();
    let mut w = BlobWriter::verified(&s.root, &s.run, d.hex(), &d, Some(99)).unwrap();
    w.file().unwrap().write_all(data).unwrap();
    assert!(w.commit().is_err());
    assert!(s.run_files().is_empty());
    // A hashing writer gives no way around its hash.
    let mut w = BlobWriter::new(&s.root, &s.run, d.hex(), &d, None).unwrap();
    assert!(w.file().is_none());
}

#[test]
fn a_right_blob_is_named_and_published() {
    let data = vec![7u8; 3 * COPY_BUFFER + 5];
    let d = Digest::sha256_of(&data);
    let s = store();
    assert!(
        s.write(d.hex(), &d, Some(data.len() as u64), &data)
            .unwrap()
    );
    assert_eq!(s.run_files(), vec![d.hex().to_string()]);
    assert!(s.run.has(d.hex()));
    let stored = s.root.display(&s.run.rel(d.hex()));
    assert_eq!(std::fs::read(&stored).unwrap(), data);
    let dest = |name: &str| PathBuf::from("blobs").join(name);
    publish_run(&s.root, &s.run, dest).unwrap();
    assert_eq!(std::fs::read(s.root.display(&dest(d.hex()))).unwrap(), data);
    assert!(s.run_files().is_empty());
}

#[test]
fn an_existing_blob_is_kept() {
    let data = b"same content";
    let d = Digest::sha256_of(data);
    let s = store();
    assert!(s.write(d.hex(), &d, None, data).unwrap());
    let first = std::fs::metadata(s.root.display(&s.run.rel(d.hex())))
        .unwrap()
        .ino();
    // A second copy in the run: the first stays, no temp is left.
    assert!(!s.write(d.hex(), &d, None, data).unwrap());
    let meta = std::fs::metadata(s.root.display(&s.run.rel(d.hex()))).unwrap();
    assert_eq!(meta.ino(), first);
    assert_eq!(s.run_files(), vec![d.hex().to_string()]);

    // In place already (another run's): publishing keeps that one.
    let dest = |name: &str| PathBuf::from(name.to_string() + ".blob");
    std::fs::write(s.root.display(&dest(d.hex())), data).unwrap();
    let there = std::fs::metadata(s.root.display(&dest(d.hex())))
        .unwrap()
        .ino();
    publish_run(&s.root, &s.run, dest).unwrap();
    let after = std::fs::metadata(s.root.display(&dest(d.hex()))).unwrap();
    assert_eq!(after.ino(), there);
}

#[test]
fn publishing_refuses_a_planted_link_or_directory() {
    let data = b"x";
    let d = Digest::sha256_of(data);
    for plant in ["symlink", "dir", "parent-symlink"] {
        let s = store();
        assert!(s.write(d.hex(), &d, None, data).unwrap());
        let outside = tempfile::tempdir().unwrap();
        let top = s.root.display(std::path::Path::new("blobs"));
        let dest = |name: &str| PathBuf::from("blobs").join(name);
        match plant {
            "symlink" => {
                std::fs::create_dir(&top).unwrap();
                std::os::unix::fs::symlink(outside.path().join("f"), top.join(d.hex())).unwrap();
            }
            "dir" => std::fs::create_dir_all(top.join(d.hex())).unwrap(),
            _ => std::os::unix::fs::symlink(outside.path(), &top).unwrap(),
        }
        assert!(publish_run(&s.root, &s.run, dest).is_err(), "{plant}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // Nothing moved: the run still holds its blob.
        assert_eq!(s.run_files(), vec![d.hex().to_string()], "{plant}");
    }
}

#[test]
fn slices_copy_through_the_hash_or_link_when_verified() {
    let data = vec![3u8; COPY_BUFFER + 1];
    let d = Digest::sha256_of(&data);
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), &data).unwrap();

    // An input that outlives the run is never linked.
    let s = store();
    let range = FileSlice::range(
        std::sync::Arc::new(src.path().to_path_buf()),
        0,
        data.len() as u64,
    );
    assert!(!link_verified(&s.root, &s.run, d.hex(), &range).unwrap());
    assert!(!is_whole_temp(&range));
    // Copied through the hash: a slice that does not hash right is refused.
    let mut w = BlobWriter::new(&s.root, &s.run, d.hex(), &d, Some(data.len() as u64)).unwrap();
    assert_eq!(w.copy_slice(&range).unwrap(), data.len() as u64);
    assert!(w.commit().unwrap());
    let short = FileSlice::range(std::sync::Arc::new(src.path().to_path_buf()), 1, 10);
    let s2 = store();
    let mut w = BlobWriter::new(&s2.root, &s2.run, d.hex(), &d, None).unwrap();
    w.copy_slice(&short).unwrap();
    assert!(w.commit().is_err());
    assert!(s2.run_files().is_empty());
    // A verified one is copied in the kernel.
    let s3 = store();
    let mut w =
        BlobWriter::verified(&s3.root, &s3.run, d.hex(), &d, Some(data.len() as u64)).unwrap();
    w.copy_slice(&range).unwrap();
    assert!(w.commit().unwrap());

    // A whole temp file on the store's filesystem is linked, not copied.
    let s4 = store();
    let temp = tempfile::NamedTempFile::new_in(s4.root.path()).unwrap();
    std::fs::write(temp.path(), &data).unwrap();
    let slice = FileSlice::temp(temp.into_temp_path(), data.len() as u64);
    assert!(is_whole_temp(&slice));
    assert!(link_verified(&s4.root, &s4.run, d.hex(), &slice).unwrap());
    let a = std::fs::metadata(slice.path()).unwrap().ino();
    let b = std::fs::metadata(s4.root.display(&s4.run.rel(d.hex())))
        .unwrap()
        .ino();
    assert_eq!(a, b);
    assert!(s4.run.has(d.hex()));
}
