//! Period close: accounting periods of a store that finance closes, and the exception queue that
//! holds every late posting a closed period must not take (seed `001`, case #4).
//!
//! Period control is switched on per store ([`PeriodControl`], stream `periodcontrol-{store}`);
//! a store without it has no periods and late data there only produces correction notices.
//! From the month (or day) it is enabled for, each period of the store is:
//!
//! - **Open** until its end plus the upload window (the business calendar's cutoff, 2 hours):
//!   sales and refunds of its days are applied;
//! - **SoftClosed** from then (or when finance soft-closes it): late postings are still applied,
//!   and their correction notices say `soft_closed`; finance may reopen it with a reason (a
//!   reopened period is not soft-closed again by the clock);
//! - **Closed** at its end plus the maximum delay (72 hours by default; the seed's finance teams
//!   use 72 hours or 5 days) or when finance closes it; final. A posting for a Closed period is
//!   **held**: it is not applied to the period but raised as a [`SalesException`], which
//!   finance approves (booked on the business date of the approval, in the open period, with a
//!   reference to the original date) or rejects, always with a reason.
//!
//! Whether a posting is held is a function of the log up to the posting's position and of its
//! ingest time ([`PeriodControl::booking`]): the daily view, the correction notifier and the
//! replay behind `verify --period` all decide it the same way, so they always agree. Backfilled
//! history is exempt from the clock (it is not late) but not from a period finance closed.
//!
//! Closing seals the period: a [`PeriodSealed`](PeriodControlEvent::PeriodSealed) event right
//! after the close records the period's totals and the hash-chain head at the close (the close
//! needs a position before the totals as of that position can be known, so the seal is its own
//! event; nothing can be booked into the period in between).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeDelta, Utc};
use eventfold_core::aggregate::decode_recorded;
use eventfold_core::{Aggregate, Projection, RecordedEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::Currency;
use crate::reporting::{BusinessCalendar, SaleEffect, SaleKind};
use crate::{DomainError, Refusal};

/// Name of the exception queue's read model.
pub const SALES_EXCEPTIONS: &str = "sales_exceptions";

/// The maximum delay when `periods enable` is not told one: 72 hours.
pub const DEFAULT_MAX_DELAY: TimeDelta = TimeDelta::hours(72);

/// Reads a maximum delay such as `72h`, `5d` or `90m` (a whole number and a unit: `m`
/// minutes, `h` hours, `d` days), at most 366 days.
///
/// # Errors
/// A message naming the text and what is wrong.
pub fn parse_max_delay(text: &str) -> Result<TimeDelta, String> {
    crate::parse_whole_duration(text, &[("m", 60), ("h", 3600), ("d", 86_400)])
        .map(TimeDelta::seconds)
        .filter(|d| *d > TimeDelta::zero() && *d <= TimeDelta::days(366))
        .ok_or_else(|| {
            format!(
                "max delay {text:?} is not a whole number of minutes, hours or days such as 72h or 5d"
            )
        })
}

/// How long a store's periods are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeriodLength {
    /// Calendar months (`2026-11`).
    Month,
    /// Business days (`2026-11-05`).
    Day,
}

/// One period of a store: the business dates from `start` up to (not including) its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    /// First business date.
    pub start: NaiveDate,
    /// Month or day.
    pub length: PeriodLength,
}

impl Period {
    /// The period of `length` holding business date `date`.
    pub fn of(date: NaiveDate, length: PeriodLength) -> Self {
        let start = match length {
            PeriodLength::Month => date.with_day(1).unwrap_or(date),
            PeriodLength::Day => date,
        };
        Self { start, length }
    }

    /// Reads `YYYY-MM` (a month) or `YYYY-MM-DD` (a day).
    ///
    /// # Errors
    /// A message naming the text when it is neither.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            return Ok(Self::of(day, PeriodLength::Day));
        }
        NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d")
            .ok()
            .filter(|_| text.len() == 7)
            .map(|d| Self::of(d, PeriodLength::Month))
            .ok_or_else(|| {
                format!("period {text:?} is neither a month (2026-11) nor a day (2026-11-05)")
            })
    }

    /// The first business date after the period.
    pub fn end(&self) -> NaiveDate {
        match self.length {
            PeriodLength::Month => self.start.checked_add_months(Months::new(1)),
            PeriodLength::Day => self.start.succ_opt(),
        }
        .unwrap_or(NaiveDate::MAX)
    }

    /// The instant the period ends (UTC midnight of [`Period::end`]).
    pub fn ends_at(&self) -> DateTime<Utc> {
        self.end().and_time(chrono::NaiveTime::MIN).and_utc()
    }

    /// The period after this one.
    pub fn next(&self) -> Self {
        Self {
            start: self.end(),
            length: self.length,
        }
    }

    /// Whether business date `date` lies in the period.
    pub fn contains(&self, date: NaiveDate) -> bool {
        self.start <= date && date < self.end()
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.length {
            PeriodLength::Month => write!(f, "{}", self.start.format("%Y-%m")),
            PeriodLength::Day => write!(f, "{}", self.start.format("%Y-%m-%d")),
        }
    }
}

