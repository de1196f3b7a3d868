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
