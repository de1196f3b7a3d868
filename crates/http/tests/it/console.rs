//! The routes the web console reads besides the resources': who the caller is and which pages
//! its roles open (`/whoami`), the deployment at a glance (`/operations`), a hash-chain walk on
//! request (`/chain/verify`), a rebuild in the background (`/projections/{name}/rebuild`), an
//! account's audit timeline with the state before and after each change, and the page and
//! assets themselves.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use eventfold_domain::identity::Role;
use serde_json::{json, Value};

use eventfold_http::testing::{assert_error, TestApp};

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect()
}

/// `/whoami` names the caller and offers the pages its roles open: finance of another tenant
/// gets the sales pages and the exceptions, not operations (the deployment's); an operator of
/// the default tenant gets operations and may switch versions and walk the chain.
#[tokio::test]
async fn whoami_offers_the_pages_a_principal_may_open() {
    let app = TestApp::new().await;
    let finance = app.key("shop-2", "admin:fin-1", &[Role::Finance]).await;
    let operator = app.key("default", "admin:ops-1", &[Role::Operator]).await;
    let customer = app.key("default", "user:42", &[Role::Customer]).await;

    let me = app
        .send_as(&finance, Method::GET, "/whoami", &[], None)
        .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(
        (me.body["actor"].as_str(), me.body["tenant"].as_str()),
        (Some("admin:fin-1"), Some("shop-2"))
    );
    assert_eq!(names(&me.body["roles"]), ["finance"]);
    assert_eq!(
        names(&me.body["pages"]),
        ["sales", "explain", "orders", "exceptions"]
    );
    assert_eq!(
        me.body["may"],
        json!({"decide_exceptions": true, "switch_versions": false, "verify_chain": false})
    );
    assert!(me.body["credential"].as_str().unwrap().starts_with("key:"));

    let me = app
        .send_as(&operator, Method::GET, "/whoami", &[], None)
        .await;
    assert_eq!(
        names(&me.body["pages"]),
        ["sales", "explain", "exceptions", "operations"]
    );
    assert_eq!(
        me.body["may"],
        json!({"decide_exceptions": false, "switch_versions": true, "verify_chain": true})
    );

    let me = app
        .send_as(&customer, Method::GET, "/whoami", &[], None)
        .await;
    assert_eq!(names(&me.body["pages"]), ["orders"]);

    let nobody = app.get("/whoami").await;
    assert_eq!(nobody.status, StatusCode::UNAUTHORIZED);
    // Finance of another tenant cannot open the deployment's operations.
    let refused = app
        .send_as(&finance, Method::GET, "/operations", &[], None)
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

/// `/operations` shows readiness, the log's head, sagas and (after a walk on request) the
/// chain; without a broker there is no relay and no consumer lag.
#[tokio::test]
async fn operations_shows_the_deployment_and_walks_the_chain_on_request() {
    let app = TestApp::new().await;
    for i in 0..3 {
        let r = app
            .post(
                "/accounts",
                json!({"account_id": format!("a-{i}"), "owner": "o", "currency": "USD"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    app.project().await;
    let ops = app.get("/operations").await;
    assert_eq!(ops.status, StatusCode::OK, "{}", ops.body);
    let ops = ops.body;
    assert_eq!(ops["readiness"]["status"], "ready");
    assert_eq!(ops["head_position"], 3);
    assert_eq!(ops["relay"], Value::Null);
    assert_eq!(ops["consumer_lag"], json!([]));
    assert_eq!(
        ops["sagas"],
        json!({"in_flight": 0, "stuck": 0, "stuck_orders": []})
    );
    assert_eq!(ops["chain"], Value::Null, "not walked yet");

    let walked = app.post("/chain/verify", json!({})).await;
    assert_eq!(walked.status, StatusCode::OK, "{}", walked.body);
    assert_eq!(
        (
            walked.body["ok"].as_bool(),
            walked.body["events_checked"].as_u64()
        ),
        (Some(true), Some(3))
    );
    assert_eq!(walked.body["head_position"], 3);
    let ops = app.get("/operations").await.body;
    assert_eq!(ops["chain"]["ok"], true);
    assert_eq!(ops["chain"]["finished_at"], walked.body["finished_at"]);
    assert_error(
        &app.post("/chain/verify", json!({"deep": true})).await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        "deep",
    );
}

/// An account's timeline gives the state before and after each change.
#[tokio::test]
async fn an_accounts_history_has_the_state_before_and_after_each_change() {
    let app = TestApp::new().await;
    let r = app
        .post(
            "/accounts",
            json!({"account_id": "acc-1", "owner": "o", "currency": "USD"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    for amount in ["10.00", "2.50"] {
        let r = app
            .post(
                "/accounts/acc-1/deposit",
                json!({"amount": amount, "currency": "USD"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let history = app.get("/accounts/acc-1/history").await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.body);
    let entries = history.body.as_array().unwrap();
    let types: Vec<&str> = entries
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["AccountOpened", "FundsDeposited", "FundsDeposited"]);
    assert_eq!(entries[0]["state_before"], Value::Null);
    assert_eq!(
        entries[1]["state_before"]["balance"],
        entries[0]["state_after"]["balance"]
    );
    assert_eq!(entries[2]["state_before"]["balance"]["amount"], "10.00");
    assert_eq!(entries[2]["state_after"]["balance"]["amount"], "12.50");
    assert_error(
        &app.get("/accounts/none/history").await,
        StatusCode::NOT_FOUND,
        "account_not_found",
        "none",
    );
}

/// A rebuild asked over HTTP runs in the server's background, shows as `rebuilding` until it
/// is done, is recorded with who and why, and leaves the view as it was.
#[tokio::test]
async fn a_rebuild_runs_in_the_background_and_is_recorded() {
    let app = TestApp::new().await;
    let r = app
        .post(
            "/accounts",
            json!({"account_id": "acc-1", "owner": "o", "currency": "USD"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    app.project().await;
    let before = app.get("/balances/acc-1").await.body;
    let started = app
        .send(
            Method::POST,
            "/projections/balance_by_account/rebuild",
            &[("x-actor", "admin:ops-1")],
            Some(json!({"reason": "check the view"})),
        )
        .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    assert_eq!(
        started.body,
        json!({"name": "balance_by_account", "version": 1, "state": "started"})
    );
    let t = Instant::now();
    loop {
        let list = app.get("/projections").await.body;
        let me = list
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "balance_by_account")
            .unwrap()
            .clone();
        if me["rebuilding"] == false {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{me}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.get("/balances/acc-1").await.body, before);
    let record = app
        .app
        .service
        .read_stream("projectionversions-balance_by_account")
        .await
        .unwrap();
    let last = record.last().expect("the rebuild is recorded");
    assert_eq!(last.event_type, "ProjectionRebuilt");
    assert!(last.payload.contains("check the view"), "{}", last.payload);
    assert_error(
        &app.post("/projections/nothing/rebuild", json!({"reason": "r"}))
            .await,
        StatusCode::NOT_FOUND,
        "unknown_projection",
        "nothing",
    );
    assert_error(
        &app.post("/projections/balance_by_account/rebuild", json!({}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_reason",
        "reason",
    );
}

/// The console's page and assets are served without credentials, with a policy that allows
/// this server's scripts only; an unknown asset is a JSON 404.
#[tokio::test]
async fn the_console_and_its_assets_are_served_with_a_content_security_policy() {
    let app = TestApp::new().await;
    app.key("default", "admin:ops-1", &[Role::Operator]).await;
    let page = app.get("/console").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(page
        .body
        .as_str()
        .unwrap()
        .contains("<title>eventfold console</title>"));
    for (file, kind) in [
        ("console.js", "text/javascript"),
        ("console.css", "text/css"),
        ("chart.umd.js", "text/javascript"),
    ] {
        let r = app.get(&format!("/console/assets/{file}")).await;
        assert_eq!(r.status, StatusCode::OK, "{file}");
        assert!(
            r.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{file}"
        );
    }
    assert_error(
        &app.get("/console/assets/secrets.txt").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "console asset",
    );
}
