//! `POST /stores/{store}/uploads`: a store's sales sent as one file (NDJSON or CSV, one sale per
//! line with its own event time; the fields are in `eventfold_app::import::upload`). A bad line
//! is named by its line number and the upload appends nothing; uploading the same file again
//! appends nothing either. Sales of days already reported are late: each gets a correction
//! notice (`GET /sales/corrections`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use eventfold_app::import::upload::{parse_upload, UploadFormat};
use eventfold_app::import::{append_sales, SaleSource};
use eventfold_core::StoreError;
use eventfold_domain::identity::Role;
use serde::Serialize;

use crate::auth::Caller;
use crate::error::{ApiError, ApiErrorBody};
use crate::extract::check_id;
use crate::state::AppState;

/// Most bytes one upload may hold: 64 MiB.
pub const MAX_UPLOAD_BYTES: usize = 64 * 1024 * 1024;

/// Who may upload a store's sales: the store's systems (`service`) and operations.
pub(crate) const UPLOADERS: [Role; 2] = [Role::Service, Role::Operator];

/// A sale whose order id holds other events already: nothing was appended for it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadConflict {
    /// 1-based line number in the upload.
    pub line: usize,
    /// The order id of that line.
    pub order_id: String,
}

/// What an upload did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadSummary {
    /// Sales read (lines that are not blank).
    pub lines: usize,
    /// Orders appended now.
    pub orders_appended: usize,
    /// Orders stored already by an earlier upload of the same lines (nothing appended).
    pub orders_already_present: usize,
    /// Events appended now (one per order: `OrderRecorded`).
    pub events_appended: u64,
    /// Lines whose order id holds other events (nothing appended for them; every other line
    /// was applied).
    pub conflicts: Vec<UploadConflict>,
}

/// Applies a store's upload of sales (see the module docs). Each sale becomes one event,
/// `OrderRecorded` (an order created, paid and completed at once) at its `occurred_at`,
/// recorded by the caller.
#[utoipa::path(post, path = "/stores/{store}/uploads",
    params(("store" = String, Path, description = "Store id")),
    request_body(content(
        (String = "text/csv"),
        (String = "application/x-ndjson")
    ), description = "One sale per line: order_id, customer_id, occurred_at (RFC 3339), sku, quantity, amount, currency. CSV has a header line naming the columns."),
    responses((status = 200, body = UploadSummary), (status = 400, body = ApiErrorBody),
        (status = 413, body = ApiErrorBody), (status = 415, body = ApiErrorBody),
        (status = 422, body = ApiErrorBody)))]
pub async fn upload_sales(
    State(state): State<AppState>,
    caller: Caller,
    store: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<UploadSummary>, ApiError> {
    caller.require(&UPLOADERS)?;
    let Path(store) = store?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("an upload holds at most {MAX_UPLOAD_BYTES} bytes"),
            )
        } else {
            ApiError::bad_request("unreadable_body", e.body_text())
        }
    })?;
    check_id("store", &store)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = match content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "text/csv" => UploadFormat::Csv,
        "application/x-ndjson" | "application/ndjson" => UploadFormat::Ndjson,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the upload as Content-Type: text/csv or application/x-ndjson",
            ))
        }
    };
    let sales = parse_upload(&body, format, &caller.0.tenant, &store, chrono::Utc::now()).map_err(
        |bad| {
            let listed: Vec<String> = bad.iter().take(10).map(ToString::to_string).collect();
            let more = bad.len().saturating_sub(listed.len());
            ApiError::unprocessable(
                "invalid_upload",
                format!(
                    "{} bad line(s); nothing was applied: {}{}",
                    bad.len(),
                    listed.join("; "),
                    if more > 0 {
                        format!("; and {more} more")
                    } else {
                        String::new()
                    }
                ),
            )
        },
    )?;
    if sales.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_upload",
            "the upload holds no sales",
        ));
    }
    let source = SaleSource {
        source: format!("upload-{store}"),
        actor: caller.0.actor.clone(),
        via: caller.0.via.clone(),
        reason: format!("uploaded by store {store}"),
        backfill: false,
        calendar: state.app.calendars.of(&caller.scope(&store)).await?,
    };
    let counts = append_sales(&state.app.backend, &source, &sales, &|_, _, _| {})
        .await
        .map_err(|e| match e.downcast::<StoreError>() {
            Ok(store) => ApiError::from(store),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "upload failed");
                ApiError::from(StoreError::Corrupt(
                    "the upload could not be applied".into(),
                ))
            }
        })?;
    Ok(Json(UploadSummary {
        lines: sales.len(),
        orders_appended: counts.orders_appended,
        orders_already_present: counts.orders_already_present,
        events_appended: counts.events_appended,
        conflicts: counts
            .conflicts
            .into_iter()
            .map(|(line, order)| UploadConflict {
                line,
                order_id: eventfold_core::tenant::unscoped(&order).to_owned(),
            })
            .collect(),
    }))
}
