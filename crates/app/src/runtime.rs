//! What `eventfold serve` runs besides its HTTP listener, started from one function and stopped
//! together.
//!
//! [`Runtime::start`] builds the [`App`] (the service, the projection runner, the flash-sale path
//! and, with a payment provider, the sagas) and starts every background worker on one
//! [`TaskTracker`], each stopping when the shared [`CancellationToken`] is cancelled:
//!
//! | worker | what it does | when |
//! |---|---|---|
//! | projections | folds the log into every read model ([`crate::projections`]), every version of each | always |
//! | new versions | builds a projection version far behind the log on its own, then hands it to the live runner ([`crate::views`]) | when one is |
//! | projection versions | reads which version of each projection queries read ([`crate::views`]) | every 250 ms |
//! | correction notices | a durable notice for every late sale or refund, an exception for every posting a closed period holds ([`crate::reporting`]) | always |
//! | windows | demand per SKU in event-time windows with a grace period, a durable correction for every record after it ([`crate::sales_windows`]) | always |
//! | period clock | soft-closes, closes and seals periods whose time has come ([`crate::periods`]) | every minute |
//! | API keys | reloads the keys requests authenticate with ([`crate::identity`]) | always |
//! | snapshots | writes account snapshots every 100 events and hourly, off the command path | always |
//! | stock returns | gives back cancelled sale orders' stock, reconciles pending takes | always |
//! | sagas | the choreography tail, the payment orchestrator and its sweep | with [`Config::payments`] |
//! | outbox relay | publishes the log to Kafka | with [`Config::relay`] |
//! | health | sagas in flight and stuck; with a relay, consumer lag and dead letters at the broker ([`crate::health`]) | every 10 s |
//! | chain watch | walks the whole hash chain ([`crate::integrity::watch`]) | at start, then every 6 h (`verify_every`) |
//! | unpaid-order timer | cancels orders unpaid after [`Config::unpaid_order_timeout`] | unless the timeout is zero |
//!
//! Before it returns, an in-process stock ledger is rebuilt from the log and the choreography's
//! checkpoint is set, so the caller can serve requests at once. [`Runtime::stop`] cancels the
//! token and waits for every worker to finish its current step: each commits its checkpoint with
//! the work it covers (in one transaction, or after the work is durable), so a worker stopped
//! here resumes after a restart without doing anything twice or skipping anything.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use eventfold_core::stock::{MemoryStock, StockLedger};
use eventfold_core::ProjectionRunner;
use eventfold_kafka::monitor::{BrokerMonitor, WatchedGroup};
use eventfold_kafka::{Relay, RelayConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Backend;
use crate::health::{default_dead_letter_topics, default_watched_groups, Health};
use crate::identity::KeyRegistry;
use crate::integrity::watch::ChainWatch;
use crate::reporting::CorrectionNotifier;
use crate::sagas::{SagaConfig, Sagas};
use crate::sales_windows::WindowWorker;
use crate::service::{run_snapshots, Service};
use crate::shop::deadlines::UnpaidOrderTimeout;
use crate::shop::flash_sale::FlashSale;
use crate::shop::payments::PaymentProvider;
use crate::views::Views;

/// The unpaid-order timeout `serve` uses unless told otherwise: 30 minutes.
pub const DEFAULT_UNPAID_ORDER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How often the period clock soft-closes, closes and seals periods whose time has come.
const PERIOD_CLOCK_EVERY: Duration = Duration::from_secs(60);

/// How long a snapshot may get before the snapshot tail writes a fresh one: an hour.
const SNAPSHOT_MAX_AGE_HOURS: i64 = 1;

/// What the runtime runs besides projections, snapshots and stock returns.
pub struct Config {
    /// Orders still unpaid this long after creation are cancelled; zero: never. Default
    /// [`DEFAULT_UNPAID_ORDER_TIMEOUT`].
    pub unpaid_order_timeout: Duration,
    /// The flash-sale stock ledger (Redis, say); `None`: in-process, rebuilt from the log when
    /// the runtime starts.
    pub ledger: Option<Arc<dyn StockLedger>>,
    /// The payment provider and the callbacks' secret: with them the order and payment sagas
    /// run; without them orders are paid through the API.
    pub payments: Option<Payments>,
    /// Publish the log to Kafka through the outbox relay.
    pub relay: Option<RelayConfig>,
    /// The windows' grace period, seconds (see [`crate::sales_windows`]). Default
    /// [`crate::sales_windows::DEFAULT_GRACE_SECS`].
    pub window_grace_secs: i64,
    /// Shadow reads: `(projection, candidate version, fraction of queries)` (see
    /// [`crate::views::Views::with_shadow`]).
    pub shadow: Option<(String, u32, f64)>,
    /// Readiness fails while an active projection version has left an event unapplied for
    /// longer than this, seconds. Default [`crate::health::DEFAULT_MAX_LAG_SECS`].
    pub ready_max_lag_secs: f64,
    /// With a relay: the consumer groups whose lag the server measures at the broker. Default
    /// [`crate::health::default_watched_groups`].
    pub watched_groups: Option<Vec<WatchedGroup>>,
    /// Walk the whole hash chain at start and then this often; zero: only on request. Default
    /// [`crate::integrity::watch::DEFAULT_VERIFY_EVERY`].
    pub verify_every: Duration,
    /// A signed anchor every walk of the chain checks the log against.
    pub anchor: Option<crate::integrity::verify::TrustedAnchor>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            unpaid_order_timeout: DEFAULT_UNPAID_ORDER_TIMEOUT,
            ledger: None,
            payments: None,
            relay: None,
            window_grace_secs: crate::sales_windows::DEFAULT_GRACE_SECS,
            shadow: None,
            ready_max_lag_secs: crate::health::DEFAULT_MAX_LAG_SECS,
            watched_groups: None,
            verify_every: crate::integrity::watch::DEFAULT_VERIFY_EVERY,
            anchor: None,
        }
    }
}

