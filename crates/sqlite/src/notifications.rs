//! The notification table (migration 5): batch inserts through the single writer, deduplicated
//! by source.

use async_trait::async_trait;
use eventfold_core::{Notification, NotificationStore, StoreError};
use rusqlite::Connection;

use crate::writer::Job;
use crate::{backend, SqliteStore};

/// Rows per INSERT: 6 parameters a row, and SQLite allows 32,766 per statement.
const ROWS_PER_STATEMENT: usize = 5_000;

/// Inserts `rows` (in the writer's transaction), skipping sources stored already; returns the rows
/// inserted.
pub(crate) fn insert(conn: &Connection, rows: &[Notification]) -> Result<u64, StoreError> {
    let mut inserted = 0;
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let values = vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "INSERT OR IGNORE INTO notifications (user_id, event_type, title, body, created_at, source) VALUES {values}"
        );
        let times: Vec<String> = chunk
            .iter()
            .map(|n| {
                n.created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            })
            .collect();
        let mut params: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(chunk.len() * 6);
        for (n, t) in chunk.iter().zip(&times) {
            params.extend_from_slice(&[&n.user_id, &n.event_type, &n.title, &n.body, t, &n.source]);
        }
        inserted += conn.execute(&sql, params.as_slice()).map_err(refused)? as u64;
    }
    Ok(inserted)
}

/// A value the table cannot hold is refused for good; anything else is the backend's.
fn refused(e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch) => {
            StoreError::InvalidRequest(format!("notification rows refused: {e}"))
        }
        _ => backend(e),
    }
}

#[async_trait]
impl NotificationStore for SqliteStore {
    async fn insert_notifications(&self, rows: &[Notification]) -> Result<u64, StoreError> {
        let rows = rows.to_vec();
        self.write(|reply| Job::InsertNotifications(rows, reply))
            .await
    }

    async fn count_notifications(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT count(*) FROM notifications", [], |r| r.get(0))
                .map_err(backend)
        })
        .await
    }
}
