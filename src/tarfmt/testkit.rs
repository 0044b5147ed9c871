//! Raw tar building for tests and fuzz targets: headers written field by
//! field, so that layouts no tar library would produce (hostile ones
//! included) can be made. Not part of the supported API.

use super::{BLOCK, CHKSUM, LINKNAME, MAGIC, NAME, PREFIX, SIZE, TYPEFLAG, header_sums, padding};

/// Which magic and version a header carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Magic {
    /// `ustar\0` `00`.
    Ustar,
    /// `ustar  \0`.
    Gnu,
    /// Nothing (pre-POSIX).
    V7,
    /// Any eight bytes.
    Raw([u8; 8]),
}

/// A header block with `kind`, `name` (cut at 100 bytes), `size` and
/// `magic`; mode 0644, owner 0, mtime 1700000000. The checksum is set when
/// the block is pushed.
pub fn header(kind: u8, name: &[u8], size: u64, magic: Magic) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    let n = name.len().min(100);
    b[NAME][..n].copy_from_slice(&name[..n]);
    octal(&mut b[100..108], 0o644);
    octal(&mut b[108..116], 0);
    octal(&mut b[116..124], 0);
    set_size(&mut b, size);
    octal(&mut b[136..148], 1_700_000_000);
    b[TYPEFLAG] = kind;
    let m: &[u8] = match magic {
        Magic::Ustar => b"ustar\x0000",
        Magic::Gnu => b"ustar  \0",
        Magic::V7 => &[0; 8],
        Magic::Raw(ref r) => r,
    };
    b[MAGIC].copy_from_slice(m);
    b
}

/// Writes `v` in octal into a field (base-256 when it does not fit).
pub fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() <= digits {
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        let n = field.len();
        for (i, byte) in v.to_be_bytes().iter().rev().enumerate().take(n) {
            field[n - 1 - i] = *byte;
        }
        field[0] |= 0x80;
    }
}

/// Sets the size field.
pub fn set_size(b: &mut [u8; BLOCK], size: u64) {
    octal(&mut b[SIZE], size);
}

/// Sets the ustar prefix field.
pub fn set_prefix(b: &mut [u8; BLOCK], prefix: &[u8]) {
    let n = prefix.len().min(155);
    b[PREFIX][..n].copy_from_slice(&prefix[..n]);
}

/// Sets the link name field.
pub fn set_link(b: &mut [u8; BLOCK], link: &[u8]) {
    let n = link.len().min(100);
    b[LINKNAME][..n].copy_from_slice(&link[..n]);
}

/// Stores the checksum.
pub fn checksum(b: &mut [u8; BLOCK]) {
    let (sum, _) = header_sums(b);
    let s = format!("{sum:06o}\0 ");
    b[CHKSUM].copy_from_slice(&s.as_bytes()[..8]);
}

/// One PAX record, its length counting itself.
pub fn record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while body + len.to_string().len() != len {
        len = body + len.to_string().len();
    }
    let mut out = format!("{len} ").into_bytes();
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// A tar being built.
#[derive(Clone, Debug, Default)]
pub struct RawTar {
    /// The bytes so far.
    pub bytes: Vec<u8>,
}

impl RawTar {
    /// An empty tar.
    pub fn new() -> RawTar {
        RawTar::default()
    }

    /// Appends a header (its checksum set) and its data, padded.
    pub fn push(&mut self, mut block: [u8; BLOCK], data: &[u8]) -> &mut RawTar {
        checksum(&mut block);
        self.bytes.extend_from_slice(&block);
        self.bytes.extend_from_slice(data);
        self.bytes
            .resize(self.bytes.len() + padding(data.len() as u64), 0);
        self
    }

    /// Appends raw bytes.
    pub fn raw(&mut self, data: &[u8]) -> &mut RawTar {
        self.bytes.extend_from_slice(data);
        self
    }

