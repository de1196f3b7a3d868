//! Operations: projection status, Prometheus metrics, liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use eventfold_core::ProjectionStatus;
use eventfold_domain::identity::Role;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Decodes a read-model document; one that does not decode is a corrupt store (a 500, logged).
pub(crate) fn decode_doc<T: serde::de::DeserializeOwned>(doc: &str) -> Result<T, ApiError> {
    serde_json::from_str(doc).map_err(|e| {
        eventfold_core::StoreError::Corrupt(format!("read model document: {e}")).into()
    })
}

/// Every projection's checkpoint and lag.
#[utoipa::path(get, path = "/projections", responses((status = 200, description = "checkpoint, head, lag_events, last_lag_ms, lag_p95_ms per projection")))]
pub async fn projections(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<ProjectionStatus>>, ApiError> {
    caller.require(&[Role::Operator, Role::Auditor])?;
    Ok(Json(state.app.runner.status().await?))
}

/// The process's Prometheus recorder (installed on first use, which [`crate::serve`] makes before
/// it starts any worker; every `metrics::` call in the process, including the Kafka relay and
/// consumers, lands in it).
pub fn metrics_handle() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a host application's): then only this
        // handle's own metrics (none) render, and the rest go to that recorder.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only its own");
        }
        handle
    })
}

/// Prometheus metrics (text format 0.0.4): projection lag (`eventfold_projection_lag_events`,
/// `eventfold_projection_lag_p95_seconds`, per projection), the outbox relay
/// (`eventfold_relay_published_total`, `eventfold_relay_backlog_events`), consumers
/// (`eventfold_consumer_lag{group,topic,partition}`, `eventfold_consumer_messages_total`,
/// `eventfold_consumer_retries_total`) and the notification batches (`eventfold_batch_size`,
/// `eventfold_batch_flush_seconds`, `eventfold_batch_retries_total`,
/// `eventfold_breaker_opened_total`, `eventfold_dead_letter_total`), and the correction notices
/// appended (`eventfold_sales_correction_notices_total{reason}`).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
pub async fn prometheus(State(state): State<AppState>, caller: Caller) -> Response {
    if let Err(e) = caller.require(&[Role::Operator]) {
        return e.into_response();
    }
    let handle = metrics_handle();
    match state.app.runner.status().await {
        Ok(statuses) => {
            for s in statuses {
                metrics::gauge!("eventfold_projection_lag_events", "projection" => s.name.clone())
                    .set(s.lag_events as f64);
                if let Some(p95) = s.lag_p95_ms {
                    metrics::gauge!("eventfold_projection_lag_p95_seconds", "projection" => s.name)
                        .set(p95 / 1000.0);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "projection status for /metrics failed"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: the store answers.
#[utoipa::path(get, path = "/ready", responses((status = 200, description = "ready"), (status = 503, description = "store unreachable")))]
pub async fn ready(State(state): State<AppState>) -> Response {
    match state.app.service.store().head_position().await {
        Ok(head) => {
            Json(serde_json::json!({ "status": "ready", "store": "ok", "head_position": head }))
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "status": "not_ready", "store": "unavailable" })),
            )
                .into_response()
        }
    }
}
