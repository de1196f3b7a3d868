//! The appender: one task per store that decides groups of waiting appends and publishes them.
//!
//! JetStream numbers messages itself, so a client cannot know an event's global position (which
//! the hash chain covers) or its predecessor's hash before the server answers. The appender
//! therefore works like PostgreSQL's, with the server's sequence check in place of a lock: it
//! knows the log up to position `L` (its head, with the hash there, the heads of the streams it
//! touched and, through [`Index`], every event id, idempotency key and fencing token up to `L`),
//! decides a group of waiting appends against that, and publishes each append's events with
//! `Nats-Expected-Last-Sequence` = the position they follow. The server refuses a publish if
//! anything else was appended meanwhile; the answers before it stand, and the appender reads
//! what was appended (catching up) and decides the rest again. Each stream's first message in a
//! group also carries `Nats-Expected-Last-Subject-Sequence`, so the server itself enforces the
//! stream's expected version too.
//!
//! An append of one event is one plain publish; consecutive ones are pipelined and chained by
//! message ids (see [`Appender::publish`]). A run of appends of several events is one atomic
//! batch (ADR-50, nats-server 2.12+): all or none of them become visible, at consecutive
//! sequences. A batch holds at most [`MAX_BATCH`] messages (the server's limit), so one append
//! may not hold more events.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::OutboundMessage};
use async_nats::HeaderMap;
use bytes::Bytes;
use eventfold_core::chain::{link, Content, Hash, ZERO_HASH};
use eventfold_core::{AppendOutcome, AppendRequest, ExpectedVersion, StoreError};
use eventfold_store_support::head::{self, HeadSender};
use jetstream_extra::batch_fetch::BatchFetchExt;
use jetstream_extra::batch_publish::{BatchPublishErrorKind, BatchPublishExt};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::archive::{self, Cold};
use crate::index::{Delta, EventLoc, Found, Index};
use crate::message::{self, FenceHead, Head, IdemHead};
use crate::read;
use crate::{unavailable, Names};

/// Most messages in one atomic batch (nats-server's limit) and so most events in one append.
pub const MAX_BATCH: usize = 1000;

/// Most times a group is decided again after other writers moved the log under it.
const MAX_ATTEMPTS: usize = 200;

/// Most stream heads cached before the cache is cleared.
const MAX_CACHED_STREAMS: usize = 200_000;

type Results = Vec<Result<AppendOutcome, StoreError>>;

/// Appends waiting for the appender, answered together.
pub(crate) struct Job {
    pub requests: Vec<AppendRequest>,
    pub reply: oneshot::Sender<Result<Results, StoreError>>,
}

/// A stream's last event: its version, hash and sequence (0, zeros, 0 for a new stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamHead {
    version: u64,
    hash: Hash,
    seq: u64,
}

const NEW_STREAM: StreamHead = StreamHead {
    version: 0,
    hash: ZERO_HASH,
    seq: 0,
};

pub(crate) struct Appender {
    pub js: jetstream::Context,
    pub names: Names,
    pub index: Arc<Index>,
    pub cold: Arc<Cold>,
    pub runs: mpsc::UnboundedSender<Delta>,
    pub head_tx: HeadSender,
    pub stats: Arc<crate::AppenderStats>,
    /// The log position this appender knows everything up to, and the hash there.
    pub log: (u64, Hash),
    streams: HashMap<String, StreamHead>,
}

/// Why a publish did not commit.
enum Failed {
    /// The log moved (another writer) or the server could not take the batch now: nothing
    /// was written; catch up and decide again.
    Retry,
    /// The answer was lost: the batch may or may not be stored.
    Unknown(StoreError),
    /// The server refuses such batches for good.
    Refused(StoreError),
}

