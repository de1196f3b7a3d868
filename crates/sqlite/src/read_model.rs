//! The read-model store: projections' documents and checkpoints in the same file as the events.

use async_trait::async_trait;
use eventfold_core::read_model::{projection_checkpoint_name, ProjectionCommit};
use eventfold_core::{ProjectionMaintenance, ReadModelStore, StoreError, RETIRED_CHECKPOINT};
use eventfold_store_support::sql_limit as limit;
use rusqlite::{params, Connection, OptionalExtension};

use crate::{backend, Job, SqliteStore, INLINE_ROWS};

pub(crate) fn read_checkpoint(conn: &Connection, name: &str) -> Result<Option<u64>, StoreError> {
    conn.prepare_cached("SELECT position FROM checkpoints WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
        .map_err(backend)
}

/// Most keys [`ReadModelStore::get_docs`] looks up on the calling thread (one indexed lookup
/// each); more go to the blocking pool.
pub(crate) const INLINE_KEYS: usize = 16;

pub(crate) fn docs_by_key(
    conn: &Connection,
    projection: &str,
    keys: impl IntoIterator<Item = String>,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT doc FROM read_models WHERE projection = ?1 AND key = ?2")
        .map_err(backend)?;
    let mut out = Vec::new();
    for key in keys {
        let doc: Option<String> = stmt
            .query_row(params![projection, key], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        if let Some(doc) = doc {
            out.push((key, doc));
        }
    }
    Ok(out)
}

/// At most `max_count` documents of `projection` with keys in `from..=to`, in key order.
fn docs_in_range(
    conn: &Connection,
    projection: &str,
    (from, to): (&str, &str),
    max_count: usize,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT key, doc FROM read_models WHERE projection = ?1 AND key >= ?2 AND key <= ?3 \
             ORDER BY key LIMIT ?4",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![projection, from, to, limit(max_count)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(backend)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(backend)
}

#[async_trait]
impl ReadModelStore for SqliteStore {
    async fn get_docs(
        &self,
        projection: &str,
        keys: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        if keys.len() <= INLINE_KEYS {
            return self
                .read_now(|conn| docs_by_key(conn, projection, keys.iter().cloned()))
                .await;
        }
        let projection = projection.to_owned();
        let keys = keys.to_vec();
        self.read(move |conn| docs_by_key(conn, &projection, keys))
            .await
    }

    async fn range_docs(
        &self,
        projection: &str,
        from_key: &str,
        to_key: &str,
        max_count: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        // A range is read on the calling thread when it holds at most INLINE_ROWS documents (a
        // look one row further tells) or the limit stops it there; a longer one is read again,
        // whole, in the blocking pool.
        let first = self
            .read_now(|conn| {
                docs_in_range(
                    conn,
                    projection,
                    (from_key, to_key),
                    max_count.min(INLINE_ROWS + 1),
                )
            })
            .await?;
        if first.len() <= INLINE_ROWS || max_count <= INLINE_ROWS + 1 {
            return Ok(first);
        }
        let (projection, from_key, to_key) = (
            projection.to_owned(),
            from_key.to_owned(),
            to_key.to_owned(),
        );
        self.read(move |conn| docs_in_range(conn, &projection, (&from_key, &to_key), max_count))
            .await
    }

    async fn commit_projections(&self, commits: Vec<ProjectionCommit>) -> Result<(), StoreError> {
        self.write(|reply| Job::CommitProjections(commits, reply))
            .await
    }

    async fn maintain_projection(&self, change: ProjectionMaintenance) -> Result<(), StoreError> {
        self.write(|reply| Job::MaintainProjection(change, reply))
            .await
    }
}

/// [`ReadModelStore::maintain_projection`] inside the writer's transaction.
pub(crate) fn maintain_projection(
    conn: &Connection,
    change: &ProjectionMaintenance,
) -> Result<(), StoreError> {
    let delete_docs = |p: &str| conn.execute("DELETE FROM read_models WHERE projection = ?1", [p]);
    let put_checkpoint = |p: &str, position: i64| {
        conn.execute(
            "INSERT INTO checkpoints (name, position) VALUES (?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            params![projection_checkpoint_name(p), position],
        )
    };
    let delete_checkpoint = |p: &str| {
        conn.execute(
            "DELETE FROM checkpoints WHERE name = ?1",
            [projection_checkpoint_name(p)],
        )
    };
    match change {
        ProjectionMaintenance::Reset(p) => delete_docs(p).and_then(|_| delete_checkpoint(p)),
        ProjectionMaintenance::Retire(p) => {
            put_checkpoint(p, RETIRED_CHECKPOINT as i64).and_then(|_| delete_docs(p))
        }
        ProjectionMaintenance::Replace { target, source } => {
            let position = read_checkpoint(conn, &projection_checkpoint_name(source))?;
            delete_docs(target)
                .and_then(|_| {
                    conn.execute(
                        "UPDATE read_models SET projection = ?1 WHERE projection = ?2",
                        [target, source],
                    )
                })
                .and_then(|_| delete_checkpoint(source))
                .and_then(|_| match position {
                    Some(p) => put_checkpoint(target, p as i64),
                    None => delete_checkpoint(target),
                })
        }
    }
    .map(|_| ())
    .map_err(backend)
}
