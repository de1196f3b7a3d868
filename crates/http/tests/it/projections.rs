//! Projections are exactly-once in effect: two runners racing on one store (a server and a CLI
//! rebuild, say) never double-count, and a rebuild from zero gives the same read model.

use axum::http::StatusCode;
use serde_json::json;

use eventfold_http::testing::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_runners_apply_each_event_once() {
    let app = TestApp::new().await;
    for i in 0..60 {
        let id = format!("o-{i}");
        let r = app
            .post("/orders", json!({"order_id": id, "customer_id": "c", "store_id": "web", "currency": "USD", "lines": [{"sku": "cd", "quantity": 1, "amount": "1.25"}]}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        app.post(
            &format!("/orders/{id}/pay"),
            json!({"amount": "1.25", "currency": "USD"}),
        )
        .await;
    }
    // Small batches so the two runners interleave many commits.
    let a = app.backend.projection_runner().with_batch_size(7);
    let b = app.backend.projection_runner().with_batch_size(5);
    let (ra, rb) = tokio::join!(a.catch_up(None, &|_, _| {}), b.catch_up(None, &|_, _| {}));
    assert_eq!((ra.unwrap(), rb.unwrap()), (120, 120));
    let daily = app.get("/sales/daily?store=web").await.body;
    assert_eq!(
        (daily[0]["total"].as_str(), daily[0]["orders"].as_u64()),
        (Some("75.00"), Some(60))
    );
    // Running again changes nothing; rebuilding one projection from zero gives the same answer.
    app.project().await;
    a.rebuild(Some("daily_sales_by_store"), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(app.get("/sales/daily?store=web").await.body, daily);
    let status = a.status().await.unwrap();
    assert!(
        status
            .iter()
            .all(|s| s.checkpoint == 120 && s.lag_events == 0),
        "{status:?}"
    );
    assert!(matches!(
        a.rebuild(Some("nope"), &|_, _| {}).await,
        Err(eventfold_core::RunnerError::UnknownProjection(_))
    ));
}

/// `/metrics` speaks Prometheus text and carries each projection's lag.
#[tokio::test]
async fn metrics_endpoint_reports_projection_lag() {
    let app = TestApp::new().await;
    let r = app
        .post(
            "/accounts",
            serde_json::json!({"account_id": "m-1", "owner": "o", "currency": "USD"}),
        )
        .await;
    assert_eq!(r.status, axum::http::StatusCode::CREATED);
    // Before the runner catches up the balance projection trails the head by one event.
    let before = app.get("/metrics").await;
    assert_eq!(before.status, axum::http::StatusCode::OK);
    assert!(before.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = before.body.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains(
            r#"eventfold_projection_lag_events{projection="balance_by_account",version="1"} 1"#
        ),
        "{text}"
    );
    app.project().await;
    let after = app.get("/metrics").await;
    let text = after.body.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains(
            r#"eventfold_projection_lag_events{projection="balance_by_account",version="1"} 0"#
        ),
        "{text}"
    );
    assert!(
        text.contains("eventfold_projection_lag_p95_seconds"),
        "{text}"
    );
}

/// The value of the sample `name{labels}` in Prometheus text, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// After real traffic, `/metrics` carries requests by route and status with their durations,
/// the appends' durations, the events' age at projection and the lag in seconds, which grows
/// while a projection is behind and is 0 once it has caught up.
#[tokio::test]
async fn metrics_cover_requests_appends_and_projection_age() {
    // Installed before anything counts, as `serve` does.
    eventfold_http::metrics_handle();
    let app = TestApp::new().await;
    for i in 0..5 {
        let r = app
            .post(
                "/accounts",
                serde_json::json!({"account_id": format!("m-{i}"), "owner": "o", "currency": "USD"}),
            )
            .await;
        assert_eq!(r.status, axum::http::StatusCode::CREATED);
    }
    let missing = app.get("/balances/none").await;
    assert_eq!(missing.status, axum::http::StatusCode::NOT_FOUND);
    // Behind for a second: the oldest unapplied event is a second old, however few they are.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let behind = app.runner.status().await.unwrap();
    assert!(
        behind
            .iter()
            .all(|s| s.lag_seconds >= 1.0 && s.lag_seconds < 60.0),
        "{behind:?}"
    );
    app.project().await;
    let text = app.get("/metrics").await.body.as_str().unwrap().to_owned();
    let get = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}\n{text}"));
    assert_eq!(
        get(r#"eventfold_http_requests_total{method="POST",route="/accounts",status="201"}"#),
        5.0
    );
    assert_eq!(
        get(r#"eventfold_http_requests_total{method="GET",route="/balances/{id}",status="404"}"#),
        1.0
    );
    assert_eq!(
        get(r#"eventfold_http_request_duration_seconds_count{method="POST",route="/accounts"}"#),
        5.0
    );
    let bounded = get(
        r#"eventfold_http_request_duration_seconds_bucket{method="POST",route="/accounts",le="10"}"#,
    );
    assert_eq!(bounded, 5.0);
    assert!(get("eventfold_append_duration_seconds_count") >= 5.0);
    assert!(get("eventfold_append_duration_seconds_sum") > 0.0);
    // Each of the five events was at least a second old when its batch committed.
    assert_eq!(get("eventfold_projection_event_age_seconds_count"), 5.0);
    assert_eq!(
        get(r#"eventfold_projection_event_age_seconds_bucket{le="0.5"}"#),
        0.0
    );
    assert_eq!(
        get(r#"eventfold_projection_lag_seconds{projection="balance_by_account",version="1"}"#),
        0.0
    );
}

/// Readiness fails while a projection version queries read has left an event unapplied for
/// longer than the limit, naming the version and how far behind it is, and passes again once
/// the runner has caught up; a server with nothing to do (idle) is ready however long ago the
/// last event was.
#[tokio::test]
async fn readiness_names_a_stale_read_model() {
    let app = TestApp::new().await;
    let health = eventfold_app::health::Health::new(
        app.backend.events.clone(),
        app.backend.read_models.clone(),
        app.runner.clone(),
        app.app.views.clone(),
        None,
        None,
        0.5,
    );
    let idle = health.readiness().await;
    assert!(idle.is_ready(), "{idle:?}");
    let names: Vec<&str> = idle.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["store", "read_models"]);
    let r = app
        .post(
            "/accounts",
            json!({"account_id": "stale", "owner": "o", "currency": "USD"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let stale = health.readiness().await;
    assert_eq!(stale.not_ready, ["read_models"], "{stale:?}");
    assert_eq!(stale.status, "not_ready");
    let detail = &stale.checks[1].detail;
    assert!(
        detail.contains("balance_by_account v1: oldest unapplied event")
            && detail.contains("1 events behind")
            && detail.contains("(limit 0.5 s)"),
        "{detail}"
    );
    app.project().await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let fresh = health.readiness().await;
    assert!(fresh.is_ready(), "{fresh:?}");
    assert_eq!(fresh.head_position, Some(1));
}
