//! The single writer thread: group commit of every waiting job in one transaction.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use chrono::Utc;
use eventfold_core::read_model::ProjectionCommit;
use eventfold_core::{
    AppendOutcome, AppendRequest, ArchiveStub, ExpectedVersion, ProjectionMaintenance,
    RestoredPayload, StoreError,
};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{oneshot, watch};

use eventfold_core::chain::{stored_hash, Content, Hash, ZERO_HASH};

use crate::read_model::maintain_projection;
use crate::{backend, micros, Counters};

mod statements;
use statements::{
    archive, commit_projections, duplicate_outcome, first_event_location, restore, write_events,
};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Work for the writer; each job runs in its own savepoint inside the group's transaction.
pub(crate) enum Job {
    Append(Vec<Incoming>, Reply<Vec<Result<AppendOutcome, StoreError>>>),
    SaveCheckpoint(String, u64, Reply<()>),
    CommitProjections(Vec<ProjectionCommit>, Reply<()>),
    MaintainProjection(ProjectionMaintenance, Reply<()>),
    Archive(Vec<ArchiveStub>, Reply<u64>),
    Restore(Vec<RestoredPayload>, Reply<u64>),
    InsertNotifications(Vec<eventfold_core::Notification>, Reply<u64>),
}

impl Job {
    /// Append requests in the job (each one a client waiting to send its next).
    fn appends(&self) -> usize {
        match self {
            Job::Append(requests, _) => requests.len(),
            _ => 0,
        }
    }

    fn weight(&self) -> usize {
        match self {
            Job::Append(requests, _) => requests.len(),
            Job::CommitProjections(commits, _) => commits.len(),
            Job::Archive(stubs, _) => stubs.len(),
            Job::Restore(payloads, _) => payloads.len(),
            _ => 1,
        }
    }
}

/// An append request as the writer takes it: stamped with its ingest time when the store
/// received it and, with the hash chain on, carrying its events' content digests
/// ([`Content::digest`]) when the request names the version it follows (`NoStream` or `Exact`).
/// The digests are computed on the caller's thread, so the single writer, which every append
/// waits on, only links them; it computes them itself when they do not apply.
pub(crate) struct Incoming {
    request: AppendRequest,
    /// Ingest time, microseconds since the Unix epoch (UTC).
    ingest_us: i64,
    /// Content digests of the events at versions `after + 1 ..`, one per event, or none.
    digests: Vec<Hash>,
    /// The stream version the digests assume the events follow.
    after: u64,
}

impl Incoming {
    /// `request` received now; digests computed when `chain` is on and the version is known.
    pub(crate) fn new(request: AppendRequest, chain: bool) -> Self {
        let ingest_us = micros(Utc::now());
        let after = match request.expected {
            ExpectedVersion::NoStream => Some(0),
            ExpectedVersion::Exact(v) => Some(v),
            ExpectedVersion::Any => None,
        };
        let digests = match after {
            Some(after) if chain => (1..)
                .zip(&request.events)
                .map(|(i, e)| Content::of_new(&request.stream_id, after + i, e, ingest_us).digest())
                .collect(),
            _ => Vec::new(),
        };
        Self {
            request,
            ingest_us,
            digests,
            after: after.unwrap_or(0),
        }
    }

    /// The digest of event `i` when it is appended after stream version `current`.
    fn digest(&self, i: usize, current: u64) -> Hash {
        match self.digests.get(i) {
            Some(d) if self.after == current => *d,
            _ => {
                let version = current + 1 + i as u64;
                let event = &self.request.events[i];
                Content::of_new(&self.request.stream_id, version, event, self.ingest_us).digest()
            }
        }
    }
}

/// A job's result, held until the group's commit decides whether it stands.
enum Done {
    Append(
        Vec<Result<AppendOutcome, StoreError>>,
        Reply<Vec<Result<AppendOutcome, StoreError>>>,
    ),
    Unit(Result<(), StoreError>, Reply<()>),
    Count(Result<u64, StoreError>, Reply<u64>),
}

