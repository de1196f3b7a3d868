//! Late data on the real CDNOW file: half of it is imported as history, the other half uploaded
//! afterwards by the store (`POST /stores/cdnow/uploads`), long after every day's cutoff. The
//! daily view equals the raw file day by day, the real-time view shows the upload where it
//! arrived, the corrections view holds the uploaded half day by day, and a second upload appends
//! nothing. Every expected figure is computed from the raw file with no eventfold code.

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use eventfold_app::import::{import_cdnow, ImportOptions};
use eventfold_http::testing::{assert_error, cdnow_path, TestApp};
use rust_decimal::Decimal;
use serde_json::Value;

/// One raw row: (customer, yyyymmdd, cds, dollars as written).
type Row<'a> = (&'a str, &'a str, &'a str, &'a str);

fn raw_rows(text: &str) -> Vec<Row<'_>> {
    text.lines()
        .skip(1)
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [c, d, n, v] => Some((c, d, n, v)),
                _ => None,
            },
        )
        .collect()
}

fn iso(d: &str) -> String {
    format!("{}-{}-{}", &d[0..4], &d[4..6], &d[6..8])
}

/// date -> (total, orders) of `rows`.
fn per_day(rows: &[Row<'_>]) -> BTreeMap<String, (Decimal, u64)> {
    let mut sums = BTreeMap::new();
    for (_, d, _, v) in rows {
        let e = sums.entry(iso(d)).or_insert((Decimal::ZERO, 0));
        e.0 += v.parse::<Decimal>().unwrap();
        e.1 += 1;
    }
    sums
}

/// The split: customers with an odd number are the history, the others arrive late.
fn is_history(row: &Row<'_>) -> bool {
    row.0.parse::<u64>().unwrap() % 2 == 1
}

/// The late half as an upload (CSV), with order ids `{customer}-{date}-{n}`.
fn upload_csv(rows: &[Row<'_>]) -> String {
    let mut seen: HashMap<(&str, &str), u32> = HashMap::new();
    let mut csv = String::from("order_id,customer_id,occurred_at,sku,quantity,amount,currency\n");
    for (c, d, n, v) in rows {
        let rank = seen.entry((c, d)).or_insert(0);
        *rank += 1;
        csv.push_str(&format!(
            "up-{c}-{d}-{rank},cdnow-{c},{}T00:00:00Z,cd,{n},{v},USD\n",
            iso(d)
        ));
    }
    csv
}

async fn upload(app: &TestApp, content_type: &str, body: String) -> eventfold_http::testing::Reply {
    app.raw(
        Request::builder()
            .method(Method::POST)
            .uri("/stores/cdnow/uploads")
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap(),
    )
    .await
}

/// The real-time view as hour -> (total, orders).
async fn realtime(app: &TestApp) -> BTreeMap<String, (Decimal, u64)> {
    let reply = app.get("/sales/realtime?store=cdnow").await;
    reply
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["hour"].as_str().unwrap().to_owned(),
                (
                    b["total"].as_str().unwrap().parse().unwrap(),
                    b["orders"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

eventfold_http::on_both_stores!(
    []
    a_late_upload_lands_on_its_days_with_a_notice_for_every_sale,
    on_postgres_a_late_upload_lands_on_its_days_with_a_notice_for_every_sale,
    late_upload_of_half_the_file
);

async fn late_upload_of_half_the_file(app: TestApp) {
    let bytes = std::fs::read(cdnow_path()).unwrap();
    let text = std::str::from_utf8(&bytes).unwrap();
    let rows = raw_rows(text);
    let (history, late): (Vec<Row<'_>>, Vec<Row<'_>>) = rows.iter().partition(|r| is_history(r));
    assert!(history.len() > 30_000 && late.len() > 30_000);

    // The history half, imported as backfill: no notices.
    let mut history_file = String::from(text.lines().next().unwrap());
    history_file.push('\n');
    for (c, d, n, v) in &history {
        history_file.push_str(&format!("{c} {d} {n} {v}\n"));
    }
    let runner = app.backend.projection_runner().with_batch_size(5_000);
    let summary = import_cdnow(
        &app.backend,
        &runner,
        history_file.as_bytes(),
        &ImportOptions {
            backfill: true,
            ..ImportOptions::default()
        },
        &|_, _, _| {},
    )
    .await
    .unwrap();
    assert_eq!(summary.orders_appended, history.len());
    assert_eq!(summary.corrections_noticed, 0);
    app.project().await;
    let days = app.get("/sales/daily?store=cdnow").await.body;
    assert!(days
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["adjusted"] == false && d["late_orders"] == 0 && d["late_total"] == "0.00"));
    let before_upload = realtime(&app).await;

    // A bad line changes nothing and is named.
    let mut broken = upload_csv(&late[..3]);
    broken.push_str("up-x,cdnow-x,1997-02-30T00:00:00Z,cd,1,1.00,USD\n");
    let head = app.head().await;
    let reply = upload(&app, "text/csv", broken).await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_upload",
        "line 5: occurred_at",
    );
    assert_eq!(app.head().await, head);

    // The late half, uploaded by the store.
    let body = upload_csv(&late);
    let started = chrono::Utc::now();
    let reply = upload(&app, "text/csv; charset=utf-8", body.clone()).await;
    let ended = chrono::Utc::now();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["lines"].as_u64(), Some(late.len() as u64));
    assert_eq!(
        reply.body["orders_appended"].as_u64(),
        Some(late.len() as u64)
    );
    assert_eq!(
        reply.body["events_appended"].as_u64(),
        Some(late.len() as u64)
    );
    assert_eq!(reply.body["conflicts"], Value::Array(vec![]));
    assert_eq!(app.notice_corrections().await, late.len() as u64);
    app.project().await;

    // Daily (event time): the raw file, day by day, to the cent; the late half counted as late.
    let all = per_day(&rows);
    let late_days = per_day(&late);
    let days = app
        .get("/sales/daily?store=cdnow&from=1997-01-01&to=1998-06-30")
        .await
        .body;
    let days = days.as_array().unwrap();
    assert_eq!(days.len(), 546);
    assert_eq!(days.len(), all.len());
    for (day, (date, (total, orders))) in days.iter().zip(&all) {
        assert_eq!(day["date"].as_str(), Some(date.as_str()));
        assert_eq!(
            day["total"].as_str().unwrap().parse::<Decimal>().unwrap(),
            *total,
            "{date}"
        );
        assert_eq!(day["orders"].as_u64(), Some(*orders), "{date}");
        let (late_total, late_orders) = late_days.get(date).copied().unwrap_or_default();
        assert_eq!(
            day["late_total"]
                .as_str()
                .unwrap()
                .parse::<Decimal>()
                .unwrap(),
            late_total,
            "late total on {date}"
        );
        assert_eq!(day["late_orders"].as_u64(), Some(late_orders), "{date}");
        assert_eq!(day["adjusted"], late_orders > 0, "{date}");
        if late_orders > 0 {
            let at: chrono::DateTime<chrono::Utc> =
                day["last_adjusted_at"].as_str().unwrap().parse().unwrap();
            assert!(
                at >= started - chrono::Duration::seconds(1) && at <= ended,
                "{date}: {at}"
            );
        }
    }

    // Real time (ingest time): the whole upload in the hour(s) it arrived, nothing moved.
    let after_upload = realtime(&app).await;
    let (mut added_total, mut added_orders) = (Decimal::ZERO, 0);
    for (hour, (total, orders)) in &after_upload {
        let (t0, o0) = before_upload.get(hour).copied().unwrap_or_default();
        if (*total, *orders) != (t0, o0) {
            let start: chrono::DateTime<chrono::Utc> = hour.parse().unwrap();
            assert!(
                start <= ended && start + chrono::Duration::hours(1) > started,
                "hour {hour} changed but the upload ran from {started} to {ended}"
            );
        }
        added_total += total - t0;
        added_orders += orders - o0;
    }
    let late_sum: Decimal = late_days.values().map(|(t, _)| *t).sum();
    assert_eq!((added_total, added_orders), (late_sum, late.len() as u64));

    // Corrections: one notice per uploaded sale, day by day equal to the uploaded half.
    let notices = app
        .get("/sales/corrections?store=cdnow&from=1997-01-01&to=1998-06-30")
        .await
        .body;
    let notices = notices.as_array().unwrap();
    assert_eq!(notices.len(), late.len());
    let mut by_day: BTreeMap<String, (Decimal, u64)> = BTreeMap::new();
    let mut causes = HashSet::new();
    for n in notices {
        let date = n["date"].as_str().unwrap().to_owned();
        let delta: Decimal = n["delta"].as_str().unwrap().parse().unwrap();
        let before: Decimal = n["before"].as_str().unwrap().parse().unwrap();
        let after: Decimal = n["after"].as_str().unwrap().parse().unwrap();
        assert_eq!(before + delta, after, "{n}");
        assert_eq!(n["reason"], "late-arrival");
        assert_eq!(n["store"], "cdnow");
        assert_eq!(n["orders_delta"], 1);
        assert!(n["lateness_seconds"].as_i64().unwrap() > 0, "{n}");
        assert!(causes.insert(n["cause_event_id"].as_str().unwrap().to_owned()));
        let e = by_day.entry(date).or_default();
        e.0 += delta;
        e.1 += 1;
    }
    assert_eq!(by_day, late_days);
    // The last notice of a day ends on the day's total.
    let one_day = app
        .get("/sales/corrections?store=cdnow&from=1997-03-01&to=1997-03-01")
        .await
        .body;
    let max_after = one_day
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["after"].as_str().unwrap().parse::<Decimal>().unwrap())
        .max()
        .unwrap();
    assert_eq!(max_after, all["1997-03-01"].0);

    // The same upload again: nothing appended, no new notice.
    let head = app.head().await;
    let reply = upload(&app, "text/csv", body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        (
            reply.body["orders_appended"].as_u64(),
            reply.body["orders_already_present"].as_u64()
        ),
        (Some(0), Some(late.len() as u64))
    );
    assert_eq!(app.notice_corrections().await, 0);
    assert_eq!(app.head().await, head);
}

#[tokio::test]
async fn an_upload_speaks_ndjson_and_refuses_other_types() {
    let app = TestApp::new().await;
    let line = |id: &str, at: &str| {
        format!(
            "{{\"order_id\":\"{id}\",\"customer_id\":\"c1\",\"occurred_at\":\"{at}\",\"sku\":\"cd\",\"quantity\":1,\"amount\":\"5.00\",\"currency\":\"EUR\"}}\n"
        )
    };
    let now = chrono::Utc::now().to_rfc3339();
    let body = format!("{}{}", line("o1", "2020-05-01T09:00:00Z"), line("o2", &now));
    let reply = upload(&app, "application/x-ndjson", body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["orders_appended"], 2);
    // Only the sale of a reported day is late.
    assert_eq!(app.notice_corrections().await, 1);
    app.project().await;
    let notices = app.get("/sales/corrections?store=cdnow").await.body;
    assert_eq!(notices.as_array().unwrap().len(), 1, "{notices}");
    assert_eq!(notices[0]["date"], "2020-05-01");
    assert_eq!(notices[0]["currency"], "EUR");
    assert_eq!(notices[0]["before"], "0.00");
    assert_eq!(notices[0]["after"], "5.00");

    let reply = upload(&app, "application/json", line("o3", &now)).await;
    assert_error(
        &reply,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "text/csv",
    );
    let reply = upload(&app, "text/csv", "order_id\n".into()).await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_upload",
        "no sales",
    );
}

