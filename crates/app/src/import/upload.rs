//! Store uploads: a store's sales of a period sent as one file, each line with its own event
//! time (seed `001` case #3: the stores upload their day at 02:00 the next morning).
//!
//! Two formats, one sale per line, the same fields:
//!
//! | field | rule |
//! |---|---|
//! | `order_id` | the source's order id: 1 to 100 of `[A-Za-z0-9._-]`, once per upload |
//! | `customer_id` | 1 to 100 of `[A-Za-z0-9._-]` |
//! | `occurred_at` | the sale's event time, RFC 3339, not before 1970, at most 5 minutes ahead |
//! | `sku` | 1 to 100 of `[A-Za-z0-9._-]` |
//! | `quantity` | units, 1 to 1,000,000,000 |
//! | `amount` | amount paid, a decimal of zero or more in the currency's minor units |
//! | `currency` | ISO 4217 code |
//!
//! - **NDJSON** (`application/x-ndjson`): one JSON object per line, with exactly these fields
//!   (`quantity` a number, the others strings).
//! - **CSV** (`text/csv`): a header line naming these columns (in any order), then one record
//!   per line.
//!
//! Blank lines are skipped. A bad line is reported with its 1-based line number and the field
//! that is wrong, and the upload then appends nothing. Each sale becomes one event, as a CDNOW
//! row does: `OrderRecorded` (an order created, paid and completed at the till), with an event
//! id derived from the order id, so uploading a file again appends nothing. Sales of a day
//! already reported are late: the correction notifier records a notice for each.

use chrono::{DateTime, Utc};
use eventfold_domain::reporting::parse_event_time;
use eventfold_domain::{validate_id, Currency, Money};
use serde::Deserialize;

use super::{BadRow, SaleRecord};

/// Most lines one upload may hold.
pub const MAX_UPLOAD_LINES: usize = 1_000_000;

/// Most units one line may sell.
const MAX_QUANTITY: u64 = 1_000_000_000;

/// How an upload is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadFormat {
    /// One JSON object per line.
    Ndjson,
    /// A header line, then comma-separated records.
    Csv,
}

/// One line as written, before its values are checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    order_id: String,
    customer_id: String,
    occurred_at: String,
    sku: String,
    quantity: u64,
    amount: String,
    currency: String,
}

/// Reads an upload of store `store` in `tenant`: every sale, or every bad line (with its line
/// number) when any is bad. Event times are checked against `now`.
///
/// # Errors
/// The bad lines, in order (at most 100 are listed; a file of more than
/// [`MAX_UPLOAD_LINES`] lines is refused as a whole).
pub fn parse_upload(
    bytes: &[u8],
    format: UploadFormat,
    tenant: &str,
    store: &str,
    now: DateTime<Utc>,
) -> Result<Vec<SaleRecord>, Vec<BadRow>> {
    let raw = match format {
        UploadFormat::Ndjson => ndjson_lines(bytes),
        UploadFormat::Csv => csv_lines(bytes),
    };
    if raw.len() > MAX_UPLOAD_LINES {
        return Err(vec![BadRow {
            line: 0,
            reason: format!("the upload holds more than {MAX_UPLOAD_LINES} lines"),
        }]);
    }
    let mut sales = Vec::with_capacity(raw.len());
    let mut bad = Vec::new();
    let mut first_line = std::collections::HashMap::new();
    for (line, fields) in raw {
        match fields.and_then(|r| sale(line, r, tenant, store, now)) {
            Ok(sale) => match first_line.entry(sale.order_id.clone()) {
                std::collections::hash_map::Entry::Occupied(earlier) => bad.push(BadRow {
                    line,
                    reason: format!(
                        "order_id {:?} is on line {} already",
                        eventfold_core::tenant::unscoped(&sale.order_id),
                        earlier.get()
                    ),
                }),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(line);
                    sales.push(sale);
                }
            },
            Err(reason) => bad.push(BadRow { line, reason }),
        }
        if bad.len() >= 100 {
            break;
        }
    }
    if bad.is_empty() {
        Ok(sales)
    } else {
        Err(bad)
    }
}

fn sale(
    line: usize,
    r: RawLine,
    tenant: &str,
    store: &str,
    now: DateTime<Utc>,
) -> Result<SaleRecord, String> {
    validate_id("order_id", &r.order_id)?;
    validate_id("customer_id", &r.customer_id)?;
    validate_id("sku", &r.sku)?;
    let event_time = parse_event_time("occurred_at", &r.occurred_at, now)?;
    if !(1..=MAX_QUANTITY).contains(&r.quantity) {
        return Err(format!(
            "quantity {} must be from 1 to {MAX_QUANTITY}",
            r.quantity
        ));
    }
    let currency: Currency = r
        .currency
        .parse()
        .map_err(|e| format!("currency {:?}: {e}", r.currency))?;
    let amount = Money::parse(&r.amount, currency)
        .and_then(Money::non_negative)
        .map_err(|e| format!("amount {:?}: {e}", r.amount))?;
    Ok(SaleRecord {
        line,
        order_id: eventfold_core::tenant::scope(tenant, &r.order_id),
        customer_id: r.customer_id,
        store_id: store.to_owned(),
        event_time,
        sku: r.sku,
        quantity: u32::try_from(r.quantity)
            .map_err(|_| format!("quantity {} is more than one order line holds", r.quantity))?,
        amount,
    })
}

/// Every non-blank line: its number and its fields, or why they do not read.
type Lines = Vec<(usize, Result<RawLine, String>)>;

