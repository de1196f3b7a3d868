//! Benchmarks that print their own figures: `bench append` (with a raw SQLite baseline measured in
//! the same run, so the overhead is a ratio on this noisy machine) and `bench load`.
//!
//! Benchmarks never write into the user's store: each run uses fresh temporary SQLite files in the
//! directory of the `--store` path (the same disk), removed afterwards.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{TimeZone, Utc};
use eventfold_core::{
    Actor, AppendRequest, EventMetadata, EventStore, ExpectedVersion, NewEvent, Projection,
    ProjectionRunner, ReadModelStore, RecordedEvent, StoredResponse,
};
use eventfold_domain::account::{Account, AccountCommand, AccountEvent};
use eventfold_domain::{Currency, Money};
use eventfold_sqlite::SqliteStore;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::service::{AsOf, CommandContext, Executed, Service};

mod kafka;
pub use kafka::{notifications, relay, NotificationsReport, RelayBenchReport};

/// Settings of `bench append`.
#[derive(Debug, Clone)]
pub struct AppendBench {
    /// Concurrent clients, each appending to its own stream.
    pub clients: usize,
    /// Events per command (one append).
    pub events_per_command: usize,
    /// How long each side (eventfold, baseline) runs in total.
    pub duration: Duration,
    /// Rounds to split each side's time into, alternating eventfold and baseline.
    pub rounds: usize,
    /// Payload size per event, in bytes.
    pub payload_bytes: usize,
    /// Every command to one stream, through the service: `Deposit` commands on one account
    /// (the stream's lane decides them in order, each append keeps its expected version). The
    /// deposit events' payloads are their own (about 60 bytes), not `payload_bytes`.
    pub hot_stream: bool,
    /// The hash chain (M6) of eventfold's store: on, off, or both (a second store with it off,
    /// driven in alternating slices of each round, for `hash_chain_ratio`).
    pub hash_chain: HashChain,
}

/// `bench append --hash-chain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum HashChain {
    /// Appends compute the chain (the product's setting).
    On,
    /// Appends leave the chain columns empty.
    Off,
    /// Both, in alternating rounds of the same run.
    Both,
}

/// What `bench append --json` prints. Rates per second of wall time; latencies per command in ms.
#[derive(Debug, Clone, Serialize)]
pub struct AppendReport {
    /// Backend measured.
    pub store: String,
    /// Clients.
    pub clients: usize,
    /// Events per command.
    pub events_per_command: usize,
    /// Payload bytes per event.
    pub payload_bytes: usize,
    /// Seconds per side.
    pub duration_s: f64,
    /// Alternating rounds.
    pub rounds: usize,
    /// Durable commands (appends) per second through eventfold.
    pub commands_per_sec: f64,
    /// Durable events per second through eventfold.
    pub events_per_sec: f64,
    /// Append latency percentiles, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Worst, ms.
    pub max_ms: f64,
    /// Raw baseline: plain group-committed INSERT transactions, same durability, same file system.
    pub baseline_commands_per_sec: f64,
    /// Raw baseline events per second.
    pub baseline_events_per_sec: f64,
    /// Raw baseline p99 latency, ms.
    pub baseline_p99_ms: f64,
    /// `events_per_sec / baseline_events_per_sec`.
    pub ratio_to_baseline: f64,
    /// Second baseline: the same plain INSERTs into a table that also has eventfold's two unique
    /// indexes (event id; stream id and version). Separates index cost from eventfold's own.
    pub indexed_baseline_events_per_sec: f64,
    /// `events_per_sec / indexed_baseline_events_per_sec`.
    pub ratio_to_indexed_baseline: f64,
    /// Append requests per eventfold commit (per fsync): how far group commit shares the fsync.
    pub requests_per_commit: f64,
    /// Whether every command went to one stream (`--hot-stream`).
    pub hot_stream: bool,
    /// Projection lag under this load: from an event's ingest to the commit of the read-model
    /// batch that applied it, for a projection (events per stream) kept live by a
    /// [`ProjectionRunner`] during the eventfold rounds, median in ms.
    pub projection_lag_p50_ms: f64,
    /// 95th percentile of the same, ms.
    pub projection_lag_p95_ms: f64,
    /// 99th percentile of the same, ms.
    pub projection_lag_p99_ms: f64,
    /// `--hash-chain`: whether eventfold's store chained its appends (`both`: the figures above
    /// are with the chain on).
    pub hash_chain: HashChain,
    /// `--hash-chain both`: events per second of the same clients on a store with the chain off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unchained_events_per_sec: Option<f64>,
    /// `--hash-chain both`: `events_per_sec / unchained_events_per_sec` (target at least 0.95).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_chain_ratio: Option<f64>,
    /// `--hash-chain both`: the median over slices of the chain-on rate divided by the chain-off
    /// rate of the same slice (each round's time is cut into slices of at most 0.5 s a side, the
    /// two sides back to back, each first in every other slice). A slowdown of the machine that
    /// spans a few slices moves this less than the ratio of the totals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_chain_ratio_median: Option<f64>,
}

