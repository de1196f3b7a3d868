//! Query endpoints: accounts as of a time or version (M3), orders and their audit timeline, the
//! sales views, projection status, health.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use eventfold_core::{Aggregate, Projection, ProjectionStatus, Replayed};
use eventfold_domain::account::Account;
use eventfold_domain::order::Order;
use eventfold_domain::projections::{
    AccountBalance, OrderSummary, OrderSummaryProjection, SalesBucket, BALANCE_BY_ACCOUNT,
    DAILY_SALES_BY_STORE, ORDER_SUMMARY, REAL_TIME_SALES,
};
use eventfold_domain::Currency;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::commands::AccountView;
use super::{check_id, versioned, ApiError, AppState, IdPath};
use crate::service::{timeline, AsOf, TimelineEntry};

/// Most buckets one sales query returns.
const MAX_BUCKETS: usize = 100_000;

/// `GET /accounts/{id}` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AccountQuery {
    /// RFC 3339 instant: the state from every event whose event time is at or before it.
    #[serde(rename = "asOf")]
    pub as_of: Option<String>,
    /// A stream version: the state right after it.
    pub version: Option<u64>,
}

/// An account at a point in time.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccountAsOf {
    /// The account.
    #[serde(flatten)]
    pub account: AccountView,
    /// The instant asked for, if any.
    pub as_of: Option<DateTime<Utc>>,
}

fn parse_rfc3339(field: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_query",
                format!("{field} must be an RFC 3339 time such as 1997-03-01T00:00:00Z: {e}"),
            )
        })
}

/// An account's state, now or as of a time (`asOf`) or version (`version`).
#[utoipa::path(get, path = "/accounts/{id}", params(("id" = String, Path), AccountQuery),
    responses((status = 200, body = AccountAsOf), (status = 400, body = super::ApiErrorBody), (status = 404, body = super::ApiErrorBody)))]
pub async fn get_account(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    query: Result<Query<AccountQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    check_id("account id", &id)?;
    let (as_of, at) = match (&query.as_of, query.version) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "give asOf or version, not both",
            ))
        }
        (Some(t), None) => {
            let t = parse_rfc3339("asOf", t)?;
            (AsOf::Time(t), Some(t))
        }
        (None, Some(0)) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "version must be at least 1",
            ))
        }
        (None, Some(v)) => (AsOf::Version(v), None),
        (None, None) => (AsOf::Latest, None),
    };
    // From the newest usable snapshot plus the events after it (M4).
    let loaded = crate::service::load_snapshotted::<Account>(
        state.service.store().as_ref(),
        state.read_models.as_ref(),
        &id,
        as_of,
    )
    .await?;
    let loaded: Replayed<Account> = loaded.ok_or_else(|| {
        ApiError::not_found(
            "account_not_found",
            format!("account {id} has no events in range"),
        )
    })?;
    let body = AccountAsOf {
        account: AccountView::new(&id, &loaded.state, loaded.version),
        as_of: at,
    };
    Ok(versioned(StatusCode::OK, &body, loaded.version))
}

/// An account's balance from the `balance_by_account` read model (may trail commands by
/// milliseconds).
#[utoipa::path(get, path = "/balances/{id}", params(("id" = String, Path)),
    responses((status = 200, body = AccountBalance), (status = 404, body = super::ApiErrorBody)))]
pub async fn get_balance(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Json<AccountBalance>, ApiError> {
    check_id("account id", &id)?;
    let docs = state
        .read_models
        .get_docs(BALANCE_BY_ACCOUNT, std::slice::from_ref(&id))
        .await?;
    let (_, doc) = docs.into_iter().next().ok_or_else(|| {
        ApiError::not_found("account_not_found", format!("account {id} not found"))
    })?;
    Ok(Json(decode_doc(&doc)?))
}

fn decode_doc<T: serde::de::DeserializeOwned>(doc: &str) -> Result<T, ApiError> {
    serde_json::from_str(doc).map_err(|e| {
        eventfold_core::StoreError::Corrupt(format!("read model document: {e}")).into()
    })
}

/// An order's summary from the `order_summary` read model; when the read model trails the order's
/// stream, the summary is folded from the stream so a client reads its own writes.
#[utoipa::path(get, path = "/orders/{id}", params(("id" = String, Path)),
    responses((status = 200, body = OrderSummary), (status = 404, body = super::ApiErrorBody)))]
