//! Reporting by business day: when a sale's day is reported, which sales arrive late, and the
//! correction notices that make every late effect visible.
//!
//! Three clocks meet here (seed `001`, cases #3 and #5):
//! - **event time**: when the sale happened, given by its source (`occurred_at`, an upload line);
//! - **ingest time**: when eventfold stored the event (assigned by the store);
//! - **business date**: the day of the store a sale belongs to: the date of its event time in the
//!   store's calendar ([`BusinessCalendar`], UTC by default).
//!
//! A business day D is **reported** at its cutoff: D+1 at 02:00 by default (the stores' uploads
//! of the night come in before it). A sale or refund of day D ingested after that cutoff is
//! **late**: it changes a figure somebody may already have read, so the daily view counts it in
//! `late_total` and marks the day `adjusted`, and a [`SalesCorrectionNoticed`] event records the
//! change with the day's value before and after. Events recorded as history by a backfill (see
//! `EventMetadata::backfill`) are never late.
//!
//! [`SalesCorrectionNoticed`]: SalesCorrectionEvent::SalesCorrectionNoticed

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use eventfold_core::aggregate::decode_recorded;
use eventfold_core::{Aggregate, Projection, RecordedEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::Currency;
use crate::order::{Order, OrderEvent};
use crate::{DomainError, Refusal};

/// Name of the correction notice read model.
pub const SALES_CORRECTIONS: &str = "sales_corrections";

/// How far ahead of the receiving clock a source's event time may be: 5 minutes.
pub const MAX_CLOCK_SKEW: TimeDelta = TimeDelta::minutes(5);

/// Reads a source's event time (`field` names it in the error): RFC 3339, not before 1970, at
/// most [`MAX_CLOCK_SKEW`] ahead of `now` (UTC). Seed `001` case #3: the event time is required
/// from the source, and a clock far ahead is a broken source, not a sale from the future.
///
/// # Errors
/// A message naming `field`, the text and what is wrong.
pub fn parse_event_time(
    field: &str,
    text: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, String> {
    let t = DateTime::parse_from_rfc3339(text)
        .map_err(|e| {
            format!("{field} {text:?} is not an RFC 3339 time such as 1997-03-01T10:00:00Z: {e}")
        })?
        .with_timezone(&Utc);
    if t < DateTime::UNIX_EPOCH {
        return Err(format!("{field} {text} is before 1970"));
    }
    if t > now + MAX_CLOCK_SKEW {
        return Err(format!(
            "{field} {text} is in the future (more than {} minutes ahead of the server's clock)",
            MAX_CLOCK_SKEW.num_minutes()
        ));
    }
    Ok(t)
}

/// How a store's days are reported: days in UTC, each reported `cutoff` after it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusinessCalendar {
    /// Time after the end of a business day (its midnight) at which the day is reported; a sale
    /// of that day ingested later is late. Default: 2 hours (D+1 02:00).
    pub cutoff: TimeDelta,
}

impl Default for BusinessCalendar {
    fn default() -> Self {
        Self {
            cutoff: TimeDelta::hours(2),
        }
    }
}

impl BusinessCalendar {
    /// The business date of an instant: its UTC date.
    pub fn business_date(&self, at: DateTime<Utc>) -> NaiveDate {
        at.date_naive()
    }

    /// When business day `date` is reported: the midnight that ends it plus the cutoff.
    pub fn reported_at(&self, date: NaiveDate) -> DateTime<Utc> {
        let end = date
            .succ_opt()
            .unwrap_or(date)
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc();
        end.checked_add_signed(self.cutoff)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// How many whole seconds after its business day's cutoff `event` was ingested, or `None`
    /// when it is on time (ingested at or before the cutoff) or recorded as history by a
    /// backfill.
    pub fn lateness_seconds(&self, event: &RecordedEvent) -> Option<i64> {
        if event.metadata.backfill {
            return None;
        }
        let reported = self.reported_at(self.business_date(event.event_time));
        (event.ingest_time > reported).then(|| (event.ingest_time - reported).num_seconds())
    }
}

/// Whether a sales effect is a sale or a refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleKind {
    /// An order was paid: +amount, +1 order.
    Sale,
    /// A paid order was refunded or cancelled with a refund: -amount, +1 refund.
    Refund,
}

/// What one event does to a store's sales: the figures every sales view adds up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleEffect {
    /// Store id (unscoped; the event's stream carries the tenant).
    pub store: String,
    /// Currency of the amount.
    pub currency: Currency,
    /// Signed amount: positive for a sale, negative for a refund.
    pub amount: Decimal,
    /// Sale or refund.
    pub kind: SaleKind,
}

