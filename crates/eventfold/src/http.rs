//! The HTTP API (axum). Only this module knows HTTP.
//!
//! Errors are JSON `{"code": "...", "message": "..."}` with a stable code: 400 malformed requests,
//! 404 unknown ids, 409 conflicts (version, state), 413 oversized bodies, 415 wrong content type,
//! 422 unacceptable values; 503 with `Retry-After` when the store is unavailable. Database text
//! never reaches a response body.

mod commands;
mod flash;
mod payments;
mod queries;
pub use queries::metrics_handle;

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use eventfold_core::{Actor, ProjectionRunner, ReadModelStore, StoreError, StoredResponse};
use eventfold_domain::Refusal;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::OpenApi;

use crate::backend::Backend;
use crate::flash_sale::FlashSale;
use crate::payments::PaymentProvider;
use crate::sagas::{SagaConfig, Sagas};
use crate::service::{CommandContext, Service, ServiceError};

/// Largest accepted request body, in bytes (64 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    service: Service,
    read_models: Arc<dyn ReadModelStore>,
    runner: Arc<ProjectionRunner>,
    flash_sale: FlashSale,
    /// The sagas and the callback secret, when a payment provider is configured.
    payments: Option<(Sagas, Arc<[u8]>)>,
}

impl AppState {
    /// State over an open backend and its projection runner, with an in-process stock ledger
    /// (call [`FlashSale::restore`] on it after a restart, as `serve` does).
    pub fn new(backend: &Backend, runner: Arc<ProjectionRunner>) -> Self {
        Self::with_ledger(
            backend,
            runner,
            Arc::new(eventfold_core::stock::MemoryStock::new()),
        )
    }

    /// State with the given stock ledger (Redis, say).
    pub fn with_ledger(
        backend: &Backend,
        runner: Arc<ProjectionRunner>,
        ledger: Arc<dyn eventfold_core::stock::StockLedger>,
    ) -> Self {
        let service =
            Service::new(backend.events.clone()).with_snapshots(backend.read_models.clone());
        Self {
            flash_sale: FlashSale::new(service.clone(), ledger),
            service,
            read_models: backend.read_models.clone(),
            runner,
            payments: None,
        }
    }

    /// Adds the sagas (M22) driven by `provider`, accepting callbacks signed with `secret`.
    pub fn with_payments(
        mut self,
        provider: Arc<dyn PaymentProvider>,
        secret: &[u8],
        config: SagaConfig,
    ) -> Self {
        let sagas = Sagas::new(
            self.service.clone(),
            self.read_models.clone(),
            self.flash_sale.clone(),
            provider,
            config,
        );
        self.payments = Some((sagas, Arc::from(secret)));
        self
    }

    /// The sagas, when payments are configured.
    pub fn sagas(&self) -> Option<&Sagas> {
        self.payments.as_ref().map(|(s, _)| s)
    }

    /// The flash-sale purchase path.
    pub fn flash_sale(&self) -> &FlashSale {
        &self.flash_sale
    }
}

