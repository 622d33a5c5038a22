//! Progress bars (indicatif, drawn only on a terminal) and the log lines of what a stage wrote.
//!
//! Three levels: `-q` prints errors only, the default prints each stage's summary lines, `-v`
//! adds the details. Inside `vlal run` a stage's own lines (every file written, every round's
//! score) count as details: `run` prints a progress bar and one line per finished run instead.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

const QUIET: u8 = 0;
const NORMAL: u8 = 1;
const VERBOSE: u8 = 2;

static LEVEL: AtomicU8 = AtomicU8::new(NORMAL);
static DEMOTED: AtomicBool = AtomicBool::new(false);

/// `-q` (errors only) or `-v` (details too); `-q` wins.
pub fn set_level(quiet: bool, verbose: bool) {
    let l = match (quiet, verbose) {
        (true, _) => QUIET,
        (false, true) => VERBOSE,
        (false, false) => NORMAL,
    };
    LEVEL.store(l, Ordering::Relaxed);
}

/// Silence log lines (progress bars hide themselves when stderr is not a terminal).
pub fn set_quiet(q: bool) {
    set_level(q, false);
}

pub fn is_quiet() -> bool {
    LEVEL.load(Ordering::Relaxed) == QUIET
}

fn level() -> u8 {
    LEVEL.load(Ordering::Relaxed)
}

/// While the guard lives, [`log`] lines are details (shown under `-v` only): `vlal run` prints
/// its own summary instead of every stage's lines.
pub struct Demoted(bool);

pub fn demote() -> Demoted {
    Demoted(DEMOTED.swap(true, Ordering::Relaxed))
}

impl Drop for Demoted {
    fn drop(&mut self) {
        DEMOTED.store(self.0, Ordering::Relaxed);
    }
}

/// A stage's log line on stderr (a detail inside `vlal run`).
pub fn log(msg: impl AsRef<str>) {
    let min = if DEMOTED.load(Ordering::Relaxed) {
        VERBOSE
    } else {
        NORMAL
    };
    if level() >= min {
        eprintln!("vlal: {}", msg.as_ref());
    }
}

/// A line that is shown at the default level even inside `vlal run` (a summary, a warning),
/// printed above `pb` when it is drawn.
pub fn say(pb: Option<&ProgressBar>, msg: impl AsRef<str>) {
    if level() < NORMAL {
        return;
    }
    let line = format!("vlal: {}", msg.as_ref());
    match pb {
        Some(pb) if !pb.is_hidden() => pb.println(line),
        _ => eprintln!("{line}"),
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
    // inside `vlal run` only its own bar over the rounds is drawn
    if is_quiet() || DEMOTED.load(Ordering::Relaxed) {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demotion_nests_and_restores() {
        assert!(!DEMOTED.load(Ordering::Relaxed));
        {
            let _a = demote();
            {
                let _b = demote();
                assert!(DEMOTED.load(Ordering::Relaxed));
            }
            assert!(DEMOTED.load(Ordering::Relaxed));
        }
        assert!(!DEMOTED.load(Ordering::Relaxed));
    }
}
