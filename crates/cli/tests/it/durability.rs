//! An append is durable when acknowledged: kill -9 the server under load, then every deposit it
//! acknowledged must be in the store.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventfold_core::EventStore;
use serde_json::json;

use crate::start_serve;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("eventfold.db");
    let (mut child, base) = start_serve(&db, &[], Stdio::null()).await;
    let client = reqwest::Client::new();
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (client, base, acked) = (client.clone(), base.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("k-{w}");
            let open = client
                .post(format!("{base}/accounts"))
                .json(&json!({"account_id": id, "owner": "o", "currency": "USD"}))
                .send()
                .await;
            if !open.is_ok_and(|r| r.status() == 201) {
                return;
            }
            acked.lock().unwrap().push((id.clone(), 1));
            loop {
                let Ok(r) = client
                    .post(format!("{base}/accounts/{id}/deposit"))
                    .json(&json!({"amount": "1.00", "currency": "USD"}))
                    .send()
                    .await
                else {
                    return; // the server is gone
                };
                if r.status() != 200 {
                    return;
                }
                let Ok(body) = r.json::<serde_json::Value>().await else {
                    return;
                };
                acked
                    .lock()
                    .unwrap()
                    .push((id.clone(), body["version"].as_u64().unwrap()));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    child.kill().expect("kill -9"); // SIGKILL on Unix
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "only {} appends acknowledged before the kill",
        acked.len()
    );
    let store = eventfold_sqlite::SqliteStore::open(&db).expect("store reopens after kill -9");
    for (id, version) in &acked {
        let stream = format!("account-{id}");
        let events = store.read_stream(&stream, *version, 1).await.unwrap();
        assert_eq!(
            events.len(),
            1,
            "acknowledged {stream} version {version} is missing after kill -9"
        );
        assert_eq!(
            events[0].event_type,
            if *version == 1 {
                "AccountOpened"
            } else {
                "FundsDeposited"
            }
        );
    }
    // The log has no holes a reader could trip on and stays appendable.
    let all = store.read_all(0, usize::MAX).await.unwrap();
    assert!(all
        .windows(2)
        .all(|w| w[0].global_position < w[1].global_position));
    assert!(all.len() >= acked.len());
}
