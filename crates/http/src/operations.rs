//! Operations: projection status, Prometheus metrics, liveness and readiness.

use axum::extract::Path;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use eventfold_app::health::Readiness;
use eventfold_app::views::{VersionStatus, VersionsError, DEFAULT_MAX_LAG_EVENTS};
use eventfold_domain::identity::Role;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiErrorBody};
use crate::extract::{CommandBody, CommandHeaders};
use crate::state::AppState;

/// Decodes a read-model document; one that does not decode is a corrupt store (a 500, logged).
pub(crate) fn decode_doc<T: serde::de::DeserializeOwned>(doc: &str) -> Result<T, ApiError> {
    serde_json::from_str(doc).map_err(|e| {
        eventfold_core::StoreError::Corrupt(format!("read model document: {e}")).into()
    })
}

/// Every version of every projection: which is active (queries read it), its checkpoint and
/// lag, and, for a candidate this server shadow-reads, the comparisons' findings. Retired
/// versions are not listed.
#[utoipa::path(get, path = "/projections", responses((status = 200, body = Vec<VersionStatus>)))]
pub async fn projections(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<VersionStatus>>, ApiError> {
    caller.require(&[Role::Operator, Role::Auditor])?;
    Ok(Json(state.app.views.status(&state.app.runner).await?))
}

/// The body of `POST /projections/{name}/activate`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateBody {
    /// The version to serve (1 or more).
    #[serde(deserialize_with = "crate::contract::integral")]
    pub version: u32,
    /// Why (1 to 500 characters, not only white space, no control characters).
    #[schema(value_type = String, required = true)]
    pub reason: Option<String>,
    /// Switch even when the version lags the log by more than 1,000 events or the last
    /// comparison with the active version differed.
    #[serde(default)]
    pub force: bool,
}

/// What an activation did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Activated {
    /// Projection name.
    pub name: String,
    /// The version queries read now (every server within 250 ms).
    pub version: u32,
    /// The version they read before.
    pub previous: u32,
}

/// Makes `version` the one queries of projection `name` read, recorded with the caller and the
/// reason (see `eventfold projections activate`). Versions are the deployment's, not a
/// tenant's: only an operator of the default tenant may switch them (403 otherwise). 404: no
/// such projection or version; 409: retired, lagging or last compared different (unless
/// `force`).
#[utoipa::path(post, path = "/projections/{name}/activate",
    params(("name" = String, Path, description = "Projection name, e.g. daily_sales_by_store")),
    request_body = ActivateBody,
    responses((status = 200, body = Activated), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn activate_projection(
    State(state): State<AppState>,
    caller: Caller,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: CommandHeaders,
    body: CommandBody<ActivateBody>,
) -> Result<Json<Activated>, ApiError> {
    require_deployment(
        &caller,
        &[Role::Operator],
        "projection versions are the deployment's: only an operator of the default tenant may switch them",
    )?;
    let Path(name) = name?;
    crate::contract::check("name", &name, crate::contract::PROJECTION)?;
    let reason = crate::periods::required_reason(body.body.reason.clone())?;
    let ctx = headers.creation_context(&caller, &body.fingerprint);
    let version = body.body.version;
    let previous = state
        .app
        .views
        .activate(
            &name,
            version,
            &reason,
            body.body.force,
            DEFAULT_MAX_LAG_EVENTS,
            &ctx,
        )
        .await
        .map_err(versions_error)?;
    Ok(Json(Activated {
        name,
        version,
        previous,
    }))
}

/// The content type of Prometheus' text format.
pub(crate) const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the buckets of every `*_seconds` histogram, in seconds.
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the recorder folds the samples recorded since into its histograms: without it
/// they would pile up between scrapes (or forever, with no scraper).
pub const METRICS_UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds recorded samples into the histograms every [`METRICS_UPKEEP_EVERY`] until `stop`.
pub async fn run_metrics_upkeep(stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(METRICS_UPKEEP_EVERY) => metrics_handle().run_upkeep(),
            () = stop.cancelled() => return,
        }
    }
}

/// Counts every request that matched a route, by method, route template and status
/// (`eventfold_http_requests_total`), and times it (`eventfold_http_request_duration_seconds`,
/// by method and route): the labels are bounded by the routes.
pub(crate) async fn track_requests(
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let response = next.run(request).await;
    if let Some(route) = matched {
        let (method, route) = (method.as_str().to_owned(), route.as_str().to_owned());
        metrics::counter!("eventfold_http_requests_total", "method" => method.clone(),
            "route" => route.clone(), "status" => response.status().as_str().to_owned())
        .increment(1);
        metrics::histogram!("eventfold_http_request_duration_seconds", "method" => method,
            "route" => route)
        .record(started.elapsed().as_secs_f64());
    }
    response
}

