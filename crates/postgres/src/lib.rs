//! eventfold-postgres: the production event store on PostgreSQL.
//!
//! - **Appends** go through one appender task per process (group commit: every waiting append in
//!   one transaction, one commit). Appending transactions of all processes are serialised by a
//!   transaction-level advisory lock; positions are assigned under it, so the global position never
//!   skips an event a reader may later see (see `appender.rs` and ARCHITECTURE.md).
//! - **Reads** use a connection pool.
//! - **Live subscriptions**: each commit does `pg_notify('eventfold_events', head)`; a listener task
//!   wakes waiting subscribers, who also re-read every poll interval when notifications are lost.
//! - Read models and checkpoints live in the same database, committed together.

mod appender;
mod copy;
mod listener;
mod migrate;
mod notifications;
mod read_model;
mod schema;
pub mod testing;

use std::sync::Arc;
use std::time::Duration;

use appender::{Appender, Counters, Job};
use async_trait::async_trait;
use eventfold_core::chain::ChainRow;
use eventfold_core::{
    Actor, AppendOutcome, AppendRequest, ArchiveStub, CheckpointStore, EventMetadata, EventStore,
    IdempotencyRecord, RecordedEvent, ReplayEvent, RestoredPayload, SchemaVersion, StoreError,
    StoredResponse,
};
use eventfold_store_support::{head, sql_int as version, sql_limit as limit};
use listener::listen;
use migrate::migrate;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot, watch};

/// The transaction-level advisory lock every appending transaction takes first ("eventfld" in
/// ASCII). Anything else that writes events must take it too, or positions may skip.
pub const APPEND_LOCK: i64 = 0x6576_656e_7466_6c64;

/// The channel commits notify, with the new head position as payload.
pub(crate) const NOTIFY_CHANNEL: &str = "eventfold_events";

/// Settings for [`PostgresStore::connect_with`].
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// Pooled connections for reads and read-model commits (default 16: as many as the
    /// requests a busy server reads for at once on two cores).
    pub max_connections: u32,
    /// Most append requests in one group commit (default 4,096).
    pub max_batch_requests: usize,
    /// How often a waiting subscriber re-reads without a notification (default 100 ms).
    pub poll_interval: Duration,
    /// Longest a read waits for a pooled connection, reconnecting meanwhile, before it fails
    /// with [`StoreError::Unavailable`] (HTTP 503 with Retry-After) (default 2 s).
    pub acquire_timeout: Duration,
    /// Whether appends compute the hash chain (default true). Off only to measure what the
    /// chain costs (`bench append --hash-chain off`): events appended with it off have no hashes
    /// and `eventfold verify` reports the first of them.
    pub hash_chain: bool,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            max_batch_requests: 4_096,
            poll_interval: Duration::from_millis(100),
            acquire_timeout: Duration::from_secs(2),
            hash_chain: true,
        }
    }
}

/// Counters of the appender since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppenderStats {
    /// Transactions committed.
    pub commits: u64,
    /// Append requests committed (successful or refused) in them.
    pub append_requests: u64,
}

/// The PostgreSQL event store and read-model store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// Whether the connecting user may take the [`TENANT_ROLE`], so fenced reads run under the
    /// row-level security policies (see [`PostgresStore::fenced`]).
    tenant_role: bool,
    jobs: mpsc::UnboundedSender<Job>,
    head: watch::Receiver<u64>,
    counters: Arc<Counters>,
    config: PostgresConfig,
    schema: SchemaVersion,
}

