//! Period close and the exception queue, over a store (see [`eventfold_domain::periods`]):
//! what `eventfold periods ...`, `eventfold exceptions ...`, `verify --period` and their HTTP
//! routes call, and the period worker `serve` runs.
//!
//! - [`PeriodDesk::enable`], [`PeriodDesk::change`]: switch period control on, soft-close,
//!   reopen or close a period, each an event with its actor and reason. A close is sealed at
//!   once ([`PeriodDesk::seal`]): the period's totals replayed from the log up to the close
//!   event, and the hash chain's hash at that event.
//! - [`PeriodDesk::tick`]: the clock's side: every period whose upload window or maximum delay
//!   has passed gets its `PeriodSoftClosed` or `PeriodClosed` event (actor
//!   `system:periods`), and every closed period without a seal gets one.
//! - [`PeriodDesk::decide`]: approve (book on today's business date, which must lie in an open
//!   period) or reject an exception, with a reason.
//! - [`verify_period`]: replays the log and checks a sealed period's totals and chain hash.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use eventfold_core::{Actor, Aggregate, EventStore, ReadModelStore, RecordedEvent, StoreError};
use eventfold_domain::periods::{
    approved_booking, period_control_event, Booking, ExceptionCommand, ExceptionState,
    ExceptionView, Period, PeriodCommand, PeriodControl, PeriodControlEvent, PeriodError,
    PeriodLength, PeriodSeal, PeriodSettings, PeriodState, PeriodTotal, SalesException,
    SALES_EXCEPTIONS, SALES_PERIODS,
};
use eventfold_domain::reporting::sale_effect;
use eventfold_domain::Currency;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::calendars::StoreCalendars;
use crate::service::{version_render, AsOf, CommandContext, Executed, Service, ServiceError};

/// Events read per batch by a replay.
const BATCH: usize = 10_000;

/// The most periods period control may reach back from today when it is switched on: the
/// clock closes and seals every ended one at once, and a view lists them all.
pub const MAX_PAST_PERIODS: usize = 1_000;

/// A change to one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodChange {
    /// Soft-close an ended period.
    SoftClose,
    /// Reopen a soft-closed period.
    Reopen,
    /// Close an ended period (final; sealed at once).
    Close,
}

/// One period as `periods list` and `GET /stores/{store}/periods` show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeriodStatus {
    /// Its name (`2026-11`).
    pub period: String,
    /// Its state now (the clock's and the recorded changes').
    pub state: PeriodState,
    /// It was reopened after a soft close.
    pub reopened: bool,
    /// When it soft-closes by itself (UTC).
    pub soft_closes_at: DateTime<Utc>,
    /// When it closes by itself (UTC).
    pub closes_at: DateTime<Utc>,
    /// Its seal, once closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal: Option<PeriodSeal>,
}

/// A store's period control as shown.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeriodsView {
    /// How the store's periods are set up.
    pub settings: PeriodSettings,
    /// Every controlled period up to the current one, oldest first.
    pub periods: Vec<PeriodStatus>,
}

/// Period commands and queries over one store.
#[derive(Clone)]
pub struct PeriodDesk {
    service: Service,
    events: Arc<dyn EventStore>,
}

impl PeriodDesk {
    /// A desk running its commands through `service`.
    pub fn new(service: Service) -> Self {
        Self {
            events: service.store().clone(),
            service,
        }
    }

    /// Switches period control on for `store` (scoped to its tenant) from period `from`.
    ///
    /// # Errors
    /// [`ServiceError::Refused`] when it is on already, `max_delay` is shorter than the upload
    /// window, or `from` lies more than [`MAX_PAST_PERIODS`] periods before today (the clock
    /// would close and seal each of them at once); store failures.
    pub async fn enable(
        &self,
        store: &str,
        from: Period,
        max_delay: TimeDelta,
        ctx: &CommandContext,
    ) -> Result<PeriodsView, ServiceError> {
        let calendar = StoreCalendars::new(self.service.clone())
            .effective(store)
            .await?;
        let today = calendar.business_date(ctx.event_time);
        let past = std::iter::successors(Some(from), |p| Some(p.next()))
            .take_while(|p| p.start <= today)
            .take(MAX_PAST_PERIODS + 1)
            .count();
        if past > MAX_PAST_PERIODS {
            return Err(ServiceError::refused(&PeriodError::Invalid(format!(
                "period control from {from} would start {past}+ periods before today; at most \
                 {MAX_PAST_PERIODS} (monthly periods reach back about 83 years, daily ones about 2.7)"
            ))));
        }
        let (_, unscoped) = eventfold_core::tenant::split(store);
        let command = PeriodCommand::Enable {
            store: unscoped.to_owned(),
            from,
            max_delay,
            calendar,
        };
        self.run(store, command, ctx).await?;
        self.view(store, ctx.event_time).await?.ok_or_else(|| {
            StoreError::Corrupt("period control vanished after enable".into()).into()
        })
    }

