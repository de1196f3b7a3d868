//! The event envelope.
//!
//! Every event eventfold stores carries: event id (UUIDv7), stream id, stream version, global position,
//! event type, schema version, event time (when it happened, from the source), ingest time (when the
//! store recorded it), actor (`user:789`, `admin:support-001`, `system:auto-complete`), causation id,
//! correlation id, tenant id, the principal it came via (a service acting on the actor's behalf,
//! if any), whether it is backfilled history, and the payload (JSON text).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Who caused an event, as `kind:id` (`user:789`, `admin:support-001`, `system:auto-complete`).
///
/// The kind is one of `user`, `admin`, `system`, `service`; the id is 1 to 128 characters of
/// `[A-Za-z0-9._@-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Actor(String);

impl Actor {
    /// Parses `kind:id`.
    ///
    /// # Errors
    /// A message naming what is wrong: missing `:`, an unknown kind, an empty, too long or badly
    /// formed id.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (kind, id) = s
            .split_once(':')
            .ok_or_else(|| format!("actor {s:?} must look like kind:id, e.g. user:789"))?;
        if !matches!(kind, "user" | "admin" | "system" | "service") {
            return Err(format!(
                "actor kind {kind:?} is not one of user, admin, system, service"
            ));
        }
        if id.is_empty() || id.len() > 128 {
            return Err(format!("actor id in {s:?} must be 1 to 128 characters"));
        }
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
        {
            return Err(format!(
                "actor id in {s:?} may only hold letters, digits and . _ @ -"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// An actor read back from storage, where it was validated on append: only the `kind:` prefix
    /// is checked again (cheap), so a load of many events does not re-validate every character.
    ///
    /// # Errors
    /// A message when the text has no known `kind:` prefix.
    pub fn from_stored(s: String) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("user" | "admin" | "system" | "service", id)) if !id.is_empty() => Ok(Self(s)),
            _ => Err(format!("stored actor {s:?} is not kind:id")),
        }
    }

    /// The system actor with the given id, e.g. `Actor::system("import-cdnow")`.
    ///
    /// # Panics
    /// When `id` is not a valid actor id; meant for constants written in code.
    pub fn system(id: &str) -> Self {
        Self::parse(&format!("system:{id}")).expect("valid system actor id")
    }

    /// The `kind:id` text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Actor {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<Actor> for String {
    fn from(a: Actor) -> String {
        a.0
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The envelope fields that a caller chooses for every event of one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Who caused the events.
    pub actor: Actor,
    /// The event or command that directly caused these events, if any.
    pub causation_id: Option<Uuid>,
    /// The id shared by everything one business transaction caused, if any.
    pub correlation_id: Option<Uuid>,
    /// The tenant the events belong to; `default` on a single-tenant install.
    pub tenant_id: String,
    /// The principal that sent the command on the actor's behalf, if any: a `service:` front end
    /// acting for `user:789` records the user as [`Self::actor`] and itself here. `None` when the
    /// actor acted itself (and on every event stored before this field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Actor>,
    /// Whether the event was recorded as **history** by a backfill (`eventfold import ...
    /// --backfill`): it happened long before it was stored, on purpose, so reports count it on
    /// its business date without calling it late and without a correction notice. `false` for
    /// everything a live source sends (and for every event stored before this field existed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backfill: bool,
}

impl EventMetadata {
    /// Metadata for `actor` in the `default` tenant with no causation or correlation.
    pub fn by(actor: Actor) -> Self {
        Self {
            actor,
            causation_id: None,
            correlation_id: None,
            tenant_id: "default".to_owned(),
            via: None,
            backfill: false,
        }
    }
}

/// An event to append: everything but the stream, version, position and ingest time, which the
/// store assigns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Unique id, UUIDv7 (time-ordered); appending the same ids again is idempotent.
    pub event_id: Uuid,
    /// The event's type name, e.g. `FundsDeposited`.
    pub event_type: String,
    /// The payload's schema version, starting at 1.
    pub schema_version: u32,
    /// When it happened, from the source (UTC).
    pub event_time: DateTime<Utc>,
    /// Actor, causation, correlation, tenant.
    pub metadata: EventMetadata,
    /// The payload as JSON text.
    pub payload: String,
}

