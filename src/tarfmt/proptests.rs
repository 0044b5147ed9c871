//! Property test (the CI twin of the `tar_names` fuzz target): on generated
//! hostile header sequences, the streaming reader (what the extractor
//! consumes) and the rewriter (what `exclude` uses) name every entry alike,
//! and what an exclude drops never reaches the extracted tree.

use std::path::Path;

use proptest::prelude::*;

use super::testkit::{Magic, RawTar, header, record, set_link, set_prefix};
use super::tests::Names;
use super::{Archive, Stream};
use crate::layer::{ExtractOptions, WhiteoutMode, extract_layer};
use crate::tarfmt::rewrite::{clean_path, rewrite_stream};

const NAMES: &[&[u8]] = &[
    b"a",
    b"b",
    b"victim",
    b"./victim",
    b"dir/victim",
    b"dir",
    b"a/b",
    b"victim/",
];
const TARGETS: &[&[u8]] = &[b"a", b"b", b"dir/c"];

#[derive(Clone, Debug)]
enum Piece {
    Long(u8, usize, u8),
    Pax(u8, Vec<(u8, usize)>),
    Entry {
        kind: u8,
        name: usize,
        prefix: Option<usize>,
        magic: u8,
        link: usize,
        data: Vec<u8>,
    },
    Garbage(Vec<u8>),
}

fn magic(sel: u8) -> Magic {
    match sel % 5 {
        0 => Magic::Gnu,
        1 => Magic::Ustar,
        2 => Magic::V7,
        3 => Magic::Raw(*b"ustar\x0001"),
        _ => Magic::Raw(*b"ustar \0\0"),
    }
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        (
            prop::sample::select(vec![b'L', b'K']),
            0..NAMES.len(),
            any::<u8>()
        )
            .prop_map(|(k, n, m)| Piece::Long(k, n, m)),
        (
            prop::sample::select(vec![b'x', b'x', b'g']),
            prop::collection::vec((0u8..10, 0..NAMES.len()), 0..4)
        )
            .prop_map(|(k, r)| Piece::Pax(k, r)),
        (
            prop::sample::select(vec![b'0', b'0', b'5', b'1', b'2', b'S', 0, b'7', b'6']),
            0..NAMES.len(),
            prop::option::of(0..NAMES.len()),
            any::<u8>(),
            0..TARGETS.len(),
            prop::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(|(kind, name, prefix, magic, link, data)| Piece::Entry {
                kind,
                name,
                prefix,
                magic,
                link,
                data,
            }),
        prop::collection::vec(any::<u8>(), 512..=512).prop_map(Piece::Garbage),
    ]
}

fn build(pieces: &[Piece]) -> Vec<u8> {
    let mut t = RawTar::new();
    for p in pieces {
        match p {
            Piece::Long(kind, n, m) => {
                t.long(*kind, NAMES[*n], magic(*m));
            }
            Piece::Pax(kind, recs) => {
                let data: Vec<u8> = recs
                    .iter()
                    .flat_map(|&(k, n)| {
                        let name = NAMES[n];
                        match k {
                            0 | 1 => record(b"path", name),
                            2 => record(b"linkpath", TARGETS[n % TARGETS.len()]),
                            3 => record(b"GNU.sparse.name", name),
                            4 => record(b"GNU.sparse.major", b"1"),
                            5 => record(b"GNU.sparse.minor", b"0"),
                            6 => record(b"GNU.sparse.realsize", b"8"),
                            7 => record(b"size", b"1"),
                            8 => record(b"mtime", b"12.5"),
                            _ => record(b"comment", name),
                        }
                    })
                    .collect();
                let h = header(*kind, b"././@PaxHeader", data.len() as u64, Magic::Ustar);
                t.push(h, &data);
            }
            Piece::Entry {
                kind,
                name,
                prefix,
                magic: m,
                link,
                data,
            } => {
                let mut h = header(*kind, NAMES[*name], data.len() as u64, magic(*m));
                if let Some(p) = prefix {
                    set_prefix(&mut h, NAMES[*p]);
                }
                set_link(&mut h, TARGETS[*link]);
                t.push(h, data);
            }
            Piece::Garbage(g) => {
                t.raw(g);
            }
        }
    }
    t.finish()
}

/// Names until the first error.
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
    clean_path(name)
        .split(|&b| b == b'/')
        .any(|c| c == b"victim")
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn reader_and_rewriter_agree_on_names(pieces in prop::collection::vec(piece(), 0..8)) {
        let tar = build(&pieces);
        let (read, read_ok) = reader_names(&tar);
        let mut rw = Names { names: Vec::new(), drop: Some(b"victim".to_vec()) };
        let mut out = Vec::new();
        let rewritten = rewrite_stream(std::io::Cursor::new(&tar[..]), &mut out, "l", &mut rw);
        let n = read.len().min(rw.names.len());
        prop_assert_eq!(&read[..n], &rw.names[..n]);
        if read_ok && rewritten.is_ok() {
            prop_assert_eq!(&read, &rw.names);
        }
        if rewritten.is_ok() {
            // Nothing named victim is left for the extractor to see.
            let (after, _) = reader_names(&out);
            prop_assert!(!after.iter().any(|n| has_victim(n)), "{:?}", after);
            let dir = tempfile::tempdir().unwrap();
            let opts = ExtractOptions {
                whiteouts: WhiteoutMode::Apply,
                skip_unsafe: true,
                layer_name: "l".into(),
                cancel: Default::default(),
            };
            let _ = extract_layer(dir.path(), &out[..], &opts);
            prop_assert!(!tree_has_victim(dir.path()));
        }
    }
}
