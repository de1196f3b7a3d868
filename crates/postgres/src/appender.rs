//! The single appender: group commit of every waiting append in one transaction, serialised
//! across processes by a transaction-level advisory lock.
//!
//! Why positions never skip: every appender (in every process) takes `pg_advisory_xact_lock`
//! first and reads the head under it, so appending transactions run one after another, and
//! PostgreSQL releases a transaction-level lock only after the commit is visible. A transaction
//! that assigns position n+1 therefore starts after the one that assigned n is visible: a reader
//! tailing `position > p` can never pass a position that commits later.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use eventfold_core::chain::{stored_hash, Chainer, Content, Hash, Links, ZERO_HASH};
use eventfold_core::{
    AppendOutcome, AppendRequest, ExpectedVersion, IdempotencyRecord, StoreError,
};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::{APPEND_LOCK, NOTIFY_CHANNEL};

/// Longest the appender waits for more requests before committing a group.
const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_micros(500);

type Reply = oneshot::Sender<Result<Vec<Result<AppendOutcome, StoreError>>, StoreError>>;

pub(crate) struct Job {
    pub(crate) requests: Vec<AppendRequest>,
    pub(crate) reply: Reply,
}

/// Counters of the appender since the store was opened.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) append_requests: AtomicU64,
}

pub(crate) struct Appender {
    pub(crate) url: String,
    pub(crate) jobs: mpsc::UnboundedReceiver<Job>,
    pub(crate) head: watch::Sender<u64>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) max_batch: usize,
    /// Whether appends compute the hash chain.
    pub(crate) chain: bool,
}

/// An event accepted for insertion, in the columns' order.
struct Row13 {
    position: i64,
    event_id: Uuid,
    stream_id: String,
    version: i64,
    event_type: String,
    schema_version: i32,
    event_time: DateTime<Utc>,
    actor: String,
    causation_id: Option<Uuid>,
    correlation_id: Option<Uuid>,
    tenant_id: String,
    payload: String,
    via: Option<String>,
    /// `Some(true)` for a backfilled event, `None` (NULL) for a live one.
    backfill: Option<bool>,
    /// Chain columns, when the appender computed them (checked path with the chain on).
    links: Option<Links>,
}

impl Appender {
    pub(crate) async fn run(mut self) {
        let mut conn: Option<PgConnection> = None;
        let mut last_weight = 1;
        while let Some(first) = self.jobs.recv().await {
            let mut weight = first.requests.len();
            let mut group = vec![first];
            // Adaptive commit delay (as in the SQLite writer): after a shared group, wait up to
            // COMMIT_DELAY for as many requests as it had, so they share this commit.
            let deadline = (last_weight > 1).then(|| tokio::time::Instant::now() + COMMIT_DELAY);
            while weight < self.max_batch {
                let job = match self.jobs.try_recv() {
                    Ok(job) => Some(job),
                    Err(_) => match deadline {
                        Some(d) if weight < last_weight => {
                            tokio::time::timeout_at(d, self.jobs.recv())
                                .await
                                .ok()
                                .flatten()
                        }
                        _ => None,
                    },
                };
                match job {
                    Some(job) => {
                        weight += job.requests.len();
                        group.push(job);
                    }
                    None => break,
                }
            }
            last_weight = weight;
            if conn.is_none() {
                match PgConnection::connect(&self.url).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "postgres appender cannot connect");
                        fail_all(group, "cannot connect to PostgreSQL");
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected");
            let requests: Vec<&AppendRequest> = group.iter().flat_map(|j| &j.requests).collect();
            match commit_group(c, &requests, self.chain).await {
                Ok((results, head)) => {
                    self.counters.commits.fetch_add(1, Relaxed);
                    self.counters
                        .append_requests
                        .fetch_add(requests.len() as u64, Relaxed);
                    eventfold_store_support::head::advance(&self.head, head);
                    let mut results = results.into_iter();
                    for job in group {
                        let mine = results.by_ref().take(job.requests.len()).collect();
                        let _ = job.reply.send(Ok(mine));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "postgres group commit failed; nothing was written");
                    // The connection may be broken: open a fresh one for the next group.
                    conn = None;
                    fail_all(
                        group,
                        &format!("group commit failed, nothing was written: {e}"),
                    );
                }
            }
        }
    }
}

