//! The service layer: commands against aggregates, state as of a version or time, audit timelines.
//!
//! It owns what aggregates must not: the clock, event ids, the store, retries and idempotency.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use eventfold_core::aggregate::{decode_recorded, encode_event};
use eventfold_core::{
    Actor, Aggregate, EventMetadata, EventStore, NewEvent, RecordedEvent, Replayed, StoreError,
    StoredResponse,
};
use eventfold_domain::{DomainError, Refusal};
use serde::Serialize;
use uuid::Uuid;

pub mod lane;
pub use lane::{Render, MAX_BATCH};

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
    fn refused<E: DomainError>(e: &E) -> Self {
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
    /// Tenant (M25).
    pub tenant_id: String,
}

impl CommandContext {
    /// A context for `actor` now, in the default tenant.
    pub fn new(actor: Actor) -> Self {
        Self {
            actor,
            expected_version: None,
            event_time: Utc::now(),
            idempotency: None,
            correlation_id: None,
            causation_id: None,
            tenant_id: "default".into(),
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
    /// Where snapshots are read when a lane first loads a stream (M4).
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

    /// Encodes a domain event into a [`NewEvent`] with the context's envelope fields.
    ///
    /// # Errors
    /// An event that does not encode (a bug in the domain type).
    pub fn new_event<A: Aggregate>(
        &self,
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
                tenant_id: ctx.tenant_id.clone(),
            },
            payload,
        })
    }
}

/// Loads aggregate `id` from its newest snapshot that holds nothing the answer must leave out,
/// plus the events after it (M4, see [`eventfold_core::snapshot`]: `load_latest` for the latest,
/// `load_until` as of a version or an event time); a snapshot that had to be ignored is logged
/// and counted (`eventfold_snapshots_ignored_total`).
///
/// # Errors
/// Store failures, an undecodable event, a snapshot written by a newer state version.
pub async fn load_snapshotted<A: eventfold_core::snapshot::Snapshotting>(
    store: &dyn EventStore,
    read_models: &dyn eventfold_core::ReadModelStore,
    id: &str,
    as_of: AsOf,
) -> Result<Option<Replayed<A>>, StoreError> {
    use eventfold_core::snapshot::{load_latest, load_until, Until};
    let stream_id = A::stream_id(id);
    let loaded = match as_of {
        AsOf::Latest => load_latest::<A>(store, read_models, &stream_id).await?,
        AsOf::Version(v) => {
            load_until::<A>(store, read_models, &stream_id, Until::Version(v)).await?
        }
        AsOf::Time(t) => load_until::<A>(store, read_models, &stream_id, Until::Time(t)).await?,
    };
    if let Some(why) = loaded.ignored {
        tracing::warn!(
            stream_id,
            why,
            "snapshot ignored; the stream was replayed in full"
        );
        metrics::counter!("eventfold_snapshots_ignored_total").increment(1);
    }
    Ok(loaded.replayed)
}

/// Runs the snapshot tail for `A` (every `every` events of a stream, and when a stream's snapshot
/// is older than `max_age`) until `stop` completes.
pub async fn run_snapshots<A: eventfold_core::snapshot::Snapshotting>(
    store: Arc<dyn EventStore>,
    read_models: Arc<dyn eventfold_core::ReadModelStore>,
    every: u64,
    max_age: Option<chrono::Duration>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let head = store.head_position().await.unwrap_or(0);
        match eventfold_core::snapshot::take_due_with::<A>(
            &store,
            &read_models,
            every,
            max_age,
            Utc::now(),
        )
        .await
        {
            Ok(n) if n > 0 => continue,
            Ok(_) | Err(StoreError::CheckpointMoved { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "snapshot tail failed; retrying"),
        }
        tokio::select! {
            () = store.wait_for_append(head) => {}
            () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            () = &mut stop => return,
        }
    }
}

/// One entry of a stream's audit timeline (M3): who did what, when, and the state before.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    /// The event's stream, e.g. `order-42` or `paysaga-42` (an order's history holds both).
    pub stream_id: String,
    /// Stream version of the event.
    pub version: u64,
    /// Global position.
    pub global_position: u64,
    /// Event id (UUIDv7).
    #[schema(value_type = String)]
    pub event_id: Uuid,
    /// Event type, e.g. `OrderCancelled`.
    pub event_type: String,
    /// When it happened (UTC).
    pub event_time: DateTime<Utc>,
    /// When eventfold recorded it (UTC).
    pub recorded_at: DateTime<Utc>,
    /// Who, e.g. `admin:support-001`.
    pub actor: String,
    /// The reason the payload gives, if any.
    pub reason: Option<String>,
    /// What changed: the event's payload.
    #[schema(value_type = Object)]
    pub change: serde_json::Value,
    /// The state before this event (`null` before the first).
    #[schema(value_type = Object)]
    pub state_before: serde_json::Value,
    /// Correlation id, if any.
    #[schema(value_type = Option<String>)]
    pub correlation_id: Option<Uuid>,
}

/// Builds the audit timeline of a stream whose events belong to aggregate `A`.
///
/// # Errors
/// [`StoreError::Corrupt`] when an event does not decode.
pub fn timeline<A: Aggregate + Serialize>(
    events: &[RecordedEvent],
) -> Result<Vec<TimelineEntry>, StoreError> {
    let mut state = A::default();
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let decoded = decode_recorded::<A>(e)?;
        // The change as this build reads it: the payload lifted to the current schema (M5).
        let lifted =
            eventfold_core::aggregate::upcast::<A>(&e.event_type, e.schema_version, &e.payload)
                .map_err(|err| {
                    StoreError::Corrupt(format!(
                        "stream {} version {}: {err}",
                        e.stream_id, e.stream_version
                    ))
                })?;
        let change: serde_json::Value = serde_json::from_str(&lifted).map_err(|err| {
            StoreError::Corrupt(format!(
                "stream {} version {}: {err}",
                e.stream_id, e.stream_version
            ))
        })?;
        let state_before = if i == 0 {
            serde_json::Value::Null
        } else {
            serde_json::to_value(&state).unwrap_or_default()
        };
        out.push(TimelineEntry {
            stream_id: e.stream_id.clone(),
            version: e.stream_version,
            global_position: e.global_position,
            event_id: e.event_id,
            event_type: e.event_type.clone(),
            event_time: e.event_time,
            recorded_at: e.ingest_time,
            actor: e.metadata.actor.to_string(),
            reason: change
                .get("reason")
                .and_then(|r| r.as_str())
                .map(str::to_owned),
            change,
            state_before,
            correlation_id: e.metadata.correlation_id,
        });
        state = state.apply(&decoded);
    }
    Ok(out)
}
