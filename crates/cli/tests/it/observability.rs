//! Observability of a running `eventfold serve` with its production dependencies (a Kafka-protocol
//! broker and Redis of the test's own, so it can stop and start them): `/ready` names the
//! dependency that went away and turns ready again when it returns; after real traffic
//! `/metrics` (and the notification consumer's `--metrics-listen`) carry every metric the alert
//! rules and the dashboard use, with the values the traffic implies.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

use crate::{free_port, start_serve, KillOnDrop};

/// A broker or Redis the test owns: stopped (SIGKILL) and started again on the same port.
struct Daemon {
    child: Option<Child>,
    port: u16,
    start: fn(u16) -> Child,
}

impl Daemon {
    fn new(start: fn(u16) -> Child) -> Self {
        let port = free_port();
        let mut d = Self {
            child: None,
            port,
            start,
        };
        d.up();
        d
    }

    fn up(&mut self) {
        self.child = Some((self.start)(self.port));
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "port {} never opened",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.down();
    }
}

fn binary(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests through scripts/test, which sets it")
    })
}

fn tansu(port: u16) -> Child {
    let url = format!("tcp://127.0.0.1:{port}");
    Command::new(binary("EVENTFOLD_TEST_TANSU"))
        .args(["broker", "--storage-engine", "memory://tansu/"])
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tansu")
}

fn redis(port: u16) -> Child {
    Command::new(binary("EVENTFOLD_TEST_REDIS_SERVER"))
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server")
}

