//! Payment: authorize, capture, refund, fail. Provider callbacks may arrive twice: a repeated
//! capture or failure of the same outcome is a no-op.

use serde::{Deserialize, Serialize};

use eventfold_core::Aggregate;

use crate::money::{Money, MoneyError};
use crate::{validate_id, DomainError, Refusal};

/// Where a payment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    /// Funds held.
    Authorized,
    /// Funds taken.
    Captured,
    /// Fully refunded.
    Refunded,
    /// Refused by the provider or abandoned.
    Failed,
}

/// The payment's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Payment {
    /// `None` until authorized.
    pub status: Option<PaymentStatus>,
    /// The order paid for.
    pub order_id: String,
    /// Amount authorized.
    pub authorized: Option<Money>,
    /// Amount captured.
    pub captured: Option<Money>,
    /// Amount refunded so far.
    pub refunded: Option<Money>,
}

/// What a caller (or the payment provider's callback) asks.
#[derive(Debug, Clone, PartialEq)]
pub enum PaymentCommand {
    /// Holds funds for an order.
    Authorize {
        /// The order it is for.
        order_id: String,
        /// Amount (>= 0).
        amount: Money,
    },
    /// Takes the authorized amount.
    Capture,
    /// Returns part or all of the captured amount.
    Refund {
        /// Amount (> 0, at most what is left).
        amount: Money,
        /// Why, as the actor gave it (at most 500 characters, no control characters).
        reason: String,
    },
    /// Marks the payment failed.
    Fail {
        /// Provider's reason.
        reason: String,
    },
}

/// What happened to a payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PaymentEvent {
    /// Funds held.
    PaymentAuthorized {
        /// The order it is for.
        order_id: String,
        /// The amount, in the account's currency.
        amount: Money,
    },
    /// Funds taken.
    PaymentCaptured {
        /// The amount, in the account's currency.
        amount: Money,
    },
    /// Funds returned.
    PaymentRefunded {
        /// The amount, in the account's currency.
        amount: Money,
        /// Why, as the actor gave it (at most 500 characters, no control characters).
        reason: String,
    },
    /// Refused or abandoned.
    PaymentFailed {
        /// Why, as the actor gave it (at most 500 characters, no control characters).
        reason: String,
    },
}

/// Why a payment command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentError {
    /// A command the payment's status forbids.
    #[error("cannot {action} a payment that is {from:?}")]
    IllegalTransition {
        /// The command refused, e.g. `capture`.
        action: &'static str,
        /// `None` when the payment does not exist.
        from: Option<PaymentStatus>,
    },
    /// Refund above what is left.
    #[error("refund {requested} exceeds the refundable {left}")]
    RefundTooLarge {
        /// The amount the command asked for.
        requested: Money,
        /// Left to refund.
        left: Money,
    },
    /// A bad amount.
    #[error(transparent)]
    Money(#[from] MoneyError),
    /// A bad id.
    #[error("{0}")]
    Invalid(String),
}

impl DomainError for PaymentError {
    fn code(&self) -> &'static str {
        match self {
            Self::IllegalTransition { from: None, .. } => "payment_not_found",
            Self::IllegalTransition { .. } => "illegal_transition",
            Self::RefundTooLarge { .. } => "refund_too_large",
            Self::Money(_) => "invalid_amount",
            Self::Invalid(_) => "invalid_payment",
        }
    }
    fn refusal(&self) -> Refusal {
        match self {
            Self::IllegalTransition { from: None, .. } => Refusal::NotFound,
            Self::IllegalTransition { .. } => Refusal::Conflict,
            _ => Refusal::Invalid,
        }
    }
}

impl Aggregate for Payment {
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;
    const CATEGORY: &'static str = "payment";

