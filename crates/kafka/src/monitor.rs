//! The broker as an operator sees it from `eventfold serve`: whether it answers (readiness), how
//! far each watched consumer group is behind per partition, and how many messages wait in each
//! dead-letter topic, measured at the broker (committed offsets against high watermarks, as
//! Burrow and `kafka-consumer-groups --describe` do), so the figures hold whichever process
//! consumes, and also while no consumer runs at all (a stopped consumer's lag keeps growing).
//!
//! Nothing here joins a group or commits an offset: the per-group clients only ask the group
//! coordinator for the group's committed offsets (OffsetFetch).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// How long one broker request of the monitor may take (2 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A consumer group to watch and the topics it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedGroup {
    /// `group.id`.
    pub group: String,
    /// Topics the group consumes; lag is reported for each partition of each that exists.
    pub topics: Vec<String>,
}

/// One partition's lag: `high_watermark - committed` messages (the high watermark alone when
/// the group has committed nothing on it: it would start from the earliest offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Messages not yet consumed.
    pub lag: i64,
}

/// What one [`BrokerMonitor::sample`] measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerSample {
    /// Lag per watched group, topic and partition.
    pub lag: Vec<PartitionLag>,
    /// Messages in each dead-letter topic that exists (high minus low watermark, summed over
    /// partitions).
    pub dead_letters: Vec<(String, i64)>,
}

/// Watches a broker (see the module docs).
pub struct BrokerMonitor {
    /// Answers metadata and watermark requests; belongs to no group.
    probe: Arc<BaseConsumer>,
    /// One client per watched group, for its committed offsets.
    groups: Vec<(WatchedGroup, Arc<BaseConsumer>)>,
    dead_letter_topics: Vec<String>,
}

fn client(brokers: &str, group: &str) -> Result<BaseConsumer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("socket.timeout.ms", "2000")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000")
        .create()
}

impl BrokerMonitor {
    /// A monitor of the broker at `brokers` (`bootstrap.servers`) watching `groups` and the
    /// dead-letter topics `dead_letter_topics`.
    ///
    /// # Errors
    /// A client cannot be created (a bad setting); the broker is not contacted yet.
    pub fn new(
        brokers: &str,
        groups: Vec<WatchedGroup>,
        dead_letter_topics: Vec<String>,
    ) -> Result<Self, KafkaError> {
        let probe = Arc::new(client(brokers, "eventfold-monitor")?);
        let groups = groups
            .into_iter()
            .map(|g| {
                let c = client(brokers, &g.group)?;
                Ok((g, Arc::new(c)))
            })
            .collect::<Result<_, KafkaError>>()?;
        Ok(Self {
            probe,
            groups,
            dead_letter_topics,
        })
    }

    /// Whether the broker answers a metadata request within [`REQUEST_TIMEOUT`]; `Ok` carries
    /// how many brokers the cluster has.
    ///
    /// # Errors
    /// Why it did not answer (librdkafka's error text).
    pub async fn probe(&self) -> Result<usize, String> {
        let probe = self.probe.clone();
        tokio::task::spawn_blocking(move || {
            probe
                .fetch_metadata(None, REQUEST_TIMEOUT)
                .map(|m| m.brokers().len())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Measures every watched group's lag and every dead-letter topic's size; topics that do not
    /// exist yet are left out.
    ///
    /// # Errors
    /// The broker did not answer a request in time.
    pub async fn sample(&self) -> Result<BrokerSample, KafkaError> {
        let probe = self.probe.clone();
        let groups = self.groups.clone();
        let dead_letter_topics = self.dead_letter_topics.clone();
        tokio::task::spawn_blocking(move || sample(&probe, &groups, &dead_letter_topics))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }
}

/// The partitions of `topic`, none when it does not exist.
fn partitions(probe: &BaseConsumer, topic: &str) -> Result<Vec<i32>, KafkaError> {
    let metadata = probe.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

fn sample(
    probe: &BaseConsumer,
    groups: &[(WatchedGroup, Arc<BaseConsumer>)],
    dead_letter_topics: &[String],
) -> Result<BrokerSample, KafkaError> {
    let mut out = BrokerSample::default();
    let mut watermarks: HashMap<(String, i32), (i64, i64)> = HashMap::new();
    let mut watermark = |topic: &str, partition: i32| -> Result<(i64, i64), KafkaError> {
        if let Some(w) = watermarks.get(&(topic.to_owned(), partition)) {
            return Ok(*w);
        }
        let w = probe.fetch_watermarks(topic, partition, REQUEST_TIMEOUT)?;
        watermarks.insert((topic.to_owned(), partition), w);
        Ok(w)
    };
    for (watched, consumer) in groups {
        let mut wanted = TopicPartitionList::new();
        for topic in &watched.topics {
            for p in partitions(probe, topic)? {
                wanted.add_partition(topic, p);
            }
        }
        if wanted.count() == 0 {
            continue;
        }
        let committed = consumer.committed_offsets(wanted, REQUEST_TIMEOUT)?;
        for element in committed.elements() {
            let (low, high) = watermark(element.topic(), element.partition())?;
            let from = match element.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            out.lag.push(PartitionLag {
                group: watched.group.clone(),
                topic: element.topic().to_owned(),
                partition: element.partition(),
                lag: (high - from).max(0),
            });
        }
    }
    for topic in dead_letter_topics {
        let parts = partitions(probe, topic)?;
        if parts.is_empty() {
            continue;
        }
        let mut total = 0;
        for p in parts {
            let (low, high) = watermark(topic, p)?;
            total += (high - low).max(0);
        }
        out.dead_letters.push((topic.clone(), total));
    }
    Ok(out)
}

impl BrokerSample {
    /// Sets the gauges `eventfold_consumer_lag{group, topic, partition}` (messages, the same
    /// series a consumer publishes from its own statistics) and
    /// `eventfold_dead_letter_messages{topic}`.
    pub fn record(&self) {
        for l in &self.lag {
            metrics::gauge!("eventfold_consumer_lag", "group" => l.group.clone(),
                "topic" => l.topic.clone(), "partition" => l.partition.to_string())
            .set(l.lag as f64);
        }
        for (topic, n) in &self.dead_letters {
            metrics::gauge!("eventfold_dead_letter_messages", "topic" => topic.clone())
                .set(*n as f64);
        }
    }
}
