//! The subcommands, one module each; [`Command::exec`] dispatches to the module's `exec`.

mod anchor;
mod archive;
mod bench;
mod calendar;
mod consume;
mod correct;
mod history;
mod import;
mod keys;
mod migrate;
mod periods;
mod projections;
mod relay;
mod serve;
mod simulate;
mod snapshots;
mod state;
mod transform;
mod verify;

use clap::Subcommand;

use crate::context::Global;

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (and keep projections up to date).
    Serve(Box<serve::Serve>),
    /// Publish the event log to Kafka (the outbox relay): until stopped, or `--once` up to the
    /// current head. Needs --kafka-brokers.
    Relay(relay::Relay),
    /// Consume a Kafka topic through an inbox until stopped (Ctrl-C). Needs --kafka-brokers.
    #[command(subcommand)]
    Consume(consume::Consume),
    /// Run an exactly-once consume-transform-produce worker (input offsets and outputs commit in
    /// one Kafka transaction) until stopped (Ctrl-C). Needs --kafka-brokers and a broker with
    /// transactions.
    #[command(subcommand)]
    Transform(transform::Transform),
    /// Apply the store's schema migrations (every command also does on opening) and print the
    /// schema version; running it twice is a no-op, a schema newer than this binary is refused.
    Migrate,
    /// Import data into the store.
    #[command(subcommand)]
    Import(import::Import),
    /// API keys: create, list, revoke.
    #[command(subcommand)]
    Keys(keys::Keys),
    /// Print a stream's audit timeline: who, when, what changed, state before.
    History(history::History),
    /// Print an aggregate's state, now or as of a time or version.
    State(state::State),
    /// A store's business calendar (time zone, cutoff): show, set.
    #[command(subcommand)]
    Calendar(calendar::Calendar),
    /// Period close per store: enable, list, soft-close, reopen, close (sealed), tick.
    #[command(subcommand)]
    Periods(periods::Periods),
    /// The exception queue: postings a closed period holds; list, approve, reject.
    #[command(subcommand)]
    Exceptions(periods::Exceptions),
    /// Projection maintenance.
    #[command(subcommand)]
    Projections(projections::Projections),
    /// Aggregate snapshots.
    #[command(subcommand)]
    Snapshots(snapshots::Snapshots),
    /// Walk the hash chain of the whole log or of one stream and name the first broken link
    /// (position, stream, version, expected vs found); with --anchor, also check that the log
    /// still extends a signed head. Exits 1 when a link or the anchor does not hold.
    Verify(verify::Verify),
    /// Move the events of closed streams (orders completed, cancelled or refunded) whose event
    /// time is before --before out of the hot store into compressed, checksummed month files in
    /// --to, with a manifest of chain heads. The hot rows stay as stubs that keep the hash
    /// chain, stream versions and event ids; snapshots stay hot. The chain is verified first.
    Archive(archive::Archive),
    /// Bring archived events back into the hot store from an archive directory: every file's
    /// checksum is checked and every event proven against its stub first.
    Restore(archive::Restore),
    /// Signed anchors of the hash chain.
    #[command(subcommand)]
    Anchor(anchor::Anchor),
    /// Corrections by replay.
    #[command(subcommand)]
    Correct(correct::Correct),
    /// Simulations that drive a real server and print a report.
    #[command(subcommand)]
    Simulate(simulate::Simulate),
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(bench::Bench),
}

impl Command {
    /// Whether this is `serve` (which logs at `info` by default; the rest at `warn`).
    pub fn is_serve(&self) -> bool {
        matches!(self, Self::Serve(_))
    }

    /// Runs the subcommand.
    ///
    /// # Errors
    /// Whatever the subcommand refuses or fails on, with its context; `main` prints it and
    /// exits 1.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        match self {
            Self::Serve(c) => c.exec(global).await,
            Self::Relay(c) => c.exec(global).await,
            Self::Consume(c) => c.exec(global).await,
            Self::Transform(c) => c.exec(global).await,
            Self::Migrate => migrate::exec(global).await,
            Self::Import(c) => c.exec(global).await,
            Self::Keys(c) => c.exec(global).await,
            Self::History(c) => c.exec(global).await,
            Self::State(c) => c.exec(global).await,
            Self::Calendar(c) => c.exec(global).await,
            Self::Periods(c) => c.exec(global).await,
            Self::Exceptions(c) => c.exec(global).await,
            Self::Projections(c) => c.exec(global).await,
            Self::Snapshots(c) => c.exec(global).await,
            Self::Verify(c) => c.exec(global).await,
            Self::Archive(c) => c.exec(global).await,
            Self::Restore(c) => c.exec(global).await,
            Self::Anchor(c) => c.exec(global).await,
            Self::Correct(c) => c.exec(global).await,
            Self::Simulate(c) => c.exec(global).await,
            Self::Bench(c) => c.exec(global).await,
        }
    }
}
