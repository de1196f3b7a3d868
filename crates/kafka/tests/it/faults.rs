//! Faults on librdkafka's mock cluster (Tansu cannot take a broker down on request): the broker
//! goes away while the relay publishes, and while the relay publishes and a batch consumer
//! consumes; nothing is lost, and both resume by themselves within a second of its return.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventfold_core::EventStore;
use eventfold_kafka::{Relay, RelayConfig};
use rdkafka::message::OwnedMessage;
use rdkafka::mocking::MockCluster;

use crate::support::{append, event_id_of, read_from_start};

/// Every event id on `topic` (partitions 0..3) read from the beginning, for up to `within`.
fn read_ids(bootstrap: &str, topic: &str, expected: usize, within: Duration) -> HashSet<String> {
    let distinct = |m: &[OwnedMessage]| m.iter().filter_map(event_id_of).collect::<HashSet<_>>();
    let messages = read_from_start(bootstrap, topic, within, Duration::ZERO, |m| {
        distinct(m).len() >= expected
    });
    distinct(&messages)
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

/// Collects what the batch consumer writes: event ids, in memory.
struct Collect(std::sync::Mutex<HashSet<String>>);

#[async_trait::async_trait]
impl eventfold_kafka::batch::BatchSink<String> for Collect {
    async fn write(&self, items: &[&String]) -> Result<(), eventfold_kafka::batch::SinkError> {
        let mut seen = self.0.lock().unwrap();
        for id in items {
            seen.insert((*id).clone());
        }
        Ok(())
    }
}

/// The broker goes away for 10 s while the relay publishes and a batch consumer consumes: after
/// it returns, every event reaches the consumer's sink within 5 s, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_for_10_s_while_publishing_and_consuming_loses_nothing() {
    use eventfold_kafka::batch::{run_batch_consumer, BatchConfig};
    use eventfold_kafka::ConsumerConfig;

    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(eventfold_sqlite::SqliteStore::open(dir.path().join("e.db")).unwrap());
    for topic in ["both.order", "both.order.dlq"] {
        cluster.create_topic(topic, 3, 1).unwrap();
    }
    let mut config = RelayConfig::new(bootstrap.clone());
    config.topic_prefix = "both".into();
    config.create_topics = false;
    let relay = Arc::new(Relay::new(store.clone(), config).unwrap());
    let sink = Arc::new(Collect(std::sync::Mutex::new(HashSet::new())));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let relaying = {
        let (relay, stop) = (relay.clone(), stopped(stop_rx.clone()));
        tokio::spawn(async move { relay.run(stop).await })
    };
    let consuming = {
        let (sink, stop) = (sink.clone(), stopped(stop_rx.clone()));
        let consumer = ConsumerConfig::new(&bootstrap, "both-consumer", &["both.order"]);
        let batch = BatchConfig {
            max_messages: 50,
            max_wait: Duration::from_millis(100),
            // The mock cluster does not answer CreateTopics; the topic is made above.
            create_dead_letter_topic: false,
            ..BatchConfig::default()
        };
        tokio::spawn(async move {
            run_batch_consumer(
                &consumer,
                &batch,
                |m| {
                    m.event_id()
                        .map(str::to_owned)
                        .ok_or_else(|| "no event_id".to_owned())
                },
                sink.as_ref(),
                stop,
            )
            .await
        })
    };
    let count = |sink: &Collect| sink.0.lock().unwrap().len();
    append(&store, "order-a", 0, 100).await;
    let started = Instant::now();
    while count(&sink) < 100 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "consumed before the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    cluster.broker_down(1).unwrap();
    for chunk in 0..10 {
        append(&store, "order-a", 100 + chunk * 10, 10).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    cluster.broker_up(1).unwrap();
    let back = Instant::now();
    while count(&sink) < 200 && back.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = back.elapsed();
    println!("all 200 events consumed {took:?} after the broker came back");
    assert_eq!(count(&sink), 200, "every event, none lost");
    assert!(took < Duration::from_secs(5), "recovered in {took:?}");
    stop_tx.send(true).unwrap();
    relaying.await.unwrap();
    let stats = consuming.await.unwrap().unwrap();
    assert_eq!(stats.dead_lettered, 0);
    drop(cluster);
}
