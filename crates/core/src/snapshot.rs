//! Snapshots (M4): an aggregate's state at a stream version, so a load reads the newest usable
//! snapshot plus the events after it instead of the whole stream.
//!
//! Snapshots are documents of the read-model store under the name [`SNAPSHOTS`], keyed by stream
//! id (the newest one), written off the command path by [`take_due`] (a tail of the log with its
//! own checkpoint, committed with the documents in one transaction) every `every` events of a
//! stream, and by [`write_snapshot`] (`eventfold snapshots rebuild`). A snapshot records its
//! stream version, its aggregate's category and the version of the state's shape
//! ([`Snapshotting::STATE_VERSION`]). [`load_latest`] never trusts one blindly: a snapshot of
//! another category, an older state version or an unreadable state is ignored (the stream is
//! replayed in full, and the next snapshot replaces it); one from a newer state version (a newer
//! eventfold wrote it) is an error naming the stream.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::aggregate::{Aggregate, Replayed};
use crate::read_model::{DocWrite, ProjectionCommit, ReadModelStore};
use crate::store::{EventStore, StoreError};

/// The read-model name snapshots are stored under.
pub const SNAPSHOTS: &str = "snapshots";

/// Snapshots are taken every this many events of a stream by default.
pub const DEFAULT_EVERY: u64 = 100;

/// An aggregate whose state can be snapshotted.
pub trait Snapshotting: Aggregate + Serialize + DeserializeOwned {
    /// The version of the state's serialized shape; raise it when the state's fields change, and
    /// older snapshots are ignored and rebuilt.
    const STATE_VERSION: u32;
}

/// One stored snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotDoc {
    /// The stream.
    pub stream_id: String,
    /// The stream version the state reflects.
    pub stream_version: u64,
    /// The aggregate's category, e.g. `account`.
    pub aggregate: String,
    /// [`Snapshotting::STATE_VERSION`] of the code that wrote it.
    pub state_version: u32,
    /// When it was taken (UTC).
    pub taken_at: DateTime<Utc>,
    /// The state, as JSON.
    pub state: serde_json::Value,
}

/// Why a snapshot was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unused {
    /// There is none.
    Missing,
    /// It is unreadable, of another aggregate, or of an older state version: replayed in full.
    Ignored(String),
}

/// The newest snapshot of `stream_id` for `A`, checked (see the module docs).
///
/// # Errors
/// A snapshot written by a newer state version ([`StoreError::Corrupt`] naming the stream and
/// both versions); read-model failures.
pub async fn newest<A: Snapshotting>(
    read_models: &dyn ReadModelStore,
    stream_id: &str,
) -> Result<Result<Replayed<A>, Unused>, StoreError> {
    let docs = read_models
        .get_docs(SNAPSHOTS, &[stream_id.to_owned()])
        .await?;
    let Some((_, json)) = docs.into_iter().next() else {
        return Ok(Err(Unused::Missing));
    };
    let doc: SnapshotDoc = match serde_json::from_str(&json) {
        Ok(d) => d,
        Err(e) => return Ok(Err(Unused::Ignored(format!("unreadable: {e}")))),
    };
    if doc.aggregate != A::CATEGORY || doc.stream_id != stream_id {
        return Ok(Err(Unused::Ignored(format!(
            "it is of {} {}",
            doc.aggregate, doc.stream_id
        ))));
    }
    if doc.state_version > A::STATE_VERSION {
        return Err(StoreError::Corrupt(format!(
            "snapshot of stream {stream_id} at version {} has state version {}, newer than this build knows ({})",
            doc.stream_version, doc.state_version, A::STATE_VERSION
        )));
    }
    if doc.state_version < A::STATE_VERSION {
        return Ok(Err(Unused::Ignored(format!(
            "state version {} is older than {}",
            doc.state_version,
            A::STATE_VERSION
        ))));
    }
    match serde_json::from_value::<A>(doc.state) {
        Ok(state) => Ok(Ok(Replayed {
            state,
            version: doc.stream_version,
        })),
        Err(e) => Ok(Err(Unused::Ignored(format!("state unreadable: {e}")))),
    }
}

/// What [`load_latest`] loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    /// The state (`None` for a stream without events).
    pub replayed: Option<Replayed<A>>,
    /// The version of the snapshot it started from (0: none).
    pub from_snapshot: u64,
    /// Why a stored snapshot was not used, if one was ignored (log it).
    pub ignored: Option<String>,
}