/// The payment side of [`Config`].
pub struct Payments {
    /// The provider the payment saga calls.
    pub provider: Arc<dyn PaymentProvider>,
    /// The HMAC secret the provider signs its callbacks with.
    pub callback_secret: Vec<u8>,
    /// The orchestrator's settings.
    pub sagas: SagaConfig,
}

/// What the ways in (HTTP handlers, CLI subcommands) share: cheap to clone.
#[derive(Clone)]
pub struct App {
    /// The open store.
    pub backend: Backend,
    /// Commands and queries, with snapshots.
    pub service: Service,
    /// The projection runner (its status answers `GET /projections`).
    pub runner: Arc<ProjectionRunner>,
    /// The flash-sale purchase path.
    pub flash_sale: FlashSale,
    /// The sagas and the callback secret, when a payment provider is configured.
    pub payments: Option<(Sagas, Arc<[u8]>)>,
    /// The API keys requests authenticate with (reloaded by the runtime).
    pub keys: Arc<KeyRegistry>,
    /// Which version of each projection queries read (refreshed by the runtime).
    pub views: Views,
    /// Stores' business calendars (time zone and cutoff), cached.
    pub calendars: crate::calendars::StoreCalendars,
    /// Readiness checks and the gauges measured on a timer.
    pub health: Health,
    /// The server's own walks of the hash chain, and the last result.
    pub chain: ChainWatch,
    /// The outbox relay, when this server publishes to a broker.
    pub relay: Option<Arc<Relay>>,
}

impl App {
    /// An app over an open backend and its projection runner, with `ledger` (in-process when
    /// `None`; call [`FlashSale::restore`] on it after a restart, as [`Runtime::start`] does) and
    /// no sagas.
    pub fn new(
        backend: &Backend,
        runner: Arc<ProjectionRunner>,
        ledger: Option<Arc<dyn StockLedger>>,
    ) -> Self {
        let external = ledger.clone();
        let ledger = ledger.unwrap_or_else(|| Arc::new(MemoryStock::new()));
        let service =
            Service::new(backend.events.clone()).with_snapshots(backend.read_models.clone());
        let views = Views::new(service.clone(), backend.read_models.clone(), &runner);
        Self {
            flash_sale: FlashSale::new(service.clone(), ledger),
            calendars: crate::calendars::StoreCalendars::new(service.clone()),
            health: Health::new(
                backend.events.clone(),
                backend.read_models.clone(),
                runner.clone(),
                views.clone(),
                external,
                None,
                crate::health::DEFAULT_MAX_LAG_SECS,
            ),
            views,
            chain: ChainWatch::new(backend.events.clone()),
            relay: None,
            service,
            backend: backend.clone(),
            runner,
            payments: None,
            keys: Arc::default(),
        }
    }

    /// Adds the sagas driven by `payments.provider`, accepting callbacks signed with
    /// `payments.callback_secret`.
    #[must_use]
    pub fn with_payments(mut self, payments: Payments) -> Self {
        let sagas = Sagas::new(
            self.service.clone(),
            self.backend.read_models.clone(),
            self.flash_sale.clone(),
            payments.provider,
            payments.sagas,
        );
        self.payments = Some((sagas, Arc::from(payments.callback_secret)));
        self
    }

