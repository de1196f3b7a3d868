//! Orders over HTTP: the state machine, the audit timeline, the sales views, health and OpenAPI.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use eventfold_http::testing::{assert_error, TestApp};

fn order(id: &str, store: &str, amount: &str) -> Value {
    json!({"order_id": id, "customer_id": "c-1", "store_id": store, "currency": "USD",
           "lines": [{"sku": "cd", "quantity": 2, "amount": amount}]})
}

async fn step(app: &TestApp, id: &str, action: &str, actor: &str, body: Value) -> Value {
    let r = app
        .send(
            Method::POST,
            &format!("/orders/{id}/{action}"),
            &[("x-actor", actor)],
            Some(body),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{action}: {}", r.body);
    r.body
}

eventfold_http::on_both_stores!(
    []
    the_full_lifecycle_and_its_audit_timeline,
    on_postgres_the_full_lifecycle_and_its_audit_timeline,
    lifecycle
);

async fn lifecycle(app: TestApp) {
    let r = app
        .send(
            Method::POST,
            "/orders",
            &[("x-actor", "user:789")],
            Some(order("12345", "web", "20.00")),
        )
        .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (StatusCode::CREATED, Some("PENDING"))
    );
    step(
        &app,
        "12345",
        "pay",
        "user:789",
        json!({"amount": "20", "currency": "USD", "payment_id": "pay-1"}),
    )
    .await;
    step(&app, "12345", "confirm", "admin:support-001", json!({})).await;
    // Read-your-writes: the summary is current even before the projection runs.
    let now = app.get("/orders/12345").await;
    assert_eq!(
        (
            now.status,
            now.body["status"].as_str(),
            now.body["version"].as_u64()
        ),
        (StatusCode::OK, Some("CONFIRMED"), Some(3))
    );
    let cancelled = step(
        &app,
        "12345",
        "cancel",
        "admin:support-001",
        json!({"reason": "customer asked twice"}),
    )
    .await;
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(
        cancelled["refunded"],
        json!({"amount": "20.00", "currency": "USD"})
    );
    let head = app.head().await;
    let ship = app
        .send(
            Method::POST,
            "/orders/12345/ship",
            &[("x-actor", "admin:support-001")],
            None,
        )
        .await;
    assert_error(
        &ship,
        StatusCode::CONFLICT,
        "illegal_transition",
        "cannot ship an order that is CANCELLED",
    );
    assert_eq!(app.head().await, head);

    let history = app.get("/orders/12345/history").await;
    assert_eq!(history.status, StatusCode::OK);
    let entries = history.body.as_array().unwrap();
    let types: Vec<&str> = entries
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "OrderCreated",
            "OrderPaid",
            "OrderConfirmed",
            "OrderCancelled"
        ]
    );
    let cancel = &entries[3];
    assert_eq!(cancel["actor"], "admin:support-001");
    assert_eq!(cancel["reason"], "customer asked twice");
    assert_eq!(cancel["state_before"]["status"], "CONFIRMED");
    assert_eq!(cancel["state_before"]["paid"]["amount"], "20.00");
    assert_eq!(entries[0]["state_before"], Value::Null);
    assert_eq!(entries[1]["actor"], "user:789");

    app.project().await;
    let summary = app.get("/orders/12345").await;
    assert_eq!(
        (
            summary.body["status"].as_str(),
            summary.body["last_actor"].as_str()
        ),
        (Some("CANCELLED"), Some("admin:support-001"))
    );
    for uri in ["/orders/nope", "/orders/nope/history"] {
        assert_error(
            &app.get(uri).await,
            StatusCode::NOT_FOUND,
            "order_not_found",
            "nope",
        );
    }
}

