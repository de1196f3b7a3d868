//! The shop's workflows over the service: what happens between commands, not inside one.
//!
//! - [`flash_sale`]: the flash-sale purchase path (stock ledger take, then the order) and its
//!   reconciliation, and stock returned when a sale order is cancelled.
//! - [`deadlines`]: the unpaid-order timeout, a durable timer over a due-time index.
//! - [`payments`]: the payment provider port the payment saga calls, its HTTP client, and the
//!   signature scheme of the provider's callbacks.

pub mod deadlines;
pub mod flash_sale;
pub mod payments;
