//! A store's business calendar: `GET /stores/{store}/calendar` and
//! `POST /stores/{store}/calendar {zone, cutoff}` (see `eventfold_app::calendars`). The
//! calendar dates the store's sales by business day in its time zone and says when each day is
//! reported (its cutoff, after which a sale of that day is late); orders placed from then on
//! record it, orders placed before keep theirs.

use axum::extract::{Path, State};
use axum::Json;
use eventfold_domain::identity::Role;
use eventfold_domain::reporting::BusinessCalendar;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiErrorBody};
use crate::extract::{check_id, CommandBody, CommandHeaders};
use crate::state::AppState;

/// Who may set a store's calendar.
pub(crate) const SETTERS: [Role; 2] = [Role::Operator, Role::Finance];
/// Who may read it.
pub(crate) const READERS: [Role; 3] = [Role::Finance, Role::Auditor, Role::Operator];

/// `POST /stores/{store}/calendar` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetCalendar {
    /// An IANA time zone, e.g. `Europe/Berlin` or `UTC`.
    #[schema(value_type = String, required = true, example = "Europe/Berlin")]
    pub zone: Option<String>,
    /// How long after a business day ends (its local midnight) the day is reported: whole
    /// minutes, hours or days (`120m`, `2h`, `1d`), at most 7 days. Default `2h`.
    #[schema(value_type = Option<String>, example = "2h")]
    pub cutoff: Option<String>,
}

/// A store's business calendar.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CalendarBody {
    /// Store id.
    pub store: String,
    /// IANA time zone of its business days.
    #[schema(example = "Europe/Berlin")]
    pub zone: String,
    /// Minutes after a day's local midnight at which it is reported.
    pub cutoff_minutes: i64,
    /// `false` when none was set: the default (UTC, 120 minutes).
    pub set: bool,
}

fn body(store: String, calendar: Option<BusinessCalendar>) -> CalendarBody {
    let c = calendar.unwrap_or_default();
    CalendarBody {
        store,
        zone: c.zone.name().to_owned(),
        cutoff_minutes: c.cutoff_minutes,
        set: calendar.is_some(),
    }
}

/// A store's business calendar (the default, UTC with a 2-hour cutoff, when none was set).
#[utoipa::path(get, path = "/stores/{store}/calendar",
    params(("store" = String, Path, description = "Store id")),
    responses((status = 200, body = CalendarBody), (status = 400, body = ApiErrorBody)))]
pub async fn get_calendar(
    State(state): State<AppState>,
    caller: Caller,
    store: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<CalendarBody>, ApiError> {
    caller.require(&READERS)?;
    let Path(store) = store?;
    check_id("store", &store)?;
    let calendar = state.app.calendars.of(&caller.scope(&store)).await?;
    Ok(Json(body(store, calendar)))
}

/// Sets a store's business calendar for orders placed from now on (an event with the caller as
/// actor; the same calendar again records nothing). Orders placed before keep the calendar
/// they were placed in, so no reported figure moves.
#[utoipa::path(post, path = "/stores/{store}/calendar",
    params(("store" = String, Path, description = "Store id")),
    request_body = SetCalendar,
    responses((status = 200, body = CalendarBody), (status = 422, body = ApiErrorBody)))]
pub async fn set_calendar(
    State(state): State<AppState>,
    caller: Caller,
    store: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: CommandHeaders,
    body_in: CommandBody<SetCalendar>,
) -> Result<Json<CalendarBody>, ApiError> {
    caller.require(&SETTERS)?;
    let Path(store) = store?;
    check_id("store", &store)?;
    let invalid = |m: String| ApiError::unprocessable("invalid_calendar", m);
    let b = &body_in.body;
    let zone = b
        .zone
        .as_deref()
        .ok_or_else(|| invalid("zone is required, e.g. Europe/Berlin".into()))?;
    crate::contract::check("zone", zone, crate::contract::ZONE)
        .map_err(|e| e.with_code("invalid_calendar"))?;
    let cutoff = match b.cutoff.as_deref() {
        None => eventfold_domain::reporting::DEFAULT_CUTOFF_MINUTES,
        Some(text) => {
            crate::contract::check("cutoff", text, crate::contract::CUTOFF)
                .map_err(|e| e.with_code("invalid_calendar"))?;
            BusinessCalendar::parse_cutoff(text).map_err(invalid)?
        }
    };
    let calendar = BusinessCalendar::new(zone, cutoff).map_err(invalid)?;
    let ctx = headers.creation_context(&caller, &body_in.fingerprint);
    state
        .app
        .calendars
        .set(&caller.scope(&store), calendar, &ctx)
        .await?;
    Ok(Json(body(store, Some(calendar))))
}
