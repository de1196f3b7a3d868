//! Period close and the exception queue over HTTP (the same desk as `eventfold periods ...` and
//! `eventfold exceptions ...`; the rules are `eventfold_domain::periods`'):
//!
//! - `GET /stores/{store}/periods`: a store's periods and their states (and seals).
//! - `POST /stores/{store}/periods`: switch period control on (`finance`).
//! - `POST /stores/{store}/periods/{period}/soft-close|reopen|close` with a reason (`finance`):
//!   a close is final and sealed with the period's totals and the hash chain's hash at the close.
//! - `GET /exceptions?store=&state=`: postings a closed period held.
//! - `POST /exceptions/{id}/approve|reject` with a reason (`finance`): approve books the posting
//!   on today's business date (an open period) and raises an `exception-approved` correction
//!   notice; reject records it as not booked. Each exception is decided once.
//!
//! Every change is an event whose actor is the caller.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use eventfold_app::periods::{list_exceptions, PeriodChange, PeriodDesk, PeriodsView};
use eventfold_domain::identity::Role;
use eventfold_domain::periods::{
    parse_max_delay, ExceptionState, ExceptionView, Period, PeriodLength, DEFAULT_MAX_DELAY,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiErrorBody};
use crate::extract::{check_id, CommandBody, CommandHeaders, IdPath};
use crate::state::AppState;
use crate::wire;

/// Who may change periods and decide exceptions.
pub(crate) const FINANCE: [Role; 1] = [Role::Finance];
/// Who may read a store's periods.
pub(crate) const PERIOD_READERS: [Role; 3] = [Role::Finance, Role::Auditor, Role::Operator];
/// Who may read the exception queue.
pub(crate) const EXCEPTION_READERS: [Role; 2] = [Role::Finance, Role::Auditor];

/// `POST /stores/{store}/periods` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnablePeriods {
    /// The first controlled period: a month `YYYY-MM`, or a day `YYYY-MM-DD` for daily periods.
    #[schema(value_type = String, required = true, example = "2026-11")]
    pub from: Option<String>,
    /// `month` or `day`; when given, `from` must be one (default: what `from` is).
    #[schema(value_type = Option<String>, example = "month")]
    pub period: Option<String>,
    /// Time after a period's end at which it closes by itself: a whole number of minutes,
    /// hours or days (`90m`, `72h`, `5d`), at most 366 days and at least the upload window
    /// (2 hours). Default `72h`.
    #[schema(value_type = Option<String>, example = "72h")]
    pub max_delay: Option<String>,
}

/// A change's body: why (required).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Why (1 to 500 characters, not only white space, no control characters).
    #[schema(value_type = String, required = true)]
    pub reason: Option<String>,
}

/// A period's totals in one currency.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PeriodTotalBody {
    /// ISO 4217 code.
    pub currency: wire::Currency,
    /// Paid minus refunded, decimal string.
    #[schema(value_type = String, example = "1234.56")]
    pub total: Decimal,
    /// Orders paid.
    pub orders: u64,
    /// Refunds.
    pub refunds: u64,
}

/// What a close sealed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SealBody {
    /// Global position of the close event: the totals count every posting before it.
    pub through_position: u64,
    /// The hash chain's hash at that position, hex.
    pub chain_hash: String,
    /// The period's totals per currency at the close.
    pub totals: Vec<PeriodTotalBody>,
}

/// One period of a store.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PeriodBody {
    /// `YYYY-MM` (or `YYYY-MM-DD` for daily periods).
    pub period: String,
    /// `open`, `soft_closed` or `closed`.
    #[schema(example = "open")]
    pub state: String,
    /// Reopened after a soft close (the clock does not soft-close it again).
    pub reopened: bool,
    /// When it soft-closes by itself (its end plus the upload window), RFC 3339 UTC.
    pub soft_closes_at: DateTime<Utc>,
    /// When it closes by itself (its end plus the maximum delay), RFC 3339 UTC.
    pub closes_at: DateTime<Utc>,
    /// Its seal, once closed.
    pub seal: Option<SealBody>,
}

