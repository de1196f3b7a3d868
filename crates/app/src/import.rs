//! Sales into the store: the CDNOW purchase-log import and store uploads ([`upload`]).
//!
//! The file (`CDNOW_master.txt`, 69,659 purchases from 1997-01-01 to 1998-06-30) has a header line,
//! CRLF line ends and space-aligned columns `customer_id date number_of_cds dollar_value`, e.g.
//! ` 00001 19970101  1   11.77`. Each row becomes one order of store `cdnow` (or `--store-id`) for
//! that customer on that date (event time = the date, 00:00 UTC), recorded complete and paid in one
//! `OrderRecorded` event by `system:import-cdnow`. Zero-value rows are real orders and count. One
//! customer can buy several times a day, so the order id is `{store}-{customer}-{yyyymmdd}-{n}`
//! with `n` the row's rank among that customer's rows of that day. Event ids are derived from the order id, so
//! re-importing the same file appends nothing.
//!
//! An import with `backfill` records its events as **history** (`EventMetadata::backfill`): they
//! count on their business date and are never late, so they raise no correction notice. Without
//! it, a row of a day already reported is a late arrival and noticed as one (see
//! [`crate::reporting`]).

use std::time::Instant;

use anyhow::{bail, Context};
use chrono::{DateTime, NaiveDate, Utc};
use eventfold_core::{
    deterministic_event_id, Actor, Aggregate, AppendRequest, ExpectedVersion, ProjectionRunner,
    StoreError,
};
use eventfold_domain::order::{Order, OrderCommand, OrderLine};
use eventfold_domain::reporting::BusinessCalendar;
use eventfold_domain::{Currency, Money};
use futures::StreamExt;
use serde::Serialize;

use crate::backend::Backend;
use crate::reporting::CorrectionNotifier;
use crate::service::{CommandContext, Service};

pub mod upload;

/// The store id every CDNOW order gets.
pub const CDNOW_STORE: &str = "cdnow";

/// One valid row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdnowRow {
    /// 1-based line number in the file.
    pub line: usize,
    /// Customer id as written (zero-padded), e.g. `00001`.
    pub customer_id: String,
    /// Purchase date.
    pub date: NaiveDate,
    /// Number of CDs, at least 1.
    pub cds: u32,
    /// Amount paid in USD (zero allowed).
    pub value: Money,
}

impl CdnowRow {
    /// When the purchase happened: the date at 00:00 UTC.
    pub fn event_time(&self) -> DateTime<Utc> {
        self.date
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
    }
}

/// One sale from a source (a CDNOW row, an upload line): an order of one line, recorded complete
/// and paid at its event time (`OrderRecorded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleRecord {
    /// 1-based line number in the source.
    pub line: usize,
    /// Order id, scoped to its tenant (see `eventfold_core::tenant`).
    pub order_id: String,
    /// Customer id (unscoped).
    pub customer_id: String,
    /// Store id (unscoped).
    pub store_id: String,
    /// When the sale happened (UTC).
    pub event_time: DateTime<Utc>,
    /// The line's SKU.
    pub sku: String,
    /// Units, at least 1.
    pub quantity: u32,
    /// Amount paid (zero allowed).
    pub amount: Money,
}

/// A row that could not be read, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadRow {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, naming the field.
    pub reason: String,
}

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Parses the whole file: the valid rows and the bad ones, in file order. A first line that starts
/// with `customer_id` is the header; blank lines are skipped.
pub fn parse_cdnow(bytes: &[u8]) -> (Vec<CdnowRow>, Vec<BadRow>) {
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                bad.push(BadRow {
                    line,
                    reason: format!("not UTF-8 text at byte {}", e.valid_up_to()),
                });
                continue;
            }
        };
        if text.trim().is_empty() || (line == 1 && text.trim_start().starts_with("customer_id")) {
            continue;
        }
        match parse_row(line, text) {
            Ok(row) => rows.push(row),
            Err(reason) => bad.push(BadRow { line, reason }),
        }
    }
    (rows, bad)
}

fn parse_row(line: usize, text: &str) -> Result<CdnowRow, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [customer, date, cds, value] = fields[..] else {
        return Err(format!(
            "expected 4 fields (customer_id date number_of_cds dollar_value), found {}",
            fields.len()
        ));
    };
    if customer.is_empty() || customer.len() > 12 || !customer.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("customer_id {customer:?} is not a number"));
    }
    let parsed_date = NaiveDate::parse_from_str(date, "%Y%m%d")
        .ok()
        .filter(|_| date.len() == 8)
        .ok_or_else(|| format!("date {date:?} is not a valid YYYYMMDD date"))?;
    let cds: u32 = cds
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("number_of_cds {cds:?} is not a whole number of at least 1"))?;
    let value = Money::parse(value, Currency::USD)
        .and_then(Money::non_negative)
        .map_err(|e| format!("dollar_value {value:?}: {e}"))?;
    Ok(CdnowRow {
        line,
        customer_id: customer.to_owned(),
        date: parsed_date,
        cds,
        value,
    })
}

