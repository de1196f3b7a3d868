//! Snapshots: an aggregate's state at a stream version, so a load reads the newest usable
//! snapshot plus the events after it instead of the whole stream.
//!
//! Snapshots are documents of the read-model store under the name [`SNAPSHOTS`]: the newest under
//! the stream id, every one under [`at_key`] (for as-of loads, [`load_until`]) with an index of
//! them under [`index_key`]. They are written off the command path by [`take_due`] (a tail of the log with its
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
    checked::<A>(read_models, stream_id, stream_id).await
}

/// The newest snapshot of `stream_id` as `A` accepts it ([`Aggregate::from_snapshot`]), for any
/// aggregate: `None` when there is none, it is of another stream or aggregate, or `A` does not
/// take it (the caller replays from the start).
///
/// # Errors
/// Read-model failures.
pub async fn base<A: Aggregate>(
    read_models: &dyn ReadModelStore,
    stream_id: &str,
) -> Result<Option<Replayed<A>>, StoreError> {
    let Some(doc) = stored(read_models, stream_id)
        .await?
        .and_then(|json| serde_json::from_str::<SnapshotDoc>(&json).ok())
    else {
        return Ok(None);
    };
    if doc.aggregate != A::CATEGORY || doc.stream_id != stream_id {
        return Ok(None);
    }
    Ok(
        A::from_snapshot(doc.state, doc.state_version).map(|state| Replayed {
            state,
            version: doc.stream_version,
        }),
    )
}

/// The key of the snapshot of `stream_id` at `version` (kept for as-of loads).
pub fn at_key(stream_id: &str, version: u64) -> String {
    format!("{stream_id}@{version:020}")
}

/// The key of a stream's snapshot index.
pub fn index_key(stream_id: &str) -> String {
    format!("{stream_id}#index")
}

/// One snapshot in a stream's index: its version, the latest event time up to it, and the
/// earliest event time among the events since the snapshot before (ms since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The snapshot's stream version.
    pub version: u64,
    /// The latest event time of events `1..=version`.
    pub max_time_ms: i64,
    /// The earliest event time of the events since the previous snapshot.
    pub chunk_min_time_ms: i64,
}

/// The snapshots a stream has, in version order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotIndex {
    /// Entries, ascending by version.
    pub entries: Vec<IndexEntry>,
}

async fn read_index(
    read_models: &dyn ReadModelStore,
    stream_id: &str,
) -> Result<SnapshotIndex, StoreError> {
    Ok(stored(read_models, &index_key(stream_id))
        .await?
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default())
}

/// The document stored under `key`, as JSON text.
async fn stored(read_models: &dyn ReadModelStore, key: &str) -> Result<Option<String>, StoreError> {
    let docs = read_models.get_docs(SNAPSHOTS, &[key.to_owned()]).await?;
    Ok(docs.into_iter().next().map(|(_, json)| json))
}

