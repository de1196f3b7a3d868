//! The service layer: commands against aggregates, state as of a version or time, audit timelines.
//!
//! It owns what aggregates must not: the clock, event ids, the store, retries and idempotency.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use eventfold_core::aggregate::encode_event;
use eventfold_core::{
    Actor, Aggregate, EventMetadata, EventStore, NewEvent, RecordedEvent, Replayed, StoreError,
    StoredResponse,
};
use eventfold_domain::{DomainError, Refusal};
use uuid::Uuid;

pub mod lane;
mod snapshots;
mod timeline;
pub use lane::{Render, MAX_BATCH};
pub use snapshots::{load_snapshotted, run_snapshots};
pub use timeline::{timeline, TimelineEntry};

/// Most times a command is decided again because a writer in another process appended to its
/// stream between the lane's catch-up read and its append (only when the caller gave no expected
/// version). Each retry waits a random backoff first (up to 16 ms), so this bounds the wait at
/// about half a second of sustained contention before the caller gets the conflict.
pub const MAX_CONFLICT_RETRIES: usize = 48;

/// Why the service did not apply a command or answer a query.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The domain refused the command.
    #[error("{message}")]
    Refused {
        /// Stable code, e.g. `illegal_transition`.
        code: &'static str,
        /// 404, 409 or 422.
        refusal: Refusal,
        /// Human message.
        message: String,
    },
    /// The idempotency key was already used with another request.
    #[error("idempotency key {key:?} was already used with a different request")]
    IdempotencyKeyReused {
        /// The key.
        key: String,
    },
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError {
    /// A domain refusal with its code, how it maps to the caller, and its message.
    pub fn refused<E: DomainError>(e: &E) -> Self {
        Self::Refused {
            code: e.code(),
            refusal: e.refusal(),
            message: e.to_string(),
        }
    }
}

/// Who runs a command, when, and under which guarantees.
#[derive(Debug, Clone)]
pub struct CommandContext {
    /// Who (goes into every event's envelope).
    pub actor: Actor,
    /// The principal that sent the command on the actor's behalf (a `service:` front end acting
    /// for a user), recorded as every event's `via`; `None` when the actor acted itself.
    pub via: Option<Actor>,
    /// Whether the events are history loaded by a backfill (recorded in every event's envelope
    /// as `backfill`): reports count them on their business date without calling them late.
    pub backfill: bool,
    /// The version the caller saw; `None` lets the service retry on concurrent changes.
    pub expected_version: Option<u64>,
    /// When it happened (UTC); the service clock unless the source says otherwise.
    pub event_time: DateTime<Utc>,
    /// The caller's idempotency key (already scoped) and a digest of the request.
    pub idempotency: Option<(String, String)>,
    /// Correlation id shared by a business transaction.
    pub correlation_id: Option<Uuid>,
    /// The message that caused this command.
    pub causation_id: Option<Uuid>,
    /// Reach only an aggregate this party owns ([`Aggregate::owner`]): any other answers as
    /// an aggregate that does not exist (the domain's not-found refusal), so a caller cannot
    /// tell another's from none. `None`: any.
    pub owner: Option<String>,
}

impl CommandContext {
    /// A context for `actor` now. (The tenant is the aggregate id's: see
    /// [`eventfold_core::tenant`].)
    pub fn new(actor: Actor) -> Self {
        Self {
            actor,
            via: None,
            backfill: false,
            expected_version: None,
            event_time: Utc::now(),
            idempotency: None,
            correlation_id: None,
            causation_id: None,
            owner: None,
        }
    }
}

/// What running a command produced.
#[derive(Debug, Clone)]
pub enum Executed<A> {
    /// The command ran now.
    Applied {
        /// State after the command.
        state: A,
        /// Stream version after the command.
        version: u64,
        /// Events appended (0 when the command was a no-op).
        events: usize,
        /// Global position of the last appended event, if any.
        position: Option<u64>,
    },
    /// The idempotency key had been used by the same request: its first response.
    Replayed(StoredResponse),
}

/// Runs commands and queries on one event store.
#[derive(Clone)]
pub struct Service {
    store: Arc<dyn EventStore>,
    lanes: Arc<lane::Lanes>,
    /// Where snapshots are read when a lane first loads a stream.
    snapshots: Option<Arc<dyn eventfold_core::ReadModelStore>>,
}

/// The response stored for a command whose caller needs only the new version:
/// `{"version": N}` with `status`.
pub fn version_render<A: Aggregate>(status: u16) -> Render<A> {
    Box::new(move |_: &A, version: u64| StoredResponse {
        status,
        body: format!("{{\"version\":{version}}}"),
    })
}

/// Which version of a stream to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// The latest.
    Latest,
    /// The state right after this version (versions above the stream's end give the latest).
    Version(u64),
    /// The state from every event whose event time is at or before this instant.
    Time(DateTime<Utc>),
}

