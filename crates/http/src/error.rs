//! The one error type of the API: a status, a stable machine-readable `code` and a human
//! `message`, rendered as `{"code": "...", "message": "..."}`. Database text never reaches a body:
//! infrastructure failures are logged with their chain and answered with a fixed message.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use eventfold_app::error_chain;
use eventfold_app::service::ServiceError;
use eventfold_core::StoreError;
use eventfold_domain::Refusal;
use serde::Serialize;

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiErrorBody {
    /// Stable machine-readable code, e.g. `version_conflict`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

/// An error response. A 503 carries `Retry-After: 1`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for `Retry-After` on a 429.
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status, stable code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error with another stable code.
    #[must_use]
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    /// 429 `rate_limited`, to be retried after `retry_after_secs` (at least 1).
    pub(crate) fn rate_limited(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    /// A 400: the request is malformed (named by `code` and `message`).
    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A 422: the request is well formed but a value is unacceptable.
    pub(crate) fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// A 404: no such thing.
    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// A 500 whose cause was logged (never shown to the caller).
    fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ApiErrorBody {
                code: self.code.into(),
                message: self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 9110: a 401 names how to authenticate.
            let challenge = if self.code == "unauthenticated" {
                "Bearer realm=\"eventfold\""
            } else {
                "Eventfold-Signature realm=\"payments\""
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::VersionConflict { .. } => {
                Self::new(StatusCode::CONFLICT, "version_conflict", e.to_string())
            }
            StoreError::EventIdReused { .. } => {
                Self::new(StatusCode::CONFLICT, "event_id_reused", e.to_string())
            }
            StoreError::IdempotencyKeyUsed { .. } => {
                Self::new(StatusCode::CONFLICT, "idempotency_key_used", e.to_string())
            }
            StoreError::Fenced { .. } => Self::new(StatusCode::CONFLICT, "fenced", e.to_string()),
            StoreError::Archived { .. } => Self::new(StatusCode::GONE, "archived", e.to_string()),
            StoreError::InvalidRequest(m) => Self::bad_request("invalid_request", m.clone()),
            StoreError::Unavailable(_) | StoreError::CheckpointMoved { .. } => {
                tracing::warn!(error = %error_chain(&e), "store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the event store is unavailable; retry shortly",
                )
            }
            _ => {
                tracing::error!(error = %error_chain(&e), "store failure");
                Self::internal()
            }
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Refused {
                code,
                refusal,
                message,
            } => {
                let status = match refusal {
                    Refusal::NotFound => StatusCode::NOT_FOUND,
                    Refusal::Conflict => StatusCode::CONFLICT,
                    Refusal::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
                };
                Self::new(status, code, message)
            }
            e @ ServiceError::IdempotencyKeyReused { .. } => {
                Self::unprocessable("idempotency_key_reused", e.to_string())
            }
            ServiceError::Store(e) => e.into(),
            other => {
                tracing::error!(error = %error_chain(&other), "service failure");
                Self::internal()
            }
        }
    }
}

impl From<eventfold_core::RunnerError> for ApiError {
    fn from(e: eventfold_core::RunnerError) -> Self {
        match e {
            eventfold_core::RunnerError::Store(s) => s.into(),
            other => {
                tracing::error!(error = %error_chain(&other), "projection failure");
                Self::internal()
            }
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request("invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request("invalid_path", r.body_text())
    }
}