    /// Applies `change` to `period` of `store` with `reason`; a close is sealed before this
    /// returns.
    ///
    /// # Errors
    /// [`ServiceError::Refused`] (no period control, a period that has not ended, a state the
    /// change does not fit, a missing reason); store failures.
    pub async fn change(
        &self,
        store: &str,
        period: &str,
        change: PeriodChange,
        reason: &str,
        ctx: &CommandContext,
    ) -> Result<PeriodsView, ServiceError> {
        let (period, reason, now) = (period.to_owned(), reason.to_owned(), ctx.event_time);
        let command = match change {
            PeriodChange::SoftClose => PeriodCommand::SoftClose {
                period: period.clone(),
                reason,
                now,
            },
            PeriodChange::Reopen => PeriodCommand::Reopen {
                period: period.clone(),
                reason,
                now,
            },
            PeriodChange::Close => PeriodCommand::Close {
                period: period.clone(),
                reason,
                now,
            },
        };
        let position = self.run(store, command, ctx).await?;
        if let (PeriodChange::Close, Some(position)) = (change, position) {
            self.seal(store, &period, position, ctx).await?;
        }
        self.view(store, now).await?.ok_or_else(|| {
            ServiceError::from(StoreError::Corrupt("period control vanished".into()))
        })
    }

    async fn run(
        &self,
        store: &str,
        command: PeriodCommand,
        ctx: &CommandContext,
    ) -> Result<Option<u64>, ServiceError> {
        match self
            .service
            .execute::<PeriodControl>(store, command, ctx, version_render(200))
            .await?
        {
            Executed::Applied { position, .. } => Ok(position),
            Executed::Replayed(_) => Ok(None),
        }
    }

    /// Seals closed `period` of `store`: its totals replayed from the log up to `through` (the
    /// close event's position) and the chain hash there.
    ///
    /// # Errors
    /// Refused when the period is not closed or is sealed already; store failures.
    pub async fn seal(
        &self,
        store: &str,
        period: &str,
        through: u64,
        ctx: &CommandContext,
    ) -> Result<PeriodSeal, ServiceError> {
        // Its own command: not the close's idempotency key or expected version.
        let mut ctx = ctx.clone();
        ctx.idempotency = None;
        ctx.expected_version = None;
        let ctx = &ctx;
        let length = self.length(store).await?;
        let replay = replay_store(self.events.as_ref(), store, length, through).await?;
        let seal = PeriodSeal {
            through_position: through,
            chain_hash: chain_hash_at(self.events.as_ref(), through).await?,
            totals: replay.totals.get(period).cloned().unwrap_or_default(),
        };
        self.record_seal(store, period, seal, ctx).await
    }

    async fn record_seal(
        &self,
        store: &str,
        period: &str,
        seal: PeriodSeal,
        ctx: &CommandContext,
    ) -> Result<PeriodSeal, ServiceError> {
        let command = PeriodCommand::Seal {
            period: period.to_owned(),
            seal: seal.clone(),
        };
        self.run(store, command, ctx).await?;
        Ok(seal)
    }

    /// The length of `store`'s periods.
    async fn length(&self, store: &str) -> Result<PeriodLength, ServiceError> {
        self.service
            .load::<PeriodControl>(store, AsOf::Latest)
            .await?
            .and_then(|r| r.state.settings.map(|s| s.length))
            .ok_or_else(|| ServiceError::refused(&PeriodError::NotEnabled))
    }

