//! Inventory: stock of one SKU or event. Reservations are keyed by order id, so reserving or
//! releasing twice for one order is a no-op (saga steps may be retried).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use eventfold_core::Aggregate;

use crate::{validate_id, DomainError, Refusal};

/// The SKU's stock.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Inventory {
    /// Units free to reserve.
    pub available: u64,
    /// Units held per order id.
    pub reserved: BTreeMap<String, u64>,
    /// Units sold.
    pub sold: u64,
    /// Orders whose reservation was sold (so a repeated sell is a no-op).
    pub sold_orders: BTreeMap<String, u64>,
}

/// What a caller asks of a SKU's stock.
#[derive(Debug, Clone, PartialEq)]
pub enum InventoryCommand {
    /// Adds units.
    AddStock {
        /// Units, at least 1.
        quantity: u64,
    },
    /// Holds units for an order.
    Reserve {
        /// The order it is for.
        order_id: String,
        /// Units, at least 1.
        quantity: u64,
    },
    /// Returns an order's held units.
    Release {
        /// The order it is for.
        order_id: String,
    },
    /// Turns an order's held units into a sale.
    Sell {
        /// The order it is for.
        order_id: String,
    },
}

/// What happened to a SKU's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InventoryEvent {
    /// Units added.
    StockAdded {
        /// Units (at least 1).
        quantity: u64,
    },
    /// Units held for an order.
    InventoryReserved {
        /// The order it is for.
        order_id: String,
        /// Units (at least 1).
        quantity: u64,
    },
    /// An order's held units returned.
    InventoryReleased {
        /// The order it is for.
        order_id: String,
        /// Units (at least 1).
        quantity: u64,
    },
    /// An order's held units sold.
    InventorySold {
        /// The order it is for.
        order_id: String,
        /// Units (at least 1).
        quantity: u64,
    },
}

/// Why an inventory command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InventoryError {
    /// Not enough free units.
    #[error("insufficient stock: {available} available, {requested} requested")]
    InsufficientStock {
        /// Free units.
        available: u64,
        /// Units asked for.
        requested: u64,
    },
    /// The order already holds a different quantity.
    #[error("order {order_id} already holds {held} units")]
    ReservedDifferently {
        /// The order it is for.
        order_id: String,
        /// Units held.
        held: u64,
    },
    /// Sell without a reservation.
    #[error("order {0} holds no reservation")]
    NoReservation(String),
    /// A bad quantity or id.
    #[error("{0}")]
    Invalid(String),
}

impl DomainError for InventoryError {
    fn code(&self) -> &'static str {
        match self {
            Self::InsufficientStock { .. } => "insufficient_stock",
            Self::ReservedDifferently { .. } => "reservation_conflict",
            Self::NoReservation(_) => "no_reservation",
            Self::Invalid(_) => "invalid_inventory_command",
        }
    }
    fn refusal(&self) -> Refusal {
        match self {
            Self::Invalid(_) => Refusal::Invalid,
            _ => Refusal::Conflict,
        }
    }
}

fn positive(quantity: u64) -> Result<u64, InventoryError> {
    if quantity == 0 || quantity > 1_000_000_000 {
        Err(InventoryError::Invalid(
            "quantity must be 1 to 1000000000".into(),
        ))
    } else {
        Ok(quantity)
    }
}

impl Aggregate for Inventory {
    type Command = InventoryCommand;
    type Event = InventoryEvent;
    type Error = InventoryError;
    const CATEGORY: &'static str = "inventory";

    fn handle(&self, command: InventoryCommand) -> Result<Vec<InventoryEvent>, InventoryError> {
        match command {
            InventoryCommand::AddStock { quantity } => Ok(vec![InventoryEvent::StockAdded {
                quantity: positive(quantity)?,
            }]),
            InventoryCommand::Reserve { order_id, quantity } => {
                validate_id("order_id", &order_id).map_err(InventoryError::Invalid)?;
                let quantity = positive(quantity)?;
                if let Some(&held) = self
                    .reserved
                    .get(&order_id)
                    .or(self.sold_orders.get(&order_id))
                {
                    return if held == quantity {
                        Ok(vec![])
                    } else {
                        Err(InventoryError::ReservedDifferently { order_id, held })
                    };
                }
                if quantity > self.available {
                    return Err(InventoryError::InsufficientStock {
                        available: self.available,
                        requested: quantity,
                    });
                }
                Ok(vec![InventoryEvent::InventoryReserved {
                    order_id,
                    quantity,
                }])
            }
            InventoryCommand::Release { order_id } => Ok(self
                .reserved
                .get(&order_id)
                .map(|&quantity| InventoryEvent::InventoryReleased { order_id, quantity })
                .into_iter()
                .collect()),
            InventoryCommand::Sell { order_id } => {
                if self.sold_orders.contains_key(&order_id) {
                    return Ok(vec![]);
                }
                let quantity = *self
                    .reserved
                    .get(&order_id)
                    .ok_or_else(|| InventoryError::NoReservation(order_id.clone()))?;
                Ok(vec![InventoryEvent::InventorySold { order_id, quantity }])
            }
        }
    }