fn fail_all(group: Vec<Job>, message: &str) {
    for job in group {
        let _ = job
            .reply
            .send(Err(StoreError::Unavailable(message.to_owned().into())));
    }
}

/// Writes a group of appends: first in one round trip (`eventfold_append`, planned against the
/// stream versions the requests expect), and when that finds a stream elsewhere or an id or key
/// used before, in the checked transaction that reads everything first.
async fn commit_group(
    conn: &mut PgConnection,
    requests: &[&AppendRequest],
    chain: bool,
) -> Result<(Vec<Result<AppendOutcome, StoreError>>, u64), sqlx::Error> {
    // Ingest time at the precision PostgreSQL keeps, so the hashed value is the stored one.
    let now = whole_micros(Utc::now());
    let written = match lone_append(requests) {
        Some(lone) => commit_lone(conn, lone, chain, now).await?,
        None => commit_assumed(conn, requests, chain, now).await?,
    };
    match written {
        Some(done) => Ok(done),
        None => commit_checked(conn, requests, chain, now).await,
    }
}

/// The group's only request and the stream version it expects, when the group is one request
/// of one event to an expected version, without a fencing token: what a lone writer sends.
fn lone_append<'a>(requests: &[&'a AppendRequest]) -> Option<(&'a AppendRequest, u64)> {
    let [request] = requests else { return None };
    if request.events.len() != 1 || request.fence.is_some() {
        return None;
    }
    match request.expected {
        ExpectedVersion::Exact(v) => Some((request, v)),
        ExpectedVersion::NoStream => Some((request, 0)),
        ExpectedVersion::Any => None,
    }
}

/// A lone append as one SQL statement rather than a call of `eventfold_append`: with one client
/// the function's own cost (PL/pgSQL runs each of its statements through the executor one by
/// one) was a quarter of the append. The statement takes the same append lock, checks the
/// stream's version, numbers the event after the head, links it into the hash chain and
/// records its idempotency key, and notifies, as the function does.
///
/// Why positions still never skip: the statement reads the head and the stream's version from
/// the snapshot it started with, which may be older than the lock it then waits for. A position
/// is therefore only ever numbered after a committed one; if another writer committed the same
/// number (or the same stream version) while this one waited, the unique index refuses the
/// insert, nothing is written, and the group goes to the checked path, which reads everything
/// again under the lock. No row back (the stream has moved) goes there too and is answered
/// there as a conflict.
async fn commit_lone(
    conn: &mut PgConnection,
    (request, expected): (&AppendRequest, u64),
    chain: bool,
    now: DateTime<Utc>,
) -> Result<Option<(Vec<Result<AppendOutcome, StoreError>>, u64)>, sqlx::Error> {
    let mut plan = plan(
        std::slice::from_ref(&request),
        0,
        HashMap::from([(request.stream_id.clone(), expected)]),
        &HashMap::new(),
        &mut HashSet::new(),
        &mut HashMap::new(),
    );
    let Some(row) = plan.rows.pop() else {
        return Ok(None);
    };
    let digest = chain.then(|| digest(&row, now).to_vec());
    let key = plan.keys.pop();
    let inserted = sqlx::query(LONE_APPEND_SQL)
        .bind(APPEND_LOCK)
        .bind(&row.stream_id)
        .bind(expected as i64)
        .bind(row.event_id)
        .bind(&row.event_type)
        .bind(row.schema_version)
        .bind(row.event_time)
        .bind(now)
        .bind(&row.actor)
        .bind(row.causation_id)
        .bind(row.correlation_id)
        .bind(&row.tenant_id)
        .bind(&row.payload)
        .bind(&row.via)
        .bind(row.backfill)
        .bind(digest)
        .bind(key.as_ref().map(|k| k.key.as_str()))
        .bind(key.as_ref().map(|k| k.fingerprint.as_str()))
        .bind(key.as_ref().map(|k| i32::from(k.response.status)))
        .bind(key.as_ref().map(|k| k.response.body.as_str()))
        .bind(NOTIFY_CHANNEL)
        .fetch_optional(&mut *conn)
        .await;
    let position = match inserted {
        Ok(Some(row)) => row.try_get::<i64, _>(0)? as u64,
        Ok(None) => return Ok(None),
        // A position, stream version, event id or key taken meanwhile or before.
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23505") => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    for outcome in plan.results.iter_mut().flatten() {
        outcome.first_position += position - 1;
        outcome.last_position += position - 1;
    }
    Ok(Some((plan.results, position)))
}

