//! Keyed-fold projections and the runner that feeds them from the global log.
//!
//! A projection maps each event to at most one document key and folds the event into that
//! document: `apply(Option<Doc>, input, &event) -> Option<Doc>` (the Kafka Streams `aggregate`
//! shape). Because every key is known from the event alone, the runner loads all documents a batch
//! touches in one read, folds in memory, and commits the changed documents together with the new
//! checkpoint in one transaction: a crash between batches replays nothing twice and loses nothing.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;
use serde::{de::DeserializeOwned, Serialize};

use crate::envelope::RecordedEvent;
use crate::read_model::{DocWrite, ProjectionCommit, ReadModelStore};
use crate::store::{EventStore, StoreError};

/// A read model built by folding events into documents keyed by something the event names.
pub trait Projection: Send + Sync + 'static {
    /// The document stored per key (serialized as JSON).
    type Doc: Serialize + DeserializeOwned + Send + Sync;
    /// What [`Projection::select`] extracts from an event for [`Projection::apply`].
    type Input: Send + Sync;

    /// Stable name, e.g. `daily_sales_by_store`, the same for every version.
    fn name(&self) -> &'static str;

    /// The version of this projection's logic (1 unless a projection has several): versions of
    /// one name live side by side, each with its own documents and checkpoint under
    /// [`storage_name`], so a new one is built and compared while the active one serves.
    fn version(&self) -> u32 {
        1
    }

    /// The key this event updates and the decoded input, or `None` when the event does not matter.
    ///
    /// # Errors
    /// A message when the event cannot be decoded; the runner stops at that event (a poison event
    /// is never skipped silently).
    fn select(&self, event: &RecordedEvent) -> Result<Option<(String, Self::Input)>, String>;

    /// Folds the input into the document (`None` = absent); returning `None` deletes it.
    fn apply(
        &self,
        doc: Option<Self::Doc>,
        input: Self::Input,
        event: &RecordedEvent,
    ) -> Option<Self::Doc>;

    /// The key of a second document this event's fold reads and may change: state shared by
    /// many keys (a store's period control for its daily buckets, say), or `None` (the
    /// default). It is loaded with the batch's other documents and folded in log order, so
    /// the fold of each event sees the context as of that event's position.
    fn context_key(&self, _event: &RecordedEvent, _input: &Self::Input) -> Option<String> {
        None
    }

    /// The key of a document that decides where this event goes, when its key depends on
    /// earlier events of its stream (the business date its order was placed, say), or `None`
    /// (the default). Such documents are read before the batch's others and passed to
    /// [`Projection::route`] in log order, so the fold of each event sees them as of that event.
    fn route_key(&self, _event: &RecordedEvent, _input: &Self::Input) -> Option<String> {
        None
    }

    /// Given the [`Projection::route_key`] document as of this event (`None` = absent; set it
    /// to `None` to delete it), returns the key this event updates (`key`, from
    /// [`Projection::select`], unless the route says otherwise), or `None` when the route
    /// document was all it changed. `input` may be adjusted to what the route says. The
    /// default keeps `key`.
    fn route(
        &self,
        key: String,
        _route: &mut Option<Self::Doc>,
        _input: &mut Self::Input,
        _event: &RecordedEvent,
    ) -> Option<String> {
        Some(key)
    }

    /// Folds the input into the document with its [`Projection::context_key`] document
    /// (`None` = absent; set it to `None` to delete it). The default ignores the context and
    /// calls [`Projection::apply`].
    fn apply_in_context(
        &self,
        doc: Option<Self::Doc>,
        _context: &mut Option<Self::Doc>,
        input: Self::Input,
        event: &RecordedEvent,
    ) -> Option<Self::Doc> {
        self.apply(doc, input, event)
    }
}

/// A projection folded in memory the way [`ProjectionRunner`] folds it into the store: each
/// event's route document first ([`Projection::route`]), then its document with its context
/// document. For tests, and for explaining a read-model number: replaying the log through it
/// says which events changed which document, by the projection's own code.
pub struct MemoryFold<'p, P: Projection> {
    projection: &'p P,
    docs: std::collections::BTreeMap<String, P::Doc>,
}

