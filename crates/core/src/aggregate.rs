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

    /// Stream category, e.g. `order`; the stream id is `{CATEGORY}-{id}` (see
    /// [`Aggregate::stream_id`]).
    const CATEGORY: &'static str;

    /// Decides which events a command causes, without changing state.
    ///
    /// # Errors
    /// The domain refusal (illegal transition, insufficient funds, ...).
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state. Must not fail: events are facts.
    fn apply(self, event: &Self::Event) -> Self;

    /// Upcasters of this aggregate's event types, at most one per type and version: a
    /// payload stored at version `v` is lifted `v -> v + 1 -> ...` up to the type's current
    /// version ([`current_schema_version`]) on every read. Stored history is never rewritten.
    /// Default: none, so every type is at version 1.
    fn upcasters() -> &'static [Upcaster] {
        &[]
    }

    /// Whether this aggregate is snapshotted, so that [`Aggregate::from_snapshot`] can return a
    /// state (command lanes look for a snapshot only then).
    const SNAPSHOTTED: bool = false;

    /// Rebuilds the state from a snapshot's JSON written at `state_version` (see
    /// [`crate::snapshot`]); `None` when this aggregate is not snapshotted or the snapshot is not
    /// of its current state version. Command lanes start from it.
    fn from_snapshot(_state: serde_json::Value, _state_version: u32) -> Option<Self> {
        None
    }

    /// The id of the party that owns this aggregate (an account's owner, an order's customer),
    /// if it has one: commands given an owner (see `CommandContext::owner` in eventfold-app)
    /// reach only the aggregates it owns. Default: none.
    fn owner(&self) -> Option<&str> {
        None
    }

    /// The stream id for an aggregate id: `{CATEGORY}-{id}`, scoped to the id's tenant (see
    /// [`crate::tenant`]: `acme/42` gives `acme/order-42`).
    fn stream_id(id: &str) -> String {
        let (tenant, id) = crate::tenant::split(id);
        crate::tenant::scope(tenant, &format!("{}-{id}", Self::CATEGORY))
    }

    /// The aggregate id of a stream of this category, scoped to its tenant (the inverse of
    /// [`Aggregate::stream_id`]); `None` for a stream of another category.
    fn id_of_stream(stream_id: &str) -> Option<String> {
        let (tenant, stream) = crate::tenant::split(stream_id);
        let id = stream
            .strip_prefix(Self::CATEGORY)
            .and_then(|rest| rest.strip_prefix('-'))?;
        Some(crate::tenant::scope(tenant, id))
    }
}

/// Lifts one event type's payload from schema version `from` to `from + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Upcaster {
    /// The event type, e.g. `FundsDeposited`.
    pub event_type: &'static str,
    /// The version it reads; it writes `from + 1`.
    pub from: u32,
    /// The lift; an error message names what the payload lacks.
    pub lift: fn(serde_json::Value) -> Result<serde_json::Value, String>,
}

/// The schema version this build writes for `event_type` of `A`: one past its newest upcaster,
/// else 1.
pub fn current_schema_version<A: Aggregate>(event_type: &str) -> u32 {
    A::upcasters()
        .iter()
        .filter(|u| u.event_type == event_type)
        .map(|u| u.from + 1)
        .max()
        .unwrap_or(1)
}

/// The payload of an `event_type` event stored at `schema_version`, lifted to the current
/// version (borrowed when it is current already).
///
/// # Errors
/// A message when the version is newer than this build knows, when no upcaster lifts one of the
/// versions on the way, or when a lift fails.
pub fn upcast<'a, A: Aggregate>(
    event_type: &str,
    schema_version: u32,
    payload: &'a str,
) -> Result<std::borrow::Cow<'a, str>, String> {
    let current = current_schema_version::<A>(event_type);
    if schema_version == current {
        return Ok(std::borrow::Cow::Borrowed(payload));
    }
    if schema_version > current {
        return Err(format!(
            "schema version {schema_version} is newer than this build knows (up to {current})"
        ));
    }
    let mut value: serde_json::Value =
        serde_json::from_str(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    for version in schema_version..current {
        let upcaster = A::upcasters()
            .iter()
            .find(|u| u.event_type == event_type && u.from == version)
            .ok_or_else(|| {
                format!("no upcaster lifts schema version {version} (current is {current})")
            })?;
        value = (upcaster.lift)(value)
            .map_err(|e| format!("upcasting schema version {version} to {}: {e}", version + 1))?;
    }
    Ok(std::borrow::Cow::Owned(value.to_string()))
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
    // The same as parsing `{"<event_type>": <payload>}`, without building that text per event:
    // the enum's variant comes from `event_type` and its content from the payload's parser.
    let mut content = serde_json::Deserializer::from_str(payload);
    let event = E::deserialize(Tagged {
        tag: event_type,
        content: &mut content,
    })?;
    content.end()?;
    Ok(event)
}

