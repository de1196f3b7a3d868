//! PostgreSQL-only behaviour: migrations, append-only, group commit.

use eventfold_core::{
    testkit, Actor, AppendRequest, EventStore, ExpectedVersion, NewEvent, StoreError,
};
use eventfold_postgres::PostgresStore;

use crate::fresh_db;

fn ev(n: u32) -> NewEvent {
    testkit::event(
        "Tested",
        Actor::parse("user:1").unwrap(),
        format!("{{\"n\":{n}}}"),
    )
}

#[tokio::test]
async fn migrations_run_twice_are_a_no_op_and_a_newer_schema_is_refused() {
    let db = fresh_db().await;
    let store = PostgresStore::connect(&db.url).await.unwrap();
    let first = store.schema_version();
    assert_eq!(first.previous, 0);
    assert!(first.current >= 2, "{first:?}");
    store
        .append(AppendRequest::new(
            "s-1",
            ExpectedVersion::NoStream,
            vec![ev(1)],
        ))
        .await
        .unwrap();
    let again = PostgresStore::connect(&db.url).await.unwrap();
    assert_eq!(again.head_position().await.unwrap(), 1);
    assert_eq!(again.schema_version().previous, first.current);
    assert_eq!(again.schema_version().current, first.current);
    sqlx::query("INSERT INTO eventfold_schema (version) VALUES (99)")
        .execute(again.pool())
        .await
        .unwrap();
    match PostgresStore::connect(&db.url).await {
        Err(StoreError::InvalidRequest(m)) => assert!(m.contains("schema version 99"), "{m}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn stored_events_cannot_be_updated_or_deleted() {
    let db = fresh_db().await;
    let store = PostgresStore::connect(&db.url).await.unwrap();
    store
        .append(AppendRequest::new(
            "s-1",
            ExpectedVersion::NoStream,
            vec![ev(1)],
        ))
        .await
        .unwrap();
    let update = sqlx::query("UPDATE events SET payload = '{}'")
        .execute(store.pool())
        .await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = sqlx::query("DELETE FROM events")
        .execute(store.pool())
        .await;
    assert!(delete.unwrap_err().to_string().contains("append-only"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_commits() {
    let db = fresh_db().await;
    let store = std::sync::Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    let tasks: Vec<_> = (0..256)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(AppendRequest::new(
                        format!("s-{i}"),
                        ExpectedVersion::NoStream,
                        vec![ev(i)],
                    ))
                    .await
                    .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stats = store.appender_stats();
    assert_eq!(stats.append_requests, 256);
    assert!(stats.commits < 128, "{stats:?}");
    assert_eq!(store.head_position().await.unwrap(), 256);
}

/// `read_all` reads by position ranges of its batch size: a range holding only archived stubs
/// is stepped over (the next hot event is returned, not an empty batch that would look like the
/// head), and a read past the head is empty.
#[tokio::test]
async fn a_read_steps_over_a_range_of_archived_stubs_to_the_next_hot_event() {
    let db = fresh_db().await;
    let store = PostgresStore::connect(&db.url).await.unwrap();
    for n in 1..=10 {
        store
            .append(AppendRequest::new(
                format!("s-{n}"),
                ExpectedVersion::NoStream,
                vec![ev(n)],
            ))
            .await
            .unwrap();
    }
    // Positions 2 to 8 become archived stubs (the only update the append-only trigger allows).
    sqlx::query(
        "UPDATE events SET payload = '', archived_digest = decode(repeat('00', 32), 'hex') \
         WHERE position BETWEEN 2 AND 8",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let positions = |events: Vec<eventfold_core::RecordedEvent>| -> Vec<u64> {
        events.iter().map(|e| e.global_position).collect()
    };
    assert_eq!(positions(store.read_all(0, 3).await.unwrap()), [1]);
    assert_eq!(positions(store.read_all(1, 3).await.unwrap()), [9, 10]);
    assert_eq!(positions(store.read_all(1, 100).await.unwrap()), [9, 10]);
    assert_eq!(positions(store.read_all(8, 1).await.unwrap()), [9]);
    assert!(store.read_all(10, 3).await.unwrap().is_empty());
    assert!(store.read_all(50, 3).await.unwrap().is_empty());
    let all = store.read_all(0, 100).await.unwrap();
    assert_eq!(positions(all.clone()), [1, 9, 10]);
    assert_eq!(all[2].payload, "{\"n\":10}");
    assert_eq!(all[2].stream_id, "s-10");
}

/// Lone appends (one event to an expected version: one SQL statement) and appends of several
/// events (the append function) from two store instances on the same streams keep one hash
/// chain, contiguous stream versions and every acknowledged event; a lone append that loses a
/// race to the other instance is answered as a conflict, never as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lone_appends_and_group_appends_from_two_instances_keep_one_chain() {
    use eventfold_core::chain::{ChainVerifier, Scope};
    let db = fresh_db().await;
    let stores = [
        std::sync::Arc::new(PostgresStore::connect(&db.url).await.unwrap()),
        std::sync::Arc::new(PostgresStore::connect(&db.url).await.unwrap()),
    ];
    let tasks: Vec<_> = (0..8u32)
        .map(|w| {
            let store = stores[w as usize % 2].clone();
            tokio::spawn(async move {
                let (mut acknowledged, mut conflicts) = (0u64, 0u64);
                for k in 0..40u32 {
                    // Two writers per stream, one on each instance: versions race.
                    let stream = format!("lone-{}", w / 2);
                    let version = store.stream_version(&stream).await.unwrap();
                    let expected = if version == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(version)
                    };
                    let events = if k % 4 == 3 {
                        vec![ev(w * 1000 + k), ev(w * 1000 + k + 500)]
                    } else {
                        vec![ev(w * 1000 + k)]
                    };
                    let n = events.len() as u64;
                    match store
                        .append(AppendRequest::new(stream, expected, events))
                        .await
                    {
                        Ok(_) => acknowledged += n,
                        Err(StoreError::VersionConflict { .. }) => conflicts += 1,
                        Err(e) => panic!("writer {w}: {e}"),
                    }
                }
                (acknowledged, conflicts)
            })
        })
        .collect();
    let mut acknowledged = 0;
    for t in tasks {
        acknowledged += t.await.unwrap().0;
    }
    let store = &stores[0];
    let head = store.head_position().await.unwrap();
    assert_eq!(head, acknowledged, "every acknowledged event, nothing else");
    let rows = store.read_chain(0, 10_000).await.unwrap();
    assert_eq!(rows.len() as u64, head);
    let mut log = ChainVerifier::new(Scope::Log);
    for r in &rows {
        log.check(r).unwrap_or_else(|b| panic!("{b}"));
    }
    for s in 0..4 {
        let stream = format!("lone-{s}");
        let chain = store.read_stream_chain(&stream, 1, 10_000).await.unwrap();
        assert_eq!(
            chain.len() as u64,
            store.stream_version(&stream).await.unwrap()
        );
        let mut one = ChainVerifier::new(Scope::Stream);
        for r in &chain {
            one.check(r).unwrap_or_else(|b| panic!("{b}"));
        }
    }
}

/// With the hash chain off (a measurement setting) a lone append leaves the chain columns empty,
/// as the append function does.
#[tokio::test]
async fn a_lone_append_without_the_chain_leaves_its_columns_empty() {
    let db = fresh_db().await;
    let store = PostgresStore::connect_with(
        &db.url,
        eventfold_postgres::PostgresConfig {
            hash_chain: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for (n, expected) in [
        (1, ExpectedVersion::NoStream),
        (2, ExpectedVersion::Exact(1)),
    ] {
        store
            .append(AppendRequest::new("off-1", expected, vec![ev(n)]))
            .await
            .unwrap();
    }
    let empty: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE prev_hash IS NULL AND hash IS NULL AND stream_id = 'off-1'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(empty, 2);
    assert_eq!(store.stream_version("off-1").await.unwrap(), 2);
}
