//! The three sales views, each on its own clock:
//!
//! - `GET /sales/daily` (`daily_sales_by_store`): per **business date** of the event time in the
//!   store's calendar (`/stores/{store}/calendar`: its time zone, default UTC, and its cutoff,
//!   default 02:00 the next day, when the day is reported). Late data lands on the day it happened and is
//!   counted there as late (`late_total`, `late_orders`, `adjusted`, `last_adjusted_at`).
//! - `GET /sales/realtime` (`real_time_sales`): per hour of the **ingest time**: what arrived when,
//!   never rewritten; a late sale counts in the hour it arrived.
//! - `GET /sales/corrections` (`sales_corrections`): one notice per late effect on a business day,
//!   with the day's total before and after it; `GET /sales/corrections/stream` follows them live
//!   as server-sent events, resumable with `Last-Event-ID`.

use axum::extract::{Query, State};
use axum::Json;
use chrono::NaiveDate;
use eventfold_core::tenant;
use eventfold_domain::identity::Role;
use eventfold_domain::projections::{SalesBucket, DAILY_SALES_BY_STORE, REAL_TIME_SALES};
use eventfold_domain::reporting::{SalesCorrectionNotice, SALES_CORRECTIONS};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiErrorBody};
use crate::extract::{check_id, parse_rfc3339};
use crate::operations::decode_doc;
use crate::state::AppState;
use crate::wire;

/// Most buckets one sales query returns.
const MAX_BUCKETS: usize = 100_000;

/// Who may read the sales views.
pub(crate) const READ: [Role; 3] = [Role::Finance, Role::Auditor, Role::Operator];

/// `GET /sales/daily` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DailyQuery {
    /// Store id (required).
    pub store: Option<String>,
    /// First day, `YYYY-MM-DD` (inclusive).
    pub from: Option<String>,
    /// Last day, `YYYY-MM-DD` (inclusive).
    pub to: Option<String>,
}

/// One business day of a store's sales in one currency.
#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct DailySales {
    /// `YYYY-MM-DD`: the business date (the date of the event time in the store's time zone).
    pub date: String,
    /// Store id.
    pub store: String,
    /// Paid minus refunded, decimal string.
    #[schema(value_type = String, example = "1234.56")]
    pub total: Decimal,
    /// ISO 4217 code.
    pub currency: wire::Currency,
    /// Orders paid that day.
    pub orders: u64,
    /// Refunds that day.
    pub refunds: u64,
    /// The part of `total` that arrived after the day's cutoff (default D+1 02:00 in the store's
    /// time zone), decimal string.
    #[schema(value_type = String, example = "12.30")]
    pub late_total: Decimal,
    /// Paid orders that arrived after the day's cutoff.
    pub late_orders: u64,
    /// Whether the day changed after it was reported (`/sales/corrections` lists each change).
    pub adjusted: bool,
    /// Ingest time of the latest late arrival, RFC 3339 UTC; `null` when none.
    pub last_adjusted_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// One hour of a store's sales in one currency, by ingest time.
#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct HourlySales {
    /// Start of the hour, RFC 3339 UTC.
    pub hour: String,
    /// Store id.
    pub store: String,
    /// Paid minus refunded, decimal string.
    #[schema(value_type = String, example = "1234.56")]
    pub total: Decimal,
    /// ISO 4217 code.
    pub currency: wire::Currency,
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
    let well_formed = crate::contract::check(field, s, crate::contract::DAY).is_ok();
    well_formed
        .then(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
        .flatten()
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("{field} must be a date like 1997-01-01, got {s:?}"),
            )
        })
}

/// The documents of `projection` whose keys are `{store}|{period}|...` (scoped to the caller's
/// tenant) with `from <= period <= to`, at most `max`, in key order.
async fn store_range<T: serde::de::DeserializeOwned>(
    state: &AppState,
    caller: &Caller,
    projection: &str,
    (store, from, to): (&str, &str, &str),
    max: usize,
) -> Result<Vec<T>, ApiError> {
    let docs = state
        .app
        .views
        .range_docs(
            projection,
            &caller.scope(&format!("{store}|{from}")),
            &caller.scope(&format!("{store}|{to}|~")),
            max,
        )
        .await?;
    docs.iter().map(|(_, d)| decode_doc(d)).collect()
}

