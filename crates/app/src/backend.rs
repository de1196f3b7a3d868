//! Opening a store from its URL.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use eventfold_core::{EventStore, NotificationStore, ReadModelStore, SchemaVersion};
use eventfold_postgres::{PostgresConfig, PostgresStore};
use eventfold_sqlite::{SqliteConfig, SqliteStore};

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

/// An open store: the event store, the read-model store and the notification table (one
/// database).
#[derive(Clone)]
pub struct Backend {
    /// The event store.
    pub events: Arc<dyn EventStore>,
    /// The read models and their checkpoints.
    pub read_models: Arc<dyn ReadModelStore>,
    /// The notification consumer's table.
    pub notifications: Arc<dyn NotificationStore>,
    /// What it was opened from.
    pub url: StoreUrl,
    /// The schema version found on opening and the one it is at now.
    pub schema: SchemaVersion,
}

/// How to open a store: each backend's settings (the defaults unless a caller needs otherwise).
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Settings of a `postgres://` store.
    pub postgres: PostgresConfig,
    /// Settings of a `sqlite://` store.
    pub sqlite: SqliteConfig,
}

impl Backend {
    /// Opens (creating and migrating if needed) the store at `url` with the default settings.
    ///
    /// # Errors
    /// A bad URL or a store that cannot be opened.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        Self::open_with(url, &OpenOptions::default()).await
    }

    /// Opens (creating and migrating if needed) the store at `url` with `options`.
    ///
    /// # Errors
    /// A bad URL or a store that cannot be opened.
    pub async fn open_with(url: &str, options: &OpenOptions) -> anyhow::Result<Self> {
        let parsed = StoreUrl::parse(url)?;
        match &parsed {
            StoreUrl::Postgres(pg) => {
                let store = PostgresStore::connect_with(pg, options.postgres.clone())
                    .await
                    .context("opening the postgres store")?;
                let schema = store.schema_version();
                Ok(Self::over(Arc::new(store), parsed, schema))
            }
            StoreUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating directory {}", dir.display()))?;
                }
                let store = SqliteStore::open_with(path, options.sqlite.clone())
                    .with_context(|| format!("opening sqlite store {}", path.display()))?;
                let schema = store.schema_version();
                Ok(Self::over(Arc::new(store), parsed, schema))
            }
        }
    }

    /// One store serving as the event store, the read-model store and the notification table.
    fn over<S>(store: Arc<S>, url: StoreUrl, schema: SchemaVersion) -> Self
    where
        S: EventStore + ReadModelStore + NotificationStore,
    {
        Self {
            events: store.clone(),
            read_models: store.clone(),
            notifications: store,
            url,
            schema,
        }
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
