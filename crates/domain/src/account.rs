//! Account: a customer ledger in one currency. No overdraft.

use eventfold_core::aggregate::Upcaster;
use eventfold_core::{Actor, Aggregate};
use serde::{Deserialize, Serialize};

use crate::money::{Currency, Money, MoneyError};
use crate::{DomainError, Refusal};

/// The account's state (snapshotted: see [`eventfold_core::snapshot`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// Whether `AccountOpened` happened.
    pub opened: bool,
    /// The customer who owns it, e.g. `customer-42`.
    pub owner: String,
    /// The ledger currency; `None` until opened.
    pub currency: Option<Currency>,
    /// Current balance; `None` until opened.
    pub balance: Option<Money>,
    /// Sum of interest accrued.
    pub interest: Option<Money>,
}

/// What a caller asks of an account.
#[derive(Debug, Clone, PartialEq)]
pub enum AccountCommand {
    /// Opens the account.
    Open {
        /// Owner id.
        owner: String,
        /// The account's currency (every amount of the account is in it).
        currency: Currency,
        /// Who acts (recorded as the event's actor).
        actor: Actor,
    },
    /// Adds funds (amount > 0, the account's currency).
    Deposit {
        /// The amount, in the account's currency.
        amount: Money,
        /// Who acts (recorded as the event's actor).
        actor: Actor,
    },
    /// Takes funds out (amount > 0, not more than the balance).
    Withdraw {
        /// The amount, in the account's currency.
        amount: Money,
        /// Who acts (recorded as the event's actor).
        actor: Actor,
    },
    /// Books interest (amount >= 0).
    AccrueInterest {
        /// The amount, in the account's currency.
        amount: Money,
    },
}

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    /// The account exists.
    AccountOpened {
        /// Owner id.
        owner: String,
        /// The account's currency (every amount of the account is in it).
        currency: Currency,
    },
    /// Funds came in.
    FundsDeposited {
        /// Amount (> 0).
        amount: Money,
    },
    /// Funds went out.
    FundsWithdrawn {
        /// Amount (> 0).
        amount: Money,
    },
    /// Interest was booked.
    InterestAccrued {
        /// Amount (>= 0).
        amount: Money,
    },
    /// A correction computed by replay; the amount may be negative.
    CorrectionApplied {
        /// Signed amount.
        amount: Money,
        /// Why, e.g. `interest algorithm v2`.
        reason: String,
    },
}

/// Why an account command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// Open on an open account.
    #[error("account is already open")]
    AlreadyOpen,
    /// Anything but open on an account that does not exist.
    #[error("account does not exist")]
    NotOpen,
    /// A withdrawal above the balance.
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds {
        /// Balance now.
        balance: Money,
        /// Amount asked for.
        requested: Money,
    },
    /// A bad amount or currency.
    #[error(transparent)]
    Money(#[from] MoneyError),
    /// A bad owner id.
    #[error("{0}")]
    InvalidOwner(String),
}

impl DomainError for AccountError {
    fn code(&self) -> &'static str {
        match self {
            Self::AlreadyOpen => "account_exists",
            Self::NotOpen => "account_not_found",
            Self::InsufficientFunds { .. } => "insufficient_funds",
            Self::Money(MoneyError::CurrencyMismatch { .. }) => "currency_mismatch",
            Self::Money(_) => "invalid_amount",
            Self::InvalidOwner(_) => "invalid_owner",
        }
    }
    fn refusal(&self) -> Refusal {
        match self {
            Self::AlreadyOpen | Self::InsufficientFunds { .. } => Refusal::Conflict,
            Self::NotOpen => Refusal::NotFound,
            Self::Money(_) | Self::InvalidOwner(_) => Refusal::Invalid,
        }
    }
}

impl Account {
    fn open_currency(&self) -> Result<Currency, AccountError> {
        self.currency
            .filter(|_| self.opened)
            .ok_or(AccountError::NotOpen)
    }
}

impl eventfold_core::snapshot::Snapshotting for Account {
    const STATE_VERSION: u32 = 1;
}

/// The account's upcasters: `FundsDeposited` v1 -> v2.
static UPCASTERS: [Upcaster; 1] = [Upcaster {
    event_type: "FundsDeposited",
    from: 1,
    lift: funds_deposited_v1_to_v2,
}];

