//! Opening a file's schema: the migrations of [`crate::schema`] applied in order, `PRAGMA
//! user_version` recording the last; rows stored before the hash chain existed are chained by
//! the migration that adds it.

use eventfold_core::chain::{Chainer, ZERO_HASH};
use eventfold_core::{SchemaVersion, StoreError};
use rusqlite::{params, Connection};

use crate::{backend, query_chain_into, schema};

pub(crate) fn migrate(conn: &Connection) -> Result<SchemaVersion, StoreError> {
    let current: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)?;
    if current > schema::MIGRATIONS.len() {
        return Err(StoreError::InvalidRequest(format!(
            "sqlite file has schema version {current}, newer than this eventfold knows ({}); upgrade eventfold",
            schema::MIGRATIONS.len()
        )));
    }
    for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(current) {
        conn.execute_batch("BEGIN IMMEDIATE").map_err(backend)?;
        let applied = conn
            .execute_batch(&format!("{sql}; PRAGMA user_version = {};", i + 1))
            .map_err(backend)
            .and_then(|()| {
                if i + 1 == schema::CHAIN_MIGRATION {
                    backfill_chain(conn)
                } else {
                    Ok(())
                }
            })
            .and_then(|()| conn.execute_batch("COMMIT").map_err(backend));
        if let Err(e) = applied {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    Ok(SchemaVersion {
        previous: current as u32,
        current: schema::MIGRATIONS.len() as u32,
    })
}

/// Chains the rows stored before the hash chain existed, in position order, as an appender
/// would have (run inside the migration's transaction; the update trigger is dropped for it and
/// created again).
pub(crate) fn backfill_chain(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("DROP TRIGGER IF EXISTS events_are_append_only_update")
        .map_err(backend)?;
    let mut chainer = Chainer::new(ZERO_HASH);
    let mut after = 0u64;
    let mut rows = Vec::new();
    loop {
        query_chain_into(conn, BACKFILL_CHAIN_SQL, params![after, 10_000], &mut rows)?;
        let Some(last) = rows.last() else { break };
        after = last.position;
        let mut update = conn
            .prepare_cached("UPDATE events SET prev_hash = ?1, hash = ?2 WHERE position = ?3")
            .map_err(backend)?;
        for r in &rows {
            let l = chainer.next(r.position, &r.stream(), &r.content().digest());
            update
                .execute(params![
                    l.prev_hash.as_slice(),
                    l.hash.as_slice(),
                    r.position
                ])
                .map_err(backend)?;
        }
    }
    conn.execute_batch(
        "CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events \
         BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;",
    )
    .map_err(backend)
}

/// [`READ_CHAIN_SQL`] for migration 3's backfill, which runs before the archive's, `via`'s and `backfill`'s
/// columns exist.
pub(crate) const BACKFILL_CHAIN_SQL: &str =
    "SELECT position, stream_id, stream_version, event_id, event_type, schema_version, \
     event_time, ingest_time, actor, causation_id, correlation_id, tenant_id, payload, \
     prev_hash, hash, NULL, NULL, 0 FROM events WHERE position > ?1 ORDER BY position LIMIT ?2";
