//! The NATS JetStream event store: events in a JetStream stream, read models beside it in a
//! SQLite or PostgreSQL read-model store.
//!
//! Layout (see ARCHITECTURE.md, "The NATS store"):
//! - one JetStream stream per store, named `NAME` (the URL's path, default `eventfold`), file
//!   storage, subjects `NAME.e.>`; each event stream is one subject `NAME.e.{stream}` (escaped:
//!   see [`message`]); the stream holds events and nothing else, so **the global position is the
//!   JetStream sequence**, gap-free (an archived event's message is deleted; its stub keeps the
//!   position);
//! - each message's body is the event's envelope (one JSON line) and its payload; an append's
//!   idempotency record and fencing token ride on its first event;
//! - the appender (`appender.rs`) publishes a one-event append as one message (pipelined,
//!   chained by message ids) and a run of larger appends as one atomic batch (nats-server
//!   2.12+), guarded by `Nats-Expected-Last-Sequence` (the log position it was decided at) and
//!   `Nats-Expected-Last-Subject-Sequence` (each stream's expected version, enforced by the
//!   server), so that several processes can append to one store;
//! - the index of event ids, idempotency keys and fencing tokens (`index.rs`) and every
//!   checkpoint live in the read-model store, which this store also serves as
//!   [`ReadModelStore`] (so a projection commits its documents with its checkpoint there);
//! - archived events (`archive.rs`): their messages are deleted and their stubs, and events
//!   restored later, live in the read-model store ([`ARCHIVE`]); reads merge them in.
//!
//! Seed 004 builds its event store on NATS JetStream with read models in PostgreSQL.

mod appender;
mod archive;
mod index;
pub mod message;
mod read;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use eventfold_core::chain::{ChainRow, Hash, ZERO_HASH};
use eventfold_core::read_model::ProjectionCommit;
use eventfold_core::{
    AppendOutcome, AppendRequest, ArchiveStub, CheckpointStore, EventStore, IdempotencyRecord,
    ProjectionMaintenance, ReadModelStore, RecordedEvent, ReplayEvent, RestoredPayload, StoreError,
};
use eventfold_store_support::head::{self, HeadReceiver};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

pub use appender::MAX_BATCH;
pub use archive::ARCHIVE;
pub use index::INDEX;

use appender::{Appender, Job};
use archive::{Cold, ColdDoc};
use index::Index;

/// How long the server remembers a message id (`duplicate_window`): ids are the chain links of
/// pipelined publishes, so a second covers every publish in flight, and the server's memory of
/// ids (nats-io/nats-server#8485) stays at a second's worth of appends.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(1);

/// Most times an archive or restore is decided again after another one changed the archive.
const MAX_CHANGE_ATTEMPTS: usize = 20;

/// The JetStream stream name used when the URL names none.
pub const DEFAULT_STREAM: &str = "eventfold";

/// A parsed `nats://HOST:PORT[/NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUrl {
    /// `nats://HOST:PORT`, what the client connects to.
    pub server: String,
    /// The JetStream stream (the store's namespace: two stores can share one server).
    pub stream: String,
}

impl NatsUrl {
    /// Parses `nats://HOST:PORT[/NAME]`; NAME is 1 to 32 of `A-Z a-z 0-9 _ -`.
    ///
    /// # Errors
    /// The message names what is wrong (scheme, host, name).
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("nats://")
            .ok_or_else(|| format!("NATS store URL {url:?} must start with nats://"))?;
        let (host, name) = match rest.split_once('/') {
            Some((host, "")) => (host, DEFAULT_STREAM),
            Some((host, name)) => (host, name),
            None => (rest, DEFAULT_STREAM),
        };
        if host.is_empty() {
            return Err(format!(
                "NATS store URL {url:?} has no host; use nats://HOST:PORT"
            ));
        }
        if name.is_empty()
            || name.len() > 32
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "NATS store URL {url:?}: the stream name {name:?} must be 1 to 32 letters, \
                 digits, _ or -"
            ));
        }
        Ok(Self {
            server: format!("nats://{host}"),
            stream: name.to_owned(),
        })
    }
}

/// The names a store uses on the server.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// The JetStream stream.
    pub stream: String,
    /// The subject prefix of events, `{stream}.e`.
    pub events: String,
    /// The core NATS subject appenders announce the log's head on, `{stream}.h` (outside the
    /// JetStream stream's subjects: nothing is stored).
    pub head: String,
}

/// Settings of a NATS store.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Longest `wait_for_append` waits before returning (appends are normally heard at once
    /// through an ordered consumer on the stream).
    pub poll: Duration,
    /// How long a request to the server (publish ack, read) may take before it counts as
    /// failed.
    pub request_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// What the appender has done so far, for benchmarks: units published (one publish or one
