//! Accounts: open, deposit, withdraw (commands), the account now or as of an event time or a
//! version, and its balance from the `balance_by_account` read model.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use eventfold_app::service::{load_snapshotted, AsOf};
use eventfold_core::Replayed;
use eventfold_domain::account::{Account, AccountCommand};
use eventfold_domain::projections::{AccountBalance, BALANCE_BY_ACCOUNT};
use eventfold_domain::{Currency, Money};
use serde::{Deserialize, Serialize};

use crate::auth::{Caller, OWNERS, OWNERS_OR_SUPPORT, READERS};
use crate::command::{currency, id_command, money, new_id, run};
use crate::error::{ApiError, ApiErrorBody};
use crate::extract::{check_id, parse_rfc3339, versioned, CommandBody, CommandHeaders, IdPath};
use crate::operations::decode_doc;
use crate::state::AppState;
use crate::wire;

/// An account as command responses and `GET /accounts/{id}` show it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountView {
    /// Account id.
    pub account_id: String,
    /// Owner id.
    pub owner: String,
    /// The account's currency (every amount of the account is in it).
    pub currency: wire::Currency,
    /// Balance now, in the account's currency.
    pub balance: wire::Money,
    /// Interest accrued in total.
    pub interest: wire::Money,
    /// Stream version the view reflects.
    pub version: u64,
}

impl AccountView {
    /// The view of account `id` in state `a` at stream version `version`.
    pub fn new(id: &str, a: &Account, version: u64) -> Self {
        let currency = a.currency.unwrap_or(Currency::USD);
        Self {
            account_id: id.to_owned(),
            owner: a.owner.clone(),
            currency: wire::Currency(currency),
            balance: a.balance.unwrap_or(Money::zero(currency)).into(),
            interest: a.interest.unwrap_or(Money::zero(currency)).into(),
            version,
        }
    }
}

/// `POST /accounts`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAccount {
    /// Account id; generated (UUIDv7) when absent.
    pub account_id: Option<String>,
    /// Owner id.
    pub owner: String,
    /// ISO 4217 code, e.g. `USD`.
    pub currency: String,
}

/// An amount with its currency, e.g. `{"amount": "12.30", "currency": "USD"}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmountBody {
    /// Decimal string, e.g. `"12.30"`; numbers are refused to keep floats out of money.
    pub amount: String,
    /// ISO 4217 code.
    pub currency: String,
}

impl crate::command::Occurred for AmountBody {}

fn account_view(id: &str, a: &Account, v: u64) -> serde_json::Value {
    serde_json::to_value(AccountView::new(id, a, v)).unwrap_or_default()
}

/// Opens an account.
#[utoipa::path(post, path = "/accounts", request_body = OpenAccount,
    responses((status = 201, body = AccountView), (status = 400, body = ApiErrorBody), (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn open_account(
    State(state): State<AppState>,
    caller: Caller,
    headers: CommandHeaders,
    body: CommandBody<OpenAccount>,
) -> Result<Response, ApiError> {
    caller.require(&OWNERS_OR_SUPPORT)?;
    let id = body.body.account_id.clone().unwrap_or_else(new_id);
    check_id("account_id", &id)?;
    caller.require_owner("owner", &body.body.owner)?;
    let command = AccountCommand::Open {
        owner: body.body.owner,
        currency: currency("currency", &body.body.currency)?,
        actor: caller.0.actor.clone(),
    };
    run::<Account>(
        &state,
        &caller,
        &id,
        command,
        headers.creation_context(&caller, &body.fingerprint),
        StatusCode::CREATED,
        account_view,
    )
    .await
}

id_command!(
/// Deposits funds.
deposit, "/accounts/{id}/deposit", AmountBody -> Account, AccountView via account_view,
"account id", roles OWNERS, |b, actor| AccountCommand::Deposit {
    amount: money("amount", &b.amount, &b.currency)?,
    actor,
});
id_command!(
/// Withdraws funds (no overdraft).
withdraw, "/accounts/{id}/withdraw", AmountBody -> Account, AccountView via account_view,
"account id", roles OWNERS, |b, actor| AccountCommand::Withdraw {
    amount: money("amount", &b.amount, &b.currency)?,
    actor,
});

/// `GET /accounts/{id}` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AccountQuery {
    /// RFC 3339 instant: the state from every event whose event time is at or before it.
    #[serde(rename = "asOf")]
    pub as_of: Option<String>,
    /// A stream version: the state right after it.
    pub version: Option<u64>,
}

/// An account at a point in time.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountAsOf {
    /// The account.
    #[serde(flatten)]
    pub account: AccountView,
    /// The instant asked for, if any.
    pub as_of: Option<DateTime<Utc>>,
}

