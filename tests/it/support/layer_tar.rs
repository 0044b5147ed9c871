//! The one tar builder of the tests: layer tars with every kind of entry
//! (owners, devices, FIFOs, PAX xattrs, names the tar crate would refuse).
//! Images, layouts and docker-save tarballs are built on it in `images.rs`.

use super::images::MTIME;

/// Builds a layer tar entry by entry (GNU headers, fixed mtime, root-owned
/// unless told otherwise).
pub struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        TarBuilder::new()
    }
}

fn header(kind: tar::EntryType, mode: u32, owner: (u64, u64), size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(owner.0);
    h.set_gid(owner.1);
    h
}

impl TarBuilder {
    /// An empty tar.
    pub fn new() -> TarBuilder {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Complete);
        TarBuilder { b }
    }

    /// A directory owned by root.
    pub fn dir(self, path: &str, mode: u32) -> TarBuilder {
        self.dir_owned(path, mode, (0, 0))
    }

    /// A directory with an owner.
    pub fn dir_owned(mut self, path: &str, mode: u32, owner: (u64, u64)) -> TarBuilder {
        let mut h = header(tar::EntryType::Directory, mode, owner, 0);
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    /// A regular file owned by root.
    pub fn file(self, path: &str, mode: u32, data: &[u8]) -> TarBuilder {
        self.file_owned(path, mode, (0, 0), data)
    }

    /// A regular file with an owner.
    pub fn file_owned(
        mut self,
        path: &str,
        mode: u32,
        owner: (u64, u64),
        data: &[u8],
    ) -> TarBuilder {
        let mut h = header(tar::EntryType::Regular, mode, owner, data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    /// A regular file carrying xattrs as PAX `SCHILY.xattr.NAME` records.
    pub fn file_xattrs(
        mut self,
        path: &str,
        mode: u32,
        data: &[u8],
        xattrs: &[(&str, &[u8])],
    ) -> TarBuilder {
        let mut records = Vec::new();
        for (k, v) in xattrs {
            records.extend(pax_record(&format!("SCHILY.xattr.{k}"), v));
        }
        let mut h = header(tar::EntryType::XHeader, 0o644, (0, 0), records.len() as u64);
        let name = format!("PaxHeaders.0/{}", path.rsplit('/').next().unwrap_or(path));
        h.set_path(&name[..name.len().min(99)]).unwrap();
        h.set_cksum();
        self.b.append(&h, records.as_slice()).unwrap();
        self.file(path, mode, data)
    }

    /// A symlink.
    pub fn symlink(mut self, path: &str, target: &str) -> TarBuilder {
        let mut h = header(tar::EntryType::Symlink, 0o777, (0, 0), 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    /// A hard link to `target` (in this layer or a lower one).
    pub fn hardlink(mut self, path: &str, target: &str) -> TarBuilder {
        let mut h = header(tar::EntryType::Link, 0o644, (0, 0), 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    /// A FIFO.
    pub fn fifo(mut self, path: &str, mode: u32) -> TarBuilder {
        let mut h = header(tar::EntryType::Fifo, mode, (0, 0), 0);
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    /// A character device.
    pub fn char_device(mut self, path: &str, mode: u32, major: u32, minor: u32) -> TarBuilder {
        let mut h = header(tar::EntryType::Char, mode, (0, 0), 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    /// A regular file whose name is written into the header as is (the tar
    /// crate refuses `..`, which hostile layers use). At most 100 bytes.
    pub fn raw_file(mut self, name: &[u8], data: &[u8]) -> TarBuilder {
        let mut h = header(tar::EntryType::Regular, 0o644, (0, 0), data.len() as u64);
        let field = &mut h.as_old_mut().name;
        field.fill(0);
        field[..name.len()].copy_from_slice(name);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    /// The finished tar.
    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

/// One PAX record: `LEN key=value\n`, where LEN counts itself.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // space, '=', newline
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}
