//! The event-store trait and its typed errors.
//!
//! Versions and positions:
//! - a stream's version is the number of events in it: 0 for a stream that does not exist, 1 after
//!   its first event;
//! - the global position is 1-based, strictly increasing in commit order, and never makes visible an
//!   event below a position a reader has already passed (see ARCHITECTURE.md for how each backend
//!   guarantees this).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::chain::ChainRow;
use crate::envelope::{NewEvent, RecordedEvent, ReplayEvent};

/// What the caller believes the stream's version is before the append (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "version")]
pub enum ExpectedVersion {
    /// Append whatever the current version is.
    Any,
    /// The stream must not exist yet (version 0).
    NoStream,
    /// The stream must be at exactly this version; `Exact(0)` is the same as `NoStream`.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` satisfies this expectation.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual == 0,
            Self::Exact(v) => v == actual,
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// The response a command produced, kept under its idempotency key so that a retry returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// HTTP status code of the first response, e.g. 201.
    pub status: u16,
    /// The first response's body (JSON text).
    pub body: String,
}

/// What opening a store did to its schema: the migration version found and the one it is at now
/// (equal when the schema was already current: running migrations twice is a no-op).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaVersion {
    /// Version found when the store was opened (0 = empty database or file).
    pub previous: u32,
    /// Version now (the newest this eventfold knows).
    pub current: u32,
}

/// An idempotency key written in the same transaction as the events it guards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The caller's key, scoped by the caller (e.g. `POST /orders:<Idempotency-Key>`).
    pub key: String,
    /// A digest of the request, so that the same key with another request is refused.
    pub fingerprint: String,
    /// The response to return on a retry.
    pub response: StoredResponse,
}

/// One append: events for one stream with the version they expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRequest {
    /// Target stream, 1 to 200 characters, no control characters.
    pub stream_id: String,
    /// The version the stream must be at.
    pub expected: ExpectedVersion,
    /// The events, in order; at least one.
    pub events: Vec<NewEvent>,
    /// An idempotency key to record atomically with the events.
    pub idempotency: Option<IdempotencyRecord>,
    /// A fencing token from a lock on `fence.resource`: the append is refused with
    /// [`StoreError::Fenced`] when a higher token for the resource was presented before, so a
    /// holder whose lock expired while it was paused cannot write after the next holder did.
    pub fence: Option<Fence>,
}

/// A fencing token (Kleppmann, "How to do distributed locking", 2016): issued by a lock service,
/// increasing with every grant of the lock on `resource`; the store remembers the highest token
/// it accepted per resource and refuses lower ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// What the lock protects, e.g. `lock:stock:sku-1`; 1 to 200 bytes.
    pub resource: String,
    /// The token the lock grant carried.
    pub token: u64,
}

impl AppendRequest {
    /// An append without an idempotency key.
    pub fn new(
        stream_id: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        Self {
            stream_id: stream_id.into(),
            expected,
            events,
            idempotency: None,
            fence: None,
        }
    }

    /// This append, fenced by `token` from a lock on `resource`.
    #[must_use]
    pub fn with_fence(mut self, resource: impl Into<String>, token: u64) -> Self {
        self.fence = Some(Fence {
            resource: resource.into(),
            token,
        });
        self
    }

    /// Checks what every backend must refuse before touching storage.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] naming the field: an empty or over-long stream id, a stream id
    /// with control characters, no events, two events with one id, an empty event type, schema
    /// version 0, an empty payload (a payload is JSON text; an empty one marks an archived
    /// stub).
    pub fn validate(&self) -> Result<(), StoreError> {
        let invalid = |m: String| Err(StoreError::InvalidRequest(m));
        if self.stream_id.is_empty() || self.stream_id.len() > 200 {
            return invalid(format!(
                "stream id must be 1 to 200 bytes, got {}",
                self.stream_id.len()
            ));
        }
        if self.stream_id.chars().any(char::is_control) {
            return invalid("stream id must not hold control characters".into());
        }
        if self.events.is_empty() {
            return invalid(format!("append to {} holds no events", self.stream_id));
        }
        for (i, e) in self.events.iter().enumerate() {
            if e.event_type.is_empty() || e.event_type.len() > 200 {
                return invalid(format!("events[{i}].event_type must be 1 to 200 bytes"));
            }
            if e.schema_version == 0 {
                return invalid(format!("events[{i}].schema_version must be at least 1"));
            }
            if e.payload.is_empty() {
                return invalid(format!(
                    "events[{i}].payload is empty: a payload is JSON text"
                ));
            }
            if self.events[..i].iter().any(|p| p.event_id == e.event_id) {
                return invalid(format!("events[{i}].event_id {} repeats", e.event_id));
            }
        }
        if let Some(f) = &self.fence {
            if f.resource.is_empty() || f.resource.len() > 200 {
                return invalid(format!(
                    "fence.resource must be 1 to 200 bytes, got {}",
                    f.resource.len()
                ));
            }
            if i64::try_from(f.token).is_err() {
                return invalid(format!("fence.token {} is above 2^63 - 1", f.token));
            }
        }
        Ok(())
    }
}

