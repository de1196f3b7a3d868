//! At-least-once consumption with an inbox: a message's offset is committed only after its
//! handler succeeded, so a crash, a failed commit or a rebalance redelivers it; the handler makes
//! the redelivery harmless by writing its effect together with a dedupe record keyed by the
//! message's `event_id` ([`Inbound::inbox_key`]) in one transaction (for eventfold commands: the
//! idempotency record written with the events).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;

/// Prefetched messages a consumer keeps at most, KiB (`queued.max.messages.kbytes`; librdkafka's
/// default, 64 MiB, would dominate a consumer's memory while it is behind).
pub const PREFETCH_KBYTES: &str = "8192";

/// Who consumes what.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group (`group.id`); also the inbox's name.
    pub group_id: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Static membership (KIP-345): a stable `group.instance.id` per instance, so that a
    /// restart within `session.timeout.ms` does not rebalance the group.
    pub group_instance_id: Option<String>,
    /// Extra librdkafka consumer settings (applied last).
    pub settings: Vec<(String, String)>,
}

impl ConsumerConfig {
    /// A consumer subscribed to the topics: manual offset commits, earliest offset when the group
    /// has none, reconnect backoff capped at 1 s, prefetch capped at [`PREFETCH_KBYTES`],
    /// per-partition lag published every second ([`LagMetrics`]); `settings` last.
    ///
    /// # Errors
    /// A bad setting, or the subscription is refused.
    pub fn subscribe(&self) -> Result<StreamConsumer<LagMetrics>, KafkaError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "1000")
            .set("statistics.interval.ms", "1000")
            .set("queued.max.messages.kbytes", PREFETCH_KBYTES);
        if let Some(id) = &self.group_instance_id {
            client.set("group.instance.id", id);
        }
        for (k, v) in &self.settings {
            client.set(k, v);
        }
        let consumer: StreamConsumer<LagMetrics> =
            client.create_with_context(LagMetrics::new(&self.group_id))?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(consumer)
    }

    /// Group `group_id` on `topics`, reading from the earliest offset when it has none.
    pub fn new(brokers: impl Into<String>, group_id: impl Into<String>, topics: &[&str]) -> Self {
        Self {
            brokers: brokers.into(),
            group_id: group_id.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            group_instance_id: None,
            settings: Vec::new(),
        }
    }
}

/// A received message, detached from the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The topic the message was read from.
    pub topic: String,
    /// The partition the message was read from.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key as UTF-8 (lossy), if any.
    pub key: Option<String>,
    /// Headers as UTF-8 (lossy); a header without a value maps to "".
    pub headers: HashMap<String, String>,
    /// The value (empty for a tombstone).
    pub payload: Vec<u8>,
    /// The message's timestamp (create or log-append time), ms since the Unix epoch.
    pub timestamp_ms: Option<i64>,
}

impl Inbound {
    /// The `event_id` header, which eventfold's relay sets on every message.
    pub fn event_id(&self) -> Option<&str> {
        self.headers.get("event_id").map(String::as_str)
    }

    /// The dedupe key of this message for consumer `consumer`: `inbox:{consumer}:{event_id}`, or,
    /// for a message without an `event_id` header, its coordinates
    /// (`inbox:{consumer}:{topic}/{partition}/{offset}`, which a redelivery keeps).
    pub fn inbox_key(&self, consumer: &str) -> String {
        match self.event_id() {
            Some(id) => format!("inbox:{consumer}:{id}"),
            None => format!(
                "inbox:{consumer}:{}/{}/{}",
                self.topic, self.partition, self.offset
            ),
        }
    }
}

/// What a handler made of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Done (or already done before: a duplicate); commit its offset.
    Done,
    /// A transient failure (database unavailable, say): try the same message again after a
    /// backoff, without committing.
    Retry(String),
    /// The message can never be handled (undecodable, refused for good): log it, commit past it.
    Poison(String),
}

/// Restores one stream's order from messages that arrive out of order across salted keys (see
/// `salted_key`): each salt's messages arrive in stream order, the salts interleave, and
/// [`VersionMerge::push`] releases items in `stream_version` order, holding back those that come
/// before a gap. The buffer stays small (at most what one salt's partition runs ahead of the
/// others). A version below the next expected one is a redelivery and is dropped.
#[derive(Debug)]
pub struct VersionMerge<T> {
    next: u64,
    waiting: std::collections::BTreeMap<u64, T>,
}

impl<T> VersionMerge<T> {
    /// A merge that releases `next_version` first (1 for a new stream; the last version
    /// processed + 1 for a consumer resuming).
    pub fn new(next_version: u64) -> Self {
        Self {
            next: next_version,
            waiting: std::collections::BTreeMap::new(),
        }
    }

    /// Adds the item of `stream_version`; returns the items now in order.
    pub fn push(&mut self, stream_version: u64, item: T) -> Vec<T> {
        if stream_version < self.next {
            return Vec::new();
        }
        self.waiting.insert(stream_version, item);
        let mut out = Vec::new();
        while let Some(item) = self.waiting.remove(&self.next) {
            out.push(item);
            self.next += 1;
        }
        out
    }

