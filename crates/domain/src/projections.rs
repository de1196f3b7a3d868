//! The read models: each a keyed fold over the global log (see
//! `eventfold_core::projection`). Keys are chosen so that the queries the API needs are a point
//! read or one range scan. Every key is scoped to its tenant (`{tenant}/{key}`, unprefixed for the default tenant; see
//! `eventfold_core::tenant`), and so are the ids in documents:
//!
//! | projection | key | document |
//! |---|---|---|
//! | `order_summary` | order id | [`OrderSummary`] |
//! | `balance_by_account` | account id | [`AccountBalance`] |
//! | `daily_sales_by_store` | `store|YYYY-MM-DD|currency`, business date of the event time (see [`crate::reporting`]) | [`SalesBucket`] |
//! | `real_time_sales` | `store|YYYY-MM-DDTHH|currency`, hour of the ingest time (UTC) | [`SalesBucket`] |
//! | `daily_sales_by_store` | `store|~periods`: the store's period control, when it has one | [`crate::periods::PeriodControl`] |
//! | `sales_corrections` | `store|YYYY-MM-DD|cause event id` ([`crate::reporting::SalesCorrectionsProjection`]) | [`crate::reporting::SalesCorrectionNotice`] |
//! | `payment_deadlines` | `{created ms, 16 digits}:{order id}` (event time of creation) | [`OrderCreatedAt`] |
//!
//! Sales count an order when it is paid (+amount, +1 order) and subtract refunds (a cancelled paid
//! order or a refund: -amount, +1 refund) on the day the refund happened. The daily view also
//! counts what arrived after its day's cutoff (`late_total`, `late_orders`, `adjusted`); the hourly
//! view counts everything in the hour it arrived and is never rewritten. For a store with period
//! control, the daily view leaves out what a closed period holds as an exception and counts an
//! approved exception on the day it was approved (see [`crate::periods`]).

use chrono::{DateTime, Utc};
use eventfold_core::aggregate::decode_recorded;
use eventfold_core::{Aggregate, Projection, RecordedEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::account::{Account, AccountEvent};
use crate::money::{Currency, Money};
use crate::order::{Order, OrderEvent, OrderStatus};
use crate::periods::{
    approved_booking, period_control_event, period_control_key, Booking, PeriodControl,
    PeriodControlEvent,
};
use crate::reporting::{sale_effect, SaleEffect, SaleKind};

/// Name of the due-time index of orders (the unpaid-order timeout's delay queue).
pub const PAYMENT_DEADLINES: &str = "payment_deadlines";

/// Name of the order summary projection.
pub const ORDER_SUMMARY: &str = "order_summary";
/// Name of the balance projection.
pub const BALANCE_BY_ACCOUNT: &str = "balance_by_account";
/// Name of the daily sales projection (event time).
pub const DAILY_SALES_BY_STORE: &str = "daily_sales_by_store";
/// Name of the real-time sales projection (ingest time).
pub const REAL_TIME_SALES: &str = "real_time_sales";

/// The aggregate id (scoped to its tenant) of an event of aggregate `A`'s streams.
fn aggregate_id<A: Aggregate>(event: &RecordedEvent) -> Option<String> {
    A::id_of_stream(&event.stream_id)
}

fn decode<A: Aggregate>(event: &RecordedEvent) -> Result<A::Event, String> {
    decode_recorded::<A>(event).map_err(|e| e.to_string())
}

/// One order as the order list and detail views show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderSummary {
    /// Order id.
    pub order_id: String,
    /// Customer id.
    pub customer_id: String,
    /// Store id.
    pub store_id: String,
    /// Current status.
    pub status: OrderStatus,
    /// Order total.
    pub total: Money,
    /// Amount paid, once paid.
    pub paid: Option<Money>,
    /// Amount refunded, if any.
    pub refunded: Option<Money>,
    /// Number of lines.
    pub lines: usize,
    /// Event time of creation (UTC).
    pub created_at: DateTime<Utc>,
    /// Event time of the last change (UTC).
    pub updated_at: DateTime<Utc>,
    /// Stream version the summary reflects.
    pub version: u64,
    /// Who made the last change.
    pub last_actor: String,
    /// Why, if given.
    pub last_reason: Option<String>,
}

/// The `order_summary` projection.
pub struct OrderSummaryProjection;

