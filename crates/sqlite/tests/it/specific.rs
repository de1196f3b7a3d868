//! SQLite-only behaviour: reopening, append-only triggers, schema versions.

use eventfold_core::chain::{ChainVerifier, Scope};
use eventfold_core::{
    testkit, Actor, AppendRequest, EventStore, ExpectedVersion, NewEvent, StoreError,
};
use eventfold_sqlite::SqliteStore;

fn ev(n: u32) -> NewEvent {
    testkit::event(
        "Tested",
        Actor::parse("user:1").unwrap(),
        format!("{{\"n\":{n}}}"),
    )
}

#[tokio::test]
async fn events_survive_reopen_and_positions_continue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        store
            .append(AppendRequest::new(
                "s-1",
                ExpectedVersion::NoStream,
                vec![ev(1), ev(2)],
            ))
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.head_position().await.unwrap(), 2);
    let out = store
        .append(AppendRequest::new(
            "s-1",
            ExpectedVersion::Exact(2),
            vec![ev(3)],
        ))
        .await
        .unwrap();
    assert_eq!((out.first_position, out.stream_version), (3, 3));
}

#[tokio::test]
async fn stored_events_cannot_be_updated_or_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.db");
    let store = SqliteStore::open(&path).unwrap();
    store
        .append(AppendRequest::new(
            "s-1",
            ExpectedVersion::NoStream,
            vec![ev(1)],
        ))
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let update = conn.execute("UPDATE events SET payload = '{}'", []);
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = conn.execute("DELETE FROM events", []);
    assert!(delete.unwrap_err().to_string().contains("append-only"));
}

#[tokio::test]
async fn a_file_from_a_newer_eventfold_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.db");
    drop(SqliteStore::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    match SqliteStore::open(&path) {
        Err(StoreError::InvalidRequest(m)) => assert!(m.contains("schema version 99"), "{m}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn a_second_writer_on_the_same_file_is_seen_by_the_version_check() {
    // Two stores on one file stand for two processes (a server and a CLI import): each has its own
    // writer connection and version cache.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.db");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    a.append(AppendRequest::new(
        "s-1",
        ExpectedVersion::NoStream,
        vec![ev(1)],
    ))
    .await
    .unwrap();
    b.append(AppendRequest::new(
        "s-1",
        ExpectedVersion::Exact(1),
        vec![ev(2)],
    ))
    .await
    .unwrap();
    let stale = a
        .append(AppendRequest::new(
            "s-1",
            ExpectedVersion::Exact(1),
            vec![ev(3)],
        ))
        .await;
    assert!(
        matches!(stale, Err(StoreError::VersionConflict { actual: 2, .. })),
        "{stale:?}"
    );
    let out = a
        .append(AppendRequest::new(
            "s-1",
            ExpectedVersion::Exact(2),
            vec![ev(3)],
        ))
        .await
        .unwrap();
    assert_eq!(out.stream_version, 3);
    let versions: Vec<u64> = b
        .read_stream("s-1", 1, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);
    // Each writer linked its events to the other's (the cached log head was dropped too): one
    // hash chain over the log.
    let rows = a.read_chain(0, 10).await.unwrap();
    assert_eq!(rows.len(), 3);
    let mut log = ChainVerifier::new(Scope::Log);
    for r in &rows {
        log.check(r).unwrap_or_else(|b| panic!("{b}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(SqliteStore::open(dir.path().join("e.db")).unwrap());
    let tasks: Vec<_> = (0..256)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(AppendRequest::new(
                        format!("s-{i}"),
                        ExpectedVersion::NoStream,
                        vec![ev(i)],
                    ))
                    .await
                    .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stats = store.writer_stats();
    assert_eq!(stats.append_requests, 256);
    // One fsync per command would be 256 commits; group commit shares them.
    assert!(stats.commits < 128, "{stats:?}");
    assert_eq!(store.head_position().await.unwrap(), 256);
}

#[tokio::test]
async fn the_stream_tail_moves_into_the_stream_index_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.db");
    let config = eventfold_sqlite::SqliteConfig {
        stream_tail_rows: 8,
        ..eventfold_sqlite::SqliteConfig::default()
    };
    let store = SqliteStore::open_with(&path, config).unwrap();
    let streams = ["a", "b", "c"];
    for v in 0..10u64 {
        for s in streams {
            let expected = if v == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(v)
            };
            store
                .append(AppendRequest::new(s, expected, vec![ev(v as u32)]))
                .await
                .unwrap();
        }
    }
    let counts = |path: &std::path::Path| -> (u64, u64) {
        let conn = rusqlite::Connection::open(path).unwrap();
        let count = |t: &str| -> u64 {
            conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .unwrap()
        };
        (count("stream_tail"), count("stream_index"))
    };
    let (tail, index) = counts(&path);
    assert_eq!(tail + index, 30, "every event is in one of the two tables");
    assert!(tail < 8, "the tail is moved once it holds 8 rows: {tail}");
    assert!(index >= 23, "{index}");
    let read_all = |store: SqliteStore| async move {
        let mut out = Vec::new();
        for s in streams {
            let events = store.read_stream(s, 1, 100).await.unwrap();
            let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
            assert_eq!(versions, (1..=10).collect::<Vec<_>>(), "stream {s}");
            // From a version in the index through the tail, and one page at a time.
            let from_4: Vec<u64> = store
                .read_stream(s, 4, 3)
                .await
                .unwrap()
                .iter()
                .map(|e| e.stream_version)
                .collect();
            assert_eq!(from_4, vec![4, 5, 6], "stream {s}");
            assert_eq!(store.stream_version(s).await.unwrap(), 10);
            out.push(events);
        }
        out
    };
    let before = read_all(store.clone()).await;
    // A stale version is still refused whichever table holds the stream's head.
    let stale = store
        .append(AppendRequest::new(
            "a",
            ExpectedVersion::Exact(9),
            vec![ev(99)],
        ))
        .await;
    assert!(
        matches!(stale, Err(StoreError::VersionConflict { actual: 10, .. })),
        "{stale:?}"
    );
    drop(store);
    // Another writer with the default batch reads the same and appends after it.
    let reopened = SqliteStore::open(&path).unwrap();
    assert_eq!(read_all(reopened.clone()).await, before);
    let out = reopened
        .append(AppendRequest::new(
            "b",
            ExpectedVersion::Exact(10),
            vec![ev(11)],
        ))
        .await
        .unwrap();
    assert_eq!((out.stream_version, out.last_position), (11, 31));
}

#[tokio::test]
async fn an_append_whose_stream_tail_row_fails_writes_nothing() {
    // A stream tail row that should not be there (written by hand) makes the lone append's
    // second write fail after its event's row: the whole group rolls back.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.db");
    let store = SqliteStore::open(&path).unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO stream_tail (stream_id, stream_version, position) VALUES ('s-1', 1, 99)",
            [],
        )
        .unwrap();
    let failed = store
        .append(AppendRequest::new(
            "s-1",
            ExpectedVersion::NoStream,
            vec![ev(1)],
        ))
        .await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    assert_eq!(store.head_position().await.unwrap(), 0);
    let events: u64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(events, 0, "the event's row was rolled back with the group");
    // Another stream appends as before.
    let out = store
        .append(AppendRequest::new(
            "s-2",
            ExpectedVersion::NoStream,
            vec![ev(2)],
        ))
        .await
        .unwrap();
    assert_eq!(out.last_position, 1);
}
