//! One event as one JetStream message: its subject and its body.
//!
//! Subject: `{NAME}.e.{stream}`, where `{stream}` is the stream id with every byte outside
//! `A-Z a-z 0-9 _ -` written as `=` and two upper-case hex digits (`acme/order-42` becomes
//! `acme=2Forder-42`): NATS subjects may not hold `.`, `*`, `>` or white space, and the escape
//! keeps the mapping one-to-one.
//!
//! Body: one line of JSON (the envelope, `Head`), a newline, then the payload's bytes exactly
//! as appended (the hash chain covers them byte for byte, so they are never re-encoded). The
//! idempotency record and the fencing token of an append ride on its first event's head.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use eventfold_core::chain::{refill, refill_optional, ChainRow, Hash};
use eventfold_core::{
    Actor, EventMetadata, IdempotencyRecord, RecordedEvent, ReplayEvent, StoreError, StoredResponse,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The subject of `stream_id`'s events under `prefix` (`{NAME}.e` for a store named `NAME`).
pub fn subject(prefix: &str, stream_id: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 1 + stream_id.len() + 8);
    s.push_str(prefix);
    s.push('.');
    escape_into(stream_id, &mut s);
    s
}

/// `stream_id` with every byte outside `A-Z a-z 0-9 _ -` written as `=XX` (one-to-one).
pub(crate) fn escape(stream_id: &str) -> String {
    let mut s = String::with_capacity(stream_id.len() + 8);
    escape_into(stream_id, &mut s);
    s
}

fn escape_into(stream_id: &str, s: &mut String) {
    for b in stream_id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            s.push(char::from(b));
        } else {
            s.push('=');
            s.push_str(&format!("{b:02X}"));
        }
    }
}

/// The idempotency record carried by an append's first event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IdemHead {
    /// The key.
    pub k: String,
    /// The request's fingerprint.
    pub f: String,
    /// The response's status.
    pub st: u16,
    /// The response's body.
    pub b: String,
}

impl IdemHead {
    pub(crate) fn of(record: &IdempotencyRecord) -> Self {
        Self {
            k: record.key.clone(),
            f: record.fingerprint.clone(),
            st: record.response.status,
            b: record.response.body.clone(),
        }
    }

    pub(crate) fn record(&self) -> IdempotencyRecord {
        IdempotencyRecord {
            key: self.k.clone(),
            fingerprint: self.f.clone(),
            response: StoredResponse {
                status: self.st,
                body: self.b.clone(),
            },
        }
    }
}

/// The fencing token carried by an append's first event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FenceHead {
    /// The locked resource.
    pub r: String,
    /// The token.
    pub t: u64,
}

/// An event's envelope, the first line of its message body. Short names: it is stored with
/// every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Head {
    /// Stream id.
    pub s: String,
    /// Stream version.
    pub v: u64,
    /// Event id.
    pub id: Uuid,
    /// Event type.
    pub t: String,
    /// Schema version.
    pub sv: u32,
    /// Event time, microseconds since the Unix epoch (UTC).
    pub et: i64,
    /// Ingest time, microseconds since the Unix epoch (UTC).
    pub it: i64,
    /// Actor, `kind:id`.
    pub a: String,
    /// Causation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<Uuid>,
    /// Correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<Uuid>,
    /// Tenant id.
    pub tn: String,
    /// The principal the actor acted through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Backfilled history.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub b: bool,
    /// `prev_hash`, hex.
    pub ph: String,
    /// `hash`, hex.
    pub h: String,
    /// The append's idempotency record (first event only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idem: Option<IdemHead>,
    /// The append's fencing token (first event only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<FenceHead>,
}

/// A message read back: its sequence (the global position), head and payload; or an archived
/// event's stub from the read-model store (see `archive.rs`), with its content digest.
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    pub position: u64,
    pub head: Head,
    pub payload: Bytes,
    /// The content digest of an archived event (its payload is then empty).
    pub archived: Option<Hash>,
}

/// The body of one event's message.
pub(crate) fn encode(head: &Head, payload: &str) -> Result<Bytes, StoreError> {
    let line = serde_json::to_vec(head).map_err(|e| StoreError::Backend(Box::new(e)))?;
    let mut body = BytesMut::with_capacity(line.len() + 1 + payload.len());
    body.put_slice(&line);
    body.put_u8(b'\n');
    body.put_slice(payload.as_bytes());
    Ok(body.freeze())
}

/// Reads a message body stored at `position`.
///
/// # Errors
/// [`StoreError::Corrupt`] naming the position when the body is not a head line and a payload.
pub(crate) fn decode(position: u64, body: Bytes) -> Result<Decoded, StoreError> {
    let corrupt = |what: &str| {
        StoreError::Corrupt(format!(
            "NATS message at sequence {position} is not an eventfold event: {what}"
        ))
    };
    let newline = body
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("no envelope line"))?;
    let head: Head =
        serde_json::from_slice(&body[..newline]).map_err(|e| corrupt(&format!("envelope: {e}")))?;
    Ok(Decoded {
        position,
        head,
        payload: body.slice(newline + 1..),
        archived: None,
    })
}

/// A stored hash column (hex) as bytes; an unreadable one reads as empty, which the chain
/// verifier reports.
fn hash_bytes(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text).unwrap_or_default()
}

/// `hash` of a decoded head as a [`Hash`] (zeros when unreadable: the verifier catches it).
pub(crate) fn head_hash(head: &Head) -> Hash {
    let mut out = [0u8; 32];
    if let Ok(bytes) = hex::decode(&head.h) {
        if bytes.len() == 32 {
            out.copy_from_slice(&bytes);
        }
    }
    out
}

