//! Sagas (M22): the flash-sale order saga by **choreography** and the payment saga by
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
//! Orchestration: the payment saga's decisions are [`next_action`] over its events (stream
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
use eventfold_core::aggregate::decode_event;
use eventfold_core::{Actor, Aggregate, EventStore, ReadModelStore, RecordedEvent};
use eventfold_domain::inventory::{Inventory, InventoryCommand, InventoryEvent};
use eventfold_domain::order::{Order, OrderCommand, OrderStatus};
use eventfold_domain::payment_saga::{
    next_action, OrderStanding, PaymentSaga, PaymentSagaCommand, PaymentSagaEvent, SagaAction,
    SagaStep, StepResult,
};
use eventfold_domain::projections::SAGAS_IN_FLIGHT;
use eventfold_domain::sale::SaleEvent;
use futures::StreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::flash_sale::FlashSale;
use crate::payments::{PaymentProvider, StepRequest};
use crate::service::{version_render, AsOf, CommandContext, Service, ServiceError};

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

/// The correlation id of everything an order's sagas append: UUID v5 of `order-{id}`.
pub fn correlation(order_id: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("order-{order_id}").as_bytes())
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// One reaction of a choreography participant.
#[derive(Debug, Clone)]
enum Reaction {
    AddStock {
        sku: String,
        stock: u64,
    },
    Reserve {
        order_id: String,
        sku: String,
        quantity: u64,
    },
    StartSaga {
        order_id: String,
    },
    Release {
        order_id: String,
    },
    Sell {
        order_id: String,
    },
    PayOrder {
        order_id: String,
    },
    CancelOrder {
        order_id: String,
        reason: String,
    },
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
                        tracing::warn!(error = %crate::http::error_chain(&e), "saga sweep failed; retrying");
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

    /// Schedules every saga still in flight (the `sagas_in_flight` projection). Returns how many.
    ///
    /// # Errors
    /// Read-model failures.
    pub async fn sweep(&self) -> Result<u64, ServiceError> {
        let mut start = String::new();
        let mut n = 0;
        loop {
            let docs = self
                .inner
                .read_models
                .range_docs(SAGAS_IN_FLIGHT, &start, "\u{10ffff}", 1_000)
                .await?;
            let full = docs.len() == 1_000;
            for (key, _) in docs {
                self.schedule(&key);
                start = eventfold_core::read_model::key_after(&key);
                n += 1;
            }
            if !full {
                return Ok(n);
            }
        }
    }

    async fn work(&self, stop: tokio_util::sync::CancellationToken) {
        loop {
            let next = {
                let mut receiver = self.inner.receiver.lock().await;
                tokio::select! {
                    id = receiver.recv() => id,
                    () = stop.cancelled() => None,
                }
            };
            let Some(order_id) = next else { return };
            loop {
                if let Err(e) = self.drive(&order_id).await {
                    tracing::warn!(order_id, error = %crate::http::error_chain(&e), "payment saga step failed; again in 1 s");
                    self.arm_timer(&order_id, now_ms() + 1_000);
                }
                let Ok(mut scheduled) = self.inner.scheduled.lock() else {
                    return;
                };
                match scheduled.get_mut(&order_id) {
                    Some(again) if *again => *again = false,
                    _ => {
                        scheduled.remove(&order_id);
                        break;
                    }
                }
            }
        }
    }

