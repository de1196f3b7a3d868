//! eventfold's benchmarks and simulations: the `eventfold bench ...` and `eventfold simulate ...`
//! subcommands' work, kept out of the production crates. Each prints its own figures and, where a
//! target is a ratio, measures its baseline in the same run (the machines are shared and noisy).
//! This is the only crate that talks to rusqlite and sqlx directly: for the raw baselines.
//!
//! Benchmarks never write into the user's store: each run uses fresh temporary SQLite files in the
//! directory of the `--store` path (the same disk), or a scratch database on the PostgreSQL server
//! of a `postgres://` store, removed afterwards.
//!
//! - [`append`]: durable appends by concurrent clients, against raw INSERT baselines.
//! - [`commands`]: deposits through the service on existing and new streams, beside the
//!   store-level append.
//! - [`load`]: loading one long stream with and without a snapshot, and as of its middle.
//! - [`read`]: a read-all from position 0.
//! - [`correct`]: `correct interest` on many accounts, twice.
//! - [`http`]: HTTP commands against an open server and one that requires a key.
//! - [`notifications`], [`relay`]: the Kafka paths against a bare client on the same broker.
//! - [`upload`]: a store upload of late sales with their correction notices, against a backfill.
//! - [`windows`]: the event-time window aggregator against a plain count of the same records.
//! - [`simulate`]: a flash-sale crowd against a real server and a sandbox payment provider.

mod append;
mod commands;
mod correct;
mod http;
mod kafka;
mod load;
mod read;
mod scratch;
pub mod simulate;
mod upload;
mod windows;

pub use append::{append, AppendBench, AppendReport, HashChain, RunnerFigures};
pub use commands::{commands, CommandFigures, CommandsReport};
pub use correct::{correct, CorrectBench};
pub use http::{baseline_server, http, HttpBench, HttpFigures, HttpReport};
pub use kafka::{notifications, relay, NotificationsReport, RelayBenchReport};
pub use load::{load, LoadReport};
pub use read::{read, ReadReport};
pub use upload::{upload, UploadReport};
pub use windows::{windows, WindowsReport};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use eventfold_app::service::CommandContext;
use eventfold_core::{Actor, NewEvent};
use hdrhistogram::Histogram;

pub(crate) fn payload(bytes: usize) -> String {
    format!("{{\"data\":\"{}\"}}", "x".repeat(bytes.saturating_sub(11)))
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub(crate) fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub(crate) struct Run {
    pub(crate) commands: u64,
    pub(crate) elapsed: f64,
    pub(crate) latencies: Histogram<u64>,
}

impl Run {
    pub(crate) fn empty() -> Self {
        Self {
            commands: 0,
            elapsed: 0.0,
            latencies: histogram(),
        }
    }

    pub(crate) fn add(&mut self, other: Run) -> anyhow::Result<()> {
        self.commands += other.commands;
        self.elapsed += other.elapsed;
        self.latencies
            .add(other.latencies)
            .context("merging histograms")
    }
}

/// Drives `clients` tasks for `duration`, each calling `command(client, n)` in a loop.
pub(crate) async fn drive<F, Fut>(
    clients: usize,
    duration: Duration,
    command: F,
) -> anyhow::Result<Run>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let command = Arc::new(command);
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let command = command.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    command(client, n).await?;
                    h.saturating_record(t.elapsed().as_micros() as u64);
                    n += 1;
                }
                anyhow::Ok((n, h))
            })
        })
        .collect();
    let mut latencies = histogram();
    let mut commands = 0;
    for t in tasks {
        let (n, h) = t.await.context("bench client panicked")??;
        commands += n;
        latencies.add(h).context("merging histograms")?;
    }
    Ok(Run {
        commands,
        elapsed: started.elapsed().as_secs_f64(),
        latencies,
    })
}

pub(crate) fn bench_event(payload: &str) -> NewEvent {
    eventfold_core::testkit::event("BenchEvent", Actor::system("bench"), payload)
}

/// Where a benchmark runs: temporary files in a directory (beside a SQLite store), a scratch
/// database on the PostgreSQL server of a `postgres://` store, or scratch streams on the NATS
/// server of a `nats://` store. Benchmarks never touch the store
/// itself; the scratch database is created and dropped by the run.
#[derive(Debug, Clone)]
pub enum BenchTarget {
    /// A directory for temporary SQLite files.
    Sqlite(PathBuf),
    /// A PostgreSQL URL whose server hosts the scratch database.
    Postgres(String),
    /// A NATS URL whose server hosts the scratch JetStream streams (`bench append`, `load`,
    /// `read`); their read models go to a temporary SQLite file.
    Nats(String),
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub(crate) fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

pub(crate) fn bench_context() -> CommandContext {
    CommandContext::new(Actor::system("bench"))
}
