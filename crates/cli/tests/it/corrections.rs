//! Corrections by replay on both stores: `correct interest` appends one CorrectionApplied per
//! account whose interest differs under v2, equal to v2 - v1 computed from the account's own
//! events (late ones included); a second run appends nothing and reports the same figures; the
//! projection picks the corrections up and the CSV and JSON reports list every account.

use chrono::{DateTime, NaiveDate, Utc};
use eventfold_app::corrections::{correct_interest, write_report, InterestCorrection};
use eventfold_app::service::{AsOf, CommandContext, Service};
use eventfold_core::{Actor, AppendRequest, ExpectedVersion};
use eventfold_domain::account::{Account, AccountEvent};
use eventfold_domain::interest::{interest, InterestAlgorithm, Movement};
use eventfold_domain::{Currency, Money};
use rust_decimal::Decimal;

use eventfold_http::testing::TestApp;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// Appends `events` (event, time) to `account-{id}` in one append.
async fn account(app: &TestApp, id: &str, currency: Currency, events: &[(&str, &str, &str)]) {
    let service = Service::new(app.backend.events.clone());
    let mut new = vec![];
    for (kind, amount, time) in events {
        let money = || Money::parse(amount, currency).unwrap();
        let e = match *kind {
            "open" => AccountEvent::AccountOpened {
                owner: format!("c-{id}"),
                currency,
            },
            "deposit" => AccountEvent::FundsDeposited { amount: money() },
            "withdraw" => AccountEvent::FundsWithdrawn { amount: money() },
            "interest" => AccountEvent::InterestAccrued { amount: money() },
            other => panic!("{other}"),
        };
        let mut ctx = CommandContext::new(Actor::system("test"));
        ctx.event_time = at(time);
        new.push(
            service
                .new_event::<Account>(&format!("account-{id}"), &e, &ctx, uuid::Uuid::now_v7())
                .unwrap(),
        );
    }
    app.backend
        .events
        .append(AppendRequest::new(
            format!("account-{id}"),
            ExpectedVersion::NoStream,
            new,
        ))
        .await
        .unwrap();
}

fn correction() -> InterestCorrection {
    InterestCorrection {
        from: day("2024-01-01"),
        to: day("2025-01-01"),
        old: InterestAlgorithm::V1,
        new: InterestAlgorithm::V2,
        annual_rate: dec("0.05"),
        now: at("2025-01-02T00:00:00Z"),
    }
}

async fn interest_is_corrected_once_and_reported(app: TestApp) {
    let t = |s| s;
    account(
        &app,
        "1",
        Currency::USD,
        &[
            ("open", "0", t("2023-12-01T00:00:00Z")),
            ("deposit", "1000.00", t("2023-12-31T10:00:00Z")),
            ("withdraw", "250.00", t("2024-05-17T13:00:00Z")),
            ("interest", "12.34", t("2024-07-01T00:00:00Z")),
            // Late: arrives last, happened in March.
            ("deposit", "99.99", t("2024-03-03T03:03:03Z")),
        ],
    )
    .await;
    account(
        &app,
        "2",
        Currency::TWD,
        &[
            ("open", "0", t("2024-01-01T00:00:00Z")),
            ("deposit", "31415.92", t("2024-02-29T23:00:00Z")),
        ],
    )
    .await;
    // No balance in the range: no difference, nothing appended.
    account(
        &app,
        "3",
        Currency::USD,
        &[("open", "0", t("2024-01-01T00:00:00Z"))],
    )
    .await;
    let store = app.backend.events.clone();
    let c = correction();
    let expected = |movements: &[(&str, &str)]| {
        let m: Vec<Movement> = movements
            .iter()
            .map(|(a, t)| Movement {
                at: at(t),
                amount: dec(a),
            })
            .collect();
        let old = interest(InterestAlgorithm::V1, &m, c.from, c.to, c.annual_rate, 2);
        let new = interest(InterestAlgorithm::V2, &m, c.from, c.to, c.annual_rate, 2);
        (old, new, new - old)
    };
    let one = expected(&[
        ("1000.00", "2023-12-31T10:00:00Z"),
        ("-250.00", "2024-05-17T13:00:00Z"),
        ("12.34", "2024-07-01T00:00:00Z"),
        ("99.99", "2024-03-03T03:03:03Z"),
    ]);
    let two = expected(&[("31415.92", "2024-02-29T23:00:00Z")]);
    assert!(!one.2.is_zero() && !two.2.is_zero());

    let report = correct_interest(store.clone(), &c, &|_, _, _| {})
        .await
        .unwrap();
    assert_eq!(
        (
            report.accounts,
            report.corrections_appended,
            report.no_difference
        ),
        (3, 2, 1)
    );
    let line = |r: &eventfold_app::corrections::CorrectionReport, id: &str| {
        let l = r
            .lines
            .iter()
            .find(|l| l.account == format!("account-{id}"))
            .unwrap();
        ((l.old_interest, l.new_interest, l.delta), l.status)
    };
    assert_eq!(line(&report, "1"), (one, "applied"));
    assert_eq!(line(&report, "2"), (two, "applied"));
    let service = Service::new(store.clone());
    let events = service.read_stream("account-1").await.unwrap();
    assert_eq!(events.len(), 6);
    let last = events.last().unwrap();
    assert_eq!(last.event_type, "CorrectionApplied");
    assert_eq!(last.event_time, c.now);
    let state = service
        .load::<Account>("1", AsOf::Latest)
        .await
        .unwrap()
        .unwrap()
        .state;
    assert_eq!(
        state.balance.unwrap().amount,
        dec("1000.00") - dec("250.00") + dec("12.34") + dec("99.99") + one.2
    );

    // A second run appends nothing and reports the same figures.
    let head = store.head_position().await.unwrap();
    let again = correct_interest(store.clone(), &c, &|_, _, _| {})
        .await
        .unwrap();
    assert_eq!((again.corrections_appended, again.already_applied), (0, 2));
    assert_eq!(line(&again, "1"), (one, "already_applied"));
    assert_eq!(store.head_position().await.unwrap(), head);

    // The projection picks the corrections up.
    app.project().await;
    let balance = app.get("/balances/1").await;
    assert_eq!(
        balance.body["balance"]["amount"].as_str().map(dec),
        Some(state.balance.unwrap().amount),
        "{:?}",
        balance.body
    );

    // The report files: a header and one line per account, JSON with the same lines.
    let dir = tempfile::tempdir().unwrap();
    let (csv, json) = write_report(&report, dir.path()).unwrap();
    let csv = std::fs::read_to_string(csv).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "account,currency,old_interest,new_interest,delta,status"
    );
    assert_eq!(
        rows[1],
        format!("\"account-1\",USD,{},{},{},applied", one.0, one.1, one.2)
    );
    assert_eq!(rows.len(), 4);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(json["accounts"].as_array().unwrap().len(), 3);
    assert_eq!(json["summary"]["corrections_appended"], 2);
    assert_eq!(json["accounts"][1]["delta"], two.2.to_string());
}

