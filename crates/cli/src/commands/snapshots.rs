//! `eventfold snapshots rebuild`: aggregate snapshots written from a full replay.

use anyhow::{bail, Context};
use clap::Subcommand;
use eventfold_core::subscription::catch_up;
use eventfold_core::Aggregate;
use eventfold_domain::account::Account;
use serde::Serialize;

use crate::context::Global;

/// Aggregate snapshots.
#[derive(Debug, Subcommand)]
pub enum Snapshots {
    /// Replay a stream in full (trusting no snapshot) and store its snapshot at the head; with
    /// --all, every account stream.
    Rebuild {
        /// The stream, e.g. `account-42` (snapshotted aggregates: account).
        stream: Option<String>,
        /// Every stream of the snapshotted aggregates.
        #[arg(long, conflicts_with = "stream")]
        all: bool,
    },
}

/// What `snapshots rebuild --json` prints.
#[derive(Serialize)]
struct SnapshotsReport {
    /// Streams snapshotted.
    streams: u64,
    /// Events the snapshots cover.
    events: u64,
}

impl Snapshots {
    /// Writes the snapshots (with a progress bar) and prints how many.
    ///
    /// # Errors
    /// Neither a stream nor `--all`, a stream that is not snapshotted or has no events, the
    /// store failing.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let Self::Rebuild { stream, all } = self;
        let backend = global.open().await?;
        let (store, read_models) = (backend.events.clone(), backend.read_models.clone());
        let streams: Vec<String> = match (stream, all) {
            (Some(s), _) => {
                if Account::id_of_stream(&s).is_none() {
                    bail!("no snapshots for stream {s}: only account streams are snapshotted (account-ID or TENANT/account-ID)");
                }
                vec![s]
            }
            (None, true) => {
                let mut seen = std::collections::BTreeSet::new();
                let mut log = catch_up(store.clone(), 0, 10_000);
                while let Some(batch) = log.try_next_batch().await? {
                    for e in batch {
                        if Account::id_of_stream(&e.stream_id).is_some() {
                            seen.insert(e.stream_id);
                        }
                    }
                }
                seen.into_iter().collect()
            }
            (None, false) => bail!("give a STREAM or --all"),
        };
        let output = global.output();
        let bar = output.progress_bar(streams.len() as u64);
        let mut report = SnapshotsReport {
            streams: 0,
            events: 0,
        };
        for s in &streams {
            let version = eventfold_core::snapshot::write_snapshot::<Account>(
                store.as_ref(),
                read_models.as_ref(),
                s,
            )
            .await
            .with_context(|| format!("snapshotting {s}"))?;
            if version == 0 {
                bail!("stream {s} has no events");
            }
            report.streams += 1;
            report.events += version;
            bar.inc(1);
        }
        bar.finish_and_clear();
        output.print(&report, || {
            format!(
                "{} snapshots written, covering {} events",
                report.streams, report.events
            )
        })
    }
}