/// A store's period control.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PeriodsBody {
    /// Store id.
    pub store: String,
    /// `month` or `day`.
    #[schema(example = "month")]
    pub length: String,
    /// The first controlled business date.
    #[schema(value_type = String, format = Date)]
    pub from: NaiveDate,
    /// Seconds after a period's end at which it closes by itself.
    pub max_delay_seconds: i64,
    /// Seconds after a period's end at which it soft-closes by itself.
    pub upload_window_seconds: i64,
    /// Every controlled period up to the current one, oldest first.
    pub periods: Vec<PeriodBody>,
}

impl From<PeriodsView> for PeriodsBody {
    fn from(v: PeriodsView) -> Self {
        let s = v.settings;
        Self {
            store: s.store,
            length: match s.length {
                PeriodLength::Month => "month",
                PeriodLength::Day => "day",
            }
            .into(),
            from: s.from,
            max_delay_seconds: s.max_delay_seconds,
            upload_window_seconds: s.upload_window_seconds,
            periods: v
                .periods
                .into_iter()
                .map(|p| PeriodBody {
                    period: p.period,
                    state: p.state.as_str().into(),
                    reopened: p.reopened,
                    soft_closes_at: p.soft_closes_at,
                    closes_at: p.closes_at,
                    seal: p.seal.map(|s| SealBody {
                        through_position: s.through_position,
                        chain_hash: s.chain_hash,
                        totals: s
                            .totals
                            .into_iter()
                            .map(|t| PeriodTotalBody {
                                currency: wire::Currency(t.currency),
                                total: t.total,
                                orders: t.orders,
                                refunds: t.refunds,
                            })
                            .collect(),
                    }),
                })
                .collect(),
        }
    }
}

fn desk(state: &AppState) -> PeriodDesk {
    PeriodDesk::new(state.app.service.clone())
}

fn invalid_period(message: impl Into<String>) -> ApiError {
    ApiError::unprocessable("invalid_period", message)
}

pub(crate) fn required_reason(reason: Option<String>) -> Result<String, ApiError> {
    let reason =
        reason.ok_or_else(|| ApiError::unprocessable("invalid_reason", "reason is required"))?;
    crate::contract::check("reason", &reason, crate::contract::REQUIRED_REASON)?;
    Ok(reason)
}

/// A store's periods and their states now; 404 `no_period_control` when it has none.
#[utoipa::path(get, path = "/stores/{store}/periods",
    params(("store" = String, Path, description = "Store id")),
    responses((status = 200, body = PeriodsBody), (status = 404, body = ApiErrorBody)))]
pub async fn get_periods(
    State(state): State<AppState>,
    caller: Caller,
    store: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<PeriodsBody>, ApiError> {
    caller.require(&PERIOD_READERS)?;
    let Path(store) = store?;
    check_id("store", &store)?;
    desk(&state)
        .view(&caller.scope(&store), Utc::now())
        .await?
        .map(|v| Json(v.into()))
        .ok_or_else(|| no_period_control(&store))
}

fn no_period_control(store: &str) -> ApiError {
    ApiError::not_found(
        "no_period_control",
        format!("store {store} has no period control (POST /stores/{store}/periods)"),
    )
}

/// Switches period control on for a store (once): from `from` on, each period soft-closes at
/// its end plus the upload window (2 hours) and closes at its end plus `max_delay`. Answers
/// 201 with the store's periods; 409 `already_enabled` when it is on already.
#[utoipa::path(post, path = "/stores/{store}/periods",
    params(("store" = String, Path, description = "Store id")),
    request_body = EnablePeriods,
    responses((status = 201, body = PeriodsBody), (status = 409, body = ApiErrorBody),
        (status = 422, body = ApiErrorBody)))]
