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
        let names: std::collections::HashSet<&str> =
            commits.iter().map(|c| c.projection.as_str()).collect();
        if names.len() == commits.len() {
            apply_commits(&mut tx, &commits).await?;
        } else {
            // One projection twice: each commit starts where the one before it ended.
            for commit in &commits {
                apply_commits(&mut tx, std::slice::from_ref(commit)).await?;
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

/// Applies `commits` (each of a different projection) in `tx` with four statements whatever
/// their number: lock and check the checkpoints, write the documents, delete the removed ones,
/// move the checkpoints. The live runner commits about ten projections per batch, and a few
/// statements per projection were most of its commit time.
async fn apply_commits(
    tx: &mut sqlx::PgConnection,
    commits: &[ProjectionCommit],
) -> Result<(), StoreError> {
    let names: Vec<String> = commits
        .iter()
        .map(|c| projection_checkpoint_name(&c.projection))
        .collect();
    // Locked in name order, so two runners committing the same projections cannot deadlock.
    let rows = sqlx::query(
        "SELECT name, position FROM checkpoints WHERE name = ANY($1) ORDER BY name FOR UPDATE",
    )
    .bind(&names)
    .fetch_all(&mut *tx)
    .await
    .map_err(backend)?;
    let mut actual = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let name: String = row.try_get(0).map_err(backend)?;
        actual.insert(name, row.try_get::<i64, _>(1).map_err(backend)? as u64);
    }
    for (commit, name) in commits.iter().zip(&names) {
        commit.expect_from(actual.get(name).copied().unwrap_or(0))?;
    }
    let (mut put, mut delete) = (Columns::default(), Columns::default());
    for commit in commits {
        for w in &commit.writes {
            let to = if w.doc.is_some() {
                &mut put
            } else {
                &mut delete
            };
            to.projections.push(commit.projection.clone());
            to.keys.push(w.key.clone());
            to.docs.push(w.doc.clone().unwrap_or_default());
        }
    }
    if !put.keys.is_empty() {
        sqlx::query(
            "INSERT INTO read_models (projection, key, doc) \
             SELECT p, k, d FROM UNNEST($1::text[], $2::text[], $3::text[]) AS t(p, k, d) \
             ON CONFLICT (projection, key) DO UPDATE SET doc = excluded.doc",
        )
        .bind(put.projections)
        .bind(put.keys)
        .bind(put.docs)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    }
    if !delete.keys.is_empty() {
        sqlx::query(
            "DELETE FROM read_models r USING UNNEST($1::text[], $2::text[]) AS t(p, k) \
             WHERE r.projection = t.p AND r.key = t.k",
        )
        .bind(delete.projections)
        .bind(delete.keys)
        .persistent(false)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    }
    // A first commit of two racing runners: the insert conflicts and one of them fails.
    let froms: Vec<i64> = commits.iter().map(|c| version(c.from_checkpoint)).collect();
    let tos: Vec<i64> = commits.iter().map(|c| version(c.to_checkpoint)).collect();
    let moved = sqlx::query(
        "INSERT INTO checkpoints (name, position) \
         SELECT n, t FROM UNNEST($1::text[], $2::bigint[]) AS u(n, t) \
         ON CONFLICT (name) DO UPDATE SET position = excluded.position \
         WHERE checkpoints.position = \
             (SELECT f FROM UNNEST($1::text[], $3::bigint[]) AS v(n, f) WHERE v.n = excluded.name)",
    )
    .bind(&names)
    .bind(tos)
    .bind(froms)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    if moved.rows_affected() != commits.len() as u64 {
        // The checkpoints locked above cannot have moved; one that did not exist then was
        // inserted since by another runner (nothing of this commit stays: the caller's
        // transaction is rolled back).
        for (commit, name) in commits.iter().zip(&names) {
            if !actual.contains_key(name) {
                let now: i64 =
                    sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
                        .bind(name)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(backend)?;
                if now as u64 != commit.from_checkpoint {
                    return Err(StoreError::checkpoint_moved(
                        &commit.projection,
                        commit.from_checkpoint,
                        now as u64,
                    ));
                }
            }
        }
        return Err(StoreError::Corrupt(format!(
            "{} of {} projection checkpoints moved, none of them found moved",
            commits.len() as u64 - moved.rows_affected(),
            commits.len()
        )));
    }
    Ok(())
}

/// Document writes as one array per column (for `UNNEST`).
#[derive(Default)]
struct Columns {
    projections: Vec<String>,
    keys: Vec<String>,
    docs: Vec<String>,
}