impl SaleEffect {
    /// Orders this effect adds: 1 for a sale, 0 for a refund.
    pub fn orders(&self) -> u64 {
        u64::from(self.kind == SaleKind::Sale)
    }

    /// Refunds this effect adds: 1 for a refund, 0 for a sale.
    pub fn refunds(&self) -> u64 {
        u64::from(self.kind == SaleKind::Refund)
    }
}

/// The sales effect of an event: `OrderPaid`, a refunding `OrderCancelled` and `OrderRefunded`
/// of an order stream; `None` for every other event.
///
/// # Errors
/// The event is of an order stream and type but does not decode (a poison event).
pub fn sale_effect(event: &RecordedEvent) -> Result<Option<SaleEffect>, String> {
    if Order::id_of_stream(&event.stream_id).is_none()
        || !matches!(
            event.event_type.as_str(),
            "OrderPaid" | "OrderCancelled" | "OrderRefunded"
        )
    {
        return Ok(None);
    }
    let effect = match decode_recorded::<Order>(event).map_err(|e| e.to_string())? {
        OrderEvent::OrderPaid {
            amount, store_id, ..
        } => SaleEffect {
            store: store_id,
            currency: amount.currency,
            amount: amount.amount,
            kind: SaleKind::Sale,
        },
        OrderEvent::OrderCancelled {
            refund: Some(amount),
            store_id,
            ..
        }
        | OrderEvent::OrderRefunded {
            amount, store_id, ..
        } => SaleEffect {
            store: store_id,
            currency: amount.currency,
            amount: -amount.amount,
            kind: SaleKind::Refund,
        },
        _ => return Ok(None),
    };
    Ok(Some(effect))
}

/// Why a business day's figure changed after it was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CorrectionReason {
    /// A sale of the day arrived after the day's cutoff.
    LateArrival,
    /// A refund of the day arrived after the day's cutoff.
    Refund,
    /// A correction of the day's figures (booked by finance).
    Correction,
    /// A late posting held as an exception was approved and booked.
    ExceptionApproved,
}

impl CorrectionReason {
    /// The reason's name, e.g. `late-arrival`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LateArrival => "late-arrival",
            Self::Refund => "refund",
            Self::Correction => "correction",
            Self::ExceptionApproved => "exception-approved",
        }
    }
}

/// One late effect on a business day's sales, as the `sales_corrections` view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalesCorrectionNotice {
    /// Business date the effect belongs to.
    pub date: NaiveDate,
    /// Store id.
    pub store: String,
    /// ISO 4217 code of the amounts.
    pub currency: Currency,
    /// What the effect added to the day's total (negative for a refund), decimal.
    pub delta: Decimal,
    /// What it added to the day's paid orders (1 for a sale, 0 for a refund).
    pub orders_delta: i64,
    /// The day's total before the effect.
    pub before: Decimal,
    /// The day's total after it.
    pub after: Decimal,
    /// Why the figure changed.
    pub reason: CorrectionReason,
    /// The event that changed it.
    pub cause_event_id: Uuid,
    /// The stream of that event (scoped to its tenant).
    pub cause_stream: String,
    /// When that event was ingested (UTC).
    pub ingested_at: DateTime<Utc>,
    /// Seconds between the day's cutoff and that ingest (for an approved exception: between
    /// the original day's cutoff and the approval).
    pub lateness_seconds: i64,
    /// The day lies in a soft-closed period of the store (see [`crate::periods`]).
    #[serde(default)]
    pub soft_closed: bool,
    /// For an approved exception: the business date of the held posting, booked on `date`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_date: Option<NaiveDate>,
}

/// A correction notice's stream: one per cause (`salescorrection-{cause event id}`, scoped to
/// the cause's tenant), so a notice is appended once however often its cause is seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SalesCorrection {
    /// Set once noticed.
    pub notice: Option<SalesCorrectionNotice>,
}

