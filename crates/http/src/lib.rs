//! eventfold's HTTP API (axum): the only crate that serves HTTP for eventfold. One module per
//! resource, each with its wire types (request and response bodies with their OpenAPI schemas);
//! [`router`] builds the routes and [`serve`] runs them beside the application's workers. The web
//! console (`/console`) is served from here too: static assets over the same API.
//!
//! Errors are JSON `{"code": "...", "message": "..."}` with a stable code ([`error`]): 400
//! malformed requests, 404 unknown ids, 409 conflicts (version, state), 413 oversized bodies, 415
//! wrong content type, 422 unacceptable values; 503 with `Retry-After` when the store is
//! unavailable. Database text never reaches a response body.

mod accounts;
pub mod auth;
mod calendars;
mod command;
mod console;
pub mod contract;
pub mod error;
mod extract;
mod flash_sales;
mod operations;
mod orders;
mod payment_callbacks;
mod periods;
pub mod rate_limit;
mod sales;
mod state;
#[cfg(feature = "testing")]
pub mod testing;
mod trending;
mod uploads;
mod wire;

pub use auth::AuthConfig;
pub use error::{ApiError, ApiErrorBody};
pub use operations::metrics_handle;
pub use state::AppState;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use contract::Contract;
use eventfold_app::backend::Backend;
use eventfold_app::runtime::{Config, Runtime};
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

/// Largest accepted request body, in bytes (64 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The OpenAPI document of the API (served at `/openapi.json`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "eventfold",
        description = "Event-sourced shop backend: accounts, orders, sales views (with late data, period close and the exception queue), flash sales."
    ),
    paths(
        accounts::open_account,
        accounts::deposit,
        accounts::withdraw,
        orders::create_order,
        orders::pay_order,
        orders::confirm_order,
        orders::ship_order,
        orders::complete_order,
        orders::cancel_order,
        orders::refund_order,
        flash_sales::open_flash_sale,
        flash_sales::purchase,
        flash_sales::get_flash_sale,
        payment_callbacks::payment_callback,
        accounts::get_account,
        accounts::account_history,
        accounts::get_balance,
        orders::get_order,
        orders::order_history,
        sales::daily_sales,
        sales::explain_daily,
        sales::realtime_sales,
        sales::sales_corrections,
        sales::correction_stream,
        trending::get_trending,
        uploads::upload_sales,
        calendars::get_calendar,
        calendars::set_calendar,
        periods::get_periods,
        periods::enable_periods,
        periods::soft_close_period,
        periods::reopen_period,
        periods::close_period,
        periods::get_exceptions,
        periods::approve_exception,
        periods::reject_exception,
        operations::projections,
        operations::activate_projection,
        operations::rebuild_projection,
        operations::whoami,
        operations::operations,
        operations::verify_chain,
        console::index,
        console::asset,
        operations::healthz,
        operations::prometheus,
        operations::ready
    ),
    components(schemas(ApiErrorBody)),
    modifiers(&Contract)
)]
pub struct ApiDoc;

