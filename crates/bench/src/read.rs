//! `bench read`: a read-all from position 0.

use std::time::Instant;

use eventfold_core::{AppendRequest, ExpectedVersion};
use serde::Serialize;

use crate::scratch::Scratch;
use crate::{bench_event, payload, BenchTarget};

/// What `bench read --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ReadReport {
    /// Events in the log.
    pub events: u64,
    /// Seconds to read them all from position 0, in pages of 10,000.
    pub seconds: f64,
    /// Events read per second.
    pub events_per_sec: f64,
    /// On NATS: messages per second JetStream alone delivers of the same log (an ordered
    /// consumer, counted, not decoded), measured right after.
    pub raw_jetstream_per_sec: Option<f64>,
    /// `events_per_sec` / `raw_jetstream_per_sec`.
    pub ratio_to_raw_jetstream: Option<f64>,
}

/// Runs `bench read` on `target`: appends `events` events (1,000 streams) to a scratch store, then
/// times a read-all from position 0.
///
/// # Errors
/// The scratch store cannot be created, an append fails, or the read returns the wrong count.
pub async fn read(target: &BenchTarget, events: u64) -> anyhow::Result<ReadReport> {
    let scratch = Scratch::create(target, true).await?;
    let store = scratch.store.clone();
    let body = payload(200);
    let mut written = 0u64;
    let mut versions = vec![0u64; 1_000];
    while written < events {
        let batch: Vec<AppendRequest> = (0..1_000u64.min(events - written))
            .map(|i| {
                let s = ((written + i) % 1_000) as usize;
                let request = AppendRequest::new(
                    format!("bench-{s}"),
                    ExpectedVersion::Exact(versions[s]),
                    vec![bench_event(&body)],
                );
                versions[s] += 1;
                request
            })
            .collect();
        written += batch.len() as u64;
        for result in store.append_many(batch).await? {
            result?;
        }
    }
    let started = Instant::now();
    let mut position = 0;
    let mut read = 0u64;
    loop {
        let page = store.read_all(position, 10_000).await?;
        let Some(last) = page.last() else { break };
        position = last.global_position;
        read += page.len() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    let raw = scratch.raw_nats_read(None).await?;
    drop(store);
    scratch.remove().await?;
    anyhow::ensure!(read == events, "read {read} of {events} events");
    if let Some((n, _)) = raw {
        anyhow::ensure!(n == events, "JetStream delivered {n} of {events} messages");
    }
    let events_per_sec = read as f64 / seconds.max(1e-9);
    let raw_jetstream_per_sec = raw.map(|(n, s)| n as f64 / s.max(1e-9));
    Ok(ReadReport {
        events,
        seconds,
        events_per_sec,
        raw_jetstream_per_sec,
        ratio_to_raw_jetstream: raw_jetstream_per_sec.map(|r| events_per_sec / r.max(1e-9)),
    })
}