    /// Items held back, waiting for an earlier version.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// Backoff between tries of one message: 100 ms doubling, capped at 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)).min(5_000))
}

/// What [`run_consumer`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumeStats {
    /// Messages handled and committed (`Done`).
    pub done: u64,
    /// Tries that asked to retry.
    pub retries: u64,
    /// Messages given up as poison.
    pub poison: u64,
}

/// Consumes until `stop` completes: each message goes to `handler` until it is `Done` or
/// `Poison`, then its offset is committed (asynchronously: a commit lost in a crash only means a
/// redelivery, which the inbox absorbs).
///
/// # Errors
/// The consumer cannot be created or subscribed (a bad setting); broker trouble while running is
/// retried by librdkafka and logged.
pub async fn run_consumer<F, Fut>(
    config: &ConsumerConfig,
    handler: F,
    stop: impl Future<Output = ()>,
) -> Result<ConsumeStats, KafkaError>
where
    F: Fn(Inbound) -> Fut,
    Fut: Future<Output = Handled>,
{
    let consumer = config.subscribe()?;
    let mut stats = ConsumeStats::default();
    let mut stop = std::pin::pin!(stop);
    loop {
        let message = tokio::select! {
            m = consumer.recv() => m,
            () = &mut stop => return Ok(stats),
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "kafka consumer error; continuing");
                continue;
            }
        };
        let inbound = Inbound::from_message(&message);
        let mut attempt = 0;
        loop {
            match handler(inbound.clone()).await {
                Handled::Done => {
                    stats.done += 1;
                    metrics::counter!("eventfold_consumer_messages_total",
                        "group" => config.group_id.clone(), "outcome" => "done")
                    .increment(1);
                    break;
                }
                Handled::Poison(why) => {
                    tracing::error!(topic = %inbound.topic, partition = inbound.partition,
                        offset = inbound.offset, error = %why, "poison message skipped");
                    stats.poison += 1;
                    metrics::counter!("eventfold_consumer_messages_total",
                        "group" => config.group_id.clone(), "outcome" => "poison")
                    .increment(1);
                    break;
                }
                Handled::Retry(why) => {
                    stats.retries += 1;
                    metrics::counter!("eventfold_consumer_retries_total",
                        "group" => config.group_id.clone())
                    .increment(1);
                    tracing::warn!(error = %why, attempt, "message handler failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff(attempt)) => {}
                        () = &mut stop => return Ok(stats),
                    }
                    attempt += 1;
                }
            }
        }
        if let Err(e) = consumer.commit_message(&message, CommitMode::Async) {
            tracing::warn!(error = %e, "offset commit failed; the message may be redelivered");
        }
    }
}

/// Publishes librdkafka's per-partition consumer lag (from its statistics, every second) as the
/// gauge `eventfold_consumer_lag{group, topic, partition}` (messages).
pub struct LagMetrics {
    group: String,
}

impl LagMetrics {
    /// For consumer group `group`.
    pub fn new(group: &str) -> Self {
        Self {
            group: group.to_owned(),
        }
    }
}

impl rdkafka::ClientContext for LagMetrics {
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!("eventfold_consumer_lag", "group" => self.group.clone(),
                        "topic" => topic.clone(), "partition" => partition.to_string())
                    .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for LagMetrics {}

impl Inbound {
    /// A message as a handler sees it: topic, partition, offset, key and payload, its headers
    /// as text (lossy UTF-8), its timestamp in ms.
    pub fn from_message<M: Message>(m: &M) -> Self {
        let mut headers = HashMap::new();
        if let Some(h) = m.headers() {
            for header in h.iter() {
                headers.insert(
                    header.key.to_owned(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        Self {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            timestamp_ms: m.timestamp().to_millis(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_merge_releases_in_order_and_drops_redeliveries() {
        let mut m = VersionMerge::new(1);
        assert_eq!(m.push(2, "b"), Vec::<&str>::new());
        assert_eq!(m.push(3, "c"), Vec::<&str>::new());
        assert_eq!(m.waiting(), 2);
        assert_eq!(m.push(1, "a"), ["a", "b", "c"]);
        assert_eq!(m.push(2, "b again"), Vec::<&str>::new());
        assert_eq!(m.push(4, "d"), ["d"]);
        assert_eq!(m.waiting(), 0);
    }

    #[test]
    fn backoff_doubles_from_100_ms_and_caps_at_5_s() {
        let ms: Vec<u128> = (0..8).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn inbox_key_prefers_the_event_id() {
        let mut m = Inbound {
            topic: "t".into(),
            partition: 2,
            offset: 7,
            key: None,
            headers: HashMap::new(),
            payload: vec![],
            timestamp_ms: None,
        };
        assert_eq!(m.inbox_key("prizes"), "inbox:prizes:t/2/7");
        m.headers.insert("event_id".into(), "e-1".into());
        assert_eq!(m.inbox_key("prizes"), "inbox:prizes:e-1");
    }
}
