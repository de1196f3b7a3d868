//! `GET /trending`: a store's hottest SKUs in event-time windows with a grace period (see
//! `eventfold_app::sales_windows`). Windows are tumbling (`advance` = `size`) or hopping, of
//! whole minutes; "now" is the store's newest event time, not the server's clock, so a store
//! that uploads yesterday's sales sees yesterday's windows.

use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use eventfold_app::sales_windows::{trending, BASE_SECS};
use eventfold_domain::identity::Role;
use eventfold_domain::windows::{parse_window_duration, WindowSpec};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiErrorBody};
use crate::extract::check_id;
use crate::state::AppState;

/// Who may read the trending windows.
pub(crate) const READ: [Role; 4] = [Role::Finance, Role::Auditor, Role::Operator, Role::Support];

/// The most windows or SKUs per window one query returns.
pub const MAX_COUNT: u32 = 100;

/// The longest stretch of time one query may cover: 7 days.
const MAX_SPAN_SECS: i64 = 7 * 24 * 3600;

/// `GET /trending` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TrendingQuery {
    /// Store id (required).
    pub store: Option<String>,
    /// Window length: whole minutes or hours (`5m`, `1h`); default `5m`.
    pub size: Option<String>,
    /// Distance between window starts, dividing `size` (`1m`); default `size` (tumbling).
    pub advance: Option<String>,
    /// SKUs per window, hottest first (1 to 100); default 10.
    pub top: Option<u32>,
    /// How many of the most recent windows (1 to 100); default every window holding the
    /// store's newest event time and the two before them (`size / advance + 2`, at most 100).
    pub windows: Option<u32>,
}

/// One SKU's demand in a window.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TrendingSkuBody {
    /// The SKU.
    pub sku: String,
    /// ISO 4217 code of the revenue.
    #[schema(example = "USD")]
    pub currency: String,
    /// Units ordered in the window.
    pub units: u64,
    /// Revenue of those order lines, decimal string.
    #[schema(value_type = String, example = "123.40")]
    pub revenue: Decimal,
}

/// One window.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TrendingWindowBody {
    /// Start (inclusive), RFC 3339 UTC.
    pub start: DateTime<Utc>,
    /// End (exclusive), RFC 3339 UTC.
    pub end: DateTime<Utc>,
    /// `open` (records may still come within the grace period) or `final` (the watermark has
    /// passed its end: a later record corrects it with a `late-after-grace` notice).
    #[schema(example = "open")]
    pub state: String,
    /// Records that corrected the window after it was final (never dropped).
    pub late_corrections: u64,
    /// The hottest SKUs: most units first, then most revenue.
    pub top: Vec<TrendingSkuBody>,
}

/// A store's recent windows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TrendingBody {
    /// Store id.
    pub store: String,
    /// Window length, seconds.
    pub size_seconds: i64,
    /// Distance between window starts, seconds.
    pub advance_seconds: i64,
    /// The grace period the server runs, seconds.
    pub grace_seconds: i64,
    /// The newest event time of an order placed at the store, RFC 3339 UTC; `null` when none.
    pub newest_event_time: Option<DateTime<Utc>>,
    /// The newest event time minus the grace period: windows ending at or before it are final.
    pub watermark: Option<DateTime<Utc>>,
    /// The most recent windows, newest first.
    pub windows: Vec<TrendingWindowBody>,
}

fn minutes(field: &str, text: &str) -> Result<i64, ApiError> {
    crate::contract::check(field, text, crate::contract::WINDOW_DURATION)
        .map_err(|e| e.with_code("invalid_window"))?;
    let secs = parse_window_duration(text)
        .map_err(|m| ApiError::unprocessable("invalid_window", format!("{field}: {m}")))?;
    if secs % BASE_SECS != 0 {
        return Err(ApiError::unprocessable(
            "invalid_window",
            format!("{field} must be whole minutes, got {text}"),
        ));
    }
    Ok(secs)
}

fn count(field: &str, n: Option<u32>) -> Result<Option<u32>, ApiError> {
    match n {
        Some(n) if !(1..=MAX_COUNT).contains(&n) => Err(ApiError::unprocessable(
            "invalid_query",
            format!("{field} must be 1 to {MAX_COUNT}, got {n}"),
        )),
        n => Ok(n),
    }
}

/// The hottest SKUs of a store's current and recent event-time windows, each marked open or
/// final (see the module docs). Windows count the lines of orders placed, at the order's event
/// time; the store's newest event time is "now".
#[utoipa::path(get, path = "/trending", params(TrendingQuery),
    responses((status = 200, body = TrendingBody), (status = 400, body = ApiErrorBody),
        (status = 422, body = ApiErrorBody)))]
pub async fn get_trending(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<TrendingQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TrendingBody>, ApiError> {
    caller.require(&READ)?;
    let Query(q) = query?;
    let store = q.store.ok_or_else(|| {
        ApiError::bad_request("missing_parameter", "query parameter store is required")
    })?;
    check_id("store", &store)?;
    let size = minutes("size", q.size.as_deref().unwrap_or("5m"))?;
    let advance = match q.advance.as_deref() {
        Some(a) => minutes("advance", a)?,
        None => size,
    };
    let spec = WindowSpec::new(size, advance, 0)
        .map_err(|m| ApiError::unprocessable("invalid_window", m))?;
    let top = count("top", q.top)?.unwrap_or(10);
    let windows = count("windows", q.windows)?
        .map_or_else(|| (size / advance + 2).min(i64::from(MAX_COUNT)), i64::from);
    if (windows - 1) * advance + size > MAX_SPAN_SECS {
        return Err(ApiError::unprocessable(
            "invalid_window",
            format!(
                "{windows} windows of {size} s every {advance} s cover more than 7 days; ask for fewer"
            ),
        ));
    }
    let t = trending(
        state.app.backend.read_models.as_ref(),
        &caller.scope(&store),
        spec,
        windows as usize,
        top as usize,
    )
    .await?;
    Ok(Json(TrendingBody {
        store,
        size_seconds: size,
        advance_seconds: advance,
        grace_seconds: t.grace_secs,
        newest_event_time: t.newest_event_time,
        watermark: t.watermark,
        windows: t
            .windows
            .into_iter()
            .map(|w| TrendingWindowBody {
                start: w.start,
                end: w.end,
                state: if w.is_final { "final" } else { "open" }.into(),
                late_corrections: w.late_corrections,
                top: w
                    .top
                    .into_iter()
                    .map(|s| TrendingSkuBody {
                        sku: s.sku,
                        currency: s.currency,
                        units: s.units,
                        revenue: s.revenue,
                    })
                    .collect(),
            })
            .collect(),
    }))
}