pub(crate) fn backend(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_) => StoreError::Unavailable(Box::new(e)),
        sqlx::Error::Database(db)
            if db
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57")) =>
        {
            StoreError::Unavailable(Box::new(e))
        }
        _ => StoreError::Backend(Box::new(e)),
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://...`) with default settings and applies migrations.
    ///
    /// # Errors
    /// The database cannot be reached, or its schema is newer than this eventfold.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresConfig::default()).await
    }

    /// Connects to `url` and applies migrations.
    ///
    /// # Errors
    /// The database cannot be reached, or its schema is newer than this eventfold.
    pub async fn connect_with(url: &str, config: PostgresConfig) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            // No ping before each use (a round trip per read): the pool already pings a
            // connection when it comes back, and closes it when that fails.
            .test_before_acquire(false)
            .connect(url)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}").into())
            })?;
        let schema = migrate(&pool).await?;
        let tenant_role: bool = sqlx::query_scalar(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) \
             THEN pg_has_role(current_user, $1, 'MEMBER') ELSE false END",
        )
        .bind(TENANT_ROLE)
        .fetch_one(&pool)
        .await
        .map_err(backend)?;
        if !tenant_role {
            tracing::warn!(
                role = TENANT_ROLE,
                "the tenant fence is off: the connecting user may not take the role eventfold_tenant \
                 (GRANT eventfold_tenant TO the user, or connect once as a user that may create roles); \
                 reads stay tenant-scoped by their ids"
            );
        }
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&pool)
            .await
            .map_err(backend)?;
        let (head_tx, head_rx) = head::channel(head as u64);
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        tokio::spawn(
            Appender {
                url: url.to_owned(),
                jobs: jobs_rx,
                head: head_tx.clone(),
                counters: counters.clone(),
                max_batch: config.max_batch_requests,
                chain: config.hash_chain,
            }
            .run(),
        );
        tokio::spawn(listen(url.to_owned(), head_tx));
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                tenant_role,
                jobs: jobs_tx,
                head: head_rx,
                counters,
                config,
                schema,
            }),
        })
    }

    /// The schema version found on connecting and the one it is at now (migrations applied).
    pub fn schema_version(&self) -> SchemaVersion {
        self.inner.schema
    }

    /// What the appender has done: commits against append requests shows how many commands share
    /// each commit.
    pub fn appender_stats(&self) -> AppenderStats {
        use std::sync::atomic::Ordering::Relaxed;
        AppenderStats {
            commits: self.inner.counters.commits.load(Relaxed),
            append_requests: self.inner.counters.append_requests.load(Relaxed),
        }
    }

    /// The connection pool (for tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// A transaction whose reads see only `tenant`'s events and read-model rows, whatever their
    /// `WHERE` clause: it sets `eventfold.tenant` and takes the role [`TENANT_ROLE`], to which the
    /// row-level security policies apply (both for this transaction only). Every read this store
    /// makes inside [`eventfold_core::tenant::fenced`] runs in one.
    ///
    /// # Errors
    /// The database cannot be reached; [`StoreError::InvalidRequest`] when the connecting user
    /// may not take the role (the fence is off: see the warning logged on connecting).
    pub async fn fenced(
        &self,
        tenant: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        if !self.inner.tenant_role {
            return Err(StoreError::InvalidRequest(format!(
                "the connecting user may not take the role {TENANT_ROLE}: the tenant fence is off"
            )));
        }
        // A tenant id of the usual characters goes into the BEGIN itself (one round trip per
        // fenced read instead of two); anything else is bound as a parameter.
        let plain = !tenant.is_empty()
            && tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if plain {
            return self
                .inner
                .pool
                .begin_with(format!(
                    "BEGIN; SELECT set_config('eventfold.tenant', '{tenant}', true), \
                     set_config('role', '{TENANT_ROLE}', true)"
                ))
                .await
                .map_err(backend);
        }
        let mut tx = self.inner.pool.begin().await.map_err(backend)?;
        sqlx::query(
            "SELECT set_config('eventfold.tenant', $1, true), set_config('role', $2, true)",
        )
        .bind(tenant)
        .bind(TENANT_ROLE)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        Ok(tx)
    }

    /// A connection for one read: inside [`eventfold_core::tenant::fenced`] (and with the role
    /// available) a [`PostgresStore::fenced`] transaction, otherwise a pooled connection.
    pub(crate) async fn read_conn(&self) -> Result<ReadConn, StoreError> {
        match eventfold_core::tenant::fence() {
            Some(tenant) if self.inner.tenant_role => {
                Ok(ReadConn::Fenced(self.fenced(&tenant).await?))
            }
            _ => Ok(ReadConn::Plain(
                self.inner.pool.acquire().await.map_err(backend)?,
            )),
        }
    }

    async fn submit(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .jobs
            .send(Job { requests, reply })
            .map_err(|_| StoreError::Unavailable("postgres appender has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("postgres appender has stopped".into()))?
    }
}

/// The role fenced reads take: the row-level security policies of the events and read-model
/// tables confine it to the rows of the tenant in the `eventfold.tenant` setting.
pub const TENANT_ROLE: &str = "eventfold_tenant";

/// A connection for one read (see [`PostgresStore::read_conn`]). A fenced transaction is
/// dropped, not committed, when the read is done: it wrote nothing, and the rollback travels
/// with the connection's next use.
pub(crate) enum ReadConn {
    Plain(sqlx::pool::PoolConnection<sqlx::Postgres>),
    Fenced(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl ReadConn {
    pub(crate) fn conn(&mut self) -> &mut sqlx::PgConnection {
        match self {
            Self::Plain(c) => c,
            Self::Fenced(t) => t,
        }
    }
}

const SELECT_EVENTS: &str =
    "SELECT position, stream_id, stream_version, event_id, event_type, schema_version, \
     event_time, ingest_time, actor, causation_id, correlation_id, tenant_id, payload, \
     archived_digest IS NOT NULL, via, backfill IS NOT NULL FROM events ";

fn row_to_event(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let position = row.try_get::<i64, _>(0).map_err(backend)? as u64;
    if row.try_get::<bool, _>(13).map_err(backend)? {
        return Err(StoreError::Archived {
            stream_id: row.try_get(1).map_err(backend)?,
            version: row.try_get::<i64, _>(2).map_err(backend)? as u64,
            position,
        });
    }
    let actor: String = row.try_get(8).map_err(backend)?;
    let via: Option<String> = row.try_get(14).map_err(backend)?;
    Ok(RecordedEvent {
        global_position: position,
        stream_id: row.try_get(1).map_err(backend)?,
        stream_version: row.try_get::<i64, _>(2).map_err(backend)? as u64,
        event_id: row.try_get(3).map_err(backend)?,
        event_type: row.try_get(4).map_err(backend)?,
        schema_version: row.try_get::<i32, _>(5).map_err(backend)? as u32,
        event_time: row.try_get(6).map_err(backend)?,
        ingest_time: row.try_get(7).map_err(backend)?,
        metadata: EventMetadata {
            actor: Actor::from_stored(actor)
                .map_err(|e| StoreError::Corrupt(format!("position {position}: {e}")))?,
            causation_id: row.try_get(9).map_err(backend)?,
            correlation_id: row.try_get(10).map_err(backend)?,
            tenant_id: row.try_get(11).map_err(backend)?,
            via: via
                .map(Actor::from_stored)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("position {position}: via {e}")))?,
            backfill: row.try_get(15).map_err(backend)?,
        },
        payload: row.try_get(12).map_err(backend)?,
    })
}

impl PostgresStore {
    /// The hot events with positions in `(from, to]`, in order, at most `max_count`, through a
    /// binary COPY (one byte stream instead of a row object per event; every bound is an
    /// integer written here).
    async fn read_range(
        &self,
        from: u64,
        to: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "COPY (SELECT {} FROM events WHERE position > {} AND position <= {} \
             AND archived_digest IS NULL ORDER BY position LIMIT {}) TO STDOUT (FORMAT binary)",
            copy::EVENT_COLUMNS,
            version(from),
            version(to),
            limit(max_count)
        );
        let mut read = self.read_conn().await?;
        copy_events(read.conn(), &sql, from).await
    }

    /// The error for a replay that reached an event with an empty payload: the event is an
    /// archived stub, named with its position, when its `archived_digest` is set, and
    /// corrupt otherwise (no append or update can leave an empty payload without it).
    async fn archived_stop(&self, stream_id: &str, stream_version: u64) -> StoreError {
        let row: Result<(i64, bool), _> = sqlx::query_as(
            "SELECT position, archived_digest IS NOT NULL FROM events \
             WHERE stream_id = $1 AND stream_version = $2",
        )
        .bind(stream_id)
        .bind(version(stream_version))
        .fetch_one(&self.inner.pool)
        .await;
        match row {
            Ok((position, true)) => StoreError::Archived {
                stream_id: stream_id.to_owned(),
                version: stream_version,
                position: position as u64,
            },
            Ok((position, false)) => {
                StoreError::emptied_payload(stream_id, stream_version, position as u64)
            }
            Err(e) => backend(e),
        }
    }
}

