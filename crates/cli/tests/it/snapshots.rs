//! Snapshots on both stores: taken every 100 events by the tail, a load is the snapshot
//! plus the tail and equals a full replay, a tampered or older snapshot is ignored (never
//! trusted), a newer one is an error naming the stream, and `snapshots rebuild` writes a good one.

use std::sync::Arc;

use eventfold_app::service::{AsOf, CommandContext, Service};
use eventfold_core::read_model::{DocWrite, ProjectionCommit};
use eventfold_core::snapshot::{self, SnapshotDoc, SNAPSHOTS};
use eventfold_core::{Actor, AppendRequest, ExpectedVersion, ReadModelStore, StoreError};
use eventfold_domain::account::{Account, AccountEvent};
use eventfold_domain::{Currency, Money};

use eventfold_http::testing::TestApp;

async fn put(read_models: &Arc<dyn ReadModelStore>, key: &str, doc: String) {
    let at = read_models.projection_checkpoint(SNAPSHOTS).await.unwrap();
    read_models
        .commit_projections(vec![ProjectionCommit {
            projection: SNAPSHOTS.into(),
            writes: vec![DocWrite {
                key: key.into(),
                doc: Some(doc),
            }],
            from_checkpoint: at,
            to_checkpoint: at,
        }])
        .await
        .unwrap();
}

/// Writes a USD account stream `stream_id` of `n` events: opened, then deposits of
/// `deposit(i)` dollars, event `i` at `time(i)`.
async fn write_account(
    store: &Arc<dyn eventfold_core::EventStore>,
    stream_id: &str,
    n: i64,
    deposit: impl Fn(i64) -> i64,
    time: impl Fn(i64) -> chrono::DateTime<chrono::Utc>,
) {
    let service = Service::new(store.clone());
    let events = (0..n)
        .map(|i| {
            let e = if i == 0 {
                AccountEvent::AccountOpened {
                    owner: "c".into(),
                    currency: Currency::USD,
                }
            } else {
                AccountEvent::FundsDeposited {
                    amount: Money::new(rust_decimal::Decimal::from(deposit(i)), Currency::USD)
                        .unwrap(),
                }
            };
            let mut ctx = CommandContext::new(Actor::system("test"));
            ctx.event_time = time(i);
            service
                .new_event::<Account>(stream_id, &e, &ctx, uuid::Uuid::now_v7())
                .unwrap()
        })
        .collect();
    store
        .append(AppendRequest::new(
            stream_id,
            ExpectedVersion::NoStream,
            events,
        ))
        .await
        .unwrap();
}

async fn snapshots_are_used_checked_and_rebuilt(app: &TestApp) {
    let (store, read_models) = (app.backend.events.clone(), app.backend.read_models.clone());
    let service = Service::new(store.clone());
    write_account(&store, "account-snap", 251, |_| 1, |_| chrono::Utc::now()).await;
    while snapshot::take_due::<Account>(&store, &read_models, 100)
        .await
        .unwrap()
        > 0
    {}
    let full = service
        .load::<Account>("snap", AsOf::Latest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(full.version, 251);
    let loaded = snapshot::load_latest::<Account>(&*store, &*read_models, "account-snap")
        .await
        .unwrap();
    assert_eq!(
        loaded.from_snapshot, 200,
        "the tail snapshots every 100 events"
    );
    assert_eq!(loaded.ignored, None);
    assert_eq!(loaded.replayed.as_ref(), Some(&full));

    // Tampered or older snapshots are ignored: the stream is replayed in full, same state.
    let good: SnapshotDoc = serde_json::from_str(
        &read_models
            .get_docs(SNAPSHOTS, &["account-snap".into()])
            .await
            .unwrap()[0]
            .1,
    )
    .unwrap();
    let mut wrong_state = good.clone();
    wrong_state.state = serde_json::json!({"balance": "a lot"});
    let mut older = good.clone();
    older.state_version = 0;
    let mut other = good.clone();
    other.aggregate = "order".into();
    for (doc, why) in [
        ("{not json".to_string(), "unreadable"),
        (
            serde_json::to_string(&wrong_state).unwrap(),
            "state unreadable",
        ),
        (serde_json::to_string(&older).unwrap(), "older"),
        (serde_json::to_string(&other).unwrap(), "of order"),
    ] {
        put(&read_models, "account-snap", doc).await;
        let loaded = snapshot::load_latest::<Account>(&*store, &*read_models, "account-snap")
            .await
            .unwrap();
        assert_eq!(loaded.from_snapshot, 0, "{why}");
        assert!(
            loaded.ignored.as_deref().unwrap_or("").contains(why),
            "{why}: {:?}",
            loaded.ignored
        );
        assert_eq!(loaded.replayed.as_ref(), Some(&full), "{why}");
    }
    // A snapshot from a newer eventfold is refused with the stream named.
    let mut newer = good.clone();
    newer.state_version = 2;
    put(
        &read_models,
        "account-snap",
        serde_json::to_string(&newer).unwrap(),
    )
    .await;
    let err = snapshot::load_latest::<Account>(&*store, &*read_models, "account-snap")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("snapshot of stream account-snap") && m.contains("state version 2")),
        "{err:?}"
    );
    // Rebuild: a full replay written at the head.
    let version = snapshot::write_snapshot::<Account>(&*store, &*read_models, "account-snap")
        .await
        .unwrap();
    assert_eq!(version, 251);
    let loaded = snapshot::load_latest::<Account>(&*store, &*read_models, "account-snap")
        .await
        .unwrap();
    assert_eq!((loaded.from_snapshot, loaded.replayed), (251, Some(full)));
}

