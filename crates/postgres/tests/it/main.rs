//! Integration tests for the PostgreSQL store: the shared conformance suite plus PostgreSQL
//! specifics. Each test gets a fresh database on the server named by `EVENTFOLD_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); `scripts/test` starts a throwaway cluster when
//! none is running.

mod never_skips;
mod specific;

use std::any::Any;
use std::sync::Arc;

use eventfold_postgres::PostgresStore;
use sqlx::Connection;

/// The admin URL of the test server.
pub fn admin_url() -> String {
    std::env::var("EVENTFOLD_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Drops its database when the test ends.
pub struct FreshDb {
    /// The database's URL.
    pub url: String,
    name: String,
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let (admin, name) = (admin_url(), self.name.clone());
        // Drop runs outside any runtime guarantee: use a small one of our own on a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// Creates an empty database for one test.
pub async fn fresh_db() -> FreshDb {
    let admin = admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {admin} ({e}). Run the tests through scripts/test, which starts a \
             throwaway cluster when none is running, or set EVENTFOLD_TEST_PG to a server's admin URL."
        )
    });
    let name = format!("eventfold_test_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(b, _)| b)
        .to_owned();
    FreshDb {
        url: format!("{base}/{name}"),
        name,
    }
}

async fn fresh() -> (Arc<PostgresStore>, Box<dyn Any + Send>) {
    let db = fresh_db().await;
    let store = PostgresStore::connect(&db.url)
        .await
        .expect("connect to the test database");
    (Arc::new(store), Box::new(db))
}

eventfold_conformance::store_conformance!(fresh);
