//! eventfold-domain: the shop domain, pure and synchronous.
//!
//! - [`money`]: decimal [`Money`] with an ISO 4217 [`Currency`].
//! - [`account`]: a customer ledger (no overdraft).
//! - [`interest`]: interest on daily balances by algorithm version (v1, v2), for corrections.
//! - [`order`]: the order state machine PENDING -> PAID -> CONFIRMED -> SHIPPED -> COMPLETED, with
//!   CANCELLED and REFUNDED; every transition carries its actor and reason.
//! - [`inventory`]: stock per SKU or event (reserve, release, sell).
//! - [`payment`]: authorize, capture, refund, fail.
//! - [`payment_saga`]: the payment saga's state and the orchestrator's decision.
//! - [`projections`]: order summary, balance by account, daily sales by store (event time),
//!   real-time sales (ingest time).
//! - [`windows`]: tumbling and hopping windows by event time with a grace period (pure).
//! - [`periods`]: period close per store and the exception queue of held postings.
//! - [`reporting`]: business days and their cutoff, late sales, correction notices.
//!
//! Nothing here does I/O or reads a clock: commands carry the time and actor they need.

pub mod account;
pub mod identity;
pub mod interest;
pub mod inventory;
pub mod money;
pub mod order;
pub mod payment;
pub mod payment_saga;
pub mod periods;
pub mod projection_versions;
pub mod projections;
pub mod reporting;
pub mod sale;
pub mod windows;

pub use money::{Currency, Money, MoneyError};

/// Reads a duration written as a whole number and a unit (`72h`, `90m`): its seconds, with
/// `units` giving each unit letter's seconds; `None` when the text is not digits then one of
/// the units, or overflows.
pub fn parse_whole_duration(text: &str, units: &[(&str, i64)]) -> Option<i64> {
    let (n, unit) = text.split_at(text.len().saturating_sub(1));
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds = units.iter().find(|(u, _)| *u == unit)?.1;
    n.parse::<i64>().ok()?.checked_mul(seconds)
}

/// How the caller should see a domain refusal: all are the caller's doing, never a server fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The aggregate does not exist (HTTP 404).
    NotFound,
    /// The aggregate's state forbids it: an illegal transition, insufficient funds (HTTP 409).
    Conflict,
    /// The command's values are unacceptable: a bad amount or currency (HTTP 422).
    Invalid,
}

/// A domain error with a stable machine-readable code.
pub trait DomainError: std::error::Error {
    /// Stable code, e.g. `insufficient_funds`.
    fn code(&self) -> &'static str;
    /// How the refusal maps to the caller.
    fn refusal(&self) -> Refusal;
}

/// Checks an aggregate id: 1 to 100 characters of `[A-Za-z0-9._-]`.
///
/// # Errors
/// A message naming the field and what is wrong.
pub fn validate_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 100 {
        return Err(format!("{field} must be 1 to 100 characters"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "{field} {id:?} may only hold letters, digits and . _ -"
        ));
    }
    Ok(())
}

/// Checks an id scoped to its tenant (`{tenant}/{id}` or an unscoped id: see
/// `eventfold_core::tenant`): both parts as [`validate_id`].
///
/// # Errors
/// A message naming `field` and what is wrong.
pub fn validate_scoped_id(field: &str, scoped: &str) -> Result<(), String> {
    match scoped.split_once(eventfold_core::tenant::SEPARATOR) {
        Some((tenant, id)) => {
            validate_id(&format!("{field} (tenant)"), tenant)?;
            validate_id(field, id)
        }
        None => validate_id(field, scoped),
    }
}

/// Checks a free-text reason: at most 500 characters, no control characters.
///
/// # Errors
/// A message naming what is wrong.
pub fn validate_reason(reason: &str) -> Result<(), String> {
    if reason.chars().count() > 500 {
        return Err("reason must be at most 500 characters".into());
    }
    if reason.chars().any(char::is_control) {
        return Err("reason must not hold control characters".into());
    }
    Ok(())
}
