//! The correction notifier: turns every late sale or refund into a durable
//! `SalesCorrectionNoticed` event (see [`eventfold_domain::reporting`]).
//!
//! It tails the log from its own checkpoint and keeps, per business day of a store
//! (`store|YYYY-MM-DD|currency`, scoped to the tenant, the key of `daily_sales_by_store`), the
//! day's total as of the position it has reached: the notice's `before` and `after` are that
//! running total around the late event, so they are the same however often a batch is replayed.
//! A batch is handled in two steps:
//!
//! 1. the notices of its late events are appended, each to its own stream
//!    (`salescorrection-{cause event id}`, expecting no stream) with an event id derived from the
//!    cause, so a batch replayed after a crash appends nothing new;
//! 2. the running totals and the checkpoint are committed together as the read model
//!    [`NOTIFIER_STATE`] (through [`ReadModelStore::commit_projections`], which refuses a commit
//!    whose starting checkpoint moved: two servers running the notifier never both advance it).
//!
//! A notice is an event like any other: the relay publishes it, `sales_corrections` folds it.
//! Each one appended counts in `eventfold_sales_correction_notices_total{reason}`.
//! Events recorded as history by a backfill count in the totals and are never noticed.
//!
//! For a store with period control it also keeps the store's [`PeriodControl`] (key
//! `store|~periods`) and decides each posting as the daily view does
//! ([`PeriodControl::booking_of`]): a posting its closed period holds is raised as an exception
//! (stream `salesexception-{cause event id}`, counted in `eventfold_sales_exceptions_raised_total`)
//! instead of being counted; a late one in a soft-closed period is noticed with `soft_closed`;
//! an approved exception is counted on the day it was booked and noticed as
//! `exception-approved`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use eventfold_core::aggregate::decode_recorded;
use eventfold_core::read_model::{DocWrite, ProjectionCommit, ReadModelStore};
use eventfold_core::{
    deterministic_event_id, Actor, Aggregate, AppendRequest, EventStore, ExpectedVersion,
    RecordedEvent, StoreError,
};
use eventfold_domain::periods::{
    period_control_event, period_control_key, Booking, HeldPosting, PeriodControl,
    PeriodControlEvent, SalesException, SalesExceptionEvent,
};
use eventfold_domain::projections::daily_sales_key;
use eventfold_domain::reporting::{
    sale_effect, BusinessCalendar, CorrectionReason, SaleEffect, SaleKind, SalesCorrection,
    SalesCorrectionEvent, SalesCorrectionNotice,
};
use eventfold_domain::Money;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::service::{CommandContext, Service};

/// The notifier's read model (its running totals) and the name of its checkpoint
/// (`projection/sales_correction_state`).
pub const NOTIFIER_STATE: &str = "sales_correction_state";

/// Events the notifier reads per batch.
const BATCH: usize = 10_000;

/// Notices and exceptions per append while the rest of a batch's are built.
const APPEND_CHUNK: usize = 2_500;

/// A business day's running total as the notifier has seen it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DayTotal {
    total: Decimal,
}

/// What a notifier append is, for its counter.
enum Derived {
    Notice(CorrectionReason),
    Exception,
}

/// An event the notifier folds.
enum Posting<'a> {
    /// A sale or refund of an order.
    Sale {
        day_key: String,
        periods_key: String,
        effect: SaleEffect,
        event: &'a RecordedEvent,
    },
    /// An approved exception, booked on the day of its approval.
    Booked {
        day_key: String,
        effect: SaleEffect,
        event: &'a RecordedEvent,
        held: HeldPosting,
    },
    /// A change to a store's periods.
    Periods {
        key: String,
        event: PeriodControlEvent,
    },
}

impl<'a> Posting<'a> {
    fn of(event: &'a RecordedEvent) -> Result<Option<Self>, String> {
        let tenant = eventfold_core::tenant::of(&event.stream_id);
        if let Some(effect) = sale_effect(event)? {
            return Ok(Some(Self::Sale {
                day_key: daily_sales_key(event, &effect),
                periods_key: period_control_key(tenant, &effect.store),
                effect,
                event,
            }));
        }
        if event.event_type == "ExceptionApproved"
            && SalesException::id_of_stream(&event.stream_id).is_some()
        {
            if let SalesExceptionEvent::ExceptionApproved { held, .. } =
                decode_recorded::<SalesException>(event).map_err(|e| e.to_string())?
            {
                let effect = held.booked_effect();
                return Ok(Some(Self::Booked {
                    day_key: daily_sales_key(event, &effect),
                    effect,
                    event,
                    held,
                }));
            }
        }
        Ok(period_control_event(event)?.map(|(store, event)| {
            let (tenant, store) = eventfold_core::tenant::split(&store);
            Self::Periods {
                key: period_control_key(tenant, store),
                event,
            }
        }))
    }