    /// The sagas, when payments are configured.
    pub fn sagas(&self) -> Option<&Sagas> {
        self.payments.as_ref().map(|(s, _)| s)
    }
}

/// The app and its running workers (see the module docs).
pub struct Runtime {
    app: App,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Runtime {
    /// Builds the app over `backend` and starts every worker `config` asks for; they stop when
    /// `shutdown` is cancelled (see [`Runtime::stop`]).
    ///
    /// # Errors
    /// The in-process ledger cannot be rebuilt, the sagas' checkpoint cannot be read or set, the
    /// relay cannot be configured (each named). Workers started before the failure are stopped
    /// and waited for first.
    pub async fn start(
        backend: Backend,
        config: Config,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        // The workers stop on a child of the caller's token: with the caller's, or by themselves
        // when starting fails half-way.
        let shutdown = shutdown.child_token();
        let tasks = TaskTracker::new();
        match Self::spawn_workers(backend, config, &shutdown, &tasks).await {
            Ok(app) => {
                tasks.close();
                Ok(Self {
                    app,
                    shutdown,
                    tasks,
                })
            }
            Err(e) => {
                shutdown.cancel();
                tasks.close();
                tasks.wait().await;
                Err(e)
            }
        }
    }

    /// Builds the app and spawns its workers on `tasks` (see [`Runtime::start`]).
    async fn spawn_workers(
        backend: Backend,
        config: Config,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> anyhow::Result<App> {
        let runner = Arc::new(backend.projection_runner());
        let mut views = Views::new(
            Service::new(backend.events.clone()),
            backend.read_models.clone(),
            &runner,
        );
        if let Some((projection, version, fraction)) = &config.shadow {
            views = views
                .with_shadow(projection, *version, *fraction)
                .context("--shadow")?;
        }
        views
            .refresh()
            .await
            .context("reading the projection versions")?;
        build_versions_apart(&backend, &runner, &views, shutdown, tasks).await?;
        // Caught up once before serving, so the API keys (a read model) are current when the
        // server decides whether it needs credentials.
        runner
            .catch_up(None, &|_, _| {})
            .await
            .context("catching the projections up")?;
        tasks.spawn(run_projections(runner.clone(), shutdown.clone()));
        let (refresher, stop) = (views.clone(), shutdown.clone());
        tasks.spawn(async move { refresher.run(stop.cancelled_owned()).await });
        let notifier = CorrectionNotifier::new(backend.events.clone(), backend.read_models.clone());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            notifier.run(stop.cancelled_owned()).await;
        });
        let windows = WindowWorker::new(
            backend.events.clone(),
            backend.read_models.clone(),
            config.window_grace_secs,
        )
        .map_err(|m| anyhow::anyhow!("the windows' grace period: {m}"))?;
        let stop = shutdown.clone();
        tasks.spawn(async move { windows.run(stop.cancelled_owned()).await });
        tasks.spawn(crate::periods::run_period_clock(
            crate::periods::PeriodDesk::new(Service::new(backend.events.clone())),
            backend.read_models.clone(),
            PERIOD_CLOCK_EVERY,
            shutdown.clone().cancelled_owned(),
        ));
        let in_process = config.ledger.is_none();
        let external = config.ledger.clone();
        let mut app = App::new(&backend, runner.clone(), config.ledger);
        let broker = match &config.relay {
            Some(relay) => Some(
                BrokerMonitor::new(
                    &relay.brokers,
                    config
                        .watched_groups
                        .clone()
                        .unwrap_or_else(|| default_watched_groups(&relay.topic_prefix)),
                    default_dead_letter_topics(),
                )
                .context("configuring the broker monitor")?,
            ),
            None => None,
        };
        app.health = Health::new(
            backend.events.clone(),
            backend.read_models.clone(),
            runner,
            views.clone(),
            external,
            broker,
            config.ready_max_lag_secs,
        );
        app.views = views;
        let (health, stop) = (app.health.clone(), shutdown.clone());
        tasks.spawn(async move { health.run(stop.cancelled_owned()).await });
        if let Some(anchor) = config.anchor {
            app.chain = app.chain.clone().with_anchor(anchor);
        }
        if !config.verify_every.is_zero() {
            let (chain, stop, every) = (app.chain.clone(), shutdown.clone(), config.verify_every);
            tasks.spawn(async move { chain.run(every, stop.cancelled_owned()).await });
        }
        if let Some(payments) = config.payments {
            app = app.with_payments(payments);
        }
        // The keys are loaded before the first request (a server that finds keys in the store
        // requires them), then kept fresh.
        app.keys
            .refresh(backend.read_models.as_ref())
            .await
            .context("loading the API keys")?;
        let (keys, read_models, stop) = (
            app.keys.clone(),
            backend.read_models.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move { keys.run(read_models, stop.cancelled_owned()).await });
        if in_process {
            // The in-process stock ledger starts empty: rebuild it from the log before serving.
            let (sales, orders) = app
                .flash_sale
                .restore()
                .await
                .map_err(|e| anyhow::anyhow!("restoring the flash-sale ledger: {e}"))?;
            if sales > 0 {
                tracing::info!(sales, orders, "flash-sale ledger restored");
            }
        }
        let (store, read_models) = (backend.events.clone(), backend.read_models.clone());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            run_snapshots::<eventfold_domain::account::Account>(
                store,
                read_models,
                eventfold_core::snapshot::DEFAULT_EVERY,
                Some(chrono::Duration::hours(SNAPSHOT_MAX_AGE_HOURS)),
                stop.cancelled_owned(),
            )
            .await;
        });
        let (flash_sale, stop) = (app.flash_sale.clone(), shutdown.clone());
        tasks.spawn(async move { flash_sale.run_returns(stop.cancelled_owned()).await });
        if let Some(sagas) = app.sagas().cloned() {
            sagas
                .init()
                .await
                .map_err(|e| anyhow::anyhow!("starting the sagas: {e}"))?;
            let stop = shutdown.clone();
            tasks.spawn(async move { sagas.run(stop.cancelled_owned()).await });
        }
        if let Some(relay) = config.relay {
            let brokers = relay.brokers.clone();
            let relay = Arc::new(
                Relay::new(backend.events.clone(), relay)
                    .context("configuring the outbox relay")?,
            );
            app.relay = Some(relay.clone());
            tracing::info!(brokers = %brokers, "publishing the event log to Kafka");
            let stop = shutdown.clone();
            tasks.spawn(async move { relay.run(stop.cancelled_owned()).await });
        }
        if !config.unpaid_order_timeout.is_zero() {
            let timer = UnpaidOrderTimeout::new(
                backend.events.clone(),
                backend.read_models.clone(),
                config.unpaid_order_timeout,
            );
            let stop = shutdown.clone();
            tasks.spawn(async move { timer.run(stop.cancelled_owned()).await });
        }
        Ok(app)
    }

    /// The app the workers run for.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Stops every worker (cancels the workers' token, a child of the one given to
    /// [`Runtime::start`], which is left as it is) and waits until each has finished its current
    /// step and returned.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.wait().await;
    }
}

