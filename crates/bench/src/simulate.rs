//! `eventfold simulate flash-sale`: a crowd against a real server over HTTP on loopback, with a
//! sandbox payment provider ([`sandbox`]), and a report of what must hold (the flash sale, the
//! unpaid-order timeout and the payment saga together).
//!
//! The simulator starts `eventfold serve` as a child process on the given store (with `--redis` and
//! `--kafka-brokers` passed on), runs the sandbox provider (the API in
//! `eventfold_app::shop::payments`) in its own process, opens a sale, and sends `attempts` purchase
//! attempts from `concurrency` clients: each attempt picks a buyer out of `buyers` and a quantity
//! of 1 or 2; a share `duplicate_rate` repeats an earlier attempt (same idempotency key). With
//! `kill_server` the child is killed with SIGKILL when half the attempts are sent and started
//! again; clients retry a refused connection with the same key. The provider decides per order
//! whether the buyer pays (`pay_rate`) and whether the payment fails (`payment_failure_rate` of the
//! payers), and sends signed callbacks, some twice (a replay with the same event id, a late copy
//! with a new one). Buyers who never pay are cancelled by the server's unpaid-order timeout
//! (shortened here).
//!
//! The report comes from the server's answers and the provider's own books, never from the
//! simulator's expectations: orders live (not cancelled) against the stock, units per buyer,
//! charges per order, orders still pending, sagas without an end, and the ledger's remaining
//! stock plus the live units against the initial stock.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};

mod sandbox;

use sandbox::{unit, Sandbox, SECRET};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The eventfold binary to run as the server.
    pub exe: PathBuf,
    /// The server's store URL.
    pub store: String,
    /// Redis for the server's stock ledger (`None`: in-process).
    pub redis: Option<String>,
    /// Kafka brokers for the server's outbox relay.
    pub kafka_brokers: Option<String>,
    /// The relay's topic prefix.
    pub kafka_topic_prefix: String,
    /// Units for sale.
    pub stock: u64,
    /// Distinct buyers.
    pub buyers: u64,
    /// Purchase attempts.
    pub attempts: u64,
    /// Share of attempts that repeat an earlier one (0..=1).
    pub duplicate_rate: f64,
    /// Share of accepted orders whose buyer pays (0..=1).
    pub pay_rate: f64,
    /// Share of paying buyers whose payment fails (0..=1).
    pub payment_failure_rate: f64,
    /// Units one buyer may hold.
    pub per_buyer_limit: u64,
    /// Concurrent clients.
    pub concurrency: usize,
    /// The server's unpaid-order timeout (seconds).
    pub unpaid_timeout_secs: f64,
    /// SIGKILL the server once, half-way, and start it again.
    pub kill_server: bool,
    /// Varies buyers, quantities and payments between runs.
    pub seed: u64,
    /// Where the server's log goes.
    pub server_log: PathBuf,
}

/// The report (`--json` keys are stable).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimReport {
    /// Units for sale.
    pub stock: u64,
    /// Attempts sent.
    pub attempts: u64,
    /// Distinct orders the server accepted.
    pub accepted: u64,
    /// Attempts answered `sold_out`.
    pub sold_out: u64,
    /// Attempts answered `over_limit`.
    pub over_limit: u64,
    /// Repeated attempts answered with their first order.
    pub duplicates_answered: u64,
    /// Attempts that ended in another answer (5xx, ...).
    pub errors: u64,
    /// Units in live (not cancelled) orders above the stock.
    pub oversold: u64,
    /// Buyers whose live orders hold more than the limit.
    pub over_limit_buyers: u64,
    /// Orders paid (provider charges net of refunds, by the provider's books).
    pub charges: u64,
    /// Orders the server shows paid.
    pub paid_orders: u64,
    /// Orders charged more than once.
    pub double_charges: u64,
    /// Orders charged (net) whose order is not paid.
    pub charges_without_paid_order: u64,
    /// Orders cancelled.
    pub cancelled_orders: u64,
    /// Orders still pending at the end (unpaid and not cancelled).
    pub unpaid_not_cancelled: u64,
    /// Orders whose payment failed but which are not cancelled.
    pub failed_not_cancelled: u64,
    /// Accepted orders whose payment saga has not ended.
    pub stuck_sagas: u64,
    /// The ledger's remaining stock plus the live units equals the initial stock.
    pub stock_reconciled: bool,
    /// Units the ledger has left.
    pub stock_remaining: u64,
    /// Units in live orders.
    pub live_units: u64,
    /// Attempts per second over the crowd's run.
    pub attempts_per_sec: f64,
    /// Purchase latency percentiles (ms), answered requests only.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// After the crowd stopped: until every saga of a buyer who paid or failed had ended (ms).
    pub saga_drain_ms: u64,
    /// After the crowd stopped: until every order was settled, timeouts included (ms).
    pub settled_ms: u64,
    /// The server was killed and restarted mid-run.
    pub killed: bool,
    /// Requests sent again because the server was down.
    pub retried_requests: u64,
    /// Everything above holds.
    pub ok: bool,
}