/// What [`MemoryFold::apply_watched`] saw one event do to a watched document: its key and the
/// document before and after, as JSON (`None`: absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The document's key.
    pub key: String,
    /// The document before the event.
    pub before: Option<serde_json::Value>,
    /// The document after it.
    pub after: Option<serde_json::Value>,
}

impl<'p, P: Projection> MemoryFold<'p, P> {
    /// An empty fold of `projection`.
    pub fn new(projection: &'p P) -> Self {
        Self {
            projection,
            docs: std::collections::BTreeMap::new(),
        }
    }

    /// Folds `event` in.
    ///
    /// # Errors
    /// The projection cannot decode the event ([`Projection::select`]'s message).
    pub fn apply(&mut self, event: &RecordedEvent) -> Result<(), String> {
        self.apply_watched(event, |_| false).map(|_| ())
    }

    /// Folds `event` in; when the document it updates has a key `watch` accepts, returns that
    /// document before and after.
    ///
    /// # Errors
    /// The projection cannot decode the event ([`Projection::select`]'s message), or a
    /// document does not serialize.
    pub fn apply_watched(
        &mut self,
        event: &RecordedEvent,
        watch: impl Fn(&str) -> bool,
    ) -> Result<Option<Applied>, String> {
        let p = self.projection;
        let Some((key, mut input)) = p.select(event)? else {
            return Ok(None);
        };
        let key = match p.route_key(event, &input) {
            None => key,
            Some(r) => {
                let mut route = self.docs.remove(&r);
                let key = p.route(key, &mut route, &mut input, event);
                if let Some(d) = route {
                    self.docs.insert(r, d);
                }
                match key {
                    Some(k) => k,
                    None => return Ok(None),
                }
            }
        };
        let watched = watch(&key);
        let json = |d: Option<&P::Doc>| {
            d.map(serde_json::to_value)
                .transpose()
                .map_err(|e| format!("document {key}: {e}"))
        };
        let doc = self.docs.remove(&key);
        let before = if watched { json(doc.as_ref())? } else { None };
        let doc = match p.context_key(event, &input) {
            Some(c) => {
                let mut context = self.docs.remove(&c);
                let doc = p.apply_in_context(doc, &mut context, input, event);
                if let Some(c2) = context {
                    self.docs.insert(c, c2);
                }
                doc
            }
            None => p.apply(doc, input, event),
        };
        let after = if watched { json(doc.as_ref())? } else { None };
        if let Some(d) = doc {
            self.docs.insert(key.clone(), d);
        }
        Ok(watched.then_some(Applied { key, before, after }))
    }

    /// The documents by key.
    pub fn docs(&self) -> &std::collections::BTreeMap<String, P::Doc> {
        &self.docs
    }

    /// The documents by key, taken.
    pub fn into_docs(self) -> std::collections::BTreeMap<String, P::Doc> {
        self.docs
    }
}

/// Why the runner stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// The event store or read-model store failed.
    #[error("projection store failed")]
    Store(#[from] StoreError),
    /// A projection could not process an event.
    #[error("projection {projection} failed at position {position} (stream {stream_id} version {stream_version}): {message}")]
    Poison {
        /// Projection name.
        projection: String,
        /// Global position of the event.
        position: u64,
        /// Stream of the event.
        stream_id: String,
        /// Version of the event in its stream.
        stream_version: u64,
        /// What went wrong.
        message: String,
    },
    /// No projection has this name.
    #[error("unknown projection {0:?}")]
    UnknownProjection(String),
    /// The log holds archived events after the projection's checkpoint: applying only the
    /// hot events would leave them out of the read model without a word, so nothing is applied.
    #[error("projection {projection} at checkpoint {checkpoint} would skip {archived} archived events; bring them back first (eventfold restore --from DIR)")]
    Archived {
        /// Projection name.
        projection: String,
        /// Its checkpoint (global position).
        checkpoint: u64,
        /// Archived events after the checkpoint.
        archived: u64,
    },
}

