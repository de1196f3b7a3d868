//! `GET /trending`: orders placed out of order and after the grace period land in the right
//! event-time windows; a late record corrects a final window with a durable notice instead of
//! being dropped; every window's figures equal a brute-force count over the records.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use eventfold_http::testing::TestApp;
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// (seconds after the first minute, lines of (sku, units, amount)), in arrival order.
type Record = (i64, Vec<(&'static str, u64, &'static str)>);

fn records() -> Vec<Record> {
    vec![
        (0, vec![("a", 2, "20.00")]),
        (30, vec![("b", 1, "5.00")]),
        (70, vec![("a", 1, "10.00")]),
        // The store's newest event time: the watermark is 140 s (grace 60 s), so the minutes
        // [0, 60) and [60, 120) are final.
        (200, vec![("c", 5, "50.00")]),
        // Out of order, within the grace period: counts as usual.
        (150, vec![("a", 1, "10.00")]),
        // After the grace period: corrections of the final minutes, never dropped.
        (10, vec![("b", 3, "15.00")]),
        (65, vec![("c", 1, "10.00")]),
        (190, vec![("a", 1, "10.00"), ("b", 2, "10.00")]),
    ]
}

eventfold_http::on_both_stores!(
    []
    late_records_correct_final_windows_and_every_window_equals_a_recount,
    on_postgres_late_records_correct_final_windows_and_every_window_equals_a_recount,
    scenario
);

async fn scenario(app: TestApp) {
    // A minute two hours back: every event time is in the past.
    let now = Utc::now() - TimeDelta::hours(2);
    let t0 = now
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap();
    let at = |s: i64| t0 + TimeDelta::seconds(s);
    let mut causes = Vec::new();
    for (i, (offset, lines)) in records().iter().enumerate() {
        let lines: Vec<Value> = lines
            .iter()
            .map(|(sku, q, amount)| json!({"sku": sku, "quantity": q, "amount": amount}))
            .collect();
        let r = app
            .post(
                "/orders",
                json!({"order_id": format!("t-{i}"), "customer_id": "c", "store_id": "hot",
                       "currency": "USD", "lines": lines, "occurred_at": at(*offset).to_rfc3339()}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        // Windows see records in log order: fold after each, as the worker does when they
        // arrive one by one.
        let noticed = app.fold_windows().await;
        causes.push((i, noticed));
    }
    let late: Vec<usize> = causes
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(
        late,
        vec![5, 6],
        "one correction per record after the grace period"
    );
    assert_eq!(app.fold_windows().await, 0, "a second pass notices nothing");

    // The notice of the first late record: a durable event naming the window and the lines.
    let created = app
        .backend
        .events
        .read_stream("order-t-5", 1, 1)
        .await
        .unwrap();
    let notice = app
        .backend
        .events
        .read_stream(&format!("windowcorrection-{}", created[0].event_id), 1, 10)
        .await
        .unwrap();
    assert_eq!(notice.len(), 1);
    assert_eq!(notice[0].event_type, "WindowCorrectionNoticed");
    let payload: Value = serde_json::from_str(&notice[0].payload).unwrap();
    let n = &payload;
    assert_eq!(n["reason"], "late-after-grace");
    assert_eq!(n["store"], "hot");
    assert_eq!(
        n["window_start"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        t0
    );
    assert_eq!(n["lines"][0]["sku"], "b");
    assert_eq!(n["lines"][0]["units"], 3);
    assert_eq!(n["behind_watermark_secs"], 130);

    // Hopping windows of 2 minutes every minute, the five most recent.
    let r = app
        .get("/trending?store=hot&size=2m&advance=1m&windows=5&top=10")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = &r.body;
    assert_eq!(
        body["newest_event_time"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        at(200)
    );
    assert_eq!(
        body["watermark"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        at(140)
    );
    let windows = body["windows"].as_array().unwrap();
    let starts: Vec<i64> = windows
        .iter()
        .map(|w| {
            (w["start"]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .unwrap()
                - t0)
                .num_seconds()
        })
        .collect();
    assert_eq!(starts, vec![180, 120, 60, 0, -60], "newest first");
    for (w, start) in windows.iter().zip(&starts) {
        // Brute force: every record whose event time lies in [start, start + 120).
        let mut want: BTreeMap<&str, (u64, Decimal)> = BTreeMap::new();
        for (offset, lines) in records() {
            if (*start..start + 120).contains(&offset) {
                for (sku, units, amount) in lines {
                    let e = want.entry(sku).or_default();
                    e.0 += units;
                    e.1 += amount.parse::<Decimal>().unwrap();
                }
            }
        }
        let mut want: Vec<(String, u64, Decimal)> = want
            .into_iter()
            .map(|(s, (u, r))| (s.to_owned(), u, r))
            .collect();
        want.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
        let got: Vec<(String, u64, Decimal)> = w["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["sku"].as_str().unwrap().to_owned(),
                    s["units"].as_u64().unwrap(),
                    s["revenue"].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, want, "window at {start} s");
        // Final once the watermark (140 s) has passed the window's end.
        let want_state = if start + 120 <= 140 { "final" } else { "open" };
        assert_eq!(w["state"], want_state, "window at {start} s");
    }
    let corrections: Vec<u64> = windows
        .iter()
        .map(|w| w["late_corrections"].as_u64().unwrap())
        .collect();
    assert_eq!(corrections, vec![0, 0, 1, 2, 1]);

    // Tumbling windows by default; top limits the SKUs.
    let r = app.get("/trending?store=hot&size=1m&top=1").await;
    let first = &r.body["windows"][0];
    assert_eq!(
        first["end"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        at(240)
    );
    assert_eq!(first["top"].as_array().unwrap().len(), 1);
    assert_eq!(first["top"][0]["sku"], "c");

    // A store with no orders has no windows; a bad window is named.
    let empty = app.get("/trending?store=quiet").await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.body["windows"], json!([]));
    let bad = app.get("/trending?store=hot&size=5m&advance=2m").await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(bad.body["code"], "invalid_window");
    let bad = app.get("/trending?store=hot&size=5s").await;
    assert_eq!(bad.status, 422, "{}", bad.body);
}
