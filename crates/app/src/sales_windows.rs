//! The windows worker: demand per SKU in event-time windows, with a grace period, for
//! `GET /trending` ("what sells right now"), built on the pure aggregator of
//! [`eventfold_domain::windows`].
//!
//! It tails the log from its own checkpoint and feeds every order placed (its lines: units and
//! revenue per SKU, at the order's event time) into one aggregator per store, of one-minute
//! tumbling **base windows** ([`BASE_SECS`]) with the configured grace period. A query composes
//! any tumbling or hopping window whose size and advance are whole minutes from these minutes,
//! so one worker serves every window a caller asks for.
//!
//! State, in the read model [`SALES_WINDOWS`], committed with the worker's checkpoint in one
//! transaction (as the correction notifier does):
//! - `{store}|~live`: the store's aggregator (its live minutes and its watermark);
//! - `{store}|{YYYY-MM-DDTHH:MMZ}`: a final minute: figures per SKU and currency, and how many
//!   late records corrected it afterwards.
//!
//! A record for a minute that is final already (later than the grace period) is **never
//! dropped**: it is added to the final minute and, unless it is backfilled history (never late),
//! recorded as a durable `WindowCorrectionNoticed` event (reason `late-after-grace`, stream
//! `windowcorrection-{cause event id}`, appended once per cause) and counted in
//! `eventfold_window_late_corrections_total`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use eventfold_core::read_model::{DocWrite, ProjectionCommit, ReadModelStore};
use eventfold_core::{AppendRequest, EventStore, RecordedEvent, StoreError};
use eventfold_domain::windows::{
    placed_order, sku_key, split_sku_key, SkuFigures, WindowAggregator, WindowCorrection,
    WindowCorrectionEvent, WindowCorrectionLine, WindowCorrectionNotice, WindowOutput, WindowSpec,
    LATE_AFTER_GRACE,
};
use serde::{Deserialize, Serialize};

use crate::reporting::{append_derived, catch_up_tail, derived_append, run_tail, NotifierError};
use crate::service::Service;

/// The worker's read model (and the name of its checkpoint).
pub const SALES_WINDOWS: &str = "sales_windows";

/// Length of a base window, seconds: queries compose windows of whole minutes.
pub const BASE_SECS: i64 = 60;

/// The grace period when none is configured: 60 seconds.
pub const DEFAULT_GRACE_SECS: i64 = 60;

/// Events the worker reads per batch.
const BATCH: usize = 10_000;

/// The key suffix of a store's aggregator.
const LIVE: &str = "~live";

/// A final base window of a store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalMinute {
    /// Figures per `{sku}|{currency}` ([`sku_key`]).
    pub skus: BTreeMap<String, SkuFigures>,
    /// Records that arrived after the minute was final (each added to `skus`).
    #[serde(default)]
    pub late_corrections: u64,
}

impl FinalMinute {
    fn add(&mut self, key: &str, f: SkuFigures) {
        let e = self.skus.entry(key.to_owned()).or_default();
        e.units += f.units;
        e.revenue += f.revenue;
    }
}

/// The key of a store's final minute starting at `start` (Unix seconds).
fn minute_key(store: &str, start: i64) -> String {
    let at = DateTime::from_timestamp(start, 0).unwrap_or(DateTime::<Utc>::MIN_UTC);
    format!("{store}|{}", at.format("%Y-%m-%dT%H:%MZ"))
}

fn live_key(store: &str) -> String {
    format!("{store}|{LIVE}")
}

/// Feeds every order placed into its store's event-time windows (see the module docs).
#[derive(Clone)]
pub struct WindowWorker {
    events: Arc<dyn EventStore>,
    read_models: Arc<dyn ReadModelStore>,
    service: Service,
    spec: WindowSpec,
}

impl WindowWorker {
    /// A worker over `events`, keeping its state in `read_models`, with a grace period of
    /// `grace_secs` seconds.
    ///
    /// # Errors
    /// A negative grace period.
    pub fn new(
        events: Arc<dyn EventStore>,
        read_models: Arc<dyn ReadModelStore>,
        grace_secs: i64,
    ) -> Result<Self, String> {
        Ok(Self {
            service: Service::new(events.clone()),
            spec: WindowSpec::new(BASE_SECS, BASE_SECS, grace_secs)?,
            events,
            read_models,
        })
    }

