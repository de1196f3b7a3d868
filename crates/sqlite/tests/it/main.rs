//! Integration tests for the SQLite store: the shared conformance suite plus SQLite specifics.

mod specific;

use std::any::Any;
use std::sync::Arc;

use eventfold_sqlite::SqliteStore;

async fn fresh() -> (Arc<SqliteStore>, Box<dyn Any + Send>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("events.db")).expect("open store");
    (Arc::new(store), Box::new(dir))
}

eventfold_conformance::store_conformance!(fresh);
