//! Accounts over HTTP: commands, bad input, idempotency keys, expected versions, as-of queries.

use axum::http::{Method, StatusCode};
use serde_json::json;

use eventfold_http::testing::{assert_error, TestApp};

async fn open(app: &TestApp, id: &str) {
    let r = app
        .post(
            "/accounts",
            json!({"account_id": id, "owner": "customer-1", "currency": "USD"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn open_deposit_withdraw_and_read_back() {
    let app = TestApp::new().await;
    let r = app
        .post(
            "/accounts",
            json!({"account_id": "a-1", "owner": "customer-1", "currency": "USD"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.body["balance"],
        json!({"amount": "0.00", "currency": "USD"})
    );
    assert_eq!(r.headers["etag"], "\"1\"");
    let r = app
        .post(
            "/accounts/a-1/deposit",
            json!({"amount": "100.5", "currency": "USD"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["balance"]["amount"].as_str()),
        (StatusCode::OK, Some("100.50"))
    );
    let r = app
        .post(
            "/accounts/a-1/withdraw",
            json!({"amount": "0.51", "currency": "USD"}),
        )
        .await;
    assert_eq!(r.body["balance"]["amount"], "99.99");
    assert_eq!(r.body["version"], 3);
    let r = app.get("/accounts/a-1").await;
    assert_eq!(
        (
            r.status,
            r.body["balance"]["amount"].as_str(),
            r.body["version"].as_u64()
        ),
        (StatusCode::OK, Some("99.99"), Some(3))
    );
    app.project().await;
    let r = app.get("/balances/a-1").await;
    assert_eq!(
        (
            r.body["balance"]["amount"].as_str(),
            r.body["version"].as_u64()
        ),
        (Some("99.99"), Some(3))
    );
    let generated = app
        .post(
            "/accounts",
            json!({"owner": "customer-2", "currency": "TWD"}),
        )
        .await;
    assert_eq!(generated.status, StatusCode::CREATED);
    assert_eq!(generated.body["account_id"].as_str().unwrap().len(), 36);
}

eventfold_http::on_both_stores!(
    []
    bad_input_gets_a_clear_4xx_and_changes_nothing,
    on_postgres_bad_input_gets_a_clear_4xx_and_changes_nothing,
    bad_input
);

async fn bad_input(app: TestApp) {
    open(&app, "a-1").await;
    app.post(
        "/accounts/a-1/deposit",
        json!({"amount": "10", "currency": "USD"}),
    )
    .await;
    let head = app.head().await;
    let cases: Vec<(&str, serde_json::Value, StatusCode, &str, &str)> = vec![
        (
            "/accounts/a-1/withdraw",
            json!({"amount": "10.01", "currency": "USD"}),
            StatusCode::CONFLICT,
            "insufficient_funds",
            "balance 10.00 USD",
        ),
        (
            "/accounts/a-1/deposit",
            json!({"amount": "-5", "currency": "USD"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
            "greater than zero",
        ),
        (
            "/accounts/a-1/deposit",
            json!({"amount": "0", "currency": "USD"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
            "greater than zero",
        ),
        (
            "/accounts/a-1/deposit",
            json!({"amount": "1.001", "currency": "USD"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
            "decimal places",
        ),
        (
            "/accounts/a-1/deposit",
            json!({"amount": "ten", "currency": "USD"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
            "not a decimal",
        ),
        (
            "/accounts/a-1/deposit",
            json!({"amount": "1", "currency": "TWD"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "currency_mismatch",
            "TWD",
        ),
        (
            "/accounts/a-1/deposit",
            json!({"amount": "1", "currency": "XYZ"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_currency",
            "XYZ",
        ),
        (
            "/accounts/a-1/deposit",
            json!({"amount": 1.5, "currency": "USD"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "amount",
        ),
        (
            "/accounts/a-1/deposit",
            json!({"currency": "USD"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "missing field `amount`",
        ),
        (
            "/accounts/a-1/deposit",
            json!({"amount": "1", "currency": "USD", "extra": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "extra",
        ),
        (
            "/accounts/missing/deposit",
            json!({"amount": "1", "currency": "USD"}),
            StatusCode::NOT_FOUND,
            "account_not_found",
            "does not exist",
        ),
        (
            "/accounts",
            json!({"account_id": "a-1", "owner": "x", "currency": "USD"}),
            StatusCode::CONFLICT,
            "account_exists",
            "already open",
        ),
        (
            "/accounts",
            json!({"account_id": "a b", "owner": "x", "currency": "USD"}),
            StatusCode::BAD_REQUEST,
            "invalid_id",
            "account_id",
        ),
    ];
    for (uri, body, status, code, mentions) in cases {
        let r = app.post(uri, body.clone()).await;
        assert_error(&r, status, code, mentions);
        assert_eq!(app.head().await, head, "{uri} {body} changed the store");
    }
    let malformed = app
        .raw(
            axum::http::Request::post("/accounts/a-1/deposit")
                .header("content-type", "application/json")
                .body("{\"amount\": ".into())
                .unwrap(),
        )
        .await;
    assert_error(
        &malformed,
        StatusCode::BAD_REQUEST,
        "malformed_json",
        "not valid JSON",
    );
    let text = app
        .raw(
            axum::http::Request::post("/accounts/a-1/deposit")
                .header("content-type", "text/plain")
                .body("amount=1".into())
                .unwrap(),
        )
        .await;
    assert_error(
        &text,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "application/json",
    );
    let huge = json!({"amount": "1", "currency": "USD", "pad": "x".repeat(70_000)});
    assert_error(
        &app.post("/accounts/a-1/deposit", huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "65536",
    );
    let bad_actor = app
        .send(
            Method::POST,
            "/accounts/a-1/deposit",
            &[("x-actor", "robot:1")],
            Some(json!({"amount": "1", "currency": "USD"})),
        )
        .await;
    assert_error(
        &bad_actor,
        StatusCode::BAD_REQUEST,
        "invalid_actor",
        "robot",
    );
    assert_error(
        &app.get("/nowhere").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route",
    );
    assert_error(
        &app.send(Method::DELETE, "/accounts", &[], None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "not allowed",
    );
    assert_eq!(app.head().await, head);
}

#[tokio::test]
async fn a_wrong_expected_version_is_a_conflict_and_the_right_one_applies() {
    let app = TestApp::new().await;
    open(&app, "a-1").await;
    let body = json!({"amount": "5", "currency": "USD"});
    let stale = app
        .send(
            Method::POST,
            "/accounts/a-1/deposit",
            &[("if-match", "\"0\"")],
            Some(body.clone()),
        )
        .await;
    assert_error(
        &stale,
        StatusCode::CONFLICT,
        "version_conflict",
        "version 1, expected 0",
    );
    assert_eq!(app.head().await, 1);
    let ok = app
        .send(
            Method::POST,
            "/accounts/a-1/deposit",
            &[("if-match", "\"1\"")],
            Some(body.clone()),
        )
        .await;
    assert_eq!(
        (ok.status, ok.body["version"].as_u64()),
        (StatusCode::OK, Some(2))
    );
    let garbage = app
        .send(
            Method::POST,
            "/accounts/a-1/deposit",
            &[("if-match", "abc")],
            Some(body),
        )
        .await;
    assert_error(
        &garbage,
        StatusCode::BAD_REQUEST,
        "invalid_header",
        "If-Match",
    );
}

eventfold_http::on_both_stores!(
    []
    a_retried_request_returns_the_first_result_and_appends_nothing,
    on_postgres_a_retried_request_returns_the_first_result_and_appends_nothing,
    retried_requests
);

async fn retried_requests(app: TestApp) {
    open(&app, "a-1").await;
    let body = json!({"amount": "7.25", "currency": "USD"});
    let key = [("idempotency-key", "deposit-1")];
    let first = app
        .send(
            Method::POST,
            "/accounts/a-1/deposit",
            &key,
            Some(body.clone()),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK);
    let head = app.head().await;
    for _ in 0..3 {
        let again = app
            .send(
                Method::POST,
                "/accounts/a-1/deposit",
                &key,
                Some(body.clone()),
            )
            .await;
        assert_eq!((again.status, &again.body), (first.status, &first.body));
        assert_eq!(again.headers["idempotent-replayed"], "true");
    }
    assert_eq!(app.head().await, head);
    assert_eq!(
        app.get("/accounts/a-1").await.body["balance"]["amount"],
        "7.25"
    );
    let other = app
        .send(
            Method::POST,
            "/accounts/a-1/deposit",
            &key,
            Some(json!({"amount": "8", "currency": "USD"})),
        )
        .await;
    assert_error(
        &other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "deposit-1",
    );
    // Concurrent retries of one request: exactly one deposit.
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let router = app.router.clone();
            tokio::spawn(async move {
                let request = axum::http::Request::post("/accounts/a-1/deposit")
                    .header("content-type", "application/json")
                    .header("idempotency-key", "deposit-2")
                    .body(axum::body::Body::from(
                        r#"{"amount": "1.00", "currency": "USD"}"#,
                    ))
                    .unwrap();
                tower::ServiceExt::oneshot(router, request)
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(app.head().await, head + 1);
    assert_eq!(
        app.get("/accounts/a-1").await.body["balance"]["amount"],
        "8.25"
    );
}

#[tokio::test]
async fn state_as_of_a_time_or_version() {
    let app = TestApp::new().await;
    open(&app, "a-1").await;
    let mut times = Vec::new();
    for amount in ["10", "20", "30"] {
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        app.post(
            "/accounts/a-1/deposit",
            json!({"amount": amount, "currency": "USD"}),
        )
        .await;
        times.push(chrono::Utc::now());
    }
    let at = |t: chrono::DateTime<chrono::Utc>| {
        format!(
            "/accounts/a-1?asOf={}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .replace('+', "%2B")
        )
    };
    let r = app.get(&at(times[1])).await;
    assert_eq!(
        (
            r.status,
            r.body["balance"]["amount"].as_str(),
            r.body["version"].as_u64()
        ),
        (StatusCode::OK, Some("30.00"), Some(3))
    );
    assert_eq!(
        app.get(&at(times[0])).await.body["balance"]["amount"],
        "10.00"
    );
    assert_eq!(
        app.get("/accounts/a-1?version=2").await.body["balance"]["amount"],
        "10.00"
    );
    assert_eq!(
        app.get("/accounts/a-1?version=99").await.body["balance"]["amount"],
        "60.00"
    );
    let before = app.get("/accounts/a-1?asOf=1990-01-01T00:00:00Z").await;
    assert_error(
        &before,
        StatusCode::NOT_FOUND,
        "account_not_found",
        "no events in range",
    );
    assert_error(
        &app.get("/accounts/a-1?asOf=yesterday").await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        "RFC 3339",
    );
    assert_error(
        &app.get("/accounts/a-1?asOf=2020-01-01T00:00:00Z&version=1")
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_query",
        "not both",
    );
    assert_error(
        &app.get("/accounts/a-1?version=-1").await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        "version",
    );
}