/// The messages of one append that writes, and what the log looks like after them.
struct Unit {
    /// Index of the request in the decided slice.
    request: usize,
    /// Subject, headers, body and message id (the event's hash, hex) of each event.
    messages: Vec<(String, HeaderMap, Bytes, String)>,
    delta: Delta,
    stream: String,
    stream_head: StreamHead,
    /// The log head after this unit.
    head: (u64, Hash),
    first_event: Uuid,
}

/// One decided chunk: per request its result (writers' as they will be once stored), and the
/// units that write, in log order.
struct Decided {
    results: Vec<Result<AppendOutcome, StoreError>>,
    units: Vec<Unit>,
}

impl Appender {
    /// An appender that knows the log up to `log` (position, hash there); `(index, cold)`:
    /// what the read-model store holds of the log (its index, its archived events).
    pub(crate) fn new(
        js: jetstream::Context,
        names: Names,
        (index, cold): (Arc<Index>, Arc<Cold>),
        runs: mpsc::UnboundedSender<Delta>,
        head_tx: HeadSender,
        stats: Arc<crate::AppenderStats>,
        log: (u64, Hash),
    ) -> Self {
        Self {
            js,
            names,
            index,
            cold,
            runs,
            head_tx,
            stats,
            log,
            streams: HashMap::new(),
        }
    }

    /// Serves jobs until every store handle is dropped.
    pub(crate) async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(first) = jobs.recv().await {
            let mut group = vec![first];
            let mut events: usize = group[0].requests.iter().map(|r| r.events.len()).sum();
            while events < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => {
                        events += job.requests.iter().map(|r| r.events.len()).sum::<usize>();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.serve(group).await;
        }
    }

