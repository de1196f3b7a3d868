//! A batching consumer: messages are decoded and collected until `max_messages` or
//! `max_wait`, written to a sink in one call, and only then are their offsets committed, so
//! nothing is committed to Kafka that is not durable in the sink.
//!
//! Failures: a sink write is tried at most `tries` times with exponential backoff (100 -> 200 ->
//! 400 ms, capped at 5 s); when all tries fail the circuit breaker opens for `open_for`, during
//! which nothing is written or consumed (the batch is kept), and then one half-open try decides
//! whether it closes. A message that cannot be decoded, or that the sink refuses for good, goes
//! to the dead-letter topic with the reason in its `error` header (and its origin in
//! `source_topic` / `source_partition` / `source_offset`). Stopping flushes the open batch and
//! commits.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::consumer::{backoff, ConsumerConfig, Inbound, LagMetrics};

/// Why a sink write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkError {
    /// Worth retrying (the database is unavailable, a timeout).
    Transient(String),
    /// These rows will never be accepted (a constraint): the batch is split to find them.
    Permanent(String),
}

/// Where batches go.
#[async_trait]
pub trait BatchSink<T: Sync>: Send + Sync {
    /// Writes all `items` durably in one operation, or none of them.
    ///
    /// # Errors
    /// [`SinkError`].
    async fn write(&self, items: &[&T]) -> Result<(), SinkError>;
}

/// Batching, retry and breaker settings.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Flush at this many messages (default 100).
    pub max_messages: usize,
    /// Flush when the oldest message of the batch has waited this long (default 5 s).
    pub max_wait: Duration,
    /// Tries per batch before the breaker opens (default 3).
    pub tries: u32,
    /// How long the breaker stays open (default 5 s).
    pub open_for: Duration,
    /// Dead-letter topic (default `{first input topic}.dlq`).
    pub dead_letter_topic: Option<String>,
    /// Create the dead-letter topic at start (default true; off where topics are provisioned
    /// separately).
    pub create_dead_letter_topic: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_messages: 100,
            max_wait: Duration::from_secs(5),
            tries: 3,
            open_for: Duration::from_secs(5),
            dead_letter_topic: None,
            create_dead_letter_topic: true,
        }
    }
}

/// What the consumer did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchStats {
    /// When the first message arrived.
    pub first_received: Option<Instant>,
    /// Messages written to the sink.
    pub written: u64,
    /// Batches written.
    pub batches: u64,
    /// Sink tries that failed.
    pub failed_tries: u64,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Write time per batch, ms, in order.
    pub flush_ms: Vec<f64>,
    /// Consume latency per message: from its arrival at this consumer to its batch being
    /// durable in the sink, ms.
    pub consume_latency_ms: Vec<f64>,
    /// End-to-end latency per message: from its Kafka timestamp (when produced) to its batch
    /// being durable in the sink, ms (includes time spent waiting in the topic).
    pub end_to_end_ms: Vec<f64>,
}

struct Pending<T> {
    items: Vec<(Inbound, T, Instant)>,
    /// Next offset to commit per partition (messages decoded or dead-lettered so far).
    offsets: HashMap<(String, i32), i64>,
    opened: Option<Instant>,
}

impl<T> Pending<T> {
    fn new() -> Self {
        Self {
            items: Vec::new(),
            offsets: HashMap::new(),
            opened: None,
        }
    }
}

/// A batch being written: resolves to the offsets to commit once it is durable, and what the
/// write counted.
type Flushing<'a> = std::pin::Pin<
    Box<
        dyn Future<Output = Result<(HashMap<(String, i32), i64>, BatchStats), KafkaError>>
            + Send
            + 'a,
    >,
>;

