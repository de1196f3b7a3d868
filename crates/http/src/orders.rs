//! Orders: place, pay, confirm, ship, complete, cancel, refund (commands), the order summary and
//! its audit timeline.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use eventfold_app::service::timeline;
use eventfold_core::{Actor, Aggregate, Projection};
use eventfold_domain::identity::Role;
use eventfold_domain::order::{Order, OrderCommand, OrderLine};
use eventfold_domain::projections::{OrderSummary, OrderSummaryProjection, ORDER_SUMMARY};
use serde::{Deserialize, Serialize};

use crate::auth::{Caller, OWNERS, OWNERS_OR_SUPPORT, READERS};
use crate::command::{id_command, money_as, new_id, run};
use crate::error::{ApiError, ApiErrorBody};
use crate::extract::{check_id, versioned, CommandBody, CommandHeaders, IdPath};
use crate::operations::decode_doc;
use crate::state::AppState;
use crate::wire;

/// Who fulfils and refunds orders.
const SUPPORT: [Role; 1] = [Role::Support];

/// An order as command responses show it (the state right after the command).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    /// Order id.
    pub order_id: String,
    /// Where the order is in its life (`null` before it is created).
    pub status: Option<wire::OrderStatus>,
    /// Customer id.
    pub customer_id: String,
    /// Store id.
    pub store_id: String,
    /// The order's lines: SKU, units and each line's total.
    pub lines: Vec<wire::OrderLine>,
    /// Sum of the lines' amounts.
    pub total: Option<wire::Money>,
    /// Amount paid, once paid (equals the total).
    pub paid: Option<wire::Money>,
    /// Amount refunded, if any.
    pub refunded: Option<wire::Money>,
    /// The payment's reference: the one given to pay, or the provider's charge id.
    pub payment_id: Option<String>,
    /// Stream version the view reflects (the response's `ETag` too).
    pub version: u64,
    /// Who made the last change.
    pub last_actor: Option<String>,
    /// Why the last change was made, if the actor said.
    pub last_reason: Option<String>,
}

impl OrderView {
    fn new(id: &str, o: &Order, version: u64) -> Self {
        Self {
            order_id: id.to_owned(),
            status: o.status.map(Into::into),
            customer_id: o.customer_id.clone(),
            store_id: o.store_id.clone(),
            lines: o.lines.iter().map(Into::into).collect(),
            total: wire::money(o.total),
            paid: wire::money(o.paid),
            refunded: wire::money(o.refunded),
            payment_id: o.payment_id.clone(),
            version,
            last_actor: o.last_actor.as_ref().map(Actor::to_string),
            last_reason: o.last_reason.clone(),
        }
    }
}

/// One line of `POST /orders`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineBody {
    /// Stock-keeping unit, e.g. `cd` (1 to 100 of `[A-Za-z0-9._-]`).
    pub sku: String,
    /// Units, at least 1.
    #[serde(deserialize_with = "crate::contract::integral")]
    pub quantity: u32,
    /// The line's total, a decimal string.
    pub amount: String,
}

/// `POST /orders`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// Order id; generated (UUIDv7) when absent.
    pub order_id: Option<String>,
    /// Customer id.
    pub customer_id: String,
    /// Store id.
    pub store_id: String,
    /// ISO 4217 code of every line.
    pub currency: String,
    /// At least one line.
    pub lines: Vec<LineBody>,
    /// When it happened at the source (RFC 3339; default: when the server receives it). Not
    /// before 1970 nor more than 5 minutes ahead of the server's clock. Sales views date the
    /// order by it.
    pub occurred_at: Option<String>,
}

/// `POST /orders/{id}/pay`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayOrder {
    /// Must equal the order total.
    pub amount: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Payment reference; generated when absent.
    pub payment_id: Option<String>,
    /// When it happened at the source (RFC 3339; default: when the server receives it). Not
    /// before 1970 nor more than 5 minutes ahead of the server's clock. Sales views date the
    /// order by it.
    pub occurred_at: Option<String>,
}

/// Body of confirm / ship / complete: an optional reason.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Why (at most 500 characters, no control characters).
    pub reason: Option<String>,
    /// When it happened at the source (RFC 3339; default: when the server receives it). Not
    /// before 1970 nor more than 5 minutes ahead of the server's clock. Sales views date the
    /// order by it.
    pub occurred_at: Option<String>,
}

