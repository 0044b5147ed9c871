//! gzip on several threads, with the same bytes for any number of them.
//!
//! The tar is cut into [`BLOCK`]-sized blocks by input offset (not by how
//! the caller's writes fall). Each block is deflated on its own, primed
//! with the last 32 KiB of the block before it as a dictionary (so matches
//! still reach back across the cut), and ended with a sync flush, which
//! byte-aligns it; the last block ends the stream instead. The raw deflate
//! pieces concatenate into one valid deflate stream, and the blocks'
//! CRC-32s combine in order into the trailer's. A block's bytes depend only
//! on its input, its dictionary and the level, so neither which thread
//! compresses it nor how many threads there are changes the output. This is
//! the scheme pigz uses.
//!
//! A block whose bytes are spread almost evenly over all 256 values
//! (random or already-compressed content) is written as stored blocks
//! without searching it: deflate would find next to nothing there, and at
//! levels 1-9 it spends most of its time not finding it (level 1 even grows
//! such data by a few percent). The test looks only at the block's own
//! bytes and uses integer arithmetic, so it is as deterministic as the rest.
//!
//! Memory: at most `threads` blocks in flight, each its input, its output
//! and one deflate state, plus the block being filled. Worker threads are
//! also counted across all streams in the process: several layers are
//! often compressed at once, and once the cores are busy another worker
//! would only add memory, so a stream that finds none free compresses its
//! next block on its own thread (which changes nothing in the output).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Input bytes per block. Large enough that the per-block costs (a fresh
/// deflate state, the dictionary, the 5-byte sync marker, a thread) vanish:
/// on a Debian rootfs tar, 512 KiB and 1 MiB blocks give the same ratio
/// (0.458 at level 6); small enough that a stream holds a few MiB (half
/// the peak memory of 1 MiB blocks when several layers compress at once).
pub(super) const BLOCK: usize = 512 << 10;

/// Deflate's window: how much of the previous block primes the next.
const WINDOW: usize = 32 << 10;

/// gzip OS byte "unknown" (RFC 1952), the same on every platform.
pub(super) const GZIP_OS_UNKNOWN: u8 = 255;

/// Worker threads running now, over every stream in the process.
static WORKERS: AtomicUsize = AtomicUsize::new(0);

/// Takes one of the process's worker slots (as many as cores), if one is
/// free; the slot is given back when the guard drops.
fn worker_slot() -> Option<SlotGuard> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    WORKERS
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < cores).then_some(n + 1)
        })
        .ok()
        .map(|_| SlotGuard)
}

/// A taken worker slot.
struct SlotGuard;