    fn apply(mut self, event: &InventoryEvent) -> Self {
        match event {
            InventoryEvent::StockAdded { quantity } => self.available += quantity,
            InventoryEvent::InventoryReserved { order_id, quantity } => {
                self.available -= quantity;
                self.reserved.insert(order_id.clone(), *quantity);
            }
            InventoryEvent::InventoryReleased { order_id, quantity } => {
                self.available += quantity;
                self.reserved.remove(order_id);
            }
            InventoryEvent::InventorySold { order_id, quantity } => {
                self.reserved.remove(order_id);
                self.sold += quantity;
                self.sold_orders.insert(order_id.clone(), *quantity);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventfold_core::testkit::AggregateTest;
    use InventoryEvent::*;

    fn reserve(order: &str, q: u64) -> InventoryCommand {
        InventoryCommand::Reserve {
            order_id: order.into(),
            quantity: q,
        }
    }

    #[test]
    fn reserve_sell_release() {
        let state = AggregateTest::<Inventory>::given(vec![StockAdded { quantity: 5 }])
            .when(reserve("o-1", 3))
            .then_expect_events(vec![InventoryReserved {
                order_id: "o-1".into(),
                quantity: 3,
            }]);
        assert_eq!(state.available, 2);
        AggregateTest::<Inventory>::given(vec![
            StockAdded { quantity: 5 },
            InventoryReserved {
                order_id: "o-1".into(),
                quantity: 3,
            },
        ])
        .when(InventoryCommand::Sell {
            order_id: "o-1".into(),
        })
        .then_expect_events(vec![InventorySold {
            order_id: "o-1".into(),
            quantity: 3,
        }]);
        let state = AggregateTest::<Inventory>::given(vec![
            StockAdded { quantity: 5 },
            InventoryReserved {
                order_id: "o-1".into(),
                quantity: 3,
            },
        ])
        .when(InventoryCommand::Release {
            order_id: "o-1".into(),
        })
        .then_expect_events(vec![InventoryReleased {
            order_id: "o-1".into(),
            quantity: 3,
        }]);
        assert_eq!(state.available, 5);
    }

    #[test]
    fn never_oversells() {
        AggregateTest::<Inventory>::given(vec![
            StockAdded { quantity: 2 },
            InventoryReserved {
                order_id: "o-1".into(),
                quantity: 2,
            },
        ])
        .when(reserve("o-2", 1))
        .then_expect_error_message("insufficient stock: 0 available, 1 requested");
    }

    #[test]
    fn retried_steps_are_no_ops() {
        let held = vec![
            StockAdded { quantity: 5 },
            InventoryReserved {
                order_id: "o-1".into(),
                quantity: 3,
            },
        ];
        AggregateTest::<Inventory>::given(held.clone())
            .when(reserve("o-1", 3))
            .then_expect_events(vec![]);
        AggregateTest::<Inventory>::given(held.clone())
            .when(reserve("o-1", 2))
            .then_expect_error(|e| e.code() == "reservation_conflict");
        AggregateTest::<Inventory>::given(vec![StockAdded { quantity: 5 }])
            .when(InventoryCommand::Release {
                order_id: "o-1".into(),
            })
            .then_expect_events(vec![]);
        let mut sold = held;
        sold.push(InventorySold {
            order_id: "o-1".into(),
            quantity: 3,
        });
        AggregateTest::<Inventory>::given(sold.clone())
            .when(InventoryCommand::Sell {
                order_id: "o-1".into(),
            })
            .then_expect_events(vec![]);
        AggregateTest::<Inventory>::given(sold)
            .when(reserve("o-1", 3))
            .then_expect_events(vec![]);
        AggregateTest::<Inventory>::given_no_previous_events()
            .when(InventoryCommand::AddStock { quantity: 0 })
            .then_expect_error(|e| e.refusal() == Refusal::Invalid);
    }
}
