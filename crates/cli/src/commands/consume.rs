//! `eventfold consume`: a Kafka topic through an inbox until Ctrl-C or SIGTERM.

use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use eventfold_app::messaging::{notifications, prizes};
use eventfold_app::service::Service;
use eventfold_kafka::batch::{run_batch_consumer, BatchConfig};
use eventfold_kafka::{run_consumer, ConsumerConfig};
use serde::Serialize;

use crate::context::{shutdown_on_signal, Global};

/// The consumers.
#[derive(Debug, Subcommand)]
pub enum Consume {
    /// Notifications (topic `notifications`) into the table `notifications`, in batches, with
    /// retries, a circuit breaker and a dead-letter topic (`notifications.dlq`).
    Notifications {
        /// Topic to read.
        #[arg(long, default_value = "notifications")]
        topic: String,
        /// Flush at this many messages.
        #[arg(long, default_value_t = 100)]
        batch_size: usize,
        /// Flush when the oldest message has waited this long, ms.
        #[arg(long, default_value_t = 5_000)]
        max_wait_ms: u64,
        /// Static membership (group.instance.id).
        #[arg(long)]
        group_instance_id: Option<String>,
    },
    /// "Prize won" messages (topic `prizes`): each deposits its prize once per event_id.
    Prizes {
        /// Topic to read (default `prizes`).
        #[arg(long, default_value = "prizes")]
        topic: String,
        /// Static membership (group.instance.id): restarts within the session timeout keep the
        /// partitions without a rebalance.
        #[arg(long)]
        group_instance_id: Option<String>,
    },
}

/// What `consume prizes --json` prints when it stops.
#[derive(Serialize)]
struct ConsumeReport {
    /// Messages handled (including duplicates that changed nothing).
    done: u64,
    /// Tries that failed transiently and were retried.
    retries: u64,
    /// Messages skipped as poison.
    poison: u64,
}

/// What `consume notifications --json` prints when it stops.
#[derive(Serialize)]
struct NotificationsReport {
    /// Rows written.
    written: u64,
    /// Batches flushed.
    batches: u64,
    /// Messages sent to the dead-letter topic.
    dead_lettered: u64,
    /// Flushes that failed and were tried again.
    failed_tries: u64,
    /// Times the circuit breaker opened.
    breaker_opened: u64,
}

impl Consume {
    /// Runs the consumer until a signal, then prints what it did.
    ///
    /// # Errors
    /// No `--kafka-brokers`, a bad option, the store or the broker failing.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let brokers = global.brokers("consume")?;
        let shutdown = shutdown_on_signal();
        global.serve_metrics(&shutdown).await?;
        match self {
            Self::Prizes {
                topic,
                group_instance_id,
            } => {
                let backend = global.open().await?;
                let service = Service::new(backend.events.clone());
                let mut config = ConsumerConfig::new(brokers, prizes::PRIZES, &[&topic]);
                config.group_instance_id = group_instance_id;
                let stats = run_consumer(
                    &config,
                    |m| {
                        let service = service.clone();
                        async move { prizes::award_prize(&service, &m).await }
                    },
                    shutdown.clone().cancelled_owned(),
                )
                .await?;
                let report = ConsumeReport {
                    done: stats.done,
                    retries: stats.retries,
                    poison: stats.poison,
                };
                global.output().print(&report, || {
                    format!(
                        "handled {} messages ({} retries, {} poison)",
                        stats.done, stats.retries, stats.poison
                    )
                })
            }
            Self::Notifications {
                topic,
                batch_size,
                max_wait_ms,
                group_instance_id,
            } => {
                if batch_size == 0 || max_wait_ms == 0 {
                    bail!("--batch-size and --max-wait-ms must be at least 1");
                }
                let sink = notifications::NotificationSink::open(
                    &global.store,
                    global.read_models.clone(),
                )
                .await?;
                let mut config = ConsumerConfig::new(brokers, "notifications", &[&topic]);
                config.group_instance_id = group_instance_id;
                let batch = BatchConfig {
                    max_messages: batch_size,
                    max_wait: Duration::from_millis(max_wait_ms),
                    ..BatchConfig::default()
                };
                let stats = run_batch_consumer(
                    &config,
                    &batch,
                    notifications::decode,
                    &sink,
                    shutdown.clone().cancelled_owned(),
                )
                .await?;
                let report = NotificationsReport {
                    written: stats.written,
                    batches: stats.batches,
                    dead_lettered: stats.dead_lettered,
                    failed_tries: stats.failed_tries,
                    breaker_opened: stats.breaker_opened,
                };
                global.output().print(&report, || {
                    format!(
                        "wrote {} notifications in {} batches; {} dead-lettered; {} failed tries; breaker opened {} times",
                        stats.written, stats.batches, stats.dead_lettered, stats.failed_tries, stats.breaker_opened
                    )
                })
            }
        }
    }
}