fn time(position: u64, us: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "NATS message at sequence {position}: time {us} is out of range"
        ))
    })
}

fn payload_text(position: u64, payload: &Bytes) -> Result<String, StoreError> {
    String::from_utf8(payload.to_vec()).map_err(|_| {
        StoreError::Corrupt(format!(
            "NATS message at sequence {position}: the payload is not UTF-8"
        ))
    })
}

impl Decoded {
    /// [`StoreError::Archived`] for an archived event's stub.
    fn hot(&self) -> Result<(), StoreError> {
        match self.archived {
            None => Ok(()),
            Some(_) => Err(StoreError::Archived {
                stream_id: self.head.s.clone(),
                version: self.head.v,
                position: self.position,
            }),
        }
    }

    /// The recorded event (its strings moved, not copied).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] naming the position; [`StoreError::Archived`] for a stub.
    pub(crate) fn recorded(self) -> Result<RecordedEvent, StoreError> {
        self.hot()?;
        let Decoded {
            position: p,
            head: h,
            payload,
            ..
        } = self;
        let actor = |s: String| {
            Actor::from_stored(s)
                .map_err(|e| StoreError::Corrupt(format!("NATS message at sequence {p}: {e}")))
        };
        Ok(RecordedEvent {
            global_position: p,
            stream_id: h.s,
            stream_version: h.v,
            event_id: h.id,
            event_type: h.t,
            schema_version: h.sv,
            event_time: time(p, h.et)?,
            ingest_time: time(p, h.it)?,
            metadata: EventMetadata {
                actor: actor(h.a)?,
                causation_id: h.c,
                correlation_id: h.r,
                tenant_id: h.tn,
                via: h.via.map(actor).transpose()?,
                backfill: h.b,
            },
            payload: payload_text(p, &payload)?,
        })
    }

    /// The fields a fold needs.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] naming the position; [`StoreError::Archived`] for a stub.
    pub(crate) fn replay(self) -> Result<ReplayEvent, StoreError> {
        self.hot()?;
        Ok(ReplayEvent {
            stream_version: self.head.v,
            event_type: self.head.t,
            schema_version: self.head.sv,
            event_time: time(self.position, self.head.et)?,
            payload: payload_text(self.position, &self.payload)?,
        })
    }

    /// Fills `row` with this event's chain row, reusing its buffers.
    pub(crate) fn chain_row_into(&self, row: &mut ChainRow) {
        let h = &self.head;
        row.position = self.position;
        refill(&mut row.stream_id, h.s.as_bytes());
        row.stream_version = h.v;
        refill(&mut row.event_id, h.id.as_bytes());
        refill(&mut row.event_type, h.t.as_bytes());
        row.schema_version = i64::from(h.sv);
        row.event_time_us = h.et;
        row.ingest_time_us = h.it;
        refill(&mut row.actor, h.a.as_bytes());
        refill_optional(
            &mut row.causation_id,
            h.c.as_ref().map(|u| u.as_bytes().as_slice()),
        );
        refill_optional(
            &mut row.correlation_id,
            h.r.as_ref().map(|u| u.as_bytes().as_slice()),
        );
        refill(&mut row.tenant_id, h.tn.as_bytes());
        refill(&mut row.payload, &self.payload);
        refill_optional(&mut row.via, h.via.as_deref().map(str::as_bytes));
        row.backfill = h.b;
        row.prev_hash = Some(hash_bytes(&h.ph));
        row.hash = Some(hash_bytes(&h.h));
        row.archived_digest = self.archived.map(|d| d.to_vec());
    }

    /// This event's chain row.
    pub(crate) fn chain_row(&self) -> ChainRow {
        let mut row = ChainRow::default();
        self.chain_row_into(&mut row);
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_escape_what_nats_cannot_hold_and_stay_one_to_one() {
        assert_eq!(subject("ef.e", "order-42"), "ef.e.order-42");
        assert_eq!(subject("ef.e", "acme/order-42"), "ef.e.acme=2Forder-42");
        assert_eq!(subject("ef.e", "a.b c*>"), "ef.e.a=2Eb=20c=2A=3E");
        assert_ne!(subject("ef.e", "a=2E"), subject("ef.e", "a."));
    }

    #[test]
    fn a_body_round_trips_with_its_payload_bytes_untouched() {
        let head = Head {
            s: "s-1".into(),
            v: 3,
            id: Uuid::now_v7(),
            t: "Tested".into(),
            sv: 1,
            et: 1,
            it: 2,
            a: "user:1".into(),
            c: None,
            r: Some(Uuid::now_v7()),
            tn: "default".into(),
            via: None,
            b: false,
            ph: hex::encode([1u8; 32]),
            h: hex::encode([2u8; 32]),
            idem: None,
            fence: Some(FenceHead {
                r: "lock:x".into(),
                t: 4,
            }),
        };
        let payload = "{\"n\":1,\n \"z\": \"\u{e9}\"}";
        let d = decode(7, encode(&head, payload).unwrap()).unwrap();
        assert_eq!(d.head, head);
        assert_eq!(d.clone().recorded().unwrap().payload, payload);
        assert_eq!(d.chain_row().position, 7);
        assert!(matches!(
            decode(9, Bytes::from_static(b"no newline")),
            Err(StoreError::Corrupt(m)) if m.contains("sequence 9")
        ));
    }
}