/// The snapshot stored under `key`, checked (see the module docs).
async fn checked<A: Snapshotting>(
    read_models: &dyn ReadModelStore,
    stream_id: &str,
    key: &str,
) -> Result<Result<Replayed<A>, Unused>, StoreError> {
    let Some(json) = stored(read_models, key).await? else {
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

/// Where a load starts: the snapshot, or the empty state and why a stored snapshot was ignored.
fn start_from<A: Aggregate>(
    snapshot: Result<Replayed<A>, Unused>,
) -> (Replayed<A>, Option<String>) {
    match snapshot {
        Ok(replayed) => (replayed, None),
        Err(Unused::Missing) => (Replayed::empty(), None),
        Err(Unused::Ignored(why)) => (Replayed::empty(), Some(why)),
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
    let (start, ignored) = start_from(newest::<A>(read_models, stream_id).await?);
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

/// Where an as-of load should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The state right after this version.
    Version(u64),
    /// The fold of every event whose event time is at or before this instant.
    Time(DateTime<Utc>),
}

/// Loads `stream_id` as of a version or an event time, starting from the newest snapshot that
/// holds nothing the answer must leave out: for a version, the newest at or before it; for a
/// time, the newest whose events are all at or before it. For a time it then reads only the
/// stretches that can hold events at or before it (the snapshots' index records each stretch's
/// earliest event time), so late events are folded in wherever they are. A snapshot that is not
/// usable falls back to the full stream.
///
/// # Errors
/// Store failures, an undecodable event, a snapshot from a newer state version.
pub async fn load_until<A: Snapshotting>(
    store: &dyn EventStore,
    read_models: &dyn ReadModelStore,
    stream_id: &str,
    until: Until,
) -> Result<Loaded<A>, StoreError> {
    let index = read_index(read_models, stream_id).await?;
    let entries = &index.entries;
    let (base, skip_to) = match until {
        Until::Version(v) => (entries.iter().rev().find(|e| e.version <= v), None),
        Until::Time(t) => {
            let t = t.timestamp_millis();
            let base = entries.iter().rev().find(|e| e.max_time_ms <= t);
            // Stretches after the last one that starts at or before `t` hold only later events.
            let last_relevant = entries
                .iter()
                .rposition(|e| e.chunk_min_time_ms <= t)
                .map(|i| entries[i].version);
            (base, Some(last_relevant))
        }
    };
    let (start, ignored) = match base {
        Some(e) => {
            start_from(checked::<A>(read_models, stream_id, &at_key(stream_id, e.version)).await?)
        }
        None => (Replayed::empty(), None),
    };
    let from_snapshot = start.version;
    let replayed = match until {
        Until::Version(v) => {
            let count = usize::try_from(v.saturating_sub(start.version)).unwrap_or(usize::MAX);
            let tail = store
                .read_stream_for_replay(stream_id, start.version + 1, count)
                .await?;
            start.extend_replay(stream_id, &tail)?
        }
        Until::Time(t) => {
            let indexed_end = entries.last().map_or(0, |e| e.version);
            // Events up to the last stretch that starts at or before `t`, then everything the
            // index does not cover yet.
            let mut events = Vec::new();
            if let Some(end) = skip_to.flatten().filter(|end| *end > start.version) {
                let count = usize::try_from(end - start.version).unwrap_or(usize::MAX);
                events.extend(
                    store
                        .read_stream_for_replay(stream_id, start.version + 1, count)
                        .await?,
                );
            }
            let rest_from = indexed_end.max(start.version) + 1;
            events.extend(
                store
                    .read_stream_for_replay(stream_id, rest_from, usize::MAX)
                    .await?,
            );
            let mut state = start.state;
            let mut version = start.version;
            for e in events.iter().filter(|e| e.event_time <= t) {
                state = state.apply(&crate::aggregate::decode_replay::<A>(stream_id, e)?);
                version = e.stream_version;
            }
            Replayed { state, version }
        }
    };
    Ok(Loaded {
        replayed: (replayed.version > 0).then_some(replayed),
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
/// stream of `A` whose version reached a multiple of `every` in them, stores a snapshot at each
/// such version (the previous snapshot plus the events after it), committed with the checkpoint.
/// Returns the events read (0: caught up).
///
/// # Errors
/// Store failures, an undecodable event ([`StoreError::CheckpointMoved`] when another tail
/// committed first: call again).
pub async fn take_due<A: Snapshotting>(
    store: &Arc<dyn EventStore>,
    read_models: &Arc<dyn ReadModelStore>,
    every: u64,
) -> Result<usize, StoreError> {
    take_due_with::<A>(store, read_models, every, None, Utc::now()).await
}

/// [`take_due`], and by age: a stream of `A` with events in the batch whose newest snapshot was
/// taken at least `max_age` before `now` (and is behind) gets one at its newest version in the
/// batch, so a stream that grows slowly is not replayed from far back. A stream with no snapshot
/// yet waits for its first `every` events.
///
/// # Errors
/// As [`take_due`].
pub async fn take_due_with<A: Snapshotting>(
    store: &Arc<dyn EventStore>,
    read_models: &Arc<dyn ReadModelStore>,
    every: u64,
    max_age: Option<chrono::Duration>,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let every = every.max(1);
    let from = read_models.projection_checkpoint(SNAPSHOTS).await?;
    let batch = store.read_all(from, 2_000).await?;
    let Some(to) = batch.last().map(|e| e.global_position) else {
        return Ok(0);
    };
    let mut due: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    let mut newest: std::collections::BTreeMap<&str, u64> = Default::default();
    for e in &batch {
        if A::id_of_stream(&e.stream_id).is_none() {
            continue;
        }
        if e.stream_version % every == 0 {
            due.entry(&e.stream_id).or_default().push(e.stream_version);
        }
        newest.insert(&e.stream_id, e.stream_version);
    }
    if let Some(max_age) = max_age {
        let aging: Vec<String> = newest
            .keys()
            .filter(|s| !due.contains_key(*s))
            .map(|s| (*s).to_owned())
            .collect();
        for chunk in aging.chunks(500) {
            for (_, json) in read_models.get_docs(SNAPSHOTS, chunk).await? {
                let Ok(doc) = serde_json::from_str::<SnapshotDoc>(&json) else {
                    continue;
                };
                let Some((stream, version)) = newest.get_key_value(doc.stream_id.as_str()) else {
                    continue;
                };
                if doc.stream_version < *version && doc.taken_at + max_age <= now {
                    due.entry(stream).or_default().push(*version);
                }
            }
        }
    }
    let mut writes = Vec::with_capacity(due.len() * 2);
    for (stream_id, versions) in due {
        let mut index = read_index(&**read_models, stream_id).await?;
        // Start from the snapshot the index ends with (a batch read again after a crash finds
        // its own snapshots there and skips them).
        let last = index.entries.last().copied();
        let (mut current, mut max_time) = match last {
            Some(e) => match checked::<A>(&**read_models, stream_id, &at_key(stream_id, e.version))
                .await?
            {
                Ok(r) => (r, e.max_time_ms),
                Err(_) => {
                    index.entries.clear();
                    (Replayed::empty(), i64::MIN)
                }
            },
            None => (Replayed::empty(), i64::MIN),
        };
        let mut latest = None;
        for version in versions {
            if version <= current.version {
                continue;
            }
            let count = usize::try_from(version - current.version).unwrap_or(usize::MAX);
            let tail = store
                .read_stream_for_replay(stream_id, current.version + 1, count)
                .await?;
            let chunk_min = tail.iter().map(|e| e.event_time.timestamp_millis()).min();
            let chunk_max = tail.iter().map(|e| e.event_time.timestamp_millis()).max();
            current = current.extend_replay(stream_id, &tail)?;
            max_time = max_time.max(chunk_max.unwrap_or(i64::MIN));
            index.entries.push(IndexEntry {
                version: current.version,
                max_time_ms: max_time,
                chunk_min_time_ms: chunk_min.unwrap_or(i64::MAX),
            });
            let doc = doc_of(stream_id, &current)?;
            writes.push(DocWrite {
                key: at_key(stream_id, current.version),
                doc: Some(doc.clone()),
            });
            latest = Some(doc);
        }
        if let Some(doc) = latest {
            writes.push(DocWrite {
                key: stream_id.to_owned(),
                doc: Some(doc),
            });
            writes.push(DocWrite {
                key: index_key(stream_id),
                doc: Some(
                    serde_json::to_string(&index).map_err(|e| StoreError::Backend(Box::new(e)))?,
                ),
            });
        }
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
