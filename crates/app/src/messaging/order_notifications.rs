//! Order notifications, exactly once: a consume-transform-produce worker reads the order
//! events the relay publishes (`{prefix}.order`) and writes one customer notification per
//! customer-facing event to the `notifications` topic (read by the notification consumer),
//! committing the notifications and its input offsets in one Kafka transaction
//! (`eventfold_kafka::exactly_once`).
//!
//! Which events notify: `OrderCreated` ("Order received"), `OrderPaid` ("Payment received"),
//! `OrderShipped` ("Order shipped"), `OrderCancelled` ("Order cancelled"), `OrderRefunded`
//! ("Refund issued"); the rest produce nothing, `OrderRecorded` included (a sale recorded from a
//! till or a file was complete before eventfold heard of it; the customer holds the receipt).
//! The recipient is the order's customer: carried by `OrderCreated`, and for later events read
//! from the order stream's first event (`OrderCreated` or `OrderRecorded`; immutable, so the
//! transform stays a function of the message and stored history, as a retried transaction
//! needs).
//!
//! Output: key = order id; value `{"user_id", "event_type", "title", "body", "created_at"}` (the
//! notification consumer's format; `created_at` = the event's time); headers `event_id` (the
//! notification's id: a UUID v5 of the source event id, stable across retries) and
//! `causation_id` (the source event id).

use std::sync::Arc;

use eventfold_core::aggregate::decode_event;
use eventfold_core::{EventStore, StoreError};
use eventfold_domain::order::OrderEvent;
use eventfold_kafka::exactly_once::{Outbound, Transformed};
use eventfold_kafka::Inbound;

/// Consumer group and transactional id prefix of the worker.
pub const ORDER_NOTIFICATIONS: &str = "order-notifications";

/// Title and body of the notification for `event` of order `order_id`, if it notifies.
pub fn render(order_id: &str, event: &OrderEvent) -> Option<(&'static str, String)> {
    match event {
        OrderEvent::OrderCreated { lines, total, .. } => Some((
            "Order received",
            format!(
                "We received your order {order_id} ({} line{}, {total}).",
                lines.len(),
                if lines.len() == 1 { "" } else { "s" }
            ),
        )),
        OrderEvent::OrderPaid { amount, .. } => Some((
            "Payment received",
            format!("We received {amount} for order {order_id}."),
        )),
        OrderEvent::OrderShipped { .. } => Some((
            "Order shipped",
            format!("Your order {order_id} is on its way."),
        )),
        OrderEvent::OrderCancelled { reason, refund, .. } => Some((
            "Order cancelled",
            match refund {
                Some(r) => {
                    format!("Order {order_id} was cancelled ({reason}); {r} will be refunded.")
                }
                None => format!("Order {order_id} was cancelled ({reason})."),
            },
        )),
        OrderEvent::OrderRefunded { amount, .. } => Some((
            "Refund issued",
            format!("We refunded {amount} for order {order_id}."),
        )),
        OrderEvent::OrderConfirmed { .. }
        | OrderEvent::OrderCompleted { .. }
        | OrderEvent::OrderRecorded { .. } => None,
    }
}

/// Transforms one order event message (as the relay publishes it) into at most one notification
/// on `topic`.
///
/// `Retry` when the store is unavailable; `Poison` (naming the problem) for a message without the
/// relay's headers, an undecodable payload, or an order whose creation cannot be found.
pub async fn transform(store: &Arc<dyn EventStore>, topic: &str, m: Inbound) -> Transformed {
    let at = format!("{}/{}/{}", m.topic, m.partition, m.offset);
    let header = |name: &str| m.headers.get(name).map(String::as_str);
    let (Some(event_id), Some(event_type), Some(stream_id)) = (
        header("event_id"),
        header("event_type"),
        header("stream_id"),
    ) else {
        return Transformed::Poison(format!(
            "{at}: missing header event_id, event_type or stream_id"
        ));
    };
    let Some(order_id) =
        <eventfold_domain::order::Order as eventfold_core::Aggregate>::id_of_stream(stream_id)
    else {
        return Transformed::Poison(format!("{at}: stream_id {stream_id}: not an order stream"));
    };
    let payload = String::from_utf8_lossy(&m.payload);
    let event: OrderEvent = match decode_event(event_type, &payload) {
        Ok(e) => e,
        Err(e) => return Transformed::Poison(format!("{at}: {event_type}: {e}")),
    };
    let Some((title, body)) = render(eventfold_core::tenant::unscoped(&order_id), &event) else {
        return Transformed::Emit(Vec::new());
    };
    let customer = match &event {
        OrderEvent::OrderCreated { customer_id, .. } => customer_id.clone(),
        _ => match customer_of(store, stream_id).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Transformed::Poison(format!(
                    "{at}: {stream_id} has no OrderCreated or OrderRecorded"
                ))
            }
            Err(StoreError::Unavailable(e)) => {
                return Transformed::Retry(format!("store unavailable: {e}"))
            }
            Err(e) => return Transformed::Poison(format!("{at}: {stream_id}: {e}")),
        },
    };
    // The recipient is scoped to the order's tenant, as every id inside eventfold.
    let customer = eventfold_core::tenant::scope(eventfold_core::tenant::of(&order_id), &customer);
    let value = serde_json::json!({
        "user_id": customer,
        "event_type": event_type,
        "title": title,
        "body": body,
        "created_at": header("event_time"),
    });
    let notification_id = event_id.parse::<uuid::Uuid>().map_or_else(
        |_| uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, event_id.as_bytes()),
        |id| uuid::Uuid::new_v5(&id, ORDER_NOTIFICATIONS.as_bytes()),
    );
    Transformed::Emit(vec![Outbound {
        topic: topic.to_owned(),
        key: Some(order_id.to_owned()),
        headers: vec![
            ("event_id".into(), notification_id.to_string()),
            ("causation_id".into(), event_id.to_owned()),
        ],
        payload: value.to_string().into_bytes(),
    }])
}

/// The customer of order stream `stream_id`, from its first event.
async fn customer_of(
    store: &Arc<dyn EventStore>,
    stream_id: &str,
) -> Result<Option<String>, StoreError> {
    let first = store.read_stream(stream_id, 1, 1).await?;
    Ok(first.first().and_then(
        |e| match decode_event::<OrderEvent>(&e.event_type, &e.payload) {
            Ok(
                OrderEvent::OrderCreated { customer_id, .. }
                | OrderEvent::OrderRecorded { customer_id, .. },
            ) => Some(customer_id),
            _ => None,
        },
    ))
}
