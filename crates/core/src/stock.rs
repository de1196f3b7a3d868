//! The flash-sale stock ledger: stock per SKU, deducted per purchase attempt with the
//! check, the deduction and the buyer's tally in one atomic step, so a crowd can never oversell
//! and no buyer can go over the per-buyer limit. Implemented in Redis by one Lua script per call
//! (`eventfold-redis`) and in-process by [`MemoryStock`] (the embedded default): both keep the
//! semantics below, which the shared tests check.
//!
//! Every take is recorded under its attempt id (the buyer's idempotency key), so a duplicated
//! click returns the first outcome and deducts nothing more. A take starts **pending**; the
//! service confirms it once the order's events are in the event store, or gives it back (the
//! order failed, was cancelled, or was never paid). A pending take that stays pending (the
//! process died between the ledger and the store) is settled by reconciliation: confirmed when
//! the order exists, given back when it does not. So the ledger and the store never disagree for
//! longer than the reconciliation interval, and stock is never lost: remaining + held by buyers
//! = initial stock, always.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

/// Why a ledger call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StockError {
    /// The SKU was never opened for sale.
    #[error("unknown sku {0}")]
    UnknownSku(String),
    /// A quantity of 0, or a sku, buyer or attempt id that is empty or over 200 bytes.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The ledger's backend failed or cannot be reached; retrying may succeed.
    #[error("stock ledger unavailable: {0}")]
    Unavailable(String),
}

/// The state of one take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeState {
    /// Deducted; the order is not confirmed yet.
    Pending,
    /// The order is in the event store.
    Confirmed,
    /// The stock went back (order failed, cancelled or unpaid).
    Returned,
}

/// One recorded take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    /// Attempt id (idempotency key).
    pub attempt: String,
    /// The buyer the units were taken for.
    pub buyer: String,
    /// Units the take holds.
    pub quantity: u64,
    /// Where it stands.
    pub state: TakeState,
    /// When it was taken, ms since the Unix epoch (UTC).
    pub taken_at_ms: u64,
}

/// What [`StockLedger::take`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeOutcome {
    /// Deducted now (pending); `remaining` units are left.
    Taken {
        /// Units left after this take.
        remaining: u64,
    },
    /// This attempt id was seen before: its first outcome, nothing deducted now.
    Duplicate(Take),
    /// Not enough stock left (`remaining` < the quantity asked).
    SoldOut {
        /// Units left.
        remaining: u64,
    },
    /// The buyer would hold more than the per-buyer limit.
    OverLimit {
        /// Units the buyer holds now.
        held: u64,
        /// The limit.
        limit: u64,
    },
}

/// Stock levels of one SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockLevels {
    /// The stock the sale opened with.
    pub initial: u64,
    /// Units not taken.
    pub remaining: u64,
    /// Units held by buyers (pending or confirmed takes).
    pub held: u64,
}

/// The stock ledger port (see the module docs).
#[async_trait]
pub trait StockLedger: Send + Sync {
    /// Opens `sku` for sale with `stock` units and at most `per_buyer_limit` per buyer; opening an
    /// open SKU again changes nothing (returns false).
    ///
    /// # Errors
    /// [`StockError::Invalid`], [`StockError::Unavailable`].
    async fn open(&self, sku: &str, stock: u64, per_buyer_limit: u64) -> Result<bool, StockError>;

    /// Takes `quantity` units of `sku` for `buyer` under `attempt`, atomically: the attempt is
    /// looked up, the buyer's limit and the stock checked, the stock deducted and the take
    /// recorded (pending, at `now_ms`), or nothing at all.
    ///
    /// # Errors
    /// [`StockError::UnknownSku`], [`StockError::Invalid`], [`StockError::Unavailable`].
    async fn take(
        &self,
        sku: &str,
        buyer: &str,
        quantity: u64,
        attempt: &str,
        now_ms: u64,
    ) -> Result<TakeOutcome, StockError>;

    /// Marks a pending take confirmed; returns its state after the call (`None`: no such
    /// attempt). A returned take stays returned.
    ///
    /// # Errors
    /// [`StockError::Unavailable`].
    async fn confirm(&self, sku: &str, attempt: &str) -> Result<Option<TakeState>, StockError>;

    /// Gives a take's units back to the stock and the buyer's tally, once: true when this call
    /// returned them, false when they were returned before or there is no such attempt.
    ///
    /// # Errors
    /// [`StockError::Unavailable`].
    async fn give_back(&self, sku: &str, attempt: &str) -> Result<bool, StockError>;

    /// Takes still pending that were taken at or before `taken_before_ms` (for reconciliation).
    ///
    /// # Errors
    /// [`StockError::Unavailable`].
    async fn pending(&self, sku: &str, taken_before_ms: u64) -> Result<Vec<Take>, StockError>;

    /// The SKU's levels.
    ///
    /// # Errors
    /// [`StockError::UnknownSku`], [`StockError::Unavailable`].
    async fn levels(&self, sku: &str) -> Result<StockLevels, StockError>;

    /// Whether the ledger answers now (for readiness checks); an in-process ledger always does.
    ///
    /// # Errors
    /// [`StockError::Unavailable`] with the reason.
    async fn ping(&self) -> Result<(), StockError> {
        Ok(())
    }
}