/// `FundsDeposited` v1 carried a bare amount, `{"amount": "10.00"}`; v2 carries money, `{"amount":
/// {"amount": "10.00", "currency": "TWD"}}`, and a v1 deposit was in TWD (the seed's rule).
/// eventfold builds before upcasting existed wrote deposits with a currency under version 1; those
/// pass unchanged.
///
/// # Errors
/// A payload without `amount`, or with one that is neither a decimal string nor money.
fn funds_deposited_v1_to_v2(mut v: serde_json::Value) -> Result<serde_json::Value, String> {
    let amount = v
        .get_mut("amount")
        .ok_or_else(|| "FundsDeposited v1 has no amount".to_string())?;
    match amount {
        serde_json::Value::String(s) => {
            *amount = serde_json::json!({"amount": s.clone(), "currency": "TWD"});
            Ok(v)
        }
        serde_json::Value::Object(m) if m.contains_key("currency") => Ok(v),
        other => Err(format!(
            "FundsDeposited v1 amount must be a decimal string, got {other}"
        )),
    }
}

impl Aggregate for Account {
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    const CATEGORY: &'static str = "account";

    fn owner(&self) -> Option<&str> {
        self.currency.map(|_| self.owner.as_str())
    }

    fn upcasters() -> &'static [Upcaster] {
        &UPCASTERS
    }

    const SNAPSHOTTED: bool = true;

    fn from_snapshot(state: serde_json::Value, state_version: u32) -> Option<Self> {
        use eventfold_core::snapshot::Snapshotting;
        (state_version == Self::STATE_VERSION)
            .then(|| serde_json::from_value(state).ok())
            .flatten()
    }

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open {
                owner, currency, ..
            } => {
                if self.opened {
                    return Err(AccountError::AlreadyOpen);
                }
                crate::validate_id("owner", &owner).map_err(AccountError::InvalidOwner)?;
                Ok(vec![AccountEvent::AccountOpened { owner, currency }])
            }
            AccountCommand::Deposit { amount, .. } => {
                let currency = self.open_currency()?;
                let amount = amount.positive()?.in_currency(currency)?;
                Ok(vec![AccountEvent::FundsDeposited { amount }])
            }
            AccountCommand::Withdraw { amount, .. } => {
                let currency = self.open_currency()?;
                let amount = amount.positive()?.in_currency(currency)?;
                let balance = self.balance.unwrap_or(Money::zero(currency));
                if amount.amount > balance.amount {
                    return Err(AccountError::InsufficientFunds {
                        balance,
                        requested: amount,
                    });
                }
                Ok(vec![AccountEvent::FundsWithdrawn { amount }])
            }
            AccountCommand::AccrueInterest { amount } => {
                let currency = self.open_currency()?;
                let amount = amount.non_negative()?.in_currency(currency)?;
                Ok(vec![AccountEvent::InterestAccrued { amount }])
            }
        }
    }

    fn apply(mut self, event: &AccountEvent) -> Self {
        let add = |balance: Option<Money>, m: &Money| {
            Some(balance.unwrap_or(Money::zero(m.currency)).plus(*m))
        };
        match event {
            AccountEvent::AccountOpened { owner, currency } => {
                self.opened = true;
                self.owner.clone_from(owner);
                self.currency = Some(*currency);
                self.balance = Some(Money::zero(*currency));
                self.interest = Some(Money::zero(*currency));
            }
            AccountEvent::FundsDeposited { amount } => self.balance = add(self.balance, amount),
            AccountEvent::FundsWithdrawn { amount } => {
                self.balance = self.balance.map(|b| b.minus(*amount));
            }
            AccountEvent::InterestAccrued { amount } => {
                self.balance = add(self.balance, amount);
                self.interest = add(self.interest, amount);
            }
            AccountEvent::CorrectionApplied { amount, .. } => {
                self.balance = add(self.balance, amount);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventfold_core::testkit::AggregateTest;

    #[test]
    fn funds_deposited_v1_lifts_to_twd_money() {
        use eventfold_core::aggregate::{current_schema_version, upcast};
        assert_eq!(current_schema_version::<Account>("FundsDeposited"), 2);
        assert_eq!(current_schema_version::<Account>("FundsWithdrawn"), 1);
        let lifted = upcast::<Account>("FundsDeposited", 1, r#"{"amount":"12.30"}"#).unwrap();
        let event: AccountEvent =
            eventfold_core::aggregate::decode_event("FundsDeposited", &lifted).unwrap();
        assert_eq!(
            event,
            AccountEvent::FundsDeposited {
                amount: Money::parse("12.30", Currency::TWD).unwrap()
            }
        );
        let with_currency = r#"{"amount":{"amount":"1.00","currency":"USD"}}"#;
        let kept = upcast::<Account>("FundsDeposited", 1, with_currency).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&kept).unwrap(),
            serde_json::from_str::<serde_json::Value>(with_currency).unwrap()
        );
        for bad in [
            r#"{}"#,
            r#"{"amount":12.3}"#,
            r#"{"amount":{"amount":"1"}}"#,
        ] {
            let err = upcast::<Account>("FundsDeposited", 1, bad).unwrap_err();
            assert!(
                err.contains("upcasting schema version 1 to 2"),
                "{bad}: {err}"
            );
        }
    }

    fn usd(s: &str) -> Money {
        Money::parse(s, Currency::USD).unwrap()
    }
    fn actor() -> Actor {
        Actor::parse("user:789").unwrap()
    }
    fn opened() -> AccountEvent {
        AccountEvent::AccountOpened {
            owner: "customer-1".into(),
            currency: Currency::USD,
        }
    }

    #[test]
    fn open_then_deposit_then_withdraw() {
        AggregateTest::<Account>::given_no_previous_events()
            .when(AccountCommand::Open {
                owner: "customer-1".into(),
                currency: Currency::USD,
                actor: actor(),
            })
            .then_expect_events(vec![opened()]);
        let state = AggregateTest::<Account>::given(vec![
            opened(),
            AccountEvent::FundsDeposited { amount: usd("100") },
        ])
        .when(AccountCommand::Withdraw {
            amount: usd("40.5"),
            actor: actor(),
        })
        .then_expect_events(vec![AccountEvent::FundsWithdrawn {
            amount: usd("40.50"),
        }]);
        assert_eq!(state.balance, Some(usd("59.50")));
    }

    #[test]
    fn no_overdraft() {
        AggregateTest::<Account>::given(vec![
            opened(),
            AccountEvent::FundsDeposited { amount: usd("10") },
        ])
        .when(AccountCommand::Withdraw {
            amount: usd("10.01"),
            actor: actor(),
        })
        .then_expect_error_message("insufficient funds: balance 10.00 USD, requested 10.01 USD");
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        AggregateTest::<Account>::given(vec![opened()])
            .when(AccountCommand::Deposit {
                amount: usd("0"),
                actor: actor(),
            })
            .then_expect_error(|e| e.code() == "invalid_amount" && e.refusal() == Refusal::Invalid);
        AggregateTest::<Account>::given(vec![opened()])
            .when(AccountCommand::Deposit {
                amount: usd("-5"),
                actor: actor(),
            })
            .then_expect_error(|e| e.code() == "invalid_amount");
        AggregateTest::<Account>::given(vec![opened()])
            .when(AccountCommand::Deposit {
                amount: Money::parse("5", Currency::TWD).unwrap(),
                actor: actor(),
            })
            .then_expect_error(|e| e.code() == "currency_mismatch");
        AggregateTest::<Account>::given_no_previous_events()
            .when(AccountCommand::Deposit {
                amount: usd("5"),
                actor: actor(),
            })
            .then_expect_error(|e| e.refusal() == Refusal::NotFound);
        AggregateTest::<Account>::given(vec![opened()])
            .when(AccountCommand::Open {
                owner: "x".into(),
                currency: Currency::USD,
                actor: actor(),
            })
            .then_expect_error(|e| matches!(e, AccountError::AlreadyOpen));
        AggregateTest::<Account>::given_no_previous_events()
            .when(AccountCommand::Open {
                owner: "a b".into(),
                currency: Currency::USD,
                actor: actor(),
            })
            .then_expect_error(|e| e.code() == "invalid_owner");
    }

    #[test]
    fn interest_and_corrections_move_the_balance() {
        let state = AggregateTest::<Account>::given(vec![
            opened(),
            AccountEvent::FundsDeposited { amount: usd("100") },
            AccountEvent::CorrectionApplied {
                amount: usd("-0.25"),
                reason: "interest v2".into(),
            },
        ])
        .when(AccountCommand::AccrueInterest {
            amount: usd("1.10"),
        })
        .then_expect_events(vec![AccountEvent::InterestAccrued {
            amount: usd("1.10"),
        }]);
        assert_eq!(state.balance, Some(usd("100.85")));
        assert_eq!(state.interest, Some(usd("1.10")));
    }
}
