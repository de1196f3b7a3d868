//! Sagas: the flash-sale order saga by **choreography** and the payment saga by
//! **orchestration**.
//!
//! Choreography: participants react to each other's events, read from the log by one tail with
//! its own checkpoint ([`CHECKPOINT`]); nobody directs them.
//!
//! | event | participant | reaction |
//! |---|---|---|
//! | `SaleOpened` | inventory | `StockAdded` (the sale's stock, in stream `inventory-{sku}`) |
//! | `OrderCreated` of a sale SKU | inventory | `InventoryReserved` (the ledger's take, recorded in the log) |
//! | `InventoryReserved` | payments | the payment saga starts (`PaymentSagaStarted`) |
//! | `PaymentCompleted` | order | `OrderPaid`, then `OrderConfirmed` (the saga's "order completed") |
//! | `PaymentFailed` | order | `OrderCancelled` |
//! | `OrderCancelled` | inventory | `InventoryReleased` (the ledger's give-back is `flash_sale`'s) |
//! | `OrderPaid` | inventory | `InventorySold` |
//!
//! Every reaction is a command with an idempotency key `choreo:{reaction}:{id}`, so a batch
//! replayed after a crash appends nothing twice. A batch's reactions run concurrently, one order's
//! in log order; a batch with a failed reaction is run again (all of it: the done ones are
//! no-ops) before the checkpoint moves.
//!
//! Orchestration: the payment saga's decisions are
//! [`eventfold_domain::payment_saga::next_action`] over its events (stream
//! `paysaga-{order}`) and its order's standing. [`Sagas`] drives each saga that something happened
//! to (a saga or order event, a provider callback, a timer): it records `StepStarted` (with the
//! try's deadline), calls the [`PaymentProvider`] with the key `{step}:{order}`, records the
//! result, and goes on until the saga waits. Retries are timers at the backoff the saga recorded;
//! a try with no answer by its deadline is recorded as failed and tried again. Sagas still running
//! are listed by the `sagas_in_flight` projection, which a restarted orchestrator (and a sweep
//! every 5 s) drives again, so timers survive restarts. Two orchestrators may drive one saga:
//! the store's expected versions let one record each step, and the provider's idempotency keys
//! make a doubled call harmless.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use eventfold_core::{EventStore, ReadModelStore};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::service::Service;
use crate::shop::flash_sale::FlashSale;
use crate::shop::payments::PaymentProvider;

mod choreography;
mod orchestrator;

/// The choreography tail's checkpoint.
pub const CHECKPOINT: &str = "saga:choreography";

/// How the orchestrator runs.
#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// How long one provider call may take before the try counts as failed (default 3 s).
    pub step_timeout: Duration,
    /// Sagas driven at once (default 64).
    pub workers: usize,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            step_timeout: Duration::from_secs(3),
            workers: 64,
        }
    }
}

/// The choreography participants and the payment orchestrator (see the module docs).
#[derive(Clone)]
pub struct Sagas {
    inner: Arc<Inner>,
}

struct Inner {
    service: Service,
    read_models: Arc<dyn ReadModelStore>,
    flash: FlashSale,
    provider: Arc<dyn PaymentProvider>,
    config: SagaConfig,
    queue: mpsc::UnboundedSender<String>,
    receiver: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    /// Sagas queued or being driven; `true` when something happened meanwhile (drive again).
    scheduled: Mutex<HashMap<String, bool>>,
    /// Timers armed per saga (due ms), so a saga waits on one timer at a time.
    timers: Mutex<HashMap<String, i64>>,
}

/// Calls `each` with the key and document of every saga in flight (the `sagas_in_flight`
/// projection), in key order, a page of 1,000 at a time.
///
/// # Errors
/// Read-model failures.
pub async fn for_each_in_flight(
    read_models: &dyn ReadModelStore,
    mut each: impl FnMut(&str, &str),
) -> Result<(), eventfold_core::StoreError> {
    const PAGE: usize = 1_000;
    let mut start = String::new();
    loop {
        let docs = read_models
            .range_docs(
                eventfold_domain::projections::SAGAS_IN_FLIGHT,
                &start,
                "\u{10ffff}",
                PAGE,
            )
            .await?;
        for (key, doc) in &docs {
            each(key, doc);
        }
        match docs.last() {
            Some((key, _)) if docs.len() == PAGE => {
                start = eventfold_core::read_model::key_after(key);
            }
            _ => return Ok(()),
        }
    }
}

/// The correlation id of everything an order's sagas append: UUID v5 of `order-{id}`.
pub fn correlation(order_id: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("order-{order_id}").as_bytes())
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Sagas {
    /// Participants and orchestrator over `service`, calling `provider`.
    pub fn new(
        service: Service,
        read_models: Arc<dyn ReadModelStore>,
        flash: FlashSale,
        provider: Arc<dyn PaymentProvider>,
        config: SagaConfig,
    ) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                service,
                read_models,
                flash,
                provider,
                config,
                queue,
                receiver: tokio::sync::Mutex::new(receiver),
                scheduled: Mutex::default(),
                timers: Mutex::default(),
            }),
        }
    }

    fn store(&self) -> &Arc<dyn EventStore> {
        self.inner.service.store()
    }

    /// Asks the orchestrator to look at the saga of `order_id` (a callback came, say).
    pub fn schedule(&self, order_id: &str) {
        let Ok(mut scheduled) = self.inner.scheduled.lock() else {
            return;
        };
        match scheduled.get_mut(order_id) {
            Some(again) => *again = true,
            None => {
                scheduled.insert(order_id.to_owned(), false);
                let _ = self.inner.queue.send(order_id.to_owned());
            }
        }
    }

    /// Runs the choreography tail, the orchestrator's workers and the in-flight sweep until
    /// `stop` completes.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()> + Send) {
        let stop_token = tokio_util::sync::CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..self.inner.config.workers.max(1) {
            let (me, stop) = (self.clone(), stop_token.clone());
            tasks.spawn(async move { me.work(stop).await });
        }
        {
            let (me, stop) = (self.clone(), stop_token.clone());
            tasks.spawn(async move { me.run_choreography(stop.cancelled_owned()).await });
        }
        {
            let (me, stop) = (self.clone(), stop_token.clone());
            tasks.spawn(async move {
                loop {
                    if let Err(e) = me.sweep().await {
                        tracing::warn!(error = %crate::error_chain(&e), "saga sweep failed; retrying");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                        () = stop.cancelled() => return,
                    }
                }
            });
        }
        stop.await;
        stop_token.cancel();
        while tasks.join_next().await.is_some() {}
    }
}
