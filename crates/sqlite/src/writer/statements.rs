//! The statements the writer's jobs run inside its transaction: appending a request's events
//! (with their chain links), recognising a retried append, projection commits, archiving and
//! restoring payloads.

use eventfold_core::read_model::{projection_checkpoint_name, ProjectionCommit};
use eventfold_core::{
    Actor, AppendOutcome, AppendRequest, ArchiveStub, ExpectedVersion, RestoredPayload, StoreError,
};
use rusqlite::{params, Connection, OptionalExtension};

use eventfold_core::chain::{link, Hash, Links, ZERO_HASH};

use super::Incoming;
use crate::{backend, micros, read_checkpoint};

/// Turns events into archived stubs (see [`eventfold_core::EventStore::archive_events`]).
pub(super) fn archive(conn: &Connection, stubs: &[ArchiveStub]) -> Result<u64, StoreError> {
    let mut update = conn
        .prepare_cached(
            "UPDATE events SET payload = '', archived_digest = ?1 \
             WHERE position = ?2 AND hash = ?3 AND archived_digest IS NULL",
        )
        .map_err(backend)?;
    let mut archived = 0;
    for s in stubs {
        if update
            .execute(params![s.digest.as_slice(), s.position, s.hash.as_slice()])
            .map_err(backend)?
            == 1
        {
            archived += 1;
            continue;
        }
        let stored: Option<Option<Vec<u8>>> = conn
            .prepare_cached("SELECT archived_digest FROM events WHERE position = ?1 AND hash = ?2")
            .and_then(|mut q| {
                q.query_row(params![s.position, s.hash.as_slice()], |r| r.get(0))
                    .optional()
            })
            .map_err(backend)?;
        match stored {
            Some(Some(d)) if d == s.digest => {}
            Some(_) => {
                return Err(StoreError::InvalidRequest(format!(
                    "position {}: archived before with another content digest",
                    s.position
                )))
            }
            None => return Err(StoreError::no_event_to(s.position, &s.hash, "archive")),
        }
    }
    Ok(archived)
}

/// Gives archived stubs their payloads back (see
/// [`eventfold_core::EventStore::restore_events`]).
pub(super) fn restore(conn: &Connection, payloads: &[RestoredPayload]) -> Result<u64, StoreError> {
    let mut update = conn
        .prepare_cached(
            "UPDATE events SET payload = ?1, archived_digest = NULL \
             WHERE position = ?2 AND hash = ?3 AND archived_digest IS NOT NULL",
        )
        .map_err(backend)?;
    let mut restored = 0;
    for p in payloads {
        if update
            .execute(params![p.payload, p.position, p.hash.as_slice()])
            .map_err(backend)?
            == 1
        {
            restored += 1;
            continue;
        }
        let hot: Option<u64> = conn
            .prepare_cached("SELECT position FROM events WHERE position = ?1 AND hash = ?2")
            .and_then(|mut q| {
                q.query_row(params![p.position, p.hash.as_slice()], |r| r.get(0))
                    .optional()
            })
            .map_err(backend)?;
        if hot.is_none() {
            return Err(StoreError::no_event_to(p.position, &p.hash, "restore"));
        }
    }
    Ok(restored)
}

pub(super) fn stored_id_at(
    conn: &Connection,
    stream_id: &str,
    version: u64,
) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
    conn.prepare_cached(
        "SELECT e.event_id, e.position FROM events e WHERE e.position = coalesce(\
         (SELECT position FROM stream_tail WHERE stream_id = ?1 AND stream_version = ?2), \
         (SELECT position FROM stream_index WHERE stream_id = ?1 AND stream_version = ?2))",
    )
    .and_then(|mut s| {
        s.query_row(params![stream_id, version], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
    })
    .map_err(backend)
}

/// When the first event id is already stored: the same append retried (`Ok`), or a reuse (`Err`).
pub(super) fn duplicate_outcome(
    conn: &Connection,
    request: &AppendRequest,
    stored_stream: String,
    first_version: u64,
    first_position: u64,
) -> Result<AppendOutcome, StoreError> {
    let reused = || StoreError::EventIdReused {
        event_id: request.events[0].event_id,
        stream_id: stored_stream.clone(),
    };
    let expected_ok = match request.expected {
        ExpectedVersion::Any => true,
        other => other.matches(first_version - 1),
    };
    if stored_stream != request.stream_id || !expected_ok {
        return Err(reused());
    }
    let mut last_position = first_position;
    for (i, event) in request.events.iter().enumerate() {
        match stored_id_at(conn, &request.stream_id, first_version + i as u64)? {
            Some((id, position)) if id == event.event_id.as_bytes() => last_position = position,
            _ => return Err(reused()),
        }
    }
    Ok(AppendOutcome {
        stream_version: first_version + request.events.len() as u64 - 1,
        first_position,
        last_position,
        duplicate: true,
    })
}

