//! `eventfold correct interest` (corrections by replay): replays every account's history
//! under the booked interest algorithm and a new one over a range of days, appends one
//! `CorrectionApplied` per account whose interest differs, and writes a reconciliation report.
//!
//! Seed (`seeds/001`, "RecalculateAndCompensate"): replay the events under `InterestV1` and
//! `InterestV2`, book `new - old` when it is not zero. The algorithms are
//! [`eventfold_domain::interest`].
//!
//! - **One pass over the log**: the accounts' balance movements are collected from `read_all`
//!   (upcasters applied), so 200,000 accounts cost one sequential read, not 200,000 queries.
//! - **Idempotent**: each correction carries a reason that names the algorithms, the range and
//!   the rate. An account that already holds that correction is reported `already_applied` and
//!   nothing is appended; the correction itself is left out of the replay, so a second run
//!   reports the same figures. Appends expect the version the replay saw: an account that moved
//!   meanwhile is read again and recomputed.
//! - The corrections of one run share a correlation id; their event time is the run's time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, NaiveDate, Utc};
use eventfold_core::aggregate::decode_recorded;
use eventfold_core::subscription::catch_up;
use eventfold_core::{
    Actor, AppendRequest, EventStore, ExpectedVersion, RecordedEvent, StoreError,
};
use eventfold_domain::account::{Account, AccountEvent};
use eventfold_domain::interest::{interest, InterestAlgorithm, Movement};
use eventfold_domain::{Currency, Money};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::service::{CommandContext, Service};

/// What to correct.
#[derive(Debug, Clone)]
pub struct InterestCorrection {
    /// First day (UTC) of the range.
    pub from: NaiveDate,
    /// Day after the last (exclusive).
    pub to: NaiveDate,
    /// The algorithm the booked interest used.
    pub old: InterestAlgorithm,
    /// The algorithm to correct to.
    pub new: InterestAlgorithm,
    /// Annual rate, a fraction (0.015 = 1.5 %).
    pub annual_rate: Decimal,
    /// When the run happens: the corrections' event time.
    pub now: DateTime<Utc>,
}

impl InterestCorrection {
    /// Checks the range, the rate and the algorithms.
    ///
    /// # Errors
    /// A message naming the option that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.to <= self.from {
            return Err(format!(
                "--to {} must be after --from {}",
                self.to, self.from
            ));
        }
        if self.annual_rate < Decimal::ZERO || self.annual_rate >= Decimal::ONE {
            return Err(format!(
                "--annual-rate {} must be a fraction from 0 to below 1 (0.015 is 1.5 %)",
                self.annual_rate
            ));
        }
        if self.old == self.new {
            return Err(format!(
                "--algorithm {} is the booked algorithm: nothing to correct",
                self.new.name()
            ));
        }
        Ok(())
    }

    /// The reason every correction of this kind carries (and how a second run recognises it).
    pub fn reason(&self) -> String {
        format!(
            "interest {}->{} {}..{} rate {}",
            self.old.name(),
            self.new.name(),
            self.from,
            self.to,
            self.annual_rate.normalize()
        )
    }
}

/// One account in the reconciliation report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountLine {
    /// The account's stream, e.g. `account-42`.
    pub account: String,
    /// Its currency.
    pub currency: Currency,
    /// Interest under the booked algorithm.
    pub old_interest: Decimal,
    /// Interest under the new algorithm.
    pub new_interest: Decimal,
    /// `new_interest - old_interest`: the correction.
    pub delta: Decimal,
    /// `applied` (appended now), `already_applied` (by an earlier run) or `no_difference`.
    pub status: &'static str,
}

/// What a correction run did (`--json` prints it without `lines`; the report files hold them).
#[derive(Debug, Clone, Serialize)]
pub struct CorrectionReport {
    /// First day.
    pub from: NaiveDate,
    /// Day after the last.
    pub to: NaiveDate,
    /// The booked algorithm.
    pub old_algorithm: &'static str,
    /// The new algorithm.
    pub new_algorithm: &'static str,
    /// Annual rate.
    pub annual_rate: Decimal,
    /// The corrections' reason.
    pub reason: String,
    /// Events read from the log.
    pub events_read: u64,
    /// Accounts replayed.
    pub accounts: u64,
    /// Corrections appended by this run.
    pub corrections_appended: u64,
    /// Accounts corrected by an earlier run.
    pub already_applied: u64,
    /// Accounts whose interest is the same under both.
    pub no_difference: u64,
    /// Accounts re-read because they moved during the run.
    pub retried: u64,
    /// Sum of appended deltas per currency code.
    pub total_delta: BTreeMap<String, Decimal>,
    /// Reading and replaying, ms.
    pub replay_ms: f64,
    /// Appending, ms.
    pub append_ms: f64,
    /// Wall time, ms.
    pub elapsed_ms: f64,
    /// Every account, sorted by stream id.
    #[serde(skip)]
    pub lines: Vec<AccountLine>,
}