/// Options of [`import_cdnow`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Skip malformed rows (and report them) instead of refusing the whole file.
    pub skip_bad: bool,
    /// The store the orders belong to; `None`: [`CDNOW_STORE`].
    pub store_id: Option<String>,
    /// Record the events as history (see the module docs): no correction notices.
    pub backfill: bool,
}

/// Progress `(phase, done, of)`: `("appending", orders, orders)` while appending, then
/// `("projecting", events, events)` while the projections catch up.
pub type Progress<'a> = &'a (dyn Fn(&'static str, u64, u64) + Sync);

/// What an import did. Rates are events per second of wall time.
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    /// Valid rows read.
    pub rows: usize,
    /// Orders appended now.
    pub orders_appended: usize,
    /// Orders already in the store from an earlier import (nothing appended for them).
    pub orders_already_present: usize,
    /// Events appended now.
    pub events_appended: u64,
    /// Correction notices appended now (late rows of days already reported; none for a
    /// backfill).
    pub corrections_noticed: u64,
    /// Whether the events were recorded as history.
    pub backfill: bool,
    /// Rows skipped with `--skip-bad`.
    pub skipped: Vec<BadRow>,
    /// Seconds spent appending.
    pub append_seconds: f64,
    /// Events appended per second.
    pub append_events_per_sec: f64,
    /// Seconds spent bringing the projections up to date.
    pub projection_seconds: f64,
    /// Events projected per second (all four projections together).
    pub projection_events_per_sec: f64,
    /// Total seconds.
    pub total_seconds: f64,
    /// Events appended and projected per second, end to end.
    pub events_per_sec: f64,
}

/// Where a batch of sales comes from: how its events are made and attributed.
#[derive(Debug, Clone)]
pub struct SaleSource {
    /// Prefix of the event-id seeds (`{source}/{order id}/{n}`), e.g. `cdnow` or `upload`.
    pub source: String,
    /// Who records the sales.
    pub actor: Actor,
    /// The principal that sent them on the actor's behalf, if any.
    pub via: Option<Actor>,
    /// The reason recorded with each sale.
    pub reason: String,
    /// Record the events as history (no correction notices).
    pub backfill: bool,
    /// The store's business calendar, recorded with each order (`None`: the default).
    pub calendar: Option<BusinessCalendar>,
}

impl SaleSource {
    /// The CDNOW import's source (`system:import-cdnow`).
    pub fn cdnow(backfill: bool) -> Self {
        Self {
            source: "cdnow".into(),
            actor: Actor::system("import-cdnow"),
            via: None,
            reason: "imported from the CDNOW purchase log".into(),
            backfill,
            calendar: None,
        }
    }
}

/// Builds the one event of one sale's order (`OrderRecorded`: a sale complete before eventfold
/// heard of it), as an append that expects a new stream. Its id is derived from the source and
/// the order id, so the same file appends nothing the second time.
///
/// # Errors
/// The domain refused a step (an id or amount it does not accept; the message names the line)
/// or an event does not encode.
pub fn order_append(
    service: &Service,
    source: &SaleSource,
    sale: &SaleRecord,
) -> anyhow::Result<AppendRequest> {
    let order_id = sale.order_id.as_str();
    let actor = source.actor.clone();
    let mut ctx = CommandContext::new(actor.clone());
    ctx.via = source.via.clone();
    ctx.backfill = source.backfill;
    ctx.event_time = sale.event_time;
    ctx.correlation_id = Some(deterministic_event_id(
        ctx.event_time,
        format!("{}/{order_id}/correlation", source.source).as_bytes(),
    ));
    let command = OrderCommand::Record {
        customer_id: sale.customer_id.clone(),
        store_id: sale.store_id.clone(),
        lines: vec![OrderLine {
            sku: sale.sku.clone(),
            quantity: sale.quantity,
            amount: sale.amount,
        }],
        payment_id: format!("{}-line-{}", source.source, sale.line),
        actor,
        reason: Some(source.reason.clone()),
        calendar: source.calendar,
    };
    let stream_id = Order::stream_id(order_id);
    let mut events = Vec::with_capacity(1);
    for event in Order::default()
        .handle(command)
        .with_context(|| format!("line {}: order {order_id}", sale.line))?
    {
        let id = deterministic_event_id(
            ctx.event_time,
            format!("{}/{order_id}/{}", source.source, events.len()).as_bytes(),
        );
        events.push(service.new_event::<Order>(&stream_id, &event, &ctx, id)?);
    }
    Ok(AppendRequest::new(
        stream_id,
        ExpectedVersion::NoStream,
        events,
    ))
}

/// The sales of CDNOW rows for `store`: order id `{store}-{customer}-{yyyymmdd}-{n}`, `n`
/// counting that customer's rows on that day in file order; customer `cdnow-{customer}`, SKU
/// `cd`; the event time is the start of the row's date in `calendar` (default: 00:00 UTC).
pub fn cdnow_sales(
    rows: &[CdnowRow],
    store: &str,
    calendar: Option<BusinessCalendar>,
) -> Vec<SaleRecord> {
    let mut seen = std::collections::HashMap::new();
    rows.iter()
        .map(|r| {
            let n = seen.entry((r.customer_id.as_str(), r.date)).or_insert(0u32);
            *n += 1;
            SaleRecord {
                line: r.line,
                order_id: format!("{store}-{}-{}-{n}", r.customer_id, r.date.format("%Y%m%d")),
                customer_id: format!("cdnow-{}", r.customer_id),
                store_id: store.to_owned(),
                // The file's date is the store's business date: the day starts at its midnight in
                // the store's time zone (00:00 UTC for the default calendar).
                event_time: calendar.map_or_else(|| r.event_time(), |c| c.day_starts_at(r.date)),
                sku: "cd".into(),
                quantity: r.cds,
                amount: r.value,
            }
        })
        .collect()
}

/// Orders per append batch (one event each; four batches in flight, so the appender always
/// has the next group waiting).
const ORDERS_PER_BATCH: usize = 2_500;

/// What appending sales did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AppendCounts {
    /// Orders appended now.
    pub orders_appended: usize,
    /// Orders already stored with these very events (nothing appended for them).
    pub orders_already_present: usize,
    /// Events appended now.
    pub events_appended: u64,
    /// Sales whose order id already holds other events: `(line, order id)`; nothing appended
    /// for them.
    pub conflicts: Vec<(usize, String)>,
}