/// [`commit_lone`]'s statement. The lock is taken before the row is produced (`nx` reads from
/// `lk`); the chain columns stay empty when no digest is given (the chain is off).
const LONE_APPEND_SQL: &str = "\
WITH lk AS (SELECT pg_advisory_xact_lock($1)),
st AS (SELECT e.stream_version, e.hash FROM events e WHERE e.stream_id = $2
       ORDER BY e.stream_version DESC LIMIT 1),
hd AS (SELECT e.position, e.hash FROM events e ORDER BY e.position DESC LIMIT 1),
nx AS (
    SELECT coalesce((SELECT position FROM hd), 0) + 1 AS pos,
           coalesce((SELECT hash FROM hd), decode(repeat('00', 32), 'hex')) AS prev,
           coalesce((SELECT hash FROM st), decode(repeat('00', 32), 'hex')) AS shead
    FROM lk
    WHERE coalesce((SELECT stream_version FROM st), 0) = $3
),
ins AS (
    INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version,
                        event_time, ingest_time, actor, causation_id, correlation_id, tenant_id,
                        payload, prev_hash, hash, via, backfill)
    SELECT nx.pos, $4, $2, $3 + 1, $5, $6, $7, $8, $9, $10, $11, $12, $13,
           CASE WHEN $16::bytea IS NULL THEN NULL ELSE nx.prev END,
           CASE WHEN $16::bytea IS NULL THEN NULL
                ELSE sha256(nx.prev || nx.shead || int8send(nx.pos) || $16::bytea) END,
           $14, $15
    FROM nx
    RETURNING position
),
ky AS (
    INSERT INTO idempotency_keys (key, fingerprint, status, body, created_at)
    SELECT $17::text, $18::text, $19::integer, $20::text, $8 FROM ins WHERE $17::text IS NOT NULL
)
SELECT ins.position, pg_notify($21, ins.position::text)::text FROM ins";

/// `t` cut to whole microseconds (as both stores keep times and the chain hashes them).
fn whole_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// The content digest of a planned row.
fn digest(row: &Row13, ingest: DateTime<Utc>) -> Hash {
    Content {
        stream_id: row.stream_id.as_bytes(),
        stream_version: row.version as u64,
        event_id: row.event_id.as_bytes(),
        event_type: row.event_type.as_bytes(),
        schema_version: i64::from(row.schema_version),
        event_time_us: row.event_time.timestamp_micros(),
        ingest_time_us: ingest.timestamp_micros(),
        actor: row.actor.as_bytes(),
        causation_id: row.causation_id.as_ref().map(|u| u.as_bytes().as_slice()),
        correlation_id: row.correlation_id.as_ref().map(|u| u.as_bytes().as_slice()),
        tenant_id: row.tenant_id.as_bytes(),
        payload: row.payload.as_bytes(),
        via: row.via.as_ref().map(String::as_bytes),
        backfill: row.backfill.is_some(),
    }
    .digest()
}

/// The group's rows, idempotency records and per-request results, numbered from `head + 1`.
struct Plan {
    results: Vec<Result<AppendOutcome, StoreError>>,
    rows: Vec<Row13>,
    keys: Vec<IdempotencyRecord>,
    /// Fencing tokens to record (the highest per resource), from the accepted requests.
    fences: HashMap<String, u64>,
    /// The last position planned (`head` when nothing is written).
    last: u64,
}

