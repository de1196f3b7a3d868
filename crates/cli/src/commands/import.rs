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
        /// The store the orders belong to (default `cdnow`); it also prefixes the order ids.
        #[arg(long, value_name = "S")]
        store_id: Option<String>,
        /// Record the rows as history: counted on their business dates, never late, no
        /// correction notices (a first load). Without it, rows of days already reported are late
        /// arrivals and each gets a correction notice.
        #[arg(long)]
        backfill: bool,
    },
}

impl Import {
    /// Imports the file and brings the projections up to date, showing progress on a terminal.
    ///
    /// # Errors
    /// An unreadable file, a malformed row without `--skip-bad` (nothing is imported), the store
    /// failing.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let Self::Cdnow {
            file,
            skip_bad,
            store_id,
            backfill,
        } = self;
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let backend = global.open().await?;
        let runner = backend.projection_runner().with_batch_size(5_000);
        let output = global.output();
        let bars = output.rate_bars();
        let summary = import_cdnow(
            &backend,
            &runner,
            &bytes,
            &ImportOptions {
                skip_bad,
                store_id,
                backfill,
            },
            &|phase, done, of| bars.show(phase, done, of),
        )
        .await;
        bars.finish();
        let summary = summary?;
        output.print(&summary, || {
            let mut s = format!(
                "imported {} rows{}: {} orders appended, {} already present, {} events, {} correction notices\n\
                 append {:.2} s ({:.0} events/s), projections {:.2} s ({:.0} events/s), total {:.2} s ({:.0} events/s)",
                summary.rows, if summary.backfill { " as history" } else { "" }, summary.orders_appended,
                summary.orders_already_present, summary.events_appended, summary.corrections_noticed,
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