    /// A PAX header (`x` or `g`) holding `records`.
    pub fn pax(&mut self, kind: u8, records: &[(&[u8], &[u8])]) -> &mut RawTar {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| record(k, v)).collect();
        let h = header(kind, b"././@PaxHeader", data.len() as u64, Magic::Ustar);
        self.push(h, &data)
    }

    /// A GNU long name (`L`) or long link (`K`) header, NUL-terminated.
    pub fn long(&mut self, kind: u8, value: &[u8], magic: Magic) -> &mut RawTar {
        let mut data = value.to_vec();
        data.push(0);
        let h = header(kind, b"././@LongLink", data.len() as u64, magic);
        self.push(h, &data)
    }

    /// A regular file with a GNU header.
    pub fn file(&mut self, name: &[u8], data: &[u8]) -> &mut RawTar {
        let h = header(b'0', name, data.len() as u64, Magic::Gnu);
        self.push(h, data)
    }

    /// A directory with a GNU header.
    pub fn dir(&mut self, name: &[u8]) -> &mut RawTar {
        let h = header(b'5', name, 0, Magic::Gnu);
        self.push(h, &[])
    }

    /// An old GNU sparse file (`S`): `segments` of (offset, data) and the
    /// real size, with extension blocks when there are more than four.
    pub fn old_sparse(
        &mut self,
        name: &[u8],
        real_size: u64,
        segments: &[(u64, &[u8])],
    ) -> &mut RawTar {
        let stored: usize = segments.iter().map(|(_, d)| d.len()).sum();
        let mut h = header(b'S', name, stored as u64, Magic::Gnu);
        octal(&mut h[483..495], real_size);
        let entry = |area: &mut [u8], i: usize, off: u64, len: u64| {
            octal(&mut area[i * 24..i * 24 + 12], off);
            octal(&mut area[i * 24 + 12..i * 24 + 24], len);
        };
        for (i, (off, d)) in segments.iter().take(4).enumerate() {
            entry(&mut h[386..482], i, *off, d.len() as u64);
        }
        let rest: Vec<_> = segments.iter().skip(4).collect();
        if !rest.is_empty() {
            h[482] = 1;
        }
        checksum(&mut h);
        self.bytes.extend_from_slice(&h);
        let chunks: Vec<_> = rest.chunks(21).collect();
        for (ci, chunk) in chunks.iter().enumerate() {
            let mut ext = [0u8; BLOCK];
            for (i, (off, d)) in chunk.iter().enumerate() {
                entry(&mut ext[..504], i, *off, d.len() as u64);
            }
            if ci + 1 < chunks.len() {
                ext[504] = 1;
            }
            self.bytes.extend_from_slice(&ext);
        }
        for (_, d) in segments {
            self.bytes.extend_from_slice(d);
        }
        self.bytes
            .resize(self.bytes.len() + padding(stored as u64), 0);
        self
    }

    /// A PAX 1.0 sparse file: `GNU.sparse.*` records, the map at the start
    /// of the data, then the segments.
    pub fn pax_sparse_10(
        &mut self,
        name: &[u8],
        real_size: u64,
        segments: &[(u64, &[u8])],
    ) -> &mut RawTar {
        let mut map = format!("{}\n", segments.len());
        for (off, d) in segments {
            map.push_str(&format!("{off}\n{}\n", d.len()));
        }
        let mut data = map.into_bytes();
        data.resize(data.len() + padding(data.len() as u64), 0);
        for (_, d) in segments {
            data.extend_from_slice(d);
        }
        let real = real_size.to_string();
        self.pax(
            b'x',
            &[
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.name", name),
                (b"GNU.sparse.realsize", real.as_bytes()),
            ],
        );
        let h = header(
            b'0',
            b"GNUSparseFile.0/sparse",
            data.len() as u64,
            Magic::Ustar,
        );
        self.push(h, &data)
    }

    /// A PAX 0.1 sparse file (`GNU.sparse.map`).
    pub fn pax_sparse_01(
        &mut self,
        name: &[u8],
        real_size: u64,
        segments: &[(u64, &[u8])],
    ) -> &mut RawTar {
        self.pax_sparse_01_versioned(name, real_size, segments, &[])
    }

    /// A PAX 0.1 sparse file whose header also carries `version` records
    /// (`GNU.sparse.major`/`minor`), as some writers other than GNU tar add.
    pub fn pax_sparse_01_versioned(
        &mut self,
        name: &[u8],
        real_size: u64,
        segments: &[(u64, &[u8])],
        version: &[(&[u8], &[u8])],
    ) -> &mut RawTar {
        let map: Vec<String> = segments
            .iter()
            .flat_map(|(o, d)| [o.to_string(), d.len().to_string()])
            .collect();
        let map = map.join(",");
        let (real, n) = (real_size.to_string(), segments.len().to_string());
        let mut records: Vec<(&[u8], &[u8])> = vec![
            (b"GNU.sparse.size", real.as_bytes()),
            (b"GNU.sparse.numblocks", n.as_bytes()),
            (b"GNU.sparse.map", map.as_bytes()),
            (b"path", name),
        ];
        records.extend_from_slice(version);
        self.pax(b'x', &records);
        let data: Vec<u8> = segments.iter().flat_map(|(_, d)| d.to_vec()).collect();
        let h = header(
            b'0',
            b"GNUSparseFile.0/sparse",
            data.len() as u64,
            Magic::Ustar,
        );
        self.push(h, &data)
    }

    /// A PAX 0.0 sparse file (`GNU.sparse.offset`/`numbytes` pairs).
    pub fn pax_sparse_00(
        &mut self,
        name: &[u8],
        real_size: u64,
        segments: &[(u64, &[u8])],
    ) -> &mut RawTar {
        let (real, n) = (real_size.to_string(), segments.len().to_string());
        let mut recs: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"GNU.sparse.size".to_vec(), real.into_bytes()),
            (b"GNU.sparse.numblocks".to_vec(), n.into_bytes()),
        ];
        for (o, d) in segments {
            recs.push((b"GNU.sparse.offset".to_vec(), o.to_string().into_bytes()));
            recs.push((
                b"GNU.sparse.numbytes".to_vec(),
                d.len().to_string().into_bytes(),
            ));
        }
        recs.push((b"path".to_vec(), name.to_vec()));
        let refs: Vec<(&[u8], &[u8])> = recs
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        self.pax(b'x', &refs);
        let data: Vec<u8> = segments.iter().flat_map(|(_, d)| d.to_vec()).collect();
        let h = header(
            b'0',
            b"GNUSparseFile.0/sparse",
            data.len() as u64,
            Magic::Ustar,
        );
        self.push(h, &data)
    }

    /// The tar with its two end-of-archive blocks.
    pub fn finish(&self) -> Vec<u8> {
        let mut v = self.bytes.clone();
        v.resize(v.len() + 2 * BLOCK, 0);
        v
    }
}

