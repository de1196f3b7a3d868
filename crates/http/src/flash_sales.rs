//! Flash-sale endpoints: open a sale, and the crowd's purchase attempts. A purchase needs
//! an `Idempotency-Key` (the attempt id: a repeated click returns the first answer); only an
//! attempt that got stock writes to the event store (see `eventfold_app::shop::flash_sale`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use eventfold_core::stock::StockError;
use eventfold_domain::identity::Role;
use serde::{Deserialize, Serialize};

use eventfold_app::service::AsOf;
use eventfold_app::shop::flash_sale::{Purchase, Sale, SaleError};

use crate::auth::Caller;
use crate::error::{ApiError, ApiErrorBody};
use crate::extract::{check_id, CommandBody, CommandHeaders};
use crate::state::AppState;

/// `POST /flash-sales`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenFlashSale {
    /// The SKU (1 to 100 of `[A-Za-z0-9._-]`).
    pub sku: String,
    /// Units for sale, at least 1.
    #[serde(deserialize_with = "crate::contract::integral")]
    pub stock: u64,
    /// Units one buyer may hold at most, at least 1.
    #[serde(deserialize_with = "crate::contract::integral")]
    pub per_buyer_limit: u64,
    /// Price of one unit, a decimal string.
    pub unit_price: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Store id the orders carry (default `flash`).
    pub store_id: Option<String>,
}

/// A sale as `POST /flash-sales` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlashSaleView {
    /// The SKU.
    pub sku: String,
    /// Units for sale at opening.
    pub stock: u64,
    /// Units one buyer may hold at most.
    pub per_buyer_limit: u64,
    /// Units left now.
    pub remaining: u64,
}

/// `POST /flash-sales/{sku}/purchases`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseBody {
    /// The buyer (1 to 128 of `[A-Za-z0-9._@-]`).
    pub buyer: String,
    /// Units, at least 1.
    #[serde(deserialize_with = "crate::contract::integral")]
    pub quantity: i64,
}

/// An accepted purchase.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PurchaseView {
    /// The order placed (PENDING until paid).
    pub order_id: String,
    /// Units left after this purchase (absent for a repeated attempt).
    pub remaining: Option<u64>,
    /// A repeat of an attempt accepted before.
    pub duplicate: bool,
}

impl From<SaleError> for ApiError {
    fn from(e: SaleError) -> Self {
        match e {
            SaleError::Invalid(m) => Self::unprocessable("invalid_purchase", m),
            SaleError::Stock(StockError::UnknownSku(sku)) => {
                let sku = eventfold_core::tenant::unscoped(&sku);
                Self::not_found("unknown_sku", format!("no flash sale for sku {sku}"))
            }
            SaleError::Stock(StockError::Invalid(m)) => Self::unprocessable("invalid_purchase", m),
            SaleError::Stock(e @ StockError::Unavailable(_)) => {
                tracing::warn!(error = %e, "stock ledger unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "stock_unavailable",
                    "the stock ledger is unavailable; retry shortly",
                )
            }
            SaleError::Stock(e) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                e.to_string(),
            ),
            SaleError::Order(e) => e.into(),
        }
    }
}

/// Opens a flash sale (the same terms again: 200, nothing changes; other terms: 409).
#[utoipa::path(post, path = "/flash-sales", request_body = OpenFlashSale,
    responses((status = 201, body = FlashSaleView), (status = 200, body = FlashSaleView),
        (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn open_flash_sale(
    State(state): State<AppState>,
    caller: Caller,
    _headers: CommandHeaders,
    body: CommandBody<OpenFlashSale>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Operator])?;
    let b = body.body;
    check_id("sku", &b.sku)?;
    crate::contract::check_units("stock", b.stock)?;
    crate::contract::check_units("per_buyer_limit", b.per_buyer_limit)?;
    crate::contract::check("unit_price", &b.unit_price, crate::contract::AMOUNT)?;
    if let Some(store) = &b.store_id {
        crate::contract::check("store_id", store, crate::contract::ID)?;
    }
    let currency = b
        .currency
        .parse()
        .map_err(|e| ApiError::unprocessable("invalid_money", format!("currency: {e}")))?;
    let unit_price = eventfold_domain::Money::parse(&b.unit_price, currency)
        .map_err(|e| ApiError::unprocessable("invalid_money", format!("unit_price: {e}")))?;
    let sale = Sale {
        sku: caller.scope(&b.sku),
        unit_price,
        store_id: b.store_id.unwrap_or_else(|| "flash".into()),
    };
    let opened = state
        .app
        .flash_sale
        .open(&sale, b.stock, b.per_buyer_limit)
        .await?;
    let levels = state
        .app
        .flash_sale
        .ledger()
        .levels(&sale.sku)
        .await
        .map_err(SaleError::from)?;
    let view = FlashSaleView {
        sku: b.sku,
        stock: levels.initial,
        per_buyer_limit: b.per_buyer_limit,
        remaining: levels.remaining,
    };
    let status = if opened {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

/// A sale's levels now: units at opening and units left in the ledger.
#[utoipa::path(get, path = "/flash-sales/{sku}", params(("sku" = String, Path)),
    responses((status = 200, body = FlashSaleView), (status = 404, body = ApiErrorBody)))]