impl Projection for OrderSummaryProjection {
    type Doc = OrderSummary;
    type Input = OrderEvent;

    fn name(&self) -> &'static str {
        ORDER_SUMMARY
    }

    fn select(&self, event: &RecordedEvent) -> Result<Option<(String, OrderEvent)>, String> {
        let Some(id) = aggregate_id::<Order>(event) else {
            return Ok(None);
        };
        Ok(Some((id, decode::<Order>(event)?)))
    }

    fn apply(
        &self,
        doc: Option<OrderSummary>,
        input: OrderEvent,
        event: &RecordedEvent,
    ) -> Option<OrderSummary> {
        let mut doc = match (doc, &input) {
            (
                _,
                OrderEvent::OrderCreated {
                    customer_id,
                    store_id,
                    lines,
                    total,
                    ..
                }
                | OrderEvent::OrderRecorded {
                    customer_id,
                    store_id,
                    lines,
                    total,
                    ..
                },
            ) => OrderSummary {
                order_id: aggregate_id::<Order>(event).unwrap_or_default().to_owned(),
                customer_id: customer_id.clone(),
                store_id: store_id.clone(),
                status: OrderStatus::Pending,
                total: *total,
                paid: None,
                refunded: None,
                lines: lines.len(),
                created_at: event.event_time,
                updated_at: event.event_time,
                version: 0,
                last_actor: String::new(),
                last_reason: None,
            },
            (Some(doc), _) => doc,
            (None, _) => return None,
        };
        let (status, actor, reason) = match &input {
            OrderEvent::OrderCreated { actor, .. } => (OrderStatus::Pending, actor, None),
            OrderEvent::OrderRecorded {
                total,
                actor,
                reason,
                ..
            } => {
                doc.paid = Some(*total);
                (OrderStatus::Completed, actor, reason.clone())
            }
            OrderEvent::OrderPaid { amount, actor, .. } => {
                doc.paid = Some(*amount);
                (OrderStatus::Paid, actor, None)
            }
            OrderEvent::OrderConfirmed { actor, reason } => {
                (OrderStatus::Confirmed, actor, reason.clone())
            }
            OrderEvent::OrderShipped { actor, reason } => {
                (OrderStatus::Shipped, actor, reason.clone())
            }
            OrderEvent::OrderCompleted { actor, reason } => {
                (OrderStatus::Completed, actor, reason.clone())
            }
            OrderEvent::OrderCancelled {
                actor,
                reason,
                refund,
                ..
            } => {
                doc.refunded = *refund;
                (OrderStatus::Cancelled, actor, Some(reason.clone()))
            }
            OrderEvent::OrderRefunded {
                actor,
                reason,
                amount,
                ..
            } => {
                doc.refunded = Some(*amount);
                (OrderStatus::Refunded, actor, Some(reason.clone()))
            }
        };
        doc.status = status;
        doc.last_actor = actor.to_string();
        doc.last_reason = reason;
        doc.updated_at = event.event_time;
        doc.version = event.stream_version;
        Some(doc)
    }
}

/// An account's balance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountBalance {
    /// Account id.
    pub account_id: String,
    /// Owner id.
    pub owner: String,
    /// Balance now, in the account's currency.
    pub balance: Money,
    /// Stream version the balance reflects.
    pub version: u64,
    /// Event time of the last change (UTC).
    pub updated_at: DateTime<Utc>,
}

/// The `balance_by_account` projection.
pub struct BalanceByAccountProjection;

impl Projection for BalanceByAccountProjection {
    type Doc = AccountBalance;
    type Input = AccountEvent;