fn ndjson_lines(bytes: &[u8]) -> Lines {
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let fields =
            serde_json::from_slice::<RawLine>(raw).map_err(|e| format!("not a sale object: {e}"));
        out.push((i + 1, fields));
        if out.len() > MAX_UPLOAD_LINES {
            break;
        }
    }
    out
}

fn csv_lines(bytes: &[u8]) -> Lines {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            return vec![(
                1,
                Err(format!("the header line does not read: {}", csv_reason(&e))),
            )]
        }
    };
    let mut out = Vec::new();
    for record in reader.records() {
        let (position, fields) = match record {
            Ok(record) => (
                record.position().cloned(),
                record
                    .deserialize::<RawLine>(Some(&headers))
                    .map_err(|e| csv_reason(&e)),
            ),
            Err(e) => (e.position().cloned(), Err(csv_reason(&e))),
        };
        let line = position.map_or(0, |p| record_line(bytes, &p));
        out.push((line, fields));
        if out.len() > MAX_UPLOAD_LINES {
            break;
        }
    }
    out
}

/// The 1-based line a CSV record is on: the reader reports where it started looking, before
/// the blank lines it skipped.
fn record_line(bytes: &[u8], position: &csv::Position) -> usize {
    let mut line = usize::try_from(position.line()).unwrap_or(usize::MAX);
    let start = usize::try_from(position.byte()).unwrap_or(bytes.len());
    for b in bytes.get(start..).unwrap_or_default() {
        match b {
            b'\n' => line += 1,
            b'\r' => {}
            _ => break,
        }
    }
    line
}

/// A CSV error without the position the line number gives already.
fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Deserialize { err, .. } => match err.field() {
            Some(i) => format!("column {}: {}", i + 1, err.kind()),
            None => err.kind().to_string(),
        },
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("expected {expected_len} fields, found {len}"),
        csv::ErrorKind::Utf8 { err, .. } => format!("not UTF-8 text: {err}"),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-04T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn csv_and_ndjson_give_the_same_sales() {
        let csv = b"order_id,customer_id,occurred_at,sku,quantity,amount,currency\n\
            o-1,c-1,1997-01-01T10:00:00Z,cd,2,11.77,USD\n\
            \n\
            o-2,c-2,1997-01-02T00:00:00+02:00,cd,1,0.00,USD\n";
        let ndjson = b"{\"order_id\":\"o-1\",\"customer_id\":\"c-1\",\"occurred_at\":\"1997-01-01T10:00:00Z\",\"sku\":\"cd\",\"quantity\":2,\"amount\":\"11.77\",\"currency\":\"USD\"}\n\
            \n\
            {\"order_id\":\"o-2\",\"customer_id\":\"c-2\",\"occurred_at\":\"1997-01-02T00:00:00+02:00\",\"sku\":\"cd\",\"quantity\":1,\"amount\":\"0.00\",\"currency\":\"USD\"}\n";
        let a = parse_upload(csv, UploadFormat::Csv, "acme", "s1", now()).unwrap();
        let b = parse_upload(ndjson, UploadFormat::Ndjson, "acme", "s1", now()).unwrap();
        let strip = |v: Vec<SaleRecord>| -> Vec<SaleRecord> {
            v.into_iter().map(|s| SaleRecord { line: 0, ..s }).collect()
        };
        assert_eq!(a[1].line, 4);
        assert_eq!(b[1].line, 3);
        assert_eq!(strip(a.clone()), strip(b));
        assert_eq!(a[0].order_id, "acme/o-1");
        assert_eq!(a[1].event_time.to_rfc3339(), "1997-01-01T22:00:00+00:00");
        assert_eq!(a[0].amount.amount.to_string(), "11.77");
    }

    #[test]
    fn bad_lines_are_named_by_number_and_field() {
        let csv = b"order_id,customer_id,occurred_at,sku,quantity,amount,currency\n\
            o-1,c-1,1997-01-01T10:00:00Z,cd,2,11.77,USD\n\
            o-2,c-2,yesterday,cd,1,1.00,USD\n\
            o-3,c-3,1997-01-01T10:00:00Z,cd,0,1.00,USD\n\
            o-4,c 4,1997-01-01T10:00:00Z,cd,1,1.00,USD\n\
            o-5,c-5,1997-01-01T10:00:00Z,cd,1,-1.00,USD\n\
            o-1,c-6,1997-01-01T10:00:00Z,cd,1,1.00,USD\n\
            o-7,c-7,2099-01-01T10:00:00Z,cd,1,1.00,USD\n\
            o-8,c-8\n\
            o-9,c-9,1997-01-01T10:00:00Z,cd,many,1.00,USD\n";
        let bad = parse_upload(csv, UploadFormat::Csv, "default", "s1", now()).unwrap_err();
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7, 8, 9, 10]);
        assert!(bad[0].reason.contains("occurred_at"), "{}", bad[0]);
        assert!(bad[1].reason.contains("quantity"), "{}", bad[1]);
        assert!(bad[2].reason.contains("customer_id"), "{}", bad[2]);
        assert!(bad[3].reason.contains("amount"), "{}", bad[3]);
        assert!(bad[4].reason.contains("line 2"), "{}", bad[4]);
        assert!(bad[5].reason.contains("future"), "{}", bad[5]);
        assert!(bad[6].reason.contains("fields"), "{}", bad[6]);
        assert!(bad[7].reason.contains("column 5"), "{}", bad[7]);

        let ndjson = b"{\"order_id\":\"o-1\"}\n[1]\n";
        let bad = parse_upload(ndjson, UploadFormat::Ndjson, "default", "s1", now()).unwrap_err();
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![1, 2]);
        assert!(bad[0].reason.contains("missing field"), "{}", bad[0]);
    }
}