    /// `store`'s periods as of `now`; `None` without period control.
    ///
    /// # Errors
    /// Store failures.
    pub async fn view(
        &self,
        store: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PeriodsView>, ServiceError> {
        let Some(replayed) = self
            .service
            .load::<PeriodControl>(store, AsOf::Latest)
            .await?
        else {
            return Ok(None);
        };
        Ok(periods_view(&replayed.state, now))
    }

    /// The clock's side of period control (see the module docs): soft-closes and closes every
    /// period of every controlled store whose time has come, and seals every closed period
    /// without a seal; the number of events appended.
    ///
    /// # Errors
    /// Store failures (what was appended stays; the next tick goes on from there).
    pub async fn tick(
        &self,
        read_models: &dyn ReadModelStore,
        now: DateTime<Utc>,
    ) -> Result<usize, ServiceError> {
        let mut ctx = CommandContext::new(Actor::system("periods"));
        ctx.event_time = now;
        let mut appended = 0;
        for (store, _) in read_models
            .range_docs(SALES_PERIODS, "", "~", 100_000)
            .await?
        {
            let Some(replayed) = self
                .service
                .load::<PeriodControl>(&store, AsOf::Latest)
                .await?
            else {
                continue;
            };
            let Some(view) = periods_view(&replayed.state, now) else {
                continue;
            };
            for p in &view.periods {
                let recorded = replayed.state.periods.get(&p.period).map(|r| r.state);
                let period = p.period.clone();
                let command = match (p.state, recorded) {
                    (PeriodState::Closed, Some(PeriodState::Closed)) => continue,
                    (PeriodState::Closed, _) => PeriodCommand::Close {
                        period,
                        reason: "maximum delay reached".into(),
                        now,
                    },
                    (PeriodState::SoftClosed, None | Some(PeriodState::Open)) => {
                        PeriodCommand::SoftClose {
                            period,
                            reason: "upload window passed".into(),
                            now,
                        }
                    }
                    _ => continue,
                };
                self.run(&store, command, &ctx).await?;
                appended += 1;
            }
            appended += self.seal_all(&store, &ctx).await?;
        }
        Ok(appended)
    }

    /// Seals every closed period of `store` without a seal, from one replay of the log; the
    /// number sealed.
    async fn seal_all(&self, store: &str, ctx: &CommandContext) -> Result<usize, ServiceError> {
        let Some(replayed) = self
            .service
            .load::<PeriodControl>(store, AsOf::Latest)
            .await?
        else {
            return Ok(0);
        };
        let unsealed: Vec<&String> = replayed
            .state
            .periods
            .iter()
            .filter(|(_, r)| r.state == PeriodState::Closed && r.seal.is_none())
            .map(|(p, _)| p)
            .collect();
        if unsealed.is_empty() {
            return Ok(0);
        }
        let head = self.events.head_position().await?;
        let length = self.length(store).await?;
        let replay = replay_store(self.events.as_ref(), store, length, head).await?;
        let mut sealed = 0;
        for period in unsealed {
            let Some((position, totals)) = replay.at_close.get(period) else {
                continue;
            };
            let seal = PeriodSeal {
                through_position: *position,
                chain_hash: chain_hash_at(self.events.as_ref(), *position).await?,
                totals: totals.clone(),
            };
            self.record_seal(store, period, seal, ctx).await?;
            sealed += 1;
        }
        Ok(sealed)
    }

    /// Approves (`approve`: booked on the business date of `ctx.event_time` in the calendar the
    /// held order was placed in, which must lie in an open period of the store) or rejects
    /// exception `id` (the held event's id, scoped to the tenant) with `reason`; the date an
    /// approval booked on.
    ///
    /// # Errors
    /// Refused: no such exception, decided already, no reason, or today's period is not open;
    /// store failures.
    pub async fn decide(
        &self,
        id: &str,
        approve: bool,
        reason: &str,
        ctx: &CommandContext,
    ) -> Result<Option<NaiveDate>, ServiceError> {
        let mut booked = None;
        let command = if approve {
            let exception = self
                .service
                .load::<SalesException>(id, AsOf::Latest)
                .await?
                .and_then(|r| r.state.held);
            // Booked on today's date in the calendar the held order was placed in: the date the
            // sales views count the approval on.
            let calendar = exception
                .as_ref()
                .and_then(|h| h.calendar)
                .unwrap_or_default();
            let booked_date = calendar.business_date(ctx.event_time);
            booked = Some(booked_date);
            if let Some(held) = exception {
                let (tenant, _) = eventfold_core::tenant::split(id);
                let store = eventfold_core::tenant::scope(tenant, &held.store);
                if let Some(control) = self
                    .service
                    .load::<PeriodControl>(&store, AsOf::Latest)
                    .await?
                {
                    let booking = control.state.booking(booked_date, ctx.event_time, false);
                    if booking != Booking::Open && booking != Booking::Uncontrolled {
                        return Err(ServiceError::Refused {
                            code: "period_state",
                            refusal: eventfold_domain::Refusal::Conflict,
                            message: format!(
                                "today's business date {booked_date} is not in an open period of store {}: reopen or wait for the next period",
                                held.store
                            ),
                        });
                    }
                }
            }
            ExceptionCommand::Approve {
                reason: reason.to_owned(),
                booked_date,
            }
        } else {
            ExceptionCommand::Reject {
                reason: reason.to_owned(),
            }
        };
        self.service
            .execute::<SalesException>(id, command, ctx, version_render(200))
            .await?;
        Ok(booked)
    }
}

/// The periods of `control` up to the one holding `now`'s business date.
fn periods_view(control: &PeriodControl, now: DateTime<Utc>) -> Option<PeriodsView> {
    let settings = control.settings.clone()?;
    let today = settings.calendar.unwrap_or_default().business_date(now);
    let mut periods = Vec::new();
    let mut p = Period::of(settings.from, settings.length);
    while p.start <= today {
        let record = control.periods.get(&p.to_string());
        periods.push(PeriodStatus {
            period: p.to_string(),
            state: control
                .state_at(&p, now, false)
                .unwrap_or(PeriodState::Open),
            reopened: record.is_some_and(|r| r.reopened),
            soft_closes_at: settings.soft_closes_at(&p),
            closes_at: settings.closes_at(&p),
            seal: record.and_then(|r| r.seal.clone()),
        });
        p = p.next();
    }
    Some(PeriodsView { settings, periods })
}

/// A replay of one store's bookings: per period, the totals at the end of the replay and, for
/// a period closed during it, the position of its close and its totals there.
#[derive(Debug, Default)]
pub struct StoreReplay {
    /// Period name -> totals per currency at the end of the replay.
    pub totals: BTreeMap<String, Vec<PeriodTotal>>,
    /// Period name -> (close event's position, totals then).
    pub at_close: BTreeMap<String, (u64, Vec<PeriodTotal>)>,
}

/// Replays the log up to position `through` and books `store`'s (scoped) sales, refunds and
/// approved exceptions into its periods of `length` as the daily view does (a posting its
/// period control holds is left out).
///
/// # Errors
/// Store failures, or an event that does not decode.
pub async fn replay_store(
    events: &dyn EventStore,
    store: &str,
    length: PeriodLength,
    through: u64,
) -> Result<StoreReplay, StoreError> {
    let (tenant, unscoped) = eventfold_core::tenant::split(store);
    let mut control = PeriodControl::default();
    let mut totals: BTreeMap<String, BTreeMap<Currency, PeriodTotal>> = BTreeMap::new();
    let mut at_close = BTreeMap::new();
    let flat = |t: Option<&BTreeMap<Currency, PeriodTotal>>| -> Vec<PeriodTotal> {
        t.map(|t| t.values().cloned().collect()).unwrap_or_default()
    };
    let mut from = 0;
    let bad = |e: &RecordedEvent, m: String| {
        StoreError::Corrupt(format!("event at position {}: {m}", e.global_position))
    };
    'read: loop {
        let batch = events.read_all(from, BATCH).await?;
        let Some(last) = batch.last().map(|e| e.global_position) else {
            break;
        };
        for e in &batch {
            if e.global_position > through {
                break 'read;
            }
            if eventfold_core::tenant::of(&e.stream_id) != tenant {
                continue;
            }
            if let Some((s, ev)) = period_control_event(e).map_err(|m| bad(e, m))? {
                if s == store {
                    if let PeriodControlEvent::PeriodClosed { period, .. } = &ev {
                        at_close.insert(
                            period.clone(),
                            (e.global_position, flat(totals.get(period))),
                        );
                    }
                    control = control.apply(&ev);
                }
                continue;
            }
            let (effect, booked) = match sale_effect(e).map_err(|m| bad(e, m))? {
                Some(effect) => (effect, false),
                None => match approved_booking(e).map_err(|m| bad(e, m))? {
                    Some(effect) => (effect, true),
                    None => continue,
                },
            };
            // Postings from before period control was switched on count in their period too
            // (the daily view counted them).
            let period = Period::of(effect.business_date(e), length);
            if effect.store != unscoped
                || (!booked && matches!(control.booking_of(e, &effect), Booking::Held(_)))
            {
                continue;
            }
            let t = totals
                .entry(period.to_string())
                .or_default()
                .entry(effect.currency)
                .or_insert(PeriodTotal {
                    currency: effect.currency,
                    total: Decimal::ZERO,
                    orders: 0,
                    refunds: 0,
                });
            t.total += effect.amount;
            t.orders += effect.orders();
            t.refunds += effect.refunds();
        }
        from = last;
    }
    Ok(StoreReplay {
        totals: totals
            .iter()
            .map(|(p, t)| (p.clone(), flat(Some(t))))
            .collect(),
        at_close,
    })
}

