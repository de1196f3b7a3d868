//! Opening a store from its URL.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use eventfold_core::{EventStore, ProjectionRunner, ReadModelStore, SchemaVersion};
use eventfold_domain::projections::{
    BalanceByAccountProjection, OrderSummaryProjection, PaymentDeadlinesProjection,
    SagasInFlightProjection, SalesClock, SalesProjection,
};
use eventfold_postgres::PostgresStore;
use eventfold_sqlite::SqliteStore;

/// The default store URL: a SQLite file in the working directory.
pub const DEFAULT_STORE: &str = "sqlite://eventfold.db";

/// Where the events and read models live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://user@host:port/db`).
    Postgres(String),
}

impl StoreUrl {
    /// Parses `sqlite://PATH` (relative, or absolute as `sqlite:///abs/path`), `sqlite:PATH`, or
    /// `postgres://...` / `postgresql://...`.
    ///
    /// # Errors
    /// An unknown scheme or an empty path, named in the message.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"));
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        match path {
            Some("") => bail!("store URL {url:?} has no file path; use sqlite://PATH"),
            Some(p) => Ok(Self::Sqlite(PathBuf::from(p))),
            None => bail!(
                "unsupported store URL {url:?}: use sqlite://PATH (the embedded default, e.g. {DEFAULT_STORE}) \
                 or postgres://USER@HOST:PORT/DATABASE"
            ),
        }
    }
}

/// An open store: the event store and the read-model store (the same database).
#[derive(Clone)]
pub struct Backend {
    /// The event store.
    pub events: Arc<dyn EventStore>,
    /// The read models and their checkpoints.
    pub read_models: Arc<dyn ReadModelStore>,
    /// What it was opened from.
    pub url: StoreUrl,
    /// The schema version found on opening and the one it is at now.
    pub schema: SchemaVersion,
}

impl Backend {
    /// Opens (creating and migrating if needed) the store at `url`.
    ///
    /// # Errors
    /// A bad URL or a store that cannot be opened.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let parsed = StoreUrl::parse(url)?;
        match &parsed {
            StoreUrl::Postgres(pg) => {
                let store = Arc::new(
                    PostgresStore::connect(pg)
                        .await
                        .context("opening the postgres store")?,
                );
                Ok(Self {
                    schema: store.schema_version(),
                    events: store.clone(),
                    read_models: store,
                    url: parsed,
                })
            }
            StoreUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating directory {}", dir.display()))?;
                }
                let store = Arc::new(
                    SqliteStore::open(path)
                        .with_context(|| format!("opening sqlite store {}", path.display()))?,
                );
                Ok(Self {
                    schema: store.schema_version(),
                    events: store.clone(),
                    read_models: store,
                    url: parsed,
                })
            }
        }
    }

    /// A projection runner with eventfold's four projections registered.
    pub fn projection_runner(&self) -> ProjectionRunner {
        ProjectionRunner::new(self.events.clone(), self.read_models.clone())
            .register(OrderSummaryProjection)
            .register(BalanceByAccountProjection)
            .register(SalesProjection(SalesClock::EventTimeDaily))
            .register(SalesProjection(SalesClock::IngestTimeHourly))
            .register(PaymentDeadlinesProjection)
            .register(SagasInFlightProjection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(
            StoreUrl::parse("sqlite://eventfold.db").unwrap(),
            StoreUrl::Sqlite("eventfold.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite:///tmp/x.db").unwrap(),
            StoreUrl::Sqlite("/tmp/x.db".into())
        );
        assert!(StoreUrl::parse("sqlite://")
            .unwrap_err()
            .to_string()
            .contains("no file path"));
        assert!(StoreUrl::parse("mysql://x")
            .unwrap_err()
            .to_string()
            .contains("unsupported"));
    }
}