pub async fn enable_periods(
    State(state): State<AppState>,
    caller: Caller,
    store: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: CommandHeaders,
    body: CommandBody<EnablePeriods>,
) -> Result<Response, ApiError> {
    caller.require(&FINANCE)?;
    let Path(store) = store?;
    check_id("store", &store)?;
    let b = &body.body;
    let from_text = b
        .from
        .as_deref()
        .ok_or_else(|| invalid_period("from is required: a month 2026-11 or a day 2026-11-05"))?;
    crate::contract::check("from", from_text, crate::contract::PERIOD)
        .map_err(|e| e.with_code("invalid_period"))?;
    let from = Period::parse(from_text).map_err(invalid_period)?;
    match b.period.as_deref() {
        None => {}
        Some("month") if from.length == PeriodLength::Month => {}
        Some("day") if from.length == PeriodLength::Day => {}
        Some(p @ ("month" | "day")) => {
            return Err(invalid_period(format!("from {from_text} is not a {p}")))
        }
        Some(other) => {
            return Err(invalid_period(format!(
                "period must be month or day, got {other:?}"
            )))
        }
    }
    let max_delay = match b.max_delay.as_deref() {
        None => DEFAULT_MAX_DELAY,
        Some(text) => {
            crate::contract::check("max_delay", text, crate::contract::MAX_DELAY)
                .map_err(|e| e.with_code("invalid_period"))?;
            parse_max_delay(text).map_err(invalid_period)?
        }
    };
    let ctx = headers.creation_context(&caller, &body.fingerprint);
    let view = desk(&state)
        .enable(&caller.scope(&store), from, max_delay, &ctx)
        .await?;
    Ok((StatusCode::CREATED, Json(PeriodsBody::from(view))).into_response())
}

/// `{store}` and `{period}` of a period change's path.
#[derive(Debug, Deserialize)]
pub struct PeriodPath {
    store: String,
    period: String,
}

async fn change(
    state: AppState,
    caller: Caller,
    path: Result<Path<PeriodPath>, axum::extract::rejection::PathRejection>,
    headers: CommandHeaders,
    body: CommandBody<DecisionBody>,
    what: PeriodChange,
) -> Result<Json<PeriodsBody>, ApiError> {
    caller.require(&FINANCE)?;
    let Path(p) = path?;
    check_id("store", &p.store)?;
    if crate::contract::check("period", &p.period, crate::contract::PERIOD).is_err() {
        return Err(ApiError::bad_request(
            "invalid_id",
            format!("period {:?} is neither YYYY-MM nor YYYY-MM-DD", p.period),
        ));
    }
    Period::parse(&p.period).map_err(invalid_period)?;
    let reason = required_reason(body.body.reason)?;
    let mut ctx = headers.creation_context(&caller, &body.fingerprint);
    ctx.event_time = Utc::now();
    let view = desk(&state)
        .change(&caller.scope(&p.store), &p.period, what, &reason, &ctx)
        .await?;
    Ok(Json(view.into()))
}