pub(crate) struct Writer {
    conn: Connection,
    jobs: mpsc::Receiver<Job>,
    head: watch::Sender<u64>,
    max_batch: usize,
    /// Stream versions and last hashes as this writer last wrote or read them. Valid while no
    /// other connection has committed: `PRAGMA data_version` changes when one has, and then the
    /// cache is dropped.
    versions: RefCell<HashMap<String, (u64, Hash)>>,
    /// The log's head `(position, hash)` as this writer last wrote or read it; dropped with
    /// `versions`.
    log_head: Cell<Option<(u64, Hash)>>,
    /// Whether appends compute the hash chain.
    chain: bool,
    data_version: Cell<i64>,
    counters: Arc<Counters>,
    /// Rows in `stream_tail` as this writer last wrote or counted them; dropped with `versions`.
    tail_rows: Cell<Option<usize>>,
    /// Rows in `stream_tail` at which a group moves them into `stream_index`.
    tail_limit: usize,
    /// Set when an append without a savepoint failed on a store error: the group rolls back.
    half_written: Cell<bool>,
}

/// Longest the writer waits for more requests before committing a group (see `Writer::run`).
const COMMIT_DELAY: Duration = Duration::from_micros(100);

/// Most stream versions cached before the cache is cleared.
const MAX_CACHED_STREAMS: usize = 200_000;

impl Writer {
    pub(crate) fn spawn(
        conn: Connection,
        jobs: mpsc::Receiver<Job>,
        head: watch::Sender<u64>,
        (max_batch, tail_limit): (usize, usize),
        chain: bool,
        counters: Arc<Counters>,
    ) -> Result<(), StoreError> {
        let writer = Writer {
            conn,
            jobs,
            head,
            max_batch: max_batch.max(1),
            versions: RefCell::new(HashMap::new()),
            log_head: Cell::new(None),
            chain,
            data_version: Cell::new(-1),
            counters,
            tail_rows: Cell::new(None),
            tail_limit: tail_limit.max(1),
            half_written: Cell::new(false),
        };
        std::thread::Builder::new()
            .name("eventfold-sqlite-writer".into())
            .spawn(move || writer.run())
            .map(|_| ())
            .map_err(|e| StoreError::Backend(Box::new(e)))
    }

    fn run(self) {
        // How many append requests the commit delay waits for (see below).
        let mut target = 1;
        while let Ok(first) = self.jobs.recv() {
            let mut appends = first.appends();
            let mut weight = first.weight();
            let mut group = vec![first];
            // Commit delay (PostgreSQL's commit_delay, made adaptive): when recent groups were
            // shared, the clients they answered are about to send again; give them up to
            // COMMIT_DELAY to make `target` append requests, so they share this fsync too. The
            // target follows the groups up at once and down by one per group that the delay
            // did not fill: following the last group down at once let one slow client set the
            // size of every group after it (16 clients settled at groups of 10). Other jobs
            // (projection commits) count for the batch limit but not for the target: they do not
            // come back when answered.
            let deadline = (target > 1).then(|| Instant::now() + COMMIT_DELAY);
            while weight < self.max_batch {
                match self.jobs.try_recv() {
                    Ok(job) => {
                        appends += job.appends();
                        weight += job.weight();
                        group.push(job);
                    }
                    Err(_) => match deadline {
                        Some(d) if appends < target && Instant::now() < d => {
                            std::thread::yield_now();
                        }
                        _ => break,
                    },
                }
            }
            target = if appends >= target {
                appends.max(1)
            } else {
                (target - 1).max(appends).max(1)
            };
            self.commit_group(group);
        }
    }

