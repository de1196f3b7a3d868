//! Test support for crates that talk to a real Kafka-protocol broker (behind the `testing`
//! feature): the test broker's address, a publisher and a reader of a topic from its beginning.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// The test broker's bootstrap address: `EVENTFOLD_TEST_KAFKA`, set by `scripts/test` (which
/// starts Tansu on a free loopback port, building it once per machine).
///
/// # Panics
/// When it is not set, with a message that says how to get one.
pub fn broker() -> String {
    std::env::var("EVENTFOLD_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "EVENTFOLD_TEST_KAFKA is not set. Run the tests through scripts/test, which starts a Tansu broker \
             (source scripts/kafka-ensure to start one in your shell), or set it to a Kafka-protocol broker's \
             HOST:PORT."
        )
    })
}

/// Reads partitions 0..3 of `topic` from the beginning (`read_committed`) until `done` holds for
/// what arrived or `within` passed, then whatever else arrives within `linger`.
pub fn read_from_start(
    bootstrap: &str,
    topic: &str,
    within: Duration,
    linger: Duration,
    done: impl Fn(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let started = Instant::now();
    while !done(&out) && started.elapsed() < within {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
    if !linger.is_zero() {
        while let Some(Ok(m)) = consumer.poll(linger) {
            out.push(m.detach());
        }
    }
    out
}

/// The `event_id` header of a message, if any.
pub fn event_id_of(m: &OwnedMessage) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == "event_id")
        .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
}

/// Creates `topic` with `partitions` on the test broker (Tansu creates no topic on first use) and
/// publishes each `(key, event_id header, payload)` in order with an idempotent producer, waiting
/// for each acknowledgement.
///
/// # Panics
/// When the broker refuses the topic or a message.
pub async fn publish(topic: &str, partitions: i32, messages: &[(&str, Option<&str>, &str)]) {
    crate::create_topic(&broker(), topic, partitions)
        .await
        .unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for (key, event_id, payload) in messages {
        let mut headers = OwnedHeaders::new();
        if let Some(id) = event_id {
            headers = headers.insert(Header {
                key: "event_id",
                value: Some(*id),
            });
        }
        producer
            .send(
                FutureRecord::to(topic)
                    .key(*key)
                    .payload(*payload)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}