/// The bench's live projection: events per stream.
struct EventsPerStream;

impl Projection for EventsPerStream {
    type Doc = u64;
    type Input = ();

    fn name(&self) -> &'static str {
        "bench_events_per_stream"
    }

    fn select(&self, event: &RecordedEvent) -> Result<Option<(String, ())>, String> {
        Ok(Some((event.stream_id.clone(), ())))
    }

    fn apply(&self, doc: Option<u64>, (): (), _: &RecordedEvent) -> Option<u64> {
        Some(doc.unwrap_or(0) + 1)
    }
}

fn payload(bytes: usize) -> String {
    format!("{{\"data\":\"{}\"}}", "x".repeat(bytes.saturating_sub(11)))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

struct Run {
    commands: u64,
    elapsed: f64,
    latencies: Histogram<u64>,
}

impl Run {
    fn empty() -> Self {
        Self {
            commands: 0,
            elapsed: 0.0,
            latencies: histogram(),
        }
    }

    fn add(&mut self, other: Run) -> anyhow::Result<()> {
        self.commands += other.commands;
        self.elapsed += other.elapsed;
        self.latencies
            .add(other.latencies)
            .context("merging histograms")
    }
}

/// Drives `clients` tasks for `duration`, each calling `command(client, n)` in a loop.
async fn drive<F, Fut>(clients: usize, duration: Duration, command: F) -> anyhow::Result<Run>
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

fn bench_event(payload: &str) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: "BenchEvent".into(),
        schema_version: 1,
        event_time: Utc::now(),
        metadata: EventMetadata::by(Actor::system("bench")),
        payload: payload.to_owned(),
    }
}

/// Where a benchmark runs: temporary files in a directory (beside a SQLite store), or a scratch
/// database on the PostgreSQL server of a `postgres://` store. Benchmarks never touch the store
/// itself; the scratch database is created and dropped by the run.
#[derive(Debug, Clone)]
pub enum BenchTarget {
    /// A directory for temporary SQLite files.
    Sqlite(PathBuf),
    /// A PostgreSQL URL whose server hosts the scratch database.
    Postgres(String),
}

/// A benchmark's own store and raw baselines, removed by [`Scratch::remove`].
struct Scratch {
    store: Arc<dyn EventStore>,
    /// The scratch store's URL (for tools that open the same database).
    url: String,
    read_models: Arc<dyn ReadModelStore>,
    /// (commits, append requests) of the store's writer so far.
    stats: Box<dyn Fn() -> (u64, u64) + Send + Sync>,
    raw: RawBaseline,
    raw_indexed: RawBaseline,
    name: &'static str,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Database {
        admin: String,
        name: String,
        /// Closed before the database is dropped, so no pooled connection sees it vanish.
        pools: Vec<sqlx::PgPool>,
    },
}

impl Scratch {
    /// A scratch store (with the hash chain on or off) and the raw baselines.
    async fn create(target: &BenchTarget, hash_chain: bool) -> anyhow::Result<Self> {
        match target {
            BenchTarget::Sqlite(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let tmp = tempfile::Builder::new()
                    .prefix("eventfold-bench-")
                    .tempdir_in(dir)
                    .context("creating bench directory")?;
                let store = Arc::new(SqliteStore::open_with(
                    tmp.path().join("eventfold.db"),
                    eventfold_sqlite::SqliteConfig {
                        hash_chain,
                        ..Default::default()
                    },
                )?);
                let stats_store = store.clone();
                Ok(Self {
                    url: format!("sqlite://{}", tmp.path().join("eventfold.db").display()),
                    read_models: store.clone(),
                    stats: Box::new(move || {
                        let s = stats_store.writer_stats();
                        (s.commits, s.append_requests)
                    }),
                    store,
                    raw: RawBaseline::sqlite(&tmp.path().join("raw.db"), false)?,
                    raw_indexed: RawBaseline::sqlite(&tmp.path().join("raw-indexed.db"), true)?,
                    name: "sqlite",
                    cleanup: Cleanup::Dir(tmp),
                })
            }
            BenchTarget::Postgres(url) => {
                use sqlx::Connection;
                let mut admin = sqlx::PgConnection::connect(url)
                    .await
                    .context("connecting to PostgreSQL")?;
                let name = format!("eventfold_bench_{}", uuid::Uuid::now_v7().simple());
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .context("creating the scratch database")?;
                let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
                let scratch_url = format!("{base}/{name}");
                let store = Arc::new(
                    eventfold_postgres::PostgresStore::connect_with(
                        &scratch_url,
                        eventfold_postgres::PostgresConfig {
                            hash_chain,
                            ..Default::default()
                        },
                    )
                    .await?,
                );
                let stats_store = store.clone();
                let raw = RawBaseline::postgres(&scratch_url, "raw", false).await?;
                let raw_indexed = RawBaseline::postgres(&scratch_url, "raw_indexed", true).await?;
                let mut pools = vec![store.pool().clone()];
                for r in [&raw, &raw_indexed] {
                    if let RawBaseline::Postgres { pool, .. } = r {
                        pools.push(pool.clone());
                    }
                }
                Ok(Self {
                    url: scratch_url.clone(),
                    read_models: store.clone(),
                    stats: Box::new(move || {
                        let s = stats_store.appender_stats();
                        (s.commits, s.append_requests)
                    }),
                    store,
                    raw,
                    raw_indexed,
                    name: "postgres",
                    cleanup: Cleanup::Database {
                        admin: url.clone(),
                        name,
                        pools,
                    },
                })
            }
        }
    }

