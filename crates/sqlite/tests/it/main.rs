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

/// The same suite with the stream tail moved into the stream index every other event, so that
/// every case reads streams split across the two tables (by default a short stream never
/// leaves the tail).
mod tiny_stream_tail {
    use super::*;
    use eventfold_sqlite::SqliteConfig;

    async fn fresh() -> (Arc<SqliteStore>, Box<dyn Any + Send>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = SqliteConfig {
            stream_tail_rows: 2,
            ..SqliteConfig::default()
        };
        let store = SqliteStore::open_with(dir.path().join("events.db"), config).expect("open");
        (Arc::new(store), Box::new(dir))
    }

    eventfold_conformance::store_conformance!(fresh);
}