/// The OpenAPI document of the API (served at `/openapi.json`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "eventfold",
        description = "Event-sourced shop backend: accounts, orders, sales views, flash sales."
    ),
    paths(
        commands::open_account,
        commands::deposit,
        commands::withdraw,
        commands::create_order,
        commands::pay_order,
        commands::confirm_order,
        commands::ship_order,
        commands::complete_order,
        commands::cancel_order,
        commands::refund_order,
        flash::open_flash_sale,
        flash::purchase,
        flash::get_flash_sale,
        payments::payment_callback,
        queries::get_account,
        queries::get_balance,
        queries::get_order,
        queries::order_history,
        queries::daily_sales,
        queries::realtime_sales,
        queries::projections,
        queries::healthz,
        queries::prometheus,
        queries::ready
    ),
    components(schemas(ApiErrorBody))
)]
pub struct ApiDoc;

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/accounts", post(commands::open_account))
        .route("/accounts/{id}", get(queries::get_account))
        .route("/accounts/{id}/deposit", post(commands::deposit))
        .route("/accounts/{id}/withdraw", post(commands::withdraw))
        .route("/balances/{id}", get(queries::get_balance))
        .route("/orders", post(commands::create_order))
        .route("/orders/{id}", get(queries::get_order))
        .route("/orders/{id}/history", get(queries::order_history))
        .route("/orders/{id}/pay", post(commands::pay_order))
        .route("/orders/{id}/confirm", post(commands::confirm_order))
        .route("/orders/{id}/ship", post(commands::ship_order))
        .route("/orders/{id}/complete", post(commands::complete_order))
        .route("/orders/{id}/cancel", post(commands::cancel_order))
        .route("/orders/{id}/refund", post(commands::refund_order))
        .route("/flash-sales", post(flash::open_flash_sale))
        .route("/flash-sales/{sku}", get(flash::get_flash_sale))
        .route("/flash-sales/{sku}/purchases", post(flash::purchase))
        .route("/payments/callbacks", post(payments::payment_callback))
        .route("/sales/daily", get(queries::daily_sales))
        .route("/sales/realtime", get(queries::realtime_sales))
        .route("/projections", get(queries::projections))
        .route("/healthz", get(queries::healthz))
        .route("/metrics", get(queries::prometheus))
        .route("/ready", get(queries::ready))
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiErrorBody {
    /// Stable machine-readable code, e.g. `version_conflict`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with a status, stable code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ApiErrorBody {
                code: self.code.into(),
                message: self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::VersionConflict { .. } => {
                Self::new(StatusCode::CONFLICT, "version_conflict", e.to_string())
            }
            StoreError::EventIdReused { .. } => {
                Self::new(StatusCode::CONFLICT, "event_id_reused", e.to_string())
            }
            StoreError::IdempotencyKeyUsed { .. } => {
                Self::new(StatusCode::CONFLICT, "idempotency_key_used", e.to_string())
            }
            StoreError::Fenced { .. } => Self::new(StatusCode::CONFLICT, "fenced", e.to_string()),
            StoreError::Archived { .. } => Self::new(StatusCode::GONE, "archived", e.to_string()),
            StoreError::InvalidRequest(m) => Self::bad_request("invalid_request", m.clone()),
            StoreError::Unavailable(_) | StoreError::CheckpointMoved { .. } => {
                tracing::warn!(error = %error_chain(&e), "store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the event store is unavailable; retry shortly",
                )
            }
            _ => {
                tracing::error!(error = %error_chain(&e), "store failure");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "internal error",
                )
            }
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Refused {
                code,
                refusal,
                message,
            } => {
                let status = match refusal {
                    Refusal::NotFound => StatusCode::NOT_FOUND,
                    Refusal::Conflict => StatusCode::CONFLICT,
                    Refusal::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
                };
                Self::new(status, code, message)
            }
            e @ ServiceError::IdempotencyKeyReused { .. } => {
                Self::unprocessable("idempotency_key_reused", e.to_string())
            }
            ServiceError::Store(e) => e.into(),
        }
    }
}

impl From<eventfold_core::RunnerError> for ApiError {
    fn from(e: eventfold_core::RunnerError) -> Self {
        match e {
            eventfold_core::RunnerError::Store(s) => s.into(),
            other => {
                tracing::error!(error = %error_chain(&other), "projection failure");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "internal error",
                )
            }
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request("invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request("invalid_path", r.body_text())
    }
}

/// `e` and its sources, joined by `: ` (for logs).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// A JSON command body with a digest of the request for idempotency checks. An empty body reads
/// as `{}`.
pub(crate) struct CommandBody<T> {
    pub(crate) body: T,
    pub(crate) fingerprint: String,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for CommandBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let digest_head = format!("{} {}\n", req.method(), req.uri().path());
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                let status = e.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        status,
                        "payload_too_large",
                        format!("request body exceeds {MAX_BODY_BYTES} bytes"),
                    )
                } else {
                    ApiError::bad_request("unreadable_body", e.body_text())
                }
            })?;
        let text: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        if !bytes.is_empty() && !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as Content-Type: application/json",
            ));
        }
        let mut deserializer = serde_json::Deserializer::from_slice(text);
        let parsed = match serde_path_to_error::deserialize(&mut deserializer) {
            Ok(body) => deserializer
                .end()
                .map(|()| body)
                .map_err(|e| (".".to_owned(), e)),
            Err(e) => Err((e.path().to_string(), e.into_inner())),
        };
        let body = parsed.map_err(|(path, inner)| {
            if inner.is_syntax() || inner.is_eof() {
                ApiError::bad_request(
                    "malformed_json",
                    format!("request body is not valid JSON: {inner}"),
                )
            } else if path == "." {
                ApiError::bad_request(
                    "invalid_body",
                    format!("request body does not match the command: {inner}"),
                )
            } else {
                ApiError::bad_request(
                    "invalid_body",
                    format!("request body field {path}: {inner}"),
                )
            }
        })?;
        let mut digest = Sha256::new();
        digest.update(digest_head.as_bytes());
        digest.update(text);
        let fingerprint = hex::encode(digest.finalize());
        Ok(Self { body, fingerprint })
    }
}