pub async fn get_flash_sale(
    State(state): State<AppState>,
    caller: Caller,
    Path(sku): Path<String>,
) -> Result<Json<FlashSaleView>, ApiError> {
    let unknown = || ApiError::not_found("unknown_sku", format!("no flash sale for sku {sku}"));
    check_id("sku", &sku)?;
    let scoped = caller.scope(&sku);
    let terms = state
        .app
        .service
        .load::<eventfold_domain::sale::Sale>(&scoped, AsOf::Latest)
        .await
        .ok()
        .flatten()
        .and_then(|s| s.state.opened)
        .ok_or_else(unknown)?;
    let levels = state
        .app
        .flash_sale
        .ledger()
        .levels(&scoped)
        .await
        .map_err(SaleError::from)?;
    Ok(Json(FlashSaleView {
        sku: sku.clone(),
        stock: levels.initial,
        per_buyer_limit: terms.per_buyer_limit,
        remaining: levels.remaining,
    }))
}

/// One purchase attempt. 201 with the order; 200 for a repeated attempt; 409 `sold_out` or
/// `over_limit`; 404 `unknown_sku`; 400 without an `Idempotency-Key`.
#[utoipa::path(post, path = "/flash-sales/{sku}/purchases", request_body = PurchaseBody,
    params(("sku" = String, Path), ("Idempotency-Key" = String, Header, description = "the attempt id")),
    responses((status = 201, body = PurchaseView), (status = 200, body = PurchaseView),
        (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn purchase(
    State(state): State<AppState>,
    caller: Caller,
    Path(sku): Path<String>,
    headers: CommandHeaders,
    body: CommandBody<PurchaseBody>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Customer, Role::Service])?;
    if let Some(limits) = &state.auth.limits {
        limits.purchase(&caller.0)?;
    }
    let attempt = headers.idempotency_key.clone().ok_or_else(|| {
        ApiError::bad_request(
            "missing_idempotency_key",
            "a purchase needs an Idempotency-Key header (the attempt id)",
        )
    })?;
    let b = body.body;
    crate::contract::check("buyer", &b.buyer, crate::contract::BUYER).map_err(|_| {
        ApiError::unprocessable(
            "invalid_purchase",
            format!(
                "buyer {:?} is not an actor id (1 to 128 of A-Z a-z 0-9 . _ @ -)",
                b.buyer
            ),
        )
    })?;
    caller.require_owner("buyer", &b.buyer)?;
    let quantity = u64::try_from(b.quantity)
        .ok()
        .filter(|q| (1..=crate::contract::MAX_UNITS).contains(q))
        .ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_purchase",
                format!(
                    "quantity must be 1 to {}, got {}",
                    crate::contract::MAX_UNITS,
                    b.quantity
                ),
            )
        })?;
    let sale = state
        .app
        .flash_sale
        .sale(&caller.scope(&sku))
        .await?
        .ok_or_else(|| {
            ApiError::not_found("unknown_sku", format!("no flash sale for sku {sku}"))
        })?;
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    match state
        .app
        .flash_sale
        .purchase(&sale, &b.buyer, quantity, &attempt, now_ms)
        .await?
    {
        Purchase::Accepted {
            order_id,
            remaining,
            duplicate,
        } => {
            let status = if duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            let view = PurchaseView {
                order_id: eventfold_core::tenant::unscoped(&order_id).to_owned(),
                remaining,
                duplicate,
            };
            Ok((status, Json(view)).into_response())
        }
        Purchase::SoldOut => Err(ApiError::new(
            StatusCode::CONFLICT,
            "sold_out",
            format!("{sku} is sold out"),
        )),
        Purchase::OverLimit { held, limit } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "over_limit",
            format!(
                "{} holds {held} of {sku}; {quantity} more would pass the limit of {limit}",
                b.buyer
            ),
        )),
    }
}
