//! The archive on both stores: `archive` moves the old events of closed streams into month
//! files and leaves stubs that keep the chain, stream versions and event ids; reads name the
//! archived event; `verify` still walks every link and, with the archive, proves every archived
//! event; `restore` brings events back byte for byte; a damaged archive (cut short, an event
//! changed, an event left out) and a changed stub are named; an interrupted run is finished by
//! the next.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use eventfold_app::backend::StoreUrl;
use eventfold_app::integrity::archive::{
    archive, restore, verify_with_archive, ArchiveMerge, Manifest, RunStatus,
};
use eventfold_app::integrity::verify::{verify, Target, VerifyReport};
use eventfold_core::{
    Actor, AppendRequest, EventMetadata, EventStore, ExpectedVersion, NewEvent, Projection,
    ProjectionRunner, RecordedEvent, RunnerError, StoreError,
};

use eventfold_http::testing::TestApp;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn event(event_type: &str, time: &str, n: u32) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: event_type.into(),
        schema_version: 1,
        event_time: at(time),
        metadata: EventMetadata {
            actor: Actor::system("archive-test"),
            causation_id: None,
            correlation_id: Some(uuid::Uuid::now_v7()),
            tenant_id: "default".into(),
            // Some events came through a service, so the archive keeps `via` too.
            via: n
                .is_multiple_of(3)
                .then(|| Actor::parse("service:shop-front").unwrap()),
            // And some are backfilled history.
            backfill: n.is_multiple_of(4),
        },
        payload: format!("{{\"n\":{n},\"text\":\"caf\u{e9} \\\"q\\\"\"}}"),
    }
}

/// A read model of events per stream, to see what a projection gets from a log with stubs.
struct EventsPerStream;

impl Projection for EventsPerStream {
    type Doc = u64;
    type Input = ();

    fn name(&self) -> &'static str {
        "archive_test_events_per_stream"
    }

    fn select(&self, event: &RecordedEvent) -> Result<Option<(String, ())>, String> {
        Ok(Some((event.stream_id.clone(), ())))
    }

    fn apply(&self, doc: Option<u64>, (): (), _: &RecordedEvent) -> Option<u64> {
        Some(doc.unwrap_or(0) + 1)
    }
}

/// `(checkpoint, events counted for order-a)` of [`EventsPerStream`].
async fn counted(app: &TestApp) -> (u64, Option<u64>) {
    let read_models = &app.backend.read_models;
    let checkpoint = read_models
        .projection_checkpoint(EventsPerStream.name())
        .await
        .unwrap();
    let doc = read_models
        .get_docs(EventsPerStream.name(), &["order-a".to_owned()])
        .await
        .unwrap()
        .pop()
        .map(|(_, d)| serde_json::from_str(&d).unwrap());
    (checkpoint, doc)
}

/// Appends `events` (type, time) to `stream` at its current version.
async fn append(store: &Arc<dyn EventStore>, stream: &str, events: &[(&str, &str)]) {
    let version = store.stream_version(stream).await.unwrap();
    let events = events
        .iter()
        .enumerate()
        .map(|(i, (t, time))| event(t, time, version as u32 + i as u32 + 1))
        .collect();
    store
        .append(AppendRequest::new(
            stream,
            ExpectedVersion::Exact(version),
            events,
        ))
        .await
        .unwrap();
}

/// Interleaved streams; with the cut-off 1997-03-01:
/// - order-a: completed in January: its 3 events are archived (1997-01);
/// - order-b: created in January, cancelled in February: 2 archived (1997-01, 1997-02);
/// - order-c: still open: nothing;
/// - order-d: created in February, completed in April: the February event is archived, the
///   April ones stay;
/// - account-x: accounts never close: nothing.
async fn fixture(store: &Arc<dyn EventStore>) {
    append(
        store,
        "order-a",
        &[("OrderCreated", "1997-01-02T10:00:00Z")],
    )
    .await;
    append(
        store,
        "account-x",
        &[("AccountOpened", "1997-01-02T11:00:00Z")],
    )
    .await;
    append(
        store,
        "order-b",
        &[("OrderCreated", "1997-01-05T10:00:00Z")],
    )
    .await;
    append(
        store,
        "order-a",
        &[
            ("OrderPaid", "1997-01-03T10:00:00Z"),
            ("OrderCompleted", "1997-01-09T10:00:00Z"),
        ],
    )
    .await;
    append(
        store,
        "order-c",
        &[("OrderCreated", "1997-01-20T10:00:00Z")],
    )
    .await;
    append(
        store,
        "order-d",
        &[("OrderCreated", "1997-02-11T10:00:00Z")],
    )
    .await;
    append(
        store,
        "order-b",
        &[("OrderCancelled", "1997-02-12T10:00:00Z")],
    )
    .await;
    append(
        store,
        "account-x",
        &[("FundsDeposited", "1997-02-13T11:00:00Z")],
    )
    .await;
    append(
        store,
        "order-d",
        &[
            ("OrderPaid", "1997-04-01T10:00:00Z"),
            ("OrderCompleted", "1997-04-02T10:00:00Z"),
        ],
    )
    .await;
}