    fn name(&self) -> &'static str {
        BALANCE_BY_ACCOUNT
    }

    fn select(&self, event: &RecordedEvent) -> Result<Option<(String, AccountEvent)>, String> {
        let Some(id) = aggregate_id::<Account>(event) else {
            return Ok(None);
        };
        Ok(Some((id, decode::<Account>(event)?)))
    }

    fn apply(
        &self,
        doc: Option<AccountBalance>,
        input: AccountEvent,
        event: &RecordedEvent,
    ) -> Option<AccountBalance> {
        let mut doc = match (doc, &input) {
            (_, AccountEvent::AccountOpened { owner, currency }) => AccountBalance {
                account_id: aggregate_id::<Account>(event)
                    .unwrap_or_default()
                    .to_owned(),
                owner: owner.clone(),
                balance: Money::zero(*currency),
                version: 0,
                updated_at: event.event_time,
            },
            (Some(doc), _) => doc,
            (None, _) => return None,
        };
        match &input {
            AccountEvent::AccountOpened { .. } => {}
            AccountEvent::FundsDeposited { amount }
            | AccountEvent::InterestAccrued { amount }
            | AccountEvent::CorrectionApplied { amount, .. } => {
                doc.balance = doc.balance.plus(*amount)
            }
            AccountEvent::FundsWithdrawn { amount } => doc.balance = doc.balance.minus(*amount),
        }
        doc.version = event.stream_version;
        doc.updated_at = event.event_time;
        Some(doc)
    }
}

/// Sales of one store in one currency over one period (a business day or an hour).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SalesBucket {
    /// Store id.
    pub store: String,
    /// `YYYY-MM-DD` (daily: the business date) or `YYYY-MM-DDTHH:00:00Z` (hourly: the ingest
    /// hour), UTC.
    pub period: String,
    /// ISO 4217 code.
    pub currency: Currency,
    /// Paid minus refunded, as a decimal string.
    pub total: Decimal,
    /// Orders paid in the period.
    pub orders: u64,
    /// Refunds (including cancellations of paid orders) in the period.
    pub refunds: u64,
    /// Daily view: the part of `total` that arrived after the day's cutoff (late sales minus
    /// late refunds), decimal; zero in the hourly view, which is never rewritten.
    #[serde(default)]
    pub late_total: Decimal,
    /// Daily view: paid orders that arrived after the day's cutoff.
    #[serde(default)]
    pub late_orders: u64,
    /// Daily view: whether anything arrived after the day's cutoff (the day changed after it
    /// was reported; `sales_corrections` lists each change).
    #[serde(default)]
    pub adjusted: bool,
    /// Daily view: ingest time (UTC) of the latest late arrival, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_adjusted_at: Option<DateTime<Utc>>,
}

/// Which clock a sales projection buckets by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SalesClock {
    /// Business day of the event time: late data lands in the day it happened, counted as late
    /// (`daily_sales_by_store` version 1: a sale counts on the day it was paid).
    EventTimeDaily,
    /// Business day the order was **placed** (finance's order-date view,
    /// `daily_sales_by_store` version 2): a sale counts on the business date of its order's
    /// `OrderCreated`, a refund on its own date, as in version 1. Late means ingested after
    /// the cutoff of that date. The placement date is kept per order until it is paid or
    /// cancelled (a document under `~placed|{order id}`, not part of the view's answer).
    PlacedTimeDaily,
    /// Hour of the ingest time: what came in, when it came in; never rewritten.
    IngestTimeHourly,
}

impl SalesClock {
    /// Whether it buckets by business day (the daily view's versions).
    fn daily(self) -> bool {
        self != Self::IngestTimeHourly
    }
}

/// The key of the document holding when order `order` (scoped to its tenant) was placed, in
/// `daily_sales_by_store` version 2 until the order is paid or cancelled.
pub fn placed_key(order: &str) -> String {
    let (tenant, order) = eventfold_core::tenant::split(order);
    eventfold_core::tenant::scope(tenant, &format!("~placed|{order}"))
}

/// A sales projection: `daily_sales_by_store` (event time, by business day of the
/// [`BusinessCalendar`] the order was placed in) or `real_time_sales` (ingest time, hourly, UTC).
pub struct SalesProjection(pub SalesClock);

/// The bucket key of a sales projection (the projection scopes it to the order's tenant).
pub fn sales_key(store: &str, period: &str, currency: Currency) -> String {
    format!("{store}|{period}|{currency}")
}

/// The `daily_sales_by_store` key of an event's sales effect, scoped to the event's tenant: the
/// one both the daily view and the correction notifier's running totals use.
pub fn daily_sales_key(event: &RecordedEvent, effect: &SaleEffect) -> String {
    SalesProjection(SalesClock::EventTimeDaily).bucket_key(event, effect)
}