/// Where a period stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeriodState {
    /// Postings are applied.
    Open,
    /// Late postings are applied and flagged `soft_closed`; can be reopened.
    SoftClosed,
    /// Final: postings are held as exceptions.
    Closed,
}

impl PeriodState {
    /// `open`, `soft_closed` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::SoftClosed => "soft_closed",
            Self::Closed => "closed",
        }
    }
}

/// A period's totals in one currency, as sealed at its close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodTotal {
    /// ISO 4217 code.
    pub currency: Currency,
    /// Paid minus refunded, decimal.
    pub total: Decimal,
    /// Orders paid.
    pub orders: u64,
    /// Refunds.
    pub refunds: u64,
}

/// What a close seals: the period's totals and the hash-chain head at the close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodSeal {
    /// Global position of the close event: the totals count every posting before it.
    pub through_position: u64,
    /// The hash chain's hash at that position, hex.
    pub chain_hash: String,
    /// Totals per currency, in currency order.
    pub totals: Vec<PeriodTotal>,
}

/// The recorded state of one period (explicit changes only; the clock does the rest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodRecord {
    /// The last state an event set.
    pub state: PeriodState,
    /// Reopened after a soft close: the clock does not soft-close it again.
    #[serde(default)]
    pub reopened: bool,
    /// Set by [`PeriodControlEvent::PeriodSealed`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<PeriodSeal>,
}

/// How period control is set up for a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodSettings {
    /// Store id (unscoped).
    pub store: String,
    /// First controlled period (earlier dates have no periods).
    pub from: NaiveDate,
    /// Month or day.
    pub length: PeriodLength,
    /// Seconds after a period's end at which it closes by itself.
    pub max_delay_seconds: i64,
    /// Seconds after a period's end at which it soft-closes by itself (the upload window).
    pub upload_window_seconds: i64,
    /// The store's business calendar when period control was switched on: periods end at its
    /// local midnight (`None`: the default, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar: Option<BusinessCalendar>,
}

impl PeriodSettings {
    /// The controlled period holding `date`, or `None` before [`PeriodSettings::from`].
    pub fn period_of(&self, date: NaiveDate) -> Option<Period> {
        (date >= self.from).then(|| Period::of(date, self.length))
    }

    /// The instant `period` ends: the local midnight of its last day's end in the store's
    /// calendar.
    pub fn ends_at(&self, period: &Period) -> DateTime<Utc> {
        self.calendar
            .unwrap_or_default()
            .day_starts_at(period.end())
    }

    /// When `period` closes by itself.
    pub fn closes_at(&self, period: &Period) -> DateTime<Utc> {
        self.ends_at(period)
            .checked_add_signed(TimeDelta::seconds(self.max_delay_seconds))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// When `period` soft-closes by itself (unless reopened).
    pub fn soft_closes_at(&self, period: &Period) -> DateTime<Utc> {
        self.ends_at(period)
            .checked_add_signed(TimeDelta::seconds(self.upload_window_seconds))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// Why a posting was held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HoldReason {
    /// Its period was closed (by finance or by the clock, recorded) before it was posted.
    PeriodClosed,
    /// It arrived after its period's maximum delay.
    BeyondMaxDelay,
}

/// What a posting does to its period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Booking {
    /// The store has no period control for that date: applied.
    Uncontrolled,
    /// Applied to an open period.
    Open,
    /// Applied to a soft-closed period (a late posting, flagged).
    SoftClosed,
    /// Not applied: raised as an exception.
    Held(HoldReason),
}

/// A store's period control (the aggregate behind `periodcontrol-{store}`), also the state the
/// daily view and the correction notifier keep per store to decide each posting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodControl {
    /// `None` until enabled.
    pub settings: Option<PeriodSettings>,
    /// Periods with a recorded change, by their name (`2026-11`).
    #[serde(default)]
    pub periods: BTreeMap<String, PeriodRecord>,
}

