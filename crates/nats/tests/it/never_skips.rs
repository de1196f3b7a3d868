//! The global position never skips (the Marten / Axon / Eventuous bug), on JetStream: 32
//! concurrent writers in four store instances (four "processes") sharing one stream and one
//! PostgreSQL read-model store, rogue publishers whose batches are refused or never committed,
//! random delays, and 4 subscribers tailing the log. Every subscriber must see every committed
//! event exactly once, in position order, and nothing of a batch that was not committed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::message::OutboundMessage;
use eventfold_core::{
    catch_up, testkit, Actor, AppendRequest, EventStore, ExpectedVersion, NewEvent, ReadModelStore,
};
use eventfold_nats::NatsStore;
use eventfold_postgres::PostgresStore;
use jetstream_extra::batch_publish::BatchPublishExt;

const WRITERS: u64 = 32;
const PER_WRITER: u64 = 30;

fn ev(writer: u64, n: u64) -> NewEvent {
    testkit::event(
        "Written",
        Actor::parse("user:writer").unwrap(),
        format!("{{\"w\":{writer},\"n\":{n}}}"),
    )
}

/// A little jitter from the clock, so writers and rogues interleave differently each run.
fn jitter(max_us: u64) -> Duration {
    let nanos = u64::from(chrono::Utc::now().timestamp_subsec_nanos());
    Duration::from_micros(nanos % max_us.max(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_see_every_committed_event_once_in_order_and_nothing_uncommitted() {
    let db = eventfold_postgres::testing::fresh_db().await;
    let (url, _stream) = eventfold_nats::testing::fresh_url();
    let read_models: Arc<dyn ReadModelStore> =
        Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(Arc::new(
            NatsStore::connect(&url, read_models.clone()).await.unwrap(),
        ));
    }
    let stream_name = stores[0].stream_name().to_owned();
    // Every third append holds two events (one atomic batch).
    let total = (WRITERS * (PER_WRITER + PER_WRITER / 3)) as usize;
    let subscribers: Vec<_> = (0..4)
        .map(|i| {
            let store: Arc<dyn EventStore> = stores[i].clone();
            tokio::spawn(async move {
                let mut sub = catch_up(store, 0, 37);
                let mut seen = Vec::new();
                while seen.len() < total {
                    let batch = tokio::time::timeout(Duration::from_secs(30), sub.next_batch())
                        .await
                        .expect("subscriber stalled")
                        .unwrap();
                    seen.extend(batch);
                }
                seen
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = stores[(w % 4) as usize].clone();
            tokio::spawn(async move {
                let mut version = 0;
                for n in 0..PER_WRITER {
                    tokio::time::sleep(jitter(2_000)).await;
                    let expected = if version == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(version)
                    };
                    let mut events = vec![ev(w, n)];
                    if n % 3 == 2 {
                        events.push(ev(w, n + 1000));
                    }
                    let count = events.len() as u64;
                    let request = AppendRequest::new(format!("w-{w}"), expected, events);
                    let outcome = store.append(request).await.unwrap();
                    assert_eq!(outcome.stream_version, version + count);
                    version = outcome.stream_version;
                }
            })
        })
        .collect();
    // Rogue publishers on the store's subjects: batches refused for a stale expected sequence,
    // and batches staged but never committed. Neither may ever be seen.
    let client = async_nats::connect(eventfold_nats::testing::server())
        .await
        .unwrap();
    let rogues: Vec<_> = (0..4)
        .map(|r| {
            let js = jetstream::new(client.clone());
            let subject = format!("{stream_name}.e.rogue-{r}");
            tokio::spawn(async move {
                for k in 0..20u64 {
                    let message = || OutboundMessage {
                        subject: subject.clone().into(),
                        payload: bytes::Bytes::from_static(b"{\"rogue\":true}\n{}"),
                        headers: None,
                    };
                    let mut batch = js.batch_publish().build();
                    let mut first = message();
                    let mut headers = async_nats::HeaderMap::new();
                    // A sequence the log never reaches in this test: the commit is refused.
                    headers.insert(
                        async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
                        "1000000000",
                    );
                    first.headers = Some(headers);
                    batch.add_message(first).await.unwrap();
                    tokio::time::sleep(jitter(3_000)).await;
                    if k % 2 == 0 {
                        assert!(batch.commit_message(message()).await.is_err());
                    } else {
                        batch.discard();
                    }
                    tokio::time::sleep(jitter(3_000)).await;
                }
            })
        })
        .collect();
    for t in writers.into_iter().chain(rogues) {
        t.await.unwrap();
    }
    let log = stores[0].read_all(0, usize::MAX).await.unwrap();
    assert_eq!(log.len(), total);
    assert_eq!(stores[1].head_position().await.unwrap(), total as u64);
    for s in subscribers {
        let seen = s.await.unwrap();
        assert!(
            seen.windows(2)
                .all(|w| w[0].global_position + 1 == w[1].global_position),
            "out of order or with a gap"
        );
        let ids: HashSet<_> = seen.iter().map(|e| e.event_id).collect();
        assert_eq!(ids.len(), total, "an event was delivered twice");
        assert!(
            seen.iter().all(|e| e.event_type == "Written"),
            "an uncommitted message was delivered"
        );
        assert_eq!(seen, log);
    }
    // Four appenders in four store instances interleaved their batches: the hash chain is
    // still one chain, each batch linked to the head the server confirmed it followed.
    let mut chain = eventfold_core::chain::ChainVerifier::new(eventfold_core::chain::Scope::Log);
    for row in stores[2].read_chain(0, usize::MAX).await.unwrap() {
        chain.check(&row).unwrap_or_else(|b| panic!("{b}"));
    }
    assert_eq!(chain.checked(), total as u64);
}
