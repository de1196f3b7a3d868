//! Per-stream command lanes: commands to one stream run one after another inside the process, and
//! every command that queued while one batch was being written goes into the next batch.
//!
//! A hot stream (one account, one flash-sale SKU) is where optimistic concurrency breaks down: with
//! 16 clients doing load -> decide -> append, all but one lose each round and retry (the
//! event-sourcing libraries measured against eventfold reach about 106 commands/s on one stream). A
//! lane instead decides the queued commands in order against the state each one leaves behind, and
//! appends them with one `append_many`: one request per command, each with the exact expected
//! version the previous one produced, each with its own idempotency record. The store still checks
//! every version (a writer in another process makes the first request of the batch conflict; the
//! lane then catches up and decides again), so nothing is given up for the speed.
//!
//! A lane keeps the state and version after its last write. When every command of the next batch
//! appends events, it decides them on that state without reading the stream: the store's check
//! of the expected versions proves the state current, and a writer elsewhere makes the append
//! conflict. A new lane assumes its stream empty the same way: only commands that start a stream
//! append anything on that, and their `NoStream` append is the check. Otherwise (a refusal or a
//! no-op to answer, a caller's expected version, a batch after a conflict) it first catches up
//! with a read of the stream's tail from its version (or the stream's snapshot).
//! Idle lanes are dropped when the registry grows past [`MAX_IDLE_LANES`].
//!
//! The batch runs in a spawned task, never in a caller's future: a caller that goes away (an HTTP
//! client that disconnects) cannot stop a batch that holds other callers' commands.

use std::any::Any;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use eventfold_core::{
    AppendOutcome, AppendRequest, ExpectedVersion, IdempotencyRecord, Replayed, StoreError,
    StoredResponse,
};
use eventfold_domain::DomainError;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{CommandContext, Executed, Service, ServiceError, MAX_CONFLICT_RETRIES};
use eventfold_core::Aggregate;

/// Most commands decided and appended in one batch.
pub const MAX_BATCH: usize = 256;

/// Lanes kept when idle; past this, idle lanes (and their cached states) are dropped.
pub const MAX_IDLE_LANES: usize = 4_096;

/// Builds the response stored under a command's idempotency key, from the new state and version.
pub type Render<A> = Box<dyn Fn(&A, u64) -> StoredResponse + Send + Sync>;

type Reply<A> = oneshot::Sender<Result<Executed<A>, ServiceError>>;

struct Pending<A: Aggregate> {
    command: A::Command,
    ctx: CommandContext,
    render: Render<A>,
    /// Appends of this command refused by a version conflict so far.
    conflicts: usize,
    reply: Reply<A>,
}

struct Inner<A: Aggregate> {
    queue: VecDeque<Pending<A>>,
    running: bool,
    /// State and version after the last event this lane saw.
    cached: Option<Replayed<A>>,
    /// The last batch met a writer elsewhere (a version conflict) or failed: read the stream's
    /// tail before deciding the next one.
    stale: bool,
}

/// The queue of one stream.
pub(super) struct Lane<A: Aggregate> {
    stream_id: String,
    inner: Mutex<Inner<A>>,
}

/// Every lane of a service, by stream id (type-erased: the stream's category names its aggregate).
#[derive(Default)]
pub(super) struct Lanes {
    by_stream: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
}

impl Lanes {
    fn get<A: Aggregate>(&self, stream_id: &str) -> Arc<Lane<A>>
    where
        A::Command: Send,
    {
        let mut map = self.by_stream.lock().expect("lane registry poisoned");
        if let Some(lane) = map.get(stream_id) {
            if let Ok(lane) = lane.clone().downcast::<Lane<A>>() {
                return lane;
            }
        }
        if map.len() >= MAX_IDLE_LANES {
            // Only the registry holds an idle lane.
            map.retain(|_, lane| Arc::strong_count(lane) > 1);
        }
        let lane = Arc::new(Lane::<A> {
            stream_id: stream_id.to_owned(),
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                running: false,
                cached: None,
                stale: false,
            }),
        });
        map.insert(stream_id.to_owned(), lane.clone());
        lane
    }
}

/// What a command does on the state the commands before it in its batch leave.
enum Decision<A: Aggregate> {
    /// Its idempotency key is staged by an earlier command of the batch: decide it next batch.
    Twin,
    /// Answered without an append (a refusal, a no-op, a conflict with the caller's version).
    Answer(Result<Executed<A>, ServiceError>),
    /// Appends `request`, leaving `after`.
    Stage {
        request: AppendRequest,
        after: Replayed<A>,
        events: usize,
    },
}

