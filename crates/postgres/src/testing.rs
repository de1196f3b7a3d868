//! Helpers for tests that need a PostgreSQL database: one fresh database per test, dropped when
//! the test ends.

use sqlx::Connection;

/// The admin URL of the test server: `EVENTFOLD_TEST_PG`, default
/// `postgres://postgres@127.0.0.1:5432/postgres`. `scripts/test` sets it (starting a throwaway
/// cluster when no server runs).
pub fn admin_url() -> String {
    std::env::var("EVENTFOLD_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// An empty database that is dropped (`WITH (FORCE)`) when this value is dropped.
pub struct FreshDb {
    /// The database's URL.
    pub url: String,
    name: String,
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let (admin, name) = (admin_url(), self.name.clone());
        // Drop may run inside a runtime that is shutting down: use a small runtime on a thread.
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

/// Creates an empty database on the test server.
///
/// # Panics
/// When the server cannot be reached: the message says how to start one.
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
