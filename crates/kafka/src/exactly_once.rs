//! Exactly-once consume-transform-produce (KIP-98 transactions, KIP-447 consumer-group
//! fencing): a worker reads input messages, turns each into zero or more output messages, and
//! commits the outputs **and** the input offsets in one Kafka transaction. Readers of the outputs
//! use `isolation.level=read_committed`, so they see each input's outputs exactly once: outputs
//! of an aborted transaction are never shown to them, and an input whose transaction aborted is
//! read again (its offset was not committed) and transformed again.
//!
//! One transaction per batch (up to `max_batch` messages or `max_wait`):
//! `begin_transaction` -> produce every output -> `send_offsets_to_transaction` (the next offset
//! of each input partition, with the consumer's group metadata) -> `commit_transaction`.
//! When anything in between fails with an abortable error (a transform asked to retry, a
//! produce failed, the coordinator refused), the transaction is aborted, the consumer is rewound
//! to the batch's first offsets, and the batch is tried again after a backoff (100 ms doubling,
//! capped at 5 s). A fatal error, above all being **fenced** because another worker started with
//! the same `transactional.id` (or the group moved on), ends the worker with that error: a zombie
//! cannot commit.
//!
//! A message the transform can never handle goes to the dead-letter topic inside the same
//! transaction (headers `error`, `source_topic`, `source_partition`, `source_offset`), so it too
//! is dead-lettered exactly once.
//!
//! The transform must be a function of the message (and of immutable history, such as stored
//! events): it runs again for every input of an aborted batch.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::batch::{dead_letter_headers, sleep_until};
use crate::consumer::{backoff, ConsumerConfig, Inbound, LagMetrics};

/// The transactional producer (polled by its own thread).
type TxProducer = ThreadedProducer<DefaultProducerContext>;

/// A message to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The topic the message was read from.
    pub topic: String,
    /// Partition key.
    pub key: Option<String>,
    /// Headers (UTF-8).
    pub headers: Vec<(String, String)>,
    /// The message value, as bytes.
    pub payload: Vec<u8>,
}

/// What a transform made of one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transformed {
    /// These outputs (possibly none).
    Emit(Vec<Outbound>),
    /// A transient failure: abort the batch's transaction and try the batch again later.
    Retry(String),
    /// Never transformable: dead-letter it (in the transaction) and go on.
    Poison(String),
}

/// The worker's settings.
#[derive(Debug, Clone)]
pub struct ExactlyOnceConfig {
    /// Input: brokers, group, topics (the consumer reads with `isolation.level=read_committed`).
    pub consumer: ConsumerConfig,
    /// `transactional.id`: stable per worker instance (and per input partition set), so that a
    /// restarted worker fences its previous incarnation.
    pub transactional_id: String,
    /// Messages per transaction at most (default 500).
    pub max_batch: usize,
    /// How long a transaction waits for more input once it has some (default 100 ms).
    pub max_wait: Duration,
    /// `transaction.timeout.ms` (default 30 s): the broker aborts a transaction left open longer.
    pub transaction_timeout: Duration,
    /// Dead-letter topic (default `{first input topic}.dlq`).
    pub dead_letter_topic: Option<String>,
    /// Extra librdkafka producer settings (applied last).
    pub producer_settings: Vec<(String, String)>,
}

impl ExactlyOnceConfig {
    /// Defaults for `consumer` and `transactional_id`.
    pub fn new(consumer: ConsumerConfig, transactional_id: impl Into<String>) -> Self {
        Self {
            consumer,
            transactional_id: transactional_id.into(),
            max_batch: 500,
            max_wait: Duration::from_millis(100),
            transaction_timeout: Duration::from_secs(30),
            dead_letter_topic: None,
            producer_settings: Vec::new(),
        }
    }
}

/// What the worker did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExactlyOnceStats {
    /// Transactions committed.
    pub committed: u64,
    /// Transactions aborted (each batch is then tried again).
    pub aborted: u64,
    /// Input messages whose offsets were committed (each counted once).
    pub inputs: u64,
    /// Output messages committed.
    pub outputs: u64,
    /// Output messages produced in transactions that were then aborted (never visible to
    /// `read_committed` readers).
    pub aborted_outputs: u64,
    /// Inputs dead-lettered.
    pub dead_lettered: u64,
}

