use std::fs;

use super::testutil::*;
use super::*;
use crate::tarfmt::write::{encode_record, set_checksum, write_numeric};
use crate::tarfmt::{
    BLOCK, CHKSUM, MTIME, SIZE, TYPEFLAG, ZEROS, header_sums, padding, parse_numeric,
};

fn keep_all(tar: &[u8]) -> (Vec<u8>, Stats, KeepAll) {
    let mut k = KeepAll::default();
    let (out, stats) = rewrite_bytes(tar, &mut k).unwrap();
    (out, stats, k)
}

#[test]
fn untouched_tar_crate_output_is_byte_identical() {
    let tar = tar_crate_tar();
    let (out, stats, k) = keep_all(&tar);
    assert!(out == tar, "a keep-everything rewrite changed bytes");
    assert!(!stats.edited);
    assert_eq!(stats.entries, 11);
    let listed: Vec<String> = tar_crate_list(&tar).into_iter().map(|l| l.0).collect();
    let seen: Vec<String> = k
        .paths
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert_eq!(seen, listed, "full paths as the tar crate reads them");
    assert!(k.links.iter().any(|l| l.len() > 255), "long link target");
}

#[test]
fn untouched_gnu_tar_output_keeps_every_block() {
    for format in ["pax", "gnu"] {
        let (tar, _) = gnu_tree_tar(format);
        let (out, stats, k) = keep_all(&tar);
        assert!(!stats.edited, "{format}");
        // Everything but GNU tar's blocking padding, then two zero blocks.
        let body = out.len() - 2 * BLOCK;
        assert_eq!(&out[..body], &tar[..body], "{format}");
        assert!(out[body..].iter().all(|&b| b == 0));
        assert!(tar[body..].iter().all(|&b| b == 0));
        assert_eq!(gnu_list(&out), gnu_list(&tar), "{format}");
        let listed: Vec<String> = tar_crate_list(&tar).into_iter().map(|l| l.0).collect();
        let seen: Vec<String> = k
            .paths
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        assert_eq!(seen, listed, "{format}: full paths");
        assert!(
            seen.iter().any(|p| p.len() > 255),
            "{format}: long name seen"
        );
    }
}

/// Sets every mtime to `ts` and removes PAX time records, like
/// normalize-timestamps (which has its own tests on top of these).
struct Times(u64);

impl Rewrite for Times {
    fn entry(&mut self, e: &mut Entry) -> Result<Action> {
        e.remove_pax(|k| k == b"atime" || k == b"ctime" || k == b"mtime");
        e.set_mtime(self.0);
        Ok(Action::Keep)
    }
    fn global(&mut self, h: &mut ExtHeader) -> Result<()> {
        h.remove_records(|k| k == b"mtime");
        h.set_mtime(self.0);
        Ok(())
    }
}

