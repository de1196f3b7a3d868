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

#[cfg(test)]
mod tests {
    use eventfold_core::{AppendRequest, EventStore, ExpectedVersion, StoreError};

    use super::*;
    use crate::{SqliteConfig, SqliteStore};

    /// A file as the release before the stream index moved out of `events` left it (schema 7,
    /// `UNIQUE (stream_id, stream_version)` on `events`), with two interleaved streams.
    fn schema_7_file(path: &std::path::Path) {
        let conn = Connection::open(path).unwrap();
        for sql in &schema::MIGRATIONS[..7] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 7).unwrap();
        for position in 1..=9u64 {
            let (stream, version) = if position % 3 == 0 {
                ("order-b", position / 3)
            } else {
                ("order-a", position - position / 3)
            };
            conn.execute(
                "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, \
                 schema_version, event_time, ingest_time, actor, tenant_id, payload) \
                 VALUES (?1, ?2, ?3, ?4, 'Tested', 1, 0, 0, 'user:1', 'default', ?5)",
                params![
                    position,
                    uuid::Uuid::now_v7().as_bytes().as_slice(),
                    stream,
                    version,
                    format!("{{\"n\":{position}}}")
                ],
            )
            .unwrap();
        }
    }

    fn event() -> eventfold_core::NewEvent {
        let actor = eventfold_core::Actor::parse("user:1").unwrap();
        eventfold_core::testkit::event("Tested", actor, "{}")
    }

    #[tokio::test]
    async fn a_schema_7_file_keeps_its_streams_and_its_guards() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        schema_7_file(&path);
        let config = SqliteConfig {
            stream_tail_rows: 3,
            ..SqliteConfig::default()
        };
        let store = SqliteStore::open_with(&path, config).unwrap();
        assert_eq!(
            (
                store.schema_version().previous,
                store.schema_version().current
            ),
            (7, schema::MIGRATIONS.len() as u32)
        );
        let positions = |stream: &'static str| {
            let store = store.clone();
            async move {
                let events = store.read_stream(stream, 1, 100).await.unwrap();
                let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
                let positions: Vec<u64> = events.iter().map(|e| e.global_position).collect();
                assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
                positions
            }
        };
        assert_eq!(positions("order-a").await, vec![1, 2, 4, 5, 7, 8]);
        assert_eq!(positions("order-b").await, vec![3, 6, 9]);
        assert_eq!(store.stream_version("order-a").await.unwrap(), 6);
        let conflict = store
            .append(AppendRequest::new(
                "order-b",
                ExpectedVersion::Exact(2),
                vec![event()],
            ))
            .await;
        assert!(
            matches!(conflict, Err(StoreError::VersionConflict { actual: 3, .. })),
            "{conflict:?}"
        );
        for v in 3..8u64 {
            let out = store
                .append(AppendRequest::new(
                    "order-b",
                    ExpectedVersion::Exact(v),
                    vec![event()],
                ))
                .await
                .unwrap();
            assert_eq!((out.stream_version, out.last_position), (v + 1, 7 + v));
        }
        assert_eq!(
            positions("order-b").await,
            vec![3, 6, 9, 10, 11, 12, 13, 14]
        );
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let update = conn.execute("UPDATE events SET actor = 'user:2' WHERE position = 1", []);
        assert!(update.unwrap_err().to_string().contains("append-only"));
        let delete = conn.execute("DELETE FROM events WHERE position = 1", []);
        assert!(delete.unwrap_err().to_string().contains("append-only"));
        let events_sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            !events_sql.contains("stream_id, stream_version"),
            "{events_sql}"
        );
    }

    /// Stream reads go through the two keys and read each half in key order: no scan of the
    /// log and no sort, whatever the planner's statistics.
    #[test]
    fn stream_reads_use_the_keys_without_a_sort() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        for sql in [
            crate::rows::READ_STREAM_SQL,
            crate::rows::REPLAY_STREAM_SQL,
            crate::rows::READ_STREAM_CHAIN_SQL,
            crate::rows::STREAM_VERSION_SQL,
        ] {
            let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            fn detail(r: &rusqlite::Row<'_>) -> rusqlite::Result<String> {
                r.get(3)
            }
            let steps: Vec<String> = if sql.contains("?3") {
                plan.query_map(params!["order-1", 1, 10], detail)
            } else {
                plan.query_map(params!["order-1"], detail)
            }
            .unwrap()
            .map(Result::unwrap)
            .collect();
            assert!(
                steps.iter().all(|s| !s.contains("TEMP B-TREE")
                    && (!s.starts_with("SCAN") || s == "SCAN CONSTANT ROW")),
                "{sql}: {steps:?}"
            );
        }
    }
}