/// The process's Prometheus recorder (installed on first use, which [`crate::serve`] makes before
/// it starts any worker; every `metrics::` call in the process, including the Kafka relay and
/// consumers, lands in it).
pub fn metrics_handle() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        // Every histogram in seconds is a Prometheus histogram with these bounds (from 0.5 ms to
        // 10 s), so it aggregates across servers; others (batch sizes) stay summaries.
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                &SECONDS_BUCKETS,
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a host application's): then only this
        // handle's own metrics (none) render, and the rest go to that recorder.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only its own");
        }
        handle
    })
}

/// Prometheus metrics (text format 0.0.4): the log's head (`eventfold_log_head_position`),
/// the server's hash-chain walks (`eventfold_chain_verify_last_ok`,
/// `eventfold_chain_verify_last_run_timestamp_seconds`, `eventfold_chain_verify_runs_total{result}`),
/// requests by method, route and status
/// (`eventfold_http_requests_total`) and their durations
/// (`eventfold_http_request_duration_seconds`), the store's appends on the command path
/// (`eventfold_append_duration_seconds`), each event's age when its read-model batch commits
/// (`eventfold_projection_event_age_seconds`), projection lag (`eventfold_projection_lag_events`,
/// `eventfold_projection_lag_seconds`: the oldest unapplied event's age,
/// `eventfold_projection_lag_p95_seconds`, per projection and version), shadow reads
/// (`eventfold_projection_shadow_reads_total`, `eventfold_projection_shadow_mismatches_total`), the outbox relay
/// (`eventfold_relay_published_total`, `eventfold_relay_backlog_events`), consumers
/// (`eventfold_consumer_lag{group,topic,partition}`, `eventfold_consumer_messages_total`,
/// `eventfold_consumer_retries_total`) and the notification batches (`eventfold_batch_size`,
/// `eventfold_batch_flush_seconds`, `eventfold_batch_retries_total`,
/// `eventfold_breaker_opened_total`, `eventfold_breaker_open`, `eventfold_dead_letter_total`;
/// these count in the process that consumes, see `--metrics-listen`), the correction notices
/// and exceptions appended (`eventfold_sales_correction_notices_total{reason}`,
/// `eventfold_sales_exceptions_raised_total`), payment sagas (`eventfold_sagas_in_flight`,
/// `eventfold_sagas_stuck`: no step for 5 minutes), and, with a broker, what the server
/// measures there every 10 s: each watched group's `eventfold_consumer_lag{group,topic,partition}`
/// and each dead-letter topic's size (`eventfold_dead_letter_messages{topic}`). Operator only.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
pub async fn prometheus(State(state): State<AppState>, caller: Caller) -> Response {
    if let Err(e) = caller.require(&[Role::Operator]) {
        return e.into_response();
    }
    let handle = metrics_handle();
    match state.app.runner.status().await {
        Ok(statuses) => {
            if let Some(head) = statuses.first().map(|s| s.head) {
                metrics::gauge!("eventfold_log_head_position").set(head as f64);
            }
            for s in statuses {
                let version = s.version.to_string();
                metrics::gauge!("eventfold_projection_lag_events",
                    "projection" => s.name.clone(), "version" => version.clone())
                .set(s.lag_events as f64);
                metrics::gauge!("eventfold_projection_lag_seconds",
                    "projection" => s.name.clone(), "version" => version.clone())
                .set(s.lag_seconds);
                if let Some(p95) = s.lag_p95_ms {
                    metrics::gauge!("eventfold_projection_lag_p95_seconds",
                        "projection" => s.name, "version" => version)
                    .set(p95 / 1000.0);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "projection status for /metrics failed"),
    }
    (
        [(axum::http::header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        handle.render(),
    )
        .into_response()
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: every dependency this server was configured with answers (the store; Redis when
/// the flash-sale stock is kept there; the Kafka broker when the relay publishes to one) and the
/// projection versions queries read are fresh (no event left unapplied for longer than
/// `--ready-max-lag-secs`, 60 s by default). 503 (with `Retry-After: 5`) names in `not_ready`
/// each check that failed, and each check's `detail` says what it found. Needs no credentials.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, description = "ready", body = Readiness),
    (status = 503, description = "a dependency does not answer or a read model is stale", body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let readiness = state.app.health.readiness().await;
    if readiness.is_ready() {
        Json(readiness).into_response()
    } else {
        tracing::warn!(not_ready = ?readiness.not_ready, "not ready");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "5")],
            Json(readiness),
        )
            .into_response()
    }
}

/// Who the caller is, as the console shows it and decides which pages to offer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// The actor its events are recorded with, e.g. `admin:ops-1`.
    pub actor: String,
    /// Its tenant.
    pub tenant: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// The credential it proved: `open` (a server without credentials), `key:{id}`, `jwt:...`.
    pub credential: String,
    /// The console pages its roles open: `sales`, `explain`, `orders`, `exceptions`,
    /// `operations`.
    pub pages: Vec<String>,
    /// What it may do beyond reading.
    pub may: Abilities,
}

/// What a principal may do beyond reading (each also checked by its route).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Abilities {
    /// Approve or reject exceptions (`finance`).
    pub decide_exceptions: bool,
    /// Switch and rebuild projection versions (an `operator` of the default tenant).
    pub switch_versions: bool,
    /// Walk the hash chain now (an `operator` or `auditor` of the default tenant).
    pub verify_chain: bool,
}

/// Who may read `/operations` and walk the chain: operators and auditors of the default tenant
/// (what they show is the deployment's, every tenant's).
const DEPLOYMENT_READERS: [Role; 2] = [Role::Operator, Role::Auditor];

fn of_default_tenant(caller: &Caller) -> bool {
    caller.0.tenant == eventfold_core::tenant::DEFAULT
}

/// Refuses unless the caller holds one of `roles` and belongs to the default tenant (403 with
/// `refusal` otherwise): for what is the deployment's, not a tenant's.
fn require_deployment(caller: &Caller, roles: &[Role], refusal: &str) -> Result<(), ApiError> {
    caller.require(roles)?;
    if of_default_tenant(caller) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", refusal))
    }
}

