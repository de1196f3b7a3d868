//! What every command endpoint shares: running a command through the service with the request's
//! headers (`X-Actor`, `If-Match`, `Idempotency-Key`), and reading money from a body. A retried
//! request with the same key and body returns the first response and appends nothing.

use axum::http::StatusCode;
use axum::response::Response;
use eventfold_app::service::{CommandContext, Executed};
use eventfold_core::Aggregate;
use eventfold_domain::{Currency, DomainError, Money, MoneyError};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{replayed, stored, versioned};
use crate::state::AppState;

/// A money parse error as a 422 naming `field` (`invalid_currency` or `invalid_amount`).
pub(crate) fn money_error(field: &str, e: MoneyError) -> ApiError {
    let code = if matches!(e, MoneyError::UnknownCurrency(_)) {
        "invalid_currency"
    } else {
        "invalid_amount"
    };
    ApiError::unprocessable(code, format!("{field}: {e}"))
}

/// A command body that may carry the source's event time (`occurred_at`).
pub(crate) trait Occurred {
    /// The `occurred_at` text, if the body has one.
    fn occurred_at(&self) -> Option<&str> {
        None
    }
}

/// The event time a body names, checked: RFC 3339, not before 1970, at most
/// [`eventfold_domain::reporting::MAX_CLOCK_SKEW`] ahead of now (UTC). `None`: the server's clock decides.
///
/// # Errors
/// 422 `invalid_event_time` naming `occurred_at` and what is wrong.
pub(crate) fn occurred_at(
    body: &impl Occurred,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    let Some(text) = body.occurred_at() else {
        return Ok(None);
    };
    eventfold_domain::reporting::parse_event_time("occurred_at", text, chrono::Utc::now())
        .map(Some)
        .map_err(|why| ApiError::unprocessable("invalid_event_time", why))
}

/// The currency `code` (`field` names it in the error).
pub(crate) fn currency(field: &str, code: &str) -> Result<Currency, ApiError> {
    code.parse().map_err(|e| money_error(field, e))
}

/// `amount` of currency `code` (`field` names the amount in the error): above zero and written
/// as [`crate::contract::POSITIVE_AMOUNT`] says.
pub(crate) fn money(field: &str, amount: &str, code: &str) -> Result<Money, ApiError> {
    money_as(field, amount, code, crate::contract::POSITIVE_AMOUNT)
}

/// As [`money`], for an amount written as `pattern` (one of [`crate::contract`]'s amounts).
pub(crate) fn money_as(
    field: &str,
    amount: &str,
    code: &str,
    pattern: &'static str,
) -> Result<Money, ApiError> {
    let c = currency("currency", code)?;
    // The parser's errors first (not a decimal, too many decimal places, too large): they say
    // the most; then the written form the pattern requires (no sign, spaces or exponent).
    let money = Money::parse(amount, c).map_err(|e| money_error(field, e))?;
    crate::contract::check(field, amount, pattern)?;
    Ok(money)
}

/// Runs `caller`'s `command` on aggregate `id` (of the caller's tenant) with `ctx` (see
/// [`CommandHeaders::context`]) and answers `status` with `view` of the new state (also the
/// response stored under the idempotency key); a replayed key answers its first response.
///
/// # Errors
/// The service's refusals and failures, as [`ApiError`].
pub(crate) async fn run<A>(
    state: &AppState,
    caller: &Caller,
    id: &str,
    command: A::Command,
    ctx: CommandContext,
    status: StatusCode,
    view: fn(&str, &A, u64) -> serde_json::Value,
) -> Result<Response, ApiError>
where
    A: Aggregate,
    A::Command: Clone + Send + 'static,
    A::Error: DomainError,
{
    let owned_id = id.to_owned();
    let render = Box::new(move |s: &A, v: u64| stored(status, &view(&owned_id, s, v)));
    match state
        .app
        .service
        .execute::<A>(&caller.scope(id), command, &ctx, render)
        .await?
    {
        Executed::Applied { state, version, .. } => {
            Ok(versioned(status, &view(id, &state, version), version))
        }
        Executed::Replayed(first) => Ok(replayed(first)),
    }
}

/// A new id (UUIDv7) for a resource created without one.
pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A command endpoint `POST $path` on the aggregate named by the `{id}` path segment: checks the
/// caller's roles (`$roles`), the id (named `$field` in the error), builds the command from the id, the JSON body (`$body`) and
/// the actor, runs it and answers 200 with `$render` of the new state (`$view` in the OpenAPI
/// document). The command expression may refuse with `?`.
macro_rules! id_command {
    ($(#[$doc:meta])* $name:ident, $path:literal, $body:ident -> $aggregate:ident, $view:ident via $render:path,
     $field:literal, roles $roles:expr, |$b:ident, $actor:ident| $command:expr) => {
        $(#[$doc])*
        #[utoipa::path(post, path = $path, request_body = $body, params(("id" = String, Path)),
            responses((status = 200, body = $view), (status = 404, body = ApiErrorBody),
                (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
        pub async fn $name(
            State(state): State<AppState>,
            caller: Caller,
            IdPath(id): IdPath,
            headers: CommandHeaders,
            body: CommandBody<$body>,
        ) -> Result<Response, ApiError> {
            caller.require(&$roles)?;
            check_id($field, &id)?;
            let occurred = $crate::command::occurred_at(&body.body)?;
            let $actor = caller.0.actor.clone();
            let $b = body.body;
            let command = $command;
            let mut ctx = headers.context(&caller, &body.fingerprint);
            if let Some(t) = occurred {
                ctx.event_time = t;
            }
            $crate::command::run::<$aggregate>(
                &state,
                &caller,
                &id,
                command,
                ctx,
                StatusCode::OK,
                $render,
            )
            .await
        }
    };
}
pub(crate) use id_command;
