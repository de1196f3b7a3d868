//! Audit timelines: who did what to a stream, when, and what its state was before and after.

use chrono::{DateTime, Utc};
use eventfold_core::aggregate::decode_recorded;
use eventfold_core::{Aggregate, RecordedEvent, StoreError};
use serde::Serialize;
use uuid::Uuid;

/// One entry of a stream's audit timeline: who did what, when, and the state before and after.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    /// The event's stream, e.g. `order-42` or `paysaga-42` (an order's history holds both).
    pub stream_id: String,
    /// Stream version of the event.
    pub version: u64,
    /// Global position.
    pub global_position: u64,
    /// Event id (UUIDv7).
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
    pub change: serde_json::Value,
    /// The state before this event (`null` before the first).
    pub state_before: serde_json::Value,
    /// The state after it.
    pub state_after: serde_json::Value,
    /// Correlation id, if any.
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
        // The change as this build reads it: the payload lifted to the current schema (upcasting).
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
            state_after: serde_json::Value::Null,
            correlation_id: e.metadata.correlation_id,
        });
        state = state.apply(&decoded);
        if let Some(entry) = out.last_mut() {
            entry.state_after = serde_json::to_value(&state).unwrap_or_default();
        }
    }
    Ok(out)
}