async fn buckets(
    state: &AppState,
    caller: &Caller,
    projection: &str,
    store: &str,
    from: &str,
    to: &str,
) -> Result<Vec<SalesBucket>, ApiError> {
    store_range(state, caller, projection, (store, from, to), MAX_BUCKETS).await
}

/// A store's sales per business date of the event time (in the store's calendar; by default UTC
/// days, each reported at 02:00 the
/// next day): late data lands on the day it happened and is counted there as late.
#[utoipa::path(get, path = "/sales/daily", params(DailyQuery),
    responses((status = 200, body = Vec<DailySales>), (status = 400, body = ApiErrorBody)))]
pub async fn daily_sales(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<DailyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<DailySales>>, ApiError> {
    caller.require(&READ)?;
    let Query(q) = query?;
    let (store, from, to) = day_range(q)?;
    let out = buckets(&state, &caller, DAILY_SALES_BY_STORE, &store, &from, &to)
        .await?
        .into_iter()
        .map(|b| DailySales {
            date: b.period,
            store: b.store,
            total: b.total,
            currency: wire::Currency(b.currency),
            orders: b.orders,
            refunds: b.refunds,
            late_total: b.late_total,
            late_orders: b.late_orders,
            adjusted: b.adjusted,
            last_adjusted_at: b.last_adjusted_at,
        })
        .collect();
    Ok(Json(out))
}

/// `GET /sales/daily/explain` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExplainQuery {
    /// Store id (required).
    pub store: Option<String>,
    /// The business date, `YYYY-MM-DD` (required).
    pub date: Option<String>,
    /// The version of the daily view to explain (default: the one queries read).
    pub version: Option<u32>,
}

/// Where a day's total comes from: every event that changed the total of `store` on `date`
/// (one explanation per currency), with its order, type, actor, event and ingest times, amount
/// and whether it arrived late, and the version of `daily_sales_by_store` that counted it. The
/// log is replayed through that version's own code, so the contributions sum to the total it
/// holds (unless the view lags the log, which `sum` against `total` shows). Reads the whole
/// log: seconds on a long one. An empty list: nothing counts on that date.
#[utoipa::path(get, path = "/sales/daily/explain", params(ExplainQuery),
    responses((status = 200, body = Vec<eventfold_app::explain::Explanation>),
        (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
pub async fn explain_daily(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ExplainQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<eventfold_app::explain::Explanation>>, ApiError> {
    caller.require(&READ)?;
    let Query(q) = query?;
    let store = required_store(q.store)?;
    let date = q.date.ok_or_else(|| {
        ApiError::bad_request("missing_parameter", "query parameter date is required")
    })?;
    let date = parse_day("date", &date)?;
    let active = state.app.views.active(DAILY_SALES_BY_STORE);
    let found = eventfold_app::explain::explain_daily(
        &state.app.backend.events,
        &state.app.backend.read_models,
        (&caller.0.tenant, &store, date),
        q.version.unwrap_or(active),
        active,
    )
    .await
    .map_err(|e| match e {
        eventfold_app::explain::ExplainError::Unknown(m) => {
            ApiError::not_found("unknown_version", m)
        }
        eventfold_app::explain::ExplainError::Store(e) => e.into(),
    })?;
    Ok(Json(found))
}

/// The store and the first and last day (as key bounds) of a daily query.
fn day_range(q: DailyQuery) -> Result<(String, String, String), ApiError> {
    let store = required_store(q.store)?;
    let from = q
        .from
        .as_deref()
        .map(|s| parse_day("from", s))
        .transpose()?;
    let to = q.to.as_deref().map(|s| parse_day("to", s)).transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(ApiError::unprocessable(
                "invalid_query",
                format!("from {f} is after to {t}"),
            ));
        }
    }
    let from = from.map_or("0000-00-00".into(), |d| d.to_string());
    let to = to.map_or("9999-99-99".into(), |d| d.to_string());
    Ok((store, from, to))
}

/// One late effect on a business day's sales.
#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct CorrectionNotice {
    /// `YYYY-MM-DD`: the business date the effect belongs to.
    pub date: String,
    /// Store id.
    pub store: String,
    /// ISO 4217 code of the amounts.
    pub currency: wire::Currency,
    /// What the effect added to the day's total (negative for a refund), decimal string.
    #[schema(value_type = String, example = "11.77")]
    pub delta: Decimal,
    /// What it added to the day's paid orders (1 for a sale, 0 for a refund).
    pub orders_delta: i64,
    /// The day's total before the effect, decimal string.
    #[schema(value_type = String, example = "100.00")]
    pub before: Decimal,
    /// The day's total after it, decimal string.
    #[schema(value_type = String, example = "111.77")]
    pub after: Decimal,
    /// `late-arrival` (a sale), `refund`, `correction` or `exception-approved`.
    #[schema(example = "late-arrival")]
    pub reason: String,
    /// The event that changed the day.
    pub cause_event_id: uuid::Uuid,
    /// When that event was ingested, RFC 3339 UTC.
    pub ingested_at: chrono::DateTime<chrono::Utc>,
    /// Seconds from the day's cutoff (default D+1 02:00 in the store's time zone) to that ingest.
    pub lateness_seconds: i64,
}

