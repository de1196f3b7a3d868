//! `POST /payments/callbacks`: the payment provider's signed callbacks. The signature is
//! checked first (401, nothing changes), then the idempotency key (400 without one), the body
//! (422 naming the field) and the order (404 for an unknown order); the report is recorded in the
//! order's payment saga with the key `callback:{key}`, so a replay changes nothing, and the
//! orchestrator is woken.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use eventfold_core::{Actor, StoredResponse};
use eventfold_domain::order::Order;
use eventfold_domain::payment_saga::{PaymentSaga, PaymentSagaCommand};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use eventfold_app::sagas::correlation;
use eventfold_app::service::{AsOf, CommandContext, Executed};
use eventfold_app::shop::payments::{verify, SignatureError, SIGNATURE_HEADER};
use eventfold_domain::payment_saga::ProviderReport;

use crate::error::{ApiError, ApiErrorBody};
use crate::extract::parse_command_headers;
use crate::state::AppState;

/// A provider callback's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Callback {
    /// The buyer authorized: the amount is held.
    FundsReserved {
        /// The order it is for.
        order_id: String,
        /// The provider's authorization id.
        authorization_id: String,
    },
    /// The buyer's authorization failed.
    ReservationFailed {
        /// The order it is for.
        order_id: String,
        /// Why, as the actor gave it (at most 500 characters, no control characters).
        reason: String,
    },
    /// The amount was captured.
    Captured {
        /// The order it is for.
        order_id: String,
        /// The provider's charge id.
        charge_id: String,
    },
}

impl Callback {
    /// The order it is about.
    pub fn order_id(&self) -> &str {
        match self {
            Self::FundsReserved { order_id, .. }
            | Self::ReservationFailed { order_id, .. }
            | Self::Captured { order_id, .. } => order_id,
        }
    }

    /// What it reports, for the saga.
    pub fn report(&self) -> ProviderReport {
        match self.clone() {
            Self::FundsReserved {
                authorization_id, ..
            } => ProviderReport::FundsReserved { authorization_id },
            Self::ReservationFailed { reason, .. } => ProviderReport::ReservationFailed { reason },
            Self::Captured { charge_id, .. } => ProviderReport::Captured { charge_id },
        }
    }
}

/// What a callback did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallbackView {
    /// The order it is for.
    pub order_id: String,
    /// Whether the report was new to the saga (false: known already, or a replay).
    pub recorded: bool,
    /// The idempotency key was seen before: nothing was done.
    pub duplicate: bool,
}

/// Records a signed provider callback in the order's payment saga. 200 (also for a repeat),
/// 400 without an `Idempotency-Key`, 401 for a missing, wrong or stale signature, 404 for an
/// unknown order, 422 for a bad body.
#[utoipa::path(post, path = "/payments/callbacks", request_body = Callback,
    params(("Idempotency-Key" = String, Header, description = "the provider's event id"),
        ("Eventfold-Signature" = String, Header, description = "t={unix s},v1={hex HMAC-SHA256(secret, \"{t}.{body}\")}")),
    responses((status = 200, body = CallbackView), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 422, body = ApiErrorBody)))]
pub async fn payment_callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some((sagas, secret)) = state.app.payments.clone() else {
        return Err(ApiError::not_found(
            "payments_not_configured",
            "this server runs no payment sagas (start it with --payment-provider)",
        ));
    };
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = verify(&secret, signature, &body, now) {
        let code = match e {
            SignatureError::Stale { .. } => "stale_signature",
            _ => "bad_signature",
        };
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string()));
    }
    let key = parse_command_headers(&headers)?
        .idempotency_key
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_idempotency_key",
                "a payment callback needs an Idempotency-Key header (the provider's event id)",
            )
        })?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    let callback: Callback = serde_path_to_error::deserialize(de).map_err(|e| {
        ApiError::unprocessable(
            "invalid_callback",
            format!("at {}: {}", e.path(), e.inner()),
        )
    })?;
    let order_id = callback.order_id().to_owned();
    eventfold_domain::validate_scoped_id("order_id", &order_id)
        .map_err(|m| ApiError::unprocessable("invalid_callback", m))?;
    if state
        .app
        .service
        .load::<Order>(&order_id, AsOf::Latest)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(
            "unknown_order",
            format!("no order {order_id}"),
        ));
    }
    let digest = hex::encode(Sha256::digest(&body));
    let mut ctx = CommandContext::new(Actor::system("payment-provider"));
    ctx.idempotency = Some((format!("callback:{key}"), digest));
    ctx.correlation_id = Some(correlation(&order_id));
    let id = order_id.clone();
    let render = Box::new(move |_: &PaymentSaga, _version: u64| StoredResponse {
        status: 200,
        body: serde_json::json!({"order_id": id, "recorded": true, "duplicate": false}).to_string(),
    });
    let executed = state
        .app
        .service
        .execute::<PaymentSaga>(
            &order_id,
            PaymentSagaCommand::Report(callback.report()),
            &ctx,
            render,
        )
        .await?;
    let view = match executed {
        Executed::Applied { events, .. } => CallbackView {
            order_id: order_id.clone(),
            recorded: events > 0,
            duplicate: false,
        },
        Executed::Replayed(_) => CallbackView {
            order_id: order_id.clone(),
            recorded: false,
            duplicate: true,
        },
    };
    sagas.schedule(&order_id);
    Ok((StatusCode::OK, Json(view)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_decode_by_type_and_refuse_unknown_fields() {
        let c: Callback = serde_json::from_str(
            r#"{"type":"funds_reserved","order_id":"o","authorization_id":"a"}"#,
        )
        .unwrap();
        assert_eq!(c.order_id(), "o");
        assert_eq!(
            c.report(),
            ProviderReport::FundsReserved {
                authorization_id: "a".into()
            }
        );
        assert!(serde_json::from_str::<Callback>(
            r#"{"type":"captured","order_id":"o","charge_id":"c","extra":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Callback>(r#"{"type":"refunded","order_id":"o"}"#).is_err());
    }
}
