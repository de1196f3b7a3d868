//! Order: the state machine PENDING -> PAID -> CONFIRMED -> SHIPPED -> COMPLETED, with CANCELLED
//! (before shipping; a paid order's payment is refunded) and REFUNDED (after payment). Every
//! transition carries its actor and reason.
//!
//! A sale that was complete before eventfold heard of it (a store's till, a purchase log
//! imported or uploaded) is recorded in one event, `OrderRecorded`: created, paid and completed
//! at once, so a sale from a file costs one event, not the five of an order's life.

use eventfold_core::{Actor, Aggregate};
use serde::{Deserialize, Serialize};

use crate::money::{Currency, Money, MoneyError};
use crate::reporting::BusinessCalendar;
use crate::{validate_id, validate_reason, DomainError, Refusal};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Created, not paid.
    Pending,
    /// Paid in full.
    Paid,
    /// Accepted by the shop.
    Confirmed,
    /// Handed to the carrier.
    Shipped,
    /// Delivered; final unless refunded.
    Completed,
    /// Cancelled before shipping; final.
    Cancelled,
    /// Refunded after payment; final.
    Refunded,
}

impl OrderStatus {
    /// Every status, in the order of an order's life.
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Paid,
        Self::Confirmed,
        Self::Shipped,
        Self::Completed,
        Self::Cancelled,
        Self::Refunded,
    ];
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
    }
}

/// One line of an order: a SKU, a quantity and the line's total amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// Stock-keeping unit, e.g. `cd` or `concert-2026-vip`.
    pub sku: String,
    /// Units, at least 1.
    pub quantity: u32,
    /// The line's total (not the unit price), zero or more.
    pub amount: Money,
}

/// The order's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Order {
    /// `None` until created.
    pub status: Option<OrderStatus>,
    /// Customer id.
    pub customer_id: String,
    /// Store id, e.g. `cdnow`.
    pub store_id: String,
    /// The order's lines: SKU, units and each line's total.
    pub lines: Vec<OrderLine>,
    /// Sum of the lines.
    pub total: Option<Money>,
    /// Amount paid.
    pub paid: Option<Money>,
    /// The payment's reference.
    pub payment_id: Option<String>,
    /// Amount refunded.
    pub refunded: Option<Money>,
    /// Who made the last transition.
    pub last_actor: Option<Actor>,
    /// Why, if given.
    pub last_reason: Option<String>,
    /// The store's business calendar when the order was placed (`None`: the default).
    pub calendar: Option<BusinessCalendar>,
}

/// What a caller asks of an order. Every command names its actor.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderCommand {
    /// Places the order (PENDING).
    Create {
        /// Customer id.
        customer_id: String,
        /// Store id.
        store_id: String,
        /// At least one line, all in one currency.
        lines: Vec<OrderLine>,
        /// Who acts (recorded as the event's actor).
        actor: Actor,
        /// The store's business calendar (`None`: the default); recorded with the order and
        /// carried by each of its sales events.
        calendar: Option<BusinessCalendar>,
    },
    /// Records full payment (PENDING -> PAID).
    Pay {
        /// Must equal the total.
        amount: Money,
        /// Payment reference.
        payment_id: String,
        /// Who acts (recorded as the event's actor).
        actor: Actor,
    },
    /// PAID -> CONFIRMED.
    Confirm {
        /// Who acts (recorded as the event's actor).
        actor: Actor,
        /// Why, as the actor gave it, if given (at most 500 characters).
        reason: Option<String>,
    },
    /// CONFIRMED -> SHIPPED.
    Ship {
        /// Who acts (recorded as the event's actor).
        actor: Actor,
        /// Why, as the actor gave it, if given (at most 500 characters).
        reason: Option<String>,
    },
    /// SHIPPED -> COMPLETED.
    Complete {
        /// Who acts (recorded as the event's actor).
        actor: Actor,
        /// Why, as the actor gave it, if given (at most 500 characters).
        reason: Option<String>,
    },
    /// Records a sale completed elsewhere (a store's till, an imported purchase log): a new
    /// order, paid in full and COMPLETED in one event.
    Record {
        /// Customer id.
        customer_id: String,
        /// Store id.
        store_id: String,
        /// At least one line, all in one currency.
        lines: Vec<OrderLine>,
        /// Payment reference.
        payment_id: String,
        /// Who acts (recorded as the event's actor).
        actor: Actor,
        /// Why, as the actor gave it, if given (at most 500 characters), e.g. the upload it
        /// came in.
        reason: Option<String>,
        /// The store's business calendar (`None`: the default); recorded with the sale, which
        /// the sales views date by it.
        calendar: Option<BusinessCalendar>,
    },
    /// PENDING, PAID or CONFIRMED -> CANCELLED; refunds what was paid.
    Cancel {
        /// Who acts (recorded as the event's actor).
        actor: Actor,
        /// Why (required).
        reason: String,
    },
    /// PAID, CONFIRMED, SHIPPED or COMPLETED -> REFUNDED, for the amount paid.
    Refund {
        /// Who acts (recorded as the event's actor).
        actor: Actor,
        /// Why (required).
        reason: String,
    },
}

