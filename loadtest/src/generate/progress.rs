//! Progress while a run is under way: a bar on a terminal, plain lines in logs and CI.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Always the bar.
    Bar,
    /// Always plain lines, every [`LINE_INTERVAL`].
    Lines,
    /// Nothing (the library default for harnesses that print their own).
    Off,
}

/// How often plain progress lines are printed.
pub const LINE_INTERVAL: Duration = Duration::from_secs(5);

/// Counts shown in progress.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Requests finished (completed, failed or overloaded).
    pub done: u64,
    /// Requests that completed.
    pub completed: u64,
    /// Requests in flight now.
    pub in_flight: usize,
}

/// The display, updated by the run's collector.
pub struct Progress {
    kind: Kind,
    total: u64,
    start: Instant,
    last_line: Instant,
}

enum Kind {
    Bar(ProgressBar),
    Lines,
    Off,
}

impl Progress {
    /// A display for a run of `total` requests.
    pub fn new(mode: ProgressMode, total: u64) -> Self {
        let bar = match mode {
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Bar => true,
            ProgressMode::Lines | ProgressMode::Off => false,
        };
        let kind = if bar {
            let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} requests ({per_sec}) {msg}",
            ) {
                pb.set_style(style.progress_chars("=> "));
            }
            Kind::Bar(pb)
        } else if mode == ProgressMode::Off {
            Kind::Off
        } else {
            Kind::Lines
        };
        let now = Instant::now();
        Self {
            kind,
            total,
            start: now,
            last_line: now,
        }
    }

    /// Shows the current counts (lines are rate-limited to one per [`LINE_INTERVAL`]).
    pub fn update(&mut self, c: Counts) {
        match &self.kind {
            Kind::Bar(pb) => {
                pb.set_position(c.done);
                pb.set_message(format!(
                    "ok {} failed {} in flight {}",
                    c.completed,
                    c.done - c.completed,
                    c.in_flight
                ));
            }
            Kind::Lines => {
                if self.last_line.elapsed() >= LINE_INTERVAL {
                    self.last_line = Instant::now();
                    eprintln!(
                        "loadtest: {:>6.1}s {}/{} requests done, {} ok, {} failed, {} in flight",
                        self.start.elapsed().as_secs_f64(),
                        c.done,
                        self.total,
                        c.completed,
                        c.done - c.completed,
                        c.in_flight
                    );
                }
            }
            Kind::Off => {}
        }
    }

    /// Removes the bar before the report is printed.
    pub fn finish(&self) {
        if let Kind::Bar(pb) = &self.kind {
            pb.finish_and_clear();
        }
    }
}
