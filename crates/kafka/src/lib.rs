//! Kafka for eventfold: the outbox relay, an at-least-once consumer for inboxes
//! ([`consumer`]) and a batching consumer with retries, a circuit breaker and a dead-letter topic
//! ([`batch`]), and an exactly-once consume-transform-produce worker on Kafka transactions
//! ([`exactly_once`]), and the broker seen from the server: readiness, consumer lag per
//! partition and dead-letter topics' sizes ([`monitor`]).
//!
//! **The event log is the outbox.** Every event is committed in the transaction of the command
//! that caused it, and the message published for it is a pure function of the stored event (its
//! envelope in headers, its payload as the body), so "the state change and the message commit in
//! one transaction" holds by construction, with no second table to write on the command path.
//! The relay tails the global log from durable checkpoints and publishes each event to the topic
//! `{prefix}.{category}` (e.g. `eventfold.order`) with the aggregate id as key, so one aggregate's
//! events land on one partition in stream order.
//!
//! **Progress is marked only after delivery.** The relay reads a batch of the log, enqueues every
//! event on an idempotent producer (`enable.idempotence=true`, `acks=all`: librdkafka retries
//! without duplicating or reordering within a partition), waits until the broker acknowledged
//! every one, and only then saves its checkpoints. A crash at any point loses nothing: the next
//! run republishes from the last checkpoint, so a message may arrive twice (at-least-once) but
//! never out of order per key on its first arrival; consumers dedupe by the `event_id` header
//! (the inbox).
//!
//! **Work partitions.** The log is split into `shards` work partitions by a stable hash of the
//! stream id, each with its own checkpoint (`relay:{prefix}:{shard}`). A relay publishes the
//! shards it owns: all by default, a fixed set ([`RelayConfig::owned`]), or, with
//! [`RelayConfig::group`], those Kafka's group coordinator gives it: the relays of a group are
//! members of one consumer group on the message-less topic `{prefix}.relay-shards` (one partition
//! per shard), so each shard has exactly one owner among the live relays, and a relay that leaves
//! or stops heartbeating hands its shards to the others, which resume from the shard's
//! checkpoint. A relay checks its assignment between batches and stops publishing a shard it no
//! longer owns; the overlap is at most one batch (duplicates, never a loss).
//!
//! Message format (stable; consumers rely on it): key = the stream's partition key
//! `{tenant}:{bucket}` ([`eventfold_core::tenant::partition_key`]: a stable hash of the stream id
//! into 128 buckets per tenant), so Kafka's partitioner keeps each stream, and each bucket, in
//! one partition, in log order, and a hot stream cannot crowd another tenant's out of theirs;
//! there is no order across buckets or streams of different keys. Value = the event's JSON payload; headers (UTF-8 strings) `event_id`,
//! `event_type`, `schema_version`, `stream_id`, `stream_version`, `global_position`,
//! `event_time` (RFC 3339, UTC), `tenant_id`, `actor`, and `causation_id` / `correlation_id` /
//! `via` (the service the actor acted through) when present, and `backfill` = `true` on an event
//! recorded as history by a backfill.

pub mod batch;
pub mod consumer;
pub mod exactly_once;
pub mod monitor;

pub use consumer::{run_consumer, ConsumeStats, ConsumerConfig, Handled, Inbound};

#[cfg(feature = "testing")]
pub mod testing;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use eventfold_core::envelope::stream_category;
use eventfold_core::{EventStore, RecordedEvent, StoreError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sha2::{Digest, Sha256};

/// How the relay connects and what it owns.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:9092`.
    pub brokers: String,
    /// Topic prefix: events of category `order` go to `{prefix}.order` (default `eventfold`).
    pub topic_prefix: String,
    /// Partitions of each topic the relay creates (default 3).
    pub topic_partitions: i32,
    /// Create each category's topic (CreateTopics) before its first message (default true);
    /// off where topics are provisioned separately.
    pub create_topics: bool,
    /// Work partitions of the log (default 16). Changing it re-maps streams to shards: stop every
    /// relay first.
    pub shards: u32,
    /// The shards this relay publishes (`None`: all, or those its group gives it).
    pub owned: Option<Vec<u32>>,
    /// Share the shards with the other relays of this consumer group (`None`: no sharing). The
    /// group subscribes to the topic `{prefix}.relay-shards`, which has one partition per shard
    /// and carries no messages: Kafka's group coordinator gives each partition, hence each shard,
    /// to exactly one member, and the shards of a relay that stops (or stops heartbeating for
    /// `session.timeout.ms`, 10 s) go to the others. Excludes `owned`.
    pub group: Option<String>,
    /// Events read from the log per batch (default 5,000).
    pub batch_size: usize,
    /// Extra librdkafka producer settings (applied last).
    pub producer_settings: Vec<(String, String)>,
    /// Hot streams whose messages are spread over N salted keys: stream id -> N (2 or
    /// more). See [`salted_key`] for the key and the ordering trade-off.
    pub salted_streams: HashMap<String, u32>,
}