/// The refusal of a route of the deployment's to a principal of another tenant.
fn deployment_only(what: &str) -> String {
    format!("{what} are the deployment's: only a principal of the default tenant may use them")
}

/// The caller: actor, tenant, roles, and the console pages and actions they open.
#[utoipa::path(get, path = "/whoami", responses((status = 200, body = WhoAmI)))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    let p = &caller.0;
    let any = |roles: &[Role]| p.has_any(roles);
    let default_tenant = of_default_tenant(&caller);
    let pages = [
        ("sales", any(&crate::sales::READ)),
        ("explain", any(&crate::sales::READ)),
        ("orders", any(&crate::auth::READERS)),
        (
            "exceptions",
            any(&crate::periods::EXCEPTION_READERS) || any(&crate::periods::PERIOD_READERS),
        ),
        ("operations", any(&DEPLOYMENT_READERS) && default_tenant),
    ];
    Json(WhoAmI {
        actor: p.actor.to_string(),
        tenant: p.tenant.clone(),
        roles: p.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        credential: p.credential.clone(),
        pages: pages
            .iter()
            .filter(|(_, open)| *open)
            .map(|(page, _)| (*page).to_owned())
            .collect(),
        may: Abilities {
            decide_exceptions: any(&crate::periods::FINANCE),
            switch_versions: any(&[Role::Operator]) && default_tenant,
            verify_chain: any(&DEPLOYMENT_READERS) && default_tenant,
        },
    })
}

/// One partition's consumer lag, measured at the broker.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PartitionLagBody {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Messages not yet consumed.
    pub lag: i64,
}

/// A dead-letter topic's size.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterBody {
    /// Topic.
    pub topic: String,
    /// Messages in it.
    pub messages: i64,
}

/// The outbox relay of this server.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RelayBody {
    /// Events not yet published (the log's head minus the lowest shard checkpoint).
    pub backlog_events: u64,
}

/// The deployment at a glance (`GET /operations`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OperationsBody {
    /// Readiness, as `GET /ready` answers it.
    pub readiness: Readiness,
    /// The log's head.
    pub head_position: u64,
    /// The relay, when this server publishes to a broker.
    pub relay: Option<RelayBody>,
    /// Each watched group's lag per partition (the broker monitor's last sample, every 10 s).
    pub consumer_lag: Vec<PartitionLagBody>,
    /// Each dead-letter topic's size (same sample).
    pub dead_letters: Vec<DeadLetterBody>,
    /// Payment sagas in flight and stuck.
    pub sagas: eventfold_app::health::Sagas,
    /// The server's last walk of the hash chain, if one finished since it started.
    pub chain: Option<eventfold_app::integrity::watch::ChainCheck>,
}