/// What happened to an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderEvent {
    /// The order exists, PENDING.
    OrderCreated {
        /// Customer id.
        customer_id: String,
        /// Store id.
        store_id: String,
        /// The order's lines: SKU, units and each line's total.
        lines: Vec<OrderLine>,
        /// Sum of the lines.
        total: Money,
        /// Who acts (recorded as the event's actor).
        actor: Actor,
        /// The store's business calendar when the order was placed (`None`: the default, UTC
        /// days reported at D+1 02:00); the sales views date the order's sales by it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        calendar: Option<BusinessCalendar>,
    },
    /// Paid in full.
    OrderPaid {
        /// Amount (= total).
        amount: Money,
        /// Payment reference.
        payment_id: String,
        /// Store id (carried for the sales projections).
        store_id: String,
        /// Who acts (recorded as the event's actor).
        actor: Actor,
        /// The store's business calendar when the order was placed (`None`: the default, UTC
        /// days reported at D+1 02:00); the sales views date the order's sales by it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        calendar: Option<BusinessCalendar>,
    },
    /// Accepted by the shop.
    OrderConfirmed {
        /// Who acts (recorded as the event's actor).
        actor: Actor,
        /// Why, as the actor gave it, if given (at most 500 characters).
        reason: Option<String>,
    },
    /// Handed to the carrier.
    OrderShipped {
        /// Who acts (recorded as the event's actor).
        actor: Actor,
        /// Why, as the actor gave it, if given (at most 500 characters).
        reason: Option<String>,
    },
    /// Delivered: the order is complete (it can still be refunded).
    OrderCompleted {
        /// Who acts (recorded as the event's actor).
        actor: Actor,
        /// Why, as the actor gave it, if given (at most 500 characters).
        reason: Option<String>,
    },
    /// A sale completed elsewhere (a store's till, an imported purchase log), recorded at once:
    /// the order exists, is paid in full (`total`) and COMPLETED. The sales views count it as
    /// a sale on its event time, as an `OrderPaid`.
    OrderRecorded {
        /// Customer id.
        customer_id: String,
        /// Store id.
        store_id: String,
        /// The order's lines: SKU, units and each line's total.
        lines: Vec<OrderLine>,
        /// Sum of the lines, paid in full.
        total: Money,
        /// Payment reference.
        payment_id: String,
        /// Who acts (recorded as the event's actor).
        actor: Actor,
        /// Why, as the actor gave it, if given (at most 500 characters).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The store's business calendar when the sale was made (`None`: the default, UTC
        /// days reported at D+1 02:00); the sales views date the sale by it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        calendar: Option<BusinessCalendar>,
    },
    /// Cancelled before shipping.
    OrderCancelled {
        /// Who acts (recorded as the event's actor).
        actor: Actor,
        /// Why, as the actor gave it (at most 500 characters, no control characters).
        reason: String,
        /// What is refunded: the amount paid, if any.
        refund: Option<Money>,
        /// Store id (carried for the sales projections).
        store_id: String,
        /// The store's business calendar when the order was placed (`None`: the default, UTC
        /// days reported at D+1 02:00); the sales views date the order's sales by it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        calendar: Option<BusinessCalendar>,
    },
    /// Refunded after payment.
    OrderRefunded {
        /// Who acts (recorded as the event's actor).
        actor: Actor,
        /// Why, as the actor gave it (at most 500 characters, no control characters).
        reason: String,
        /// Amount refunded (the amount paid).
        amount: Money,
        /// Store id (carried for the sales projections).
        store_id: String,
        /// The store's business calendar when the order was placed (`None`: the default, UTC
        /// days reported at D+1 02:00); the sales views date the order's sales by it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        calendar: Option<BusinessCalendar>,
    },
}

