//! The unpaid-order timeout: an order still PENDING `delay` (default 30 minutes) after its
//! creation is cancelled, through a durable timer.
//!
//! **Choice: a due-time index in the store**, not multi-level delay topics on Kafka: it works the
//! same on the embedded default and on PostgreSQL, needs no broker, and is exactly as durable as
//! the orders themselves. The index is the `payment_deadlines` projection (keys sort by creation
//! time, so the timers that came due are one range scan) and the timer's progress is a checkpoint
//! (`timer:unpaid-orders`, the creation time up to which every order was handled). Each tick
//! (250 ms) scans the window from the checkpoint minus a grace period (60 s, for index entries that
//! arrive late) up to `now - delay`, cancels each order found still PENDING with the idempotency
//! key `timeout:{order}` (a redelivery or a second worker changes nothing), and saves the
//! checkpoint. After a restart the scan resumes from the checkpoint, so timers that came due while
//! eventfold was down fire at once. A payment racing the timeout is decided by the order's stream:
//! whichever command comes first wins, and the other is refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventfold_core::{Actor, EventStore, ReadModelStore, StoreError};
use eventfold_domain::order::{Order, OrderCommand, OrderStatus};
use eventfold_domain::projections::{deadline_key, OrderCreatedAt, PAYMENT_DEADLINES};

use crate::service::{AsOf, CommandContext, Service, ServiceError};

/// The checkpoint holding the creation time (ms) up to which every order was handled.
pub const CURSOR: &str = "timer:unpaid-orders";

/// How far behind the cursor each scan starts again, for index entries that arrive late.
const GRACE_MS: i64 = 60_000;

/// What one [`UnpaidOrderTimeout::fire_due`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fired {
    /// Orders cancelled now.
    pub cancelled: u64,
    /// Due orders that were no longer pending (paid, cancelled).
    pub settled: u64,
}

/// The timer (see the module docs).
pub struct UnpaidOrderTimeout {
    service: Service,
    store: Arc<dyn EventStore>,
    read_models: Arc<dyn ReadModelStore>,
    delay: Duration,
    progress: tokio::sync::Mutex<Progress>,
}

/// What a timer remembers between ticks.
#[derive(Default)]
struct Progress {
    /// The cursor, once read from its checkpoint (the checkpoint is only read at the first tick).
    cursor: Option<i64>,
    /// Orders of the grace window already handled (creation ms), so a tick does not load them
    /// again.
    handled: HashMap<String, i64>,
}

impl UnpaidOrderTimeout {
    /// Cancels orders unpaid `delay` after creation.
    pub fn new(
        store: Arc<dyn EventStore>,
        read_models: Arc<dyn ReadModelStore>,
        delay: Duration,
    ) -> Self {
        Self {
            service: Service::new(store.clone()),
            store,
            read_models,
            delay,
            progress: tokio::sync::Mutex::default(),
        }
    }

    /// Cancels every order created up to `now - delay` that is still pending, then advances the
    /// cursor.
    ///
    /// # Errors
    /// Store failures (nothing is skipped: the next tick scans the same window).
    pub async fn fire_due(&self, now: DateTime<Utc>) -> Result<Fired, ServiceError> {
        let delay_ms = i64::try_from(self.delay.as_millis()).unwrap_or(i64::MAX);
        let upto = now.timestamp_millis().saturating_sub(delay_ms).max(0);
        let mut progress = self.progress.lock().await;
        let cursor = match progress.cursor {
            Some(c) => c,
            None => match self.store.load_checkpoint(CURSOR).await? {
                Some(c) => i64::try_from(c).unwrap_or(i64::MAX),
                // First start: only timers that came due recently (not years of history).
                None => upto.saturating_sub(GRACE_MS),
            },
        };
        let from = cursor.saturating_sub(GRACE_MS).max(0);
        let mut fired = Fired::default();
        let handled = &mut progress.handled;
        handled.retain(|_, created| *created >= from);
        let end = deadline_key(upto, "\u{10ffff}");
        let mut start = deadline_key(from, "");
        loop {
            let docs = self
                .read_models
                .range_docs(PAYMENT_DEADLINES, &start, &end, 1_000)
                .await?;
            let full = docs.len() == 1_000;
            for (key, json) in docs {
                let entry: OrderCreatedAt = serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("{PAYMENT_DEADLINES} {key}: {e}")))?;
                start = eventfold_core::read_model::key_after(&key);
                if handled.contains_key(&entry.order_id) {
                    continue;
                }
                if self.cancel_if_pending(&entry.order_id).await? {
                    fired.cancelled += 1;
                } else {
                    fired.settled += 1;
                }
                handled.insert(entry.order_id, entry.created_ms);
            }
            if !full {
                break;
            }
        }
        if upto > cursor {
            self.store
                .save_checkpoint(CURSOR, u64::try_from(upto).unwrap_or(0))
                .await?;
            progress.cursor = Some(upto);
        } else {
            progress.cursor = Some(cursor);
        }
        Ok(fired)
    }

    /// Cancels `order_id` if it is still pending; true when it was cancelled now.
    async fn cancel_if_pending(&self, order_id: &str) -> Result<bool, ServiceError> {
        let Some(order) = self.service.load::<Order>(order_id, AsOf::Latest).await? else {
            return Ok(false);
        };
        if order.state.status != Some(OrderStatus::Pending) {
            return Ok(false);
        }
        let actor = Actor::system("unpaid-order-timeout");
        let minutes = self.delay.as_secs_f64() / 60.0;
        let command = OrderCommand::Cancel {
            actor: actor.clone(),
            reason: format!("unpaid {minutes:.1} minutes after creation"),
        };
        let mut ctx = CommandContext::new(actor);
        ctx.idempotency = Some((format!("timeout:{order_id}"), "cancel".into()));
        let render = crate::service::version_render::<Order>(200);
        match self
            .service
            .execute::<Order>(order_id, command, &ctx, render)
            .await
        {
            Ok(_) => Ok(true),
            // Paid (or cancelled) between the load and the command: the order decided.
            Err(ServiceError::Refused { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Fires every 250 ms until `stop` completes; a failed tick is logged and retried.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            match self.fire_due(Utc::now()).await {
                Ok(f) if f.cancelled > 0 => {
                    tracing::info!(cancelled = f.cancelled, "unpaid orders cancelled");
                    metrics::counter!("eventfold_unpaid_orders_cancelled_total")
                        .increment(f.cancelled);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "unpaid-order timeout tick failed")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = &mut stop => return,
            }
        }
    }
}
