//! `eventfold archive` and `eventfold restore`: closed streams' old events to compressed month
//! files and back.

use std::path::PathBuf;

use clap::Args;

use crate::context::Global;
use crate::output::show_phase;

/// `archive`'s options.
#[derive(Debug, Args)]
pub struct Archive {
    /// The cut-off: YYYY-MM-DD (00:00 UTC) or an RFC 3339 time.
    #[arg(long)]
    before: String,
    /// The archive directory (created if missing; later runs add to its manifest).
    #[arg(long)]
    to: PathBuf,
}

impl Archive {
    /// Verifies the chain, writes the files and turns the events into stubs (with a progress
    /// bar); prints the run.
    ///
    /// # Errors
    /// A bad cut-off, a broken chain (nothing archived), file system or store failures.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let before = parse_cutoff(&self.before)?;
        let backend = global.open().await?;
        let output = global.output();
        let bar = output.phase_bar();
        let report = eventfold_app::integrity::archive::archive(
            backend.events.clone(),
            before,
            &self.to,
            &|phase, done, of| show_phase(&bar, phase, done, of),
        )
        .await?;
        bar.finish_and_clear();
        output.print(&report, || {
            let mut text = format!(
                "{} events of {} closed streams before {} archived into {} files ({} bytes; {} payload bytes out of the hot store) in {:.0} ms; {} events verified first",
                report.events_archived, report.streams, report.before.to_rfc3339(),
                report.files.len(), report.file_bytes, report.payload_bytes,
                report.elapsed_ms, report.events_checked
            );
            if report.events_finished_from_earlier_run > 0 {
                text += &format!(
                    "; {} events of an earlier, interrupted run finished",
                    report.events_finished_from_earlier_run
                );
            }
            for f in &report.files {
                text += &format!(
                    "\n  {} {}: {} events, positions {}..{}, sha256 {}",
                    f.name, f.month, f.events, f.first.position, f.last.position, f.sha256
                );
            }
            text
        })
    }
}

/// `restore`'s options.
#[derive(Debug, Args)]
pub struct Restore {
    /// The archive directory.
    #[arg(long)]
    from: PathBuf,
    /// Only this stream's events, e.g. `order-42`.
    #[arg(long)]
    stream: Option<String>,
}

impl Restore {
    /// Proves and restores the archived events (with a progress bar); prints how many.
    ///
    /// # Errors
    /// A missing manifest, a file that does not match it, an event that is not its stub's, the
    /// store failing.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let backend = global.open().await?;
        let output = global.output();
        let bar = output.phase_bar();
        let report = eventfold_app::integrity::archive::restore(
            backend.events.clone(),
            &self.from,
            self.stream.as_deref(),
            &|phase, done, of| show_phase(&bar, phase, done, of),
        )
        .await?;
        bar.finish_and_clear();
        output.print(&report, || {
            format!(
                "{} events restored from {} files ({} were hot already) in {:.0} ms",
                report.events_restored, report.files, report.already_hot, report.elapsed_ms
            )
        })
    }
}

/// `--before`: a UTC day (its 00:00) or an RFC 3339 time.
fn parse_cutoff(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| {
            anyhow::anyhow!("--before {text:?} is not a date (YYYY-MM-DD) or an RFC 3339 time")
        })
}
