//! The hash chain on both stores: every append path chains, `verify` walks the log or a
//! stream and names the first broken link after a byte of a payload, of metadata, the order or
//! a position is changed directly in the database (the append-only trigger switched off, as an
//! intruder with database access would), signed anchors catch a rewritten or shortened log, a
//! wrong key is refused, and rows stored before the chain existed are chained by the migration
//! exactly as the appender would have chained them.

use std::sync::Arc;

use eventfold_app::backend::{Backend, StoreUrl};
use eventfold_app::integrity::verify::{verify, Target, TrustedAnchor, VerifyReport};
use eventfold_core::chain::{self, Anchor, Hash};
use eventfold_core::{
    testkit, Actor, AppendRequest, EventStore, ExpectedVersion, NewEvent, StoreError,
};
use eventfold_http::testing::TestApp;

fn event(n: u32) -> NewEvent {
    let mut e = testkit::event(
        "Happened",
        Actor::system("chain-test"),
        format!("{{\"n\":{n}}}"),
    );
    e.metadata.causation_id = Some(uuid::Uuid::now_v7());
    e
}

/// Ten events at positions 1-10 through every append path: streams a (1-3, 6), b (4-5, 9) and
/// c (7-8 with `Any`, which takes PostgreSQL's checked path; 10), a group of two, and a retry
/// that writes nothing.
async fn fixture(store: &Arc<dyn EventStore>) {
    let first = AppendRequest::new(
        "a",
        ExpectedVersion::NoStream,
        vec![event(1), event(2), event(3)],
    );
    store.append(first.clone()).await.unwrap();
    store
        .append(AppendRequest::new(
            "b",
            ExpectedVersion::NoStream,
            vec![event(4), event(5)],
        ))
        .await
        .unwrap();
    store
        .append(AppendRequest::new(
            "a",
            ExpectedVersion::Exact(3),
            vec![event(6)],
        ))
        .await
        .unwrap();
    store
        .append(AppendRequest::new(
            "c",
            ExpectedVersion::Any,
            vec![event(7), event(8)],
        ))
        .await
        .unwrap();
    let group = store
        .append_many(vec![
            AppendRequest::new("b", ExpectedVersion::Exact(2), vec![event(9)]),
            AppendRequest::new("c", ExpectedVersion::Exact(2), vec![event(10)]),
        ])
        .await
        .unwrap();
    assert!(group.iter().all(Result::is_ok));
    assert!(store.append(first).await.unwrap().duplicate);
    assert_eq!(store.head_position().await.unwrap(), 10);
}

/// Runs `statement` directly on the store's database, append-only trigger off.
async fn tamper(app: &TestApp, statement: &str) {
    match &app.backend.url {
        StoreUrl::Sqlite(path) => {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.execute_batch(&format!(
                "DROP TRIGGER IF EXISTS events_are_append_only_update; \
                 DROP TRIGGER IF EXISTS events_are_append_only_delete; {statement}"
            ))
            .unwrap();
        }
        StoreUrl::Postgres(url) => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::raw_sql(&format!(
                "ALTER TABLE events DISABLE TRIGGER events_are_append_only; {statement}"
            ))
            .execute(&mut conn)
            .await
            .unwrap();
        }
        StoreUrl::Nats(_) => {
            unreachable!("these tests change SQL rows: SQLite and PostgreSQL only")
        }
    }
}

/// A bytea/blob literal in the store's SQL dialect.
fn bytes_literal(app: &TestApp, bytes: &[u8]) -> String {
    match app.backend.url {
        StoreUrl::Sqlite(_) => format!("X'{}'", hex::encode(bytes)),
        StoreUrl::Postgres(_) => format!("'\\x{}'::bytea", hex::encode(bytes)),
        StoreUrl::Nats(_) => {
            unreachable!("these tests change SQL rows: SQLite and PostgreSQL only")
        }
    }
}

async fn verify_all(app: &TestApp, anchor: Option<&TrustedAnchor>) -> VerifyReport {
    verify(app.backend.events.clone(), &Target::All, anchor, &|_| {})
        .await
        .unwrap()
}

/// Signs the current head with a fixed key.
async fn anchor_now(app: &TestApp) -> TrustedAnchor {
    let key = chain::signing_key(&"5a".repeat(32)).unwrap();
    let (anchor, report) = eventfold_app::integrity::verify::sign_anchor(
        app.backend.events.clone(),
        &key,
        chrono::Utc::now(),
        &|_| {},
    )
    .await
    .unwrap();
    assert!(report.ok);
    let hash = anchor.verify(&key.verifying_key()).unwrap();
    TrustedAnchor { anchor, hash }
}