/// Soft-closes an ended period: late postings are still applied, their correction notices
/// flagged `soft_closed`. 409 when the period is not open or has not ended.
#[utoipa::path(post, path = "/stores/{store}/periods/{period}/soft-close",
    params(("store" = String, Path, description = "Store id"),
        ("period" = String, Path, description = "YYYY-MM, or YYYY-MM-DD for daily periods")),
    request_body = DecisionBody,
    responses((status = 200, body = PeriodsBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn soft_close_period(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<PeriodPath>, axum::extract::rejection::PathRejection>,
    headers: CommandHeaders,
    body: CommandBody<DecisionBody>,
) -> Result<Json<PeriodsBody>, ApiError> {
    change(state, caller, path, headers, body, PeriodChange::SoftClose).await
}

/// Reopens a soft-closed period. 409 when it is not soft-closed (a closed period is final).
#[utoipa::path(post, path = "/stores/{store}/periods/{period}/reopen",
    params(("store" = String, Path, description = "Store id"),
        ("period" = String, Path, description = "YYYY-MM, or YYYY-MM-DD for daily periods")),
    request_body = DecisionBody,
    responses((status = 200, body = PeriodsBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn reopen_period(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<PeriodPath>, axum::extract::rejection::PathRejection>,
    headers: CommandHeaders,
    body: CommandBody<DecisionBody>,
) -> Result<Json<PeriodsBody>, ApiError> {
    change(state, caller, path, headers, body, PeriodChange::Reopen).await
}

/// Closes an ended period (final): later postings for it are held as exceptions. The close is
/// sealed before this answers: the period's totals replayed from the log up to the close, and
/// the hash chain's hash there. 409 when it is closed already or has not ended.
#[utoipa::path(post, path = "/stores/{store}/periods/{period}/close",
    params(("store" = String, Path, description = "Store id"),
        ("period" = String, Path, description = "YYYY-MM, or YYYY-MM-DD for daily periods")),
    request_body = DecisionBody,
    responses((status = 200, body = PeriodsBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn close_period(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<PeriodPath>, axum::extract::rejection::PathRejection>,
    headers: CommandHeaders,
    body: CommandBody<DecisionBody>,
) -> Result<Json<PeriodsBody>, ApiError> {
    change(state, caller, path, headers, body, PeriodChange::Close).await
}

/// `GET /exceptions` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExceptionsQuery {
    /// Only this store's.
    pub store: Option<String>,
    /// Only those in this state: `open`, `approved` or `rejected`.
    pub state: Option<String>,
}

/// A posting a closed period held, and finance's decision.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExceptionBody {
    /// The exception's id: the held event's id.
    pub id: uuid::Uuid,
    /// `open`, `approved` or `rejected`.
    #[schema(example = "open")]
    pub state: String,
    /// Store id.
    pub store: String,
    /// The posting's business date.
    #[schema(value_type = String, format = Date)]
    pub date: NaiveDate,
    /// The period it was not applied to (`1997-02`).
    pub period: String,
    /// ISO 4217 code.
    pub currency: wire::Currency,
    /// Signed amount (negative for a refund), decimal string.
    #[schema(value_type = String, example = "11.77")]
    pub amount: Decimal,
    /// `sale` or `refund`.
    #[schema(example = "sale")]
    pub kind: String,
    /// `period-closed` (its period was closed before it was posted) or `beyond-max-delay` (it
    /// arrived after its period's maximum delay).
    #[schema(example = "period-closed")]
    pub hold: String,
    /// The stream of the held event (an order's, `order-{id}`).
    pub cause_stream: String,
    /// When the held event was ingested, RFC 3339 UTC.
    pub ingested_at: DateTime<Utc>,
    /// Finance's reason, once decided.
    pub decision_reason: Option<String>,
    /// Who decided (an actor such as `user:ana`).
    pub decided_by: Option<String>,
    /// When, RFC 3339 UTC.
    pub decided_at: Option<DateTime<Utc>>,
    /// The business date an approved exception was booked on.
    #[schema(value_type = Option<String>, format = Date)]
    pub booked_date: Option<NaiveDate>,
}

impl From<ExceptionView> for ExceptionBody {
    fn from(e: ExceptionView) -> Self {
        let h = e.held;
        let enum_text = |v: serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        Self {
            id: e.id,
            state: e.state.as_str().into(),
            store: h.store,
            date: h.date,
            period: h.period,
            currency: wire::Currency(h.currency),
            amount: h.amount,
            kind: enum_text(serde_json::to_value(h.kind).unwrap_or_default()),
            hold: enum_text(serde_json::to_value(h.hold).unwrap_or_default()),
            cause_stream: eventfold_core::tenant::unscoped(&h.cause_stream).to_owned(),
            ingested_at: h.ingested_at,
            decision_reason: e.decision_reason,
            decided_by: e.decided_by,
            decided_at: e.decided_at,
            booked_date: e.booked_date,
        }
    }
}

/// The exception queue of the caller's tenant (of one store, in one state, when given): store,
/// then id order; at most 10,000.
#[utoipa::path(get, path = "/exceptions", params(ExceptionsQuery),
    responses((status = 200, body = Vec<ExceptionBody>), (status = 400, body = ApiErrorBody)))]
pub async fn get_exceptions(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ExceptionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<ExceptionBody>>, ApiError> {
    caller.require(&EXCEPTION_READERS)?;
    let Query(q) = query?;
    if let Some(s) = &q.store {
        check_id("store", s)?;
    }
    let wanted = q.state.as_deref().map(parse_state).transpose()?;
    let list = list_exceptions(
        state.app.backend.read_models.as_ref(),
        &caller.0.tenant,
        q.store.as_deref(),
        wanted,
    )
    .await?;
    Ok(Json(list.into_iter().map(ExceptionBody::from).collect()))
}

fn parse_state(s: &str) -> Result<ExceptionState, ApiError> {
    match s {
        "open" => Ok(ExceptionState::Open),
        "approved" => Ok(ExceptionState::Approved),
        "rejected" => Ok(ExceptionState::Rejected),
        other => Err(ApiError::bad_request(
            "invalid_query",
            format!("state must be open, approved or rejected, got {other:?}"),
        )),
    }
}

/// What a decision did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExceptionDecision {
    /// The exception's id.
    pub id: String,
    /// `approved` or `rejected`.
    #[schema(example = "approved")]
    pub state: String,
    /// The reason given.
    pub reason: String,
    /// Who decided.
    pub decided_by: String,
    /// The business date an approval booked the posting on (today's, in the store's calendar);
    /// `null` for a rejection.
    #[schema(value_type = Option<String>, format = Date)]
    pub booked_date: Option<NaiveDate>,
}

async fn decide(
    state: AppState,
    caller: Caller,
    id: String,
    headers: CommandHeaders,
    body: CommandBody<DecisionBody>,
    approve: bool,
) -> Result<Json<ExceptionDecision>, ApiError> {
    caller.require(&FINANCE)?;
    check_id("exception id", &id)?;
    let reason = required_reason(body.body.reason)?;
    let mut ctx = headers.creation_context(&caller, &body.fingerprint);
    ctx.event_time = Utc::now();
    let booked_date = desk(&state)
        .decide(&caller.scope(&id), approve, &reason, &ctx)
        .await?;
    Ok(Json(ExceptionDecision {
        id,
        state: if approve {
            ExceptionState::Approved
        } else {
            ExceptionState::Rejected
        }
        .as_str()
        .into(),
        reason,
        decided_by: caller.0.actor.as_str().to_owned(),
        booked_date,
    }))
}

/// Approves an exception: the held posting is booked on today's business date (which must lie
/// in an open period: 409 `period_state` otherwise) and noticed `exception-approved`. 404 for
/// an unknown id, 409 when it is decided already.
#[utoipa::path(post, path = "/exceptions/{id}/approve", params(("id" = String, Path)),
    request_body = DecisionBody,
    responses((status = 200, body = ExceptionDecision), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn approve_exception(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    headers: CommandHeaders,
    body: CommandBody<DecisionBody>,
) -> Result<Json<ExceptionDecision>, ApiError> {
    decide(state, caller, id, headers, body, true).await
}

/// Rejects an exception: recorded, not booked. 404 for an unknown id, 409 when it is decided
/// already.
#[utoipa::path(post, path = "/exceptions/{id}/reject", params(("id" = String, Path)),
    request_body = DecisionBody,
    responses((status = 200, body = ExceptionDecision), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn reject_exception(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    headers: CommandHeaders,
    body: CommandBody<DecisionBody>,
) -> Result<Json<ExceptionDecision>, ApiError> {
    decide(state, caller, id, headers, body, false).await
}