/// Appends the orders of `sales` in batches of [`ORDERS_PER_BATCH`] (each order atomic on its
/// own), calling `progress("appending", done, of)`.
///
/// # Errors
/// A sale the domain refuses (before anything is appended) or a store failure (orders before
/// it are kept; appending again resumes).
pub async fn append_sales(
    backend: &Backend,
    source: &SaleSource,
    sales: &[SaleRecord],
    progress: Progress<'_>,
) -> anyhow::Result<AppendCounts> {
    let service = Service::new(backend.events.clone());
    let orders = sales.len() as u64;
    progress("appending", 0, orders);
    let mut requests = Vec::with_capacity(sales.len());
    for sale in sales {
        requests.push((sale.line, order_append(&service, source, sale)?));
    }
    let mut batches = Vec::new();
    while !requests.is_empty() {
        let rest = requests.split_off(requests.len().min(ORDERS_PER_BATCH));
        batches.push(std::mem::replace(&mut requests, rest));
    }
    let mut results = futures::stream::iter(batches.into_iter().map(|batch| {
        let events = backend.events.clone();
        async move {
            let (lines, batch): (Vec<usize>, Vec<AppendRequest>) = batch.into_iter().unzip();
            let streams: Vec<String> = batch.iter().map(|r| r.stream_id.clone()).collect();
            events.append_many(batch).await.map(|r| (lines, streams, r))
        }
    }))
    .buffered(4);
    let mut counts = AppendCounts::default();
    let mut done = 0;
    while let Some(result) = results.next().await {
        let (lines, streams, outcomes) = result.context("appending orders")?;
        for ((line, stream), outcome) in lines.iter().zip(&streams).zip(outcomes) {
            match outcome {
                Ok(o) if o.duplicate => counts.orders_already_present += 1,
                Ok(o) => {
                    counts.orders_appended += 1;
                    counts.events_appended += o.last_position - o.first_position + 1;
                }
                Err(StoreError::EventIdReused { .. } | StoreError::VersionConflict { .. }) => {
                    let order = Order::id_of_stream(stream).unwrap_or_else(|| stream.clone());
                    counts.conflicts.push((*line, order));
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("appending {stream}"))),
            }
        }
        done += streams.len() as u64;
        progress("appending", done, orders);
    }
    Ok(counts)
}