/// The hash chain's hash (hex) of the event at `position`.
///
/// # Errors
/// Store failures; [`StoreError::Corrupt`] when there is no event there.
pub async fn chain_hash_at(events: &dyn EventStore, position: u64) -> Result<String, StoreError> {
    let rows = events.read_chain(position.saturating_sub(1), 1).await?;
    rows.into_iter()
        .find(|r| r.position == position)
        .and_then(|r| r.hash)
        .map(hex::encode)
        .ok_or_else(|| StoreError::Corrupt(format!("no chained event at position {position}")))
}

/// What `verify --period STORE/PERIOD` found.
#[derive(Debug, Clone, Serialize)]
pub struct PeriodVerifyReport {
    /// True when the seal's totals equal a replay of the whole log and the chain hash at the
    /// sealed position is the sealed one.
    pub ok: bool,
    /// Store id (scoped).
    pub store: String,
    /// Period name.
    pub period: String,
    /// The seal checked.
    pub seal: PeriodSeal,
    /// The period's totals replayed over the whole log now (equal to those at its close when
    /// nothing was booked into it since).
    pub replayed: Vec<PeriodTotal>,
    /// The chain hash at the sealed position now.
    pub chain_hash: String,
}

/// Checks the seal of `period` of `store` (see [`PeriodVerifyReport`]). Pair it with a walk
/// of the whole chain (`verify --all`) to prove that no event up to the seal changed.
///
/// # Errors
/// No period control, a period that is not sealed, store failures.
pub async fn verify_period(
    events: Arc<dyn EventStore>,
    store: &str,
    period: &str,
) -> Result<PeriodVerifyReport, ServiceError> {
    let service = Service::new(events.clone());
    let not_sealed = || ServiceError::Refused {
        code: "period_not_sealed",
        refusal: eventfold_domain::Refusal::NotFound,
        message: format!("period {period} of store {store} is not sealed"),
    };
    let control = service
        .load::<PeriodControl>(store, AsOf::Latest)
        .await?
        .map(|r| r.state)
        .unwrap_or_default();
    let seal = control
        .periods
        .get(period)
        .and_then(|p| p.seal.clone())
        .ok_or_else(not_sealed)?;
    let length = control.settings.map_or(PeriodLength::Month, |s| s.length);
    let head = events.head_position().await?;
    let replay = replay_store(events.as_ref(), store, length, head).await?;
    let replayed = replay.totals.get(period).cloned().unwrap_or_default();
    let at_close = replay.at_close.get(period).map(|(_, t)| t);
    let chain_hash = chain_hash_at(events.as_ref(), seal.through_position).await?;
    Ok(PeriodVerifyReport {
        ok: replayed == seal.totals
            && at_close == Some(&seal.totals)
            && chain_hash == seal.chain_hash,
        store: store.to_owned(),
        period: period.to_owned(),
        seal,
        replayed,
        chain_hash,
    })
}

