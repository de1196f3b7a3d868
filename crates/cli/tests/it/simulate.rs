//! `eventfold simulate flash-sale` on a smaller crowd, through the real binary: the server runs as
//! a child process and is killed with SIGKILL half-way. On the embedded default, and on
//! PostgreSQL + Redis + Kafka (Tansu), where kcat checks that every accepted order was published.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use eventfold_kafka::testing::broker;

/// Runs the simulation: `globals` before the subcommand, `sub` after its fixed arguments.
fn simulate(store: &str, globals: &[&str], sub: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_eventfold"))
        .args(["--store", store])
        .args(globals)
        .args([
            "simulate",
            "flash-sale",
            "--stock",
            "60",
            "--buyers",
            "600",
            "--attempts",
            "6000",
            "--concurrency",
            "16",
            "--unpaid-order-timeout-secs",
            "2",
            "--kill-server",
            "--json",
        ])
        .args(sub)
        .env_remove("RUST_LOG")
        .env_remove("EVENTFOLD_REDIS")
        .output()
        .expect("run eventfold simulate");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success(),
        "the simulation failed: {report:#} stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

fn check(report: &Value) {
    for (key, want) in [
        ("oversold", 0),
        ("over_limit_buyers", 0),
        ("double_charges", 0),
        ("charges_without_paid_order", 0),
        ("unpaid_not_cancelled", 0),
        ("failed_not_cancelled", 0),
        ("stuck_sagas", 0),
        ("errors", 0),
    ] {
        assert_eq!(report[key], want, "{key} in {report:#}");
    }
    assert_eq!(report["stock_reconciled"], true, "{report:#}");
    assert_eq!(report["killed"], true, "{report:#}");
    assert_eq!(report["charges"], report["paid_orders"], "{report:#}");
    let accepted = report["accepted"].as_u64().unwrap();
    assert!(accepted > 0 && accepted <= 60 * 2, "{report:#}");
    assert!(report["paid_orders"].as_u64().unwrap() > 0, "{report:#}");
    assert!(
        report["cancelled_orders"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    assert!(report["sold_out"].as_u64().unwrap() > 0, "{report:#}");
    for key in ["attempts_per_sec", "p50_ms", "p95_ms", "p99_ms"] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key} in {report:#}");
    }
}

#[test]
fn a_crowd_on_the_embedded_default_with_the_server_killed_half_way() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("sim.db").display());
    check(&simulate(&store, &[], &[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_on_postgres_redis_and_kafka_with_the_server_killed_half_way() {
    let db = eventfold_postgres::testing::fresh_db().await;
    let redis = std::env::var("EVENTFOLD_TEST_REDIS").expect("EVENTFOLD_TEST_REDIS (scripts/test)");
    let prefix = format!("sim{}", std::process::id());
    let (url, brokers) = (db.url.clone(), broker());
    let report = {
        let (url, brokers, prefix) = (url.clone(), brokers.clone(), prefix.clone());
        tokio::task::spawn_blocking(move || {
            let globals = ["--kafka-brokers", &brokers, "--kafka-topic-prefix", &prefix];
            simulate(&url, &globals, &["--redis", &redis])
        })
        .await
        .unwrap()
    };
    check(&report);
    // Every accepted order reached Kafka through the relay (checked with kcat).
    let accepted = report["accepted"].as_u64().unwrap() as usize;
    let topic = format!("{prefix}.order");
    let started = Instant::now();
    let mut created = HashSet::new();
    while started.elapsed() < Duration::from_secs(60) {
        let out = Command::new("kcat")
            .args([
                "-C",
                "-b",
                &brokers,
                "-t",
                &topic,
                "-o",
                "beginning",
                "-e",
                "-q",
            ])
            .args(["-f", "%k\t%h\n"])
            .output()
            .expect("run kcat");
        created = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("event_type=OrderCreated"))
            .filter_map(|l| {
                let headers = l.split_once('\t')?.1;
                headers
                    .split(',')
                    .find_map(|h| h.strip_prefix("stream_id="))
                    .map(str::to_owned)
            })
            .collect();
        if created.len() >= accepted {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(created.len(), accepted, "orders on {topic}: {report:#}");
}
