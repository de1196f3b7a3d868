//! Integration tests for the NATS JetStream store: the shared conformance suite, on a fresh
//! JetStream stream of the test server (`EVENTFOLD_TEST_NATS`, started by `scripts/test`) with
//! its read models in a fresh SQLite file.

mod head_notices;
mod never_skips;
mod restart;

use std::any::Any;
use std::sync::Arc;

use eventfold_nats::NatsStore;
use eventfold_sqlite::SqliteStore;

async fn fresh() -> (Arc<NatsStore>, Box<dyn Any + Send>) {
    let dir = tempfile::tempdir().unwrap();
    let read_models = Arc::new(SqliteStore::open(dir.path().join("read-models.db")).unwrap());
    let (url, stream) = eventfold_nats::testing::fresh_url();
    let store = NatsStore::connect(&url, read_models)
        .await
        .expect("connect to the test NATS server");
    (Arc::new(store), Box::new((stream, dir)))
}

eventfold_conformance::store_conformance!(fresh);
