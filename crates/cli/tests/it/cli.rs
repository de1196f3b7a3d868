//! The `eventfold` CLI end to end: import, history, state, projections, bench, errors.

use std::process::{Command, Output};

use serde_json::Value;

fn eventfold(store: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eventfold"))
        .args(args)
        .env("EVENTFOLD_STORE", store)
        .env_remove("RUST_LOG")
        .output()
        .expect("run eventfold")
}

fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn import_history_state_and_projections() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("cli.db").display());
    let file = dir.path().join("cdnow.txt");
    std::fs::write(&file, " customer_id  date number_of_cds  dollar_value\r\n 00001 19970101  1   11.77\r\n 00001 19970101  3   30.00\r\n 00002 19970102  1 abc\r\n").unwrap();
    let file = file.to_str().unwrap();

    let refused = eventfold(&store, &["import", "cdnow", file]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("line 4") && stderr.contains("dollar_value"),
        "{stderr}"
    );
    assert_eq!(
        ok_json(&eventfold(&store, &["projections", "status", "--json"]))[0]["head"],
        0
    );

    let summary = ok_json(&eventfold(
        &store,
        &[
            "import",
            "cdnow",
            file,
            "--skip-bad",
            "--backfill",
            "--json",
        ],
    ));
    assert_eq!(
        (
            summary["rows"].as_u64(),
            summary["orders_appended"].as_u64(),
            summary["events_appended"].as_u64()
        ),
        (Some(2), Some(2), Some(2))
    );
    assert_eq!(summary["skipped"][0]["line"], 4);

    let history = eventfold(&store, &["history", "order-cdnow-00001-19970101-2"]);
    let text = String::from_utf8_lossy(&history.stdout);
    assert!(
        history.status.success()
            && text.contains("system:import-cdnow")
            && text.contains("OrderRecorded"),
        "{text}"
    );
    let entries = ok_json(&eventfold(
        &store,
        &["history", "order-cdnow-00001-19970101-2", "--json"],
    ));
    // One event per imported purchase: the order recorded complete and paid.
    assert_eq!(entries.as_array().map(Vec::len), Some(1), "{entries}");
    assert_eq!(entries[0]["state_after"]["status"], "COMPLETED");
    assert_eq!(entries[0]["state_after"]["paid"]["amount"], "30.00");

    let state = ok_json(&eventfold(
        &store,
        &["state", "order-cdnow-00001-19970101-2", "--version", "1"],
    ));
    assert_eq!(
        (state["version"].as_u64(), state["state"]["status"].as_str()),
        (Some(1), Some("COMPLETED"))
    );
    let past = eventfold(
        &store,
        &[
            "state",
            "order-cdnow-00001-19970101-2",
            "--as-of",
            "1996-12-31T23:59:59Z",
        ],
    );
    assert!(
        !past.status.success()
            && String::from_utf8_lossy(&past.stderr).contains("no events in range")
    );
    let bad_time = eventfold(
        &store,
        &[
            "state",
            "order-cdnow-00001-19970101-2",
            "--as-of",
            "tuesday",
        ],
    );
    assert!(String::from_utf8_lossy(&bad_time.stderr).contains("RFC 3339"));

    let rebuilt = ok_json(&eventfold(
        &store,
        &["projections", "rebuild", "daily_sales_by_store", "--json"],
    ));
    assert_eq!(rebuilt["position"], 2);
    assert_eq!(rebuilt["rebuilt"][0]["version"], 1);
    let unknown = eventfold(&store, &["projections", "rebuild", "nope"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("order_summary"));
    // The rebuild is recorded (position 3); every version stands at 2.
    let status = ok_json(&eventfold(&store, &["projections", "status", "--json"]));
    let status = status.as_array().unwrap();
    assert!(
        status
            .iter()
            .all(|p| p["checkpoint"] == 2 && p["head"] == 3 && p["lag_events"] == 1),
        "{status:?}"
    );
    let daily: Vec<(&Value, &Value)> = status
        .iter()
        .filter(|p| p["name"] == "daily_sales_by_store")
        .map(|p| (&p["version"], &p["active"]))
        .collect();
    assert_eq!(
        daily,
        vec![
            (&Value::from(1), &Value::Bool(true)),
            (&Value::from(2), &Value::Bool(false))
        ]
    );

    // Versions: placed and paid the same day, so version 2 compares equal; switch, refuse to
    // retire the active one, roll back, retire.
    let compared = ok_json(&eventfold(
        &store,
        &[
            "projections",
            "compare",
            "daily_sales_by_store",
            "--versions",
            "1,2",
            "--json",
        ],
    ));
    assert_eq!(
        (
            &compared["equal"],
            &compared["differ"],
            &compared["only_in_a"],
            &compared["only_in_b"]
        ),
        (
            &Value::from(1),
            &Value::from(0),
            &Value::from(0),
            &Value::from(0)
        )
    );
    let versions = |args: &[&str]| {
        let mut all = vec!["projections"];
        all.extend_from_slice(args);
        eventfold(&store, &all)
    };
    let activated = ok_json(&versions(&[
        "activate",
        "daily_sales_by_store",
        "--version",
        "2",
        "--reason",
        "order dates",
        "--json",
    ]));
    assert_eq!(
        (&activated["version"], &activated["previous"]),
        (&Value::from(2), &Value::from(1))
    );
    let refused = versions(&[
        "retire",
        "daily_sales_by_store",
        "--version",
        "2",
        "--reason",
        "x",
    ]);
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("is active"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    ok_json(&versions(&[
        "activate",
        "daily_sales_by_store",
        "--version",
        "1",
        "--reason",
        "back",
        "--json",
    ]));
    let retired = ok_json(&versions(&[
        "retire",
        "daily_sales_by_store",
        "--version",
        "2",
        "--reason",
        "not needed",
        "--json",
    ]));
    assert_eq!(retired["retired"], 2);
    let status = ok_json(&eventfold(&store, &["projections", "status", "--json"]));
    assert!(!status
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "daily_sales_by_store" && p["version"] == 2));

    let missing = eventfold(&store, &["history", "order-none"]);
    assert!(
        !missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("no events")
    );
    let bad_store = eventfold("mysql://x", &["projections", "status"]);
    assert!(String::from_utf8_lossy(&bad_store.stderr).contains("unsupported store URL"));
}

