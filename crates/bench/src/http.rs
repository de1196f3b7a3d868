//! `eventfold bench http`: what authentication costs HTTP commands. Two real servers
//! (`eventfold serve` children on loopback, each on its own scratch store of the target's kind):
//! one open (no credential to check) and one that requires an API key, driven in alternating
//! rounds of one run by the same clients sending deposits; the figure is the keyed server's
//! throughput over the open one's. A key is checked by hashing it and reading the server's
//! in-memory key registry, never the database.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::BenchTarget;

/// `bench http`'s settings.
#[derive(Debug, Clone)]
pub struct HttpBench {
    /// The eventfold binary to run as the servers.
    pub exe: PathBuf,
    /// Concurrent clients, each depositing into its own account.
    pub clients: usize,
    /// Seconds per side in total (each server is driven this long).
    pub duration: Duration,
    /// Alternating rounds the time is split into.
    pub rounds: usize,
}

/// What `bench http` prints.
#[derive(Debug, Clone, Serialize)]
pub struct HttpReport {
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// Concurrent clients.
    pub clients: usize,
    /// Deposits per second against the open server.
    pub open_commands_per_sec: f64,
    /// Deposits per second against the server that requires a key.
    pub keyed_commands_per_sec: f64,
    /// `keyed / open`: 1.0 means authentication costs nothing; the target is at least 0.95.
    pub ratio: f64,
    /// The median of the rounds' ratios (steadier on a noisy machine).
    pub ratio_median: f64,
    /// Latency percentiles, ms: open p50, p99; keyed p50, p99.
    pub open_p50_ms: f64,
    /// See `open_p50_ms`.
    pub open_p99_ms: f64,
    /// See `open_p50_ms`.
    pub keyed_p50_ms: f64,
    /// See `open_p50_ms`.
    pub keyed_p99_ms: f64,
    /// Requests that did not answer 200 (must be 0).
    pub errors: u64,
}

/// A scratch store for one server: a temporary SQLite file or a scratch PostgreSQL database.
struct Store {
    url: String,
    _dir: Option<tempfile::TempDir>,
    drop_db: Option<(String, String)>,
}

async fn scratch_store(target: &BenchTarget) -> anyhow::Result<Store> {
    match target {
        BenchTarget::Sqlite(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let tmp = tempfile::Builder::new()
                .prefix("eventfold-bench-http-")
                .tempdir_in(dir)?;
            Ok(Store {
                url: format!("sqlite://{}", tmp.path().join("eventfold.db").display()),
                _dir: Some(tmp),
                drop_db: None,
            })
        }
        BenchTarget::Postgres(url) => {
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(url).await?;
            let name = format!("eventfold_bench_{}", uuid::Uuid::now_v7().simple());
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await?;
            let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
            Ok(Store {
                url: format!("{base}/{name}"),
                _dir: None,
                drop_db: Some((url.clone(), name)),
            })
        }
    }
}

impl Store {
    async fn remove(self) {
        if let Some((admin, name)) = self.drop_db {
            use sqlx::Connection;
            if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut c)
                    .await;
            }
        }
    }
}

/// One `eventfold serve` child and how to reach it.
struct Server {
    _child: tokio::process::Child,
    base: String,
    key: Option<String>,
}

