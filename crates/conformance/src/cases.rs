//! The conformance cases. Each takes a fresh, empty store.
//!
//! One file of about 850 lines on purpose: the suite is one list of cases that
//! `store_conformance!` expands in order, and a backend author reads it top to bottom as the
//! contract of `EventStore` and `ReadModelStore`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventfold_core::read_model::ProjectionCommit;
use eventfold_core::{
    testkit, Actor, AppendRequest, DocWrite, EventMetadata, EventStore, ExpectedVersion,
    IdempotencyRecord, NewEvent, ProjectionMaintenance, ReadModelStore, ReplayEvent, StoreError,
    StoredResponse, Subscription, RETIRED_CHECKPOINT,
};
use uuid::Uuid;

/// What a backend under test must be.
pub trait Backend: EventStore + ReadModelStore {}
impl<T: EventStore + ReadModelStore> Backend for T {}

fn event(n: u64) -> NewEvent {
    let mut e = testkit::event(
        "Tested",
        Actor::parse("user:conformance").unwrap(),
        format!("{{\"n\":{n}}}"),
    );
    e.event_time = DateTime::from_timestamp_micros(1_700_000_000_000_000 + n as i64).unwrap();
    e
}

fn events(from: u64, count: u64) -> Vec<NewEvent> {
    (from..from + count).map(event).collect()
}

async fn append<S: Backend + ?Sized>(
    store: &S,
    stream: &str,
    expected: ExpectedVersion,
    evs: Vec<NewEvent>,
) -> Result<eventfold_core::AppendOutcome, StoreError> {
    store
        .append(AppendRequest::new(stream, expected, evs))
        .await
}

fn assert_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>, want_actual: u64) {
    match r {
        Err(StoreError::VersionConflict { actual, .. }) => assert_eq!(actual, want_actual),
        other => panic!("expected a version conflict at {want_actual}, got {other:?}"),
    }
}

/// `NoStream` creates a stream once; a second `NoStream` is a conflict naming version 1.
pub async fn no_stream_then_conflict<S: Backend>(store: Arc<S>) {
    let out = append(&*store, "s-1", ExpectedVersion::NoStream, events(1, 1))
        .await
        .unwrap();
    assert_eq!(out.stream_version, 1);
    assert!(!out.duplicate);
    assert_conflict(
        append(&*store, "s-1", ExpectedVersion::NoStream, events(2, 1)).await,
        1,
    );
    assert_conflict(
        append(&*store, "s-1", ExpectedVersion::Exact(0), events(2, 1)).await,
        1,
    );
    assert_eq!(store.stream_version("s-1").await.unwrap(), 1);
}

/// `Exact(n)` appends only at version n.
pub async fn exact_version_and_conflict<S: Backend>(store: Arc<S>) {
    append(&*store, "s-1", ExpectedVersion::NoStream, events(1, 2))
        .await
        .unwrap();
    let out = append(&*store, "s-1", ExpectedVersion::Exact(2), events(3, 3))
        .await
        .unwrap();
    assert_eq!(out.stream_version, 5);
    assert_eq!(out.last_position - out.first_position, 2);
    assert_conflict(
        append(&*store, "s-1", ExpectedVersion::Exact(2), events(6, 1)).await,
        5,
    );
    assert_conflict(
        append(&*store, "s-1", ExpectedVersion::Exact(9), events(6, 1)).await,
        5,
    );
    assert_conflict(
        append(&*store, "s-2", ExpectedVersion::Exact(1), events(6, 1)).await,
        0,
    );
    assert_eq!(store.stream_version("s-2").await.unwrap(), 0);
    assert_eq!(store.read_stream("s-1", 1, 100).await.unwrap().len(), 5);
}

/// `Any` appends whatever the version.
pub async fn any_version_always_appends<S: Backend>(store: Arc<S>) {
    for i in 0..3 {
        let out = append(&*store, "s-1", ExpectedVersion::Any, events(i * 2, 2))
            .await
            .unwrap();
        assert_eq!(out.stream_version, (i + 1) * 2);
    }
}

/// A refused multi-event append leaves no event behind.
pub async fn failed_append_writes_nothing<S: Backend>(store: Arc<S>) {
    append(&*store, "s-1", ExpectedVersion::NoStream, events(1, 1))
        .await
        .unwrap();
    let before = store.head_position().await.unwrap();
    assert_conflict(
        append(&*store, "s-1", ExpectedVersion::Exact(0), events(2, 5)).await,
        1,
    );
    // The third event reuses an id already stored: the first two must not stay either.
    let stored = store.read_stream("s-1", 1, 1).await.unwrap()[0].event_id;
    let mut evs = events(10, 3);
    evs[2].event_id = stored;
    let r = append(&*store, "s-2", ExpectedVersion::NoStream, evs).await;
    assert!(matches!(r, Err(StoreError::EventIdReused { .. })), "{r:?}");
    assert_eq!(store.head_position().await.unwrap(), before);
    assert_eq!(store.stream_version("s-2").await.unwrap(), 0);
    assert!(store.read_all(0, 100).await.unwrap().len() == 1);
}

