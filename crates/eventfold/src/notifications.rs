//! The notification consumer (M15): topic `notifications` -> table
//! `notifications(user_id, event_type, title, body, created_at)`, in batches (see
//! `eventfold_kafka::batch` for batching, retries, the circuit breaker and the dead-letter topic).
//!
//! Message value (JSON): `{"user_id", "event_type", "title", "body", "created_at"?}`;
//! `created_at` (RFC 3339) defaults to the message's Kafka timestamp. Each row also records its
//! source (`topic/partition/offset`) under a unique index, so a batch redelivered after a crash
//! between the insert and the offset commit inserts nothing twice.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use eventfold_kafka::batch::{BatchSink, SinkError};
use eventfold_kafka::Inbound;
use serde::Deserialize;

use crate::backend::StoreUrl;

/// One notification row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Recipient.
    pub user_id: String,
    /// What it is about, e.g. `OrderShipped`.
    pub event_type: String,
    /// Title.
    pub title: String,
    /// Text.
    pub body: String,
    /// When it was created (UTC).
    pub created_at: DateTime<Utc>,
    /// `topic/partition/offset` of the message (the dedupe key).
    pub source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    user_id: String,
    event_type: String,
    title: String,
    body: String,
    created_at: Option<DateTime<Utc>>,
}

/// Decodes a message; the error names the field or the problem.
///
/// # Errors
/// Not JSON, a missing or unknown field, an empty `user_id` or `event_type`, a NUL character.
pub fn decode(m: &Inbound) -> Result<Notification, String> {
    let w: Wire = serde_json::from_slice(&m.payload).map_err(|e| format!("value: {e}"))?;
    if w.user_id.trim().is_empty() {
        return Err("user_id: empty".into());
    }
    if w.event_type.trim().is_empty() {
        return Err("event_type: empty".into());
    }
    for (field, text) in [
        ("user_id", &w.user_id),
        ("event_type", &w.event_type),
        ("title", &w.title),
        ("body", &w.body),
    ] {
        if text.contains('\0') {
            return Err(format!("{field}: contains a NUL character"));
        }
    }
    let created_at = w
        .created_at
        .or_else(|| {
            m.timestamp_ms
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        })
        .unwrap_or_else(Utc::now);
    Ok(Notification {
        user_id: w.user_id,
        event_type: w.event_type,
        title: w.title,
        body: w.body,
        created_at,
        source: format!("{}/{}/{}", m.topic, m.partition, m.offset),
    })
}

/// The `notifications` table in the store's database.
pub enum NotificationSink {
    /// PostgreSQL: one `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT DO NOTHING` per batch.
    Postgres(sqlx::PgPool),
    /// SQLite: one multi-row `INSERT OR IGNORE` per batch (chunked under SQLite's variable limit),
    /// in one transaction.
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
}

const CREATE_PG: &str = "CREATE TABLE IF NOT EXISTS notifications (
    id BIGSERIAL PRIMARY KEY, user_id TEXT NOT NULL, event_type TEXT NOT NULL, title TEXT NOT NULL,
    body TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL, source TEXT NOT NULL UNIQUE)";

const CREATE_SQLITE: &str = "CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, event_type TEXT NOT NULL, title TEXT NOT NULL,
    body TEXT NOT NULL, created_at TEXT NOT NULL, source TEXT NOT NULL UNIQUE)";

impl NotificationSink {
    /// Opens the table in the database of store `url` (creating it if needed).
    ///
    /// # Errors
    /// A bad URL or a database that cannot be reached.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        match StoreUrl::parse(url)? {
            StoreUrl::Postgres(pg) => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(std::time::Duration::from_secs(1))
                    .connect(&pg)
                    .await?;
                sqlx::query(CREATE_PG).execute(&pool).await?;
                Ok(Self::Postgres(pool))
            }
            StoreUrl::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path)?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                conn.pragma_update(None, "journal_mode", "WAL")?;
                conn.pragma_update(None, "synchronous", "FULL")?;
                conn.execute_batch(CREATE_SQLITE)?;
                Ok(Self::Sqlite(Arc::new(Mutex::new(conn))))
            }
        }
    }

    /// Closes the connections (before a scratch database is dropped, say).
    pub async fn close(self) {
        if let Self::Postgres(pool) = self {
            pool.close().await;
        }
    }

    /// Rows in the table.
    ///
    /// # Errors
    /// The database cannot be read.
    pub async fn count(&self) -> anyhow::Result<u64> {
        Ok(match self {
            Self::Postgres(pool) => {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
                    .fetch_one(pool)
                    .await?;
                n as u64
            }
            Self::Sqlite(conn) => {
                let conn = conn.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                conn.query_row("SELECT count(*) FROM notifications", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64
            }
        })
    }
}

#[async_trait]
impl BatchSink<Notification> for NotificationSink {
    async fn write(&self, items: &[&Notification]) -> Result<(), SinkError> {
        match self {
            Self::Postgres(pool) => {
                let col = |f: fn(&Notification) -> String| -> Vec<String> {
                    items.iter().map(|n| f(n)).collect()
                };
                let times: Vec<DateTime<Utc>> = items.iter().map(|n| n.created_at).collect();
                sqlx::query(
                    "INSERT INTO notifications (user_id, event_type, title, body, created_at, source) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[]) \
                     ON CONFLICT (source) DO NOTHING",
                )
                .bind(col(|n| n.user_id.clone()))
                .bind(col(|n| n.event_type.clone()))
                .bind(col(|n| n.title.clone()))
                .bind(col(|n| n.body.clone()))
                .bind(times)
                .bind(col(|n| n.source.clone()))
                .execute(pool)
                .await
                .map(|_| ())
                .map_err(classify_pg)
            }
            Self::Sqlite(conn) => {
                let rows: Vec<Notification> = items.iter().map(|n| (*n).clone()).collect();
                let conn = conn.clone();
                tokio::task::spawn_blocking(move || {
                    let mut conn = conn
                        .lock()
                        .map_err(|_| SinkError::Transient("sink connection poisoned".into()))?;
                    insert_sqlite(&mut conn, &rows).map_err(classify_sqlite)
                })
                .await
                .map_err(|e| SinkError::Transient(format!("sink task: {e}")))?
            }
        }
    }
}

fn insert_sqlite(conn: &mut rusqlite::Connection, rows: &[Notification]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // 6 parameters per row; SQLite allows 32,766 per statement.
    for chunk in rows.chunks(5_000) {
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
        tx.execute(&sql, params.as_slice())?;
    }
    tx.commit()
}

fn classify_pg(e: sqlx::Error) -> SinkError {
    match &e {
        sqlx::Error::Database(db)
            if db
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23")) =>
        {
            SinkError::Permanent(e.to_string())
        }
        _ => SinkError::Transient(e.to_string()),
    }
}

fn classify_sqlite(e: rusqlite::Error) -> SinkError {
    use rusqlite::ffi::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch) => {
            SinkError::Permanent(e.to_string())
        }
        _ => SinkError::Transient(e.to_string()),
    }
}
