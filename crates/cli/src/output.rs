//! How every subcommand prints: its report as pretty JSON with `--json`, otherwise as text; and
//! progress bars on stderr, drawn only on a terminal and never with `--json`.

use serde::Serialize;

/// Where and how a subcommand prints.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// `--json`: machine-readable reports, no progress bars.
    pub json: bool,
}

impl Output {
    /// Prints `value` as pretty JSON with `--json`, otherwise `text()`.
    ///
    /// # Errors
    /// `value` does not serialize.
    pub fn print<T: Serialize>(
        self,
        value: &T,
        text: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            println!("{}", text());
        }
        Ok(())
    }

    /// A progress bar of `len` steps (hidden with `--json` or when stderr is not a terminal).
    pub fn progress_bar(self, len: u64) -> indicatif::ProgressBar {
        let bar = indicatif::ProgressBar::new(len);
        if self.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar
    }

    /// A progress bar for work in named phases: the phase, a bar, done/of (see [`show_phase`]).
    pub fn phase_bar(self) -> indicatif::ProgressBar {
        let bar = self.progress_bar(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:8} {wide_bar} {pos}/{len}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    }

    /// One bar per phase, each with its rate and time left, a new one when the phase changes
    /// (the import's `appending` then `projecting`).
    pub fn rate_bars(self) -> RateBars {
        RateBars {
            output: self,
            current: std::sync::Mutex::new(None),
        }
    }
}

/// Shows `done` of `of` in `phase` on a [`Output::phase_bar`].
pub fn show_phase(bar: &indicatif::ProgressBar, phase: &str, done: u64, of: u64) {
    bar.set_message(phase.to_owned());
    bar.set_length(of);
    bar.set_position(done);
}

/// See [`Output::rate_bars`].
pub struct RateBars {
    output: Output,
    current: std::sync::Mutex<Option<(&'static str, indicatif::ProgressBar)>>,
}

impl RateBars {
    /// Shows `done` of `of` in `phase`, finishing the bar of the phase before.
    pub fn show(&self, phase: &'static str, done: u64, of: u64) {
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        if current.as_ref().is_none_or(|(p, _)| *p != phase) {
            if let Some((_, bar)) = current.take() {
                bar.finish_and_clear();
            }
            let bar = self.output.progress_bar(of);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(phase);
            *current = Some((phase, bar));
        }
        if let Some((_, bar)) = current.as_ref() {
            bar.set_length(of);
            bar.set_position(done);
        }
    }

    /// Clears the last bar.
    pub fn finish(&self) {
        if let Ok(mut current) = self.current.lock() {
            if let Some((_, bar)) = current.take() {
                bar.finish_and_clear();
            }
        }
    }
}
