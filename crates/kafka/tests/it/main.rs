//! The outbox relay against a real Kafka-protocol broker (Tansu, started by `scripts/test`),
//! checked with an independent client (`kcat`).

mod exactly_once;
mod faults;
mod membership;
mod support;
mod tansu_gaps;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use eventfold_core::{AppendRequest, EventStore, ExpectedVersion};
use eventfold_kafka::{partition_key, Relay, RelayConfig};

use support::{broker, consume, event, unique_prefix};

/// Appends `per_stream` events to each of `streams` streams in two categories, interleaved.
async fn fill(store: &Arc<dyn EventStore>, streams: usize, per_stream: u64, round: u64) {
    for v in 0..per_stream {
        let requests = (0..streams)
            .map(|s| {
                let category = if s % 2 == 0 { "order" } else { "account" };
                let version = round * per_stream + v;
                AppendRequest::new(
                    format!("{category}-{s}"),
                    if version == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(version)
                    },
                    vec![event(version + 1)],
                )
            })
            .collect();
        for r in store.append_many(requests).await.unwrap() {
            r.unwrap();
        }
    }
}

fn sqlite_store() -> (Arc<dyn EventStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = eventfold_sqlite::SqliteStore::open(dir.path().join("e.db")).unwrap();
    (Arc::new(store), dir)
}

/// A relay whose checkpoints predate shards by partition key resumes every shard from the lowest
/// of them: it repeats events, never skips one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_from_before_partition_keys_resume_from_the_lowest() {
    let (store, _dir) = sqlite_store();
    fill(&store, 20, 10, 0).await;
    let mut config = RelayConfig::new(broker());
    config.topic_prefix = unique_prefix();
    for shard in 0..config.shards {
        let cp = if shard == 5 { 120 } else { 180 };
        store
            .save_checkpoint(&format!("relay:{}:{shard}", config.topic_prefix), cp)
            .await
            .unwrap();
    }
    let relay = Relay::new(store.clone(), config.clone()).unwrap();
    let first = relay.publish_pending().await.unwrap();
    assert_eq!(first.published, 80, "positions 121..=200");
    assert_eq!(
        store
            .load_checkpoint(&relay.checkpoint_name(5))
            .await
            .unwrap(),
        Some(200)
    );
    assert_eq!(relay.publish_pending().await.unwrap().published, 0);
}

/// Every event reaches its category's topic once, keyed by its stream's partition key, with the
/// envelope in headers, in stream order; a second run publishes nothing (checkpoints).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_every_event_keyed_by_partition_key_in_stream_order() {
    let (store, _dir) = sqlite_store();
    fill(&store, 20, 10, 0).await;
    let mut config = RelayConfig::new(broker());
    config.topic_prefix = unique_prefix();
    let relay = Relay::new(store.clone(), config.clone()).unwrap();
    let first = relay.publish_pending().await.unwrap();
    assert_eq!(first.published, 200);
    assert_eq!(first.position, 200);
    assert_eq!(relay.publish_pending().await.unwrap().published, 0);

    let mut seen_ids = HashSet::new();
    for category in ["order", "account"] {
        let messages = consume(&format!("{}.{category}", config.topic_prefix), 100);
        assert_eq!(messages.len(), 100, "{category}");
        let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
        for m in &messages {
            assert!(m.headers["stream_id"].starts_with(&format!("{category}-")));
            assert_eq!(m.key, partition_key(&m.headers["stream_id"]));
            assert_eq!(m.headers["event_type"], "Happened");
            assert_eq!(m.headers["schema_version"], "1");
            assert_eq!(m.headers["tenant_id"], "default");
            assert!(m.headers["event_time"].ends_with('Z'));
            let version: u64 = m.headers["stream_version"].parse().unwrap();
            let body: serde_json::Value = serde_json::from_str(&m.value).unwrap();
            assert_eq!(body["n"], version, "the body is the stored payload");
            versions
                .entry(m.headers["stream_id"].clone())
                .or_default()
                .push(version);
            assert!(
                seen_ids.insert(m.headers["event_id"].clone()),
                "published once"
            );
        }
        for (key, v) in versions {
            assert_eq!(v, (1..=10).collect::<Vec<_>>(), "order of stream {key}");
        }
    }
    // Appends after the first run are published by the next one, and only they.
    fill(&store, 20, 10, 1).await;
    assert_eq!(relay.publish_pending().await.unwrap().published, 200);
}