/// Why an order command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OrderError {
    /// Create on an existing order.
    #[error("order already exists")]
    AlreadyExists,
    /// Anything but create on an order that does not exist.
    #[error("order does not exist")]
    NotFound,
    /// The state machine forbids it.
    #[error("cannot {action} an order that is {from}")]
    IllegalTransition {
        /// The verb asked for.
        action: &'static str,
        /// The order's status.
        from: OrderStatus,
    },
    /// Payment amount differs from the total.
    #[error("payment {paid} does not match the order total {total}")]
    PaymentMismatch {
        /// Sum of the lines' amounts.
        total: Money,
        /// The amount paid.
        paid: Money,
    },
    /// A bad value; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// A bad amount.
    #[error(transparent)]
    Money(#[from] MoneyError),
}

impl DomainError for OrderError {
    fn code(&self) -> &'static str {
        match self {
            Self::AlreadyExists => "order_exists",
            Self::NotFound => "order_not_found",
            Self::IllegalTransition { .. } => "illegal_transition",
            Self::PaymentMismatch { .. } => "payment_mismatch",
            Self::Invalid(_) => "invalid_order",
            Self::Money(MoneyError::CurrencyMismatch { .. }) => "currency_mismatch",
            Self::Money(_) => "invalid_amount",
        }
    }
    fn refusal(&self) -> Refusal {
        match self {
            Self::AlreadyExists | Self::IllegalTransition { .. } => Refusal::Conflict,
            Self::NotFound => Refusal::NotFound,
            Self::PaymentMismatch { .. } | Self::Invalid(_) | Self::Money(_) => Refusal::Invalid,
        }
    }
}

fn check_reason(reason: Option<&str>, required: bool) -> Result<(), OrderError> {
    match reason {
        None if required => Err(OrderError::Invalid("reason is required".into())),
        Some(r) if required && r.trim().is_empty() => {
            Err(OrderError::Invalid("reason is required".into()))
        }
        Some(r) => validate_reason(r).map_err(OrderError::Invalid),
        None => Ok(()),
    }
}

/// The sum of the lines, checking each line.
///
/// # Errors
/// No lines, more than 1,000, a bad SKU, quantity 0, a negative amount, or mixed currencies.
pub fn order_total(lines: &[OrderLine]) -> Result<Money, OrderError> {
    let first = lines
        .first()
        .ok_or_else(|| OrderError::Invalid("lines must hold at least one line".into()))?;
    if lines.len() > 1_000 {
        return Err(OrderError::Invalid(
            "lines must hold at most 1000 lines".into(),
        ));
    }
    let currency: Currency = first.amount.currency;
    let mut total = Money::zero(currency);
    for (i, line) in lines.iter().enumerate() {
        validate_id(&format!("lines[{i}].sku"), &line.sku).map_err(OrderError::Invalid)?;
        if line.quantity == 0 {
            return Err(OrderError::Invalid(format!(
                "lines[{i}].quantity must be at least 1"
            )));
        }
        let amount = Money::new(line.amount.amount, line.amount.currency)?
            .non_negative()?
            .in_currency(currency)?;
        total = Money::new(total.amount + amount.amount, currency)?;
    }
    Ok(total)
}

impl Order {
    fn status(&self) -> Result<OrderStatus, OrderError> {
        self.status.ok_or(OrderError::NotFound)
    }

    /// Checks a new order's ids and lines: its lines (amounts normalized) and total.
    fn new_order(
        &self,
        customer_id: &str,
        store_id: &str,
        lines: Vec<OrderLine>,
    ) -> Result<(Vec<OrderLine>, Money), OrderError> {
        if self.status.is_some() {
            return Err(OrderError::AlreadyExists);
        }
        validate_id("customer_id", customer_id).map_err(OrderError::Invalid)?;
        validate_id("store_id", store_id).map_err(OrderError::Invalid)?;
        let total = order_total(&lines)?;
        let lines = lines
            .into_iter()
            .map(|l| {
                Ok(OrderLine {
                    amount: Money::new(l.amount.amount, l.amount.currency)?,
                    ..l
                })
            })
            .collect::<Result<_, MoneyError>>()?;
        Ok((lines, total))
    }

