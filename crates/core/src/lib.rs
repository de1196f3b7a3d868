//! eventfold-core: the pieces every eventfold backend and domain shares, with no I/O.
//!
//! - [`envelope`]: the event envelope: [`NewEvent`] going in, [`RecordedEvent`] coming out.
//! - [`store`]: the [`EventStore`] trait (append with an [`ExpectedVersion`], read a stream, read all,
//!   durable checkpoints, idempotency records) and its typed [`StoreError`].
//! - [`aggregate`]: pure aggregates (`handle` / `apply`, the esrs / cqrs-es shape) and replay helpers.
//! - [`read_model`]: the [`ReadModelStore`] trait, a keyed document store that commits a batch of
//!   documents together with a projection's checkpoint.
//! - [`projection`]: keyed-fold projections and the backend-agnostic [`ProjectionRunner`].
//! - [`subscription`]: catch-up subscriptions over `read_all` that wake when the store appends.
//! - [`chain`]: the hash chain: canonical event bytes, links, the verifier and signed anchors.
//! - [`notification`]: the notification table's rows and the [`notification::NotificationStore`]
//!   port the stores implement.
//! - [`tenant`]: tenant-scoped ids (`{tenant}/{id}`; the default tenant's ids unprefixed).
//! - [`stock`]: the flash-sale stock ledger port ([`stock::StockLedger`]) and its in-process
//!   implementation.
//!
//! Nothing here touches a clock, a file, a socket or a runtime: backends and the service layer pass
//! those in (see ARCHITECTURE.md).

pub mod aggregate;
pub mod chain;
pub mod envelope;
pub mod notification;
pub mod projection;
pub mod read_model;
pub mod snapshot;
pub mod stock;
pub mod store;
pub mod subscription;
pub mod tenant;
pub mod testkit;

pub use aggregate::{Aggregate, Replayed};
pub use envelope::{
    deterministic_event_id, Actor, EventMetadata, NewEvent, RecordedEvent, ReplayEvent,
};
pub use notification::{Notification, NotificationStore};
pub use projection::{Projection, ProjectionRunner, ProjectionStatus, RunnerError, RunnerTimings};
pub use read_model::{
    DocWrite, ProjectionCommit, ProjectionMaintenance, ReadModelStore, RETIRED_CHECKPOINT,
};
pub use store::{
    AppendOutcome, AppendRequest, ArchiveStub, CheckpointStore, EventStore, ExpectedVersion, Fence,
    IdempotencyRecord, RestoredPayload, SchemaVersion, StoreError, StoredResponse,
};
pub use subscription::{catch_up, Subscription};