    /// Brings the planner's statistics up to date after the bench's writes, as autovacuum does
    /// on a live PostgreSQL database within a minute or so (`autovacuum_naptime`). A table
    /// never analyzed has no statistics: the planner then guesses that a stream holds a few
    /// rows and replays a long one by a bitmap scan and a sort spilled to disk, not the index's
    /// order (about 25% slower at 100,000 events). SQLite keeps no statistics unless asked: a
    /// no-op there.
    async fn analyze(&self) -> anyhow::Result<()> {
        if let Cleanup::Database { pools, .. } = &self.cleanup {
            sqlx::query("ANALYZE")
                .execute(&pools[0])
                .await
                .context("analyzing the scratch database")?;
        }
        Ok(())
    }

    async fn remove(self) -> anyhow::Result<()> {
        let Scratch {
            store,
            read_models,
            stats,
            raw,
            raw_indexed,
            cleanup,
            ..
        } = self;
        // Everything that holds the store or a connection goes before the database does.
        drop((store, read_models, stats, raw, raw_indexed));
        if let Cleanup::Database { admin, name, pools } = cleanup {
            use sqlx::Connection;
            for pool in pools {
                pool.close().await;
            }
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await?;
        }
        Ok(())
    }
}

/// Longest one side of `--hash-chain both` runs before the other takes its turn. On the shared
/// 2-core machine, rounds of 2 s a side gave chained/unchained ratios spread over 10 points from
/// run to run (0.90 to 1.00), and 0.5 s slices over 4 (0.94 to 0.98): the machine's slow spells
/// last seconds, and shorter turns split them evenly between the two sides.
const CHAIN_SLICE: Duration = Duration::from_millis(500);

