//! Snapshots on the service's side: loads that start from the newest usable snapshot, and the
//! tail that writes snapshots off the command path (see [`eventfold_core::snapshot`]).

use std::sync::Arc;

use chrono::Utc;
use eventfold_core::{EventStore, Replayed, StoreError};

use super::AsOf;

/// Loads aggregate `id` from its newest snapshot that holds nothing the answer must leave out,
/// plus the events after it (see [`eventfold_core::snapshot`]: `load_latest` for the latest,
/// `load_until` as of a version or an event time); a snapshot that had to be ignored is logged
/// and counted (`eventfold_snapshots_ignored_total`).
///
/// # Errors
/// Store failures, an undecodable event, a snapshot written by a newer state version.
pub async fn load_snapshotted<A: eventfold_core::snapshot::Snapshotting>(
    store: &dyn EventStore,
    read_models: &dyn eventfold_core::ReadModelStore,
    id: &str,
    as_of: AsOf,
) -> Result<Option<Replayed<A>>, StoreError> {
    use eventfold_core::snapshot::{load_latest, load_until, Until};
    let stream_id = A::stream_id(id);
    let loaded = match as_of {
        AsOf::Latest => load_latest::<A>(store, read_models, &stream_id).await?,
        AsOf::Version(v) => {
            load_until::<A>(store, read_models, &stream_id, Until::Version(v)).await?
        }
        AsOf::Time(t) => load_until::<A>(store, read_models, &stream_id, Until::Time(t)).await?,
    };
    if let Some(why) = loaded.ignored {
        tracing::warn!(
            stream_id,
            why,
            "snapshot ignored; the stream was replayed in full"
        );
        metrics::counter!("eventfold_snapshots_ignored_total").increment(1);
    }
    Ok(loaded.replayed)
}

/// Runs the snapshot tail for `A` (every `every` events of a stream, and when a stream's snapshot
/// is older than `max_age`) until `stop` completes.
pub async fn run_snapshots<A: eventfold_core::snapshot::Snapshotting>(
    store: Arc<dyn EventStore>,
    read_models: Arc<dyn eventfold_core::ReadModelStore>,
    every: u64,
    max_age: Option<chrono::Duration>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let head = store.head_position().await.unwrap_or(0);
        match eventfold_core::snapshot::take_due_with::<A>(
            &store,
            &read_models,
            every,
            max_age,
            Utc::now(),
        )
        .await
        {
            Ok(n) if n > 0 => continue,
            Ok(_) | Err(StoreError::CheckpointMoved { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "snapshot tail failed; retrying"),
        }
        tokio::select! {
            () = store.wait_for_append(head) => {}
            () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            () = &mut stop => return,
        }
    }
}