/// Positions archived with the cut-off 1997-03-01: order-a 1, 4, 5; order-b 3, 8; order-d 7.
const ARCHIVED: [u64; 6] = [1, 3, 4, 5, 7, 8];

async fn all_events(store: &Arc<dyn EventStore>) -> Vec<RecordedEvent> {
    store.read_all(0, 1_000).await.unwrap()
}

async fn verify_all(store: &Arc<dyn EventStore>) -> VerifyReport {
    verify(store.clone(), &Target::All, None, &|_| {})
        .await
        .unwrap()
}

async fn verify_archive(store: &Arc<dyn EventStore>, dir: &Path) -> VerifyReport {
    let mut merge = ArchiveMerge::open(dir).unwrap();
    verify_with_archive(store.clone(), None, &mut merge, &|_| {})
        .await
        .unwrap()
}

fn cutoff() -> DateTime<Utc> {
    at("1997-03-01T00:00:00Z")
}

async fn archive_restore_round_trip(app: TestApp) {
    let store = app.backend.events.clone();
    fixture(&store).await;
    let before = all_events(&store).await;
    assert_eq!(before.len(), 11);
    let head_hash = verify_all(&store).await.head.unwrap().hash;
    let dir = tempfile::tempdir().unwrap();
    let runner = || {
        ProjectionRunner::new(store.clone(), app.backend.read_models.clone())
            .register(EventsPerStream)
    };
    let first = runner();
    first.catch_up(None, &|_, _| {}).await.unwrap();
    assert_eq!(counted(&app).await, (11, Some(3)));
    // The runner accounts for every event it read, batch by batch.
    let timings = first.timings();
    assert_eq!((timings.events, timings.batches), (11, 1));
    assert!(timings.events_per_busy_sec() > 0.0);
    first.reset_lag();
    assert_eq!(first.timings(), eventfold_core::RunnerTimings::default());

    let report = archive(store.clone(), cutoff(), dir.path(), &|_, _, _| {})
        .await
        .unwrap();
    assert_eq!(
        (report.run, report.events_archived, report.streams),
        (1, 6, 3)
    );
    assert_eq!(store.archived_after(0).await.unwrap(), 6);
    assert_eq!(store.archived_after(7).await.unwrap(), 1);
    assert_eq!(store.archived_after(8).await.unwrap(), 0);
    // A projection past the archived events goes on; one rebuilt (or new) would leave them out
    // without a word, so it is refused before anything is deleted.
    runner().catch_up(None, &|_, _| {}).await.unwrap();
    match runner().rebuild(None, &|_, _| {}).await {
        Err(RunnerError::Archived {
            projection,
            checkpoint: 0,
            archived: 6,
        }) => assert_eq!(projection, EventsPerStream.name()),
        other => panic!("expected Archived, got {other:?}"),
    }
    assert_eq!(counted(&app).await, (11, Some(3)));
    app.backend
        .read_models
        .reset_projection(EventsPerStream.name())
        .await
        .unwrap();
    let err = runner().catch_up(None, &|_, _| {}).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("at checkpoint 0 would skip 6 archived events; bring them back first"),
        "{err}"
    );
    assert_eq!(counted(&app).await, (0, None));
    assert_eq!(report.events_checked, 11);
    let months: Vec<(&str, u64, u64, u64)> = report
        .files
        .iter()
        .map(|f| {
            (
                f.month.as_str(),
                f.events,
                f.first.position,
                f.last.position,
            )
        })
        .collect();
    assert_eq!(months, [("1997-01", 4, 1, 5), ("1997-02", 2, 7, 8)]);
    let manifest = Manifest::require(dir.path()).unwrap();
    assert_eq!(manifest.runs.len(), 1);
    assert_eq!(manifest.runs[0].status, RunStatus::Complete);
    assert_eq!(manifest.runs[0].log_head.as_ref().unwrap().hash, head_hash);
    assert_eq!(manifest.runs[0].files, report.files);

    // The log reads without the archived events; their streams name the first archived one.
    let hot: Vec<u64> = all_events(&store)
        .await
        .iter()
        .map(|e| e.global_position)
        .collect();
    assert_eq!(hot, [2, 6, 9, 10, 11]);
    match store.read_stream("order-a", 1, 100).await {
        Err(StoreError::Archived {
            stream_id,
            version: 1,
            position: 1,
        }) => assert_eq!(stream_id, "order-a"),
        other => panic!("expected Archived, got {other:?}"),
    }
    assert!(matches!(
        store.read_stream_for_replay("order-d", 1, 100).await,
        Err(StoreError::Archived {
            version: 1,
            position: 7,
            ..
        })
    ));
    let tail = store
        .read_stream_for_replay("order-d", 2, 100)
        .await
        .unwrap();
    assert_eq!(tail.len(), 2);
    assert_eq!(store.read_stream("order-c", 1, 100).await.unwrap().len(), 1);
    // The stubs keep the versions: a closed stream is not opened again.
    assert_eq!(store.stream_version("order-a").await.unwrap(), 3);
    assert!(matches!(
        store
            .append(AppendRequest::new(
                "order-a",
                ExpectedVersion::NoStream,
                vec![event("OrderCreated", "1997-05-01T00:00:00Z", 1)],
            ))
            .await,
        Err(StoreError::VersionConflict { actual: 3, .. })
    ));

    // The chain still verifies, stubs included, for the log and for a stream; the archive
    // proves every archived event.
    let report = verify_all(&store).await;
    assert!(report.ok, "{report:?}");
    assert_eq!((report.events_checked, report.archived), (11, 6));
    assert_eq!(report.head.unwrap().hash, head_hash);
    let stream = verify(
        store.clone(),
        &Target::Stream("order-b".into()),
        None,
        &|_| {},
    )
    .await
    .unwrap();
    assert!(stream.ok && stream.events_checked == 2, "{stream:?}");
    let checked = verify_archive(&store, dir.path()).await;
    assert!(checked.ok, "{checked:?}");
    let summary = checked.archive.unwrap();
    assert_eq!((summary.files, summary.events_checked), (2, 6));

    // A second run finds nothing more to archive and records no run.
    let again = archive(store.clone(), cutoff(), dir.path(), &|_, _, _| {})
        .await
        .unwrap();
    assert_eq!((again.run, again.events_archived), (0, 0));
    assert_eq!(Manifest::require(dir.path()).unwrap().runs.len(), 1);

    // One stream comes back, then the rest; the log reads exactly as before.
    let one = restore(store.clone(), dir.path(), Some("order-b"), &|_, _, _| {})
        .await
        .unwrap();
    assert_eq!((one.events_restored, one.already_hot), (2, 0));
    let b: Vec<RecordedEvent> = before
        .iter()
        .filter(|e| e.stream_id == "order-b")
        .cloned()
        .collect();
    assert_eq!(store.read_stream("order-b", 1, 100).await.unwrap(), b);
    let rest = restore(store.clone(), dir.path(), None, &|_, _, _| {})
        .await
        .unwrap();
    assert_eq!(
        (rest.files, rest.events_restored, rest.already_hot),
        (2, 4, 2)
    );
    assert_eq!(all_events(&store).await, before);
    let report = verify_all(&store).await;
    assert!(report.ok && report.archived == 0, "{report:?}");
    // Everything back, the projection rebuilds over every event.
    assert_eq!(store.archived_after(0).await.unwrap(), 0);
    assert_eq!(runner().rebuild(None, &|_, _| {}).await.unwrap(), 11);
    assert_eq!(counted(&app).await, (11, Some(3)));
    // Restored events still match the archive that holds them.
    assert!(verify_archive(&store, dir.path()).await.ok);

    // Archived again, they go into the files of a second run.
    let second = archive(store.clone(), cutoff(), dir.path(), &|_, _, _| {})
        .await
        .unwrap();
    assert_eq!((second.run, second.events_archived), (2, 6));
    assert!(second.files.iter().all(|f| f.name.contains(".r2.")));
    let checked = verify_archive(&store, dir.path()).await;
    assert!(checked.ok, "{checked:?}");
    assert_eq!(checked.archive.unwrap().events_checked, 12);
}

