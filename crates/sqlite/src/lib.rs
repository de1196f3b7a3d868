//! eventfold-sqlite: the embedded default event store, one SQLite file.
//!
//! - WAL mode with `synchronous=FULL`: an append is on disk (fsynced) when it returns, so a
//!   `kill -9` right after loses nothing.
//! - **Group commit**: one writer thread owns the only write connection; it takes every append that
//!   is waiting, runs each in its own savepoint (so one conflict does not fail the others), and
//!   commits them all with one fsync. Concurrent commands share the fsync instead of queueing for it.
//! - Global positions are the `events` table's rowid, assigned by that single writer inside its
//!   transaction: a reader can never see position `n + 1` before `n`, so tailing the log by position
//!   never skips an event.
//! - Reads use a pool of read-only connections (WAL readers never block the writer).
//! - Read models and checkpoints live in the same file ([`eventfold_core::ReadModelStore`]), so a
//!   projection's documents and checkpoint commit in one transaction.

#[macro_use]
mod rows;
mod migrate;
mod notifications;
mod read_model;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use eventfold_core::chain::ChainRow;
use eventfold_core::{
    AppendOutcome, AppendRequest, ArchiveStub, CheckpointStore, EventStore, IdempotencyRecord,
    RecordedEvent, ReplayEvent, RestoredPayload, SchemaVersion, StoreError, StoredResponse,
};
use eventfold_store_support::{head, sql_limit as limit};
use migrate::migrate;
use rows::{
    query_chain, query_chain_into, query_events, stream_capacity, READ_ALL_SQL, READ_CHAIN_SQL,
    READ_STREAM_CHAIN_SQL, READ_STREAM_SQL, REPLAY_STREAM_SQL, STREAM_VERSION_SQL,
};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{oneshot, watch};
use writer::{Incoming, Job, Writer};

pub(crate) use read_model::read_checkpoint;

/// Settings for [`SqliteStore::open_with`].
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// Most append requests committed in one transaction (default 4,096).
    pub max_batch_requests: usize,
    /// How often a waiting subscriber re-reads when nothing was appended by this process, to see
    /// appends by other processes (default 100 ms).
    pub poll_interval: Duration,
    /// How long a statement waits for another process's write lock (default 5 s).
    pub busy_timeout: Duration,
    /// How often the background checkpointer copies the WAL into the database file (default
    /// 200 ms). Checkpoints run off the commit path; SQLite's own auto-checkpoint stays on as a
    /// safety net at [`SqliteConfig::wal_autocheckpoint_pages`].
    pub checkpoint_interval: Duration,
    /// WAL size, in pages, at which a commit checkpoints by itself (default 20,000, about 80 MB).
    pub wal_autocheckpoint_pages: u32,
    /// Whether appends compute the hash chain (default true). Off only to measure what the
    /// chain costs (`bench append --hash-chain off`): events appended with it off have no hashes
    /// and `eventfold verify` reports the first of them.
    pub hash_chain: bool,
    /// Events appended between two moves of the stream tail into the stream index (default
    /// 256; see ARCHITECTURE.md, "The SQLite stream index"): a commit writes the tail's few
    /// pages instead of one index page per stream it touches. Larger batches write fewer index
    /// pages; reads look a stream up in both tables whatever the size.
    pub stream_tail_rows: usize,
    /// Page cache per connection, in KiB (default 65,536: 64 MiB, for replays of long streams).
    /// A process that only writes small tables (the notification sink) needs far less.
    pub cache_kib: u32,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            max_batch_requests: 4_096,
            poll_interval: Duration::from_millis(100),
            busy_timeout: Duration::from_secs(5),
            checkpoint_interval: Duration::from_millis(200),
            wal_autocheckpoint_pages: 20_000,
            hash_chain: true,
            stream_tail_rows: 256,
            cache_kib: 65_536,
        }
    }
}

/// The SQLite event store and read-model store. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// Counters of the writer thread since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed (each one fsync of the WAL).
    pub commits: u64,
    /// Append requests committed (successful or refused) in those transactions.
    pub append_requests: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) commits: std::sync::atomic::AtomicU64,
    pub(crate) append_requests: std::sync::atomic::AtomicU64,
}

