//! The broker for tests, and an independent reader (`kcat`).

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use eventfold_core::{Actor, EventMetadata, NewEvent};

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

/// A topic prefix of this test's own.
pub fn unique_prefix() -> String {
    format!("t{}", uuid::Uuid::now_v7().simple())
}

/// An event whose payload is `{"n": n}`.
pub fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: "Happened".into(),
        schema_version: 1,
        event_time: chrono::Utc::now(),
        metadata: EventMetadata::by(Actor::system("relay-test")),
        payload: format!("{{\"n\":{n}}}"),
    }
}

/// A message as kcat printed it.
#[derive(Debug)]
pub struct Message {
    pub key: String,
    pub headers: HashMap<String, String>,
    pub value: String,
}

/// Reads every message of `topic` from the beginning with kcat, retrying until at least
/// `expected` arrived (or 30 s passed), in partition order.
pub fn consume(topic: &str, expected: usize) -> Vec<Message> {
    let started = Instant::now();
    loop {
        let out = Command::new("kcat")
            .args([
                "-b",
                &broker(),
                "-C",
                "-t",
                topic,
                "-o",
                "beginning",
                "-e",
                "-q",
            ])
            .args(["-f", "%k\u{1f}%h\u{1f}%s\u{1e}"])
            .output()
            .expect("kcat runs (scripts/test installs it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let messages: Vec<Message> = text
            .split('\u{1e}')
            .filter(|m| !m.trim().is_empty())
            .map(|m| {
                let mut parts = m.splitn(3, '\u{1f}');
                let key = parts.next().unwrap_or_default().trim_start().to_owned();
                let headers = parts
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                let value = parts.next().unwrap_or_default().to_owned();
                Message {
                    key,
                    headers,
                    value,
                }
            })
            .collect();
        if messages.len() >= expected || started.elapsed() > Duration::from_secs(30) {
            return messages;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Appends events `from + 1 ..= from + n` to `stream` one at a time (payload `{"n": version}`).
pub async fn append(
    store: &std::sync::Arc<dyn eventfold_core::EventStore>,
    stream: &str,
    from: u64,
    n: u64,
) {
    use eventfold_core::{AppendRequest, ExpectedVersion};
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

/// Reads partitions 0..3 of `topic` from the beginning (`read_committed`) until `done` holds for
/// what arrived or `within` passed, then whatever else arrives within `linger`.
pub fn read_from_start(
    bootstrap: &str,
    topic: &str,
    within: Duration,
    linger: Duration,
    done: impl Fn(&[rdkafka::message::OwnedMessage]) -> bool,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

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
pub fn event_id_of(m: &rdkafka::message::OwnedMessage) -> Option<String> {
    use rdkafka::message::{Headers, Message};
    m.headers()?
        .iter()
        .find(|h| h.key == "event_id")
        .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
}
