//! Measures `compress::encode` throughput: each input file is streamed
//! (from the page cache, after a first read) into a sink at each level and
//! thread count asked for.
//!
//! ```text
//! cargo run --release --example compress_bench -- [--zstd] [--levels 1,6,9] [--threads 1,2] FILE...
//! ```
//!
//! Prints, per file, level and thread count, the wall-clock rate, the rate
//! per CPU-second (user + system of the whole process, so it counts every
//! thread and is less noisy on a shared machine), the ratio, and the
//! blob digest (the same for every thread count) and the process's peak
//! RSS so far.

use std::time::Instant;

use occystrap::compress::{Encoding, encode_with_threads};

/// User + system CPU seconds of this process so far (all threads), and
/// its peak RSS in MiB.
fn usage() -> (f64, f64) {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(usage.ru_utime) + secs(usage.ru_stime),
        usage.ru_maxrss as f64 / 1024.0,
    )
}

/// Parses "1,2,3".
fn list(arg: Option<String>) -> Vec<i32> {
    arg.unwrap_or_default()
        .split(',')
        .filter_map(|l| l.parse().ok())
        .collect()
}

fn main() -> std::io::Result<()> {
    let mut encoding = Encoding::Gzip;
    let mut levels: Option<Vec<i32>> = None;
    let mut threads = vec![occystrap::compress::default_threads() as i32];
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--zstd" => encoding = Encoding::Zstd,
            "--levels" => levels = Some(list(args.next())),
            "--threads" => threads = list(args.next()),
            _ => files.push(arg),
        }
    }
    let levels = levels.unwrap_or_else(|| vec![encoding.default_level()]);
    for file in &files {
        // Once through, so that the timed runs read from the page cache.
        std::io::copy(&mut std::fs::File::open(file)?, &mut std::io::sink())?;
        for &level in &levels {
            for &t in &threads {
                let input = std::fs::File::open(file)?;
                let (wall, (cpu, _)) = (Instant::now(), usage());
                let e =
                    encode_with_threads(input, std::io::sink(), encoding, Some(level), t as usize)?;
                let wall = wall.elapsed().as_secs_f64();
                let (cpu_after, rss) = usage();
                let mb = e.tar_size as f64 / 1e6;
                println!(
                    "{file} {encoding} level {level} threads {t}: {mb:.0} MB, {:.0} MB/s wall, \
                     {:.0} MB/cpu-s, ratio {:.3}, {}, peak RSS {rss:.0} MiB",
                    mb / wall,
                    mb / (cpu_after - cpu),
                    e.size as f64 / e.tar_size as f64,
                    &e.digest.to_string()[..19],
                );
            }
        }
    }
    Ok(())
}
