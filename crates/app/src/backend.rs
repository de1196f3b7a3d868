//! Opening a store from its URL.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use eventfold_core::{EventStore, NotificationStore, ReadModelStore, SchemaVersion};
use eventfold_nats::{NatsConfig, NatsStore, NatsUrl};
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
    /// A NATS JetStream server and stream (`nats://host:port[/NAME]`) for the events, with the
    /// read models in a SQLite or PostgreSQL store beside it (`--read-models`).
    Nats(String),
}

impl StoreUrl {
    /// Parses `sqlite://PATH` (relative, or absolute as `sqlite:///abs/path`), `sqlite:PATH`,
    /// `postgres://...` / `postgresql://...`, or `nats://HOST:PORT[/NAME]`.
    ///
    /// # Errors
    /// An unknown scheme, an empty path or a bad NATS stream name, named in the message.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"));
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        if url.starts_with("nats://") {
            NatsUrl::parse(url).map_err(anyhow::Error::msg)?;
            return Ok(Self::Nats(url.to_owned()));
        }
        match path {
            Some("") => bail!("store URL {url:?} has no file path; use sqlite://PATH"),
            Some(p) => Ok(Self::Sqlite(PathBuf::from(p))),
            None => bail!(
                "unsupported store URL {url:?}: use sqlite://PATH (the embedded default, e.g. {DEFAULT_STORE}), \
                 postgres://USER@HOST:PORT/DATABASE or nats://HOST:PORT[/NAME]"
            ),
        }
    }
}

/// An open store: the event store, the read-model store and the notification table (one
/// database for SQLite and PostgreSQL; for NATS, the events in JetStream and the rest in the
/// read-model store).
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
    /// Settings of a `nats://` store.
    pub nats: NatsConfig,
    /// Where a `nats://` store keeps its read models, index and checkpoints (`sqlite://PATH` or
    /// `postgres://...`); `None`: [`default_read_models`]. SQLite and PostgreSQL stores keep them
    /// in their own database and refuse this.
    pub read_models: Option<String>,
}

/// The read-model store of a `nats://` store opened without `--read-models`: a SQLite file in
/// the working directory named after the JetStream stream, `sqlite://{NAME}-read-models.db`
/// (so two stores on one server do not share one).
pub fn default_read_models(nats_url: &str) -> String {
    let name = NatsUrl::parse(nats_url)
        .map_or_else(|_| eventfold_nats::DEFAULT_STREAM.to_owned(), |u| u.stream);
    format!("sqlite://{name}-read-models.db")
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
        if let (Some(rm), false) = (&options.read_models, matches!(parsed, StoreUrl::Nats(_))) {
            bail!(
                "--read-models {rm:?} applies to a nats:// store only: {url} keeps its read \
                 models in its own database"
            );
        }
        match &parsed {
            StoreUrl::Nats(nats) => {
                let rm_url = options
                    .read_models
                    .clone()
                    .unwrap_or_else(|| default_read_models(nats));
                if matches!(StoreUrl::parse(&rm_url)?, StoreUrl::Nats(_)) {
                    bail!("--read-models {rm_url:?} must be sqlite://PATH or postgres://...");
                }
                let sql_options = OpenOptions {
                    read_models: None,
                    ..options.clone()
                };
                let beside = Box::pin(Self::open_with(&rm_url, &sql_options))
                    .await
                    .with_context(|| format!("opening the read-model store {rm_url}"))?;
                let store =
                    NatsStore::connect_with(nats, beside.read_models.clone(), options.nats.clone())
                        .await
                        .with_context(|| format!("opening the NATS store {nats}"))?;
                let store = Arc::new(store);
                Ok(Self {
                    events: store.clone(),
                    read_models: store,
                    notifications: beside.notifications,
                    url: parsed,
                    schema: beside.schema,
                })
            }
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
        assert_eq!(
            StoreUrl::parse("nats://127.0.0.1:4222/shop").unwrap(),
            StoreUrl::Nats("nats://127.0.0.1:4222/shop".into())
        );
        assert!(StoreUrl::parse("nats://h:1/a.b")
            .unwrap_err()
            .to_string()
            .contains("stream name"));
        assert_eq!(
            default_read_models("nats://h:1/shop"),
            "sqlite://shop-read-models.db"
        );
        assert!(StoreUrl::parse("mysql://x")
            .unwrap_err()
            .to_string()
            .contains("unsupported"));
    }
}
