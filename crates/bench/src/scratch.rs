//! A benchmark's own store and raw baselines, removed afterwards.

use std::path::Path;
use std::sync::{mpsc, Arc};

use anyhow::Context;
use chrono::Utc;
use eventfold_core::{EventStore, NewEvent, ReadModelStore};
use eventfold_sqlite::SqliteStore;
use tokio::sync::oneshot;

use crate::BenchTarget;

/// A benchmark's own store and raw baselines, removed by [`Scratch::remove`].
pub(crate) struct Scratch {
    pub(crate) store: Arc<dyn EventStore>,
    /// The scratch store's URL (for tools that open the same database).
    pub(crate) url: String,
    pub(crate) read_models: Arc<dyn ReadModelStore>,
    /// (commits, append requests) of the store's writer so far.
    pub(crate) stats: Box<dyn Fn() -> (u64, u64) + Send + Sync>,
    pub(crate) raw: RawBaseline,
    pub(crate) raw_indexed: RawBaseline,
    pub(crate) name: &'static str,
    pub(crate) cleanup: Cleanup,
}

pub(crate) enum Cleanup {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Database {
        admin: String,
        name: String,
        /// Closed before the database is dropped, so no pooled connection sees it vanish.
        pools: Vec<sqlx::PgPool>,
    },
    /// JetStream streams to delete (the store's and the baselines') and the read models' dir.
    Streams(Vec<String>, #[allow(dead_code)] tempfile::TempDir),
}

impl Scratch {
    /// A scratch store (with the hash chain on or off) and the raw baselines.
    pub(crate) async fn create(target: &BenchTarget, hash_chain: bool) -> anyhow::Result<Self> {
        match target {
            BenchTarget::Sqlite(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let tmp = tempfile::Builder::new()
                    .prefix("eventfold-bench-")
                    .tempdir_in(dir)
                    .context("creating bench directory")?;
                let store = Arc::new(SqliteStore::open_with(
                    tmp.path().join("eventfold.db"),
                    eventfold_sqlite::SqliteConfig {
                        hash_chain,
                        ..Default::default()
                    },
                )?);
                let stats_store = store.clone();
                Ok(Self {
                    url: format!("sqlite://{}", tmp.path().join("eventfold.db").display()),
                    read_models: store.clone(),
                    stats: Box::new(move || {
                        let s = stats_store.writer_stats();
                        (s.commits, s.append_requests)
                    }),
                    store,
                    raw: RawBaseline::sqlite(&tmp.path().join("raw.db"), false)?,
                    raw_indexed: RawBaseline::sqlite(&tmp.path().join("raw-indexed.db"), true)?,
                    name: "sqlite",
                    cleanup: Cleanup::Dir(tmp),
                })
            }
            BenchTarget::Nats(url) => Self::nats(url).await,
            BenchTarget::Postgres(url) => {
                use sqlx::Connection;
                let mut admin = sqlx::PgConnection::connect(url)
                    .await
                    .context("connecting to PostgreSQL")?;
                let name = format!("eventfold_bench_{}", uuid::Uuid::now_v7().simple());
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .context("creating the scratch database")?;
                let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
                let scratch_url = format!("{base}/{name}");
                let store = Arc::new(
                    eventfold_postgres::PostgresStore::connect_with(
                        &scratch_url,
                        eventfold_postgres::PostgresConfig {
                            hash_chain,
                            ..Default::default()
                        },
                    )
                    .await?,
                );
                let stats_store = store.clone();
                let raw = RawBaseline::postgres(&scratch_url, "raw", false).await?;
                let raw_indexed = RawBaseline::postgres(&scratch_url, "raw_indexed", true).await?;
                let mut pools = vec![store.pool().clone()];
                for r in [&raw, &raw_indexed] {
                    if let RawBaseline::Postgres { pool, .. } = r {
                        pools.push(pool.clone());
                    }
                }
                Ok(Self {
                    url: scratch_url.clone(),
                    read_models: store.clone(),
                    stats: Box::new(move || {
                        let s = stats_store.appender_stats();
                        (s.commits, s.append_requests)
                    }),
                    store,
                    raw,
                    raw_indexed,
                    name: "postgres",
                    cleanup: Cleanup::Database {
                        admin: url.clone(),
                        name,
                        pools,
                    },
                })
            }
        }
    }

