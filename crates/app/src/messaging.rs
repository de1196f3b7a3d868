//! The handlers behind eventfold's Kafka consumers (`eventfold-kafka` runs the consumers; these
//! decide what a message does).
//!
//! - [`prizes`]: the "prize won" inbox: one deposit per message id.
//! - [`notifications`]: the notification sink: message decoding and the batch writes into the
//!   store's `notifications` table.
//! - [`order_notifications`]: the exactly-once transform of order events into customer
//!   notifications.

pub mod notifications;
pub mod order_notifications;
pub mod prizes;
