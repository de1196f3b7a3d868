//! The migrations of [`crate::schema`] applied in order under an advisory lock, recorded in
//! `eventfold_schema`; a schema newer than this build is refused. Rows stored before the hash chain
//! existed are chained by the migration that adds it.

use eventfold_core::chain::{Chainer, ZERO_HASH};
use eventfold_core::{SchemaVersion, StoreError};
use sqlx::postgres::PgPool;

use crate::{backend, copy, copy_chain, schema, APPEND_LOCK};

pub(crate) async fn migrate(pool: &PgPool) -> Result<SchemaVersion, StoreError> {
    let mut tx = pool.begin().await.map_err(backend)?;
    // One migrator at a time across processes.
    sqlx::query("SELECT pg_advisory_xact_lock(7461002)")
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    sqlx::query("CREATE TABLE IF NOT EXISTS eventfold_schema (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    let current: i32 = sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM eventfold_schema")
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
    let known = schema::MIGRATIONS.len() as i32;
    if current > known {
        return Err(StoreError::InvalidRequest(format!(
            "database has schema version {current}, newer than this eventfold knows ({known}); upgrade eventfold"
        )));
    }
    for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(current as usize) {
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if i + 1 == schema::CHAIN_MIGRATION {
            backfill_chain(&mut tx).await?;
        }
        sqlx::query("INSERT INTO eventfold_schema (version) VALUES ($1)")
            .bind(i as i32 + 1)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)?;
    Ok(SchemaVersion {
        previous: current as u32,
        current: known as u32,
    })
}

/// Chains the rows stored before the hash chain existed, in position order, as the appender would
/// have (inside the migration's transaction, holding the append lock; the append-only trigger is
/// disabled for it and enabled again).
pub(crate) async fn backfill_chain(tx: &mut sqlx::PgConnection) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_are_append_only")
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    let mut chainer = Chainer::new(ZERO_HASH);
    let mut after = 0i64;
    let mut rows = Vec::new();
    loop {
        let sql = format!(
            "COPY (SELECT {} FROM events WHERE position > {after} ORDER BY position LIMIT 10000) \
             TO STDOUT (FORMAT binary)",
            copy::BACKFILL_CHAIN_COLUMNS
        );
        copy_chain(&mut *tx, &sql, &mut rows, || {
            format!("chain backfill after {after}")
        })
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.position as i64;
        let mut positions = Vec::with_capacity(rows.len());
        let (mut prevs, mut hashes) = (Vec::new(), Vec::new());
        for r in &rows {
            let l = chainer.next(r.position, &r.stream(), &r.content().digest());
            positions.push(r.position as i64);
            prevs.push(l.prev_hash.to_vec());
            hashes.push(l.hash.to_vec());
        }
        sqlx::query(
            "UPDATE events e SET prev_hash = u.ph, hash = u.h \
             FROM UNNEST($1::bigint[], $2::bytea[], $3::bytea[]) AS u(p, ph, h) \
             WHERE e.position = u.p",
        )
        .bind(positions)
        .bind(prevs)
        .bind(hashes)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    }
    sqlx::query("ALTER TABLE events ENABLE TRIGGER events_are_append_only")
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    Ok(())
}