    /// A scratch NATS store (a JetStream stream of its own on the server of `url`, read models
    /// in a temporary SQLite file) and two raw baselines on streams of their own: plain
    /// publishes with acks, and publishes with the server's per-subject sequence check. The
    /// NATS store always keeps the hash chain.
    async fn nats(url: &str) -> anyhow::Result<Self> {
        let server = eventfold_nats::NatsUrl::parse(url)
            .map_err(anyhow::Error::msg)?
            .server;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let tmp = tempfile::Builder::new()
            .prefix("eventfold-bench-")
            .tempdir()
            .context("creating bench directory")?;
        let store_url = format!("{server}/bench{}", &id[..27]);
        let read_models = Arc::new(SqliteStore::open(tmp.path().join("read-models.db"))?);
        let store = Arc::new(
            eventfold_nats::NatsStore::connect(&store_url, read_models.clone())
                .await
                .with_context(|| format!("opening the scratch NATS store {store_url}"))?,
        );
        let (raw_url, raw_indexed_url) = (
            format!("{server}/raw{}", &id[..29]),
            format!("{server}/rawx{}", &id[..28]),
        );
        let stats_store = store.clone();
        Ok(Self {
            url: store_url.clone(),
            read_models: store.clone(),
            stats: Box::new(move || stats_store.appender_stats().totals()),
            store,
            raw: RawBaseline::nats(&raw_url, false).await?,
            raw_indexed: RawBaseline::nats(&raw_indexed_url, true).await?,
            name: "nats",
            cleanup: Cleanup::Streams(vec![store_url, raw_url, raw_indexed_url], tmp),
        })
    }

    /// On a NATS scratch store, what JetStream alone takes to deliver the messages of
    /// `stream_id` (all of the store's when `None`) to a client: an ordered pull consumer from
    /// the first message, each message counted, none decoded, as (messages, seconds). The floor
    /// under any read of the store on this machine. `None` on SQLite and PostgreSQL.
    ///
    /// # Errors
    /// The server cannot be reached or the consumer fails.
    pub(crate) async fn raw_nats_read(
        &self,
        stream_id: Option<&str>,
    ) -> anyhow::Result<Option<(u64, f64)>> {
        use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
        use futures::StreamExt;
        if self.name != "nats" {
            return Ok(None);
        }
        let url = eventfold_nats::NatsUrl::parse(&self.url).map_err(anyhow::Error::msg)?;
        let client = async_nats::connect(&url.server)
            .await
            .with_context(|| format!("connecting to {}", url.server))?;
        let stream = async_nats::jetstream::new(client)
            .get_stream(&url.stream)
            .await?;
        let prefix = format!("{}.e", url.stream);
        let filter_subject = stream_id.map_or_else(
            || format!("{prefix}.>"),
            |s| eventfold_nats::message::subject(&prefix, s),
        );
        let started = std::time::Instant::now();
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let mut count = 0u64;
        while let Some(m) = messages.next().await {
            let m = m?;
            count += 1;
            if m.info().map_err(|e| anyhow::anyhow!("{e}"))?.pending == 0 {
                break;
            }
        }
        Ok(Some((count, started.elapsed().as_secs_f64())))
    }