    /// Takes a new order's facts (of `OrderCreated` or `OrderRecorded`).
    fn place(
        &mut self,
        customer_id: &str,
        store_id: &str,
        lines: &[OrderLine],
        total: Money,
        calendar: Option<BusinessCalendar>,
    ) {
        self.calendar = calendar;
        self.customer_id = customer_id.to_owned();
        self.store_id = store_id.to_owned();
        self.lines = lines.to_vec();
        self.total = Some(total);
    }

    fn transition(
        &self,
        action: &'static str,
        allowed: &[OrderStatus],
    ) -> Result<OrderStatus, OrderError> {
        let from = self.status()?;
        if allowed.contains(&from) {
            Ok(from)
        } else {
            Err(OrderError::IllegalTransition { action, from })
        }
    }
}

impl Aggregate for Order {
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
    const CATEGORY: &'static str = "order";

    fn owner(&self) -> Option<&str> {
        self.status.map(|_| self.customer_id.as_str())
    }

    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderStatus::*;
        let event = match command {
            OrderCommand::Create {
                customer_id,
                store_id,
                lines,
                actor,
                calendar,
            } => {
                let (lines, total) = self.new_order(&customer_id, &store_id, lines)?;
                OrderEvent::OrderCreated {
                    customer_id,
                    store_id,
                    lines,
                    total,
                    actor,
                    calendar,
                }
            }
            OrderCommand::Record {
                customer_id,
                store_id,
                lines,
                payment_id,
                actor,
                reason,
                calendar,
            } => {
                let (lines, total) = self.new_order(&customer_id, &store_id, lines)?;
                validate_id("payment_id", &payment_id).map_err(OrderError::Invalid)?;
                check_reason(reason.as_deref(), false)?;
                OrderEvent::OrderRecorded {
                    customer_id,
                    store_id,
                    lines,
                    total,
                    payment_id,
                    actor,
                    reason,
                    calendar,
                }
            }
            OrderCommand::Pay {
                amount,
                payment_id,
                actor,
            } => {
                self.transition("pay", &[Pending])?;
                validate_id("payment_id", &payment_id).map_err(OrderError::Invalid)?;
                let total = self.total.expect("created order has a total");
                let amount = amount.non_negative()?.in_currency(total.currency)?;
                if amount.amount != total.amount {
                    return Err(OrderError::PaymentMismatch {
                        total,
                        paid: amount,
                    });
                }
                OrderEvent::OrderPaid {
                    amount,
                    payment_id,
                    store_id: self.store_id.clone(),
                    actor,
                    calendar: self.calendar,
                }
            }
            OrderCommand::Confirm { actor, reason } => {
                self.transition("confirm", &[Paid])?;
                check_reason(reason.as_deref(), false)?;
                OrderEvent::OrderConfirmed { actor, reason }
            }
            OrderCommand::Ship { actor, reason } => {
                self.transition("ship", &[Confirmed])?;
                check_reason(reason.as_deref(), false)?;
                OrderEvent::OrderShipped { actor, reason }
            }
            OrderCommand::Complete { actor, reason } => {
                self.transition("complete", &[Shipped])?;
                check_reason(reason.as_deref(), false)?;
                OrderEvent::OrderCompleted { actor, reason }
            }
            OrderCommand::Cancel { actor, reason } => {
                self.transition("cancel", &[Pending, Paid, Confirmed])?;
                check_reason(Some(&reason), true)?;
                OrderEvent::OrderCancelled {
                    actor,
                    reason,
                    refund: self.paid,
                    store_id: self.store_id.clone(),
                    calendar: self.calendar,
                }
            }
            OrderCommand::Refund { actor, reason } => {
                self.transition("refund", &[Paid, Confirmed, Shipped, Completed])?;
                check_reason(Some(&reason), true)?;
                OrderEvent::OrderRefunded {
                    actor,
                    reason,
                    amount: self.paid.expect("paid order has a payment"),
                    store_id: self.store_id.clone(),
                    calendar: self.calendar,
                }
            }
        };
        Ok(vec![event])
    }

    fn apply(mut self, event: &OrderEvent) -> Self {
        let (status, actor, reason) = match event {
            OrderEvent::OrderCreated {
                customer_id,
                store_id,
                lines,
                total,
                actor,
                calendar,
            } => {
                self.place(customer_id, store_id, lines, *total, *calendar);
                (OrderStatus::Pending, actor, None)
            }
            OrderEvent::OrderRecorded {
                customer_id,
                store_id,
                lines,
                total,
                payment_id,
                actor,
                reason,
                calendar,
            } => {
                self.place(customer_id, store_id, lines, *total, *calendar);
                self.paid = Some(*total);
                self.payment_id = Some(payment_id.clone());
                (OrderStatus::Completed, actor, reason.as_ref())
            }
            OrderEvent::OrderPaid {
                amount,
                payment_id,
                actor,
                ..
            } => {
                self.paid = Some(*amount);
                self.payment_id = Some(payment_id.clone());
                (OrderStatus::Paid, actor, None)
            }
            OrderEvent::OrderConfirmed { actor, reason } => {
                (OrderStatus::Confirmed, actor, reason.as_ref())
            }
            OrderEvent::OrderShipped { actor, reason } => {
                (OrderStatus::Shipped, actor, reason.as_ref())
            }
            OrderEvent::OrderCompleted { actor, reason } => {
                (OrderStatus::Completed, actor, reason.as_ref())
            }
            OrderEvent::OrderCancelled {
                actor,
                reason,
                refund,
                ..
            } => {
                self.refunded = *refund;
                (OrderStatus::Cancelled, actor, Some(reason))
            }
            OrderEvent::OrderRefunded {
                actor,
                reason,
                amount,
                ..
            } => {
                self.refunded = Some(*amount);
                (OrderStatus::Refunded, actor, Some(reason))
            }
        };
        self.status = Some(status);
        self.last_actor = Some(actor.clone());
        self.last_reason = reason.cloned();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventfold_core::testkit::AggregateTest;
    use OrderStatus::*;

    fn usd(s: &str) -> Money {
        Money::parse(s, Currency::USD).unwrap()
    }
    fn user() -> Actor {
        Actor::parse("user:789").unwrap()
    }
    fn admin() -> Actor {
        Actor::parse("admin:support-001").unwrap()
    }
    fn created() -> OrderEvent {
        OrderEvent::OrderCreated {
            calendar: None,
            customer_id: "c-1".into(),
            store_id: "s-1".into(),
            lines: vec![OrderLine {
                sku: "cd".into(),
                quantity: 2,
                amount: usd("20.00"),
            }],
            total: usd("20.00"),
            actor: user(),
        }
    }
    fn paid() -> OrderEvent {
        OrderEvent::OrderPaid {
            calendar: None,
            amount: usd("20"),
            payment_id: "pay-1".into(),
            store_id: "s-1".into(),
            actor: user(),
        }
    }
    fn history_to(status: OrderStatus) -> Vec<OrderEvent> {
        let mut h = vec![created()];
        let steps = [
            (Paid, paid()),
            (
                Confirmed,
                OrderEvent::OrderConfirmed {
                    actor: admin(),
                    reason: None,
                },
            ),
            (
                Shipped,
                OrderEvent::OrderShipped {
                    actor: admin(),
                    reason: None,
                },
            ),
            (
                Completed,
                OrderEvent::OrderCompleted {
                    actor: Actor::system("auto-complete"),
                    reason: None,
                },
            ),
        ];
        if status == Pending {
            return h;
        }
        for (s, e) in steps {
            h.push(e);
            if s == status {
                return h;
            }
        }
        h
    }
    fn command(name: &str) -> OrderCommand {
        match name {
            "pay" => OrderCommand::Pay {
                amount: usd("20"),
                payment_id: "pay-1".into(),
                actor: user(),
            },
            "confirm" => OrderCommand::Confirm {
                actor: admin(),
                reason: None,
            },
            "ship" => OrderCommand::Ship {
                actor: admin(),
                reason: None,
            },
            "complete" => OrderCommand::Complete {
                actor: admin(),
                reason: None,
            },
            "cancel" => OrderCommand::Cancel {
                actor: admin(),
                reason: "customer asked".into(),
            },
            "refund" => OrderCommand::Refund {
                actor: admin(),
                reason: "damaged".into(),
            },
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_happy_path_records_actor_and_reason() {
        let state = AggregateTest::<Order>::given(history_to(Shipped))
            .when(OrderCommand::Complete {
                actor: Actor::system("auto-complete"),
                reason: Some("delivered".into()),
            })
            .then_expect_events(vec![OrderEvent::OrderCompleted {
                actor: Actor::system("auto-complete"),
                reason: Some("delivered".into()),
            }]);
        assert_eq!(state.status, Some(Completed));
        assert_eq!(state.last_actor.unwrap().as_str(), "system:auto-complete");
        assert_eq!(state.last_reason.as_deref(), Some("delivered"));
    }

    #[test]
    fn every_transition_is_allowed_exactly_where_the_state_machine_says() {
        let allowed: &[(&str, &[OrderStatus])] = &[
            ("pay", &[Pending]),
            ("confirm", &[Paid]),
            ("ship", &[Confirmed]),
            ("complete", &[Shipped]),
            ("cancel", &[Pending, Paid, Confirmed]),
            ("refund", &[Paid, Confirmed, Shipped, Completed]),
        ];
        let all = [
            Pending, Paid, Confirmed, Shipped, Completed, Cancelled, Refunded,
        ];
        for (name, from) in allowed {
            for status in all {
                let mut given = match status {
                    Cancelled => history_to(Pending),
                    Refunded => history_to(Completed),
                    s => history_to(s),
                };
                match status {
                    Cancelled => given.push(OrderEvent::OrderCancelled {
                        calendar: None,
                        actor: user(),
                        reason: "x".into(),
                        refund: None,
                        store_id: "s-1".into(),
                    }),
                    Refunded => given.push(OrderEvent::OrderRefunded {
                        calendar: None,
                        actor: user(),
                        reason: "x".into(),
                        amount: usd("20"),
                        store_id: "s-1".into(),
                    }),
                    _ => {}
                }
                let state = given.iter().fold(Order::default(), |s, e| s.apply(e));
                assert_eq!(state.status, Some(status));
                let result = state.handle(command(name));
                if from.contains(&status) {
                    assert!(
                        result.is_ok(),
                        "{name} from {status} should be allowed: {result:?}"
                    );
                } else {
                    assert_eq!(
                        result.unwrap_err(),
                        OrderError::IllegalTransition {
                            action: name_static(name),
                            from: status
                        },
                        "{name} from {status}"
                    );
                }
            }
        }
    }

    fn name_static(name: &str) -> &'static str {
        ["pay", "confirm", "ship", "complete", "cancel", "refund"]
            .into_iter()
            .find(|n| *n == name)
            .unwrap()
    }

    #[test]
    fn shipping_a_cancelled_order_is_refused_with_a_clear_message() {
        let mut given = history_to(Pending);
        given.push(OrderEvent::OrderCancelled {
            calendar: None,
            actor: admin(),
            reason: "fraud".into(),
            refund: None,
            store_id: "s-1".into(),
        });
        AggregateTest::<Order>::given(given)
            .when(command("ship"))
            .then_expect_error_message("cannot ship an order that is CANCELLED");
    }

    #[test]
    fn cancelling_a_paid_order_refunds_the_payment() {
        AggregateTest::<Order>::given(history_to(Paid))
            .when(command("cancel"))
            .then_expect_events(vec![OrderEvent::OrderCancelled {
                calendar: None,
                actor: admin(),
                reason: "customer asked".into(),
                refund: Some(usd("20")),
                store_id: "s-1".into(),
            }]);
    }

    #[test]
    fn bad_commands_are_refused() {
        let create = |lines: Vec<OrderLine>| OrderCommand::Create {
            calendar: None,
            customer_id: "c-1".into(),
            store_id: "s".into(),
            lines,
            actor: user(),
        };
        let line = |a: Money, q| OrderLine {
            sku: "cd".into(),
            quantity: q,
            amount: a,
        };
        let cases = vec![
            (create(vec![]), "invalid_order"),
            (create(vec![line(usd("1"), 0)]), "invalid_order"),
            (create(vec![line(usd("-1"), 1)]), "invalid_amount"),
            (
                create(vec![
                    line(usd("1"), 1),
                    line(Money::parse("1", Currency::TWD).unwrap(), 1),
                ]),
                "currency_mismatch",
            ),
        ];
        for (cmd, code) in cases {
            AggregateTest::<Order>::given_no_previous_events()
                .when(cmd)
                .then_expect_error(|e| e.code() == code);
        }
        AggregateTest::<Order>::given(history_to(Pending))
            .when(OrderCommand::Pay {
                amount: usd("19.99"),
                payment_id: "p".into(),
                actor: user(),
            })
            .then_expect_error(|e| {
                e.code() == "payment_mismatch" && e.refusal() == Refusal::Invalid
            });
        AggregateTest::<Order>::given(history_to(Pending))
            .when(OrderCommand::Cancel {
                actor: user(),
                reason: " ".into(),
            })
            .then_expect_error_message("reason is required");
        AggregateTest::<Order>::given_no_previous_events()
            .when(command("pay"))
            .then_expect_error(|e| e.refusal() == Refusal::NotFound);
        AggregateTest::<Order>::given(history_to(Pending))
            .when(create(vec![line(usd("1"), 1)]))
            .then_expect_error(|e| e.code() == "order_exists");
    }

    #[test]
    fn zero_value_orders_can_be_paid() {
        let create = OrderCommand::Create {
            calendar: None,
            customer_id: "c".into(),
            store_id: "s".into(),
            lines: vec![OrderLine {
                sku: "cd".into(),
                quantity: 1,
                amount: usd("0"),
            }],
            actor: user(),
        };
        let state = AggregateTest::<Order>::given_no_previous_events()
            .when(create)
            .then_expect_events(vec![OrderEvent::OrderCreated {
                calendar: None,
                customer_id: "c".into(),
                store_id: "s".into(),
                lines: vec![OrderLine {
                    sku: "cd".into(),
                    quantity: 1,
                    amount: usd("0"),
                }],
                total: usd("0"),
                actor: user(),
            }]);
        assert!(state
            .handle(OrderCommand::Pay {
                amount: usd("0"),
                payment_id: "p".into(),
                actor: user()
            })
            .is_ok());
    }

    fn record(lines: Vec<OrderLine>) -> OrderCommand {
        OrderCommand::Record {
            customer_id: "c-1".into(),
            store_id: "s-1".into(),
            lines,
            payment_id: "till-7".into(),
            actor: user(),
            reason: Some("store upload".into()),
            calendar: None,
        }
    }

    #[test]
    fn a_recorded_sale_is_one_event_and_a_completed_paid_order_that_can_be_refunded() {
        let line = OrderLine {
            sku: "cd".into(),
            quantity: 2,
            amount: usd("20.00"),
        };
        let state = AggregateTest::<Order>::given_no_previous_events()
            .when(record(vec![line.clone()]))
            .then_expect_events(vec![OrderEvent::OrderRecorded {
                customer_id: "c-1".into(),
                store_id: "s-1".into(),
                lines: vec![line.clone()],
                total: usd("20.00"),
                payment_id: "till-7".into(),
                actor: user(),
                reason: Some("store upload".into()),
                calendar: None,
            }]);
        assert_eq!(state.status, Some(Completed));
        assert_eq!(state.last_reason.as_deref(), Some("store upload"));
        assert_eq!(state.paid, Some(usd("20")));
        assert_eq!(state.payment_id.as_deref(), Some("till-7"));
        for refused in ["pay", "confirm", "ship", "complete", "cancel"] {
            assert_eq!(
                state.handle(command(refused)).unwrap_err(),
                OrderError::IllegalTransition {
                    action: name_static(refused),
                    from: Completed
                }
            );
        }
        assert_eq!(
            state.handle(command("refund")).unwrap(),
            vec![OrderEvent::OrderRefunded {
                calendar: None,
                actor: admin(),
                reason: "damaged".into(),
                amount: usd("20"),
                store_id: "s-1".into(),
            }]
        );
        AggregateTest::<Order>::given(history_to(Pending))
            .when(record(vec![line.clone()]))
            .then_expect_error(|e| e.code() == "order_exists");
        AggregateTest::<Order>::given_no_previous_events()
            .when(record(vec![]))
            .then_expect_error(|e| e.code() == "invalid_order");
        let mut bad_payment = record(vec![line]);
        if let OrderCommand::Record { payment_id, .. } = &mut bad_payment {
            *payment_id = "a b".into();
        }
        AggregateTest::<Order>::given_no_previous_events()
            .when(bad_payment)
            .then_expect_error(|e| {
                e.code() == "invalid_order" && e.to_string().contains("payment_id")
            });
    }
}