    /// The position the worker has handled up to.
    ///
    /// # Errors
    /// The checkpoint cannot be read.
    pub async fn checkpoint(&self) -> Result<u64, StoreError> {
        self.read_models.projection_checkpoint(SALES_WINDOWS).await
    }

    /// Handles the next batch after the checkpoint: `(events read, corrections noticed now)`.
    ///
    /// # Errors
    /// A store failure (the batch is handled again on the next call) or a poison event.
    pub async fn step(&self) -> Result<(usize, u64), NotifierError> {
        self.step_from(self.checkpoint().await?).await
    }

    async fn step_from(&self, from: u64) -> Result<(usize, u64), NotifierError> {
        let batch = self.events.read_all(from, BATCH).await?;
        let Some(last) = batch.last().map(|e| e.global_position) else {
            return Ok((0, 0));
        };
        let mut placed = Vec::new();
        for event in &batch {
            let order = placed_order(event).map_err(|message| NotifierError::Poison {
                position: event.global_position,
                stream_id: event.stream_id.clone(),
                message,
            })?;
            if let Some(order) = order {
                let tenant = eventfold_core::tenant::of(&event.stream_id);
                let store = eventfold_core::tenant::scope(tenant, &order.store);
                placed.push((store, order, event));
            }
        }
        let mut live: HashMap<String, WindowAggregator> = HashMap::new();
        let keys: Vec<String> = {
            let mut k: Vec<String> = placed.iter().map(|(s, _, _)| live_key(s)).collect();
            k.sort_unstable();
            k.dedup();
            k
        };
        for (key, doc) in self.read_models.get_docs(SALES_WINDOWS, &keys).await? {
            let agg = serde_json::from_str(&doc).map_err(|e| NotifierError::Poison {
                position: from,
                stream_id: String::new(),
                message: format!("{SALES_WINDOWS} document {key:?} does not decode: {e}"),
            })?;
            live.insert(key, agg);
        }
        // Final minutes' additions in this batch, by key; merged with what is stored below.
        let mut finals: BTreeMap<String, FinalMinute> = BTreeMap::new();
        let mut notices = Vec::new();
        for (store, order, event) in &placed {
            let agg = live
                .entry(live_key(store))
                .or_insert_with(|| WindowAggregator::new(self.spec));
            let mut late: BTreeMap<i64, (Vec<WindowCorrectionLine>, i64)> = BTreeMap::new();
            for line in &order.lines {
                let key = sku_key(&line.sku, order.currency);
                for out in agg.add(&key, line.units, line.revenue, event.event_time) {
                    match out {
                        WindowOutput::Final { start, skus } => {
                            let f = finals.entry(minute_key(store, start)).or_default();
                            for (k, figures) in skus {
                                f.add(&k, figures);
                            }
                        }
                        WindowOutput::LateCorrection {
                            start,
                            sku,
                            figures,
                            behind_watermark_secs,
                        } => {
                            let f = finals.entry(minute_key(store, start)).or_default();
                            f.add(&sku, figures);
                            let (lines, behind) = late.entry(start).or_default();
                            *behind = (*behind).max(behind_watermark_secs);
                            lines.push(WindowCorrectionLine {
                                sku: split_sku_key(&sku).0.to_owned(),
                                currency: order.currency,
                                units: figures.units,
                                revenue: figures.revenue,
                            });
                        }
                    }
                }
            }
            for (start, (lines, behind)) in late {
                // History is never late: its correction is applied without a notice.
                if event.metadata.backfill {
                    continue;
                }
                finals
                    .entry(minute_key(store, start))
                    .or_default()
                    .late_corrections += 1;
                notices.push(self.notice(store, start, lines, behind, event)?);
            }
        }
        let final_keys: Vec<String> = finals.keys().cloned().collect();
        let mut writes = Vec::new();
        let stored: HashMap<String, String> = self
            .read_models
            .get_docs(SALES_WINDOWS, &final_keys)
            .await?
            .into_iter()
            .collect();
        for (key, add) in finals {
            let mut doc: FinalMinute = match stored.get(&key) {
                Some(d) => serde_json::from_str(d).map_err(|e| NotifierError::Poison {
                    position: from,
                    stream_id: String::new(),
                    message: format!("{SALES_WINDOWS} document {key:?} does not decode: {e}"),
                })?,
                None => FinalMinute::default(),
            };
            for (k, f) in &add.skus {
                doc.add(k, *f);
            }
            doc.late_corrections += add.late_corrections;
            writes.push(DocWrite {
                key,
                doc: Some(serde_json::to_string(&doc).expect("a final minute encodes")),
            });
        }
        for (key, agg) in live {
            writes.push(DocWrite {
                key,
                doc: Some(serde_json::to_string(&agg).expect("an aggregator encodes")),
            });
        }
        let appended = append_derived(self.events.as_ref(), notices, |()| {
            metrics::counter!("eventfold_window_late_corrections_total").increment(1);
        })
        .await?;
        match self
            .read_models
            .commit_projections(vec![ProjectionCommit {
                projection: SALES_WINDOWS.to_owned(),
                writes,
                from_checkpoint: from,
                to_checkpoint: last,
            }])
            .await
        {
            // Another worker handled this batch first; its corrections are the same ones.
            Ok(()) | Err(StoreError::CheckpointMoved { .. }) => Ok((batch.len(), appended)),
            Err(e) => Err(e.into()),
        }
    }

