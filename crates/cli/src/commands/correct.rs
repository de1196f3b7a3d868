//! `eventfold correct interest`: corrections by replay.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use eventfold_app::corrections::{correct_interest, write_report, InterestCorrection};
use eventfold_domain::interest::InterestAlgorithm;

use crate::context::Global;
use crate::output::show_phase;

/// Corrections by replay.
#[derive(Debug, Subcommand)]
pub enum Correct {
    /// Replay every account over `--from <= day < --to` (UTC days) under the booked interest
    /// algorithm (v1) and `--algorithm`, append one CorrectionApplied per account whose interest
    /// differs (a second run appends nothing), bring the projections up to date, and write the
    /// reconciliation report (CSV and JSON: account, old interest, new interest, delta).
    Interest {
        /// First day, YYYY-MM-DD.
        #[arg(long)]
        from: String,
        /// Day after the last, YYYY-MM-DD (exclusive).
        #[arg(long)]
        to: String,
        /// The algorithm to correct to.
        #[arg(long, default_value = "v2")]
        algorithm: String,
        /// Annual rate as a fraction (0.015 is 1.5 %).
        #[arg(long, default_value = "0.015")]
        annual_rate: String,
        /// Where the report files go.
        #[arg(long, default_value = ".")]
        report_dir: PathBuf,
    },
}

impl Correct {
    /// Runs the correction (with a progress bar), updates the projections, writes the report
    /// files and prints the summary.
    ///
    /// # Errors
    /// A bad option (named), an undecodable account event, file system or store failures.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let Self::Interest {
            from,
            to,
            algorithm,
            annual_rate,
            report_dir,
        } = self;
        let day = |flag: &str, s: &str| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .with_context(|| format!("{flag} {s:?} is not a date (YYYY-MM-DD)"))
        };
        let correction = InterestCorrection {
            from: day("--from", &from)?,
            to: day("--to", &to)?,
            old: InterestAlgorithm::V1,
            new: InterestAlgorithm::parse(&algorithm)
                .map_err(|e| anyhow::anyhow!("--algorithm: {e}"))?,
            annual_rate: rust_decimal::Decimal::from_str_exact(annual_rate.trim()).map_err(
                |_| anyhow::anyhow!("--annual-rate {annual_rate:?} is not a decimal number"),
            )?,
            now: chrono::Utc::now(),
        };
        correction.validate().map_err(anyhow::Error::msg)?;
        let backend = global.open().await?;
        let output = global.output();
        let bar = output.phase_bar();
        let report = correct_interest(backend.events.clone(), &correction, &|phase, done, of| {
            show_phase(&bar, phase, done, of)
        })
        .await?;
        bar.finish_and_clear();
        let (csv, json) = write_report(&report, &report_dir)?;
        // The projections (balance_by_account) pick the corrections up.
        let runner = backend.projection_runner().with_batch_size(5_000);
        runner.catch_up(None, &|_, _| {}).await?;
        output.print(&report, || {
            format!(
                "{} accounts replayed ({} events) under {} and {} for {}..{}: {} corrections appended, \
                 {} already applied, {} without difference, {} re-read; total delta {:?}; \
                 {:.0} ms (replay {:.0} ms, append {:.0} ms)\nreport: {} and {}",
                report.accounts, report.events_read, report.old_algorithm, report.new_algorithm,
                report.from, report.to, report.corrections_appended, report.already_applied,
                report.no_difference, report.retried, report.total_delta, report.elapsed_ms,
                report.replay_ms, report.append_ms, csv.display(), json.display()
            )
        })
    }
}