/// Runs `bench append` on `target`: eventfold and the raw baselines in alternating rounds, with a
/// projection kept live during the eventfold rounds to measure its lag.
///
/// # Errors
/// The scratch store cannot be created or an append fails.
pub async fn append(target: &BenchTarget, config: &AppendBench) -> anyhow::Result<AppendReport> {
    anyhow::ensure!(
        !config.hot_stream || config.events_per_command == 1,
        "a hot-stream bench runs one event per command"
    );
    let scratch = Scratch::create(target, config.hash_chain != HashChain::Off).await?;
    let unchained = match config.hash_chain {
        HashChain::Both => Some(Scratch::create(target, false).await?),
        _ => None,
    };
    let (store, raw, raw_indexed) = (
        scratch.store.clone(),
        scratch.raw.clone(),
        scratch.raw_indexed.clone(),
    );
    let per = config.events_per_command;
    let body = Arc::new(payload(config.payload_bytes));
    let service = Service::new(store.clone());
    let unchained_service = unchained.as_ref().map(|u| Service::new(u.store.clone()));
    if config.hot_stream {
        for service in std::iter::once(&service).chain(&unchained_service) {
            let open = AccountCommand::Open {
                owner: "bench".into(),
                currency: Currency::USD,
                actor: Actor::system("bench"),
            };
            service
                .execute::<Account>("bench-hot", open, &bench_context(), Box::new(no_render))
                .await?;
        }
    }
    let runner = Arc::new(
        ProjectionRunner::new(store.clone(), scratch.read_models.clone()).register(EventsPerStream),
    );
    runner.catch_up(None, &|_, _| {}).await?;
    runner.reset_lag();
    let (stop, live) = live_projection(&runner);
    // The unchained store carries the same live projection, so both sides do the same work.
    let unchained_runner = unchained.as_ref().map(|u| {
        Arc::new(
            ProjectionRunner::new(u.store.clone(), u.read_models.clone()).register(EventsPerStream),
        )
    });
    let unchained_live = unchained_runner.as_ref().map(live_projection);

    // Alternate eventfold and the baseline so that drift on a shared machine hits both.
    let rounds = config.rounds.max(1);
    let round = config.duration / rounds as u32;
    let mut ours = Run::empty();
    let mut unchained_run = Run::empty();
    let mut baseline = Run::empty();
    let mut indexed = Run::empty();
    let new_versions = || -> Arc<Vec<AtomicU64>> {
        Arc::new((0..config.clients).map(|_| AtomicU64::new(0)).collect())
    };
    let (versions, unchained_versions) = (new_versions(), new_versions());
    // Per slice with the chain both on and off: on rate / off rate.
    let mut slice_ratios = Vec::new();
    for r in 0..rounds {
        if let Some(unchained) = &unchained_service {
            // The round's time in slices of at most CHAIN_SLICE per side, the two sides back to
            // back and each first in every other slice.
            let slices = (round.as_secs_f64() / CHAIN_SLICE.as_secs_f64())
                .ceil()
                .max(1.0) as u32;
            let slice = round / slices;
            for _ in 0..slices {
                let unchained_first = slice_ratios.len() % 2 == 1;
                let mut rates = [0.0; 2];
                for side in [unchained_first, !unchained_first] {
                    let (service, versions, total) = if side {
                        (unchained, &unchained_versions, &mut unchained_run)
                    } else {
                        (&service, &versions, &mut ours)
                    };
                    let run = drive_store(config, slice, service, versions, &body).await?;
                    rates[usize::from(side)] = run.commands as f64 / run.elapsed.max(1e-9);
                    total.add(run)?;
                }
                slice_ratios.push(rates[0] / rates[1].max(1e-9));
            }
        } else {
            ours.add(drive_store(config, round, &service, &versions, &body).await?)?;
        }
        let shape = (config.clients, per, config.hot_stream);
        baseline.add(drive_raw(&raw, shape, (r, round), &body).await?)?;
        indexed.add(drive_raw(&raw_indexed, shape, (r, round), &body).await?)?;
    }
    // Everything appended is applied before the lag is read (the runner is still live).
    let head = store.head_position().await?;
    let caught_up = runner.catch_up(None, &|_, _| {}).await?;
    anyhow::ensure!(
        caught_up >= head,
        "projection stopped at {caught_up} of {head}"
    );
    let _ = stop.send(());
    live.await.context("projection runner panicked")??;
    if let Some((stop, live)) = unchained_live {
        let _ = stop.send(());
        live.await.context("projection runner panicked")??;
    }
    let lag = |q| runner.lag_quantile_ms(q).unwrap_or(0.0);
    let (lag50, lag95, lag99) = (lag(0.5), lag(0.95), lag(0.99));

    let (commits, append_requests) = (scratch.stats)();
    let store_name = scratch.name;
    drop((store, service, runner, unchained_service, unchained_runner));
    scratch.remove().await?;
    let rate = |r: &Run| r.commands as f64 / r.elapsed;
    let unchained_events_per_sec = unchained
        .is_some()
        .then(|| rate(&unchained_run) * per as f64);
    if let Some(u) = unchained {
        u.remove().await?;
    }
    let events_per_sec = rate(&ours) * per as f64;
    let baseline_events_per_sec = rate(&baseline) * per as f64;
    Ok(AppendReport {
        store: store_name.into(),
        clients: config.clients,
        events_per_command: per,
        payload_bytes: config.payload_bytes,
        duration_s: config.duration.as_secs_f64(),
        rounds,
        commands_per_sec: rate(&ours),
        events_per_sec,
        p50_ms: ms(&ours.latencies, 0.50),
        p95_ms: ms(&ours.latencies, 0.95),
        p99_ms: ms(&ours.latencies, 0.99),
        max_ms: ours.latencies.max() as f64 / 1000.0,
        baseline_commands_per_sec: rate(&baseline),
        baseline_events_per_sec,
        baseline_p99_ms: ms(&baseline.latencies, 0.99),
        ratio_to_baseline: events_per_sec / baseline_events_per_sec.max(1e-9),
        indexed_baseline_events_per_sec: rate(&indexed) * per as f64,
        ratio_to_indexed_baseline: events_per_sec / (rate(&indexed) * per as f64).max(1e-9),
        requests_per_commit: append_requests as f64 / commits.max(1) as f64,
        hot_stream: config.hot_stream,
        projection_lag_p50_ms: lag50,
        projection_lag_p95_ms: lag95,
        projection_lag_p99_ms: lag99,
        hash_chain: config.hash_chain,
        unchained_events_per_sec,
        hash_chain_ratio: unchained_events_per_sec.map(|u| events_per_sec / u.max(1e-9)),
        hash_chain_ratio_median: median(&mut slice_ratios),
    })
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

type LiveProjection = (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), eventfold_core::RunnerError>>,
);

/// Runs `runner` live until the returned sender is used.
fn live_projection(runner: &Arc<ProjectionRunner>) -> LiveProjection {
    let (stop, stopped) = oneshot::channel::<()>();
    let runner = runner.clone();
    let live = tokio::spawn(async move {
        runner
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, live)
}

/// One round of eventfold's side on `service`'s store: deposits into one account (hot stream),
/// or each client appending to its own stream `bench-{client}` with the version it last saw.
async fn drive_store(
    config: &AppendBench,
    round: Duration,
    service: &Service,
    versions: &Arc<Vec<AtomicU64>>,
    body: &Arc<String>,
) -> anyhow::Result<Run> {
    if config.hot_stream {
        let service = service.clone();
        return drive(config.clients, round, move |_, _| {
            let service = service.clone();
            async move { hot_deposit(&service).await }
        })
        .await;
    }
    let per = config.events_per_command;
    let (store, body, versions) = (service.store().clone(), body.clone(), versions.clone());
    drive(config.clients, round, move |client, _| {
        let store = store.clone();
        let body = body.clone();
        let versions = versions.clone();
        async move {
            let events = (0..per).map(|_| bench_event(&body)).collect();
            let v = versions[client].load(Ordering::Relaxed);
            let expected = if v == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(v)
            };
            let out = store
                .append(AppendRequest::new(
                    format!("bench-{client}"),
                    expected,
                    events,
                ))
                .await?;
            versions[client].store(out.stream_version, Ordering::Relaxed);
            Ok(())
        }
    })
    .await
}