fn broken_at(report: &VerifyReport) -> (u64, String, String, u64) {
    let b = report
        .first_broken
        .as_ref()
        .unwrap_or_else(|| panic!("chain should be broken: {report:?}"));
    (b.position, b.field.clone(), b.stream.clone(), b.version)
}

async fn an_intact_chain_verifies_by_log_stream_and_anchor(app: TestApp) {
    let store = app.backend.events.clone();
    fixture(&store).await;
    let report = verify_all(&app, None).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 10);
    assert_eq!(report.head.as_ref().unwrap().position, 10);
    for (stream, events) in [("a", 4), ("b", 3), ("c", 3)] {
        let r = verify(store.clone(), &Target::Stream(stream.into()), None, &|_| {})
            .await
            .unwrap();
        assert!(r.ok && r.events_checked == events, "{stream}: {r:?}");
    }
    // Links as stored: position 1 starts from zeros, each stream's first event too, and every
    // event's prev_hash is its predecessor's hash.
    let rows = store.read_chain(0, 100).await.unwrap();
    assert_eq!(rows[0].prev_hash.as_deref(), Some([0u8; 32].as_slice()));
    for w in rows.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
    // Each hash also links the stream: a's version 4 (position 6) to version 3 (position 3),
    // b's version 1 (position 4) to zeros.
    let hash_of = |r: &eventfold_core::chain::ChainRow, stream_prev: &[u8]| {
        chain::link(
            &Hash::try_from(r.prev_hash.as_deref().unwrap()).unwrap(),
            &Hash::try_from(stream_prev).unwrap(),
            r.position,
            &r.content().digest(),
        )
    };
    assert_eq!(
        rows[5].hash.as_deref(),
        Some(hash_of(&rows[5], rows[2].hash.as_deref().unwrap()).as_slice())
    );
    assert_eq!(
        rows[3].hash.as_deref(),
        Some(hash_of(&rows[3], &[0; 32]).as_slice())
    );

    // The log grows past an anchor and still extends it.
    let anchor = anchor_now(&app).await;
    assert_eq!(anchor.anchor.position, 10);
    store
        .append(AppendRequest::new(
            "a",
            ExpectedVersion::Exact(4),
            vec![event(11)],
        ))
        .await
        .unwrap();
    let report = verify_all(&app, Some(&anchor)).await;
    assert!(
        report.ok && report.anchor.as_ref().unwrap().extended,
        "{report:?}"
    );
    assert_eq!(report.events_checked, 11);
    assert!(matches!(
        verify(store, &Target::Stream("nobody".into()), None, &|_| {}).await,
        Err(StoreError::InvalidRequest(m)) if m.contains("nobody")
    ));
}

/// Where verify says the chain breaks: position, field, stream, version.
type Broken = (u64, &'static str, &'static str, u64);