    fn commit_group(&self, group: Vec<Job>) {
        if let Err(e) = self.exec("BEGIN IMMEDIATE") {
            let message = format!("cannot begin a write transaction: {e}");
            tracing::warn!(%message, "sqlite group commit");
            for job in group {
                fail(job, &message);
            }
            return;
        }
        self.check_data_version();
        let requests: usize = group
            .iter()
            .map(|j| match j {
                Job::Append(r, _) => r.len(),
                _ => 0,
            })
            .sum();
        let done: Vec<Done> = group.into_iter().map(|job| self.run_job(job)).collect();
        self.move_tail_if_full();
        // A request appended without a savepoint that failed on a store error may have written
        // its event and not its stream tail row: then nothing of the group may stand.
        let commit = if self.half_written.replace(false) {
            Err("an append without a savepoint failed after its first write".to_owned())
        } else {
            self.exec("COMMIT").map_err(|e| e.to_string())
        };
        match commit {
            Ok(()) => {
                self.counters.commits.fetch_add(1, Relaxed);
                self.counters
                    .append_requests
                    .fetch_add(requests as u64, Relaxed);
                // The log head the group's appends left (cached); read only when not known.
                let head = match self.log_head.get() {
                    Some((position, _)) => position,
                    None => self
                        .conn
                        .prepare_cached("SELECT coalesce(max(position), 0) FROM events")
                        .and_then(|mut s| s.query_row([], |r| r.get(0)))
                        .unwrap_or(0),
                };
                eventfold_store_support::head::advance(&self.head, head);
                for d in done {
                    match d {
                        Done::Append(results, reply) => {
                            let _ = reply.send(Ok(results));
                        }
                        Done::Unit(result, reply) => {
                            let _ = reply.send(result);
                        }
                        Done::Count(result, reply) => {
                            let _ = reply.send(result);
                        }
                    }
                }
            }
            Err(e) => {
                let _ = self.exec("ROLLBACK");
                self.forget_heads();
                let message = format!("group commit failed, nothing was written: {e}");
                tracing::warn!(%message, "sqlite group commit");
                for d in done {
                    match d {
                        Done::Append(_, reply) => {
                            let _ = reply.send(Err(unavailable(&message)));
                        }
                        Done::Unit(_, reply) => {
                            let _ = reply.send(Err(unavailable(&message)));
                        }
                        Done::Count(_, reply) => {
                            let _ = reply.send(Err(unavailable(&message)));
                        }
                    }
                }
            }
        }
    }

    /// Drops the version cache when another connection committed since this writer last looked.
    fn check_data_version(&self) {
        let version = self
            .conn
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .unwrap_or(-2);
        if version != self.data_version.get() || self.versions.borrow().len() > MAX_CACHED_STREAMS {
            self.forget_heads();
            self.data_version.set(version);
        }
    }

    fn run_job(&self, job: Job) -> Done {
        match job {
            Job::Append(requests, reply) => {
                let results = requests
                    .into_iter()
                    .map(|incoming| {
                        // One event without an idempotency record is refused on input before it
                        // writes (a stale version, a reused event id) and needs no savepoint;
                        // a store error after its event's row fails the whole group.
                        let r = &incoming.request;
                        if r.events.len() == 1 && r.idempotency.is_none() && r.fence.is_none() {
                            let result = self.append_one(&incoming);
                            if matches!(result, Err(StoreError::Backend(_))) {
                                self.half_written.set(true);
                            }
                            result
                        } else {
                            self.in_savepoint(|_| self.append_one(&incoming))
                        }
                    })
                    .collect();
                Done::Append(results, reply)
            }
            Job::SaveCheckpoint(name, position, reply) => {
                let result = self.in_savepoint(|c| {
                    c.prepare_cached(
                        "INSERT INTO checkpoints (name, position) VALUES (?1, ?2) \
                         ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                    )
                    .and_then(|mut s| s.execute(params![name, position]))
                    .map(|_| ())
                    .map_err(backend)
                });
                Done::Unit(result, reply)
            }
            Job::CommitProjections(commits, reply) => {
                Done::Unit(self.in_savepoint(|c| commit_projections(c, commits)), reply)
            }
            Job::MaintainProjection(change, reply) => Done::Unit(
                self.in_savepoint(|c| maintain_projection(c, &change)),
                reply,
            ),
            Job::Archive(stubs, reply) => {
                Done::Count(self.in_savepoint(|c| archive(c, &stubs)), reply)
            }
            Job::Restore(payloads, reply) => {
                Done::Count(self.in_savepoint(|c| restore(c, &payloads)), reply)
            }
            Job::InsertNotifications(rows, reply) => Done::Count(
                self.in_savepoint(|c| crate::notifications::insert(c, &rows)),
                reply,
            ),
        }
    }

    fn in_savepoint<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.exec("SAVEPOINT job").map_err(backend)?;
        let result = f(&self.conn);
        if result.is_err() {
            self.exec("ROLLBACK TO job").map_err(backend)?;
        }
        self.exec("RELEASE job").map_err(backend)?;
        result
    }

