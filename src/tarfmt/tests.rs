//! Tests of the shared tar reading: hostile headers, sparse files, and the
//! agreement of the streaming reader (the extractor's) with the rewriter.

use std::io::Cursor;
use std::time::{Duration, Instant};

use super::testkit::{Magic, RawTar, header, name_layouts, octal, set_size};
use super::*;
use crate::layer::{ExtractOptions, WhiteoutMode, extract_layer};
use crate::tarfmt::rewrite::{Action, Entry as RwEntry, Rewrite, clean_path, rewrite_stream};

/// The names the streaming reader gives, or its error.
pub(crate) fn reader_names(tar: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut a = Archive::new(Stream(tar));
    let mut names = Vec::new();
    while let Some(e) = a.next_entry().map_err(|e| e.to_string())? {
        names.push(e.path().to_vec());
    }
    Ok(names)
}

/// Keeps everything (or drops names with a component `drop`), recording
/// each entry's name.
pub(crate) struct Names {
    pub names: Vec<Vec<u8>>,
    pub drop: Option<Vec<u8>>,
}

impl Rewrite for Names {
    fn entry(&mut self, e: &mut RwEntry) -> crate::Result<Action> {
        self.names.push(e.path().to_vec());
        let hit = self.drop.as_ref().is_some_and(|d| {
            clean_path(e.path())
                .split(|&b| b == b'/')
                .any(|c| c == &d[..])
        });
        Ok(if hit { Action::Drop } else { Action::Keep })
    }
}

/// The names the rewriter gives, its output when `drop` names a component
/// to exclude, or its error.
pub(crate) fn rewriter_names(
    tar: &[u8],
    drop: Option<&[u8]>,
) -> Result<(Vec<Vec<u8>>, Vec<u8>), String> {
    let mut rw = Names {
        names: Vec::new(),
        drop: drop.map(<[u8]>::to_vec),
    };
    let mut out = Vec::new();
    rewrite_stream(Cursor::new(tar), &mut out, "test layer", &mut rw).map_err(|e| e.to_string())?;
    Ok((rw.names, out))
}

fn one_line(msg: &str) {
    assert!(!msg.contains('\n'), "not one line: {msg}");
}

#[test]
fn every_name_layout_is_refused_or_named_alike() {
    for (what, tar) in name_layouts() {
        let reader = reader_names(&tar);
        let rewriter = rewriter_names(&tar, Some(b"victim"));
        match (&reader, &rewriter) {
            (Ok(a), Ok((b, out))) => {
                assert_eq!(a, b, "{what}: the reader and the rewriter disagree");
                // What the exclude wrote holds nothing the reader would
                // call victim.
                let after = reader_names(out).unwrap();
                assert!(
                    after
                        .iter()
                        .all(|n| !clean_path(n).split(|&b| b == b'/').any(|c| c == b"victim")),
                    "{what}: victim survived the exclude: {after:?}"
                );
            }
            (Err(a), Err(b)) => {
                one_line(a);
                one_line(b);
            }
            _ => panic!("{what}: one refused and one did not: {reader:?} / {rewriter:?}"),
        }
    }
}

#[test]
fn ambiguous_layouts_are_refused() {
    let refused = [
        "GNU long name then a PAX path",
        "PAX path then a GNU long name",
        "ustar magic, odd version, with a prefix",
        "no magic, with a prefix",
        "PAX GNU.sparse.name without a sparse map",
        "GNU long name header without magic",
        "two GNU long names",
        "PAX path twice",
        "two PAX headers",
        "PAX global path",
        "PAX header without magic",
        "GNU long name with bytes after its NUL",
        "PAX path with a NUL",
    ];
    for (what, tar) in name_layouts() {
        let r = reader_names(&tar);
        if refused.contains(&what) {
            let e = r.expect_err(what);
            one_line(&e);
            assert!(e.contains("tar header at byte"), "{what}: {e}");
        } else {
            let names = r.unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                names.iter().map(|n| clean_path(n)).collect::<Vec<_>>(),
                [&b"victim"[..]],
                "{what}"
            );
        }
    }
}

#[test]
fn agreeing_long_name_and_pax_path_are_accepted() {
    let mut t = RawTar::new();
    t.long(b'L', b"same/name", Magic::Gnu)
        .pax(b'x', &[(b"path", b"same/name")])
        .file(b"short", b"x");
    assert_eq!(reader_names(&t.finish()).unwrap(), [b"same/name".to_vec()]);
}

