//! Period close on real CDNOW rows: part of the file is imported as history, finance switches
//! period control on from January 1997 and closes two months, the clock closes the rest (each
//! sealed); then the store uploads late rows into closed months and a few of today. Every late
//! row of a closed month is an open exception and no closed month's figures move; today's rows
//! are applied. Finance approves some exceptions (booked today, noticed `exception-approved`)
//! and rejects the others; `verify --period` agrees with the seals. Expected figures come from
//! the raw file with no eventfold code.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chrono::Utc;
use eventfold_app::import::{import_cdnow, ImportOptions};
use eventfold_app::periods::{list_exceptions, verify_period, PeriodDesk};
use eventfold_app::service::Service;
use eventfold_domain::identity::Role;
use eventfold_domain::periods::{ExceptionState, PeriodState};
use eventfold_http::testing::{assert_error, cdnow_path, TestApp};
use rust_decimal::Decimal;
use serde_json::json;

/// (customer, yyyymmdd, cds, dollars).
type Row = (String, String, String, String);

fn rows() -> (String, Vec<Row>) {
    let text = std::fs::read_to_string(cdnow_path()).unwrap();
    let header = text.lines().next().unwrap().to_owned();
    let rows = text
        .lines()
        .skip(1)
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [c, d, n, v] => Some((c.into(), d.into(), n.into(), v.into())),
            _ => None,
        })
        .collect();
    (header, rows)
}

fn month(d: &str) -> String {
    format!("{}-{}", &d[0..4], &d[4..6])
}

/// month -> (total, orders) of `rows`.
fn per_month(rows: &[Row]) -> BTreeMap<String, (Decimal, u64)> {
    let mut sums = BTreeMap::new();
    for (_, d, _, v) in rows {
        let e = sums.entry(month(d)).or_insert((Decimal::ZERO, 0));
        e.0 += v.parse::<Decimal>().unwrap();
        e.1 += 1;
    }
    sums
}

/// The daily view of 1997-98 summed per month.
async fn daily_per_month(app: &TestApp, key: &str) -> BTreeMap<String, (Decimal, u64)> {
    let uri = "/sales/daily?store=cdnow&from=1997-01-01&to=1998-12-31";
    let days = app.send_as(key, Method::GET, uri, &[], None).await.body;
    let mut sums = BTreeMap::new();
    for d in days.as_array().unwrap() {
        let e = sums
            .entry(d["date"].as_str().unwrap()[..7].to_owned())
            .or_insert((Decimal::ZERO, 0));
        e.0 += d["total"].as_str().unwrap().parse::<Decimal>().unwrap();
        e.1 += d["orders"].as_u64().unwrap();
    }
    sums
}