/// Runs the worker until `stop` completes (the open batch is then committed) or a fatal error.
///
/// # Errors
/// The clients cannot be created (a bad setting), `init_transactions` fails (no transaction
/// coordinator: a broker without transactions), or a fatal transaction error, e.g.
/// [`RDKafkaErrorCode::Fenced`] when a newer worker took over the `transactional.id` (the broker
/// answered `PRODUCER_FENCED` or `INVALID_PRODUCER_EPOCH`).
pub async fn run_exactly_once<F, Fut>(
    config: &ExactlyOnceConfig,
    mut transform: F,
    stop: impl Future<Output = ()>,
) -> Result<ExactlyOnceStats, KafkaError>
where
    F: FnMut(Inbound) -> Fut,
    Fut: Future<Output = Transformed>,
{
    let mut consumer_config = config.consumer.clone();
    consumer_config
        .settings
        .insert(0, ("isolation.level".into(), "read_committed".into()));
    let consumer = consumer_config.subscribe()?;
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.consumer.brokers)
        .set("transactional.id", &config.transactional_id)
        .set(
            "transaction.timeout.ms",
            config.transaction_timeout.as_millis().to_string(),
        )
        .set("reconnect.backoff.max.ms", "1000");
    for (k, v) in &config.producer_settings {
        client.set(k, v);
    }
    let producer: Arc<TxProducer> = Arc::new(client.create()?);
    let timeout = config.transaction_timeout;
    blocking(&producer, move |p| p.init_transactions(timeout)).await?;
    let dlq_topic = config.dead_letter_topic.clone().unwrap_or_else(|| {
        format!(
            "{}.dlq",
            config
                .consumer
                .topics
                .first()
                .map_or("eventfold", String::as_str)
        )
    });

    let mut stats = ExactlyOnceStats::default();
    let mut stop = std::pin::pin!(stop);
    let mut stopping = false;
    let mut attempt = 0u32;
    while !stopping {
        let mut batch = Vec::new();
        let mut opened: Option<Instant> = None;
        while batch.len() < config.max_batch {
            let deadline = opened.map(|t| t + config.max_wait);
            tokio::select! {
                m = consumer.recv() => match m {
                    Ok(m) => {
                        opened.get_or_insert_with(Instant::now);
                        batch.push(Inbound::from_message(&m));
                    }
                    Err(e) => tracing::warn!(error = %e, "kafka consumer error; continuing"),
                },
                () = sleep_until(deadline) => break,
                () = &mut stop => { stopping = true; break; }
            }
        }
        // Partitions revoked by a rebalance while the batch filled belong to another member now:
        // it reads them from the committed offsets, so they are dropped here.
        let assigned = consumer.assignment()?;
        batch.retain(|m| assigned.find_partition(&m.topic, m.partition).is_some());
        if batch.is_empty() {
            continue;
        }
        match transact(
            &consumer,
            &producer,
            config,
            &dlq_topic,
            &batch,
            &mut transform,
        )
        .await
        {
            Ok(done) => {
                attempt = 0;
                stats.committed += 1;
                stats.inputs += batch.len() as u64;
                stats.outputs += done.outputs;
                stats.dead_lettered += done.dead_lettered;
                metrics::counter!("eventfold_eos_inputs_total",
                    "group" => config.consumer.group_id.clone())
                .increment(batch.len() as u64);
            }
            Err(Failed::Fatal(e)) => return Err(e),
            Err(Failed::Abortable { why, produced }) => {
                stats.aborted += 1;
                stats.aborted_outputs += produced;
                metrics::counter!("eventfold_eos_aborted_total",
                    "group" => config.consumer.group_id.clone())
                .increment(1);
                tracing::warn!(error = %why, attempt, "transaction aborted; the batch is tried again");
                if let Err(e) = blocking(&producer, move |p| p.abort_transaction(timeout)).await {
                    if is_fatal(&e) {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "abort failed");
                }
                rewind(&consumer, &batch)?;
                // A stop while the batch waits to be tried again ends the worker without it:
                // nothing of it is visible, and its offsets are not committed.
                if !stopping {
                    tokio::select! {
                        () = tokio::time::sleep(backoff(attempt)) => {}
                        () = &mut stop => stopping = true,
                    }
                }
                attempt += 1;
            }
        }
    }
    Ok(stats)
}

/// The outcome of one committed transaction.
struct Done {
    outputs: u64,
    dead_lettered: u64,
}

