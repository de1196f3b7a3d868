//! Kafka benchmarks: `bench notifications` (Kafka -> notification table, end to end) and
//! `bench relay` (event log -> Kafka). Each also measures the broker's own ceiling in the same run
//! with a bare rdkafka client, so eventfold's figure reads as a ratio of what the broker allows.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use eventfold_core::{AppendRequest, ExpectedVersion};
use eventfold_kafka::batch::{run_batch_consumer, BatchConfig, BatchSink, SinkError};
use eventfold_kafka::{create_topic, ConsumerConfig, Relay, RelayConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde::Serialize;

use crate::scratch::Scratch;
use crate::{bench_event, payload, BenchTarget};
use eventfold_app::messaging::notifications::{decode, Notification, NotificationSink};

/// What `bench notifications --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct NotificationsReport {
    /// Sink backend.
    pub store: String,
    /// Messages consumed and written.
    pub messages: u64,
    /// Flush size (messages per batch).
    pub batch_size: usize,
    /// Messages per second, from the consumer's first message to the last row durable, with all
    /// messages already in the topic (as the baseline reads them).
    pub messages_per_sec: f64,
    /// Messages per second with the producer running at the same time, from the first produce to
    /// the last row durable (bounded by the producer as well).
    pub live_messages_per_sec: f64,
    /// The bench's producer (idempotent, acks=all), per second.
    pub producer_messages_per_sec: f64,
    /// Consume latency: a message's arrival at the consumer -> its batch durable in the table,
    /// median, ms.
    pub p50_latency_ms: f64,
    /// 95th percentile of the same, ms.
    pub p95_latency_ms: f64,
    /// End to end in the live run: produced (Kafka timestamp) -> durable in the table, 95th
    /// percentile, ms. All messages are produced at once, so this includes the time they queue in
    /// the topic.
    pub p95_end_to_end_ms: f64,
    /// Batches written.
    pub batches: u64,
    /// 95th percentile of the batch write time during the run, ms.
    pub flush_p95_ms: f64,
    /// One write of 1,000 rows (median of 3), ms.
    pub flush_1k_ms: f64,
    /// One write of 10,000 rows (median of 3), ms.
    pub flush_10k_ms: f64,
    /// Peak resident memory (VmHWM) of the consumer process, `eventfold consume notifications`,
    /// started on its own and draining `messages` messages into the table, MB.
    pub max_rss_mb: f64,
    /// Peak resident memory of this bench process (producers, baseline consumer, two consumer
    /// runs, their latency samples), MB: an upper bound.
    pub bench_process_max_rss_mb: f64,
    /// A bare rdkafka consumer reading the same number of messages, per second.
    pub broker_baseline_messages_per_sec: f64,
    /// `messages_per_sec / broker_baseline_messages_per_sec`.
    pub ratio_to_baseline: f64,
}

/// What `bench relay --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct RelayBenchReport {
    /// Events in the log.
    pub events: u64,
    /// Events published per second (all acknowledged).
    pub messages_per_sec: f64,
    /// Keys whose first arrivals on the topic were not in stream order.
    pub order_violations: u64,
    /// Events not found on the topic.
    pub lost: u64,
    /// A bare idempotent producer sending the same number of messages of the same size, per
    /// second (all acknowledged).
    pub broker_baseline_messages_per_sec: f64,
    /// `messages_per_sec / broker_baseline_messages_per_sec`.
    pub ratio_to_baseline: f64,
}

