//! The flash-sale purchase path: a purchase attempt takes stock from the ledger (Redis or
//! in-process, one atomic step), and only an attempt that got stock writes anything to the event
//! store: the order, whose id is a function of the attempt id ([`order_id`]) and which is created
//! with the idempotency key `purchase:{order_id}`, after which the take is confirmed. The ledger
//! records the take under the order id. The crowd's refused attempts (sold out, over the limit)
//! never reach the database.
//!
//! Crash between the two: a take left pending is rolled forward by [`FlashSale::reconcile`],
//! which places the same order with the same idempotency key (exactly one order whichever of the
//! purchase and the reconciliation writes it) and confirms the take. An order whose placement the
//! domain refuses for good gives its stock back. So no stock stays sold without an order, and no
//! order exists without stock (it is written only after its take). An accepted order that is
//! never paid is cancelled by the unpaid-order timeout (`deadlines`); the stock of every cancelled
//! sale order goes back through [`FlashSale::return_cancelled_stock`], a tail of the log with its
//! own checkpoint (give-backs are idempotent per take).

use std::sync::Arc;

use eventfold_core::aggregate::decode_event;
use eventfold_core::stock::{StockError, StockLedger, TakeOutcome, TakeState};
use eventfold_core::subscription::{catch_up, Subscription};
use eventfold_core::{tenant, Actor, Aggregate};
use eventfold_domain::order::{Order, OrderCommand, OrderEvent, OrderLine};
use eventfold_domain::sale::{Sale as SaleAggregate, SaleCommand, SaleEvent, SaleTerms};
use eventfold_domain::Money;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use crate::service::{AsOf, CommandContext, Executed, Service, ServiceError};

/// A sale: what is sold, at what unit price, by which store.
#[derive(Debug, Clone, PartialEq)]
pub struct Sale {
    /// The SKU (1 to 100 bytes), scoped to the sale's tenant (see [`eventfold_core::tenant`]):
    /// the key of its stream and its stock; orders' lines carry it unscoped.
    pub sku: String,
    /// Price of one unit.
    pub unit_price: Money,
    /// The store id the orders carry.
    pub store_id: String,
}

/// What a purchase attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purchase {
    /// Stock taken and the order placed (PENDING, to be paid).
    Accepted {
        /// The order's id.
        order_id: String,
        /// Units left after this take (`None` for a repeated attempt).
        remaining: Option<u64>,
        /// A repeat of an attempt accepted before: nothing new was taken or written.
        duplicate: bool,
    },
    /// Not enough stock left.
    SoldOut,
    /// The buyer would go over the per-buyer limit.
    OverLimit {
        /// Units the buyer holds.
        held: u64,
        /// The limit.
        limit: u64,
    },
}

/// Why a purchase failed.
#[derive(Debug, thiserror::Error)]
pub enum SaleError {
    /// Bad input, naming the field.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The stock ledger failed.
    #[error(transparent)]
    Stock(#[from] StockError),
    /// Placing the order failed; a take left pending is settled by reconciliation.
    #[error(transparent)]
    Order(#[from] ServiceError),
}

/// What [`FlashSale::reconcile`] settled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Pending takes whose order was placed (or found) and which were confirmed.
    pub confirmed: u64,
    /// Pending takes whose order the domain refused for good: stock given back.
    pub returned: u64,
}

/// The purchase path over a service and a stock ledger.
#[derive(Clone)]
pub struct FlashSale {
    service: Service,
    calendars: crate::calendars::StoreCalendars,
    ledger: Arc<dyn StockLedger>,
    /// Terms of the sales seen so far, so a purchase reads no sale stream.
    terms: Arc<std::sync::RwLock<std::collections::HashMap<String, Sale>>>,
}

/// The order id of an attempt: `{sku}-{first 16 hex digits of SHA-256(attempt)}`, stable, so a
/// repeat and the reconciliation name the same order.
pub fn order_id(sku: &str, attempt: &str) -> String {
    let digest = Sha256::digest(attempt.as_bytes());
    format!("{sku}-{}", hex::encode(&digest[..8]))
}

impl FlashSale {
    /// Over `service` (the event store) and `ledger`.
    pub fn new(service: Service, ledger: Arc<dyn StockLedger>) -> Self {
        Self {
            calendars: crate::calendars::StoreCalendars::new(service.clone()),
            service,
            ledger,
            terms: Arc::default(),
        }
    }

