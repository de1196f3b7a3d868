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

/// The default cutoff: a business day is reported 2 hours after it ends (D+1 02:00 local).
pub const DEFAULT_CUTOFF_MINUTES: i64 = 120;

/// The latest cutoff a calendar may have: 7 days after the day ends.
pub const MAX_CUTOFF_MINUTES: i64 = 7 * 24 * 60;

/// How a store's days are reported: business days in the store's time zone (an IANA name such
/// as `Europe/Berlin`; default `UTC`), each reported `cutoff_minutes` after the local midnight
/// that ends it (default 120: D+1 02:00 local, when the night's store uploads are in). The
/// cutoff is a duration, so on a night the clocks change, 120 minutes after midnight is 01:00 or
/// 03:00 on the wall clock.
///
/// An order is booked in the calendar its store had when it was placed: `OrderCreated` records
/// it and every sales event of the order carries it (see [`sale_effect`]), so a business date is
/// a fact of the log, the same for every reader and every replay, and a store that changes its
/// calendar changes it for orders placed afterwards only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusinessCalendar {
    /// The store's time zone.
    pub zone: chrono_tz::Tz,
    /// Minutes after the end of a business day (its local midnight) at which the day is
    /// reported; a sale of that day ingested later is late.
    pub cutoff_minutes: i64,
}

impl Default for BusinessCalendar {
    fn default() -> Self {
        Self {
            zone: chrono_tz::Tz::UTC,
            cutoff_minutes: DEFAULT_CUTOFF_MINUTES,
        }
    }
}

impl BusinessCalendar {
    /// A calendar of time zone `zone` (an IANA name) reporting each day `cutoff_minutes` after
    /// it ends.
    ///
    /// # Errors
    /// A message naming the zone when it is not an IANA time zone, or the cutoff when it lies
    /// outside 0 to [`MAX_CUTOFF_MINUTES`].
    pub fn new(zone: &str, cutoff_minutes: i64) -> Result<Self, String> {
        let zone: chrono_tz::Tz = zone.parse().map_err(|_| {
            format!("zone {zone:?} is not an IANA time zone such as Europe/Berlin or UTC")
        })?;
        if !(0..=MAX_CUTOFF_MINUTES).contains(&cutoff_minutes) {
            return Err(format!(
                "cutoff must be 0 to {MAX_CUTOFF_MINUTES} minutes after the day ends, got {cutoff_minutes}"
            ));
        }
        Ok(Self {
            zone,
            cutoff_minutes,
        })
    }

    /// Reads a cutoff such as `2h`, `90m` or `1d` (a whole number and a unit: `m` minutes, `h`
    /// hours, `d` days; `0m` reports a day at its end): minutes, at most
    /// [`MAX_CUTOFF_MINUTES`].
    ///
    /// # Errors
    /// A message naming the text and what is wrong.
    pub fn parse_cutoff(text: &str) -> Result<i64, String> {
        crate::parse_whole_duration(text, &[("m", 60), ("h", 3600), ("d", 86_400)])
            .map(|seconds| seconds / 60)
            .filter(|m| *m <= MAX_CUTOFF_MINUTES)
            .ok_or_else(|| {
                format!("cutoff {text:?} is not a whole number of minutes, hours or days such as 2h, 90m or 1d (at most 7 days)")
            })
    }

    /// The time after a day's end at which it is reported.
    pub fn cutoff(&self) -> TimeDelta {
        TimeDelta::minutes(self.cutoff_minutes)
    }