impl Drop for SlotGuard {
    fn drop(&mut self) {
        WORKERS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One block of input on its way through a worker.
struct Block {
    input: Vec<u8>,
    /// Up to [`WINDOW`] bytes that precede `input` (empty for the first).
    dict: Vec<u8>,
    /// The raw deflate bytes for `input`.
    out: Vec<u8>,
    crc: Crc,
    /// Whether this block ends the stream.
    last: bool,
    result: io::Result<()>,
}

impl Block {
    /// Compresses the block (on whichever thread calls it).
    fn run(mut self, level: u32) -> Self {
        self.crc.update(&self.input);
        let level = if level > 0 && looks_incompressible(&self.input) {
            0
        } else {
            level
        };
        self.result = deflate(&self.input, &self.dict, level, self.last, &mut self.out);
        self
    }
}

/// Whether `data`'s byte values are so nearly uniform that deflate could
/// save almost nothing: the collision entropy (-log2 of the sum of the
/// squared byte frequencies, a lower bound on the Shannon entropy) is at
/// least about 7.99 bits per byte. Random data of a block's size sits near
/// 8 - 0.0004; text and binaries are far below. In integers: 256 * sum(c^2)
/// <= n^2 * 1031/1024.
fn looks_incompressible(data: &[u8]) -> bool {
    if data.len() < 4096 {
        return false;
    }
    let mut counts = [0u32; 256];
    for &b in data {
        counts[b as usize] += 1;
    }
    let sum_sq: u128 = counts.iter().map(|&c| u128::from(c) * u128::from(c)).sum();
    let n = data.len() as u128;
    sum_sq * 256 * 1024 <= n * n * 1031
}

/// Deflates `input` raw (no zlib or gzip framing) into `out`, primed with
/// `dict`, ending in a sync flush, or the final block when `last`.
fn deflate(input: &[u8], dict: &[u8], level: u32, last: bool, out: &mut Vec<u8>) -> io::Result<()> {
    let mut c = Compress::new(Compression::new(level), false);
    if level > 0 && !dict.is_empty() {
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    out.clear();
    // Stored output is the input plus 5 bytes per 64 KiB; compressed output
    // is smaller, so this one reservation nearly always suffices.
    out.reserve(input.len() + input.len() / 1024 + 64);
    loop {
        if out.capacity() - out.len() < 256 {
            out.reserve(64 << 10);
        }
        let (before_in, before_out) = (c.total_in(), c.total_out());
        let taken = usize::try_from(before_in)
            .unwrap_or(usize::MAX)
            .min(input.len());
        let status = c
            .compress_vec(&input[taken..], out, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() as usize >= input.len();
        let room_left = out.len() < out.capacity();
        match status {
            Status::StreamEnd => return Ok(()),
            // A sync flush is complete once all input is in and deflate
            // stopped with output space to spare.
            _ if !last && all_in && room_left => return Ok(()),
            _ if room_left && c.total_in() == before_in && c.total_out() == before_out => {
                return Err(io::Error::other("deflate made no progress"));
            }
            _ => {}
        }
    }
}

/// The gzip writer proper: see the module docs.
pub(super) struct ParallelGzip<W: Write> {
    /// Where the gzip stream goes; `None` once finished.
    out: Option<W>,
    level: u32,
    threads: usize,
    /// The block being filled.
    block: Vec<u8>,
    /// The tail of the last block handed off, for the next one.
    dict: Vec<u8>,
    /// Blocks being compressed, oldest first.
    running: VecDeque<JoinHandle<Block>>,
    /// Finished blocks' buffers, for reuse.
    free: Vec<Vec<u8>>,
    /// CRC-32 and length of everything written out so far.
    crc: Crc,
}

impl<W: Write> ParallelGzip<W> {
    /// Writes the gzip header into `out` and starts a stream at `level`
    /// (0..=9) compressing on up to `threads` threads (1: on the caller's).
    pub(super) fn new(mut out: W, level: u32, threads: usize) -> io::Result<Self> {
        // XFL as zlib and flate2 set it: 2 for the slowest level, 4 for the
        // fastest ones.
        let xfl = match level {
            9.. => 2,
            0 | 1 => 4,
            _ => 0,
        };
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, GZIP_OS_UNKNOWN])?;
        Ok(ParallelGzip {
            out: Some(out),
            level,
            threads: threads.max(1),
            block: Vec::with_capacity(BLOCK),
            dict: Vec::new(),
            running: VecDeque::new(),
            free: Vec::new(),
            crc: Crc::new(),
        })
    }

    /// A cleared buffer, reused when one is free.
    fn buffer(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_default()
    }

    /// Hands the current block off (to a worker, or compresses it here
    /// with one thread), first waiting for the oldest when all are busy.
    fn submit(&mut self, last: bool) -> io::Result<()> {
        let mut next = self.buffer();
        next.reserve(BLOCK);
        let input = std::mem::replace(&mut self.block, next);
        let tail = Vec::from(&input[input.len().saturating_sub(WINDOW)..]);
        let block = Block {
            input,
            dict: std::mem::replace(&mut self.dict, tail),
            out: self.buffer(),
            crc: Crc::new(),
            last,
            result: Ok(()),
        };
        let level = self.level;
        while self.running.len() >= self.threads {
            self.wait_oldest()?;
        }
        loop {
            let slot = if self.threads > 1 {
                worker_slot()
            } else {
                None
            };
            if let Some(slot) = slot {
                let handle = std::thread::Builder::new()
                    .name("gzip".into())
                    .spawn(move || {
                        let _slot = slot;
                        block.run(level)
                    })?;
                self.running.push_back(handle);
                return Ok(());
            }
            if self.running.is_empty() {
                // No worker free and none of ours to wait for: here,
                // after the blocks before it.
                return self.emit(block.run(level));
            }
            // Our oldest worker gives its slot back as it ends.
            self.wait_oldest()?;
        }
    }

    /// Waits for the oldest block in flight and writes it out.
    fn wait_oldest(&mut self) -> io::Result<()> {
        let Some(handle) = self.running.pop_front() else {
            return Ok(());
        };
        let block = handle
            .join()
            .map_err(|_| io::Error::other("a gzip thread panicked"))?;
        self.emit(block)
    }

    /// Writes a compressed block out and keeps its buffers.
    fn emit(&mut self, mut block: Block) -> io::Result<()> {
        std::mem::replace(&mut block.result, Ok(()))?;
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))?;
        out.write_all(&block.out)?;
        self.crc.combine(&block.crc);
        for mut buf in [block.input, block.out] {
            buf.clear();
            self.free.push(buf);
        }
        Ok(())
    }