/// Runs `statement` directly on the store's database, append-only trigger on.
async fn execute(app: &TestApp, statement: &str) -> Result<(), String> {
    match &app.backend.url {
        StoreUrl::Sqlite(path) => rusqlite::Connection::open(path)
            .unwrap()
            .execute_batch(statement)
            .map_err(|e| e.to_string()),
        StoreUrl::Postgres(url) => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::raw_sql(statement)
                .execute(&mut conn)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        StoreUrl::Nats(_) => {
            unreachable!("these tests change SQL rows: SQLite and PostgreSQL only")
        }
    }
}

/// Rewrites `name` in `dir` as gzip of `lines` and puts its new checksum, size and event count
/// into the manifest: what an intruder with write access to the archive could do.
fn rewrite_file(dir: &Path, name: &str, lines: &[String]) {
    use sha2::Digest;
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for l in lines {
        gz.write_all(l.as_bytes()).unwrap();
        gz.write_all(b"\n").unwrap();
    }
    let bytes = gz.finish().unwrap();
    std::fs::write(dir.join(name), &bytes).unwrap();
    let mut manifest = Manifest::require(dir).unwrap();
    for run in &mut manifest.runs {
        for f in &mut run.files {
            if f.name == name {
                f.sha256 = hex::encode(sha2::Sha256::digest(&bytes));
                f.bytes = bytes.len() as u64;
                f.events = lines.len() as u64;
            }
        }
    }
    manifest.save(dir).unwrap();
}

