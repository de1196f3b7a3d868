//! `eventfold projections`: status, rebuild, and the read-model versions: compare, activate,
//! retire. Every change to a version is an event with its actor (`--by`, default
//! `admin:{$USER}`) and reason, in `projectionversions-{name}`.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use eventfold_app::service::{CommandContext, Service};
use eventfold_app::views::{Views, DEFAULT_MAX_LAG_EVENTS, EXAMPLES};
use eventfold_core::projection::storage_name;

use crate::commands::keys::by;
use crate::context::Global;

/// Projection maintenance.
#[derive(Debug, Subcommand)]
pub enum Projections {
    /// Rebuild a projection's active version (all of them without NAME) from position 0: a
    /// fresh copy is built beside it and takes its place when caught up, so queries never see
    /// an empty view (`--in-place` deletes first and refills).
    Rebuild(Rebuild),
    /// Each projection version's checkpoint and lag, and which version is active.
    Status,
    /// Compare two versions of a projection key by key (after bringing both up to the log).
    Compare(Compare),
    /// Serve another version of a projection (every running server within 250 ms).
    Activate(Activate),
    /// Delete an inactive version's data; it is no longer applied.
    Retire(Retire),
}

/// `projections rebuild`.
#[derive(Debug, Args)]
pub struct Rebuild {
    /// A projection name (see `projections status`); all without it.
    name: Option<String>,
    /// The version to rebuild (default: the active one).
    #[arg(long)]
    version: Option<u32>,
    /// Delete the read model first and refill it (queries see it empty, then growing).
    #[arg(long)]
    in_place: bool,
    /// Why, recorded with a blue/green rebuild.
    #[arg(long, default_value = "rebuilt from the log")]
    reason: String,
    /// Who, recorded in the event (default `admin:{$USER}`).
    #[arg(long)]
    by: Option<String>,
}

/// `projections compare`.
#[derive(Debug, Args)]
pub struct Compare {
    /// Projection name.
    name: String,
    /// The two versions, e.g. `1,2`.
    #[arg(long, value_delimiter = ',', required = true)]
    versions: Vec<u32>,
    /// How many differing keys to show with both documents.
    #[arg(long, default_value_t = EXAMPLES)]
    examples: usize,
    /// Who, recorded with the comparison (default `admin:{$USER}`).
    #[arg(long)]
    by: Option<String>,
}

/// `projections activate`.
#[derive(Debug, Args)]
pub struct Activate {
    /// Projection name.
    name: String,
    /// The version to serve.
    #[arg(long)]
    version: u32,
    /// Why (required).
    #[arg(long)]
    reason: String,
    /// Switch even when the version lags or the last comparison differed.
    #[arg(long)]
    force: bool,
    /// The most lag, in events, allowed without --force.
    #[arg(long, default_value_t = DEFAULT_MAX_LAG_EVENTS)]
    max_lag: u64,
    /// Who, recorded in the event (default `admin:{$USER}`).
    #[arg(long)]
    by: Option<String>,
}

/// `projections retire`.
#[derive(Debug, Args)]
pub struct Retire {
    /// Projection name.
    name: String,
    /// The version to retire (not the active one).
    #[arg(long)]
    version: u32,
    /// Why (required).
    #[arg(long)]
    reason: String,
    /// Who, recorded in the event (default `admin:{$USER}`).
    #[arg(long)]
    by: Option<String>,
}