pub(super) fn first_event_location(
    conn: &Connection,
    request: &AppendRequest,
) -> Result<Option<(String, u64, u64)>, StoreError> {
    conn.prepare_cached(
        "SELECT stream_id, stream_version, position FROM events WHERE event_id = ?1",
    )
    .and_then(|mut s| {
        s.query_row([request.events[0].event_id.as_bytes().as_slice()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()
    })
    .map_err(backend)
}

/// Records the fencing token (if any), inserts the idempotency record (if any) and the events
/// after the log's head `(position, hash)` and the stream's `(version, last hash)`, chained to
/// both when `chain` is on. Returns the outcome and the last event's hash, the new head of
/// both the log and the stream.
pub(super) fn write_events(
    conn: &Connection,
    incoming: &Incoming,
    ((head, head_hash), (current, stream_hash)): ((u64, Hash), (u64, Hash)),
    chain: bool,
) -> Result<(AppendOutcome, Hash), StoreError> {
    let request = &incoming.request;
    if let Some(fence) = &request.fence {
        let token = i64::try_from(fence.token)
            .map_err(|_| StoreError::InvalidRequest("fence.token is above 2^63 - 1".into()))?;
        let accepted = conn
            .prepare_cached(
                "INSERT INTO fences (resource, token) VALUES (?1, ?2) ON CONFLICT (resource) \
                 DO UPDATE SET token = excluded.token WHERE excluded.token >= fences.token",
            )
            .and_then(|mut s| s.execute(params![fence.resource, token]))
            .map_err(backend)?;
        if accepted == 0 {
            let current: i64 = conn
                .prepare_cached("SELECT token FROM fences WHERE resource = ?1")
                .and_then(|mut s| s.query_row([&fence.resource], |r| r.get(0)))
                .map_err(backend)?;
            return Err(StoreError::Fenced {
                resource: fence.resource.clone(),
                presented: fence.token,
                current: current as u64,
            });
        }
    }
    if let Some(idem) = &request.idempotency {
        let inserted = conn
            .prepare_cached(
                "INSERT INTO idempotency_keys (key, fingerprint, status, body, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (key) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    idem.key,
                    idem.fingerprint,
                    idem.response.status,
                    idem.response.body,
                    incoming.ingest_us
                ])
            })
            .map_err(backend)?;
        if inserted == 0 {
            return Err(StoreError::IdempotencyKeyUsed {
                key: idem.key.clone(),
            });
        }
    }
    // One request is one stream: each event links to the one before, in the log and the stream.
    let (mut prev, mut stream_prev) = (head_hash, stream_hash);
    let ingest_us = incoming.ingest_us;
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, \
             schema_version, event_time, ingest_time, actor, causation_id, correlation_id, \
             tenant_id, payload, prev_hash, hash, via, backfill) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        )
        .map_err(backend)?;
    let mut tail = conn
        .prepare_cached(
            "INSERT INTO stream_tail (stream_id, stream_version, position) VALUES (?1, ?2, ?3)",
        )
        .map_err(backend)?;
    let mut last_hash = stream_hash;
    for (i, e) in request.events.iter().enumerate() {
        let m = &e.metadata;
        let position = head + 1 + i as u64;
        let version = current + 1 + i as u64;
        let links = chain.then(|| {
            let hash = link(&prev, &stream_prev, position, &incoming.digest(i, current));
            let links = Links {
                prev_hash: prev,
                hash,
            };
            (prev, stream_prev) = (hash, hash);
            links
        });
        let result = insert.execute(params![
            position,
            e.event_id.as_bytes().as_slice(),
            request.stream_id,
            version,
            e.event_type,
            e.schema_version,
            micros(e.event_time),
            ingest_us,
            m.actor.as_str(),
            m.causation_id.as_ref().map(|u| u.as_bytes().as_slice()),
            m.correlation_id.as_ref().map(|u| u.as_bytes().as_slice()),
            m.tenant_id,
            e.payload,
            links.as_ref().map(|l| l.prev_hash.as_slice()),
            links.as_ref().map(|l| l.hash.as_slice()),
            m.via.as_ref().map(Actor::as_str),
            m.backfill.then_some(1),
        ]);
        if let Err(err) = result {
            if err.to_string().contains("events.event_id") {
                let stream_id: String = conn
                    .query_row(
                        "SELECT stream_id FROM events WHERE event_id = ?1",
                        [e.event_id.as_bytes().as_slice()],
                        |r| r.get(0),
                    )
                    .unwrap_or_default();
                return Err(StoreError::EventIdReused {
                    event_id: e.event_id,
                    stream_id,
                });
            }
            return Err(backend(err));
        }
        tail.execute(params![request.stream_id, version, position])
            .map_err(backend)?;
        last_hash = links.map_or(ZERO_HASH, |l| l.hash);
    }
    let outcome = AppendOutcome {
        stream_version: current + request.events.len() as u64,
        first_position: head + 1,
        last_position: head + request.events.len() as u64,
        duplicate: false,
    };
    Ok((outcome, last_hash))
}

pub(super) fn commit_projections(
    conn: &Connection,
    commits: Vec<ProjectionCommit>,
) -> Result<(), StoreError> {
    let mut put = conn
        .prepare_cached(
            "INSERT INTO read_models (projection, key, doc) VALUES (?1, ?2, ?3) \
             ON CONFLICT (projection, key) DO UPDATE SET doc = excluded.doc",
        )
        .map_err(backend)?;
    let mut delete = conn
        .prepare_cached("DELETE FROM read_models WHERE projection = ?1 AND key = ?2")
        .map_err(backend)?;
    let mut save = conn
        .prepare_cached(
            "INSERT INTO checkpoints (name, position) VALUES (?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        )
        .map_err(backend)?;
    for commit in commits {
        let name = projection_checkpoint_name(&commit.projection);
        commit.expect_from(read_checkpoint(conn, &name)?.unwrap_or(0))?;
        for w in &commit.writes {
            match &w.doc {
                Some(doc) => put.execute(params![commit.projection, w.key, doc]),
                None => delete.execute(params![commit.projection, w.key]),
            }
            .map_err(backend)?;
        }
        save.execute(params![name, commit.to_checkpoint])
            .map_err(backend)?;
    }
    Ok(())
}