/// The message key of event `stream_version` of a stream salted over `salts` keys:
/// `{partition key}#{(stream_version - 1) % salts}`. Consecutive events go to consecutive
/// salts, so one hot aggregate's load spreads over up to `salts` partitions. The trade-off: order
/// holds per salt (each salt is one key, hence one partition, in stream order), not across salts;
/// a consumer that needs the stream's order merges the salts by the `stream_version` header
/// ([`consumer::VersionMerge`]). The messages carry `salt` and `salts` headers.
pub fn salted_key(stream_id: &str, stream_version: u64, salts: u32) -> String {
    let salt = stream_version.saturating_sub(1) % u64::from(salts.max(1));
    format!("{}#{salt}", partition_key(stream_id))
}

impl RelayConfig {
    /// Defaults for `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: "eventfold".into(),
            topic_partitions: 3,
            create_topics: true,
            shards: 16,
            owned: None,
            group: None,
            batch_size: 5_000,
            producer_settings: Vec::new(),
            salted_streams: HashMap::new(),
        }
    }
}

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The event store failed.
    #[error("event store failed")]
    Store(#[from] StoreError),
    /// Kafka refused or could not be reached; nothing after the last checkpoint is marked done.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A topic could not be created.
    #[error("cannot create topic {topic}: {code}")]
    Topic {
        /// Topic name.
        topic: String,
        /// Broker error code.
        code: RDKafkaErrorCode,
    },
    /// Bad configuration.
    #[error("relay configuration: {0}")]
    Config(String),
}

/// What one [`Relay::publish_pending`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayProgress {
    /// Events published (acknowledged by the broker).
    pub published: u64,
    /// The log position every owned shard has reached.
    pub position: u64,
}

/// Publishes the event log to Kafka (see the crate docs).
pub struct Relay {
    store: Arc<dyn EventStore>,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    config: RelayConfig,
    /// The shards owned now: fixed, or the group's current assignment.
    owned: std::sync::Mutex<Vec<u32>>,
    /// Member of `config.group` on the shard topic, when shards are shared.
    membership: Option<BaseConsumer>,
    topics: tokio::sync::Mutex<HashSet<String>>,
}

/// The work partition of a stream: a stable hash (SHA-256) of its partition key
/// ([`partition_key`]) modulo `shards`, so a stream's events, and its bucket's, stay in one
/// shard in log order.
pub fn shard_of(stream_id: &str, shards: u32) -> u32 {
    let digest = Sha256::digest(partition_key(stream_id).as_bytes());
    let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (n % u64::from(shards.max(1))) as u32
}

pub use eventfold_core::tenant::partition_key;

