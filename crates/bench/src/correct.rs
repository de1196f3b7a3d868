//! `bench correct`: `correct interest` on many accounts of many events, twice.

use std::time::Instant;

use eventfold_app::service::Service;
use eventfold_core::{AppendRequest, ExpectedVersion};
use eventfold_domain::account::{Account, AccountEvent};
use eventfold_domain::{Currency, Money};
use serde::Serialize;

use crate::scratch::Scratch;
use crate::{bench_context, BenchTarget};

/// What `bench correct --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct CorrectBench {
    /// Backend measured.
    pub store: String,
    /// Accounts written.
    pub accounts: u64,
    /// Events per account (the first opens it).
    pub events_per_account: u64,
    /// Events written.
    pub events: u64,
    /// Writing them, ms (not part of the correction).
    pub populate_ms: f64,
    /// `correct interest` over 2024 (v1 -> v2), ms: read, replay, append, report in memory.
    pub correction_ms: f64,
    /// Of which reading and replaying, ms.
    pub replay_ms: f64,
    /// Of which appending, ms.
    pub append_ms: f64,
    /// Account events replayed per second of `correction_ms`.
    pub events_per_sec: f64,
    /// Corrections the first run appended.
    pub corrections_appended: u64,
    /// The same correction again, ms.
    pub second_run_ms: f64,
    /// Corrections the second run appended (0: idempotent).
    pub second_run_appended: u64,
}

/// Runs `bench correct`: writes `accounts` accounts of `per_account` events over 2024 into a
/// scratch store, then times `correct interest` (v1 -> v2 over 2024) twice.
///
/// # Errors
/// The scratch store cannot be created or written.
pub async fn correct(
    target: &BenchTarget,
    accounts: u64,
    per_account: u64,
) -> anyhow::Result<CorrectBench> {
    use eventfold_app::corrections::{correct_interest, InterestCorrection};
    use eventfold_domain::interest::InterestAlgorithm;
    anyhow::ensure!(
        per_account >= 1,
        "an account needs at least its opening event"
    );
    let scratch = Scratch::create(target, true).await?;
    let store = scratch.store.clone();
    let started = Instant::now();
    let service = Service::new(store.clone());
    // Four writers, each 100 accounts per append_many.
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (store, service) = (store.clone(), service.clone());
            tokio::spawn(async move {
                let mine: Vec<u64> = (0..accounts).filter(|i| i % 4 == w).collect();
                for chunk in mine.chunks(100) {
                    let requests = chunk
                        .iter()
                        .map(|i| bench_account(&service, *i, per_account))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    for r in store.append_many(requests).await? {
                        r?;
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for w in writers {
        w.await??;
    }
    let populate_ms = started.elapsed().as_secs_f64() * 1000.0;
    let correction = InterestCorrection {
        from: chrono::NaiveDate::from_ymd_opt(2024, 1, 1).expect("date"),
        to: chrono::NaiveDate::from_ymd_opt(2025, 1, 1).expect("date"),
        old: InterestAlgorithm::V1,
        new: InterestAlgorithm::V2,
        annual_rate: rust_decimal::Decimal::new(15, 3),
        now: chrono::Utc::now(),
    };
    let first = correct_interest(store.clone(), &correction, &|_, _, _| {}).await?;
    let second = correct_interest(store.clone(), &correction, &|_, _, _| {}).await?;
    let name = scratch.name;
    drop((store, service));
    scratch.remove().await?;
    Ok(CorrectBench {
        store: name.into(),
        accounts,
        events_per_account: per_account,
        events: accounts * per_account,
        populate_ms,
        correction_ms: first.elapsed_ms,
        replay_ms: first.replay_ms,
        append_ms: first.append_ms,
        events_per_sec: first.events_read as f64 / (first.elapsed_ms / 1000.0).max(1e-9),
        corrections_appended: first.corrections_appended,
        second_run_ms: second.elapsed_ms,
        second_run_appended: second.corrections_appended,
    })
}

/// Account `i`: opened in December 2023, then deposits (every fourth event a smaller
/// withdrawal) on days spread over 2024.
pub(crate) fn bench_account(
    service: &Service,
    i: u64,
    per_account: u64,
) -> anyhow::Result<AppendRequest> {
    let base = chrono::DateTime::parse_from_rfc3339("2023-12-01T00:00:00Z")?.to_utc();
    let stream_id = format!("account-bench{i}");
    let mut events = Vec::with_capacity(per_account as usize);
    for k in 0..per_account {
        let event = if k == 0 {
            AccountEvent::AccountOpened {
                owner: format!("bench-{i}"),
                currency: Currency::USD,
            }
        } else {
            let cents = 100 + (i * 37 + k * 11) % 50_000;
            let amount = Money::new(rust_decimal::Decimal::new(cents as i64, 2), Currency::USD)?;
            if k % 4 == 0 {
                AccountEvent::FundsWithdrawn {
                    amount: Money::new(
                        amount.amount / rust_decimal::Decimal::from(4),
                        Currency::USD,
                    )
                    .or_else(|_| Money::new(rust_decimal::Decimal::ONE, Currency::USD))?,
                }
            } else {
                AccountEvent::FundsDeposited { amount }
            }
        };
        let mut ctx = bench_context();
        // Day 0..365 of 2024 after the December opening, in order per account.
        let day = 31 + (k * 366 / per_account.max(1)) + (i % 7);
        ctx.event_time = base
            + chrono::Duration::days(day as i64)
            + chrono::Duration::seconds((i % 86_400) as i64);
        events.push(service.new_event::<Account>(
            &stream_id,
            &event,
            &ctx,
            uuid::Uuid::now_v7(),
        )?);
    }
    Ok(AppendRequest::new(
        stream_id,
        ExpectedVersion::NoStream,
        events,
    ))
}
