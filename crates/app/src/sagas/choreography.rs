//! The order saga by choreography: one tail of the log (checkpoint [`super::CHECKPOINT`]) whose
//! participants react to each other's events (the table in [`super`]).

use std::collections::HashMap;
use std::time::Duration;

use eventfold_core::aggregate::decode_event;
use eventfold_core::{Actor, Aggregate, RecordedEvent};
use eventfold_domain::inventory::{Inventory, InventoryCommand, InventoryEvent};
use eventfold_domain::order::{Order, OrderCommand};
use eventfold_domain::payment_saga::{PaymentSaga, PaymentSagaCommand, PaymentSagaEvent, SagaStep};
use eventfold_domain::sale::SaleEvent;
use futures::StreamExt;

use super::{correlation, Sagas, CHECKPOINT};
use crate::service::{version_render, AsOf, CommandContext, ServiceError};

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
                        tracing::warn!(error = %crate::error_chain(&e), failures, "saga choreography batch failed; again in 200 ms");
                    } else {
                        tracing::debug!(error = %crate::error_chain(&e), "saga choreography batch failed; again in 200 ms");
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
        // The aggregate id keeps its tenant (`acme/42` for `acme/order-42`), so every reaction
        // stays in the event's tenant.
        let category = eventfold_core::envelope::stream_category(&event.stream_id);
        let (tenant, unscoped) = eventfold_core::tenant::split(&event.stream_id);
        let id = eventfold_core::tenant::scope(
            tenant,
            unscoped.split_once('-').map_or("", |(_, id)| id),
        );
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
                    let sku = crate::shop::flash_sale::sale_sku(&id, &line.sku);
                    let sale = self.inner.flash.sale(&sku).await.ok().flatten();
                    if sale.is_some_and(|s| s.store_id == store_id) {
                        out.push((
                            id.clone(),
                            Reaction::Reserve {
                                order_id: id.clone(),
                                sku,
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
                let confirm = OrderCommand::Confirm {
                    actor,
                    reason: Some("payment saga completed".into()),
                };
                // The saga's "order completed": paid, then confirmed, in this order.
                for (step, command) in [("pay", pay), ("confirm", confirm)] {
                    self.reaction_command::<Order>(
                        &order_id,
                        command,
                        Some(format!("choreo:{step}:{order_id}")),
                        Some(&order_id),
                        "payment-saga",
                    )
                    .await?;
                }
                Ok(())
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