    fn notice(
        &self,
        store: &str,
        start: i64,
        lines: Vec<WindowCorrectionLine>,
        behind_watermark_secs: i64,
        event: &RecordedEvent,
    ) -> Result<((), AppendRequest), StoreError> {
        let at = |t: i64| DateTime::from_timestamp(t, 0).unwrap_or(DateTime::<Utc>::MIN_UTC);
        let notice = WindowCorrectionNotice {
            store: eventfold_core::tenant::unscoped(store).to_owned(),
            window_start: at(start),
            window_end: at(start + BASE_SECS),
            reason: LATE_AFTER_GRACE.to_owned(),
            lines,
            cause_event_id: event.event_id,
            cause_stream: event.stream_id.clone(),
            event_time: event.event_time,
            ingested_at: event.ingest_time,
            behind_watermark_secs,
        };
        let append = derived_append::<WindowCorrection>(
            &self.service,
            "sales-windows",
            event,
            &WindowCorrectionEvent::WindowCorrectionNoticed(notice),
        )?;
        Ok(((), append))
    }

    /// Handles batches until caught up with the log's head: the corrections noticed now.
    ///
    /// # Errors
    /// As [`WindowWorker::step`].
    pub async fn catch_up(&self) -> Result<u64, NotifierError> {
        catch_up_tail(|| self.step()).await
    }

    /// Keeps up with the log until `stop` completes; a failed batch is logged and tried again
    /// after a second.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        run_tail(
            "windows",
            &self.events,
            BATCH,
            || self.checkpoint(),
            |from| self.step_from(from),
            stop,
        )
        .await;
    }
}

/// One SKU's figures in a window, as `GET /trending` ranks them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrendingSku {
    /// The SKU.
    pub sku: String,
    /// ISO 4217 code of the revenue.
    pub currency: String,
    /// Units ordered.
    pub units: u64,
    /// Revenue, decimal.
    pub revenue: rust_decimal::Decimal,
}

/// One window of a store, as `GET /trending` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrendingWindow {
    /// Its start (UTC, inclusive).
    pub start: DateTime<Utc>,
    /// Its end (UTC, exclusive).
    pub end: DateTime<Utc>,
    /// Final: the watermark has passed its end (later records correct it, with a notice).
    pub is_final: bool,
    /// Records that corrected it after it was final.
    pub late_corrections: u64,
    /// Its hottest SKUs: most units first, then most revenue, then by SKU.
    pub top: Vec<TrendingSku>,
}

/// What a trending query answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trending {
    /// The newest event time seen for the store (`None`: nothing placed yet).
    pub newest_event_time: Option<DateTime<Utc>>,
    /// Newest event time minus the grace period.
    pub watermark: Option<DateTime<Utc>>,
    /// The grace period, seconds.
    pub grace_secs: i64,
    /// The most recent windows, newest first.
    pub windows: Vec<TrendingWindow>,
}