/// A tar whose extension header of `kind` declares `size` bytes; the data
/// is not there, since nothing may be read before the cap applies.
fn bomb(kind: u8, size: u64) -> Vec<u8> {
    let magic = if matches!(kind, b'L' | b'K') {
        Magic::Gnu
    } else {
        Magic::Ustar
    };
    let mut t = RawTar::new();
    t.push(header(kind, b"././@Bomb", size, magic), &[]);
    t.file(b"after", b"x");
    t.finish()
}

#[test]
fn metadata_bombs_are_refused_before_allocating() {
    for kind in [b'x', b'g', b'L', b'K'] {
        for size in [META_LIMIT + 1, 512 << 20, 2 << 30, u64::MAX >> 2] {
            let tar = bomb(kind, size);
            let e = reader_names(&tar).unwrap_err();
            one_line(&e);
            assert!(e.contains("over the 1048576-byte limit"), "{e}");
            assert!(e.contains("\"././@Bomb\""), "names the header: {e}");
            let e = rewriter_names(&tar, None).unwrap_err();
            one_line(&e);
            assert!(e.contains("over the 1048576-byte limit"), "{e}");
        }
    }
}

#[test]
fn metadata_cap_counts_the_whole_run_of_headers() {
    // Many small headers before one entry add up.
    let mut t = RawTar::new();
    let big = vec![b'a'; 200_000];
    for _ in 0..6 {
        t.pax(b'g', &[(b"comment", &big)]);
    }
    t.file(b"f", b"x");
    let tar = t.finish();
    assert!(reader_names(&tar).unwrap_err().contains("limit"));
    assert!(rewriter_names(&tar, None).unwrap_err().contains("limit"));
    // So do many empty ones.
    let mut t = RawTar::new();
    for _ in 0..4000 {
        t.push(header(b'g', b"g", 0, Magic::Ustar), &[]);
    }
    t.file(b"f", b"x");
    let tar = t.finish();
    assert!(reader_names(&tar).unwrap_err().contains("limit"));
    assert!(rewriter_names(&tar, None).unwrap_err().contains("limit"));
    // Globals between entries do not add up across entries.
    let mut t = RawTar::new();
    for i in 0..8 {
        t.pax(b'g', &[(b"comment", &big)]);
        t.file(format!("f{i}").as_bytes(), b"x");
    }
    assert_eq!(reader_names(&t.finish()).unwrap().len(), 8);
}

const TIB: u64 = 1 << 40;

fn extract(tar: &[u8]) -> (tempfile::TempDir, crate::Result<crate::layer::ExtractStats>) {
    let dir = tempfile::tempdir().unwrap();
    let opts = ExtractOptions {
        whiteouts: WhiteoutMode::Apply,
        skip_unsafe: false,
        layer_name: "layer 0 (test)".into(),
        cancel: Default::default(),
    };
    let r = extract_layer(dir.path(), tar, &opts);
    (dir, r)
}

fn read_at(path: &std::path::Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

type Builder = fn(&mut RawTar, &[u8], u64, &[(u64, &[u8])]) -> ();

fn formats() -> Vec<(&'static str, Builder)> {
    vec![
        ("old GNU", |t, n, r, s| {
            t.old_sparse(n, r, s);
        }),
        ("PAX 0.0", |t, n, r, s| {
            t.pax_sparse_00(n, r, s);
        }),
        ("PAX 0.1", |t, n, r, s| {
            t.pax_sparse_01(n, r, s);
        }),
        ("PAX 1.0", |t, n, r, s| {
            t.pax_sparse_10(n, r, s);
        }),
        ("PAX 0.1 with its version named", |t, n, r, s| {
            t.pax_sparse_01_versioned(
                n,
                r,
                s,
                &[(b"GNU.sparse.major", b"0"), (b"GNU.sparse.minor", b"1")],
            );
        }),
    ]
}

#[test]
fn terabyte_holes_cost_nothing() {
    for (what, build) in formats() {
        let mut t = RawTar::new();
        let segs: &[(u64, &[u8])] = &[(0, b"head"), (TIB / 2, b"middle"), (TIB - 4, b"tail")];
        build(&mut t, b"big", TIB, segs);
        let tar = t.finish();
        assert!(tar.len() < 8192, "{what}: {} bytes", tar.len());
        let start = Instant::now();
        let (dir, r) = extract(&tar);
        r.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: {:?}",
            start.elapsed()
        );
        let p = dir.path().join("big");
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.len(), TIB, "{what}");
        assert_eq!(read_at(&p, 0, 4), b"head", "{what}");
        assert_eq!(read_at(&p, TIB / 2, 6), b"middle", "{what}");
        assert_eq!(read_at(&p, TIB - 4, 4), b"tail", "{what}");
        assert_eq!(read_at(&p, 4, 8), [0; 8], "{what}");
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() < 1024, "{what}: holes were written");
        // The other readers pass over it without looking at the holes.
        let start = Instant::now();
        assert_eq!(reader_names(&tar).unwrap(), [b"big".to_vec()], "{what}");
        assert_eq!(rewriter_names(&tar, None).unwrap().0, [b"big".to_vec()]);
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn many_tiny_segments() {
    // PAX 0.0 spends about 60 bytes of metadata per segment: this many
    // fit the cap in every format.
    let n = 10_000u64;
    let data: Vec<(u64, &[u8])> = (0..n).map(|i| (i * (64 << 20), &b"z"[..])).collect();
    for (what, build) in formats() {
        let mut t = RawTar::new();
        build(&mut t, b"many", n * (64 << 20), &data);
        let tar = t.finish();
        let start = Instant::now();
        let (dir, r) = extract(&tar);
        r.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(start.elapsed() < Duration::from_secs(20), "{what}");
        let p = dir.path().join("many");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), n * (64 << 20));
        assert_eq!(read_at(&p, 7 * (64 << 20), 2), b"z\0", "{what}");
    }
}