    /// Writes out every block in flight (the block being filled stays, so
    /// that the output does not depend on when this is called) and
    /// flushes `out`.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        while !self.running.is_empty() {
            self.wait_oldest()?;
        }
        match self.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }

    /// Compresses the rest, writes the trailer (CRC-32 and length mod
    /// 2^32) and gives `out` back.
    pub(super) fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.running.is_empty() {
            self.wait_oldest()?;
        }
        let mut out = self
            .out
            .take()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))?;
        out.write_all(&self.crc.sum().to_le_bytes())?;
        out.write_all(&self.crc.amount().to_le_bytes())?;
        Ok(out)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == BLOCK {
            self.submit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        ParallelGzip::flush(self)
    }
}

impl<W: Write> Drop for ParallelGzip<W> {
    /// Waits for the blocks in flight, so that no thread outlives the
    /// stream (their output is dropped).
    fn drop(&mut self) {
        for handle in self.running.drain(..) {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn uniform_bytes_look_incompressible() {
        let mut x = 1u32;
        let noise: Vec<u8> = (0..BLOCK)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect();
        assert!(looks_incompressible(&noise));
        let text: Vec<u8> = b"usr/share/doc/"
            .iter()
            .copied()
            .cycle()
            .take(BLOCK)
            .collect();
        assert!(!looks_incompressible(&text));
        // All 256 values, but skewed: compressible, so not skipped.
        let skewed: Vec<u8> = noise
            .iter()
            .map(|&b| if b < 64 { b } else { b / 8 })
            .collect();
        assert!(!looks_incompressible(&skewed));
        assert!(!looks_incompressible(&noise[..100]));
    }

    /// Every block through the stream, `threads` at once.
    fn gzip(input: &[u8], threads: usize) -> Vec<u8> {
        let mut g = ParallelGzip::new(Vec::new(), 6, threads).unwrap();
        g.write_all(input).unwrap();
        g.finish().unwrap()
    }

    /// With every worker slot taken (other streams busy), blocks are
    /// compressed on the caller's thread, in order, to the same bytes.
    #[test]
    fn busy_workers_change_nothing() {
        let input: Vec<u8> = (0..3 * BLOCK + 123).map(|i| (i % 241) as u8).collect();
        let alone = gzip(&input, 1);
        let mut held = Vec::new();
        while let Some(slot) = worker_slot() {
            held.push(slot);
        }
        assert_eq!(gzip(&input, 4), alone);
        drop(held);
        assert_eq!(gzip(&input, 4), alone);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&alone[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == input);
    }

    #[test]
    fn a_block_ends_byte_aligned_with_a_sync_marker() {
        let input = vec![b'a'; 10_000];
        let mut out = Vec::new();
        deflate(&input, b"", 6, false, &mut out).unwrap();
        assert_eq!(&out[out.len() - 4..], &[0, 0, 0xff, 0xff]);
    }
}