/// The `count` most recent windows of `spec` (size and advance whole minutes) of `store`
/// (scoped), newest first, each with its `top` hottest SKUs: the newest is the one starting at
/// the last multiple of the advance at or before the store's newest event time.
///
/// # Errors
/// A spec whose size or advance is not a whole number of minutes ([`StoreError::InvalidRequest`]);
/// store failures; a document that does not decode.
pub async fn trending(
    read_models: &dyn ReadModelStore,
    store: &str,
    spec: WindowSpec,
    count: usize,
    top: usize,
) -> Result<Trending, StoreError> {
    if spec.size_secs % BASE_SECS != 0 || spec.advance_secs % BASE_SECS != 0 {
        return Err(StoreError::InvalidRequest(format!(
            "window size and advance must be whole minutes, got {} s and {} s",
            spec.size_secs, spec.advance_secs
        )));
    }
    let bad = |key: &str, e: serde_json::Error| {
        StoreError::Corrupt(format!("{SALES_WINDOWS} document {key:?}: {e}"))
    };
    let live_doc = read_models
        .get_docs(SALES_WINDOWS, &[live_key(store)])
        .await?;
    let Some((key, doc)) = live_doc.into_iter().next() else {
        return Ok(Trending {
            newest_event_time: None,
            watermark: None,
            grace_secs: 0,
            windows: Vec::new(),
        });
    };
    let agg: WindowAggregator = serde_json::from_str(&doc).map_err(|e| bad(&key, e))?;
    let grace_secs = agg.spec().grace_secs;
    let Some(newest) = agg.newest_event_time() else {
        return Ok(Trending {
            newest_event_time: None,
            watermark: None,
            grace_secs,
            windows: Vec::new(),
        });
    };
    let advance = spec.advance_secs;
    let newest_start = newest.timestamp().div_euclid(advance) * advance;
    let count = count.max(1) as i64;
    let first = newest_start - (count - 1) * advance;
    let last_minute = newest_start + spec.size_secs - BASE_SECS;
    // Every minute the windows cover: the final ones stored, the live ones in the aggregator.
    let minutes = ((last_minute - first) / BASE_SECS + 1) as usize;
    let stored = read_models
        .range_docs(
            SALES_WINDOWS,
            &minute_key(store, first),
            &minute_key(store, last_minute),
            minutes + 1,
        )
        .await?;
    let mut by_minute: BTreeMap<i64, FinalMinute> = BTreeMap::new();
    for (key, doc) in stored {
        let Some(text) = key.rsplit('|').next() else {
            continue;
        };
        let Ok(at) = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%MZ") else {
            continue;
        };
        let minute: FinalMinute = serde_json::from_str(&doc).map_err(|e| bad(&key, e))?;
        by_minute.insert(at.and_utc().timestamp(), minute);
    }
    for (start, skus) in agg.live().range(first..=last_minute) {
        let m = by_minute.entry(*start).or_default();
        for (k, f) in skus {
            m.add(k, *f);
        }
    }
    let mut windows = Vec::new();
    let mut start = newest_start;
    while start >= first {
        let end = start + spec.size_secs;
        let mut sums: HashMap<&str, SkuFigures> = HashMap::new();
        let mut late_corrections = 0;
        for (_, m) in by_minute.range(start..end) {
            late_corrections += m.late_corrections;
            for (k, f) in &m.skus {
                let e = sums.entry(k.as_str()).or_default();
                e.units += f.units;
                e.revenue += f.revenue;
            }
        }
        let mut ranked: Vec<TrendingSku> = sums
            .into_iter()
            .map(|(k, f)| {
                let (sku, currency) = split_sku_key(k);
                TrendingSku {
                    sku: sku.to_owned(),
                    currency: currency.to_owned(),
                    units: f.units,
                    revenue: f.revenue,
                }
            })
            .collect();
        ranked.sort_by(|a, b| {
            b.units
                .cmp(&a.units)
                .then(b.revenue.cmp(&a.revenue))
                .then_with(|| a.sku.cmp(&b.sku))
                .then_with(|| a.currency.cmp(&b.currency))
        });
        ranked.truncate(top);
        let at = |t: i64| DateTime::from_timestamp(t, 0).unwrap_or(DateTime::<Utc>::MIN_UTC);
        windows.push(TrendingWindow {
            start: at(start),
            end: at(end),
            // Final once its last minute is.
            is_final: agg.is_final(end - BASE_SECS),
            late_corrections,
            top: ranked,
        });
        start -= advance;
    }
    Ok(Trending {
        newest_event_time: Some(newest),
        watermark: agg.watermark(),
        grace_secs,
        windows,
    })
}