pub async fn get_order(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    check_id("order id", &id)?;
    let stream_id = Order::stream_id(&id);
    let store = state.service.store();
    let (docs, version) = tokio::try_join!(
        state
            .read_models
            .get_docs(ORDER_SUMMARY, std::slice::from_ref(&id)),
        store.stream_version(&stream_id)
    )?;
    let summary: Option<OrderSummary> = docs.first().map(|(_, d)| decode_doc(d)).transpose()?;
    let summary = match summary {
        Some(s) if s.version >= version => Some(s),
        _ => {
            let projection = OrderSummaryProjection;
            let mut doc = None;
            for event in state.service.read_stream(&stream_id).await? {
                if let Some((_, input)) = projection
                    .select(&event)
                    .map_err(eventfold_core::StoreError::Corrupt)?
                {
                    doc = projection.apply(doc, input, &event);
                }
            }
            doc
        }
    };
    let summary = summary
        .ok_or_else(|| ApiError::not_found("order_not_found", format!("order {id} not found")))?;
    let v = summary.version;
    Ok(versioned(StatusCode::OK, &summary, v))
}

/// An order's audit timeline: who, when, what changed, and the state before each change; with
/// its payment saga's events (stream `paysaga-{id}`), in log order.
#[utoipa::path(get, path = "/orders/{id}/history", params(("id" = String, Path)),
    responses((status = 200, body = Vec<TimelineEntry>), (status = 404, body = super::ApiErrorBody)))]
pub async fn order_history(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Json<Vec<TimelineEntry>>, ApiError> {
    check_id("order id", &id)?;
    let events = state.service.read_stream(&Order::stream_id(&id)).await?;
    if events.is_empty() {
        return Err(ApiError::not_found(
            "order_not_found",
            format!("order {id} not found"),
        ));
    }
    let mut entries = timeline::<Order>(&events)?;
    let saga = state
        .service
        .read_stream(&eventfold_domain::payment_saga::PaymentSaga::stream_id(&id))
        .await?;
    entries.extend(timeline::<eventfold_domain::payment_saga::PaymentSaga>(
        &saga,
    )?);
    entries.sort_by_key(|e| e.global_position);
    Ok(Json(entries))
}

/// `GET /sales/daily` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DailyQuery {
    /// Store id (required).
    pub store: Option<String>,
    /// First day, `YYYY-MM-DD` (inclusive).
    pub from: Option<String>,
    /// Last day, `YYYY-MM-DD` (inclusive).
    pub to: Option<String>,
}

/// One day of a store's sales in one currency.
#[derive(Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DailySales {
    /// `YYYY-MM-DD` (UTC day of the event time).
    pub date: String,
    /// Store id.
    pub store: String,
    /// Paid minus refunded, decimal string.
    #[schema(value_type = String, example = "1234.56")]
    pub total: Decimal,
    /// ISO 4217 code.
    pub currency: Currency,
    /// Orders paid that day.
    pub orders: u64,
    /// Refunds that day.
    pub refunds: u64,
}

/// One hour of a store's sales in one currency, by ingest time.
#[derive(Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct HourlySales {
    /// Start of the hour, RFC 3339 UTC.
    pub hour: String,
    /// Store id.
    pub store: String,
    /// Paid minus refunded, decimal string.
    #[schema(value_type = String, example = "1234.56")]
    pub total: Decimal,
    /// ISO 4217 code.
    pub currency: Currency,
    /// Orders paid in that hour.
    pub orders: u64,
    /// Refunds in that hour.
    pub refunds: u64,
}

fn required_store(store: Option<String>) -> Result<String, ApiError> {
    let store = store.ok_or_else(|| {
        ApiError::bad_request("missing_parameter", "query parameter store is required")
    })?;
    check_id("store", &store)?;
    Ok(store)
}

fn parse_day(field: &str, s: &str) -> Result<NaiveDate, ApiError> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
        ApiError::bad_request(
            "invalid_query",
            format!("{field} must be a date like 1997-01-01, got {s:?}"),
        )
    })
}