/// An externally tagged enum whose tag and content are apart (see [`decode_event`]).
struct Tagged<'a, 'de> {
    tag: &'a str,
    content: &'a mut serde_json::Deserializer<serde_json::de::StrRead<'de>>,
}

impl<'de> serde::Deserializer<'de> for Tagged<'_, 'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom(
            "an event must deserialize as an enum",
        ))
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

impl<'de> serde::de::EnumAccess<'de> for Tagged<'_, 'de> {
    type Error = serde_json::Error;
    type Variant = Self;

    fn variant_seed<V: serde::de::DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), Self::Error> {
        use serde::de::IntoDeserializer;
        let variant = seed.deserialize(self.tag.into_deserializer())?;
        Ok((variant, self))
    }
}

impl<'de> serde::de::VariantAccess<'de> for Tagged<'_, 'de> {
    type Error = serde_json::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        serde::Deserialize::deserialize(&mut *self.content)
    }

    fn newtype_variant_seed<T: serde::de::DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        seed.deserialize(&mut *self.content)
    }

    fn tuple_variant<V: serde::de::Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        serde::Deserializer::deserialize_seq(&mut *self.content, visitor)
    }

    fn struct_variant<V: serde::de::Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        serde::Deserializer::deserialize_struct(&mut *self.content, "", fields, visitor)
    }
}

/// Decodes a recorded event for aggregate `A`.
///
/// # Errors
/// [`StoreError::Corrupt`] naming the stream, version and type.
pub fn decode_recorded<A: Aggregate>(event: &RecordedEvent) -> Result<A::Event, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| {
        StoreError::Corrupt(format!(
            "stream {} version {} type {} schema {}: {e}",
            event.stream_id, event.stream_version, event.event_type, event.schema_version
        ))
    };
    let payload = upcast::<A>(&event.event_type, event.schema_version, &event.payload)
        .map_err(|e| corrupt(&e))?;
    decode_event(&event.event_type, &payload).map_err(|e| corrupt(&e))
}