/// The deployment at a glance: readiness, the relay's backlog, consumer lag per partition and
/// dead letters (measured at the broker), sagas in flight and stuck, the last hash-chain walk.
/// Operators and auditors of the default tenant.
#[utoipa::path(get, path = "/operations", responses((status = 200, body = OperationsBody)))]
pub async fn operations(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<OperationsBody>, ApiError> {
    require_deployment(&caller, &DEPLOYMENT_READERS, &deployment_only("operations"))?;
    let app = &state.app;
    let readiness = app.health.readiness().await;
    let head_position = app.service.store().head_position().await?;
    let relay = match &app.relay {
        Some(relay) => Some(RelayBody {
            backlog_events: relay.backlog().await?,
        }),
        None => None,
    };
    let sample = app.health.broker_sample().unwrap_or_default();
    let sagas = app.health.sagas(Some(&caller.0.tenant)).await?;
    Ok(Json(OperationsBody {
        readiness,
        head_position,
        relay,
        consumer_lag: sample
            .lag
            .into_iter()
            .map(|l| PartitionLagBody {
                group: l.group,
                topic: l.topic,
                partition: l.partition,
                lag: l.lag,
            })
            .collect(),
        dead_letters: sample
            .dead_letters
            .into_iter()
            .map(|(topic, messages)| DeadLetterBody { topic, messages })
            .collect(),
        sagas,
        chain: app.chain.last(),
    }))
}

/// Walks the whole hash chain now (after a walk already running) and answers its result, also
/// kept for `GET /operations` and the metrics. Operators and auditors of the default tenant.
#[utoipa::path(post, path = "/chain/verify", request_body = EmptyBody,
    responses((status = 200, body = eventfold_app::integrity::watch::ChainCheck)))]
pub async fn verify_chain(
    State(state): State<AppState>,
    caller: Caller,
    _body: CommandBody<EmptyBody>,
) -> Result<Json<eventfold_app::integrity::watch::ChainCheck>, ApiError> {
    require_deployment(
        &caller,
        &DEPLOYMENT_READERS,
        &deployment_only("hash-chain walks"),
    )?;
    Ok(Json(state.app.chain.run_once().await?))
}

/// A body with no fields (`{}`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

/// The body of `POST /projections/{name}/rebuild`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebuildBody {
    /// The version to rebuild (default: the one queries read).
    #[serde(default, deserialize_with = "crate::contract::optional_integral")]
    #[schema(value_type = u32)]
    pub version: Option<u32>,
    /// Why (1 to 500 characters, not only white space, no control characters).
    #[schema(value_type = String, required = true)]
    pub reason: Option<String>,
}

/// What a rebuild request started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RebuildStarted {
    /// Projection name.
    pub name: String,
    /// The version being rebuilt.
    pub version: u32,
    /// `started`: it runs in this server; `GET /projections` shows `rebuilding` until it is done.
    pub state: String,
}

/// Rebuilds a projection version from the log beside itself and switches to the copy when it
/// has caught up (queries never see an empty view), in the background of this server; recorded
/// with the caller and the reason (see `eventfold projections rebuild`). Only an operator of the
/// default tenant. 202; 404: no such projection or version; 409: already being rebuilt.
#[utoipa::path(post, path = "/projections/{name}/rebuild",
    params(("name" = String, Path, description = "Projection name, e.g. daily_sales_by_store")),
    request_body = RebuildBody,
    responses((status = 202, body = RebuildStarted), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn rebuild_projection(
    State(state): State<AppState>,
    caller: Caller,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: CommandHeaders,
    body: CommandBody<RebuildBody>,
) -> Result<(StatusCode, Json<RebuildStarted>), ApiError> {
    require_deployment(
        &caller,
        &[Role::Operator],
        &deployment_only("projection versions"),
    )?;
    let Path(name) = name?;
    crate::contract::check("name", &name, crate::contract::PROJECTION)?;
    let reason = crate::periods::required_reason(body.body.reason.clone())?;
    let version = body
        .body
        .version
        .unwrap_or_else(|| state.app.views.active(&name));
    let ctx = headers.creation_context(&caller, &body.fingerprint);
    state
        .app
        .views
        .start_rebuild(
            state.app.backend.projection_runner(),
            &name,
            version,
            &reason,
            ctx,
        )
        .map_err(versions_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RebuildStarted {
            name,
            version,
            state: "started".into(),
        }),
    ))
}

/// The HTTP error of a refused or failed operation on versions.
fn versions_error(e: VersionsError) -> ApiError {
    match e {
        VersionsError::Unknown(m) => ApiError::not_found("unknown_projection", m),
        VersionsError::Busy(m) => ApiError::new(StatusCode::CONFLICT, "rebuild_running", m),
        VersionsError::Service(e) => e.into(),
        VersionsError::Store(e) => e.into(),
        VersionsError::Runner(e) => e.into(),
    }
}
