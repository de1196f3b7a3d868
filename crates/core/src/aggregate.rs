//! Pure aggregates: `handle(&state, command) -> events` and `apply(state, &event) -> state`.
//!
//! The shape follows esrs and cqrs-es: no clock, id generator, database or broker inside; the
//! service layer loads the events, calls [`Aggregate::handle`], and appends the result with the
//! expected version it loaded.

use serde::{de::DeserializeOwned, Serialize};

use crate::envelope::{RecordedEvent, ReplayEvent};
use crate::store::StoreError;

/// A consistency boundary whose state is the fold of its events.
pub trait Aggregate: Default + Clone + Send + Sync + 'static {
    /// What a caller asks for.
    type Command;
    /// What happened. Serialized externally tagged: the variant name is the event type and the
    /// variant's fields are the payload.
    type Event: Serialize + DeserializeOwned + Clone + Send + Sync;
    /// Why a command was refused (a domain refusal, never an infrastructure failure).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Stream category, e.g. `order`; the stream id is `{CATEGORY}-{id}`.
    const CATEGORY: &'static str;

    /// Decides which events a command causes, without changing state.
    ///
    /// # Errors
    /// The domain refusal (illegal transition, insufficient funds, ...).
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state. Must not fail: events are facts.
    fn apply(self, event: &Self::Event) -> Self;

    /// The schema version of the event payloads this code writes (M5).
    fn schema_version(_event: &Self::Event) -> u32 {
        1
    }

    /// The stream id for an aggregate id.
    fn stream_id(id: &str) -> String {
        format!("{}-{id}", Self::CATEGORY)
    }
}

/// Splits an externally tagged event into its type name and its payload (JSON text).
///
/// # Errors
/// When the event does not serialize as a one-key JSON object (a unit variant, say).
pub fn encode_event<E: Serialize>(event: &E) -> Result<(String, String), serde_json::Error> {
    let value = serde_json::to_value(event)?;
    match value {
        serde_json::Value::Object(map) if map.len() == 1 => {
            let (ty, payload) = map.into_iter().next().expect("one entry");
            Ok((ty, serde_json::to_string(&payload)?))
        }
        other => Err(serde::ser::Error::custom(format!(
            "event must serialize as a one-key object, got {other}"
        ))),
    }
}

/// Rebuilds an externally tagged event from its type name and payload.
///
/// # Errors
/// Unknown type or a payload that does not match it.
pub fn decode_event<E: DeserializeOwned>(
    event_type: &str,
    payload: &str,
) -> Result<E, serde_json::Error> {
    let mut text = String::with_capacity(event_type.len() + payload.len() + 5);
    text.push_str("{\"");
    text.push_str(event_type);
    text.push_str("\":");
    text.push_str(payload);
    text.push('}');
    serde_json::from_str(&text)
}

/// Decodes a recorded event for aggregate `A`.
///
/// # Errors
/// [`StoreError::Corrupt`] naming the stream, version and type.
pub fn decode_recorded<A: Aggregate>(event: &RecordedEvent) -> Result<A::Event, StoreError> {
    decode_event(&event.event_type, &event.payload).map_err(|e| {
        StoreError::Corrupt(format!(
            "stream {} version {} type {} schema {}: {e}",
            event.stream_id, event.stream_version, event.event_type, event.schema_version
        ))
    })
}

/// Decodes a replayed event of stream `stream_id` for aggregate `A`.
///
/// # Errors
/// [`StoreError::Corrupt`] naming the stream, version and type.
pub fn decode_replay<A: Aggregate>(
    stream_id: &str,
    event: &ReplayEvent,
) -> Result<A::Event, StoreError> {
    decode_event(&event.event_type, &event.payload).map_err(|e| {
        StoreError::Corrupt(format!(
            "stream {stream_id} version {} type {} schema {}: {e}",
            event.stream_version, event.event_type, event.schema_version
        ))
    })
}

/// An aggregate's state after replaying its stream, with the version it reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed<A> {
    /// The folded state.
    pub state: A,
    /// The stream version the state reflects (0 = no events).
    pub version: u64,
}

impl<A: Aggregate> Replayed<A> {
    /// Folds recorded events (in version order) into a state.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when an event does not decode.
    pub fn from_events<'a>(
        events: impl IntoIterator<Item = &'a RecordedEvent>,
    ) -> Result<Self, StoreError> {
        let mut replayed = Self {
            state: A::default(),
            version: 0,
        };
        for event in events {
            replayed.state = replayed.state.apply(&decode_recorded::<A>(event)?);
            replayed.version = event.stream_version;
        }
        Ok(replayed)
    }

    /// Folds the replay events of stream `stream_id` (in version order) into a state.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when an event does not decode.
    pub fn from_replay<'a>(
        stream_id: &str,
        events: impl IntoIterator<Item = &'a ReplayEvent>,
    ) -> Result<Self, StoreError> {
        let mut replayed = Self {
            state: A::default(),
            version: 0,
        };
        for event in events {
            replayed.state = replayed.state.apply(&decode_replay::<A>(stream_id, event)?);
            replayed.version = event.stream_version;
        }
        Ok(replayed)
    }

    /// Folds further replay events of stream `stream_id` (the ones after `self.version`, in
    /// version order) into this state: a cached state caught up with its stream's tail.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when an event does not decode, or when the events do not continue
    /// at `self.version + 1` (a gap would silently give a wrong state).
    pub fn extend_replay<'a>(
        mut self,
        stream_id: &str,
        events: impl IntoIterator<Item = &'a ReplayEvent>,
    ) -> Result<Self, StoreError> {
        for event in events {
            if event.stream_version != self.version + 1 {
                return Err(StoreError::Corrupt(format!(
                    "stream {stream_id}: version {} follows version {}",
                    event.stream_version, self.version
                )));
            }
            self.state = self.state.apply(&decode_replay::<A>(stream_id, event)?);
            self.version = event.stream_version;
        }
        Ok(self)
    }
}
