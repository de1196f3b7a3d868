//! `eventfold bench http`: what the HTTP path costs, against a server that does nothing else.
//! Three servers, each a child process on loopback: a minimal axum server (`bench http-baseline`,
//! started by the bench) that parses the same JSON bodies and query strings and answers with the
//! bytes the real server answered, without touching a store; an open `eventfold serve` (no
//! credential to check); and one that requires an API key (each real server on its own scratch
//! store of the target's kind). The same clients drive them in alternating rounds of one run:
//!
//! - commands: deposits into the client's own account (baseline, open, keyed);
//! - reads: `GET /orders/{id}` and `GET /sales/daily` of a paid order (baseline, open).
//!
//! Before each slice the bench waits until both real servers' projections have caught up, so a
//! slice does not pay for the background work the one before left. Ratios are the real server's
//! throughput over the baseline's, and the keyed server's over the open one's (what authentication costs: a key is checked by hashing it and reading the
//! server's in-memory key registry, never the database).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::BenchTarget;

/// `bench http`'s settings.
#[derive(Debug, Clone)]
pub struct HttpBench {
    /// The eventfold binary to run as the servers.
    pub exe: PathBuf,
    /// Concurrent clients (connections), each depositing into its own account.
    pub clients: usize,
    /// Seconds per side and workload in total (each server is driven this long by each).
    pub duration: Duration,
    /// Alternating rounds the time is split into.
    pub rounds: usize,
}

/// One server's figures for one workload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpFigures {
    /// Requests answered as expected per second.
    pub per_sec: f64,
    /// Latency, ms.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
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
    /// The median of the rounds' keyed / open ratios (steadier on a noisy machine).
    pub ratio_median: f64,
    /// Latency percentiles, ms: open p50, p99; keyed p50, p99.
    pub open_p50_ms: f64,
    /// See `open_p50_ms`.
    pub open_p99_ms: f64,
    /// See `open_p50_ms`.
    pub keyed_p50_ms: f64,
    /// See `open_p50_ms`.
    pub keyed_p99_ms: f64,
    /// Deposits against the baseline server (parses the body, touches no store).
    pub baseline_commands: HttpFigures,
    /// `open_commands_per_sec / baseline_commands.per_sec` (target: at least 0.5).
    pub commands_to_baseline: f64,
    /// `GET /orders/{id}` against the open server.
    pub order_reads: HttpFigures,
    /// `GET /orders/{id}` against the baseline.
    pub baseline_order_reads: HttpFigures,
    /// `order_reads.per_sec / baseline_order_reads.per_sec` (target: at least 0.7).
    pub order_reads_to_baseline: f64,
    /// `GET /sales/daily?store=&from=&to=` against the open server.
    pub daily_reads: HttpFigures,
    /// The same against the baseline.
    pub baseline_daily_reads: HttpFigures,
    /// `daily_reads.per_sec / baseline_daily_reads.per_sec` (target: at least 0.7).
    pub daily_reads_to_baseline: f64,
    /// Requests that were not answered as expected (must be 0).
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
        BenchTarget::Nats(_) => {
            anyhow::bail!("bench http runs on a sqlite:// or postgres:// store")
        }
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

/// One server child and how to reach it.
struct Server {
    _child: tokio::process::Child,
    base: String,
    key: Option<String>,
    /// A key that may read `/projections` (keyed server only).
    auditor: Option<String>,
    /// An `eventfold serve` (not the baseline).
    real: bool,
}

/// What a server child runs.
enum Kind<'a> {
    /// `eventfold serve` on `store`, with or without required API keys.
    Serve { store: &'a str, keyed: bool },
    /// `eventfold bench http-baseline` answering with the bodies in this file.
    Baseline { responses: &'a Path },
}

/// A new API key of `store` for `actor` with `role` (`eventfold keys create`).
async fn create_key(exe: &PathBuf, store: &str, actor: &str, role: &str) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(exe)
        .args(["--store", store, "keys", "create", "--actor", actor])
        .args(["--role", role, "--json"])
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
    Ok(v["key"]
        .as_str()
        .context("keys create printed no key")?
        .to_owned())
}

