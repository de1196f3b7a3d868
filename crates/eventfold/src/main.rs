//! `eventfold`: the command-line interface for operators (serve, relay, consume, transform,
//! migrate, import, history, state, projections, bench).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use eventfold::backend::{Backend, StoreUrl, DEFAULT_STORE};
use eventfold::service::{timeline, AsOf, Service};
use eventfold::{bench, deadlines, http, import, inbox, notifications, order_notifications};
use eventfold_core::{Aggregate, Replayed};
use eventfold_domain::account::Account;
use eventfold_domain::inventory::Inventory;
use eventfold_domain::order::Order;
use eventfold_domain::payment::Payment;
use eventfold_kafka::batch::{run_batch_consumer, BatchConfig, BatchStats};
use eventfold_kafka::exactly_once::{run_exactly_once, ExactlyOnceConfig, ExactlyOnceStats};
use eventfold_kafka::{run_consumer, ConsumeStats, ConsumerConfig, Relay, RelayConfig};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// mimalloc: loading a stream allocates a few strings per event; glibc malloc spent a fifth of a
/// 10,000-event load in malloc/free.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "eventfold",
    version,
    about = "Event-sourced shop backend: event store, projections, HTTP API"
)]
struct Cli {
    /// Where events and read models live: sqlite://PATH or postgres://USER@HOST:PORT/DATABASE.
    #[arg(long, global = true, env = "EVENTFOLD_STORE", default_value = DEFAULT_STORE)]
    store: String,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Kafka bootstrap servers (HOST:PORT[,...]); with it, `serve` publishes the event log to
    /// Kafka through the outbox relay. Without it everything runs in-process.
    #[arg(long, global = true, env = "EVENTFOLD_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Topic prefix: events of category `order` go to `{prefix}.order`.
    #[arg(long, global = true, default_value = "eventfold")]
    kafka_topic_prefix: String,
    /// A hot stream to spread over N salted message keys, `STREAM=N` (repeatable), e.g.
    /// `order-hot=8`: per-salt order, merged by `stream_version` downstream.
    #[arg(long = "kafka-salt", global = true, value_parser = parse_salt)]
    kafka_salt: Vec<(String, u32)>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (and keep projections up to date).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Cancel orders still unpaid this many seconds after creation (0: never).
        #[arg(long, default_value_t = 1800.0)]
        unpaid_order_timeout_secs: f64,
        /// Keep flash-sale stock in this Redis (`redis://HOST:PORT`) instead of in-process.
        #[arg(long, env = "EVENTFOLD_REDIS")]
        redis: Option<String>,
        /// Run the order and payment sagas against the payment provider at this URL (see
        /// `eventfold::payments` for its API); without it orders are paid through the API.
        #[arg(long, env = "EVENTFOLD_PAYMENT_PROVIDER")]
        payment_provider: Option<String>,
        /// The HMAC secret the provider signs callbacks with.
        #[arg(long, env = "EVENTFOLD_PAYMENT_SECRET", hide_env_values = true)]
        payment_secret: Option<String>,
        /// How long one call to the provider may take before the saga tries again (ms).
        #[arg(long, default_value_t = 3000)]
        payment_step_timeout_ms: u64,
    },
    /// Publish the event log to Kafka (the outbox relay): until stopped, or `--once` up to the
    /// current head. Needs --kafka-brokers.
    Relay {
        /// Publish what is committed now, then exit.
        #[arg(long)]
        once: bool,
        /// Work partitions this relay owns, e.g. `0-7` or `0,2,4` (default: all of 0-15).
        #[arg(long, conflicts_with = "group")]
        shards: Option<String>,
        /// Share the work partitions with the other relays of this group: Kafka's group
        /// coordinator gives each to exactly one running relay and moves a stopped (or, after
        /// 10 s, a dead) relay's to the others.
        #[arg(long, conflicts_with = "once")]
        group: Option<String>,
        /// Do not create topics (they are provisioned separately).
        #[arg(long)]
        no_create_topics: bool,
    },
    /// Consume a Kafka topic through an inbox until stopped (Ctrl-C). Needs --kafka-brokers.
    Consume {
        #[command(subcommand)]
        consumer: ConsumerName,
    },
    /// Run an exactly-once consume-transform-produce worker (input offsets and outputs commit in
    /// one Kafka transaction) until stopped (Ctrl-C). Needs --kafka-brokers and a broker with
    /// transactions.
    Transform {
        #[command(subcommand)]
        transform: TransformName,
    },
    /// Apply the store's schema migrations (every command also does on opening) and print the
    /// schema version; running it twice is a no-op, a schema newer than this binary is refused.
    Migrate,
    /// Import data into the store.
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
    /// Print a stream's audit timeline: who, when, what changed, state before.
    History {
        /// Stream id, e.g. order-42 or account-7.
        stream: String,
    },
    /// Print an aggregate's state, now or as of a time or version.
    State {
        /// Stream id, e.g. order-42 or account-7.
        stream: String,
        /// RFC 3339 instant: fold the events whose event time is at or before it.
        #[arg(long, conflicts_with = "version")]
        as_of: Option<String>,
        /// Fold the events up to this stream version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Projection maintenance.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Aggregate snapshots (M4).
    Snapshots {
        #[command(subcommand)]
        command: SnapshotsCommand,
    },
    /// Walk the hash chain (M6) of the whole log or of one stream and name the first broken link
    /// (position, stream, version, expected vs found); with --anchor, also check that the log
    /// still extends a signed head. Exits 1 when a link or the anchor does not hold.
    Verify {
        /// The stream to walk, e.g. `account-42`.
        stream: Option<String>,
        /// The whole log (positions from 1, the global and every stream's links).
        #[arg(long, conflicts_with = "stream")]
        all: bool,
        /// An anchor file written by `anchor sign` (the whole log is walked).
        #[arg(long, requires = "public_key", conflicts_with = "stream")]
        anchor: Option<PathBuf>,
        /// The Ed25519 public key the anchor must be signed with: 64 hex characters, or a file
        /// holding them.
        #[arg(long, requires = "anchor")]
        public_key: Option<String>,
        /// An archive directory written by `archive` (M8) to check against the log as it is
        /// walked: every file's SHA-256, every archived event against its stub, every stub
        /// against the archive (the whole log is walked).
        #[arg(long, conflicts_with = "stream")]
        archive: Option<PathBuf>,
    },
    /// Move the events of closed streams (orders completed, cancelled or refunded) whose event
    /// time is before --before out of the hot store into compressed, checksummed month files in
    /// --to, with a manifest of chain heads (M8). The hot rows stay as stubs that keep the hash
    /// chain, stream versions and event ids; snapshots stay hot. The chain is verified first.
    Archive {
        /// The cut-off: YYYY-MM-DD (00:00 UTC) or an RFC 3339 time.
        #[arg(long)]
        before: String,
        /// The archive directory (created if missing; later runs add to its manifest).
        #[arg(long)]
        to: PathBuf,
    },
    /// Bring archived events back into the hot store from an archive directory (M8): every
    /// file's checksum is checked and every event proven against its stub first.
    Restore {
        /// The archive directory.
        #[arg(long)]
        from: PathBuf,
        /// Only this stream's events, e.g. `order-42`.
        #[arg(long)]
        stream: Option<String>,
    },
    /// Signed anchors of the hash chain (M6).
    Anchor {
        #[command(subcommand)]
        command: AnchorCommand,
    },
    /// Corrections by replay (M7).
    Correct {
        #[command(subcommand)]
        command: CorrectCommand,
    },
    /// Simulations that drive a real server and print a report.
    Simulate {
        #[command(subcommand)]
        simulation: Simulation,
    },
    /// Benchmarks that print their figures.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum Simulation {
    /// A crowd buys a flash sale over HTTP from `eventfold serve` (started as a child process on
    /// --store, with --redis and --kafka-brokers passed on), paying through a sandbox payment
    /// provider; prints what must hold (oversold, over-limit buyers, double charges, unpaid
    /// orders not cancelled, stuck sagas, stock reconciled) and the accept path's speed.
    FlashSale {
        /// Units for sale.
        #[arg(long, default_value_t = 1000)]
        stock: u64,
        /// Distinct buyers.
        #[arg(long, default_value_t = 50_000)]
        buyers: u64,
        /// Purchase attempts.
        #[arg(long, default_value_t = 200_000)]
        attempts: u64,
        /// Share of attempts that repeat an earlier one (same idempotency key).
        #[arg(long, default_value_t = 0.1)]
        duplicate_rate: f64,
        /// Share of accepted orders whose buyer pays.
        #[arg(long, default_value_t = 0.7)]
        pay_rate: f64,
        /// Share of paying buyers whose payment fails.
        #[arg(long, default_value_t = 0.05)]
        payment_failure_rate: f64,
        /// Units one buyer may hold.
        #[arg(long, default_value_t = 2)]
        per_buyer_limit: u64,
        /// Concurrent HTTP clients.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// The server's unpaid-order timeout for this run (seconds; the product default is 1800).
        #[arg(long, default_value_t = 5.0)]
        unpaid_order_timeout_secs: f64,
        /// Kill the server with SIGKILL half-way and start it again.
        #[arg(long)]
        kill_server: bool,
        /// Keep flash-sale stock in this Redis instead of in the server's process.
        #[arg(long, env = "EVENTFOLD_REDIS")]
        redis: Option<String>,
        /// Varies buyers, quantities and payments between runs.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum TransformName {
    /// Order events (`{prefix}.order`) into customer notifications (topic `notifications`).
    OrderNotifications {
        /// Topic to write notifications to.
        #[arg(long, default_value = "notifications")]
        topic: String,
        /// `transactional.id`: stable per worker instance; a restarted instance fences the
        /// previous one.
        #[arg(long, default_value = "order-notifications-0")]
        transactional_id: String,
        /// Static membership (group.instance.id).
        #[arg(long)]
        group_instance_id: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConsumerName {
    /// Notifications (topic `notifications`) into the table `notifications`, in batches, with
    /// retries, a circuit breaker and a dead-letter topic (`notifications.dlq`).
    Notifications {
        /// Topic to read.
        #[arg(long, default_value = "notifications")]
        topic: String,
        /// Flush at this many messages.
        #[arg(long, default_value_t = 100)]
        batch_size: usize,
        /// Flush when the oldest message has waited this long, ms.
        #[arg(long, default_value_t = 5_000)]
        max_wait_ms: u64,
        /// Static membership (group.instance.id).
        #[arg(long)]
        group_instance_id: Option<String>,
    },
    /// "Prize won" messages (topic `prizes`): each deposits its prize once per event_id.
    Prizes {
        /// Topic to read (default `prizes`).
        #[arg(long, default_value = "prizes")]
        topic: String,
        /// Static membership (group.instance.id): restarts within the session timeout keep the
        /// partitions without a rebalance.
        #[arg(long)]
        group_instance_id: Option<String>,
    },
}

#[derive(Subcommand)]
enum ImportSource {
    /// The CDNOW purchase log (customer_id date number_of_cds dollar_value).
    Cdnow {
        /// Path to CDNOW_master.txt.
        file: PathBuf,
        /// Skip malformed rows (and report them) instead of refusing the file.
        #[arg(long)]
        skip_bad: bool,
    },
}

#[derive(Subcommand)]
enum CorrectCommand {
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

#[derive(Subcommand)]
enum AnchorCommand {
    /// Create an Ed25519 key pair: the secret key (hex seed, file mode 0600, never overwritten)
    /// and the public key (hex).
    Keygen {
        /// Where to write the secret key.
        #[arg(long)]
        secret_key: PathBuf,
        /// Where to write the public key.
        #[arg(long)]
        public_key: PathBuf,
    },
    /// Verify the whole log, then sign its head (position and hash) with the secret key and
    /// write the anchor file (JSON). Nothing is signed when the chain is broken.
    Sign {
        /// The secret key file written by `anchor keygen`.
        #[arg(long)]
        secret_key: PathBuf,
        /// Where to write the anchor.
        #[arg(long, default_value = "eventfold-anchor.json")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum SnapshotsCommand {
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

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// Delete a projection's read model (all of them without NAME) and rebuild it from position 0.
    Rebuild {
        /// order_summary, balance_by_account, daily_sales_by_store or real_time_sales.
        name: Option<String>,
    },
    /// Each projection's checkpoint and lag.
    Status,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Durable appends by concurrent clients, against a raw INSERT baseline in the same run.
    Append {
        /// Concurrent clients.
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
        /// The hash chain (M6) of the measured store: `on`, `off`, or `both` (a second store
        /// with it off in alternating slices of at most 0.5 s a side; prints `hash_chain_ratio`).
        #[arg(long, value_enum, default_value = "on")]
        hash_chain: bench::HashChain,
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
    /// Read-all from position 0 of a log of N events.
    Read {
        /// Events in the log.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
    },
    /// `correct interest` (v1 -> v2 over 2024) on N accounts of M events each, written into a
    /// scratch store first; run twice (the second must append nothing).
    Correct {
        /// Accounts.
        #[arg(long, default_value_t = 200_000)]
        accounts: u64,
        /// Events per account.
        #[arg(long, default_value_t = 50)]
        events_per_account: u64,
    },
    /// Time to load one stream of N events without a snapshot, and as of its middle.
    Load {
        /// Events in the stream.
        #[arg(long, default_value_t = 10_000)]
        events: u64,
        /// Repetitions.
        #[arg(long, default_value_t = 30)]
        repetitions: usize,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A progress bar of `len` steps (hidden for --json or when stderr is not a terminal).
fn progress_bar(json: bool, len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// A progress bar for work in named phases: the phase, a bar, done/of.
fn phase_bar(json: bool) -> indicatif::ProgressBar {
    let bar = progress_bar(json, 0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:8} {wide_bar} {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Shows `done` of `of` in `phase` on a [`phase_bar`].
fn show_phase(bar: &indicatif::ProgressBar, phase: &str, done: u64, of: u64) {
    bar.set_message(phase.to_owned());
    bar.set_length(of);
    bar.set_position(done);
}

/// `--before`: a UTC day (its 00:00) or an RFC 3339 time.
fn parse_cutoff(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| {
            anyhow::anyhow!("--before {text:?} is not a date (YYYY-MM-DD) or an RFC 3339 time")
        })
}

/// Reads an anchor file and checks its signature with `key` (hex, or a file holding it).
fn read_anchor(path: &Path, key: &str) -> anyhow::Result<eventfold::verify::TrustedAnchor> {
    let key_text = if key.trim().len() == 64 && key.trim().bytes().all(|b| b.is_ascii_hexdigit()) {
        key.to_owned()
    } else {
        std::fs::read_to_string(key).with_context(|| format!("reading public key file {key}"))?
    };
    let public = eventfold_core::chain::verifying_key(&key_text)?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading anchor {}", path.display()))?;
    let anchor: eventfold_core::chain::Anchor = serde_json::from_str(&text)
        .with_context(|| format!("anchor {} is not an anchor file", path.display()))?;
    let hash = anchor
        .verify(&public)
        .with_context(|| format!("anchor {}", path.display()))?;
    Ok(eventfold::verify::TrustedAnchor { anchor, hash })
}

/// Writes a new secret file readable by its owner only; an existing file is never overwritten.
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| {
        format!(
            "creating {} (an existing key is never overwritten)",
            path.display()
        )
    })?;
    writeln!(file, "{text}").with_context(|| format!("writing {}", path.display()))
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", text());
    }
    Ok(())
}

/// What `consume notifications --json` prints when it stops.
#[derive(Serialize)]
struct NotificationsReport {
    written: u64,
    batches: u64,
    dead_lettered: u64,
    failed_tries: u64,
    breaker_opened: u64,
}

impl From<&BatchStats> for NotificationsReport {
    fn from(s: &BatchStats) -> Self {
        Self {
            written: s.written,
            batches: s.batches,
            dead_lettered: s.dead_lettered,
            failed_tries: s.failed_tries,
            breaker_opened: s.breaker_opened,
        }
    }
}

/// What `transform --json` prints when it stops.
#[derive(Serialize)]
struct TransformReport {
    /// Transactions committed.
    committed: u64,
    /// Transactions aborted (their batches were tried again).
    aborted: u64,
    /// Input messages committed.
    inputs: u64,
    /// Output messages committed.
    outputs: u64,
    /// Inputs dead-lettered.
    dead_lettered: u64,
}

impl From<ExactlyOnceStats> for TransformReport {
    fn from(s: ExactlyOnceStats) -> Self {
        Self {
            committed: s.committed,
            aborted: s.aborted,
            inputs: s.inputs,
            outputs: s.outputs,
            dead_lettered: s.dead_lettered,
        }
    }
}

/// What `consume --json` prints when it stops.
#[derive(Serialize)]
struct ConsumeReport {
    /// Messages handled (including duplicates that changed nothing).
    done: u64,
    /// Tries that failed transiently and were retried.
    retries: u64,
    /// Messages skipped as poison.
    poison: u64,
}

impl From<ConsumeStats> for ConsumeReport {
    fn from(s: ConsumeStats) -> Self {
        Self {
            done: s.done,
            retries: s.retries,
            poison: s.poison,
        }
    }
}

/// What `relay --once --json` prints.
#[derive(Serialize)]
struct RelayReport {
    /// Events published (acknowledged by the broker).
    published: u64,
    /// Log position every owned shard reached.
    position: u64,
}

impl From<eventfold_kafka::RelayProgress> for RelayReport {
    fn from(p: eventfold_kafka::RelayProgress) -> Self {
        Self {
            published: p.published,
            position: p.position,
        }
    }
}

/// `--kafka-brokers`, which `command` needs.
fn brokers(kafka_brokers: &Option<String>, command: &str) -> anyhow::Result<String> {
    kafka_brokers.clone().with_context(|| {
        format!("{command} needs --kafka-brokers HOST:PORT (or EVENTFOLD_KAFKA_BROKERS)")
    })
}

/// Parses `--kafka-salt STREAM=N` (N from 2 to 1,024).
fn parse_salt(spec: &str) -> Result<(String, u32), String> {
    let (stream, n) = spec
        .rsplit_once('=')
        .ok_or_else(|| format!("{spec:?}: expected STREAM=N, e.g. order-hot=8"))?;
    let n: u32 = n
        .parse()
        .map_err(|_| format!("{spec:?}: N must be a number"))?;
    if stream.is_empty() || !(2..=1_024).contains(&n) {
        return Err(format!("{spec:?}: need a stream and N from 2 to 1024"));
    }
    Ok((stream.to_owned(), n))
}

/// Parses `0-7`, `0,2,4` or a mix into shard numbers below `shards`.
fn parse_shards(spec: &str, shards: u32) -> anyhow::Result<Vec<u32>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let number = |s: &str| -> anyhow::Result<u32> {
            let n: u32 = s
                .trim()
                .parse()
                .with_context(|| format!("--shards: {s:?} is not a shard number"))?;
            if n >= shards {
                bail!("--shards: shard {n} is not below {shards}");
            }
            Ok(n)
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    bail!("--shards: range {part:?} runs backwards");
                }
                out.extend(a..=b);
            }
            None => out.push(number(part)?),
        }
    }
    if out.is_empty() {
        bail!("--shards: no shard named");
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            unpaid_order_timeout_secs,
            redis,
            payment_provider,
            payment_secret,
            payment_step_timeout_ms,
        } => {
            let timeout = Duration::try_from_secs_f64(unpaid_order_timeout_secs)
                .context("--unpaid-order-timeout-secs must be a number of seconds, 0 or more")?;
            let backend = Backend::open(&cli.store).await?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal(shutdown.clone()));
            let relay = match &cli.kafka_brokers {
                Some(brokers) => {
                    let mut config = RelayConfig::new(brokers);
                    config.topic_prefix = cli.kafka_topic_prefix.clone();
                    config.salted_streams = cli.kafka_salt.iter().cloned().collect();
                    let relay = Relay::new(backend.events.clone(), config)?;
                    let stop = shutdown.clone();
                    tracing::info!(brokers = %brokers, "publishing the event log to Kafka");
                    Some(tokio::spawn(async move {
                        relay.run(stop.cancelled_owned()).await;
                    }))
                }
                None => None,
            };
            let timer = (!timeout.is_zero()).then(|| {
                let timer = deadlines::UnpaidOrderTimeout::new(
                    backend.events.clone(),
                    backend.read_models.clone(),
                    timeout,
                );
                let stop = shutdown.clone();
                tokio::spawn(async move { timer.run(stop.cancelled_owned()).await })
            });
            let ledger: Option<Arc<dyn eventfold_core::stock::StockLedger>> = match &redis {
                Some(url) => Some(Arc::new(
                    eventfold_redis::RedisStock::connect(url, "eventfold:")
                        .await
                        .with_context(|| format!("connecting to Redis at {url}"))?,
                )),
                None => None,
            };
            let payments = match payment_provider {
                Some(url) => {
                    let secret = payment_secret.context(
                        "--payment-provider needs --payment-secret (or EVENTFOLD_PAYMENT_SECRET) to check callbacks",
                    )?;
                    let config = eventfold::sagas::SagaConfig {
                        step_timeout: Duration::from_millis(payment_step_timeout_ms),
                        ..Default::default()
                    };
                    let provider =
                        eventfold::payments::HttpProvider::new(&url, config.step_timeout)?;
                    tracing::info!(provider = %url, "payment sagas on");
                    let provider: Arc<dyn eventfold::payments::PaymentProvider> =
                        Arc::new(provider);
                    Some((provider, secret.into_bytes(), config))
                }
                None => None,
            };
            let options = http::ServeOptions { ledger, payments };
            let served = http::serve_with(backend, listener, shutdown, options).await;
            for task in [relay, timer].into_iter().flatten() {
                let _ = task.await;
            }
            served
        }
        Command::Consume {
            consumer:
                ConsumerName::Prizes {
                    topic,
                    group_instance_id,
                },
        } => {
            let brokers = brokers(&cli.kafka_brokers, "consume")?;
            let backend = Backend::open(&cli.store).await?;
            let service = Service::new(backend.events.clone());
            let mut config = ConsumerConfig::new(brokers, inbox::PRIZES, &[&topic]);
            config.group_instance_id = group_instance_id;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal(shutdown.clone()));
            let stats = run_consumer(
                &config,
                |m| {
                    let service = service.clone();
                    async move { inbox::award_prize(&service, &m).await }
                },
                shutdown.cancelled_owned(),
            )
            .await?;
            print(cli.json, &ConsumeReport::from(stats), || {
                format!(
                    "handled {} messages ({} retries, {} poison)",
                    stats.done, stats.retries, stats.poison
                )
            })
        }
        Command::Consume {
            consumer:
                ConsumerName::Notifications {
                    topic,
                    batch_size,
                    max_wait_ms,
                    group_instance_id,
                },
        } => {
            let brokers = brokers(&cli.kafka_brokers, "consume")?;
            if batch_size == 0 || max_wait_ms == 0 {
                bail!("--batch-size and --max-wait-ms must be at least 1");
            }
            let sink = notifications::NotificationSink::open(&cli.store).await?;
            let mut config = ConsumerConfig::new(brokers, "notifications", &[&topic]);
            config.group_instance_id = group_instance_id;
            let batch = BatchConfig {
                max_messages: batch_size,
                max_wait: Duration::from_millis(max_wait_ms),
                ..BatchConfig::default()
            };
            let shutdown = CancellationToken::new();
            tokio::spawn(signal(shutdown.clone()));
            let stats = run_batch_consumer(
                &config,
                &batch,
                notifications::decode,
                &sink,
                shutdown.cancelled_owned(),
            )
            .await?;
            print(cli.json, &NotificationsReport::from(&stats), || {
                format!(
                    "wrote {} notifications in {} batches; {} dead-lettered; {} failed tries; breaker opened {} times",
                    stats.written, stats.batches, stats.dead_lettered, stats.failed_tries, stats.breaker_opened
                )
            })
        }
        Command::Transform {
            transform:
                TransformName::OrderNotifications {
                    topic,
                    transactional_id,
                    group_instance_id,
                },
        } => {
            let brokers = brokers(&cli.kafka_brokers, "transform")?;
            let backend = Backend::open(&cli.store).await?;
            let input = format!("{}.order", cli.kafka_topic_prefix);
            let mut consumer = ConsumerConfig::new(
                &brokers,
                order_notifications::ORDER_NOTIFICATIONS,
                &[&input],
            );
            consumer.group_instance_id = group_instance_id;
            let config = ExactlyOnceConfig::new(consumer, transactional_id);
            for t in [&topic, &input] {
                eventfold_kafka::create_topic(&brokers, t, 3).await?;
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(signal(shutdown.clone()));
            let store = backend.events.clone();
            let stats = run_exactly_once(
                &config,
                |m| {
                    let (store, topic) = (store.clone(), topic.clone());
                    async move { order_notifications::transform(&store, &topic, m).await }
                },
                shutdown.cancelled_owned(),
            )
            .await?;
            print(cli.json, &TransformReport::from(stats), || {
                format!(
                    "committed {} transactions ({} inputs, {} outputs, {} dead-lettered); aborted {}",
                    stats.committed, stats.inputs, stats.outputs, stats.dead_lettered, stats.aborted
                )
            })
        }
        Command::Relay {
            once,
            shards,
            group,
            no_create_topics,
        } => {
            let brokers = brokers(&cli.kafka_brokers, "relay")?;
            let backend = Backend::open(&cli.store).await?;
            let mut config = RelayConfig::new(brokers);
            config.topic_prefix = cli.kafka_topic_prefix.clone();
            config.salted_streams = cli.kafka_salt.iter().cloned().collect();
            if let Some(spec) = shards {
                config.owned = Some(parse_shards(&spec, config.shards)?);
            }
            config.group = group;
            config.create_topics = !no_create_topics;
            let relay = Relay::new(backend.events.clone(), config)?;
            if once {
                let p = relay.publish_pending().await?;
                print(cli.json, &RelayReport::from(p), || {
                    format!(
                        "published {} events; every owned shard is at position {}",
                        p.published, p.position
                    )
                })
            } else {
                let shutdown = CancellationToken::new();
                tokio::spawn(signal(shutdown.clone()));
                relay.run(shutdown.cancelled_owned()).await;
                Ok(())
            }
        }
        Command::Import {
            source: ImportSource::Cdnow { file, skip_bad },
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let backend = Backend::open(&cli.store).await?;
            let runner = backend.projection_runner().with_batch_size(5_000);
            let options = import::ImportOptions {
                skip_bad,
                progress: !cli.json,
            };
            let summary = import::import_cdnow(&backend, &runner, &bytes, &options).await?;
            print(cli.json, &summary, || {
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
        Command::Migrate => {
            let backend = Backend::open(&cli.store).await?;
            let s = backend.schema;
            print(cli.json, &s, || {
                if s.previous == s.current {
                    format!("schema version {}: already current", s.current)
                } else {
                    format!(
                        "schema version {} (migrated from {}, {} migration(s) applied)",
                        s.current,
                        s.previous,
                        s.current - s.previous
                    )
                }
            })
        }
        Command::History { stream } => {
            let service = Service::new(Backend::open(&cli.store).await?.events);
            let events = service.read_stream(&stream).await?;
            if events.is_empty() {
                bail!("stream {stream} has no events");
            }
            let entries = match eventfold_core::envelope::stream_category(&stream) {
                "order" => timeline::<Order>(&events)?,
                "account" => timeline::<Account>(&events)?,
                "inventory" => timeline::<Inventory>(&events)?,
                "payment" => timeline::<Payment>(&events)?,
                other => bail!("unknown stream category {other:?}: use order-, account-, inventory- or payment-"),
            };
            print(cli.json, &entries, || {
                entries
                    .iter()
                    .map(|e| {
                        format!(
                            "v{:<4} {}  {:<28} {:<22} {}{}",
                            e.version,
                            e.event_time.to_rfc3339(),
                            e.actor,
                            e.event_type,
                            e.change,
                            e.reason
                                .as_ref()
                                .map(|r| format!("  reason: {r}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        Command::State {
            stream,
            as_of,
            version,
        } => {
            let as_of = match (as_of, version) {
                (Some(t), _) => AsOf::Time(
                    chrono::DateTime::parse_from_rfc3339(&t)
                        .with_context(|| format!("--as-of {t:?} is not an RFC 3339 time such as 1997-03-01T00:00:00Z"))?
                        .with_timezone(&chrono::Utc),
                ),
                (None, Some(0)) => bail!("--version must be at least 1"),
                (None, Some(v)) => AsOf::Version(v),
                (None, None) => AsOf::Latest,
            };
            let service = Service::new(Backend::open(&cli.store).await?.events);
            let (category, id) = stream.split_once('-').with_context(|| {
                format!("stream {stream:?} must look like category-id, e.g. order-42")
            })?;
            let state = match category {
                "order" => state_json::<Order>(&service, id, as_of).await?,
                "account" => state_json::<Account>(&service, id, as_of).await?,
                "inventory" => state_json::<Inventory>(&service, id, as_of).await?,
                "payment" => state_json::<Payment>(&service, id, as_of).await?,
                other => bail!("unknown stream category {other:?}: use order-, account-, inventory- or payment-"),
            };
            let state = state.with_context(|| format!("stream {stream} has no events in range"))?;
            println!("{}", serde_json::to_string_pretty(&state)?);
            Ok(())
        }
        Command::Verify {
            stream,
            all,
            anchor,
            public_key,
            archive,
        } => {
            use eventfold::verify::{verify, verify_with_archive, Target};
            let target = match (stream, all || anchor.is_some() || archive.is_some()) {
                (Some(s), _) => Target::Stream(s),
                (None, true) => Target::All,
                (None, false) => bail!("give a STREAM or --all"),
            };
            let trusted = match (anchor, public_key) {
                (Some(path), Some(key)) => Some(read_anchor(&path, &key)?),
                _ => None,
            };
            let backend = Backend::open(&cli.store).await?;
            let bar = progress_bar(cli.json, backend.events.head_position().await?);
            let report = match archive {
                None => {
                    verify(backend.events.clone(), &target, trusted.as_ref(), &|p| {
                        bar.set_position(p)
                    })
                    .await?
                }
                Some(dir) => {
                    let mut merge = eventfold::archive::ArchiveMerge::open(&dir)?;
                    verify_with_archive(
                        backend.events.clone(),
                        trusted.as_ref(),
                        &mut merge,
                        &|p| bar.set_position(p),
                    )
                    .await?
                }
            };
            bar.finish_and_clear();
            print(cli.json, &report, || {
                let mut text = format!(
                    "{} events checked in {:.0} ms ({:.0} events/s)",
                    report.events_checked, report.elapsed_ms, report.events_per_sec
                );
                if let Some(h) = &report.head {
                    text += &format!("; head position {} hash {}", h.position, h.hash);
                }
                if report.archived > 0 {
                    text += &format!("; {} of them archived (stubs)", report.archived);
                }
                if let Some(a) = &report.archive {
                    text += &format!(
                        "; archive: {} files, {} events checked against the log",
                        a.files, a.events_checked
                    );
                }
                if let Some(a) = &report.anchor {
                    text += &format!(
                        "; anchor at position {} signed {}: {}",
                        a.position,
                        a.signed_at,
                        if a.extended {
                            "the log extends it"
                        } else {
                            "NOT extended"
                        }
                    );
                }
                match &report.first_broken {
                    Some(b) => format!("{text}\n{b}"),
                    None => format!("{text}\nok: every link holds"),
                }
            })?;
            if !report.ok {
                bail!("the hash chain does not verify (see the report)");
            }
            Ok(())
        }
        Command::Archive { before, to } => {
            let before = parse_cutoff(&before)?;
            let backend = Backend::open(&cli.store).await?;
            let bar = phase_bar(cli.json);
            let report = eventfold::archive::archive(
                backend.events.clone(),
                before,
                &to,
                &|phase, done, of| show_phase(&bar, phase, done, of),
            )
            .await?;
            bar.finish_and_clear();
            print(cli.json, &report, || {
                let mut text = format!(
                    "{} events of {} closed streams before {} archived into {} files ({} bytes; {} payload bytes out of the hot store) in {:.0} ms; {} events verified first",
                    report.events_archived, report.streams, report.before.to_rfc3339(),
                    report.files.len(), report.file_bytes, report.payload_bytes,
                    report.elapsed_ms, report.events_checked
                );
                if report.events_finished_from_earlier_run > 0 {
                    text += &format!(
                        "; {} events of an earlier, interrupted run finished",
                        report.events_finished_from_earlier_run
                    );
                }
                for f in &report.files {
                    text += &format!(
                        "\n  {} {}: {} events, positions {}..{}, sha256 {}",
                        f.name, f.month, f.events, f.first.position, f.last.position, f.sha256
                    );
                }
                text
            })
        }
        Command::Restore { from, stream } => {
            let backend = Backend::open(&cli.store).await?;
            let bar = phase_bar(cli.json);
            let report = eventfold::archive::restore(
                backend.events.clone(),
                &from,
                stream.as_deref(),
                &|phase, done, of| show_phase(&bar, phase, done, of),
            )
            .await?;
            bar.finish_and_clear();
            print(cli.json, &report, || {
                format!(
                    "{} events restored from {} files ({} were hot already) in {:.0} ms",
                    report.events_restored, report.files, report.already_hot, report.elapsed_ms
                )
            })
        }
        Command::Correct {
            command:
                CorrectCommand::Interest {
                    from,
                    to,
                    algorithm,
                    annual_rate,
                    report_dir,
                },
        } => {
            use eventfold::corrections::{correct_interest, write_report, InterestCorrection};
            use eventfold_domain::interest::InterestAlgorithm;
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
            let backend = Backend::open(&cli.store).await?;
            let bar = phase_bar(cli.json);
            let report =
                correct_interest(backend.events.clone(), &correction, &|phase, done, of| {
                    show_phase(&bar, phase, done, of)
                })
                .await?;
            bar.finish_and_clear();
            let (csv, json) = write_report(&report, &report_dir)?;
            // The projections (balance_by_account) pick the corrections up.
            let runner = backend.projection_runner().with_batch_size(5_000);
            runner.catch_up(None, &|_, _| {}).await?;
            print(cli.json, &report, || {
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
        Command::Anchor {
            command:
                AnchorCommand::Keygen {
                    secret_key,
                    public_key,
                },
        } => {
            let mut seed = [0u8; 32];
            getrandom::getrandom(&mut seed).context("reading the OS random source")?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let public = hex::encode(key.verifying_key().as_bytes());
            write_secret(&secret_key, &hex::encode(seed))?;
            std::fs::write(&public_key, format!("{public}\n"))
                .with_context(|| format!("writing {}", public_key.display()))?;
            print(
                cli.json,
                &serde_json::json!({ "public_key": public, "secret_key_file": secret_key, "public_key_file": public_key }),
                || {
                    format!(
                        "public key {public} (secret key in {})",
                        secret_key.display()
                    )
                },
            )
        }
        Command::Anchor {
            command: AnchorCommand::Sign { secret_key, out },
        } => {
            let text = std::fs::read_to_string(&secret_key)
                .with_context(|| format!("reading {}", secret_key.display()))?;
            let key = eventfold_core::chain::signing_key(&text)
                .with_context(|| format!("secret key file {}", secret_key.display()))?;
            let backend = Backend::open(&cli.store).await?;
            let bar = progress_bar(cli.json, backend.events.head_position().await?);
            let (anchor, report) = eventfold::verify::sign_anchor(
                backend.events.clone(),
                &key,
                chrono::Utc::now(),
                &|p| bar.set_position(p),
            )
            .await?;
            bar.finish_and_clear();
            std::fs::write(&out, serde_json::to_string_pretty(&anchor)? + "\n")
                .with_context(|| format!("writing {}", out.display()))?;
            print(cli.json, &anchor, || {
                format!(
                    "signed head position {} hash {} ({} events verified first); anchor written to {}",
                    anchor.position,
                    anchor.hash,
                    report.events_checked,
                    out.display()
                )
            })
        }
        Command::Snapshots {
            command: SnapshotsCommand::Rebuild { stream, all },
        } => {
            use eventfold_domain::account::Account;
            let backend = Backend::open(&cli.store).await?;
            let (store, read_models) = (backend.events.clone(), backend.read_models.clone());
            let streams: Vec<String> = match (stream, all) {
                (Some(s), _) => {
                    if !s.starts_with("account-") {
                        bail!("no snapshots for stream {s}: only account streams are snapshotted (account-ID)");
                    }
                    vec![s]
                }
                (None, true) => {
                    let mut seen = std::collections::BTreeSet::new();
                    let mut position = 0;
                    loop {
                        let batch = store.read_all(position, 10_000).await?;
                        let Some(last) = batch.last().map(|e| e.global_position) else {
                            break;
                        };
                        for e in batch {
                            if e.stream_id.starts_with("account-") {
                                seen.insert(e.stream_id);
                            }
                        }
                        position = last;
                    }
                    seen.into_iter().collect()
                }
                (None, false) => bail!("give a STREAM or --all"),
            };
            let bar = progress_bar(cli.json, streams.len() as u64);
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
            print(cli.json, &report, || {
                format!(
                    "{} snapshots written, covering {} events",
                    report.streams, report.events
                )
            })
        }
        Command::Projections { command } => {
            let backend = Backend::open(&cli.store).await?;
            let runner = backend.projection_runner().with_batch_size(5_000);
            match command {
                ProjectionsCommand::Rebuild { name } => {
                    if let Some(n) = &name {
                        if !runner.names().contains(&n.as_str()) {
                            bail!(
                                "unknown projection {n:?}; known: {}",
                                runner.names().join(", ")
                            );
                        }
                    }
                    let head = backend.events.head_position().await?;
                    let bar = progress_bar(cli.json, head);
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
                    print(cli.json, &report, || {
                        format!("rebuilt to position {position} in {secs:.2} s")
                    })
                }
                ProjectionsCommand::Status => {
                    let status = runner.status().await?;
                    print(cli.json, &status, || {
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
        Command::Simulate {
            simulation:
                Simulation::FlashSale {
                    stock,
                    buyers,
                    attempts,
                    duplicate_rate,
                    pay_rate,
                    payment_failure_rate,
                    per_buyer_limit,
                    concurrency,
                    unpaid_order_timeout_secs,
                    kill_server,
                    redis,
                    seed,
                },
        } => {
            for (name, rate) in [
                ("--duplicate-rate", duplicate_rate),
                ("--pay-rate", pay_rate),
                ("--payment-failure-rate", payment_failure_rate),
            ] {
                if !(0.0..=1.0).contains(&rate) {
                    bail!("{name} must be between 0 and 1, got {rate}");
                }
            }
            if stock == 0
                || buyers == 0
                || attempts == 0
                || concurrency == 0
                || per_buyer_limit == 0
            {
                bail!("--stock, --buyers, --attempts, --concurrency and --per-buyer-limit must be at least 1");
            }
            let log =
                std::env::temp_dir().join(format!("eventfold-simulate-{}.log", std::process::id()));
            let config = eventfold::simulate::SimConfig {
                exe: std::env::current_exe().context("finding the eventfold binary")?,
                store: cli.store.clone(),
                redis,
                kafka_brokers: cli.kafka_brokers.clone(),
                kafka_topic_prefix: cli.kafka_topic_prefix.clone(),
                stock,
                buyers,
                attempts,
                duplicate_rate,
                pay_rate,
                payment_failure_rate,
                per_buyer_limit,
                concurrency,
                unpaid_timeout_secs: unpaid_order_timeout_secs,
                kill_server,
                seed,
                server_log: log.clone(),
            };
            let report = eventfold::simulate::run(config).await?;
            print(cli.json, &report, || {
                format!(
                    "{} attempts at {:.0}/s (p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms); {} orders accepted of {} units; \
                     oversold {}, over-limit buyers {}, charges {} = paid orders {}, double charges {}, \
                     unpaid not cancelled {}, stuck sagas {}, stock reconciled {}; sagas drained {} ms after the crowd{}; server log {}",
                    report.attempts, report.attempts_per_sec, report.p50_ms, report.p95_ms, report.p99_ms,
                    report.accepted, report.stock, report.oversold, report.over_limit_buyers, report.charges,
                    report.paid_orders, report.double_charges, report.unpaid_not_cancelled, report.stuck_sagas,
                    report.stock_reconciled, report.saga_drain_ms,
                    if report.killed { "; the server was killed with SIGKILL half-way" } else { "" },
                    log.display()
                )
            })?;
            if !report.ok {
                bail!("the flash-sale simulation found a violation (see the report)");
            }
            Ok(())
        }
        Command::Bench { command } => {
            let target = match StoreUrl::parse(&cli.store)? {
                StoreUrl::Sqlite(path) => bench::BenchTarget::Sqlite(
                    path.parent()
                        .filter(|d| !d.as_os_str().is_empty())
                        .unwrap_or(Path::new("."))
                        .to_path_buf(),
                ),
                StoreUrl::Postgres(url) => bench::BenchTarget::Postgres(url),
            };
            match command {
                BenchCommand::Append {
                    clients,
                    events_per_command,
                    duration,
                    rounds,
                    payload_bytes,
                    hot_stream,
                    hash_chain,
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
                    let config = bench::AppendBench {
                        clients,
                        events_per_command,
                        duration: Duration::from_secs_f64(duration),
                        rounds,
                        payload_bytes,
                        hot_stream,
                        hash_chain,
                    };
                    let r = bench::append(&target, &config).await?;
                    print(cli.json, &r, || {
                        format!(
                            "eventfold: {:.0} commands/s, {:.0} events/s, p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, {:.1} commands per commit{}\n\
                             baseline:  {:.0} commands/s, {:.0} events/s, p99 {:.2} ms\nratio to baseline: {:.2} \
                             (to the same INSERTs with eventfold's two unique indexes: {:.2})\n\
                             projection lag (ingest to read-model commit): p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
                            r.commands_per_sec, r.events_per_sec, r.p50_ms, r.p95_ms, r.p99_ms, r.requests_per_commit,
                            if r.hot_stream { ", one hot stream" } else { "" },
                            r.baseline_commands_per_sec, r.baseline_events_per_sec, r.baseline_p99_ms, r.ratio_to_baseline,
                            r.ratio_to_indexed_baseline, r.projection_lag_p50_ms, r.projection_lag_p95_ms, r.projection_lag_p99_ms
                        ) + &match (r.unchained_events_per_sec, r.hash_chain_ratio) {
                            (Some(u), Some(ratio)) => format!(
                                "\nhash chain off: {u:.0} events/s; chain on / off: {ratio:.3} \
                                 (median of the slices' ratios: {:.3})",
                                r.hash_chain_ratio_median.unwrap_or(ratio)
                            ),
                            _ => format!("\nhash chain: {:?}", r.hash_chain).to_lowercase(),
                        }
                    })
                }
                BenchCommand::Read { events } => {
                    if events == 0 {
                        bail!("--events must be at least 1");
                    }
                    let r = bench::read(&target, events).await?;
                    print(cli.json, &r, || {
                        format!(
                            "read {} events from position 0 in {:.2} s: {:.0} events/s",
                            r.events, r.seconds, r.events_per_sec
                        )
                    })
                }
                BenchCommand::Notifications {
                    messages,
                    batch_size,
                } => {
                    let brokers = brokers(&cli.kafka_brokers, "bench notifications")?;
                    if messages == 0 || batch_size == 0 {
                        bail!("--messages and --batch-size must be at least 1");
                    }
                    let r = bench::notifications(&target, &brokers, messages, batch_size).await?;
                    print(cli.json, &r, || {
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
                BenchCommand::Relay { events } => {
                    let brokers = brokers(&cli.kafka_brokers, "bench relay")?;
                    if events == 0 {
                        bail!("--events must be at least 1");
                    }
                    let r = bench::relay(&target, &brokers, events).await?;
                    print(cli.json, &r, || {
                        format!(
                            "relayed {} events: {:.0} msg/s (broker's bare producer {:.0} msg/s, ratio {:.2}); \
                             {} order violations, {} lost",
                            r.events, r.messages_per_sec, r.broker_baseline_messages_per_sec, r.ratio_to_baseline,
                            r.order_violations, r.lost
                        )
                    })
                }
                BenchCommand::Correct {
                    accounts,
                    events_per_account,
                } => {
                    if accounts == 0 || events_per_account == 0 {
                        bail!("--accounts and --events-per-account must be at least 1");
                    }
                    let r = bench::correct(&target, accounts, events_per_account).await?;
                    print(cli.json, &r, || {
                        format!(
                            "{} accounts x {} events written in {:.0} ms; correct interest: {:.0} ms (replay {:.0} ms, append {:.0} ms), \
                             {:.0} events/s, {} corrections; second run {:.0} ms, {} appended",
                            r.accounts, r.events_per_account, r.populate_ms, r.correction_ms, r.replay_ms, r.append_ms,
                            r.events_per_sec, r.corrections_appended, r.second_run_ms, r.second_run_appended
                        )
                    })
                }
                BenchCommand::Load {
                    events,
                    repetitions,
                } => {
                    if events == 0 || repetitions == 0 {
                        bail!("--events and --repetitions must be at least 1");
                    }
                    let r = bench::load(&target, events, repetitions).await?;
                    print(cli.json, &r, || {
                        format!(
                            "{} events: load with a snapshot {:.3} ms, without {:.2} ms (p95 {:.2} ms; full-envelope read_stream {:.2} ms), as of mid-stream {:.2} ms",
                            r.events, r.load_with_snapshot_ms, r.load_without_snapshot_ms, r.load_without_snapshot_p95_ms, r.full_read_ms, r.as_of_ms
                        )
                    })
                }
            }
        }
    }
}

#[derive(Serialize)]
struct StateOut<A> {
    version: u64,
    state: A,
}

async fn state_json<A: Aggregate + Serialize>(
    service: &Service,
    id: &str,
    as_of: AsOf,
) -> anyhow::Result<Option<serde_json::Value>> {
    let loaded: Option<Replayed<A>> = service.load::<A>(id, as_of).await?;
    let out = loaded.map(|r| StateOut {
        version: r.version,
        state: r.state,
    });
    Ok(out.map(serde_json::to_value).transpose()?)
}

/// Cancels `token` on Ctrl-C or SIGTERM.
async fn signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    token.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salt_specs_name_the_stream_and_a_count_from_2() {
        assert_eq!(parse_salt("order-hot=8"), Ok(("order-hot".into(), 8)));
        assert_eq!(parse_salt("a=b=4"), Ok(("a=b".into(), 4)));
        for bad in ["order-hot", "order-hot=1", "=4", "x=many", "x=2000"] {
            assert!(parse_salt(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shard_specs_take_ranges_and_lists_below_the_count() {
        assert_eq!(parse_shards("0-3,7", 16).unwrap(), [0, 1, 2, 3, 7]);
        for bad in ["16", "3-1", "x", ""] {
            assert!(parse_shards(bad, 16).is_err(), "{bad}");
        }
    }
}