/// As-of loads from snapshots equal full replays, with late events (event time before earlier
/// events') scattered through the stream.
async fn as_of_loads_from_snapshots_equal_full_replays(app: &TestApp) {
    let (store, read_models) = (app.backend.events.clone(), app.backend.read_models.clone());
    let service = Service::new(store.clone());
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    // Event i happens at minute i, except every 37th, which is late: it happened 3 hours earlier.
    let minute = |i: i64| {
        if i > 0 && i % 37 == 0 {
            t0 + chrono::Duration::minutes(i - 180)
        } else {
            t0 + chrono::Duration::minutes(i)
        }
    };
    write_account(&store, "account-late", 350, |i| i, minute).await;
    while snapshot::take_due::<Account>(&store, &read_models, 50)
        .await
        .unwrap()
        > 0
    {}
    let mut from_snapshots = 0;
    for probe in (-200..400).step_by(7) {
        let t = t0 + chrono::Duration::minutes(probe);
        let want = service
            .load::<Account>("late", AsOf::Time(t))
            .await
            .unwrap();
        let got = snapshot::load_until::<Account>(
            &*store,
            &*read_models,
            "account-late",
            snapshot::Until::Time(t),
        )
        .await
        .unwrap();
        assert_eq!(got.ignored, None);
        if got.from_snapshot > 0 {
            from_snapshots += 1;
        }
        assert_eq!(
            got.replayed.map(|r| r.state),
            want.map(|r| r.state),
            "as of minute {probe}"
        );
    }
    assert!(
        from_snapshots > 10,
        "snapshots were used {from_snapshots} times"
    );
    for v in [1, 49, 50, 51, 199, 200, 349, 350, 400] {
        let want = service
            .load::<Account>("late", AsOf::Version(v))
            .await
            .unwrap();
        let got = snapshot::load_until::<Account>(
            &*store,
            &*read_models,
            "account-late",
            snapshot::Until::Version(v),
        )
        .await
        .unwrap();
        assert_eq!(got.replayed, want, "as of version {v}");
    }
}