/// Runs the batching consumer until `stop` completes (then flushes and commits).
///
/// One batch is written while the next one fills (the database write overlaps reading and
/// decoding); offsets are committed in order, each after its batch is durable. While a write is
/// retried or the breaker is open, at most one more batch is read ahead, and nothing of it is
/// committed.
///
/// # Errors
/// The consumer or the dead-letter producer cannot be created (a bad setting), or a dead letter
/// cannot be delivered (the offsets are then not committed and the message comes back).
pub async fn run_batch_consumer<T, D, S>(
    config: &ConsumerConfig,
    batch: &BatchConfig,
    decode: D,
    sink: &S,
    stop: impl Future<Output = ()>,
) -> Result<BatchStats, KafkaError>
where
    T: Send + Sync,
    D: Fn(&Inbound) -> Result<T, String>,
    S: BatchSink<T>,
{
    let consumer = config.subscribe()?;
    // Present from the start, so a dashboard or an alert's `increase()` sees them at zero.
    for counter in [
        "eventfold_dead_letter_total",
        "eventfold_breaker_opened_total",
        "eventfold_batch_retries_total",
        "eventfold_batch_messages_total",
    ] {
        metrics::counter!(counter).increment(0);
    }
    metrics::gauge!("eventfold_breaker_open").set(0.0);
    let dlq: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .create()?;
    let dlq_topic = batch.dead_letter_topic.clone().unwrap_or_else(|| {
        format!(
            "{}.dlq",
            config.topics.first().map_or("eventfold", String::as_str)
        )
    });
    // Brokers that do not create topics on first use (Tansu) need the dead-letter topic made.
    if batch.create_dead_letter_topic {
        if let Err(e) = crate::create_topic(&config.brokers, &dlq_topic, 1).await {
            tracing::warn!(error = %e, "cannot create the dead-letter topic");
        }
    }
    let out = Out {
        dlq: &dlq,
        dlq_topic: &dlq_topic,
    };

    let mut stats = BatchStats::default();
    let mut pending = Pending::new();
    let mut flushing: Option<Flushing<'_>> = None;
    let mut stop = std::pin::pin!(stop);
    loop {
        // Full, or only dead letters to commit: write (or commit) as soon as nothing is in flight.
        let due = pending.items.len() >= batch.max_messages
            || (pending.items.is_empty() && !pending.offsets.is_empty());
        let deadline = pending.opened.map(|t| t + batch.max_wait);
        tokio::select! {
            written = async { flushing.as_mut().expect("in flight").await }, if flushing.is_some() => {
                flushing = None;
                let (offsets, done) = written?;
                merge(&mut stats, done);
                // Asynchronous commits while running (a lost one only means a redelivery, which
                // the sink dedupes); the last one, on stop, is synchronous.
                commit(&consumer, &offsets, CommitMode::Async)?;
            }
            m = consumer.recv(), if !due => {
                match m {
                    Ok(m) => {
                        stats.first_received.get_or_insert_with(Instant::now);
                        let inbound = Inbound::from_message(&m);
                        let next = inbound.offset + 1;
                        let key = (inbound.topic.clone(), inbound.partition);
                        match decode(&inbound) {
                            Ok(item) => {
                                pending.opened.get_or_insert_with(Instant::now);
                                pending.items.push((inbound, item, Instant::now()));
                            }
                            Err(why) => {
                                dead_letter(&dlq, &dlq_topic, &inbound, &why).await?;
                                stats.dead_lettered += 1;
                                metrics::counter!("eventfold_dead_letter_total").increment(1);
                            }
                        }
                        pending.offsets.insert(key, next);
                    }
                    Err(e) => tracing::warn!(error = %e, "kafka consumer error; continuing"),
                }
            }
            () = sleep_until(deadline), if !due && flushing.is_none() => {}
            () = &mut stop => {
                if let Some(f) = flushing.take() {
                    let (offsets, done) = f.await?;
                    merge(&mut stats, done);
                    commit(&consumer, &offsets, CommitMode::Sync)?;
                }
                let ready = std::mem::replace(&mut pending, Pending::new());
                let (offsets, done) = flush(&out, batch, sink, ready).await?;
                merge(&mut stats, done);
                commit(&consumer, &offsets, CommitMode::Sync)?;
                return Ok(stats);
            }
        }
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        let due = pending.items.len() >= batch.max_messages
            || (pending.items.is_empty() && !pending.offsets.is_empty());
        if flushing.is_none() && (due || expired) {
            let ready = std::mem::replace(&mut pending, Pending::new());
            flushing = Some(Box::pin(flush(&out, batch, sink, ready)));
        }
    }
}

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Where a flush dead-letters.
struct Out<'a> {
    dlq: &'a FutureProducer,
    dlq_topic: &'a str,
}

fn merge(stats: &mut BatchStats, done: BatchStats) {
    stats.written += done.written;
    stats.batches += done.batches;
    stats.failed_tries += done.failed_tries;
    stats.breaker_opened += done.breaker_opened;
    stats.dead_lettered += done.dead_lettered;
    stats.flush_ms.extend(done.flush_ms);
    stats.consume_latency_ms.extend(done.consume_latency_ms);
    stats.end_to_end_ms.extend(done.end_to_end_ms);
}

fn commit(
    consumer: &StreamConsumer<LagMetrics>,
    offsets: &HashMap<(String, i32), i64>,
    mode: CommitMode,
) -> Result<(), KafkaError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
    }
    consumer.commit(&tpl, mode)
}

