//! `eventfold import`: data into the store.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use eventfold_app::import::{import_cdnow, ImportOptions};

use crate::context::Global;

/// The sources.
#[derive(Debug, Subcommand)]
pub enum Import {
    /// The CDNOW purchase log (customer_id date number_of_cds dollar_value).
    Cdnow {
        /// Path to CDNOW_master.txt.
        file: PathBuf,
        /// Skip malformed rows (and report them) instead of refusing the file.
        #[arg(long)]
        skip_bad: bool,
    },
}

impl Import {
    /// Imports the file and brings the projections up to date, showing progress on a terminal.
    ///
    /// # Errors
    /// An unreadable file, a malformed row without `--skip-bad` (nothing is imported), the store
    /// failing.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let Self::Cdnow { file, skip_bad } = self;
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let backend = global.open().await?;
        let runner = backend.projection_runner().with_batch_size(5_000);
        let output = global.output();
        let bars = output.rate_bars();
        let summary = import_cdnow(
            &backend,
            &runner,
            &bytes,
            &ImportOptions { skip_bad },
            &|phase, done, of| bars.show(phase, done, of),
        )
        .await;
        bars.finish();
        let summary = summary?;
        output.print(&summary, || {
            let mut s = format!(
                "imported {} rows: {} orders appended, {} already present, {} events\n\
                 append {:.2} s ({:.0} events/s), projections {:.2} s ({:.0} events/s), total {:.2} s ({:.0} events/s)",
                summary.rows, summary.orders_appended, summary.orders_already_present, summary.events_appended,
                summary.append_seconds, summary.append_events_per_sec, summary.projection_seconds,
                summary.projection_events_per_sec, summary.total_seconds, summary.events_per_sec
            );
            for bad in &summary.skipped {
                s.push_str(&format!("\nskipped {bad}"));
            }
            s
        })
    }
}
