//! Progress bars (indicatif, drawn only on a terminal) and the one-line log of what a stage wrote.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silence log lines (progress bars hide themselves when stderr is not a terminal).
pub fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

/// One log line on stderr.
pub fn log(msg: impl AsRef<str>) {
    if !QUIET.load(Ordering::Relaxed) {
        eprintln!("vlal: {}", msg.as_ref());
    }
}

/// A progress bar of `len` steps labelled `what`.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    if QUIET.load(Ordering::Relaxed) {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    pb
}