/// Most notices one query returns.
const MAX_NOTICES: usize = 100_000;

/// Every change to a store's business days after they were reported (late sales and refunds),
/// by business date, then cause; each is also a `SalesCorrectionNoticed` event in the log.
#[utoipa::path(get, path = "/sales/corrections", params(DailyQuery),
    responses((status = 200, body = Vec<CorrectionNotice>), (status = 400, body = ApiErrorBody)))]
pub async fn sales_corrections(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<DailyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<CorrectionNotice>>, ApiError> {
    caller.require(&READ)?;
    let Query(q) = query?;
    let (store, from, to) = day_range(q)?;
    let notices: Vec<SalesCorrectionNotice> = store_range(
        &state,
        &caller,
        SALES_CORRECTIONS,
        (&store, &from, &to),
        MAX_NOTICES,
    )
    .await?;
    Ok(Json(notices.into_iter().map(correction_body).collect()))
}

fn correction_body(n: SalesCorrectionNotice) -> CorrectionNotice {
    CorrectionNotice {
        date: n.date.format("%Y-%m-%d").to_string(),
        store: n.store,
        currency: wire::Currency(n.currency),
        delta: n.delta,
        orders_delta: n.orders_delta,
        before: n.before,
        after: n.after,
        reason: n.reason.as_str().to_owned(),
        cause_event_id: n.cause_event_id,
        ingested_at: n.ingested_at,
        lateness_seconds: n.lateness_seconds,
    }
}

/// `GET /sales/corrections/stream` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CorrectionStreamQuery {
    /// Store id (required).
    pub store: Option<String>,
    /// Start after this global position (0: every notice from the beginning of the log).
    /// Default: the `Last-Event-ID` header when a client reconnects, else the log's head when
    /// the stream opens (only notices from now on).
    pub after: Option<u64>,
    /// Keep the stream open and send notices as they are appended (default `true`); `false`
    /// ends it once it has caught up with the log.
    pub follow: Option<bool>,
}

/// Events the stream reads from the log per batch.
const STREAM_BATCH: usize = 1_000;

/// One event of the corrections stream: `id` (its global position, for `Last-Event-ID`),
/// `event: correction` and the notice as JSON data.
fn sse_event(position: u64, notice: SalesCorrectionNotice) -> axum::response::sse::Event {
    let body = correction_body(notice);
    axum::response::sse::Event::default()
        .id(position.to_string())
        .event("correction")
        .json_data(body)
        .unwrap_or_default()
}

/// The notice of `event` when it is a correction notice of `store` in `tenant`.
fn notice_of(
    event: &eventfold_core::RecordedEvent,
    tenant: &str,
    store: &str,
) -> Option<SalesCorrectionNotice> {
    use eventfold_core::Aggregate;
    use eventfold_domain::reporting::{SalesCorrection, SalesCorrectionEvent};
    if eventfold_core::tenant::of(&event.stream_id) != tenant
        || SalesCorrection::id_of_stream(&event.stream_id).is_none()
    {
        return None;
    }
    match eventfold_core::aggregate::decode_recorded::<SalesCorrection>(event) {
        Ok(SalesCorrectionEvent::SalesCorrectionNoticed(n)) if n.store == store => Some(n),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(position = event.global_position, error = %e, "a correction notice does not decode; skipped by the stream");
            None
        }
    }
}