fn read_lines(path: &Path) -> Vec<String> {
    use std::io::BufRead;
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap());
    std::io::BufReader::new(gz)
        .lines()
        .map(Result::unwrap)
        .collect()
}

async fn damage_is_named(app: TestApp) {
    let store = app.backend.events.clone();
    fixture(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let report = archive(store.clone(), cutoff(), dir.path(), &|_, _, _| {})
        .await
        .unwrap();
    let january = report.files[0].name.clone();
    let path = dir.path().join(&january);
    let original = std::fs::read(&path).unwrap();
    let lines = read_lines(&path);

    // Cut short: the checksum names the file, and nothing is restored.
    std::fs::write(&path, &original[..original.len() - 20]).unwrap();
    let err = ArchiveMerge::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains(&january) && err.contains("cut short"), "{err}");
    let err = restore(store.clone(), dir.path(), None, &|_, _, _| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&january), "{err}");
    assert_eq!(all_events(&store).await.len(), 5);

    // Cut short with a matching checksum: the decompressor names the file.
    let manifest_before = Manifest::require(dir.path()).unwrap();
    rewrite_file(dir.path(), &january, &lines);
    let fixed = std::fs::read(&path).unwrap();
    std::fs::write(&path, &fixed[..fixed.len() - 12]).unwrap();
    {
        use sha2::Digest;
        let mut m = Manifest::require(dir.path()).unwrap();
        let cut = std::fs::read(&path).unwrap();
        m.runs[0].files[0].sha256 = hex::encode(sha2::Sha256::digest(&cut));
        m.runs[0].files[0].bytes = cut.len() as u64;
        m.save(dir.path()).unwrap();
    }
    let err = match ArchiveMerge::open(dir.path()) {
        Err(e) => format!("{e:#}"),
        Ok(mut merge) => verify_with_archive(store.clone(), None, &mut merge, &|_| {})
            .await
            .unwrap_err()
            .to_string(),
    };
    assert!(err.contains(&january), "{err}");

    // One payload changed, its checksum fixed in the manifest: the event is named.
    let mut changed = lines.clone();
    // "café" is in the payload only (ids and hashes are hex).
    changed[1] = changed[1].replacen("caf\u{e9}", "cafe", 1);
    assert_ne!(changed[1], lines[1]);
    rewrite_file(dir.path(), &january, &changed);
    let report = verify_archive(&store, dir.path()).await;
    let broken = report.first_broken.expect("a changed event is caught");
    assert_eq!((broken.position, broken.field.as_str()), (3, "archive"));
    assert!(broken.expected.contains("content digest"), "{broken:?}");
    assert!(broken.found.contains(&january), "{broken:?}");
    let err = restore(store.clone(), dir.path(), None, &|_, _, _| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("position 3") && err.contains(&january),
        "{err}"
    );
    assert_eq!(all_events(&store).await.len(), 5);

    // One event left out: its stub has no file.
    let mut fewer = lines.clone();
    fewer.remove(2);
    rewrite_file(dir.path(), &january, &fewer);
    let broken = verify_archive(&store, dir.path())
        .await
        .first_broken
        .unwrap();
    assert_eq!(
        (broken.position, broken.found.as_str()),
        (4, "no file holds it")
    );

    // The intact file again: everything proves.
    std::fs::write(&path, &original).unwrap();
    manifest_before.save(dir.path()).unwrap();
    assert!(verify_archive(&store, dir.path()).await.ok);

    // In the database: the trigger refuses every change but archive and restore...
    for statement in [
        "UPDATE events SET actor = 'user:evil' WHERE position = 1",
        "UPDATE events SET payload = '{}' WHERE position = 2",
        "UPDATE events SET payload = '' WHERE position = 2",
        "UPDATE events SET archived_digest = NULL WHERE position = 1",
        "DELETE FROM events WHERE position = 1",
    ] {
        let err = execute(&app, statement).await.unwrap_err();
        assert!(err.contains("append-only"), "{statement}: {err}");
    }
    // ...and a stub's digest changed behind its back breaks the chain there.
    let trigger_off = match app.backend.url {
        StoreUrl::Sqlite(_) => {
            "DROP TRIGGER events_are_append_only_update; \
             UPDATE events SET archived_digest = zeroblob(32) WHERE position = 4"
        }
        StoreUrl::Postgres(_) => {
            "ALTER TABLE events DISABLE TRIGGER events_are_append_only; \
             UPDATE events SET archived_digest = decode(repeat('00', 32), 'hex') WHERE position = 4"
        }
        StoreUrl::Nats(_) => {
            unreachable!("these tests change SQL rows: SQLite and PostgreSQL only")
        }
    };
    execute(&app, trigger_off).await.unwrap();
    let broken = verify_all(&store).await.first_broken.unwrap();
    assert_eq!((broken.position, broken.field.as_str()), (4, "hash"));
    // A hot payload emptied behind the trigger's back is not taken for an archived stub (a
    // replay tells stubs by their empty payload): the replay names it as corrupt.
    execute(&app, "UPDATE events SET payload = '' WHERE position = 2")
        .await
        .unwrap();
    match store.read_stream_for_replay("account-x", 1, 100).await {
        Err(StoreError::Corrupt(m)) => assert!(
            m.contains("account-x")
                && m.contains("version 1 (position 2)")
                && m.contains("empty payload but is not archived"),
            "{m}"
        ),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

async fn an_interrupted_run_is_finished_by_the_next(app: TestApp) {
    let store = app.backend.events.clone();
    fixture(&store).await;
    let dir = tempfile::tempdir().unwrap();
    archive(store.clone(), cutoff(), dir.path(), &|_, _, _| {})
        .await
        .unwrap();
    // As if the process died after the files and the manifest, before the stubs: the events
    // are hot and the run says `writing`.
    restore(store.clone(), dir.path(), None, &|_, _, _| {})
        .await
        .unwrap();
    let mut manifest = Manifest::require(dir.path()).unwrap();
    manifest.runs[0].status = RunStatus::Writing;
    manifest.save(dir.path()).unwrap();
    // Meanwhile its events are hot and still prove.
    assert!(verify_archive(&store, dir.path()).await.ok);

    let report = archive(store.clone(), cutoff(), dir.path(), &|_, _, _| {})
        .await
        .unwrap();
    assert_eq!(report.events_finished_from_earlier_run, 6);
    assert_eq!((report.run, report.events_archived), (0, 0));
    let manifest = Manifest::require(dir.path()).unwrap();
    assert_eq!(manifest.runs.len(), 1);
    assert_eq!(manifest.runs[0].status, RunStatus::Complete);
    let positions: Vec<u64> = store
        .read_chain(0, 100)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.is_archived())
        .map(|r| r.position)
        .collect();
    assert_eq!(positions, ARCHIVED);
    assert!(verify_archive(&store, dir.path()).await.ok);
}

