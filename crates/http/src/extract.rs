//! What handlers take from a request (a command's JSON body with its digest, the command
//! headers, an id path segment, query values) and the shapes of their responses (an `ETag` of the
//! stream version, a stored response replayed). Every refusal is an [`ApiError`] naming the
//! header, field or parameter.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use eventfold_app::service::CommandContext;
use eventfold_core::StoredResponse;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::MAX_BODY_BYTES;

/// A JSON command body with a digest of the request for idempotency checks. An empty body reads
/// as `{}`.
pub(crate) struct CommandBody<T> {
    pub(crate) body: T,
    /// SHA-256 (hex) of `{method} {path}\n{body}`.
    pub(crate) fingerprint: String,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for CommandBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let digest_head = format!("{} {}\n", req.method(), req.uri().path());
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                let status = e.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        status,
                        "payload_too_large",
                        format!("request body exceeds {MAX_BODY_BYTES} bytes"),
                    )
                } else {
                    ApiError::bad_request("unreadable_body", e.body_text())
                }
            })?;
        let text: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        if !bytes.is_empty() && !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as Content-Type: application/json",
            ));
        }
        let mut deserializer = serde_json::Deserializer::from_slice(text);
        let parsed = match serde_path_to_error::deserialize(&mut deserializer) {
            Ok(body) => deserializer
                .end()
                .map(|()| body)
                .map_err(|e| (".".to_owned(), e)),
            Err(e) => Err((e.path().to_string(), e.into_inner())),
        };
        let body = parsed.map_err(|(path, inner)| {
            if inner.is_syntax() || inner.is_eof() {
                ApiError::bad_request(
                    "malformed_json",
                    format!("request body is not valid JSON: {inner}"),
                )
            } else if path == "." {
                ApiError::bad_request(
                    "invalid_body",
                    format!("request body does not match the command: {inner}"),
                )
            } else {
                ApiError::bad_request(
                    "invalid_body",
                    format!("request body field {path}: {inner}"),
                )
            }
        })?;
        let mut digest = Sha256::new();
        digest.update(digest_head.as_bytes());
        digest.update(text);
        let fingerprint = hex::encode(digest.finalize());
        Ok(Self { body, fingerprint })
    }
}

/// The command headers: `If-Match` (expected stream version), `Idempotency-Key`,
/// `X-Correlation-Id`. (Who acts, and in which tenant, is the [`Caller`]'s.)
pub(crate) struct CommandHeaders {
    pub(crate) expected_version: Option<u64>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) correlation_id: Option<uuid::Uuid>,
}

impl<S: Send + Sync> FromRequestParts<S> for CommandHeaders {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_command_headers(&parts.headers)
    }
}

pub(crate) fn header_str<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                ApiError::bad_request(
                    "invalid_header",
                    format!("header {name} is not visible ASCII"),
                )
            })
        })
        .transpose()
}

/// Reads the command headers (see [`CommandHeaders`]).
///
/// # Errors
/// A header that is not visible ASCII or does not parse, named.
pub(crate) fn parse_command_headers(headers: &HeaderMap) -> Result<CommandHeaders, ApiError> {
    let expected_version = header_str(headers, "if-match")?
        .map(|v| {
            v.trim().trim_matches('"').parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_header",
                    format!("header If-Match must be a stream version like \"3\", got {v:?}"),
                )
            })
        })
        .transpose()?;
    let idempotency_key = header_str(headers, "idempotency-key")?
        .map(|k| {
            if crate::contract::check("Idempotency-Key", k, crate::contract::IDEMPOTENCY_KEY)
                .is_err()
            {
                Err(ApiError::bad_request(
                    "invalid_header",
                    "header Idempotency-Key must be 1 to 255 visible ASCII characters, no spaces",
                ))
            } else {
                Ok(k.to_owned())
            }
        })
        .transpose()?;
    let correlation_id = header_str(headers, "x-correlation-id")?
        .map(|v| {
            uuid::Uuid::parse_str(v).map_err(|_| {
                ApiError::bad_request("invalid_header", "header X-Correlation-Id must be a UUID")
            })
        })
        .transpose()?;
    Ok(CommandHeaders {
        expected_version,
        idempotency_key,
        correlation_id,
    })
}

impl CommandHeaders {
    /// The service's context for `caller`'s command with these headers: the caller's actor (and
    /// the service it came via, for a command sent on a user's behalf), the
    /// idempotency key scoped by tenant (`{tenant}:{key}`) and paired with the request's
    /// fingerprint, and, for a caller that reaches only its own resources, the owner the
    /// aggregate must have.
    pub(crate) fn context(self, caller: &Caller, fingerprint: &str) -> CommandContext {
        let principal = &caller.0;
        let mut ctx = CommandContext::new(principal.actor.clone());
        ctx.via = principal.via.clone();
        ctx.expected_version = self.expected_version;
        ctx.idempotency = self
            .idempotency_key
            .map(|k| (format!("{}:{k}", principal.tenant), fingerprint.to_owned()));
        ctx.correlation_id = self.correlation_id;
        if caller.own_only() {
            ctx.owner = Some(caller.owner_id().to_owned());
        }
        ctx
    }

    /// As [`CommandHeaders::context`], for a command that creates its aggregate (which has no
    /// owner yet: the handler checks the owner the command names).
    pub(crate) fn creation_context(self, caller: &Caller, fingerprint: &str) -> CommandContext {
        let mut ctx = self.context(caller, fingerprint);
        ctx.owner = None;
        ctx
    }
}

/// A JSON response with an `ETag` of the stream version.
pub(crate) fn versioned<T: Serialize>(status: StatusCode, body: &T, version: u64) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// The first response stored under an idempotency key, marked as a replay.
pub(crate) fn replayed(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        stored.body,
    )
        .into_response();
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

/// The response to store under an idempotency key: `status` and `body` as JSON text.
pub(crate) fn stored<T: Serialize>(status: StatusCode, body: &T) -> StoredResponse {
    StoredResponse {
        status: status.as_u16(),
        body: serde_json::to_string(body).unwrap_or_default(),
    }
}

/// The `{id}` path segment, with a JSON error when it cannot be decoded.
pub(crate) struct IdPath(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await?;
        Ok(Self(id))
    }
}

/// Checks an id from a path, body or query (`field` names it in the error).
pub(crate) fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    eventfold_domain::validate_id(field, id).map_err(|m| ApiError::bad_request("invalid_id", m))
}

/// An RFC 3339 query value (`field` names it in the error).
pub(crate) fn parse_rfc3339(field: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_query",
                format!("{field} must be an RFC 3339 time such as 1997-03-01T00:00:00Z: {e}"),
            )
        })
}