    async fn serve(&mut self, group: Vec<Job>) {
        let mut requests = Vec::new();
        let mut owners = Vec::new();
        let mut replies = Vec::new();
        for (j, job) in group.into_iter().enumerate() {
            owners.extend(std::iter::repeat_n(j, job.requests.len()));
            requests.extend(job.requests);
            replies.push(job.reply);
        }
        let mut results: Vec<Option<Result<AppendOutcome, StoreError>>> =
            (0..requests.len()).map(|_| None).collect();
        let mut failure = None;
        // Chunks of at most MAX_BATCH events, each one batch.
        let mut start = 0;
        while start < requests.len() {
            let mut end = start;
            let mut events = 0;
            while end < requests.len()
                && (end == start || events + requests[end].events.len() <= MAX_BATCH)
            {
                events += requests[end].events.len();
                end += 1;
            }
            match self.commit(&requests[start..end]).await {
                Ok(chunk) => {
                    for (i, r) in chunk.into_iter().enumerate() {
                        results[start + i] = Some(r);
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            start = end;
        }
        let mut per_job: Vec<Results> = replies.iter().map(|_| Vec::new()).collect();
        let mut failed_jobs = HashSet::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Some(r) => per_job[owners[i]].push(r),
                None => {
                    failed_jobs.insert(owners[i]);
                }
            }
        }
        for (j, (reply, results)) in replies.into_iter().zip(per_job).enumerate() {
            let answer = if failed_jobs.contains(&j) {
                Err(match &failure {
                    Some(e) => unavailable(&e.to_string()),
                    None => unavailable("the append was not attempted"),
                })
            } else {
                Ok(results)
            };
            let _ = reply.send(answer);
        }
    }

    /// Decides and publishes one chunk, deciding again while other writers move the log.
    /// When a unit is refused, the answers of the requests before it stand and the rest are
    /// decided again (an answer may have counted on the refused unit).
    async fn commit(&mut self, requests: &[AppendRequest]) -> Result<Results, StoreError> {
        let mut results: Results = Vec::with_capacity(requests.len());
        let mut checked_head = false;
        for attempt in 0..MAX_ATTEMPTS {
            // While the client is reconnecting it would hold publishes until the server is
            // back; refuse them at once instead (the caller answers 503 with Retry-After).
            crate::connected(&self.js)?;
            let start = results.len();
            let decided = self.decide(&requests[start..]).await?;
            // A version conflict decided on a log another process has moved since may be
            // stale (the stream may be at the expected version by now): it stands only once
            // the log is known to its end. Anything else decided on a stale log is refused by
            // the server when published, and decided again.
            let conflict = decided
                .results
                .iter()
                .any(|r| matches!(r, Err(StoreError::VersionConflict { .. })));
            if conflict && !checked_head {
                checked_head = true;
                let last = crate::last_sequence(&self.js, &self.names.stream).await?;
                if last > self.log.0 {
                    self.catch_up().await?;
                    continue;
                }
            }
            if decided.units.is_empty() {
                results.extend(decided.results);
                return Ok(results);
            }
            let (stored, failure) = self.publish(&decided.units).await;
            self.stats.record(stored as u64);
            let Decided {
                results: answers,
                mut units,
            } = decided;
            let rest = units.split_off(stored);
            for unit in units {
                self.accept(unit);
            }
            if stored > 0 {
                self.announce().await;
            }
            let mut landed_after = 0;
            if let Some(Failed::Unknown(e)) = &failure {
                // Which of the rest are stored? Read what the log holds now.
                let e = unavailable(&e.to_string());
                self.catch_up().await.map_err(|_| e)?;
                for unit in &rest {
                    let found = self.index.lookup(&[unit.first_event], &[], &[]).await?;
                    let landed = found
                        .events
                        .get(&unit.first_event)
                        .is_some_and(|loc| loc.position == unit.delta.from + 1);
                    if !landed {
                        break;
                    }
                    // The catch-up already took it in.
                    landed_after += 1;
                }
            }
            let cut = rest.get(landed_after).map_or(answers.len(), |u| u.request);
            if let Some(refused) = rest.get(landed_after) {
                // Its stream's head is read again: an archive may have deleted the stream's
                // last message, which moves the subject's last sequence the server checks.
                self.streams.remove(&refused.stream);
            }
            results.extend(answers.into_iter().take(cut));
            match failure {
                None => return Ok(results),
                Some(Failed::Refused(e)) => return Err(e),
                Some(Failed::Retry) => {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(attempt.min(20) as u64)).await;
                    }
                    self.catch_up().await?;
                }
                Some(Failed::Unknown(_)) => {}
            }
        }
        Err(unavailable(
            "the log kept moving under the appender: other writers won every attempt",
        ))
    }

    /// Tells the store's other processes the log's head (see `read::tail`): a core NATS
    /// publish, which nothing acknowledges; a lost one is covered by their poll.
    async fn announce(&self) {
        let head = self.log.0.to_string();
        let _ = self
            .js
            .client()
            .publish(self.names.head.clone(), head.into())
            .await;
    }

    /// Takes in a unit the server stored.
    fn accept(&mut self, unit: Unit) {
        if self.streams.len() >= MAX_CACHED_STREAMS {
            self.streams.clear();
        }
        self.streams.insert(unit.stream, unit.stream_head);
        self.log = unit.head;
        self.index.remember(&unit.delta);
        let _ = self.runs.send(unit.delta);
        head::advance(&self.head_tx, self.log.0);
    }

    /// Decides every request of a chunk against the log as known at `self.log`.
    async fn decide(&mut self, requests: &[AppendRequest]) -> Result<Decided, StoreError> {
        let ingest_us = crate::micros(chrono::Utc::now());
        let checked: Vec<Result<(), StoreError>> = requests.iter().map(check).collect();
        let live = || {
            requests
                .iter()
                .zip(&checked)
                .filter(|(_, c)| c.is_ok())
                .map(|(r, _)| r)
        };
        let mut wanted: Vec<String> = live()
            .filter(|r| !self.streams.contains_key(&r.stream_id))
            .map(|r| r.stream_id.clone())
            .collect();
        wanted.sort();
        wanted.dedup();
        self.load_stream_heads(wanted).await?;
        let ids: Vec<Uuid> = live()
            .flat_map(|r| r.events.iter().map(|e| e.event_id))
            .collect();
        let keys: Vec<&str> = live()
            .filter_map(|r| r.idempotency.as_ref().map(|i| i.key.as_str()))
            .collect();
        let resources: Vec<&str> = live()
            .filter_map(|r| r.fence.as_ref().map(|f| f.resource.as_str()))
            .collect();
        let found = self.index.lookup(&ids, &keys, &resources).await?;

        let mut t = Tentative::default();
        let (mut position, mut prev) = self.log;
        let mut units: Vec<Unit> = Vec::new();
        let mut results = Vec::with_capacity(requests.len());
        let mut subjects = HashSet::new();
        for (index, (r, c)) in requests.iter().zip(checked).enumerate() {
            if let Err(e) = c {
                results.push(Err(e));
                continue;
            }
            let head = t
                .streams
                .get(&r.stream_id)
                .or_else(|| self.streams.get(&r.stream_id))
                .copied()
                .unwrap_or(NEW_STREAM);
            if let Some(done) = t.verdict(r, head.version, &found) {
                results.push(done);
                continue;
            }
            let subject = message::subject(&self.names.events, &r.stream_id);
            let (first_position, mut stream_prev) = (position + 1, head.hash);
            let mut delta = Delta::after(position);
            let mut messages = Vec::with_capacity(r.events.len());
            for (i, e) in r.events.iter().enumerate() {
                let version = head.version + 1 + i as u64;
                position += 1;
                let digest = Content::of_new(&r.stream_id, version, e, ingest_us).digest();
                let hash = link(&prev, &stream_prev, position, &digest);
                let m = &e.metadata;
                let h = Head {
                    s: r.stream_id.clone(),
                    v: version,
                    id: e.event_id,
                    t: e.event_type.clone(),
                    sv: e.schema_version,
                    et: e.event_time.timestamp_micros(),
                    it: ingest_us,
                    a: m.actor.as_str().to_owned(),
                    c: m.causation_id,
                    r: m.correlation_id,
                    tn: m.tenant_id.clone(),
                    via: m.via.as_ref().map(|a| a.as_str().to_owned()),
                    b: m.backfill,
                    ph: hex::encode(prev),
                    h: hex::encode(hash),
                    idem: (i == 0)
                        .then(|| r.idempotency.as_ref().map(IdemHead::of))
                        .flatten(),
                    fence: (i == 0)
                        .then(|| {
                            r.fence.as_ref().map(|f| FenceHead {
                                r: f.resource.clone(),
                                t: f.token,
                            })
                        })
                        .flatten(),
                };
                // `Nats-Expected-Last-Sequence` is added when published (see `publish`).
                let mut headers = HeaderMap::new();
                if i == 0 && subjects.insert(subject.clone()) {
                    headers.insert(
                        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                        head.seq.to_string().as_str(),
                    );
                }
                messages.push((
                    subject.clone(),
                    headers,
                    message::encode(&h, &e.payload)?,
                    h.h.clone(),
                ));
                delta.add(&h, position);
                t.events.insert(
                    e.event_id,
                    EventLoc {
                        stream: r.stream_id.clone(),
                        version,
                        position,
                    },
                );
                (prev, stream_prev) = (hash, hash);
            }
            if let Some(i) = &r.idempotency {
                t.keys.insert(i.key.clone());
            }
            if let Some(f) = &r.fence {
                t.fences.insert(f.resource.clone(), f.token);
            }
            let version = head.version + r.events.len() as u64;
            let stream_head = StreamHead {
                version,
                hash: prev,
                seq: position,
            };
            t.streams.insert(r.stream_id.clone(), stream_head);
            results.push(Ok(AppendOutcome {
                stream_version: version,
                first_position,
                last_position: position,
                duplicate: false,
            }));
            units.push(Unit {
                request: index,
                messages,
                delta,
                stream: r.stream_id.clone(),
                stream_head,
                head: (position, prev),
                first_event: r.events[0].event_id,
            });
        }
        Ok(Decided { results, units })
    }

    /// Publishes the units in log order and returns how many the server stored (a prefix),
    /// with why the next one was not.
    ///
    /// A one-event unit is one plain publish, and consecutive ones are pipelined: each is sent
    /// before the one before it is acknowledged, and carries `Nats-Msg-Id` = its hash and
    /// `Nats-Expected-Last-Msg-Id` = its predecessor's hash, so the server stores it only right
    /// after that exact event: the chain link, checked by the server (no unit can land after a
    /// refused one). A unit of several events is one atomic batch (which takes neither header),
    /// sent once everything before it is acknowledged and acknowledged before anything after it
    /// is sent; its first message carries `Nats-Expected-Last-Sequence`. The first unit and the
    /// one after a batch carry `Nats-Expected-Last-Sequence` as well, as every unit does.
    async fn publish(&self, units: &[Unit]) -> (usize, Option<Failed>) {
        use async_nats::jetstream::context::PublishAckFuture;
        let mut stored = 0;
        let mut in_flight: Vec<(u64, PublishAckFuture)> = Vec::new();
        let mut previous: Option<&str> = None;
        // Waits for the acknowledgements in flight, in order; stops at the first refusal.
        let client = self.js.client();
        let drain = async |in_flight: &mut Vec<(u64, PublishAckFuture)>, stored: &mut usize| {
            for (position, ack) in in_flight.drain(..) {
                match acknowledged(&client, ack).await {
                    Ok(ack) if ack.sequence == position && !ack.duplicate => *stored += 1,
                    Ok(ack) => {
                        return Some(Failed::Unknown(unavailable(&format!(
                            "JetStream stored an event at sequence {} (duplicate: {}), expected {position}",
                            ack.sequence, ack.duplicate
                        ))))
                    }
                    Err(failed) => return Some(failed),
                }
            }
            None
        };
        let mut next = 0;
        while next < units.len() {
            let unit = &units[next];
            if let [(subject, headers, body, id)] = unit.messages.as_slice() {
                let mut headers = headers.clone();
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
                    unit.delta.from.to_string().as_str(),
                );
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                if let Some(previous) = previous {
                    headers.insert(async_nats::header::NATS_EXPECTED_LAST_MESSAGE_ID, previous);
                }
                match self
                    .js
                    .publish_with_headers(subject.clone(), headers, body.clone())
                    .await
                {
                    Ok(ack) => in_flight.push((unit.head.0, ack)),
                    Err(e) => {
                        let failed = drain(&mut in_flight, &mut stored).await;
                        return (stored, Some(failed.unwrap_or_else(|| publish_failed(e))));
                    }
                }
                previous = Some(id);
                next += 1;
                continue;
            }
            if let Some(failed) = drain(&mut in_flight, &mut stored).await {
                return (stored, Some(failed));
            }
            previous = None;
            // Consecutive units of several events go out as one atomic batch (an atomic batch
            // costs the server about 2 ms whatever its size): all of them or none.
            let mut run = next + 1;
            let mut messages = unit.messages.len();
            while let Some(u) = units.get(run) {
                if u.messages.len() < 2 || messages + u.messages.len() > MAX_BATCH {
                    break;
                }
                messages += u.messages.len();
                run += 1;
            }
            let last = units[run - 1].head.0;
            match while_connected(&client, self.publish_batch(&units[next..run])).await {
                Ok(sequence) if sequence == last => stored += run - next,
                Ok(sequence) => {
                    return (
                        stored,
                        Some(Failed::Unknown(unavailable(&format!(
                        "JetStream stored a batch ending at sequence {sequence}, expected {last}"
                    )))),
                    )
                }
                Err(failed) => return (stored, Some(failed)),
            }
            next = run;
        }
        let failed = drain(&mut in_flight, &mut stored).await;
        (stored, failed)
    }

    /// Publishes the messages of `units` as one atomic batch; returns the last one's sequence.
    /// Its first message carries `Nats-Expected-Last-Sequence` (ADR-50 allows it nowhere
    /// else); each stream's `Nats-Expected-Last-Subject-Sequence` is on its first message.
    async fn publish_batch(&self, units: &[Unit]) -> Result<u64, Failed> {
        let mut batch = self.js.batch_publish().build();
        let messages: Vec<&(String, HeaderMap, Bytes, String)> =
            units.iter().flat_map(|u| u.messages.iter()).collect();
        let count = messages.len();
        for (i, (subject, headers, body, _)) in messages.into_iter().enumerate() {
            let mut headers = headers.clone();
            if i == 0 {
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
                    units[0].delta.from.to_string().as_str(),
                );
            }
            let message = OutboundMessage {
                subject: subject.clone().into(),
                payload: body.clone(),
                headers: Some(headers),
            };
            if i + 1 < count {
                batch
                    .add_message(message)
                    .await
                    .map_err(|e| self.batch_failed(e))?;
            } else {
                let ack = batch
                    .commit_message(message)
                    .await
                    .map_err(|e| self.batch_failed(e))?;
                return Ok(ack.sequence);
            }
        }
        Err(Failed::Unknown(unavailable(
            "an atomic batch with no messages",
        )))
    }

    fn batch_failed(&self, e: jetstream_extra::batch_publish::BatchPublishError) -> Failed {
        use async_nats::jetstream::ErrorCode;
        let code = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
            .map(async_nats::jetstream::Error::error_code);
        match e.kind() {
            BatchPublishErrorKind::BatchPublishIncomplete
            | BatchPublishErrorKind::BatchPublishTooManyInflight => Failed::Retry,
            BatchPublishErrorKind::Other if code == Some(ErrorCode::STREAM_WRONG_LAST_SEQUENCE) => {
                Failed::Retry
            }
            BatchPublishErrorKind::BatchPublishNotEnabled => {
                Failed::Refused(unavailable(&format!(
                    "the JetStream stream {} does not allow atomic batches (allow_atomic): \
                 it was made by something else than eventfold",
                    self.names.stream
                )))
            }
            _ => Failed::Unknown(unavailable(&format!("publishing a batch: {e}"))),
        }
    }

    /// Reads the log from `self.log` to its end: the index, the stream heads and the log head
    /// learn what other writers appended (or what a batch whose answer was lost stored).
    pub(crate) async fn catch_up(&mut self) -> Result<(), StoreError> {
        let last = crate::last_sequence(&self.js, &self.names.stream).await?;
        while self.log.0 < last {
            // Empty when only archived events (deleted messages) are left up to `last`.
            let sent = self
                .js
                .get_batch(&self.names.stream, MAX_BATCH)
                .sequence(self.log.0 + 1)
                .send()
                .await;
            let read = read::answered(sent)
                .await?
                .into_iter()
                .map(|m| message::decode(m.sequence, m.payload))
                .collect::<Result<Vec<_>, _>>()?;
            // Archived events between (their stubs keep the ids, keys and hashes).
            let upto = match read.last() {
                Some(d) if read.len() >= MAX_BATCH => d.position,
                _ => last,
            };
            let cold = self.cold.in_log(self.log.0, Some(upto), MAX_BATCH).await?;
            let cut = cold.len() >= MAX_BATCH;
            let mut delta = Delta::after(self.log.0);
            for d in archive::merge(read, cold, cut, |d| d.position) {
                let hash = message::head_hash(&d.head);
                delta.add(&d.head, d.position);
                if d.archived.is_some() {
                    // Its message is gone: the subject's last sequence is read again.
                    self.streams.remove(&d.head.s);
                } else {
                    self.streams.insert(
                        d.head.s.clone(),
                        StreamHead {
                            version: d.head.v,
                            hash,
                            seq: d.position,
                        },
                    );
                }
                self.log = (d.position, hash);
            }
            if delta.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "the NATS log ends at sequence {last} but nothing after {} can be read",
                    self.log.0
                )));
            }
            self.index.remember(&delta);
            let _ = self.runs.send(delta);
        }
        head::advance(&self.head_tx, self.log.0);
        Ok(())
    }

    /// Caches the heads of `wanted` streams as of `self.log`, catching up first when one of them
    /// moved past it.
    async fn load_stream_heads(&mut self, mut wanted: Vec<String>) -> Result<(), StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            wanted.retain(|s| !self.streams.contains_key(s));
            if wanted.is_empty() {
                return Ok(());
            }
            let mut stale = false;
            for chunk in wanted.chunks(MAX_BATCH) {
                let subjects: HashMap<String, &String> = chunk
                    .iter()
                    .map(|s| (message::subject(&self.names.events, s), s))
                    .collect();
                let mut heads: HashMap<&String, StreamHead> =
                    chunk.iter().map(|s| (s, NEW_STREAM)).collect();
                let sent = self
                    .js
                    .get_last_messages_for(&self.names.stream)
                    .subjects(subjects.keys().cloned().collect())
                    .send()
                    .await;
                for m in read::answered(sent).await? {
                    stale |= m.sequence > self.log.0;
                    let d = message::decode(m.sequence, m.payload)?;
                    if let Some(stream) = subjects.get(m.subject.as_str()) {
                        heads.insert(
                            stream,
                            StreamHead {
                                version: d.head.v,
                                hash: message::head_hash(&d.head),
                                seq: d.position,
                            },
                        );
                    }
                }
                if stale {
                    break;
                }
                // A stream whose last events are archived has no message for them: its version
                // and hash come from the archive, the subject's last sequence from JetStream.
                let archived = self
                    .cold
                    .last_of(chunk.iter().collect::<Vec<_>>().as_slice())
                    .await?;
                for (stream, mut head) in heads {
                    if let Some((version, hash)) = archived.get(stream) {
                        if *version > head.version {
                            head.version = *version;
                            head.hash = *hash;
                        }
                    }
                    self.streams.insert(stream.clone(), head);
                }
            }
            if stale {
                self.catch_up().await?;
            }
        }
        Err(unavailable(
            "the log kept moving while stream heads were read",
        ))
    }
}