/// Body of cancel / refund: the reason is required. (Read as optional, so that a caller without
/// the route's role is refused for that first; a missing reason is then 422.)
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequiredReasonBody {
    /// Why (1 to 500 characters, not only white space, no control characters).
    #[schema(value_type = String, required = true)]
    pub reason: Option<String>,
    /// When it happened at the source (RFC 3339; default: when the server receives it). Not
    /// before 1970 nor more than 5 minutes ahead of the server's clock. Sales views date the
    /// order by it.
    pub occurred_at: Option<String>,
}

/// The reason a cancel or refund needs.
fn required_reason(reason: Option<String>) -> Result<String, ApiError> {
    let reason = reason.ok_or_else(|| {
        ApiError::unprocessable("invalid_order", "reason is required to cancel or refund")
    })?;
    crate::contract::check("reason", &reason, crate::contract::REQUIRED_REASON)
        .map_err(|e| e.with_code("invalid_order"))?;
    Ok(reason)
}

fn order_view(id: &str, o: &Order, v: u64) -> serde_json::Value {
    serde_json::to_value(OrderView::new(id, o, v)).unwrap_or_default()
}

/// Places an order (PENDING).
#[utoipa::path(post, path = "/orders", request_body = CreateOrder,
    responses((status = 201, body = OrderView), (status = 400, body = ApiErrorBody), (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn create_order(
    State(state): State<AppState>,
    caller: Caller,
    headers: CommandHeaders,
    body: CommandBody<CreateOrder>,
) -> Result<Response, ApiError> {
    caller.require(&OWNERS_OR_SUPPORT)?;
    let occurred = crate::command::occurred_at(&body.body)?;
    let b = body.body;
    let id = b.order_id.clone().unwrap_or_else(new_id);
    check_id("order_id", &id)?;
    caller.require_owner("customer_id", &b.customer_id)?;
    let lines = b
        .lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            crate::contract::check_units(&format!("lines[{i}].quantity"), u64::from(l.quantity))?;
            Ok(OrderLine {
                sku: l.sku,
                quantity: l.quantity,
                amount: money_as(
                    &format!("lines[{i}].amount"),
                    &l.amount,
                    &b.currency,
                    crate::contract::AMOUNT,
                )?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    // The store's calendar is recorded with the order (an invalid store id is refused by the
    // command below, so it is not looked up).
    let calendar = if eventfold_domain::validate_id("store_id", &b.store_id).is_ok() {
        state.app.calendars.of(&caller.scope(&b.store_id)).await?
    } else {
        None
    };
    let command = OrderCommand::Create {
        customer_id: b.customer_id,
        store_id: b.store_id,
        lines,
        actor: caller.0.actor.clone(),
        calendar,
    };
    let mut ctx = headers.creation_context(&caller, &body.fingerprint);
    if let Some(t) = occurred {
        ctx.event_time = t;
    }
    run::<Order>(
        &state,
        &caller,
        &id,
        command,
        ctx,
        StatusCode::CREATED,
        order_view,
    )
    .await
}

id_command!(
/// Pays an order in full (PENDING -> PAID).
pay_order, "/orders/{id}/pay", PayOrder -> Order, OrderView via order_view,
"order id", roles OWNERS, |b, actor| OrderCommand::Pay {
    amount: money_as("amount", &b.amount, &b.currency, crate::contract::AMOUNT)?,
    payment_id: b.payment_id.unwrap_or_else(new_id),
    actor,
});

/// A state transition of an order with an optional or required reason.
macro_rules! transition {
    ($(#[$doc:meta])* $name:ident, $path:literal, roles $roles:expr, |$actor:ident, $reason:ident| $command:expr) => {
        id_command!($(#[$doc])* $name, $path, ReasonBody -> Order, OrderView via order_view,
            "order id", roles $roles, |b, $actor| { let $reason = b.reason; $command });
    };
}

transition!(
    /// PAID -> CONFIRMED.
    confirm_order, "/orders/{id}/confirm", roles SUPPORT, |actor, reason| OrderCommand::Confirm { actor, reason });
transition!(
    /// CONFIRMED -> SHIPPED.
    ship_order, "/orders/{id}/ship", roles SUPPORT, |actor, reason| OrderCommand::Ship { actor, reason });
transition!(
    /// SHIPPED -> COMPLETED.
    complete_order, "/orders/{id}/complete", roles SUPPORT, |actor, reason| OrderCommand::Complete { actor, reason });
id_command!(
/// PENDING, PAID or CONFIRMED -> CANCELLED (reason required; a payment is refunded).
cancel_order, "/orders/{id}/cancel", RequiredReasonBody -> Order, OrderView via order_view,
"order id", roles OWNERS_OR_SUPPORT, |b, actor| OrderCommand::Cancel { actor, reason: required_reason(b.reason)? });
id_command!(
/// PAID, CONFIRMED, SHIPPED or COMPLETED -> REFUNDED (reason required).
refund_order, "/orders/{id}/refund", RequiredReasonBody -> Order, OrderView via order_view,
"order id", roles SUPPORT, |b, actor| OrderCommand::Refund { actor, reason: required_reason(b.reason)? });

/// An order's summary from the `order_summary` read model; when the read model trails the order's
/// stream, the summary is folded from the stream so a client reads its own writes.
#[utoipa::path(get, path = "/orders/{id}", params(("id" = String, Path)),
    responses((status = 200, body = wire::OrderSummary), (status = 404, body = ApiErrorBody)))]
pub async fn get_order(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    caller.require(&READERS)?;
    check_id("order id", &id)?;
    let scoped = caller.scope(&id);
    let stream_id = Order::stream_id(&scoped);
    let (docs, version) = state
        .app
        .views
        .get_docs_and_stream_version(ORDER_SUMMARY, std::slice::from_ref(&scoped), &stream_id)
        .await?;
    let summary: Option<OrderSummary> = docs.first().map(|(_, d)| decode_doc(d)).transpose()?;
    let summary = match summary {
        Some(s) if s.version >= version => Some(s),
        _ => {
            let projection = OrderSummaryProjection;
            let mut doc = None;
            for event in state.app.service.read_stream(&stream_id).await? {
                if let Some((_, input)) = projection
                    .select(&event)
                    .map_err(eventfold_core::StoreError::Corrupt)?
                {
                    doc = projection.apply(doc, input, &event);
                }
            }
            doc
        }
    };
    let summary = summary
        .filter(|s| caller.may_reach(&s.customer_id))
        .ok_or_else(|| ApiError::not_found("order_not_found", format!("order {id} not found")))?;
    let v = summary.version;
    Ok(versioned(
        StatusCode::OK,
        &wire::OrderSummary::from(summary),
        v,
    ))
}

/// An order's audit timeline: who, when, what changed, and the state before each change; with
/// its payment saga's events (stream `paysaga-{id}`), in log order.
#[utoipa::path(get, path = "/orders/{id}/history", params(("id" = String, Path)),
    responses((status = 200, body = Vec<wire::TimelineEntry>), (status = 404, body = ApiErrorBody)))]
pub async fn order_history(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<Vec<wire::TimelineEntry>>, ApiError> {
    caller.require(&READERS)?;
    check_id("order id", &id)?;
    let scoped = caller.scope(&id);
    let events = state
        .app
        .service
        .read_stream(&Order::stream_id(&scoped))
        .await?;
    let order = eventfold_core::Replayed::<Order>::from_events(&events)?;
    if events.is_empty() || !caller.may_reach(order.state.owner().unwrap_or_default()) {
        return Err(ApiError::not_found(
            "order_not_found",
            format!("order {id} not found"),
        ));
    }
    let mut entries = timeline::<Order>(&events)?;
    let saga = state
        .app
        .service
        .read_stream(&eventfold_domain::payment_saga::PaymentSaga::stream_id(
            &scoped,
        ))
        .await?;
    entries.extend(timeline::<eventfold_domain::payment_saga::PaymentSaga>(
        &saga,
    )?);
    entries.sort_by_key(|e| e.global_position);
    Ok(Json(entries.into_iter().map(Into::into).collect()))
}

macro_rules! occurred_from_body {
    ($($body:ty),*) => {
        $(impl crate::command::Occurred for $body {
            fn occurred_at(&self) -> Option<&str> {
                self.occurred_at.as_deref()
            }
        })*
    };
}
occurred_from_body!(CreateOrder, PayOrder, ReasonBody, RequiredReasonBody);
