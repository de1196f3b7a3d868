//! Readiness and the gauges `serve` measures on a timer.
//!
//! [`Health::readiness`] checks every dependency the server was configured with: the store
//! (always), Redis (when the flash-sale stock is kept there), the Kafka broker (when the outbox
//! relay publishes to one), and the freshness of the read models queries read (the oldest event
//! an active projection version has not applied is at most [`DEFAULT_MAX_LAG_SECS`] old). Each
//! check says what it found, so an operator sees *what* is not ready, not only that something is.
//! Liveness (`/healthz`) checks none of this: a process whose database is down is alive, and
//! restarting it would not help.
//!
//! [`Health::run`] refreshes, every [`OBSERVE_EVERY`], the gauges no worker of this process sets
//! itself: payment sagas in flight and stuck (no step for [`SAGA_STUCK_AFTER`]), and, with a
//! broker, each watched consumer group's lag per partition and each dead-letter topic's size
//! (see [`eventfold_kafka::monitor`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use eventfold_core::stock::StockLedger;
use eventfold_core::{EventStore, ProjectionRunner, ReadModelStore};
use eventfold_domain::projections::SagaInFlight;
use eventfold_kafka::monitor::{BrokerMonitor, BrokerSample, WatchedGroup};
use serde::Serialize;

use crate::views::Views;

/// Readiness fails when a projection version queries read has left an event unapplied for
/// longer than this (60 s) unless configured otherwise.
pub const DEFAULT_MAX_LAG_SECS: f64 = 60.0;

/// A payment saga in flight whose latest step is older than this (5 minutes) counts as stuck:
/// its steps time out after seconds and its retries back off to at most a minute, so a saga
/// that has not moved for five is not waiting on anything that will come.
pub const SAGA_STUCK_AFTER: Duration = Duration::from_secs(300);

/// How often [`Health::run`] refreshes its gauges (10 s).
pub const OBSERVE_EVERY: Duration = Duration::from_secs(10);

/// The consumer groups eventfold's own consumers use and the topics they read (`eventfold
/// consume notifications`, `eventfold consume prizes`, `eventfold transform order-notifications`
/// over `{prefix}.order`), watched by a server that has a broker.
pub fn default_watched_groups(topic_prefix: &str) -> Vec<WatchedGroup> {
    vec![
        WatchedGroup {
            group: "notifications".into(),
            topics: vec!["notifications".into()],
        },
        WatchedGroup {
            group: crate::messaging::prizes::PRIZES.into(),
            topics: vec![crate::messaging::prizes::PRIZES.into()],
        },
        WatchedGroup {
            group: crate::messaging::order_notifications::ORDER_NOTIFICATIONS.into(),
            topics: vec![format!("{topic_prefix}.order")],
        },
    ]
}

/// The dead-letter topics of eventfold's own consumers (`notifications.dlq`).
pub fn default_dead_letter_topics() -> Vec<String> {
    vec!["notifications.dlq".into()]
}

/// One dependency's state, as `GET /ready` reports it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Check {
    /// `store`, `redis`, `kafka` or `read_models`.
    pub name: String,
    /// Whether it is ready.
    pub ready: bool,
    /// What was found: the log's head, the broker count, the lagging projection version and
    /// by how much, or why the dependency did not answer.
    pub detail: String,
}

/// What `GET /ready` answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    /// `ok` or `unavailable`: whether the store answered.
    pub store: String,
    /// The log's head (its last global position) when the store answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_position: Option<u64>,
    /// Every check, in the order store, redis, kafka, read_models (only those configured).
    pub checks: Vec<Check>,
    /// The names of the checks that failed.
    pub not_ready: Vec<String>,
}

impl Readiness {
    /// Whether every check passed.
    pub fn is_ready(&self) -> bool {
        self.not_ready.is_empty()
    }
}

/// The checks and the timer-driven gauges (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn EventStore>,
    read_models: Arc<dyn ReadModelStore>,
    runner: Arc<ProjectionRunner>,
    views: Views,
    /// The external stock ledger, when there is one.
    ledger: Option<Arc<dyn StockLedger>>,
    broker: Option<BrokerMonitor>,
    max_lag_secs: f64,
    /// The broker monitor's last sample.
    last_sample: std::sync::Mutex<Option<BrokerSample>>,
}