/// The command headers: `X-Actor` (default `user:anonymous`), `If-Match` (expected stream
/// version), `Idempotency-Key`, `X-Correlation-Id`, `X-Tenant-Id`.
pub(crate) struct CommandHeaders {
    actor: Actor,
    expected_version: Option<u64>,
    idempotency_key: Option<String>,
    correlation_id: Option<uuid::Uuid>,
    tenant_id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for CommandHeaders {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_command_headers(&parts.headers)
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                ApiError::bad_request(
                    "invalid_header",
                    format!("header {name} is not visible ASCII"),
                )
            })
        })
        .transpose()
}

fn parse_command_headers(headers: &HeaderMap) -> Result<CommandHeaders, ApiError> {
    let actor = match header_str(headers, "x-actor")? {
        Some(a) => Actor::parse(a)
            .map_err(|m| ApiError::bad_request("invalid_actor", format!("header X-Actor: {m}")))?,
        None => Actor::parse("user:anonymous").expect("valid default actor"),
    };
    let expected_version = header_str(headers, "if-match")?
        .map(|v| {
            v.trim().trim_matches('"').parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_header",
                    format!("header If-Match must be a stream version like \"3\", got {v:?}"),
                )
            })
        })
        .transpose()?;
    let idempotency_key = header_str(headers, "idempotency-key")?
        .map(|k| {
            if k.is_empty() || k.len() > 255 {
                Err(ApiError::bad_request(
                    "invalid_header",
                    "header Idempotency-Key must be 1 to 255 characters",
                ))
            } else {
                Ok(k.to_owned())
            }
        })
        .transpose()?;
    let correlation_id = header_str(headers, "x-correlation-id")?
        .map(|v| {
            uuid::Uuid::parse_str(v).map_err(|_| {
                ApiError::bad_request("invalid_header", "header X-Correlation-Id must be a UUID")
            })
        })
        .transpose()?;
    let tenant_id = header_str(headers, "x-tenant-id")?
        .unwrap_or("default")
        .to_owned();
    eventfold_domain::validate_id("header X-Tenant-Id", &tenant_id)
        .map_err(|m| ApiError::bad_request("invalid_header", m))?;
    Ok(CommandHeaders {
        actor,
        expected_version,
        idempotency_key,
        correlation_id,
        tenant_id,
    })
}

impl CommandHeaders {
    pub(crate) fn context(self, fingerprint: &str) -> CommandContext {
        let mut ctx = CommandContext::new(self.actor);
        ctx.expected_version = self.expected_version;
        ctx.idempotency = self
            .idempotency_key
            .map(|k| (format!("{}:{k}", self.tenant_id), fingerprint.to_owned()));
        ctx.correlation_id = self.correlation_id;
        ctx.tenant_id = self.tenant_id;
        ctx
    }
}

/// A JSON response with an `ETag` of the stream version.
pub(crate) fn versioned<T: Serialize>(status: StatusCode, body: &T, version: u64) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// The first response stored under an idempotency key, marked as a replay.
pub(crate) fn replayed(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        stored.body,
    )
        .into_response();
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