/// Polls `GET /ready` until `want` holds for (status, body), or fails after 60 s with the last
/// answer.
async fn ready_until(base: &str, what: &str, want: impl Fn(u16, &Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let r = reqwest::get(format!("{base}/ready")).await.unwrap();
        let (status, retry_after) = (r.status().as_u16(), r.headers().get("retry-after").cloned());
        let body: Value = r.json().await.unwrap();
        if want(status, &body) {
            if status == 503 {
                assert_eq!(retry_after.unwrap(), "5", "{body}");
            }
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: still {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn not_ready(body: &Value) -> Vec<&str> {
    body["not_ready"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

fn detail<'a>(body: &'a Value, name: &str) -> &'a str {
    body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["detail"].as_str())
        .unwrap_or_else(|| panic!("no check {name}: {body}"))
}

/// `/ready` checks every configured dependency and names the one that is away: Redis stopped
/// makes it 503 with `not_ready: ["redis"]`, back again makes it 200; the same for the broker.
#[tokio::test(flavor = "multi_thread")]
async fn ready_follows_redis_and_the_broker() {
    let mut redis = Daemon::new(redis);
    let mut broker = Daemon::new(tansu);
    let dir = tempfile::tempdir().unwrap();
    let (child, base) = start_serve(
        &dir.path().join("ready.db"),
        &[
            "--redis",
            &format!("redis://127.0.0.1:{}", redis.port),
            "--kafka-brokers",
            &format!("127.0.0.1:{}", broker.port),
        ],
        Stdio::null(),
    )
    .await;
    let _serve = KillOnDrop(child);

    let ready = ready_until(&base, "at start", |s, _| s == 200).await;
    let names: Vec<&str> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["store", "redis", "kafka", "read_models"], "{ready}");
    assert_eq!(ready["status"], "ready");

    redis.down();
    let away = ready_until(&base, "redis stopped", |s, b| {
        s == 503 && not_ready(b) == ["redis"]
    })
    .await;
    assert_eq!(away["status"], "not_ready");
    assert!(!detail(&away, "redis").is_empty(), "{away}");
    redis.up();
    ready_until(&base, "redis back", |s, _| s == 200).await;

    broker.down();
    let away = ready_until(&base, "broker stopped", |s, b| {
        s == 503 && not_ready(b) == ["kafka"]
    })
    .await;
    assert!(!detail(&away, "kafka").is_empty(), "{away}");
    broker.up();
    let back = ready_until(&base, "broker back", |s, _| s == 200).await;
    assert!(detail(&back, "kafka").contains("broker"), "{back}");
}

/// The value of the sample `series` (name and labels exactly as rendered) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The metric families a scrape declares (`# TYPE name kind`), with their kinds.
fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.strip_prefix("# TYPE ")?.split(' ');
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

/// Every `eventfold_*` metric name in `text` (a rule file, a dashboard).
fn referenced(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("eventfold_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

async fn scrape(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// After real traffic (accounts, orders, a flash-sale purchase through Redis, a late upload,
/// notifications consumed with one poison message), the server's `/metrics` and the consumer's
/// `--metrics-listen` carry every metric family the issue of observability names, with the
/// values the traffic implies; and every metric the shipped alert rules and Grafana dashboard
/// query is one of them.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_after_real_traffic_and_every_shipped_query_names_one() {
    let redis = Daemon::new(redis);
    let broker = Daemon::new(tansu);
    let brokers = format!("127.0.0.1:{}", broker.port);
    let dir = tempfile::tempdir().unwrap();
    let (child, base) = start_serve(
        &dir.path().join("serve.db"),
        &[
            "--redis",
            &format!("redis://127.0.0.1:{}", redis.port),
            "--kafka-brokers",
            &brokers,
            "--verify-every",
            "1h",
        ],
        Stdio::null(),
    )
    .await;
    let _serve = KillOnDrop(child);

    // Notifications: five good messages and one that does not decode (dead-lettered).
    eventfold_kafka::create_topic(&brokers, "notifications", 1)
        .await
        .unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let mut payloads: Vec<String> = (0..5)
        .map(|i| {
            json!({"user_id": format!("u{i}"), "event_type": "order_paid", "title": "Paid",
                   "body": "thanks", "created_at": null})
            .to_string()
        })
        .collect();
    payloads.push("not json".into());
    for p in &payloads {
        producer
            .send(
                FutureRecord::<str, str>::to("notifications").payload(p),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let metrics_port = free_port();
    let consumer = Command::new(env!("CARGO_BIN_EXE_eventfold"))
        .args(["consume", "notifications", "--batch-size", "10"])
        .args(["--max-wait-ms", "200", "--kafka-brokers", &brokers])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .arg("--store")
        .arg(format!(
            "sqlite://{}",
            dir.path().join("consume.db").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _consumer = KillOnDrop(consumer);

    // HTTP traffic.
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        // Every command with an idempotency key (a flash-sale purchase requires one).
        let request = client
            .post(format!("{base}{path}"))
            .header("idempotency-key", uuid::Uuid::now_v7().to_string())
            .json(&body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for i in 0..3 {
        let body = json!({"account_id": format!("a-{i}"), "owner": "o", "currency": "USD"});
        assert_eq!(post("/accounts", body).await, 201);
    }
    let order = json!({"order_id": "o-1", "customer_id": "c-1", "store_id": "web", "currency": "USD",
                       "lines": [{"sku": "cd", "quantity": 1, "amount": "9.99"}]});
    assert_eq!(post("/orders", order).await, 201);
    let sale = json!({"sku": "gig", "stock": 10, "per_buyer_limit": 3, "unit_price": "5.00",
                      "currency": "USD"});
    assert_eq!(post("/flash-sales", sale).await, 201);
    assert_eq!(
        post(
            "/flash-sales/gig/purchases",
            json!({"buyer": "b1", "quantity": 1})
        )
        .await,
        201
    );
    let late = "order_id,customer_id,occurred_at,sku,quantity,amount,currency\n\
                up-1,c-9,2001-01-01T10:00:00Z,cd,1,12.50,USD\n";
    let uploaded = client
        .post(format!("{base}/stores/web/uploads"))
        .header("content-type", "text/csv")
        .body(late)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 200, "{}", uploaded.text().await.unwrap());
    assert_eq!(
        client
            .get(format!("{base}/balances/none"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Until the relay has published everything, the consumer has handled all six messages and
    // the server's broker monitor (every 10 s) has seen both.
    let consumer_metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let started = Instant::now();
    let (serve_text, consume_text) = loop {
        let serve_text = scrape(&format!("{base}/metrics")).await;
        let consume_text = scrape(&consumer_metrics).await;
        let settled = sample(&serve_text, "eventfold_relay_backlog_events") == Some(0.0)
            && sample(
                &serve_text,
                r#"eventfold_consumer_lag{group="notifications",topic="notifications",partition="0"}"#,
            ) == Some(0.0)
            && sample(
                &serve_text,
                r#"eventfold_dead_letter_messages{topic="notifications.dlq"}"#,
            ) == Some(1.0)
            && sample(&consume_text, "eventfold_batch_messages_total") == Some(5.0)
            && sample(
                &serve_text,
                r#"eventfold_sales_correction_notices_total{reason="late-arrival"}"#,
            ) == Some(1.0)
            && sample(&serve_text, "eventfold_chain_verify_last_ok") == Some(1.0);
        if settled {
            break (serve_text, consume_text);
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "metrics did not settle:\n{serve_text}\n-- consumer --\n{consume_text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let get = |text: &str, series: &str| {
        sample(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };

    // The server.
    assert_eq!(
        get(
            &serve_text,
            r#"eventfold_http_requests_total{method="POST",route="/accounts",status="201"}"#
        ),
        3.0
    );
    assert_eq!(
        get(
            &serve_text,
            r#"eventfold_http_requests_total{method="GET",route="/balances/{id}",status="404"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &serve_text,
            r#"eventfold_http_request_duration_seconds_count{method="POST",route="/accounts"}"#
        ),
        3.0
    );
    let head = get(&serve_text, "eventfold_log_head_position");
    assert!(head >= 7.0, "{head}");
    assert!(get(&serve_text, "eventfold_append_duration_seconds_count") >= 6.0);
    assert!(get(&serve_text, "eventfold_projection_event_age_seconds_count") >= head);
    for projection in ["daily_sales_by_store", "balance_by_account"] {
        let labels = format!(r#"{{projection="{projection}",version="1"}}"#);
        assert_eq!(
            get(
                &serve_text,
                &format!("eventfold_projection_lag_events{labels}")
            ),
            0.0
        );
        assert_eq!(
            get(
                &serve_text,
                &format!("eventfold_projection_lag_seconds{labels}")
            ),
            0.0
        );
    }
    assert!(get(&serve_text, "eventfold_relay_published_total") >= head);
    assert_eq!(get(&serve_text, "eventfold_sagas_in_flight"), 0.0);
    assert_eq!(get(&serve_text, "eventfold_sagas_stuck"), 0.0);
    assert_eq!(
        get(&serve_text, "eventfold_sales_exceptions_raised_total"),
        0.0
    );
    assert_eq!(
        get(
            &serve_text,
            r#"eventfold_chain_verify_runs_total{result="broken"}"#
        ),
        0.0
    );
    assert!(
        get(
            &serve_text,
            r#"eventfold_chain_verify_runs_total{result="ok"}"#
        ) >= 1.0
    );
    assert!(
        get(
            &serve_text,
            "eventfold_chain_verify_last_run_timestamp_seconds"
        ) > 1.7e9
    );

    // The consumer.
    assert_eq!(get(&consume_text, "eventfold_dead_letter_total"), 1.0);
    assert_eq!(get(&consume_text, "eventfold_breaker_open"), 0.0);
    assert_eq!(get(&consume_text, "eventfold_breaker_opened_total"), 0.0);
    assert!(
        consume_text.contains(
            r#"eventfold_consumer_lag{group="notifications",topic="notifications",partition="0"}"#
        ),
        "{consume_text}"
    );

    // Every metric the rules and the dashboard query is exported by one of the two.
    let exported: Vec<(String, String)> = families(&serve_text)
        .into_iter()
        .chain(families(&consume_text))
        .collect();
    let known = |name: &str| {
        exported.iter().any(|(family, kind)| {
            family == name
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| name.strip_suffix(suffix) == Some(family.as_str())))
        })
    };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/");
    for file in ["prometheus/eventfold-rules.yml", "grafana/eventfold.json"] {
        let text = std::fs::read_to_string(format!("{root}{file}")).unwrap();
        let names = referenced(&text);
        assert!(names.len() >= 8, "{file}: {names:?}");
        let unknown: Vec<&String> = names.iter().filter(|n| !known(n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} queries metrics no eventfold process exports: {unknown:?}"
        );
    }
}
