//! A store handle hears appends made through another handle (another process) at once: each
//! appender announces the log's head on `{NAME}.h`, so `wait_for_append` need not wait for its
//! poll.

use std::sync::Arc;
use std::time::Duration;

use eventfold_core::{
    Actor, AppendRequest, EventMetadata, EventStore, ExpectedVersion, NewEvent, ReadModelStore,
};
use eventfold_nats::{NatsConfig, NatsStore};
use eventfold_sqlite::SqliteStore;

fn event() -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: "Noted".into(),
        schema_version: 1,
        event_time: chrono::Utc::now(),
        metadata: EventMetadata {
            actor: Actor::system("head-test"),
            causation_id: None,
            correlation_id: None,
            tenant_id: "default".into(),
            via: None,
            backfill: false,
        },
        payload: "{}".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_handle_wakes_on_another_handles_append_long_before_its_poll() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stream) = eventfold_nats::testing::fresh_url();
    let open = |name: &str, poll: Duration| {
        let read_models: Arc<dyn ReadModelStore> =
            Arc::new(SqliteStore::open(dir.path().join(name)).unwrap());
        let url = url.clone();
        async move {
            NatsStore::connect_with(
                &url,
                read_models,
                NatsConfig {
                    poll,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
        }
    };
    // The waiting handle polls only every 60 s: a prompt wake-up can only be the notice.
    let waiting = open("waiting.db", Duration::from_secs(60)).await;
    let writing = open("writing.db", Duration::from_secs(1)).await;
    for round in 1..=3u64 {
        let head = waiting.head_position().await.unwrap();
        let wait = tokio::spawn({
            let waiting = waiting.clone();
            async move { waiting.wait_for_append(head).await }
        });
        // Let the waiter start waiting first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        writing
            .append(AppendRequest::new(
                "notes",
                ExpectedVersion::Exact(round - 1),
                vec![event()],
            ))
            .await
            .unwrap();
        // Half the poll: only the notice can have woken it.
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("the waiting handle was not woken by the notice")
            .unwrap();
        assert_eq!(waiting.head_position().await.unwrap(), round);
        assert_eq!(waiting.read_all(round - 1, 10).await.unwrap().len(), 1);
    }
}