/// The server child process.
struct ServerProcess {
    child: tokio::process::Child,
}

async fn start_server(
    config: &SimConfig,
    listen: &str,
    provider: &str,
) -> anyhow::Result<ServerProcess> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.server_log)
        .with_context(|| format!("opening {}", config.server_log.display()))?;
    let mut cmd = tokio::process::Command::new(&config.exe);
    cmd.arg("--store").arg(&config.store);
    if let Some(b) = &config.kafka_brokers {
        cmd.arg("--kafka-brokers")
            .arg(b)
            .arg("--kafka-topic-prefix")
            .arg(&config.kafka_topic_prefix);
    }
    cmd.args(["serve", "--listen", listen])
        .arg("--unpaid-order-timeout-secs")
        .arg(config.unpaid_timeout_secs.to_string())
        .args(["--payment-provider", provider, "--payment-secret", SECRET])
        .env_remove("EVENTFOLD_REDIS")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    if let Some(r) = &config.redis {
        cmd.arg("--redis").arg(r);
    }
    let child = cmd.spawn().context("starting eventfold serve")?;
    let client = reqwest::Client::new();
    let url = format!("http://{listen}/healthz");
    for _ in 0..600 {
        if client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(ServerProcess { child });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!(
        "the server did not answer /healthz within 30 s (log: {})",
        config.server_log.display()
    )
}

/// What one client saw of one attempt.
struct Outcome {
    status: u16,
    order_id: Option<String>,
    code: Option<String>,
}