#[test]
fn edited_gnu_pax_tar_keeps_xattrs_and_drops_emptied_headers() {
    let (tar, cap) = gnu_tree_tar("pax");
    let before = raw_headers(&tar);
    assert!(
        before.iter().filter(|h| h.kind == b'x').count() > 5,
        "GNU tar writes a PAX header (atime, ctime) for every file"
    );
    let (out, stats) = rewrite_bytes(&tar, &mut Times(1_700_000_000)).unwrap();
    assert!(stats.edited);
    for h in raw_headers(&out) {
        assert_eq!(h.mtime, 1_700_000_000, "header {:?}", h.name.escape_ascii());
        if h.kind == b'x' {
            let recs = parse_records(&h.data).unwrap();
            assert!(!recs.is_empty(), "an emptied PAX header was written");
            for r in &recs {
                assert!(
                    !matches!(r.key.as_slice(), b"atime" | b"ctime" | b"mtime"),
                    "time record left"
                );
                // Lengths were encoded again and still count themselves.
                let mut enc = Vec::new();
                encode_record(&r.key, &r.value, &mut enc);
                assert!(h.data.windows(enc.len()).any(|w| w == enc.as_slice()));
            }
        }
    }
    let out_s = String::from_utf8_lossy(&out);
    assert!(out_s.contains("29 SCHILY.xattr.user.foo=bar\n"));
    if cap {
        let mut want = b"57 SCHILY.xattr.security.capability=".to_vec();
        want.extend_from_slice(CAP);
        want.push(b'\n');
        assert!(out.windows(want.len()).any(|w| w == want.as_slice()));
    }
    // What remains are the headers holding something: xattrs, long
    // names (path, linkpath).
    let xs = raw_headers(&out)
        .into_iter()
        .filter(|h| h.kind == b'x')
        .count();
    let holding = before
        .iter()
        .filter(|h| h.kind == b'x')
        .filter(|h| {
            parse_records(&h.data)
                .unwrap()
                .iter()
                .any(|r| !matches!(r.key.as_slice(), b"atime" | b"ctime" | b"mtime"))
        })
        .count();
    // Two long directories, the long file, the long symlink target, etc/conf, usr/bin/ping.
    assert_eq!(holding, if cap { 6 } else { 5 });
    assert_eq!(xs, holding, "{}", gnu_list(&out));
    // GNU tar reads it back: same entries, times all 2023-11-14.
    let listing = gnu_list(&out);
    for line in listing.lines() {
        assert!(line.contains("2023-11-14 22:13:20"), "{line}");
    }
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| l.split_whitespace().skip(5).collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(strip(&listing), strip(&gnu_list(&tar)));
    assert_eq!(listing.matches(" link to ./").count(), 2, "{listing}");
    // And extracts it with the xattrs.
    let x = tempfile::tempdir().unwrap();
    fs::write(x.path().join("t.tar"), &out).unwrap();
    fs::create_dir(x.path().join("root")).unwrap();
    gnu_tar(
        &x.path().join("root"),
        &["--xattrs", "--xattrs-include=*", "-xf", "../t.tar"],
    );
    let mut v = [0u8; 16];
    let n = rustix::fs::getxattr(x.path().join("root/etc/conf"), "user.foo", &mut v).unwrap();
    assert_eq!(&v[..n], b"bar");
    let (_, long) = long_path();
    let meta = fs::metadata(x.path().join("root").join(long)).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.mtime(), 1_700_000_000);
}

#[test]
fn edited_gnu_format_tar_sets_times_in_long_name_headers() {
    let (tar, _) = gnu_tree_tar("gnu");
    assert!(raw_headers(&tar).iter().any(|h| h.kind == b'L'));
    assert!(raw_headers(&tar).iter().any(|h| h.kind == b'K'));
    let (out, _) = rewrite_bytes(&tar, &mut Times(0)).unwrap();
    for h in raw_headers(&out) {
        assert_eq!(h.mtime, 0);
    }
    let a = tar_crate_list(&tar);
    let b = tar_crate_list(&out);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.0, x.2, &x.3, &x.4), (&y.0, y.2, &y.3, &y.4));
        assert_eq!(y.1, 0);
    }
    gnu_list(&out);
}