    /// The state documents its fold reads.
    fn keys(&self) -> Vec<String> {
        match self {
            Self::Sale {
                day_key,
                periods_key,
                ..
            } => vec![day_key.clone(), periods_key.clone()],
            Self::Booked { day_key, .. } => vec![day_key.clone()],
            Self::Periods { key, .. } => vec![key.clone()],
        }
    }
}

/// The notifier's running state for a batch: day totals and the period control of stores.
#[derive(Default)]
struct State {
    days: HashMap<String, DayTotal>,
    periods: HashMap<String, PeriodControl>,
}

impl State {
    fn load(&mut self, key: String, doc: &str) -> Result<(), String> {
        let bad = |e: serde_json::Error| {
            format!("{NOTIFIER_STATE} document {key:?} does not decode: {e}")
        };
        if key.ends_with("|~periods") {
            let control = serde_json::from_str(doc).map_err(bad)?;
            self.periods.insert(key, control);
        } else {
            let total = serde_json::from_str(doc).map_err(bad)?;
            self.days.insert(key, total);
        }
        Ok(())
    }

    fn writes(self) -> Vec<DocWrite> {
        let days = self.days.into_iter().map(|(key, total)| DocWrite {
            key,
            doc: Some(serde_json::to_string(&total).expect("a decimal encodes")),
        });
        let periods = self.periods.into_iter().map(|(key, control)| DocWrite {
            key,
            doc: Some(serde_json::to_string(&control).expect("period control encodes")),
        });
        days.chain(periods).collect()
    }
}

/// Why the notifier stopped at an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifierError {
    /// A store failed (the batch is retried).
    #[error("correction notifier store failed")]
    Store(#[from] StoreError),
    /// An order event that does not decode: the notifier stops there, as the projections do.
    #[error("correction notifier failed at position {position} (stream {stream_id}): {message}")]
    Poison {
        /// Global position.
        position: u64,
        /// Stream of the event.
        stream_id: String,
        /// What went wrong.
        message: String,
    },
}

/// Appends a correction notice for every late sales effect (see the module docs).
#[derive(Clone)]
pub struct CorrectionNotifier {
    events: Arc<dyn EventStore>,
    read_models: Arc<dyn ReadModelStore>,
    service: Service,
    /// The log after a full batch, read while that batch was handled. The next step from that
    /// position takes it instead of reading again.
    read_ahead: Arc<std::sync::Mutex<Option<ReadAhead>>>,
}

/// Events read ahead: `(after position, events)`.
type ReadAhead = (u64, Vec<RecordedEvent>);

impl CorrectionNotifier {
    /// A notifier over `events`, keeping its state in `read_models`. Each sale is dated and
    /// judged late in the calendar its order was placed in.
    pub fn new(events: Arc<dyn EventStore>, read_models: Arc<dyn ReadModelStore>) -> Self {
        Self {
            service: Service::new(events.clone()),
            events,
            read_models,
            read_ahead: Arc::default(),
        }
    }

    /// The position the notifier has handled up to.
    ///
    /// # Errors
    /// The checkpoint cannot be read.
    pub async fn checkpoint(&self) -> Result<u64, StoreError> {
        self.read_models.projection_checkpoint(NOTIFIER_STATE).await
    }

    /// Handles the next batch after the checkpoint: `(events read, notices appended now)`;
    /// `(0, 0)` when caught up.
    ///
    /// # Errors
    /// A store failure (nothing is lost: the batch is handled again on the next call) or a
    /// poison event.
    pub async fn step(&self) -> Result<(usize, u64), NotifierError> {
        self.step_from(self.checkpoint().await?).await
    }

    /// [`CorrectionNotifier::step`] from checkpoint `from` (as read just before). After a full
    /// batch the next one is read while this one is handled (events keep their positions, so
    /// what that read found is what a read after this step would find, or less of it), and a
    /// notifier behind the log does not wait for its reads.
    async fn step_from(&self, from: u64) -> Result<(usize, u64), NotifierError> {
        let ahead = self
            .read_ahead
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .filter(|(after, _)| *after == from);
        let batch = match ahead {
            Some((_, batch)) => batch,
            None => self.events.read_all(from, BATCH).await?,
        };
        let Some(last) = batch.last().map(|e| e.global_position) else {
            return Ok((0, 0));
        };
        let full = batch.len() >= BATCH;
        let read_next = async {
            if full {
                // A failed read here is only a read not saved: the next step reads again.
                if let Ok(next) = self.events.read_all(last, BATCH).await {
                    *self
                        .read_ahead
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((last, next));
                }
            }
        };
        let ((), handled) = tokio::join!(read_next, self.handle(from, last, batch));
        handled
    }