fn bench_context() -> CommandContext {
    CommandContext::new(Actor::system("bench"))
}

fn no_render(_: &Account, _: u64) -> StoredResponse {
    StoredResponse {
        status: 200,
        body: String::new(),
    }
}

/// One hot-stream command: a deposit of 1.00 into account `bench-hot`, through the service.
async fn hot_deposit(service: &Service) -> anyhow::Result<()> {
    let deposit = AccountCommand::Deposit {
        amount: Money::parse("1.00", Currency::USD)?,
        actor: Actor::system("bench"),
    };
    match service
        .execute::<Account>("bench-hot", deposit, &bench_context(), Box::new(no_render))
        .await?
    {
        Executed::Applied { events: 1, .. } => Ok(()),
        other => anyhow::bail!("hot-stream deposit did not apply: {other:?}"),
    }
}

/// One baseline round: each client inserts `per` rows per transaction request, into streams of
/// its own for this round (`bench-{round}-{client}`), versions counting from 1; or, `hot`, every
/// client into one stream (`bench-{round}-hot`), versions from a shared counter (no checks).
async fn drive_raw(
    raw: &RawBaseline,
    (clients, per, hot): (usize, usize, bool),
    (round, duration): (usize, Duration),
    body: &Arc<String>,
) -> anyhow::Result<Run> {
    let (raw, body) = (raw.clone(), body.clone());
    let shared = Arc::new(AtomicU64::new(0));
    drive(clients, duration, move |client, n| {
        let raw = raw.clone();
        let (stream, first) = if hot {
            let first = shared.fetch_add(per as u64, Ordering::Relaxed);
            (format!("bench-{round}-hot"), first + 1)
        } else {
            (format!("bench-{round}-{client}"), n * per as u64 + 1)
        };
        let rows = (0..per)
            .map(|i| (stream.clone(), first + i as u64, bench_event(&body)))
            .collect();
        async move { raw.insert(rows).await }
    })
    .await
}

type RawJob = (
    Vec<(String, u64, NewEvent)>,
    oneshot::Sender<Result<(), String>>,
);

/// The raw baseline: plain INSERTs of the same rows (same columns, same bytes), with the same
/// durability as the store (SQLite: WAL + `synchronous=FULL`, group-committed by one writer thread;
/// PostgreSQL: one transaction per command, `synchronous_commit=on`, a pool as large as the client
/// count), into a table with only a primary key, or (`indexed`) with eventfold's two unique
/// indexes as well. No version checks.
#[derive(Clone)]
enum RawBaseline {
    Sqlite(mpsc::Sender<RawJob>),
    Postgres {
        pool: sqlx::PgPool,
        table: &'static str,
    },
}

