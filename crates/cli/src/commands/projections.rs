//! `eventfold projections`: rebuild and status.

use anyhow::bail;
use clap::Subcommand;

use crate::context::Global;

/// Projection maintenance.
#[derive(Debug, Subcommand)]
pub enum Projections {
    /// Delete a projection's read model (all of them without NAME) and rebuild it from position 0.
    Rebuild {
        /// order_summary, balance_by_account, daily_sales_by_store or real_time_sales.
        name: Option<String>,
    },
    /// Each projection's checkpoint and lag.
    Status,
}

impl Projections {
    /// Rebuilds (with a progress bar) or prints each projection's checkpoint and lag.
    ///
    /// # Errors
    /// An unknown projection name, archived events after a checkpoint (restore first), the
    /// store failing.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let backend = global.open().await?;
        let runner = backend.projection_runner().with_batch_size(5_000);
        let output = global.output();
        match self {
            Self::Rebuild { name } => {
                if let Some(n) = &name {
                    if !runner.names().contains(&n.as_str()) {
                        bail!(
                            "unknown projection {n:?}; known: {}",
                            runner.names().join(", ")
                        );
                    }
                }
                let head = backend.events.head_position().await?;
                let bar = output.progress_bar(head);
                let started = std::time::Instant::now();
                let position = runner
                    .rebuild(name.as_deref(), &|p, _| bar.set_position(p))
                    .await?;
                bar.finish_and_clear();
                let secs = started.elapsed().as_secs_f64();
                let report = serde_json::json!({
                    "rebuilt": name.map_or_else(|| runner.names().iter().map(|s| s.to_string()).collect(), |n| vec![n]),
                    "position": position,
                    "seconds": secs,
                    "events_per_sec": position as f64 / secs.max(1e-9),
                });
                output.print(&report, || {
                    format!("rebuilt to position {position} in {secs:.2} s")
                })
            }
            Self::Status => {
                let status = runner.status().await?;
                output.print(&status, || {
                    status
                        .iter()
                        .map(|s| {
                            format!(
                                "{:<22} checkpoint {:>9}  head {:>9}  lag {} events",
                                s.name, s.checkpoint, s.head, s.lag_events
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })
            }
        }
    }
}