/// An account's state, now or as of a time (`asOf`) or version (`version`).
#[utoipa::path(get, path = "/accounts/{id}", params(("id" = String, Path), AccountQuery),
    responses((status = 200, body = AccountAsOf), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
pub async fn get_account(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    query: Result<Query<AccountQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(&READERS)?;
    let Query(query) = query?;
    check_id("account id", &id)?;
    let (as_of, at) = match (&query.as_of, query.version) {
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable(
                "invalid_query",
                "give asOf or version, not both",
            ))
        }
        (Some(t), None) => {
            let t = parse_rfc3339("asOf", t)?;
            (AsOf::Time(t), Some(t))
        }
        (None, Some(v)) if v > i64::MAX as u64 => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("version must be at most {}", i64::MAX),
            ))
        }
        (None, Some(0)) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "version must be at least 1",
            ))
        }
        (None, Some(v)) => (AsOf::Version(v), None),
        (None, None) => (AsOf::Latest, None),
    };
    // From the newest usable snapshot plus the events after it.
    let loaded = load_snapshotted::<Account>(
        state.app.service.store().as_ref(),
        state.app.backend.read_models.as_ref(),
        &caller.scope(&id),
        as_of,
    )
    .await?;
    let loaded: Replayed<Account> = loaded
        .filter(|l| caller.may_reach(&l.state.owner))
        .ok_or_else(|| {
            ApiError::not_found(
                "account_not_found",
                format!("account {id} has no events in range"),
            )
        })?;
    let body = AccountAsOf {
        account: AccountView::new(&id, &loaded.state, loaded.version),
        as_of: at,
    };
    Ok(versioned(StatusCode::OK, &body, loaded.version))
}

/// An account's audit timeline: who, when, what changed, the state before and after each
/// change, in stream order.
#[utoipa::path(get, path = "/accounts/{id}/history", params(("id" = String, Path)),
    responses((status = 200, body = Vec<wire::TimelineEntry>), (status = 404, body = ApiErrorBody)))]
pub async fn account_history(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<Vec<wire::TimelineEntry>>, ApiError> {
    caller.require(&READERS)?;
    check_id("account id", &id)?;
    let events = state
        .app
        .service
        .read_stream(&<Account as eventfold_core::Aggregate>::stream_id(
            &caller.scope(&id),
        ))
        .await?;
    let account = Replayed::<Account>::from_events(&events)?;
    if events.is_empty() || !caller.may_reach(&account.state.owner) {
        return Err(ApiError::not_found(
            "account_not_found",
            format!("account {id} not found"),
        ));
    }
    let entries = eventfold_app::service::timeline::<Account>(&events)?;
    Ok(Json(entries.into_iter().map(Into::into).collect()))
}

/// An account's balance from the `balance_by_account` read model (may trail commands by
/// milliseconds).
#[utoipa::path(get, path = "/balances/{id}", params(("id" = String, Path)),
    responses((status = 200, body = wire::AccountBalance), (status = 404, body = ApiErrorBody)))]
pub async fn get_balance(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<wire::AccountBalance>, ApiError> {
    caller.require(&READERS)?;
    check_id("account id", &id)?;
    let docs = state
        .app
        .views
        .get_docs(BALANCE_BY_ACCOUNT, &[caller.scope(&id)])
        .await?;
    let not_found = || ApiError::not_found("account_not_found", format!("account {id} not found"));
    let (_, doc) = docs.into_iter().next().ok_or_else(not_found)?;
    let balance: AccountBalance = decode_doc(&doc)?;
    if !caller.may_reach(&balance.owner) {
        return Err(not_found());
    }
    Ok(Json(balance.into()))
}