/// Each case: a fresh fixture, one change made in the database, the broken link verify names.
async fn every_change_in_the_database_is_caught(new_app: impl AsyncFn() -> TestApp) {
    let cases: [(&str, &str, Broken); 6] = [
        (
            "a payload byte",
            "UPDATE events SET payload = 'X' || substr(payload, 2) WHERE position = 6",
            (6, "hash", "a", 4),
        ),
        (
            "an actor byte",
            "UPDATE events SET actor = 'u' || substr(actor, 2) WHERE position = 9",
            (9, "hash", "b", 3),
        ),
        (
            "a tenant byte",
            "UPDATE events SET tenant_id = 'D' || substr(tenant_id, 2) WHERE position = 2",
            (2, "hash", "a", 2),
        ),
        (
            "the causation id",
            "UPDATE events SET causation_id = NULL WHERE position = 8",
            (8, "hash", "c", 2),
        ),
        (
            "the order of two events",
            "UPDATE events SET position = -1 WHERE position = 4; \
             UPDATE events SET position = 4 WHERE position = 5; \
             UPDATE events SET position = 5 WHERE position = -1",
            (4, "prev_hash", "b", 2),
        ),
        (
            "a position",
            "UPDATE events SET position = 1010 WHERE position = 10",
            (1010, "position", "c", 3),
        ),
    ];
    for (what, statement, (position, field, stream, version)) in cases {
        let app = new_app().await;
        fixture(&app.backend.events).await;
        tamper(&app, statement).await;
        let report = verify_all(&app, None).await;
        assert!(!report.ok, "{what}");
        assert_eq!(
            broken_at(&report),
            (position, field.to_owned(), stream.to_owned(), version),
            "{what}: {report:?}"
        );
        let checked = if position > 10 { 9 } else { position - 1 };
        assert_eq!(report.events_checked, checked, "{what}");
    }

    // A stream walk catches a change in that stream.
    let app = new_app().await;
    fixture(&app.backend.events).await;
    tamper(&app, cases[0].1).await;
    let r = verify(
        app.backend.events.clone(),
        &Target::Stream("a".into()),
        None,
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(broken_at(&r), (6, "hash".into(), "a".into(), 4));

    // The last event removed: the chain that is left holds, the anchor does not.
    let app = new_app().await;
    fixture(&app.backend.events).await;
    let anchor = anchor_now(&app).await;
    tamper(&app, "DELETE FROM events WHERE position = 10").await;
    assert!(verify_all(&app, None).await.ok);
    let report = verify_all(&app, Some(&anchor)).await;
    assert_eq!(broken_at(&report).1, "anchor");
    assert!(!report.anchor.unwrap().extended);

    // The last event changed and its hash recomputed by the intruder: only the anchor sees it.
    let app = new_app().await;
    fixture(&app.backend.events).await;
    let anchor = anchor_now(&app).await;
    // Position 10 is stream c's version 3; its version 2 is position 8.
    let stream_prev = app.backend.events.read_chain(7, 1).await.unwrap()[0]
        .hash
        .clone()
        .unwrap();
    let mut row = app.backend.events.read_chain(9, 1).await.unwrap().remove(0);
    row.payload = b"{\"n\":1000}".to_vec();
    let hash = chain::link(
        &Hash::try_from(row.prev_hash.as_deref().unwrap()).unwrap(),
        &Hash::try_from(stream_prev.as_slice()).unwrap(),
        10,
        &row.content().digest(),
    );
    let set_hash = bytes_literal(&app, &hash);
    tamper(
        &app,
        &format!(
            "UPDATE events SET payload = '{{\"n\":1000}}', hash = {set_hash} WHERE position = 10"
        ),
    )
    .await;
    assert!(verify_all(&app, None).await.ok, "a consistent rewrite");
    let report = verify_all(&app, Some(&anchor)).await;
    assert_eq!(
        broken_at(&report),
        (10, "anchor".into(), "c".into(), 3),
        "{report:?}"
    );
}

/// Rows written before the chain existed: the migration chains them exactly as the appender
/// does. The chain and archive columns (and, on SQLite, the stream index tables) are dropped and
/// the schema set back to before the chain, then the store is opened again.
async fn old_rows_are_chained_by_the_migration(app: TestApp) {
    fixture(&app.backend.events).await;
    let before = app.backend.events.read_chain(0, 100).await.unwrap();
    let url = match &app.backend.url {
        StoreUrl::Sqlite(path) => {
            tamper(
                &app,
                "ALTER TABLE events DROP COLUMN prev_hash; \
                 ALTER TABLE events DROP COLUMN hash; \
                 ALTER TABLE events DROP COLUMN archived_digest; \
                 ALTER TABLE events DROP COLUMN via; \
                 ALTER TABLE events DROP COLUMN backfill; \
                 DROP TABLE stream_index; DROP TABLE stream_tail; PRAGMA user_version = 2;",
            )
            .await;
            format!("sqlite://{}", path.display())
        }
        StoreUrl::Postgres(url) => {
            tamper(
                &app,
                "ALTER TABLE events DROP COLUMN prev_hash, DROP COLUMN hash, \
                 DROP COLUMN archived_digest, DROP COLUMN via, DROP COLUMN backfill; \
                 DROP FUNCTION eventfold_append; \
                 DROP POLICY events_of_the_tenant ON events; \
                 DROP POLICY read_models_of_the_tenant ON read_models; \
                 ALTER TABLE read_models DROP COLUMN tenant; \
                 DELETE FROM eventfold_schema WHERE version >= 4; \
                 ALTER TABLE events ENABLE TRIGGER events_are_append_only;",
            )
            .await;
            url.clone()
        }
        StoreUrl::Nats(_) => {
            unreachable!("these tests change SQL rows: SQLite and PostgreSQL only")
        }
    };
    let reopened = Backend::open(&url).await.unwrap();
    // The chain, archive, notification-table, `via` and `backfill` migrations run again (and,
    // on SQLite, the stream index's; on PostgreSQL, the tenant fence's and the generic-plan
    // append function's).
    let rerun = match &app.backend.url {
        StoreUrl::Sqlite(_) => 6,
        StoreUrl::Postgres(_) => 7,
        StoreUrl::Nats(_) => {
            unreachable!("these tests change SQL rows: SQLite and PostgreSQL only")
        }
    };
    assert_eq!(reopened.schema.previous + rerun, reopened.schema.current);
    let after = reopened.events.read_chain(0, 100).await.unwrap();
    assert_eq!(after, before, "backfilled links equal the appender's");
    // The store appends after the backfill, and the chain holds.
    reopened
        .events
        .append(AppendRequest::new(
            "a",
            ExpectedVersion::Exact(4),
            vec![event(11)],
        ))
        .await
        .unwrap();
    let report = verify(reopened.events.clone(), &Target::All, None, &|_| {})
        .await
        .unwrap();
    assert!(report.ok && report.events_checked == 11, "{report:?}");
}

eventfold_http::on_both_stores!(
    [flavor = "multi_thread", worker_threads = 2]
    sqlite_an_intact_chain_verifies_by_log_stream_and_anchor,
    postgres_an_intact_chain_verifies_by_log_stream_and_anchor,
    an_intact_chain_verifies_by_log_stream_and_anchor
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_change_in_the_database_is_caught() {
    every_change_in_the_database_is_caught(TestApp::new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_change_in_the_database_is_caught() {
    every_change_in_the_database_is_caught(TestApp::postgres).await;
}

eventfold_http::on_both_stores!(
    [flavor = "multi_thread", worker_threads = 2]
    sqlite_old_rows_are_chained_by_the_migration,
    postgres_old_rows_are_chained_by_the_migration,
    old_rows_are_chained_by_the_migration
);

/// `verify` and `anchor` from the command line: the JSON keys scripts rely on, exit codes, a
/// wrong public key and a damaged anchor file refused with the reason.
#[test]
fn the_cli_verifies_signs_and_refuses_bad_keys_and_anchors() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chain.db");
    let store = format!("sqlite://{}", db.display());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_eventfold"))
            .args(args)
            .env("EVENTFOLD_STORE", &store)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let json = |out: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {} / {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    // Ten purchases: ten events (one `OrderRecorded` each).
    let file = dir.path().join("cdnow.txt");
    let rows: String = (1..=10)
        .map(|c| format!(" {c:05} 199701{c:02}  {c}   1{c}.77\n"))
        .collect();
    std::fs::write(&file, rows).unwrap();
    assert!(
        run(&["import", "cdnow", file.to_str().unwrap(), "--backfill"])
            .status
            .success()
    );

    let out = run(&["verify", "--all", "--json"]);
    assert!(out.status.success());
    let report = json(&out);
    assert_eq!(report["ok"], true);
    assert_eq!(report["events_checked"], 10);
    assert!(report["events_per_sec"].as_f64().unwrap() > 0.0);

    let (secret, public) = (dir.path().join("k.sec"), dir.path().join("k.pub"));
    let (secret, public) = (secret.to_str().unwrap(), public.to_str().unwrap());
    assert!(run(&[
        "anchor",
        "keygen",
        "--secret-key",
        secret,
        "--public-key",
        public
    ])
    .status
    .success());
    let again = run(&[
        "anchor",
        "keygen",
        "--secret-key",
        secret,
        "--public-key",
        public,
    ]);
    assert!(!again.status.success(), "a key is never overwritten");
    let anchor_path = dir.path().join("anchor.json");
    let anchor_file = anchor_path.to_str().unwrap();
    let signed = json(&run(&[
        "anchor",
        "sign",
        "--secret-key",
        secret,
        "--out",
        anchor_file,
        "--json",
    ]));
    assert_eq!(signed["position"], 10);
    let out = run(&[
        "verify",
        "--anchor",
        anchor_file,
        "--public-key",
        public,
        "--json",
    ]);
    assert!(out.status.success());
    assert_eq!(json(&out)["anchor"]["extended"], true);

    let (other_secret, other_public) = (dir.path().join("o.sec"), dir.path().join("o.pub"));
    let other = json(&run(&[
        "anchor",
        "keygen",
        "--secret-key",
        other_secret.to_str().unwrap(),
        "--public-key",
        other_public.to_str().unwrap(),
        "--json",
    ]));
    let other = other["public_key"].as_str().unwrap();
    let out = run(&["verify", "--anchor", anchor_file, "--public-key", other]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not verify with public key"),
        "{stderr}"
    );
    let out = run(&[
        "verify",
        "--anchor",
        anchor_file,
        "--public-key",
        &"ab".repeat(32),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("not an Ed25519 key"),
        "{stderr}"
    );

    let text = std::fs::read_to_string(&anchor_path).unwrap();
    std::fs::write(&anchor_path, &text[..text.len() / 2]).unwrap();
    let out = run(&["verify", "--anchor", anchor_file, "--public-key", public]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("not an anchor file"),
        "{stderr}"
    );
    let anchor: Result<Anchor, _> = serde_json::from_str(&text);
    assert!(anchor.is_ok());

    // A payload byte changed in the file: verify exits 1 and names the place.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "DROP TRIGGER events_are_append_only_update; \
         UPDATE events SET payload = ' ' || substr(payload, 2) WHERE position = 7",
    )
    .unwrap();
    let out = run(&["verify", "--all", "--json"]);
    assert!(!out.status.success());
    let report = json(&out);
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_broken"]["position"], 7);
    assert_eq!(report["first_broken"]["field"], "hash");
    assert!(report["first_broken"]["stream"]
        .as_str()
        .unwrap()
        .starts_with("order-"));
    assert!(report["first_broken"]["version"].as_u64().unwrap() >= 1);
}

/// A log longer than one read batch (20,000 rows, with reads ahead): every row is checked in
/// order, and a change far into it is found at its position.
async fn a_long_log_is_walked_in_order_across_batches(app: TestApp) {
    let store = app.backend.events.clone();
    for s in 0..45u32 {
        store
            .append(AppendRequest::new(
                format!("long-{s}"),
                ExpectedVersion::NoStream,
                (0..1_000).map(|n| event(s * 1_000 + n)).collect(),
            ))
            .await
            .unwrap();
    }
    let report = verify_all(&app, None).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 45_000);
    tamper(
        &app,
        "UPDATE events SET payload = 'X' || substr(payload, 2) WHERE position = 41234",
    )
    .await;
    let report = verify_all(&app, None).await;
    assert_eq!(
        broken_at(&report),
        (41_234, "hash".into(), "long-41".into(), 234)
    );
    assert_eq!(report.events_checked, 41_233);
}

eventfold_http::on_both_stores!(
    [flavor = "multi_thread", worker_threads = 2]
    sqlite_a_long_log_is_walked_in_order_across_batches,
    postgres_a_long_log_is_walked_in_order_across_batches,
    a_long_log_is_walked_in_order_across_batches
);

/// Rows appended with the chain off (a measurement setting) are reported, never passed; an
/// empty log has nothing to anchor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchained_rows_fail_verify_and_an_empty_log_is_not_signed() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(
        eventfold_sqlite::SqliteStore::open_with(
            dir.path().join("off.db"),
            eventfold_sqlite::SqliteConfig {
                hash_chain: false,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let key = chain::signing_key(&"5a".repeat(32)).unwrap();
    let empty = eventfold_app::integrity::verify::sign_anchor(
        store.clone(),
        &key,
        chrono::Utc::now(),
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(empty.to_string().contains("empty"), "{empty}");
    fixture(&store).await;
    let report = verify(store, &Target::All, None, &|_| {}).await.unwrap();
    let broken = report.first_broken.unwrap();
    assert_eq!(
        (
            broken.position,
            broken.field.as_str(),
            broken.found.as_str()
        ),
        (1, "prev_hash", "none")
    );
}

/// The server's own walk (`serve --verify-every`) keeps its last result and says where a
/// tampered log breaks, as `verify --all` does; the metric the alert reads follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_watch_reports_a_broken_chain() {
    eventfold_http::metrics_handle();
    let app = TestApp::new().await;
    fixture(&app.backend.events).await;
    let watch = eventfold_app::integrity::watch::ChainWatch::new(app.backend.events.clone());
    assert!(watch.last().is_none());
    let intact = watch.run_once().await.unwrap();
    assert!(intact.ok && intact.first_broken.is_none(), "{intact:?}");
    assert_eq!(
        (intact.events_checked, intact.head_position),
        (10, Some(10))
    );
    let gauge = || {
        let text = eventfold_http::metrics_handle().render();
        text.lines().find_map(|l| {
            l.strip_prefix("eventfold_chain_verify_last_ok ")?
                .parse::<f64>()
                .ok()
        })
    };
    assert_eq!(gauge(), Some(1.0));

    tamper(
        &app,
        "UPDATE events SET payload = 'X' || substr(payload, 2) WHERE position = 6",
    )
    .await;
    let broken = watch.run_once().await.unwrap();
    assert!(!broken.ok, "{broken:?}");
    let at = broken.first_broken.as_deref().unwrap();
    assert!(
        at.starts_with("chain broken at position 6 (stream a version 4)"),
        "{at}"
    );
    assert_eq!(watch.last().unwrap().first_broken.as_deref(), Some(at));
    assert_eq!(gauge(), Some(0.0));
}