#[test]
fn bench_commands_print_their_figures() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("bench.db").display());
    let append = ok_json(&eventfold(
        &store,
        &[
            "bench",
            "append",
            "--clients",
            "4",
            "--duration",
            "0.4",
            "--rounds",
            "2",
            "--hash-chain",
            "both",
            "--json",
        ],
    ));
    for field in [
        "commands_per_sec",
        "events_per_sec",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "baseline_events_per_sec",
        "ratio_to_baseline",
        "projection_lag_p95_ms",
        "unchained_events_per_sec",
        "hash_chain_ratio",
        "hash_chain_ratio_median",
    ] {
        assert!(
            append[field].as_f64().is_some_and(|v| v > 0.0),
            "{field} in {append}"
        );
    }
    let runner = &append["projection_runner"];
    for field in ["batches", "events_per_busy_sec", "commit_ms_per_batch"] {
        assert!(
            runner[field].as_f64().is_some_and(|v| v > 0.0),
            "{field} in {runner}"
        );
    }
    let commands = ok_json(&eventfold(
        &store,
        &[
            "bench",
            "commands",
            "--clients",
            "2",
            "--duration",
            "0.6",
            "--rounds",
            "1",
            "--json",
        ],
    ));
    for scenario in ["store_append", "service_existing", "service_new"] {
        assert!(
            commands[scenario]["commands_per_sec"]
                .as_f64()
                .is_some_and(|v| v > 0.0),
            "{scenario} in {commands}"
        );
    }
    let load = ok_json(&eventfold(
        &store,
        &[
            "bench",
            "load",
            "--events",
            "500",
            "--repetitions",
            "3",
            "--json",
        ],
    ));
    assert_eq!(load["events"], 500);
    assert!(load["load_without_snapshot_ms"]
        .as_f64()
        .is_some_and(|v| v > 0.0));
    let upload = ok_json(&eventfold(
        &store,
        &["bench", "upload", "--sales", "300", "--json"],
    ));
    assert_eq!(
        (
            &upload["notices"],
            &upload["second_upload_appended"],
            &upload["live_notices"]
        ),
        (
            &serde_json::json!(300),
            &serde_json::json!(0),
            &serde_json::json!(300)
        )
    );
    assert!(upload["applied_ms"].as_f64().is_some_and(|v| v > 0.0));
    assert!(upload["live_applied_ms"]
        .as_f64()
        .is_some_and(|v| v >= upload["live_append_ms"].as_f64().unwrap_or(f64::MAX)));
    let windows = ok_json(&eventfold(
        &store,
        &[
            "bench", "windows", "--events", "20000", "--skus", "50", "--rounds", "1", "--json",
        ],
    ));
    assert!(windows["events_per_sec"].as_f64().is_some_and(|v| v > 0.0));
    assert!(windows["late_corrections"].as_u64().is_some_and(|v| v > 0));
    // Benchmarks use their own temporary files and leave the store alone.
    assert!(!dir.path().join("bench.db").exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bench_commands_on_postgres_use_a_scratch_database_and_print_their_figures() {
    let admin = eventfold_postgres::testing::admin_url();
    let append = ok_json(&eventfold(
        &admin,
        &[
            "bench",
            "append",
            "--clients",
            "4",
            "--duration",
            "0.4",
            "--rounds",
            "2",
            "--json",
        ],
    ));
    assert_eq!(append["store"], "postgres");
    for field in [
        "commands_per_sec",
        "events_per_sec",
        "p99_ms",
        "baseline_events_per_sec",
        "ratio_to_baseline",
        "ratio_to_indexed_baseline",
        "projection_lag_p95_ms",
    ] {
        assert!(
            append[field].as_f64().is_some_and(|v| v > 0.0),
            "{field} in {append}"
        );
    }
    let hot = ok_json(&eventfold(
        &admin,
        &[
            "bench",
            "append",
            "--hot-stream",
            "--clients",
            "4",
            "--duration",
            "0.4",
            "--rounds",
            "1",
            "--json",
        ],
    ));
    assert_eq!(hot["hot_stream"], true);
    assert!(hot["commands_per_sec"].as_f64().is_some_and(|v| v > 0.0));
    let refused = eventfold(
        &admin,
        &[
            "bench",
            "append",
            "--hot-stream",
            "--events-per-command",
            "2",
        ],
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--events-per-command must be 1"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let read = ok_json(&eventfold(
        &admin,
        &["bench", "read", "--events", "3000", "--json"],
    ));
    assert_eq!(read["events"], 3000);
    assert!(read["events_per_sec"].as_f64().is_some_and(|v| v > 0.0));
    let load = ok_json(&eventfold(
        &admin,
        &[
            "bench",
            "load",
            "--events",
            "300",
            "--repetitions",
            "2",
            "--json",
        ],
    ));
    assert_eq!(load["events"], 300);
    let http = ok_json(&eventfold(
        &admin,
        &[
            "bench",
            "http",
            "--clients",
            "2",
            "--duration",
            "1",
            "--rounds",
            "2",
            "--json",
        ],
    ));
    assert_eq!(http["store"], "postgres");
    assert_eq!(http["errors"], 0, "{http}");
    for side in [
        "open_commands_per_sec",
        "keyed_commands_per_sec",
        "ratio",
        "commands_to_baseline",
        "order_reads_to_baseline",
        "daily_reads_to_baseline",
    ] {
        assert!(http[side].as_f64().is_some_and(|v| v > 0.0), "{http}");
    }
    for side in ["baseline_commands", "order_reads", "daily_reads"] {
        assert!(
            http[side]["per_sec"].as_f64().is_some_and(|v| v > 0.0),
            "{http}"
        );
    }
}