/// Checks every request against the stream versions, stored event ids, used keys and fencing
/// tokens given, and against the requests before it in the group, in order.
fn plan(
    requests: &[&AppendRequest],
    head: u64,
    mut versions: HashMap<String, u64>,
    stored: &HashMap<Uuid, (String, u64, u64)>,
    used_keys: &mut HashSet<String>,
    fences: &mut HashMap<String, u64>,
) -> Plan {
    let mut accepted_fences = HashMap::new();
    let mut next = head + 1;
    let mut rows: Vec<Row13> = Vec::new();
    // Events accepted earlier in this group: an identical append later in it is a retry.
    let mut batch_ids: HashMap<Uuid, (String, u64, u64)> = HashMap::new();
    let mut keys = Vec::new();
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        let result = check_one(
            request,
            &mut versions,
            stored,
            &batch_ids,
            used_keys,
            fences,
        )
        .map(|current| {
            let first = next;
            for (i, e) in request.events.iter().enumerate() {
                let m = &e.metadata;
                rows.push(Row13 {
                    position: next as i64,
                    event_id: e.event_id,
                    stream_id: request.stream_id.clone(),
                    version: (current + 1 + i as u64) as i64,
                    event_type: e.event_type.clone(),
                    schema_version: e.schema_version as i32,
                    event_time: whole_micros(e.event_time),
                    actor: m.actor.as_str().to_owned(),
                    causation_id: m.causation_id,
                    correlation_id: m.correlation_id,
                    tenant_id: m.tenant_id.clone(),
                    payload: e.payload.clone(),
                    via: m.via.as_ref().map(|a| a.as_str().to_owned()),
                    backfill: m.backfill.then_some(true),
                    links: None,
                });
                batch_ids.insert(
                    e.event_id,
                    (request.stream_id.clone(), current + 1 + i as u64, next),
                );
                next += 1;
            }
            let version = current + request.events.len() as u64;
            versions.insert(request.stream_id.clone(), version);
            if let Some(idem) = &request.idempotency {
                used_keys.insert(idem.key.clone());
                keys.push(idem.clone());
            }
            if let Some(f) = &request.fence {
                let highest = fences.entry(f.resource.clone()).or_insert(f.token);
                *highest = (*highest).max(f.token);
                accepted_fences.insert(f.resource.clone(), *highest);
            }
            AppendOutcome {
                stream_version: version,
                first_position: first,
                last_position: next - 1,
                duplicate: false,
            }
        });
        results.push(match result {
            Err(Duplicate(outcome)) => Ok(outcome),
            Err(Refused(e)) => Err(e),
            Ok(outcome) => Ok(outcome),
        });
    }
    Plan {
        results,
        rows,
        keys,
        fences: accepted_fences,
        last: next - 1,
    }
}

/// The one-round-trip path. Assumes each stream is at the version its first request in the group
/// expects (`Exact(v)`, or 0 for `NoStream`), no event id was stored before and no key used, plans
/// the group on that, and lets `eventfold_append` verify the versions under the append lock and
/// number the events from the head. `None` when an assumption was wrong (or a request expects
/// `Any`): nothing was written.
async fn commit_assumed(
    conn: &mut PgConnection,
    requests: &[&AppendRequest],
    chain: bool,
    now: DateTime<Utc>,
) -> Result<Option<(Vec<Result<AppendOutcome, StoreError>>, u64)>, sqlx::Error> {
    let mut assumed: HashMap<String, u64> = HashMap::new();
    for r in requests {
        if !assumed.contains_key(&r.stream_id) {
            let v = match r.expected {
                ExpectedVersion::Exact(v) => v,
                ExpectedVersion::NoStream => 0,
                ExpectedVersion::Any => return Ok(None),
            };
            assumed.insert(r.stream_id.clone(), v);
        }
        // Fenced appends read the fences under the lock: the checked path.
        if r.fence.is_some() {
            return Ok(None);
        }
    }
    let (check_streams, check_versions): (Vec<String>, Vec<i64>) =
        assumed.iter().map(|(s, v)| (s.clone(), *v as i64)).unzip();
    let mut plan = plan(
        requests,
        0,
        assumed,
        &HashMap::new(),
        &mut HashSet::new(),
        &mut HashMap::new(),
    );
    if plan.rows.is_empty() {
        return Ok(None);
    }
    let count = plan.rows.len() as u64;
    // The chain's content digests are computed here, outside the lock; the function links them.
    let (slots, digests): (Vec<i32>, Option<Vec<Vec<u8>>>) = if chain {
        let slot: HashMap<&str, i32> = check_streams
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i as i32 + 1))
            .collect();
        let (slots, digests) = plan
            .rows
            .iter()
            .map(|r| (slot[r.stream_id.as_str()], digest(r, now).to_vec()))
            .unzip();
        (slots, Some(digests))
    } else {
        (Vec::new(), None)
    };
    let c = Columns::from(std::mem::take(&mut plan.rows));
    let head: i64 = match sqlx::query_scalar(
        "SELECT eventfold_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
         $16, $17, $18, $19, $20, $21, $22, $23, $24)",
    )
    .bind(APPEND_LOCK)
    .bind(check_streams)
    .bind(check_versions)
    .bind(c.event_id)
    .bind(c.stream_id)
    .bind(c.version)
    .bind(c.event_type)
    .bind(c.schema_version)
    .bind(c.event_time)
    .bind(now)
    .bind(c.actor)
    .bind(c.causation_id)
    .bind(c.correlation_id)
    .bind(c.tenant_id)
    .bind(c.payload)
    .bind(plan.keys.iter().map(|k| k.key.clone()).collect::<Vec<_>>())
    .bind(plan.keys.iter().map(|k| k.fingerprint.clone()).collect::<Vec<_>>())
    .bind(plan.keys.iter().map(|k| i32::from(k.response.status)).collect::<Vec<_>>())
    .bind(plan.keys.iter().map(|k| k.response.body.clone()).collect::<Vec<_>>())
    .bind(NOTIFY_CHANNEL)
    .bind(slots)
    .bind(digests)
    .bind(c.via)
    .bind(c.backfill)
    .fetch_one(&mut *conn)
    .await
    {
        Ok(head) => head,
        // An event id or idempotency key used before: the checked path sorts out which.
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23505") => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    if head < 0 {
        return Ok(None);
    }
    let head = head as u64;
    for outcome in plan.results.iter_mut().flatten() {
        outcome.first_position += head;
        outcome.last_position += head;
    }
    Ok(Some((plan.results, head + count)))
}