/// Produces `n` values made by `value` (keys cycling over 100) and waits for every
/// acknowledgement; returns the messages per second.
pub(crate) async fn produce_all(
    brokers: &str,
    topic: &str,
    n: u64,
    value: impl Fn(u64) -> String,
) -> anyhow::Result<f64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(n as usize);
    for i in 0..n {
        let key = format!("k{}", i % 100);
        let v = value(i);
        deliveries.push(
            producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&v))
                .map_err(|(e, _)| e)?,
        );
    }
    for d in deliveries {
        d.await
            .context("producer dropped")?
            .map_err(|(e, _)| e)
            .context("delivery")?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// Reads `n` messages of `topic` from the beginning with a bare consumer (prefetch capped as
/// eventfold's consumers cap it); returns their headers as maps when `keep_headers`, and the
/// messages per second.
pub(crate) fn consume_bare(
    brokers: &str,
    topic: &str,
    n: usize,
    keep_headers: bool,
) -> anyhow::Result<(Vec<HashMap<String, String>>, f64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("bench-{}", uuid::Uuid::now_v7().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set(
            "queued.max.messages.kbytes",
            eventfold_kafka::consumer::PREFETCH_KBYTES,
        )
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut out = Vec::new();
    let mut read = 0;
    let mut first: Option<Instant> = None;
    let limit = Instant::now() + Duration::from_secs(120);
    while read < n && Instant::now() < limit {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            first.get_or_insert_with(Instant::now);
            read += 1;
            if !keep_headers {
                continue;
            }
            out.push(eventfold_kafka::Inbound::from_message(&m).headers);
        }
    }
    let secs = first.map_or(1.0, |f| f.elapsed().as_secs_f64());
    Ok((out, n as f64 / secs.max(1e-9)))
}

pub(crate) fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// VmHWM (peak resident memory) of process `pid` (`self` for this one), MB; 0 when unknown.
pub(crate) fn max_rss_mb(pid: &str) -> f64 {
    proc_status_mb(pid, "VmHWM:")
}

/// A memory line (`VmHWM:`, `VmRSS:`) of `/proc/{pid}/status`, MB; 0 when unknown.
pub(crate) fn proc_status_mb(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub(crate) fn notification_value(i: u64) -> String {
    format!(
        r#"{{"user_id": "user-{}", "event_type": "OrderShipped", "title": "Your order shipped", "body": "Order {i} is on its way."}}"#,
        i % 1_000
    )
}

pub(crate) fn synthetic(n: usize, tag: &str) -> Vec<Notification> {
    (0..n)
        .map(|i| Notification {
            user_id: format!("user-{}", i % 1_000),
            event_type: "OrderShipped".into(),
            title: "Your order shipped".into(),
            body: format!("Order {i} is on its way."),
            created_at: Utc::now(),
            source: format!("bench-{tag}-{i}"),
        })
        .collect()
}

/// The sink, counting the rows it made durable.
pub(crate) struct Counted {
    sink: Arc<NotificationSink>,
    rows: AtomicU64,
}

#[async_trait::async_trait]
impl BatchSink<Notification> for Counted {
    async fn write(&self, items: &[&Notification]) -> Result<(), SinkError> {
        self.sink.write(items).await?;
        self.rows.fetch_add(items.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Runs the notification consumer on `topic` into `sink` until `messages` rows are durable;
/// returns its stats and when the last row was.
pub(crate) async fn consume_into(
    sink: &Arc<NotificationSink>,
    brokers: &str,
    topic: &str,
    group: &str,
    batch_size: usize,
    messages: u64,
) -> anyhow::Result<(eventfold_kafka::batch::BatchStats, Instant)> {
    let config = ConsumerConfig::new(brokers, format!("bench-{group}"), &[topic]);
    let batch = BatchConfig {
        max_messages: batch_size,
        max_wait: Duration::from_millis(200),
        dead_letter_topic: Some(format!("{topic}.dlq")),
        ..BatchConfig::default()
    };
    let counted = Counted {
        sink: sink.clone(),
        rows: AtomicU64::new(0),
    };
    let done_at = std::sync::Mutex::new(None);
    // Stops when every message is durable (counted in memory: a count(*) every few ms would load
    // the database being measured).
    let stop = async {
        let limit = Instant::now() + Duration::from_secs(300);
        while counted.rows.load(Ordering::Relaxed) < messages && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if let Ok(mut d) = done_at.lock() {
            *d = Some(Instant::now());
        }
    };
    let stats = run_batch_consumer(&config, &batch, decode, &counted, stop).await?;
    anyhow::ensure!(
        counted.rows.load(Ordering::Relaxed) == messages,
        "{} of {messages} rows written",
        counted.rows.load(Ordering::Relaxed)
    );
    let done_at = done_at
        .into_inner()
        .ok()
        .flatten()
        .unwrap_or_else(Instant::now);
    Ok((stats, done_at))
}

/// Produces `messages` messages to `topic`, lets `eventfold consume notifications` (this binary,
/// a child process) drain them into the table of store `url` until it holds `rows` rows, and
/// returns the child's peak resident memory, MB. The child is stopped with SIGINT (it flushes
/// and commits).
pub(crate) async fn consumer_process_rss(
    url: &str,
    brokers: &str,
    topic: &str,
    batch_size: usize,
    messages: u64,
    sink: &NotificationSink,
    rows: u64,
) -> anyhow::Result<f64> {
    create_topic(brokers, topic, 3).await?;
    produce_all(brokers, topic, messages, notification_value).await?;
    let exe = std::env::current_exe().context("locating the eventfold binary")?;
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--store",
            url,
            "--kafka-brokers",
            brokers,
            "consume",
            "notifications",
        ])
        .args(["--topic", topic, "--batch-size", &batch_size.to_string()])
        .args(["--max-wait-ms", "200"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting eventfold consume notifications")?;
    let pid = child
        .id()
        .context("the consumer exited at once")?
        .to_string();
    let limit = Instant::now() + Duration::from_secs(300);
    let mut peak = 0.0f64;
    while sink.count().await? < rows {
        peak = peak.max(max_rss_mb(&pid));
        anyhow::ensure!(
            Instant::now() < limit,
            "the consumer process did not drain the topic"
        );
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the consumer process exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak = peak.max(max_rss_mb(&pid));
    let _ = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    Ok(peak)
}

/// Runs `bench notifications` on a scratch database of `target`, with topics on `brokers`.
///
/// # Errors
/// The scratch database, the broker or the sink fails.
pub async fn notifications(
    target: &BenchTarget,
    brokers: &str,
    messages: u64,
    batch_size: usize,
) -> anyhow::Result<NotificationsReport> {
    let scratch = Scratch::create(target, true).await?;
    let sink = Arc::new(NotificationSink::open(&scratch.url, None).await?);
    let tag = uuid::Uuid::now_v7().simple().to_string();

    // The broker's ceiling: a bare consumer reading the same volume.
    let ceiling = format!("bench-ceiling-{tag}");
    create_topic(brokers, &ceiling, 3).await?;
    produce_all(brokers, &ceiling, messages, notification_value).await?;
    let (b, t, n) = (brokers.to_owned(), ceiling.clone(), messages as usize);
    let (_, baseline) =
        tokio::task::spawn_blocking(move || consume_bare(&b, &t, n, false)).await??;

    // eventfold, draining a topic that holds every message (as the baseline does).
    let drained = format!("bench-notifications-{tag}");
    create_topic(brokers, &drained, 3).await?;
    let producer_rate = produce_all(brokers, &drained, messages, notification_value).await?;
    let (stats, done_at) =
        consume_into(&sink, brokers, &drained, &tag, batch_size, messages).await?;
    let first = stats
        .first_received
        .context("the consumer received nothing")?;
    let messages_per_sec = messages as f64 / (done_at - first).as_secs_f64().max(1e-9);

    // eventfold live: the consumer runs first, then the messages are produced.
    let live = format!("bench-notifications-live-{tag}");
    create_topic(brokers, &live, 3).await?;
    let running = {
        let (sink, brokers, live, tag) =
            (sink.clone(), brokers.to_owned(), live.clone(), tag.clone());
        tokio::spawn(async move {
            consume_into(
                &sink,
                &brokers,
                &live,
                &format!("{tag}-live"),
                batch_size,
                messages,
            )
            .await
        })
    };
    // Let the consumer join its group before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    produce_all(brokers, &live, messages, notification_value).await?;
    let (live_stats, live_done) = running.await.context("consumer panicked")??;
    let live_messages_per_sec = messages as f64 / (live_done - started).as_secs_f64().max(1e-9);
    anyhow::ensure!(
        sink.count().await? == 2 * messages,
        "the table holds {} rows of {}",
        sink.count().await?,
        2 * messages
    );

    // The consumer's own memory: `eventfold consume notifications` as a process of its own.
    let consumer_rss = consumer_process_rss(
        &scratch.url,
        brokers,
        &format!("bench-notifications-rss-{tag}"),
        batch_size,
        messages,
        &sink,
        3 * messages,
    )
    .await?;

    // Flush sizes, written directly (median of 3).
    let flush = |n: usize| {
        let sink = sink.clone();
        let tag = tag.clone();
        async move {
            let mut times = Vec::new();
            for round in 0..3 {
                let rows = synthetic(n, &format!("{tag}-{n}-{round}"));
                let refs: Vec<&Notification> = rows.iter().collect();
                let t = Instant::now();
                sink.write(&refs)
                    .await
                    .map_err(|e| anyhow::anyhow!("flush of {n} rows: {e:?}"))?;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(quantile(&mut times, 0.5))
        }
    };
    let flush_1k_ms = flush(1_000).await?;
    let flush_10k_ms = flush(10_000).await?;

    let mut latencies = live_stats.consume_latency_ms.clone();
    let mut end_to_end = live_stats.end_to_end_ms.clone();
    let mut flushes = stats.flush_ms.clone();
    let store = match target {
        BenchTarget::Sqlite(_) => "sqlite",
        BenchTarget::Postgres(_) => "postgres",
        BenchTarget::Nats(_) => "nats",
    };
    // The sink's store goes before its scratch database does.
    drop(sink);
    scratch.remove().await?;
    Ok(NotificationsReport {
        store: store.into(),
        messages,
        batch_size,
        messages_per_sec,
        live_messages_per_sec,
        producer_messages_per_sec: producer_rate,
        p50_latency_ms: quantile(&mut latencies, 0.5),
        p95_latency_ms: quantile(&mut latencies, 0.95),
        p95_end_to_end_ms: quantile(&mut end_to_end, 0.95),
        batches: stats.batches,
        flush_p95_ms: quantile(&mut flushes, 0.95),
        flush_1k_ms,
        flush_10k_ms,
        max_rss_mb: consumer_rss,
        bench_process_max_rss_mb: max_rss_mb("self"),
        broker_baseline_messages_per_sec: baseline,
        ratio_to_baseline: messages_per_sec / baseline.max(1e-9),
    })
}

/// Runs `bench relay`: `events` events over 1,000 streams in a scratch store, published to
/// `brokers`, then read back to count order violations and losses.
///
/// # Errors
/// The scratch store, the broker or the relay fails.
pub async fn relay(
    target: &BenchTarget,
    brokers: &str,
    events: u64,
) -> anyhow::Result<RelayBenchReport> {
    let scratch = Scratch::create(target, true).await?;
    let store = scratch.store.clone();
    let body = payload(200);
    let mut versions = vec![0u64; 1_000];
    let mut written = 0u64;
    while written < events {
        let batch: Vec<AppendRequest> = (0..1_000u64.min(events - written))
            .map(|i| {
                let s = ((written + i) % 1_000) as usize;
                let expected = if versions[s] == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(versions[s])
                };
                versions[s] += 1;
                AppendRequest::new(format!("bench-{s}"), expected, vec![bench_event(&body)])
            })
            .collect();
        written += batch.len() as u64;
        for r in store.append_many(batch).await? {
            r?;
        }
    }
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let mut config = RelayConfig::new(brokers);
    config.topic_prefix = format!("bench{tag}");
    let relay = Relay::new(store.clone(), config)?;
    let started = Instant::now();
    let progress = relay.publish_pending().await?;
    let messages_per_sec = progress.published as f64 / started.elapsed().as_secs_f64().max(1e-9);

    let (b, t, n) = (
        brokers.to_owned(),
        format!("bench{tag}.bench"),
        events as usize,
    );
    let (headers, _) = tokio::task::spawn_blocking(move || consume_bare(&b, &t, n, true)).await??;
    let mut seen = HashSet::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut order_violations = 0;
    for h in &headers {
        let (Some(id), Some(stream), Some(version)) = (
            h.get("event_id"),
            h.get("stream_id"),
            h.get("stream_version").and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if seen.insert(id.clone()) {
            let previous = last.insert(stream.clone(), version).unwrap_or(0);
            if version != previous + 1 {
                order_violations += 1;
            }
        }
    }
    let lost = events.saturating_sub(seen.len() as u64);

    let ceiling = format!("bench-relay-ceiling-{tag}");
    create_topic(brokers, &ceiling, 3).await?;
    let baseline = produce_all(brokers, &ceiling, events, |_| body.clone()).await?;
    drop((relay, store));
    scratch.remove().await?;
    Ok(RelayBenchReport {
        events,
        messages_per_sec,
        order_violations,
        lost,
        broker_baseline_messages_per_sec: baseline,
        ratio_to_baseline: messages_per_sec / baseline.max(1e-9),
    })
}
