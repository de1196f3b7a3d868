//! The notification consumer on Tansu, into SQLite and PostgreSQL: batches land in the
//! table, poison goes to the dead-letter topic with the error in a header, offsets are committed
//! (a restart reads nothing again), and with PostgreSQL down the batch is retried, the breaker
//! opens, nothing is committed to Kafka, and everything lands once the database is back.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventfold_app::messaging::notifications::{decode, NotificationSink};
use eventfold_kafka::batch::{run_batch_consumer, BatchConfig, BatchStats};
use eventfold_kafka::ConsumerConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use eventfold_kafka::testing::broker;

async fn publish(topic: &str, values: &[String]) {
    let keys: Vec<String> = (0..values.len()).map(|i| format!("u{}", i % 10)).collect();
    let messages: Vec<(&str, Option<&str>, &str)> = keys
        .iter()
        .zip(values)
        .map(|(k, v)| (k.as_str(), None, v.as_str()))
        .collect();
    eventfold_kafka::testing::publish(topic, 2, &messages).await;
}

fn valid(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"user_id": "u{}", "event_type": "OrderShipped", "title": "Shipped", "body": "order {i}"}}"#,
                i % 10
            )
        })
        .collect()
}

fn batch_config(topic: &str) -> BatchConfig {
    BatchConfig {
        max_messages: 100,
        max_wait: Duration::from_millis(300),
        tries: 3,
        open_for: Duration::from_millis(500),
        dead_letter_topic: Some(format!("{topic}.dlq")),
        create_dead_letter_topic: true,
    }
}

/// Consumes `topic` in `group` until the table holds `rows` (then 1 s more), or `limit`.
async fn consume(
    sink: &NotificationSink,
    topic: &str,
    group: &str,
    rows: u64,
    limit: Duration,
) -> BatchStats {
    let config = ConsumerConfig::new(broker(), group, &[topic]);
    let stop = async {
        let started = Instant::now();
        while sink.count().await.unwrap_or(0) < rows && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    run_batch_consumer(&config, &batch_config(topic), decode, sink, stop)
        .await
        .unwrap()
}

async fn batches_land_and_poison_is_dead_lettered(url: &str) {
    let sink = NotificationSink::open(url, None).await.unwrap();
    let topic = format!("notifications{}", uuid::Uuid::now_v7().simple());
    let mut values = valid(250);
    values.insert(40, "not json".into());
    values.insert(
        200,
        r#"{"user_id": "", "event_type": "X", "title": "t", "body": "b"}"#.into(),
    );
    publish(&topic, &values).await;

    let stats = consume(&sink, &topic, "notify", 250, Duration::from_secs(30)).await;
    assert_eq!(sink.count().await.unwrap(), 250);
    assert_eq!((stats.written, stats.dead_lettered), (250, 2), "{stats:?}");
    assert!(stats.batches >= 3, "{stats:?}");

    let dlq = Command::new("kcat")
        .args(["-b", &broker(), "-C", "-t", &format!("{topic}.dlq")])
        .args(["-o", "beginning", "-e", "-q", "-f", "%h|%s\n"])
        .output()
        .expect("kcat runs");
    let text = String::from_utf8_lossy(&dlq.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("error=value: expected"), "{text}");
    assert!(text.contains("error=user_id: empty"), "{text}");
    assert!(text.contains(&format!("source_topic={topic}")), "{text}");

    // The offsets were committed: the same group reads nothing again.
    let again = consume(&sink, &topic, "notify", 250, Duration::from_secs(0)).await;
    assert_eq!((again.written, again.dead_lettered), (0, 0), "{again:?}");
    // A new group re-reads everything: the source index keeps the table at 250 rows.
    let other = consume(&sink, &topic, "notify-2", 250, Duration::from_secs(0)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.count().await.unwrap(), 250, "{other:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_batches_land_and_poison_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("n.db").display());
    batches_land_and_poison_is_dead_lettered(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batches_land_and_poison_is_dead_lettered() {
    let db = eventfold_postgres::testing::fresh_db().await;
    batches_land_and_poison_is_dead_lettered(&db.url).await;
}

/// The group's committed offset on partition `p` of `topic`, if any.
fn committed(topic: &str, group: &str, p: i32) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, p);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    match got.find_partition(topic, p).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_during_a_batch_retries_opens_the_breaker_and_commits_nothing_early() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(eventfold_postgres::testing::PrivateCluster::start)
            .await
            .unwrap(),
    );
    let sink = Arc::new(NotificationSink::open(&cluster.url(), None).await.unwrap());
    let topic = format!("notifications{}", uuid::Uuid::now_v7().simple());
    publish(&topic, &valid(50)).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop_immediately())
        .await
        .unwrap();

    let consumer = {
        let (sink, topic) = (sink.clone(), topic.clone());
        tokio::spawn(async move {
            consume(&sink, &topic, "notify-down", 50, Duration::from_secs(40)).await
        })
    };
    // While the database is down (6 s): tries fail (each waits up to 1 s for a connection), the
    // breaker opens, and no offset is committed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (t, g) = (topic.clone(), "notify-down");
    let early = tokio::task::spawn_blocking(move || (committed(&t, g, 0), committed(&t, g, 1)))
        .await
        .unwrap();
    assert_eq!(
        early,
        (None, None),
        "offsets committed while the database was down"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_server())
        .await
        .unwrap();
    let stats = consumer.await.unwrap();
    println!(
        "failed tries {}, breaker opened {}, flush of the stalled batch {:.0} ms",
        stats.failed_tries, stats.breaker_opened, stats.flush_ms[0]
    );
    assert_eq!(sink.count().await.unwrap(), 50);
    assert!(stats.failed_tries >= 3, "{stats:?}");
    assert!(stats.breaker_opened >= 1, "{stats:?}");
    assert_eq!(stats.written, 50, "{stats:?}");
    let (t, g) = (topic.clone(), "notify-down");
    let after = tokio::task::spawn_blocking(move || {
        committed(&t, g, 0).unwrap_or(0) + committed(&t, g, 1).unwrap_or(0)
    })
    .await
    .unwrap();
    assert_eq!(after, 50, "both partitions committed to their ends");
}
