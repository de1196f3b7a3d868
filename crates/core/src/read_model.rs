//! The read-model store: keyed JSON documents per projection, committed atomically with the
//! projection's checkpoint so that a projection applies each event exactly once in effect.

use async_trait::async_trait;

use crate::store::{CheckpointStore, StoreError};

/// The checkpoint name under which a projection's position is stored (`projection/{name}`), the
/// same in every backend.
pub fn projection_checkpoint_name(projection: &str) -> String {
    format!("projection/{projection}")
}

/// The checkpoint a retired projection version is left at: past any position a log reaches
/// (`i64::MAX`, which both stores hold), so a runner still running it reloads this checkpoint
/// after its next commit is refused and applies nothing more (see
/// [`ProjectionMaintenance::Retire`]).
pub const RETIRED_CHECKPOINT: u64 = i64::MAX as u64;

/// A change to a projection's stored documents and checkpoint as a whole, made in one
/// read-model transaction ([`ReadModelStore::maintain_projection`]). Names are storage names
/// (see [`crate::projection::storage_name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectionMaintenance {
    /// Deletes the documents and the checkpoint: the projection rebuilds from position 0.
    Reset(String),
    /// Deletes the documents and leaves the checkpoint at [`RETIRED_CHECKPOINT`]: a runner that
    /// still runs it finds its commit refused (`CheckpointMoved`), reloads that checkpoint and
    /// writes nothing more; [`ProjectionMaintenance::Reset`] brings it back.
    Retire(String),
    /// `target` takes over the documents and checkpoint of `source` (a copy built beside it),
    /// its own are deleted and `source` is left empty: readers of `target` see its old data until
    /// the commit and the new data after it, never an empty view.
    Replace {
        /// The projection that gets the documents.
        target: String,
        /// The projection they come from.
        source: String,
    },
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

/// Whether `key` (scoped to its tenant) is a projection's own bookkeeping rather than part of
/// its answer: its part after the tenant starts with `~` (state a fold keeps to route events,
/// such as when an unpaid order was placed). Comparisons of versions leave such keys out.
pub fn is_bookkeeping_key(key: &str) -> bool {
    crate::tenant::unscoped(key).starts_with('~')
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

    /// Applies `change` to a projection's documents and checkpoint in one transaction.
    ///
    /// # Errors
    /// Infrastructure failures (nothing changed).
    async fn maintain_projection(&self, change: ProjectionMaintenance) -> Result<(), StoreError>;

    /// Deletes a projection's documents and checkpoint, so it rebuilds from position 0
    /// ([`ProjectionMaintenance::Reset`]).
    ///
    /// # Errors
    /// Infrastructure failures.
    async fn reset_projection(&self, projection: &str) -> Result<(), StoreError> {
        self.maintain_projection(ProjectionMaintenance::Reset(projection.to_owned()))
            .await
    }
}