struct Inner {
    path: PathBuf,
    counters: Arc<Counters>,
    jobs: Mutex<mpsc::Sender<Job>>,
    readers: Mutex<Vec<Connection>>,
    head: watch::Receiver<u64>,
    config: SqliteConfig,
    schema: SchemaVersion,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` with default settings, applying migrations.
    ///
    /// # Errors
    /// The file cannot be opened or migrated.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteConfig::default())
    }

    /// Opens (creating if needed) the store at `path`, applying migrations.
    ///
    /// # Errors
    /// The file cannot be opened or migrated.
    pub fn open_with(path: impl AsRef<Path>, config: SqliteConfig) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = open_connection(&path, false, &config)?;
        let schema = migrate(&conn)?;
        conn.pragma_update(None, "wal_autocheckpoint", config.wal_autocheckpoint_pages)
            .map_err(backend)?;
        let head: u64 = conn
            .query_row("SELECT coalesce(max(position), 0) FROM events", [], |r| {
                r.get(0)
            })
            .map_err(backend)?;
        let (head_tx, head_rx) = head::channel(head);
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        Writer::spawn(
            conn,
            jobs_rx,
            head_tx,
            (config.max_batch_requests, config.stream_tail_rows),
            config.hash_chain,
            counters.clone(),
        )?;
        let checkpointer = open_connection(&path, false, &config)?;
        spawn_checkpointer(checkpointer, head_rx.clone(), config.checkpoint_interval)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                counters,
                jobs: Mutex::new(jobs_tx),
                readers: Mutex::new(Vec::new()),
                head: head_rx,
                config,
                schema,
            }),
        })
    }

    /// The schema version found on opening and the one it is at now (migrations applied).
    pub fn schema_version(&self) -> SchemaVersion {
        self.inner.schema
    }

    /// What the writer has done since the store was opened: the number of commits against the
    /// number of append requests shows how many commands share each fsync (group commit).
    pub fn writer_stats(&self) -> WriterStats {
        use std::sync::atomic::Ordering::Relaxed;
        WriterStats {
            commits: self.inner.counters.commits.load(Relaxed),
            append_requests: self.inner.counters.append_requests.load(Relaxed),
        }
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn write<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .jobs
            .lock()
            .expect("jobs lock")
            .send(make(tx))
            .map_err(|_| StoreError::Unavailable("sqlite writer thread has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("sqlite writer thread has stopped".into()))?
    }

    /// Runs `f` on a pooled read-only connection in the blocking thread pool: for reads of
    /// unknown size (a stream, a page of the log, a count over it).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || with_reader(&inner, f))
            .await
            .map_err(|e| StoreError::Backend(Box::new(e)))?
    }

    /// Runs `f` on a pooled read-only connection on the calling thread: for reads bounded to a
    /// few rows (one key, a version, at most [`INLINE_ROWS`] documents), which take a few tens of
    /// microseconds, less than the two thread switches of a trip through the blocking pool
    /// (`bench http`: a point read answered 1.5-2x as often this way). A WAL reader never waits
    /// for the writer, so the thread is not held for long. Each read spends a unit of the task's
    /// cooperative budget, as a socket read would: a loop of reads that are all ready at once
    /// still lets the other futures of its task (and the runtime's other tasks) run.
    async fn read_now<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = with_reader(&self.inner, f);
        tokio::task::coop::consume_budget().await;
        result
    }
}

/// Most rows a read runs on the calling thread ([`SqliteStore::read_now`]); larger ones go to
/// the blocking pool.
pub(crate) const INLINE_ROWS: usize = 256;

/// `f` on a read-only connection from `inner`'s pool (a new one when none is free), returned to
/// the pool afterwards.
fn with_reader<T>(
    inner: &Inner,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let pooled = inner.readers.lock().expect("readers lock").pop();
    let conn = match pooled {
        Some(c) => c,
        None => open_connection(&inner.path, true, &inner.config)?,
    };
    // One read transaction around all of `f`'s statements: they read one snapshot, and the
    // database file's shared lock (an `fcntl` call to take and another to drop, a tenth of a
    // point read's time under `bench http`) is taken once, not once per statement.
    let run = |conn: &Connection| -> Result<T, StoreError> {
        let step = |sql: &str| {
            conn.prepare_cached(sql)
                .and_then(|mut s| s.execute([]))
                .map_err(backend)
        };
        step("BEGIN")?;
        let result = f(conn);
        let end = step(if result.is_ok() { "COMMIT" } else { "ROLLBACK" });
        result.and_then(|value| end.map(|_| value))
    };
    let result = run(&conn);
    // A connection whose transaction could not be ended is not reused.
    if conn.is_autocommit() {
        inner.readers.lock().expect("readers lock").push(conn);
    }
    result
}

/// Copies the WAL into the database file in the background (`PRAGMA wal_checkpoint(PASSIVE)`:
/// never blocks the writer or readers) after appends, at most once per `interval`. Stops when the
/// store is dropped (the head channel closes).
fn spawn_checkpointer(
    conn: Connection,
    mut head: watch::Receiver<u64>,
    interval: Duration,
) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("eventfold-sqlite-checkpoint".into())
        .spawn(move || {
            let mut last = *head.borrow_and_update();
            loop {
                std::thread::sleep(interval);
                match head.has_changed() {
                    Err(_) => return,
                    Ok(false) => continue,
                    Ok(true) => {}
                }
                let now = *head.borrow_and_update();
                if now != last {
                    last = now;
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::warn!(error = %e, "sqlite checkpoint failed; the writer's auto-checkpoint remains");
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(|e| StoreError::Backend(Box::new(e)))
}

fn open_connection(
    path: &Path,
    read_only: bool,
    config: &SqliteConfig,
) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(|e| {
        StoreError::Unavailable(format!("cannot open sqlite file {}: {e}", path.display()).into())
    })?;
    conn.busy_timeout(config.busy_timeout).map_err(backend)?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
    }
    // FULL: every commit fsyncs the WAL, so an acknowledged append survives a crash or power loss.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(backend)?;
    // A negative cache_size is in KiB.
    conn.pragma_update(None, "cache_size", -i64::from(config.cache_kib))
        .map_err(backend)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

pub(crate) fn backend(e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::CannotOpen) => {
            StoreError::Unavailable(Box::new(e))
        }
        _ => StoreError::Backend(Box::new(e)),
    }
}

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// A stored timestamp; `place` names the row in the error (e.g. `position 42`).
fn from_micros(
    us: i64,
    what: &str,
    place: impl std::fmt::Display,
) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| StoreError::Corrupt(format!("{place}: {what} {us} out of range")))
}

#[async_trait]
impl CheckpointStore for SqliteStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.read_now(|conn| read_checkpoint(conn, name)).await
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(|reply| Job::SaveCheckpoint(name, position, reply))
            .await
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        request.validate()?;
        let incoming = vec![Incoming::new(request, self.inner.config.hash_chain)];
        let mut results = self.write(|reply| Job::Append(incoming, reply)).await?;
        results.pop().expect("one result per request")
    }

    async fn append_many(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let chain = self.inner.config.hash_chain;
        let incoming = requests
            .into_iter()
            .map(|r| Incoming::new(r, chain))
            .collect();
        self.write(|reply| Job::Append(incoming, reply)).await
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stream_id = stream_id.to_owned();
        self.read(move |conn| {
            // Size the result once: the stream's version bounds how many events come back.
            let capacity = stream_capacity(conn, &stream_id, from_version, max_count)?;
            query_events(
                conn,
                READ_STREAM_SQL,
                params![stream_id, from_version, limit(max_count)],
                capacity,
            )
        })
        .await
    }

    async fn read_stream_for_replay(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<ReplayEvent>, StoreError> {
        let stream_id = stream_id.to_owned();
        self.read(move |conn| {
            let capacity = stream_capacity(conn, &stream_id, from_version, max_count)?;
            let mut stmt = conn.prepare_cached(REPLAY_STREAM_SQL).map_err(backend)?;
            let mut rows = stmt
                .query(params![stream_id, from_version, limit(max_count)])
                .map_err(backend)?;
            let mut out = Vec::with_capacity(capacity);
            while let Some(row) = rows.next().map_err(backend)? {
                let version: u64 = row.get(0).map_err(backend)?;
                if row.get(5).map_err(backend)? {
                    return Err(StoreError::Archived {
                        stream_id,
                        version,
                        position: row.get(6).map_err(backend)?,
                    });
                }
                let payload: String = row.get(4).map_err(backend)?;
                if payload.is_empty() {
                    let position = row.get(6).map_err(backend)?;
                    return Err(StoreError::emptied_payload(&stream_id, version, position));
                }
                out.push(ReplayEvent {
                    stream_version: version,
                    event_type: row.get(1).map_err(backend)?,
                    schema_version: row.get(2).map_err(backend)?,
                    event_time: from_micros(
                        row.get(3).map_err(backend)?,
                        "event_time",
                        format_args!("stream {stream_id} version {version}"),
                    )?,
                    payload,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        self.read_now(|conn| {
            conn.prepare_cached(STREAM_VERSION_SQL)
                .and_then(|mut s| s.query_row([stream_id], |r| r.get(0)))
                .map_err(backend)
        })
        .await
    }

    async fn docs_and_stream_version(
        &self,
        storage: &str,
        keys: &[String],
        stream_id: &str,
    ) -> Result<Option<(Vec<(String, String)>, u64)>, StoreError> {
        if keys.len() > read_model::INLINE_KEYS {
            return Ok(None);
        }
        self.read_now(|conn| {
            let docs = read_model::docs_by_key(conn, storage, keys.iter().cloned())?;
            let version = conn
                .prepare_cached(STREAM_VERSION_SQL)
                .and_then(|mut s| s.query_row([stream_id], |r| r.get(0)))
                .map_err(backend)?;
            Ok(Some((docs, version)))
        })
        .await
    }

    async fn read_all(
        &self,
        after_position: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read(move |conn| {
            query_events(
                conn,
                READ_ALL_SQL,
                params![after_position, limit(max_count)],
                max_count.min(10_000),
            )
        })
        .await
    }

    async fn read_chain_into(
        &self,
        after_position: u64,
        max_count: usize,
        rows: &mut Vec<ChainRow>,
    ) -> Result<(), StoreError> {
        let limit = limit(max_count);
        let mut batch = std::mem::take(rows);
        *rows = self
            .read(move |conn| {
                query_chain_into(
                    conn,
                    READ_CHAIN_SQL,
                    params![after_position, limit],
                    &mut batch,
                )?;
                Ok(batch)
            })
            .await?;
        Ok(())
    }

    async fn read_stream_chain(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<ChainRow>, StoreError> {
        let stream_id = stream_id.to_owned();
        let limit = limit(max_count);
        self.read(move |conn| {
            query_chain(
                conn,
                READ_STREAM_CHAIN_SQL,
                params![stream_id, from_version, limit],
                max_count,
            )
        })
        .await
    }

    async fn archive_events(&self, stubs: Vec<ArchiveStub>) -> Result<u64, StoreError> {
        self.write(|reply| Job::Archive(stubs, reply)).await
    }

    async fn restore_events(&self, payloads: Vec<RestoredPayload>) -> Result<u64, StoreError> {
        self.write(|reply| Job::Restore(payloads, reply)).await
    }

    async fn archived_after(&self, position: u64) -> Result<u64, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT count(*) FROM events WHERE position > ?1 AND archived_digest IS NOT NULL",
            )
            .and_then(|mut s| s.query_row([position], |r| r.get(0)))
            .map_err(backend)
        })
        .await
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        self.read_now(|conn| {
            conn.query_row("SELECT coalesce(max(position), 0) FROM events", [], |r| {
                r.get(0)
            })
            .map_err(backend)
        })
        .await
    }

    async fn wait_for_append(&self, after_position: u64) {
        head::wait_after(
            &self.inner.head,
            after_position,
            self.inner.config.poll_interval,
        )
        .await;
    }

    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.read_now(|conn| {
            conn.prepare_cached(
                "SELECT fingerprint, status, body FROM idempotency_keys WHERE key = ?1",
            )
            .and_then(|mut s| {
                s.query_row([key], |r| {
                    Ok(IdempotencyRecord {
                        key: key.to_owned(),
                        fingerprint: r.get(0)?,
                        response: StoredResponse {
                            status: r.get(1)?,
                            body: r.get(2)?,
                        },
                    })
                })
                .optional()
            })
            .map_err(backend)
        })
        .await
    }
}