async fn start(exe: &PathBuf, store: &str, keyed: bool) -> anyhow::Result<Server> {
    let key = if keyed {
        let out = tokio::process::Command::new(exe)
            .args(["--store", store, "keys", "create", "--actor", "user:bench"])
            .args(["--role", "customer", "--json"])
            .output()
            .await
            .context("running eventfold keys create")?;
        if !out.status.success() {
            bail!(
                "keys create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Some(
            v["key"]
                .as_str()
                .context("keys create printed no key")?
                .to_owned(),
        )
    } else {
        None
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["--store", store, "serve", "--listen", &listen])
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    if keyed {
        cmd.arg("--auth-keys-required");
    }
    let child = cmd.spawn().context("starting eventfold serve")?;
    let base = format!("http://{listen}");
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(Server {
                _child: child,
                base,
                key,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("eventfold serve did not answer /healthz within 30 s")
}

impl Server {
    fn request(&self, client: &reqwest::Client, path: &str) -> reqwest::RequestBuilder {
        let r = client.post(format!("{}{path}", self.base));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }
}

/// Deposits by `clients` concurrent clients for `time`; returns (completed, errors).
async fn drive(
    server: &Arc<Server>,
    client: &reqwest::Client,
    clients: usize,
    time: Duration,
    latencies: &mut Histogram<u64>,
) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (server, client, stop, errors) =
                (server.clone(), client.clone(), stop.clone(), errors.clone());
            tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                let path = format!("/accounts/bench-{c}/deposit");
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let ok = server
                        .request(&client, &path)
                        .json(&serde_json::json!({"amount": "1.00", "currency": "USD"}))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
                    if ok {
                        let _ = h.record(started.elapsed().as_micros() as u64);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                h
            })
        })
        .collect();
    tokio::time::sleep(time).await;
    stop.store(true, Ordering::Relaxed);
    let mut done = 0;
    for t in tasks {
        if let Ok(h) = t.await {
            done += h.len();
            let _ = latencies.add(&h);
        }
    }
    (done, errors.load(Ordering::Relaxed))
}

/// Runs the benchmark (see the module docs).
///
/// # Errors
/// A scratch store or a server cannot be set up.
pub async fn http(target: &BenchTarget, config: &HttpBench) -> anyhow::Result<HttpReport> {
    let store_name = match target {
        BenchTarget::Sqlite(_) => "sqlite",
        BenchTarget::Postgres(_) => "postgres",
    };
    let (open_store, keyed_store) = (scratch_store(target).await?, scratch_store(target).await?);
    let result = async {
        let open = Arc::new(start(&config.exe, &open_store.url, false).await?);
        let keyed = Arc::new(start(&config.exe, &keyed_store.url, true).await?);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(config.clients)
            .build()?;
        for server in [&open, &keyed] {
            for c in 0..config.clients {
                let r = server
                    .request(&client, "/accounts")
                    .json(&serde_json::json!({"account_id": format!("bench-{c}"),
                        "owner": "bench", "currency": "USD"}))
                    .send()
                    .await?;
                if r.status() != reqwest::StatusCode::CREATED {
                    bail!("opening an account answered {}", r.status());
                }
            }
        }
        let rounds = config.rounds.max(1);
        let slice = config.duration / rounds as u32;
        // Per side: its server, latencies and deposits done ([0] open, [1] keyed).
        let sides = [&open, &keyed];
        let mut latencies = [Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?];
        let mut done = [0u64; 2];
        let mut errors = 0u64;
        let mut ratios = Vec::with_capacity(rounds);
        // A short warm-up on each side, not counted.
        let mut scratch = Histogram::<u64>::new(3)?;
        for server in sides {
            let warm_up = Duration::from_millis(300);
            drive(server, &client, config.clients, warm_up, &mut scratch).await;
        }
        for round in 0..rounds {
            // Alternate which side goes first, so a drift in the machine hits both.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut this_round = [0u64; 2];
            for side in order {
                let (d, e) = drive(
                    sides[side],
                    &client,
                    config.clients,
                    slice,
                    &mut latencies[side],
                )
                .await;
                this_round[side] = d;
                done[side] += d;
                errors += e;
            }
            if this_round[0] > 0 {
                ratios.push(this_round[1] as f64 / this_round[0] as f64);
            }
        }
        let [n_open, n_keyed] = done;
        let [h_open, h_keyed] = latencies;
        let secs = config.duration.as_secs_f64();
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Ok(HttpReport {
            store: store_name,
            clients: config.clients,
            open_commands_per_sec: n_open as f64 / secs,
            keyed_commands_per_sec: n_keyed as f64 / secs,
            ratio: if n_open == 0 {
                0.0
            } else {
                n_keyed as f64 / n_open as f64
            },
            ratio_median: crate::median(&mut ratios).unwrap_or(0.0),
            open_p50_ms: ms(&h_open, 0.5),
            open_p99_ms: ms(&h_open, 0.99),
            keyed_p50_ms: ms(&h_keyed, 0.5),
            keyed_p99_ms: ms(&h_keyed, 0.99),
            errors,
        })
    }
    .await;
    open_store.remove().await;
    keyed_store.remove().await;
    result
}
