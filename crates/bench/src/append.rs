//! `bench append`: durable appends by concurrent clients against raw INSERT baselines in
//! alternating rounds, with a live projection for the lag from ingest to read-model commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use eventfold_app::service::{Executed, Service};
use eventfold_core::{
    Actor, AppendRequest, ExpectedVersion, Projection, ProjectionRunner, RecordedEvent,
    StoredResponse,
};
use eventfold_domain::account::{Account, AccountCommand};
use eventfold_domain::{Currency, Money};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::scratch::{RawBaseline, Scratch};
use crate::{bench_context, bench_event, drive, median, ms, payload, BenchTarget, Run};

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
    /// The hash chain of eventfold's store: on, off, or both (a second store with it off,
    /// driven in alternating slices of each round, for `hash_chain_ratio`).
    pub hash_chain: HashChain,
    /// Run what `serve` runs beside the appends: every projection eventfold registers, the
    /// correction notifier and the windows worker, live; and append sales instead of bench
    /// events (each client's stream is an order: `OrderCreated` first, then `OrderPaid`s), so
    /// the sales views, the notifier and the windows fold real work.
    pub serve_workers: bool,
}

/// `bench append --hash-chain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    /// Concurrent clients, each appending to its own stream (one stream for all with `hot_stream`).
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
    /// The live projection runner's batches during the eventfold rounds: how fast it applies
    /// when busy and where that time goes.
    pub projection_runner: RunnerFigures,
    /// `--hash-chain`: whether eventfold's store chained its appends (`both`: the figures above
    /// are with the chain on).
    pub hash_chain: HashChain,
    /// `--serve-workers`: the correction notifier's and the windows worker's time to catch up
    /// with the head after the last append (they ran live during the rounds), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers_drain_ms: Option<f64>,
    /// Whether serve's projections and workers ran (`--serve-workers`).
    pub serve_workers: bool,
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

/// A projection runner's batches (see [`eventfold_core::RunnerTimings`]).
#[derive(Debug, Clone, Serialize)]
pub struct RunnerFigures {
    /// Batches committed.
    pub batches: u64,
    /// Mean events per batch.
    pub events_per_batch: f64,
    /// Events per second of busy time (reading, applying, committing; not waiting).
    pub events_per_busy_sec: f64,
    /// Mean ms per batch reading the log.
    pub read_ms_per_batch: f64,
    /// Mean ms per batch reading documents and applying the events.
    pub process_ms_per_batch: f64,
    /// Mean ms per batch committing documents and checkpoints.
    pub commit_ms_per_batch: f64,
}

impl From<eventfold_core::RunnerTimings> for RunnerFigures {
    fn from(t: eventfold_core::RunnerTimings) -> Self {
        let per_batch = |d: Duration| d.as_secs_f64() * 1000.0 / t.batches.max(1) as f64;
        Self {
            batches: t.batches,
            events_per_batch: t.events as f64 / t.batches.max(1) as f64,
            events_per_busy_sec: t.events_per_busy_sec(),
            read_ms_per_batch: per_batch(t.read),
            process_ms_per_batch: per_batch(t.process),
            commit_ms_per_batch: per_batch(t.commit),
        }
    }
}

/// The bench's live projection: events per stream.
pub(crate) struct EventsPerStream;

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

/// Longest one side of `--hash-chain both` runs before the other takes its turn. On the shared
/// 2-core machine, rounds of 2 s a side gave chained/unchained ratios spread over 10 points from
/// run to run (0.90 to 1.00), and 0.5 s slices over 4 (0.94 to 0.98): the machine's slow spells
/// last seconds, and shorter turns split them evenly between the two sides.
pub(crate) const CHAIN_SLICE: Duration = Duration::from_millis(500);

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
    let runner =
        ProjectionRunner::new(store.clone(), scratch.read_models.clone()).register(EventsPerStream);
    let runner = Arc::new(if config.serve_workers {
        eventfold_app::projections::register_all(runner)
    } else {
        runner
    });
    runner.catch_up(None, &|_, _| {}).await?;
    runner.reset_lag();
    let (stop, live) = live_projection(&runner);
    let workers = config
        .serve_workers
        .then(|| ServeWorkers::start(&store, &scratch.read_models))
        .transpose()?;
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
    let workers_drain_ms = match workers {
        Some(w) => Some(w.drain().await?),
        None => None,
    };
    if let Some((stop, live)) = unchained_live {
        let _ = stop.send(());
        live.await.context("projection runner panicked")??;
    }
    let lag = |q| runner.lag_quantile_ms(q).unwrap_or(0.0);
    let (lag50, lag95, lag99) = (lag(0.5), lag(0.95), lag(0.99));
    let projection_runner = RunnerFigures::from(runner.timings());

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
        projection_runner,
        workers_drain_ms,
        serve_workers: config.serve_workers,
        hash_chain: config.hash_chain,
        unchained_events_per_sec,
        hash_chain_ratio: unchained_events_per_sec.map(|u| events_per_sec / u.max(1e-9)),
        hash_chain_ratio_median: median(&mut slice_ratios),
    })
}