    /// Brings the planner's statistics up to date after the bench's writes, as autovacuum does
    /// on a live PostgreSQL database within a minute or so (`autovacuum_naptime`). A table
    /// never analyzed has no statistics: the planner then guesses that a stream holds a few
    /// rows and replays a long one by a bitmap scan and a sort spilled to disk, not the index's
    /// order (about 25% slower at 100,000 events). SQLite keeps no statistics unless asked: a
    /// no-op there.
    pub(crate) async fn analyze(&self) -> anyhow::Result<()> {
        if let Cleanup::Database { pools, .. } = &self.cleanup {
            sqlx::query("ANALYZE")
                .execute(&pools[0])
                .await
                .context("analyzing the scratch database")?;
        }
        Ok(())
    }

    pub(crate) async fn remove(self) -> anyhow::Result<()> {
        let Scratch {
            store,
            read_models,
            stats,
            raw,
            raw_indexed,
            cleanup,
            ..
        } = self;
        // Everything that holds the store or a connection goes before the database does.
        drop((store, read_models, stats, raw, raw_indexed));
        if let Cleanup::Streams(urls, _) = &cleanup {
            for url in urls {
                eventfold_nats::NatsStore::delete(url).await?;
            }
        }
        if let Cleanup::Database { admin, name, pools } = cleanup {
            use sqlx::Connection;
            for pool in pools {
                pool.close().await;
            }
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await?;
        }
        Ok(())
    }
}

pub(crate) type RawJob = (
    Vec<(String, u64, NewEvent)>,
    oneshot::Sender<Result<(), String>>,
);

/// The raw baseline: plain INSERTs of the same rows (same columns, same bytes), with the same
/// durability as the store (SQLite: WAL + `synchronous=FULL`, group-committed by one writer thread;
/// PostgreSQL: one transaction per command, `synchronous_commit=on`, a pool as large as the client
/// count), into a table with only a primary key, or (`indexed`) with eventfold's two unique
/// indexes as well. No version checks.
#[derive(Clone)]
pub(crate) enum RawBaseline {
    Sqlite(mpsc::Sender<RawJob>),
    Postgres {
        pool: sqlx::PgPool,
        table: &'static str,
    },
    /// JetStream: each event one publish (its envelope and payload as JSON) awaiting its ack;
    /// `checked` adds `Nats-Expected-Last-Subject-Sequence` (the stream's last sequence, kept
    /// here), the server's version check.
    Nats {
        js: Box<async_nats::jetstream::Context>,
        prefix: String,
        checked: bool,
        last: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    },
}

impl RawBaseline {
    fn sqlite(path: &Path, indexed: bool) -> anyhow::Result<Self> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE raw (id INTEGER PRIMARY KEY, event_id BLOB, stream_id TEXT, stream_version INTEGER, \
             event_type TEXT, schema_version INTEGER, event_time INTEGER, ingest_time INTEGER, actor TEXT, \
             tenant_id TEXT, payload TEXT)",
        )?;
        if indexed {
            conn.execute_batch(
                "CREATE UNIQUE INDEX raw_event_id ON raw (event_id); \
                 CREATE UNIQUE INDEX raw_stream ON raw (stream_id, stream_version);",
            )?;
        }
        let (tx, rx) = mpsc::channel::<RawJob>();
        std::thread::spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                group.extend(rx.try_iter());
                let result = (|| -> rusqlite::Result<()> {
                    conn.execute_batch("BEGIN")?;
                    let mut insert = conn.prepare_cached(
                        "INSERT INTO raw (event_id, stream_id, stream_version, event_type, schema_version, \
                         event_time, ingest_time, actor, tenant_id, payload) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )?;
                    let now = Utc::now().timestamp_micros();
                    for (rows, _) in &group {
                        for (stream, version, e) in rows {
                            insert.execute(rusqlite::params![
                                e.event_id.as_bytes().as_slice(),
                                stream,
                                version,
                                e.event_type,
                                e.schema_version,
                                e.event_time.timestamp_micros(),
                                now,
                                e.metadata.actor.as_str(),
                                e.metadata.tenant_id,
                                e.payload
                            ])?;
                        }
                    }
                    conn.execute_batch("COMMIT")
                })();
                for (_, reply) in group {
                    let _ = reply.send(result.as_ref().map(|_| ()).map_err(ToString::to_string));
                }
            }
        });
        Ok(Self::Sqlite(tx))
    }

    async fn postgres(url: &str, table: &'static str, indexed: bool) -> anyhow::Result<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(64)
            .connect(url)
            .await?;
        sqlx::raw_sql(&format!(
            "CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, event_id UUID, stream_id TEXT, stream_version BIGINT, \
             event_type TEXT, schema_version INTEGER, event_time TIMESTAMPTZ, ingest_time TIMESTAMPTZ, actor TEXT, \
             tenant_id TEXT, payload TEXT{})",
            if indexed { ", UNIQUE (event_id), UNIQUE (stream_id, stream_version)" } else { "" }
        ))
        .execute(&pool)
        .await?;
        Ok(Self::Postgres { pool, table })
    }

    async fn nats(url: &str, checked: bool) -> anyhow::Result<Self> {
        let url = eventfold_nats::NatsUrl::parse(url).map_err(anyhow::Error::msg)?;
        let client = async_nats::connect(&url.server)
            .await
            .with_context(|| format!("connecting to {}", url.server))?;
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: url.stream.clone(),
            subjects: vec![format!("{}.>", url.stream)],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("creating the baseline's JetStream stream")?;
        Ok(Self::Nats {
            js: Box::new(js),
            prefix: url.stream,
            checked,
            last: Arc::default(),
        })
    }

    pub(crate) async fn insert(&self, rows: Vec<(String, u64, NewEvent)>) -> anyhow::Result<()> {
        match self {
            Self::Nats {
                js,
                prefix,
                checked,
                last,
            } => {
                for (stream, _, e) in rows {
                    let subject = eventfold_nats::message::subject(prefix, &stream);
                    let body = serde_json::to_vec(&e)?;
                    let mut headers = async_nats::HeaderMap::new();
                    if *checked {
                        let seq = last
                            .lock()
                            .map_err(|_| anyhow::anyhow!("baseline lock poisoned"))?
                            .get(&stream)
                            .copied()
                            .unwrap_or(0);
                        headers.insert(
                            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                            seq.to_string().as_str(),
                        );
                    }
                    let ack = js
                        .publish_with_headers(subject, headers, body.into())
                        .await?
                        .await?;
                    if *checked {
                        last.lock()
                            .map_err(|_| anyhow::anyhow!("baseline lock poisoned"))?
                            .insert(stream, ack.sequence);
                    }
                }
                Ok(())
            }
            Self::Sqlite(jobs) => {
                let (tx, rx) = oneshot::channel();
                jobs.send((rows, tx))
                    .map_err(|_| anyhow::anyhow!("baseline writer stopped"))?;
                rx.await?.map_err(|e| anyhow::anyhow!(e))
            }
            Self::Postgres { pool, table } => {
                // One statement, one transaction per command (autocommit).
                let n = rows.len();
                let (mut ids, mut streams, mut versions, mut types, mut payloads, mut times) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                for (stream, version, e) in rows {
                    ids.push(e.event_id);
                    streams.push(stream);
                    versions.push(version as i64);
                    types.push(e.event_type);
                    payloads.push(e.payload);
                    times.push(e.event_time);
                }
                sqlx::query(&format!(
                    "INSERT INTO {table} (event_id, stream_id, stream_version, event_type, schema_version, event_time, \
                     ingest_time, actor, tenant_id, payload) SELECT i, s, v, t, 1, et, now(), 'system:bench', 'default', p \
                     FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::timestamptz[], $6::text[]) \
                     AS u(i, s, v, t, et, p)"
                ))
                .bind(ids)
                .bind(streams)
                .bind(versions)
                .bind(types)
                .bind(times)
                .bind(payloads)
                .execute(pool)
                .await?;
                Ok(())
            }
        }
    }
}
