//! The notification table (migration 6): one `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT DO
//! NOTHING` per batch.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use eventfold_core::{Notification, NotificationStore, StoreError};

use crate::{backend, PostgresStore};

#[async_trait]
impl NotificationStore for PostgresStore {
    async fn insert_notifications(&self, rows: &[Notification]) -> Result<u64, StoreError> {
        let col = |f: fn(&Notification) -> &String| -> Vec<&str> {
            rows.iter().map(|n| f(n).as_str()).collect()
        };
        let times: Vec<DateTime<Utc>> = rows.iter().map(|n| n.created_at).collect();
        let done = sqlx::query(
            "INSERT INTO notifications (user_id, event_type, title, body, created_at, source) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[]) \
             ON CONFLICT (source) DO NOTHING",
        )
        .bind(col(|n| &n.user_id))
        .bind(col(|n| &n.event_type))
        .bind(col(|n| &n.title))
        .bind(col(|n| &n.body))
        .bind(times)
        .bind(col(|n| &n.source))
        .execute(&self.inner.pool)
        .await
        .map_err(refused)?;
        Ok(done.rows_affected())
    }

    async fn count_notifications(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
            .fetch_one(&self.inner.pool)
            .await
            .map_err(backend)?;
        Ok(n as u64)
    }
}

/// A value the table cannot hold (SQLSTATE class 22, data exception, or 23, integrity
/// constraint) is refused for good; anything else is the backend's.
fn refused(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db)
            if db
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23")) =>
        {
            StoreError::InvalidRequest(format!("notification rows refused: {e}"))
        }
        _ => backend(e),
    }
}