/// The exceptions of `tenant` (of one store, in one state, when given) from the
/// `sales_exceptions` read model, in key order (store, then id: oldest first within a store),
/// at most 10,000.
///
/// # Errors
/// Store failures; a document that does not decode.
pub async fn list_exceptions(
    read_models: &dyn ReadModelStore,
    tenant: &str,
    store: Option<&str>,
    state: Option<ExceptionState>,
) -> Result<Vec<ExceptionView>, StoreError> {
    let prefix = store.map_or_else(String::new, |s| format!("{s}|"));
    let from = eventfold_core::tenant::scope(tenant, &prefix);
    let to = eventfold_core::tenant::scope(tenant, &format!("{prefix}~"));
    let docs = read_models
        .range_docs(SALES_EXCEPTIONS, &from, &to, 10_000)
        .await?;
    let mut out = Vec::new();
    for (key, doc) in docs {
        // The default tenant's keys are unscoped: skip other tenants' in its range.
        if eventfold_core::tenant::of(&key) != tenant {
            continue;
        }
        let view: ExceptionView = serde_json::from_str(&doc)
            .map_err(|e| StoreError::Corrupt(format!("{SALES_EXCEPTIONS} document {key}: {e}")))?;
        if state.is_none_or(|s| s == view.state) {
            out.push(view);
        }
    }
    Ok(out)
}

/// Runs [`PeriodDesk::tick`] every `every` until `stop` completes; a failed tick is logged
/// and tried again at the next.
pub async fn run_period_clock(
    desk: PeriodDesk,
    read_models: Arc<dyn ReadModelStore>,
    every: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        if let Err(e) = desk.tick(read_models.as_ref(), Utc::now()).await {
            tracing::warn!(error = %crate::error_chain(&e), "period clock tick failed; again at the next");
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = &mut stop => return,
        }
    }
}
