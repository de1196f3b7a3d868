//! The CDNOW purchase-log import.
//!
//! The file (`CDNOW_master.txt`, 69,659 purchases from 1997-01-01 to 1998-06-30) has a header line,
//! CRLF line ends and space-aligned columns `customer_id date number_of_cds dollar_value`, e.g.
//! ` 00001 19970101  1   11.77`. Each row becomes one order of store `cdnow` for that customer on
//! that date (event time = the date, 00:00 UTC): created, paid, confirmed, shipped and completed by
//! `system:import-cdnow`. Zero-value rows are real orders and count. One customer can buy several
//! times a day, so the order id is `cdnow-{customer}-{yyyymmdd}-{n}` with `n` the row's rank among
//! that customer's rows of that day. Event ids are derived from the order id, so re-importing the
//! same file appends nothing.

use std::time::Instant;

use anyhow::{bail, Context};
use chrono::{DateTime, NaiveDate, Utc};
use eventfold_core::{
    deterministic_event_id, Actor, Aggregate, AppendRequest, ExpectedVersion, ProjectionRunner,
    StoreError,
};
use eventfold_domain::order::{Order, OrderCommand, OrderLine};
use eventfold_domain::{Currency, Money};
use futures::StreamExt;
use serde::Serialize;

use crate::backend::Backend;
use crate::service::{CommandContext, Service};

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

/// Builds the five events of one CDNOW order, as an append that expects a new stream.
///
/// # Errors
/// The domain refused a step (cannot happen for a valid row) or an event does not encode.
pub fn order_append(
    service: &Service,
    row: &CdnowRow,
    order_id: &str,
) -> anyhow::Result<AppendRequest> {
    let actor = Actor::system("import-cdnow");
    let mut ctx = CommandContext::new(actor.clone());
    ctx.event_time = row.event_time();
    ctx.correlation_id = Some(deterministic_event_id(
        ctx.event_time,
        format!("cdnow/{order_id}/correlation").as_bytes(),
    ));
    let reason = Some("imported from the CDNOW purchase log".to_owned());
    let commands = [
        OrderCommand::Create {
            customer_id: format!("cdnow-{}", row.customer_id),
            store_id: CDNOW_STORE.into(),
            lines: vec![OrderLine {
                sku: "cd".into(),
                quantity: row.cds,
                amount: row.value,
            }],
            actor: actor.clone(),
        },
        OrderCommand::Pay {
            amount: row.value,
            payment_id: format!("cdnow-line-{}", row.line),
            actor: actor.clone(),
        },
        OrderCommand::Confirm {
            actor: actor.clone(),
            reason: reason.clone(),
        },
        OrderCommand::Ship {
            actor: actor.clone(),
            reason: reason.clone(),
        },
        OrderCommand::Complete { actor, reason },
    ];
    let stream_id = Order::stream_id(order_id);
    let mut state = Order::default();
    let mut events = Vec::with_capacity(5);
    for command in commands {
        for event in state
            .handle(command)
            .with_context(|| format!("line {}: order {order_id}", row.line))?
        {
            let id = deterministic_event_id(
                ctx.event_time,
                format!("cdnow/{order_id}/{}", events.len()).as_bytes(),
            );
            events.push(service.new_event::<Order>(&stream_id, &event, &ctx, id)?);
            state = state.apply(&event);
        }
    }
    Ok(AppendRequest::new(
        stream_id,
        ExpectedVersion::NoStream,
        events,
    ))
}

/// The order id of each row: `cdnow-{customer}-{yyyymmdd}-{n}`, `n` counting that customer's rows
/// on that day in file order.
pub fn order_ids(rows: &[CdnowRow]) -> Vec<String> {
    let mut seen = std::collections::HashMap::new();
    rows.iter()
        .map(|r| {
            let n = seen.entry((r.customer_id.as_str(), r.date)).or_insert(0u32);
            *n += 1;
            format!("cdnow-{}-{}-{n}", r.customer_id, r.date.format("%Y%m%d"))
        })
        .collect()
}

/// Orders per append batch (five events each).
const ORDERS_PER_BATCH: usize = 500;

/// Imports a CDNOW file into `backend` and brings the projections up to date.
///
/// # Errors
/// A malformed row without `skip_bad` (nothing is appended; the message lists up to 10 bad rows
/// with their line numbers), an order id taken by other events, or a store failure.
pub async fn import_cdnow(
    backend: &Backend,
    runner: &ProjectionRunner,
    bytes: &[u8],
    options: &ImportOptions,
    progress: Progress<'_>,
) -> anyhow::Result<ImportSummary> {
    let started = Instant::now();
    let (rows, bad) = parse_cdnow(bytes);
    if !bad.is_empty() && !options.skip_bad {
        let listed: Vec<String> = bad.iter().take(10).map(ToString::to_string).collect();
        bail!(
            "{} malformed row(s); nothing was imported (use --skip-bad to import the rest):\n{}",
            bad.len(),
            listed.join("\n")
        );
    }
    let service = Service::new(backend.events.clone());
    let ids = order_ids(&rows);
    let orders = rows.len() as u64;
    progress("appending", 0, orders);
    let mut requests = Vec::with_capacity(rows.len());
    for (row, id) in rows.iter().zip(&ids) {
        requests.push(order_append(&service, row, id)?);
    }
    let mut batches = Vec::new();
    while !requests.is_empty() {
        let rest = requests.split_off(requests.len().min(ORDERS_PER_BATCH));
        batches.push(std::mem::replace(&mut requests, rest));
    }
    let mut results = futures::stream::iter(batches.into_iter().map(|batch| {
        let events = backend.events.clone();
        async move {
            let streams: Vec<String> = batch.iter().map(|r| r.stream_id.clone()).collect();
            events.append_many(batch).await.map(|r| (streams, r))
        }
    }))
    .buffered(4);
    let (mut appended, mut present, mut events_appended) = (0, 0, 0u64);
    let mut done = 0;
    while let Some(result) = results.next().await {
        let (streams, outcomes) = result.context("appending CDNOW orders")?;
        for (stream, outcome) in streams.iter().zip(outcomes) {
            match outcome {
                Ok(o) if o.duplicate => present += 1,
                Ok(o) => {
                    appended += 1;
                    events_appended += o.last_position - o.first_position + 1;
                }
                Err(StoreError::EventIdReused { .. } | StoreError::VersionConflict { .. }) => {
                    bail!("stream {stream} already holds other events; the import stopped (orders before it are kept, re-run to resume)")
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("appending {stream}"))),
            }
        }
        done += streams.len() as u64;
        progress("appending", done, orders);
    }
    let append_seconds = started.elapsed().as_secs_f64();

    let projecting = Instant::now();
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
    Ok(ImportSummary {
        rows: rows.len(),
        orders_appended: appended,
        orders_already_present: present,
        events_appended,
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
        assert_eq!(
            order_ids(&rows),
            vec![
                "cdnow-1-19970101-1",
                "cdnow-1-19970101-2",
                "cdnow-2-19970101-1",
                "cdnow-1-19970102-1"
            ]
        );
    }
}
