//! The three sales views, each on its own clock:
//!
//! - `GET /sales/daily` (`daily_sales_by_store`): per **business date** of the event time (UTC,
//!   each day reported at 02:00 the next day). Late data lands on the day it happened and is
//!   counted there as late (`late_total`, `late_orders`, `adjusted`, `last_adjusted_at`).
//! - `GET /sales/realtime` (`real_time_sales`): per hour of the **ingest time**: what arrived when,
//!   never rewritten; a late sale counts in the hour it arrived.
//! - `GET /sales/corrections` (`sales_corrections`): one notice per late effect on a business day,
//!   with the day's total before and after it.

use axum::extract::{Query, State};
use axum::Json;
use chrono::NaiveDate;
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
const READ: [Role; 3] = [Role::Finance, Role::Auditor, Role::Operator];

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
    /// `YYYY-MM-DD`: the business date (UTC date of the event time).
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
    /// The part of `total` that arrived after the day's cutoff (D+1 02:00 UTC), decimal string.
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
        .backend
        .read_models
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

/// A store's sales per business date of the event time (UTC; each day reported at 02:00 the
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
    /// Seconds from the day's cutoff (D+1 02:00 UTC) to that ingest.
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
    let out = notices
        .into_iter()
        .map(|n| CorrectionNotice {
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
        })
        .collect();
    Ok(Json(out))
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