impl PeriodControl {
    /// The state of `period` at instant `at`: `None` when it is not controlled. `history`:
    /// judge backfilled history, which the clock does not close periods for.
    pub fn state_at(
        &self,
        period: &Period,
        at: DateTime<Utc>,
        history: bool,
    ) -> Option<PeriodState> {
        let settings = self.settings.as_ref()?;
        if period.start < settings.from {
            return None;
        }
        let record = self.periods.get(&period.to_string());
        let recorded = record.map(|r| r.state);
        if recorded == Some(PeriodState::Closed) || (!history && at >= settings.closes_at(period)) {
            return Some(PeriodState::Closed);
        }
        let reopened = record.is_some_and(|r| r.reopened);
        if recorded == Some(PeriodState::SoftClosed)
            || (!history && !reopened && at >= settings.soft_closes_at(period))
        {
            return Some(PeriodState::SoftClosed);
        }
        Some(PeriodState::Open)
    }

    /// What a posting of business date `date`, ingested at `ingest_time`, does (`history`: a
    /// backfilled event).
    pub fn booking(&self, date: NaiveDate, ingest_time: DateTime<Utc>, history: bool) -> Booking {
        let Some(period) = self.settings.as_ref().and_then(|s| s.period_of(date)) else {
            return Booking::Uncontrolled;
        };
        let recorded_closed = self
            .periods
            .get(&period.to_string())
            .is_some_and(|r| r.state == PeriodState::Closed);
        match self.state_at(&period, ingest_time, history) {
            None => Booking::Uncontrolled,
            Some(PeriodState::Open) => Booking::Open,
            Some(PeriodState::SoftClosed) => Booking::SoftClosed,
            Some(PeriodState::Closed) if recorded_closed => Booking::Held(HoldReason::PeriodClosed),
            Some(PeriodState::Closed) => Booking::Held(HoldReason::BeyondMaxDelay),
        }
    }

    /// What a recorded event's sales effect does to its period (its business date in the
    /// order's calendar).
    pub fn booking_of(&self, event: &RecordedEvent, effect: &SaleEffect) -> Booking {
        let date = effect.business_date(event);
        self.booking(date, event.ingest_time, event.metadata.backfill)
    }

    fn settings(&self) -> Result<&PeriodSettings, PeriodError> {
        self.settings.as_ref().ok_or(PeriodError::NotEnabled)
    }

    fn controlled(&self, period: &str) -> Result<Period, PeriodError> {
        let settings = self.settings()?;
        let p = Period::parse(period).map_err(PeriodError::Invalid)?;
        if p.length != settings.length {
            return Err(PeriodError::Invalid(format!(
                "period {period} is not a {} of this store",
                match settings.length {
                    PeriodLength::Month => "month",
                    PeriodLength::Day => "day",
                }
            )));
        }
        if p.start < settings.from {
            return Err(PeriodError::NotControlled(period.to_owned()));
        }
        Ok(p)
    }
}

/// What a caller asks of a store's periods. `now` is the caller's clock (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeriodCommand {
    /// Switches period control on (once).
    Enable {
        /// Store id (unscoped).
        store: String,
        /// First controlled period.
        from: Period,
        /// Time after a period's end at which it closes by itself.
        max_delay: TimeDelta,
        /// The store's business calendar: periods end at its local midnight, and its cutoff is
        /// the upload window.
        calendar: BusinessCalendar,
    },
    /// Soft-closes an ended period.
    SoftClose {
        /// Period name (`2026-11`).
        period: String,
        /// Why.
        reason: String,
        /// The caller's clock.
        now: DateTime<Utc>,
    },
    /// Reopens a soft-closed period.
    Reopen {
        /// Period name.
        period: String,
        /// Why.
        reason: String,
        /// The caller's clock.
        now: DateTime<Utc>,
    },
    /// Closes an ended period (final).
    Close {
        /// Period name.
        period: String,
        /// Why.
        reason: String,
        /// The caller's clock.
        now: DateTime<Utc>,
    },
    /// Records the seal of a closed period.
    Seal {
        /// Period name.
        period: String,
        /// What it seals.
        seal: PeriodSeal,
    },
}

/// What happened to a store's periods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeriodControlEvent {
    /// Period control was switched on.
    PeriodControlEnabled(PeriodSettings),
    /// A period was soft-closed.
    PeriodSoftClosed {
        /// Period name.
        period: String,
        /// Why.
        reason: String,
    },
    /// A soft-closed period was reopened.
    PeriodReopened {
        /// Period name.
        period: String,
        /// Why.
        reason: String,
    },
    /// A period was closed: postings for it are held from here on.
    PeriodClosed {
        /// Period name.
        period: String,
        /// Why.
        reason: String,
    },
    /// A closed period's totals and chain head were recorded.
    PeriodSealed {
        /// Period name.
        period: String,
        /// The seal.
        seal: PeriodSeal,
    },
}