async fn day_total(app: &TestApp, key: &str, day: &str) -> Decimal {
    let uri = format!("/sales/daily?store=cdnow&from={day}&to={day}");
    app.send_as(key, Method::GET, &uri, &[], None).await.body[0]["total"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

eventfold_http::on_both_stores!(
    []
    late_rows_into_closed_months_become_exceptions_and_the_seals_hold,
    on_postgres_late_rows_into_closed_months_become_exceptions_and_the_seals_hold,
    closed_months_scenario
);

async fn closed_months_scenario(app: TestApp) {
    let (header, all) = rows();
    let history: Vec<Row> = all[..6_000].to_vec();
    let late: Vec<Row> = all[6_000..]
        .iter()
        .filter(|r| matches!(month(&r.1).as_str(), "1997-02" | "1997-05"))
        .take(20)
        .cloned()
        .collect();
    assert_eq!(late.len(), 20);
    let mut file = format!("{header}\n");
    for (c, d, n, v) in &history {
        file.push_str(&format!("{c} {d} {n} {v}\n"));
    }
    let runner = app.backend.projection_runner();
    import_cdnow(
        &app.backend,
        &runner,
        file.as_bytes(),
        &ImportOptions {
            backfill: true,
            ..ImportOptions::default()
        },
        &|_, _, _| {},
    )
    .await
    .unwrap();
    app.project().await;
    // From the first key on, every request needs a credential.
    let fin = app.key("default", "user:fin-1", &[Role::Finance]).await;
    let auditor = app.key("default", "user:aud-1", &[Role::Auditor]).await;
    let uploader = app.key("default", "service:pos", &[Role::Service]).await;
    let expected = per_month(&history);
    assert_eq!(daily_per_month(&app, &auditor).await, expected);

    // Finance switches period control on and closes two months over HTTP; the clock closes the
    // rest.
    let as_fin = |method: Method, uri: String, body: Option<serde_json::Value>| {
        let fin = fin.clone();
        let app = &app;
        async move { app.send_as(&fin, method, &uri, &[], body).await }
    };
    let desk = PeriodDesk::new(Service::new(app.backend.events.clone()));
    let store = "cdnow";
    let missing = as_fin(Method::GET, "/stores/cdnow/periods".into(), None).await;
    assert_error(
        &missing,
        StatusCode::NOT_FOUND,
        "no_period_control",
        "cdnow",
    );
    let enabled = as_fin(
        Method::POST,
        "/stores/cdnow/periods".into(),
        Some(json!({"from": "1997-01", "period": "month", "max_delay": "72h"})),
    )
    .await;
    assert_eq!(enabled.status, StatusCode::CREATED, "{}", enabled.body);
    assert_eq!(enabled.body["max_delay_seconds"], 72 * 3600);
    assert_eq!(enabled.body["periods"][0]["period"], "1997-01");
    let again = as_fin(
        Method::POST,
        "/stores/cdnow/periods".into(),
        Some(json!({"from": "1997-01"})),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    let no_reason = as_fin(
        Method::POST,
        "/stores/cdnow/periods/1997-01/close".into(),
        Some(json!({})),
    )
    .await;
    assert_error(
        &no_reason,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_reason",
        "reason",
    );
    for m in ["1997-01", "1997-02"] {
        let closed = as_fin(
            Method::POST,
            format!("/stores/cdnow/periods/{m}/close"),
            Some(json!({"reason": "month-end close"})),
        )
        .await;
        assert_eq!(closed.status, StatusCode::OK, "{}", closed.body);
        let p = closed.body["periods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["period"] == m)
            .unwrap()
            .clone();
        assert_eq!(p["state"], "closed");
        let seal = &p["seal"];
        let (total, orders) = expected[m];
        assert_eq!(
            (
                seal["totals"][0]["total"]
                    .as_str()
                    .unwrap()
                    .parse::<Decimal>()
                    .unwrap(),
                seal["totals"][0]["orders"].as_u64().unwrap()
            ),
            (total, orders),
            "seal of {m}"
        );
    }
    let close_events = app
        .backend
        .events
        .read_stream("periodcontrol-cdnow", 1, 100)
        .await
        .unwrap();
    assert!(
        close_events
            .iter()
            .filter(|e| e.event_type == "PeriodClosed")
            .all(|e| e.metadata.actor.as_str() == "user:fin-1"),
        "the closes are recorded as finance's"
    );
    let reopen = as_fin(
        Method::POST,
        "/stores/cdnow/periods/1997-01/reopen".into(),
        Some(json!({"reason": "oops"})),
    )
    .await;
    assert_eq!(
        reopen.status,
        StatusCode::CONFLICT,
        "a closed period is final: {}",
        reopen.body
    );
    let auditor_close = app
        .send_as(
            &auditor,
            Method::POST,
            "/stores/cdnow/periods/1997-03/close",
            &[],
            Some(json!({"reason": "x"})),
        )
        .await;
    assert_eq!(auditor_close.status, StatusCode::FORBIDDEN);
    app.project().await;
    let ticked = desk
        .tick(app.backend.read_models.as_ref(), Utc::now())
        .await
        .unwrap();
    assert!(
        ticked > 2 * 300,
        "the clock closes and seals every month since 1997: {ticked}"
    );
    let view = app
        .send_as(&auditor, Method::GET, "/stores/cdnow/periods", &[], None)
        .await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.body);
    let may = view.body["periods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["period"] == "1997-05")
        .unwrap()
        .clone();
    assert_eq!(may["state"], PeriodState::Closed.as_str());
    assert_eq!(
        may["seal"]["totals"][0]["total"]
            .as_str()
            .unwrap()
            .parse::<Decimal>()
            .unwrap(),
        expected["1997-05"].0
    );
    assert_eq!(
        desk.tick(app.backend.read_models.as_ref(), Utc::now())
            .await
            .unwrap(),
        0
    );

    // The store uploads the late rows, and two sales of today.
    let now = Utc::now() - chrono::TimeDelta::minutes(1);
    let mut csv = String::from("order_id,customer_id,occurred_at,sku,quantity,amount,currency\n");
    for (i, (c, d, n, v)) in late.iter().enumerate() {
        csv.push_str(&format!(
            "late-{i},cdnow-{c},{}-{}-{}T12:00:00Z,cd,{n},{v},USD\n",
            &d[0..4],
            &d[4..6],
            &d[6..8]
        ));
    }
    csv.push_str(&format!("today-1,c1,{},cd,1,10.00,USD\n", now.to_rfc3339()));
    csv.push_str(&format!("today-2,c2,{},cd,1,5.50,USD\n", now.to_rfc3339()));
    let reply = app
        .raw(
            Request::builder()
                .method(Method::POST)
                .uri("/stores/cdnow/uploads")
                .header("content-type", "text/csv")
                .header("authorization", format!("Bearer {uploader}"))
                .body(Body::from(csv))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    app.notice_corrections().await;
    app.project().await;

    // Every late row is an open exception; no closed month moved.
    let listed = app
        .send_as(
            &auditor,
            Method::GET,
            "/exceptions?store=cdnow&state=open",
            &[],
            None,
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let open = listed.body.as_array().unwrap().clone();
    assert_eq!(open.len(), late.len());
    let amount = |e: &serde_json::Value| e["amount"].as_str().unwrap().parse::<Decimal>().unwrap();
    let mut held: Vec<Decimal> = open.iter().map(amount).collect();
    let mut raw: Vec<Decimal> = late.iter().map(|r| r.3.parse().unwrap()).collect();
    held.sort();
    raw.sort();
    assert_eq!(held, raw);
    assert!(open.iter().all(|e| e["hold"] == "period-closed"
        && e["state"] == "open"
        && (e["period"] == "1997-02" || e["period"] == "1997-05")));
    assert_eq!(daily_per_month(&app, &auditor).await, expected);
    let today = now.date_naive().to_string();
    assert_eq!(
        day_total(&app, &auditor, &today).await,
        Decimal::new(1550, 2)
    );

    // Finance approves five (booked today) and rejects the rest, each with a reason.
    let (approve, reject) = open.split_at(5);
    for e in approve {
        let id = e["id"].as_str().unwrap();
        let r = as_fin(
            Method::POST,
            format!("/exceptions/{id}/approve"),
            Some(json!({"reason": "customer paid in full"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["booked_date"], today);
    }
    for e in reject {
        let id = e["id"].as_str().unwrap();
        let r = as_fin(
            Method::POST,
            format!("/exceptions/{id}/reject"),
            Some(json!({"reason": "duplicate of a booked sale"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let id = approve[0]["id"].as_str().unwrap();
    let twice = as_fin(
        Method::POST,
        format!("/exceptions/{id}/reject"),
        Some(json!({"reason": "x"})),
    )
    .await;
    assert_eq!(
        twice.status,
        StatusCode::CONFLICT,
        "an exception is decided once: {}",
        twice.body
    );
    let unknown = as_fin(
        Method::POST,
        format!("/exceptions/{}/approve", uuid::Uuid::nil()),
        Some(json!({"reason": "x"})),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
    let notices_before = app.notice_corrections().await;
    assert_eq!(
        notices_before, 5,
        "one exception-approved notice per approval"
    );
    app.project().await;
    let approved: Decimal = approve.iter().map(amount).sum();
    assert_eq!(
        day_total(&app, &auditor, &today).await,
        Decimal::new(1550, 2) + approved
    );
    assert_eq!(
        daily_per_month(&app, &auditor).await,
        expected,
        "closed months never move"
    );
    let rm = app.backend.read_models.as_ref();
    assert_eq!(
        list_exceptions(rm, "default", Some(store), Some(ExceptionState::Approved))
            .await
            .unwrap()
            .len(),
        5
    );
    let rejected = as_fin(Method::GET, "/exceptions?state=rejected".into(), None).await;
    assert_eq!(rejected.body.as_array().unwrap().len(), 15);
    assert!(rejected
        .body
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["decided_by"] == "user:fin-1"
            && e["decision_reason"] == "duplicate of a booked sale"));
    let uri = format!("/sales/corrections?store=cdnow&from={today}&to={today}");
    let notices = app
        .send_as(&auditor, Method::GET, &uri, &[], None)
        .await
        .body;
    let booked: Vec<_> = notices
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["reason"] == "exception-approved")
        .collect();
    assert_eq!(booked.len(), 5);

    // The seals hold against a replay of the whole log.
    for m in ["1997-01", "1997-02", "1997-05", "1998-06"] {
        let report = verify_period(app.backend.events.clone(), store, m)
            .await
            .unwrap();
        assert!(report.ok, "{m}: {report:?}");
    }
}
