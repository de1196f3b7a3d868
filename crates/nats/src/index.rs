//! The log's index: where each event id is stored, each idempotency key's record, each fenced
//! resource's highest token. JetStream can look a message up by sequence or by subject, not by
//! event id or key, and its own deduplication (`Nats-Msg-Id`) forgets after a window; so the
//! store keeps this index itself, as a projection of the log in the read-model store
//! (documents of [`INDEX`], committed with its checkpoint like any projection).
//!
//! The appender decides every append against the index as of the log position it expects the
//! stream to be at (`Nats-Expected-Last-Sequence`): the documents cover the log up to the
//! index's checkpoint, and [`Recent`] holds, in memory, what lies between that checkpoint and the
//! appender's position (events this process appended, or read while catching up, and not yet
//! committed to the documents). The index writer commits them in the background and then drops
//! them from memory. Because the index is derived from the log, losing it costs a rebuild, not
//! data: a store opened over an index that lags reads the rest of the log into memory first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use eventfold_core::read_model::ProjectionCommit;
use eventfold_core::{DocWrite, IdempotencyRecord, ReadModelStore, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::message::{Head, IdemHead};

/// The projection (in the read-model store) that holds the index.
pub const INDEX: &str = "nats-log-index";

/// Where an event is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EventLoc {
    /// Stream id.
    #[serde(rename = "s")]
    pub stream: String,
    /// Stream version.
    #[serde(rename = "v")]
    pub version: u64,
    /// Global position.
    #[serde(rename = "p")]
    pub position: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyDoc {
    #[serde(flatten)]
    record: IdemHead,
    p: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FenceDoc {
    r: String,
    t: u64,
    p: u64,
}

fn event_key(id: &Uuid) -> String {
    format!("e:{}", id.simple())
}

fn digest_key(prefix: &str, text: &str) -> String {
    format!("{prefix}:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

fn key_key(key: &str) -> String {
    digest_key("k", key)
}

fn fence_key(resource: &str) -> String {
    digest_key("f", resource)
}

/// What a contiguous run of the log adds to the index: events at positions `from + 1 ..= to`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Delta {
    /// The position the run follows.
    pub from: u64,
    /// Its last position.
    pub to: u64,
    events: Vec<(Uuid, EventLoc)>,
    keys: Vec<(IdempotencyRecord, u64)>,
    fences: Vec<(String, u64, u64)>,
}

impl Delta {
    /// An empty run after `from`.
    pub(crate) fn after(from: u64) -> Self {
        Self {
            from,
            to: from,
            ..Self::default()
        }
    }

    /// Adds the event at `position` with its head's idempotency record and fence.
    pub(crate) fn add(&mut self, h: &Head, position: u64) {
        self.to = self.to.max(position);
        self.events.push((
            h.id,
            EventLoc {
                stream: h.s.clone(),
                version: h.v,
                position,
            },
        ));
        if let Some(idem) = &h.idem {
            self.keys.push((idem.record(), position));
        }
        if let Some(f) = &h.fence {
            self.fences.push((f.r.clone(), f.t, position));
        }
    }

    /// Whether it holds no event.
    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    fn writes(&self) -> Vec<DocWrite> {
        let mut writes = Vec::with_capacity(self.events.len() + self.keys.len());
        for (id, loc) in &self.events {
            writes.push(DocWrite {
                key: event_key(id),
                doc: Some(serde_json::to_string(loc).expect("an index entry serialises")),
            });
        }
        for (record, p) in &self.keys {
            let doc = KeyDoc {
                record: IdemHead::of(record),
                p: *p,
            };
            writes.push(DocWrite {
                key: key_key(&record.key),
                doc: Some(serde_json::to_string(&doc).expect("an index entry serialises")),
            });
        }
        // A resource's last token in the run is its highest: a lower one is never appended.
        let mut last: HashMap<&str, (u64, u64)> = HashMap::new();
        for (r, t, p) in &self.fences {
            last.insert(r, (*t, *p));
        }
        for (r, (t, p)) in last {
            let doc = FenceDoc {
                r: r.to_owned(),
                t,
                p,
            };
            writes.push(DocWrite {
                key: fence_key(r),
                doc: Some(serde_json::to_string(&doc).expect("an index entry serialises")),
            });
        }
        writes
    }

    fn merge(&mut self, next: Delta) {
        self.to = self.to.max(next.to);
        self.events.extend(next.events);
        self.keys.extend(next.keys);
        self.fences.extend(next.fences);
    }
}

enum Entry {
    Event(Uuid),
    Key(String),
    Fence(String),
}

/// The index entries not yet committed to the documents, in memory.
#[derive(Default)]
pub(crate) struct Recent {
    events: HashMap<Uuid, EventLoc>,
    keys: HashMap<String, (IdempotencyRecord, u64)>,
    fences: HashMap<String, (u64, u64)>,
    order: VecDeque<(u64, Entry)>,
}

impl Recent {
    fn add(&mut self, delta: &Delta) {
        for (id, loc) in &delta.events {
            self.order.push_back((loc.position, Entry::Event(*id)));
            self.events.insert(*id, loc.clone());
        }
        for (record, p) in &delta.keys {
            self.order.push_back((*p, Entry::Key(record.key.clone())));
            self.keys
                .entry(record.key.clone())
                .or_insert_with(|| (record.clone(), *p));
        }
        for (r, t, p) in &delta.fences {
            self.order.push_back((*p, Entry::Fence(r.clone())));
            self.fences.insert(r.clone(), (*t, *p));
        }
    }

    /// Drops the entries at or below `position` (now in the documents).
    fn prune(&mut self, position: u64) {
        while let Some((p, _)) = self.order.front() {
            if *p > position {
                break;
            }
            let (p, entry) = self.order.pop_front().expect("a front entry");
            match entry {
                Entry::Event(id) => {
                    self.events.remove(&id);
                }
                Entry::Key(k) => {
                    if self.keys.get(&k).is_some_and(|(_, at)| *at <= p) {
                        self.keys.remove(&k);
                    }
                }
                Entry::Fence(r) => {
                    if self.fences.get(&r).is_some_and(|(_, at)| *at <= p) {
                        self.fences.remove(&r);
                    }
                }
            }
        }
    }

    /// How many entries wait for the index writer.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

/// What a lookup found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// Stored events by id.
    pub events: HashMap<Uuid, EventLoc>,
    /// Recorded idempotency keys.
    pub keys: HashMap<String, IdempotencyRecord>,
    /// Highest token per fenced resource.
    pub fences: HashMap<String, u64>,
}

/// The index: documents in the read-model store plus [`Recent`].
pub(crate) struct Index {
    read_models: Arc<dyn ReadModelStore>,
    recent: Mutex<Recent>,
}

impl Index {
    pub(crate) fn new(read_models: Arc<dyn ReadModelStore>) -> Self {
        Self {
            read_models,
            recent: Mutex::new(Recent::default()),
        }
    }

    fn recent(&self) -> MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The position the documents cover (the index projection's checkpoint).
    pub(crate) async fn checkpoint(&self) -> Result<u64, StoreError> {
        self.read_models.projection_checkpoint(INDEX).await
    }

    /// Adds a run the appender wrote or read to memory (and hands it to the writer).
    pub(crate) fn remember(&self, delta: &Delta) {
        self.recent().add(delta);
    }

    /// Entries waiting in memory.
    pub(crate) fn pending(&self) -> usize {
        self.recent().len()
    }

    /// Looks up event ids, idempotency keys and fenced resources: memory first, then the
    /// documents (one read for all that memory did not have).
    pub(crate) async fn lookup(
        &self,
        ids: &[Uuid],
        keys: &[&str],
        resources: &[&str],
    ) -> Result<Found, StoreError> {
        let mut found = Found::default();
        let mut missing = Vec::new();
        {
            let recent = self.recent();
            for id in ids {
                match recent.events.get(id) {
                    Some(loc) => {
                        found.events.insert(*id, loc.clone());
                    }
                    None => missing.push(event_key(id)),
                }
            }
            for k in keys {
                match recent.keys.get(*k) {
                    Some((r, _)) => {
                        found.keys.insert((*k).to_owned(), r.clone());
                    }
                    None => missing.push(key_key(k)),
                }
            }
            for r in resources {
                match recent.fences.get(*r) {
                    Some((t, _)) => {
                        found.fences.insert((*r).to_owned(), *t);
                    }
                    None => missing.push(fence_key(r)),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        missing.sort();
        missing.dedup();
        let corrupt = |key: &str, e: serde_json::Error| {
            StoreError::Corrupt(format!("index document {INDEX}/{key}: {e}"))
        };
        for (key, doc) in self.read_models.get_docs(INDEX, &missing).await? {
            match key.split_once(':').map(|(kind, _)| kind) {
                Some("e") => {
                    let loc: EventLoc = serde_json::from_str(&doc).map_err(|e| corrupt(&key, e))?;
                    if let Ok(id) = Uuid::parse_str(&key[2..]) {
                        found.events.insert(id, loc);
                    }
                }
                Some("k") => {
                    let d: KeyDoc = serde_json::from_str(&doc).map_err(|e| corrupt(&key, e))?;
                    found
                        .keys
                        .entry(d.record.k.clone())
                        .or_insert(d.record.record());
                }
                Some("f") => {
                    let d: FenceDoc = serde_json::from_str(&doc).map_err(|e| corrupt(&key, e))?;
                    found.fences.entry(d.r).or_insert(d.t);
                }
                _ => {}
            }
        }
        Ok(found)
    }
}

/// Commits runs to the documents in order, merging what has queued up, and drops them from
/// memory once committed. A commit refused because another process's writer indexed further is
/// retried from there (entries are facts of the log: writing one twice is harmless); an
/// unreachable read-model store is retried every second, the runs waiting in memory meanwhile.
pub(crate) async fn write(index: Arc<Index>, mut runs: mpsc::UnboundedReceiver<Delta>) {
    while let Some(mut run) = runs.recv().await {
        while let Ok(next) = runs.try_recv() {
            run.merge(next);
            if run.events.len() >= 10_000 {
                break;
            }
        }
        let writes = run.writes();
        let mut from = run.from;
        loop {
            let commit = ProjectionCommit {
                projection: INDEX.to_owned(),
                writes: writes.clone(),
                from_checkpoint: from,
                to_checkpoint: run.to,
            };
            match index.read_models.commit_projections(vec![commit]).await {
                Ok(()) => break,
                Err(StoreError::CheckpointMoved { actual, .. }) if actual >= run.to => break,
                Err(StoreError::CheckpointMoved { actual, .. }) => from = actual,
                Err(e) => {
                    tracing::warn!(error = %e, "indexing the NATS log failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        index.recent().prune(run.to);
    }
}