/// Where a projection stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProjectionStatus {
    /// Projection name.
    pub name: String,
    /// Projection version (1 unless it has several; see [`Projection::version`]).
    pub version: u32,
    /// Last global position applied.
    pub checkpoint: u64,
    /// The log's head when measured.
    pub head: u64,
    /// `head - checkpoint`, in events.
    pub lag_events: u64,
    /// Age of the oldest event not yet applied (now minus its ingest time), in seconds; 0 when
    /// caught up. A projection that is idle stays at 0 however long since the last event; one
    /// that is stuck grows with the clock, which `lag_events` alone cannot tell apart.
    pub lag_seconds: f64,
    /// Time from the ingest of the last event of the last batch to its commit here, in ms.
    pub last_lag_ms: Option<f64>,
    /// Events applied by this runner since it started.
    pub events_applied: u64,
    /// 95th percentile, over every event this runner committed since it started (or since
    /// [`ProjectionRunner::reset_lag`]), of the time from the event's ingest to the commit of its
    /// batch here, in ms. The runner commits all its projections together, so it is the same for
    /// each of them.
    pub lag_p95_ms: Option<f64>,
}

/// Where version `version` of projection `name` keeps its documents and checkpoint: `name` for
/// version 1 (so data written before versions existed stays where it is), `name@v{version}`
/// otherwise.
pub fn storage_name(name: &str, version: u32) -> String {
    if version == 1 {
        name.to_owned()
    } else {
        format!("{name}@v{version}")
    }
}

#[async_trait]
trait DynProjection: Send + Sync {
    fn name(&self) -> &'static str;
    fn version(&self) -> u32;
    /// Where its documents and checkpoint are ([`storage_name`], or a copy's own place).
    fn storage(&self) -> &str;
    /// The same projection kept under `storage` (a copy built beside it).
    fn relocated(&self, storage: String) -> Arc<dyn DynProjection>;
    async fn process(
        &self,
        store: &dyn ReadModelStore,
        events: &[RecordedEvent],
    ) -> Result<Vec<DocWrite>, RunnerError>;
}

struct Erased<P> {
    projection: Arc<P>,
    storage: String,
}

#[async_trait]
impl<P: Projection> DynProjection for Erased<P> {
    fn name(&self) -> &'static str {
        self.projection.name()
    }

    fn version(&self) -> u32 {
        self.projection.version()
    }

    fn storage(&self) -> &str {
        &self.storage
    }

    fn relocated(&self, storage: String) -> Arc<dyn DynProjection> {
        Arc::new(Erased {
            projection: self.projection.clone(),
            storage,
        })
    }

    async fn process(
        &self,
        store: &dyn ReadModelStore,
        events: &[RecordedEvent],
    ) -> Result<Vec<DocWrite>, RunnerError> {
        let name = self.storage.as_str();
        let mut routed = Vec::new();
        // One read for what the events name: each event's key as selected, its route document
        // and its context. A routed event's final key is read in a second round trip only when
        // the route moves it to a key not read already (rarely: an order placed and paid on
        // different days).
        let mut wanted = HashSet::new();
        for event in events {
            match self.projection.select(event) {
                Ok(Some((key, input))) => {
                    let route = self.projection.route_key(event, &input);
                    if let Some(r) = &route {
                        wanted.insert(r.clone());
                    }
                    if let Some(c) = self.projection.context_key(event, &input) {
                        wanted.insert(c);
                    }
                    wanted.insert(key.clone());
                    routed.push((key, route, input, event));
                }
                Ok(None) => {}
                Err(message) => return Err(poison(name, event, message)),
            }
        }
        if routed.is_empty() {
            return Ok(Vec::new());
        }
        let mut docs: HashMap<String, Option<P::Doc>> = HashMap::new();
        let mut stored: HashSet<String> = HashSet::new();
        let fetched: Vec<String> = wanted.into_iter().collect();
        for (key, json) in store.get_docs(name, &fetched).await? {
            docs.insert(key.clone(), Some(decode(name, &key, &json)?));
            stored.insert(key);
        }
        // Route documents first, in log order: they decide the keys of the rest.
        let mut selected = Vec::with_capacity(routed.len());
        let fetched: HashSet<String> = fetched.into_iter().collect();
        let mut missing = HashSet::new();
        for (key, route, mut input, event) in routed {
            let key = match route {
                None => key,
                Some(r) => {
                    let mut doc = docs.entry(r.clone()).or_insert(None).take();
                    let key = self.projection.route(key, &mut doc, &mut input, event);
                    docs.insert(r, doc);
                    match key {
                        Some(k) => k,
                        None => continue,
                    }
                }
            };
            let context = self.projection.context_key(event, &input);
            for k in std::iter::once(&key).chain(context.as_ref()) {
                if !fetched.contains(k) {
                    missing.insert(k.clone());
                }
            }
            selected.push((key, context, input, event));
        }
        if !missing.is_empty() {
            let missing: Vec<String> = missing.into_iter().collect();
            for (key, json) in store.get_docs(name, &missing).await? {
                docs.insert(key.clone(), Some(decode(name, &key, &json)?));
                stored.insert(key);
            }
        }
        // A key absent before and after the batch (a store without period control, as the
        // context of its days) needs no write.
        for (key, context, input, event) in selected {
            let doc = docs.entry(key.clone()).or_insert(None).take();
            let doc = match context.filter(|c| *c != key) {
                None => self.projection.apply(doc, input, event),
                Some(c) => {
                    let mut context = docs.entry(c.clone()).or_insert(None).take();
                    let doc = self
                        .projection
                        .apply_in_context(doc, &mut context, input, event);
                    docs.insert(c, context);
                    doc
                }
            };
            docs.insert(key, doc);
        }
        docs.into_iter()
            .filter(|(key, doc)| doc.is_some() || stored.contains(key))
            .map(|(key, doc)| {
                let doc = doc
                    .map(|d| serde_json::to_string(&d))
                    .transpose()
                    .map_err(|e| RunnerError::Poison {
                        projection: name.into(),
                        position: 0,
                        stream_id: String::new(),
                        stream_version: 0,
                        message: format!("document {key} does not serialize: {e}"),
                    })?;
                Ok(DocWrite { key, doc })
            })
            .collect()
    }
}

