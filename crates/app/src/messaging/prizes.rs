//! Inboxes: consumers whose business effect and dedupe record commit in one transaction.
//!
//! The seed case: an external lottery publishes "prize won" messages to the topic `prizes`; each
//! awards a cash prize by depositing into the winner's account. Kafka delivers at least once (a
//! failed ack, a rebalance or a crash before the offset commit redelivers), and the publisher may
//! send the same message twice. The handler runs the deposit with the idempotency key
//! `inbox:prizes:{event_id}`; the key is written in the same transaction as the deposit's event
//! (see `service`), so a second delivery finds it and hands out nothing.
//!
//! Message: headers `event_id` (required: the dedupe key) and value
//! `{"account_id": "...", "amount": "100.00", "currency": "USD"}` (money as a decimal string).

use eventfold_core::{Actor, StoreError};
use eventfold_domain::account::{Account, AccountCommand};
use eventfold_domain::Money;
use eventfold_kafka::{Handled, Inbound};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::service::{CommandContext, Executed, Service, ServiceError};

/// The consumer (and inbox) name of the prize handler.
pub const PRIZES: &str = "prizes";

/// The value of a "prize won" message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrizeWon {
    /// The winner's account.
    pub account_id: String,
    /// Prize amount, a decimal string.
    pub amount: String,
    /// ISO 4217 code; must be the account's currency.
    pub currency: String,
}

/// Awards the prize of one message, once per `event_id`.
///
/// Returns `Done` when the deposit was made now or before (a duplicate), `Retry` when the store
/// is unavailable, and `Poison` for a message that can never succeed (no `event_id`, a malformed
/// value, an unknown account, a currency mismatch), naming what was wrong.
pub async fn award_prize(service: &Service, message: &Inbound) -> Handled {
    let Some(event_id) = message.event_id() else {
        return Handled::Poison(format!(
            "{}/{}/{}: no event_id header (the inbox key)",
            message.topic, message.partition, message.offset
        ));
    };
    let prize: PrizeWon = match serde_json::from_slice(&message.payload) {
        Ok(p) => p,
        Err(e) => return Handled::Poison(format!("event {event_id}: value: {e}")),
    };
    let amount = match prize
        .currency
        .parse()
        .map_err(|e| format!("currency: {e}"))
        .and_then(|c| Money::parse(&prize.amount, c).map_err(|e| format!("amount: {e}")))
    {
        Ok(m) => m,
        Err(e) => return Handled::Poison(format!("event {event_id}: {e}")),
    };
    let actor = Actor::system(PRIZES);
    let mut ctx = CommandContext::new(actor.clone());
    let digest = Sha256::digest(&message.payload);
    ctx.idempotency = Some((message.inbox_key(PRIZES), hex::encode(digest)));
    ctx.causation_id = event_id.parse().ok();
    let command = AccountCommand::Deposit { amount, actor };
    let render = crate::service::version_render::<Account>(200);
    match service
        .execute::<Account>(&prize.account_id, command, &ctx, render)
        .await
    {
        Ok(Executed::Applied { .. } | Executed::Replayed(_)) => Handled::Done,
        Err(ServiceError::Store(StoreError::Unavailable(e))) => {
            Handled::Retry(format!("event store unavailable: {e}"))
        }
        Err(ServiceError::Store(StoreError::VersionConflict { .. })) => {
            Handled::Retry("account busy; trying again".into())
        }
        Err(e) => Handled::Poison(format!("event {event_id}: {e}")),
    }
}