/// `eventfold migrate` on PostgreSQL: migrates an empty database, is a no-op the second time, and
/// refuses a schema newer than the binary with a message that says so.
#[test]
fn migrate_twice_is_a_no_op_and_a_newer_schema_is_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(eventfold_postgres::testing::fresh_db());
    let first = ok_json(&eventfold(&db.url, &["migrate", "--json"]));
    assert_eq!(first["previous"], 0);
    let current = first["current"].as_u64().unwrap();
    assert!(current >= 2, "{first}");
    let second = ok_json(&eventfold(&db.url, &["migrate", "--json"]));
    assert_eq!(second["previous"], current);
    assert_eq!(second["current"], current);
    let text = eventfold(&db.url, &["migrate"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("already current"));
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("INSERT INTO eventfold_schema (version) VALUES (999)")
            .execute(&mut conn)
            .await
            .unwrap();
    });
    let refused = eventfold(&db.url, &["migrate"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("schema version 999") && stderr.contains("upgrade eventfold"),
        "{stderr}"
    );
}

/// `eventfold relay --once` publishes the imported log to Kafka (Tansu), checked with kcat, the
/// correction notices of the (late) rows included; a second run publishes nothing; bad
/// arguments are refused with a message naming them.
#[test]
fn relay_once_publishes_the_log_to_kafka() {
    let brokers = eventfold_kafka::testing::broker();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("relay.db").display());
    let file = dir.path().join("cdnow.txt");
    std::fs::write(
        &file,
        " 00001 19970101  1   11.77\n 00002 19970102  2   20.00\n",
    )
    .unwrap();
    // Not a backfill: both rows are late arrivals, each with a correction notice.
    let imported = ok_json(&eventfold(
        &store,
        &["import", "cdnow", file.to_str().unwrap(), "--json"],
    ));
    assert_eq!(imported["corrections_noticed"], 2, "{imported}");
    let prefix = format!("cli{}", uuid::Uuid::now_v7().simple());
    let relay = |extra: &[&str]| {
        let mut args = vec![
            "relay",
            "--once",
            "--kafka-brokers",
            &brokers,
            "--kafka-topic-prefix",
            &prefix,
        ];
        args.extend_from_slice(extra);
        eventfold(&store, &args)
    };
    let first = ok_json(&relay(&["--json"]));
    let published = first["published"].as_u64().unwrap();
    // Two orders (one `OrderRecorded` each) and two notices.
    assert_eq!(published, 4, "{first}");
    assert_eq!(ok_json(&relay(&["--json"]))["published"], 0);

    let topic = |category: &str| -> String {
        let out = Command::new("kcat")
            .args(["-b", &brokers, "-C", "-t", &format!("{prefix}.{category}")])
            .args(["-o", "beginning", "-e", "-q", "-f", "%k %h\n"])
            .output()
            .expect("kcat runs (scripts/test installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = topic("order");
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 2, "{text}");
    let notices = topic("salescorrection");
    let notice_lines: Vec<&str> = notices.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(notice_lines.len(), 2, "{notices}");
    assert!(
        notice_lines
            .iter()
            .all(|l| l.contains("event_type=SalesCorrectionNoticed")
                && l.contains("actor=system:sales-corrections")),
        "{notices}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "{} ",
            eventfold_core::tenant::partition_key("order-cdnow-00001-19970101-1")
        )) && l.contains("stream_id=order-cdnow-00001-19970101-1,")
            && l.contains("event_type=OrderRecorded")),
        "{text}"
    );

    let no_broker = Command::new(env!("CARGO_BIN_EXE_eventfold"))
        .args(["relay", "--once"])
        .env("EVENTFOLD_STORE", &store)
        .env_remove("EVENTFOLD_KAFKA_BROKERS")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&no_broker.stderr).contains("--kafka-brokers"));
    let bad = relay(&["--shards", "3-1"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("runs backwards"));
    let bad = relay(&["--shards", "99"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not below 16"));
}

/// `bench notifications` and `bench relay` print the fields scripts rely on (small runs on
/// Tansu; the figures themselves are in the closing notes).
#[test]
fn kafka_benches_print_their_fields() {
    let brokers = eventfold_kafka::testing::broker();
    let admin = eventfold_postgres::testing::admin_url();
    let notifications = ok_json(&eventfold(
        &admin,
        &[
            "bench",
            "notifications",
            "--kafka-brokers",
            &brokers,
            "--messages",
            "500",
            "--json",
        ],
    ));
    for field in [
        "messages_per_sec",
        "p95_latency_ms",
        "flush_1k_ms",
        "flush_10k_ms",
        "max_rss_mb",
        "broker_baseline_messages_per_sec",
        "ratio_to_baseline",
    ] {
        assert!(
            notifications[field].as_f64().is_some_and(|v| v > 0.0),
            "{field} in {notifications}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("b.db").display());
    let relay = ok_json(&eventfold(
        &store,
        &[
            "bench",
            "relay",
            "--kafka-brokers",
            &brokers,
            "--events",
            "500",
            "--json",
        ],
    ));
    assert!(relay["messages_per_sec"].as_f64().is_some_and(|v| v > 0.0));
    assert_eq!(relay["order_violations"], 0, "{relay}");
    assert_eq!(relay["lost"], 0, "{relay}");
    assert!(relay["ratio_to_baseline"].as_f64().is_some_and(|v| v > 0.0));
}

/// `calendar set|show`, and a CDNOW import into a store with a calendar: the file's dates are
/// the store's business dates (each sale starts its day in the store's time zone), so the daily
/// view of a New York store shows the same dates as the file.
#[test]
fn a_store_calendar_dates_an_imported_file_in_the_stores_zone() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("cal.db").display());
    let file = dir.path().join("cdnow.txt");
    std::fs::write(
        &file,
        " customer_id  date number_of_cds  dollar_value\n 00001 19970101  1   11.77\n 00002 19970102  3   30.00\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let shown = ok_json(&eventfold(
        &store,
        &["calendar", "show", "--store-id", "ny", "--json"],
    ));
    assert_eq!(
        (&shown["zone"], &shown["set"]),
        (&Value::from("UTC"), &Value::from(false))
    );
    let refused = eventfold(
        &store,
        &[
            "calendar",
            "set",
            "--store-id",
            "ny",
            "--zone",
            "Nowhere/City",
        ],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Nowhere/City"));
    let set = ok_json(&eventfold(
        &store,
        &[
            "calendar",
            "set",
            "--store-id",
            "ny",
            "--zone",
            "America/New_York",
            "--cutoff",
            "3h",
            "--json",
        ],
    ));
    assert_eq!(set["cutoff_minutes"], 180);
    let shown = ok_json(&eventfold(
        &store,
        &["calendar", "show", "--store-id", "ny", "--json"],
    ));
    assert_eq!(
        (&shown["zone"], &shown["set"]),
        (&Value::from("America/New_York"), &Value::from(true))
    );
    ok_json(&eventfold(
        &store,
        &[
            "import",
            "cdnow",
            file,
            "--store-id",
            "ny",
            "--backfill",
            "--json",
        ],
    ));
    let state = ok_json(&eventfold(
        &store,
        &["state", "order-ny-00001-19970101-1", "--json"],
    ));
    assert_eq!(
        state["state"]["calendar"]["zone"], "America/New_York",
        "{state}"
    );
    // The first sale's event time is midnight in New York (05:00 UTC): the daily view dates it
    // 1997-01-01 in the store's calendar.
    let history = ok_json(&eventfold(
        &store,
        &["history", "order-ny-00001-19970101-1", "--json"],
    ));
    assert_eq!(
        history[0]["event_time"], "1997-01-01T05:00:00Z",
        "{history}"
    );
}

/// `--log-format json` writes one JSON object per log line (with its level and target), for a
/// log collector; the default is text.
#[test]
fn logs_can_be_json_lines() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(eventfold_postgres::testing::fresh_db());
    let run = |format: &str| {
        Command::new(env!("CARGO_BIN_EXE_eventfold"))
            .args(["--log-format", format, "projections", "status", "--json"])
            .env("EVENTFOLD_STORE", &db.url)
            .env("RUST_LOG", "debug")
            .output()
            .expect("run eventfold")
    };
    let json = run("json");
    assert!(json.status.success());
    let stderr = String::from_utf8_lossy(&json.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "no log lines at debug");
    for line in &lines {
        let entry: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            entry["level"].is_string()
                && entry["target"].is_string()
                && entry["timestamp"].is_string(),
            "{line}"
        );
    }
    let text = run("text");
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert!(stderr.lines().any(|l| !l.starts_with('{')), "{stderr}");
    let refused = run("yaml");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--log-format"));
}