/// What every request must satisfy before it is decided.
fn check(r: &AppendRequest) -> Result<(), StoreError> {
    r.validate()?;
    if r.events.len() > MAX_BATCH {
        return Err(StoreError::InvalidRequest(format!(
            "an append to the NATS store holds at most {MAX_BATCH} events (JetStream's atomic \
             batch limit), this one {}",
            r.events.len()
        )));
    }
    Ok(())
}

/// The acknowledgement of a publish, or `Failed::Unknown` as soon as the connection drops (the
/// server that would have answered is gone; the answer is lost, not late).
async fn acknowledged(
    client: &async_nats::Client,
    ack: async_nats::jetstream::context::PublishAckFuture,
) -> Result<async_nats::jetstream::publish::PublishAck, Failed> {
    while_connected(client, async { ack.await.map_err(publish_failed) }).await
}

/// `work`'s answer, or `Failed::Unknown` as soon as the connection drops while it waits.
async fn while_connected<T>(
    client: &async_nats::Client,
    work: impl std::future::Future<Output = Result<T, Failed>>,
) -> Result<T, Failed> {
    let mut work = std::pin::pin!(work);
    loop {
        match tokio::time::timeout(Duration::from_millis(100), &mut work).await {
            Ok(answer) => return answer,
            Err(_) => {
                if client.connection_state() != async_nats::connection::State::Connected {
                    return Err(Failed::Unknown(unavailable(
                        "the connection to the NATS server dropped before it acknowledged",
                    )));
                }
            }
        }
    }
}

