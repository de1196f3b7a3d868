//! Reading rows: the SELECTs of events and chain rows, and their decoding into
//! [`eventfold_core::RecordedEvent`] and [`eventfold_core::chain::ChainRow`].

use eventfold_core::chain::{refill, refill_optional, ChainRow};
use eventfold_core::{Actor, EventMetadata, RecordedEvent, StoreError};
use rusqlite::{Connection, Row};
use uuid::Uuid;

use crate::{backend, from_micros};

/// A stream's version: its highest event version, in `stream_index` or, when the stream was
/// appended to since the writer last filled the index, in `stream_tail` (0 when the stream does
/// not exist). Two probes of a primary key.
pub(crate) const STREAM_VERSION_SQL: &str =
    "SELECT max(coalesce((SELECT max(stream_version) FROM stream_tail WHERE stream_id = ?1), 0), \
     coalesce((SELECT max(stream_version) FROM stream_index WHERE stream_id = ?1), 0))";

/// `$select` (columns of `events e`, the stream version at 1-based place `$version`, read as
/// `i.stream_version`) over the events of stream ?1 from version ?2 on, at most ?3, in version
/// order: those in `stream_index`, then those in `stream_tail` (every tail version is above
/// every indexed one of the same stream). SQLite merges the two halves, each read in key order
/// (no sort: hence `i.stream_version`, the key's column, not the equal `e.stream_version`), and
/// stops at the limit.
macro_rules! stream_events {
    ($select:expr, $version:literal) => {
        concat!(
            $select,
            " FROM stream_index i JOIN events e ON e.position = i.position \
             WHERE i.stream_id = ?1 AND i.stream_version >= ?2 UNION ALL ",
            $select,
            " FROM stream_tail i JOIN events e ON e.position = i.position \
             WHERE i.stream_id = ?1 AND i.stream_version >= ?2 ORDER BY ",
            $version,
            " LIMIT ?3"
        )
    };
}

/// The columns [`row_to_event`] reads, in its order (table alias `e`; the stream version from
/// table `$v`).
macro_rules! select_events {
    ($v:literal) => {
        concat!(
            "SELECT e.position, e.stream_id, ",
            $v,
            ".stream_version, e.event_id, e.event_type, \
         e.schema_version, e.event_time, e.ingest_time, e.actor, e.causation_id, \
         e.correlation_id, e.tenant_id, e.payload, e.archived_digest IS NOT NULL, e.via, \
         e.backfill IS NOT NULL"
        )
    };
}

pub(crate) const READ_STREAM_SQL: &str = stream_events!(select_events!("i"), "3");
pub(crate) const REPLAY_STREAM_SQL: &str = stream_events!(
    "SELECT i.stream_version, e.event_type, e.schema_version, e.event_time, e.payload, \
     e.archived_digest IS NOT NULL, e.position",
    "1"
);
pub(crate) const READ_ALL_SQL: &str = concat!(
    select_events!("e"),
    " FROM events e WHERE e.position > ?1 AND e.archived_digest IS NULL ORDER BY e.position LIMIT ?2"
);

/// The columns [`row_into_chain`] reads, in its order (table alias `e`; the stream version from
/// table `$v`).
macro_rules! select_chain {
    ($v:literal) => {
        concat!("SELECT e.position, e.stream_id, ", $v, ".stream_version, e.event_id, e.event_type, \
         e.schema_version, e.event_time, e.ingest_time, e.actor, e.causation_id, \
         e.correlation_id, e.tenant_id, e.payload, e.prev_hash, e.hash, e.archived_digest, e.via, \
         e.backfill IS NOT NULL")
    };
}

pub(crate) const READ_CHAIN_SQL: &str = concat!(
    select_chain!("e"),
    " FROM events e WHERE e.position > ?1 ORDER BY e.position LIMIT ?2"
);
pub(crate) const READ_STREAM_CHAIN_SQL: &str = stream_events!(select_chain!("i"), "3");

/// A text or blob column's bytes as stored (`None` for NULL), borrowed from the statement.
pub(crate) fn raw_col<'r>(
    row: &'r Row<'_>,
    idx: usize,
    position: u64,
) -> Result<Option<&'r [u8]>, StoreError> {
    use rusqlite::types::ValueRef;
    match row.get_ref(idx).map_err(backend)? {
        ValueRef::Null => Ok(None),
        ValueRef::Text(b) | ValueRef::Blob(b) => Ok(Some(b)),
        _ => Err(StoreError::Corrupt(format!(
            "position {position}: column {idx} is a number, expected text or bytes"
        ))),
    }
}

