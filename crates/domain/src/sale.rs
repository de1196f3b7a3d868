//! A flash sale's definition: what is sold, how much, at what price, at most how many per
//! buyer. Stream `sale-{sku}`. The stock itself lives in the stock ledger (Redis or in-process),
//! which is opened from this definition and, in-process, rebuilt from it and the sale's orders.

use serde::{Deserialize, Serialize};

use eventfold_core::{Actor, Aggregate};

use crate::money::Money;
use crate::{DomainError, Refusal};

/// The sale's definition (`None` until opened).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sale {
    /// Set when opened.
    pub opened: Option<SaleTerms>,
}

/// What a sale sells, on what terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleTerms {
    /// Units for sale, at least 1.
    pub stock: u64,
    /// Units one buyer may hold at most, at least 1.
    pub per_buyer_limit: u64,
    /// Price of one unit, zero or more.
    pub unit_price: Money,
    /// The store id the sale's orders carry.
    pub store_id: String,
}

/// What a caller asks of a sale.
#[derive(Debug, Clone, PartialEq)]
pub enum SaleCommand {
    /// Opens the sale; opening it again on the same terms is a no-op.
    Open {
        /// The terms.
        terms: SaleTerms,
        /// Who acts (recorded as the event's actor).
        actor: Actor,
    },
}

/// What happened to a sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaleEvent {
    /// The sale is open on these terms.
    SaleOpened {
        /// The terms.
        terms: SaleTerms,
        /// Who acts (recorded as the event's actor).
        actor: Actor,
    },
}

/// Why a sale command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaleError {
    /// Opened before on other terms.
    #[error("the sale is already open on other terms")]
    OpenOnOtherTerms,
    /// Bad terms; the message names the field.
    #[error("{0}")]
    Invalid(String),
}

impl DomainError for SaleError {
    fn code(&self) -> &'static str {
        match self {
            Self::OpenOnOtherTerms => "sale_open_on_other_terms",
            Self::Invalid(_) => "invalid_sale",
        }
    }
    fn refusal(&self) -> Refusal {
        match self {
            Self::OpenOnOtherTerms => Refusal::Conflict,
            Self::Invalid(_) => Refusal::Invalid,
        }
    }
}

impl Aggregate for Sale {
    type Command = SaleCommand;
    type Event = SaleEvent;
    type Error = SaleError;
    const CATEGORY: &'static str = "sale";

    fn handle(&self, command: SaleCommand) -> Result<Vec<SaleEvent>, SaleError> {
        match command {
            SaleCommand::Open { terms, actor } => {
                if terms.stock == 0 || terms.per_buyer_limit == 0 {
                    return Err(SaleError::Invalid(
                        "stock and per_buyer_limit must be at least 1".into(),
                    ));
                }
                if terms.unit_price.amount.is_sign_negative() {
                    return Err(SaleError::Invalid("unit_price must not be negative".into()));
                }
                if terms.store_id.is_empty() || terms.store_id.len() > 100 {
                    return Err(SaleError::Invalid(
                        "store_id must be 1 to 100 characters".into(),
                    ));
                }
                match &self.opened {
                    Some(open) if *open == terms => Ok(vec![]),
                    Some(_) => Err(SaleError::OpenOnOtherTerms),
                    None => Ok(vec![SaleEvent::SaleOpened { terms, actor }]),
                }
            }
        }
    }

    fn apply(mut self, event: &SaleEvent) -> Self {
        match event {
            SaleEvent::SaleOpened { terms, .. } => self.opened = Some(terms.clone()),
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Currency;

    fn terms(stock: u64) -> SaleTerms {
        SaleTerms {
            stock,
            per_buyer_limit: 2,
            unit_price: Money::parse("10.00", Currency::USD).unwrap(),
            store_id: "flash".into(),
        }
    }

    #[test]
    fn opens_once_and_refuses_other_terms() {
        let actor = Actor::system("test");
        let open = |t| SaleCommand::Open {
            terms: t,
            actor: actor.clone(),
        };
        let events = Sale::default().handle(open(terms(5))).unwrap();
        assert_eq!(events.len(), 1);
        let sale = Sale::default().apply(&events[0]);
        assert_eq!(sale.handle(open(terms(5))).unwrap(), vec![]);
        assert_eq!(
            sale.handle(open(terms(6))),
            Err(SaleError::OpenOnOtherTerms)
        );
        assert!(matches!(
            Sale::default().handle(open(terms(0))),
            Err(SaleError::Invalid(m)) if m.contains("stock")
        ));
    }
}
