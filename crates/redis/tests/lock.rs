//! Locks with fencing tokens against a real Redis (`EVENTFOLD_TEST_REDIS`) and the real
//! event stores: renewal keeps a working holder's lock, only the owner releases it, and a holder
//! paused past its lease has its late write refused by the store.

use std::sync::Arc;
use std::time::Duration;

use eventfold_core::{
    testkit, Actor, AppendRequest, EventStore, ExpectedVersion, NewEvent, StoreError,
};
use eventfold_redis::{LockError, LockOptions, LockService};

fn url() -> String {
    std::env::var("EVENTFOLD_TEST_REDIS").unwrap_or_else(|_| {
        panic!(
            "EVENTFOLD_TEST_REDIS is not set: run the tests through scripts/test, which uses the Redis on \
             127.0.0.1:6379 or starts one"
        )
    })
}

async fn service() -> LockService {
    let prefix = format!("test:{}:", uuid::Uuid::now_v7().simple());
    LockService::connect(&url(), &prefix).await.unwrap()
}

fn lease(ms: u64, renew: bool) -> LockOptions {
    LockOptions {
        lease: Duration::from_millis(ms),
        renew,
    }
}

fn stock_event(holder: &str) -> NewEvent {
    testkit::event(
        "StockAdjusted",
        Actor::system(holder),
        format!("{{\"by\":\"{holder}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_keeps_a_working_holders_lock_and_only_the_owner_releases_it() {
    let locks = service().await;
    let guard = locks
        .try_acquire("sku-1", lease(300, true))
        .await
        .unwrap()
        .expect("free");
    // Working for four leases: renewed all along, nobody else gets it.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(locks
            .try_acquire("sku-1", lease(300, true))
            .await
            .unwrap()
            .is_none());
    }
    assert!(guard.is_held());
    let first_fence = guard.fence();
    assert!(guard.release().await.unwrap(), "the owner frees it");
    let next = locks
        .try_acquire("sku-1", lease(300, true))
        .await
        .unwrap()
        .expect("free after release");
    assert!(next.fence() > first_fence, "every grant's token is higher");
    // Waiting for a held lock times out, naming it.
    let waited = locks
        .acquire("sku-1", lease(300, true), Duration::from_millis(200))
        .await;
    assert!(
        matches!(&waited, Err(LockError::Timeout { resource, .. }) if resource == "sku-1"),
        "{:?}",
        waited.err()
    );
    // A bad resource name is refused before Redis is asked.
    assert!(matches!(
        locks.try_acquire("", lease(300, true)).await,
        Err(LockError::InvalidResource(0))
    ));
}

/// Holder A takes the lock and pauses for longer than its lease (no renewal happens while a
/// process is paused); B takes the lock and writes; A wakes and writes: the store refuses A's
/// write, and A's release does not free B's lock.
async fn paused_holder_is_fenced(store: Arc<dyn EventStore>) {
    let locks = service().await;
    let stream = format!("stock-{}", uuid::Uuid::now_v7().simple());
    let a = locks
        .try_acquire("sku-9", lease(200, false))
        .await
        .unwrap()
        .expect("free");
    store
        .append(
            AppendRequest::new(&stream, ExpectedVersion::Any, vec![stock_event("a")])
                .with_fence(a.fence_resource(), a.fence()),
        )
        .await
        .expect("a writes while it holds the lock");

    // A pauses for twice its lease.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = locks
        .acquire("sku-9", lease(5_000, true), Duration::from_secs(2))
        .await
        .expect("b gets the lock after a's lease expired");
    assert!(b.fence() > a.fence());
    store
        .append(
            AppendRequest::new(&stream, ExpectedVersion::Any, vec![stock_event("b")])
                .with_fence(b.fence_resource(), b.fence()),
        )
        .await
        .expect("b writes");

    // A wakes up and writes as if it still held the lock.
    let late = store
        .append(
            AppendRequest::new(&stream, ExpectedVersion::Any, vec![stock_event("a-late")])
                .with_fence(a.fence_resource(), a.fence()),
        )
        .await;
    match late {
        Err(StoreError::Fenced {
            presented, current, ..
        }) => assert_eq!((presented, current), (a.fence(), b.fence())),
        other => panic!("a's late write must be fenced, got {other:?}"),
    }
    let written: Vec<String> = store
        .read_stream(&stream, 1, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.metadata.actor.as_str().to_owned())
        .collect();
    assert_eq!(
        written,
        ["system:a", "system:b"],
        "a's late write changed nothing"
    );
    assert!(!a.release().await.unwrap(), "a no longer owns the lock");
    assert!(b.is_held(), "b's lock survived a's release");
    assert!(b.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_holder_paused_past_its_lease_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = eventfold_sqlite::SqliteStore::open(dir.path().join("e.db")).unwrap();
    paused_holder_is_fenced(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_holder_paused_past_its_lease_cannot_write() {
    let db = eventfold_postgres::testing::fresh_db().await;
    let store = eventfold_postgres::PostgresStore::connect(&db.url)
        .await
        .unwrap();
    paused_holder_is_fenced(Arc::new(store)).await;
}