/// A projection version that is not active and lags the log by more than this many events is
/// built on its own before it joins the live runner.
const BUILD_APART_AFTER: u64 = 10_000;

/// Holds every inactive version lagging by more than [`BUILD_APART_AFTER`] events out of the
/// live runner and builds it in a task of its own (retried every second after a failure), so
/// that a version added to a store with a long log does not hold back the served ones.
async fn build_versions_apart(
    backend: &Backend,
    runner: &Arc<ProjectionRunner>,
    views: &Views,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    let head = backend.events.head_position().await?;
    for (name, version) in runner.versions() {
        let storage = eventfold_core::projection::storage_name(name, version);
        let checkpoint = backend.read_models.projection_checkpoint(&storage).await?;
        if views.active(name) == version
            || checkpoint >= eventfold_core::RETIRED_CHECKPOINT
            || head.saturating_sub(checkpoint) <= BUILD_APART_AFTER
        {
            continue;
        }
        runner.hold_apart(&storage)?;
        tracing::info!(
            projection = name,
            version,
            checkpoint,
            head,
            "building a projection version apart"
        );
        let (runner, stop) = (runner.clone(), shutdown.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    built = runner.build_apart(&storage, &|_, _| {}) => match built {
                        Ok(position) => {
                            tracing::info!(projection = %storage, position, "projection version built; applied live from now on");
                            return;
                        }
                        Err(e) => tracing::warn!(error = %crate::error_chain(&e), projection = %storage, "building a projection version failed; retrying in 1 s"),
                    },
                    () = stop.cancelled() => return,
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => return,
                }
            }
        });
    }
    Ok(())
}

/// Keeps the projections caught up until `shutdown`; a failed run is logged and started again
/// after a second.
async fn run_projections(runner: Arc<ProjectionRunner>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        match runner.run(shutdown.cancelled()).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "projection runner stopped; retrying in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }
}