/// What a successful append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendOutcome {
    /// The stream's version after the append.
    pub stream_version: u64,
    /// Global position of the first appended event.
    pub first_position: u64,
    /// Global position of the last appended event.
    pub last_position: u64,
    /// True when these exact events were already stored (same ids, same stream, same order): the
    /// append was a retry and wrote nothing.
    pub duplicate: bool,
}

/// Why a store operation failed.
///
/// Caller mistakes ([`StoreError::VersionConflict`], [`StoreError::InvalidRequest`],
/// [`StoreError::EventIdReused`], [`StoreError::IdempotencyKeyUsed`]) are kept apart from
/// infrastructure failures ([`StoreError::Unavailable`], [`StoreError::Backend`],
/// [`StoreError::Corrupt`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream is not at the expected version; nothing was written.
    #[error("stream {stream_id} is at version {actual}, expected {expected}")]
    VersionConflict {
        /// The stream appended to.
        stream_id: String,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's version now.
        actual: u64,
    },
    /// An event id is already stored elsewhere (another stream or another place in this one).
    #[error("event id {event_id} is already stored in stream {stream_id}")]
    EventIdReused {
        /// The id that repeats.
        event_id: Uuid,
        /// Where it is stored.
        stream_id: String,
    },
    /// The idempotency key is already recorded; look it up with
    /// [`EventStore::idempotency_record`] and answer with the stored response.
    #[error("idempotency key {key} is already used")]
    IdempotencyKeyUsed {
        /// The key.
        key: String,
    },
    /// The request is malformed; the message names the field.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The append's fencing token is lower than one the store already accepted for the
    /// resource: its lock expired and another holder has written since. Nothing was written.
    #[error("fenced: token {presented} for {resource} is older than {current}")]
    Fenced {
        /// The locked resource.
        resource: String,
        /// The token presented.
        presented: u64,
        /// The highest token accepted so far.
        current: u64,
    },
    /// A projection's checkpoint moved under it (another runner committed first).
    #[error("checkpoint {name} is at {actual}, expected {expected}")]
    CheckpointMoved {
        /// Checkpoint name.
        name: String,
        /// Position the committer started from.
        expected: u64,
        /// Position stored now.
        actual: u64,
    },
    /// The store cannot be reached or is busy; retrying later may succeed.
    #[error("event store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Stored data cannot be decoded; the message names the row.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The read reached an archived event: its payload is in an archive file, and the stream
    /// cannot be replayed from the hot store until `eventfold restore` brings it back. Nothing
    /// was returned.
    #[error(
        "stream {stream_id} version {version} (position {position}) is archived; \
         bring it back with `eventfold restore --from DIR --stream {stream_id}`"
    )]
    Archived {
        /// The stream read.
        stream_id: String,
        /// The first archived version the read reached.
        version: u64,
        /// Its global position.
        position: u64,
    },
    /// Any other backend failure.
    #[error("event store backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One event to archive: the store keeps its row as a stub (every column but the payload,
/// plus `digest`) so that positions, stream versions, event ids and the hash chain stay whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveStub {
    /// Global position of the event.
    pub position: u64,
    /// Its stored `hash`, which must still be there (the row the archive file was written from).
    pub hash: crate::chain::Hash,
    /// Its content digest ([`crate::chain::Content::digest`]), kept in the stub.
    pub digest: crate::chain::Hash,
}

/// One archived event to bring back: its payload, for the stub at `position` whose stored
/// hash is `hash`. The caller has proven the payload against the stub's digest
/// ([`crate::chain::archived_matches`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredPayload {
    /// Global position of the stub.
    pub position: u64,
    /// Its stored `hash`.
    pub hash: crate::chain::Hash,
    /// The payload (JSON text) as it was appended.
    pub payload: String,
}