/// Malformed requests are refused with `InvalidRequest` and change nothing.
pub async fn invalid_requests_are_refused<S: Backend>(store: Arc<S>) {
    let bad = [
        AppendRequest::new("s-1", ExpectedVersion::Any, vec![]),
        AppendRequest::new("", ExpectedVersion::Any, events(1, 1)),
        AppendRequest::new("a\nb", ExpectedVersion::Any, events(1, 1)),
        AppendRequest::new("x".repeat(201), ExpectedVersion::Any, events(1, 1)),
        {
            let mut e = events(1, 2);
            e[1].event_id = e[0].event_id;
            AppendRequest::new("s-1", ExpectedVersion::Any, e)
        },
        {
            let mut e = events(1, 1);
            e[0].schema_version = 0;
            AppendRequest::new("s-1", ExpectedVersion::Any, e)
        },
        {
            let mut e = events(1, 2);
            e[1].payload.clear();
            AppendRequest::new("s-1", ExpectedVersion::Any, e)
        },
    ];
    for request in bad {
        let r = store.append(request.clone()).await;
        assert!(
            matches!(r, Err(StoreError::InvalidRequest(_))),
            "{request:?} gave {r:?}"
        );
    }
    assert_eq!(store.head_position().await.unwrap(), 0);
}