/// Writes a batch (retrying, opening the breaker, splitting out rows refused for good); returns
/// its offsets, to be committed now that it is durable, and what it counted.
async fn flush<T, S>(
    out: &Out<'_>,
    config: &BatchConfig,
    sink: &S,
    mut pending: Pending<T>,
) -> Result<(HashMap<(String, i32), i64>, BatchStats), KafkaError>
where
    T: Send + Sync,
    S: BatchSink<T>,
{
    let mut stats = BatchStats::default();
    if !pending.items.is_empty() {
        metrics::histogram!("eventfold_batch_size").record(pending.items.len() as f64);
        let started = Instant::now();
        let mut tries = 0u32;
        while !pending.items.is_empty() {
            let rows: Vec<&T> = pending.items.iter().map(|(_, t, _)| t).collect();
            match sink.write(&rows).await {
                Ok(()) => {
                    for (inbound, _, received) in pending.items.drain(..) {
                        record_written(&mut stats, &inbound, received);
                    }
                }
                Err(SinkError::Permanent(why)) => {
                    // Find the rows the sink refuses: write one by one, dead-letter the refused.
                    tracing::warn!(error = %why, "batch refused; writing its rows one by one");
                    let mut retry = Vec::new();
                    for (inbound, item, received) in std::mem::take(&mut pending.items) {
                        match sink.write(&[&item]).await {
                            Ok(()) => record_written(&mut stats, &inbound, received),
                            Err(SinkError::Permanent(why)) => {
                                dead_letter(out.dlq, out.dlq_topic, &inbound, &why).await?;
                                stats.dead_lettered += 1;
                                metrics::counter!("eventfold_dead_letter_total").increment(1);
                            }
                            Err(SinkError::Transient(_)) => {
                                retry.push((inbound, item, received));
                            }
                        }
                    }
                    pending.items = retry;
                }
                Err(SinkError::Transient(why)) => {
                    stats.failed_tries += 1;
                    metrics::counter!("eventfold_batch_retries_total").increment(1);
                    tries += 1;
                    if tries >= config.tries {
                        stats.breaker_opened += 1;
                        metrics::counter!("eventfold_breaker_opened_total").increment(1);
                        tracing::warn!(error = %why, open_for = ?config.open_for,
                            "sink failed {tries} times; circuit breaker open");
                        metrics::gauge!("eventfold_breaker_open").set(1.0);
                        tokio::time::sleep(config.open_for).await;
                        metrics::gauge!("eventfold_breaker_open").set(0.0);
                        tries = 0;
                    } else {
                        tokio::time::sleep(backoff(tries - 1)).await;
                    }
                }
            }
        }
        stats
            .flush_ms
            .push(started.elapsed().as_secs_f64() * 1000.0);
        stats.batches += 1;
        metrics::histogram!("eventfold_batch_flush_seconds")
            .record(started.elapsed().as_secs_f64());
    }
    Ok((pending.offsets, stats))
}

fn record_written(stats: &mut BatchStats, inbound: &Inbound, received: Instant) {
    stats.written += 1;
    metrics::counter!("eventfold_batch_messages_total").increment(1);
    stats
        .consume_latency_ms
        .push(received.elapsed().as_secs_f64() * 1000.0);
    if let Some(ts) = inbound.timestamp_ms {
        stats.end_to_end_ms.push((now_ms() - ts).max(0) as f64);
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn dead_letter(
    dlq: &FutureProducer,
    topic: &str,
    m: &Inbound,
    why: &str,
) -> Result<(), KafkaError> {
    let headers = dead_letter_headers(m, why);
    let mut record = FutureRecord::to(topic).payload(&m.payload).headers(headers);
    if let Some(k) = &m.key {
        record = record.key(k);
    }
    dlq.send(record, Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}

/// A dead letter's headers: the original ones, then `error` (why) and `source_topic` /
/// `source_partition` / `source_offset` (where it came from).
pub(crate) fn dead_letter_headers(m: &Inbound, why: &str) -> OwnedHeaders {
    let (partition, offset) = (m.partition.to_string(), m.offset.to_string());
    let mut headers = OwnedHeaders::new_with_capacity(m.headers.len() + 4);
    for (k, v) in &m.headers {
        headers = headers.insert(Header {
            key: k.as_str(),
            value: Some(v.as_str()),
        });
    }
    headers
        .insert(Header {
            key: "error",
            value: Some(why),
        })
        .insert(Header {
            key: "source_topic",
            value: Some(m.topic.as_str()),
        })
        .insert(Header {
            key: "source_partition",
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: "source_offset",
            value: Some(offset.as_str()),
        })
}
