//! nats-server killed (SIGKILL) and started again while 8 writers append: nothing
//! acknowledged is lost, nothing is stored twice, the log stays gap-free and chained, appends
//! fail as `Unavailable` (HTTP 503 with `Retry-After`) while the server is away, and the store
//! recovers by itself: the same store object appends again once the server is back.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventfold_core::chain::{ChainVerifier, Scope};
use eventfold_core::{testkit, Actor, AppendRequest, EventStore, ExpectedVersion, StoreError};
use eventfold_nats::testing::PrivateServer;
use eventfold_nats::NatsStore;
use eventfold_sqlite::SqliteStore;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_server_loses_nothing_acknowledged_and_the_store_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let server = PrivateServer::start();
    let url = server.url("restart");
    let read_models = Arc::new(SqliteStore::open(dir.path().join("read-models.db")).unwrap());
    let store = Arc::new(NatsStore::connect(&url, read_models).await.unwrap());

    let acknowledged: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let refused_while_down = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (store, acknowledged, refused, stop) = (
                store.clone(),
                acknowledged.clone(),
                refused_while_down.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Every fourth append holds three events (one atomic batch).
                    let events: Vec<_> = (0..if k % 4 == 3 { 3 } else { 1 })
                        .map(|i| {
                            testkit::event(
                                "Written",
                                Actor::parse("user:writer").unwrap(),
                                format!("{{\"w\":{w},\"k\":{k},\"i\":{i}}}"),
                            )
                        })
                        .collect();
                    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                    let request =
                        AppendRequest::new(format!("w-{w}"), ExpectedVersion::Any, events);
                    match store.append(request).await {
                        Ok(_) => acknowledged.lock().unwrap().extend(ids),
                        Err(StoreError::Unavailable(_)) => {
                            refused.store(true, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("writer {w}: {e:?}"),
                    }
                    k += 1;
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(700)).await;
    let before_kill = acknowledged.lock().unwrap().len();
    assert!(
        before_kill > 50,
        "writers appended {before_kill} events before the kill"
    );
    server.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let while_down = acknowledged.lock().unwrap().len();
    server.start_server();
    // Recovered by itself: appends are acknowledged again.
    let mut recovered = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if acknowledged.lock().unwrap().len() > while_down + 50 {
            recovered = true;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        recovered,
        "the store did not append again after the server came back"
    );
    assert!(
        refused_while_down.load(Ordering::Relaxed),
        "appends while the server was away must fail as Unavailable"
    );

    let acknowledged = acknowledged.lock().unwrap().clone();
    let log = store.read_all(0, usize::MAX).await.unwrap();
    assert!(
        log.iter()
            .enumerate()
            .all(|(i, e)| e.global_position == i as u64 + 1),
        "the log has a gap"
    );
    let stored: HashSet<Uuid> = log.iter().map(|e| e.event_id).collect();
    assert_eq!(stored.len(), log.len(), "an event is stored twice");
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !stored.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    let mut chain = ChainVerifier::new(Scope::Log);
    for row in store.read_chain(0, usize::MAX).await.unwrap() {
        chain.check(&row).unwrap_or_else(|b| panic!("{b}"));
    }
    assert_eq!(chain.checked(), log.len() as u64);
}