impl RawBaseline {
    fn sqlite(path: &Path, indexed: bool) -> anyhow::Result<Self> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE raw (id INTEGER PRIMARY KEY, event_id BLOB, stream_id TEXT, stream_version INTEGER, \
             event_type TEXT, schema_version INTEGER, event_time INTEGER, ingest_time INTEGER, actor TEXT, \
             tenant_id TEXT, payload TEXT)",
        )?;
        if indexed {
            conn.execute_batch(
                "CREATE UNIQUE INDEX raw_event_id ON raw (event_id); \
                 CREATE UNIQUE INDEX raw_stream ON raw (stream_id, stream_version);",
            )?;
        }
        let (tx, rx) = mpsc::channel::<RawJob>();
        std::thread::spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                group.extend(rx.try_iter());
                let result = (|| -> rusqlite::Result<()> {
                    conn.execute_batch("BEGIN")?;
                    let mut insert = conn.prepare_cached(
                        "INSERT INTO raw (event_id, stream_id, stream_version, event_type, schema_version, \
                         event_time, ingest_time, actor, tenant_id, payload) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )?;
                    let now = Utc::now().timestamp_micros();
                    for (rows, _) in &group {
                        for (stream, version, e) in rows {
                            insert.execute(rusqlite::params![
                                e.event_id.as_bytes().as_slice(),
                                stream,
                                version,
                                e.event_type,
                                e.schema_version,
                                e.event_time.timestamp_micros(),
                                now,
                                e.metadata.actor.as_str(),
                                e.metadata.tenant_id,
                                e.payload
                            ])?;
                        }
                    }
                    conn.execute_batch("COMMIT")
                })();
                for (_, reply) in group {
                    let _ = reply.send(result.as_ref().map(|_| ()).map_err(ToString::to_string));
                }
            }
        });
        Ok(Self::Sqlite(tx))
    }

    async fn postgres(url: &str, table: &'static str, indexed: bool) -> anyhow::Result<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(64)
            .connect(url)
            .await?;
        sqlx::raw_sql(&format!(
            "CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, event_id UUID, stream_id TEXT, stream_version BIGINT, \
             event_type TEXT, schema_version INTEGER, event_time TIMESTAMPTZ, ingest_time TIMESTAMPTZ, actor TEXT, \
             tenant_id TEXT, payload TEXT{})",
            if indexed { ", UNIQUE (event_id), UNIQUE (stream_id, stream_version)" } else { "" }
        ))
        .execute(&pool)
        .await?;
        Ok(Self::Postgres { pool, table })
    }

    async fn insert(&self, rows: Vec<(String, u64, NewEvent)>) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(jobs) => {
                let (tx, rx) = oneshot::channel();
                jobs.send((rows, tx))
                    .map_err(|_| anyhow::anyhow!("baseline writer stopped"))?;
                rx.await?.map_err(|e| anyhow::anyhow!(e))
            }
            Self::Postgres { pool, table } => {
                // One statement, one transaction per command (autocommit).
                let n = rows.len();
                let (mut ids, mut streams, mut versions, mut types, mut payloads, mut times) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                for (stream, version, e) in rows {
                    ids.push(e.event_id);
                    streams.push(stream);
                    versions.push(version as i64);
                    types.push(e.event_type);
                    payloads.push(e.payload);
                    times.push(e.event_time);
                }
                sqlx::query(&format!(
                    "INSERT INTO {table} (event_id, stream_id, stream_version, event_type, schema_version, event_time, \
                     ingest_time, actor, tenant_id, payload) SELECT i, s, v, t, 1, et, now(), 'system:bench', 'default', p \
                     FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::timestamptz[], $6::text[]) \
                     AS u(i, s, v, t, et, p)"
                ))
                .bind(ids)
                .bind(streams)
                .bind(versions)
                .bind(types)
                .bind(times)
                .bind(payloads)
                .execute(pool)
                .await?;
                Ok(())
            }
        }
    }
}

/// What `bench load --json` prints (ms per load, median of the repetitions).
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Events in the stream.
    pub events: u64,
    /// Median time to load the stream from a snapshot at its head (the snapshot read and an
    /// empty tail), ms.
    pub load_with_snapshot_ms: f64,
    /// Median time to read and fold the whole stream, no snapshot, ms.
    pub load_without_snapshot_ms: f64,
    /// 95th percentile of the same, ms.
    pub load_without_snapshot_p95_ms: f64,
    /// Median time of a full-envelope `read_stream` of the same stream (all 13 fields, no fold),
    /// for comparison with the lean replay read that loads use, ms.
    pub full_read_ms: f64,
    /// Median time to rebuild the state as of a time in the middle of the stream, from the
    /// snapshots, ms.
    pub as_of_ms: f64,
    /// The same without snapshots (the whole stream read and filtered), ms.
    pub as_of_without_snapshot_ms: f64,
    /// Time the snapshot tail took to snapshot the stream every 100 events, ms.
    pub snapshots_taken_ms: f64,
    /// Repetitions measured.
    pub repetitions: usize,
}

/// Runs `bench load` on `target`: writes one account stream of `events` events into a scratch
/// store, then times loading it (whole, and as of its middle) `repetitions` times.
///
/// # Errors
/// The scratch store cannot be created, an append fails, or a loaded state is wrong.
pub async fn load(
    target: &BenchTarget,
    events: u64,
    repetitions: usize,
) -> anyhow::Result<LoadReport> {
    let scratch = Scratch::create(target, true).await?;
    let report = load_on(&scratch, events, repetitions).await;
    scratch.remove().await?;
    report
}

