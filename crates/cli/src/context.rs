//! The options every subcommand takes (`--store`, `--json`, the Kafka settings) and what a
//! subcommand gets from them: the open store, the output, the broker list, a shutdown token fed by
//! Ctrl-C and SIGTERM.

use anyhow::Context as _;
use clap::Args;
use eventfold_app::backend::{Backend, OpenOptions, DEFAULT_STORE};
use eventfold_kafka::RelayConfig;
use tokio_util::sync::CancellationToken;

use crate::output::Output;

/// The global options (accepted before or after the subcommand).
#[derive(Debug, Args)]
pub struct Global {
    /// Where events and read models live: sqlite://PATH, postgres://USER@HOST:PORT/DATABASE, or
    /// nats://HOST:PORT[/NAME] (events in the JetStream stream NAME, default `eventfold`; read
    /// models in --read-models).
    #[arg(long, global = true, env = "EVENTFOLD_STORE", default_value = DEFAULT_STORE)]
    pub store: String,
    /// With a nats:// store: where its read models, index and checkpoints live, sqlite://PATH or
    /// postgres://...; default sqlite://{NAME}-read-models.db in the working directory.
    #[arg(long, global = true, env = "EVENTFOLD_READ_MODELS")]
    pub read_models: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Kafka bootstrap servers (HOST:PORT[,...]); with it, `serve` publishes the event log to
    /// Kafka through the outbox relay. Without it everything runs in-process.
    #[arg(long, global = true, env = "EVENTFOLD_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic prefix: events of category `order` go to `{prefix}.order`.
    #[arg(long, global = true, default_value = "eventfold")]
    pub kafka_topic_prefix: String,
    /// A hot stream to spread over N salted message keys, `STREAM=N` (repeatable), e.g.
    /// `order-hot=8`: per-salt order, merged by `stream_version` downstream.
    #[arg(long = "kafka-salt", global = true, value_parser = parse_salt)]
    pub kafka_salt: Vec<(String, u32)>,
    /// How logs (stderr) are written: `text`, or `json` (one object per line with timestamp,
    /// level, target, fields and span, for a log collector).
    #[arg(
        long,
        global = true,
        env = "EVENTFOLD_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// `relay`, `consume` and `transform` serve their Prometheus metrics (relay backlog,
    /// consumer lag, dead letters, circuit breaker) at `GET /metrics` on this address
    /// (HOST:PORT; no credentials: bind it where only the scraper reaches). `serve` has its own
    /// `/metrics`.
    #[arg(long, global = true, env = "EVENTFOLD_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// The format of the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

impl Global {
    /// Opens (creating and migrating if needed) the store at `--store`.
    ///
    /// # Errors
    /// A bad URL or a store that cannot be opened.
    pub async fn open(&self) -> anyhow::Result<Backend> {
        Backend::open_with(&self.store, &self.open_options()).await
    }

    /// The settings `--store` is opened with (`--read-models` for a nats:// store).
    pub fn open_options(&self) -> OpenOptions {
        OpenOptions {
            read_models: self.read_models.clone(),
            ..OpenOptions::default()
        }
    }

    /// How to print.
    pub fn output(&self) -> Output {
        Output { json: self.json }
    }

    /// With `--metrics-listen`, binds it and serves the metrics there until `shutdown`.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn serve_metrics(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let Some(addr) = self.metrics_listen else {
            return Ok(());
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-listen {addr}"))?;
        tracing::info!(%addr, "serving metrics at /metrics");
        // The recorder goes in now, before the command's worker records anything: installed by
        // the spawned server instead, it could come after the first gauges and lose them.
        eventfold_http::metrics_handle();
        tokio::spawn(eventfold_http::serve_metrics(listener, shutdown.clone()));
        Ok(())
    }

    /// `--kafka-brokers`, which `command` needs.
    ///
    /// # Errors
    /// It is not given, naming `command` and how to give it.
    pub fn brokers(&self, command: &str) -> anyhow::Result<String> {
        self.kafka_brokers.clone().with_context(|| {
            format!("{command} needs --kafka-brokers HOST:PORT (or EVENTFOLD_KAFKA_BROKERS)")
        })
    }

    /// The outbox relay's settings for `brokers`: topic prefix and salted streams from the
    /// global options.
    pub fn relay_config(&self, brokers: &str) -> RelayConfig {
        let mut config = RelayConfig::new(brokers);
        config.topic_prefix = self.kafka_topic_prefix.clone();
        config.salted_streams = self.kafka_salt.iter().cloned().collect();
        config
    }
}

/// A token cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    tokio::spawn(signal(token.clone()));
    token
}

/// Cancels `token` on Ctrl-C or SIGTERM.
async fn signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    token.cancel();
}

/// Parses `--kafka-salt STREAM=N` (N from 2 to 1,024).
fn parse_salt(spec: &str) -> Result<(String, u32), String> {
    let (stream, n) = spec
        .rsplit_once('=')
        .ok_or_else(|| format!("{spec:?}: expected STREAM=N, e.g. order-hot=8"))?;
    let n: u32 = n
        .parse()
        .map_err(|_| format!("{spec:?}: N must be a number"))?;
    if stream.is_empty() || !(2..=1_024).contains(&n) {
        return Err(format!("{spec:?}: need a stream and N from 2 to 1024"));
    }
    Ok((stream.to_owned(), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salt_specs_name_the_stream_and_a_count_from_2() {
        assert_eq!(parse_salt("order-hot=8"), Ok(("order-hot".into(), 8)));
        assert_eq!(parse_salt("a=b=4"), Ok(("a=b".into(), 4)));
        for bad in ["order-hot", "order-hot=1", "=4", "x=many", "x=2000"] {
            assert!(parse_salt(bad).is_err(), "{bad}");
        }
    }
}