/// An account's history as the replay needs it.
#[derive(Debug, Default)]
struct Ledger {
    version: u64,
    currency: Option<Currency>,
    movements: Vec<Movement>,
    corrected: bool,
}

impl Ledger {
    fn add(&mut self, event: &RecordedEvent, reason: &str) -> Result<(), StoreError> {
        self.version = event.stream_version;
        let at = event.event_time;
        let mut push = |amount: Decimal| self.movements.push(Movement { at, amount });
        match decode_recorded::<Account>(event)? {
            AccountEvent::AccountOpened { currency, .. } => self.currency = Some(currency),
            AccountEvent::FundsDeposited { amount } | AccountEvent::InterestAccrued { amount } => {
                push(amount.amount);
            }
            AccountEvent::FundsWithdrawn { amount } => push(-amount.amount),
            AccountEvent::CorrectionApplied { amount, reason: r } => {
                if r == reason {
                    self.corrected = true;
                } else {
                    push(amount.amount);
                }
            }
        }
        Ok(())
    }
}

/// Progress `(phase, done, of)`: `("replay", position, head)` while reading the log,
/// `("append", accounts, accounts to correct)` while appending.
pub type Progress<'a> = &'a (dyn Fn(&'static str, u64, u64) + Sync);

/// Runs the correction on every account stream of `store`.
///
/// # Errors
/// A stored account event that cannot be decoded (named by stream and version), or the store
/// failing. Corrections appended before the failure stay (they are idempotent: run again).
pub async fn correct_interest(
    store: Arc<dyn EventStore>,
    correction: &InterestCorrection,
    progress: Progress<'_>,
) -> anyhow::Result<CorrectionReport> {
    correction.validate().map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let reason = correction.reason();
    let mut ledgers: HashMap<String, Ledger> = HashMap::new();
    let mut events_read = 0u64;
    let head = store.head_position().await?;
    let mut log = catch_up(store.clone(), 0, 10_000);
    while let Some(batch) = log.try_next_batch().await? {
        for e in &batch {
            if e.category() == "account" {
                ledgers
                    .entry(e.stream_id.clone())
                    .or_default()
                    .add(e, &reason)?;
                events_read += 1;
            }
        }
        progress("replay", log.position(), head.max(log.position()));
    }
    let mut streams: Vec<String> = ledgers.keys().cloned().collect();
    streams.sort_unstable();
    let mut lines = Vec::with_capacity(streams.len());
    let mut pending: Vec<(usize, u64)> = Vec::new();
    for stream in &streams {
        let ledger = &ledgers[stream];
        let Some(line) = replay(stream, ledger, correction) else {
            continue;
        };
        if line.status == "applied" {
            pending.push((lines.len(), ledger.version));
        }
        lines.push(line);
    }
    drop(ledgers);
    let replay_ms = started.elapsed().as_secs_f64() * 1000.0;

    let appending = Instant::now();
    let service = Service::new(store.clone());
    let mut ctx = CommandContext::new(Actor::system("interest-correction"));
    ctx.event_time = correction.now;
    ctx.correlation_id = Some(uuid::Uuid::now_v7());
    let mut retried = 0u64;
    let mut done = 0u64;
    for chunk in pending.chunks(1_000) {
        let requests = chunk
            .iter()
            .map(|(i, version)| correction_request(&service, &ctx, &lines[*i], &reason, *version))
            .collect::<Result<Vec<_>, _>>()?;
        let results = store.append_many(requests).await?;
        for ((i, _), result) in chunk.iter().zip(results) {
            match result {
                Ok(_) => {}
                // The account moved since it was read: read it again and decide again.
                Err(StoreError::VersionConflict { .. }) => {
                    retried += 1;
                    lines[*i] =
                        correct_one(&store, &service, &ctx, correction, &lines[*i].account).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        done += chunk.len() as u64;
        progress("append", done, pending.len() as u64);
    }
    let append_ms = appending.elapsed().as_secs_f64() * 1000.0;
    let count = |status| lines.iter().filter(|l| l.status == status).count() as u64;
    let mut total_delta: BTreeMap<String, Decimal> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.status == "applied") {
        *total_delta.entry(l.currency.code().to_owned()).or_default() += l.delta;
    }
    Ok(CorrectionReport {
        from: correction.from,
        to: correction.to,
        old_algorithm: correction.old.name(),
        new_algorithm: correction.new.name(),
        annual_rate: correction.annual_rate,
        reason,
        events_read,
        accounts: lines.len() as u64,
        corrections_appended: count("applied"),
        already_applied: count("already_applied"),
        no_difference: count("no_difference"),
        retried,
        total_delta,
        replay_ms,
        append_ms,
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
        lines,
    })
}

/// The report line of one account (`None` for a stream that was never opened).
fn replay(stream: &str, ledger: &Ledger, c: &InterestCorrection) -> Option<AccountLine> {
    let currency = ledger.currency?;
    let units = currency.minor_units();
    let old = interest(c.old, &ledger.movements, c.from, c.to, c.annual_rate, units);
    let new = interest(c.new, &ledger.movements, c.from, c.to, c.annual_rate, units);
    let delta = new - old;
    Some(AccountLine {
        account: stream.to_owned(),
        currency,
        old_interest: old,
        new_interest: new,
        delta,
        status: if ledger.corrected {
            "already_applied"
        } else if delta.is_zero() {
            "no_difference"
        } else {
            "applied"
        },
    })
}

fn correction_request(
    service: &Service,
    ctx: &CommandContext,
    line: &AccountLine,
    reason: &str,
    version: u64,
) -> anyhow::Result<AppendRequest> {
    let event = AccountEvent::CorrectionApplied {
        amount: Money::new(line.delta, line.currency)?,
        reason: reason.to_owned(),
    };
    let event = service.new_event::<Account>(&line.account, &event, ctx, uuid::Uuid::now_v7())?;
    Ok(AppendRequest::new(
        line.account.clone(),
        ExpectedVersion::Exact(version),
        vec![event],
    ))
}

/// Reads one account again, replays it and appends its correction, until the append finds the
/// version it read.
async fn correct_one(
    store: &Arc<dyn EventStore>,
    service: &Service,
    ctx: &CommandContext,
    correction: &InterestCorrection,
    stream: &str,
) -> anyhow::Result<AccountLine> {
    let reason = correction.reason();
    loop {
        let mut ledger = Ledger::default();
        for e in store.read_stream(stream, 1, usize::MAX).await? {
            ledger.add(&e, &reason)?;
        }
        let line = replay(stream, &ledger, correction)
            .ok_or_else(|| anyhow::anyhow!("account {stream} is not open"))?;
        if line.status != "applied" {
            return Ok(line);
        }
        let request = correction_request(service, ctx, &line, &reason, ledger.version)?;
        match store.append(request).await {
            Ok(_) => return Ok(line),
            Err(StoreError::VersionConflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes the report as `{dir}/{stem}.csv` (account,currency,old_interest,new_interest,delta,
/// status) and `{dir}/{stem}.json` (the summary and every line); returns both paths.
///
/// # Errors
/// The files cannot be written.
pub fn write_report(
    report: &CorrectionReport,
    dir: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    use anyhow::Context;
    use std::io::Write;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = format!(
        "interest-correction-{}-{}-{}",
        report.new_algorithm, report.from, report.to
    );
    let csv = dir.join(format!("{stem}.csv"));
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&csv).with_context(|| format!("creating {}", csv.display()))?,
    );
    writeln!(
        out,
        "account,currency,old_interest,new_interest,delta,status"
    )?;
    for l in &report.lines {
        // Stream ids are validated on append (no control characters); quote them for commas.
        writeln!(
            out,
            "\"{}\",{},{},{},{},{}",
            l.account.replace('"', "\"\""),
            l.currency,
            l.old_interest,
            l.new_interest,
            l.delta,
            l.status
        )?;
    }
    out.flush()?;
    let json = dir.join(format!("{stem}.json"));
    let body = serde_json::json!({ "summary": report, "accounts": report.lines });
    std::fs::write(&json, serde_json::to_string_pretty(&body)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    Ok((csv, json))
}