impl SalesProjection {
    /// The bucket key of an event's sales effect, scoped to the event's tenant.
    fn bucket_key(&self, event: &RecordedEvent, effect: &SaleEffect) -> String {
        let tenant = eventfold_core::tenant::of(&event.stream_id);
        eventfold_core::tenant::scope(
            tenant,
            &sales_key(&effect.store, &self.period(event, effect), effect.currency),
        )
    }

    fn period(&self, event: &RecordedEvent, effect: &SaleEffect) -> String {
        match self.0 {
            SalesClock::EventTimeDaily | SalesClock::PlacedTimeDaily => {
                effect.business_date(event).format("%Y-%m-%d").to_string()
            }
            SalesClock::IngestTimeHourly => {
                event.ingest_time.format("%Y-%m-%dT%H:00:00Z").to_string()
            }
        }
    }
}

/// A document of a sales projection: a bucket, or (daily view only) the period control of a
/// store, kept under [`period_control_key`] to decide each posting of its days (see
/// [`crate::periods`]), or (version 2 only) when an unpaid order was placed, under
/// [`placed_key`]. Each serializes as itself (a bucket reads as a [`SalesBucket`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SalesDoc {
    /// The sales of one store, period and currency.
    Bucket(SalesBucket),
    /// When an order not yet paid was placed (before [`SalesDoc::Periods`]: untagged, and a
    /// period control reads any object).
    Placed(PlacedAt),
    /// A store's period control.
    Periods(PeriodControl),
}

/// When an order was placed (the event time of its `OrderCreated`), kept by
/// `daily_sales_by_store` version 2 until the order is paid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacedAt {
    /// Event time of the order's creation, UTC.
    pub placed_at: DateTime<Utc>,
}

impl SalesDoc {
    /// The bucket, if this is one.
    pub fn bucket(&self) -> Option<&SalesBucket> {
        match self {
            Self::Bucket(b) => Some(b),
            Self::Periods(_) | Self::Placed(_) => None,
        }
    }
}

/// What a sales projection folds.
pub enum SalesInput {
    /// A sale or refund (an order's event).
    Effect(SaleEffect),
    /// An order was placed at this instant (version 2 keeps it until the order is paid).
    Placed(DateTime<Utc>),
    /// An unpaid order was cancelled: its placement is forgotten (version 2).
    Abandoned,
    /// An approved exception, booked on the day of the approval (daily view only).
    Booked(SaleEffect),
    /// A change to a store's periods (daily view only).
    Periods(PeriodControlEvent),
}

impl Projection for SalesProjection {
    type Doc = SalesDoc;
    type Input = SalesInput;