/// Reading a stream from any version returns exactly that version onwards, in order.
pub async fn read_stream_from_every_version<S: Backend>(store: Arc<S>) {
    append(&*store, "s-1", ExpectedVersion::NoStream, events(1, 4))
        .await
        .unwrap();
    append(
        &*store,
        "other-1",
        ExpectedVersion::NoStream,
        events(100, 2),
    )
    .await
    .unwrap();
    append(&*store, "s-1", ExpectedVersion::Exact(4), events(5, 6))
        .await
        .unwrap();
    for from in 1..=11 {
        let read = store.read_stream("s-1", from, 1000).await.unwrap();
        let versions: Vec<u64> = read.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, (from..=10).collect::<Vec<_>>(), "from {from}");
        assert!(read.iter().all(|e| e.stream_id == "s-1"));
        for e in &read {
            assert_eq!(e.payload, format!("{{\"n\":{}}}", e.stream_version));
        }
    }
    let limited = store.read_stream("s-1", 3, 2).await.unwrap();
    assert_eq!(
        limited.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert!(store
        .read_stream("missing-1", 1, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.stream_version("s-1").await.unwrap(), 10);
}

/// The replay read returns the same events as `read_stream`, reduced to what folding needs.
pub async fn replay_read_matches_read_stream<S: Backend>(store: Arc<S>) {
    append(&*store, "s-1", ExpectedVersion::NoStream, events(1, 7))
        .await
        .unwrap();
    append(&*store, "other-1", ExpectedVersion::NoStream, events(50, 3))
        .await
        .unwrap();
    append(&*store, "s-1", ExpectedVersion::Exact(7), events(8, 2))
        .await
        .unwrap();
    for from in 1..=10 {
        for max in [1, 3, 100] {
            let full = store.read_stream("s-1", from, max).await.unwrap();
            let replay = store
                .read_stream_for_replay("s-1", from, max)
                .await
                .unwrap();
            let want: Vec<ReplayEvent> = full.into_iter().map(ReplayEvent::from).collect();
            assert_eq!(replay, want, "from {from} max {max}");
            let mut streamed = Vec::new();
            store
                .replay_stream("s-1", from, max, &mut |e| {
                    streamed.push(e.clone());
                    Ok(())
                })
                .await
                .unwrap();
            assert_eq!(streamed, want, "replay_stream from {from} max {max}");
        }
    }
    // A sink error stops the replay and is returned; the store stays usable.
    let mut seen = 0;
    let stopped = store
        .replay_stream("s-1", 1, 100, &mut |e| {
            seen += 1;
            if e.stream_version == 4 {
                return Err(StoreError::Corrupt("stop at 4".into()));
            }
            Ok(())
        })
        .await;
    assert!(matches!(stopped, Err(StoreError::Corrupt(m)) if m == "stop at 4"));
    assert_eq!(seen, 4);
    assert_eq!(store.stream_version("s-1").await.unwrap(), 9);
    assert!(store
        .read_stream_for_replay("missing-1", 1, 10)
        .await
        .unwrap()
        .is_empty());
}

/// Reading all from any position returns exactly the later events, in strictly increasing order.
pub async fn read_all_from_every_position<S: Backend>(store: Arc<S>) {
    for i in 0..6u64 {
        let stream = format!("s-{}", i % 3);
        append(
            &*store,
            &stream,
            ExpectedVersion::Any,
            events(i * 10, 1 + i % 2),
        )
        .await
        .unwrap();
    }
    let all = store.read_all(0, 1000).await.unwrap();
    assert_eq!(all.len(), 9);
    assert!(all
        .windows(2)
        .all(|w| w[0].global_position < w[1].global_position));
    assert_eq!(
        store.head_position().await.unwrap(),
        all.last().unwrap().global_position
    );
    for (i, e) in all.iter().enumerate() {
        let after = store.read_all(e.global_position, 1000).await.unwrap();
        assert_eq!(after, all[i + 1..].to_vec());
        let two = store.read_all(e.global_position, 2).await.unwrap();
        assert_eq!(two, all[i + 1..(i + 3).min(all.len())].to_vec());
    }
    // Within a stream, global order follows stream order.
    let mut last: HashMap<&str, u64> = HashMap::new();
    for e in &all {
        let prev = last.insert(&e.stream_id, e.stream_version).unwrap_or(0);
        assert_eq!(e.stream_version, prev + 1);
    }
}

/// Every envelope field comes back as written; the store sets the ingest time.
pub async fn envelope_round_trips<S: Backend>(store: Arc<S>) {
    let before = Utc::now() - chrono::Duration::seconds(1);
    let e = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "OrderCancelled".into(),
        schema_version: 3,
        event_time: DateTime::from_timestamp_micros(852_076_800_123_456).unwrap(),
        metadata: EventMetadata {
            actor: Actor::parse("admin:support-001").unwrap(),
            causation_id: Some(Uuid::now_v7()),
            correlation_id: Some(Uuid::now_v7()),
            tenant_id: "tenant-a".into(),
            via: Some(Actor::parse("service:shop-front").unwrap()),
            backfill: true,
        },
        payload: r#"{"reason":"customer asked \"twice\"","amount":"12.30","ü":"✓"}"#.into(),
    };
    let out = append(
        &*store,
        "order-12345",
        ExpectedVersion::NoStream,
        vec![e.clone()],
    )
    .await
    .unwrap();
    let read = store.read_stream("order-12345", 1, 10).await.unwrap();
    assert_eq!(read.len(), 1);
    let r = &read[0];
    assert_eq!(r.event_id, e.event_id);
    assert_eq!(r.event_type, e.event_type);
    assert_eq!(r.schema_version, 3);
    assert_eq!(r.event_time, e.event_time);
    assert_eq!(r.metadata, e.metadata);
    assert_eq!(r.payload, e.payload);
    assert_eq!(r.stream_id, "order-12345");
    assert_eq!(r.stream_version, 1);
    assert_eq!(r.global_position, out.first_position);
    assert!(r.ingest_time >= before && r.ingest_time <= Utc::now() + chrono::Duration::seconds(1));
    assert_eq!(store.read_all(0, 10).await.unwrap(), read);
}

/// Of 16 concurrent `NoStream` appends to one stream, exactly one wins.
pub async fn concurrent_no_stream_has_one_winner<S: Backend>(store: Arc<S>) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                append(&*store, "hot-1", ExpectedVersion::NoStream, events(i, 1)).await
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::VersionConflict { actual: 1, .. }) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(store.stream_version("hot-1").await.unwrap(), 1);
}

