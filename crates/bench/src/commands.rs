//! `bench commands`: the command path measured piece by piece, as the peers' command APIs are
//! (cqrs-es, esrs, eventcore: load, decide, append), beside eventfold's store-level append, in
//! alternating rounds of one run on one scratch store:
//!
//! - `store`: one event appended to the client's own stream with the version it last saw (what
//!   `bench append` measures; no aggregate, no decision);
//! - `service_existing`: a deposit into the client's own account through the service (its lane
//!   brings the account up to date, decides, appends with the exact expected version);
//! - `service_new`: an account opened per command through the service (a new stream: nothing to
//!   load, a `NoStream` append).
//!
//! Each scenario runs with `clients` clients; latencies per command.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventfold_app::service::{Executed, Service};
use eventfold_core::{Actor, AppendRequest, ExpectedVersion};
use eventfold_domain::account::{Account, AccountCommand};
use eventfold_domain::{Currency, Money};
use serde::Serialize;

use crate::append::no_render;
use crate::scratch::Scratch;
use crate::{bench_context, bench_event, drive, ms, payload, BenchTarget, Run};

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct CommandFigures {
    /// Commands per second of wall time.
    pub commands_per_sec: f64,
    /// Latency per command, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// What `bench commands --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct CommandsReport {
    /// Backend measured.
    pub store: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Seconds per scenario.
    pub duration_s: f64,
    /// One event per command, straight to the store.
    pub store_append: CommandFigures,
    /// A deposit into the client's existing account through the service.
    pub service_existing: CommandFigures,
    /// An account opened per command through the service.
    pub service_new: CommandFigures,
    /// `service_existing.commands_per_sec / store_append.commands_per_sec`: what loading and
    /// deciding through the lane cost on top of the append.
    pub existing_to_store: f64,
    /// `service_new.commands_per_sec / store_append.commands_per_sec`.
    pub new_to_store: f64,
}

/// Runs `command` on account `id` through `service`.
///
/// # Errors
/// The command failed or did not append exactly one event (a bug).
async fn one_event(service: &Service, id: &str, command: AccountCommand) -> anyhow::Result<()> {
    match service
        .execute::<Account>(id, command, &bench_context(), Box::new(no_render))
        .await?
    {
        Executed::Applied { events: 1, .. } => Ok(()),
        other => anyhow::bail!("a command on {id} did not append one event: {other:?}"),
    }
}

fn figures(run: &Run) -> CommandFigures {
    CommandFigures {
        commands_per_sec: run.commands as f64 / run.elapsed.max(1e-9),
        p50_ms: ms(&run.latencies, 0.50),
        p95_ms: ms(&run.latencies, 0.95),
        p99_ms: ms(&run.latencies, 0.99),
    }
}

/// Runs `bench commands` on `target` with `clients` clients for `duration` per scenario, split
/// into `rounds` alternating rounds.
///
/// # Errors
/// The scratch store cannot be created, or a command is refused (a bug).
pub async fn commands(
    target: &BenchTarget,
    clients: usize,
    duration: Duration,
    rounds: usize,
) -> anyhow::Result<CommandsReport> {
    let scratch = Scratch::create(target, true).await?;
    let store = scratch.store.clone();
    let service = Service::new(store.clone());
    let actor = Actor::system("bench");
    let usd = |s: &str| Money::parse(s, Currency::USD);
    for client in 0..clients {
        let open = AccountCommand::Open {
            owner: "bench".into(),
            currency: Currency::USD,
            actor: actor.clone(),
        };
        service
            .execute::<Account>(
                &format!("bench-acc-{client}"),
                open,
                &bench_context(),
                Box::new(no_render),
            )
            .await?;
    }
    let body = Arc::new(payload(200));
    let versions: Arc<Vec<AtomicU64>> = Arc::new((0..clients).map(|_| AtomicU64::new(0)).collect());
    let opened = Arc::new(AtomicU64::new(0));
    let rounds = rounds.max(1);
    let round = duration / rounds as u32;
    let (mut direct, mut existing, mut new) = (Run::empty(), Run::empty(), Run::empty());
    for _ in 0..rounds {
        let (store, body, versions) = (store.clone(), body.clone(), versions.clone());
        direct.add(
            drive(clients, round, move |client, _| {
                let (store, body, versions) = (store.clone(), body.clone(), versions.clone());
                async move {
                    let v = versions[client].load(Ordering::Relaxed);
                    let expected = if v == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(v)
                    };
                    let out = store
                        .append(AppendRequest::new(
                            format!("bench-{client}"),
                            expected,
                            vec![bench_event(&body)],
                        ))
                        .await?;
                    versions[client].store(out.stream_version, Ordering::Relaxed);
                    Ok(())
                }
            })
            .await?,
        )?;
        let (s, a) = (service.clone(), actor.clone());
        let deposit = usd("1.00")?;
        existing.add(
            drive(clients, round, move |client, _| {
                let (service, actor) = (s.clone(), a.clone());
                async move {
                    let command = AccountCommand::Deposit {
                        amount: deposit,
                        actor,
                    };
                    one_event(&service, &format!("bench-acc-{client}"), command).await
                }
            })
            .await?,
        )?;
        let (s, a, opened) = (service.clone(), actor.clone(), opened.clone());
        new.add(
            drive(clients, round, move |_, _| {
                let (service, actor) = (s.clone(), a.clone());
                let n = opened.fetch_add(1, Ordering::Relaxed);
                async move {
                    let command = AccountCommand::Open {
                        owner: "bench".into(),
                        currency: Currency::USD,
                        actor,
                    };
                    one_event(&service, &format!("bench-new-{n}"), command).await
                }
            })
            .await?,
        )?;
    }
    let store_name = scratch.name;
    drop((store, service));
    scratch.remove().await?;
    let (d, e, n) = (figures(&direct), figures(&existing), figures(&new));
    Ok(CommandsReport {
        store: store_name.into(),
        clients,
        duration_s: duration.as_secs_f64(),
        existing_to_store: e.commands_per_sec / d.commands_per_sec.max(1e-9),
        new_to_store: n.commands_per_sec / d.commands_per_sec.max(1e-9),
        store_append: d,
        service_existing: e,
        service_new: n,
    })
}