fn publish_failed(e: async_nats::jetstream::context::PublishError) -> Failed {
    use async_nats::jetstream::context::PublishErrorKind;
    match e.kind() {
        PublishErrorKind::WrongLastSequence | PublishErrorKind::WrongLastMessageId => Failed::Retry,
        PublishErrorKind::StreamNotFound => Failed::Refused(unavailable(
            "the JetStream stream is gone (deleted while the store was open)",
        )),
        _ => Failed::Unknown(unavailable(&format!("publishing an event: {e}"))),
    }
}

/// What the requests decided before the current one in a chunk wrote.
#[derive(Default)]
struct Tentative {
    streams: HashMap<String, StreamHead>,
    events: HashMap<Uuid, EventLoc>,
    keys: HashSet<String>,
    fences: HashMap<String, u64>,
}

impl Tentative {
    fn locate(&self, found: &Found, id: &Uuid) -> Option<EventLoc> {
        self.events
            .get(id)
            .or_else(|| found.events.get(id))
            .cloned()
    }

    /// The answer to `r` when it writes nothing (a refusal, or a retry of an append already
    /// stored), or `None` when it writes. The same rules, in the same order, as the SQL stores.
    fn verdict(
        &self,
        r: &AppendRequest,
        current: u64,
        found: &Found,
    ) -> Option<Result<AppendOutcome, StoreError>> {
        let retried = || self.retried(r, found);
        if !r.expected.matches(current) {
            return Some(retried().unwrap_or_else(|| {
                Err(StoreError::VersionConflict {
                    stream_id: r.stream_id.clone(),
                    expected: r.expected,
                    actual: current,
                })
            }));
        }
        if r.expected == ExpectedVersion::Any {
            if let Some(outcome) = retried() {
                return Some(outcome);
            }
        }
        if let Some(f) = &r.fence {
            let held = self
                .fences
                .get(&f.resource)
                .or_else(|| found.fences.get(&f.resource))
                .copied();
            if let Some(held) = held.filter(|held| f.token < *held) {
                return Some(Err(StoreError::Fenced {
                    resource: f.resource.clone(),
                    presented: f.token,
                    current: held,
                }));
            }
        }
        if let Some(i) = &r.idempotency {
            if self.keys.contains(&i.key) || found.keys.contains_key(&i.key) {
                return Some(Err(StoreError::IdempotencyKeyUsed { key: i.key.clone() }));
            }
        }
        for e in &r.events {
            if let Some(loc) = self.locate(found, &e.event_id) {
                return Some(Err(StoreError::EventIdReused {
                    event_id: e.event_id,
                    stream_id: loc.stream,
                }));
            }
        }
        None
    }

    /// When `r`'s first event is stored: the outcome of a retry (same ids, same stream, same
    /// order, at the place the expectation names), or the refusal of a reused id.
    fn retried(
        &self,
        r: &AppendRequest,
        found: &Found,
    ) -> Option<Result<AppendOutcome, StoreError>> {
        let first = self.locate(found, &r.events[0].event_id)?;
        let reused = || StoreError::EventIdReused {
            event_id: r.events[0].event_id,
            stream_id: first.stream.clone(),
        };
        let expected_ok = match r.expected {
            ExpectedVersion::Any => true,
            other => other.matches(first.version - 1),
        };
        if first.stream != r.stream_id || !expected_ok {
            return Some(Err(reused()));
        }
        let mut last_position = first.position;
        for (i, e) in r.events.iter().enumerate() {
            match self.locate(found, &e.event_id) {
                Some(loc)
                    if loc.stream == r.stream_id && loc.version == first.version + i as u64 =>
                {
                    last_position = loc.position;
                }
                _ => return Some(Err(reused())),
            }
        }
        Some(Ok(AppendOutcome {
            stream_version: first.version + r.events.len() as u64 - 1,
            first_position: first.position,
            last_position,
            duplicate: true,
        }))
    }
}