/// Checks what every ledger refuses to open: a SKU that is empty or over 200 bytes, a per-buyer
/// limit of 0.
///
/// # Errors
/// [`StockError::Invalid`] naming the field.
pub fn validate_open(sku: &str, per_buyer_limit: u64) -> Result<(), StockError> {
    validate_take(sku, "-", 1, "-")?;
    if per_buyer_limit == 0 {
        return Err(StockError::Invalid(
            "per_buyer_limit must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Checks the names and quantity every ledger refuses.
///
/// # Errors
/// [`StockError::Invalid`] naming the field.
pub fn validate_take(
    sku: &str,
    buyer: &str,
    quantity: u64,
    attempt: &str,
) -> Result<(), StockError> {
    for (field, value) in [("sku", sku), ("buyer", buyer), ("attempt", attempt)] {
        if value.is_empty() || value.len() > 200 {
            return Err(StockError::Invalid(format!(
                "{field} must be 1 to 200 bytes, got {}",
                value.len()
            )));
        }
    }
    if quantity == 0 {
        return Err(StockError::Invalid("quantity must be at least 1".into()));
    }
    Ok(())
}

#[derive(Default)]
struct Sku {
    initial: u64,
    remaining: u64,
    limit: u64,
    held: HashMap<String, u64>,
    takes: HashMap<String, Take>,
}

/// The in-process ledger: the embedded default when no Redis is configured. One mutex per
/// process: every call is atomic, as the Redis scripts are.
#[derive(Default)]
pub struct MemoryStock {
    skus: Mutex<HashMap<String, Sku>>,
}

impl MemoryStock {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Sku>) -> T) -> Result<T, StockError> {
        let mut skus = self
            .skus
            .lock()
            .map_err(|_| StockError::Unavailable("ledger lock poisoned".into()))?;
        Ok(f(&mut skus))
    }
}

#[async_trait]
impl StockLedger for MemoryStock {
    async fn open(&self, sku: &str, stock: u64, per_buyer_limit: u64) -> Result<bool, StockError> {
        validate_open(sku, per_buyer_limit)?;
        self.with(|skus| {
            if skus.contains_key(sku) {
                return false;
            }
            skus.insert(
                sku.to_owned(),
                Sku {
                    initial: stock,
                    remaining: stock,
                    limit: per_buyer_limit,
                    ..Sku::default()
                },
            );
            true
        })
    }

    async fn take(
        &self,
        sku: &str,
        buyer: &str,
        quantity: u64,
        attempt: &str,
        now_ms: u64,
    ) -> Result<TakeOutcome, StockError> {
        validate_take(sku, buyer, quantity, attempt)?;
        self.with(|skus| {
            let s = skus
                .get_mut(sku)
                .ok_or_else(|| StockError::UnknownSku(sku.to_owned()))?;
            if let Some(t) = s.takes.get(attempt) {
                return Ok(TakeOutcome::Duplicate(t.clone()));
            }
            let held = s.held.get(buyer).copied().unwrap_or(0);
            if held + quantity > s.limit {
                return Ok(TakeOutcome::OverLimit {
                    held,
                    limit: s.limit,
                });
            }
            if s.remaining < quantity {
                return Ok(TakeOutcome::SoldOut {
                    remaining: s.remaining,
                });
            }
            s.remaining -= quantity;
            *s.held.entry(buyer.to_owned()).or_default() += quantity;
            s.takes.insert(
                attempt.to_owned(),
                Take {
                    attempt: attempt.to_owned(),
                    buyer: buyer.to_owned(),
                    quantity,
                    state: TakeState::Pending,
                    taken_at_ms: now_ms,
                },
            );
            Ok(TakeOutcome::Taken {
                remaining: s.remaining,
            })
        })?
    }

    async fn confirm(&self, sku: &str, attempt: &str) -> Result<Option<TakeState>, StockError> {
        self.with(|skus| {
            let t = skus.get_mut(sku)?.takes.get_mut(attempt)?;
            if t.state == TakeState::Pending {
                t.state = TakeState::Confirmed;
            }
            Some(t.state)
        })
    }

    async fn give_back(&self, sku: &str, attempt: &str) -> Result<bool, StockError> {
        self.with(|skus| {
            let Some(s) = skus.get_mut(sku) else {
                return false;
            };
            let Some(t) = s.takes.get_mut(attempt) else {
                return false;
            };
            if t.state == TakeState::Returned {
                return false;
            }
            t.state = TakeState::Returned;
            s.remaining += t.quantity;
            if let Some(h) = s.held.get_mut(&t.buyer) {
                *h = h.saturating_sub(t.quantity);
            }
            true
        })
    }

    async fn pending(&self, sku: &str, taken_before_ms: u64) -> Result<Vec<Take>, StockError> {
        self.with(|skus| {
            skus.get(sku)
                .map(|s| {
                    s.takes
                        .values()
                        .filter(|t| {
                            t.state == TakeState::Pending && t.taken_at_ms <= taken_before_ms
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    async fn levels(&self, sku: &str) -> Result<StockLevels, StockError> {
        self.with(|skus| {
            skus.get(sku)
                .map(|s| StockLevels {
                    initial: s.initial,
                    remaining: s.remaining,
                    held: s.held.values().sum(),
                })
                .ok_or_else(|| StockError::UnknownSku(sku.to_owned()))
        })?
    }
}