    /// The business date of an instant: its date in the store's time zone.
    pub fn business_date(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.zone).date_naive()
    }

    /// The instant business day `date` starts: its local midnight (the first instant of the
    /// day where a clock change skips midnight).
    pub fn day_starts_at(&self, date: NaiveDate) -> DateTime<Utc> {
        use chrono::TimeZone;
        let midnight = date.and_time(chrono::NaiveTime::MIN);
        // A gap is at most a few hours: the first local time that exists after midnight.
        (0..=24 * 4)
            .find_map(|quarter| {
                let local = midnight + TimeDelta::minutes(15 * quarter);
                self.zone.from_local_datetime(&local).earliest()
            })
            .map_or_else(|| midnight.and_utc(), |t| t.with_timezone(&Utc))
    }

    /// When business day `date` is reported: the local midnight that ends it plus the cutoff.
    pub fn reported_at(&self, date: NaiveDate) -> DateTime<Utc> {
        let end = self.day_starts_at(date.succ_opt().unwrap_or(date));
        end.checked_add_signed(self.cutoff())
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// How many whole seconds after its business day's cutoff `event` was ingested, or `None`
    /// when it is on time (ingested at or before the cutoff) or recorded as history by a
    /// backfill.
    pub fn lateness_seconds(&self, event: &RecordedEvent) -> Option<i64> {
        self.lateness_on(self.business_date(event.event_time), event)
    }

    /// How many whole seconds after the cutoff of business day `date` `event` was ingested, or
    /// `None` when on time or a backfill.
    pub fn lateness_on(&self, date: NaiveDate, event: &RecordedEvent) -> Option<i64> {
        if event.metadata.backfill {
            return None;
        }
        let reported = self.reported_at(date);
        (event.ingest_time > reported).then(|| (event.ingest_time - reported).num_seconds())
    }
}

/// A store's business calendar (the aggregate behind `storecalendar-{store}`): `None` until set,
/// then the default for orders placed afterwards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreCalendar {
    /// The calendar set last.
    pub calendar: Option<BusinessCalendar>,
}

/// What a caller asks of a store's calendar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreCalendarCommand {
    /// Sets the calendar for orders placed from now on (a no-op when it is the same).
    Set(BusinessCalendar),
}

/// What happened to a store's calendar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreCalendarEvent {
    /// The store's calendar for orders placed from here on.
    StoreCalendarSet(BusinessCalendar),
}

/// Why a calendar command was refused (never: every valid calendar may be set).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreCalendarError {}

impl DomainError for StoreCalendarError {
    fn code(&self) -> &'static str {
        match *self {}
    }
    fn refusal(&self) -> Refusal {
        match *self {}
    }
}

impl Aggregate for StoreCalendar {
    type Command = StoreCalendarCommand;
    type Event = StoreCalendarEvent;
    type Error = StoreCalendarError;
    const CATEGORY: &'static str = "storecalendar";

    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error> {
        let StoreCalendarCommand::Set(calendar) = command;
        if self.calendar == Some(calendar) {
            return Ok(Vec::new());
        }
        Ok(vec![StoreCalendarEvent::StoreCalendarSet(calendar)])
    }

    fn apply(mut self, event: &Self::Event) -> Self {
        let StoreCalendarEvent::StoreCalendarSet(calendar) = event;
        self.calendar = Some(*calendar);
        self
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
    /// The calendar the order was placed in: its business date and cutoff.
    pub calendar: BusinessCalendar,
    /// The instant whose business date this effect counts on, when not its event's own
    /// event time (`daily_sales_by_store` version 2 dates a sale by when its order was
    /// placed).
    pub dated: Option<DateTime<Utc>>,
}

impl SaleEffect {
    /// The business date this effect counts on, in the order's calendar: of [`SaleEffect::dated`],
    /// else of `event`'s (this effect's event) event time.
    pub fn business_date(&self, event: &RecordedEvent) -> NaiveDate {
        self.calendar
            .business_date(self.dated.unwrap_or(event.event_time))
    }

    /// How many seconds after the cutoff of its business date ([`SaleEffect::business_date`])
    /// `event` was ingested, when it was (a late effect); `None` when on time or a backfill.
    pub fn lateness_seconds(&self, event: &RecordedEvent) -> Option<i64> {
        self.calendar.lateness_on(self.business_date(event), event)
    }

    /// Orders this effect adds: 1 for a sale, 0 for a refund.
    pub fn orders(&self) -> u64 {
        u64::from(self.kind == SaleKind::Sale)
    }