    fn name(&self) -> &'static str {
        match self.0 {
            SalesClock::EventTimeDaily | SalesClock::PlacedTimeDaily => DAILY_SALES_BY_STORE,
            SalesClock::IngestTimeHourly => REAL_TIME_SALES,
        }
    }

    fn version(&self) -> u32 {
        match self.0 {
            SalesClock::PlacedTimeDaily => 2,
            _ => 1,
        }
    }

    fn select(&self, event: &RecordedEvent) -> Result<Option<(String, Self::Input)>, String> {
        if let Some(effect) = sale_effect(event)? {
            return Ok(Some((
                self.bucket_key(event, &effect),
                SalesInput::Effect(effect),
            )));
        }
        if self.0 == SalesClock::IngestTimeHourly {
            return Ok(None);
        }
        if self.0 == SalesClock::PlacedTimeDaily {
            if let Some(order) = aggregate_id::<Order>(event) {
                match event.event_type.as_str() {
                    "OrderCreated" => {
                        return Ok(Some((
                            placed_key(&order),
                            SalesInput::Placed(event.event_time),
                        )))
                    }
                    // A refunding cancellation is a sale effect (above).
                    "OrderCancelled" => {
                        return Ok(Some((placed_key(&order), SalesInput::Abandoned)))
                    }
                    _ => {}
                }
            }
        }
        if let Some(effect) = approved_booking(event)? {
            return Ok(Some((
                self.bucket_key(event, &effect),
                SalesInput::Booked(effect),
            )));
        }
        Ok(period_control_event(event)?.map(|(store, e)| {
            let (tenant, store) = eventfold_core::tenant::split(&store);
            (period_control_key(tenant, store), SalesInput::Periods(e))
        }))
    }

    fn route_key(&self, event: &RecordedEvent, input: &Self::Input) -> Option<String> {
        if self.0 != SalesClock::PlacedTimeDaily {
            return None;
        }
        match input {
            SalesInput::Effect(SaleEffect {
                kind: SaleKind::Sale,
                ..
            })
            | SalesInput::Placed(_)
            | SalesInput::Abandoned => aggregate_id::<Order>(event).map(|order| placed_key(&order)),
            _ => None,
        }
    }

    fn route(
        &self,
        key: String,
        route: &mut Option<SalesDoc>,
        input: &mut SalesInput,
        event: &RecordedEvent,
    ) -> Option<String> {
        match input {
            SalesInput::Placed(at) => {
                *route = Some(SalesDoc::Placed(PlacedAt { placed_at: *at }));
                None
            }
            SalesInput::Abandoned => {
                *route = None;
                None
            }
            SalesInput::Effect(effect) => match route.take() {
                // Paid: counted on the day it was placed; the placement is no longer needed.
                Some(SalesDoc::Placed(p)) => {
                    effect.dated = Some(p.placed_at);
                    Some(self.bucket_key(event, effect))
                }
                // Placed before anything kept it (or paid twice): the event's own date.
                other => {
                    *route = other;
                    Some(key)
                }
            },
            _ => Some(key),
        }
    }

    fn context_key(&self, event: &RecordedEvent, input: &Self::Input) -> Option<String> {
        match (self.0.daily(), input) {
            (true, SalesInput::Effect(effect)) => Some(period_control_key(
                eventfold_core::tenant::of(&event.stream_id),
                &effect.store,
            )),
            _ => None,
        }
    }

    fn apply(
        &self,
        doc: Option<SalesDoc>,
        input: SalesInput,
        event: &RecordedEvent,
    ) -> Option<SalesDoc> {
        self.apply_in_context(doc, &mut None, input, event)
    }

    fn apply_in_context(
        &self,
        doc: Option<SalesDoc>,
        periods: &mut Option<SalesDoc>,
        input: SalesInput,
        event: &RecordedEvent,
    ) -> Option<SalesDoc> {
        let (effect, booked) = match input {
            // Route documents only (version 2): never folded here.
            SalesInput::Placed(_) | SalesInput::Abandoned => return doc,
            SalesInput::Periods(e) => {
                let control = match doc {
                    Some(SalesDoc::Periods(c)) => c,
                    _ => PeriodControl::default(),
                };
                return Some(SalesDoc::Periods(control.apply(&e)));
            }
            SalesInput::Effect(effect) => (effect, false),
            SalesInput::Booked(effect) => (effect, true),
        };
        if let Some(SalesDoc::Periods(control)) = periods {
            if let Booking::Held(_) = control.booking_of(event, &effect) {
                // Not applied to its period: raised as an exception instead.
                return doc;
            }
        }
        let mut doc = match doc {
            Some(SalesDoc::Bucket(b)) => b,
            _ => SalesBucket {
                store: effect.store.clone(),
                period: self.period(event, &effect),
                currency: effect.currency,
                total: Money::zero(effect.currency).amount,
                orders: 0,
                refunds: 0,
                late_total: Money::zero(effect.currency).amount,
                late_orders: 0,
                adjusted: false,
                last_adjusted_at: None,
            },
        };
        doc.total += effect.amount;
        doc.orders += effect.orders();
        doc.refunds += effect.refunds();
        let late = self.0.daily() && !booked && effect.lateness_seconds(event).is_some();
        if late {
            doc.late_total += effect.amount;
            doc.late_orders += effect.orders();
            doc.adjusted = true;
            doc.last_adjusted_at = Some(
                doc.last_adjusted_at
                    .map_or(event.ingest_time, |t| t.max(event.ingest_time)),
            );
        }
        Some(SalesDoc::Bucket(doc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventfold_core::aggregate::encode_event;
    use eventfold_core::{Actor, EventMetadata};

    fn recorded(stream: &str, version: u64, event: &OrderEvent, day: &str) -> RecordedEvent {
        let (event_type, payload) = encode_event(event).unwrap();
        let t = DateTime::parse_from_rfc3339(&format!("{day}T10:00:00Z"))
            .unwrap()
            .with_timezone(&Utc);
        RecordedEvent {
            global_position: version,
            stream_id: stream.into(),
            stream_version: version,
            event_id: uuid::Uuid::now_v7(),
            event_type,
            schema_version: 1,
            event_time: t,
            ingest_time: DateTime::parse_from_rfc3339("2026-11-21T05:30:00Z")
                .unwrap()
                .with_timezone(&Utc),
            metadata: EventMetadata::by(Actor::parse("user:1").unwrap()),
            payload,
        }
    }

    fn fold<P: Projection>(
        p: &P,
        events: &[RecordedEvent],
    ) -> std::collections::BTreeMap<String, P::Doc> {
        let mut fold = eventfold_core::projection::MemoryFold::new(p);
        for e in events {
            fold.apply(e).unwrap();
        }
        fold.into_docs()
    }

    fn buckets(
        docs: std::collections::BTreeMap<String, SalesDoc>,
    ) -> std::collections::BTreeMap<String, SalesBucket> {
        docs.into_iter()
            .filter_map(|(k, d)| d.bucket().cloned().map(|b| (k, b)))
            .collect()
    }

    /// A sale recorded complete (`OrderRecorded`, one event) counts as a paid sale in every
    /// sales view, on its own date, shows as a completed paid order, and places its lines for
    /// the windows.
    #[test]
    fn a_recorded_sale_counts_everywhere_an_order_placed_and_paid_does() {
        use crate::order::OrderLine;
        let usd = |s| Money::parse(s, Currency::USD).unwrap();
        let event = recorded(
            "order-till-1",
            1,
            &OrderEvent::OrderRecorded {
                customer_id: "c".into(),
                store_id: "s".into(),
                lines: vec![OrderLine {
                    sku: "cd".into(),
                    quantity: 3,
                    amount: usd("7.50"),
                }],
                total: usd("7.50"),
                payment_id: "till-1".into(),
                actor: Actor::parse("user:1").unwrap(),
                reason: Some("store upload".into()),
                calendar: None,
            },
            "2026-01-05",
        );
        let events = [event.clone()];
        for (clock, key) in [
            (SalesClock::EventTimeDaily, "s|2026-01-05|USD"),
            (SalesClock::PlacedTimeDaily, "s|2026-01-05|USD"),
            (SalesClock::IngestTimeHourly, "s|2026-11-21T05:00:00Z|USD"),
        ] {
            let b = buckets(fold(&SalesProjection(clock), &events));
            assert_eq!(
                b.get(key).map(|b| (b.total.to_string(), b.orders)),
                Some(("7.50".to_string(), 1)),
                "{clock:?}: {b:?}"
            );
        }
        let summary = fold(&OrderSummaryProjection, &events);
        let doc = summary.values().next().expect("a summary");
        assert_eq!(
            (doc.status, doc.paid, doc.lines, doc.last_reason.as_deref()),
            (
                OrderStatus::Completed,
                Some(usd("7.50")),
                1,
                Some("store upload")
            )
        );
        let placed = crate::windows::placed_order(&event).unwrap().unwrap();
        assert_eq!((placed.store.as_str(), placed.lines[0].units), ("s", 3));
    }

    #[test]
    fn version_2_counts_a_sale_on_the_day_its_order_was_placed() {
        let usd = |s| Money::parse(s, Currency::USD).unwrap();
        let actor = Actor::parse("user:1").unwrap();
        let created = |stream: &str, day: &str| {
            recorded(
                stream,
                1,
                &OrderEvent::OrderCreated {
                    customer_id: "c".into(),
                    store_id: "s".into(),
                    lines: vec![],
                    total: usd("5"),
                    actor: actor.clone(),
                    calendar: None,
                },
                day,
            )
        };
        let paid = |stream: &str, day: &str| {
            recorded(
                stream,
                2,
                &OrderEvent::OrderPaid {
                    calendar: None,
                    amount: usd("5"),
                    payment_id: "p".into(),
                    store_id: "s".into(),
                    actor: actor.clone(),
                },
                day,
            )
        };
        let events = vec![
            created("order-1", "2026-01-01"),
            created("order-2", "2026-01-01"),
            created("order-3", "2026-01-02"),
            paid("order-1", "2026-01-01"),
            paid("order-2", "2026-01-02"),
            recorded(
                "order-3",
                2,
                &OrderEvent::OrderCancelled {
                    calendar: None,
                    refund: None,
                    reason: "r".into(),
                    store_id: "s".into(),
                    actor: actor.clone(),
                },
                "2026-01-02",
            ),
            created("order-4", "2026-01-02"),
            // Paid without a creation this view saw (placed before it kept placements): its
            // own date.
            paid("order-5", "2026-01-03"),
        ];
        let by_day = |docs: std::collections::BTreeMap<String, SalesDoc>| {
            buckets(docs)
                .into_iter()
                .map(|(k, b)| (k, (b.total.to_string(), b.orders)))
                .collect::<Vec<_>>()
        };
        let v1 = fold(&SalesProjection(SalesClock::EventTimeDaily), &events);
        let v2 = fold(&SalesProjection(SalesClock::PlacedTimeDaily), &events);
        assert_eq!(
            by_day(v1),
            vec![
                ("s|2026-01-01|USD".to_string(), ("5.00".to_string(), 1)),
                ("s|2026-01-02|USD".to_string(), ("5.00".to_string(), 1)),
                ("s|2026-01-03|USD".to_string(), ("5.00".to_string(), 1)),
            ]
        );
        assert_eq!(
            by_day(v2.clone()),
            vec![
                ("s|2026-01-01|USD".to_string(), ("10.00".to_string(), 2)),
                ("s|2026-01-03|USD".to_string(), ("5.00".to_string(), 1)),
            ]
        );
        // Paid and cancelled orders leave no placement behind; the unpaid one keeps its own,
        // under a bookkeeping key.
        let kept: Vec<&String> = v2
            .iter()
            .filter(|(_, d)| matches!(d, SalesDoc::Placed(_)))
            .map(|(k, _)| k)
            .collect();
        assert_eq!(kept, vec!["~placed|4"]);
        assert!(eventfold_core::read_model::is_bookkeeping_key(kept[0]));
        let json = serde_json::to_string(&v2["~placed|4"]).unwrap();
        assert_eq!(
            serde_json::from_str::<SalesDoc>(&json).unwrap(),
            v2["~placed|4"]
        );
    }

    #[test]
    fn sales_count_payments_on_their_event_day_and_subtract_refunds() {
        let usd = |s| Money::parse(s, Currency::USD).unwrap();
        let actor = Actor::parse("user:1").unwrap();
        let events = vec![
            recorded(
                "order-1",
                1,
                &OrderEvent::OrderPaid {
                    calendar: None,
                    amount: usd("10.50"),
                    payment_id: "p".into(),
                    store_id: "s".into(),
                    actor: actor.clone(),
                },
                "1997-01-01",
            ),
            recorded(
                "order-2",
                1,
                &OrderEvent::OrderPaid {
                    calendar: None,
                    amount: usd("0"),
                    payment_id: "p".into(),
                    store_id: "s".into(),
                    actor: actor.clone(),
                },
                "1997-01-01",
            ),
            recorded(
                "order-1",
                2,
                &OrderEvent::OrderRefunded {
                    calendar: None,
                    amount: usd("10.50"),
                    reason: "r".into(),
                    store_id: "s".into(),
                    actor: actor.clone(),
                },
                "1997-01-03",
            ),
            recorded(
                "order-3",
                1,
                &OrderEvent::OrderCancelled {
                    calendar: None,
                    refund: None,
                    reason: "r".into(),
                    store_id: "s".into(),
                    actor,
                },
                "1997-01-03",
            ),
        ];
        let daily = buckets(fold(&SalesProjection(SalesClock::EventTimeDaily), &events));
        let jan1 = &daily["s|1997-01-01|USD"];
        assert_eq!((jan1.total.to_string().as_str(), jan1.orders), ("10.50", 2));
        // Ingested in 2026, long after each day's cutoff: all of it is late.
        assert_eq!(
            (jan1.late_total.to_string().as_str(), jan1.late_orders),
            ("10.50", 2)
        );
        assert!(jan1.adjusted);
        assert_eq!(
            jan1.last_adjusted_at.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-11-21T05:30:00+00:00")
        );
        // The same events recorded as history by a backfill are counted, not late.
        let history: Vec<RecordedEvent> = events
            .iter()
            .cloned()
            .map(|mut e| {
                e.metadata.backfill = true;
                e
            })
            .collect();
        let backfilled = buckets(fold(&SalesProjection(SalesClock::EventTimeDaily), &history));
        let jan1 = &backfilled["s|1997-01-01|USD"];
        assert_eq!(jan1.total.to_string(), "10.50");
        assert_eq!((jan1.late_orders, jan1.adjusted), (0, false));
        assert!(jan1.late_total.is_zero());
        let jan3 = &daily["s|1997-01-03|USD"];
        assert_eq!(
            (jan3.total.to_string().as_str(), jan3.orders, jan3.refunds),
            ("-10.50", 0, 1)
        );
        assert_eq!(daily.len(), 2);
        let realtime = buckets(fold(
            &SalesProjection(SalesClock::IngestTimeHourly),
            &events,
        ));
        let hour = &realtime["s|2026-11-21T05:00:00Z|USD"];
        assert_eq!(
            (hour.total.to_string().as_str(), hour.orders, hour.refunds),
            ("0.00", 2, 1)
        );
    }
}

/// One entry of the `payment_deadlines` index: an order and when it was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreatedAt {
    /// Order id.
    pub order_id: String,
    /// Event time of its creation, ms since the Unix epoch (UTC).
    pub created_ms: i64,
}

/// The key of an order created at `created_ms` in `payment_deadlines`: keys sort by creation
/// time, so "created in this window" is one range scan.
pub fn deadline_key(created_ms: i64, order_id: &str) -> String {
    format!("{:016}:{order_id}", created_ms.max(0))
}

/// The `payment_deadlines` projection: a due-time index of orders by creation time. Every
/// created order gets an entry; the unpaid-order timeout scans the window that has come due and
/// cancels what is still pending (entries are never removed: they are small, and the scan only
/// reads the window).
pub struct PaymentDeadlinesProjection;

impl Projection for PaymentDeadlinesProjection {
    type Doc = OrderCreatedAt;
    type Input = i64;

    fn name(&self) -> &'static str {
        PAYMENT_DEADLINES
    }

    fn select(&self, event: &RecordedEvent) -> Result<Option<(String, i64)>, String> {
        if event.event_type != "OrderCreated" {
            return Ok(None);
        }
        let Some(id) = aggregate_id::<Order>(event) else {
            return Ok(None);
        };
        let created_ms = event.event_time.timestamp_millis();
        Ok(Some((deadline_key(created_ms, &id), created_ms)))
    }

    fn apply(
        &self,
        _doc: Option<OrderCreatedAt>,
        created_ms: i64,
        event: &RecordedEvent,
    ) -> Option<OrderCreatedAt> {
        Some(OrderCreatedAt {
            order_id: aggregate_id::<Order>(event).unwrap_or_default(),
            created_ms,
        })
    }
}