/// An event as stored: the [`NewEvent`] plus what the store assigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Position in the global log, 1-based and strictly increasing in commit order.
    pub global_position: u64,
    /// The stream the event belongs to, e.g. `order-42`.
    pub stream_id: String,
    /// Version of the stream after this event: the first event of a stream has version 1.
    pub stream_version: u64,
    /// Unique id, UUIDv7.
    pub event_id: Uuid,
    /// The event's type name.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u32,
    /// When it happened, from the source (UTC, microsecond precision).
    pub event_time: DateTime<Utc>,
    /// When the store recorded it (UTC, microsecond precision).
    pub ingest_time: DateTime<Utc>,
    /// Actor, causation, correlation, tenant.
    pub metadata: EventMetadata,
    /// The payload as JSON text.
    pub payload: String,
}

/// The part of a recorded event that folding an aggregate needs (see
/// [`crate::EventStore::read_stream_for_replay`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayEvent {
    /// Version of the stream after this event.
    pub stream_version: u64,
    /// The event's type name.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u32,
    /// When it happened, from the source (UTC).
    pub event_time: DateTime<Utc>,
    /// The payload as JSON text.
    pub payload: String,
}

impl From<RecordedEvent> for ReplayEvent {
    fn from(e: RecordedEvent) -> Self {
        Self {
            stream_version: e.stream_version,
            event_type: e.event_type,
            schema_version: e.schema_version,
            event_time: e.event_time,
            payload: e.payload,
        }
    }
}

impl RecordedEvent {
    /// The stream's category (see [`stream_category`]): `order-42` and `acme/order-42` -> `order`.
    pub fn category(&self) -> &str {
        stream_category(&self.stream_id)
    }
}

/// The category of a stream id: the part of its unscoped id (after any `{tenant}/` prefix, see
/// [`crate::tenant`]) before the first `-`, or that whole id when it has none: `order-42` and
/// `acme/order-42` are both `order`.
pub fn stream_category(stream_id: &str) -> &str {
    let id = crate::tenant::unscoped(stream_id);
    id.split_once('-').map_or(id, |(c, _)| c)
}

/// A UUIDv7 whose timestamp is `time` and whose random bits are SHA-256 of `seed`, so that the same
/// source record always yields the same event id (re-imports append nothing).
pub fn deterministic_event_id(time: DateTime<Utc>, seed: &[u8]) -> Uuid {
    let digest = Sha256::digest(seed);
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(time.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_category_ignores_the_tenant() {
        assert_eq!(stream_category("order-42"), "order");
        assert_eq!(stream_category("acme/order-42"), "order");
        assert_eq!(stream_category("acme/apikey-k-1"), "apikey");
        assert_eq!(stream_category("acme/loose"), "loose");
    }

    #[test]
    fn actor_parse_accepts_the_seed_forms_and_names_what_is_wrong() {
        for ok in ["user:789", "admin:support-001", "system:auto-complete"] {
            assert_eq!(Actor::parse(ok).unwrap().as_str(), ok);
        }
        assert!(Actor::parse("789").unwrap_err().contains("kind:id"));
        assert!(Actor::parse("robot:1").unwrap_err().contains("robot"));
        assert!(Actor::parse("user:").unwrap_err().contains("1 to 128"));
        assert!(Actor::parse("user:a b").unwrap_err().contains("may only"));
    }

    #[test]
    fn deterministic_ids_repeat_for_a_seed_and_differ_across_seeds() {
        let t = DateTime::parse_from_rfc3339("1997-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let a = deterministic_event_id(t, b"cdnow:1");
        assert_eq!(a, deterministic_event_id(t, b"cdnow:1"));
        assert_ne!(a, deterministic_event_id(t, b"cdnow:2"));
        assert_eq!(a.get_version_num(), 7);
        assert_eq!(stream_category("order-cdnow-1"), "order");
    }
}
