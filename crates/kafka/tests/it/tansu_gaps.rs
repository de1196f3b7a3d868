//! What Tansu 0.6 does not do yet, shown so that we notice when a newer Tansu closes a gap (and
//! then move the tests that run on librdkafka's mock cluster for it onto Tansu):
//! transactions (EndTxn), static membership (`group.instance.id`), and evicting a group member
//! that stopped heartbeating (its partitions stay assigned to it).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

use crate::support::{broker, unique_prefix};

async fn produce(topic: &str, n: usize) {
    let payloads: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    let messages: Vec<(&str, Option<&str>, &str)> =
        payloads.iter().map(|p| ("k", None, p.as_str())).collect();
    eventfold_kafka::testing::publish(topic, 1, &messages).await;
}

/// Messages a fresh consumer in a new group reads from `topic` within `within`.
fn consume_count(topic: &str, static_member: bool, within: Duration) -> usize {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker())
        .set("group.id", unique_prefix())
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    if static_member {
        config.set("group.instance.id", "static-1");
    }
    let consumer: BaseConsumer = config.create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < within {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_gap_transactions_do_not_commit() {
    let topic = format!("{}.txn", unique_prefix());
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("transactional.id", unique_prefix())
        .set("transaction.timeout.ms", "10000")
        .create()
        .unwrap();
    let outcome = tokio::task::spawn_blocking(move || {
        producer.init_transactions(Duration::from_secs(5))?;
        producer.begin_transaction()?;
        let _ = producer.send_result(FutureRecord::to(&topic).key("k").payload("v"));
        producer.commit_transaction(Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert!(
        outcome.is_err(),
        "Tansu committed a transaction: it supports them now; move the exactly-once tests from the mock \
         cluster to Tansu"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_gap_static_members_fetch_nothing() {
    let topic = format!("{}.static", unique_prefix());
    produce(&topic, 5).await;
    let (dynamic, fixed) = tokio::task::spawn_blocking(move || {
        (
            consume_count(&topic, false, Duration::from_secs(6)),
            consume_count(&topic, true, Duration::from_secs(6)),
        )
    })
    .await
    .unwrap();
    assert_eq!(dynamic, 5, "a dynamic member reads the topic");
    assert_eq!(
        fixed, 0,
        "a static member (group.instance.id) read {fixed} messages: Tansu supports static membership now; \
         move the static-membership test from the mock cluster to Tansu"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_gap_a_member_that_stops_heartbeating_is_never_evicted() {
    let topic = format!("{}.evict", unique_prefix());
    let group = unique_prefix();
    eventfold_kafka::create_topic(&broker(), &topic, 4)
        .await
        .unwrap();
    // Another member of the group in its own process (kcat), to be killed without leaving.
    let mut other = std::process::Command::new("kcat")
        .args(["-b", &broker(), "-q", "-G", &group, &topic])
        .args([
            "-X",
            "session.timeout.ms=6000",
            "-X",
            "heartbeat.interval.ms=500",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kcat runs (scripts/test installs it)");
    let (shared, most_after) = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker())
            .set("group.id", &group)
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .create()
            .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        let assigned = |c: &BaseConsumer| c.assignment().map(|a| a.count()).unwrap_or(0);
        let started = Instant::now();
        while !(1..4).contains(&assigned(&consumer)) && started.elapsed() < Duration::from_secs(30)
        {
            let _ = consumer.poll(Duration::from_millis(100));
        }
        let shared = assigned(&consumer);
        other.kill().unwrap();
        other.wait().unwrap();
        let mut most = 0;
        let killed = Instant::now();
        while killed.elapsed() < Duration::from_secs(20) {
            let _ = consumer.poll(Duration::from_millis(100));
            most = most.max(assigned(&consumer));
        }
        (shared, most)
    })
    .await
    .unwrap();
    assert!(
        (1..4).contains(&shared),
        "the two members never shared the topic (this member held {shared} of 4 partitions)"
    );
    assert!(
        most_after < 4,
        "Tansu evicted a member that stopped heartbeating and gave its partitions away: move the \
         killed-relay group test (eventfold relay_kill.rs) from the mock cluster to Tansu"
    );
}