/// Loads `stream_id` as the newest usable snapshot plus the events after it (all events when no
/// snapshot is usable).
///
/// # Errors
/// Store failures, an undecodable event, a snapshot from a newer state version.
pub async fn load_latest<A: Snapshotting>(
    store: &dyn EventStore,
    read_models: &dyn ReadModelStore,
    stream_id: &str,
) -> Result<Loaded<A>, StoreError> {
    let empty = || Replayed {
        state: A::default(),
        version: 0,
    };
    let (start, ignored) = match newest::<A>(read_models, stream_id).await? {
        Ok(replayed) => (replayed, None),
        Err(Unused::Missing) => (empty(), None),
        Err(Unused::Ignored(why)) => (empty(), Some(why)),
    };
    let from_snapshot = start.version;
    let tail = store
        .read_stream_for_replay(stream_id, start.version + 1, usize::MAX)
        .await?;
    let loaded = start.extend_replay(stream_id, &tail)?;
    Ok(Loaded {
        replayed: (loaded.version > 0).then_some(loaded),
        from_snapshot,
        ignored,
    })
}

fn doc_of<A: Snapshotting>(stream_id: &str, replayed: &Replayed<A>) -> Result<String, StoreError> {
    let doc = SnapshotDoc {
        stream_id: stream_id.to_owned(),
        stream_version: replayed.version,
        aggregate: A::CATEGORY.to_owned(),
        state_version: A::STATE_VERSION,
        taken_at: Utc::now(),
        state: serde_json::to_value(&replayed.state)
            .map_err(|e| StoreError::Backend(Box::new(e)))?,
    };
    serde_json::to_string(&doc).map_err(|e| StoreError::Backend(Box::new(e)))
}

/// Replays `stream_id` in full (trusting no snapshot) and stores its snapshot at the head.
/// Returns the version snapshotted (0: no events, nothing written).
///
/// # Errors
/// Store failures, an undecodable event.
pub async fn write_snapshot<A: Snapshotting>(
    store: &dyn EventStore,
    read_models: &dyn ReadModelStore,
    stream_id: &str,
) -> Result<u64, StoreError> {
    let events = store
        .read_stream_for_replay(stream_id, 1, usize::MAX)
        .await?;
    let replayed = Replayed::<A>::from_replay(stream_id, &events)?;
    if replayed.version == 0 {
        return Ok(0);
    }
    let json = doc_of(stream_id, &replayed)?;
    // Written beside the tail's checkpoint without moving it.
    loop {
        let checkpoint = read_models.projection_checkpoint(SNAPSHOTS).await?;
        let commit = ProjectionCommit {
            projection: SNAPSHOTS.into(),
            writes: vec![DocWrite {
                key: stream_id.to_owned(),
                doc: Some(json.clone()),
            }],
            from_checkpoint: checkpoint,
            to_checkpoint: checkpoint,
        };
        match read_models.commit_projections(vec![commit]).await {
            Ok(()) => return Ok(replayed.version),
            Err(StoreError::CheckpointMoved { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One step of the snapshot tail: reads up to 2,000 events after its checkpoint and, for every
/// stream of `A` whose version reached a multiple of `every` in them, stores a snapshot at that
/// stream's newest such version (the previous snapshot plus the events after it), committed with
/// the checkpoint. Returns the events read (0: caught up).
///
/// # Errors
/// Store failures, an undecodable event ([`StoreError::CheckpointMoved`] when another tail
/// committed first: call again).
pub async fn take_due<A: Snapshotting>(
    store: &Arc<dyn EventStore>,
    read_models: &Arc<dyn ReadModelStore>,
    every: u64,
) -> Result<usize, StoreError> {
    let every = every.max(1);
    let from = read_models.projection_checkpoint(SNAPSHOTS).await?;
    let batch = store.read_all(from, 2_000).await?;
    let Some(to) = batch.last().map(|e| e.global_position) else {
        return Ok(0);
    };
    let prefix = format!("{}-", A::CATEGORY);
    let mut due: std::collections::BTreeMap<&str, u64> = Default::default();
    for e in &batch {
        if e.stream_version % every == 0 && e.stream_id.starts_with(&prefix) {
            due.insert(&e.stream_id, e.stream_version);
        }
    }
    let mut writes = Vec::with_capacity(due.len());
    for (stream_id, version) in due {
        let start = match newest::<A>(&**read_models, stream_id).await? {
            Ok(r) if r.version <= version => r,
            _ => Replayed {
                state: A::default(),
                version: 0,
            },
        };
        let count = usize::try_from(version - start.version).unwrap_or(usize::MAX);
        let tail = store
            .read_stream_for_replay(stream_id, start.version + 1, count)
            .await?;
        let replayed = start.extend_replay(stream_id, &tail)?;
        writes.push(DocWrite {
            key: stream_id.to_owned(),
            doc: Some(doc_of(stream_id, &replayed)?),
        });
    }
    read_models
        .commit_projections(vec![ProjectionCommit {
            projection: SNAPSHOTS.into(),
            writes,
            from_checkpoint: from,
            to_checkpoint: to,
        }])
        .await?;
    Ok(batch.len())
}