/// Two relays splitting the shards publish every event exactly once between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_owning_disjoint_shards_publish_each_event_once() {
    let (store, _dir) = sqlite_store();
    fill(&store, 30, 4, 0).await;
    let prefix = unique_prefix();
    let mut published = 0;
    for owned in [(0..8).collect::<Vec<u32>>(), (8..16).collect()] {
        let mut config = RelayConfig::new(broker());
        config.topic_prefix = prefix.clone();
        config.owned = Some(owned);
        published += Relay::new(store.clone(), config)
            .unwrap()
            .publish_pending()
            .await
            .unwrap()
            .published;
    }
    assert_eq!(published, 120);
    let mut ids = HashSet::new();
    for category in ["order", "account"] {
        for m in consume(&format!("{prefix}.{category}"), 60) {
            assert!(ids.insert(m.headers["event_id"].clone()));
        }
    }
    assert_eq!(ids.len(), 120);
}

/// A relay stopped at random moments (its task aborted mid-batch, as a crash would) while
/// events are appended: after a final run every event is on the topic at least once, and the
/// first arrival of each key's events is in stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_aborted_mid_batch_loses_nothing_and_keeps_per_key_order() {
    let (store, _dir) = sqlite_store();
    let mut config = RelayConfig::new(broker());
    config.topic_prefix = unique_prefix();
    config.batch_size = 50;
    for round in 0..6u64 {
        fill(&store, 10, 20, round).await;
        let relay = Relay::new(store.clone(), config.clone()).unwrap();
        let task = tokio::spawn(async move { relay.publish_pending().await });
        // Abort somewhere inside the run (delivery waits, checkpoint saves, reads).
        tokio::time::sleep(std::time::Duration::from_millis(5 + round * 7)).await;
        task.abort();
        let _ = task.await;
    }
    let relay = Relay::new(store.clone(), config.clone()).unwrap();
    relay.publish_pending().await.unwrap();
    let total = 6 * 10 * 20;
    let mut first_seen: HashMap<String, Vec<u64>> = HashMap::new();
    let mut ids = HashSet::new();
    let mut messages = 0;
    for category in ["order", "account"] {
        for m in consume(&format!("{}.{category}", config.topic_prefix), total / 2) {
            messages += 1;
            if ids.insert(m.headers["event_id"].clone()) {
                first_seen
                    .entry(m.headers["stream_id"].clone())
                    .or_default()
                    .push(m.headers["stream_version"].parse().unwrap());
            }
        }
    }
    println!(
        "{messages} messages for {total} events ({} republished after aborts)",
        messages - total
    );
    assert_eq!(ids.len(), total, "every event at least once");
    assert!(messages >= total);
    for (stream, versions) in first_seen {
        assert_eq!(
            versions,
            (1..=120).collect::<Vec<u64>>(),
            "first arrivals of {stream} in order"
        );
    }
}