pub(crate) fn stored<T: Serialize>(status: StatusCode, body: &T) -> StoredResponse {
    StoredResponse {
        status: status.as_u16(),
        body: serde_json::to_string(body).unwrap_or_default(),
    }
}

/// The `{id}` path segment, with a JSON error when it cannot be decoded.
pub(crate) struct IdPath(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await?;
        Ok(Self(id))
    }
}

pub(crate) fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    eventfold_domain::validate_id(field, id).map_err(|m| ApiError::bad_request("invalid_id", m))
}

/// Serves the API on `listener` until `shutdown` is cancelled, keeping the projections caught up
/// in the background; drains in-flight requests before returning.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    backend: Backend,
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    serve_with(backend, listener, shutdown, ServeOptions::default()).await
}

/// What [`serve_with`] serves besides the defaults.
#[derive(Default)]
pub struct ServeOptions {
    /// The flash-sale stock ledger; `None`: in-process, rebuilt from the log before serving (a
    /// Redis ledger keeps its own state).
    pub ledger: Option<Arc<dyn eventfold_core::stock::StockLedger>>,
    /// The payment provider, the callbacks' HMAC secret and the orchestrator's settings; with
    /// them the order and payment sagas run (M22), without them orders are paid through
    /// `POST /orders/{id}/pay`.
    pub payments: Option<(Arc<dyn PaymentProvider>, Vec<u8>, SagaConfig)>,
}

/// Like [`serve`], with [`ServeOptions`].
///
/// # Errors
/// The listener fails, or the in-process ledger cannot be rebuilt.
pub async fn serve_with(
    backend: Backend,
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
    options: ServeOptions,
) -> anyhow::Result<()> {
    let ServeOptions { ledger, payments } = options;
    let runner = Arc::new(backend.projection_runner());
    let projections = {
        let runner = runner.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                match runner.run(shutdown.cancelled()).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %error_chain(&e), "projection runner stopped; retrying in 1 s");
                        tokio::select! {
                            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                            () = shutdown.cancelled() => break,
                        }
                    }
                }
            }
        })
    };
    let in_process = ledger.is_none();
    let mut state = match ledger {
        Some(ledger) => AppState::with_ledger(&backend, runner, ledger),
        None => AppState::new(&backend, runner),
    };
    if let Some((provider, secret, config)) = payments {
        state = state.with_payments(provider, &secret, config);
    }
    if in_process {
        // The in-process stock ledger starts empty: rebuild it from the log before serving.
        let (sales, orders) = state
            .flash_sale
            .restore()
            .await
            .map_err(|e| anyhow::anyhow!("restoring the flash-sale ledger: {e}"))?;
        if sales > 0 {
            tracing::info!(sales, orders, "flash-sale ledger restored");
        }
    }
    let snapshots = {
        let (store, read_models, shutdown) = (
            backend.events.clone(),
            backend.read_models.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            crate::service::run_snapshots::<eventfold_domain::account::Account>(
                store,
                read_models,
                eventfold_core::snapshot::DEFAULT_EVERY,
                Some(chrono::Duration::hours(1)),
                shutdown.cancelled_owned(),
            )
            .await;
        })
    };
    let returns = {
        let (flash_sale, shutdown) = (state.flash_sale.clone(), shutdown.clone());
        tokio::spawn(async move { flash_sale.run_returns(shutdown.cancelled_owned()).await })
    };
    if let Some(sagas) = state.sagas() {
        sagas
            .init()
            .await
            .map_err(|e| anyhow::anyhow!("starting the sagas: {e}"))?;
    }
    let sagas = state.sagas().cloned().map(|sagas| {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { sagas.run(shutdown.cancelled_owned()).await })
    });
    let app = router(state);
    tracing::info!(addr = %listener.local_addr()?, "eventfold serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
    shutdown.cancel();
    let _ = projections.await;
    let _ = returns.await;
    let _ = snapshots.await;
    if let Some(sagas) = sagas {
        let _ = sagas.await;
    }
    Ok(())
}