/// Drops the entries under a prefix.
struct DropUnder(&'static [u8]);

impl Rewrite for DropUnder {
    fn entry(&mut self, e: &mut Entry) -> Result<Action> {
        Ok(if clean_path(e.path()).starts_with(self.0) {
            Action::Drop
        } else {
            Action::Keep
        })
    }
}

#[test]
fn dropping_takes_the_extension_headers_along() {
    for format in ["pax", "gnu"] {
        let (tar, _) = gnu_tree_tar(format);
        let (out, stats) = rewrite_bytes(&tar, &mut DropUnder(b"long")).unwrap();
        assert_eq!(stats.dropped, 4, "{format}");
        let before = tar_crate_list(&tar);
        let after = tar_crate_list(&out);
        let want: Vec<_> = before
            .iter()
            .filter(|l| !l.0.trim_start_matches("./").starts_with("long"))
            .collect();
        assert_eq!(after.iter().collect::<Vec<_>>(), want, "{format}");
        // No long-name header survives: the only long thing left is
        // the symlink's target, in a K or a PAX linkpath.
        let raw = raw_headers(&out);
        assert!(!raw.iter().any(|h| h.kind == b'L'), "{format}");
        let long_x = raw
            .iter()
            .filter(|h| String::from_utf8_lossy(&h.data).contains(" path="))
            .count();
        assert_eq!(long_x, 0, "{format}");
        gnu_list(&out);
    }
}

#[test]
fn pax_record_lengths_count_themselves() {
    for vlen in 0..1200 {
        let value = vec![b'v'; vlen];
        let mut rec = Vec::new();
        encode_record(b"SCHILY.xattr.user.k", &value, &mut rec);
        let space = rec.iter().position(|&b| b == b' ').unwrap();
        let n: usize = std::str::from_utf8(&rec[..space]).unwrap().parse().unwrap();
        assert_eq!(n, rec.len(), "value length {vlen}");
        let parsed = parse_records(&rec).unwrap();
        assert_eq!(parsed[0].value, value);
    }
    // Where the length gains a digit, some lengths cannot be: a record
    // of 10 (or 100) bytes would need the digit it does not have.
    let enc = |v: &[u8]| {
        let mut r = Vec::new();
        encode_record(b"a", v, &mut r);
        r
    };
    assert_eq!(enc(b"1234"), b"9 a=1234\n");
    assert_eq!(enc(b"12345"), b"11 a=12345\n");
    assert_eq!(enc(&[b'x'; 93]).len(), 99);
    assert_eq!(&enc(&[b'x'; 93])[..3], b"99 ");
    assert_eq!(enc(&[b'x'; 94]).len(), 101);
    assert_eq!(&enc(&[b'x'; 94])[..4], b"101 ");
}

fn raw_header(kind: u8, name: &[u8], size: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    write_numeric(&mut h[108..116], 0);
    write_numeric(&mut h[116..124], 0);
    write_numeric(&mut h[SIZE], size);
    write_numeric(&mut h[MTIME], 12345);
    h[TYPEFLAG] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    set_checksum(&mut h);
    h
}

fn member(tar: &mut Vec<u8>, kind: u8, name: &[u8], data: &[u8]) {
    tar.extend_from_slice(&raw_header(kind, name, data.len() as u64));
    tar.extend_from_slice(data);
    tar.extend_from_slice(&ZEROS[..padding(data.len() as u64)]);
}

fn records(rs: &[(&str, &str)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in rs {
        encode_record(k.as_bytes(), val.as_bytes(), &mut v);
    }
    v
}

#[test]
fn global_headers_lose_time_records_and_survive_drops() {
    let mut tar = Vec::new();
    member(
        &mut tar,
        b'g',
        b"g1",
        &records(&[("mtime", "5"), ("comment", "hi")]),
    );
    member(&mut tar, b'g', b"g2", &records(&[("mtime", "6")]));
    member(&mut tar, b'0', b"a", b"a\n");
    tar.extend_from_slice(&[0; 1024]);
    let (out, _) = rewrite_bytes(&tar, &mut Times(7)).unwrap();
    let raw = raw_headers(&out);
    assert_eq!(raw.len(), 2, "the emptied global header is gone");
    assert_eq!(raw[0].kind, b'g');
    assert_eq!(raw[0].data, b"14 comment=hi\n");
    assert_eq!(raw[1].mtime, 7);
    // A dropped entry keeps the global header before it.
    let (out, _) = rewrite_bytes(&tar, &mut DropUnder(b"a")).unwrap();
    let raw = raw_headers(&out);
    assert_eq!(raw.iter().map(|h| h.kind).collect::<Vec<_>>(), b"gg");
}

#[test]
fn end_of_archive_is_two_zero_blocks() {
    let mut tar = Vec::new();
    member(&mut tar, b'0', b"a", b"abc");
    // No end blocks at all.
    let (out, _) = rewrite_bytes(&tar, &mut KeepAll::default()).unwrap();
    assert_eq!(out.len(), tar.len() + 1024);
    // A lot of padding after them.
    let mut padded = tar.clone();
    padded.extend_from_slice(&[0; 20 * BLOCK]);
    let (out2, _) = rewrite_bytes(&padded, &mut KeepAll::default()).unwrap();
    assert_eq!(out2, out);
}

#[test]
fn base256_sizes_and_signed_checksums_are_read() {
    let mut tar = Vec::new();
    let mut h = raw_header(b'0', b"big", 0);
    h[SIZE].fill(0);
    h[SIZE.start] = 0x80;
    h[SIZE.end - 1] = 3;
    set_checksum(&mut h);
    tar.extend_from_slice(&h);
    tar.extend_from_slice(b"abc");
    tar.extend_from_slice(&ZEROS[..509]);
    // A header with a high byte, its checksum summed as signed bytes.
    let mut h = raw_header(b'0', "ü".as_bytes(), 1);
    let (_, signed) = header_sums(&h);
    h[CHKSUM].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
    tar.extend_from_slice(&h);
    tar.extend_from_slice(b"x");
    tar.extend_from_slice(&ZEROS[..511]);
    let (out, stats, k) = keep_all(&tar);
    assert_eq!(stats.entries, 2);
    assert_eq!(&out[..tar.len()], &tar[..]);
    assert_eq!(k.paths, vec![b"big".to_vec(), "ü".as_bytes().to_vec()]);
}

#[test]
fn materialized_link_holds_the_content() {
    struct DropReadme(Option<(u64, u64)>);
    impl Rewrite for DropReadme {
        fn entry(&mut self, e: &mut Entry) -> Result<Action> {
            if e.path() == b"usr/share/doc/README" {
                self.0 = Some((e.data_offset(), e.size()));
                return Ok(Action::Drop);
            }
            if e.is_hardlink() {
                let (data_offset, size) = self.0.unwrap();
                return Ok(Action::Materialize { data_offset, size });
            }
            Ok(Action::Keep)
        }
    }
    let (out, stats) = rewrite_bytes(&tar_crate_tar(), &mut DropReadme(None)).unwrap();
    assert_eq!((stats.dropped, stats.materialized), (1, 1));
    let l = tar_crate_list(&out);
    let link = l.iter().find(|e| e.0 == "etc/doc-link").unwrap();
    assert_eq!(link.2, b'0');
    assert_eq!(link.3, b"docs\n");
    assert!(link.4.is_empty());
    gnu_list(&out);
}

#[test]
fn old_gnu_and_pax_sparse_files_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let f = fs::File::create(dir.path().join("sparse")).unwrap();
    use std::os::unix::fs::FileExt;
    // Many data islands, so the old GNU format needs extension blocks.
    for i in 0..40u64 {
        f.write_at(format!("island {i}").as_bytes(), i * 65536 + 100)
            .unwrap();
    }
    f.set_len(41 * 65536).unwrap();
    drop(f);
    for format in ["gnu", "pax"] {
        let tar = gnu_tar(
            dir.path(),
            &[&format!("--format={format}"), "-S", "-cf", "-", "sparse"],
        );
        let (out, stats) = rewrite_bytes(&tar, &mut Times(0)).unwrap();
        assert!(stats.edited);
        let (_, _, k) = keep_all(&tar);
        assert_eq!(k.paths, vec![b"sparse".to_vec()], "{format}");
        let x = tempfile::tempdir().unwrap();
        fs::write(x.path().join("t.tar"), &out).unwrap();
        gnu_tar(x.path(), &["-xf", "t.tar"]);
        let a = fs::read(dir.path().join("sparse")).unwrap();
        let b = fs::read(x.path().join("sparse")).unwrap();
        assert!(a == b, "{format}: sparse content differs after the rewrite");
    }
}

#[test]
fn hostile_tars_fail_cleanly() {
    let good = tar_crate_tar();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated data", good[..BLOCK * 8 + 100].to_vec()),
        ("truncated header", good[..BLOCK + 100].to_vec()),
        ("bad checksum", {
            let mut t = good.clone();
            t[5] ^= 1;
            t
        }),
        ("size past the end", {
            let mut t = Vec::new();
            t.extend_from_slice(&raw_header(b'0', b"a", 1 << 40));
            t.extend_from_slice(&[0; 1024]);
            t
        }),
        ("huge base-256 size", {
            let mut h = raw_header(b'0', b"a", 0);
            h[SIZE].fill(0xff);
            h[SIZE.start] = 0x80;
            set_checksum(&mut h);
            h.to_vec()
        }),
        ("negative size", {
            let mut h = raw_header(b'0', b"a", 0);
            h[SIZE].fill(0xff);
            set_checksum(&mut h);
            h.to_vec()
        }),
        ("non-octal size", {
            let mut h = raw_header(b'0', b"a", 0);
            h[SIZE.start..SIZE.start + 3].copy_from_slice(b"9x9");
            set_checksum(&mut h);
            h.to_vec()
        }),
        ("huge PAX header", {
            let mut t = raw_header(b'x', b"x", 1 << 30).to_vec();
            t.extend_from_slice(&[0; 4096]);
            t
        }),
        ("many PAX headers before one entry", {
            let mut t = Vec::new();
            let big = records(&[("comment", &"c".repeat(1 << 20))]);
            for _ in 0..20 {
                member(&mut t, b'x', b"x", &big);
            }
            member(&mut t, b'0', b"a", b"");
            t
        }),
        ("malformed PAX record", {
            let mut t = Vec::new();
            member(&mut t, b'x', b"x", b"99 path=a\n");
            member(&mut t, b'0', b"a", b"");
            t
        }),
        ("PAX record without newline", {
            let mut t = Vec::new();
            member(&mut t, b'x', b"x", b"9 path=ab");
            member(&mut t, b'0', b"a", b"");
            t
        }),
        ("bad PAX size", {
            let mut t = Vec::new();
            member(&mut t, b'x', b"x", &records(&[("size", "-1")]));
            member(&mut t, b'0', b"a", b"");
            t
        }),
        ("PAX size past the end", {
            let mut t = Vec::new();
            member(&mut t, b'x', b"x", &records(&[("size", "99999999999")]));
            member(&mut t, b'0', b"a", b"");
            t
        }),
    ];
    for (what, tar) in cases {
        let r = rewrite_bytes(&tar, &mut Times(0));
        let Err(e) = r else {
            panic!("{what}: accepted");
        };
        let msg = e.to_string();
        assert!(msg.starts_with("test layer: "), "{what}: {msg}");
        assert!(!msg.chars().any(char::is_control), "{what}: {msg:?}");
    }
}