/// The checked path: one transaction that takes the append lock, reads the head, the streams'
/// versions, the stored event ids and the used keys, checks every request in memory, and writes
/// the accepted ones with one statement.
async fn commit_checked(
    conn: &mut PgConnection,
    requests: &[&AppendRequest],
    chain: bool,
    now: DateTime<Utc>,
) -> Result<(Vec<Result<AppendOutcome, StoreError>>, u64), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK)
        .execute(&mut *tx)
        .await?;
    // Everything the checks need, in one round trip (a new statement: its snapshot sees every
    // commit that happened before the lock was granted).
    let streams: Vec<String> = requests
        .iter()
        .map(|r| r.stream_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let ids: Vec<Uuid> = requests
        .iter()
        .flat_map(|r| r.events.iter().map(|e| e.event_id))
        .collect();
    let keys: Vec<String> = requests
        .iter()
        .filter_map(|r| r.idempotency.as_ref().map(|i| i.key.clone()))
        .collect();
    let resources: Vec<String> = requests
        .iter()
        .filter_map(|r| r.fence.as_ref().map(|f| f.resource.clone()))
        .collect();
    let rows = sqlx::query(
        "(SELECT 'h' AS kind, NULL::text AS s, position AS a, NULL::bigint AS b, NULL::uuid AS i, \
           hash AS x FROM events ORDER BY position DESC LIMIT 1) \
         UNION ALL SELECT 'v', u.s, l.stream_version, NULL, NULL, l.hash FROM UNNEST($1::text[]) AS u(s) \
           LEFT JOIN LATERAL (SELECT stream_version, hash FROM events WHERE stream_id = u.s \
           ORDER BY stream_version DESC LIMIT 1) l ON true \
         UNION ALL SELECT 'i', stream_id, stream_version, position, event_id, NULL FROM events WHERE event_id = ANY($2) \
         UNION ALL SELECT 'k', key, NULL, NULL, NULL, NULL FROM idempotency_keys WHERE key = ANY($3) \
         UNION ALL SELECT 'f', resource, token, NULL, NULL, NULL FROM fences WHERE resource = ANY($4)",
    )
    .bind(&streams)
    .bind(&ids)
    .bind(&keys)
    .bind(&resources)
    .fetch_all(&mut *tx)
    .await?;
    let mut head = 0i64;
    let mut chainer = Chainer::new(ZERO_HASH);
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut stored: HashMap<Uuid, (String, u64, u64)> = HashMap::new();
    let mut used_keys: HashSet<String> = HashSet::new();
    let mut fences: HashMap<String, u64> = HashMap::new();
    for r in rows {
        let kind: &str = r.try_get(0)?;
        match kind {
            "h" => {
                head = r.try_get(2)?;
                chainer = Chainer::new(stored_hash(r.try_get(5)?));
            }
            "v" => {
                // One index probe per stream (the last version), not a scan of its history.
                if let Some(v) = r.try_get::<Option<i64>, _>(2)? {
                    let stream: String = r.try_get(1)?;
                    chainer.stream_head(&stream, stored_hash(r.try_get(5)?));
                    versions.insert(stream, v as u64);
                }
            }
            "i" => {
                stored.insert(
                    r.try_get(4)?,
                    (
                        r.try_get(1)?,
                        r.try_get::<i64, _>(2)? as u64,
                        r.try_get::<i64, _>(3)? as u64,
                    ),
                );
            }
            "f" => {
                fences.insert(r.try_get(1)?, r.try_get::<i64, _>(2)? as u64);
            }
            _ => {
                used_keys.insert(r.try_get(1)?);
            }
        }
    }

    let mut plan = plan(
        requests,
        head as u64,
        versions,
        &stored,
        &mut used_keys,
        &mut fences,
    );
    if chain {
        for r in &mut plan.rows {
            let d = digest(r, now);
            r.links = Some(chainer.next(r.position as u64, &r.stream_id, &d));
        }
    }
    if !plan.fences.is_empty() {
        let (resources, tokens): (Vec<String>, Vec<i64>) = plan
            .fences
            .iter()
            .map(|(r, t)| (r.clone(), *t as i64))
            .unzip();
        sqlx::query(
            "INSERT INTO fences (resource, token) SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
             ON CONFLICT (resource) DO UPDATE SET token = GREATEST(fences.token, EXCLUDED.token)",
        )
        .bind(resources)
        .bind(tokens)
        .execute(&mut *tx)
        .await?;
    }
    if !plan.rows.is_empty() {
        write_group(&mut tx, plan.rows, &plan.keys, now, plan.last).await?;
    }
    tx.commit().await?;
    Ok((plan.results, plan.last))
}

