//! Windows by event time with a grace period: units and revenue per SKU over tumbling or
//! hopping windows, as a pure aggregator (no clock, no I/O) that a projection or a Kafka
//! consume-transform-produce worker feeds in the order records arrive.
//!
//! - A window is `[start, start + size)`, starts aligned to multiples of `advance` since the Unix
//!   epoch; `advance == size` is a tumbling window, `advance < size` a hopping one (each record
//!   falls into `size / advance` windows).
//! - The **watermark** is the highest event time seen minus the **grace period**. A window is
//!   **final** once the watermark reaches its end: its figures are emitted once
//!   ([`WindowOutput::Final`]) and its state dropped, so the state holds only the windows that
//!   end within `size + grace` of the newest event (Kafka Streams' window retention).
//! - A record for a window that is final already is **never dropped** (where Kafka Streams logs
//!   "Skipping record for expired window" and loses it): it is emitted as a
//!   [`WindowOutput::LateCorrection`] of that window, so a final plus its corrections always equal
//!   what a recomputation over every record gives.
//!
//! Memory: a live window holds one entry per SKU seen in it (the SKU's string, units, revenue
//! and hash-map overhead): `eventfold bench windows` measures 115-200 MB of resident memory for
//! one window of a million live SKUs, so a million live SKUs in each of the
//! `(size + grace) / advance + 1` live windows cost that much per window.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use eventfold_core::aggregate::decode_recorded;
use eventfold_core::{Aggregate, RecordedEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::Currency;
use crate::order::{Order, OrderEvent};
use crate::{DomainError, Refusal};

/// Window size, advance and grace period, in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    /// Length of a window, seconds (at least 1).
    pub size_secs: i64,
    /// Distance between window starts, seconds (1 to `size_secs`, dividing it).
    pub advance_secs: i64,
    /// How far behind the newest event time a record may be and still count before its window
    /// is final, seconds (0 or more).
    pub grace_secs: i64,
}

impl WindowSpec {
    /// Checks the spec.
    ///
    /// # Errors
    /// A message naming the field: a size below 1 s, an advance outside 1 s..size or not
    /// dividing the size, a negative grace.
    pub fn new(size_secs: i64, advance_secs: i64, grace_secs: i64) -> Result<Self, String> {
        if size_secs < 1 {
            return Err(format!("size must be at least 1 s, got {size_secs} s"));
        }
        if !(1..=size_secs).contains(&advance_secs) || size_secs % advance_secs != 0 {
            return Err(format!(
                "advance must be from 1 s to the size ({size_secs} s) and divide it, got {advance_secs} s"
            ));
        }
        if grace_secs < 0 {
            return Err(format!("grace must be 0 s or more, got {grace_secs} s"));
        }
        Ok(Self {
            size_secs,
            advance_secs,
            grace_secs,
        })
    }

    /// The starts (Unix seconds) of every window that holds an instant, oldest first.
    pub fn windows_of(&self, at: DateTime<Utc>) -> impl Iterator<Item = i64> {
        let t = at.timestamp();
        let advance = self.advance_secs;
        let last = t.div_euclid(advance) * advance;
        let count = self.size_secs / advance;
        (0..count).rev().map(move |k| last - k * advance)
    }
}

/// Reads a window duration such as `30s`, `5m` or `1h` (a whole number and a unit: `s`
/// seconds, `m` minutes, `h` hours), at most 7 days: seconds.
///
/// # Errors
/// A message naming the text and what is wrong.
pub fn parse_window_duration(text: &str) -> Result<i64, String> {
    crate::parse_whole_duration(text, &[("s", 1), ("m", 60), ("h", 3600)])
        .filter(|s| *s <= 7 * 24 * 3600)
        .ok_or_else(|| {
            format!("duration {text:?} is not a whole number of seconds, minutes or hours such as 30s, 5m or 1h (at most 7 days)")
        })
}

/// Units and revenue of one SKU in one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SkuFigures {
    /// Units sold.
    pub units: u64,
    /// Revenue, decimal.
    pub revenue: Decimal,
}

impl SkuFigures {
    fn add(&mut self, units: u64, revenue: Decimal) {
        self.units += units;
        self.revenue += revenue;
    }
}

