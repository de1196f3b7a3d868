//! The read-model store: projections' documents and checkpoints in the same file as the events.

use async_trait::async_trait;
use eventfold_core::read_model::ProjectionCommit;
use eventfold_core::{ReadModelStore, StoreError};
use eventfold_store_support::sql_limit as limit;
use rusqlite::{params, Connection, OptionalExtension};

use crate::{backend, Job, SqliteStore};

pub(crate) fn read_checkpoint(conn: &Connection, name: &str) -> Result<Option<u64>, StoreError> {
    conn.prepare_cached("SELECT position FROM checkpoints WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
        .map_err(backend)
}

#[async_trait]
impl ReadModelStore for SqliteStore {
    async fn get_docs(
        &self,
        projection: &str,
        keys: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let projection = projection.to_owned();
        let keys = keys.to_vec();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT doc FROM read_models WHERE projection = ?1 AND key = ?2")
                .map_err(backend)?;
            let mut out = Vec::with_capacity(keys.len());
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
        })
        .await
    }

    async fn range_docs(
        &self,
        projection: &str,
        from_key: &str,
        to_key: &str,
        max_count: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let (projection, from_key, to_key) = (
            projection.to_owned(),
            from_key.to_owned(),
            to_key.to_owned(),
        );
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key, doc FROM read_models WHERE projection = ?1 AND key >= ?2 AND key <= ?3 \
                     ORDER BY key LIMIT ?4",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![projection, from_key, to_key, limit(max_count)], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn commit_projections(&self, commits: Vec<ProjectionCommit>) -> Result<(), StoreError> {
        self.write(|reply| Job::CommitProjections(commits, reply))
            .await
    }

    async fn reset_projection(&self, projection: &str) -> Result<(), StoreError> {
        let projection = projection.to_owned();
        self.write(|reply| Job::ResetProjection(projection, reply))
            .await
    }
}