/// The `sagas_in_flight` projection's name.
pub const SAGAS_IN_FLIGHT: &str = "sagas_in_flight";

/// A payment saga that has not ended (the orchestrator drives these again after a restart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaInFlight {
    /// The order it is for.
    pub order_id: String,
    /// Ingest time of the saga's latest event (absent in documents written before it was
    /// kept): a saga whose latest step is long past is stuck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Payment sagas still running, keyed by order id: a saga's first event adds it,
/// `PaymentSagaEnded` deletes it (a report after the end adds it again until the compensation
/// it calls for has ended it once more).
pub struct SagasInFlightProjection;

impl Projection for SagasInFlightProjection {
    type Doc = SagaInFlight;
    type Input = bool;

    fn name(&self) -> &'static str {
        SAGAS_IN_FLIGHT
    }

    fn select(&self, event: &RecordedEvent) -> Result<Option<(String, bool)>, String> {
        let Some(id) = aggregate_id::<crate::payment_saga::PaymentSaga>(event) else {
            return Ok(None);
        };
        Ok(Some((id, event.event_type == "PaymentSagaEnded")))
    }

    fn apply(
        &self,
        _doc: Option<SagaInFlight>,
        ended: bool,
        event: &RecordedEvent,
    ) -> Option<SagaInFlight> {
        (!ended).then(|| SagaInFlight {
            order_id: aggregate_id::<crate::payment_saga::PaymentSaga>(event).unwrap_or_default(),
            last_step_at: Some(event.ingest_time),
        })
    }
}