/// Imports a CDNOW file into `backend`, notices what came late (unless `backfill`) and brings
/// the projections up to date.
///
/// # Errors
/// A malformed row without `skip_bad` (nothing is appended; the message lists up to 10 bad rows
/// with their line numbers), a bad `store_id`, an order id taken by other events (orders before
/// it are kept), or a store failure.
pub async fn import_cdnow(
    backend: &Backend,
    runner: &ProjectionRunner,
    bytes: &[u8],
    options: &ImportOptions,
    progress: Progress<'_>,
) -> anyhow::Result<ImportSummary> {
    let started = Instant::now();
    let store = options.store_id.as_deref().unwrap_or(CDNOW_STORE);
    eventfold_domain::validate_id("--store-id", store).map_err(anyhow::Error::msg)?;
    let (rows, bad) = parse_cdnow(bytes);
    if !bad.is_empty() && !options.skip_bad {
        let listed: Vec<String> = bad.iter().take(10).map(ToString::to_string).collect();
        bail!(
            "{} malformed row(s); nothing was imported (use --skip-bad to import the rest):\n{}",
            bad.len(),
            listed.join("\n")
        );
    }
    let mut source = SaleSource::cdnow(options.backfill);
    source.calendar = crate::calendars::StoreCalendars::new(Service::new(backend.events.clone()))
        .of(store)
        .await?;
    let sales = cdnow_sales(&rows, store, source.calendar);
    let counts = append_sales(backend, &source, &sales, progress).await?;
    if let Some((line, order)) = counts.conflicts.first() {
        bail!("line {line}: order {order} already holds other events; the import stopped there (the other orders are kept, re-run to resume)");
    }
    let append_seconds = started.elapsed().as_secs_f64();

    let projecting = Instant::now();
    let corrections_noticed =
        CorrectionNotifier::new(backend.events.clone(), backend.read_models.clone())
            .catch_up()
            .await
            .context("noticing late rows")?;
    let head = backend.events.head_position().await?;
    let start = runner
        .status()
        .await?
        .iter()
        .map(|s| s.checkpoint)
        .min()
        .unwrap_or(0);
    let to_project = head.saturating_sub(start);
    progress("projecting", 0, to_project);
    runner
        .catch_up(None, &|position, _| {
            progress("projecting", position.saturating_sub(start), to_project)
        })
        .await
        .context("updating projections")?;
    let projection_seconds = projecting.elapsed().as_secs_f64();
    let total_seconds = started.elapsed().as_secs_f64();
    let projected = head.saturating_sub(start);
    let events_appended = counts.events_appended;
    Ok(ImportSummary {
        rows: rows.len(),
        orders_appended: counts.orders_appended,
        orders_already_present: counts.orders_already_present,
        events_appended,
        corrections_noticed,
        backfill: options.backfill,
        skipped: bad,
        append_seconds,
        append_events_per_sec: events_appended as f64 / append_seconds.max(1e-9),
        projection_seconds,
        projection_events_per_sec: projected as f64 / projection_seconds.max(1e-9),
        total_seconds,
        events_per_sec: events_appended as f64 / total_seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_real_format_and_names_bad_rows() {
        let text = b" customer_id  date number_of_cds  dollar_value\r\n 00001 19970101  1   11.77\r\n 00002 19970112  1   12.00\r\n\r\n 00003 19970230  1 1.00\r\n 00004 19970101  0 1.00\r\n 00005 19970101  1 1.001\r\n 00006 19970101  1\r\n x7 19970101 1 1.00\r\n 00008 19970101 1 -1.00\r\n 00009 19970101 1 0.00\r\n";
        let (rows, bad) = parse_cdnow(text);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].customer_id, "00001");
        assert_eq!(rows[0].value.amount.to_string(), "11.77");
        assert_eq!(rows[2].line, 11);
        assert_eq!(rows[2].value.amount.to_string(), "0.00");
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![5, 6, 7, 8, 9, 10]);
        assert!(bad[0].reason.contains("date \"19970230\""), "{}", bad[0]);
        assert!(bad[1].reason.contains("number_of_cds"), "{}", bad[1]);
        assert!(
            bad[2].reason.contains("more than 2 decimal places"),
            "{}",
            bad[2]
        );
        assert!(bad[3].reason.contains("expected 4 fields"), "{}", bad[3]);
        assert!(bad[4].reason.contains("customer_id"), "{}", bad[4]);
        assert!(bad[5].reason.contains("negative"), "{}", bad[5]);
    }

    #[test]
    fn same_customer_same_day_gets_distinct_order_ids() {
        let (rows, _) = parse_cdnow(
            b"1 19970101 1 1.00\n1 19970101 2 2.00\n2 19970101 1 1.00\n1 19970102 1 1.00\n",
        );
        let ids: Vec<String> = cdnow_sales(&rows, CDNOW_STORE, None)
            .into_iter()
            .map(|s| s.order_id)
            .collect();
        assert_eq!(
            ids,
            vec![
                "cdnow-1-19970101-1",
                "cdnow-1-19970101-2",
                "cdnow-2-19970101-1",
                "cdnow-1-19970102-1"
            ]
        );
    }
}
