//! `eventfold bench`: benchmarks that print their figures (the work is `eventfold_bench`'s).

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use eventfold_app::backend::StoreUrl;
use eventfold_bench::BenchTarget;

use crate::context::Global;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Durable appends by concurrent clients, against a raw INSERT baseline in the same run.
    Append {
        /// Concurrent clients, each appending to its own stream.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Events per command.
        #[arg(long, default_value_t = 1)]
        events_per_command: usize,
        /// Seconds per side (eventfold and the baseline each run this long in total).
        #[arg(long, default_value_t = 6.0)]
        duration: f64,
        /// Alternating rounds the time is split into.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Payload bytes per event.
        #[arg(long, default_value_t = 200)]
        payload_bytes: usize,
        /// Send every command to one stream: deposits into one account through the service
        /// (per-stream lane, version checks kept); the baseline inserts into one stream too.
        #[arg(long)]
        hot_stream: bool,
        /// The hash chain of the measured store: `on`, `off`, or `both` (a second store with it
        /// off in alternating slices of at most 0.5 s a side; prints `hash_chain_ratio`).
        #[arg(long, value_enum, default_value = "on")]
        hash_chain: HashChain,
        /// Run what `serve` runs beside the appends (every projection, the correction notifier,
        /// the windows worker) and append orders instead of bench events, so they fold real
        /// sales; projection lag is then that of serve's runner.
        #[arg(long)]
        serve_workers: bool,
    },
    /// Kafka -> notification table end to end (needs --kafka-brokers), against a bare
    /// consumer's rate on the same broker; plus single flushes of 1,000 and 10,000 rows.
    Notifications {
        /// Messages to produce and consume.
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        /// Messages per batch.
        #[arg(long, default_value_t = 100)]
        batch_size: usize,
    },
    /// The outbox relay publishing N events (needs --kafka-brokers), read back for order and
    /// losses, against a bare producer's rate on the same broker.
    Relay {
        /// Events in the log.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
    },
    /// The command path piece by piece: one event appended to the store, a deposit into an
    /// existing account through the service (load, decide, append), an account opened per
    /// command (a new stream), in alternating rounds of one run.
    Commands {
        /// Concurrent clients.
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Seconds per scenario.
        #[arg(long, default_value_t = 6.0)]
        duration: f64,
        /// Alternating rounds the time is split into.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Read-all from position 0 of a log of N events.
    Read {
        /// Events in the log.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
    },
    /// `correct interest` (v1 -> v2 over 2024) on N accounts of M events each, written into a
    /// scratch store first; run twice (the second must append nothing).
    Correct {
        /// Accounts to write and correct.
        #[arg(long, default_value_t = 200_000)]
        accounts: u64,
        /// Events per account.
        #[arg(long, default_value_t = 50)]
        events_per_account: u64,
    },
    /// HTTP deposits and reads against `eventfold serve` children on scratch stores (one open,
    /// one requiring an API key) and a minimal axum server that touches no store, in
    /// alternating rounds: what the request path and authentication cost.
    Http {
        /// Concurrent clients, each depositing into its own account.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds per side (each server is driven this long in total).
        #[arg(long, default_value_t = 6.0)]
        duration: f64,
        /// Alternating rounds the time is split into.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
    },
    /// The baseline server of `bench http` (started by it): parses the same bodies and answers
    /// with the bodies in RESPONSES without touching a store.
    #[command(hide = true)]
    HttpBaseline {
        /// Address to listen on.
        #[arg(long)]
        listen: String,
        /// JSON file of the bodies to answer with.
        #[arg(long)]
        responses: std::path::PathBuf,
    },
    /// A store upload of N late sales (CSV) applied with a correction notice each, against N
    /// other sales appended as history in the same run; then the upload again.
    Upload {
        /// Sales in the upload.
        #[arg(long, default_value_t = 20_000)]
        sales: u64,
    },
    /// The event-time window aggregator (hopping 5 min / 1 min, 30 s grace) over N out-of-order
    /// sales, against a plain count of the same records in the same run; and what a window of a
    /// million live SKUs holds in memory. Needs no store.
    Windows {
        /// Records to aggregate.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Distinct SKUs.
        #[arg(long, default_value_t = 10_000)]
        skus: u64,
        /// Alternating rounds (the rates are medians).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Time to load one stream of N events without a snapshot, and as of its middle.
    Load {
        /// Events in the stream.
        #[arg(long, default_value_t = 10_000)]
        events: u64,
        /// Loads timed per kind (the figures are medians and p95s over them).
        #[arg(long, default_value_t = 30)]
        repetitions: usize,
    },
}

/// `bench append --hash-chain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HashChain {
    /// Appends compute the chain (the product's setting).
    On,
    /// Appends leave the chain columns empty.
    Off,
    /// Both, in alternating rounds of the same run.
    Both,
}

