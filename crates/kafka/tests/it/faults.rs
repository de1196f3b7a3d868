//! Faults on librdkafka's mock cluster (Tansu cannot take a broker down on request): the broker
//! goes away while the relay publishes; nothing is lost, and publishing resumes by itself when it
//! returns.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventfold_core::{AppendRequest, EventStore, ExpectedVersion};
use eventfold_kafka::{Relay, RelayConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::support::event;

/// Every event id on `topic` (partitions 0..3) read from the beginning, for up to `within`.
fn read_ids(bootstrap: &str, topic: &str, expected: usize, within: Duration) -> HashSet<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "fault-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut ids = HashSet::new();
    let started = Instant::now();
    while ids.len() < expected && started.elapsed() < within {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            if let Some(headers) = m.headers() {
                use rdkafka::message::Headers;
                for h in headers.iter() {
                    if h.key == "event_id" {
                        ids.insert(
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
            }
        }
    }
    ids
}

async fn append(store: &Arc<dyn EventStore>, stream: &str, from: u64, n: u64) {
    for v in from..from + n {
        let expected = if v == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(v)
        };
        store
            .append(AppendRequest::new(stream, expected, vec![event(v + 1)]))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_for_10_s_loses_nothing_and_publishing_resumes_within_5_s() {
    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(eventfold_sqlite::SqliteStore::open(dir.path().join("e.db")).unwrap());
    cluster.create_topic("fault.order", 3, 1).unwrap();
    let mut config = RelayConfig::new(bootstrap.clone());
    config.topic_prefix = "fault".into();
    // The mock cluster does not answer CreateTopics; the topic is made above.
    config.create_topics = false;
    let relay = Arc::new(Relay::new(store.clone(), config).unwrap());
    let stop = tokio::sync::oneshot::channel::<()>();
    let running = {
        let (relay, rx) = (relay.clone(), stop.1);
        tokio::spawn(async move {
            relay
                .run(async {
                    let _ = rx.await;
                })
                .await
        })
    };
    append(&store, "order-a", 0, 100).await;
    let before = read_ids(&bootstrap, "fault.order", 100, Duration::from_secs(10));
    assert_eq!(before.len(), 100, "published before the outage");

    cluster.broker_down(1).unwrap();
    append(&store, "order-a", 100, 100).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    cluster.broker_up(1).unwrap();
    let back = Instant::now();
    let all = tokio::task::spawn_blocking(move || {
        read_ids(&bootstrap, "fault.order", 200, Duration::from_secs(20))
    })
    .await
    .unwrap();
    let took = back.elapsed();
    println!("all 200 events readable {took:?} after the broker came back");
    assert_eq!(all.len(), 200, "every event after the outage");
    assert!(took < Duration::from_secs(5), "recovered in {took:?}");
    let _ = stop.0.send(());
    running.await.unwrap();
    drop(cluster);
}