impl StoreError {
    /// The refusal of [`EventStore::archive_events`] / [`EventStore::restore_events`] when no
    /// event at `position` has the stored `hash`; `what` is `archive` or `restore`.
    pub fn no_event_to(position: u64, hash: &[u8], what: &str) -> Self {
        Self::InvalidRequest(format!(
            "position {position}: no event with hash {} to {what}",
            hex::encode(hash)
        ))
    }

    /// A replay met an event whose payload is empty but which is not an archived stub:
    /// appends refuse an empty payload and only archiving empties one, so the row was changed
    /// behind the store's back.
    pub fn emptied_payload(stream_id: &str, version: u64, position: u64) -> Self {
        Self::Corrupt(format!(
            "replay of stream {stream_id}: version {version} (position {position}) \
             has an empty payload but is not archived"
        ))
    }

    /// A projection commit found its checkpoint at `actual`, not at the `expected` position its
    /// batch started from (see [`crate::ProjectionCommit::expect_from`]).
    pub fn checkpoint_moved(projection: &str, expected: u64, actual: u64) -> Self {
        Self::CheckpointMoved {
            name: crate::read_model::projection_checkpoint_name(projection),
            expected,
            actual,
        }
    }
}

/// Durable checkpoints by name: where a subscriber (a projection, the relay's shards, a timer, a
/// saga tail) got to. Both the event store and the read-model store keep them, in the same
/// database, so a worker can commit its checkpoint with its work.
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// The durable checkpoint (last processed global position) of a named subscriber.
    ///
    /// # Errors
    /// Infrastructure failures.
    async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError>;

    /// Stores a named subscriber's checkpoint durably.
    ///
    /// # Errors
    /// Infrastructure failures.
    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError>;
}

/// An append-only event store.
///
/// Implementations: `eventfold-sqlite` (embedded default). Every implementation must pass the suite
/// in `eventfold-conformance` unchanged.
#[async_trait]
pub trait EventStore: CheckpointStore {
    /// Appends events to one stream if its version matches `request.expected`; durable when it
    /// returns `Ok`.
    ///
    /// Appending events whose ids are already stored in this stream, in the same order and at the
    /// place the expectation names, succeeds with `duplicate: true` and writes nothing.
    ///
    /// # Errors
    /// [`StoreError::VersionConflict`] (nothing written), [`StoreError::EventIdReused`],
    /// [`StoreError::IdempotencyKeyUsed`], [`StoreError::InvalidRequest`], or an infrastructure error.
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError>;

    /// Appends several independent requests; each succeeds or fails on its own, as if appended one
    /// by one, but backends may commit them together. Results are in request order.
    ///
    /// # Errors
    /// The outer error is an infrastructure failure that stopped the whole batch.
    async fn append_many(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let mut out = Vec::with_capacity(requests.len());
        for r in requests {
            out.push(self.append(r).await);
        }
        Ok(out)
    }