impl From<HashChain> for eventfold_bench::HashChain {
    fn from(h: HashChain) -> Self {
        match h {
            HashChain::On => Self::On,
            HashChain::Off => Self::Off,
            HashChain::Both => Self::Both,
        }
    }
}

impl Bench {
    /// Runs the benchmark on a scratch store beside `--store` and prints its figures.
    ///
    /// # Errors
    /// A bad option (named), no `--kafka-brokers` where one is needed, the scratch store or the
    /// broker failing.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let target = match StoreUrl::parse(&global.store)? {
            StoreUrl::Sqlite(path) => BenchTarget::Sqlite(
                path.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .to_path_buf(),
            ),
            StoreUrl::Postgres(url) => BenchTarget::Postgres(url),
            StoreUrl::Nats(url) => {
                if !matches!(
                    self,
                    Self::Append { .. } | Self::Load { .. } | Self::Read { .. }
                ) {
                    bail!("on a nats:// store only bench append, load and read run");
                }
                BenchTarget::Nats(url)
            }
        };
        let output = global.output();
        match self {
            Self::Append {
                clients,
                events_per_command,
                duration,
                rounds,
                payload_bytes,
                hot_stream,
                hash_chain,
                serve_workers,
            } => {
                if clients == 0
                    || events_per_command == 0
                    || duration <= 0.0
                    || !duration.is_finite()
                {
                    bail!("--clients and --events-per-command must be at least 1 and --duration positive");
                }
                if hot_stream && events_per_command != 1 {
                    bail!("--hot-stream runs deposits (one event per command): --events-per-command must be 1");
                }
                let config = eventfold_bench::AppendBench {
                    clients,
                    events_per_command,
                    duration: Duration::from_secs_f64(duration),
                    rounds,
                    payload_bytes,
                    hot_stream,
                    hash_chain: hash_chain.into(),
                    serve_workers,
                };
                let r = eventfold_bench::append(&target, &config).await?;
                output.print(&r, || {
                    format!(
                        "eventfold: {:.0} commands/s, {:.0} events/s, p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, {:.1} commands per commit{}\n\
                         baseline:  {:.0} commands/s, {:.0} events/s, p99 {:.2} ms\nratio to baseline: {:.2} \
                         (to the same INSERTs with eventfold's two unique indexes: {:.2})\n\
                         projection lag (ingest to read-model commit): p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms\n\
                         projection runner: {} batches of {:.0} events, {:.0} events/s when busy; per batch: read {:.2} ms, \
                         documents and apply {:.2} ms, commit {:.2} ms",
                        r.commands_per_sec, r.events_per_sec, r.p50_ms, r.p95_ms, r.p99_ms, r.requests_per_commit,
                        if r.hot_stream { ", one hot stream" } else { "" },
                        r.baseline_commands_per_sec, r.baseline_events_per_sec, r.baseline_p99_ms, r.ratio_to_baseline,
                        r.ratio_to_indexed_baseline, r.projection_lag_p50_ms, r.projection_lag_p95_ms, r.projection_lag_p99_ms,
                        r.projection_runner.batches, r.projection_runner.events_per_batch,
                        r.projection_runner.events_per_busy_sec, r.projection_runner.read_ms_per_batch,
                        r.projection_runner.process_ms_per_batch, r.projection_runner.commit_ms_per_batch
                    ) + &match (r.unchained_events_per_sec, r.hash_chain_ratio) {
                        (Some(u), Some(ratio)) => format!(
                            "\nhash chain off: {u:.0} events/s; chain on / off: {ratio:.3} \
                             (median of the slices' ratios: {:.3})",
                            r.hash_chain_ratio_median.unwrap_or(ratio)
                        ),
                        _ => format!("\nhash chain: {:?}", r.hash_chain).to_lowercase(),
                    } + &r.workers_drain_ms.map_or(String::new(), |ms| {
                        format!("\nserve's projections, correction notifier and windows worker live; the workers caught up {ms:.0} ms after the last append")
                    })
                })
            }
            Self::Commands {
                clients,
                duration,
                rounds,
            } => {
                if clients == 0 || duration <= 0.0 || !duration.is_finite() {
                    bail!("--clients must be at least 1 and --duration positive");
                }
                let r = eventfold_bench::commands(
                    &target,
                    clients,
                    Duration::from_secs_f64(duration),
                    rounds,
                )
                .await?;
                output.print(&r, || {
                    let line = |name: &str, f: &eventfold_bench::CommandFigures| {
                        format!(
                            "{name}: {:.0} commands/s, p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
                            f.commands_per_sec, f.p50_ms, f.p95_ms, f.p99_ms
                        )
                    };
                    format!(
                        "{} clients on {}\n{}\n{}\n{}\nservice / store: existing {:.2}, new {:.2}",
                        r.clients,
                        r.store,
                        line("store append (1 event)", &r.store_append),
                        line("deposit through the service", &r.service_existing),
                        line("new account through the service", &r.service_new),
                        r.existing_to_store,
                        r.new_to_store
                    )
                })
            }
            Self::Read { events } => {
                if events == 0 {
                    bail!("--events must be at least 1");
                }
                let r = eventfold_bench::read(&target, events).await?;
                output.print(&r, || {
                    let raw = match (r.raw_jetstream_per_sec, r.ratio_to_raw_jetstream) {
                        (Some(raw), Some(ratio)) => format!(
                            "; JetStream alone delivers {raw:.0} messages/s (ratio {ratio:.2})"
                        ),
                        _ => String::new(),
                    };
                    format!(
                        "read {} events from position 0 in {:.2} s: {:.0} events/s{raw}",
                        r.events, r.seconds, r.events_per_sec
                    )
                })
            }
            Self::Notifications {
                messages,
                batch_size,
            } => {
                let brokers = global.brokers("bench notifications")?;
                if messages == 0 || batch_size == 0 {
                    bail!("--messages and --batch-size must be at least 1");
                }
                let r =
                    eventfold_bench::notifications(&target, &brokers, messages, batch_size).await?;
                output.print(&r, || {
                    format!(
                        "{} messages into {}: {:.0} msg/s (broker's bare consumer {:.0} msg/s, ratio {:.2}), \
                         consume latency p50 {:.1} ms p95 {:.1} ms (end to end p95 {:.0} ms), {} batches (flush p95 {:.1} ms), \
                         flush of 1,000 rows {:.1} ms, 10,000 rows {:.1} ms, peak RSS {:.0} MB",
                        r.messages, r.store, r.messages_per_sec, r.broker_baseline_messages_per_sec,
                        r.ratio_to_baseline, r.p50_latency_ms, r.p95_latency_ms, r.p95_end_to_end_ms, r.batches, r.flush_p95_ms,
                        r.flush_1k_ms, r.flush_10k_ms, r.max_rss_mb
                    )
                })
            }
            Self::Relay { events } => {
                let brokers = global.brokers("bench relay")?;
                if events == 0 {
                    bail!("--events must be at least 1");
                }
                let r = eventfold_bench::relay(&target, &brokers, events).await?;
                output.print(&r, || {
                    format!(
                        "relayed {} events: {:.0} msg/s (broker's bare producer {:.0} msg/s, ratio {:.2}); \
                         {} order violations, {} lost",
                        r.events, r.messages_per_sec, r.broker_baseline_messages_per_sec, r.ratio_to_baseline,
                        r.order_violations, r.lost
                    )
                })
            }
            Self::Windows {
                events,
                skus,
                rounds,
            } => {
                let r = eventfold_bench::windows(events, skus, rounds)?;
                output.print(&r, || {
                    format!(
                        "window aggregator: {:.0} events/s (plain count of the same windows {:.0} events/s, ratio {:.2}); \
                         {} finals, {} late corrections (none dropped), at most {} live windows; \
                         a window of a million live SKUs: {:.0} MB",
                        r.events_per_sec, r.baseline_events_per_sec, r.ratio_to_baseline, r.finals,
                        r.late_corrections, r.max_live_windows, r.million_skus_mb
                    )
                })
            }
            Self::Upload { sales } => {
                if sales == 0 {
                    bail!("--sales must be at least 1");
                }
                let r = eventfold_bench::upload(&target, sales).await?;
                output.print(&r, || {
                    format!(
                        "upload of {} late sales ({} bytes) applied with {} notices in {:.0} ms \
                         (parse {:.0} ms, append {:.0} ms, notices {:.0} ms); the same number as history: {:.0} ms \
                         (ratio {:.2}); projections afterwards {:.0} ms; the upload again {:.0} ms, {} appended; \
                         another upload with the notifier live beside it (as in serve): {} notices, all in {:.0} ms \
                         (parse and append {:.0} ms)",
                        r.sales, r.upload_bytes, r.notices, r.applied_ms, r.parse_ms, r.append_ms, r.notice_ms,
                        r.history_ms, r.ratio_to_history, r.projection_ms, r.second_upload_ms, r.second_upload_appended,
                        r.live_notices, r.live_applied_ms, r.live_append_ms
                    )
                })
            }
            Self::Correct {
                accounts,
                events_per_account,
            } => {
                if accounts == 0 || events_per_account == 0 {
                    bail!("--accounts and --events-per-account must be at least 1");
                }
                let r = eventfold_bench::correct(&target, accounts, events_per_account).await?;
                output.print(&r, || {
                    format!(
                        "{} accounts x {} events written in {:.0} ms; correct interest: {:.0} ms (replay {:.0} ms, append {:.0} ms), \
                         {:.0} events/s, {} corrections; second run {:.0} ms, {} appended",
                        r.accounts, r.events_per_account, r.populate_ms, r.correction_ms, r.replay_ms, r.append_ms,
                        r.events_per_sec, r.corrections_appended, r.second_run_ms, r.second_run_appended
                    )
                })
            }
            Self::Http {
                clients,
                duration,
                rounds,
            } => {
                if clients == 0 || rounds == 0 || duration <= 0.0 || !duration.is_finite() {
                    bail!("--clients and --rounds must be at least 1 and --duration positive");
                }
                let config = eventfold_bench::HttpBench {
                    exe: std::env::current_exe()?,
                    clients,
                    duration: Duration::from_secs_f64(duration),
                    rounds,
                };
                let r = eventfold_bench::http(&target, &config).await?;
                output.print(&r, || {
                    let line = |name: &str, f: &eventfold_bench::HttpFigures| {
                        format!(
                            "{name}: {:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
                            f.per_sec, f.p50_ms, f.p99_ms
                        )
                    };
                    format!(
                        "{} clients on {}\ndeposits: open {:.0}/s (p50 {:.2} ms, p99 {:.2} ms), \
                         with an API key {:.0}/s (p50 {:.2} ms, p99 {:.2} ms); \
                         keyed / open {:.3} (median of rounds {:.3})\n{}; open / baseline {:.3}\n\
                         {}\n{}; / baseline {:.3}\n{}\n{}; / baseline {:.3}\n{} errors",
                        r.clients,
                        r.store,
                        r.open_commands_per_sec,
                        r.open_p50_ms,
                        r.open_p99_ms,
                        r.keyed_commands_per_sec,
                        r.keyed_p50_ms,
                        r.keyed_p99_ms,
                        r.ratio,
                        r.ratio_median,
                        line("deposits, baseline", &r.baseline_commands),
                        r.commands_to_baseline,
                        line("GET /orders/{id}", &r.order_reads),
                        line("GET /orders/{id}, baseline", &r.baseline_order_reads),
                        r.order_reads_to_baseline,
                        line("GET /sales/daily", &r.daily_reads),
                        line("GET /sales/daily, baseline", &r.baseline_daily_reads),
                        r.daily_reads_to_baseline,
                        r.errors
                    )
                })
            }
            Self::HttpBaseline { listen, responses } => {
                eventfold_bench::baseline_server(&listen, &responses).await
            }
            Self::Load {
                events,
                repetitions,
            } => {
                if events == 0 || repetitions == 0 {
                    bail!("--events and --repetitions must be at least 1");
                }
                let r = eventfold_bench::load(&target, events, repetitions).await?;
                output.print(&r, || {
                    let raw = r
                        .raw_jetstream_read_ms
                        .map(|ms| format!("; JetStream alone delivers the stream in {ms:.2} ms"))
                        .unwrap_or_default();
                    format!(
                        "{} events: load with a snapshot {:.3} ms, without {:.2} ms (p95 {:.2} ms; full-envelope read_stream {:.2} ms), as of mid-stream {:.2} ms{raw}",
                        r.events, r.load_with_snapshot_ms, r.load_without_snapshot_ms, r.load_without_snapshot_p95_ms, r.full_read_ms, r.as_of_ms
                    )
                })
            }
        }
    }
}
