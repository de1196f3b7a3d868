//! `bench load`: one long stream loaded with a snapshot at its head, without one, and as of its
//! middle.

use std::time::Instant;

use anyhow::Context;
use chrono::{TimeZone, Utc};
use eventfold_app::service::{AsOf, CommandContext, Service};
use eventfold_core::{Actor, AppendRequest, ExpectedVersion, NewEvent, Replayed};
use eventfold_domain::account::{Account, AccountEvent};
use eventfold_domain::{Currency, Money};
use serde::Serialize;

use crate::scratch::Scratch;
use crate::BenchTarget;

/// What `bench load --json` prints (ms per load, median of the repetitions).
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Events in the stream.
    pub events: u64,
    /// Median time to load the stream from a snapshot at its head (the snapshot read and an
    /// empty tail), ms.
    pub load_with_snapshot_ms: f64,
    /// Median time to read and fold the whole stream, no snapshot, ms.
    pub load_without_snapshot_ms: f64,
    /// 95th percentile of the same, ms.
    pub load_without_snapshot_p95_ms: f64,
    /// Median time of a full-envelope `read_stream` of the same stream (all 13 fields, no fold),
    /// for comparison with the lean replay read that loads use, ms.
    pub full_read_ms: f64,
    /// On NATS: median time JetStream alone takes to deliver the stream's messages (an ordered
    /// consumer on its subject, counted, not decoded), ms; the floor under a load there.
    pub raw_jetstream_read_ms: Option<f64>,
    /// Median time to rebuild the state as of a time in the middle of the stream, from the
    /// snapshots, ms.
    pub as_of_ms: f64,
    /// The same without snapshots (the whole stream read and filtered), ms.
    pub as_of_without_snapshot_ms: f64,
    /// Time the snapshot tail took to snapshot the stream every 100 events, ms.
    pub snapshots_taken_ms: f64,
    /// Repetitions measured.
    pub repetitions: usize,
}

/// Runs `bench load` on `target`: writes one account stream of `events` events into a scratch
/// store, then times loading it (whole, and as of its middle) `repetitions` times.
///
/// # Errors
/// The scratch store cannot be created, an append fails, or a loaded state is wrong.
pub async fn load(
    target: &BenchTarget,
    events: u64,
    repetitions: usize,
) -> anyhow::Result<LoadReport> {
    let scratch = Scratch::create(target, true).await?;
    let report = load_on(&scratch, events, repetitions).await;
    scratch.remove().await?;
    report
}

pub(crate) async fn load_on(
    scratch: &Scratch,
    events: u64,
    repetitions: usize,
) -> anyhow::Result<LoadReport> {
    let (store, read_models) = (scratch.store.clone(), scratch.read_models.clone());
    let service = Service::new(store.clone());
    let start = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid date");
    let one = Money::parse("1.00", Currency::USD)?;
    let mut version = 0u64;
    while version < events {
        let batch: Vec<NewEvent> = (version..events.min(version + 1_000))
            .map(|v| {
                let event = if v == 0 {
                    AccountEvent::AccountOpened {
                        owner: "bench".into(),
                        currency: Currency::USD,
                    }
                } else {
                    AccountEvent::FundsDeposited { amount: one }
                };
                let mut ctx = CommandContext::new(Actor::system("bench"));
                ctx.event_time = start + chrono::Duration::seconds(v as i64);
                service.new_event::<Account>("account-bench", &event, &ctx, uuid::Uuid::now_v7())
            })
            .collect::<Result<_, _>>()?;
        let n = batch.len() as u64;
        store
            .append(AppendRequest::new(
                "account-bench",
                ExpectedVersion::Exact(version),
                batch,
            ))
            .await?;
        version += n;
    }
    let mid = start + chrono::Duration::seconds((events / 2) as i64);
    // The snapshot tail takes one every 100 events (as `serve` does), then one at the head.
    let t = Instant::now();
    while eventfold_core::snapshot::take_due::<Account>(
        &store,
        &read_models,
        eventfold_core::snapshot::DEFAULT_EVERY,
    )
    .await?
        > 0
    {}
    let snapshots_taken_ms = t.elapsed().as_secs_f64() * 1000.0;
    let snapshotted = eventfold_core::snapshot::write_snapshot::<Account>(
        store.as_ref(),
        read_models.as_ref(),
        "account-bench",
    )
    .await?;
    anyhow::ensure!(
        snapshotted == events,
        "snapshot at {snapshotted} of {events}"
    );
    scratch.analyze().await?;
    let mut as_of_without = Vec::with_capacity(repetitions);
    let mut with_snapshot = Vec::with_capacity(repetitions);
    let mut whole = Vec::with_capacity(repetitions);
    let mut as_of = Vec::with_capacity(repetitions);
    let mut read = Vec::with_capacity(repetitions);
    let mut raw_read = Vec::with_capacity(repetitions);
    for _ in 0..repetitions {
        if let Some((n, seconds)) = scratch.raw_nats_read(Some("account-bench")).await? {
            anyhow::ensure!(n == events, "JetStream delivered {n} of {events} messages");
            raw_read.push(seconds * 1000.0);
        }
        let t = Instant::now();
        let raw = store.read_stream("account-bench", 1, usize::MAX).await?;
        read.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            raw.len() as u64 == events,
            "read {} events of {events}",
            raw.len()
        );
        let t = Instant::now();
        let loaded = replayed(&service, AsOf::Latest).await?;
        whole.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            loaded.version == events,
            "loaded version {} of {events}",
            loaded.version
        );
        let t = Instant::now();
        let fast = from_snapshot(scratch, AsOf::Latest).await?;
        with_snapshot.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            fast == loaded,
            "the snapshot load differs from the full replay"
        );
        let t = Instant::now();
        let past = replayed(&service, AsOf::Time(mid)).await?;
        as_of_without.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let past_fast = from_snapshot(scratch, AsOf::Time(mid)).await?;
        as_of.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            past_fast == past,
            "the as-of load from a snapshot differs from the full replay"
        );
        anyhow::ensure!(
            past.version == events / 2 + 1,
            "as-of version {}",
            past.version
        );
    }
    let pick = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    Ok(LoadReport {
        events,
        load_with_snapshot_ms: pick(&mut with_snapshot, 0.5),
        load_without_snapshot_ms: pick(&mut whole, 0.5),
        load_without_snapshot_p95_ms: pick(&mut whole, 0.95),
        full_read_ms: pick(&mut read, 0.5),
        raw_jetstream_read_ms: (!raw_read.is_empty()).then(|| pick(&mut raw_read, 0.5)),
        as_of_ms: pick(&mut as_of, 0.5),
        as_of_without_snapshot_ms: pick(&mut as_of_without, 0.5),
        snapshots_taken_ms,
        repetitions,
    })
}

/// The bench account as of `as_of`, replayed from its first event.
async fn replayed(service: &Service, as_of: AsOf) -> anyhow::Result<Replayed<Account>> {
    service
        .load::<Account>("bench", as_of)
        .await?
        .context("bench stream missing")
}

/// The bench account as of `as_of`, from its newest usable snapshot.
async fn from_snapshot(scratch: &Scratch, as_of: AsOf) -> anyhow::Result<Replayed<Account>> {
    eventfold_app::service::load_snapshotted::<Account>(
        scratch.store.as_ref(),
        scratch.read_models.as_ref(),
        "bench",
        as_of,
    )
    .await?
    .context("bench stream missing")
}