/// Why a period command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeriodError {
    /// The store has no period control.
    #[error("the store has no period control (eventfold periods enable)")]
    NotEnabled,
    /// Period control is on already.
    #[error("period control is enabled for this store already")]
    AlreadyEnabled,
    /// The period lies before the first controlled one.
    #[error("period {0} is before the store's first controlled period")]
    NotControlled(String),
    /// The period has not ended.
    #[error("period {0} has not ended yet")]
    NotEnded(String),
    /// The change does not fit the period's state.
    #[error("period {period} is {state}: it cannot be {change}")]
    State {
        /// Period name.
        period: String,
        /// Its state.
        state: &'static str,
        /// What was asked.
        change: &'static str,
    },
    /// A bad value.
    #[error("{0}")]
    Invalid(String),
}

impl DomainError for PeriodError {
    fn code(&self) -> &'static str {
        match self {
            Self::NotEnabled => "periods_not_enabled",
            Self::AlreadyEnabled => "periods_enabled",
            Self::NotControlled(_) => "period_not_controlled",
            Self::NotEnded(_) => "period_not_ended",
            Self::State { .. } => "period_state",
            Self::Invalid(_) => "invalid_period",
        }
    }
    fn refusal(&self) -> Refusal {
        match self {
            Self::NotEnabled => Refusal::NotFound,
            Self::Invalid(_) | Self::NotControlled(_) => Refusal::Invalid,
            _ => Refusal::Conflict,
        }
    }
}

fn checked_reason(reason: &str) -> Result<String, PeriodError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(PeriodError::Invalid("reason is required".into()));
    }
    crate::validate_reason(reason).map_err(PeriodError::Invalid)?;
    Ok(reason.to_owned())
}

impl Aggregate for PeriodControl {
    type Command = PeriodCommand;
    type Event = PeriodControlEvent;
    type Error = PeriodError;
    const CATEGORY: &'static str = "periodcontrol";

    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error> {
        let refuse = |period: &str, state: PeriodState, change| PeriodError::State {
            period: period.to_owned(),
            state: state.as_str(),
            change,
        };
        let ends_at = |p: &Period| {
            self.settings
                .as_ref()
                .map_or_else(|| p.ends_at(), |s| s.ends_at(p))
        };
        let ended = |p: &Period, now: DateTime<Utc>, name: &str| {
            if now < ends_at(p) {
                Err(PeriodError::NotEnded(name.to_owned()))
            } else {
                Ok(())
            }
        };
        match command {
            PeriodCommand::Enable {
                store,
                from,
                max_delay,
                calendar,
            } => {
                if self.settings.is_some() {
                    return Err(PeriodError::AlreadyEnabled);
                }
                let upload_window = calendar.cutoff();
                if max_delay < upload_window {
                    return Err(PeriodError::Invalid(format!(
                        "max delay must be at least the upload window ({} minutes)",
                        upload_window.num_minutes()
                    )));
                }
                Ok(vec![PeriodControlEvent::PeriodControlEnabled(
                    PeriodSettings {
                        store,
                        from: from.start,
                        length: from.length,
                        max_delay_seconds: max_delay.num_seconds(),
                        upload_window_seconds: upload_window.num_seconds(),
                        calendar: (calendar != BusinessCalendar::default()).then_some(calendar),
                    },
                )])
            }
            PeriodCommand::SoftClose {
                period,
                reason,
                now,
            } => {
                let p = self.controlled(&period)?;
                ended(&p, now, &period)?;
                let recorded = self.periods.get(&period).map(|r| r.state);
                match (recorded, self.state_at(&p, now, false)) {
                    (Some(s @ (PeriodState::SoftClosed | PeriodState::Closed)), _)
                    | (_, Some(s @ PeriodState::Closed)) => Err(refuse(&period, s, "soft-closed")),
                    _ => Ok(vec![PeriodControlEvent::PeriodSoftClosed {
                        period,
                        reason: checked_reason(&reason)?,
                    }]),
                }
            }
            PeriodCommand::Reopen {
                period,
                reason,
                now,
            } => {
                let p = self.controlled(&period)?;
                match self.state_at(&p, now, false) {
                    Some(PeriodState::SoftClosed) => Ok(vec![PeriodControlEvent::PeriodReopened {
                        period,
                        reason: checked_reason(&reason)?,
                    }]),
                    s => Err(refuse(&period, s.unwrap_or(PeriodState::Open), "reopened")),
                }
            }
            PeriodCommand::Close {
                period,
                reason,
                now,
            } => {
                let p = self.controlled(&period)?;
                ended(&p, now, &period)?;
                if self.periods.get(&period).map(|r| r.state) == Some(PeriodState::Closed) {
                    return Err(refuse(&period, PeriodState::Closed, "closed"));
                }
                Ok(vec![PeriodControlEvent::PeriodClosed {
                    period,
                    reason: checked_reason(&reason)?,
                }])
            }
            PeriodCommand::Seal { period, seal } => {
                self.controlled(&period)?;
                match self.periods.get(&period) {
                    Some(r) if r.state == PeriodState::Closed && r.seal.is_none() => {
                        Ok(vec![PeriodControlEvent::PeriodSealed { period, seal }])
                    }
                    Some(r) if r.state == PeriodState::Closed => {
                        Err(refuse(&period, PeriodState::Closed, "sealed twice"))
                    }
                    r => Err(refuse(
                        &period,
                        r.map_or(PeriodState::Open, |r| r.state),
                        "sealed",
                    )),
                }
            }
        }
    }