/// What the aggregator emits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowOutput {
    /// A window became final: every SKU's figures in it, once.
    Final {
        /// Window start, Unix seconds.
        start: i64,
        /// Figures per SKU.
        skus: HashMap<String, SkuFigures>,
    },
    /// A record arrived for a window already final: what it adds to that window's figures
    /// (reason `late-after-grace`).
    LateCorrection {
        /// Window start, Unix seconds.
        start: i64,
        /// The SKU.
        sku: String,
        /// What the record adds.
        figures: SkuFigures,
        /// Seconds the record's event time is behind the watermark when it arrived.
        behind_watermark_secs: i64,
    },
}

/// The window state: live windows by start, and the watermark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowAggregator {
    spec: WindowSpec,
    /// Highest event time seen, Unix seconds.
    max_event_secs: Option<i64>,
    /// Live (not yet final) windows by start.
    live: BTreeMap<i64, HashMap<String, SkuFigures>>,
    /// Every window that starts before this is final (Unix seconds).
    final_before: Option<i64>,
}

impl WindowAggregator {
    /// An empty aggregator for `spec`.
    pub fn new(spec: WindowSpec) -> Self {
        Self {
            spec,
            max_event_secs: None,
            live: BTreeMap::new(),
            final_before: None,
        }
    }

    /// The watermark: the highest event time seen minus the grace period (`None` before the
    /// first record).
    pub fn watermark(&self) -> Option<DateTime<Utc>> {
        self.max_event_secs
            .and_then(|t| DateTime::from_timestamp(t - self.spec.grace_secs, 0))
    }

    /// Live windows, by start: the ones not yet final.
    pub fn live(&self) -> &BTreeMap<i64, HashMap<String, SkuFigures>> {
        &self.live
    }

    /// The spec the aggregator runs.
    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    /// The highest event time seen (`None` before the first record).
    pub fn newest_event_time(&self) -> Option<DateTime<Utc>> {
        self.max_event_secs
            .and_then(|t| DateTime::from_timestamp(t, 0))
    }

    /// Whether the window starting at `start` (Unix seconds) is final: the watermark has
    /// passed its end, so a record for it now is a [`WindowOutput::LateCorrection`].
    pub fn is_final(&self, start: i64) -> bool {
        self.final_before.is_some_and(|f| start < f)
    }

    /// Folds one record (a sale of `units` of `sku` for `revenue` at `event_time`) and returns
    /// what it finalizes or corrects, in window order.
    pub fn add(
        &mut self,
        sku: &str,
        units: u64,
        revenue: Decimal,
        event_time: DateTime<Utc>,
    ) -> Vec<WindowOutput> {
        let spec = self.spec;
        let mut out = Vec::new();
        let t = event_time.timestamp();
        let watermark = self.max_event_secs.map(|m| m - spec.grace_secs);
        for start in spec.windows_of(event_time) {
            let is_final = self.final_before.is_some_and(|f| start < f);
            if is_final {
                out.push(WindowOutput::LateCorrection {
                    start,
                    sku: sku.to_owned(),
                    figures: SkuFigures { units, revenue },
                    behind_watermark_secs: watermark.map_or(0, |w| (w - t).max(0)),
                });
            } else {
                self.live
                    .entry(start)
                    .or_default()
                    .entry(sku.to_owned())
                    .or_default()
                    .add(units, revenue);
            }
        }
        if self.max_event_secs.is_none_or(|m| t > m) {
            self.max_event_secs = Some(t);
            out.extend(self.close_up_to(t - spec.grace_secs));
        }
        out
    }

    /// Finalizes every live window that ends at or before `watermark` (Unix seconds).
    fn close_up_to(&mut self, watermark: i64) -> Vec<WindowOutput> {
        let spec = self.spec;
        // Windows with start + size <= watermark are final: the first open one starts at the
        // first window start above watermark - size.
        let a = spec.advance_secs;
        let boundary = (watermark - spec.size_secs + a).div_euclid(a) * a;
        if self.final_before.is_some_and(|f| f >= boundary) {
            return Vec::new();
        }
        self.final_before = Some(boundary);
        let still_live = self.live.split_off(&boundary);
        let done = std::mem::replace(&mut self.live, still_live);
        done.into_iter()
            .map(|(start, skus)| WindowOutput::Final { start, skus })
            .collect()
    }
}

/// One line of a placed order, as the windows count it: units and revenue of a SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedLine {
    /// The SKU.
    pub sku: String,
    /// Units.
    pub units: u64,
    /// The line's total.
    pub revenue: Decimal,
}