impl Relay {
    /// A relay over `store` with its own idempotent producer.
    ///
    /// # Errors
    /// [`RelayError::Config`] for no shards or an owned shard out of range; [`RelayError::Kafka`]
    /// when the clients cannot be created (a bad setting).
    pub fn new(store: Arc<dyn EventStore>, config: RelayConfig) -> Result<Self, RelayError> {
        if config.shards == 0 || config.batch_size == 0 || config.topic_partitions < 1 {
            return Err(RelayError::Config(
                "shards, batch size and topic partitions must be at least 1".into(),
            ));
        }
        let owned = config
            .owned
            .clone()
            .unwrap_or_else(|| (0..config.shards).collect());
        if let Some(bad) = owned.iter().find(|s| **s >= config.shards) {
            return Err(RelayError::Config(format!(
                "owned shard {bad} is not below shards = {}",
                config.shards
            )));
        }
        let membership = match &config.group {
            Some(_) if config.owned.is_some() => {
                return Err(RelayError::Config(
                    "owned shards and a group exclude each other".into(),
                ))
            }
            Some(group) => Some(
                ClientConfig::new()
                    .set("bootstrap.servers", &config.brokers)
                    .set("group.id", group)
                    .set("enable.auto.commit", "false")
                    .set("session.timeout.ms", "10000")
                    .set("heartbeat.interval.ms", "1000")
                    .set("reconnect.backoff.max.ms", "1000")
                    .create()?,
            ),
            None => None,
        };
        // A group member owns nothing until the coordinator says so.
        let owned = if membership.is_some() {
            Vec::new()
        } else {
            owned
        };
        let mut producer = ClientConfig::new();
        producer
            .set("bootstrap.servers", &config.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // Reconnect to a broker that came back within a second (librdkafka's default backoff
            // grows to 10 s).
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "1000")
            .set("queue.buffering.max.messages", "1000000");
        for (k, v) in &config.producer_settings {
            producer.set(k, v);
        }
        let admin = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .create()?;
        Ok(Self {
            store,
            producer: producer.create()?,
            admin,
            config,
            owned: std::sync::Mutex::new(owned),
            membership,
            topics: tokio::sync::Mutex::new(HashSet::new()),
        })
    }

    /// The topic whose partitions stand for the shards when they are shared by a group.
    pub fn shard_topic(&self) -> String {
        format!("{}.relay-shards", self.config.topic_prefix)
    }

