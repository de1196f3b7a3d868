//! The store goes away mid-run (PostgreSQL, or the NATS server of a NATS store): commands fail
//! with 503 and Retry-After, nothing committed is lost, and the service recovers by itself
//! within 5 s of the store coming back. Each test runs its own server, so it can stop it like a
//! crash (PostgreSQL `-m immediate`, nats-server SIGKILL).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use eventfold_postgres::testing::PrivateCluster;
use serde_json::json;

use eventfold_http::testing::TestApp;

#[derive(Default)]
struct Seen {
    /// When each acknowledged deposit was answered, and its amount in cents.
    acknowledged: Vec<(Instant, i64)>,
    /// 503 answers, and how many of them had a Retry-After header.
    unavailable: usize,
    with_retry_after: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_gives_503_then_recovers_within_5s_and_loses_nothing() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(PrivateCluster::start)
            .await
            .unwrap(),
    );
    let app = Arc::new(TestApp::open(&cluster.url(), Box::new(cluster.clone())).await);
    let (down, up) = (cluster.clone(), cluster.clone());
    outage_gives_503_then_recovers(
        app,
        move || down.stop_immediately(),
        move || up.start_server(),
    )
    .await;
}

/// The NATS server of a NATS store (read models in SQLite) killed and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_restart_gives_503_then_recovers_within_5s_and_loses_nothing() {
    let server = Arc::new(
        tokio::task::spawn_blocking(eventfold_nats::testing::PrivateServer::start)
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let options = eventfold_app::backend::OpenOptions {
        read_models: Some(format!(
            "sqlite://{}",
            dir.path().join("read-models.db").display()
        )),
        ..Default::default()
    };
    let backend = eventfold_app::backend::Backend::open_with(&server.url("outage"), &options)
        .await
        .unwrap();
    let app = Arc::new(TestApp::over(backend, Box::new((server.clone(), dir))));
    let (down, up) = (server.clone(), server.clone());
    outage_gives_503_then_recovers(app, move || down.kill(), move || up.start_server()).await;
}

/// Four clients deposit through an outage of the store (`stop` .. `start`).
async fn outage_gives_503_then_recovers(
    app: Arc<TestApp>,
    stop_store: impl FnOnce() + Send + 'static,
    start_store: impl FnOnce() + Send + 'static,
) {
    let opened = app
        .post(
            "/accounts",
            json!({"account_id": "outage", "owner": "o", "currency": "USD"}),
        )
        .await;
    assert_eq!(opened.status, StatusCode::CREATED, "{}", opened.body);

    // Four clients deposit in a loop; each deposit has its own Idempotency-Key and is retried
    // with that key on 503 until it is acknowledged, as a well-behaved client would.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (app, stop, seen) = (app.clone(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                let mut i = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let cents = client * 1000 + i;
                    let key = format!("outage-{client}-{i}");
                    let body = json!({"amount": format!("{}.{:02}", cents / 100, cents % 100), "currency": "USD"});
                    loop {
                        let r = app
                            .send(
                                Method::POST,
                                "/accounts/outage/deposit",
                                &[("idempotency-key", key.as_str())],
                                Some(body.clone()),
                            )
                            .await;
                        match r.status {
                            StatusCode::OK => {
                                seen.lock().unwrap().acknowledged.push((Instant::now(), cents));
                                break;
                            }
                            StatusCode::SERVICE_UNAVAILABLE => {
                                {
                                    let mut s = seen.lock().unwrap();
                                    s.unavailable += 1;
                                    if r.headers.contains_key("retry-after") {
                                        s.with_retry_after += 1;
                                    }
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            other => panic!("deposit {key}: {other} {}", r.body),
                        }
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(700)).await;
    let before_outage = seen.lock().unwrap().acknowledged.len();
    assert!(
        before_outage > 0,
        "no deposit went through before the outage"
    );
    tokio::task::spawn_blocking(stop_store).await.unwrap();
    // Longer than the pool's acquire timeout (2 s), so that waiting reads give up with a 503.
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::spawn_blocking(start_store).await.unwrap();
    let restarted = Instant::now();

    // Recovery: the first deposit acknowledged after the restart, within 5 s.
    let recovered = loop {
        let first = seen
            .lock()
            .unwrap()
            .acknowledged
            .iter()
            .map(|(t, _)| *t)
            .find(|t| *t > restarted);
        if let Some(t) = first {
            break t - restarted;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "no deposit acknowledged within 10 s of the store coming back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    println!(
        "acknowledged {} deposits ({} before the outage), {} answers 503, recovered {:?} after restart",
        seen.acknowledged.len(),
        before_outage,
        seen.unavailable,
        recovered
    );
    assert!(
        recovered < Duration::from_secs(5),
        "recovered {recovered:?} after restart"
    );
    assert!(seen.unavailable > 0, "the outage produced no 503");
    assert_eq!(
        seen.with_retry_after, seen.unavailable,
        "every 503 carries Retry-After"
    );
    // Nothing acknowledged is lost and nothing is applied twice: the balance is exactly the sum
    // of the acknowledged deposits, and there is one event per deposit.
    let total: i64 = seen.acknowledged.iter().map(|(_, c)| c).sum();
    let account = app.get("/accounts/outage").await;
    assert_eq!(account.status, StatusCode::OK, "{}", account.body);
    assert_eq!(
        account.body["balance"]["amount"],
        format!("{}.{:02}", total / 100, total % 100)
    );
    assert_eq!(
        account.body["version"].as_u64(),
        Some(1 + seen.acknowledged.len() as u64)
    );
}