    fn handle(&self, command: PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentError> {
        use PaymentStatus::*;
        let illegal = |action| PaymentError::IllegalTransition {
            action,
            from: self.status,
        };
        match command {
            PaymentCommand::Authorize { order_id, amount } => {
                if self.status.is_some() {
                    return if self.order_id == order_id && self.authorized == Some(amount) {
                        Ok(vec![])
                    } else {
                        Err(illegal("authorize"))
                    };
                }
                validate_id("order_id", &order_id).map_err(PaymentError::Invalid)?;
                Ok(vec![PaymentEvent::PaymentAuthorized {
                    order_id,
                    amount: amount.non_negative()?,
                }])
            }
            PaymentCommand::Capture => match self.status {
                Some(Authorized) => Ok(vec![PaymentEvent::PaymentCaptured {
                    amount: self.authorized.expect("authorized amount"),
                }]),
                Some(Captured) => Ok(vec![]),
                _ => Err(illegal("capture")),
            },
            PaymentCommand::Refund { amount, reason } => {
                if self.status != Some(Captured) {
                    return Err(illegal("refund"));
                }
                let captured = self.captured.expect("captured amount");
                let amount = amount.positive()?.in_currency(captured.currency)?;
                let left = captured.minus(self.refunded.unwrap_or(Money::zero(captured.currency)));
                if amount.amount > left.amount {
                    return Err(PaymentError::RefundTooLarge {
                        requested: amount,
                        left,
                    });
                }
                Ok(vec![PaymentEvent::PaymentRefunded { amount, reason }])
            }
            PaymentCommand::Fail { reason } => match self.status {
                Some(Authorized) => Ok(vec![PaymentEvent::PaymentFailed { reason }]),
                Some(Failed) => Ok(vec![]),
                _ => Err(illegal("fail")),
            },
        }
    }

    fn apply(mut self, event: &PaymentEvent) -> Self {
        match event {
            PaymentEvent::PaymentAuthorized { order_id, amount } => {
                self.status = Some(PaymentStatus::Authorized);
                self.order_id.clone_from(order_id);
                self.authorized = Some(*amount);
            }
            PaymentEvent::PaymentCaptured { amount } => {
                self.status = Some(PaymentStatus::Captured);
                self.captured = Some(*amount);
            }
            PaymentEvent::PaymentRefunded { amount, .. } => {
                let refunded = self
                    .refunded
                    .unwrap_or(Money::zero(amount.currency))
                    .plus(*amount);
                if Some(refunded.amount) == self.captured.map(|c| c.amount) {
                    self.status = Some(PaymentStatus::Refunded);
                }
                self.refunded = Some(refunded);
            }
            PaymentEvent::PaymentFailed { .. } => self.status = Some(PaymentStatus::Failed),
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Currency;
    use eventfold_core::testkit::AggregateTest;
    use PaymentEvent::*;

    fn usd(s: &str) -> Money {
        Money::parse(s, Currency::USD).unwrap()
    }
    fn authorized() -> PaymentEvent {
        PaymentAuthorized {
            order_id: "o-1".into(),
            amount: usd("30"),
        }
    }

    #[test]
    fn authorize_capture_refund() {
        AggregateTest::<Payment>::given(vec![authorized()])
            .when(PaymentCommand::Capture)
            .then_expect_events(vec![PaymentCaptured { amount: usd("30") }]);
        let state = AggregateTest::<Payment>::given(vec![
            authorized(),
            PaymentCaptured { amount: usd("30") },
            PaymentRefunded {
                amount: usd("10"),
                reason: "a".into(),
            },
        ])
        .when(PaymentCommand::Refund {
            amount: usd("20"),
            reason: "b".into(),
        })
        .then_expect_events(vec![PaymentRefunded {
            amount: usd("20"),
            reason: "b".into(),
        }]);
        assert_eq!(state.status, Some(PaymentStatus::Refunded));
    }

    #[test]
    fn duplicate_callbacks_change_nothing() {
        AggregateTest::<Payment>::given(vec![authorized(), PaymentCaptured { amount: usd("30") }])
            .when(PaymentCommand::Capture)
            .then_expect_events(vec![]);
        AggregateTest::<Payment>::given(vec![
            authorized(),
            PaymentFailed {
                reason: "declined".into(),
            },
        ])
        .when(PaymentCommand::Fail {
            reason: "declined".into(),
        })
        .then_expect_events(vec![]);
        AggregateTest::<Payment>::given(vec![authorized()])
            .when(PaymentCommand::Authorize {
                order_id: "o-1".into(),
                amount: usd("30"),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn out_of_order_and_excess_are_refused() {
        AggregateTest::<Payment>::given(vec![
            authorized(),
            PaymentFailed {
                reason: "declined".into(),
            },
        ])
        .when(PaymentCommand::Capture)
        .then_expect_error(|e| e.code() == "illegal_transition");
        AggregateTest::<Payment>::given_no_previous_events()
            .when(PaymentCommand::Capture)
            .then_expect_error(|e| e.refusal() == Refusal::NotFound);
        AggregateTest::<Payment>::given(vec![authorized(), PaymentCaptured { amount: usd("30") }])
            .when(PaymentCommand::Refund {
                amount: usd("30.01"),
                reason: "x".into(),
            })
            .then_expect_error(|e| e.code() == "refund_too_large");
    }
}
