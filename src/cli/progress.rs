//! The progress display: one bar on stderr while layers download, shown only
//! when stderr is a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use occystrap::image::{Image, LayerInfo};
use occystrap::progress::Reporter;

/// Draws download progress with indicatif.
pub struct Bars {
    bar: Option<ProgressBar>,
}

impl Bars {
    /// A display that draws only if stderr is a terminal.
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(8));
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message("resolving");
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Bars { bar }
    }

    /// Removes the bar (before the summary line is printed).
    pub fn clear(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Reporter for Bars {
    fn begin(&self, _image: &Image, fetching: &[LayerInfo]) {
        if let Some(b) = &self.bar {
            b.set_length(fetching.iter().map(|l| l.size).sum());
            b.set_message(format!("0/{} layers", fetching.len()));
        }
    }
    fn layer_bytes(&self, _index: usize, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    fn layer_done(&self, _index: usize) {
        if let Some(b) = &self.bar {
            let msg = b.message();
            if let Some((done, total)) = msg.split_once('/')
                && let Ok(d) = done.parse::<usize>()
            {
                b.set_message(format!("{}/{}", d + 1, total));
            }
        }
    }
    fn end(&self) {
        self.clear();
    }
}

/// `1.5 MiB` style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
