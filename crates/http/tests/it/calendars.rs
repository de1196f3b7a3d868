//! Business calendars per store: a store in New York dates its sales by New York's days and
//! reports each day at 02:00 New York time; a store with a week-long cutoff takes sales of two
//! days ago as on time; a calendar changed later dates only the orders placed after it.

use chrono::{DateTime, TimeDelta, Utc};
use eventfold_http::testing::{assert_error, TestApp};
use serde_json::{json, Value};

eventfold_http::on_both_stores!(
    []
    each_store_dates_and_reports_its_sales_in_its_own_calendar,
    on_postgres_each_store_dates_and_reports_its_sales_in_its_own_calendar,
    scenario
);

async fn sell(app: &TestApp, store: &str, id: &str, at: &str) {
    let r = app
        .post(
            "/orders",
            json!({"order_id": id, "customer_id": "c", "store_id": store, "currency": "USD",
                   "lines": [{"sku": "cd", "quantity": 1, "amount": "10.00"}], "occurred_at": at}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app
        .post(
            &format!("/orders/{id}/pay"),
            json!({"amount": "10.00", "currency": "USD", "occurred_at": at}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn days(app: &TestApp, store: &str) -> Vec<(String, String)> {
    let body = app.get(&format!("/sales/daily?store={store}")).await.body;
    body.as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["date"].as_str().unwrap().to_owned(),
                d["total"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn notices(app: &TestApp, store: &str) -> Vec<Value> {
    app.get(&format!("/sales/corrections?store={store}"))
        .await
        .body
        .as_array()
        .unwrap()
        .clone()
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

async fn scenario(app: TestApp) {
    let default = app.get("/stores/ny/calendar").await;
    assert_eq!(
        default.body,
        json!({"store": "ny", "zone": "UTC", "cutoff_minutes": 120, "set": false})
    );
    let set = app
        .post(
            "/stores/ny/calendar",
            json!({"zone": "America/New_York", "cutoff": "2h"}),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(set.body["zone"], "America/New_York");
    let slow = app
        .post(
            "/stores/slow/calendar",
            json!({"zone": "UTC", "cutoff": "7d"}),
        )
        .await;
    assert_eq!(slow.status, 200, "{}", slow.body);
    let bad = app
        .post("/stores/ny/calendar", json!({"zone": "Mars/Olympus"}))
        .await;
    assert_error(
        &bad,
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_calendar",
        "Mars/Olympus",
    );
    let bad = app
        .post(
            "/stores/ny/calendar",
            json!({"zone": "UTC", "cutoff": "8d"}),
        )
        .await;
    assert_error(
        &bad,
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_calendar",
        "cutoff",
    );

    // 03:00 UTC on 15 January is the evening of the 14th in New York.
    let t = "2026-01-15T03:00:00Z";
    sell(&app, "ny", "ny-1", t).await;
    sell(&app, "utc", "utc-1", t).await;
    // Two days ago: late for a store reporting at 02:00, on time for one with a week's cutoff.
    let two_days_ago = (Utc::now() - TimeDelta::days(2)).to_rfc3339();
    sell(&app, "slow", "slow-1", &two_days_ago).await;
    sell(&app, "utc", "utc-2", &two_days_ago).await;
    // A store upload records the store's calendar too.
    let csv = format!(
        "order_id,customer_id,occurred_at,sku,quantity,amount,currency\nslow-2,c,{two_days_ago},cd,1,5.00,USD\n"
    );
    let uploaded = app
        .raw(
            axum::http::Request::builder()
                .method(axum::http::Method::POST)
                .uri("/stores/slow/uploads")
                .header("content-type", "text/csv")
                .body(axum::body::Body::from(csv))
                .unwrap(),
        )
        .await;
    assert_eq!(uploaded.status, 200, "{}", uploaded.body);
    app.notice_corrections().await;
    app.project().await;

    assert_eq!(
        days(&app, "ny").await,
        [("2026-01-14".to_owned(), "10.00".to_owned())]
    );
    assert_eq!(
        days(&app, "utc").await[0],
        ("2026-01-15".to_owned(), "10.00".to_owned())
    );
    let ny = notices(&app, "ny").await;
    let utc = notices(&app, "utc").await;
    assert_eq!(ny.len(), 1);
    assert_eq!(ny[0]["date"], "2026-01-14");
    let ny_late = ny[0]["lateness_seconds"].as_i64().unwrap();
    let ny_ingest = at(ny[0]["ingested_at"].as_str().unwrap());
    // Reported at 02:00 New York time (07:00 UTC) on the 15th.
    assert_eq!(
        ny_late,
        (ny_ingest - at("2026-01-15T07:00:00Z")).num_seconds()
    );
    let utc_jan = utc.iter().find(|n| n["date"] == "2026-01-15").unwrap();
    let utc_ingest = at(utc_jan["ingested_at"].as_str().unwrap());
    assert_eq!(
        utc_jan["lateness_seconds"].as_i64().unwrap(),
        (utc_ingest - at("2026-01-16T02:00:00Z")).num_seconds()
    );
    assert_eq!(utc.len(), 2, "the UTC store's sale of two days ago is late");
    assert!(
        notices(&app, "slow").await.is_empty(),
        "within a week's cutoff: on time"
    );
    let slow_day = app.get("/sales/daily?store=slow").await.body;
    assert_eq!(slow_day[0]["orders"], 2);
    assert_eq!(slow_day[0]["late_orders"], 0);
    assert_eq!(slow_day[0]["adjusted"], false);

    // The calendar changes: the order placed before keeps its day, a new one uses the new one.
    let set = app
        .post("/stores/ny/calendar", json!({"zone": "UTC"}))
        .await;
    assert_eq!(set.status, 200);
    sell(&app, "ny", "ny-2", t).await;
    app.notice_corrections().await;
    app.project().await;
    assert_eq!(
        days(&app, "ny").await,
        [
            ("2026-01-14".to_owned(), "10.00".to_owned()),
            ("2026-01-15".to_owned(), "10.00".to_owned())
        ]
    );
    let calendar_events = app
        .backend
        .events
        .read_stream("storecalendar-ny", 1, 10)
        .await
        .unwrap();
    assert_eq!(calendar_events.len(), 2, "each change is an event");
    assert_eq!(calendar_events[0].event_type, "StoreCalendarSet");
}