/// 16 writers each add 10 events to one stream with read-then-`Exact` and retry on conflict: every
/// version 1..=160 holds exactly one event, and every writer's events are all there.
pub async fn concurrent_retries_on_one_stream_keep_every_version<S: Backend>(store: Arc<S>) {
    let tasks: Vec<_> = (0..16u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut conflicts = 0;
                for k in 0..10u64 {
                    loop {
                        let v = store.stream_version("hot-1").await.unwrap();
                        match append(
                            &*store,
                            "hot-1",
                            ExpectedVersion::Exact(v),
                            vec![event(w * 100 + k)],
                        )
                        .await
                        {
                            Ok(out) => {
                                assert_eq!(out.stream_version, v + 1);
                                break;
                            }
                            Err(StoreError::VersionConflict { .. }) => conflicts += 1,
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let read = store.read_stream("hot-1", 1, 1000).await.unwrap();
    assert_eq!(
        read.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        (1..=160).collect::<Vec<_>>()
    );
    let mut payloads: Vec<String> = read.iter().map(|e| e.payload.clone()).collect();
    payloads.sort();
    let mut want: Vec<String> = (0..16u64)
        .flat_map(|w| (0..10u64).map(move |k| format!("{{\"n\":{}}}", w * 100 + k)))
        .collect();
    want.sort();
    assert_eq!(payloads, want);
}

/// 16 writers × 25 appends to their own streams: the log holds all 400, each stream in order,
/// positions unique and increasing.
pub async fn concurrent_writers_to_many_streams<S: Backend>(store: Arc<S>) {
    let tasks: Vec<_> = (0..16u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for k in 0..25u64 {
                    append(
                        &*store,
                        &format!("w-{w}"),
                        ExpectedVersion::Exact(k),
                        vec![event(k)],
                    )
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let all = store.read_all(0, 10_000).await.unwrap();
    assert_eq!(all.len(), 400);
    assert!(all
        .windows(2)
        .all(|w| w[0].global_position < w[1].global_position));
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for e in &all {
        let v = versions.entry(&e.stream_id).or_insert(0);
        *v += 1;
        assert_eq!(e.stream_version, *v, "stream {}", e.stream_id);
    }
    assert!(versions.values().all(|v| *v == 25));
}

/// Appending the same events again is a no-op success; reusing an id elsewhere is refused.
pub async fn retried_append_is_idempotent<S: Backend>(store: Arc<S>) {
    let evs = events(1, 3);
    let first = append(&*store, "s-1", ExpectedVersion::NoStream, evs.clone())
        .await
        .unwrap();
    let again = append(&*store, "s-1", ExpectedVersion::NoStream, evs.clone())
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (
            again.first_position,
            again.last_position,
            again.stream_version
        ),
        (
            first.first_position,
            first.last_position,
            first.stream_version
        )
    );
    let any = append(&*store, "s-1", ExpectedVersion::Any, evs.clone())
        .await
        .unwrap();
    assert!(any.duplicate);
    assert_eq!(store.read_all(0, 100).await.unwrap().len(), 3);
    let elsewhere = append(&*store, "s-2", ExpectedVersion::Any, vec![evs[0].clone()]).await;
    assert!(
        matches!(elsewhere, Err(StoreError::EventIdReused { ref stream_id, .. }) if stream_id == "s-1"),
        "{elsewhere:?}"
    );
    let reordered = append(
        &*store,
        "s-1",
        ExpectedVersion::NoStream,
        vec![evs[1].clone(), evs[0].clone()],
    )
    .await;
    assert!(
        matches!(reordered, Err(StoreError::EventIdReused { .. })),
        "{reordered:?}"
    );
    assert_eq!(store.read_all(0, 100).await.unwrap().len(), 3);
}

/// The same append sent 8 times at once (a client retrying while the first attempt is in
/// flight): all succeed, exactly one writes, and the stream holds the events once.
pub async fn concurrent_identical_appends_write_once<S: Backend>(store: Arc<S>) {
    let evs = events(1, 2);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, evs) = (store.clone(), evs.clone());
            tokio::spawn(
                async move { append(&*store, "s-1", ExpectedVersion::NoStream, evs).await },
            )
        })
        .collect();
    let mut written = 0;
    for t in tasks {
        let outcome = t.await.unwrap().expect("every retry succeeds");
        assert_eq!(outcome.stream_version, 2);
        written += usize::from(!outcome.duplicate);
    }
    assert_eq!(written, 1);
    assert_eq!(store.read_all(0, 100).await.unwrap().len(), 2);
}

/// An idempotency key is stored with its events, once; a second use is refused and appends nothing.
pub async fn idempotency_key_is_recorded_once<S: Backend>(store: Arc<S>) {
    let record = IdempotencyRecord {
        key: "POST /accounts:abc".into(),
        fingerprint: "f1".into(),
        response: StoredResponse {
            status: 201,
            body: "{\"ok\":true}".into(),
        },
    };
    let mut request = AppendRequest::new("s-1", ExpectedVersion::NoStream, events(1, 1));
    request.idempotency = Some(record.clone());
    store.append(request).await.unwrap();
    assert_eq!(
        store.idempotency_record(&record.key).await.unwrap(),
        Some(record.clone())
    );
    let mut retry = AppendRequest::new("s-2", ExpectedVersion::NoStream, events(2, 1));
    retry.idempotency = Some(record.clone());
    let r = store.append(retry).await;
    assert!(
        matches!(r, Err(StoreError::IdempotencyKeyUsed { .. })),
        "{r:?}"
    );
    assert_eq!(store.stream_version("s-2").await.unwrap(), 0);
    // A refused append does not record its key.
    let mut refused = AppendRequest::new("s-1", ExpectedVersion::NoStream, events(3, 1));
    refused.idempotency = Some(IdempotencyRecord {
        key: "k2".into(),
        ..record
    });
    assert!(store.append(refused).await.is_err());
    assert_eq!(store.idempotency_record("k2").await.unwrap(), None);
}

/// `append_many` gives each request its own outcome.
pub async fn append_many_results_are_independent<S: Backend>(store: Arc<S>) {
    append(&*store, "s-1", ExpectedVersion::NoStream, events(1, 1))
        .await
        .unwrap();
    let results = store
        .append_many(vec![
            AppendRequest::new("s-2", ExpectedVersion::NoStream, events(2, 2)),
            AppendRequest::new("s-1", ExpectedVersion::NoStream, events(4, 1)),
            AppendRequest::new("s-2", ExpectedVersion::Exact(2), events(5, 1)),
            AppendRequest::new("s-3", ExpectedVersion::Any, vec![]),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].as_ref().unwrap().stream_version, 2);
    assert!(matches!(
        results[1],
        Err(StoreError::VersionConflict { actual: 1, .. })
    ));
    assert_eq!(results[2].as_ref().unwrap().stream_version, 3);
    assert!(matches!(results[3], Err(StoreError::InvalidRequest(_))));
    assert_eq!(store.read_all(0, 100).await.unwrap().len(), 4);
}

/// A durable subscription resumes after its committed checkpoint, delivering each event once.
pub async fn checkpoint_resume<S: Backend>(store: Arc<S>) {
    for i in 0..10 {
        append(
            &*store,
            &format!("s-{}", i % 4),
            ExpectedVersion::Any,
            events(i * 3, 3),
        )
        .await
        .unwrap();
    }
    let dyn_store: Arc<dyn EventStore> = store.clone();
    let mut sub = Subscription::durable(dyn_store.clone(), "sub-a", 7)
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.extend(sub.next_batch().await.unwrap());
    }
    sub.commit().await.unwrap();
    assert_eq!(
        store.load_checkpoint("sub-a").await.unwrap(),
        Some(seen.last().unwrap().global_position)
    );
    // Read one more batch but crash before committing it: it must be delivered again.
    let _uncommitted = sub.next_batch().await.unwrap();
    drop(sub);
    let mut resumed = Subscription::durable(dyn_store.clone(), "sub-a", 7)
        .await
        .unwrap();
    while let Some(batch) = resumed.try_next_batch().await.unwrap() {
        seen.extend(batch);
    }
    resumed.commit().await.unwrap();
    let all = store.read_all(0, 1000).await.unwrap();
    assert_eq!(seen, all);
    assert_eq!(store.load_checkpoint("sub-b").await.unwrap(), None);
    store.save_checkpoint("sub-b", 5).await.unwrap();
    store.save_checkpoint("sub-b", 9).await.unwrap();
    assert_eq!(store.load_checkpoint("sub-b").await.unwrap(), Some(9));
    let mut from_b = Subscription::durable(dyn_store, "sub-b", 100)
        .await
        .unwrap();
    let batch = from_b.next_batch().await.unwrap();
    assert_eq!(
        batch.first().unwrap().global_position,
        all[9].global_position
    );
}

/// A waiting subscriber wakes when an event is appended.
pub async fn subscription_wakes_on_append<S: Backend>(store: Arc<S>) {
    let dyn_store: Arc<dyn EventStore> = store.clone();
    let mut sub = eventfold_core::catch_up(dyn_store, 0, 10);
    let waiter = tokio::spawn(async move { sub.next_batch().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    append(&*store, "s-1", ExpectedVersion::Any, events(1, 2))
        .await
        .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("subscriber woke within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(batch.len(), 2);
}

/// Projection commits write documents and checkpoint together, and refuse a moved checkpoint.
pub async fn projection_commit_checks_checkpoint<S: Backend>(store: Arc<S>) {
    let commit = |from, to, writes: Vec<(&str, Option<&str>)>| ProjectionCommit {
        projection: "p".into(),
        writes: writes
            .into_iter()
            .map(|(k, d)| DocWrite {
                key: k.into(),
                doc: d.map(Into::into),
            })
            .collect(),
        from_checkpoint: from,
        to_checkpoint: to,
    };
    assert_eq!(store.projection_checkpoint("p").await.unwrap(), 0);
    store
        .commit_projections(vec![commit(
            0,
            5,
            vec![("a|1", Some("1")), ("a|2", Some("2")), ("b|1", Some("3"))],
        )])
        .await
        .unwrap();
    assert_eq!(store.projection_checkpoint("p").await.unwrap(), 5);
    let moved = store
        .commit_projections(vec![commit(0, 9, vec![("a|1", Some("99"))])])
        .await;
    assert!(
        matches!(moved, Err(StoreError::CheckpointMoved { actual: 5, .. })),
        "{moved:?}"
    );
    let docs = store
        .get_docs("p", &["a|1".into(), "zz".into()])
        .await
        .unwrap();
    assert_eq!(docs, vec![("a|1".to_string(), "1".to_string())]);
    store
        .commit_projections(vec![commit(5, 7, vec![("a|1", None), ("a|3", Some("4"))])])
        .await
        .unwrap();
    let range = store.range_docs("p", "a|", "a|~", 10).await.unwrap();
    assert_eq!(
        range,
        vec![("a|2".into(), "2".into()), ("a|3".into(), "4".into())]
    );
    assert!(store
        .range_docs("other", "", "~", 10)
        .await
        .unwrap()
        .is_empty());
    // Ranges are in byte order whatever the database's collation, and page with `key_after`.
    let keys = ["k_1", "kb", "k-1", "kB", "k.1"];
    store
        .commit_projections(vec![commit(
            7,
            8,
            keys.iter().map(|k| (*k, Some("0"))).collect(),
        )])
        .await
        .unwrap();
    let (mut start, mut paged) = ("k".to_string(), vec![]);
    loop {
        let page = store
            .range_docs("p", &start, "k\u{10ffff}", 2)
            .await
            .unwrap();
        let Some((last, _)) = page.last() else { break };
        start = eventfold_core::read_model::key_after(last);
        paged.extend(page.into_iter().map(|(k, _)| k));
    }
    let mut sorted: Vec<String> = keys.iter().map(|k| (*k).to_string()).collect();
    sorted.sort();
    assert_eq!(paged, sorted);
    store.reset_projection("p").await.unwrap();
    assert_eq!(store.projection_checkpoint("p").await.unwrap(), 0);
    assert!(store.range_docs("p", "", "~", 10).await.unwrap().is_empty());
}

/// A range read returns every document in it up to the limit, in key order, however many there
/// are (a store may read small ranges one way and large ones another).
pub async fn ranges_of_every_size_read_whole<S: Backend>(store: Arc<S>) {
    let keys: Vec<String> = (0..600).map(|n| format!("r|{n:04}")).collect();
    store
        .commit_projections(vec![ProjectionCommit {
            projection: "ranges".into(),
            writes: keys
                .iter()
                .map(|k| DocWrite {
                    key: k.clone(),
                    doc: Some(format!("{{\"k\":\"{k}\"}}")),
                })
                .collect(),
            from_checkpoint: 0,
            to_checkpoint: 1,
        }])
        .await
        .unwrap();
    for (from, to, limit, want) in [
        ("r|", "r|~", 10_000, 600),
        ("r|", "r|~", 600, 600),
        ("r|", "r|~", 300, 300),
        ("r|", "r|~", 257, 257),
        ("r|", "r|~", 256, 256),
        ("r|", "r|~", 3, 3),
        ("r|0100", "r|0399", 10_000, 300),
        ("r|0100", "r|0355", 10_000, 256),
        ("r|0100", "r|0356", 10_000, 257),
        ("r|0100", "r|0100", 10_000, 1),
        ("s|", "s|~", 10_000, 0),
    ] {
        let got = store.range_docs("ranges", from, to, limit).await.unwrap();
        let first = keys.iter().position(|k| k.as_str() >= from).unwrap_or(0);
        let expected: Vec<(String, String)> = keys[first..]
            .iter()
            .filter(|k| k.as_str() <= to)
            .take(want)
            .map(|k| (k.clone(), format!("{{\"k\":\"{k}\"}}")))
            .collect();
        assert_eq!(got.len(), want, "{from}..={to} limit {limit}");
        assert_eq!(got, expected, "{from}..={to} limit {limit}");
    }
}

/// Documents and a stream's version read together, where a store offers that, agree with the
/// two reads made apart: the documents found (none for a missing key), the version (0 for a
/// stream that does not exist).
pub async fn docs_and_stream_version_agree_with_separate_reads<S: Backend>(store: Arc<S>) {
    append(&*store, "order-1", ExpectedVersion::NoStream, events(0, 3))
        .await
        .unwrap();
    store
        .commit_projections(vec![ProjectionCommit {
            projection: "summary".into(),
            writes: vec![DocWrite {
                key: "1".into(),
                doc: Some("{\"version\":3}".into()),
            }],
            from_checkpoint: 0,
            to_checkpoint: 3,
        }])
        .await
        .unwrap();
    for (keys, stream) in [
        (vec!["1".to_string()], "order-1"),
        (vec!["1".to_string(), "2".to_string()], "order-1"),
        (vec!["2".to_string()], "order-2"),
        (vec![], "order-1"),
    ] {
        let Some((docs, version)) = store
            .docs_and_stream_version("summary", &keys, stream)
            .await
            .unwrap()
        else {
            // This store reads them apart: nothing more to compare.
            return;
        };
        let mut apart = store.get_docs("summary", &keys).await.unwrap();
        let mut docs = docs;
        docs.sort();
        apart.sort();
        assert_eq!(docs, apart, "{keys:?}");
        assert_eq!(
            version,
            store.stream_version(stream).await.unwrap(),
            "{stream}"
        );
    }
}

/// A copy built beside a projection replaces it in one step (documents and checkpoint, the
/// copy left empty); a retired projection has no documents and refuses every commit.
pub async fn projection_replace_and_retire<S: Backend>(store: Arc<S>) {
    let commit = |projection: &str, from, to, keys: &[&str]| ProjectionCommit {
        projection: projection.into(),
        writes: keys
            .iter()
            .map(|k| DocWrite {
                key: (*k).into(),
                doc: Some(format!("\"{projection}\"")),
            })
            .collect(),
        from_checkpoint: from,
        to_checkpoint: to,
    };
    store
        .commit_projections(vec![
            commit("v", 0, 9, &["a", "b"]),
            commit("v~copy", 0, 7, &["b", "c"]),
        ])
        .await
        .unwrap();
    store
        .maintain_projection(ProjectionMaintenance::Replace {
            target: "v".into(),
            source: "v~copy".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        store.range_docs("v", "", "~", 10).await.unwrap(),
        vec![
            ("b".to_string(), "\"v~copy\"".to_string()),
            ("c".to_string(), "\"v~copy\"".to_string())
        ]
    );
    assert_eq!(store.projection_checkpoint("v").await.unwrap(), 7);
    assert_eq!(store.projection_checkpoint("v~copy").await.unwrap(), 0);
    assert!(store
        .range_docs("v~copy", "", "~", 10)
        .await
        .unwrap()
        .is_empty());
    // A runner that was at 9 is refused and finds the copy's checkpoint.
    let stale = store
        .commit_projections(vec![commit("v", 9, 10, &["d"])])
        .await;
    assert!(
        matches!(stale, Err(StoreError::CheckpointMoved { actual: 7, .. })),
        "{stale:?}"
    );
    // Replacing with a copy that has nothing leaves nothing.
    store
        .maintain_projection(ProjectionMaintenance::Replace {
            target: "v".into(),
            source: "v~none".into(),
        })
        .await
        .unwrap();
    assert_eq!(store.projection_checkpoint("v").await.unwrap(), 0);
    assert!(store.range_docs("v", "", "~", 10).await.unwrap().is_empty());

    store
        .commit_projections(vec![commit("w", 0, 4, &["a"])])
        .await
        .unwrap();
    store
        .maintain_projection(ProjectionMaintenance::Retire("w".into()))
        .await
        .unwrap();
    assert!(store.range_docs("w", "", "~", 10).await.unwrap().is_empty());
    assert_eq!(
        store.projection_checkpoint("w").await.unwrap(),
        RETIRED_CHECKPOINT
    );
    let late = store
        .commit_projections(vec![commit("w", 4, 5, &["b"])])
        .await;
    assert!(
        matches!(late, Err(StoreError::CheckpointMoved { .. })),
        "{late:?}"
    );
    assert!(store.range_docs("w", "", "~", 10).await.unwrap().is_empty());
    // A reset brings it back to position 0.
    store.reset_projection("w").await.unwrap();
    assert_eq!(store.projection_checkpoint("w").await.unwrap(), 0);
}

/// Fencing tokens: an append with a token lower than one accepted before for the resource
/// is refused and writes nothing; equal and higher tokens pass; resources are independent; in one
/// `append_many` group a lower token after a higher one is refused too.
pub async fn fencing_token_refuses_a_stale_holder<S: Backend>(store: Arc<S>) {
    let fenced = |stream: &str, expected: ExpectedVersion, n: u64, token: u64| {
        AppendRequest::new(stream, expected, events(n, 1)).with_fence("lock:stock:sku-1", token)
    };
    // Holder 1 writes; holder 2 (a later grant) writes; holder 1, paused past its lease, tries.
    store
        .append(fenced("stock-sku-1", ExpectedVersion::NoStream, 0, 1))
        .await
        .unwrap();
    store
        .append(fenced("stock-sku-1", ExpectedVersion::Exact(1), 1, 2))
        .await
        .unwrap();
    let late = store
        .append(fenced("stock-sku-1", ExpectedVersion::Any, 2, 1))
        .await;
    match late {
        Err(StoreError::Fenced {
            resource,
            presented: 1,
            current: 2,
        }) => assert_eq!(resource, "lock:stock:sku-1"),
        other => panic!("a stale token must be fenced, got {other:?}"),
    }
    assert_eq!(store.head_position().await.unwrap(), 2, "nothing written");
    // The current holder writes again with the same token; another resource is independent.
    store
        .append(fenced("stock-sku-1", ExpectedVersion::Exact(2), 3, 2))
        .await
        .unwrap();
    store
        .append(
            AppendRequest::new("stock-sku-2", ExpectedVersion::NoStream, events(4, 1))
                .with_fence("lock:stock:sku-2", 1),
        )
        .await
        .unwrap();
    // In one group: token 5 is accepted, then token 4 for the same resource is refused.
    let results = store
        .append_many(vec![
            fenced("stock-sku-1", ExpectedVersion::Exact(3), 5, 5),
            fenced("other-stream", ExpectedVersion::NoStream, 6, 4),
        ])
        .await
        .unwrap();
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(results[1], Err(StoreError::Fenced { current: 5, .. })),
        "{:?}",
        results[1]
    );
    assert_eq!(store.head_position().await.unwrap(), 5);
    // A fence that cannot be stored is refused as invalid.
    let bad = store
        .append(
            AppendRequest::new("stock-sku-3", ExpectedVersion::Any, events(7, 1)).with_fence("", 1),
        )
        .await;
    assert!(matches!(bad, Err(StoreError::InvalidRequest(m)) if m.contains("fence.resource")));
}

/// Every append path keeps one hash chain: concurrent writers with exact versions, `Any`,
/// fenced and multi-event appends, a refused append inside a group and a retry; the stored links
/// verify for the whole log and for each stream.
pub async fn appends_keep_one_hash_chain<S: Backend>(store: Arc<S>) {
    use eventfold_core::chain::{ChainVerifier, Scope};
    let tasks: Vec<_> = (0..8u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                // Each writer owns its stream, so it knows the version to expect.
                let mut version = 0;
                for k in 0..10u64 {
                    let stream = format!("c-{w}");
                    let request = match k % 3 {
                        0 => AppendRequest::new(stream, ExpectedVersion::Any, events(k, 2)),
                        1 => AppendRequest::new(stream, ExpectedVersion::Any, vec![event(k)])
                            .with_fence(format!("lock:{w}"), k),
                        _ => AppendRequest::new(
                            stream,
                            ExpectedVersion::Exact(version),
                            events(k, 2),
                        ),
                    };
                    version = store.append(request).await.unwrap().stream_version;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let retried = AppendRequest::new("c-x", ExpectedVersion::NoStream, events(100, 3));
    let results = store
        .append_many(vec![
            retried.clone(),
            AppendRequest::new("c-0", ExpectedVersion::Exact(0), vec![event(200)]),
            AppendRequest::new("c-x", ExpectedVersion::Exact(3), vec![event(201)]),
        ])
        .await
        .unwrap();
    assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok());
    assert!(store.append(retried).await.unwrap().duplicate);

    let rows = store.read_chain(0, 10_000).await.unwrap();
    let head = store.head_position().await.unwrap();
    assert_eq!(rows.len() as u64, head);
    let mut log = ChainVerifier::new(Scope::Log);
    for r in &rows {
        log.check(r).unwrap_or_else(|b| panic!("{b}"));
    }
    for stream in ["c-0", "c-7", "c-x"] {
        let rows = store.read_stream_chain(stream, 1, 10_000).await.unwrap();
        assert!(!rows.is_empty());
        let mut one = ChainVerifier::new(Scope::Stream);
        for r in &rows {
            one.check(r).unwrap_or_else(|b| panic!("{stream}: {b}"));
        }
    }
    // Reading from a later version or position gives the same rows.
    let tail = store.read_chain(head - 2, 10).await.unwrap();
    assert_eq!(tail, rows[rows.len() - 2..]);
    // Read into rows that hold others (more of them, with every optional column set), the same
    // rows come back: nothing of the old ones is left over.
    let mut reused = rows.iter().rev().cloned().collect::<Vec<_>>();
    for r in &mut reused {
        r.causation_id = Some(vec![7; 16]);
        r.correlation_id = Some(vec![8; 16]);
        r.archived_digest = Some(vec![9; 32]);
        r.payload.extend_from_slice(b"left over");
    }
    store.read_chain_into(5, 4, &mut reused).await.unwrap();
    assert_eq!(reused, rows[5..9]);
    store.read_chain_into(head, 10, &mut reused).await.unwrap();
    assert!(reused.is_empty());
    // And into fewer rows than the read returns (here none), it grows.
    store.read_chain_into(0, 3, &mut reused).await.unwrap();
    assert_eq!(reused, rows[..3]);
}