/// What one decided command will append, and what to answer when it is written.
struct Staged<A: Aggregate> {
    pending: Pending<A>,
    state: A,
    version: u64,
    events: usize,
}

impl Service {
    /// Queues `command` on its stream's lane and waits for its outcome.
    pub(super) async fn execute_in_lane<A: Aggregate>(
        &self,
        stream_id: &str,
        command: A::Command,
        ctx: CommandContext,
        render: Render<A>,
    ) -> Result<Executed<A>, ServiceError>
    where
        A::Command: Clone + Send + 'static,
        A::Error: DomainError,
    {
        let lane = self.lanes.get::<A>(stream_id);
        let (reply, outcome) = oneshot::channel();
        let start = {
            let mut inner = lane.inner.lock().expect("lane poisoned");
            inner.queue.push_back(Pending {
                command,
                ctx,
                render,
                conflicts: 0,
                reply,
            });
            !std::mem::replace(&mut inner.running, true)
        };
        if start {
            tokio::spawn(self.clone().drain(lane));
        }
        outcome.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable("the stream's command lane stopped".into()).into())
        })
    }

    /// Runs batches on `lane` until its queue is empty.
    async fn drain<A: Aggregate>(self, lane: Arc<Lane<A>>)
    where
        A::Command: Clone + Send + 'static,
        A::Error: DomainError,
    {
        loop {
            let (batch, cached, stale) = {
                let mut inner = lane.inner.lock().expect("lane poisoned");
                if inner.queue.is_empty() {
                    inner.running = false;
                    return;
                }
                let n = inner.queue.len().min(MAX_BATCH);
                let batch: Vec<Pending<A>> = inner.queue.drain(..n).collect();
                (batch, inner.cached.take(), inner.stale)
            };
            let (cached, retry) = self.run_batch(&lane.stream_id, batch, cached, stale).await;
            // A conflict means a writer in another process is on this stream too: back off for a
            // random while (growing with the conflicts) so that the two lanes stop colliding.
            let conflicts = retry.iter().map(|p| p.conflicts).max().unwrap_or(0);
            {
                let mut inner = lane.inner.lock().expect("lane poisoned");
                inner.stale = cached.is_none() || !retry.is_empty();
                inner.cached = cached;
                for pending in retry.into_iter().rev() {
                    inner.queue.push_front(pending);
                }
            }
            if conflicts > 0 {
                tokio::time::sleep(backoff(conflicts)).await;
            }
        }
    }

    /// Decides and appends one batch. Returns the state after the last event known to be stored
    /// (`None` when unsure) and the commands to decide again (in order).
    ///
    /// With a cached state that no conflict has put in doubt (`stale` false), the batch is
    /// decided on it without reading the stream's tail, and kept when every command appends:
    /// the store's check of each expected version then proves the state was current (a writer
    /// elsewhere makes the append conflict, and the commands are decided again after a read).
    /// A refusal, a no-op, a caller's expected version or an owner that does not match is
    /// answered only after the read, since nothing would check it.
    async fn run_batch<A: Aggregate>(
        &self,
        stream_id: &str,
        mut batch: Vec<Pending<A>>,
        cached: Option<Replayed<A>>,
        stale: bool,
    ) -> (Option<Replayed<A>>, Vec<Pending<A>>)
    where
        A::Command: Clone,
        A::Error: DomainError,
    {
        if !stale && batch.iter().all(|p| p.ctx.expected_version.is_none()) {
            // A lane that has not seen its stream yet assumes it empty: only commands that start
            // a stream decide anything on that, and their `NoStream` append is the check.
            let assumed = match &cached {
                Some(cached) => Replayed {
                    state: cached.state.clone(),
                    version: cached.version,
                },
                None => Replayed::empty(),
            };
            let decided = self.decide(stream_id, batch, &assumed);
            if decided
                .iter()
                .all(|(_, d)| !matches!(d, Decision::Answer(_)))
            {
                return self.append_decided(decided, assumed, true).await;
            }
            // Nothing was answered yet: decide again after the read.
            batch = decided.into_iter().map(|(p, _)| p).collect();
        }
        // Catch up: the cached state (or the stream's snapshot, the first time) plus whatever was
        // appended since (by anyone).
        let base = match (cached, &self.snapshots) {
            (Some(cached), _) => cached,
            (None, Some(read_models)) if A::SNAPSHOTTED => {
                match eventfold_core::snapshot::base::<A>(read_models.as_ref(), stream_id).await {
                    Ok(Some(snapshot)) => snapshot,
                    Ok(None) | Err(_) => Replayed::empty(),
                }
            }
            (None, _) => Replayed::empty(),
        };
        let loaded = match self
            .store
            .read_stream_for_replay(stream_id, base.version + 1, usize::MAX)
            .await
            .and_then(|tail| base.extend_replay(stream_id, &tail))
        {
            Ok(loaded) => loaded,
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(copy_error(&e).into()));
                }
                return (None, Vec::new());
            }
        };

        let decided = self.decide(stream_id, batch, &loaded);
        self.append_decided(decided, loaded, false).await
    }

    /// Decides every command of `batch` against the state the previous one leaves, starting
    /// from `loaded`; answers nothing yet.
    fn decide<A: Aggregate>(
        &self,
        stream_id: &str,
        batch: Vec<Pending<A>>,
        loaded: &Replayed<A>,
    ) -> Vec<(Pending<A>, Decision<A>)>
    where
        A::Command: Clone,
        A::Error: DomainError,
    {
        let mut state = loaded.state.clone();
        let mut version = loaded.version;
        // Commands whose idempotency key a command staged in this batch carries: decided in the
        // next batch, after that one committed, where the service finds its response.
        let mut staged_keys: HashSet<String> = HashSet::new();
        let mut decided = Vec::with_capacity(batch.len());
        for pending in batch {
            let decision = self.decide_one(stream_id, &pending, &state, version, &mut staged_keys);
            if let Decision::Stage { after, .. } = &decision {
                state = after.state.clone();
                version = after.version;
            }
            decided.push((pending, decision));
        }
        decided
    }

    /// What `pending` does on `state` at `version` (see [`Service::decide`]).
    fn decide_one<A: Aggregate>(
        &self,
        stream_id: &str,
        pending: &Pending<A>,
        state: &A,
        version: u64,
        staged_keys: &mut HashSet<String>,
    ) -> Decision<A>
    where
        A::Command: Clone,
        A::Error: DomainError,
    {
        if let Some((key, _)) = &pending.ctx.idempotency {
            if staged_keys.contains(key) {
                return Decision::Twin;
            }
        }
        if let Some(expected) = pending.ctx.expected_version {
            if expected != version {
                return Decision::Answer(Err(StoreError::VersionConflict {
                    stream_id: stream_id.to_owned(),
                    expected: ExpectedVersion::Exact(expected),
                    actual: version,
                }
                .into()));
            }
        }
        if let Some(owner) = &pending.ctx.owner {
            if state.owner() != Some(owner.as_str()) {
                return Decision::Answer(Err(not_reachable::<A>(&pending.command)));
            }
        }
        let events = match state.handle(pending.command.clone()) {
            Ok(events) => events,
            Err(e) => return Decision::Answer(Err(ServiceError::refused(&e))),
        };
        if events.is_empty() {
            return Decision::Answer(Ok(Executed::Applied {
                state: state.clone(),
                version,
                events: 0,
                position: None,
            }));
        }
        let new_events = match events
            .iter()
            .map(|e| self.new_event::<A>(stream_id, e, &pending.ctx, Uuid::now_v7()))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(new_events) => new_events,
            Err(e) => return Decision::Answer(Err(e.into())),
        };
        let expected = if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        };
        let after = Replayed {
            state: events.iter().fold(state.clone(), |s, e| s.apply(e)),
            version: version + events.len() as u64,
        };
        let mut request = AppendRequest::new(stream_id, expected, new_events);
        request.idempotency =
            pending
                .ctx
                .idempotency
                .as_ref()
                .map(|(key, fingerprint)| IdempotencyRecord {
                    key: key.clone(),
                    fingerprint: fingerprint.clone(),
                    response: (pending.render)(&after.state, after.version),
                });
        if let Some((key, _)) = &pending.ctx.idempotency {
            staged_keys.insert(key.clone());
        }
        Decision::Stage {
            request,
            after,
            events: events.len(),
        }
    }

    /// Answers the decided commands and appends the staged ones. `assumed`: `loaded` is the
    /// lane's belief, not a fresh read, so a version conflict means only that the belief was
    /// out of date: the commands are decided again after a read without counting a conflict.
    async fn append_decided<A: Aggregate>(
        &self,
        decided: Vec<(Pending<A>, Decision<A>)>,
        loaded: Replayed<A>,
        assumed: bool,
    ) -> (Option<Replayed<A>>, Vec<Pending<A>>)
    where
        A::Command: Clone,
        A::Error: DomainError,
    {
        let mut staged: Vec<Staged<A>> = Vec::new();
        let mut requests = Vec::new();
        let mut twins = Vec::new();
        for (pending, decision) in decided {
            match decision {
                Decision::Twin => twins.push(pending),
                Decision::Answer(answer) => {
                    let _ = pending.reply.send(answer);
                }
                Decision::Stage {
                    request,
                    after,
                    events,
                } => {
                    requests.push(request);
                    staged.push(Staged {
                        pending,
                        state: after.state,
                        version: after.version,
                        events,
                    });
                }
            }
        }
        if staged.is_empty() {
            return (Some(loaded), Vec::new());
        }

        // The store's append of the lane's batch, as the command path waits for it.
        let appending = std::time::Instant::now();
        let appended = self.store.append_many(requests).await;
        metrics::histogram!("eventfold_append_duration_seconds")
            .record(appending.elapsed().as_secs_f64());
        let results = match appended {
            Ok(results) => results,
            Err(e) => {
                for s in staged {
                    let _ = s.pending.reply.send(Err(copy_error(&e).into()));
                }
                for t in twins {
                    let _ = t.reply.send(Err(copy_error(&e).into()));
                }
                return (None, Vec::new());
            }
        };

        // Requests succeed as a prefix: each expects the version the one before it produced, so
        // after the first refusal every later one conflicts and is decided again.
        let mut known = Some(loaded);
        let mut retry = twins;
        let mut failed = false;
        for (s, result) in staged.into_iter().zip(results) {
            match result {
                Ok(AppendOutcome { last_position, .. }) => {
                    if failed {
                        // Cannot happen (versions chain), but if it did, the cached state would
                        // miss this command's events: reload before the next batch.
                        known = None;
                    } else if known.is_some() {
                        known = Some(Replayed {
                            state: s.state.clone(),
                            version: s.version,
                        });
                    }
                    let _ = s.pending.reply.send(Ok(Executed::Applied {
                        state: s.state,
                        version: s.version,
                        events: s.events,
                        position: Some(last_position),
                    }));
                }
                Err(StoreError::VersionConflict { .. }) if failed => retry.push(s.pending),
                Err(e) => {
                    failed = true;
                    self.answer_refused(s.pending, e, assumed, &mut retry).await;
                }
            }
        }
        (known, retry)
    }

    /// Answers a command whose own append was refused: a conflict with a writer elsewhere is
    /// decided again (when the caller gave no expected version), a used idempotency key answers
    /// with the first response, anything else is the caller's error.
    async fn answer_refused<A: Aggregate>(
        &self,
        mut pending: Pending<A>,
        error: StoreError,
        assumed: bool,
        retry: &mut Vec<Pending<A>>,
    ) {
        match error {
            StoreError::VersionConflict { .. }
                if assumed && pending.ctx.expected_version.is_none() =>
            {
                retry.push(pending);
            }
            StoreError::VersionConflict { .. }
                if pending.ctx.expected_version.is_none()
                    && pending.conflicts < MAX_CONFLICT_RETRIES =>
            {
                pending.conflicts += 1;
                retry.push(pending);
            }
            StoreError::IdempotencyKeyUsed { .. } => {
                let answer = match self.replay(&pending.ctx).await {
                    Ok(Some(replayed)) => Ok(replayed),
                    Ok(None) => Err(StoreError::Corrupt(
                        "idempotency key reported used but not found".into(),
                    )
                    .into()),
                    Err(e) => Err(e),
                };
                let _ = pending.reply.send(answer);
            }
            e => {
                let _ = pending.reply.send(Err(e.into()));
            }
        }
    }
}

/// A random wait in [0, 250 µs * 2^conflicts), capped at 16 ms (full jitter).
fn backoff(conflicts: usize) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let ceiling_us = 250u64 << conflicts.min(6);
    std::time::Duration::from_micros(random % ceiling_us)
}

/// The same error for every caller of a failed batch (store errors are not `Clone`: their
/// backend sources are boxed).
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(source) => StoreError::Unavailable(source.to_string().into()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        StoreError::Backend(source) => StoreError::Backend(source.to_string().into()),
        other => StoreError::Backend(other.to_string().into()),
    }
}

/// The refusal of a command on an aggregate the caller does not own: the domain's own refusal
/// of the command on an aggregate that does not exist (or a generic not-found).
fn not_reachable<A: Aggregate>(command: &A::Command) -> ServiceError
where
    A::Command: Clone,
    A::Error: DomainError,
{
    match A::default().handle(command.clone()) {
        Err(e) if e.refusal() == eventfold_domain::Refusal::NotFound => ServiceError::refused(&e),
        _ => ServiceError::Refused {
            code: "not_found",
            refusal: eventfold_domain::Refusal::NotFound,
            message: format!("no such {}", A::CATEGORY),
        },
    }
}
