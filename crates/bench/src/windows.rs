//! `bench windows`: the event-time window aggregator (`eventfold_domain::windows`) over N sales
//! of K SKUs in hopping windows (5 minutes advancing by 1, 30 s grace), arriving out of order
//! with 1% later than the grace period, against a plain hash-map count of the same records
//! into the same windows (no watermark, no finals) in the same run; and the memory one window of
//! a million live SKUs holds.

use std::collections::HashMap;
use std::time::Instant;

use chrono::DateTime;
use eventfold_domain::windows::{SkuFigures, WindowAggregator, WindowOutput, WindowSpec};
use rust_decimal::Decimal;
use serde::Serialize;

/// What `bench windows --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct WindowsReport {
    /// Records aggregated.
    pub events: u64,
    /// Distinct SKUs.
    pub skus: u64,
    /// The aggregator's rate, records per second (median of the rounds).
    pub events_per_sec: f64,
    /// The plain count's rate, records per second (median of the rounds).
    pub baseline_events_per_sec: f64,
    /// `events_per_sec / baseline_events_per_sec`.
    pub ratio_to_baseline: f64,
    /// Windows finalized in one pass.
    pub finals: u64,
    /// Late corrections (records after the grace period) in one pass: none dropped.
    pub late_corrections: u64,
    /// Most windows live at once.
    pub max_live_windows: usize,
    /// Resident memory one tumbling window of a million distinct SKUs adds, MB.
    pub million_skus_mb: f64,
}

/// Record `i`: event time about `i / 100` seconds into the run (100 records a second), 1 in 5
/// shuffled up to 20 s back (within the grace), 1 in 100 up to 10 minutes back (after it).
fn record(i: u64, skus: u64) -> (String, u64, Decimal, i64) {
    let base = 1_700_000_000 + (i / 100) as i64;
    let jitter = if i % 100 == 7 {
        300 + (i % 300) as i64
    } else if i.is_multiple_of(5) {
        (i % 20) as i64
    } else {
        0
    };
    let units = 1 + i % 3;
    (
        format!("sku-{}", (i.wrapping_mul(2_654_435_761)) % skus),
        units,
        Decimal::new((units * 999) as i64, 2),
        base - jitter,
    )
}

fn resident_mb() -> f64 {
    crate::kafka::proc_status_mb("self", "VmRSS:")
}

/// Runs `bench windows` over `events` records of `skus` SKUs, alternating the aggregator and
/// the baseline for `rounds` rounds each.
///
/// # Errors
/// A bad count (named).
pub fn windows(events: u64, skus: u64, rounds: usize) -> anyhow::Result<WindowsReport> {
    anyhow::ensure!(
        events >= 1 && skus >= 1,
        "--events and --skus must be at least 1"
    );
    // First, while the heap is small: one tumbling hour of a million distinct SKUs, all live.
    let before = resident_mb();
    let mut w =
        WindowAggregator::new(WindowSpec::new(3_600, 3_600, 0).map_err(anyhow::Error::msg)?);
    let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
    for i in 0..1_000_000u64 {
        w.add(&format!("sku-{i:010}"), 1, Decimal::ONE, at);
    }
    let million_skus_mb = resident_mb() - before;
    std::hint::black_box(&w);
    drop(w);
    let spec = WindowSpec::new(300, 60, 30).map_err(anyhow::Error::msg)?;
    let records: Vec<_> = (0..events).map(|i| record(i, skus)).collect();
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let (mut finals, mut late, mut max_live) = (0, 0, 0);
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        let mut w = WindowAggregator::new(spec);
        let (mut f, mut l) = (0u64, 0u64);
        for (sku, units, revenue, secs) in &records {
            let at = DateTime::from_timestamp(*secs, 0).unwrap_or_default();
            for o in w.add(sku, *units, *revenue, at) {
                match o {
                    WindowOutput::Final { .. } => f += 1,
                    WindowOutput::LateCorrection { .. } => l += 1,
                }
            }
            max_live = max_live.max(w.live().len());
        }
        ours.push(events as f64 / t.elapsed().as_secs_f64());
        (finals, late) = (f, l);

        let t = Instant::now();
        let mut counts: HashMap<(i64, &str), SkuFigures> = HashMap::new();
        for (sku, units, revenue, secs) in &records {
            let at = DateTime::from_timestamp(*secs, 0).unwrap_or_default();
            for start in spec.windows_of(at) {
                let e = counts.entry((start, sku.as_str())).or_default();
                e.units += units;
                e.revenue += revenue;
            }
        }
        std::hint::black_box(&counts);
        base.push(events as f64 / t.elapsed().as_secs_f64());
    }
    let events_per_sec = crate::median(&mut ours).unwrap_or(0.0);
    let baseline_events_per_sec = crate::median(&mut base).unwrap_or(0.0);
    Ok(WindowsReport {
        events,
        skus,
        events_per_sec,
        baseline_events_per_sec,
        ratio_to_baseline: events_per_sec / baseline_events_per_sec.max(1e-9),
        finals,
        late_corrections: late,
        max_live_windows: max_live,
        million_skus_mb,
    })
}