async fn load_on(scratch: &Scratch, events: u64, repetitions: usize) -> anyhow::Result<LoadReport> {
    let (store, read_models) = (scratch.store.clone(), scratch.read_models.clone());
    let service = Service::new(store.clone());
    let start = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid date");
    let one = Money::parse("1.00", Currency::USD)?;
    let mut version = 0u64;
    while version < events {
        let batch: Vec<NewEvent> = (version..events.min(version + 1_000))
            .map(|v| {
                let event = if v == 0 {
                    AccountEvent::AccountOpened {
                        owner: "bench".into(),
                        currency: Currency::USD,
                    }
                } else {
                    AccountEvent::FundsDeposited { amount: one }
                };
                let mut ctx = CommandContext::new(Actor::system("bench"));
                ctx.event_time = start + chrono::Duration::seconds(v as i64);
                service.new_event::<Account>(&event, &ctx, uuid::Uuid::now_v7())
            })
            .collect::<Result<_, _>>()?;
        let n = batch.len() as u64;
        store
            .append(AppendRequest::new(
                "account-bench",
                ExpectedVersion::Exact(version),
                batch,
            ))
            .await?;
        version += n;
    }
    let mid = start + chrono::Duration::seconds((events / 2) as i64);
    // The snapshot tail takes one every 100 events (as `serve` does), then one at the head.
    let t = Instant::now();
    while eventfold_core::snapshot::take_due::<Account>(
        &store,
        &read_models,
        eventfold_core::snapshot::DEFAULT_EVERY,
    )
    .await?
        > 0
    {}
    let snapshots_taken_ms = t.elapsed().as_secs_f64() * 1000.0;
    let snapshotted = eventfold_core::snapshot::write_snapshot::<Account>(
        store.as_ref(),
        read_models.as_ref(),
        "account-bench",
    )
    .await?;
    anyhow::ensure!(
        snapshotted == events,
        "snapshot at {snapshotted} of {events}"
    );
    scratch.analyze().await?;
    let mut as_of_without = Vec::with_capacity(repetitions);
    let mut with_snapshot = Vec::with_capacity(repetitions);
    let mut whole = Vec::with_capacity(repetitions);
    let mut as_of = Vec::with_capacity(repetitions);
    let mut read = Vec::with_capacity(repetitions);
    for _ in 0..repetitions {
        let t = Instant::now();
        let raw = store.read_stream("account-bench", 1, usize::MAX).await?;
        read.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            raw.len() as u64 == events,
            "read {} events of {events}",
            raw.len()
        );
        let t = Instant::now();
        let loaded = service
            .load::<Account>("bench", AsOf::Latest)
            .await?
            .context("bench stream missing")?;
        whole.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            loaded.version == events,
            "loaded version {} of {events}",
            loaded.version
        );
        let t = Instant::now();
        let fast = crate::service::load_snapshotted::<Account>(
            store.as_ref(),
            read_models.as_ref(),
            "bench",
            AsOf::Latest,
        )
        .await?
        .context("bench stream missing")?;
        with_snapshot.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            fast == loaded,
            "the snapshot load differs from the full replay"
        );
        let t = Instant::now();
        let past = service
            .load::<Account>("bench", AsOf::Time(mid))
            .await?
            .context("bench stream missing")?;
        as_of_without.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let past_fast = crate::service::load_snapshotted::<Account>(
            store.as_ref(),
            read_models.as_ref(),
            "bench",
            AsOf::Time(mid),
        )
        .await?
        .context("bench stream missing")?;
        as_of.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            past_fast == past,
            "the as-of load from a snapshot differs from the full replay"
        );
        anyhow::ensure!(
            past.version == events / 2 + 1,
            "as-of version {}",
            past.version
        );
    }
    let pick = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    Ok(LoadReport {
        events,
        load_with_snapshot_ms: pick(&mut with_snapshot, 0.5),
        load_without_snapshot_ms: pick(&mut whole, 0.5),
        load_without_snapshot_p95_ms: pick(&mut whole, 0.95),
        full_read_ms: pick(&mut read, 0.5),
        as_of_ms: pick(&mut as_of, 0.5),
        as_of_without_snapshot_ms: pick(&mut as_of_without, 0.5),
        snapshots_taken_ms,
        repetitions,
    })
}

/// What `bench read --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ReadReport {
    /// Events in the log.
    pub events: u64,
    /// Seconds to read them all from position 0, in pages of 10,000.
    pub seconds: f64,
    /// Events read per second.
    pub events_per_sec: f64,
}

/// Runs `bench read` on `target`: appends `events` events (1,000 streams) to a scratch store, then
/// times a read-all from position 0.
///
/// # Errors
/// The scratch store cannot be created, an append fails, or the read returns the wrong count.
pub async fn read(target: &BenchTarget, events: u64) -> anyhow::Result<ReadReport> {
    let scratch = Scratch::create(target, true).await?;
    let store = scratch.store.clone();
    let body = payload(200);
    let mut written = 0u64;
    let mut versions = vec![0u64; 1_000];
    while written < events {
        let batch: Vec<AppendRequest> = (0..1_000u64.min(events - written))
            .map(|i| {
                let s = ((written + i) % 1_000) as usize;
                let request = AppendRequest::new(
                    format!("bench-{s}"),
                    ExpectedVersion::Exact(versions[s]),
                    vec![bench_event(&body)],
                );
                versions[s] += 1;
                request
            })
            .collect();
        written += batch.len() as u64;
        for result in store.append_many(batch).await? {
            result?;
        }
    }
    let started = Instant::now();
    let mut position = 0;
    let mut read = 0u64;
    loop {
        let page = store.read_all(position, 10_000).await?;
        let Some(last) = page.last() else { break };
        position = last.global_position;
        read += page.len() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(store);
    scratch.remove().await?;
    anyhow::ensure!(read == events, "read {read} of {events} events");
    Ok(ReadReport {
        events,
        seconds,
        events_per_sec: read as f64 / seconds.max(1e-9),
    })
}

/// What `bench correct --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct CorrectBench {
    /// Backend measured.
    pub store: String,
    /// Accounts written.
    pub accounts: u64,
    /// Events per account (the first opens it).
    pub events_per_account: u64,
    /// Events written.
    pub events: u64,
    /// Writing them, ms (not part of the correction).
    pub populate_ms: f64,
    /// `correct interest` over 2024 (v1 -> v2), ms: read, replay, append, report in memory.
    pub correction_ms: f64,
    /// Of which reading and replaying, ms.
    pub replay_ms: f64,
    /// Of which appending, ms.
    pub append_ms: f64,
    /// Account events replayed per second of `correction_ms`.
    pub events_per_sec: f64,
    /// Corrections the first run appended.
    pub corrections_appended: u64,
    /// The same correction again, ms.
    pub second_run_ms: f64,
    /// Corrections the second run appended (0: idempotent).
    pub second_run_appended: u64,
}