/// Decodes a replayed event of stream `stream_id` for aggregate `A`.
///
/// # Errors
/// [`StoreError::Corrupt`] naming the stream, version and type.
pub fn decode_replay<A: Aggregate>(
    stream_id: &str,
    event: &ReplayEvent,
) -> Result<A::Event, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| {
        StoreError::Corrupt(format!(
            "stream {stream_id} version {} type {} schema {}: {e}",
            event.stream_version, event.event_type, event.schema_version
        ))
    };
    let payload = upcast::<A>(&event.event_type, event.schema_version, &event.payload)
        .map_err(|e| corrupt(&e))?;
    decode_event(&event.event_type, &payload).map_err(|e| corrupt(&e))
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
    /// The state before any event (version 0).
    pub fn empty() -> Self {
        Self {
            state: A::default(),
            version: 0,
        }
    }

    /// Folds recorded events (in version order) into a state.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when an event does not decode.
    pub fn from_events<'a>(
        events: impl IntoIterator<Item = &'a RecordedEvent>,
    ) -> Result<Self, StoreError> {
        let mut replayed = Self::empty();
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
        let mut replayed = Self::empty();
        for event in events {
            replayed.push_replay(stream_id, event)?;
        }
        Ok(replayed)
    }

    /// Folds one more replay event of stream `stream_id` (the next in version order) into this
    /// state: the step of a fold fed by [`crate::EventStore::replay_stream`].
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the event does not decode.
    pub fn push_replay(&mut self, stream_id: &str, event: &ReplayEvent) -> Result<(), StoreError> {
        let state = std::mem::take(&mut self.state);
        self.state = state.apply(&decode_replay::<A>(stream_id, event)?);
        self.version = event.stream_version;
        Ok(())
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
            self.push_replay(stream_id, event)?;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// A counter whose `Added` event went through three payload shapes:
    /// v1 `{"n": 1}`, v2 `{"by": 1}`, v3 `{"by": 1, "note": ""}`.
    #[derive(Debug, Clone, Default, PartialEq)]
    struct Counter(i64);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    enum CounterEvent {
        Added { by: i64, note: String },
    }

    fn rename_n(v: serde_json::Value) -> Result<serde_json::Value, String> {
        let n = v.get("n").cloned().ok_or("v1 has no n")?;
        Ok(serde_json::json!({ "by": n }))
    }

    fn add_note(mut v: serde_json::Value) -> Result<serde_json::Value, String> {
        v["note"] = serde_json::Value::String(String::new());
        Ok(v)
    }

    static COUNTER_UPCASTERS: [Upcaster; 2] = [
        Upcaster {
            event_type: "Added",
            from: 2,
            lift: add_note,
        },
        Upcaster {
            event_type: "Added",
            from: 1,
            lift: rename_n,
        },
    ];

    impl Aggregate for Counter {
        type Command = ();
        type Event = CounterEvent;
        type Error = std::convert::Infallible;
        const CATEGORY: &'static str = "counter";

        fn upcasters() -> &'static [Upcaster] {
            &COUNTER_UPCASTERS
        }

        fn handle(&self, (): ()) -> Result<Vec<CounterEvent>, Self::Error> {
            Ok(vec![CounterEvent::Added {
                by: 1,
                note: String::new(),
            }])
        }

        fn apply(self, event: &CounterEvent) -> Self {
            match event {
                CounterEvent::Added { by, .. } => Self(self.0 + by),
            }
        }
    }

    fn replay(version: u64, schema_version: u32, payload: &str) -> ReplayEvent {
        ReplayEvent {
            stream_version: version,
            event_type: "Added".into(),
            schema_version,
            event_time: chrono::Utc::now(),
            payload: payload.into(),
        }
    }

    #[test]
    fn upcasters_chain_from_any_stored_version_to_the_current_one() {
        assert_eq!(current_schema_version::<Counter>("Added"), 3);
        assert_eq!(current_schema_version::<Counter>("Other"), 1);
        let events = [
            replay(1, 1, r#"{"n":5}"#),
            replay(2, 2, r#"{"by":10}"#),
            replay(3, 3, r#"{"by":100,"note":"x"}"#),
        ];
        let state = Replayed::<Counter>::from_replay("counter-1", &events).unwrap();
        assert_eq!((state.state, state.version), (Counter(115), 3));
        // The current version is decoded as stored, without a copy.
        assert!(matches!(
            upcast::<Counter>("Added", 3, "{}").unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn unknown_versions_and_failed_lifts_name_the_stream_version_and_type() {
        for (schema, payload, says) in [
            (
                9,
                r#"{"by":1,"note":""}"#,
                "schema version 9 is newer than this build knows (up to 3)",
            ),
            (0, r#"{"n":1}"#, "no upcaster lifts schema version 0"),
            (
                1,
                r#"{"m":1}"#,
                "upcasting schema version 1 to 2: v1 has no n",
            ),
        ] {
            let err = Replayed::<Counter>::from_replay("counter-7", &[replay(4, schema, payload)])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("stream counter-7 version 4 type Added") && err.contains(says),
                "{err}"
            );
        }
    }

    /// Decoding with the tag apart gives what parsing `{"<type>": <payload>}` gives, for every
    /// kind of variant, and refuses the same inputs.
    #[test]
    fn decode_event_reads_every_variant_kind_like_the_tagged_text() {
        #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
        enum Kinds {
            Unit,
            New(u32),
            Pair(u8, String),
            Named { a: i64, b: Option<String> },
        }
        for e in [
            Kinds::Unit,
            Kinds::New(7),
            Kinds::Pair(1, "x".into()),
            Kinds::Named { a: -3, b: None },
            Kinds::Named {
                a: 3,
                b: Some("caf\u{e9} \"q\"".into()),
            },
        ] {
            let (ty, payload) = encode_event(&e).unwrap_or_else(|_| {
                // A unit variant serializes as a bare string: its payload is null.
                ("Unit".into(), "null".into())
            });
            let tagged: Kinds = serde_json::from_str(&format!("{{\"{ty}\":{payload}}}")).unwrap();
            assert_eq!(decode_event::<Kinds>(&ty, &payload).unwrap(), tagged);
            assert_eq!(tagged, e);
        }
        assert!(decode_event::<Kinds>("Other", "1")
            .unwrap_err()
            .to_string()
            .contains("unknown variant"));
        assert!(decode_event::<Kinds>("New", "\"x\"").is_err());
        assert!(decode_event::<Kinds>("New", "7 8").is_err());
        assert!(decode_event::<Kinds>("Named", "{\"a\":1,\"b\":null} x").is_err());
    }
}