impl Service {
    /// A service over `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            lanes: Arc::default(),
            snapshots: None,
        }
    }

    /// The same service, whose command lanes start a stream they load for the first time from
    /// its snapshot in `read_models` (when its aggregate accepts it: see
    /// [`eventfold_core::Aggregate::from_snapshot`]) instead of its first event.
    #[must_use]
    pub fn with_snapshots(mut self, read_models: Arc<dyn eventfold_core::ReadModelStore>) -> Self {
        self.snapshots = Some(read_models);
        self
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// All events of a stream, in version order.
    ///
    /// # Errors
    /// Store failures.
    pub async fn read_stream(&self, stream_id: &str) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.read_stream(stream_id, 1, usize::MAX).await
    }

    /// Loads aggregate `id` as of a version or time. Returns `None` when the stream has no event
    /// in range.
    ///
    /// # Errors
    /// Store failures or an undecodable event.
    pub async fn load<A: Aggregate>(
        &self,
        id: &str,
        as_of: AsOf,
    ) -> Result<Option<Replayed<A>>, StoreError> {
        let stream_id = A::stream_id(id);
        let max_count = match as_of {
            AsOf::Version(v) => usize::try_from(v).unwrap_or(usize::MAX),
            _ => usize::MAX,
        };
        let until = match as_of {
            AsOf::Time(t) => Some(t),
            _ => None,
        };
        let mut replayed = Replayed::<A>::empty();
        // Folded as the events arrive (late events included: every event at or before the time).
        self.store
            .replay_stream(&stream_id, 1, max_count, &mut |event| {
                if until.is_none_or(|t| event.event_time <= t) {
                    replayed.push_replay(&stream_id, event)?;
                }
                Ok(())
            })
            .await?;
        Ok((replayed.version > 0).then_some(replayed))
    }

    /// Runs `command` on aggregate `id`: queues it on the stream's lane (see [`lane`]), which
    /// brings the stream's state up to date, checks the caller's expected version, handles the
    /// command against the state the commands before it in the queue left, and appends its events
    /// with that version as the expected version (several queued commands share one
    /// `append_many`). When the caller gave no expected version, a conflict with a writer in
    /// another process is decided again, up to [`MAX_CONFLICT_RETRIES`] times. `render` builds
    /// the response stored under the idempotency key, from the new state and version.
    ///
    /// # Errors
    /// [`ServiceError::Refused`] for domain refusals, a version conflict as
    /// [`ServiceError::Store`], [`ServiceError::IdempotencyKeyReused`], store failures.
    pub async fn execute<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
        render: Render<A>,
    ) -> Result<Executed<A>, ServiceError>
    where
        A::Command: Clone + Send + 'static,
        A::Error: DomainError,
    {
        let stream_id = A::stream_id(id);
        if let Some(replay) = self.replay(ctx).await? {
            return Ok(replay);
        }
        match self
            .execute_in_lane::<A>(&stream_id, command, ctx.clone(), render)
            .await
        {
            // The same request (same key) running concurrently may have won: the state it left
            // refuses this one (an order that exists, say). Answer as it was answered.
            Err(refused @ ServiceError::Refused { .. }) if ctx.idempotency.is_some() => {
                match self.replay(ctx).await? {
                    Some(replay) => Ok(replay),
                    None => Err(refused),
                }
            }
            other => other,
        }
    }

    async fn replay<A>(&self, ctx: &CommandContext) -> Result<Option<Executed<A>>, ServiceError> {
        let Some((key, fingerprint)) = &ctx.idempotency else {
            return Ok(None);
        };
        match self.store.idempotency_record(key).await? {
            Some(record) if &record.fingerprint == fingerprint => {
                Ok(Some(Executed::Replayed(record.response)))
            }
            Some(_) => Err(ServiceError::IdempotencyKeyReused {
                key: key
                    .rsplit_once(':')
                    .map_or(key.as_str(), |(_, k)| k)
                    .to_owned(),
            }),
            None => Ok(None),
        }
    }

    /// Encodes a domain event of stream `stream_id` into a [`NewEvent`] with the context's
    /// envelope fields and the stream's tenant.
    ///
    /// # Errors
    /// An event that does not encode (a bug in the domain type).
    pub fn new_event<A: Aggregate>(
        &self,
        stream_id: &str,
        event: &A::Event,
        ctx: &CommandContext,
        event_id: Uuid,
    ) -> Result<NewEvent, StoreError> {
        let (event_type, payload) =
            encode_event(event).map_err(|e| StoreError::Backend(Box::new(e)))?;
        let schema_version = eventfold_core::aggregate::current_schema_version::<A>(&event_type);
        Ok(NewEvent {
            event_id,
            event_type,
            schema_version,
            event_time: ctx.event_time,
            metadata: EventMetadata {
                actor: ctx.actor.clone(),
                causation_id: ctx.causation_id,
                correlation_id: ctx.correlation_id,
                tenant_id: eventfold_core::tenant::of(stream_id).to_owned(),
                via: ctx.via.clone(),
                backfill: ctx.backfill,
            },
            payload,
        })
    }
}