    fn apply(mut self, event: &Self::Event) -> Self {
        let mut set = |period: &str, state: PeriodState, reopened: bool| {
            let r = self
                .periods
                .entry(period.to_owned())
                .or_insert(PeriodRecord {
                    state,
                    reopened,
                    seal: None,
                });
            r.state = state;
            r.reopened |= reopened;
        };
        match event {
            PeriodControlEvent::PeriodControlEnabled(settings) => {
                self.settings = Some(settings.clone());
            }
            PeriodControlEvent::PeriodSoftClosed { period, .. } => {
                set(period, PeriodState::SoftClosed, false);
            }
            PeriodControlEvent::PeriodReopened { period, .. } => {
                set(period, PeriodState::Open, true);
            }
            PeriodControlEvent::PeriodClosed { period, .. } => {
                set(period, PeriodState::Closed, false);
            }
            PeriodControlEvent::PeriodSealed { period, seal } => {
                if let Some(r) = self.periods.get_mut(period) {
                    r.seal = Some(seal.clone());
                }
            }
        }
        self
    }
}

/// The period control event of a recorded event of a `periodcontrol-` stream, with the scoped
/// store id; `None` for any other stream.
///
/// # Errors
/// The event does not decode (a poison event).
pub fn period_control_event(
    event: &RecordedEvent,
) -> Result<Option<(String, PeriodControlEvent)>, String> {
    let Some(store) = PeriodControl::id_of_stream(&event.stream_id) else {
        return Ok(None);
    };
    let e = decode_recorded::<PeriodControl>(event).map_err(|e| e.to_string())?;
    Ok(Some((store, e)))
}

/// The key under which a projection keeps a store's [`PeriodControl`] beside its business
/// days (`store|~periods`, scoped to the tenant): after every `store|YYYY-MM-DD...` key, so a
/// range of days never reads it.
pub fn period_control_key(tenant: &str, store: &str) -> String {
    eventfold_core::tenant::scope(tenant, &format!("{store}|~periods"))
}

/// Name of the read model listing every store's period control.
pub const SALES_PERIODS: &str = "sales_periods";

/// The `sales_periods` read model: each store's [`PeriodControl`] by its scoped store id (what
/// the period worker walks to close periods by the clock).
pub struct SalesPeriodsProjection;

impl Projection for SalesPeriodsProjection {
    type Doc = PeriodControl;
    type Input = PeriodControlEvent;

    fn name(&self) -> &'static str {
        SALES_PERIODS
    }

    fn select(&self, event: &RecordedEvent) -> Result<Option<(String, Self::Input)>, String> {
        period_control_event(event)
    }

    fn apply(
        &self,
        doc: Option<Self::Doc>,
        input: Self::Input,
        _event: &RecordedEvent,
    ) -> Option<Self::Doc> {
        Some(doc.unwrap_or_default().apply(&input))
    }
}

/// A posting held because its period was closed, as raised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldPosting {
    /// Store id (unscoped).
    pub store: String,
    /// Its business date.
    pub date: NaiveDate,
    /// The period it was not applied to (`2026-11`).
    pub period: String,
    /// ISO 4217 code.
    pub currency: Currency,
    /// Signed amount (negative for a refund), decimal.
    pub amount: Decimal,
    /// Sale or refund.
    pub kind: SaleKind,
    /// Why it was held.
    pub hold: HoldReason,
    /// The held event.
    pub cause_event_id: Uuid,
    /// Its stream (scoped to its tenant).
    pub cause_stream: String,
    /// Its ingest time.
    pub ingested_at: DateTime<Utc>,
    /// The calendar its order was placed in (`None`: the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar: Option<BusinessCalendar>,
}

impl HeldPosting {
    /// What the posting does to sales once an approval books it.
    pub fn booked_effect(&self) -> SaleEffect {
        SaleEffect {
            store: self.store.clone(),
            currency: self.currency,
            amount: self.amount,
            kind: self.kind,
            calendar: self.calendar.unwrap_or_default(),
            dated: None,
        }
    }
}