    /// The sale of `sku`, from the cache or its stream (`None`: never opened).
    ///
    /// # Errors
    /// Store failures.
    pub async fn sale(&self, sku: &str) -> Result<Option<Sale>, SaleError> {
        if let Some(sale) = self.terms.read().ok().and_then(|t| t.get(sku).cloned()) {
            return Ok(Some(sale));
        }
        if eventfold_domain::validate_id("sku", tenant::unscoped(sku)).is_err() {
            return Ok(None);
        }
        let loaded = self
            .service
            .load::<SaleAggregate>(sku, AsOf::Latest)
            .await
            .map_err(ServiceError::from)?;
        let Some(terms) = loaded.and_then(|l| l.state.opened) else {
            return Ok(None);
        };
        let sale = Sale {
            sku: sku.to_owned(),
            unit_price: terms.unit_price,
            store_id: terms.store_id,
        };
        if let Ok(mut t) = self.terms.write() {
            t.insert(sku.to_owned(), sale.clone());
        }
        Ok(Some(sale))
    }

    /// Whether any sale is known to this process (opened, restored or looked up).
    pub fn knows_sales(&self) -> bool {
        self.terms.read().is_ok_and(|t| !t.is_empty())
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<dyn StockLedger> {
        &self.ledger
    }

    /// Opens `sale` with `stock` units, at most `per_buyer_limit` per buyer: records the terms
    /// (`SaleOpened` in stream `sale-{sku}`; the same terms again are a no-op, other terms are
    /// refused) and opens the ledger. Returns whether the ledger was opened now.
    ///
    /// # Errors
    /// [`SaleError::Invalid`] for a SKU that is not a valid id; the domain's refusals; ledger
    /// and store failures.
    pub async fn open(
        &self,
        sale: &Sale,
        stock: u64,
        per_buyer_limit: u64,
    ) -> Result<bool, SaleError> {
        eventfold_domain::validate_id("sku", tenant::unscoped(&sale.sku))
            .map_err(SaleError::Invalid)?;
        let actor = Actor::system("flash-sale");
        let command = SaleCommand::Open {
            terms: SaleTerms {
                stock,
                per_buyer_limit,
                unit_price: sale.unit_price,
                store_id: sale.store_id.clone(),
            },
            actor: actor.clone(),
        };
        let render = crate::service::version_render::<SaleAggregate>(200);
        self.service
            .execute::<SaleAggregate>(&sale.sku, command, &CommandContext::new(actor), render)
            .await?;
        if let Ok(mut t) = self.terms.write() {
            t.insert(sale.sku.clone(), sale.clone());
        }
        Ok(self.ledger.open(&sale.sku, stock, per_buyer_limit).await?)
    }

    /// Rebuilds an in-process ledger from the log after a restart: every opened sale, every
    /// sale order's take (confirmed), every cancelled sale order's take given back. Run it on an
    /// empty [`eventfold_core::stock::MemoryStock`] before serving purchases (a Redis ledger keeps
    /// its own state and needs no rebuild). Returns the sales and orders restored.
    ///
    /// # Errors
    /// Store or ledger failures, an undecodable event.
    pub async fn restore(&self) -> Result<(u64, u64), SaleError> {
        let mut log = catch_up(self.service.store().clone(), 0, 5_000);
        let mut sales: std::collections::HashMap<String, String> = Default::default();
        let mut sale_orders: std::collections::HashMap<String, Vec<String>> = Default::default();
        let (mut opened, mut orders) = (0, 0);
        loop {
            let Some(batch) = log.try_next_batch().await.map_err(ServiceError::from)? else {
                return Ok((opened, orders));
            };
            for e in &batch {
                if let Some(sku) = SaleAggregate::id_of_stream(&e.stream_id) {
                    let sku = sku.as_str();
                    let SaleEvent::SaleOpened { terms, .. } =
                        decode_event::<SaleEvent>(&e.event_type, &e.payload)
                            .map_err(|x| SaleError::Invalid(format!("{}: {x}", e.stream_id)))?;
                    self.ledger
                        .open(sku, terms.stock, terms.per_buyer_limit)
                        .await?;
                    if let Ok(mut t) = self.terms.write() {
                        t.insert(
                            sku.to_owned(),
                            Sale {
                                sku: sku.to_owned(),
                                unit_price: terms.unit_price,
                                store_id: terms.store_id.clone(),
                            },
                        );
                    }
                    sales.insert(sku.to_owned(), terms.store_id);
                    opened += 1;
                    continue;
                }
                let Some(order_id) = Order::id_of_stream(&e.stream_id) else {
                    continue;
                };
                let order_id = order_id.as_str();
                // Orders before the first sale, or not created or cancelled: nothing to decode.
                if sales.is_empty()
                    || !matches!(e.event_type.as_str(), "OrderCreated" | "OrderCancelled")
                {
                    continue;
                }
                match decode_event::<OrderEvent>(&e.event_type, &e.payload)
                    .map_err(|x| SaleError::Invalid(format!("{}: {x}", e.stream_id)))?
                {
                    OrderEvent::OrderCreated {
                        customer_id,
                        store_id,
                        lines,
                        ..
                    } => {
                        for line in lines {
                            let sku = sale_sku(order_id, &line.sku);
                            if sales.get(&sku) != Some(&store_id) {
                                continue;
                            }
                            let at = u64::try_from(e.event_time.timestamp_millis()).unwrap_or(0);
                            self.ledger
                                .take(&sku, &customer_id, u64::from(line.quantity), order_id, at)
                                .await?;
                            self.ledger.confirm(&sku, order_id).await?;
                            sale_orders
                                .entry(order_id.to_owned())
                                .or_default()
                                .push(sku);
                            orders += 1;
                        }
                    }
                    OrderEvent::OrderCancelled { .. } => {
                        for sku in sale_orders.get(order_id).into_iter().flatten() {
                            self.ledger.give_back(sku, order_id).await?;
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// One purchase attempt of `quantity` units by `buyer`, identified by `attempt` (the
    /// client's idempotency key), at `now_ms` (ms since the Unix epoch).
    ///
    /// # Errors
    /// [`SaleError::Invalid`] (buyer not usable as an actor id, quantity 0 or above 2^32 - 1),
    /// [`SaleError::Stock`], [`SaleError::Order`] (the take then stays pending until
    /// reconciliation settles it).
    pub async fn purchase(
        &self,
        sale: &Sale,
        buyer: &str,
        quantity: u64,
        attempt: &str,
        now_ms: u64,
    ) -> Result<Purchase, SaleError> {
        let actor = Actor::parse(&format!("user:{buyer}")).map_err(SaleError::Invalid)?;
        let quantity32 = u32::try_from(quantity)
            .map_err(|_| SaleError::Invalid(format!("quantity {quantity} is too large")))?;
        let order_id = order_id(&sale.sku, attempt);
        // The ledger records the take under the order id (a function of the attempt), so the
        // stock of a cancelled order can be given back by its id.
        match self
            .ledger
            .take(&sale.sku, buyer, quantity, &order_id, now_ms)
            .await?
        {
            TakeOutcome::Taken { remaining } => {
                self.place(sale, &order_id, buyer, quantity32, actor)
                    .await?;
                self.ledger.confirm(&sale.sku, &order_id).await?;
                Ok(Purchase::Accepted {
                    order_id,
                    remaining: Some(remaining),
                    duplicate: false,
                })
            }
            TakeOutcome::Duplicate(take) => {
                if take.state == TakeState::Pending {
                    // The first try may have died between the ledger and the store.
                    let q = u32::try_from(take.quantity).unwrap_or(u32::MAX);
                    self.place(sale, &order_id, &take.buyer, q, actor).await?;
                    self.ledger.confirm(&sale.sku, &order_id).await?;
                }
                Ok(Purchase::Accepted {
                    order_id,
                    remaining: None,
                    duplicate: true,
                })
            }
            TakeOutcome::SoldOut { .. } => Ok(Purchase::SoldOut),
            TakeOutcome::OverLimit { held, limit } => Ok(Purchase::OverLimit { held, limit }),
        }
    }

    /// Places the order of a take, idempotently (key `purchase:{order_id}`).
    async fn place(
        &self,
        sale: &Sale,
        order_id: &str,
        buyer: &str,
        quantity: u32,
        actor: Actor,
    ) -> Result<(), ServiceError> {
        let amount = Money::new(
            sale.unit_price.amount * Decimal::from(quantity),
            sale.unit_price.currency,
        )
        .map_err(|e| ServiceError::Refused {
            code: "invalid_amount",
            refusal: eventfold_domain::Refusal::Invalid,
            message: e.to_string(),
        })?;
        let (tenant, _) = tenant::split(order_id);
        let scoped_store = tenant::scope(tenant, &sale.store_id);
        let command = OrderCommand::Create {
            customer_id: buyer.to_owned(),
            store_id: sale.store_id.clone(),
            lines: vec![OrderLine {
                sku: tenant::unscoped(&sale.sku).to_owned(),
                quantity,
                amount,
            }],
            actor: actor.clone(),
            calendar: self.calendars.of(&scoped_store).await?,
        };
        let mut ctx = CommandContext::new(actor);
        ctx.idempotency = Some((
            format!("purchase:{order_id}"),
            format!("{buyer}|{quantity}"),
        ));
        let render = crate::service::version_render::<Order>(201);
        match self
            .service
            .execute::<Order>(order_id, command, &ctx, render)
            .await?
        {
            Executed::Applied { .. } | Executed::Replayed(_) => Ok(()),
        }
    }

    /// Settles the takes of `sale` still pending that were taken at or before `taken_before_ms`
    /// (say, 5 s ago): each one's order is placed (or found: same idempotency key) and the take
    /// confirmed; a take whose order the domain refuses for good is given back.
    ///
    /// # Errors
    /// Ledger failures, store failures (the rest is settled by the next run).
    pub async fn reconcile(
        &self,
        sale: &Sale,
        taken_before_ms: u64,
    ) -> Result<Reconciled, SaleError> {
        let mut done = Reconciled::default();
        for take in self.ledger.pending(&sale.sku, taken_before_ms).await? {
            let order_id = take.attempt.clone();
            let actor = Actor::parse(&format!("user:{}", take.buyer))
                .unwrap_or_else(|_| Actor::system("flash-sale-reconciler"));
            let quantity = u32::try_from(take.quantity).unwrap_or(u32::MAX);
            match self
                .place(sale, &order_id, &take.buyer, quantity, actor)
                .await
            {
                Ok(()) => {
                    self.ledger.confirm(&sale.sku, &order_id).await?;
                    done.confirmed += 1;
                }
                Err(ServiceError::Refused { .. } | ServiceError::IdempotencyKeyReused { .. }) => {
                    self.ledger.give_back(&sale.sku, &order_id).await?;
                    done.returned += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(done)
    }

    /// Reconciles every sale this process knows (opened, restored or purchased from here): takes
    /// pending for longer than `grace` are settled (see [`FlashSale::reconcile`]).
    ///
    /// # Errors
    /// As [`FlashSale::reconcile`]; the other sales are still tried.
    pub async fn reconcile_all(
        &self,
        now_ms: u64,
        grace: std::time::Duration,
    ) -> Result<Reconciled, SaleError> {
        let sales: Vec<Sale> = self
            .terms
            .read()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default();
        let before = now_ms.saturating_sub(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX));
        let mut total = Reconciled::default();
        let mut failed = None;
        for sale in sales {
            match self.reconcile(&sale, before).await {
                Ok(r) => {
                    total.confirmed += r.confirmed;
                    total.returned += r.returned;
                }
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Gives back the stock of sale orders cancelled in the log after the checkpoint
    /// `flash-sale:returns` (a cancelled order's take, found by its order id; once per take),
    /// and advances the checkpoint. Returns the takes given back.
    ///
    /// # Errors
    /// Store or ledger failures (the batch is read again next time: give-backs are idempotent).
    pub async fn return_cancelled_stock(&self) -> Result<u64, SaleError> {
        let mut log = Subscription::durable(self.service.store().clone(), RETURNS, 1_000)
            .await
            .map_err(ServiceError::from)?;
        let mut returned = 0;
        loop {
            let Some(batch) = log.try_next_batch().await.map_err(ServiceError::from)? else {
                return Ok(returned);
            };
            for event in &batch {
                if event.event_type != "OrderCancelled" {
                    continue;
                }
                let Some(order_id) = Order::id_of_stream(&event.stream_id) else {
                    continue;
                };
                let order_id = order_id.as_str();
                let order = self
                    .service
                    .load::<Order>(order_id, AsOf::Latest)
                    .await
                    .map_err(ServiceError::from)?;
                let Some(order) = order else { continue };
                for line in &order.state.lines {
                    let sku = sale_sku(order_id, &line.sku);
                    match self.ledger.give_back(&sku, order_id).await {
                        Ok(true) => returned += 1,
                        Ok(false) | Err(StockError::UnknownSku(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            log.commit().await.map_err(ServiceError::from)?;
        }
    }

    /// Returns cancelled orders' stock as they are cancelled, and reconciles takes pending for
    /// more than 5 s, until `stop` completes.
    pub async fn run_returns(&self, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            if let Err(e) = self.return_cancelled_stock().await {
                tracing::warn!(error = %e, "returning cancelled orders' stock failed; retrying");
            }
            let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
            match self
                .reconcile_all(now, std::time::Duration::from_secs(5))
                .await
            {
                Ok(r) if r.confirmed + r.returned > 0 => tracing::info!(
                    confirmed = r.confirmed,
                    returned = r.returned,
                    "pending flash-sale takes reconciled"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "flash-sale reconciliation failed; retrying"),
            }
            let head = self.service.store().head_position().await.unwrap_or(0);
            tokio::select! {
                () = self.service.store().wait_for_append(head) => {}
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                () = &mut stop => return,
            }
        }
    }
}

/// The stock key of an order line's SKU: the line's SKU in the order's tenant.
pub(crate) fn sale_sku(order_id: &str, line_sku: &str) -> String {
    tenant::scope(tenant::of(order_id), line_sku)
}

/// The checkpoint of [`FlashSale::return_cancelled_stock`].
pub const RETURNS: &str = "flash-sale:returns";