pub(crate) type LiveProjection = (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), eventfold_core::RunnerError>>,
);

/// Runs `runner` live until the returned sender is used.
pub(crate) fn live_projection(runner: &Arc<ProjectionRunner>) -> LiveProjection {
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
pub(crate) async fn drive_store(
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
    let sales = config.serve_workers;
    let (store, body, versions) = (service.store().clone(), body.clone(), versions.clone());
    drive(config.clients, round, move |client, _| {
        let store = store.clone();
        let body = body.clone();
        let versions = versions.clone();
        async move {
            let v = versions[client].load(Ordering::Relaxed);
            let events = (0..per)
                .map(|i| {
                    if sales {
                        sale_event(v + i as u64 + 1)
                    } else {
                        bench_event(&body)
                    }
                })
                .collect();
            let expected = if v == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(v)
            };
            let stream = if sales {
                format!("order-bench-{client}")
            } else {
                format!("bench-{client}")
            };
            let out = store
                .append(AppendRequest::new(stream, expected, events))
                .await?;
            versions[client].store(out.stream_version, Ordering::Relaxed);
            Ok(())
        }
    })
    .await
}

/// The event at `version` of a bench order: `OrderCreated` (one line of SKU `sku-{version % 50}`)
/// first, `OrderPaid` after, at store `bench`, now.
fn sale_event(version: u64) -> eventfold_core::NewEvent {
    use eventfold_domain::order::{OrderEvent, OrderLine};
    let ten = Money::parse("10.00", Currency::USD).expect("a valid amount");
    let actor = Actor::system("bench");
    let event = if version == 1 {
        OrderEvent::OrderCreated {
            customer_id: "bench".into(),
            store_id: "bench".into(),
            lines: vec![OrderLine {
                sku: format!("sku-{}", version % 50),
                quantity: 1,
                amount: ten,
            }],
            total: ten,
            actor: actor.clone(),
            calendar: None,
        }
    } else {
        OrderEvent::OrderPaid {
            amount: ten,
            payment_id: format!("p-{version}"),
            store_id: "bench".into(),
            actor: actor.clone(),
            calendar: None,
        }
    };
    let json = serde_json::to_value(&event).expect("an order event encodes");
    let (kind, payload) = json
        .as_object()
        .and_then(|o| o.iter().next())
        .map(|(k, v)| (k.clone(), v.to_string()))
        .expect("an externally tagged event");
    eventfold_core::testkit::event(&kind, actor, &payload)
}

/// The workers `serve` runs beside its projections, live for a bench run.
struct ServeWorkers {
    notifier: eventfold_app::reporting::CorrectionNotifier,
    windows: eventfold_app::sales_windows::WindowWorker,
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ServeWorkers {
    fn start(
        store: &Arc<dyn eventfold_core::EventStore>,
        read_models: &Arc<dyn eventfold_core::ReadModelStore>,
    ) -> anyhow::Result<Self> {
        let notifier =
            eventfold_app::reporting::CorrectionNotifier::new(store.clone(), read_models.clone());
        let windows = eventfold_app::sales_windows::WindowWorker::new(
            store.clone(),
            read_models.clone(),
            eventfold_app::sales_windows::DEFAULT_GRACE_SECS,
        )
        .map_err(anyhow::Error::msg)?;
        let stop = tokio_util::sync::CancellationToken::new();
        let tasks = vec![
            {
                let (n, s) = (notifier.clone(), stop.clone());
                tokio::spawn(async move {
                    n.run(s.cancelled_owned()).await;
                })
            },
            {
                let (w, s) = (windows.clone(), stop.clone());
                tokio::spawn(async move { w.run(s.cancelled_owned()).await })
            },
        ];
        Ok(Self {
            notifier,
            windows,
            stop,
            tasks,
        })
    }

    /// Stops the live workers and catches both up: ms until both reached the head.
    async fn drain(self) -> anyhow::Result<f64> {
        let started = std::time::Instant::now();
        self.notifier.catch_up().await?;
        self.windows.catch_up().await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        self.stop.cancel();
        for t in self.tasks {
            t.await.context("a serve worker panicked")?;
        }
        Ok(ms)
    }
}

pub(crate) fn no_render(_: &Account, _: u64) -> StoredResponse {
    StoredResponse {
        status: 200,
        body: String::new(),
    }
}

/// One hot-stream command: a deposit of 1.00 into account `bench-hot`, through the service.
pub(crate) async fn hot_deposit(service: &Service) -> anyhow::Result<()> {
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
pub(crate) async fn drive_raw(
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