/// Why a request was not written: already stored (a retry), or refused.
enum NotWritten {
    Duplicate(AppendOutcome),
    Refused(StoreError),
}
use NotWritten::{Duplicate, Refused};

/// Checks one request against the stored state and the requests before it in the group; returns
/// the stream's current version when it may be written.
fn check_one(
    request: &AppendRequest,
    versions: &mut HashMap<String, u64>,
    stored: &HashMap<Uuid, (String, u64, u64)>,
    batch_ids: &HashMap<Uuid, (String, u64, u64)>,
    used_keys: &HashSet<String>,
    fences: &HashMap<String, u64>,
) -> Result<u64, NotWritten> {
    request.validate().map_err(Refused)?;
    let current = versions.get(&request.stream_id).copied().unwrap_or(0);
    let known = |id: &Uuid| stored.get(id).or_else(|| batch_ids.get(id));
    if let Some((stream, first_version, first_position)) = known(&request.events[0].event_id) {
        // Already stored: the same append retried, or an id reused.
        let expected_ok = match request.expected {
            ExpectedVersion::Any => true,
            other => other.matches(first_version - 1),
        };
        let mut last_position = *first_position;
        let same = *stream == request.stream_id
            && expected_ok
            && request
                .events
                .iter()
                .enumerate()
                .all(|(i, e)| match known(&e.event_id) {
                    Some((s, v, p))
                        if *s == request.stream_id && *v == first_version + i as u64 =>
                    {
                        last_position = *p;
                        true
                    }
                    _ => false,
                });
        return Err(if same {
            Duplicate(AppendOutcome {
                stream_version: first_version + request.events.len() as u64 - 1,
                first_position: *first_position,
                last_position,
                duplicate: true,
            })
        } else {
            Refused(StoreError::EventIdReused {
                event_id: request.events[0].event_id,
                stream_id: stream.clone(),
            })
        });
    }
    if !request.expected.matches(current) {
        return Err(Refused(StoreError::VersionConflict {
            stream_id: request.stream_id.clone(),
            expected: request.expected,
            actual: current,
        }));
    }
    for e in &request.events {
        if let Some((stream, _, _)) = known(&e.event_id) {
            return Err(Refused(StoreError::EventIdReused {
                event_id: e.event_id,
                stream_id: stream.clone(),
            }));
        }
    }
    if let Some(idem) = &request.idempotency {
        if used_keys.contains(&idem.key) {
            return Err(Refused(StoreError::IdempotencyKeyUsed {
                key: idem.key.clone(),
            }));
        }
    }
    if let Some(f) = &request.fence {
        if let Some(current) = fences.get(&f.resource).filter(|c| **c > f.token) {
            return Err(Refused(StoreError::Fenced {
                resource: f.resource.clone(),
                presented: f.token,
                current: *current,
            }));
        }
    }
    Ok(current)
}