/// The four layouts on which readers used to disagree about a name, and
/// more: each is (what it is, the tar, the name an exclude must catch). A
/// reader either refuses the tar or names the entry `victim`.
pub fn name_layouts() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    layouts_readers_read_apart(&mut out);
    layouts_doubled_or_malformed(&mut out);
    out
}

/// Layouts where long-name headers, PAX records, prefixes and magics could
/// each be taken as the name.
fn layouts_readers_read_apart(out: &mut Vec<(&'static str, Vec<u8>)>) {
    let mut t = RawTar::new();
    t.long(b'L', b"victim", Magic::Gnu)
        .pax(b'x', &[(b"path", b"decoy")])
        .file(b"decoy2", b"x");
    out.push(("GNU long name then a PAX path", t.finish()));

    let mut t = RawTar::new();
    t.pax(b'x', &[(b"path", b"victim")])
        .long(b'L', b"decoy", Magic::Gnu)
        .file(b"decoy2", b"x");
    out.push(("PAX path then a GNU long name", t.finish()));

    for version in [*b"01", *b"0\0", *b"  ", *b"\0\0"] {
        let mut t = RawTar::new();
        let mut m = *b"ustar\0\0\0";
        m[6..].copy_from_slice(&version);
        let mut h = header(b'0', b"victim", 1, Magic::Raw(m));
        set_prefix(&mut h, b"dir");
        t.push(h, b"x");
        out.push(("ustar magic, odd version, with a prefix", t.finish()));
    }
    let mut t = RawTar::new();
    let mut h = header(b'0', b"victim", 1, Magic::V7);
    set_prefix(&mut h, b"dir");
    t.push(h, b"x");
    out.push(("no magic, with a prefix", t.finish()));

    let mut t = RawTar::new();
    t.pax(b'x', &[(b"GNU.sparse.name", b"victim")])
        .file(b"decoy", b"x");
    out.push(("PAX GNU.sparse.name without a sparse map", t.finish()));

    let mut t = RawTar::new();
    t.pax_sparse_10(b"victim", 4, &[(0, b"x")]);
    out.push(("PAX 1.0 sparse file named by GNU.sparse.name", t.finish()));

    let mut t = RawTar::new();
    t.long(b'L', b"victim", Magic::V7).file(b"decoy", b"x");
    out.push(("GNU long name header without magic", t.finish()));

    let mut t = RawTar::new();
    t.long(b'L', b"victim", Magic::Ustar).file(b"decoy", b"x");
    out.push(("GNU long name under the ustar magic", t.finish()));
}

/// Layouts that say the name twice, globally, or with stray bytes.
fn layouts_doubled_or_malformed(out: &mut Vec<(&'static str, Vec<u8>)>) {
    let mut t = RawTar::new();
    t.long(b'L', b"victim", Magic::Gnu)
        .long(b'L', b"decoy", Magic::Gnu)
        .file(b"decoy2", b"x");
    out.push(("two GNU long names", t.finish()));

    let mut t = RawTar::new();
    t.pax(b'x', &[(b"path", b"victim"), (b"path", b"decoy")])
        .file(b"decoy2", b"x");
    out.push(("PAX path twice", t.finish()));

    let mut t = RawTar::new();
    t.pax(b'x', &[(b"path", b"victim")])
        .pax(b'x', &[(b"path", b"decoy")])
        .file(b"decoy2", b"x");
    out.push(("two PAX headers", t.finish()));

    let mut t = RawTar::new();
    t.pax(b'g', &[(b"path", b"victim")]).file(b"decoy", b"x");
    out.push(("PAX global path", t.finish()));

    let mut t = RawTar::new();
    let h = header(b'x', b"pax", 0, Magic::V7);
    t.push(h, &[]);
    let rec = record(b"path", b"victim");
    let mut h = header(b'x', b"pax", rec.len() as u64, Magic::V7);
    set_size(&mut h, rec.len() as u64);
    t.push(h, &rec).file(b"decoy", b"x");
    out.push(("PAX header without magic", t.finish()));

    let mut t = RawTar::new();
    t.long(b'L', b"victim\0decoy", Magic::Gnu)
        .file(b"decoy2", b"x");
    out.push(("GNU long name with bytes after its NUL", t.finish()));

    let mut t = RawTar::new();
    t.pax(b'x', &[(b"path", b"victim\0decoy")])
        .file(b"decoy2", b"x");
    out.push(("PAX path with a NUL", t.finish()));

    let mut t = RawTar::new();
    let mut h = header(b'0', b"victim", 1, Magic::Ustar);
    set_prefix(&mut h, b"./");
    t.push(h, b"x");
    out.push(("ustar prefix ./", t.finish()));

    let mut t = RawTar::new();
    let mut h = header(b'0', b"victim", 1, Magic::Gnu);
    set_prefix(&mut h, b"dir");
    t.push(h, b"x");
    out.push((
        "GNU magic with bytes where ustar has its prefix",
        t.finish(),
    ));
}