#[test]
fn mangled_tars_never_panic() {
    let mut tars = vec![
        tar_crate_tar(),
        gnu_tree_tar("pax").0,
        gnu_tree_tar("gnu").0,
    ];
    for t in &mut tars {
        t.truncate(t.len().min(16 * 1024));
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..3000 {
        let mut t = tars[round % tars.len()].clone();
        for _ in 0..1 + next() % 8 {
            let i = (next() as usize) % t.len();
            t[i] = next() as u8;
            // Keep the checksum right half the time, so the damage
            // reaches the parsing behind it.
            if next() % 2 == 0 {
                let start = i - i % BLOCK;
                if start + BLOCK <= t.len() {
                    let mut b: [u8; BLOCK] = t[start..start + BLOCK].try_into().unwrap();
                    set_checksum(&mut b);
                    t[start..start + BLOCK].copy_from_slice(&b);
                }
            }
        }
        let _ = rewrite_bytes(&t, &mut Times(0));
        let _ = rewrite_bytes(&t, &mut DropUnder(b"usr"));
    }
}

#[test]
fn numeric_fields() {
    assert_eq!(parse_numeric(b"0000644\0"), Some(0o644));
    assert_eq!(parse_numeric(b"   644 \0"), Some(0o644));
    assert_eq!(parse_numeric(b"\0\0\0\0"), Some(0));
    assert_eq!(parse_numeric(b"12 4"), None);
    let mut f = [0u8; 12];
    write_numeric(&mut f, 0o777_7777_7777);
    assert_eq!(&f, b"77777777777\0");
    write_numeric(&mut f, 1 << 40);
    assert_eq!(f[0], 0x80);
    assert_eq!(parse_numeric(&f), Some(1 << 40));
    assert_eq!(clean_path(b"./usr/share/"), b"usr/share");
    assert_eq!(clean_path(b"/./a"), b"a");
    assert_eq!(clean_path(b"./"), b"");
    assert_eq!(clean_path(b"."), b"");
}

/// Sets every entry's mtime, as `normalize-timestamps` does.
struct SetTimes(u64);

impl Rewrite for SetTimes {
    fn entry(&mut self, e: &mut Entry) -> Result<Action> {
        e.set_mtime(self.0);
        Ok(Action::Keep)
    }
}

fn forward(tar: &[u8], rw: &mut dyn Rewrite) -> Result<(Vec<u8>, Stats)> {
    let mut out = Vec::new();
    let stats = rewrite_forward(tar, &mut out, "test layer", rw)?;
    Ok((out, stats))
}

#[test]
fn forward_rewrite_writes_what_the_file_rewrite_writes() {
    let mut tar = tar_crate_tar();
    // Padding to a 10 KiB record and bytes after it: read, not kept.
    tar.extend_from_slice(&[0u8; 8 * BLOCK]);
    tar.extend_from_slice(b"trailing");
    let (from_file, s1) = rewrite_bytes(&tar, &mut SetTimes(7)).unwrap();
    let (streamed, s2) = forward(&tar, &mut SetTimes(7)).unwrap();
    assert!(s1.edited);
    assert_eq!(s1, s2);
    assert!(streamed == from_file, "the two rewrites differ");
}

#[test]
fn forward_rewrite_that_edits_nothing_gives_the_input_back() {
    let base = tar_crate_tar();
    let mut padded = base.clone();
    padded.extend_from_slice(&[0u8; 8 * BLOCK]);
    let mut trailing = padded.clone();
    trailing.extend_from_slice(b"after the end");
    // No end-of-archive blocks at all.
    let end = base.len() - 2 * BLOCK;
    let unterminated = base[..end].to_vec();
    for tar in [base, padded, trailing, unterminated] {
        let (out, stats) = forward(&tar, &mut KeepAll::default()).unwrap();
        assert!(!stats.edited);
        assert!(out == tar, "{} bytes in, {} out", tar.len(), out.len());
    }
}

#[test]
fn forward_rewrite_fails_on_what_needs_reading_back_or_is_cut_short() {
    struct MaterializeSecond(u32);
    impl Rewrite for MaterializeSecond {
        fn entry(&mut self, _e: &mut Entry) -> Result<Action> {
            self.0 += 1;
            Ok(match self.0 {
                2 => Action::Materialize {
                    data_offset: BLOCK as u64,
                    size: 1,
                },
                _ => Action::Keep,
            })
        }
    }
    let tar = tar_crate_tar();
    let e = forward(&tar, &mut MaterializeSecond(0)).unwrap_err();
    let why = std::error::Error::source(&e).map(|s| s.to_string());
    assert!(
        why.as_deref().is_some_and(|w| w.contains("backwards")),
        "{e}: {why:?}"
    );
    // The same rewrite over the file works.
    rewrite_bytes(&tar, &mut MaterializeSecond(0)).unwrap();
    let e = forward(&tar[..tar.len() / 2 + 100], &mut KeepAll::default()).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}
