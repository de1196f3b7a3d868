//! SIGTERM ends `eventfold serve` cleanly: in-flight requests drain, every background worker
//! stops, and the checkpoints they leave are durable: a restart appends nothing twice and loses
//! nothing.

use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::start_serve;

/// `eventfold serve` on `db` with a half-second unpaid-order timeout, logging to `log`.
async fn serve(db: &std::path::Path, log: &std::path::Path) -> (Child, String) {
    let log = std::fs::File::create(log).unwrap();
    start_serve(db, &["--unpaid-order-timeout-secs", "0.5"], log.into()).await
}

/// Sends SIGTERM and waits for the process to exit by itself; returns whether it exited 0.
fn terminate(mut child: Child) -> bool {
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if started.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("serve did not stop within 20 s of SIGTERM: a worker did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET url` as JSON.
async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

async fn create_order(client: &reqwest::Client, base: &str, id: &str) {
    let r = client
        .post(format!("{base}/orders"))
        .header("Idempotency-Key", format!("order-{id}"))
        .json(
            &json!({"order_id": id, "customer_id": "c", "store_id": "web", "currency": "USD",
                      "lines": [{"sku": "cd", "quantity": 1, "amount": "2.50"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

async fn deposit(client: &reqwest::Client, base: &str, account: &str, n: u64) -> Option<u16> {
    client
        .post(format!("{base}/accounts/{account}/deposit"))
        .header("Idempotency-Key", format!("dep-{account}-{n}"))
        .json(&json!({"amount": "1.00", "currency": "USD"}))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_every_worker_and_a_restart_appends_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("eventfold.db");
    let (log1, log2) = (
        dir.path().join("serve-1.log"),
        dir.path().join("serve-2.log"),
    );
    let client = reqwest::Client::new();
    let (child, base) = serve(&db, &log1).await;

    let accounts: Vec<String> = (0..4).map(|w| format!("term-{w}")).collect();
    for id in &accounts {
        let r = client
            .post(format!("{base}/accounts"))
            .json(&json!({"account_id": id, "owner": "o", "currency": "USD"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // Orders nobody pays: the unpaid-order timer cancels them half a second after creation,
    // some before the SIGTERM and the last ones only after the restart.
    let orders: Vec<String> = (0..12).map(|i| format!("unpaid-{i}")).collect();
    for id in &orders[..6] {
        create_order(&client, &base, id).await;
    }
    // Deposits under load, each with its own idempotency key; `tried` is how many each client
    // sent (acknowledged or not).
    let tried: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(vec![0; accounts.len()]));
    let mut tasks = Vec::new();
    for (w, id) in accounts.iter().enumerate() {
        let (client, base, id, tried) = (client.clone(), base.clone(), id.clone(), tried.clone());
        tasks.push(tokio::spawn(async move {
            for n in 1.. {
                tried.lock().unwrap()[w] = n;
                if deposit(&client, &base, &id, n).await != Some(200) {
                    return; // the server is going or gone
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    for id in &orders[6..] {
        create_order(&client, &base, id).await;
    }
    assert!(
        tokio::task::spawn_blocking(move || terminate(child))
            .await
            .unwrap(),
        "serve exited with a failure after SIGTERM"
    );
    for t in tasks {
        t.await.unwrap();
    }
    let log = std::fs::read_to_string(&log1).unwrap();
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        log.contains("eventfold stopped"),
        "every worker ended: {log}"
    );

    // Restart: every deposit tried before is sent again with its key (the acknowledged ones are
    // answered from their idempotency record; one that was in flight is applied now, once).
    let (child, base) = serve(&db, &log2).await;
    let tried = tried.lock().unwrap().clone();
    println!("deposits tried before the SIGTERM, per account: {tried:?}");
    for (id, n) in accounts.iter().zip(&tried) {
        for i in 1..=*n {
            assert_eq!(deposit(&client, &base, id, i).await, Some(200), "{id} #{i}");
        }
    }
    // The projections resume from their checkpoints and catch up with the log.
    let started = Instant::now();
    loop {
        let status: Value = get_json(&client, &format!("{base}/projections")).await;
        let caught_up = status
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["lag_events"] == 0 && p["checkpoint"] == p["head"]);
        let cancelled = {
            let mut all = true;
            for id in &orders {
                let o: Value = get_json(&client, &format!("{base}/orders/{id}")).await;
                all &= o["status"] == "CANCELLED";
            }
            all
        };
        if caught_up && cancelled {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "projections {status} or the unpaid-order timer did not catch up after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut events = 0;
    for (id, n) in accounts.iter().zip(&tried) {
        // Every deposit is in the stream once, and the read model counted each once.
        let state: Value = get_json(&client, &format!("{base}/accounts/{id}")).await;
        assert_eq!(state["version"], n + 1, "{id}: {state}");
        assert_eq!(state["balance"]["amount"], format!("{n}.00"), "{id}");
        let balance: Value = get_json(&client, &format!("{base}/balances/{id}")).await;
        assert_eq!(balance["balance"]["amount"], format!("{n}.00"), "{id}");
        events += n + 1;
    }
    for id in &orders {
        let history: Value = get_json(&client, &format!("{base}/orders/{id}/history")).await;
        let types: Vec<&str> = history
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["OrderCreated", "OrderCancelled"], "{id}");
        events += 2;
    }
    let ready: Value = get_json(&client, &format!("{base}/ready")).await;
    assert_eq!(
        ready["head_position"], events,
        "the log holds exactly the events asked for: nothing twice"
    );
    assert!(
        tokio::task::spawn_blocking(move || terminate(child))
            .await
            .unwrap(),
        "the restarted serve exited with a failure after SIGTERM"
    );
}
