//! `eventfold transform`: an exactly-once consume-transform-produce worker until Ctrl-C or
//! SIGTERM.

use clap::Subcommand;
use eventfold_app::messaging::order_notifications;
use eventfold_kafka::exactly_once::{run_exactly_once, ExactlyOnceConfig};
use eventfold_kafka::ConsumerConfig;
use serde::Serialize;

use crate::context::{shutdown_on_signal, Global};

/// The transforms.
#[derive(Debug, Subcommand)]
pub enum Transform {
    /// Order events (`{prefix}.order`) into customer notifications (topic `notifications`).
    OrderNotifications {
        /// Topic to write notifications to.
        #[arg(long, default_value = "notifications")]
        topic: String,
        /// `transactional.id`: stable per worker instance; a restarted instance fences the
        /// previous one.
        #[arg(long, default_value = "order-notifications-0")]
        transactional_id: String,
        /// Static membership (group.instance.id).
        #[arg(long)]
        group_instance_id: Option<String>,
    },
}

/// What `transform --json` prints when it stops.
#[derive(Serialize)]
struct TransformReport {
    /// Transactions committed.
    committed: u64,
    /// Transactions aborted (their batches were tried again).
    aborted: u64,
    /// Input messages committed.
    inputs: u64,
    /// Output messages committed.
    outputs: u64,
    /// Inputs dead-lettered.
    dead_lettered: u64,
}

impl Transform {
    /// Runs the worker until a signal, then prints what it committed.
    ///
    /// # Errors
    /// No `--kafka-brokers`, the store or the broker failing (a broker without transactions).
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let Self::OrderNotifications {
            topic,
            transactional_id,
            group_instance_id,
        } = self;
        let brokers = global.brokers("transform")?;
        let backend = global.open().await?;
        let input = format!("{}.order", global.kafka_topic_prefix);
        let mut consumer = ConsumerConfig::new(
            &brokers,
            order_notifications::ORDER_NOTIFICATIONS,
            &[&input],
        );
        consumer.group_instance_id = group_instance_id;
        let config = ExactlyOnceConfig::new(consumer, transactional_id);
        for t in [&topic, &input] {
            eventfold_kafka::create_topic(&brokers, t, 3).await?;
        }
        let shutdown = shutdown_on_signal();
        global.serve_metrics(&shutdown).await?;
        let store = backend.events.clone();
        let stats = run_exactly_once(
            &config,
            |m| {
                let (store, topic) = (store.clone(), topic.clone());
                async move { order_notifications::transform(&store, &topic, m).await }
            },
            shutdown.cancelled_owned(),
        )
        .await?;
        let report = TransformReport {
            committed: stats.committed,
            aborted: stats.aborted,
            inputs: stats.inputs,
            outputs: stats.outputs,
            dead_lettered: stats.dead_lettered,
        };
        global.output().print(&report, || {
            format!(
                "committed {} transactions ({} inputs, {} outputs, {} dead-lettered); aborted {}",
                stats.committed, stats.inputs, stats.outputs, stats.dead_lettered, stats.aborted
            )
        })
    }
}