/// A held posting and finance's decision (stream `salesexception-{cause event id}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SalesException {
    /// Set once raised.
    pub held: Option<HeldPosting>,
    /// `approved` or `rejected` once decided.
    pub decided: Option<ExceptionState>,
}

/// Where an exception stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExceptionState {
    /// Waiting for finance.
    Open,
    /// Booked in the open period.
    Approved,
    /// Recorded, not booked.
    Rejected,
}

impl ExceptionState {
    /// `open`, `approved` or `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }
}

/// What a caller asks of an exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExceptionCommand {
    /// Raises it (once).
    Raise(HeldPosting),
    /// Books it on `booked_date` (the open period's business date of the approval).
    Approve {
        /// Why.
        reason: String,
        /// Business date it is booked on.
        booked_date: NaiveDate,
    },
    /// Records it as not booked.
    Reject {
        /// Why.
        reason: String,
    },
}

/// What happened to an exception.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SalesExceptionEvent {
    /// A posting was held.
    ExceptionRaised(HeldPosting),
    /// Finance booked it in the open period.
    ExceptionApproved {
        /// Why.
        reason: String,
        /// Business date it is booked on.
        booked_date: NaiveDate,
        /// The held posting (its original date and amount).
        held: HeldPosting,
    },
    /// Finance decided it is not booked.
    ExceptionRejected {
        /// Why.
        reason: String,
        /// The held posting.
        held: HeldPosting,
    },
}

/// Why an exception command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExceptionError {
    /// No exception with this id.
    #[error("no such exception")]
    NotFound,
    /// It was raised already.
    #[error("the exception was raised already")]
    Raised,
    /// It was approved or rejected already.
    #[error("the exception was {0} already")]
    Decided(&'static str),
    /// A bad value.
    #[error("{0}")]
    Invalid(String),
}

impl DomainError for ExceptionError {
    fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "exception_not_found",
            Self::Raised => "exception_raised",
            Self::Decided(_) => "exception_decided",
            Self::Invalid(_) => "invalid_reason",
        }
    }
    fn refusal(&self) -> Refusal {
        match self {
            Self::NotFound => Refusal::NotFound,
            Self::Invalid(_) => Refusal::Invalid,
            _ => Refusal::Conflict,
        }
    }
}

impl Aggregate for SalesException {
    type Command = ExceptionCommand;
    type Event = SalesExceptionEvent;
    type Error = ExceptionError;
    const CATEGORY: &'static str = "salesexception";

    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error> {
        let reason =
            |r: &str| checked_reason(r).map_err(|e| ExceptionError::Invalid(e.to_string()));
        match command {
            ExceptionCommand::Raise(held) => match self.held {
                Some(_) => Err(ExceptionError::Raised),
                None => Ok(vec![SalesExceptionEvent::ExceptionRaised(held)]),
            },
            ExceptionCommand::Approve {
                reason: r,
                booked_date,
            } => {
                let held = self.open()?;
                Ok(vec![SalesExceptionEvent::ExceptionApproved {
                    reason: reason(&r)?,
                    booked_date,
                    held: held.clone(),
                }])
            }
            ExceptionCommand::Reject { reason: r } => {
                let held = self.open()?;
                Ok(vec![SalesExceptionEvent::ExceptionRejected {
                    reason: reason(&r)?,
                    held: held.clone(),
                }])
            }
        }
    }

    fn apply(mut self, event: &Self::Event) -> Self {
        match event {
            SalesExceptionEvent::ExceptionRaised(held) => self.held = Some(held.clone()),
            SalesExceptionEvent::ExceptionApproved { .. } => {
                self.decided = Some(ExceptionState::Approved);
            }
            SalesExceptionEvent::ExceptionRejected { .. } => {
                self.decided = Some(ExceptionState::Rejected);
            }
        }
        self
    }
}

impl SalesException {
    fn open(&self) -> Result<&HeldPosting, ExceptionError> {
        let held = self.held.as_ref().ok_or(ExceptionError::NotFound)?;
        match self.decided {
            Some(s) => Err(ExceptionError::Decided(s.as_str())),
            None => Ok(held),
        }
    }
}

/// The sales effect of an approved exception: the held posting booked on the business date of
/// the approval (the event's event time); `None` for every other event. Only the daily view
/// and the correction notifier count it: the real-time view counted the posting when it came
/// in.
///
/// # Errors
/// The event is of an exception stream but does not decode.
pub fn approved_booking(event: &RecordedEvent) -> Result<Option<SaleEffect>, String> {
    if event.event_type != "ExceptionApproved"
        || SalesException::id_of_stream(&event.stream_id).is_none()
    {
        return Ok(None);
    }
    match decode_recorded::<SalesException>(event).map_err(|e| e.to_string())? {
        SalesExceptionEvent::ExceptionApproved { held, .. } => Ok(Some(held.booked_effect())),
        _ => Ok(None),
    }
}