    /// Folds `batch` (the log after `from`, up to `last`) into the notifier's state, appends its
    /// notices and exceptions and commits the state with the checkpoint `last`.
    async fn handle(
        &self,
        from: u64,
        last: u64,
        batch: Vec<RecordedEvent>,
    ) -> Result<(usize, u64), NotifierError> {
        let mut items = Vec::new();
        let mut keys = Vec::new();
        for event in &batch {
            let item = Posting::of(event).map_err(|message| NotifierError::Poison {
                position: event.global_position,
                stream_id: event.stream_id.clone(),
                message,
            })?;
            if let Some(item) = item {
                keys.extend(item.keys());
                items.push(item);
            }
        }
        keys.sort_unstable();
        keys.dedup();
        let mut state = State::default();
        for (key, doc) in self.read_models.get_docs(NOTIFIER_STATE, &keys).await? {
            state
                .load(key, &doc)
                .map_err(|message| NotifierError::Poison {
                    position: from,
                    stream_id: String::new(),
                    message,
                })?;
        }
        // The notices go to the store in chunks while the later ones are still being built: one
        // task appends the chunks in order (their positions follow the fold), so encoding the
        // next chunk overlaps the database writing the one before.
        let (chunks, mut queued) = tokio::sync::mpsc::channel::<Vec<(Derived, AppendRequest)>>(2);
        let notifier = self.clone();
        let writer = tokio::spawn(async move {
            let mut appended = 0;
            while let Some(chunk) = queued.recv().await {
                appended += notifier.append(chunk).await?;
            }
            Ok::<u64, StoreError>(appended)
        });
        let mut chunk = Vec::new();
        for item in items {
            if let Some(append) = self.decide(&mut state, item)? {
                chunk.push(append);
                // A failed send means the writer stopped on an error, which its join returns.
                if chunk.len() == APPEND_CHUNK
                    && chunks.send(std::mem::take(&mut chunk)).await.is_err()
                {
                    break;
                }
            }
        }
        if !chunk.is_empty() {
            let _ = chunks.send(chunk).await;
        }
        drop(chunks);
        let appended = writer.await.map_err(|e| {
            StoreError::Unavailable(format!("the correction notices' writer stopped: {e}").into())
        })??;
        match self
            .read_models
            .commit_projections(vec![ProjectionCommit {
                projection: NOTIFIER_STATE.to_owned(),
                writes: state.writes(),
                from_checkpoint: from,
                to_checkpoint: last,
            }])
            .await
        {
            // Another notifier handled this batch first; its notices are the same ones.
            Ok(()) | Err(StoreError::CheckpointMoved { .. }) => Ok((batch.len(), appended)),
            Err(e) => Err(e.into()),
        }
    }