/// atomic batch each, one per append request) and the append requests they carried.
#[derive(Debug, Default)]
pub struct AppenderStats {
    commits: std::sync::atomic::AtomicU64,
    append_requests: std::sync::atomic::AtomicU64,
}

impl AppenderStats {
    fn record(&self, requests: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.commits.fetch_add(1, Relaxed);
        self.append_requests.fetch_add(requests, Relaxed);
    }

    /// (batches published, append requests they carried).
    pub fn totals(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.commits.load(Relaxed),
            self.append_requests.load(Relaxed),
        )
    }
}

/// An event store on NATS JetStream (see the crate documentation).
#[derive(Clone)]
pub struct NatsStore {
    shared: Arc<Shared>,
}

struct Shared {
    js: jetstream::Context,
    /// The JetStream stream's handle (its info as found on opening).
    stream: stream::Stream,
    names: Names,
    jobs: mpsc::Sender<Job>,
    head: HeadReceiver,
    read_models: Arc<dyn ReadModelStore>,
    index: Arc<Index>,
    cold: Arc<Cold>,
    config: NatsConfig,
    stats: Arc<AppenderStats>,
    tasks: Vec<AbortHandle>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn unavailable(message: &str) -> StoreError {
    StoreError::Unavailable(message.to_owned().into())
}

pub(crate) fn fetch_failed(e: jetstream_extra::batch_fetch::BatchFetchError) -> StoreError {
    StoreError::Unavailable(format!("reading the NATS log: {e}").into())
}

/// `Unavailable` at once while the client is reconnecting: it would hold a request until the
/// server is back or the request times out; callers answer 503 with `Retry-After` instead.
pub(crate) fn connected(js: &jetstream::Context) -> Result<(), StoreError> {
    match js.client().connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        state => Err(unavailable(&format!(
            "the NATS server is not reachable (connection {state:?})"
        ))),
    }
}

/// The sequence of the stream's last message (0 when empty).
pub(crate) async fn last_sequence(js: &jetstream::Context, name: &str) -> Result<u64, StoreError> {
    connected(js)?;
    let stream = js
        .get_stream(name)
        .await
        .map_err(|e| StoreError::Unavailable(format!("JetStream stream {name}: {e}").into()))?;
    Ok(stream.cached_info().state.last_sequence)
}

/// The message at `position` of `jstream`, if it holds one (an archived event's is deleted).
async fn message_in(
    jstream: &stream::Stream,
    position: u64,
) -> Result<Option<message::Decoded>, StoreError> {
    match jstream.direct_get(position).await {
        Ok(m) => Ok(Some(message::decode(position, m.payload)?)),
        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Unavailable(
            format!("reading position {position}: {e}").into(),
        )),
    }
}

async fn connect_client(
    server: &str,
    config: &NatsConfig,
) -> Result<async_nats::Client, StoreError> {
    async_nats::ConnectOptions::new()
        .connection_timeout(config.request_timeout)
        .request_timeout(Some(config.request_timeout))
        .connect(server)
        .await
        .map_err(|e| StoreError::Unavailable(format!("connecting to {server}: {e}").into()))
}

impl NatsStore {
    /// Opens the store at `url` (`nats://HOST:PORT[/NAME]`), creating its JetStream stream when
    /// missing, with its index and checkpoints in `read_models`.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] for a bad URL, [`StoreError::Unavailable`] when the server
    /// cannot be reached, [`StoreError::Corrupt`] when the read models index more of the log than
    /// the stream holds (they belong to another store).
    pub async fn connect(
        url: &str,
        read_models: Arc<dyn ReadModelStore>,
    ) -> Result<Self, StoreError> {
        Self::connect_with(url, read_models, NatsConfig::default()).await
    }