#[tokio::test]
async fn order_commands_refuse_bad_input_without_changing_anything() {
    let app = TestApp::new().await;
    app.post("/orders", order("o-1", "web", "20.00")).await;
    let head = app.head().await;
    let cases = vec![
        (
            "/orders",
            json!({"order_id": "o-2", "customer_id": "c", "store_id": "web", "currency": "USD", "lines": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_order",
            "at least one line",
        ),
        (
            "/orders",
            order("o-1", "web", "1"),
            StatusCode::CONFLICT,
            "order_exists",
            "already exists",
        ),
        (
            "/orders",
            order("o-3", "web", "-1"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
            "negative",
        ),
        (
            "/orders",
            order("o-3", "web", "1.234"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
            "lines[0].amount",
        ),
        (
            "/orders/o-1/pay",
            json!({"amount": "19.99", "currency": "USD"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "payment_mismatch",
            "20.00",
        ),
        (
            "/orders/o-1/pay",
            json!({"amount": "20", "currency": "EUR"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "currency_mismatch",
            "EUR",
        ),
        (
            "/orders/o-1/ship",
            json!({}),
            StatusCode::CONFLICT,
            "illegal_transition",
            "PENDING",
        ),
        (
            "/orders/o-1/cancel",
            json!({}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_order",
            "reason is required",
        ),
        (
            "/orders/missing/pay",
            json!({"amount": "1", "currency": "USD"}),
            StatusCode::NOT_FOUND,
            "order_not_found",
            "does not exist",
        ),
    ];
    for (uri, body, status, code, mentions) in cases {
        assert_error(&app.post(uri, body).await, status, code, mentions);
    }
    assert_eq!(app.head().await, head);
}

eventfold_http::on_both_stores!(
    []
    sales_views_by_event_time_and_by_ingest_time,
    on_postgres_sales_views_by_event_time_and_by_ingest_time,
    sales_views
);

async fn sales_views(app: TestApp) {
    for (id, amount) in [("o-1", "10.10"), ("o-2", "0.00"), ("o-3", "5.00")] {
        app.post("/orders", order(id, "web", amount)).await;
        step(
            &app,
            id,
            "pay",
            "user:1",
            json!({"amount": amount, "currency": "USD"}),
        )
        .await;
    }
    app.post("/orders", order("o-4", "web", "99")).await; // never paid: not a sale
    step(
        &app,
        "o-3",
        "refund",
        "admin:a",
        json!({"reason": "broken"}),
    )
    .await;
    app.post("/orders", order("x-1", "other", "1")).await;
    step(
        &app,
        "x-1",
        "pay",
        "user:1",
        json!({"amount": "1", "currency": "USD"}),
    )
    .await;
    app.project().await;
    let today = chrono::Utc::now().date_naive().to_string();
    let daily = app
        .get(&format!("/sales/daily?store=web&from={today}&to={today}"))
        .await;
    assert_eq!(daily.status, StatusCode::OK);
    assert_eq!(
        daily.body,
        json!([{"date": today, "store": "web", "total": "10.10", "currency": "USD", "orders": 3, "refunds": 1,
            "late_total": "0.00", "late_orders": 0, "adjusted": false, "last_adjusted_at": null}])
    );
    assert_eq!(
        app.get("/sales/daily?store=web&to=1990-01-01").await.body,
        json!([])
    );
    let realtime = app.get("/sales/realtime?store=web").await;
    let buckets = realtime.body.as_array().unwrap();
    assert_eq!(buckets.len(), 1, "{}", realtime.body);
    assert_eq!(
        (buckets[0]["total"].as_str(), buckets[0]["orders"].as_u64()),
        (Some("10.10"), Some(3))
    );
    assert!(buckets[0]["hour"].as_str().unwrap().starts_with(&today));
    for (uri, code, mentions) in [
        ("/sales/daily", "missing_parameter", "store"),
        (
            "/sales/daily?store=web&from=1997-13-01",
            "invalid_query",
            "from",
        ),
        ("/sales/daily?store=web&bogus=1", "invalid_query", "bogus"),
        (
            "/sales/realtime?store=web&from=now",
            "invalid_query",
            "RFC 3339",
        ),
    ] {
        assert_error(&app.get(uri).await, StatusCode::BAD_REQUEST, code, mentions);
    }
    // Well formed but contradictory: 422.
    assert_error(
        &app.get("/sales/daily?store=web&from=1998-01-02&to=1998-01-01")
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_query",
        "after",
    );
    let status = app.get("/projections").await;
    let names: Vec<&str> = status
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "order_summary",
            "balance_by_account",
            "daily_sales_by_store",
            "daily_sales_by_store",
            "real_time_sales",
            "sales_corrections",
            "sales_exceptions",
            "sales_periods",
            "payment_deadlines",
            "sagas_in_flight",
            "api_keys"
        ]
    );
    assert!(status
        .body
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["lag_events"] == 0));
}

#[tokio::test]
async fn health_readiness_and_openapi() {
    let app = TestApp::new().await;
    assert_eq!(app.get("/healthz").await.body, json!({"status": "ok"}));
    let ready = app.get("/ready").await;
    assert_eq!(
        (ready.status, ready.body["store"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    for path in [
        "/accounts",
        "/accounts/{id}",
        "/orders/{id}/history",
        "/sales/daily",
        "/sales/realtime",
        "/orders/{id}/refund",
    ] {
        assert!(
            doc.body["paths"].get(path).is_some(),
            "openapi lacks {path}"
        );
    }
    assert!(doc.body["components"]["schemas"]
        .get("ApiErrorBody")
        .is_some());
}

#[tokio::test]
async fn serves_over_a_real_socket_with_projections_running() {
    let app = TestApp::new().await;
    let served = app.serve(eventfold_app::runtime::Config::default()).await;
    let client = reqwest::Client::new();
    let base = served.base.clone();
    let created = client
        .post(format!("{base}/orders"))
        .json(&order("s-1", "web", "3.50"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let paid = client
        .post(format!("{base}/orders/s-1/pay"))
        .json(&json!({"amount": "3.50", "currency": "USD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    // The server's own runner projects within a moment.
    let mut sales = Value::Null;
    for _ in 0..100 {
        sales = client
            .get(format!("{base}/sales/daily?store=web"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if sales.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(sales[0]["total"], "3.50");
    let lag: Value = client
        .get(format!("{base}/projections"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(lag[0]["last_lag_ms"].as_f64().is_some(), "{lag}");
    served.stop().await;
}

eventfold_http::on_both_stores!(
    []
    an_order_dated_by_its_source_lands_on_that_day,
    on_postgres_an_order_dated_by_its_source_lands_on_that_day,
    occurred_at_dates_the_order
);

/// `occurred_at` is the event time: a sale made on 1997-03-01 and sent now is counted on
/// 1997-03-01 by the daily view and in this hour by the real-time one; a time before 1970, in
/// the future or malformed is refused and appends nothing.
async fn occurred_at_dates_the_order(app: TestApp) {
    let mut body = order("late-1", "shop-7", "12.50");
    body["occurred_at"] = json!("1997-03-01T10:00:00Z");
    let r = app.post("/orders", body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    step(
        &app,
        "late-1",
        "pay",
        "user:c-1",
        json!({"amount": "12.50", "currency": "USD", "occurred_at": "1997-03-01T10:05:00+01:00"}),
    )
    .await;
    let events = app
        .backend
        .events
        .read_stream("order-late-1", 1, 10)
        .await
        .unwrap();
    let times: Vec<String> = events.iter().map(|e| e.event_time.to_rfc3339()).collect();
    assert_eq!(
        times,
        ["1997-03-01T10:00:00+00:00", "1997-03-01T09:05:00+00:00"]
    );
    assert!(events.iter().all(|e| e.ingest_time > e.event_time));
    app.project().await;
    let daily = app.get("/sales/daily?store=shop-7").await;
    assert_eq!(daily.status, StatusCode::OK, "{}", daily.body);
    let days: Vec<(&str, &str)> = daily
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["date"].as_str().unwrap(), d["total"].as_str().unwrap()))
        .collect();
    assert_eq!(days, [("1997-03-01", "12.50")]);
    let hours = app.get("/sales/realtime?store=shop-7").await;
    let this_hour = chrono::Utc::now().format("%Y-%m-%dT%H").to_string();
    let hours = hours.body.as_array().unwrap();
    assert_eq!(hours.len(), 1, "{hours:?}");
    assert!(hours[0]["hour"].as_str().unwrap().starts_with(&this_hour));
    let head = app.head().await;
    let future = (chrono::Utc::now() + chrono::Duration::minutes(10)).to_rfc3339();
    for (at, mentions) in [
        ("1969-12-31T23:59:59Z", "before 1970"),
        (future.as_str(), "future"),
        ("1997-03-01", "RFC 3339"),
    ] {
        let mut body = order("late-2", "shop-7", "1.00");
        body["occurred_at"] = json!(at);
        assert_error(
            &app.post("/orders", body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event_time",
            mentions,
        );
    }
    assert_eq!(app.head().await, head, "refusals append nothing");
}