async fn buckets(
    state: &AppState,
    projection: &str,
    store: &str,
    from: &str,
    to: &str,
) -> Result<Vec<SalesBucket>, ApiError> {
    let docs = state
        .read_models
        .range_docs(
            projection,
            &format!("{store}|{from}"),
            &format!("{store}|{to}|~"),
            MAX_BUCKETS,
        )
        .await?;
    docs.iter().map(|(_, d)| decode_doc(d)).collect()
}

/// A store's sales per day of the event time: late data lands on the day it happened.
#[utoipa::path(get, path = "/sales/daily", params(DailyQuery),
    responses((status = 200, body = Vec<DailySales>), (status = 400, body = super::ApiErrorBody)))]
pub async fn daily_sales(
    State(state): State<AppState>,
    query: Result<Query<DailyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<DailySales>>, ApiError> {
    let Query(q) = query?;
    let store = required_store(q.store)?;
    let from = q
        .from
        .as_deref()
        .map(|s| parse_day("from", s))
        .transpose()?;
    let to = q.to.as_deref().map(|s| parse_day("to", s)).transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("from {f} is after to {t}"),
            ));
        }
    }
    let from = from.map_or("0000-00-00".into(), |d| d.to_string());
    let to = to.map_or("9999-99-99".into(), |d| d.to_string());
    let out = buckets(&state, DAILY_SALES_BY_STORE, &store, &from, &to)
        .await?
        .into_iter()
        .map(|b| DailySales {
            date: b.period,
            store: b.store,
            total: b.total,
            currency: b.currency,
            orders: b.orders,
            refunds: b.refunds,
        })
        .collect();
    Ok(Json(out))
}

/// `GET /sales/realtime` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RealtimeQuery {
    /// Store id (required).
    pub store: Option<String>,
    /// RFC 3339 instant: hours starting at or after it.
    pub from: Option<String>,
    /// RFC 3339 instant: hours starting at or before it.
    pub to: Option<String>,
}

/// A store's sales per hour of the ingest time: what arrived when; late data is never moved.
#[utoipa::path(get, path = "/sales/realtime", params(RealtimeQuery),
    responses((status = 200, body = Vec<HourlySales>), (status = 400, body = super::ApiErrorBody)))]
pub async fn realtime_sales(
    State(state): State<AppState>,
    query: Result<Query<RealtimeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<HourlySales>>, ApiError> {
    let Query(q) = query?;
    let store = required_store(q.store)?;
    let hour = |field: &str, s: &Option<String>| -> Result<Option<String>, ApiError> {
        s.as_deref()
            .map(|s| parse_rfc3339(field, s).map(|t| t.format("%Y-%m-%dT%H:00:00Z").to_string()))
            .transpose()
    };
    let from = hour("from", &q.from)?.unwrap_or_else(|| "0000".into());
    let to = hour("to", &q.to)?.unwrap_or_else(|| "9999".into());
    let out = buckets(&state, REAL_TIME_SALES, &store, &from, &to)
        .await?
        .into_iter()
        .map(|b| HourlySales {
            hour: b.period,
            store: b.store,
            total: b.total,
            currency: b.currency,
            orders: b.orders,
            refunds: b.refunds,
        })
        .collect();
    Ok(Json(out))
}

/// Every projection's checkpoint and lag.
#[utoipa::path(get, path = "/projections", responses((status = 200, description = "checkpoint, head, lag_events, last_lag_ms, lag_p95_ms per projection")))]
pub async fn projections(
    State(state): State<AppState>,
) -> Result<Json<Vec<ProjectionStatus>>, ApiError> {
    Ok(Json(state.runner.status().await?))
}

/// The process's Prometheus recorder (installed on first use; every `metrics::` call in the
/// process, including the Kafka relay and consumers, lands in it).
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
/// `eventfold_breaker_opened_total`, `eventfold_dead_letter_total`).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
pub async fn prometheus(State(state): State<AppState>) -> Response {
    let handle = metrics_handle();
    match state.runner.status().await {
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
    match state.service.store().head_position().await {
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