    /// Runs a parameterless statement through the statement cache (no re-parsing).
    fn exec(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
    }

    /// Drops the cached stream and log heads (read again from the database when next needed).
    fn forget_heads(&self) {
        self.versions.borrow_mut().clear();
        self.log_head.set(None);
        self.tail_rows.set(None);
    }

    /// The stream index: every appended event gets a row `(stream_id, stream_version,
    /// position)` in `stream_tail`, a table of a few pages; once it holds `tail_limit` rows, the
    /// group moves them into `stream_index` in one sorted insert (one leaf page per stream it
    /// names, once per `tail_limit` events instead of once per commit) and empties it. Readers
    /// look a stream up in both, in one statement. A move that fails (it would only if a
    /// version were in both tables, which the version check prevents) is rolled back on its
    /// own, logged, and tried again by the next group; the events stay readable through the
    /// tail.
    fn move_tail_if_full(&self) {
        let rows = match self.tail_rows.get() {
            Some(rows) => rows,
            None => match self
                .conn
                .prepare_cached("SELECT count(*) FROM stream_tail")
                .and_then(|mut s| s.query_row([], |r| r.get::<_, usize>(0)))
            {
                Ok(rows) => {
                    self.tail_rows.set(Some(rows));
                    rows
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot count the stream tail");
                    return;
                }
            },
        };
        if rows < self.tail_limit {
            return;
        }
        let moved = self.in_savepoint(|c| {
            c.prepare_cached(
                "INSERT INTO stream_index (stream_id, stream_version, position) \
                 SELECT stream_id, stream_version, position FROM stream_tail",
            )
            .and_then(|mut s| s.execute([]))
            .and_then(|_| c.prepare_cached("DELETE FROM stream_tail"))
            .and_then(|mut s| s.execute([]))
            .map_err(backend)
        });
        match moved {
            Ok(_) => self.tail_rows.set(Some(0)),
            Err(e) => {
                tracing::error!(error = %e, rows, "cannot move the stream tail into the stream index")
            }
        }
    }