/// One exception as `GET /exceptions` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionView {
    /// The exception's id: the held event's id.
    pub id: Uuid,
    /// The held posting.
    #[serde(flatten)]
    pub held: HeldPosting,
    /// Open, approved or rejected.
    pub state: ExceptionState,
    /// Finance's reason, once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_reason: Option<String>,
    /// Who decided (an actor such as `user:ana`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// When (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    /// The business date an approved exception was booked on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booked_date: Option<NaiveDate>,
}

/// The key of an exception in `sales_exceptions` (scoped to the tenant): `store|cause id`.
pub fn exception_key(store: &str, cause: Uuid) -> String {
    format!("{store}|{cause}")
}

/// The `sales_exceptions` read model: every exception by [`exception_key`].
pub struct SalesExceptionsProjection;

impl Projection for SalesExceptionsProjection {
    type Doc = ExceptionView;
    type Input = SalesExceptionEvent;

    fn name(&self) -> &'static str {
        SALES_EXCEPTIONS
    }

    fn select(&self, event: &RecordedEvent) -> Result<Option<(String, Self::Input)>, String> {
        let Some(id) = SalesException::id_of_stream(&event.stream_id) else {
            return Ok(None);
        };
        let e = decode_recorded::<SalesException>(event).map_err(|e| e.to_string())?;
        let (tenant, cause) = eventfold_core::tenant::split(&id);
        let store = match &e {
            SalesExceptionEvent::ExceptionRaised(h)
            | SalesExceptionEvent::ExceptionApproved { held: h, .. }
            | SalesExceptionEvent::ExceptionRejected { held: h, .. } => h.store.clone(),
        };
        Ok(Some((
            eventfold_core::tenant::scope(tenant, &exception_key(&store, parse_cause(cause)?)),
            e,
        )))
    }

    fn apply(
        &self,
        doc: Option<Self::Doc>,
        input: Self::Input,
        event: &RecordedEvent,
    ) -> Option<Self::Doc> {
        match input {
            SalesExceptionEvent::ExceptionRaised(held) => Some(ExceptionView {
                id: held.cause_event_id,
                held,
                state: ExceptionState::Open,
                decision_reason: None,
                decided_by: None,
                decided_at: None,
                booked_date: None,
            }),
            SalesExceptionEvent::ExceptionApproved {
                reason,
                booked_date,
                held,
            } => Some(ExceptionView {
                state: ExceptionState::Approved,
                booked_date: Some(booked_date),
                ..decided(doc, held, reason, event)
            }),
            SalesExceptionEvent::ExceptionRejected { reason, held } => Some(ExceptionView {
                state: ExceptionState::Rejected,
                ..decided(doc, held, reason, event)
            }),
        }
    }
}

/// An exception's document with the decision of `event` recorded (the state is the caller's).
fn decided(
    doc: Option<ExceptionView>,
    held: HeldPosting,
    reason: String,
    event: &RecordedEvent,
) -> ExceptionView {
    let doc = doc.unwrap_or(ExceptionView {
        id: held.cause_event_id,
        held,
        state: ExceptionState::Open,
        decision_reason: None,
        decided_by: None,
        decided_at: None,
        booked_date: None,
    });
    ExceptionView {
        decision_reason: Some(reason),
        decided_by: Some(event.metadata.actor.to_string()),
        decided_at: Some(event.ingest_time),
        ..doc
    }
}

