//! The notification consumer: topic `notifications` -> table
//! `notifications(user_id, event_type, title, body, created_at)`, in batches (see
//! `eventfold_kafka::batch` for batching, retries, the circuit breaker and the dead-letter topic).
//!
//! Message value (JSON): `{"user_id", "event_type", "title", "body", "created_at"?}`;
//! `created_at` (RFC 3339) defaults to the message's Kafka timestamp. Each row also records its
//! source (`topic/partition/offset`) under a unique index, so a batch redelivered after a crash
//! between the insert and the offset commit inserts nothing twice.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use eventfold_core::{NotificationStore, StoreError};
use eventfold_kafka::batch::{BatchSink, SinkError};
use eventfold_kafka::Inbound;
use serde::Deserialize;

use eventfold_postgres::PostgresConfig;
use eventfold_sqlite::SqliteConfig;

use crate::backend::{Backend, OpenOptions};

pub use eventfold_core::Notification;

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

/// The `notifications` table in the store's database (created by the store's migrations).
#[derive(Clone)]
pub struct NotificationSink {
    table: Arc<dyn NotificationStore>,
}

impl NotificationSink {
    /// Opens the store at `url` (migrating it if needed) for its notification table, with the
    /// settings of a process that only writes this table: on PostgreSQL a small pool (2
    /// connections) whose writes give up waiting for a connection after 1 s, so a database outage
    /// fails a flush fast and the batch consumer's retries and circuit breaker take over; on
    /// SQLite a 2 MiB page cache per connection (SQLite's own default) instead of the store's
    /// 64 MiB for replays. A `nats://` store's table is in its read-model store,
    /// `read_models` (see [`OpenOptions::read_models`]).
    ///
    /// # Errors
    /// A bad URL or a store that cannot be opened.
    pub async fn open(url: &str, read_models: Option<String>) -> anyhow::Result<Self> {
        let options = OpenOptions {
            read_models,
            postgres: PostgresConfig {
                max_connections: 2,
                acquire_timeout: std::time::Duration::from_secs(1),
                ..PostgresConfig::default()
            },
            sqlite: SqliteConfig {
                cache_kib: 2_048,
                ..SqliteConfig::default()
            },
            ..OpenOptions::default()
        };
        Ok(Self::new(&Backend::open_with(url, &options).await?))
    }

    /// The notification table of an open store.
    pub fn new(backend: &Backend) -> Self {
        Self {
            table: backend.notifications.clone(),
        }
    }

    /// Rows in the table.
    ///
    /// # Errors
    /// The database cannot be read.
    pub async fn count(&self) -> anyhow::Result<u64> {
        Ok(self.table.count_notifications().await?)
    }
}

#[async_trait]
impl BatchSink<Notification> for NotificationSink {
    async fn write(&self, items: &[&Notification]) -> Result<(), SinkError> {
        let rows: Vec<Notification> = items.iter().map(|n| (*n).clone()).collect();
        match self.table.insert_notifications(&rows).await {
            Ok(_) => Ok(()),
            Err(e @ StoreError::InvalidRequest(_)) => Err(SinkError::Permanent(e.to_string())),
            Err(e) => Err(SinkError::Transient(crate::error_chain(&e))),
        }
    }
}