/// Polls `check` every 50 ms until it holds (at most 60 s); how long that took.
async fn wait_until(what: &str, mut check: impl FnMut() -> bool) -> std::time::Duration {
    let started = std::time::Instant::now();
    while !check() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "never: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// Relays in one group divide the shards (each shard owned by exactly one at every moment we
/// look), and when one leaves the other takes its shards: every event reaches the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_in_a_group_divide_the_shards_and_take_over_a_leavers() {
    let (store, _dir) = sqlite_store();
    let mut config = RelayConfig::new(broker());
    config.topic_prefix = unique_prefix();
    config.group = Some(format!("{}-relays", config.topic_prefix));
    let start = |config: &RelayConfig| {
        let relay = Arc::new(Relay::new(store.clone(), config.clone()).unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = {
            let relay = relay.clone();
            tokio::spawn(async move {
                relay
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await;
            })
        };
        (relay, stop, task)
    };
    let all: Vec<u32> = (0..16).collect();
    let (a, _stop_a, _task_a) = start(&config);
    wait_until("a owns every shard", || a.owned_shards() == all).await;
    fill(&store, 40, 5, 0).await;

    let (b, stop_b, task_b) = start(&config);
    let mut overlaps = Vec::new();
    let split = wait_until("a and b divide the shards", || {
        let (x, y) = (a.owned_shards(), b.owned_shards());
        if x.iter().any(|s| y.contains(s)) {
            overlaps.push((x.clone(), y.clone()));
        }
        let mut both: Vec<u32> = x.iter().chain(&y).copied().collect();
        both.sort_unstable();
        !x.is_empty() && !y.is_empty() && both == all
    })
    .await;
    println!(
        "a {:?}, b {:?} after {split:?}",
        a.owned_shards(),
        b.owned_shards()
    );
    fill(&store, 40, 5, 1).await;
    let stragglers: Vec<_> = {
        let (x, y) = (a.owned_shards(), b.owned_shards());
        x.into_iter().filter(|s| y.contains(s)).collect()
    };
    assert!(
        stragglers.is_empty() && overlaps.is_empty(),
        "a shard had two owners: {overlaps:?}"
    );

    // b leaves: a takes its shards back.
    let _ = stop_b.send(());
    task_b.await.unwrap();
    drop(b);
    let took = wait_until("a owns every shard again", || a.owned_shards() == all).await;
    println!("a took the leaver's shards {took:?} after it left");
    fill(&store, 40, 5, 2).await;

    let mut ids = HashSet::new();
    for category in ["order", "account"] {
        for m in consume(&format!("{}.{category}", config.topic_prefix), 300) {
            ids.insert(m.headers["event_id"].clone());
        }
    }
    assert_eq!(ids.len(), 600, "every event reached its topic");
}

/// A hot stream salted over 8 keys spreads over the topic's partitions; each salt keeps
/// stream order, and merging the salts by `stream_version` restores the whole stream's order.
/// An unsalted stream keeps one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_salted_hot_stream_spreads_over_partitions_and_merges_back_in_order() {
    use eventfold_kafka::consumer::VersionMerge;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};

    let (store, _dir) = sqlite_store();
    for (stream, n) in [("order-hot", 400u64), ("order-cold", 50)] {
        support::append(&store, stream, 0, n).await;
    }
    let mut config = RelayConfig::new(broker());
    config.topic_prefix = unique_prefix();
    config.topic_partitions = 8;
    config.salted_streams.insert("order-hot".into(), 8);
    let relay = Relay::new(store.clone(), config.clone()).unwrap();
    assert_eq!(relay.publish_pending().await.unwrap().published, 450);

    let topic = format!("{}.order", config.topic_prefix);
    // (partition, key, stream id, stream version), in the order each partition delivers.
    let messages = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", broker())
            .set("group.id", unique_prefix())
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        while out.len() < 450 && started.elapsed() < std::time::Duration::from_secs(60) {
            if let Some(Ok(m)) = consumer.poll(std::time::Duration::from_millis(100)) {
                let header = |name: &str| {
                    m.headers()
                        .and_then(|h| h.iter().find(|h| h.key == name))
                        .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                        .unwrap_or_default()
                };
                out.push((
                    m.partition(),
                    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    header("stream_id"),
                    header("stream_version").parse::<u64>().unwrap(),
                ));
            }
        }
        out
    })
    .await
    .unwrap();
    assert_eq!(messages.len(), 450);

    let hot: Vec<_> = messages.iter().filter(|m| m.2 == "order-hot").collect();
    let keys: HashSet<&str> = hot.iter().map(|m| m.1.as_str()).collect();
    let partitions: HashSet<i32> = hot.iter().map(|m| m.0).collect();
    println!(
        "hot stream: {} keys over partitions {partitions:?}",
        keys.len()
    );
    assert_eq!(keys.len(), 8, "eight salted keys");
    assert!(
        partitions.len() >= 3,
        "one hot key spread over {partitions:?}"
    );
    let cold: HashSet<(&str, i32)> = messages
        .iter()
        .filter(|m| m.2 == "order-cold")
        .map(|m| (m.1.as_str(), m.0))
        .collect();
    assert_eq!(
        cold,
        HashSet::from([(
            partition_key("order-cold").as_str(),
            cold.iter().next().unwrap().1
        )])
    );
    // Per salt: stream order.
    let mut per_key: HashMap<&str, Vec<u64>> = HashMap::new();
    for m in &hot {
        per_key.entry(m.1.as_str()).or_default().push(m.3);
    }
    for (key, versions) in &per_key {
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "salt {key} out of order"
        );
    }
    // Merged: the whole stream in order, whatever the interleaving of the partitions.
    let mut merge = VersionMerge::new(1);
    let mut merged = Vec::new();
    let mut by_partition: Vec<Vec<u64>> = vec![Vec::new(); 8];
    for m in &hot {
        by_partition[m.0 as usize].push(m.3);
    }
    // Read the partitions one after another (the worst interleaving for a merge).
    for versions in by_partition.iter().rev() {
        for v in versions {
            merged.extend(merge.push(*v, *v));
        }
    }
    assert_eq!(merged, (1..=400).collect::<Vec<u64>>());
}