/// Runs `bench correct`: writes `accounts` accounts of `per_account` events over 2024 into a
/// scratch store, then times `correct interest` (v1 -> v2 over 2024) twice.
///
/// # Errors
/// The scratch store cannot be created or written.
pub async fn correct(
    target: &BenchTarget,
    accounts: u64,
    per_account: u64,
) -> anyhow::Result<CorrectBench> {
    use crate::corrections::{correct_interest, InterestCorrection};
    use eventfold_domain::interest::InterestAlgorithm;
    anyhow::ensure!(
        per_account >= 1,
        "an account needs at least its opening event"
    );
    let scratch = Scratch::create(target, true).await?;
    let store = scratch.store.clone();
    let started = Instant::now();
    let service = Service::new(store.clone());
    // Four writers, each 100 accounts per append_many.
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (store, service) = (store.clone(), service.clone());
            tokio::spawn(async move {
                let mine: Vec<u64> = (0..accounts).filter(|i| i % 4 == w).collect();
                for chunk in mine.chunks(100) {
                    let requests = chunk
                        .iter()
                        .map(|i| bench_account(&service, *i, per_account))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    for r in store.append_many(requests).await? {
                        r?;
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for w in writers {
        w.await??;
    }
    let populate_ms = started.elapsed().as_secs_f64() * 1000.0;
    let correction = InterestCorrection {
        from: chrono::NaiveDate::from_ymd_opt(2024, 1, 1).expect("date"),
        to: chrono::NaiveDate::from_ymd_opt(2025, 1, 1).expect("date"),
        old: InterestAlgorithm::V1,
        new: InterestAlgorithm::V2,
        annual_rate: rust_decimal::Decimal::new(15, 3),
        now: chrono::Utc::now(),
    };
    let first = correct_interest(store.clone(), &correction, &|_, _, _| {}).await?;
    let second = correct_interest(store.clone(), &correction, &|_, _, _| {}).await?;
    let name = scratch.name;
    drop((store, service));
    scratch.remove().await?;
    Ok(CorrectBench {
        store: name.into(),
        accounts,
        events_per_account: per_account,
        events: accounts * per_account,
        populate_ms,
        correction_ms: first.elapsed_ms,
        replay_ms: first.replay_ms,
        append_ms: first.append_ms,
        events_per_sec: first.events_read as f64 / (first.elapsed_ms / 1000.0).max(1e-9),
        corrections_appended: first.corrections_appended,
        second_run_ms: second.elapsed_ms,
        second_run_appended: second.corrections_appended,
    })
}

/// Account `i`: opened in December 2023, then deposits (every fourth event a smaller
/// withdrawal) on days spread over 2024.
fn bench_account(service: &Service, i: u64, per_account: u64) -> anyhow::Result<AppendRequest> {
    let base = chrono::DateTime::parse_from_rfc3339("2023-12-01T00:00:00Z")?.to_utc();
    let mut events = Vec::with_capacity(per_account as usize);
    for k in 0..per_account {
        let event = if k == 0 {
            AccountEvent::AccountOpened {
                owner: format!("bench-{i}"),
                currency: Currency::USD,
            }
        } else {
            let cents = 100 + (i * 37 + k * 11) % 50_000;
            let amount = Money::new(rust_decimal::Decimal::new(cents as i64, 2), Currency::USD)?;
            if k % 4 == 0 {
                AccountEvent::FundsWithdrawn {
                    amount: Money::new(
                        amount.amount / rust_decimal::Decimal::from(4),
                        Currency::USD,
                    )
                    .or_else(|_| Money::new(rust_decimal::Decimal::ONE, Currency::USD))?,
                }
            } else {
                AccountEvent::FundsDeposited { amount }
            }
        };
        let mut ctx = bench_context();
        // Day 0..365 of 2024 after the December opening, in order per account.
        let day = 31 + (k * 366 / per_account.max(1)) + (i % 7);
        ctx.event_time = base
            + chrono::Duration::days(day as i64)
            + chrono::Duration::seconds((i % 86_400) as i64);
        events.push(service.new_event::<Account>(&event, &ctx, uuid::Uuid::now_v7())?);
    }
    Ok(AppendRequest::new(
        format!("account-bench{i}"),
        ExpectedVersion::NoStream,
        events,
    ))
}
