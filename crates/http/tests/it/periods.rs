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
use eventfold_app::periods::{list_exceptions, verify_period, PeriodChange, PeriodDesk};
use eventfold_app::service::{CommandContext, Service};
use eventfold_core::Actor;
use eventfold_domain::periods::{ExceptionState, HoldReason, Period, PeriodState};
use eventfold_http::testing::{cdnow_path, TestApp};
use rust_decimal::Decimal;

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
async fn daily_per_month(app: &TestApp) -> BTreeMap<String, (Decimal, u64)> {
    let days = app
        .get("/sales/daily?store=cdnow&from=1997-01-01&to=1998-12-31")
        .await
        .body;
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

async fn day_total(app: &TestApp, day: &str) -> Decimal {
    let uri = format!("/sales/daily?store=cdnow&from={day}&to={day}");
    app.get(&uri).await.body[0]["total"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn finance() -> CommandContext {
    CommandContext::new(Actor::parse("user:fin-1").unwrap())
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
    let expected = per_month(&history);
    assert_eq!(daily_per_month(&app).await, expected);

    // Finance switches period control on and closes two months; the clock closes the rest.
    let desk = PeriodDesk::new(Service::new(app.backend.events.clone()));
    let store = "cdnow";
    desk.enable(
        store,
        Period::parse("1997-01").unwrap(),
        chrono::TimeDelta::hours(72),
        &finance(),
    )
    .await
    .unwrap();
    for m in ["1997-01", "1997-02"] {
        let view = desk
            .change(store, m, PeriodChange::Close, "month-end close", &finance())
            .await
            .unwrap();
        let p = view.periods.iter().find(|p| p.period == m).unwrap();
        assert_eq!(p.state, PeriodState::Closed);
        let seal = p.seal.as_ref().expect("a close is sealed");
        let (total, orders) = expected[m];
        assert_eq!(
            (seal.totals[0].total, seal.totals[0].orders),
            (total, orders),
            "seal of {m}"
        );
    }
    let refused = desk
        .change(store, "1997-01", PeriodChange::Reopen, "oops", &finance())
        .await;
    assert!(refused.is_err(), "a closed period is final");
    app.project().await;
    let ticked = desk
        .tick(app.backend.read_models.as_ref(), Utc::now())
        .await
        .unwrap();
    assert!(
        ticked > 2 * 300,
        "the clock closes and seals every month since 1997: {ticked}"
    );
    let view = desk.view(store, Utc::now()).await.unwrap().unwrap();
    let may = view.periods.iter().find(|p| p.period == "1997-05").unwrap();
    assert_eq!(may.state, PeriodState::Closed);
    assert_eq!(
        may.seal.as_ref().unwrap().totals[0].total,
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
                .body(Body::from(csv))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    app.notice_corrections().await;
    app.project().await;

    // Every late row is an open exception; no closed month moved.
    let open = list_exceptions(
        app.backend.read_models.as_ref(),
        "default",
        Some(store),
        Some(ExceptionState::Open),
    )
    .await
    .unwrap();
    assert_eq!(open.len(), late.len());
    let mut held: Vec<Decimal> = open.iter().map(|e| e.held.amount).collect();
    let mut raw: Vec<Decimal> = late.iter().map(|r| r.3.parse().unwrap()).collect();
    held.sort();
    raw.sort();
    assert_eq!(held, raw);
    assert!(open.iter().all(|e| e.held.hold == HoldReason::PeriodClosed
        && (e.held.period == "1997-02" || e.held.period == "1997-05")));
    assert_eq!(daily_per_month(&app).await, expected);
    let today = now.date_naive().to_string();
    assert_eq!(day_total(&app, &today).await, Decimal::new(1550, 2));

    // Finance approves five (booked today) and rejects the rest, each with a reason.
    let (approve, reject) = open.split_at(5);
    for e in approve {
        desk.decide(&e.id.to_string(), true, "customer paid in full", &finance())
            .await
            .unwrap();
    }
    for e in reject {
        desk.decide(
            &e.id.to_string(),
            false,
            "duplicate of a booked sale",
            &finance(),
        )
        .await
        .unwrap();
    }
    let again = desk
        .decide(&approve[0].id.to_string(), false, "x", &finance())
        .await;
    assert!(again.is_err(), "an exception is decided once");
    let notices_before = app.notice_corrections().await;
    assert_eq!(
        notices_before, 5,
        "one exception-approved notice per approval"
    );
    app.project().await;
    let approved: Decimal = approve.iter().map(|e| e.held.amount).sum();
    assert_eq!(
        day_total(&app, &today).await,
        Decimal::new(1550, 2) + approved
    );
    assert_eq!(
        daily_per_month(&app).await,
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
    assert_eq!(
        list_exceptions(rm, "default", Some(store), Some(ExceptionState::Rejected))
            .await
            .unwrap()
            .len(),
        15
    );
    let notices = app
        .get(&format!(
            "/sales/corrections?store=cdnow&from={today}&to={today}"
        ))
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