/// A store's correction notices as server-sent events (`text/event-stream`), in log order:
/// each `event: correction` with `id` = the notice's global position and the notice as JSON
/// (the fields of `GET /sales/corrections`). Resumable: a client that reconnects with
/// `Last-Event-ID` gets every notice after it. Comments keep an idle stream alive every 15 s.
#[utoipa::path(get, path = "/sales/corrections/stream",
    params(CorrectionStreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (a global position)")),
    responses((status = 200, content_type = "text/event-stream", body = String,
        description = "Server-sent events: `id: POSITION`, `event: correction`, `data: {notice as in GET /sales/corrections}`"),
        (status = 400, body = ApiErrorBody)))]
pub async fn correction_stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    query: Result<Query<CorrectionStreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::sse::{KeepAlive, Sse};
    use axum::response::IntoResponse;
    caller.require(&READ)?;
    let Query(q) = query?;
    let store = required_store(q.store)?;
    let last_event_id = crate::extract::header_str(&headers, "last-event-id")?
        .map(|v| {
            let v = v.trim();
            crate::contract::check("Last-Event-ID", v, crate::contract::LAST_EVENT_ID)
                .ok()
                .and_then(|()| v.parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_header",
                        format!(
                            "header Last-Event-ID must be a global position such as 42, got {v:?}"
                        ),
                    )
                })
        })
        .transpose()?;
    if q.after.is_some_and(|a| a > i64::MAX as u64) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("after must be a global position up to {}", i64::MAX),
        ));
    }
    let events = state.app.backend.events.clone();
    let tenant = caller.0.tenant.clone();
    let start = match q.after.or(last_event_id) {
        Some(p) => p,
        None => tenant::fenced(&tenant, events.head_position()).await?,
    };
    let follow = q.follow.unwrap_or(true);
    struct Tail {
        events: std::sync::Arc<dyn eventfold_core::EventStore>,
        tenant: String,
        store: String,
        position: u64,
        ready: std::collections::VecDeque<axum::response::sse::Event>,
        follow: bool,
        shutdown: tokio_util::sync::CancellationToken,
    }
    let tail = Tail {
        events,
        tenant,
        store,
        position: start,
        ready: std::collections::VecDeque::new(),
        follow,
        shutdown: state.shutdown.clone(),
    };
    let stream = futures::stream::unfold(tail, |mut t| async move {
        loop {
            if let Some(e) = t.ready.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(e), t));
            }
            let batch = match tenant::fenced(&t.tenant, t.events.read_all(t.position, STREAM_BATCH))
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    // The client reconnects with Last-Event-ID and resumes where it stopped.
                    tracing::warn!(error = %e, "corrections stream: the store failed; closing the stream");
                    return None;
                }
            };
            let Some(last) = batch.last().map(|e| e.global_position) else {
                if !t.follow {
                    return None;
                }
                // The server is stopping: end the stream (the client resumes elsewhere with
                // Last-Event-ID) so the shutdown need not wait for it.
                tokio::select! {
                    () = t.events.wait_for_append(t.position) => {}
                    () = t.shutdown.cancelled() => return None,
                }
                continue;
            };
            for e in &batch {
                if let Some(n) = notice_of(e, &t.tenant, &t.store) {
                    t.ready.push_back(sse_event(e.global_position, n));
                }
            }
            t.position = last;
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

/// `GET /sales/realtime` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
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
    responses((status = 200, body = Vec<HourlySales>), (status = 400, body = ApiErrorBody)))]
pub async fn realtime_sales(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<RealtimeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<HourlySales>>, ApiError> {
    caller.require(&READ)?;
    let Query(q) = query?;
    let store = required_store(q.store)?;
    let hour = |field: &str, s: &Option<String>| -> Result<Option<String>, ApiError> {
        s.as_deref()
            .map(|s| parse_rfc3339(field, s).map(|t| t.format("%Y-%m-%dT%H:00:00Z").to_string()))
            .transpose()
    };
    let from = hour("from", &q.from)?.unwrap_or_else(|| "0000".into());
    let to = hour("to", &q.to)?.unwrap_or_else(|| "9999".into());
    let out = buckets(&state, &caller, REAL_TIME_SALES, &store, &from, &to)
        .await?
        .into_iter()
        .map(|b| HourlySales {
            hour: b.period,
            store: b.store,
            total: b.total,
            currency: wire::Currency(b.currency),
            orders: b.orders,
            refunds: b.refunds,
        })
        .collect();
    Ok(Json(out))
}