/// Through a running server (the notifier is one of its workers): a sale of two days ago sent
/// now is a late arrival, its refund (dated that day too) a late refund that takes the day back
/// to zero; a sale of today is on time and raises nothing.
#[tokio::test]
async fn a_running_server_notices_a_late_sale_and_its_late_refund() {
    let app = TestApp::new().await;
    let served = app.serve(eventfold_app::runtime::Config::default()).await;
    let client = reqwest::Client::new();
    // A dashboard follows the store's corrections live before anything happens.
    let mut live = client
        .get(format!(
            "{}/sales/corrections/stream?store=s-9",
            served.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    assert!(live.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let day = chrono::Utc::now().date_naive() - chrono::Days::new(2);
    let at = format!("{day}T12:00:00Z");
    let post = |path: String, body: Value| {
        let client = client.clone();
        let url = format!("{}{path}", served.base);
        async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            assert!(status.is_success(), "{path}: {status} {body}");
        }
    };
    for (id, when) in [("late-1", Some(at.as_str())), ("now-1", None)] {
        let mut order = serde_json::json!({"order_id": id, "customer_id": "c-1", "store_id": "s-9",
            "currency": "USD", "lines": [{"sku": "cd", "quantity": 1, "amount": "12.50"}]});
        let mut pay = serde_json::json!({"amount": "12.50", "currency": "USD"});
        if let Some(t) = when {
            order["occurred_at"] = t.into();
            pay["occurred_at"] = t.into();
        }
        post("/orders".into(), order).await;
        post(format!("/orders/{id}/pay"), pay).await;
    }
    post(
        "/orders/late-1/refund".into(),
        serde_json::json!({"reason": "returned", "occurred_at": at}),
    )
    .await;
    let url = format!("{}/sales/corrections?store=s-9", served.base);
    let mut notices = Value::Null;
    for _ in 0..200 {
        notices = client.get(&url).send().await.unwrap().json().await.unwrap();
        if notices.as_array().is_some_and(|a| a.len() >= 2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let notices = notices.as_array().unwrap();
    let mut seen: Vec<(&str, &str, &str, &str, i64)> = notices
        .iter()
        .map(|n| {
            assert_eq!(n["date"], day.to_string());
            (
                n["reason"].as_str().unwrap(),
                n["delta"].as_str().unwrap(),
                n["before"].as_str().unwrap(),
                n["after"].as_str().unwrap(),
                n["orders_delta"].as_i64().unwrap(),
            )
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        [
            ("late-arrival", "12.50", "0.00", "12.50", 1),
            ("refund", "-12.50", "12.50", "0.00", 0)
        ]
    );
    let daily: Value = client
        .get(format!("{}/sales/daily?store=s-9", served.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let late_day = daily
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["date"] == day.to_string())
        .expect("the late day");
    assert_eq!(
        (
            &late_day["total"],
            &late_day["late_total"],
            &late_day["late_orders"],
            &late_day["refunds"],
            &late_day["adjusted"]
        ),
        (
            &Value::from("0.00"),
            &Value::from("0.00"),
            &Value::from(1),
            &Value::from(1),
            &Value::Bool(true)
        )
    );
    let today = daily
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["date"] != day.to_string())
        .expect("today");
    assert_eq!(
        (&today["adjusted"], &today["total"]),
        (&Value::Bool(false), &Value::from("12.50"))
    );
    // The live stream delivered both notices, in log order, each with its position as id.
    let streamed = read_events(&mut live, 2).await;
    drop(live);
    let reasons: Vec<&str> = streamed
        .iter()
        .map(|(_, n)| n["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["late-arrival", "refund"]);
    assert!(streamed[0].0 < streamed[1].0);
    for (_, n) in &streamed {
        assert!(notices.contains(n), "{n} is one of GET /sales/corrections");
    }
    // Resumed after the first: only the second; from the beginning: both.
    let mut resumed = client
        .get(format!(
            "{}/sales/corrections/stream?store=s-9&follow=false",
            served.base
        ))
        .header("last-event-id", streamed[0].0.to_string())
        .send()
        .await
        .unwrap();
    let again = read_events(&mut resumed, usize::MAX).await;
    assert_eq!(again, streamed[1..]);
    let mut all = client
        .get(format!(
            "{}/sales/corrections/stream?store=s-9&follow=false&after=0",
            served.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(read_events(&mut all, usize::MAX).await, streamed);
    let mut other = client
        .get(format!(
            "{}/sales/corrections/stream?store=s-8&follow=false&after=0",
            served.base
        ))
        .send()
        .await
        .unwrap();
    assert!(read_events(&mut other, usize::MAX).await.is_empty());

    // An order placed now for two days ago is after the windows' grace period: it corrects its
    // final window (with a durable notice) and is counted.
    let late_order = serde_json::json!({"order_id": "late-2", "customer_id": "c-1",
        "store_id": "s-9", "currency": "USD", "occurred_at": at,
        "lines": [{"sku": "cd", "quantity": 1, "amount": "12.50"}]});
    post("/orders".into(), late_order).await;
    let metrics_url = format!("{}/metrics", served.base);
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = client
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("eventfold_window_late_corrections_total 1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(
        metrics.contains("eventfold_window_late_corrections_total 1"),
        "{metrics}"
    );
    let metrics = client
        .get(format!("{}/metrics", served.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["late-arrival", "refund"] {
        let line = format!("eventfold_sales_correction_notices_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    served.stop().await;
}

/// Reads server-sent events from `response` until `n` `correction` events came or the stream
/// ended: (id, data) of each.
async fn read_events(response: &mut reqwest::Response, n: usize) -> Vec<(u64, Value)> {
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < n {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), response.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap();
        let Some(chunk) = chunk else { break };
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            let mut kind = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<u64>().unwrap());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = Some(v.trim().to_owned());
                }
            }
            if let (Some(id), Some(data), Some("correction")) = (id, data, kind.as_deref()) {
                events.push((id, data));
            }
        }
    }
    events
}