/// What a caller asks of a correction notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SalesCorrectionCommand {
    /// Records the notice (once).
    Notice(SalesCorrectionNotice),
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SalesCorrectionEvent {
    /// A business day's figure changed after it was reported.
    SalesCorrectionNoticed(SalesCorrectionNotice),
}

/// Why a notice was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SalesCorrectionError {
    /// This cause has its notice already.
    #[error("the correction of this event was noticed already")]
    Noticed,
}

impl DomainError for SalesCorrectionError {
    fn code(&self) -> &'static str {
        "correction_noticed"
    }
    fn refusal(&self) -> Refusal {
        Refusal::Conflict
    }
}

impl Aggregate for SalesCorrection {
    type Command = SalesCorrectionCommand;
    type Event = SalesCorrectionEvent;
    type Error = SalesCorrectionError;
    const CATEGORY: &'static str = "salescorrection";

    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error> {
        let SalesCorrectionCommand::Notice(notice) = command;
        if self.notice.is_some() {
            return Err(SalesCorrectionError::Noticed);
        }
        Ok(vec![SalesCorrectionEvent::SalesCorrectionNoticed(notice)])
    }

    fn apply(mut self, event: &Self::Event) -> Self {
        let SalesCorrectionEvent::SalesCorrectionNoticed(notice) = event;
        self.notice = Some(notice.clone());
        self
    }
}

/// The key of a notice in `sales_corrections` (the projection scopes it to the tenant):
/// `store|YYYY-MM-DD|cause event id`, so one store's notices over a range of days are one scan.
pub fn correction_key(store: &str, date: NaiveDate, cause: Uuid) -> String {
    format!("{store}|{}|{cause}", date.format("%Y-%m-%d"))
}

/// The `sales_corrections` read model: every [`SalesCorrectionNotice`] by
/// [`correction_key`].
pub struct SalesCorrectionsProjection;

impl Projection for SalesCorrectionsProjection {
    type Doc = SalesCorrectionNotice;
    type Input = SalesCorrectionNotice;

    fn name(&self) -> &'static str {
        SALES_CORRECTIONS
    }

    fn select(&self, event: &RecordedEvent) -> Result<Option<(String, Self::Input)>, String> {
        if SalesCorrection::id_of_stream(&event.stream_id).is_none() {
            return Ok(None);
        }
        let SalesCorrectionEvent::SalesCorrectionNoticed(notice) =
            decode_recorded::<SalesCorrection>(event).map_err(|e| e.to_string())?;
        let tenant = eventfold_core::tenant::of(&event.stream_id);
        let key = correction_key(&notice.store, notice.date, notice.cause_event_id);
        Ok(Some((eventfold_core::tenant::scope(tenant, &key), notice)))
    }

    fn apply(
        &self,
        _doc: Option<Self::Doc>,
        notice: Self::Input,
        _event: &RecordedEvent,
    ) -> Option<Self::Doc> {
        Some(notice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_day_is_reported_at_two_the_next_morning() {
        let cal = BusinessCalendar::default();
        let date = cal.business_date(at("1997-03-01T23:59:59Z"));
        assert_eq!(date.to_string(), "1997-03-01");
        assert_eq!(cal.reported_at(date), at("1997-03-02T02:00:00Z"));
    }

    #[test]
    fn lateness_counts_from_the_cutoff_and_never_for_history() {
        use eventfold_core::{Actor, EventMetadata};
        let cal = BusinessCalendar::default();
        let mut event = RecordedEvent {
            global_position: 1,
            stream_id: "order-1".into(),
            stream_version: 1,
            event_id: Uuid::now_v7(),
            event_type: "OrderPaid".into(),
            schema_version: 1,
            event_time: at("2026-11-20T18:00:00Z"),
            ingest_time: at("2026-11-21T02:00:00Z"),
            metadata: EventMetadata::by(Actor::parse("user:1").unwrap()),
            payload: "{}".into(),
        };
        assert_eq!(
            cal.lateness_seconds(&event),
            None,
            "at the cutoff is on time"
        );
        event.ingest_time = at("2026-11-21T02:00:30Z");
        assert_eq!(cal.lateness_seconds(&event), Some(30));
        event.metadata.backfill = true;
        assert_eq!(cal.lateness_seconds(&event), None);
    }
}