async fn start(exe: &PathBuf, kind: Kind<'_>) -> anyhow::Result<Server> {
    let (key, auditor) = match kind {
        Kind::Serve { store, keyed: true } => (
            Some(create_key(exe, store, "user:bench", "customer").await?),
            Some(create_key(exe, store, "user:bench-auditor", "auditor").await?),
        ),
        _ => (None, None),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = tokio::process::Command::new(exe);
    match kind {
        Kind::Serve { store, keyed } => {
            cmd.args(["--store", store, "serve", "--listen", &listen]);
            if keyed {
                cmd.arg("--auth-keys-required");
            }
        }
        Kind::Baseline { responses } => {
            cmd.args(["bench", "http-baseline", "--listen", &listen, "--responses"])
                .arg(responses);
        }
    }
    cmd.env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let child = cmd.spawn().context("starting a server child")?;
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
                auditor,
                real: matches!(kind, Kind::Serve { .. }),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("a server child did not answer /healthz within 30 s")
}

impl Server {
    /// Waits (up to 30 s) until every projection of a real server has caught up with its log,
    /// so that a slice does not pay for the work the one before left behind.
    async fn settle(&self, client: &reqwest::Client) -> anyhow::Result<()> {
        if !self.real {
            return Ok(());
        }
        for _ in 0..600 {
            let mut r = client.get(format!("{}/projections", self.base));
            if let Some(k) = self.auditor.as_ref() {
                r = r.bearer_auth(k);
            }
            let status: Vec<serde_json::Value> = r.send().await?.error_for_status()?.json().await?;
            if status.iter().all(|p| p["lag_events"] == 0) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the server's projections did not catch up within 30 s")
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let r = client.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }
}

/// The requests of one workload.
#[derive(Clone, Copy, PartialEq)]
enum Workload {
    /// `POST /accounts/bench-{client}/deposit`.
    Deposit,
    /// `GET /orders/{id}` of the bench's order.
    Order,
    /// `GET /sales/daily` of the bench's store.
    Daily,
}

/// The bench order's id and the day it was paid on.
struct Fixture {
    order_id: String,
    day: String,
}

impl Workload {
    fn send(
        self,
        server: &Server,
        client: &reqwest::Client,
        c: usize,
        fixture: &Fixture,
    ) -> reqwest::RequestBuilder {
        match self {
            Self::Deposit => server
                .request(
                    client,
                    reqwest::Method::POST,
                    &format!("/accounts/bench-{c}/deposit"),
                )
                .json(&serde_json::json!({"amount": "1.00", "currency": "USD"})),
            Self::Order => server.request(
                client,
                reqwest::Method::GET,
                &format!("/orders/{}", fixture.order_id),
            ),
            Self::Daily => server.request(
                client,
                reqwest::Method::GET,
                &format!(
                    "/sales/daily?store=bench-store&from={d}&to={d}",
                    d = fixture.day
                ),
            ),
        }
    }
}

/// `workload` by `clients` concurrent clients for `time`; returns (completed, errors).
async fn drive(
    server: &Arc<Server>,
    client: &reqwest::Client,
    (workload, fixture): (Workload, &Arc<Fixture>),
    clients: usize,
    time: Duration,
    latencies: &mut Histogram<u64>,
) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (server, client, stop, errors, fixture) = (
                server.clone(),
                client.clone(),
                stop.clone(),
                errors.clone(),
                fixture.clone(),
            );
            tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let ok = match workload.send(&server, &client, c, &fixture).send().await {
                        // The body is part of the answer: read it before the clock stops.
                        Ok(r) if r.status() == StatusCode::OK => r.bytes().await.is_ok(),
                        _ => false,
                    };
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

/// What the baseline server answers: the bodies the open server gave for the same requests.
#[derive(Debug, Serialize, Deserialize)]
pub struct BaselineResponses {
    /// A deposit's answer (an account view).
    pub deposit: String,
    /// `GET /orders/{id}`'s answer.
    pub order: String,
    /// `GET /sales/daily`'s answer.
    pub daily: String,
}

/// `POST path` with `body` on `server`; anything but `expected` is an error naming `what`.
async fn post(
    server: &Server,
    client: &reqwest::Client,
    (path, body): (&str, serde_json::Value),
    expected: StatusCode,
    what: &str,
) -> anyhow::Result<()> {
    let r = server
        .request(client, reqwest::Method::POST, path)
        .json(&body)
        .send()
        .await?;
    if r.status() != expected {
        bail!("{what} answered {}", r.status());
    }
    Ok(())
}

/// Sets up a real server for the workloads: the clients' accounts, and one order placed and
/// paid in `bench-store` (what the reads read).
async fn prepare(server: &Server, client: &reqwest::Client, clients: usize) -> anyhow::Result<()> {
    for c in 0..clients {
        let body = serde_json::json!({"account_id": format!("bench-{c}"),
            "owner": "bench", "currency": "USD"});
        post(
            server,
            client,
            ("/accounts", body),
            StatusCode::CREATED,
            "opening an account",
        )
        .await?;
    }
    let order = serde_json::json!({"order_id": "bench-order", "customer_id": "bench",
        "store_id": "bench-store", "currency": "USD",
        "lines": [{"sku": "cd", "quantity": 2, "amount": "25.00"},
                  {"sku": "lp", "quantity": 1, "amount": "17.50"}]});
    post(
        server,
        client,
        ("/orders", order),
        StatusCode::CREATED,
        "placing the bench order",
    )
    .await?;
    let pay = serde_json::json!({"amount": "42.50", "currency": "USD"});
    let path = ("/orders/bench-order/pay", pay);
    post(
        server,
        client,
        path,
        StatusCode::OK,
        "paying the bench order",
    )
    .await
}

/// Runs the benchmark (see the module docs).
///
/// # Errors
/// A scratch store or a server cannot be set up.
pub async fn http(target: &BenchTarget, config: &HttpBench) -> anyhow::Result<HttpReport> {
    let store_name = match target {
        BenchTarget::Sqlite(_) => "sqlite",
        BenchTarget::Postgres(_) => "postgres",
        BenchTarget::Nats(_) => "nats",
    };
    let (open_store, keyed_store) = (scratch_store(target).await?, scratch_store(target).await?);
    let result = async {
        let serve = |store, keyed| Kind::Serve { store, keyed };
        let open = Arc::new(start(&config.exe, serve(&open_store.url, false)).await?);
        let keyed = Arc::new(start(&config.exe, serve(&keyed_store.url, true)).await?);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(config.clients)
            .build()?;
        for server in [&open, &keyed] {
            prepare(server, &client, config.clients).await?;
        }
        let day = chrono::Utc::now().date_naive().to_string();
        let fixture = Arc::new(Fixture {
            order_id: "bench-order".into(),
            day,
        });
        // The bodies the baseline answers with: the open server's own, once the order's day is
        // in the daily view (the projections run behind the commands).
        let body = |w: Workload| {
            let (open, client, fixture) = (open.clone(), client.clone(), fixture.clone());
            async move {
                let r = w.send(&open, &client, 0, &fixture).send().await?;
                if r.status() != StatusCode::OK {
                    bail!("the open server answered {}", r.status());
                }
                anyhow::Ok(r.text().await?)
            }
        };
        let mut daily = body(Workload::Daily).await?;
        for _ in 0..100 {
            if daily.contains("bench-store") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            daily = body(Workload::Daily).await?;
        }
        let responses = BaselineResponses {
            deposit: body(Workload::Deposit).await?,
            order: body(Workload::Order).await?,
            daily,
        };
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("responses.json");
        std::fs::write(&path, serde_json::to_vec(&responses)?)?;
        let baseline = Arc::new(
            start(
                &config.exe,
                Kind::Baseline {
                    responses: path.as_path(),
                },
            )
            .await?,
        );

        let rounds = config.rounds.max(1);
        let slice = config.duration / rounds as u32;
        let secs = config.duration.as_secs_f64();
        // Sides per workload: deposits on baseline, open, keyed; reads on baseline and open.
        let plan: [(Workload, Vec<&Arc<Server>>); 3] = [
            (Workload::Deposit, vec![&baseline, &open, &keyed]),
            (Workload::Order, vec![&baseline, &open]),
            (Workload::Daily, vec![&baseline, &open]),
        ];
        let mut latencies: Vec<Vec<Histogram<u64>>> = plan
            .iter()
            .map(|(_, sides)| sides.iter().map(|_| Histogram::new(3)).collect())
            .collect::<Result<_, _>>()?;
        let mut done: Vec<Vec<u64>> = plan.iter().map(|(_, s)| vec![0; s.len()]).collect();
        let mut errors = 0u64;
        let mut keyed_ratios = Vec::with_capacity(rounds);
        // A short warm-up of each side, not counted.
        let mut scratch = Histogram::<u64>::new(3)?;
        for (w, sides) in &plan {
            for server in sides {
                let warm_up = Duration::from_millis(300);
                let job = (*w, &fixture);
                errors += drive(server, &client, job, config.clients, warm_up, &mut scratch)
                    .await
                    .1;
            }
        }
        for round in 0..rounds {
            for (i, (w, sides)) in plan.iter().enumerate() {
                // Rotate which side goes first, so a drift in the machine hits every side.
                let mut this_round = vec![0u64; sides.len()];
                for k in 0..sides.len() {
                    let side = (k + round) % sides.len();
                    for server in [&open, &keyed] {
                        server.settle(&client).await?;
                    }
                    let job = (*w, &fixture);
                    let (d, e) = drive(
                        sides[side],
                        &client,
                        job,
                        config.clients,
                        slice,
                        &mut latencies[i][side],
                    )
                    .await;
                    this_round[side] = d;
                    done[i][side] += d;
                    errors += e;
                }
                if *w == Workload::Deposit && this_round[1] > 0 {
                    keyed_ratios.push(this_round[2] as f64 / this_round[1] as f64);
                }
            }
        }
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let figures = |i: usize, side: usize| HttpFigures {
            per_sec: done[i][side] as f64 / secs,
            p50_ms: ms(&latencies[i][side], 0.5),
            p99_ms: ms(&latencies[i][side], 0.99),
        };
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let (b_dep, open_dep, keyed_dep) = (figures(0, 0), figures(0, 1), figures(0, 2));
        let (b_order, order) = (figures(1, 0), figures(1, 1));
        let (b_daily, daily) = (figures(2, 0), figures(2, 1));
        Ok(HttpReport {
            store: store_name,
            clients: config.clients,
            open_commands_per_sec: open_dep.per_sec,
            keyed_commands_per_sec: keyed_dep.per_sec,
            ratio: ratio(keyed_dep.per_sec, open_dep.per_sec),
            ratio_median: crate::median(&mut keyed_ratios).unwrap_or(0.0),
            open_p50_ms: open_dep.p50_ms,
            open_p99_ms: open_dep.p99_ms,
            keyed_p50_ms: keyed_dep.p50_ms,
            keyed_p99_ms: keyed_dep.p99_ms,
            commands_to_baseline: ratio(open_dep.per_sec, b_dep.per_sec),
            baseline_commands: b_dep,
            order_reads_to_baseline: ratio(order.per_sec, b_order.per_sec),
            order_reads: order,
            baseline_order_reads: b_order,
            daily_reads_to_baseline: ratio(daily.per_sec, b_daily.per_sec),
            daily_reads: daily,
            baseline_daily_reads: b_daily,
            errors,
        })
    }
    .await;
    open_store.remove().await;
    keyed_store.remove().await;
    result
}

/// The query string `GET /sales/daily` takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DailyQuery {
    store: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// The body a deposit takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmountBody {
    amount: String,
    currency: String,
}

/// `eventfold bench http-baseline`: the baseline server of `bench http` (see the module docs).
/// Parses each request as eventfold's server does (JSON body, amount as a decimal string, ISO
/// 4217 code; the daily query's store and dates) and answers with the body in `responses`,
/// touching no store. Runs until killed.
///
/// # Errors
/// `responses` unreadable, or `listen` cannot be bound.
pub async fn baseline_server(listen: &str, responses: &Path) -> anyhow::Result<()> {
    use axum::extract::{Path as UrlPath, Query};
    use axum::http::header::CONTENT_TYPE;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use axum::Json;

    let text =
        std::fs::read(responses).with_context(|| format!("reading {}", responses.display()))?;
    let bodies: Arc<BaselineResponses> = Arc::new(serde_json::from_slice(&text)?);
    let json = |body: &str| ([(CONTENT_TYPE, "application/json")], body.to_owned());
    let bad = |what: &str| (StatusCode::BAD_REQUEST, what.to_owned()).into_response();
    let (b1, b2, b3) = (bodies.clone(), bodies.clone(), bodies);
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/accounts/{id}/deposit",
            post(
                move |UrlPath(id): UrlPath<String>, Json(body): Json<AmountBody>| async move {
                    let amount: Result<rust_decimal::Decimal, _> = body.amount.parse();
                    let currency_ok = body.currency.len() == 3
                        && body.currency.bytes().all(|b| b.is_ascii_uppercase());
                    if id.is_empty() || amount.is_err() || !currency_ok {
                        return bad("bad deposit");
                    }
                    json(&b1.deposit).into_response()
                },
            ),
        )
        .route(
            "/orders/{id}",
            get(move |UrlPath(id): UrlPath<String>| async move {
                if id.is_empty() {
                    return bad("bad order id");
                }
                json(&b2.order).into_response()
            }),
        )
        .route(
            "/sales/daily",
            get(move |Query(q): Query<DailyQuery>| async move {
                let date = |d: &Option<String>| {
                    d.as_deref()
                        .is_some_and(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok())
                };
                if q.store.is_none() || !date(&q.from) || !date(&q.to) {
                    return bad("bad daily query");
                }
                json(&b3.daily).into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}