    /// The shards this relay owns now (sorted).
    pub fn owned_shards(&self) -> Vec<u32> {
        self.owned.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Joins the group (creating the shard topic when topics are created) and subscribes; a
    /// no-op without a group or when already subscribed.
    async fn join(&self) -> Result<(), RelayError> {
        let Some(member) = &self.membership else {
            return Ok(());
        };
        if member
            .subscription()
            .map(|s| s.count() > 0)
            .unwrap_or(false)
        {
            return Ok(());
        }
        let topic = self.shard_topic();
        if self.config.create_topics {
            let partitions = i32::try_from(self.config.shards).unwrap_or(i32::MAX);
            match create_topic_with(&self.admin, &topic, partitions).await {
                Ok(()) => {}
                Err(KafkaError::AdminOp(code)) => return Err(RelayError::Topic { topic, code }),
                Err(e) => return Err(e.into()),
            }
        }
        member.subscribe(&[&topic])?;
        Ok(())
    }

    /// Serves the group (heartbeats, rebalances) and refreshes the owned shards from the
    /// assignment; returns them.
    fn refresh_owned(&self) -> Vec<u32> {
        let Some(member) = &self.membership else {
            return self.owned_shards();
        };
        // The shard topic carries no messages: polling only runs the group protocol.
        while let Some(m) = member.poll(Duration::ZERO) {
            if let Err(e) = m {
                tracing::warn!(error = %e, "relay group member error");
            }
        }
        let mut shards: Vec<u32> = member
            .assignment()
            .map(|a| {
                a.elements()
                    .iter()
                    .filter_map(|e| u32::try_from(e.partition()).ok())
                    .filter(|s| *s < self.config.shards)
                    .collect()
            })
            .unwrap_or_default();
        shards.sort_unstable();
        if let Ok(mut owned) = self.owned.lock() {
            if *owned != shards {
                tracing::info!(shards = ?shards, "relay shard ownership changed");
                metrics::gauge!("eventfold_relay_owned_shards").set(shards.len() as f64);
                owned.clone_from(&shards);
            }
        }
        shards
    }

    /// The checkpoint name of a shard.
    pub fn checkpoint_name(&self, shard: u32) -> String {
        format!("relay:{}:pk:{shard}", self.config.topic_prefix)
    }

    /// The checkpoint a shard starts from when it has none: the lowest of the checkpoints
    /// relays kept before shards were mapped by partition key (`relay:{prefix}:{shard}`), since
    /// the streams a shard covers then and now differ. Republishing from there repeats events
    /// (consumers dedupe by `event_id`) and loses none.
    async fn legacy_checkpoint(&self) -> Result<u64, RelayError> {
        let mut lowest: Option<u64> = None;
        for shard in 0..self.config.shards.max(1) {
            let name = format!("relay:{}:{shard}", self.config.topic_prefix);
            let cp = self.store.load_checkpoint(&name).await?;
            lowest = Some(lowest.map_or(cp.unwrap_or(0), |l| l.min(cp.unwrap_or(0))));
            if lowest == Some(0) {
                break;
            }
        }
        Ok(lowest.unwrap_or(0))
    }

    /// Events not yet published by any shard: the log's head minus the lowest shard checkpoint
    /// (every shard of the log, owned here or not).
    ///
    /// # Errors
    /// The store failed.
    pub async fn backlog(&self) -> Result<u64, StoreError> {
        let mut lowest: Option<u64> = None;
        let mut legacy = None;
        for shard in 0..self.config.shards.max(1) {
            let cp = match self
                .store
                .load_checkpoint(&self.checkpoint_name(shard))
                .await?
            {
                Some(cp) => cp,
                None => match legacy {
                    Some(l) => l,
                    None => {
                        *legacy.insert(self.legacy_checkpoint().await.map_err(|e| match e {
                            RelayError::Store(e) => e,
                            other => StoreError::Unavailable(Box::new(other)),
                        })?)
                    }
                },
            };
            lowest = Some(lowest.map_or(cp, |l| l.min(cp)));
        }
        let head = self.store.head_position().await?;
        Ok(head.saturating_sub(lowest.unwrap_or(0)))
    }

    /// The topic of a stream.
    pub fn topic_of(&self, stream_id: &str) -> String {
        format!(
            "{}.{}",
            self.config.topic_prefix,
            stream_category(stream_id)
        )
    }

    /// Publishes every committed event of the owned shards after their checkpoints, batch by
    /// batch, saving the checkpoints after each batch is acknowledged. Returns when the log's
    /// head is reached.
    ///
    /// # Errors
    /// A store failure or a delivery that failed; checkpoints stay at the last fully
    /// acknowledged batch.
    pub async fn publish_pending(&self) -> Result<RelayProgress, RelayError> {
        self.join().await?;
        let owned = self.refresh_owned();
        if owned.is_empty() {
            return Ok(RelayProgress {
                published: 0,
                position: self.store.head_position().await?,
            });
        }
        let mut checkpoints: HashMap<u32, u64> = HashMap::new();
        let mut legacy = None;
        for shard in &owned {
            let cp = match self
                .store
                .load_checkpoint(&self.checkpoint_name(*shard))
                .await?
            {
                Some(cp) => cp,
                None => match legacy {
                    Some(l) => l,
                    None => *legacy.insert(self.legacy_checkpoint().await?),
                },
            };
            checkpoints.insert(*shard, cp);
        }
        let mut from = checkpoints.values().copied().min().unwrap_or(0);
        // Set at the start of every round too, so the backlog keeps growing on a dashboard while
        // deliveries fail (a broker away), not only after a batch is acknowledged.
        let head = self.store.head_position().await?;
        metrics::gauge!("eventfold_relay_backlog_events").set(head.saturating_sub(from) as f64);
        let mut progress = RelayProgress {
            published: 0,
            position: from,
        };
        loop {
            let batch = self.store.read_all(from, self.config.batch_size).await?;
            let Some(last) = batch.last().map(|e| e.global_position) else {
                metrics::gauge!("eventfold_relay_backlog_events").set(0.0);
                return Ok(progress);
            };
            let mut deliveries = Vec::with_capacity(batch.len());
            for event in &batch {
                let shard = shard_of(&event.stream_id, self.config.shards);
                match checkpoints.get(&shard) {
                    Some(cp) if event.global_position > *cp => {}
                    _ => continue,
                }
                deliveries.push(self.enqueue(event).await?);
            }
            let n = deliveries.len() as u64;
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(e.into()),
                    Err(_) => return Err(KafkaError::Canceled.into()),
                }
            }
            for (shard, cp) in &mut checkpoints {
                if *cp < last {
                    self.store
                        .save_checkpoint(&self.checkpoint_name(*shard), last)
                        .await?;
                    *cp = last;
                }
            }
            progress.published += n;
            progress.position = last;
            from = last;
            metrics::counter!("eventfold_relay_published_total").increment(n);
            let head = self.store.head_position().await?;
            metrics::gauge!("eventfold_relay_backlog_events").set(head.saturating_sub(last) as f64);
            if self.membership.is_some() && self.refresh_owned() != owned {
                // Shards moved: stop publishing the ones given away; the next round starts
                // from the checkpoints of the ones owned now.
                return Ok(progress);
            }
        }
    }

    /// Keeps publishing until `stop` completes, waking on appends (and polling for other
    /// processes' appends; every 250 ms in a group, to serve it and pick up moved shards). A
    /// failed round is logged and retried after a second. Leaving returns the shards to the
    /// group.
    pub async fn run(&self, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        metrics::counter!("eventfold_relay_published_total").increment(0);
        loop {
            let position = match self.publish_pending().await {
                Ok(p) => p.position,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay round failed; retrying in 1 s");
                    let sleep = std::pin::pin!(tokio::time::sleep(Duration::from_secs(1)));
                    if let futures::future::Either::Right(_) =
                        futures::future::select(sleep, stop.as_mut()).await
                    {
                        return;
                    }
                    continue;
                }
            };
            let wait = self.store.wait_for_append(position);
            let wait = std::pin::pin!(async {
                if self.membership.is_some() {
                    let _ = tokio::time::timeout(Duration::from_millis(250), wait).await;
                } else {
                    wait.await;
                }
            });
            if let futures::future::Either::Right(_) =
                futures::future::select(wait, stop.as_mut()).await
            {
                if let Some(member) = &self.membership {
                    member.unsubscribe();
                }
                return;
            }
        }
    }

    async fn enqueue(&self, event: &RecordedEvent) -> Result<DeliveryFuture, RelayError> {
        let topic = self.topic_of(&event.stream_id);
        self.ensure_topic(&topic).await?;
        let m = &event.metadata;
        let (id, version, position, schema, time) = (
            event.event_id.to_string(),
            event.stream_version.to_string(),
            event.global_position.to_string(),
            event.schema_version.to_string(),
            event
                .event_time
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        );
        let (causation, correlation) = (
            m.causation_id.map(|u| u.to_string()),
            m.correlation_id.map(|u| u.to_string()),
        );
        let mut headers = OwnedHeaders::new_with_capacity(13)
            .insert(header("event_id", &id))
            .insert(header("event_type", &event.event_type))
            .insert(header("schema_version", &schema))
            .insert(header("stream_id", &event.stream_id))
            .insert(header("stream_version", &version))
            .insert(header("global_position", &position))
            .insert(header("event_time", &time))
            .insert(header("tenant_id", &m.tenant_id))
            .insert(header("actor", m.actor.as_str()));
        if let Some(c) = &causation {
            headers = headers.insert(header("causation_id", c));
        }
        if let Some(c) = &correlation {
            headers = headers.insert(header("correlation_id", c));
        }
        if let Some(via) = &m.via {
            headers = headers.insert(header("via", via.as_str()));
        }
        if m.backfill {
            headers = headers.insert(header("backfill", "true"));
        }
        let salts = self
            .config
            .salted_streams
            .get(&event.stream_id)
            .copied()
            .filter(|n| *n > 1);
        let key = match salts {
            Some(n) => {
                let salt = (event.stream_version.saturating_sub(1) % u64::from(n)).to_string();
                headers = headers
                    .insert(header("salt", &salt))
                    .insert(header("salts", &n.to_string()));
                salted_key(&event.stream_id, event.stream_version, n)
            }
            None => partition_key(&event.stream_id),
        };
        let mut record = FutureRecord::to(&topic)
            .key(&key)
            .payload(&event.payload)
            .headers(headers);
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: let librdkafka drain it, then try again.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    async fn ensure_topic(&self, topic: &str) -> Result<(), RelayError> {
        let mut known = self.topics.lock().await;
        if !self.config.create_topics || known.contains(topic) {
            return Ok(());
        }
        match create_topic_with(&self.admin, topic, self.config.topic_partitions).await {
            Ok(()) => {}
            Err(KafkaError::AdminOp(code)) => {
                return Err(RelayError::Topic {
                    topic: topic.to_owned(),
                    code,
                })
            }
            Err(e) => return Err(e.into()),
        }
        known.insert(topic.to_owned());
        Ok(())
    }
}

/// Creates `topic` with `partitions` partitions (replication 1) on `brokers`; a topic that
/// already exists is fine. Some brokers (Tansu) do not create topics on first use.
///
/// # Errors
/// [`KafkaError::AdminOp`] with the broker's code when it refuses; other client errors.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    create_topic_with(&admin, topic, partitions).await
}

async fn create_topic_with(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: i32,
) -> Result<(), KafkaError> {
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    for result in admin.create_topics([&new], &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
