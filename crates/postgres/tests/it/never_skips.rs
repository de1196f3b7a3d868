//! The global position never skips (the Marten / Axon / Eventuous bug): 32 concurrent writers in
//! four store instances (four "processes"), transactions that roll back, random delays, and 4
//! subscribers tailing the log. Every subscriber must see every committed event exactly once, in
//! position order, and nothing of a rolled-back transaction.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use eventfold_core::{
    catch_up, testkit, Actor, AppendRequest, EventStore, ExpectedVersion, NewEvent,
};
use eventfold_postgres::PostgresStore;
use sqlx::Connection;

use crate::fresh_db;

const WRITERS: u64 = 32;
const PER_WRITER: u64 = 30;

fn ev(writer: u64, n: u64) -> NewEvent {
    testkit::event(
        "Written",
        Actor::parse("user:writer").unwrap(),
        format!("{{\"w\":{writer},\"n\":{n}}}"),
    )
}

/// A little jitter from the clock, so writers and rollbacks interleave differently each run.
fn jitter(max_us: u64) -> Duration {
    let nanos = u64::from(chrono::Utc::now().timestamp_subsec_nanos());
    Duration::from_micros(nanos % max_us.max(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_see_every_committed_event_once_in_order_and_no_rolled_back_one() {
    let db = fresh_db().await;
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(Arc::new(PostgresStore::connect(&db.url).await.unwrap()));
    }
    let total = (WRITERS * PER_WRITER) as usize;
    let subscribers: Vec<_> = (0..4)
        .map(|i| {
            let store: Arc<dyn EventStore> = stores[i].clone();
            tokio::spawn(async move {
                let mut sub = catch_up(store, 0, 37);
                let mut seen = Vec::new();
                while seen.len() < total {
                    let batch = tokio::time::timeout(Duration::from_secs(30), sub.next_batch())
                        .await
                        .expect("subscriber stalled")
                        .unwrap();
                    seen.extend(batch);
                }
                seen
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = stores[(w % 4) as usize].clone();
            tokio::spawn(async move {
                for n in 0..PER_WRITER {
                    tokio::time::sleep(jitter(2_000)).await;
                    let expected = if n == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(n)
                    };
                    store
                        .append(AppendRequest::new(
                            format!("w-{w}"),
                            expected,
                            vec![ev(w, n)],
                        ))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    // Rogue writers follow the append protocol (lock, read head, insert the next position), wait,
    // and roll back: their positions are reused by later commits and must never be seen.
    let rogues: Vec<_> = (0..4)
        .map(|r| {
            let url = db.url.clone();
            tokio::spawn(async move {
                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                for k in 0..20 {
                    let mut tx = conn.begin().await.unwrap();
                    sqlx::query("SELECT pg_advisory_xact_lock($1)")
                        .bind(eventfold_postgres::APPEND_LOCK)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events").fetch_one(&mut *tx).await.unwrap();
                    sqlx::query(
                        "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version, \
                         event_time, ingest_time, actor, tenant_id, payload) \
                         VALUES ($1, $2, $3, 1, 'RolledBack', 1, now(), now(), 'user:rogue', 'default', '{}')",
                    )
                    .bind(head + 1)
                    .bind(uuid::Uuid::now_v7())
                    .bind(format!("rogue-{r}-{k}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                    tokio::time::sleep(jitter(3_000)).await;
                    tx.rollback().await.unwrap();
                    tokio::time::sleep(jitter(3_000)).await;
                }
            })
        })
        .collect();
    for t in writers.into_iter().chain(rogues) {
        t.await.unwrap();
    }
    let log = stores[0].read_all(0, usize::MAX).await.unwrap();
    assert_eq!(log.len(), total);
    for s in subscribers {
        let seen = s.await.unwrap();
        assert_eq!(seen.len(), total);
        assert!(
            seen.windows(2)
                .all(|w| w[0].global_position < w[1].global_position),
            "out of order"
        );
        let ids: HashSet<_> = seen.iter().map(|e| e.event_id).collect();
        assert_eq!(ids.len(), total, "an event was delivered twice");
        assert!(
            seen.iter().all(|e| e.event_type == "Written"),
            "a rolled-back event was delivered"
        );
        assert_eq!(seen, log);
    }
    // Four appenders in four store instances interleaved their groups: the hash chain is
    // still one chain, each group linked to the head it found under the lock.
    let mut chain = eventfold_core::chain::ChainVerifier::new(eventfold_core::chain::Scope::Log);
    for row in stores[0].read_chain(0, usize::MAX).await.unwrap() {
        chain.check(&row).unwrap_or_else(|b| panic!("{b}"));
    }
    assert_eq!(chain.checked(), total as u64);
}