/// Runs the simulation (see the module docs).
///
/// # Errors
/// The server or the provider cannot start, the sale cannot be opened.
#[allow(clippy::too_many_lines)]
pub async fn run(config: SimConfig) -> anyhow::Result<SimReport> {
    let provider_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let provider_url = format!("http://{}", provider_listener.local_addr()?);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let listen = format!("127.0.0.1:{port}");
    let base = format!("http://{listen}");
    let sandbox = Sandbox {
        books: Arc::default(),
        seed: config.seed,
        pay_rate: config.pay_rate,
        failure_rate: config.payment_failure_rate,
        duplicate_rate: config.duplicate_rate,
        server: Arc::new(Mutex::new(base.clone())),
        client: reqwest::Client::new(),
    };
    let app = sandbox.router();
    let provider_task = tokio::spawn(async move { axum::serve(provider_listener, app).await });
    let server = Arc::new(tokio::sync::Mutex::new(
        start_server(&config, &listen, &provider_url).await?,
    ));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(config.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let sku = format!(
        "sim-{}-{}",
        config.seed,
        chrono::Utc::now().timestamp_millis()
    );
    let opened = client
        .post(format!("{base}/flash-sales"))
        .json(
            &json!({"sku": sku, "stock": config.stock, "per_buyer_limit": config.per_buyer_limit,
                       "unit_price": "49.00", "currency": "USD"}),
        )
        .send()
        .await?;
    anyhow::ensure!(
        opened.status().is_success(),
        "opening the sale: {} {}",
        opened.status(),
        opened.text().await.unwrap_or_default()
    );

    // The crowd.
    let next = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let histogram = Arc::new(Mutex::new(hdrhistogram::Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let attempts_made: Arc<Mutex<Vec<(String, u64, u64)>>> = Arc::default();
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..config.concurrency {
        clients.spawn({
            let (client, next, retried, killed, histogram) = (
                client.clone(),
                next.clone(),
                retried.clone(),
                killed.clone(),
                histogram.clone(),
            );
            let (config, base, sku, server, provider_url, listen) = (
                config.clone(),
                base.clone(),
                sku.clone(),
                server.clone(),
                provider_url.clone(),
                listen.clone(),
            );
            let attempts_made = attempts_made.clone();
            async move {
                let mut seen = vec![];
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= config.attempts {
                        return seen;
                    }
                    if config.kill_server
                        && n == config.attempts / 2
                        && !killed.swap(true, Ordering::SeqCst)
                    {
                        let mut s = server.lock().await;
                        let _ = s.child.start_kill();
                        let _ = s.child.wait().await;
                        tracing::info!("server killed (SIGKILL); starting it again");
                        match start_server(&config, &listen, &provider_url).await {
                            Ok(p) => *s = p,
                            Err(e) => tracing::error!(error = %e, "restart failed"),
                        }
                    }
                    // A repeat of an earlier attempt (same key), or a new one.
                    let repeat = n > 0 && unit(config.seed, "repeat", n) < config.duplicate_rate;
                    let (key, buyer, quantity) = {
                        let made = attempts_made.lock().expect("attempts");
                        if repeat && !made.is_empty() {
                            let i = (unit(config.seed, "which", n) * made.len() as f64) as usize;
                            made[i.min(made.len() - 1)].clone()
                        } else {
                            drop(made);
                            let buyer =
                                (unit(config.seed, "buyer", n) * config.buyers as f64) as u64;
                            let quantity = if unit(config.seed, "qty", n) < 0.8 {
                                1
                            } else {
                                2
                            };
                            let a = (format!("att-{}-{n}", config.seed), buyer, quantity);
                            attempts_made.lock().expect("attempts").push(a.clone());
                            a
                        }
                    };
                    let url = format!("{base}/flash-sales/{sku}/purchases");
                    let body = json!({"buyer": format!("b{buyer}"), "quantity": quantity});
                    let outcome = loop {
                        let t = Instant::now();
                        let sent = client
                            .post(&url)
                            .header("Idempotency-Key", &key)
                            .json(&body)
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status().as_u16() != 503 => {
                                let status = r.status().as_u16();
                                let v: Value = r.json().await.unwrap_or(Value::Null);
                                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                                let _ = histogram.lock().map(|mut h| h.record(us.max(1)));
                                break Outcome {
                                    status,
                                    order_id: v["order_id"].as_str().map(str::to_owned),
                                    code: v["code"].as_str().map(str::to_owned),
                                };
                            }
                            _ => {
                                retried.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    };
                    seen.push((buyer, quantity, outcome));
                }
            }
        });
    }
    let mut outcomes: Vec<Vec<(u64, u64, Outcome)>> = vec![];
    while let Some(done) = clients.join_next().await {
        outcomes.push(done.context("a crowd client panicked")?);
    }
    let crowd = started.elapsed();
    let crowd_end = Instant::now();

    let mut report = SimReport {
        stock: config.stock,
        attempts: config.attempts,
        killed: killed.load(Ordering::SeqCst),
        retried_requests: retried.load(Ordering::Relaxed),
        attempts_per_sec: config.attempts as f64 / crowd.as_secs_f64().max(1e-9),
        ..SimReport::default()
    };
    {
        let h = histogram.lock().expect("histogram");
        report.p50_ms = h.value_at_quantile(0.50) as f64 / 1_000.0;
        report.p95_ms = h.value_at_quantile(0.95) as f64 / 1_000.0;
        report.p99_ms = h.value_at_quantile(0.99) as f64 / 1_000.0;
    }
    let mut orders: HashMap<String, (u64, u64)> = HashMap::new();
    for (buyer, quantity, o) in outcomes.into_iter().flatten() {
        match (o.status, o.order_id, o.code.as_deref()) {
            (201, Some(id), _) => {
                orders.insert(id, (buyer, quantity));
            }
            (200, Some(id), _) => {
                report.duplicates_answered += 1;
                orders.insert(id, (buyer, quantity));
            }
            (409, _, Some("sold_out")) => report.sold_out += 1,
            (409, _, Some("over_limit")) => report.over_limit += 1,
            _ => report.errors += 1,
        }
    }
    report.accepted = orders.len() as u64;

    // Settle: every order paid or cancelled, every saga ended.
    let deadline =
        crowd_end + Duration::from_secs_f64(config.unpaid_timeout_secs) + Duration::from_secs(60);
    let mut states: HashMap<String, (String, bool)> = HashMap::new();
    loop {
        let unsettled: Vec<String> = orders
            .keys()
            .filter(|id| {
                states
                    .get(*id)
                    .is_none_or(|(status, ended)| status == "PENDING" || !ended)
            })
            .cloned()
            .collect();
        let fetched: Vec<(String, String, bool)> = futures::stream::iter(unsettled)
            .map(|id| {
                let (client, base) = (client.clone(), base.clone());
                async move {
                    let status = client.get(format!("{base}/orders/{id}")).send().await.ok();
                    let status = match status {
                        Some(r) => r.json::<Value>().await.unwrap_or(Value::Null)["status"]
                            .as_str()
                            .unwrap_or("?")
                            .to_owned(),
                        None => "?".into(),
                    };
                    let history = match client
                        .get(format!("{base}/orders/{id}/history"))
                        .send()
                        .await
                    {
                        Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
                        Err(_) => Value::Null,
                    };
                    let ended = history
                        .as_array()
                        .is_some_and(|a| a.iter().any(|e| e["event_type"] == "PaymentSagaEnded"));
                    (id, status, ended)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        for (id, status, ended) in fetched {
            states.insert(id, (status, ended));
        }
        let acted = |id: &str| {
            sandbox
                .books
                .lock()
                .expect("books")
                .authorizations
                .get(id)
                .is_some_and(|(pays, _)| *pays)
        };
        if report.saga_drain_ms == 0
            && orders
                .keys()
                .filter(|id| acted(id))
                .all(|id| states.get(id).is_some_and(|(_, ended)| *ended))
        {
            report.saga_drain_ms = u64::try_from(crowd_end.elapsed().as_millis()).unwrap_or(0);
        }
        let all = orders.keys().all(|id| {
            states
                .get(id)
                .is_some_and(|(status, ended)| status != "PENDING" && *ended)
        });
        if all || Instant::now() > deadline {
            report.settled_ms = u64::try_from(crowd_end.elapsed().as_millis()).unwrap_or(0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The report, from the server's answers and the provider's books.
    let mut per_buyer: HashMap<u64, u64> = HashMap::new();
    {
        let books = sandbox.books.lock().expect("books");
        for (id, (buyer, quantity)) in &orders {
            let (status, ended) = states.get(id).cloned().unwrap_or(("?".into(), false));
            let live = status != "CANCELLED" && status != "REFUNDED";
            let paid = matches!(
                status.as_str(),
                "PAID" | "CONFIRMED" | "SHIPPED" | "COMPLETED"
            );
            if live {
                report.live_units += quantity;
                *per_buyer.entry(*buyer).or_default() += quantity;
            } else {
                report.cancelled_orders += 1;
            }
            if paid {
                report.paid_orders += 1;
            }
            if status == "PENDING" {
                report.unpaid_not_cancelled += 1;
            }
            if !ended {
                report.stuck_sagas += 1;
            }
            if books
                .authorizations
                .get(id)
                .is_some_and(|(_, fails)| *fails)
                && live
            {
                report.failed_not_cancelled += 1;
            }
            let charged = books.charges.get(id).copied().unwrap_or(0);
            let refunded = books.refunds.get(id).copied().unwrap_or(0);
            if charged > 1 {
                report.double_charges += 1;
            }
            let net = charged.saturating_sub(refunded);
            report.charges += net;
            if net > 0 && !paid {
                report.charges_without_paid_order += 1;
            }
        }
    }
    report.oversold = report.live_units.saturating_sub(config.stock);
    report.over_limit_buyers = per_buyer
        .values()
        .filter(|u| **u > config.per_buyer_limit)
        .count() as u64;
    let levels: Value = client
        .get(format!("{base}/flash-sales/{sku}"))
        .send()
        .await?
        .json()
        .await?;
    report.stock_remaining = levels["remaining"].as_u64().unwrap_or(u64::MAX);
    report.stock_reconciled =
        report.stock_remaining.saturating_add(report.live_units) == config.stock;
    report.ok = report.oversold == 0
        && report.accepted > 0
        && report.over_limit_buyers == 0
        && report.double_charges == 0
        && report.charges_without_paid_order == 0
        && report.charges == report.paid_orders
        && report.unpaid_not_cancelled == 0
        && report.failed_not_cancelled == 0
        && report.stuck_sagas == 0
        && report.stock_reconciled
        && report.errors == 0;
    let mut s = server.lock().await;
    if let Some(pid) = s.child.id() {
        // A clean stop (SIGTERM), so the server flushes and exits.
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(10), s.child.wait())
        .await
        .is_err()
    {
        let _ = s.child.start_kill();
    }
    provider_task.abort();
    Ok(report)
}