    /// Reads up to `max_count` events of a stream, in version order, starting at version
    /// `from_version` (1 = the first event). An unknown stream reads as empty.
    ///
    /// # Errors
    /// Infrastructure failures, [`StoreError::Corrupt`], or [`StoreError::Archived`] when the
    /// read reaches an archived event.
    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Like [`EventStore::read_stream`], but only the fields that folding an aggregate needs
    /// (version, type, schema version, event time, payload): the hot path of every command and
    /// time-travel query. Backends override it with a leaner read.
    ///
    /// # Errors
    /// As [`EventStore::read_stream`].
    async fn read_stream_for_replay(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<ReplayEvent>, StoreError> {
        let events = self.read_stream(stream_id, from_version, max_count).await?;
        Ok(events.into_iter().map(ReplayEvent::from).collect())
    }

    /// [`EventStore::read_stream_for_replay`], lending each event to `sink` as it is read instead
    /// of returning them together, so that a long stream is folded while the rest of it is still
    /// arriving (and is never held whole). Stops at the first error `sink` returns. Backends
    /// whose reads arrive in pieces (PostgreSQL's COPY) override it; the default reads first.
    ///
    /// # Errors
    /// As [`EventStore::read_stream`], or `sink`'s error.
    async fn replay_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
        sink: &mut (dyn for<'e> FnMut(&'e ReplayEvent) -> Result<(), StoreError> + Send),
    ) -> Result<(), StoreError> {
        for event in self
            .read_stream_for_replay(stream_id, from_version, max_count)
            .await?
        {
            sink(&event)?;
        }
        Ok(())
    }

    /// The stream's current version (0 when it does not exist).
    ///
    /// # Errors
    /// Infrastructure failures.
    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError>;

    /// The documents of read model `storage` under `keys` (as
    /// [`crate::ReadModelStore::get_docs`]) and then the version of stream `stream_id` (as
    /// [`EventStore::stream_version`]), read together (one connection, one round trip) by a store
    /// that keeps its read models beside its events; `None` from one that does not, whose caller
    /// asks each store in turn. The version is read no earlier than the documents, so a document
    /// that records a stream version at or above it is current: what a read-your-writes check
    /// needs.
    ///
    /// # Errors
    /// Infrastructure failures.
    async fn docs_and_stream_version(
        &self,
        storage: &str,
        keys: &[String],
        stream_id: &str,
    ) -> Result<Option<(Vec<(String, String)>, u64)>, StoreError> {
        let _ = (storage, keys, stream_id);
        Ok(None)
    }

    /// Reads up to `max_count` events of the global log with position greater than
    /// `after_position`, in position order. Archived events are left out: their positions
    /// are gaps here, and [`EventStore::read_chain`] shows their stubs.
    ///
    /// # Errors
    /// Infrastructure failures or [`StoreError::Corrupt`].
    async fn read_all(
        &self,
        after_position: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Reads up to `max_count` events with position greater than `after_position`, in position
    /// order, raw (texts as bytes) with their hash-chain columns: what `eventfold verify`
    /// walks. Rows are not validated, so a tampered row reads and is reported by the verifier.
    /// Archived events read as their stubs (empty payload, `archived_digest` set).
    ///
    /// # Errors
    /// Infrastructure failures, or [`StoreError::Corrupt`] naming the position when a column has
    /// the wrong type.
    async fn read_chain(
        &self,
        after_position: u64,
        max_count: usize,
    ) -> Result<Vec<ChainRow>, StoreError> {
        let mut rows = Vec::new();
        self.read_chain_into(after_position, max_count, &mut rows)
            .await?;
        Ok(rows)
    }

    /// [`EventStore::read_chain`] into `rows`, which it replaces: the store refills the rows
    /// already there, reusing their buffers, so that a walk which hands its batches back
    /// (`eventfold verify --all`) does not allocate per row.
    ///
    /// # Errors
    /// As [`EventStore::read_chain`]; `rows` then holds no meaningful rows.
    async fn read_chain_into(
        &self,
        after_position: u64,
        max_count: usize,
        rows: &mut Vec<ChainRow>,
    ) -> Result<(), StoreError>;

    /// Like [`EventStore::read_chain`] for one stream, in version order from `from_version`.
    ///
    /// # Errors
    /// As [`EventStore::read_chain`].
    async fn read_stream_chain(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<ChainRow>, StoreError>;

    /// Archives events: in one transaction, each event named becomes a stub, its payload
    /// emptied and its content digest kept, so the chain, stream versions and event ids hold.
    /// The append-only trigger allows exactly this change and [`EventStore::restore_events`]'s.
    /// An event already archived with the same digest is skipped (a re-run). Returns how many
    /// events this call archived.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] naming the position when there is no event there with the
    /// given hash, or it is archived with another digest (nothing is changed); infrastructure
    /// failures.
    async fn archive_events(&self, stubs: Vec<ArchiveStub>) -> Result<u64, StoreError>;

    /// Brings archived events back: in one transaction, each stub named gets its payload
    /// back and stops being archived. A position that is not archived (restored before) is
    /// skipped. Returns how many events this call restored.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] naming the position when no event there has the given hash
    /// (nothing is changed); infrastructure failures.
    async fn restore_events(&self, payloads: Vec<RestoredPayload>) -> Result<u64, StoreError>;

    /// How many archived events (stubs) the log holds after global position `position`:
    /// events [`EventStore::read_all`] leaves out. A range scan from `position` to the head.
    ///
    /// # Errors
    /// Infrastructure failures.
    async fn archived_after(&self, position: u64) -> Result<u64, StoreError>;

    /// The highest committed global position (0 for an empty store).
    ///
    /// # Errors
    /// Infrastructure failures.
    async fn head_position(&self) -> Result<u64, StoreError>;

    /// Waits until the head may have moved past `after_position`: returns early when this process
    /// appends, and at the latest after the backend's poll interval (so appends by other processes
    /// are seen too). Callers re-read; a spurious return is allowed.
    async fn wait_for_append(&self, after_position: u64);

    /// The record stored under an idempotency key, if any.
    ///
    /// # Errors
    /// Infrastructure failures.
    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError>;
}
