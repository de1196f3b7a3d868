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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use eventfold_core::read_model::{DocWrite, ProjectionCommit, ReadModelStore};
use eventfold_core::{
    deterministic_event_id, Actor, Aggregate, AppendRequest, EventStore, ExpectedVersion,
    RecordedEvent, StoreError,
};
use eventfold_domain::projections::daily_sales_key;
use eventfold_domain::reporting::{
    sale_effect, BusinessCalendar, CorrectionReason, SaleKind, SalesCorrection,
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

/// A business day's running total as the notifier has seen it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DayTotal {
    total: Decimal,
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
    calendar: BusinessCalendar,
}

impl CorrectionNotifier {
    /// A notifier over `events`, keeping its state in `read_models`, with the default business
    /// calendar (UTC days reported at 02:00 the next day).
    pub fn new(events: Arc<dyn EventStore>, read_models: Arc<dyn ReadModelStore>) -> Self {
        Self {
            service: Service::new(events.clone()),
            events,
            read_models,
            calendar: BusinessCalendar::default(),
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

    /// [`CorrectionNotifier::step`] from checkpoint `from` (as read just before).
    async fn step_from(&self, from: u64) -> Result<(usize, u64), NotifierError> {
        let batch = self.events.read_all(from, BATCH).await?;
        let Some(last) = batch.last().map(|e| e.global_position) else {
            return Ok((0, 0));
        };
        let mut effects = Vec::new();
        for event in &batch {
            let effect = sale_effect(event).map_err(|message| NotifierError::Poison {
                position: event.global_position,
                stream_id: event.stream_id.clone(),
                message,
            })?;
            if let Some(effect) = effect {
                let date = self.calendar.business_date(event.event_time);
                effects.push((daily_sales_key(event, &effect), date, effect, event));
            }
        }
        let mut keys: Vec<String> = effects.iter().map(|(k, ..)| k.clone()).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut totals: HashMap<String, DayTotal> = HashMap::new();
        for (key, doc) in self.read_models.get_docs(NOTIFIER_STATE, &keys).await? {
            let total = serde_json::from_str(&doc).map_err(|e| NotifierError::Poison {
                position: from,
                stream_id: String::new(),
                message: format!("{NOTIFIER_STATE} document {key:?} does not decode: {e}"),
            })?;
            totals.insert(key, total);
        }
        let mut appends = Vec::new();
        for (key, date, effect, event) in effects {
            let day = totals.entry(key).or_insert_with(|| DayTotal {
                total: Money::zero(effect.currency).amount,
            });
            let before = day.total;
            day.total += effect.amount;
            let Some(lateness_seconds) = self.calendar.lateness_seconds(event) else {
                continue;
            };
            let notice = SalesCorrectionNotice {
                date,
                store: effect.store.clone(),
                currency: effect.currency,
                delta: effect.amount,
                orders_delta: i64::from(effect.kind == SaleKind::Sale),
                before,
                after: day.total,
                reason: match effect.kind {
                    SaleKind::Sale => CorrectionReason::LateArrival,
                    SaleKind::Refund => CorrectionReason::Refund,
                },
                cause_event_id: event.event_id,
                cause_stream: event.stream_id.clone(),
                ingested_at: event.ingest_time,
                lateness_seconds,
            };
            let reason = notice.reason;
            appends.push((reason, self.notice_append(event, notice)?));
        }
        let mut appended = 0;
        if !appends.is_empty() {
            let (reasons, appends): (Vec<CorrectionReason>, Vec<AppendRequest>) =
                appends.into_iter().unzip();
            let streams: Vec<String> = appends.iter().map(|r| r.stream_id.clone()).collect();
            let outcomes = self.events.append_many(appends).await?;
            for ((request, reason), outcome) in streams.iter().zip(reasons).zip(outcomes) {
                match outcome {
                    Ok(o) if !o.duplicate => {
                        appended += 1;
                        metrics::counter!("eventfold_sales_correction_notices_total", "reason" => reason.as_str())
                            .increment(1);
                    }
                    Ok(_) => {}
                    // The stream exists with other events: only a notice of the same cause can
                    // be there, so the cause is noticed already.
                    Err(StoreError::VersionConflict { .. } | StoreError::EventIdReused { .. }) => {
                        tracing::warn!(stream = %request, "a correction notice stream holds another event; kept as it is");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let writes = totals
            .into_iter()
            .map(|(key, total)| DocWrite {
                key,
                doc: Some(serde_json::to_string(&total).expect("a decimal encodes")),
            })
            .collect();
        match self
            .read_models
            .commit_projections(vec![ProjectionCommit {
                projection: NOTIFIER_STATE.to_owned(),
                writes,
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

    fn notice_append(
        &self,
        cause: &RecordedEvent,
        notice: SalesCorrectionNotice,
    ) -> Result<AppendRequest, StoreError> {
        let tenant = eventfold_core::tenant::of(&cause.stream_id);
        let stream = SalesCorrection::stream_id(&eventfold_core::tenant::scope(
            tenant,
            &cause.event_id.to_string(),
        ));
        let mut ctx = CommandContext::new(Actor::system("sales-corrections"));
        ctx.event_time = cause.ingest_time;
        ctx.causation_id = Some(cause.event_id);
        ctx.correlation_id = cause.metadata.correlation_id;
        let id = deterministic_event_id(
            cause.ingest_time,
            format!("salescorrection/{}", cause.event_id).as_bytes(),
        );
        let event = SalesCorrectionEvent::SalesCorrectionNoticed(notice);
        let event = self
            .service
            .new_event::<SalesCorrection>(&stream, &event, &ctx, id)?;
        Ok(AppendRequest::new(
            stream,
            ExpectedVersion::NoStream,
            vec![event],
        ))
    }

    /// Handles batches until caught up with the log's head: the notices appended now.
    ///
    /// # Errors
    /// As [`CorrectionNotifier::step`].
    pub async fn catch_up(&self) -> Result<u64, NotifierError> {
        let mut appended = 0;
        loop {
            let (read, n) = self.step().await?;
            appended += n;
            if read == 0 {
                return Ok(appended);
            }
        }
    }

    /// Keeps up with the log until `stop` completes; a failed batch is logged and tried again
    /// after a second.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            let (waited_from, stepped) = match self.checkpoint().await {
                Ok(from) => (from, self.step_from(from).await),
                Err(e) => (0, Err(e.into())),
            };
            let pause = match stepped {
                Ok((0, _)) => None,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "correction notifier batch failed; again in 1 s");
                    Some(Duration::from_secs(1))
                }
            };
            tokio::select! {
                () = async {
                    match pause {
                        Some(d) => tokio::time::sleep(d).await,
                        None => {
                            tokio::select! {
                                () = self.events.wait_for_append(waited_from) => {}
                                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                            }
                        }
                    }
                } => {}
                () = &mut stop => return,
            }
        }
    }
}
