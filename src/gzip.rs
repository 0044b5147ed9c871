//! A gzip reader without the CRC-32.
//!
//! Every layer's decompressed bytes are hashed with sha256 and checked
//! against the diff_id, which the gzip CRC could only repeat; skipping it
//! saves a few percent of a pull's CPU. The member sizes (ISIZE) are still
//! checked, since they cost nothing and catch a truncated member early.

use std::io::{self, BufRead, Read};

use flate2::bufread::DeflateDecoder;

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

/// Decompresses one or more concatenated gzip members (RFC 1952). Bytes
/// after the last member that do not start another are left unread.
pub struct GzipReader<R: BufRead> {
    state: State<R>,
}

enum State<R: BufRead> {
    Header {
        input: R,
        first: bool,
    },
    Body {
        inflate: DeflateDecoder<R>,
        size: u32,
    },
    Done,
    Failed,
}

impl<R: BufRead> GzipReader<R> {
    /// Reads gzip data from `input`.
    pub fn new(input: R) -> Self {
        GzipReader {
            state: State::Header { input, first: true },
        }
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("gzip: {msg}"))
}

fn byte(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b).map_err(|_| bad("header cut short"))?;
    Ok(b[0])
}

/// Skips a zero-terminated field.
fn skip_cstr(r: &mut impl Read) -> io::Result<()> {
    while byte(r)? != 0 {}
    Ok(())
}

fn header(r: &mut impl Read) -> io::Result<()> {
    let mut fixed = [0u8; 10];
    r.read_exact(&mut fixed)
        .map_err(|_| bad("header cut short"))?;
    if fixed[0] != 0x1f || fixed[1] != 0x8b {
        return Err(bad("not a gzip stream"));
    }
    if fixed[2] != 8 {
        return Err(bad("unknown compression method"));
    }
    let flags = fixed[3];
    if flags & FEXTRA != 0 {
        let len = u16::from_le_bytes([byte(r)?, byte(r)?]);
        let skipped = io::copy(&mut r.take(u64::from(len)), &mut io::sink())?;
        if skipped != u64::from(len) {
            return Err(bad("header cut short"));
        }
    }
    if flags & FNAME != 0 {
        skip_cstr(r)?;
    }
    if flags & FCOMMENT != 0 {
        skip_cstr(r)?;
    }
    if flags & FHCRC != 0 {
        byte(r)?;
        byte(r)?;
    }
    Ok(())
}

impl<R: BufRead> Read for GzipReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match std::mem::replace(&mut self.state, State::Failed) {
                State::Header { mut input, first } => {
                    let more = !input.fill_buf()?.is_empty();
                    if !more {
                        if first {
                            return Err(bad("empty stream"));
                        }
                        self.state = State::Done;
                        continue;
                    }
                    header(&mut input)?;
                    self.state = State::Body {
                        inflate: DeflateDecoder::new(input),
                        size: 0,
                    };
                }
                State::Body { mut inflate, size } => {
                    if buf.is_empty() {
                        self.state = State::Body { inflate, size };
                        return Ok(0);
                    }
                    let n = inflate.read(buf)?;
                    if n > 0 {
                        // ISIZE is the length modulo 2^32.
                        let size = size.wrapping_add(n as u32);
                        self.state = State::Body { inflate, size };
                        return Ok(n);
                    }
                    let mut input = inflate.into_inner();
                    let mut trailer = [0u8; 8];
                    input
                        .read_exact(&mut trailer)
                        .map_err(|_| bad("stream cut short"))?;
                    let isize = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes"));
                    if isize != size {
                        return Err(bad("member size does not match its trailer"));
                    }
                    let next = input.fill_buf()?;
                    self.state = if next.first() == Some(&0x1f) {
                        State::Header {
                            input,
                            first: false,
                        }
                    } else {
                        State::Done
                    };
                }
                State::Done => {
                    self.state = State::Done;
                    return Ok(0);
                }
                State::Failed => return Err(bad("read after an error")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn unzip(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        GzipReader::new(io::BufReader::with_capacity(7, data)).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn matches_flate2_on_one_and_several_members() {
        let a: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let b = b"second member".to_vec();
        assert_eq!(unzip(&gz(&a, 6)).unwrap(), a);
        let mut two = gz(&a, 1);
        two.extend(gz(&b, 9));
        let mut want = a.clone();
        want.extend(&b);
        assert_eq!(unzip(&two).unwrap(), want);
        assert_eq!(unzip(&gz(b"", 6)).unwrap(), b"");
    }

    #[test]
    fn optional_header_fields_are_skipped() {
        let mut e = flate2::GzBuilder::new()
            .filename("layer.tar")
            .comment("made by a test")
            .extra(vec![1, 2, 3, 4])
            .write(Vec::new(), flate2::Compression::default());
        e.write_all(b"payload").unwrap();
        assert_eq!(unzip(&e.finish().unwrap()).unwrap(), b"payload");
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 31 % 256) as u8).collect();
        let z = gz(&data, 6);
        assert!(unzip(&z[..z.len() - 3]).is_err());
        assert!(unzip(&z[..z.len() / 2]).is_err());
        assert!(unzip(&z[..5]).is_err());
        assert!(unzip(b"").is_err());
        assert!(unzip(b"not gzip at all").is_err());
        let mut wrong_size = z.clone();
        let n = wrong_size.len();
        wrong_size[n - 1] ^= 1;
        assert!(unzip(&wrong_size).is_err());
    }
}
