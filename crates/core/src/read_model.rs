//! The read-model store: keyed JSON documents per projection, committed atomically with the
//! projection's checkpoint so that a projection applies each event exactly once in effect.

use async_trait::async_trait;

use crate::store::{CheckpointStore, StoreError};

/// The checkpoint name under which a projection's position is stored (`projection/{name}`), the
/// same in every backend.
pub fn projection_checkpoint_name(projection: &str) -> String {
    format!("projection/{projection}")
}

/// One document write: `doc: None` deletes the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocWrite {
    /// Document key within the projection.
    pub key: String,
    /// The new document (JSON text), or `None` to delete.
    pub doc: Option<String>,
}

/// What one projection commits for one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionCommit {
    /// Projection name.
    pub projection: String,
    /// Documents to write.
    pub writes: Vec<DocWrite>,
    /// The checkpoint the batch started from; the commit fails with
    /// [`StoreError::CheckpointMoved`] if the stored one differs.
    pub from_checkpoint: u64,
    /// The checkpoint after the batch (the global position of its last event).
    pub to_checkpoint: u64,
}

impl ProjectionCommit {
    /// Checks the checkpoint the store holds now (`actual`) against the one the batch started
    /// from: a commit applies only on top of the state its documents were folded from.
    ///
    /// # Errors
    /// [`StoreError::CheckpointMoved`] naming the checkpoint when they differ (another runner
    /// committed first).
    pub fn expect_from(&self, actual: u64) -> Result<(), StoreError> {
        if actual == self.from_checkpoint {
            return Ok(());
        }
        Err(StoreError::checkpoint_moved(
            &self.projection,
            self.from_checkpoint,
            actual,
        ))
    }
}

/// The smallest key after `key` in byte order that a store can hold: `key` + U+0001 (NUL is
/// not storable), for paging through [`ReadModelStore::range_docs`].
pub fn key_after(key: &str) -> String {
    format!("{key}\u{1}")
}

/// Storage for projections' documents and checkpoints.
#[async_trait]
pub trait ReadModelStore: CheckpointStore {
    /// The documents stored under `keys` (missing keys are left out), as `(key, json)`.
    ///
    /// # Errors
    /// Infrastructure failures.
    async fn get_docs(
        &self,
        projection: &str,
        keys: &[String],
    ) -> Result<Vec<(String, String)>, StoreError>;

    /// Documents with `from_key <= key <= to_key` in byte order of the keys, at most `limit`.
    /// Keys and bounds never hold NUL (PostgreSQL text cannot); to read the next page, start at
    /// [`key_after`] of the last key.
    ///
    /// # Errors
    /// Infrastructure failures.
    async fn range_docs(
        &self,
        projection: &str,
        from_key: &str,
        to_key: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError>;

    /// The projection's checkpoint (0 when it has processed nothing): the checkpoint named
    /// [`projection_checkpoint_name`].
    ///
    /// # Errors
    /// Infrastructure failures.
    async fn projection_checkpoint(&self, projection: &str) -> Result<u64, StoreError> {
        Ok(self
            .load_checkpoint(&projection_checkpoint_name(projection))
            .await?
            .unwrap_or(0))
    }

    /// Writes every commit's documents and checkpoints in one transaction.
    ///
    /// # Errors
    /// [`StoreError::CheckpointMoved`] (nothing written) or infrastructure failures.
    async fn commit_projections(&self, commits: Vec<ProjectionCommit>) -> Result<(), StoreError>;

    /// Deletes a projection's documents and checkpoint, so it rebuilds from position 0.
    ///
    /// # Errors
    /// Infrastructure failures.
    async fn reset_projection(&self, projection: &str) -> Result<(), StoreError>;
}