eventfold_http::on_both_stores!(
    [flavor = "multi_thread", worker_threads = 2]
    sqlite_interest_is_corrected_once_and_reported,
    postgres_interest_is_corrected_once_and_reported,
    interest_is_corrected_once_and_reported
);

/// Bad options are refused before anything is read, naming the option.
#[test]
fn bad_options_are_named() {
    let mut c = correction();
    c.to = c.from;
    assert!(c.validate().unwrap_err().contains("--to"));
    let mut c = correction();
    c.annual_rate = dec("1.5");
    assert!(c.validate().unwrap_err().contains("--annual-rate"));
    let mut c = correction();
    c.new = InterestAlgorithm::V1;
    assert!(c.validate().unwrap_err().contains("--algorithm"));
    assert!(InterestAlgorithm::parse("v3").unwrap_err().contains("v3"));
}

/// `eventfold correct interest` end to end on a SQLite file: the JSON summary, the report files,
/// a second run that appends nothing, and a bad date named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_corrects_writes_the_report_and_names_bad_dates() {
    let app = TestApp::new().await;
    account(
        &app,
        "7",
        Currency::USD,
        &[
            ("open", "0", "2023-12-01T00:00:00Z"),
            ("deposit", "5000.00", "2024-02-01T00:00:00Z"),
        ],
    )
    .await;
    let eventfold_app::backend::StoreUrl::Sqlite(path) = app.backend.url.clone() else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "correct",
            "interest",
            "--to",
            "2025-01-01",
            "--annual-rate",
            "0.05",
            "--report-dir",
            dir.path().to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_eventfold"))
            .args(&args)
            .env("EVENTFOLD_STORE", format!("sqlite://{}", path.display()))
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let out = run(&["--from", "2024-01-01"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["corrections_appended"], 1);
    assert_eq!(summary["new_algorithm"], "v2");
    let csv = dir
        .path()
        .join("interest-correction-v2-2024-01-01-2025-01-01.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .starts_with("\"account-7\",USD,"),
        "{text}"
    );
    assert!(dir
        .path()
        .join("interest-correction-v2-2024-01-01-2025-01-01.json")
        .exists());

    let again: serde_json::Value =
        serde_json::from_slice(&run(&["--from", "2024-01-01"]).stdout).unwrap();
    assert_eq!(
        (
            again["corrections_appended"].as_u64(),
            again["already_applied"].as_u64()
        ),
        (Some(0), Some(1))
    );

    let bad = run(&["--from", "2024-13-01"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("--from"),
        "{stderr}"
    );
}