eventfold_http::on_both_stores!(
    [flavor = "multi_thread", worker_threads = 2]
    sqlite_archive_and_restore_round_trip,
    postgres_archive_and_restore_round_trip,
    archive_restore_round_trip
);

/// On NATS, archiving deletes the messages and keeps the stubs in the read-model store; a
/// restored event lives there too. The same round trip holds, and the JetStream stream no
/// longer holds the archived messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_archive_and_restore_round_trip() {
    archive_restore_round_trip(TestApp::nats().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_archived_messages_leave_jetstream_and_a_new_store_handle_reads_the_stubs() {
    use eventfold_app::backend::{Backend, OpenOptions};
    let db = eventfold_postgres::testing::fresh_db().await;
    let (url, _stream) = eventfold_nats::testing::fresh_url();
    let options = OpenOptions {
        read_models: Some(db.url.clone()),
        ..Default::default()
    };
    let first = Backend::open_with(&url, &options).await.unwrap();
    let store = first.events.clone();
    fixture(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let before_chain = store.read_chain(0, 100).await.unwrap();
    archive(store.clone(), cutoff(), dir.path(), &|_, _, _| {})
        .await
        .unwrap();
    let nats = eventfold_nats::NatsUrl::parse(&url).unwrap();
    let client = async_nats::connect(&nats.server).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(&nats.stream).await.unwrap();
    let info = stream.info().await.unwrap();
    // 11 events, 6 archived: 5 messages left, the last sequence unchanged.
    assert_eq!((info.state.messages, info.state.last_sequence), (5, 11));
    for p in ARCHIVED {
        assert!(
            stream.direct_get(p).await.is_err(),
            "message {p} is still there"
        );
    }
    // A second handle on the same store (a restarted process) reads the same log: stubs in
    // the chain, hot events in the log, stream versions kept, appends after a fully archived
    // stream refused at its version.
    let other = Backend::open_with(&url, &options).await.unwrap().events;
    let chain = other.read_chain(0, 100).await.unwrap();
    assert_eq!(chain.len(), 11);
    let stubs: Vec<u64> = chain
        .iter()
        .filter(|r| r.is_archived())
        .map(|r| r.position)
        .collect();
    assert_eq!(stubs, ARCHIVED);
    for (a, b) in chain.iter().zip(&before_chain) {
        assert_eq!(
            (a.position, &a.hash, &a.prev_hash),
            (b.position, &b.hash, &b.prev_hash)
        );
    }
    assert_eq!(other.stream_version("order-a").await.unwrap(), 3);
    assert_eq!(other.stream_version("order-b").await.unwrap(), 2);
    assert!(matches!(
        other
            .append(AppendRequest::new(
                "order-b",
                ExpectedVersion::Exact(1),
                vec![event("OrderCreated", "1997-05-01T00:00:00Z", 9)],
            ))
            .await,
        Err(StoreError::VersionConflict { actual: 2, .. })
    ));
    // The stream goes on after its archived last event, the chain with it. The first handle's
    // appender has order-b cached at its deleted last message: the server refuses that
    // subject sequence once, and the appender reads the head again.
    let out = store
        .append(AppendRequest::new(
            "order-b",
            ExpectedVersion::Exact(2),
            vec![event("OrderNoted", "1997-05-01T00:00:00Z", 10)],
        ))
        .await
        .unwrap();
    assert_eq!((out.stream_version, out.first_position), (3, 12));
    // The second handle saw order-b at version 2: its conflict is checked against the log's
    // end before it stands, so it appends after the first handle's event.
    let out = other
        .append(AppendRequest::new(
            "order-b",
            ExpectedVersion::Exact(3),
            vec![event("OrderNoted", "1997-05-02T00:00:00Z", 11)],
        ))
        .await
        .unwrap();
    assert_eq!((out.stream_version, out.first_position), (4, 13));
    for handle in [&store, &other] {
        let report = verify_all(handle).await;
        assert!(report.ok && report.events_checked == 13, "{report:?}");
        assert_eq!(handle.stream_version("order-b").await.unwrap(), 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_an_interrupted_run_is_finished_by_the_next() {
    an_interrupted_run_is_finished_by_the_next(TestApp::nats().await).await;
}

eventfold_http::on_both_stores!(
    [flavor = "multi_thread", worker_threads = 2]
    sqlite_a_damaged_archive_or_stub_is_named,
    postgres_a_damaged_archive_or_stub_is_named,
    damage_is_named
);

eventfold_http::on_both_stores!(
    [flavor = "multi_thread", worker_threads = 2]
    sqlite_an_interrupted_run_is_finished_by_the_next,
    postgres_an_interrupted_run_is_finished_by_the_next,
    an_interrupted_run_is_finished_by_the_next
);

fn eventfold(store: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_eventfold"))
        .args(args)
        .env("EVENTFOLD_STORE", store)
        .env_remove("RUST_LOG")
        .output()
        .expect("run eventfold")
}

fn ok_json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn failure(out: &std::process::Output) -> String {
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The CLI end to end on imported CDNOW orders: archive, a history that names the archive,
/// verify with the archive, restore, bad options named.
#[test]
fn the_cli_archives_verifies_and_restores_imported_orders() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("cli.db").display());
    let file = dir.path().join("cdnow.txt");
    std::fs::write(
        &file,
        " customer_id  date number_of_cds  dollar_value\r\n 00001 19970101  1   11.77\r\n \
         00002 19970215  2   20.00\r\n 00003 19980301  1    9.99\r\n",
    )
    .unwrap();
    ok_json(&eventfold(
        &store,
        &[
            "import",
            "cdnow",
            file.to_str().unwrap(),
            "--backfill",
            "--json",
        ],
    ));
    let cold = dir.path().join("cold");
    let cold = cold.to_str().unwrap();

    let report = ok_json(&eventfold(
        &store,
        &["archive", "--before", "1997-03-01", "--to", cold, "--json"],
    ));
    // One event per imported sale (`OrderRecorded`, which closes the order).
    assert_eq!(report["events_archived"], 2, "{report}");
    assert_eq!(report["streams"], 2);
    let months: Vec<&str> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["month"].as_str().unwrap())
        .collect();
    assert_eq!(months, ["1997-01", "1997-02"]);

    let order = "order-cdnow-00001-19970101-1";
    let err = failure(&eventfold(&store, &["history", order]));
    assert!(
        err.contains("archived") && err.contains("eventfold restore"),
        "{err}"
    );
    let checked = ok_json(&eventfold(
        &store,
        &["verify", "--all", "--archive", cold, "--json"],
    ));
    assert_eq!(
        (
            checked["ok"].as_bool(),
            checked["events_checked"].as_u64(),
            checked["archived"].as_u64(),
            checked["archive"]["events_checked"].as_u64()
        ),
        (Some(true), Some(3), Some(2), Some(2)),
        "{checked}"
    );
    let err = failure(&eventfold(&store, &["projections", "rebuild"]));
    assert!(
        err.contains("would skip 2 archived events") && err.contains("eventfold restore"),
        "{err}"
    );

    let restored = ok_json(&eventfold(&store, &["restore", "--from", cold, "--json"]));
    assert_eq!(restored["events_restored"], 2, "{restored}");
    let rebuilt = ok_json(&eventfold(&store, &["projections", "rebuild", "--json"]));
    assert_eq!(rebuilt["position"], 3, "{rebuilt}");
    let history = eventfold(&store, &["history", order]);
    assert!(history.status.success());
    assert!(String::from_utf8_lossy(&history.stdout).contains("OrderRecorded"));

    let err = failure(&eventfold(
        &store,
        &["archive", "--before", "1997-13-01", "--to", cold],
    ));
    assert!(
        err.contains("--before") && err.contains("1997-13-01"),
        "{err}"
    );
    let nowhere = dir.path().join("nowhere");
    let err = failure(&eventfold(
        &store,
        &["verify", "--all", "--archive", nowhere.to_str().unwrap()],
    ));
    assert!(err.contains("not an eventfold archive"), "{err}");
}
