//! Integration tests for the PostgreSQL store: the shared conformance suite plus PostgreSQL
//! specifics. Each test gets a fresh database on the server named by `EVENTFOLD_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); `scripts/test` starts a throwaway cluster when
//! none is running.

mod never_skips;
mod specific;

use std::any::Any;
use std::sync::Arc;

pub use eventfold_postgres::testing::fresh_db;
use eventfold_postgres::PostgresStore;

async fn fresh() -> (Arc<PostgresStore>, Box<dyn Any + Send>) {
    let db = fresh_db().await;
    let store = PostgresStore::connect(&db.url)
        .await
        .expect("connect to the test database");
    (Arc::new(store), Box::new(db))
}

eventfold_conformance::store_conformance!(fresh);