    /// [`NatsStore::connect`] with `config`.
    ///
    /// # Errors
    /// As [`NatsStore::connect`].
    pub async fn connect_with(
        url: &str,
        read_models: Arc<dyn ReadModelStore>,
        config: NatsConfig,
    ) -> Result<Self, StoreError> {
        let url = NatsUrl::parse(url).map_err(StoreError::InvalidRequest)?;
        let client = connect_client(&url.server, &config).await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        let names = Names {
            events: format!("{}.e", url.stream),
            head: format!("{}.h", url.stream),
            stream: url.stream.clone(),
        };
        let wanted = stream::Config {
            name: names.stream.clone(),
            subjects: vec![format!("{}.>", names.events)],
            storage: stream::StorageType::File,
            allow_direct: true,
            allow_atomic_publish: true,
            // Message ids are only the chain links of pipelined publishes (see the
            // appender), never retries: remember them no longer than a publish is in flight.
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        let jstream = js.get_or_create_stream(wanted.clone()).await.map_err(|e| {
            StoreError::Unavailable(format!("JetStream stream {}: {e}", names.stream).into())
        })?;
        let found = &jstream.cached_info().config;
        if !found.allow_direct
            || !found.allow_atomic_publish
            || found.duplicate_window != DUPLICATE_WINDOW
        {
            let mut updated = found.clone();
            updated.allow_direct = true;
            updated.allow_atomic_publish = true;
            updated.duplicate_window = DUPLICATE_WINDOW;
            js.update_stream(updated).await.map_err(|e| {
                StoreError::Unavailable(
                    format!(
                        "allowing direct gets and atomic batches on {}: {e}",
                        names.stream
                    )
                    .into(),
                )
            })?;
        }

        let index = Arc::new(Index::new(read_models.clone()));
        let indexed = index.checkpoint().await?;
        let last = last_sequence(&js, &names.stream).await?;
        if indexed > last {
            return Err(StoreError::Corrupt(format!(
                "the read models index the NATS log up to position {indexed}, but the stream {} \
                 ends at {last}: they belong to another store",
                names.stream
            )));
        }
        let cold = Arc::new(Cold::new(read_models.clone()));
        let hash_there: Hash = if indexed == 0 {
            ZERO_HASH
        } else {
            match message_in(&jstream, indexed).await? {
                Some(d) => message::head_hash(&d.head),
                None => {
                    // Archived: its stub holds the hash.
                    let doc = cold.at(&[indexed]).await?.remove(&indexed).ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "position {indexed} is neither in the NATS stream {} nor archived",
                            names.stream
                        ))
                    })?;
                    message::head_hash(&doc.head)
                }
            }
        };
        let (head_tx, head_rx) = head::channel(indexed);
        let (runs_tx, runs_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(AppenderStats::default());
        let mut appender = Appender::new(
            js.clone(),
            names.clone(),
            (index.clone(), cold.clone()),
            runs_tx,
            head_tx.clone(),
            stats.clone(),
            (indexed, hash_there),
        );
        appender.catch_up().await?;
        let (jobs_tx, jobs_rx) = mpsc::channel(4096);
        let tasks = vec![
            tokio::spawn(index::write(index.clone(), runs_rx)).abort_handle(),
            tokio::spawn(appender.run(jobs_rx)).abort_handle(),
            tokio::spawn(read::tail(client, names.clone(), head_tx)).abort_handle(),
        ];
        Ok(Self {
            shared: Arc::new(Shared {
                js,
                stream: jstream,
                names,
                jobs: jobs_tx,
                head: head_rx,
                read_models,
                index,
                cold,
                config,
                stats,
                tasks,
            }),
        })
    }

    /// Deletes the store's JetStream stream (every event in it). For benchmarks and tests that
    /// clean up after themselves; the read models are the caller's.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] for a bad URL, [`StoreError::Unavailable`] when the server
    /// cannot be reached. A missing stream is not an error.
    pub async fn delete(url: &str) -> Result<(), StoreError> {
        let url = NatsUrl::parse(url).map_err(StoreError::InvalidRequest)?;
        let client = connect_client(&url.server, &NatsConfig::default()).await?;
        let js = jetstream::new(client);
        match js.delete_stream(&url.stream).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(StoreError::Unavailable(
                format!("deleting the JetStream stream {}: {e}", url.stream).into(),
            )),
        }
    }

    /// The JetStream stream this store keeps its events in.
    pub fn stream_name(&self) -> &str {
        &self.shared.names.stream
    }

    /// What the appender has published so far.
    pub fn appender_stats(&self) -> &AppenderStats {
        &self.shared.stats
    }

    /// Index entries (event ids, idempotency keys, fencing tokens) held in memory until the
    /// index writer has committed them to the read-model store.
    pub fn pending_index_entries(&self) -> usize {
        self.shared.index.pending()
    }

    /// The message at `position`, if JetStream holds it (an archived event's is deleted).
    async fn message_at(&self, position: u64) -> Result<Option<message::Decoded>, StoreError> {
        connected(&self.shared.js)?;
        message_in(&self.shared.stream, position).await
    }

    /// The hash of the message at `position`, if JetStream holds it.
    async fn message_hash(&self, position: u64) -> Result<Option<Hash>, StoreError> {
        Ok(self
            .message_at(position)
            .await?
            .map(|d| message::head_hash(&d.head)))
    }

    /// Deletes the message at `position` from JetStream; one deleted before is no error.
    async fn delete_message(&self, position: u64) -> Result<(), StoreError> {
        match self.shared.stream.delete_message(position).await {
            Ok(_) => Ok(()),
            // The server refuses to delete what is not there (10057 "no message found").
            Err(_) if self.message_at(position).await?.is_none() => Ok(()),
            Err(e) => Err(StoreError::Unavailable(
                format!("deleting the archived message at position {position}: {e}").into(),
            )),
        }
    }

    /// Commits the stubs of `stubs` to the archive's documents (see `archive.rs`): returns how
    /// many were archived now and the positions whose messages are to be deleted (those
    /// archived now and those a stopped run archived without deleting).
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] naming the position when no event there has the stub's
    /// hash or it was archived with another digest (nothing is changed).
    async fn commit_archive(&self, stubs: &[ArchiveStub]) -> Result<(u64, Vec<u64>), StoreError> {
        let cold = &self.shared.cold;
        for _ in 0..MAX_CHANGE_ATTEMPTS {
            let generation = cold.generation().await?;
            let positions: Vec<u64> = stubs.iter().map(|s| s.position).collect();
            let docs = cold.at(&positions).await?;
            let mut delete = Vec::new();
            let mut archived: Vec<(u64, ColdDoc)> = Vec::new();
            for stub in stubs {
                let digest = hex::encode(stub.digest);
                let refused = || StoreError::no_event_to(stub.position, &stub.hash, "archive");
                match docs.get(&stub.position) {
                    Some(doc) if doc.head.h != hex::encode(stub.hash) => return Err(refused()),
                    Some(doc) => match &doc.payload {
                        None if doc.d == digest => delete.push(stub.position),
                        None => {
                            return Err(StoreError::InvalidRequest(format!(
                                "position {}: archived before with another content digest",
                                stub.position
                            )))
                        }
                        Some(_) => {
                            let mut doc = doc.clone();
                            doc.payload = None;
                            doc.d = digest;
                            archived.push((stub.position, doc));
                        }
                    },
                    None => match self.message_at(stub.position).await? {
                        Some(m) if message::head_hash(&m.head) == stub.hash => {
                            archived.push((
                                stub.position,
                                ColdDoc {
                                    head: m.head,
                                    d: digest,
                                    payload: None,
                                },
                            ));
                        }
                        _ => return Err(refused()),
                    },
                }
            }
            if archived.is_empty() {
                return Ok((0, delete));
            }
            // Each stream's highest archived version, raised where this change goes higher.
            let mut highest: std::collections::HashMap<&String, u64> =
                std::collections::HashMap::new();
            for (_, doc) in &archived {
                let v = highest.entry(&doc.head.s).or_default();
                *v = (*v).max(doc.head.v);
            }
            let streams: Vec<&String> = highest.keys().copied().collect();
            let recorded = cold.last_of(&streams).await?;
            let mut writes = Vec::new();
            for (position, doc) in &archived {
                let raise = highest.get(&doc.head.s) == Some(&doc.head.v)
                    && recorded
                        .get(&doc.head.s)
                        .is_none_or(|(v, _)| *v < doc.head.v);
                writes.extend(doc.writes(*position, raise));
            }
            match cold.commit(generation, writes).await {
                Ok(()) => {
                    delete.extend(archived.iter().map(|(p, _)| *p));
                    return Ok((archived.len() as u64, delete));
                }
                Err(StoreError::CheckpointMoved { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(unavailable("the archive kept changing under the archiving"))
    }

    async fn submit(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.shared
            .jobs
            .send(Job { requests, reply })
            .await
            .map_err(|_| unavailable("the NATS appender has stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("the NATS appender has stopped"))?
    }
}

#[async_trait]
impl CheckpointStore for NatsStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.shared.read_models.load_checkpoint(name).await
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        self.shared
            .read_models
            .save_checkpoint(name, position)
            .await
    }
}

#[async_trait]
impl ReadModelStore for NatsStore {
    async fn get_docs(
        &self,
        projection: &str,
        keys: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.shared.read_models.get_docs(projection, keys).await
    }

    async fn range_docs(
        &self,
        projection: &str,
        from_key: &str,
        to_key: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.shared
            .read_models
            .range_docs(projection, from_key, to_key, limit)
            .await
    }

    async fn commit_projections(&self, commits: Vec<ProjectionCommit>) -> Result<(), StoreError> {
        self.shared.read_models.commit_projections(commits).await
    }

    async fn maintain_projection(&self, change: ProjectionMaintenance) -> Result<(), StoreError> {
        self.shared.read_models.maintain_projection(change).await
    }
}

#[async_trait]
impl EventStore for NatsStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        self.submit(vec![request])
            .await?
            .pop()
            .unwrap_or_else(|| Err(unavailable("the NATS appender gave no answer")))
    }

    async fn append_many(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        self.submit(requests).await
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_stream_messages(stream_id, from_version, max_count)
            .await?
            .into_iter()
            .map(message::Decoded::recorded)
            .collect()
    }

    async fn read_stream_for_replay(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<ReplayEvent>, StoreError> {
        self.read_stream_messages(stream_id, from_version, max_count)
            .await?
            .into_iter()
            .map(message::Decoded::replay)
            .collect()
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        let hot = self
            .last_of_stream(stream_id)
            .await?
            .map_or(0, |d| d.head.v);
        let stream = stream_id.to_owned();
        let archived = self.shared.cold.last_of(&[&stream]).await?;
        Ok(archived.get(&stream).map_or(hot, |(v, _)| hot.max(*v)))
    }

    async fn read_all(
        &self,
        after_position: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // Archived events are left out; a read that finds only stubs goes on past them.
        let mut after = after_position;
        loop {
            let (read, more) = self.read_log_with_archive(after, max_count).await?;
            let last = read.last().map(|d| d.position);
            let out = read
                .into_iter()
                .filter(|d| d.archived.is_none())
                .map(message::Decoded::recorded)
                .collect::<Result<Vec<_>, _>>()?;
            match last {
                Some(last) if out.is_empty() && more => after = last,
                _ => return Ok(out),
            }
        }
    }

    async fn read_chain_into(
        &self,
        after_position: u64,
        max_count: usize,
        rows: &mut Vec<ChainRow>,
    ) -> Result<(), StoreError> {
        let (read, _) = self
            .read_log_with_archive(after_position, max_count)
            .await?;
        read::fill_rows(&read, rows);
        Ok(())
    }

    async fn read_stream_chain(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<ChainRow>, StoreError> {
        Ok(self
            .read_stream_messages(stream_id, from_version, max_count)
            .await?
            .iter()
            .map(message::Decoded::chain_row)
            .collect())
    }

    /// Writes the stubs into the read-model store, then deletes the messages from JetStream
    /// (see `archive.rs`). A re-run deletes what a run that stopped between the two left.
    async fn archive_events(&self, stubs: Vec<ArchiveStub>) -> Result<u64, StoreError> {
        if stubs.is_empty() {
            return Ok(0);
        }
        let (archived, delete) = self.commit_archive(&stubs).await?;
        for position in delete {
            self.delete_message(position).await?;
        }
        Ok(archived)
    }

    /// A restored event cannot go back into JetStream at its old sequence: its payload joins
    /// its stub in the read-model store, and reads return it from there.
    async fn restore_events(&self, payloads: Vec<RestoredPayload>) -> Result<u64, StoreError> {
        if payloads.is_empty() {
            return Ok(0);
        }
        for _ in 0..MAX_CHANGE_ATTEMPTS {
            let generation = self.shared.cold.generation().await?;
            let positions: Vec<u64> = payloads.iter().map(|p| p.position).collect();
            let docs = self.shared.cold.at(&positions).await?;
            let mut writes = Vec::new();
            let mut restored = 0;
            for p in &payloads {
                match docs.get(&p.position) {
                    Some(doc) if doc.head.h == hex::encode(p.hash) => {
                        if doc.payload.is_none() {
                            let mut doc = doc.clone();
                            doc.payload = Some(p.payload.clone());
                            writes.extend(doc.writes(p.position, false));
                            restored += 1;
                        }
                    }
                    // Never archived here (or restored and its message kept): hot already.
                    None if self.message_hash(p.position).await? == Some(p.hash) => {}
                    _ => return Err(StoreError::no_event_to(p.position, &p.hash, "restore")),
                }
            }
            if writes.is_empty() {
                return Ok(0);
            }
            match self.shared.cold.commit(generation, writes).await {
                Ok(()) => return Ok(restored),
                Err(StoreError::CheckpointMoved { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(unavailable("the archive kept changing under the restore"))
    }

    async fn archived_after(&self, position: u64) -> Result<u64, StoreError> {
        self.shared.cold.archived_after(position).await
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        let last = last_sequence(&self.shared.js, &self.shared.names.stream).await?;
        Ok(last)
    }

    async fn wait_for_append(&self, after_position: u64) {
        head::wait_after(&self.shared.head, after_position, self.shared.config.poll).await;
    }

    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let mut found = self.shared.index.lookup(&[], &[key], &[]).await?;
        Ok(found.keys.remove(key))
    }
}