/// Prepares `conn` for a COPY of `columns` of a stream's events from `from_version`, in version
/// order, at most `max_count`, and returns its SQL. COPY takes no
/// bind parameters: the stream id travels in a session setting (bound, never spliced into SQL
/// text); the numbers are formatted integers.
async fn stream_copy(
    conn: &mut sqlx::PgConnection,
    stream_id: &str,
    columns: &str,
    from_version: u64,
    max_count: usize,
) -> Result<String, StoreError> {
    sqlx::query("SELECT set_config('eventfold.replay_stream', $1, false)")
        .bind(stream_id)
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    Ok(format!(
        "COPY (SELECT {columns} FROM events WHERE stream_id = current_setting('eventfold.replay_stream') \
         AND stream_version >= {} ORDER BY stream_version LIMIT {}) TO STDOUT (FORMAT binary)",
        version(from_version),
        limit(max_count)
    ))
}

/// Runs `sql`, a `COPY ... TO STDOUT`, handing each chunk to `feed` as it arrives; the first
/// error `feed` returns, if any. The COPY is read to the end either way, so the connection goes
/// back to the pool at rest.
async fn drain_copy(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    mut feed: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<Result<(), String>, StoreError> {
    use futures::TryStreamExt;
    let mut broken = None;
    let mut chunks = conn.copy_out_raw(sql).await.map_err(backend)?;
    while let Some(chunk) = chunks.try_next().await.map_err(backend)? {
        if broken.is_none() {
            broken = feed(&chunk).err();
        }
    }
    Ok(broken.map_or(Ok(()), Err))
}

/// Runs `sql`, a binary COPY of [`copy::EVENT_COLUMNS`], and parses the events as they arrive
/// ([`copy::EventsFeed`]); data that stops making sense is [`StoreError::Corrupt`].
async fn copy_events(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    after_position: u64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut feed = copy::EventsFeed::default();
    drain_copy(conn, sql, |chunk| feed.feed(chunk))
        .await?
        .and_then(|()| feed.finish())
        .map_err(|e| StoreError::Corrupt(format!("events after position {after_position}: {e}")))
}

/// Runs a chain `COPY ... TO STDOUT` ([`copy::CHAIN_COLUMNS`] or the backfill's) and parses it
/// into `rows` as it arrives, never holding the whole COPY and refilling the rows already there
/// ([`copy::ChainFeed`]). Data that stops making sense is [`StoreError::Corrupt`], `what`
/// (the read) then the offset.
async fn copy_chain(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    rows: &mut Vec<ChainRow>,
    what: impl FnOnce() -> String,
) -> Result<(), StoreError> {
    let mut feed = copy::ChainFeed::new(rows);
    drain_copy(conn, sql, |chunk| feed.feed(chunk))
        .await?
        .and_then(|()| feed.finish())
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", what())))
}

#[async_trait]
impl CheckpointStore for PostgresStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let p: Option<i64> = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(backend)?;
        Ok(p.map(|p| p as u64))
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO checkpoints (name, position) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        )
        .bind(name)
        .bind(version(position))
        .execute(&self.inner.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        request.validate()?;
        let mut results = self.submit(vec![request]).await?;
        results.pop().expect("one result per request")
    }

    async fn append_many(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        self.submit(requests).await
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "{SELECT_EVENTS} WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version LIMIT $3"
        ))
        .bind(stream_id)
        .bind(version(from_version))
        .bind(limit(max_count))
        .fetch_all(self.read_conn().await?.conn())
        .await
        .map_err(backend)?;
        rows.iter().map(row_to_event).collect()
    }

    async fn read_stream_for_replay(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<ReplayEvent>, StoreError> {
        // One COPY parser and one archived-event check: the streamed replay's, collected.
        let mut events = Vec::new();
        self.replay_stream(stream_id, from_version, max_count, &mut |e| {
            events.push(e.clone());
            Ok(())
        })
        .await?;
        Ok(events)
    }

    async fn replay_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
        sink: &mut (dyn for<'e> FnMut(&'e ReplayEvent) -> Result<(), StoreError> + Send),
    ) -> Result<(), StoreError> {
        use futures::TryStreamExt;
        let corrupt = |e: String| StoreError::Corrupt(format!("replay of stream {stream_id}: {e}"));
        let mut read = self.read_conn().await?;
        let conn = read.conn();
        let sql = stream_copy(
            conn,
            stream_id,
            copy::REPLAY_COLUMNS,
            from_version,
            max_count,
        )
        .await?;
        let mut feed = copy::ReplayFeed::default();
        // After a stop (an archived event, a sink error) the rest is read and dropped, so the
        // connection goes back to the pool at rest.
        let mut stop: Option<Result<u64, StoreError>> = None;
        let mut chunks = conn.copy_out_raw(&sql).await.map_err(backend)?;
        while let Some(chunk) = chunks.try_next().await.map_err(backend)? {
            if stop.is_some() {
                continue;
            }
            let fed = feed.feed(&chunk, &mut |row| match row {
                _ if stop.is_some() => {}
                copy::ReplayRow::Event(e) => {
                    if let Err(e) = sink(e) {
                        stop = Some(Err(e));
                    }
                }
                copy::ReplayRow::Archived(v) => stop = Some(Ok(v)),
            });
            if let Err(e) = fed {
                stop.get_or_insert(Err(corrupt(e)));
            }
        }
        drop(chunks);
        match stop {
            None => feed.finish().map_err(corrupt),
            Some(Err(e)) => Err(e),
            Some(Ok(v)) => Err(self.archived_stop(stream_id, v).await),
        }
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        let v: i64 = sqlx::query_scalar(
            "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = $1",
        )
        .bind(stream_id)
        .fetch_one(self.read_conn().await?.conn())
        .await
        .map_err(backend)?;
        Ok(v as u64)
    }

    async fn docs_and_stream_version(
        &self,
        storage: &str,
        keys: &[String],
        stream_id: &str,
    ) -> Result<Option<(Vec<(String, String)>, u64)>, StoreError> {
        // One statement, so one snapshot and one round trip (and, fenced, one transaction
        // instead of two). Planned per call, as `get_docs` is.
        let rows = sqlx::query(
            "SELECT d.key, d.doc, v.version FROM \
             (SELECT coalesce(max(stream_version), 0) AS version FROM events WHERE stream_id = $3) v \
             LEFT JOIN read_models d ON d.projection = $1 AND d.key = ANY($2)",
        )
        .bind(storage)
        .bind(keys)
        .bind(stream_id)
        .persistent(false)
        .fetch_all(self.read_conn().await?.conn())
        .await
        .map_err(backend)?;
        let mut version = 0;
        let mut docs = Vec::with_capacity(rows.len());
        for row in &rows {
            version = row.try_get::<i64, _>(2).map_err(backend)? as u64;
            let key: Option<String> = row.try_get(0).map_err(backend)?;
            if let Some(key) = key {
                docs.push((key, row.try_get(1).map_err(backend)?));
            }
        }
        Ok(Some((docs, version)))
    }

    async fn read_all(
        &self,
        after_position: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // Positions are gap-free, so the next `max_count` events lie in (from, from + max_count]:
        // the read names that range, which the planner reads through the primary key whatever
        // its statistics say. Without the upper bound, a table grown since its last ANALYZE (an
        // import, a first day of traffic) looked tiny to the planner, which then scanned and
        // sorted all of it for every page (152 ms instead of 3.5 ms per 10,000 events on the
        // CDNOW log). A range with no hot event (the head, or archived stubs only) moves on to
        // the next one until the head.
        let mut from = after_position;
        loop {
            let to = from.saturating_add(max_count.max(1) as u64);
            let events = self.read_range(from, to, max_count).await?;
            if !events.is_empty() || to >= self.head_position().await? {
                return Ok(events);
            }
            // The head is past the range, so every position in it is committed and visible now
            // (appends commit in position order under the append lock): read it again before
            // moving on, since the first read's snapshot may have been taken before some of
            // them committed. Still empty: only archived stubs (or, fenced, another tenant's).
            let again = self.read_range(from, to, max_count).await?;
            if !again.is_empty() {
                return Ok(again);
            }
            from = to;
        }
    }

    async fn read_chain_into(
        &self,
        after_position: u64,
        max_count: usize,
        rows: &mut Vec<ChainRow>,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "COPY (SELECT {} FROM events WHERE position > {} ORDER BY position LIMIT {}) \
             TO STDOUT (FORMAT binary)",
            copy::CHAIN_COLUMNS,
            version(after_position),
            limit(max_count)
        );
        let mut read = self.read_conn().await?;
        copy_chain(read.conn(), &sql, rows, || {
            format!("chain read after {after_position}")
        })
        .await
    }

    async fn read_stream_chain(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<ChainRow>, StoreError> {
        let mut read = self.read_conn().await?;
        let conn = read.conn();
        let sql = stream_copy(
            conn,
            stream_id,
            copy::CHAIN_COLUMNS,
            from_version,
            max_count,
        )
        .await?;
        let mut rows = Vec::new();
        copy_chain(conn, &sql, &mut rows, || {
            format!("chain read of stream {stream_id}")
        })
        .await?;
        Ok(rows)
    }

    async fn archive_events(&self, stubs: Vec<ArchiveStub>) -> Result<u64, StoreError> {
        let positions: Vec<i64> = stubs.iter().map(|s| s.position as i64).collect();
        let hashes: Vec<&[u8]> = stubs.iter().map(|s| s.hash.as_slice()).collect();
        let digests: Vec<&[u8]> = stubs.iter().map(|s| s.digest.as_slice()).collect();
        let mut tx = self.inner.pool.begin().await.map_err(backend)?;
        let archived = sqlx::query(
            "UPDATE events e SET payload = '', archived_digest = u.d \
             FROM UNNEST($1::bigint[], $2::bytea[], $3::bytea[]) AS u(p, h, d) \
             WHERE e.position = u.p AND e.hash = u.h AND e.archived_digest IS NULL",
        )
        .bind(&positions)
        .bind(&hashes)
        .bind(&digests)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected();
        // Every stub must now be there with its hash and digest (archived now or before).
        let missing: Option<(i64, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT u.p, e.archived_digest FROM UNNEST($1::bigint[], $2::bytea[], $3::bytea[]) AS u(p, h, d) \
             LEFT JOIN events e ON e.position = u.p AND e.hash = u.h \
             WHERE e.archived_digest IS DISTINCT FROM u.d ORDER BY u.p LIMIT 1",
        )
        .bind(&positions)
        .bind(&hashes)
        .bind(&digests)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if let Some((position, stored)) = missing {
            let position = position as u64;
            let stub = stubs
                .iter()
                .find(|s| s.position == position)
                .expect("asked for");
            return Err(match stored {
                Some(_) => StoreError::InvalidRequest(format!(
                    "position {position}: archived before with another content digest"
                )),
                None => StoreError::no_event_to(position, &stub.hash, "archive"),
            });
        }
        tx.commit().await.map_err(backend)?;
        Ok(archived)
    }

    async fn restore_events(&self, payloads: Vec<RestoredPayload>) -> Result<u64, StoreError> {
        let positions: Vec<i64> = payloads.iter().map(|p| p.position as i64).collect();
        let hashes: Vec<&[u8]> = payloads.iter().map(|p| p.hash.as_slice()).collect();
        let texts: Vec<&str> = payloads.iter().map(|p| p.payload.as_str()).collect();
        let mut tx = self.inner.pool.begin().await.map_err(backend)?;
        let restored = sqlx::query(
            "UPDATE events e SET payload = u.pl, archived_digest = NULL \
             FROM UNNEST($1::bigint[], $2::bytea[], $3::text[]) AS u(p, h, pl) \
             WHERE e.position = u.p AND e.hash = u.h AND e.archived_digest IS NOT NULL",
        )
        .bind(&positions)
        .bind(&hashes)
        .bind(&texts)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected();
        let missing: Option<i64> = sqlx::query_scalar(
            "SELECT u.p FROM UNNEST($1::bigint[], $2::bytea[]) AS u(p, h) \
             WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.position = u.p AND e.hash = u.h) \
             ORDER BY u.p LIMIT 1",
        )
        .bind(&positions)
        .bind(&hashes)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if let Some(position) = missing {
            let position = position as u64;
            let p = payloads
                .iter()
                .find(|p| p.position == position)
                .expect("asked for");
            return Err(StoreError::no_event_to(position, &p.hash, "restore"));
        }
        tx.commit().await.map_err(backend)?;
        Ok(restored)
    }

    async fn archived_after(&self, position: u64) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE position > $1 AND archived_digest IS NOT NULL",
        )
        .bind(version(position))
        .fetch_one(&self.inner.pool)
        .await
        .map_err(backend)?;
        Ok(count as u64)
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&self.inner.pool)
            .await
            .map_err(backend)?;
        Ok(head as u64)
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
        let row =
            sqlx::query("SELECT fingerprint, status, body FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(backend)?;
        row.map(|r| {
            Ok(IdempotencyRecord {
                key: key.to_owned(),
                fingerprint: r.try_get(0).map_err(backend)?,
                response: StoredResponse {
                    status: u16::try_from(r.try_get::<i32, _>(1).map_err(backend)?).unwrap_or(500),
                    body: r.try_get(2).map_err(backend)?,
                },
            })
        })
        .transpose()
    }
}