    fn arm_timer(&self, order_id: &str, due_ms: i64) {
        {
            let Ok(mut timers) = self.inner.timers.lock() else {
                return;
            };
            match timers.get(order_id) {
                Some(at) if *at <= due_ms => return,
                _ => timers.insert(order_id.to_owned(), due_ms),
            };
        }
        let (me, id) = (self.clone(), order_id.to_owned());
        tokio::spawn(async move {
            let wait = u64::try_from(due_ms - now_ms()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            if let Ok(mut timers) = me.inner.timers.lock() {
                if timers.get(&id) == Some(&due_ms) {
                    timers.remove(&id);
                }
            }
            me.schedule(&id);
        });
    }

    async fn saga_command(
        &self,
        order_id: &str,
        command: PaymentSagaCommand,
    ) -> Result<bool, ServiceError> {
        let mut ctx = CommandContext::new(Actor::system("payment-saga"));
        ctx.correlation_id = Some(correlation(order_id));
        match self
            .inner
            .service
            .execute::<PaymentSaga>(order_id, command, &ctx, version_render(200))
            .await
        {
            Ok(_) => Ok(true),
            // Another orchestrator got there first: decide again from what it recorded.
            Err(ServiceError::Refused { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Drives the saga of `order_id` until it waits or ends.
    ///
    /// # Errors
    /// Store failures (the caller tries again later).
    pub async fn drive(&self, order_id: &str) -> Result<(), ServiceError> {
        let service = &self.inner.service;
        for _ in 0..64 {
            let Some(saga) = service.load::<PaymentSaga>(order_id, AsOf::Latest).await? else {
                return Ok(());
            };
            let saga = saga.state;
            let standing = match service
                .load::<Order>(order_id, AsOf::Latest)
                .await?
                .and_then(|o| o.state.status)
            {
                Some(OrderStatus::Cancelled | OrderStatus::Refunded) => OrderStanding::Cancelled,
                Some(OrderStatus::Pending) | None => OrderStanding::Pending,
                Some(_) => OrderStanding::Paid,
            };
            let now = now_ms();
            match next_action(&saga, standing, now) {
                SagaAction::Done | SagaAction::Wait(None) => return Ok(()),
                SagaAction::Wait(Some(at)) => {
                    self.arm_timer(order_id, at);
                    return Ok(());
                }
                SagaAction::Record(command) => {
                    self.saga_command(order_id, command).await?;
                }
                SagaAction::Call(step) => {
                    let timeout = self.inner.config.step_timeout;
                    let begin = PaymentSagaCommand::BeginStep {
                        step,
                        now_ms: now,
                        timeout_ms: i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX),
                    };
                    if !self.saga_command(order_id, begin).await? {
                        continue;
                    }
                    let attempt = saga.attempts.get(&step).copied().unwrap_or(0) + 1;
                    let reference = match step {
                        SagaStep::CapturePayment | SagaStep::ReleaseFunds => {
                            saga.done.get(&SagaStep::ReserveFunds).cloned()
                        }
                        SagaStep::RefundPayment => {
                            saga.done.get(&SagaStep::CapturePayment).cloned()
                        }
                        _ => None,
                    };
                    let Some(amount) = saga.amount else {
                        return Ok(());
                    };
                    let request =
                        StepRequest::new(step, order_id, &saga.customer_id, amount, reference);
                    let result =
                        match tokio::time::timeout(timeout, self.inner.provider.call(&request))
                            .await
                        {
                            Ok(r) => r,
                            Err(_) => StepResult::Transient(format!(
                                "no answer within {} ms",
                                timeout.as_millis()
                            )),
                        };
                    metrics::counter!("eventfold_saga_steps_total",
                    "step" => step.key_prefix(),
                    "result" => match &result {
                        StepResult::Done(_) => "done",
                        StepResult::Accepted(_) => "accepted",
                        StepResult::Refused(_) => "refused",
                        StepResult::Transient(_) => "transient",
                    })
                    .increment(1);
                    let end = PaymentSagaCommand::EndStep {
                        step,
                        attempt,
                        result,
                        now_ms: now_ms(),
                    };
                    self.saga_command(order_id, end).await?;
                }
            }
        }
        tracing::warn!(order_id, "payment saga did not settle in 64 decisions");
        Ok(())
    }

    /// Runs the choreography tail until `stop` completes (first start: from the log's head, see
    /// [`Sagas::init`]).
    pub async fn run_choreography(&self, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut failures = 0_u32;
        loop {
            let head = self.store().head_position().await.unwrap_or(0);
            match self.react_batch(failures < 25).await {
                Ok(n) if n > 0 => {
                    failures = 0;
                    continue;
                }
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    // A reservation racing a release in the same batch fails once or twice;
                    // say so only when it keeps failing.
                    if failures > 3 {
                        tracing::warn!(error = %crate::http::error_chain(&e), failures, "saga choreography batch failed; again in 200 ms");
                    } else {
                        tracing::debug!(error = %crate::http::error_chain(&e), "saga choreography batch failed; again in 200 ms");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                        () = &mut stop => return,
                    }
                    continue;
                }
            }
            tokio::select! {
                () = self.store().wait_for_append(head) => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = &mut stop => return,
            }
        }
    }

    /// Sets the choreography checkpoint to the log's head if it has none yet (history before
    /// the first start is not the participants' business). Call it before serving requests, so
    /// nothing appended after the start is skipped.
    ///
    /// # Errors
    /// Store failures.
    pub async fn init(&self) -> Result<(), ServiceError> {
        let store = self.store();
        if store.load_checkpoint(CHECKPOINT).await?.is_none() {
            let head = store.head_position().await?;
            store.save_checkpoint(CHECKPOINT, head).await?;
        }
        Ok(())
    }

    /// Reads one batch after the checkpoint, runs its reactions and moves the checkpoint.
    /// Returns the events read.
    ///
    /// # Errors
    /// Store failures or a reaction that failed (the batch is read again next time).
    pub async fn react_once(&self) -> Result<usize, ServiceError> {
        self.react_batch(true).await
    }

    /// [`Sagas::react_once`]; when not `strict`, a reservation refused for want of stock is
    /// logged and skipped instead of failing the batch (after the batch failed many times: stock
    /// the inventory stream never received must not stop every other participant).
    async fn react_batch(&self, strict: bool) -> Result<usize, ServiceError> {
        let store = self.store();
        self.init().await?;
        let position = store.load_checkpoint(CHECKPOINT).await?.unwrap_or(0);
        let batch = store.read_all(position, 1_000).await?;
        let Some(last) = batch.last().map(|e| e.global_position) else {
            return Ok(0);
        };
        let mut groups: HashMap<String, Vec<Reaction>> = HashMap::new();
        let mut touched = Vec::new();
        let mut stock = Vec::new();
        for event in &batch {
            for (key, reaction) in self.reactions(event, &mut touched).await? {
                if matches!(reaction, Reaction::AddStock { .. }) {
                    stock.push(reaction);
                } else {
                    groups.entry(key).or_default().push(reaction);
                }
            }
        }
        // A sale's stock arrives before the reservations of its orders in the same batch.
        for reaction in stock {
            self.react(reaction).await?;
        }
        let results: Vec<Result<(), ServiceError>> = futures::stream::iter(groups.into_values())
            .map(|reactions| async move {
                for r in reactions {
                    match self.react(r).await {
                        Err(ServiceError::Refused { code, message, .. }) if !strict => {
                            tracing::error!(code, message, "choreography reaction skipped");
                            metrics::counter!("eventfold_saga_reactions_skipped_total")
                                .increment(1);
                        }
                        r => r?,
                    }
                }
                Ok(())
            })
            .buffer_unordered(64)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        store.save_checkpoint(CHECKPOINT, last).await?;
        for id in touched {
            self.schedule(&id);
        }
        Ok(batch.len())
    }

    /// The reactions an event calls for, keyed by what orders them (the order id, or the SKU).
    async fn reactions(
        &self,
        event: &RecordedEvent,
        touched: &mut Vec<String>,
    ) -> Result<Vec<(String, Reaction)>, ServiceError> {
        let corrupt = |e: String| {
            ServiceError::Store(eventfold_core::StoreError::Corrupt(format!(
                "{} version {}: {e}",
                event.stream_id, event.stream_version
            )))
        };
        let (category, id) = event
            .stream_id
            .split_once('-')
            .unwrap_or((event.stream_id.as_str(), ""));
        let id = id.to_owned();
        let mut out = vec![];
        match (category, event.event_type.as_str()) {
            ("sale", "SaleOpened") => {
                let SaleEvent::SaleOpened { terms, .. } =
                    decode_event(&event.event_type, &event.payload)
                        .map_err(|e| corrupt(e.to_string()))?;
                out.push((
                    id.clone(),
                    Reaction::AddStock {
                        sku: id,
                        stock: terms.stock,
                    },
                ));
            }
            ("order", "OrderCreated") => {
                let eventfold_domain::order::OrderEvent::OrderCreated {
                    store_id, lines, ..
                } = decode_event(&event.event_type, &event.payload)
                    .map_err(|e| corrupt(e.to_string()))?
                else {
                    return Ok(out);
                };
                for line in lines {
                    let sale = self.inner.flash.sale(&line.sku).await.ok().flatten();
                    if sale.is_some_and(|s| s.store_id == store_id) {
                        out.push((
                            id.clone(),
                            Reaction::Reserve {
                                order_id: id.clone(),
                                sku: line.sku,
                                quantity: u64::from(line.quantity),
                            },
                        ));
                    }
                }
            }
            ("order", "OrderCancelled") if self.inner.flash.knows_sales() => {
                out.push((
                    id.clone(),
                    Reaction::Release {
                        order_id: id.clone(),
                    },
                ));
                touched.push(id);
            }
            ("order", "OrderPaid") if self.inner.flash.knows_sales() => {
                out.push((
                    id.clone(),
                    Reaction::Sell {
                        order_id: id.clone(),
                    },
                ));
                touched.push(id);
            }
            ("inventory", "InventoryReserved") => {
                let InventoryEvent::InventoryReserved { order_id, .. } =
                    decode_event(&event.event_type, &event.payload)
                        .map_err(|e| corrupt(e.to_string()))?
                else {
                    return Ok(out);
                };
                out.push((order_id.clone(), Reaction::StartSaga { order_id }));
            }
            ("paysaga", t) => {
                match t {
                    "PaymentCompleted" => {
                        out.push((
                            id.clone(),
                            Reaction::PayOrder {
                                order_id: id.clone(),
                            },
                        ));
                    }
                    "PaymentFailed" => {
                        let PaymentSagaEvent::PaymentFailed { reason } =
                            decode_event(&event.event_type, &event.payload)
                                .map_err(|e| corrupt(e.to_string()))?
                        else {
                            return Ok(out);
                        };
                        out.push((
                            id.clone(),
                            Reaction::CancelOrder {
                                order_id: id.clone(),
                                reason,
                            },
                        ));
                    }
                    _ => {}
                }
                touched.push(id);
            }
            _ => {}
        }
        Ok(out)
    }

    /// Runs one reaction. A refusal that settles nothing (the order was paid or cancelled
    /// meanwhile) is fine; a reservation refused for want of stock is an error, because its
    /// release comes later in the log or in the same batch: the batch is run again.
    async fn react(&self, reaction: Reaction) -> Result<(), ServiceError> {
        let service = &self.inner.service;
        match reaction {
            Reaction::AddStock { sku, stock } => {
                let command = InventoryCommand::AddStock { quantity: stock };
                let key = format!("choreo:stock:{sku}");
                self.reaction_command::<Inventory>(&sku, command, Some(key), None, "inventory")
                    .await
            }
            Reaction::Reserve {
                order_id,
                sku,
                quantity,
            } => {
                let key = format!("choreo:reserve:{order_id}:{sku}");
                let command = InventoryCommand::Reserve {
                    order_id: order_id.clone(),
                    quantity,
                };
                self.reaction_command::<Inventory>(
                    &sku,
                    command,
                    Some(key),
                    Some(&order_id),
                    "inventory",
                )
                .await
            }
            Reaction::StartSaga { order_id } => {
                let Some(order) = service.load::<Order>(&order_id, AsOf::Latest).await? else {
                    return Ok(());
                };
                let Some(amount) = order.state.total else {
                    return Ok(());
                };
                let command = PaymentSagaCommand::Start {
                    order_id: order_id.clone(),
                    customer_id: order.state.customer_id.clone(),
                    amount,
                };
                // `Start` is a no-op when started: it needs no idempotency key.
                self.reaction_command::<PaymentSaga>(
                    &order_id,
                    command,
                    None,
                    Some(&order_id),
                    "payments",
                )
                .await?;
                self.schedule(&order_id);
                Ok(())
            }
            Reaction::Release { order_id } => {
                self.inventory_of(&order_id, "release", |order_id| InventoryCommand::Release {
                    order_id,
                })
                .await
            }
            Reaction::Sell { order_id } => {
                self.inventory_of(&order_id, "sell", |order_id| InventoryCommand::Sell {
                    order_id,
                })
                .await
            }
            Reaction::PayOrder { order_id } => {
                let Some(saga) = service.load::<PaymentSaga>(&order_id, AsOf::Latest).await? else {
                    return Ok(());
                };
                let (Some(amount), Some(charge)) = (
                    saga.state.amount,
                    saga.state.done.get(&SagaStep::CapturePayment).cloned(),
                ) else {
                    return Ok(());
                };
                let actor = Actor::system("payment-saga");
                let pay = OrderCommand::Pay {
                    amount,
                    payment_id: charge,
                    actor: actor.clone(),
                };
                let key = format!("choreo:pay:{order_id}");
                self.reaction_command::<Order>(
                    &order_id,
                    pay,
                    Some(key),
                    Some(&order_id),
                    "payment-saga",
                )
                .await?;
                let confirm = OrderCommand::Confirm {
                    actor,
                    reason: Some("payment saga completed".into()),
                };
                let key = format!("choreo:confirm:{order_id}");
                self.reaction_command::<Order>(
                    &order_id,
                    confirm,
                    Some(key),
                    Some(&order_id),
                    "payment-saga",
                )
                .await
            }
            Reaction::CancelOrder { order_id, reason } => {
                let cancel = OrderCommand::Cancel {
                    actor: Actor::system("payment-saga"),
                    reason: format!("payment failed: {reason}"),
                };
                let key = format!("choreo:cancel:{order_id}");
                self.reaction_command::<Order>(
                    &order_id,
                    cancel,
                    Some(key),
                    Some(&order_id),
                    "payment-saga",
                )
                .await
            }
        }
    }

    /// Runs one reaction's command on aggregate `id` as `actor`, with the idempotency key `key`
    /// and the order's correlation id. A refusal that settles nothing (the order was paid or
    /// cancelled meanwhile) is fine; `insufficient_stock` is returned (see [`Sagas::react`]).
    async fn reaction_command<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        key: Option<String>,
        order_id: Option<&str>,
        actor: &str,
    ) -> Result<(), ServiceError>
    where
        A::Command: Clone + Send + 'static,
        A::Error: eventfold_domain::DomainError,
    {
        let mut ctx = CommandContext::new(Actor::system(actor));
        ctx.idempotency = key.map(|k| (k, "choreography".into()));
        ctx.correlation_id = order_id.map(correlation);
        match self
            .inner
            .service
            .execute::<A>(id, command, &ctx, version_render(200))
            .await
        {
            Ok(_) => Ok(()),
            Err(
                e @ ServiceError::Refused {
                    code: "insufficient_stock",
                    ..
                },
            ) => Err(e),
            Err(ServiceError::Refused { code, message, .. }) => {
                tracing::debug!(
                    code,
                    message,
                    "choreography reaction refused; nothing to do"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Runs the inventory command `command(order_id)` (key `choreo:{what}:{order}:{sku}`) on each
    /// sale SKU of the order.
    async fn inventory_of(
        &self,
        order_id: &str,
        what: &str,
        command: impl Fn(String) -> InventoryCommand,
    ) -> Result<(), ServiceError> {
        let service = &self.inner.service;
        let Some(order) = service.load::<Order>(order_id, AsOf::Latest).await? else {
            return Ok(());
        };
        for line in &order.state.lines {
            let sale = self.inner.flash.sale(&line.sku).await.ok().flatten();
            if sale.is_none_or(|s| s.store_id != order.state.store_id) {
                continue;
            }
            let key = format!("choreo:{what}:{order_id}:{}", line.sku);
            self.reaction_command::<Inventory>(
                &line.sku,
                command(order_id.to_owned()),
                Some(key),
                Some(order_id),
                "inventory",
            )
            .await?;
        }
        Ok(())
    }
}
