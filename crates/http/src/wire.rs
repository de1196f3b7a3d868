//! Wire shapes shared by several resources: money, a currency, an order's status and lines. Each
//! serializes exactly as the domain type it is made from (the domain crate knows no OpenAPI);
//! these carry the schemas the OpenAPI document shows.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

/// An ISO 4217 currency code, e.g. `USD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "USD")]
pub struct Currency(pub eventfold_domain::Currency);

/// An amount of a currency, e.g. `{"amount": "12.30", "currency": "USD"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Money {
    /// The amount as a decimal string, e.g. `"12.30"`.
    #[schema(value_type = String, example = "12.30")]
    pub amount: Decimal,
    /// ISO 4217 code.
    pub currency: Currency,
}

impl From<eventfold_domain::Money> for Money {
    fn from(m: eventfold_domain::Money) -> Self {
        Self {
            amount: m.amount,
            currency: Currency(m.currency),
        }
    }
}

/// `Option<domain Money>` as wire money.
pub(crate) fn money(m: Option<eventfold_domain::Money>) -> Option<Money> {
    m.map(Money::from)
}

/// Where an order is in its life: the domain's status, spelled as the API shows it (`PENDING`,
/// `PAID`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct OrderStatus(pub eventfold_domain::order::OrderStatus);

impl From<eventfold_domain::order::OrderStatus> for OrderStatus {
    fn from(s: eventfold_domain::order::OrderStatus) -> Self {
        Self(s)
    }
}

/// The schema lists every status the domain has (so the document cannot fall behind it).
impl utoipa::PartialSchema for OrderStatus {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("Where an order is in its life."))
            .enum_values(Some(
                eventfold_domain::order::OrderStatus::ALL.map(|s| s.to_string()),
            ))
            .into()
    }
}

impl utoipa::ToSchema for OrderStatus {}

/// One line of an order: a SKU, a quantity and the line's total amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OrderLine {
    /// Stock-keeping unit, e.g. `cd` or `concert-2026-vip`.
    pub sku: String,
    /// Units, at least 1.
    pub quantity: u32,
    /// The line's total (not the unit price), zero or more.
    pub amount: Money,
}

impl From<&eventfold_domain::order::OrderLine> for OrderLine {
    fn from(l: &eventfold_domain::order::OrderLine) -> Self {
        Self {
            sku: l.sku.clone(),
            quantity: l.quantity,
            amount: l.amount.into(),
        }
    }
}

/// An account's balance, from the `balance_by_account` read model.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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

impl From<eventfold_domain::projections::AccountBalance> for AccountBalance {
    fn from(b: eventfold_domain::projections::AccountBalance) -> Self {
        Self {
            account_id: eventfold_core::tenant::unscoped(&b.account_id).to_owned(),
            owner: b.owner,
            balance: b.balance.into(),
            version: b.version,
            updated_at: b.updated_at,
        }
    }
}

/// One order as the order list and detail views show it (the `order_summary` read model).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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

impl From<eventfold_domain::projections::OrderSummary> for OrderSummary {
    fn from(s: eventfold_domain::projections::OrderSummary) -> Self {
        Self {
            order_id: eventfold_core::tenant::unscoped(&s.order_id).to_owned(),
            customer_id: s.customer_id,
            store_id: s.store_id,
            status: s.status.into(),
            total: s.total.into(),
            paid: money(s.paid),
            refunded: money(s.refunded),
            lines: s.lines,
            created_at: s.created_at,
            updated_at: s.updated_at,
            version: s.version,
            last_actor: s.last_actor,
            last_reason: s.last_reason,
        }
    }
}

/// One entry of a stream's audit timeline: who did what, when, and the state before.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    /// The event's stream, e.g. `order-42` or `paysaga-42` (an order's history holds both).
    pub stream_id: String,
    /// Stream version of the event.
    pub version: u64,
    /// Global position.
    pub global_position: u64,
    /// Event id (UUIDv7).
    #[schema(value_type = String)]
    pub event_id: uuid::Uuid,
    /// Event type, e.g. `OrderCancelled`.
    pub event_type: String,
    /// When it happened (UTC).
    pub event_time: DateTime<Utc>,
    /// When eventfold recorded it (UTC).
    pub recorded_at: DateTime<Utc>,
    /// Who, e.g. `admin:support-001`.
    pub actor: String,
    /// The reason the payload gives, if any.
    pub reason: Option<String>,
    /// What changed: the event's payload.
    #[schema(value_type = Object)]
    pub change: serde_json::Value,
    /// The state before this event (`null` before the first).
    #[schema(value_type = Option<Object>)]
    pub state_before: serde_json::Value,
    /// The state after it.
    #[schema(value_type = Object)]
    pub state_after: serde_json::Value,
    /// Correlation id, if any.
    #[schema(value_type = Option<String>)]
    pub correlation_id: Option<uuid::Uuid>,
}

impl From<eventfold_app::service::TimelineEntry> for TimelineEntry {
    fn from(e: eventfold_app::service::TimelineEntry) -> Self {
        Self {
            stream_id: eventfold_core::tenant::unscoped(&e.stream_id).to_owned(),
            version: e.version,
            global_position: e.global_position,
            event_id: e.event_id,
            event_type: e.event_type,
            event_time: e.event_time,
            recorded_at: e.recorded_at,
            actor: e.actor,
            reason: e.reason,
            change: e.change,
            state_before: e.state_before,
            state_after: e.state_after,
            correlation_id: e.correlation_id,
        }
    }
}