/// The rows of a group as one array per column (for `UNNEST`).
#[derive(Default)]
struct Columns {
    position: Vec<i64>,
    event_id: Vec<Uuid>,
    stream_id: Vec<String>,
    version: Vec<i64>,
    event_type: Vec<String>,
    schema_version: Vec<i32>,
    event_time: Vec<DateTime<Utc>>,
    actor: Vec<String>,
    causation_id: Vec<Option<Uuid>>,
    correlation_id: Vec<Option<Uuid>>,
    tenant_id: Vec<String>,
    payload: Vec<String>,
    via: Vec<Option<String>>,
    backfill: Vec<Option<bool>>,
    prev_hash: Vec<Option<Vec<u8>>>,
    hash: Vec<Option<Vec<u8>>>,
}

impl From<Vec<Row13>> for Columns {
    fn from(rows: Vec<Row13>) -> Self {
        let mut c = Columns::default();
        for r in rows {
            c.position.push(r.position);
            c.event_id.push(r.event_id);
            c.stream_id.push(r.stream_id);
            c.version.push(r.version);
            c.event_type.push(r.event_type);
            c.schema_version.push(r.schema_version);
            c.event_time.push(r.event_time);
            c.actor.push(r.actor);
            c.causation_id.push(r.causation_id);
            c.correlation_id.push(r.correlation_id);
            c.tenant_id.push(r.tenant_id);
            c.payload.push(r.payload);
            c.via.push(r.via);
            c.backfill.push(r.backfill);
            c.prev_hash.push(r.links.map(|l| l.prev_hash.to_vec()));
            c.hash.push(r.links.map(|l| l.hash.to_vec()));
        }
        c
    }
}

/// Inserts the events and idempotency records of a group and notifies subscribers, in one
/// statement (data-modifying CTEs).
async fn write_group(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rows: Vec<Row13>,
    keys: &[eventfold_core::IdempotencyRecord],
    now: DateTime<Utc>,
    head: u64,
) -> Result<(), sqlx::Error> {
    let c = Columns::from(rows);
    sqlx::query(
        "WITH ev AS (INSERT INTO events (position, event_id, stream_id, stream_version, event_type, \
           schema_version, event_time, ingest_time, actor, causation_id, correlation_id, tenant_id, payload, \
           prev_hash, hash, via, backfill) \
           SELECT p, i, s, v, t, sv, et, $8, a, ca, co, tn, pl, ph, h, vi, bf FROM UNNEST($1::bigint[], $2::uuid[], \
           $3::text[], $4::bigint[], $5::text[], $6::int[], $7::timestamptz[], $9::text[], $10::uuid[], $11::uuid[], \
           $12::text[], $13::text[], $20::bytea[], $21::bytea[], $22::text[], $23::boolean[]) \
           AS u(p, i, s, v, t, sv, et, a, ca, co, tn, pl, ph, h, vi, bf) RETURNING 1), \
         ik AS (INSERT INTO idempotency_keys (key, fingerprint, status, body, created_at) \
           SELECT k, f, st, b, $8 FROM UNNEST($14::text[], $15::text[], $16::int[], $17::text[]) \
           AS t(k, f, st, b) RETURNING 1) \
         SELECT pg_notify($18, $19), (SELECT count(*) FROM ev), (SELECT count(*) FROM ik)",
    )
    .bind(c.position)
    .bind(c.event_id)
    .bind(c.stream_id)
    .bind(c.version)
    .bind(c.event_type)
    .bind(c.schema_version)
    .bind(c.event_time)
    .bind(now)
    .bind(c.actor)
    .bind(c.causation_id)
    .bind(c.correlation_id)
    .bind(c.tenant_id)
    .bind(c.payload)
    .bind(keys.iter().map(|k| k.key.clone()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.fingerprint.clone()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| i32::from(k.response.status)).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.response.body.clone()).collect::<Vec<_>>())
    .bind(NOTIFY_CHANNEL)
    .bind(head.to_string())
    .bind(c.prev_hash)
    .bind(c.hash)
    .bind(c.via)
    .bind(c.backfill)
    .fetch_one(&mut **tx)
    .await
    .map(|_| ())
}