    /// Folds one posting into the running state; the notice or exception it calls for.
    fn decide(
        &self,
        state: &mut State,
        item: Posting<'_>,
    ) -> Result<Option<(Derived, AppendRequest)>, StoreError> {
        let (day_key, periods_key, effect, event, original) = match item {
            Posting::Periods { key, event } => {
                let control = state.periods.remove(&key).unwrap_or_default();
                state.periods.insert(key, control.apply(&event));
                return Ok(None);
            }
            Posting::Sale {
                day_key,
                periods_key,
                effect,
                event,
            } => (day_key, Some(periods_key), effect, event, None),
            Posting::Booked {
                day_key,
                effect,
                event,
                held,
            } => (day_key, None, effect, event, Some(held)),
        };
        let calendar = effect.calendar;
        let date = effect.business_date(event);
        let control = periods_key.and_then(|k| state.periods.get(&k));
        let booking = control.map_or(Booking::Uncontrolled, |c| c.booking_of(event, &effect));
        if let Booking::Held(hold) = booking {
            let period = control
                .and_then(|c| c.settings.as_ref())
                .and_then(|s| s.period_of(date))
                .map_or_else(|| date.to_string(), |p| p.to_string());
            let held = HeldPosting {
                store: effect.store.clone(),
                date,
                period,
                currency: effect.currency,
                amount: effect.amount,
                kind: effect.kind,
                hold,
                cause_event_id: event.event_id,
                cause_stream: event.stream_id.clone(),
                ingested_at: event.ingest_time,
                calendar: (calendar != BusinessCalendar::default()).then_some(calendar),
            };
            let append = self.derived_append::<SalesException>(
                event,
                &SalesExceptionEvent::ExceptionRaised(held),
            )?;
            return Ok(Some((Derived::Exception, append)));
        }
        let day = state.days.entry(day_key).or_insert_with(|| DayTotal {
            total: Money::zero(effect.currency).amount,
        });
        let before = day.total;
        day.total += effect.amount;
        let (reason, lateness_seconds) = match &original {
            Some(held) => (
                CorrectionReason::ExceptionApproved,
                (event.ingest_time - calendar.reported_at(held.date)).num_seconds(),
            ),
            None => match calendar.lateness_seconds(event) {
                None => return Ok(None),
                Some(s) if effect.kind == SaleKind::Sale => (CorrectionReason::LateArrival, s),
                Some(s) => (CorrectionReason::Refund, s),
            },
        };
        let notice = SalesCorrectionNotice {
            date,
            store: effect.store.clone(),
            currency: effect.currency,
            delta: effect.amount,
            orders_delta: i64::from(effect.kind == SaleKind::Sale),
            before,
            after: day.total,
            reason,
            cause_event_id: event.event_id,
            cause_stream: event.stream_id.clone(),
            ingested_at: event.ingest_time,
            lateness_seconds,
            soft_closed: booking == Booking::SoftClosed,
            original_date: original.map(|h| h.date),
        };
        let append = self.derived_append::<SalesCorrection>(
            event,
            &SalesCorrectionEvent::SalesCorrectionNoticed(notice),
        )?;
        Ok(Some((Derived::Notice(reason), append)))
    }

    /// Appends the batch's notices and exceptions; the number new now (a replayed batch finds
    /// its own earlier appends and adds nothing).
    async fn append(&self, appends: Vec<(Derived, AppendRequest)>) -> Result<u64, StoreError> {
        append_derived(self.events.as_ref(), appends, |kind| match kind {
            Derived::Notice(reason) => metrics::counter!("eventfold_sales_correction_notices_total", "reason" => reason.as_str()).increment(1),
            Derived::Exception => metrics::counter!("eventfold_sales_exceptions_raised_total").increment(1),
        })
        .await
    }

    fn derived_append<A: Aggregate>(
        &self,
        cause: &RecordedEvent,
        event: &A::Event,
    ) -> Result<AppendRequest, StoreError> {
        derived_append::<A>(&self.service, "sales-corrections", cause, event)
    }

    /// Handles batches until caught up with the log's head: the notices appended now.
    ///
    /// # Errors
    /// As [`CorrectionNotifier::step`].
    pub async fn catch_up(&self) -> Result<u64, NotifierError> {
        catch_up_tail(|| self.step()).await
    }

    /// Keeps up with the log until `stop` completes; a failed batch is logged and tried again
    /// after a second. Returns the notices and exceptions appended while it ran.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) -> u64 {
        // Present from the start, so a dashboard or an alert's `increase()` sees them at zero.
        for reason in [
            CorrectionReason::LateArrival,
            CorrectionReason::Refund,
            CorrectionReason::Correction,
            CorrectionReason::ExceptionApproved,
        ] {
            metrics::counter!("eventfold_sales_correction_notices_total", "reason" => reason.as_str())
                .increment(0);
        }
        metrics::counter!("eventfold_sales_exceptions_raised_total").increment(0);
        run_tail(
            "correction notifier",
            &self.events,
            BATCH,
            || self.checkpoint(),
            |from| self.step_from(from),
            stop,
        )
        .await
    }
}

