//! Catch-up subscriptions over [`EventStore::read_all`], with durable checkpoints.

use std::sync::Arc;

use crate::envelope::RecordedEvent;
use crate::store::{EventStore, StoreError};

/// A subscription to the global log that delivers every committed event after its start position,
/// once, in position order, waiting for new appends when it has caught up.
///
/// A durable subscription ([`Subscription::durable`]) starts from its stored checkpoint; call
/// [`Subscription::commit`] after handling a batch so a restart resumes after it (at-least-once
/// delivery to the handler; make the handler idempotent or commit atomically with its effect).
pub struct Subscription {
    store: Arc<dyn EventStore>,
    name: Option<String>,
    position: u64,
    batch_size: usize,
}

/// A volatile subscription starting after `after_position`, delivering batches of up to
/// `batch_size` events.
pub fn catch_up(
    store: Arc<dyn EventStore>,
    after_position: u64,
    batch_size: usize,
) -> Subscription {
    Subscription {
        store,
        name: None,
        position: after_position,
        batch_size: batch_size.max(1),
    }
}

impl Subscription {
    /// A subscription named `name` that resumes after its durable checkpoint (or from the start).
    ///
    /// # Errors
    /// The checkpoint cannot be read.
    pub async fn durable(
        store: Arc<dyn EventStore>,
        name: &str,
        batch_size: usize,
    ) -> Result<Self, StoreError> {
        let position = store.load_checkpoint(name).await?.unwrap_or(0);
        Ok(Self {
            store,
            name: Some(name.to_owned()),
            position,
            batch_size: batch_size.max(1),
        })
    }

    /// The position of the last event delivered (or the start position).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next batch, waiting for appends when there is nothing new. Never returns an empty batch.
    ///
    /// # Errors
    /// The store failed to read; the subscription's position is unchanged, so calling again retries.
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, StoreError> {
        loop {
            if let Some(batch) = self.try_next_batch().await? {
                return Ok(batch);
            }
            self.store.wait_for_append(self.position).await;
        }
    }

    /// The next batch if there is one now, without waiting.
    ///
    /// # Errors
    /// The store failed to read.
    pub async fn try_next_batch(&mut self) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        let batch = self.store.read_all(self.position, self.batch_size).await?;
        Ok(batch.last().map(|last| last.global_position).map(|p| {
            self.position = p;
            batch
        }))
    }

    /// Stores the position of the last delivered event as this subscription's checkpoint.
    ///
    /// # Errors
    /// The checkpoint cannot be written, or this subscription is not durable.
    pub async fn commit(&self) -> Result<(), StoreError> {
        let name = self.name.as_deref().ok_or_else(|| {
            StoreError::InvalidRequest("a volatile subscription has no checkpoint".into())
        })?;
        self.store.save_checkpoint(name, self.position).await
    }
}