fn decode<D: DeserializeOwned>(projection: &str, key: &str, json: &str) -> Result<D, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("projection {projection} document {key}: {e}")))
}

fn poison(projection: &str, event: &RecordedEvent, message: String) -> RunnerError {
    RunnerError::Poison {
        projection: projection.into(),
        position: event.global_position,
        stream_id: event.stream_id.clone(),
        stream_version: event.stream_version,
        message,
    }
}

/// How long [`ProjectionRunner::run`] gathers appends after a small batch before it
/// reads again: the read-model lag it may add, against a read-model commit per event beside a
/// lone writer.
pub const PROJECTION_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// A batch of fewer events than this is a trickle that [`PROJECTION_LINGER`] gathers; a larger
/// one means the log is busy, and the runner reads again at once.
const LINGER_BELOW: usize = 100;

/// Runs registered projections over the global log, in batches, each batch committed with its
/// checkpoints in one read-model transaction.
pub struct ProjectionRunner {
    events: Arc<dyn EventStore>,
    read_models: Arc<dyn ReadModelStore>,
    projections: Vec<Arc<dyn DynProjection>>,
    batch_size: usize,
    /// By storage name.
    status: Mutex<HashMap<String, ProjectionStatus>>,
    /// Projections (storage names) found with no archived event after their checkpoint by this
    /// runner (checked on their first catch-up and after a rebuild, not on every wake).
    archive_checked: Mutex<HashSet<String>>,
    /// Projections (storage names) being built apart ([`ProjectionRunner::build_apart`]): the
    /// live passes leave them out until they have caught up.
    apart: Mutex<HashSet<String>>,
    /// Ingest-to-commit lag of every committed event, in µs.
    lag: Mutex<hdrhistogram::Histogram<u64>>,
    /// Where the batches' time went.
    timings: Mutex<RunnerTimings>,
}

/// Where a runner's time went, batch by batch, since it was created or since
/// [`ProjectionRunner::reset_lag`]: reading the log, the projections reading their documents and
/// applying the events (all projections of a batch at the same time), and committing the
/// documents with the checkpoints. Time spent waiting for appends is in none of them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunnerTimings {
    /// Batches committed.
    pub batches: u64,
    /// Events read in those batches (each applied by every projection that had not yet).
    pub events: u64,
    /// In `read_all`.
    pub read: std::time::Duration,
    /// Reading documents and applying the events.
    pub process: std::time::Duration,
    /// In `commit_projections`.
    pub commit: std::time::Duration,
}

