//! The notification table: customer notifications written in batches by the notification
//! consumer, one row per source message. Each store owns the table (its migrations create it);
//! the consumer reaches it through [`NotificationStore`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::store::StoreError;

/// One row of the notification table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Who the notification is for (a user id, scoped to its tenant: see [`crate::tenant`]).
    pub user_id: String,
    /// What it is about, e.g. `OrderShipped`.
    pub event_type: String,
    /// Title shown to the recipient.
    pub title: String,
    /// Body text shown to the recipient.
    pub body: String,
    /// When it was created (UTC).
    pub created_at: DateTime<Utc>,
    /// `topic/partition/offset` of the message it came from: the dedupe key (unique in the table).
    pub source: String,
}

/// Storage for the notification table.
#[async_trait]
pub trait NotificationStore: Send + Sync + 'static {
    /// Inserts `rows` in one transaction, skipping a row whose `source` is stored already (a
    /// batch redelivered after a crash inserts nothing twice). Returns the rows inserted.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] for rows the table refuses for good (a value it cannot
    /// hold, named; nothing is inserted), infrastructure failures (retry).
    async fn insert_notifications(&self, rows: &[Notification]) -> Result<u64, StoreError>;

    /// Rows in the table.
    ///
    /// # Errors
    /// Infrastructure failures.
    async fn count_notifications(&self) -> Result<u64, StoreError>;
}