/// An order placed at a store, as the windows count it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedOrder {
    /// Store id (unscoped; the event's stream carries the tenant).
    pub store: String,
    /// The order's currency.
    pub currency: Currency,
    /// Its lines.
    pub lines: Vec<PlacedLine>,
}

/// The order an `OrderCreated` or `OrderRecorded` event of an order stream places (`None` for
/// every other event). Windows count demand as it happens: the lines of orders placed (or sales
/// recorded at a till), at the order's event time.
///
/// # Errors
/// The event is an order's `OrderCreated` or `OrderRecorded` but does not decode (a poison
/// event).
pub fn placed_order(event: &RecordedEvent) -> Result<Option<PlacedOrder>, String> {
    if !matches!(event.event_type.as_str(), "OrderCreated" | "OrderRecorded")
        || Order::id_of_stream(&event.stream_id).is_none()
    {
        return Ok(None);
    }
    match decode_recorded::<Order>(event).map_err(|e| e.to_string())? {
        OrderEvent::OrderCreated {
            store_id,
            lines,
            total,
            ..
        }
        | OrderEvent::OrderRecorded {
            store_id,
            lines,
            total,
            ..
        } => Ok(Some(PlacedOrder {
            store: store_id,
            currency: total.currency,
            lines: lines
                .into_iter()
                .map(|l| PlacedLine {
                    sku: l.sku,
                    units: u64::from(l.quantity),
                    revenue: l.amount.amount,
                })
                .collect(),
        })),
        _ => Ok(None),
    }
}

/// The key a SKU's figures have in a window of a store that sells in several currencies:
/// `{sku}|{currency}` (SKU ids hold no `|`).
pub fn sku_key(sku: &str, currency: Currency) -> String {
    format!("{sku}|{currency}")
}

/// The SKU and currency of a [`sku_key`].
pub fn split_sku_key(key: &str) -> (&str, &str) {
    key.rsplit_once('|').unwrap_or((key, ""))
}

/// What one late record added to a window that was final already (reason `late-after-grace`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCorrectionLine {
    /// The SKU.
    pub sku: String,
    /// ISO 4217 code of the revenue.
    pub currency: Currency,
    /// Units added.
    pub units: u64,
    /// Revenue added, decimal.
    pub revenue: Decimal,
}

/// A correction of a final window by a record that came after the grace period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCorrectionNotice {
    /// Store id (unscoped).
    pub store: String,
    /// Start of the corrected window (UTC).
    pub window_start: DateTime<Utc>,
    /// Its end (UTC, exclusive).
    pub window_end: DateTime<Utc>,
    /// Always `late-after-grace`.
    pub reason: String,
    /// What the record added, per SKU.
    pub lines: Vec<WindowCorrectionLine>,
    /// The record (event) that corrected it.
    pub cause_event_id: Uuid,
    /// Its stream (scoped to its tenant).
    pub cause_stream: String,
    /// Its event time.
    pub event_time: DateTime<Utc>,
    /// When it was ingested.
    pub ingested_at: DateTime<Utc>,
    /// Seconds its event time was behind the store's watermark when it arrived.
    pub behind_watermark_secs: i64,
}

/// The reason of every [`WindowCorrectionNotice`].
pub const LATE_AFTER_GRACE: &str = "late-after-grace";

/// A window correction's stream: one per cause (`windowcorrection-{cause event id}`, scoped to
/// the cause's tenant), so a correction is recorded once however often its cause is seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowCorrection {
    /// Set once noticed.
    pub notice: Option<WindowCorrectionNotice>,
}

/// What happened to a window correction's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowCorrectionEvent {
    /// A final window was corrected by a record after the grace period.
    WindowCorrectionNoticed(WindowCorrectionNotice),
}

/// Why a window correction was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowCorrectionError {
    /// This cause has its correction already.
    #[error("the window correction of this event was noticed already")]
    Noticed,
}

impl DomainError for WindowCorrectionError {
    fn code(&self) -> &'static str {
        "window_correction_noticed"
    }
    fn refusal(&self) -> Refusal {
        Refusal::Conflict
    }
}

impl Aggregate for WindowCorrection {
    type Command = WindowCorrectionNotice;
    type Event = WindowCorrectionEvent;
    type Error = WindowCorrectionError;
    const CATEGORY: &'static str = "windowcorrection";

    fn handle(&self, notice: Self::Command) -> Result<Vec<Self::Event>, Self::Error> {
        if self.notice.is_some() {
            return Err(WindowCorrectionError::Noticed);
        }
        Ok(vec![WindowCorrectionEvent::WindowCorrectionNoticed(notice)])
    }

