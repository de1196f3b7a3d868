//! The read-model store: projections' documents and checkpoints in the same database as the events.

use async_trait::async_trait;
use eventfold_core::read_model::projection_checkpoint_name;
use eventfold_core::{
    ProjectionCommit, ProjectionMaintenance, ReadModelStore, StoreError, RETIRED_CHECKPOINT,
};
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::{backend, limit, version, PostgresStore};

#[async_trait]
impl ReadModelStore for PostgresStore {
    async fn get_docs(
        &self,
        projection: &str,
        keys: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        // Planned for each call (an unnamed statement): a plan cached while the table was small
        // (a first import fills it from empty, before any ANALYZE) scans the whole table for
        // every key, which took a projection batch over a second at 140,000 documents.
        let rows =
            sqlx::query("SELECT key, doc FROM read_models WHERE projection = $1 AND key = ANY($2)")
                .bind(projection)
                .bind(keys)
                .persistent(false)
                .fetch_all(self.read_conn().await?.conn())
                .await
                .map_err(backend)?;
        key_docs(&rows)
    }

    async fn range_docs(
        &self,
        projection: &str,
        from_key: &str,
        to_key: &str,
        max_count: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT key, doc FROM read_models WHERE projection = $1 \
             AND key COLLATE \"C\" >= $2 AND key COLLATE \"C\" <= $3 \
             ORDER BY key COLLATE \"C\" LIMIT $4",
        )
        .bind(projection)
        .bind(from_key)
        .bind(to_key)
        .bind(limit(max_count))
        .fetch_all(self.read_conn().await?.conn())
        .await
        .map_err(backend)?;
        key_docs(&rows)
    }

    /// One transaction with the documents and the checkpoints, committed asynchronously
    /// (`synchronous_commit = off`): a read model is derived from the log, and its checkpoint
    /// commits with its documents, so a PostgreSQL crash can lose only the last commits (at most
    /// about 3 x `wal_writer_delay`, 600 ms by default) whole, and the runner applies those
    /// events again from the checkpoint that survived. The commit then waits for no WAL flush of
    /// its own: with one writer, a flush per projection batch beside each append's halved the
    /// appends. Appends, idempotency keys, inboxes and the relay's offsets commit synchronously.
    async fn commit_projections(&self, commits: Vec<ProjectionCommit>) -> Result<(), StoreError> {
        let mut tx = self
            .inner
            .pool
            .begin_with("BEGIN; SET LOCAL synchronous_commit TO OFF")
            .await
            .map_err(backend)?;
        for commit in commits {
            let name = projection_checkpoint_name(&commit.projection);
            let actual: Option<i64> =
                sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1 FOR UPDATE")
                    .bind(&name)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
            commit.expect_from(actual.unwrap_or(0) as u64)?;
            let (puts, deletes): (Vec<_>, Vec<_>) =
                commit.writes.into_iter().partition(|w| w.doc.is_some());
            if !puts.is_empty() {
                let (keys, docs): (Vec<String>, Vec<String>) = puts
                    .into_iter()
                    .map(|w| (w.key, w.doc.unwrap_or_default()))
                    .unzip();
                sqlx::query(
                    "INSERT INTO read_models (projection, key, doc) SELECT $1, k, d FROM UNNEST($2::text[], $3::text[]) AS t(k, d) \
                     ON CONFLICT (projection, key) DO UPDATE SET doc = excluded.doc",
                )
                .bind(&commit.projection)
                .bind(keys)
                .bind(docs)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            }
            if !deletes.is_empty() {
                let keys: Vec<String> = deletes.into_iter().map(|w| w.key).collect();
                sqlx::query("DELETE FROM read_models WHERE projection = $1 AND key = ANY($2)")
                    .bind(&commit.projection)
                    .bind(keys)
                    .persistent(false)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
            }
            // A first commit of two racing runners: the insert conflicts and one of them fails.
            let moved = sqlx::query(
                "INSERT INTO checkpoints (name, position) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position WHERE checkpoints.position = $3",
            )
            .bind(&name)
            .bind(version(commit.to_checkpoint))
            .bind(version(commit.from_checkpoint))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            if moved.rows_affected() != 1 {
                let actual: i64 =
                    sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
                        .bind(&name)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(backend)?;
                return Err(StoreError::checkpoint_moved(
                    &commit.projection,
                    commit.from_checkpoint,
                    actual as u64,
                ));
            }
        }
        tx.commit().await.map_err(backend)
    }

    async fn maintain_projection(&self, change: ProjectionMaintenance) -> Result<(), StoreError> {
        let mut tx = self.inner.pool.begin().await.map_err(backend)?;
        let delete_docs = "DELETE FROM read_models WHERE projection = $1";
        let put_checkpoint = "INSERT INTO checkpoints (name, position) VALUES ($1, $2) \
                              ON CONFLICT (name) DO UPDATE SET position = excluded.position";
        let delete_checkpoint = "DELETE FROM checkpoints WHERE name = $1";
        match change {
            ProjectionMaintenance::Reset(p) => {
                run(&mut tx, delete_docs, &p).await?;
                run(&mut tx, delete_checkpoint, &projection_checkpoint_name(&p)).await?;
            }
            ProjectionMaintenance::Retire(p) => {
                // The checkpoint first: a runner's commit in between is refused by it.
                sqlx::query(put_checkpoint)
                    .bind(projection_checkpoint_name(&p))
                    .bind(version(RETIRED_CHECKPOINT))
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                run(&mut tx, delete_docs, &p).await?;
            }
            ProjectionMaintenance::Replace { target, source } => {
                let (to, from) = (
                    projection_checkpoint_name(&target),
                    projection_checkpoint_name(&source),
                );
                // Both checkpoints locked before the documents move: a runner of either waits.
                let position: Option<i64> = sqlx::query_scalar(
                    "SELECT max(position) FILTER (WHERE name = $2) FROM \
                     (SELECT name, position FROM checkpoints WHERE name IN ($1, $2) FOR UPDATE) c",
                )
                .bind(&to)
                .bind(&from)
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
                run(&mut tx, delete_docs, &target).await?;
                sqlx::query("UPDATE read_models SET projection = $1 WHERE projection = $2")
                    .bind(&target)
                    .bind(&source)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                run(&mut tx, delete_checkpoint, &from).await?;
                match position {
                    Some(p) => {
                        sqlx::query(put_checkpoint)
                            .bind(&to)
                            .bind(p)
                            .execute(&mut *tx)
                            .await
                            .map_err(backend)?;
                    }
                    None => run(&mut tx, delete_checkpoint, &to).await?,
                }
            }
        }
        tx.commit().await.map_err(backend)
    }
}

/// Runs `sql` with its one text parameter.
async fn run(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    sql: &str,
    arg: &str,
) -> Result<(), StoreError> {
    sqlx::query(sql)
        .bind(arg)
        .execute(&mut **tx)
        .await
        .map(|_| ())
        .map_err(backend)
}

/// `(key, doc)` pairs of rows whose first two columns are the key and the document.
fn key_docs(rows: &[PgRow]) -> Result<Vec<(String, String)>, StoreError> {
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0).map_err(backend)?,
                r.try_get(1).map_err(backend)?,
            ))
        })
        .collect()
}