/// Builds the router over `state`: every route, a JSON 404 and 405, and the body limit
/// ([`MAX_BODY_BYTES`]).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/accounts", post(accounts::open_account))
        .route("/accounts/{id}", get(accounts::get_account))
        .route("/accounts/{id}/history", get(accounts::account_history))
        .route("/accounts/{id}/deposit", post(accounts::deposit))
        .route("/accounts/{id}/withdraw", post(accounts::withdraw))
        .route("/balances/{id}", get(accounts::get_balance))
        .route("/orders", post(orders::create_order))
        .route("/orders/{id}", get(orders::get_order))
        .route("/orders/{id}/history", get(orders::order_history))
        .route("/orders/{id}/pay", post(orders::pay_order))
        .route("/orders/{id}/confirm", post(orders::confirm_order))
        .route("/orders/{id}/ship", post(orders::ship_order))
        .route("/orders/{id}/complete", post(orders::complete_order))
        .route("/orders/{id}/cancel", post(orders::cancel_order))
        .route("/orders/{id}/refund", post(orders::refund_order))
        .route("/flash-sales", post(flash_sales::open_flash_sale))
        .route("/flash-sales/{sku}", get(flash_sales::get_flash_sale))
        .route("/flash-sales/{sku}/purchases", post(flash_sales::purchase))
        .route(
            "/payments/callbacks",
            post(payment_callbacks::payment_callback),
        )
        .route("/sales/daily", get(sales::daily_sales))
        .route("/sales/daily/explain", get(sales::explain_daily))
        .route("/sales/realtime", get(sales::realtime_sales))
        .route("/sales/corrections", get(sales::sales_corrections))
        .route("/sales/corrections/stream", get(sales::correction_stream))
        .route("/trending", get(trending::get_trending))
        .route(
            "/stores/{store}/uploads",
            post(uploads::upload_sales).layer(DefaultBodyLimit::max(uploads::MAX_UPLOAD_BYTES)),
        )
        .route(
            "/stores/{store}/calendar",
            get(calendars::get_calendar).post(calendars::set_calendar),
        )
        .route(
            "/stores/{store}/periods",
            get(periods::get_periods).post(periods::enable_periods),
        )
        .route(
            "/stores/{store}/periods/{period}/soft-close",
            post(periods::soft_close_period),
        )
        .route(
            "/stores/{store}/periods/{period}/reopen",
            post(periods::reopen_period),
        )
        .route(
            "/stores/{store}/periods/{period}/close",
            post(periods::close_period),
        )
        .route("/exceptions", get(periods::get_exceptions))
        .route("/exceptions/{id}/approve", post(periods::approve_exception))
        .route("/exceptions/{id}/reject", post(periods::reject_exception))
        .route("/projections", get(operations::projections))
        .route(
            "/projections/{name}/activate",
            post(operations::activate_projection),
        )
        .route(
            "/projections/{name}/rebuild",
            post(operations::rebuild_projection),
        )
        .route("/whoami", get(operations::whoami))
        .route("/operations", get(operations::operations))
        .route("/chain/verify", post(operations::verify_chain))
        .route("/console", get(console::index))
        .route("/console/assets/{file}", get(console::asset))
        .route("/healthz", get(operations::healthz))
        .route("/metrics", get(operations::prometheus))
        .route("/ready", get(operations::ready))
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .route_layer(axum::middleware::from_fn(operations::track_requests))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate_once,
        ))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` is cancelled, with every background worker
/// `config` asks for running beside it ([`Runtime::start`]), authenticating as `auth` says (see
/// [`auth`]); then drains in-flight requests, stops the workers and waits for them before
/// returning.
///
/// # Errors
/// The runtime cannot start (see [`Runtime::start`]), the server would run open on an address
/// that is not loopback without [`AuthConfig::insecure`], or the listener fails.
pub async fn serve(
    backend: Backend,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
    config: Config,
    auth: AuthConfig,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    // The recorder goes in before any worker counts anything: a counter bumped before the first
    // scrape would otherwise be lost.
    operations::metrics_handle();
    let runtime = Runtime::start(backend, config, shutdown.clone()).await?;
    let upkeep = tokio::spawn(operations::run_metrics_upkeep(shutdown.clone()));
    let open = auth.is_open(&runtime.app().keys);
    if open && !addr.ip().is_loopback() && !auth.insecure {
        runtime.stop().await;
        anyhow::bail!(
            "refusing to serve {addr} without credentials: create an API key (eventfold keys create), \
             listen on a loopback address, or pass --insecure"
        );
    }
    if open {
        tracing::warn!(
            %addr,
            "no credentials configured: serving open, every request acts in tenant default \
             (or its X-Tenant-Id) with every role; create an API key to require credentials"
        );
    } else {
        tracing::info!(
            keys = runtime.app().keys.len(),
            jwt = auth.jwt.is_some(),
            "credentials required"
        );
    }
    let app = router(
        AppState::new(runtime.app().clone())
            .with_auth(auth)
            .with_shutdown(shutdown.clone()),
    );
    tracing::info!(%addr, "eventfold serving");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    runtime.stop().await;
    upkeep.abort();
    tracing::info!("eventfold stopped");
    Ok(served?)
}

/// Serves only `GET /metrics` (the process's Prometheus metrics, no credentials) and
/// `GET /healthz` on `listener` until `shutdown`: for the processes that have no API of their own
/// (`eventfold relay`, `consume`, `transform`), so their relay backlog, consumer lag, dead
/// letters and circuit breaker can be scraped. Bind it where only the scraper reaches. Call
/// [`metrics_handle`] before the process records anything (this function installs the recorder
/// too, but a task spawned with it may run after the first samples).
///
/// # Errors
/// The listener fails.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    operations::metrics_handle();
    let upkeep = tokio::spawn(operations::run_metrics_upkeep(shutdown.clone()));
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        operations::PROMETHEUS_CONTENT_TYPE,
                    )],
                    metrics_handle().render(),
                )
            }),
        )
        .route("/healthz", get(operations::healthz));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    upkeep.abort();
    served
}