impl Health {
    /// Checks of `store` and the freshness of `runner`'s projections as `views` serves them,
    /// plus `ledger` and `broker` when given.
    pub fn new(
        store: Arc<dyn EventStore>,
        read_models: Arc<dyn ReadModelStore>,
        runner: Arc<ProjectionRunner>,
        views: Views,
        ledger: Option<Arc<dyn StockLedger>>,
        broker: Option<BrokerMonitor>,
        max_lag_secs: f64,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                read_models,
                runner,
                views,
                ledger,
                broker,
                max_lag_secs,
                last_sample: std::sync::Mutex::default(),
            }),
        }
    }

    /// Runs every check (concurrently; each answers within about 2 s).
    pub async fn readiness(&self) -> Readiness {
        let i = &self.inner;
        let store = async {
            match i.store.head_position().await {
                Ok(head) => (
                    Some(head),
                    check("store", Ok(format!("head position {head}"))),
                ),
                Err(e) => {
                    // The database's own text goes to the log, never to a response.
                    tracing::warn!(error = %crate::error_chain(&e), "readiness: the store did not answer");
                    (None, check("store", Err("the store did not answer".into())))
                }
            }
        };
        let redis = async {
            match &i.ledger {
                Some(ledger) => Some(check(
                    "redis",
                    ledger
                        .ping()
                        .await
                        .map(|()| "answers PING".to_owned())
                        .map_err(|e| e.to_string()),
                )),
                None => None,
            }
        };
        let kafka = async {
            match &i.broker {
                Some(broker) => Some(check(
                    "kafka",
                    broker
                        .probe()
                        .await
                        .map(|n| format!("{n} broker(s) answer metadata requests")),
                )),
                None => None,
            }
        };
        let fresh = async { check("read_models", self.freshness().await) };
        let ((head, store), redis, kafka, fresh) = tokio::join!(store, redis, kafka, fresh);
        let checks: Vec<Check> = [Some(store), redis, kafka, Some(fresh)]
            .into_iter()
            .flatten()
            .collect();
        let not_ready: Vec<String> = checks
            .iter()
            .filter(|c| !c.ready)
            .map(|c| c.name.clone())
            .collect();
        Readiness {
            status: if not_ready.is_empty() {
                "ready"
            } else {
                "not_ready"
            }
            .into(),
            store: if head.is_some() { "ok" } else { "unavailable" }.into(),
            head_position: head,
            checks,
            not_ready,
        }
    }

    /// Whether every projection version queries read has applied every event older than the
    /// limit; the error names each that has not.
    async fn freshness(&self) -> Result<String, String> {
        let i = &self.inner;
        let statuses = i.runner.status().await.map_err(|e| {
            tracing::warn!(error = %crate::error_chain(&e), "readiness: projection status failed");
            "projection status could not be read".to_owned()
        })?;
        let mut stale = Vec::new();
        let mut worst: f64 = 0.0;
        for s in statuses
            .iter()
            .filter(|s| i.views.active(&s.name) == s.version)
        {
            worst = worst.max(s.lag_seconds);
            if s.lag_seconds > i.max_lag_secs {
                stale.push(format!(
                    "{} v{}: oldest unapplied event {:.0} s old, {} events behind",
                    s.name, s.version, s.lag_seconds, s.lag_events
                ));
            }
        }
        if stale.is_empty() {
            Ok(format!(
                "oldest unapplied event {worst:.1} s old (limit {} s)",
                i.max_lag_secs
            ))
        } else {
            Err(format!("{} (limit {} s)", stale.join("; "), i.max_lag_secs))
        }
    }

    /// Refreshes the gauges every [`OBSERVE_EVERY`] until `stop` completes; a failed
    /// measurement is logged and leaves its gauges as they were.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            self.observe().await;
            tokio::select! {
                () = tokio::time::sleep(OBSERVE_EVERY) => {}
                () = &mut stop => return,
            }
        }
    }

    /// Measures once: sagas in flight and stuck; with a broker, consumer lag and dead letters.
    pub async fn observe(&self) {
        match self.sagas(None).await {
            Ok(sagas) => {
                metrics::gauge!("eventfold_sagas_in_flight").set(sagas.in_flight as f64);
                metrics::gauge!("eventfold_sagas_stuck").set(sagas.stuck as f64);
            }
            Err(e) => tracing::warn!(error = %e, "counting sagas in flight failed"),
        }
        if let Some(broker) = &self.inner.broker {
            match broker.sample().await {
                Ok(sample) => {
                    sample.record();
                    if let Ok(mut last) = self.inner.last_sample.lock() {
                        *last = Some(sample);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "sampling consumer lag at the broker failed"),
            }
        }
    }

    /// Payment sagas in flight and those of them whose latest step is older than
    /// [`SAGA_STUCK_AFTER`] (of every tenant), with the order ids of at most
    /// [`STUCK_LISTED`] stuck ones of `tenant` (none listed when `None`).
    ///
    /// # Errors
    /// The read models failed.
    pub async fn sagas(&self, tenant: Option<&str>) -> Result<Sagas, eventfold_core::StoreError> {
        let stuck_before = Utc::now()
            - chrono::Duration::from_std(SAGA_STUCK_AFTER).unwrap_or(chrono::Duration::MAX);
        let mut out = Sagas::default();
        crate::sagas::for_each_in_flight(self.inner.read_models.as_ref(), |key, doc| {
            out.in_flight += 1;
            let saga: Option<SagaInFlight> = serde_json::from_str(doc).ok();
            if saga
                .and_then(|s| s.last_step_at)
                .is_some_and(|at| at < stuck_before)
            {
                out.stuck += 1;
                let (of, order) = eventfold_core::tenant::split(key);
                if Some(of) == tenant && out.stuck_orders.len() < STUCK_LISTED {
                    out.stuck_orders.push(order.to_owned());
                }
            }
        })
        .await?;
        Ok(out)
    }

    /// The broker monitor's last sample (every [`OBSERVE_EVERY`]), if there is a broker and it
    /// answered once.
    pub fn broker_sample(&self) -> Option<BrokerSample> {
        self.inner.last_sample.lock().ok().and_then(|s| s.clone())
    }

    /// Whether a broker is configured.
    pub fn has_broker(&self) -> bool {
        self.inner.broker.is_some()
    }
}

/// Most stuck sagas [`Health::sagas`] lists by order id.
pub const STUCK_LISTED: usize = 20;

/// Payment sagas, as [`Health::sagas`] counts them.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Sagas {
    /// Sagas in flight (every tenant).
    pub in_flight: u64,
    /// Of them, those whose latest step is more than 5 minutes old.
    pub stuck: u64,
    /// The caller's tenant's stuck sagas' order ids (at most 20).
    pub stuck_orders: Vec<String>,
}

fn check(name: &str, outcome: Result<String, String>) -> Check {
    let (ready, detail) = match outcome {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Check {
        name: name.to_owned(),
        ready,
        detail,
    }
}