    fn apply(mut self, event: &Self::Event) -> Self {
        let WindowCorrectionEvent::WindowCorrectionNoticed(notice) = event;
        self.notice = Some(notice.clone());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn a_spec_names_what_is_wrong() {
        assert!(WindowSpec::new(0, 1, 0).unwrap_err().contains("size"));
        assert!(WindowSpec::new(300, 70, 0).unwrap_err().contains("advance"));
        assert!(WindowSpec::new(300, 60, -1).unwrap_err().contains("grace"));
        let hopping = WindowSpec::new(300, 60, 30).unwrap();
        let starts: Vec<i64> = hopping.windows_of(at(1_000)).collect();
        assert_eq!(starts, vec![720, 780, 840, 900, 960]);
    }

    #[test]
    fn a_window_is_final_at_the_watermark_and_a_later_record_corrects_it() {
        let spec = WindowSpec::new(60, 60, 10).unwrap();
        let mut w = WindowAggregator::new(spec);
        assert!(w.add("a", 1, Decimal::ONE, at(5)).is_empty());
        assert!(
            w.add("a", 1, Decimal::ONE, at(65)).is_empty(),
            "watermark 55"
        );
        // Out of order but within the grace period: still counts in [0, 60).
        assert!(w.add("b", 2, Decimal::TWO, at(59)).is_empty());
        let out = w.add("a", 1, Decimal::ONE, at(70));
        let [WindowOutput::Final { start: 0, skus }] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(skus["a"].units, 1);
        assert_eq!(skus["b"].units, 2);
        // After the grace period: a correction of the final window, never dropped.
        let out = w.add("b", 1, Decimal::ONE, at(30));
        assert_eq!(
            out,
            vec![WindowOutput::LateCorrection {
                start: 0,
                sku: "b".into(),
                figures: SkuFigures {
                    units: 1,
                    revenue: Decimal::ONE
                },
                behind_watermark_secs: 30,
            }]
        );
        assert_eq!(w.live().keys().copied().collect::<Vec<_>>(), vec![60]);
    }

    proptest! {
        /// Whatever the order and lateness of the records, every window's final plus its late
        /// corrections equal a brute-force count over all records, and at most
        /// (size + grace) / advance + 1 windows are ever live.
        #[test]
        fn finals_and_corrections_equal_a_recomputation(
            size_steps in 1i64..6,
            advance in 1i64..20,
            grace in 0i64..100,
            records in proptest::collection::vec((0i64..2_000, 0usize..5, 1u64..4), 1..300),
        ) {
            let spec = WindowSpec::new(size_steps * advance, advance, grace).unwrap();
            let mut w = WindowAggregator::new(spec);
            let mut got: BTreeMap<(i64, String), SkuFigures> = BTreeMap::new();
            let mut max_live = 0;
            for (t, sku, units) in &records {
                let sku = format!("sku-{sku}");
                let revenue = Decimal::from(*units) * Decimal::new(150, 2);
                for o in w.add(&sku, *units, revenue, at(*t)) {
                    match o {
                        WindowOutput::Final { start, skus } => {
                            for (s, f) in skus {
                                got.entry((start, s)).or_default().add(f.units, f.revenue);
                            }
                        }
                        WindowOutput::LateCorrection { start, sku, figures, .. } => {
                            got.entry((start, sku)).or_default().add(figures.units, figures.revenue);
                        }
                    }
                }
                max_live = max_live.max(w.live().len());
            }
            // What is still live counts too (its windows are not final yet).
            for (start, skus) in w.live() {
                for (s, f) in skus {
                    got.entry((*start, s.clone())).or_default().add(f.units, f.revenue);
                }
            }
            let mut want: BTreeMap<(i64, String), SkuFigures> = BTreeMap::new();
            for (t, sku, units) in &records {
                for start in spec.windows_of(at(*t)) {
                    want.entry((start, format!("sku-{sku}")))
                        .or_default()
                        .add(*units, Decimal::from(*units) * Decimal::new(150, 2));
                }
            }
            prop_assert_eq!(got, want);
            let bound = ((spec.size_secs + spec.grace_secs) / spec.advance_secs + 2) as usize;
            // Live windows start between the watermark minus the size and the newest event:
            // never more than the retention allows.
            prop_assert!(max_live <= bound, "{} > {}", max_live, bound);
        }
    }
}