eventfold_http::on_both_stores!(
    [flavor = "multi_thread", worker_threads = 2]
    sqlite_as_of_loads_from_snapshots_equal_full_replays,
    postgres_as_of_loads_from_snapshots_equal_full_replays,
    &as_of_loads_from_snapshots_equal_full_replays
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_snapshots_are_used_checked_and_rebuilt() {
    let app = TestApp::new().await;
    snapshots_are_used_checked_and_rebuilt(&app).await;
    let reply = app.get("/accounts/snap").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        (&reply.body["version"], &reply.body["balance"]["amount"]),
        (&serde_json::json!(251), &serde_json::json!("250.00")),
        "{}",
        reply.body
    );
    // The HTTP read of the latest state goes through the snapshot: a (well-formed) snapshot
    // that says otherwise is what it shows, until the snapshot is rebuilt.
    let read_models = app.backend.read_models.clone();
    let mut doc: SnapshotDoc = serde_json::from_str(
        &read_models
            .get_docs(SNAPSHOTS, &["account-snap".into()])
            .await
            .unwrap()[0]
            .1,
    )
    .unwrap();
    doc.state["balance"]["amount"] = serde_json::json!("999.00");
    put(
        &read_models,
        "account-snap",
        serde_json::to_string(&doc).unwrap(),
    )
    .await;
    let reply = app.get("/accounts/snap").await;
    assert_eq!(reply.body["balance"]["amount"], "999.00", "{}", reply.body);
    snapshot::write_snapshot::<Account>(&*app.backend.events, &*read_models, "account-snap")
        .await
        .unwrap();
    let reply = app.get("/accounts/snap").await;
    assert_eq!(reply.body["balance"]["amount"], "250.00", "{}", reply.body);
    // A command lane starts a stream from its snapshot too: with the tampered one back, a
    // withdrawal only the snapshot's balance covers goes through.
    put(
        &read_models,
        "account-snap",
        serde_json::to_string(&doc).unwrap(),
    )
    .await;
    let reply = app
        .post(
            "/accounts/snap/withdraw",
            serde_json::json!({"amount": "900.00", "currency": "USD"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_snapshots_are_used_checked_and_rebuilt() {
    snapshots_are_used_checked_and_rebuilt(&TestApp::postgres().await).await;
}

#[test]
fn cli_rebuilds_every_account_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("s.db").display());
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_eventfold"))
            .args(["--store", &store])
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let backend = eventfold_app::backend::Backend::open(&store).await.unwrap();
        let service = Service::new(backend.events.clone());
        let ctx = CommandContext::new(Actor::system("test"));
        for id in ["a", "b"] {
            let e = AccountEvent::AccountOpened {
                owner: id.into(),
                currency: Currency::USD,
            };
            let ev = service
                .new_event::<Account>(&format!("account-{id}"), &e, &ctx, uuid::Uuid::now_v7())
                .unwrap();
            backend
                .events
                .append(AppendRequest::new(
                    format!("account-{id}"),
                    ExpectedVersion::NoStream,
                    vec![ev],
                ))
                .await
                .unwrap();
        }
    });
    let out = run(&["snapshots", "rebuild", "--all", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report, serde_json::json!({"streams": 2, "events": 2}));
    let out = run(&["snapshots", "rebuild", "order-1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only account streams are snapshotted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_also_taken_by_age() {
    let app = TestApp::new().await;
    let (store, read_models) = (app.backend.events.clone(), app.backend.read_models.clone());
    let service = Service::new(store.clone());
    let ctx = CommandContext::new(Actor::system("test"));
    let one = Money::parse("1.00", Currency::USD).unwrap();
    write_account(&store, "account-aging", 120, |_| 1, |_| chrono::Utc::now()).await;
    let event = |e: AccountEvent| {
        service
            .new_event::<Account>("account-aging", &e, &ctx, uuid::Uuid::now_v7())
            .unwrap()
    };
    let hour = chrono::Duration::hours(1);
    let now = chrono::Utc::now();
    while snapshot::take_due_with::<Account>(&store, &read_models, 100, Some(hour), now)
        .await
        .unwrap()
        > 0
    {}
    let first = snapshot::load_latest::<Account>(&*store, &*read_models, "account-aging")
        .await
        .unwrap();
    assert_eq!(first.from_snapshot, 100);
    // One more event: the snapshot is 10 minutes old, young enough; then 2 hours: replaced.
    for (at, expected) in [(10, 100), (120, 122)] {
        let current = service
            .load::<Account>("aging", AsOf::Latest)
            .await
            .unwrap()
            .unwrap()
            .version;
        app.backend
            .events
            .append(AppendRequest::new(
                "account-aging",
                ExpectedVersion::Exact(current),
                vec![event(AccountEvent::FundsDeposited { amount: one })],
            ))
            .await
            .unwrap();
        let later = now + chrono::Duration::minutes(at);
        while snapshot::take_due_with::<Account>(
            &app.backend.events,
            &app.backend.read_models,
            100,
            Some(hour),
            later,
        )
        .await
        .unwrap()
            > 0
        {}
        let loaded = snapshot::load_latest::<Account>(
            &*app.backend.events,
            &*app.backend.read_models,
            "account-aging",
        )
        .await
        .unwrap();
        assert_eq!(loaded.from_snapshot, expected, "{at} minutes later");
        let full = service
            .load::<Account>("aging", AsOf::Latest)
            .await
            .unwrap();
        assert_eq!(loaded.replayed, full);
    }
}