impl Projections {
    /// Runs the subcommand.
    ///
    /// # Errors
    /// An unknown projection or version, a refused change (named), archived events after a
    /// checkpoint (restore first), the store failing.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let backend = global.open().await?;
        let runner = backend.projection_runner().with_batch_size(5_000);
        let views = Views::new(
            Service::new(backend.events.clone()),
            backend.read_models.clone(),
            &runner,
        );
        views.refresh().await?;
        let output = global.output();
        match self {
            Self::Rebuild(r) => {
                let names: Vec<String> = match &r.name {
                    Some(n) => {
                        views.check(n, r.version.unwrap_or_else(|| views.active(n)))?;
                        vec![n.clone()]
                    }
                    None => runner.names().iter().map(|n| (*n).to_owned()).collect(),
                };
                let head = backend.events.head_position().await?;
                let bar = output.progress_bar(head);
                let started = std::time::Instant::now();
                let ctx = CommandContext::new(by(r.by)?);
                let targets: Vec<(String, u32)> = names
                    .iter()
                    .map(|n| (n.clone(), r.version.unwrap_or_else(|| views.active(n))))
                    .collect();
                let progress = |p, _| bar.set_position(p);
                let mut position = 0;
                if r.in_place {
                    for (name, version) in &targets {
                        position = runner
                            .rebuild(Some(&storage_name(name, *version)), &progress)
                            .await?;
                    }
                } else {
                    position = views
                        .rebuild(&runner, &targets, &r.reason, &ctx, &progress)
                        .await?;
                }
                let rebuilt: Vec<serde_json::Value> = targets
                    .iter()
                    .map(|(name, version)| serde_json::json!({ "name": name, "version": version }))
                    .collect();
                bar.finish_and_clear();
                let secs = started.elapsed().as_secs_f64();
                let report = serde_json::json!({
                    "rebuilt": rebuilt,
                    "in_place": r.in_place,
                    "position": position,
                    "seconds": secs,
                    "events_per_sec": position as f64 * names.len() as f64 / secs.max(1e-9),
                });
                output.print(&report, || {
                    format!(
                        "rebuilt {} to position {position} in {secs:.2} s",
                        names.join(", ")
                    )
                })
            }
            Self::Status => {
                let status = views.status(&runner).await?;
                output.print(&status, || {
                    status
                        .iter()
                        .map(|s| {
                            format!(
                                "{:<22} v{:<2}{} checkpoint {:>9}  head {:>9}  lag {} events",
                                s.name,
                                s.version,
                                if s.active { " (active)" } else { "         " },
                                s.checkpoint,
                                s.head,
                                s.lag_events
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })
            }
            Self::Compare(c) => {
                let [a, b] = <[u32; 2]>::try_from(c.versions.clone())
                    .map_err(|_| anyhow::anyhow!("--versions takes two versions, like 1,2"))?;
                if a == b {
                    bail!("--versions names version {a} twice");
                }
                views.check(&c.name, a)?;
                views.check(&c.name, b)?;
                // Both brought up to the log together, so they compare at one checkpoint.
                let both = backend
                    .projection_runner()
                    .with_batch_size(5_000)
                    .retain(|n, v| n == c.name && (v == a || v == b));
                both.catch_up(None, &|_, _| {})
                    .await
                    .context("bringing both versions up to the log")?;
                let ctx = CommandContext::new(by(c.by)?);
                let report = views
                    .compare_and_record(&c.name, a, b, c.examples, &ctx)
                    .await?;
                output.print(&report, || {
                    let mut lines = vec![format!(
                        "{} v{a} against v{b} (checkpoints {} / {}{}): {} equal, {} differ, {} only in v{a}, {} only in v{b}",
                        report.projection,
                        report.checkpoint_a,
                        report.checkpoint_b,
                        if report.consistent { "" } else { ", moved during the walk" },
                        report.equal,
                        report.differ,
                        report.only_in_a,
                        report.only_in_b
                    )];
                    for d in &report.examples {
                        lines.push(format!(
                            "  {}\n    v{a}: {}\n    v{b}: {}",
                            d.key,
                            d.a.as_ref().map_or("(none)".into(), ToString::to_string),
                            d.b.as_ref().map_or("(none)".into(), ToString::to_string)
                        ));
                    }
                    lines.join("\n")
                })
            }
            Self::Activate(a) => {
                let ctx = CommandContext::new(by(a.by)?);
                let previous = views
                    .activate(&a.name, a.version, &a.reason, a.force, a.max_lag, &ctx)
                    .await?;
                let report = serde_json::json!({
                    "name": a.name, "version": a.version, "previous": previous,
                });
                output.print(&report, || {
                    format!("{} serves version {} (was {previous})", a.name, a.version)
                })
            }
            Self::Retire(r) => {
                let ctx = CommandContext::new(by(r.by)?);
                views.retire(&r.name, r.version, &r.reason, &ctx).await?;
                let report = serde_json::json!({ "name": r.name, "retired": r.version });
                output.print(&report, || {
                    format!("{} version {} retired", r.name, r.version)
                })
            }
        }
    }
}