enum Failed {
    /// The worker must stop (fenced, or a setting the broker refuses).
    Fatal(KafkaError),
    /// Abort, rewind, try again; `produced` outputs were sent in the aborted transaction.
    Abortable { why: String, produced: u64 },
}

async fn transact<F, Fut>(
    consumer: &StreamConsumer<LagMetrics>,
    producer: &Arc<TxProducer>,
    config: &ExactlyOnceConfig,
    dlq_topic: &str,
    batch: &[Inbound],
    transform: &mut F,
) -> Result<Done, Failed>
where
    F: FnMut(Inbound) -> Fut,
    Fut: Future<Output = Transformed>,
{
    let fail = |produced: u64| {
        move |e: KafkaError| {
            if is_fatal(&e) {
                Failed::Fatal(e)
            } else {
                Failed::Abortable {
                    why: e.to_string(),
                    produced,
                }
            }
        }
    };
    producer.begin_transaction().map_err(fail(0))?;
    let mut done = Done {
        outputs: 0,
        dead_lettered: 0,
    };
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for m in batch {
        match transform(m.clone()).await {
            Transformed::Emit(outputs) => {
                for o in &outputs {
                    let headers = o.headers.iter().fold(
                        OwnedHeaders::new_with_capacity(o.headers.len()),
                        |h, (k, v)| {
                            h.insert(Header {
                                key: k.as_str(),
                                value: Some(v.as_str()),
                            })
                        },
                    );
                    let mut record = BaseRecord::<str, [u8]>::to(&o.topic)
                        .payload(&o.payload)
                        .headers(headers);
                    if let Some(k) = &o.key {
                        record = record.key(k.as_str());
                    }
                    send(producer, record).await.map_err(fail(done.outputs))?;
                    done.outputs += 1;
                }
            }
            Transformed::Poison(why) => {
                tracing::error!(topic = %m.topic, partition = m.partition, offset = m.offset,
                    error = %why, "poison message dead-lettered");
                let mut record = BaseRecord::<str, [u8]>::to(dlq_topic)
                    .payload(&m.payload)
                    .headers(dead_letter_headers(m, &why));
                if let Some(k) = &m.key {
                    record = record.key(k.as_str());
                }
                send(producer, record).await.map_err(fail(done.outputs))?;
                done.dead_lettered += 1;
            }
            Transformed::Retry(why) => {
                return Err(Failed::Abortable {
                    why,
                    produced: done.outputs,
                })
            }
        }
        let entry = next.entry((m.topic.as_str(), m.partition)).or_default();
        *entry = (*entry).max(m.offset + 1);
    }
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in &next {
        offsets
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(fail(done.outputs))?;
    }
    let group = consumer.group_metadata().ok_or_else(|| Failed::Abortable {
        why: "no consumer group metadata yet".into(),
        produced: done.outputs,
    })?;
    let timeout = config.transaction_timeout;
    blocking(producer, move |p| {
        p.send_offsets_to_transaction(&offsets, &group, timeout)?;
        p.commit_transaction(timeout)
    })
    .await
    .map_err(fail(done.outputs))?;
    Ok(done)
}

/// Enqueues `record`, waiting while the producer's queue is full.
async fn send(
    producer: &TxProducer,
    mut record: BaseRecord<'_, str, [u8]>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Seeks every partition of `batch` back to its first message in the batch.
fn rewind(consumer: &StreamConsumer<LagMetrics>, batch: &[Inbound]) -> Result<(), KafkaError> {
    let mut first: HashMap<(&str, i32), i64> = HashMap::new();
    for m in batch {
        let entry = first
            .entry((m.topic.as_str(), m.partition))
            .or_insert(m.offset);
        *entry = (*entry).min(m.offset);
    }
    for ((topic, partition), offset) in first {
        consumer.seek(
            topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(10),
        )?;
    }
    Ok(())
}

/// A fatal error: the producer can no longer be used (fenced, or unrecoverable).
fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_fatal(),
        other => matches!(
            other.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::Fatal
            )
        ),
    }
}

/// Runs a blocking producer call off the async threads.
async fn blocking<T, F>(producer: &Arc<TxProducer>, call: F) -> Result<T, KafkaError>
where
    T: Send + 'static,
    F: FnOnce(&TxProducer) -> Result<T, KafkaError> + Send + 'static,
{
    let producer = Arc::clone(producer);
    match tokio::task::spawn_blocking(move || call(&producer)).await {
        Ok(result) => result,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
