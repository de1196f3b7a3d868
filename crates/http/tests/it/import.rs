//! The CDNOW import against the raw file: daily sales equal the file's own sums to the cent,
//! re-import appends nothing, malformed rows are named and change nothing.

use std::collections::BTreeMap;

use eventfold_app::import::{import_cdnow, ImportOptions};
use rust_decimal::Decimal;
use serde_json::Value;

use eventfold_http::testing::{cdnow_path, TestApp};

/// Sums per day computed straight from the file, with no eventfold code: date -> (total, orders).
fn sums_from_raw_file(bytes: &[u8]) -> BTreeMap<String, (Decimal, u64)> {
    let text = std::str::from_utf8(bytes).unwrap();
    let mut sums = BTreeMap::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let d = fields[1];
        let date = format!("{}-{}-{}", &d[0..4], &d[4..6], &d[6..8]);
        let entry = sums.entry(date).or_insert((Decimal::ZERO, 0));
        entry.0 += fields[3].parse::<Decimal>().unwrap();
        entry.1 += 1;
    }
    sums
}

eventfold_http::on_both_stores!(
    []
    daily_sales_equal_the_raw_file_to_the_cent_and_reimport_appends_nothing,
    on_postgres_daily_sales_equal_the_raw_file_to_the_cent_and_reimport_appends_nothing,
    cdnow_sums_to_the_cent
);

/// Seed 004's layout: events in NATS JetStream, read models in PostgreSQL.
#[tokio::test]
async fn on_nats_daily_sales_equal_the_raw_file_to_the_cent_and_reimport_appends_nothing() {
    cdnow_sums_to_the_cent(TestApp::nats().await).await;
}

async fn cdnow_sums_to_the_cent(app: TestApp) {
    let bytes =
        std::fs::read(cdnow_path()).expect("data/cdnow/CDNOW_master.txt is in the repository");
    let runner = app.backend.projection_runner().with_batch_size(5_000);
    // As the quick start does: the file is history, so nothing is late.
    let as_history = ImportOptions {
        backfill: true,
        ..ImportOptions::default()
    };
    let summary = import_cdnow(&app.backend, &runner, &bytes, &as_history, &|_, _, _| {})
        .await
        .unwrap();
    assert_eq!(summary.corrections_noticed, 0);
    assert_eq!(
        (
            summary.rows,
            summary.orders_appended,
            summary.orders_already_present
        ),
        (69_659, 69_659, 0)
    );
    assert_eq!(summary.events_appended, 69_659, "one event per purchase");

    let expected = sums_from_raw_file(&bytes);
    let reply = app
        .get("/sales/daily?store=cdnow&from=1997-01-01&to=1998-06-30")
        .await;
    let days = reply.body.as_array().expect("an array of days");
    assert_eq!(days.len(), expected.len());
    let mut grand_total = Decimal::ZERO;
    let mut orders = 0;
    for (day, (date, (total, count))) in days.iter().zip(&expected) {
        assert_eq!(day["date"].as_str(), Some(date.as_str()));
        assert_eq!(day["store"], "cdnow");
        assert_eq!(day["currency"], "USD");
        let got: Decimal = day["total"].as_str().unwrap().parse().unwrap();
        assert_eq!(got, *total, "total on {date}");
        assert_eq!(
            day["total"]
                .as_str()
                .unwrap()
                .split('.')
                .nth(1)
                .map(str::len),
            Some(2),
            "cents on {date}"
        );
        assert_eq!(day["orders"].as_u64(), Some(*count), "orders on {date}");
        assert_eq!(
            (&day["adjusted"], &day["late_orders"]),
            (&Value::Bool(false), &Value::from(0)),
            "history is never late ({date})"
        );
        grand_total += got;
        orders += day["orders"].as_u64().unwrap();
    }
    assert_eq!(grand_total.to_string(), "2500315.63");
    assert_eq!(orders, 69_659);
    // Placed and paid at once, every order: the order-date version (2) of the daily view
    // compares equal to the payment-date one, day by day.
    let versions = app
        .app
        .views
        .compare("daily_sales_by_store", 1, 2, 3)
        .await
        .unwrap();
    assert_eq!(
        (
            versions.equal,
            versions.differ,
            versions.only_in_a,
            versions.only_in_b
        ),
        (expected.len() as u64, 0, 0, 0),
        "{:?}",
        versions.examples
    );
    // One day, as the interface shows it.
    let first = app
        .get("/sales/daily?store=cdnow&from=1997-01-01&to=1997-01-01")
        .await;
    assert_eq!(first.body.as_array().unwrap().len(), 1);

    // Real-time sales (ingest time) hold every order too, in the hour(s) of the import.
    let realtime = app.get("/sales/realtime?store=cdnow").await;
    let rt_orders: u64 = realtime
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["orders"].as_u64().unwrap())
        .sum();
    assert_eq!(rt_orders, 69_659);

    // A customer with several orders on one day keeps them apart; each is one event, the
    // order recorded complete and paid.
    let history = app.get("/orders/cdnow-00002-19970112-2/history").await;
    assert_eq!(
        history.body.as_array().map(Vec::len),
        Some(1),
        "{}",
        history.body
    );
    assert_eq!(history.body[0]["event_type"], "OrderRecorded");
    assert_eq!(history.body[0]["state_after"]["status"], "COMPLETED");

    assert_eq!(
        app.get("/sales/corrections?store=cdnow").await.body,
        Value::Array(vec![])
    );

    let head = app.head().await;
    let again = import_cdnow(&app.backend, &runner, &bytes, &as_history, &|_, _, _| {})
        .await
        .unwrap();
    assert_eq!(
        (
            again.orders_appended,
            again.orders_already_present,
            again.events_appended
        ),
        (0, 69_659, 0)
    );
    assert_eq!(app.head().await, head);

    // Rebuilding from zero gives the same view.
    runner.rebuild(None, &|_, _| {}).await.unwrap();
    assert_eq!(
        app.get("/sales/daily?store=cdnow&from=1997-01-01&to=1998-06-30")
            .await
            .body,
        reply.body
    );
}

#[tokio::test]
async fn a_malformed_row_is_named_and_nothing_is_imported_unless_skipped() {
    let app = TestApp::new().await;
    let runner = app.backend.projection_runner();
    let file = b" customer_id  date number_of_cds  dollar_value\r\n 00001 19970101  1   11.77\r\n 00002 1997011  1   12.00\r\n 00003 19970102  2   0.00\r\n";
    let err = import_cdnow(
        &app.backend,
        &runner,
        file,
        &ImportOptions::default(),
        &|_, _, _| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("line 3") && err.contains("date \"1997011\""),
        "{err}"
    );
    assert_eq!(app.head().await, 0);
    let summary = import_cdnow(
        &app.backend,
        &runner,
        file,
        &ImportOptions {
            skip_bad: true,
            ..ImportOptions::default()
        },
        &|_, _, _| {},
    )
    .await
    .unwrap();
    assert_eq!(
        (summary.rows, summary.orders_appended, summary.skipped.len()),
        (2, 2, 1)
    );
    assert_eq!(summary.skipped[0].line, 3);
    let days: Value = app.get("/sales/daily?store=cdnow").await.body;
    assert_eq!(days[1]["total"], "0.00");
    assert_eq!(days[1]["orders"], 1);
}