    /// The log's last position and its event's hash ([`ZERO_HASH`] for an empty log or an
    /// event without one).
    fn log_head(&self) -> Result<(u64, Hash), StoreError> {
        if let Some(head) = self.log_head.get() {
            return Ok(head);
        }
        let head = self
            .conn
            .prepare_cached("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")
            .and_then(|mut s| {
                s.query_row([], |r| {
                    Ok((r.get::<_, u64>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
                })
                .optional()
            })
            .map_err(backend)?
            .map_or((0, ZERO_HASH), |(p, h)| (p, stored_hash(h)));
        self.log_head.set(Some(head));
        Ok(head)
    }

    /// The stream's version and its last event's hash ([`ZERO_HASH`] for a new stream or an
    /// event without one).
    fn stream_head(&self, stream_id: &str) -> Result<(u64, Hash), StoreError> {
        if let Some(v) = self.versions.borrow().get(stream_id) {
            return Ok(*v);
        }
        let head = self
            .conn
            .prepare_cached(
                "SELECT e.stream_version, e.hash FROM events e WHERE e.position = coalesce(\
                 (SELECT position FROM stream_tail WHERE stream_id = ?1 \
                  ORDER BY stream_version DESC LIMIT 1), \
                 (SELECT position FROM stream_index WHERE stream_id = ?1 \
                  ORDER BY stream_version DESC LIMIT 1))",
            )
            .and_then(|mut s| {
                s.query_row([stream_id], |r| {
                    Ok((r.get::<_, u64>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
                })
                .optional()
            })
            .map_err(backend)?;
        let head = head.map_or((0, ZERO_HASH), |(v, h)| (v, stored_hash(h)));
        self.versions
            .borrow_mut()
            .insert(stream_id.to_owned(), head);
        Ok(head)
    }

    /// Appends one request inside the group's transaction. Writes happen only after every check
    /// passed; the event inserts are the only writes that can fail on input (a reused event id).
    fn append_one(&self, incoming: &Incoming) -> Result<AppendOutcome, StoreError> {
        let conn = &self.conn;
        let request = &incoming.request;
        request.validate()?;
        let (current, stream_hash) = self.stream_head(&request.stream_id)?;
        let retried = || -> Result<Option<AppendOutcome>, StoreError> {
            match first_event_location(conn, request)? {
                Some((stream, version, position)) => {
                    duplicate_outcome(conn, request, stream, version, position).map(Some)
                }
                None => Ok(None),
            }
        };
        if !request.expected.matches(current) {
            // A retry of an append that already happened looks like a conflict: tell them apart.
            return match retried()? {
                Some(outcome) => Ok(outcome),
                None => Err(StoreError::VersionConflict {
                    stream_id: request.stream_id.clone(),
                    expected: request.expected,
                    actual: current,
                }),
            };
        }
        if request.expected == ExpectedVersion::Any {
            if let Some(outcome) = retried()? {
                return Ok(outcome);
            }
        }
        let heads = (self.log_head()?, (current, stream_hash));
        let (outcome, last_hash) = write_events(conn, incoming, heads, self.chain)?;
        if let Some(rows) = self.tail_rows.get() {
            self.tail_rows.set(Some(rows + request.events.len()));
        }
        self.versions.borrow_mut().insert(
            request.stream_id.clone(),
            (outcome.stream_version, last_hash),
        );
        self.log_head.set(Some((outcome.last_position, last_hash)));
        Ok(outcome)
    }
}

fn unavailable(message: &str) -> StoreError {
    StoreError::Unavailable(message.to_owned().into())
}

fn fail(job: Job, message: &str) {
    match job {
        Job::Append(_, reply) => {
            let _ = reply.send(Err(unavailable(message)));
        }
        Job::SaveCheckpoint(_, _, reply)
        | Job::CommitProjections(_, reply)
        | Job::MaintainProjection(_, reply) => {
            let _ = reply.send(Err(unavailable(message)));
        }
        Job::Archive(_, reply) | Job::Restore(_, reply) | Job::InsertNotifications(_, reply) => {
            let _ = reply.send(Err(unavailable(message)));
        }
    }
}

#[cfg(test)]
mod tests {
    use eventfold_core::{Actor, NewEvent};

    use super::*;

    fn event(n: u32) -> NewEvent {
        eventfold_core::testkit::event(
            "Tested",
            Actor::parse("user:1").unwrap(),
            format!("{{\"n\":{n}}}"),
        )
    }

    fn content_digest(incoming: &Incoming, i: usize, version: u64) -> Hash {
        let r = &incoming.request;
        Content::of_new(&r.stream_id, version, &r.events[i], incoming.ingest_us).digest()
    }

    #[test]
    fn digests_from_the_caller_are_the_content_digests_at_the_versions_they_assumed() {
        let request =
            AppendRequest::new("s-1", ExpectedVersion::Exact(4), vec![event(1), event(2)]);
        let incoming = Incoming::new(request, true);
        assert_eq!(incoming.digests.len(), 2);
        assert_eq!(incoming.digest(1, 4), content_digest(&incoming, 1, 6));
        // The stream moved (an `Exact` request never writes then, but the digest stays right).
        assert_eq!(incoming.digest(1, 5), content_digest(&incoming, 1, 7));
        assert_ne!(incoming.digest(1, 5), incoming.digest(1, 4));
    }

    #[test]
    fn any_and_a_chain_turned_off_leave_the_digests_to_the_writer() {
        let any = Incoming::new(
            AppendRequest::new("s-1", ExpectedVersion::Any, vec![event(1)]),
            true,
        );
        assert!(any.digests.is_empty());
        assert_eq!(any.digest(0, 9), content_digest(&any, 0, 10));
        let off = Incoming::new(
            AppendRequest::new("s-1", ExpectedVersion::NoStream, vec![event(1)]),
            false,
        );
        assert!(off.digests.is_empty());
        assert_eq!(off.digest(0, 0), content_digest(&off, 0, 1));
    }
}