/// Appends events derived from other events (notices, exceptions, window corrections), each to
/// its own stream expecting no stream; `on_new(kind)` for each appended now. The number appended
/// now: a batch replayed after a crash finds its own earlier appends and adds nothing.
///
/// # Errors
/// Store failures other than finding a derived stream that exists already.
pub(crate) async fn append_derived<K>(
    events: &dyn EventStore,
    appends: Vec<(K, AppendRequest)>,
    on_new: impl Fn(K),
) -> Result<u64, StoreError> {
    if appends.is_empty() {
        return Ok(0);
    }
    let (kinds, appends): (Vec<K>, Vec<AppendRequest>) = appends.into_iter().unzip();
    let streams: Vec<String> = appends.iter().map(|r| r.stream_id.clone()).collect();
    let outcomes = events.append_many(appends).await?;
    let mut appended = 0;
    for ((stream, kind), outcome) in streams.iter().zip(kinds).zip(outcomes) {
        match outcome {
            Ok(o) if !o.duplicate => {
                appended += 1;
                on_new(kind);
            }
            Ok(_) => {}
            // The stream exists with other events: only an earlier append for the same cause
            // can have made it (a raised exception may since have been decided).
            Err(StoreError::VersionConflict { .. } | StoreError::EventIdReused { .. }) => {
                tracing::debug!(stream = %stream, "a derived stream exists already; kept as it is");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(appended)
}

/// The append of `event` to the stream of category `A` named by its cause
/// (`{category}-{cause event id}`, scoped to the cause's tenant), expecting no stream, with an
/// event id derived from the cause and actor `system:{actor}`: appended once however often the
/// cause is seen.
///
/// # Errors
/// The event does not encode.
pub(crate) fn derived_append<A: Aggregate>(
    service: &Service,
    actor: &str,
    cause: &RecordedEvent,
    event: &A::Event,
) -> Result<AppendRequest, StoreError> {
    let tenant = eventfold_core::tenant::of(&cause.stream_id);
    let stream = A::stream_id(&eventfold_core::tenant::scope(
        tenant,
        &cause.event_id.to_string(),
    ));
    let mut ctx = CommandContext::new(Actor::system(actor));
    ctx.event_time = cause.ingest_time;
    ctx.causation_id = Some(cause.event_id);
    ctx.correlation_id = cause.metadata.correlation_id;
    let id = deterministic_event_id(
        cause.ingest_time,
        format!("{}/{}", A::CATEGORY, cause.event_id).as_bytes(),
    );
    let event = service.new_event::<A>(&stream, event, &ctx, id)?;
    Ok(AppendRequest::new(
        stream,
        ExpectedVersion::NoStream,
        vec![event],
    ))
}

/// Takes `step`s until one reads nothing (`(events read, appended)`): what they appended.
///
/// # Errors
/// The first failed step's.
pub(crate) async fn catch_up_tail<S, E>(step: impl Fn() -> S) -> Result<u64, E>
where
    S: std::future::Future<Output = Result<(usize, u64), E>>,
{
    let mut appended = 0;
    loop {
        let (read, n) = step().await?;
        appended += n;
        if read == 0 {
            return Ok(appended);
        }
    }
}

/// How long a tailing worker rests after a step that caught up with the log before it reads
/// again: its notices trail the log by up to this much more, and a busy log costs it about 20
/// steps (each a read and a state commit) a second instead of one per append. Measured on
/// PostgreSQL (`bench append --serve-workers`, 16 clients x 1 event): a worker stepping without
/// rest halved the appends' throughput.
const TAIL_LINGER: Duration = Duration::from_millis(50);

/// Runs a worker that tails the log from its own checkpoint until `stop` completes: reads the
/// checkpoint and takes a step from it (`(events read, _)`). After a full batch (`batch`
/// events) it steps again at once; after a smaller one it rests [`TAIL_LINGER`]; after an empty
/// one it waits for an append after that checkpoint (at most 500 ms). A failed step is logged
/// (as `name`) and tried again after a second. Returns what its steps appended (`_`, summed).
pub(crate) async fn run_tail<C, S, E>(
    name: &'static str,
    events: &Arc<dyn EventStore>,
    batch: usize,
    checkpoint: impl Fn() -> C,
    step_from: impl Fn(u64) -> S,
    stop: impl std::future::Future<Output = ()>,
) -> u64
where
    C: std::future::Future<Output = Result<u64, StoreError>>,
    S: std::future::Future<Output = Result<(usize, u64), E>>,
    E: std::error::Error + From<StoreError>,
{
    let mut stop = std::pin::pin!(stop);
    let mut appended = 0;
    loop {
        let (waited_from, stepped) = match checkpoint().await {
            Ok(from) => (from, step_from(from).await),
            Err(e) => (0, Err(e.into())),
        };
        if let Ok((_, n)) = stepped {
            appended += n;
        }
        let pause = match stepped {
            Ok((0, _)) => None,
            Ok((n, _)) if n >= batch => continue,
            Ok(_) => Some(TAIL_LINGER),
            Err(e) => {
                tracing::warn!(worker = name, error = %crate::error_chain(&e), "batch failed; again in 1 s");
                Some(Duration::from_secs(1))
            }
        };
        tokio::select! {
            () = async {
                match pause {
                    Some(d) => tokio::time::sleep(d).await,
                    None => {
                        tokio::select! {
                            () = events.wait_for_append(waited_from) => {}
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
            } => {}
            () = &mut stop => return appended,
        }
    }
}