fn parse_cause(cause: &str) -> Result<Uuid, String> {
    Uuid::parse_str(cause).map_err(|e| format!("exception id {cause:?} is not a UUID: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn enabled(from: &str) -> PeriodControl {
        let c = PeriodControl::default();
        let events = c
            .handle(PeriodCommand::Enable {
                calendar: BusinessCalendar::default(),
                store: "s".into(),
                from: Period::parse(from).unwrap(),
                max_delay: DEFAULT_MAX_DELAY,
            })
            .unwrap();
        events.iter().fold(c, PeriodControl::apply)
    }

    fn run(c: PeriodControl, command: PeriodCommand) -> Result<PeriodControl, PeriodError> {
        Ok(c.handle(command)?.iter().fold(c, PeriodControl::apply))
    }

    #[test]
    fn periods_parse_and_end() {
        let m = Period::parse("2026-11").unwrap();
        assert_eq!((m.start, m.end()), (day("2026-11-01"), day("2026-12-01")));
        assert_eq!(m.next().to_string(), "2026-12");
        let d = Period::parse("2026-11-30").unwrap();
        assert_eq!(d.next().to_string(), "2026-12-01");
        assert!(Period::parse("2026-13").is_err());
        assert!(Period::parse("2026-1").is_err());
    }

    #[test]
    fn the_clock_soft_closes_and_closes_a_period_and_a_closed_one_holds_postings() {
        let c = enabled("2026-11");
        let nov = day("2026-11-20");
        assert_eq!(
            c.booking(day("2026-10-31"), at("2027-01-01T00:00:00Z"), false),
            Booking::Uncontrolled
        );
        assert_eq!(
            c.booking(nov, at("2026-11-30T10:00:00Z"), false),
            Booking::Open
        );
        assert_eq!(
            c.booking(nov, at("2026-12-01T02:00:00Z"), false),
            Booking::SoftClosed
        );
        assert_eq!(
            c.booking(nov, at("2026-12-03T23:59:59Z"), false),
            Booking::SoftClosed
        );
        assert_eq!(
            c.booking(nov, at("2026-12-04T00:00:00Z"), false),
            Booking::Held(HoldReason::BeyondMaxDelay)
        );
        assert_eq!(
            c.booking(nov, at("2026-12-04T00:00:00Z"), true),
            Booking::Open,
            "history is not late"
        );
        let now = at("2026-12-01T09:00:00Z");
        let closed = run(
            c.clone(),
            PeriodCommand::Close {
                period: "2026-11".into(),
                reason: "month end".into(),
                now,
            },
        )
        .unwrap();
        assert_eq!(
            closed.booking(nov, now, true),
            Booking::Held(HoldReason::PeriodClosed),
            "a closed period holds history too"
        );
        let again = run(
            closed,
            PeriodCommand::Close {
                period: "2026-11".into(),
                reason: "again".into(),
                now,
            },
        );
        assert!(matches!(again, Err(PeriodError::State { .. })));
        assert!(matches!(
            run(
                c,
                PeriodCommand::Close {
                    period: "2026-12".into(),
                    reason: "early".into(),
                    now
                }
            ),
            Err(PeriodError::NotEnded(_))
        ));
    }

    #[test]
    fn a_reopened_period_stays_open_until_its_maximum_delay() {
        let c = enabled("2026-11");
        let now = at("2026-12-01T09:00:00Z");
        let open = |reason: &str| PeriodCommand::Reopen {
            period: "2026-11".into(),
            reason: reason.into(),
            now,
        };
        assert!(matches!(
            run(c.clone(), open("")),
            Err(PeriodError::Invalid(_))
        ));
        let c = run(c, open("a store's file came late")).unwrap();
        assert_eq!(c.booking(day("2026-11-30"), now, false), Booking::Open);
        assert_eq!(
            c.booking(day("2026-11-30"), at("2026-12-05T00:00:00Z"), false),
            Booking::Held(HoldReason::BeyondMaxDelay)
        );
        let c = run(
            c,
            PeriodCommand::SoftClose {
                period: "2026-11".into(),
                reason: "done".into(),
                now,
            },
        )
        .unwrap();
        assert_eq!(
            c.booking(day("2026-11-30"), now, false),
            Booking::SoftClosed
        );
    }

    #[test]
    fn an_exception_is_decided_once_with_a_reason() {
        let held = HeldPosting {
            calendar: None,
            store: "s".into(),
            date: day("2026-11-20"),
            period: "2026-11".into(),
            currency: Currency::USD,
            amount: Decimal::new(1050, 2),
            kind: SaleKind::Sale,
            hold: HoldReason::PeriodClosed,
            cause_event_id: Uuid::now_v7(),
            cause_stream: "order-1".into(),
            ingested_at: at("2026-12-05T00:00:00Z"),
        };
        let e = SalesException::default();
        assert_eq!(
            e.handle(ExceptionCommand::Reject { reason: "x".into() }),
            Err(ExceptionError::NotFound)
        );
        let e = e
            .handle(ExceptionCommand::Raise(held.clone()))
            .unwrap()
            .iter()
            .fold(e, SalesException::apply);
        assert!(e.handle(ExceptionCommand::Raise(held)).is_err());
        assert!(matches!(
            e.handle(ExceptionCommand::Reject { reason: " ".into() }),
            Err(ExceptionError::Invalid(_))
        ));
        let e = e
            .handle(ExceptionCommand::Approve {
                reason: "booked in December".into(),
                booked_date: day("2026-12-05"),
            })
            .unwrap()
            .iter()
            .fold(e, SalesException::apply);
        assert_eq!(
            e.handle(ExceptionCommand::Reject { reason: "x".into() }),
            Err(ExceptionError::Decided("approved"))
        );
    }
}
