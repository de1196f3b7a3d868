//! Read-model versions: `daily_sales_by_store` version 2 (sales on the day their order was
//! placed) beside version 1 (on the day paid), compared, activated, rolled back, retired; a
//! blue/green rebuild that readers never see empty; a switch reaching a running server within
//! a second; shadow reads counting the differences.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use eventfold_app::service::CommandContext;
use eventfold_app::views::Views;
use eventfold_core::{Actor, ProjectionRunner};
use serde_json::{json, Value};

use eventfold_http::testing::{assert_error, TestApp};

const DAILY: &str = "daily_sales_by_store";

/// Places `id` on `placed` and, with `paid`, pays it on that day (10:00 UTC each).
async fn order(app: &TestApp, id: &str, amount: &str, placed: &str, paid: Option<&str>) {
    let r = app
        .post(
            "/orders",
            json!({"order_id": id, "customer_id": "c", "store_id": "web", "currency": "USD",
                   "occurred_at": format!("{placed}T10:00:00Z"),
                   "lines": [{"sku": "cd", "quantity": 1, "amount": amount}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    if let Some(day) = paid {
        let r = app
            .post(
                &format!("/orders/{id}/pay"),
                json!({"amount": amount, "currency": "USD",
                       "occurred_at": format!("{day}T10:00:00Z")}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
}

/// `(date, total, orders)` of `GET /sales/daily?store=web`.
async fn daily(app: &TestApp) -> Vec<(String, String, u64)> {
    rows(&app.get("/sales/daily?store=web").await.body)
}

fn rows(body: &Value) -> Vec<(String, String, u64)> {
    body.as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|d| {
            (
                d["date"].as_str().unwrap().to_owned(),
                d["total"].as_str().unwrap().to_owned(),
                d["orders"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn row(date: &str, total: &str, orders: u64) -> (String, String, u64) {
    (date.into(), total.into(), orders)
}

fn ops() -> CommandContext {
    CommandContext::new(Actor::parse("admin:ops").unwrap())
}

/// Orders placed on 2024-03-01 and paid the same day or the next (a flash sale's stragglers),
/// one on 2024-03-05 paid that day, one never paid.
async fn flash_sale_orders(app: &TestApp) {
    order(app, "a", "100.00", "2024-03-01", Some("2024-03-01")).await;
    order(app, "b", "50.00", "2024-03-01", Some("2024-03-02")).await;
    order(app, "c", "30.00", "2024-03-02", Some("2024-03-02")).await;
    order(app, "d", "7.00", "2024-03-05", Some("2024-03-05")).await;
    order(app, "e", "9.00", "2024-03-05", None).await;
    app.project().await;
}

async fn compare_activate_roll_back_retire(app: &TestApp) {
    flash_sale_orders(app).await;
    let paid_date = vec![
        row("2024-03-01", "100.00", 1),
        row("2024-03-02", "80.00", 2),
        row("2024-03-05", "7.00", 1),
    ];
    let placed_date = vec![
        row("2024-03-01", "150.00", 2),
        row("2024-03-02", "30.00", 1),
        row("2024-03-05", "7.00", 1),
    ];
    assert_eq!(daily(app).await, paid_date);

    // The days that move differ; the unpaid order's placement is bookkeeping, not a difference.
    let views = &app.app.views;
    let c = views
        .compare_and_record(DAILY, 1, 2, 10, &ops())
        .await
        .unwrap();
    assert_eq!(
        (c.equal, c.differ, c.only_in_a, c.only_in_b, c.consistent),
        (1, 2, 0, 0, true),
        "{c:?}"
    );
    assert_eq!(c.examples.len(), 2);
    assert_eq!(c.examples[0].key, "web|2024-03-01|USD");
    assert_eq!(c.examples[0].a.as_ref().unwrap()["total"], "100.00");
    assert_eq!(c.examples[0].b.as_ref().unwrap()["total"], "150.00");

    // Refused while the last comparison differed, unless forced with a reason.
    let activate = |version: u32, force: bool, reason: &str| json!({"version": version, "force": force, "reason": reason});
    let refused = app
        .post(
            "/projections/daily_sales_by_store/activate",
            activate(2, false, "finance wants order dates"),
        )
        .await;
    assert_error(&refused, StatusCode::CONFLICT, "versions_differ", "differ");
    let no_reason = app
        .post(
            "/projections/daily_sales_by_store/activate",
            activate(2, true, " "),
        )
        .await;
    assert_eq!(no_reason.status, StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = app
        .post("/projections/nope/activate", activate(2, true, "x"))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let missing = app
        .post(
            "/projections/daily_sales_by_store/activate",
            activate(9, true, "x"),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let switched = app
        .post(
            "/projections/daily_sales_by_store/activate",
            activate(2, true, "finance wants order dates"),
        )
        .await;
    assert_eq!(switched.status, StatusCode::OK, "{:?}", switched.body);
    assert_eq!(switched.body["previous"], 1);
    assert_eq!(daily(app).await, placed_date);

    // Both versions listed, the active one marked, both current (the control events are in
    // the log too).
    app.project().await;
    let listed = app.get("/projections").await.body;
    let daily_versions: Vec<(u64, bool, u64)> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == DAILY)
        .map(|s| {
            (
                s["version"].as_u64().unwrap(),
                s["active"].as_bool().unwrap(),
                s["lag_events"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(daily_versions, vec![(1, false, 0), (2, true, 0)]);

    // The active version cannot be retired; rolling back is instant and needs no force.
    assert!(views.retire(DAILY, 2, "no", &ops()).await.is_err());
    let back = app
        .post(
            "/projections/daily_sales_by_store/activate",
            activate(1, false, "back to payment dates"),
        )
        .await;
    assert_eq!(back.status, StatusCode::OK, "{:?}", back.body);
    assert_eq!(daily(app).await, paid_date);

    // Retired: its documents are gone, a runner does not bring them back, it is not listed,
    // and it cannot be activated.
    views.retire(DAILY, 2, "not needed", &ops()).await.unwrap();
    order(app, "f", "1.00", "2024-03-06", Some("2024-03-06")).await;
    app.project().await;
    let v2 = app
        .backend
        .read_models
        .range_docs("daily_sales_by_store@v2", "", "\u{10ffff}", 10)
        .await
        .unwrap();
    assert!(v2.is_empty(), "{v2:?}");
    let listed = app.get("/projections").await.body;
    assert!(!listed
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == DAILY && s["version"] == 2));
    let retired = app
        .post(
            "/projections/daily_sales_by_store/activate",
            activate(2, true, "again"),
        )
        .await;
    assert_error(&retired, StatusCode::CONFLICT, "version_retired", "retired");

    // Rebuilt, it is applied again and compares as before (plus the new day, equal).
    views
        .rebuild(
            &app.runner,
            &[(DAILY.into(), 2)],
            "wanted after all",
            &ops(),
            &|_, _| {},
        )
        .await
        .unwrap();
    app.project().await;
    let c = views.compare(DAILY, 1, 2, 0).await.unwrap();
    assert_eq!((c.equal, c.differ, c.only_in_a, c.only_in_b), (2, 2, 0, 0));
}

eventfold_http::on_both_stores!(
    [flavor = "multi_thread", worker_threads = 4]
    sqlite_versions_compare_activate_roll_back_retire,
    postgres_versions_compare_activate_roll_back_retire,
    &compare_activate_roll_back_retire
);

/// A blue/green rebuild under readers: every read sees the full view, before, during and after.
async fn rebuild_beside_is_never_empty(app: &TestApp) {
    for i in 0..150 {
        let day = format!("2024-04-{:02}", 1 + i % 20);
        order(app, &format!("o-{i}"), "2.00", &day, Some(&day)).await;
    }
    app.project().await;
    let before = daily(app).await;
    assert_eq!(before.len(), 20);
    let runner = app.backend.projection_runner().with_batch_size(10);
    let done = std::sync::atomic::AtomicBool::new(false);
    let reader = async {
        let mut reads = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            assert_eq!(daily(app).await, before);
            reads += 1;
        }
        reads
    };
    let rebuild = async {
        let position = app
            .app
            .views
            .rebuild(&runner, &[(DAILY.into(), 1)], "test", &ops(), &|_, _| {})
            .await
            .unwrap();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        position
    };
    let (reads, position) = tokio::join!(reader, rebuild);
    assert!(reads > 0);
    assert_eq!(
        position,
        app.head().await - 1,
        "the rebuild's own event came after"
    );
    assert_eq!(daily(app).await, before);
    // The copy's place is empty and the projection carries on from the copy's checkpoint.
    let copy = app
        .backend
        .read_models
        .range_docs("daily_sales_by_store~rebuild", "", "\u{10ffff}", 10)
        .await
        .unwrap();
    assert!(copy.is_empty());
    order(app, "late", "1.00", "2024-04-01", Some("2024-04-01")).await;
    app.project().await;
    assert_eq!(daily(app).await[0], row("2024-04-01", "17.00", 9));
}

eventfold_http::on_both_stores!(
    [flavor = "multi_thread", worker_threads = 4]
    sqlite_rebuild_beside_is_never_empty,
    postgres_rebuild_beside_is_never_empty,
    &rebuild_beside_is_never_empty
);

/// A switch made elsewhere (the CLI, another server) reaches a running server within a second,
/// without a restart; its shadow reads of the candidate count what differs.
async fn a_running_server_follows_a_switch(app: &TestApp) {
    flash_sale_orders(app).await;
    let served = app
        .serve(eventfold_app::runtime::Config {
            shadow: Some((DAILY.into(), 2, 1.0)),
            ..Default::default()
        })
        .await;
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let request = client.get(format!("{}{path}", served.base));
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()
        }
    };
    let before = rows(&get("/sales/daily?store=web").await);
    assert_eq!(before[0], row("2024-03-01", "100.00", 1));

    // Shadow reads: the candidate answers differently for these days.
    let started = Instant::now();
    let shadow = loop {
        get("/sales/daily?store=web").await;
        let listed = get("/projections").await;
        let v2 = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == DAILY && s["version"] == 2)
            .cloned()
            .unwrap();
        if v2["shadow"]["mismatches"].as_u64().unwrap_or(0) > 0 {
            break v2["shadow"].clone();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{v2}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let latest = &shadow["latest"][0]["difference"];
    assert_eq!(latest["key"], "web|2024-03-01|USD", "{shadow}");
    assert_eq!(latest["a"]["total"], "100.00");
    assert_eq!(latest["b"]["total"], "150.00");

    // Switched by another process (a Views of its own, as the CLI has).
    let elsewhere = Views::new(
        eventfold_app::service::Service::new(app.backend.events.clone()),
        app.backend.read_models.clone(),
        &ProjectionRunner::new(app.backend.events.clone(), app.backend.read_models.clone())
            .register(eventfold_domain::projections::SalesProjection(
                eventfold_domain::projections::SalesClock::EventTimeDaily,
            ))
            .register(eventfold_domain::projections::SalesProjection(
                eventfold_domain::projections::SalesClock::PlacedTimeDaily,
            )),
    );
    elsewhere
        .activate(DAILY, 2, "order dates", true, 1_000, &ops())
        .await
        .unwrap();
    let switched = Instant::now();
    loop {
        let now = rows(&get("/sales/daily?store=web").await);
        if now[0] == row("2024-03-01", "150.00", 2) {
            break;
        }
        assert!(
            switched.elapsed() < Duration::from_secs(1),
            "still serving {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    served.stop().await;
}

eventfold_http::on_both_stores!(
    [flavor = "multi_thread", worker_threads = 4]
    sqlite_a_running_server_follows_a_switch,
    postgres_a_running_server_follows_a_switch,
    &a_running_server_follows_a_switch
);

/// A version built apart is left out of the live passes until it has caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_built_apart_joins_when_caught_up() {
    let app = TestApp::new().await;
    flash_sale_orders(&app).await;
    let runner = app.backend.projection_runner();
    app.backend
        .read_models
        .reset_projection("daily_sales_by_store@v2")
        .await
        .unwrap();
    runner.hold_apart("daily_sales_by_store@v2").unwrap();
    order(&app, "g", "3.00", "2024-03-07", Some("2024-03-07")).await;
    let head = app.head().await;
    assert_eq!(runner.catch_up(None, &|_, _| {}).await.unwrap(), head);
    let checkpoint = |s: &'static str| {
        let read_models = app.backend.read_models.clone();
        async move { read_models.projection_checkpoint(s).await.unwrap() }
    };
    assert_eq!(checkpoint("daily_sales_by_store").await, head);
    assert_eq!(checkpoint("daily_sales_by_store@v2").await, 0);
    assert_eq!(
        runner
            .build_apart("daily_sales_by_store@v2", &|_, _| {})
            .await
            .unwrap(),
        head
    );
    let c = app.app.views.compare(DAILY, 1, 2, 0).await.unwrap();
    assert_eq!((c.differ, c.checkpoint_a, c.checkpoint_b), (2, head, head));
    order(&app, "h", "3.00", "2024-03-08", Some("2024-03-08")).await;
    runner.catch_up(None, &|_, _| {}).await.unwrap();
    assert_eq!(
        checkpoint("daily_sales_by_store@v2").await,
        app.head().await
    );
}

/// `GET /sales/daily/explain` lists the events that make a day's total, by the counting
/// version's own code: version 1 counts an order on the day it was paid, version 2 on the day it
/// was placed, and each explanation sums to the total its version holds. Everything here was
/// recorded long after its day, so every contribution is late.
#[tokio::test]
async fn explain_lists_the_events_behind_a_daily_total_per_version() {
    let app = TestApp::new().await;
    order(&app, "o-1", "10.00", "2026-01-01", Some("2026-01-02")).await;
    order(&app, "o-2", "2.50", "2026-01-02", Some("2026-01-02")).await;
    order(&app, "o-3", "99.00", "2026-01-02", None).await;
    app.project().await;
    let explain = |q: &str| {
        let uri = format!("/sales/daily/explain?store=web&{q}");
        let app = &app;
        async move { app.get(&uri).await }
    };
    let orders_of = |x: &Value| -> Vec<String> {
        x["contributions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["order_id"].as_str().unwrap().to_owned())
            .collect()
    };

    let v1 = explain("date=2026-01-02").await;
    assert_eq!(v1.status, StatusCode::OK, "{}", v1.body);
    let v1 = &v1.body.as_array().unwrap()[0];
    assert_eq!(
        (v1["version"].as_u64(), v1["active_version"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(orders_of(v1), ["o-1", "o-2"]);
    assert_eq!(
        (v1["total"].as_str(), v1["sum"].as_str()),
        (Some("12.50"), Some("12.50"))
    );
    assert_eq!(v1["currency"], "USD");
    for c in v1["contributions"].as_array().unwrap() {
        assert_eq!(c["event_type"], "OrderPaid", "{c}");
        assert_eq!(c["late"], true, "{c}");
        assert_eq!(c["orders"], 1, "{c}");
        assert_eq!(
            c["stream_id"],
            format!("order-{}", c["order_id"].as_str().unwrap())
        );
    }
    assert!(explain("date=2026-01-01")
        .await
        .body
        .as_array()
        .unwrap()
        .is_empty());

    // Version 2 dates o-1 by its placement.
    let v2 = explain("date=2026-01-01&version=2").await.body;
    let v2 = &v2.as_array().unwrap()[0];
    assert_eq!(
        (v2["version"].as_u64(), v2["active_version"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(orders_of(v2), ["o-1"]);
    assert_eq!(
        (v2["total"].as_str(), v2["sum"].as_str()),
        (Some("10.00"), Some("10.00"))
    );
    let v2 = explain("date=2026-01-02&version=2").await.body;
    assert_eq!(orders_of(&v2[0]), ["o-2"]);

    assert_error(
        &explain("date=2026-01-02&version=3").await,
        StatusCode::NOT_FOUND,
        "unknown_version",
        "no version 3",
    );
    assert_error(
        &explain("date=2026-02-30").await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        "date must be a date",
    );
}