    /// Refunds this effect adds: 1 for a refund, 0 for a sale.
    pub fn refunds(&self) -> u64 {
        u64::from(self.kind == SaleKind::Refund)
    }
}

/// The sales effect of an event: `OrderPaid`, `OrderRecorded` (a sale paid when recorded), a
/// refunding `OrderCancelled` and `OrderRefunded` of an order stream; `None` for every other
/// event.
///
/// # Errors
/// The event is of an order stream and type but does not decode (a poison event).
pub fn sale_effect(event: &RecordedEvent) -> Result<Option<SaleEffect>, String> {
    if Order::id_of_stream(&event.stream_id).is_none()
        || !matches!(
            event.event_type.as_str(),
            "OrderPaid" | "OrderRecorded" | "OrderCancelled" | "OrderRefunded"
        )
    {
        return Ok(None);
    }
    let effect = match decode_recorded::<Order>(event).map_err(|e| e.to_string())? {
        OrderEvent::OrderPaid {
            amount,
            store_id,
            calendar,
            ..
        }
        | OrderEvent::OrderRecorded {
            total: amount,
            store_id,
            calendar,
            ..
        } => SaleEffect {
            store: store_id,
            currency: amount.currency,
            amount: amount.amount,
            kind: SaleKind::Sale,
            calendar: calendar.unwrap_or_default(),
            dated: None,
        },
        OrderEvent::OrderCancelled {
            refund: Some(amount),
            store_id,
            calendar,
            ..
        }
        | OrderEvent::OrderRefunded {
            amount,
            store_id,
            calendar,
            ..
        } => SaleEffect {
            store: store_id,
            currency: amount.currency,
            amount: -amount.amount,
            kind: SaleKind::Refund,
            calendar: calendar.unwrap_or_default(),
            dated: None,
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
    fn a_store_in_new_york_reports_its_days_at_two_local_time_across_clock_changes() {
        let ny = BusinessCalendar::new("America/New_York", 120).unwrap();
        // 03:00 UTC in January is 22:00 of the day before in New York (UTC-5).
        let date = ny.business_date(at("2026-01-15T03:00:00Z"));
        assert_eq!(date.to_string(), "2026-01-14");
        assert_eq!(ny.reported_at(date), at("2026-01-15T07:00:00Z"));
        // Summer time (UTC-4): the day ends at 04:00 UTC.
        let summer = ny.business_date(at("2026-07-01T03:30:00Z"));
        assert_eq!(summer.to_string(), "2026-06-30");
        assert_eq!(ny.reported_at(summer), at("2026-07-01T06:00:00Z"));
        // The night the clocks go forward (2026-03-08) is 23 hours long.
        let spring = NaiveDate::from_ymd_opt(2026, 3, 8).unwrap();
        assert_eq!(
            ny.day_starts_at(spring.succ_opt().unwrap()) - ny.day_starts_at(spring),
            TimeDelta::hours(23)
        );
        // A zone whose clocks skip midnight (Santiago, 2026-09-06 00:00 -> 01:00): the day
        // starts at the first local time that exists.
        let santiago = BusinessCalendar::new("America/Santiago", 0).unwrap();
        let skipped = NaiveDate::from_ymd_opt(2026, 9, 6).unwrap();
        assert_eq!(
            santiago.business_date(santiago.day_starts_at(skipped)),
            skipped
        );
        assert!(BusinessCalendar::new("Mars/Olympus", 120)
            .unwrap_err()
            .contains("Mars/Olympus"));
        assert!(BusinessCalendar::new("UTC", -1)
            .unwrap_err()
            .contains("cutoff"));
        assert_eq!(BusinessCalendar::parse_cutoff("2h"), Ok(120));
        assert_eq!(BusinessCalendar::parse_cutoff("0m"), Ok(0));
        assert!(BusinessCalendar::parse_cutoff("8d").is_err());
        assert!(BusinessCalendar::parse_cutoff("-1h").is_err());
        assert_eq!(
            serde_json::to_string(&ny).unwrap(),
            r#"{"zone":"America/New_York","cutoff_minutes":120}"#
        );
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