/// Reads a chain row into `out`, reusing its buffers.
pub(crate) fn row_into_chain(row: &Row<'_>, out: &mut ChainRow) -> Result<(), StoreError> {
    let position: u64 = row.get(0).map_err(backend)?;
    let bytes = |idx, field: &mut Vec<u8>| {
        let b = raw_col(row, idx, position)?.ok_or_else(|| {
            StoreError::Corrupt(format!("position {position}: column {idx} is null"))
        })?;
        refill(field, b);
        Ok::<_, StoreError>(())
    };
    let optional = |idx, field: &mut Option<Vec<u8>>| {
        refill_optional(field, raw_col(row, idx, position)?);
        Ok::<_, StoreError>(())
    };
    out.position = position;
    bytes(1, &mut out.stream_id)?;
    out.stream_version = row.get(2).map_err(backend)?;
    bytes(3, &mut out.event_id)?;
    bytes(4, &mut out.event_type)?;
    out.schema_version = row.get(5).map_err(backend)?;
    out.event_time_us = row.get(6).map_err(backend)?;
    out.ingest_time_us = row.get(7).map_err(backend)?;
    bytes(8, &mut out.actor)?;
    optional(9, &mut out.causation_id)?;
    optional(10, &mut out.correlation_id)?;
    bytes(11, &mut out.tenant_id)?;
    bytes(12, &mut out.payload)?;
    optional(13, &mut out.prev_hash)?;
    optional(14, &mut out.hash)?;
    optional(15, &mut out.archived_digest)?;
    optional(16, &mut out.via)?;
    out.backfill = row.get(17).map_err(backend)?;
    Ok(())
}

/// Runs a chain query into `out`: the rows already there are refilled in place (their buffers
/// reused) and the vector is truncated to the rows read.
pub(crate) fn query_chain_into(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    out: &mut Vec<ChainRow>,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let mut rows = stmt.query(params).map_err(backend)?;
    let mut filled = 0;
    while let Some(row) = rows.next().map_err(backend)? {
        if filled == out.len() {
            out.push(ChainRow::default());
        }
        row_into_chain(row, &mut out[filled])?;
        filled += 1;
    }
    out.truncate(filled);
    Ok(())
}

pub(crate) fn query_chain(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    capacity: usize,
) -> Result<Vec<ChainRow>, StoreError> {
    let mut out = Vec::with_capacity(capacity.min(1 << 16));
    query_chain_into(conn, sql, params, &mut out)?;
    Ok(out)
}

pub(crate) fn uuid_col(
    row: &Row<'_>,
    idx: usize,
    position: u64,
) -> Result<Option<Uuid>, StoreError> {
    let value = row.get_ref(idx).map_err(backend)?;
    match value {
        rusqlite::types::ValueRef::Null => Ok(None),
        rusqlite::types::ValueRef::Blob(b) => Uuid::from_slice(b).map(Some).map_err(|e| {
            StoreError::Corrupt(format!("position {position}: uuid column {idx}: {e}"))
        }),
        _ => Err(StoreError::Corrupt(format!(
            "position {position}: uuid column {idx} is not a blob"
        ))),
    }
}

pub(crate) fn row_to_event(row: &Row<'_>) -> Result<RecordedEvent, StoreError> {
    let position: u64 = row.get(0).map_err(backend)?;
    if row.get(13).map_err(backend)? {
        return Err(StoreError::Archived {
            stream_id: row.get(1).map_err(backend)?,
            version: row.get(2).map_err(backend)?,
            position,
        });
    }
    let actor: String = row.get(8).map_err(backend)?;
    let via: Option<String> = row.get(14).map_err(backend)?;
    Ok(RecordedEvent {
        global_position: position,
        stream_id: row.get(1).map_err(backend)?,
        stream_version: row.get(2).map_err(backend)?,
        event_id: uuid_col(row, 3, position)?
            .ok_or_else(|| StoreError::Corrupt(format!("position {position}: event id is null")))?,
        event_type: row.get(4).map_err(backend)?,
        schema_version: row.get(5).map_err(backend)?,
        event_time: from_micros(
            row.get(6).map_err(backend)?,
            "event_time",
            format_args!("position {position}"),
        )?,
        ingest_time: from_micros(
            row.get(7).map_err(backend)?,
            "ingest_time",
            format_args!("position {position}"),
        )?,
        metadata: EventMetadata {
            // Validated when appended; a malformed stored actor is still caught.
            actor: Actor::from_stored(actor)
                .map_err(|e| StoreError::Corrupt(format!("position {position}: {e}")))?,
            causation_id: uuid_col(row, 9, position)?,
            correlation_id: uuid_col(row, 10, position)?,
            tenant_id: row.get(11).map_err(backend)?,
            via: via
                .map(Actor::from_stored)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("position {position}: via {e}")))?,
            backfill: row.get(15).map_err(backend)?,
        },
        payload: row.get(12).map_err(backend)?,
    })
}

pub(crate) fn query_events(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    capacity: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let mut rows = stmt.query(params).map_err(backend)?;
    let mut out = Vec::with_capacity(capacity);
    while let Some(row) = rows.next().map_err(backend)? {
        out.push(row_to_event(row)?);
    }
    Ok(out)
}

/// How many events a stream read returns at most, to size the result once: the stream's version
/// bounds it.
pub(crate) fn stream_capacity(
    conn: &Connection,
    stream_id: &str,
    from_version: u64,
    max_count: usize,
) -> Result<usize, StoreError> {
    let version: u64 = conn
        .prepare_cached(STREAM_VERSION_SQL)
        .and_then(|mut s| s.query_row([stream_id], |r| r.get(0)))
        .map_err(backend)?;
    let expected = (version + 1).saturating_sub(from_version.max(1));
    Ok(usize::try_from(expected)
        .unwrap_or(0)
        .min(max_count)
        .min(1 << 20))
}