#[test]
fn bad_sparse_maps_are_refused() {
    type Case<'a> = (&'a str, u64, Vec<(u64, &'a [u8])>);
    let cases: Vec<Case> = vec![
        ("out of order", 100, vec![(50, b"a"), (10, b"b")]),
        ("overlapping", 100, vec![(10, b"aaaa"), (12, b"b")]),
        ("beyond the real size", 100, vec![(99, b"ab")]),
        (
            "real size over the limit",
            MAX_SPARSE_REAL_SIZE + 1,
            vec![(0, b"a")],
        ),
        ("offset overflowing", u64::MAX, vec![(u64::MAX - 1, b"abc")]),
    ];
    for (what, build) in formats() {
        for (case, real, segs) in &cases {
            let mut t = RawTar::new();
            build(&mut t, b"bad", *real, segs);
            let tar = t.finish();
            let e = reader_names(&tar).expect_err(&format!("{what}: {case}"));
            one_line(&e);
            assert!(e.contains("sparse"), "{what}: {case}: {e}");
            assert!(rewriter_names(&tar, None).is_err() || *what == *"PAX 1.0");
            let (_, r) = extract(&tar);
            let e = r.expect_err(case).to_string();
            assert!(e.contains("layer 0 (test)") && e.contains("\"bad\""), "{e}");
        }
    }
}

#[test]
fn sparse_map_not_matching_the_data_is_refused() {
    // Old GNU: the header says 10 bytes stored, the map 1.
    let mut t = RawTar::new();
    t.old_sparse(b"s", 100, &[(0, b"a")]);
    let mut tar = t.finish();
    let mut h: [u8; BLOCK] = tar[..BLOCK].try_into().unwrap();
    set_size(&mut h, 10);
    testkit::checksum(&mut h);
    tar[..BLOCK].copy_from_slice(&h);
    assert!(reader_names(&tar).unwrap_err().contains("stores 10"));
    // Too many segments.
    let mut recs = String::new();
    for i in 0..(MAX_SPARSE_SEGMENTS + 1) {
        recs.push_str(&format!("{i},0,"));
    }
    recs.pop();
    let mut t = RawTar::new();
    let n = (MAX_SPARSE_SEGMENTS + 1).to_string();
    t.pax(
        b'x',
        &[
            (b"GNU.sparse.size", b"100000000"),
            (b"GNU.sparse.numblocks", n.as_bytes()),
            (b"GNU.sparse.map", recs.as_bytes()),
        ],
    )
    .file(b"s", b"");
    assert!(reader_names(&t.finish()).unwrap_err().contains("segments"));
    // Unknown PAX sparse versions.
    // (0.0 and 0.1 named explicitly are the formats GNU tar writes unnamed.)
    for (major, minor) in [(&b"2"[..], &b"0"[..]), (b"1", b"1"), (b"0", b"2")] {
        let mut t = RawTar::new();
        t.pax(
            b'x',
            &[
                (b"GNU.sparse.major", major),
                (b"GNU.sparse.minor", minor),
                (b"GNU.sparse.name", b"s"),
                (b"GNU.sparse.realsize", b"10"),
            ],
        )
        .file(b"x", b"");
        let e = reader_names(&t.finish()).unwrap_err();
        assert!(e.contains("unsupported PAX sparse format"), "{e}");
    }
    // A PAX 1.0 map that never ends, or claims a huge count.
    for map in [vec![b'1'; 600], b"99999999\n".to_vec(), b"1\n5\n".to_vec()] {
        let mut t = RawTar::new();
        t.pax(
            b'x',
            &[
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.name", b"s"),
                (b"GNU.sparse.realsize", b"10"),
            ],
        );
        let h = header(b'0', b"GNUSparseFile.0/s", map.len() as u64, Magic::Ustar);
        t.push(h, &map);
        let e = reader_names(&t.finish()).unwrap_err();
        assert!(e.contains("sparse map"), "{e}");
    }
    // Old GNU sparse without the GNU magic.
    let mut t = RawTar::new();
    let mut h = header(b'S', b"s", 0, Magic::Ustar);
    octal(&mut h[483..495], 10);
    t.push(h, &[]);
    assert!(reader_names(&t.finish()).unwrap_err().contains("GNU magic"));
}

#[test]
fn sparse_content_is_right_in_every_format() {
    let segs: &[(u64, &[u8])] = &[(3, b"abc"), (4096, b"defg"), (10_000, b"")];
    for (what, build) in formats() {
        let mut t = RawTar::new();
        build(&mut t, b"dir/s", 10_000, segs);
        t.file(b"after", b"ok");
        let (dir, r) = extract(&t.finish());
        r.unwrap_or_else(|e| panic!("{what}: {e}"));
        let data = std::fs::read(dir.path().join("dir/s")).unwrap();
        let mut want = vec![0u8; 10_000];
        want[3..6].copy_from_slice(b"abc");
        want[4096..4100].copy_from_slice(b"defg");
        assert_eq!(data, want, "{what}");
        assert_eq!(std::fs::read(dir.path().join("after")).unwrap(), b"ok");
    }
}

#[test]
fn extraction_refuses_bombs_with_the_layer_and_entry() {
    for kind in [b'x', b'g', b'L', b'K'] {
        let (dir, r) = extract(&bomb(kind, 512 << 20));
        let e = r.unwrap_err().to_string();
        one_line(&e);
        assert!(e.contains("layer 0 (test)") && e.contains("@Bomb"), "{e}");
        assert!(!dir.path().join("after").exists());
    }
}

#[test]
fn absurd_sizes_are_refused_not_overflowed() {
    for size in [u64::MAX, u64::MAX - 511, MAX_ENTRY_SIZE + 1] {
        let mut t = RawTar::new();
        let mut h = header(b'0', b"huge", 0, Magic::Gnu);
        octal(&mut h[SIZE], size);
        t.push(h, b"");
        let tar = t.finish();
        assert!(
            reader_names(&tar)
                .unwrap_err()
                .contains("more than any tar")
        );
        assert!(rewriter_names(&tar, None).is_err());
        let s = size.to_string();
        let mut t = RawTar::new();
        t.pax(b'x', &[(b"size", s.as_bytes())]).file(b"huge", b"");
        assert!(reader_names(&t.finish()).is_err());
    }
}

#[test]
fn names_and_links_longer_than_the_cap_are_refused() {
    let long = vec![b'n'; MAX_NAME + 1];
    let fits = vec![b'n'; MAX_NAME];
    let mut t = RawTar::new();
    t.pax(b'x', &[(b"path", &fits)]).file(b"x", b"");
    assert_eq!(reader_names(&t.finish()).unwrap(), vec![fits.clone()]);
    for key in [&b"path"[..], b"linkpath"] {
        let mut t = RawTar::new();
        t.pax(b'x', &[(key, &long)]).file(b"x", b"");
        let e = reader_names(&t.finish()).unwrap_err();
        assert!(e.contains("more than the 8192 allowed"), "{e}");
    }
    let mut t = RawTar::new();
    t.long(b'L', &long, Magic::Gnu).file(b"x", b"");
    assert!(reader_names(&t.finish()).is_err());
}

/// A buffered stream's skip drops bytes inside its buffer and across
/// refills, lands exactly, and says UnexpectedEof past the end.
#[test]
fn buffered_stream_skips_within_and_across_its_buffer() {
    use std::io::{BufReader, Read};
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut s = BufStream(BufReader::with_capacity(64, Cursor::new(data.clone())));
    let mut one = [0u8; 1];
    let mut at = 0usize;
    for step in [0u64, 1, 10, 63, 64, 65, 1000, 4096] {
        s.skip(step).unwrap();
        at += step as usize;
        s.read_exact(&mut one).unwrap();
        assert_eq!(one[0], data[at], "after skipping {step}");
        at += 1;
    }
    let left = (data.len() - at) as u64;
    let err = s.skip(left + 1).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}