impl RunnerTimings {
    /// Events per second of busy time (read + process + commit): what the runner could keep
    /// up with; 0 before the first batch.
    pub fn events_per_busy_sec(&self) -> f64 {
        let busy = (self.read + self.process + self.commit).as_secs_f64();
        if busy > 0.0 {
            self.events as f64 / busy
        } else {
            0.0
        }
    }
}

fn lag_histogram() -> hdrhistogram::Histogram<u64> {
    // 1 µs to 1 hour, 3 significant digits.
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

impl ProjectionRunner {
    /// A runner with no projections that reads batches of up to 2,000 events.
    pub fn new(events: Arc<dyn EventStore>, read_models: Arc<dyn ReadModelStore>) -> Self {
        Self {
            events,
            read_models,
            projections: Vec::new(),
            batch_size: 2_000,
            status: Mutex::new(HashMap::new()),
            archive_checked: Mutex::new(HashSet::new()),
            apart: Mutex::new(HashSet::new()),
            lag: Mutex::new(lag_histogram()),
            timings: Mutex::new(RunnerTimings::default()),
        }
    }

    /// Registers a projection.
    pub fn register<P: Projection>(mut self, projection: P) -> Self {
        let storage = storage_name(projection.name(), projection.version());
        self.projections.push(Arc::new(Erased {
            projection: Arc::new(projection),
            storage,
        }));
        self
    }

    /// Keeps only the projections `keep(name, version)` accepts.
    pub fn retain(mut self, keep: impl Fn(&str, u32) -> bool) -> Self {
        self.projections.retain(|p| keep(p.name(), p.version()));
        self
    }

    /// Sets the batch size in events (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// The registered projections' names, in registration order, each once.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for p in &self.projections {
            if !names.contains(&p.name()) {
                names.push(p.name());
            }
        }
        names
    }

    /// Every registered projection's `(name, version)`, in registration order.
    pub fn versions(&self) -> Vec<(&'static str, u32)> {
        self.projections
            .iter()
            .map(|p| (p.name(), p.version()))
            .collect()
    }

    /// The projections a pass runs: the one stored under `only`, or every one not being built
    /// apart.
    fn select(&self, only: Option<&str>) -> Result<Vec<Arc<dyn DynProjection>>, RunnerError> {
        match only {
            None => {
                let apart = self.apart.lock().expect("apart lock");
                Ok(self
                    .projections
                    .iter()
                    .filter(|p| !apart.contains(p.storage()))
                    .cloned()
                    .collect())
            }
            Some(storage) => self
                .projections
                .iter()
                .find(|p| p.storage() == storage)
                .map(|p| vec![p.clone()])
                .ok_or_else(|| RunnerError::UnknownProjection(storage.to_owned())),
        }
    }

    /// Applies every committed event not yet applied, then returns the position reached.
    /// `only` names one projection by its storage name ([`storage_name`]: the name itself for
    /// version 1); `None` runs every one not being built apart. A retired version
    /// ([`crate::RETIRED_CHECKPOINT`]) is left out. `progress(position, head)` is called after
    /// each batch. When another runner commits a batch first (`CheckpointMoved`), this one
    /// reloads the checkpoints and continues after it.
    ///
    /// # Errors
    /// A store failure or a poison event; what was committed before stays committed.
    pub async fn catch_up(
        &self,
        only: Option<&str>,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<u64, RunnerError> {
        self.catch_up_lingering(only, progress, None).await
    }

    /// The projections of `projections` still running and their checkpoints (retired ones left
    /// out).
    async fn checkpoints(
        &self,
        projections: Vec<Arc<dyn DynProjection>>,
    ) -> Result<(Vec<Arc<dyn DynProjection>>, Vec<u64>), RunnerError> {
        let mut running = Vec::with_capacity(projections.len());
        let mut checkpoints = Vec::with_capacity(projections.len());
        for p in projections {
            let checkpoint = self.read_models.projection_checkpoint(p.storage()).await?;
            if checkpoint < crate::read_model::RETIRED_CHECKPOINT {
                running.push(p);
                checkpoints.push(checkpoint);
            }
        }
        Ok((running, checkpoints))
    }

    /// [`ProjectionRunner::catch_up`], resting `linger` after each batch of fewer than
    /// [`LINGER_BELOW`] events. Only a pass over every projection (`only: None`) counts in the
    /// lag and the timings: a projection built alone reads old events.
    async fn catch_up_lingering(
        &self,
        only: Option<&str>,
        progress: &(dyn Fn(u64, u64) + Sync),
        linger: Option<std::time::Duration>,
    ) -> Result<u64, RunnerError> {
        let (mut projections, mut checkpoints) = self.checkpoints(self.select(only)?).await?;
        self.refuse_archived_gaps(&projections, &checkpoints)
            .await?;
        let live = only.is_none();
        let Some(mut from) = checkpoints.iter().copied().min() else {
            return Ok(0);
        };
        loop {
            let started = std::time::Instant::now();
            let batch = self.events.read_all(from, self.batch_size).await?;
            let Some(last) = batch.last() else {
                return Ok(from);
            };
            let read = started.elapsed();
            let to = last.global_position;
            // The projections read their documents at the same time: a batch costs one read
            // round trip, not one per projection.
            let processed = futures::future::try_join_all(
                projections.iter().zip(&checkpoints).map(|(p, checkpoint)| {
                    let start = batch.partition_point(|e| e.global_position <= *checkpoint);
                    let events = &batch[start..];
                    async move {
                        let writes = p.process(self.read_models.as_ref(), events).await?;
                        Ok::<_, RunnerError>((
                            events.len() as u64,
                            ProjectionCommit {
                                projection: p.storage().to_owned(),
                                writes,
                                from_checkpoint: *checkpoint,
                                to_checkpoint: to,
                            },
                        ))
                    }
                }),
            )
            .await?;
            let (applied, commits): (Vec<u64>, Vec<ProjectionCommit>) =
                processed.into_iter().unzip();
            let process = started.elapsed() - read;
            match self.read_models.commit_projections(commits).await {
                Ok(()) => {}
                Err(StoreError::CheckpointMoved { .. }) => {
                    // Another runner (a server next to a CLI rebuild, say) committed first, or
                    // a version was retired or replaced: reload the checkpoints and go on from
                    // there.
                    (projections, checkpoints) =
                        self.checkpoints(std::mem::take(&mut projections)).await?;
                    let Some(min) = checkpoints.iter().copied().min() else {
                        return Ok(from);
                    };
                    from = min;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            let committed = Utc::now();
            if live {
                let mut t = self.timings.lock().expect("timings lock");
                t.batches += 1;
                t.events += batch.len() as u64;
                t.read += read;
                t.process += process;
                t.commit += started.elapsed() - read - process;
            }
            let lag_ms = (committed - last.ingest_time)
                .num_microseconds()
                .map(|us| us as f64 / 1000.0);
            if live {
                let age = metrics::histogram!("eventfold_projection_event_age_seconds");
                let mut lag = self.lag.lock().expect("lag lock");
                for e in &batch {
                    let us = (committed - e.ingest_time).num_microseconds().unwrap_or(0);
                    lag.saturating_record(us.max(1) as u64);
                    age.record(us.max(0) as f64 / 1e6);
                }
            }
            let head = self.events.head_position().await?.max(to);
            let lag_p95_ms = self.lag_quantile_ms(0.95);
            {
                let mut status = self.status.lock().expect("status lock");
                for (p, n) in projections.iter().zip(applied) {
                    let s =
                        status
                            .entry(p.storage().to_owned())
                            .or_insert_with(|| ProjectionStatus {
                                name: p.name().to_owned(),
                                version: p.version(),
                                checkpoint: 0,
                                head: 0,
                                lag_events: 0,
                                lag_seconds: 0.0,
                                last_lag_ms: None,
                                events_applied: 0,
                                lag_p95_ms: None,
                            });
                    s.checkpoint = to;
                    s.head = head;
                    s.lag_events = head - to;
                    s.last_lag_ms = lag_ms;
                    s.events_applied += n;
                    s.lag_p95_ms = lag_p95_ms;
                }
            }
            checkpoints.iter_mut().for_each(|c| *c = to);
            from = to;
            progress(to, head);
            if let Some(linger) = linger.filter(|_| batch.len() < LINGER_BELOW) {
                tokio::time::sleep(linger).await;
            }
        }
    }

    /// Leaves the projection stored under `storage` out of the live passes until
    /// [`ProjectionRunner::build_apart`] has brought it up to the log's head.
    ///
    /// # Errors
    /// [`RunnerError::UnknownProjection`].
    pub fn hold_apart(&self, storage: &str) -> Result<(), RunnerError> {
        self.select(Some(storage))?;
        self.apart
            .lock()
            .expect("apart lock")
            .insert(storage.to_owned());
        Ok(())
    }

    /// Brings the projection stored under `storage` up to the log's head on its own, while the
    /// live passes ([`ProjectionRunner::run`]) leave it out, so that a new version reading the
    /// whole log does not hold back the ones being served; it joins the live passes when it
    /// has caught up (after an error it stays apart, for a retry). Returns the position
    /// reached.
    ///
    /// # Errors
    /// As [`ProjectionRunner::catch_up`].
    pub async fn build_apart(
        &self,
        storage: &str,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<u64, RunnerError> {
        self.hold_apart(storage)?;
        let built = self.catch_up(Some(storage), progress).await?;
        self.apart.lock().expect("apart lock").remove(storage);
        Ok(built)
    }

    /// Rebuilds the projection stored under `storage` beside itself: a fresh copy is built from
    /// position 0 under `{storage}~rebuild` while the projection keeps serving and keeps being
    /// applied, then takes its place in one transaction
    /// ([`crate::ProjectionMaintenance::Replace`]), so readers never see an empty or
    /// half-built view. A runner applying it meanwhile finds its next commit refused, reloads
    /// the copy's checkpoint and goes on from there. Returns the copy's checkpoint.
    ///
    /// # Errors
    /// An unknown storage name, [`RunnerError::Archived`] when the log holds archived events
    /// (nothing changed), a store failure or a poison event (the projection keeps its data).
    pub async fn rebuild_beside(
        &self,
        storage: &str,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<u64, RunnerError> {
        let [projection] = <[_; 1]>::try_from(self.select(Some(storage))?)
            .map_err(|_| RunnerError::UnknownProjection(storage.to_owned()))?;
        let archived = self.events.archived_after(0).await?;
        if archived > 0 {
            return Err(RunnerError::Archived {
                projection: storage.to_owned(),
                checkpoint: 0,
                archived,
            });
        }
        let copy = format!("{storage}~rebuild");
        self.read_models.reset_projection(&copy).await?;
        let mut builder = ProjectionRunner::new(self.events.clone(), self.read_models.clone())
            .with_batch_size(self.batch_size);
        builder.projections.push(projection.relocated(copy.clone()));
        builder
            .archive_checked
            .lock()
            .expect("archive lock")
            .insert(copy.clone());
        let position = builder.catch_up(None, progress).await?;
        self.read_models
            .maintain_projection(crate::ProjectionMaintenance::Replace {
                target: storage.to_owned(),
                source: copy,
            })
            .await?;
        self.status.lock().expect("status lock").remove(storage);
        Ok(position)
    }

    /// Deletes a projection's documents (the one stored under `only`, or every projection's
    /// that is not retired, with `None`) and rebuilds it in place from position 0; returns the
    /// position reached.
    /// Readers see an empty, then growing view meanwhile: [`ProjectionRunner::rebuild_beside`]
    /// is the way while it serves.
    ///
    /// # Errors
    /// An unknown name, a store failure or a poison event; [`RunnerError::Archived`] when the
    /// log holds archived events, before anything is deleted.
    pub async fn rebuild(
        &self,
        only: Option<&str>,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<u64, RunnerError> {
        // Every projection leaves retired versions retired; one named is built again.
        let projections = match only {
            None => self.checkpoints(self.select(None)?).await?.0,
            Some(_) => self.select(only)?,
        };
        let archived = self.events.archived_after(0).await?;
        if let (Some(p), true) = (projections.first(), archived > 0) {
            return Err(RunnerError::Archived {
                projection: p.name().to_owned(),
                checkpoint: 0,
                archived,
            });
        }
        for p in projections {
            self.read_models.reset_projection(p.storage()).await?;
            self.status.lock().expect("status lock").remove(p.storage());
            // Just checked from position 0.
            self.archive_checked
                .lock()
                .expect("archive lock")
                .insert(p.storage().to_owned());
        }
        self.catch_up(only, progress).await
    }

    /// [`RunnerError::Archived`] when the log holds archived events after the checkpoint of a
    /// projection not checked yet by this runner (`read_all` leaves them out).
    async fn refuse_archived_gaps(
        &self,
        projections: &[Arc<dyn DynProjection>],
        checkpoints: &[u64],
    ) -> Result<(), RunnerError> {
        for (p, &checkpoint) in projections.iter().zip(checkpoints) {
            if self
                .archive_checked
                .lock()
                .expect("archive lock")
                .contains(p.storage())
            {
                continue;
            }
            let archived = self.events.archived_after(checkpoint).await?;
            if archived > 0 {
                return Err(RunnerError::Archived {
                    projection: p.storage().to_owned(),
                    checkpoint,
                    archived,
                });
            }
            self.archive_checked
                .lock()
                .expect("archive lock")
                .insert(p.storage().to_owned());
        }
        Ok(())
    }

    /// Keeps every projection caught up until `stop` completes, waking on appends. After a
    /// batch of fewer than 100 events it gathers appends for [`PROJECTION_LINGER`] before
    /// reading again, so that a lone writer's trickle (an event every half millisecond) is applied in
    /// batches rather than one read-model commit per event, each a durable commit of its own
    /// beside the writer's; the first event after a quiet spell is read at once, and a busy
    /// log fills its batches anyway.
    ///
    /// # Errors
    /// The first store failure or poison event; the caller decides whether to retry.
    pub async fn run(&self, stop: impl Future<Output = ()>) -> Result<(), RunnerError> {
        let mut stop = std::pin::pin!(stop);
        loop {
            let position = self
                .catch_up_lingering(None, &|_, _| {}, Some(PROJECTION_LINGER))
                .await?;
            let wait = std::pin::pin!(self.events.wait_for_append(position));
            if let futures::future::Either::Right(_) =
                futures::future::select(wait, stop.as_mut()).await
            {
                return Ok(());
            }
        }
    }

    /// The `q` quantile (0..=1) of the ingest-to-commit lag of the events this runner committed,
    /// in ms; `None` before the first commit.
    pub fn lag_quantile_ms(&self, q: f64) -> Option<f64> {
        let lag = self.lag.lock().expect("lag lock");
        (!lag.is_empty()).then(|| lag.value_at_quantile(q) as f64 / 1000.0)
    }

    /// Forgets the lag and the timings recorded so far (a benchmark measures only its own
    /// window).
    pub fn reset_lag(&self) {
        self.lag.lock().expect("lag lock").reset();
        *self.timings.lock().expect("timings lock") = RunnerTimings::default();
    }

    /// Where the batches' time went (see [`RunnerTimings`]).
    pub fn timings(&self) -> RunnerTimings {
        *self.timings.lock().expect("timings lock")
    }

    /// Every projection's checkpoint and lag, measured now, each version on its own
    /// (retired versions left out).
    ///
    /// # Errors
    /// A store failure.
    pub async fn status(&self) -> Result<Vec<ProjectionStatus>, RunnerError> {
        let head = self.events.head_position().await?;
        let mut out = Vec::with_capacity(self.projections.len());
        // The oldest unapplied event's age, by checkpoint (most projections share one).
        let mut ages: HashMap<u64, f64> = HashMap::new();
        for p in &self.projections {
            let checkpoint = self.read_models.projection_checkpoint(p.storage()).await?;
            if checkpoint >= crate::read_model::RETIRED_CHECKPOINT {
                continue;
            }
            let lag_seconds = match ages.get(&checkpoint) {
                Some(age) => *age,
                None => {
                    let next = self.events.read_all(checkpoint, 1).await?;
                    let age = next.first().map_or(0.0, |e| {
                        ((Utc::now() - e.ingest_time).num_milliseconds().max(0) as f64) / 1000.0
                    });
                    ages.insert(checkpoint, age);
                    age
                }
            };
            let known = self
                .status
                .lock()
                .expect("status lock")
                .get(p.storage())
                .cloned();
            out.push(ProjectionStatus {
                name: p.name().to_owned(),
                version: p.version(),
                checkpoint,
                head,
                lag_events: head.saturating_sub(checkpoint),
                lag_seconds,
                last_lag_ms: known.as_ref().and_then(|s| s.last_lag_ms),
                events_applied: known.map_or(0, |s| s.events_applied),
                lag_p95_ms: self.lag_quantile_ms(0.95),
            });
        }
        Ok(out)
    }
}
