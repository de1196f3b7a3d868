//! Command endpoints: accounts (open, deposit, withdraw) and orders (create, pay, confirm, ship,
//! complete, cancel, refund). Each accepts `X-Actor`, `If-Match` (expected version) and
//! `Idempotency-Key`; a retried request with the same key and body returns the first response and
//! appends nothing.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use eventfold_core::{Actor, Aggregate};
use eventfold_domain::account::{Account, AccountCommand};
use eventfold_domain::order::{Order, OrderCommand, OrderLine, OrderStatus};
use eventfold_domain::{Currency, DomainError, Money, MoneyError};
use serde::{Deserialize, Serialize};

use super::{
    check_id, replayed, stored, versioned, ApiError, AppState, CommandBody, CommandHeaders, IdPath,
};
use crate::service::Executed;

/// An account as command responses and `GET /accounts/{id}` show it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccountView {
    /// Account id.
    pub account_id: String,
    /// Owner id.
    pub owner: String,
    /// Ledger currency.
    pub currency: Currency,
    /// Balance.
    pub balance: Money,
    /// Interest accrued in total.
    pub interest: Money,
    /// Stream version the view reflects.
    pub version: u64,
}

impl AccountView {
    pub(crate) fn new(id: &str, a: &Account, version: u64) -> Self {
        let currency = a.currency.unwrap_or(Currency::USD);
        Self {
            account_id: id.to_owned(),
            owner: a.owner.clone(),
            currency,
            balance: a.balance.unwrap_or(Money::zero(currency)),
            interest: a.interest.unwrap_or(Money::zero(currency)),
            version,
        }
    }
}

/// An order as command responses show it (the state right after the command).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderView {
    /// Order id.
    pub order_id: String,
    /// Status.
    pub status: Option<OrderStatus>,
    /// Customer id.
    pub customer_id: String,
    /// Store id.
    pub store_id: String,
    /// Lines.
    pub lines: Vec<OrderLine>,
    /// Total.
    pub total: Option<Money>,
    /// Paid.
    pub paid: Option<Money>,
    /// Refunded.
    pub refunded: Option<Money>,
    /// Payment reference.
    pub payment_id: Option<String>,
    /// Stream version.
    pub version: u64,
    /// Who made the last change.
    pub last_actor: Option<String>,
    /// Why.
    pub last_reason: Option<String>,
}

impl OrderView {
    fn new(id: &str, o: &Order, version: u64) -> Self {
        Self {
            order_id: id.to_owned(),
            status: o.status,
            customer_id: o.customer_id.clone(),
            store_id: o.store_id.clone(),
            lines: o.lines.clone(),
            total: o.total,
            paid: o.paid,
            refunded: o.refunded,
            payment_id: o.payment_id.clone(),
            version,
            last_actor: o.last_actor.as_ref().map(Actor::to_string),
            last_reason: o.last_reason.clone(),
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

/// One line of `POST /orders`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineBody {
    /// SKU.
    pub sku: String,
    /// Units, at least 1.
    pub quantity: u32,
    /// The line's total, a decimal string.
    pub amount: String,
}

/// `POST /orders`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// Order id; generated (UUIDv7) when absent.
    pub order_id: Option<String>,
    /// Customer id.
    pub customer_id: String,
    /// Store id.
    pub store_id: String,
    /// ISO 4217 code of every line.
    pub currency: String,
    /// At least one line.
    pub lines: Vec<LineBody>,
}

/// `POST /orders/{id}/pay`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayOrder {
    /// Must equal the order total.
    pub amount: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Payment reference; generated when absent.
    pub payment_id: Option<String>,
}

/// Body of confirm / ship / complete (reason optional) and cancel / refund (reason required).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Why.
    pub reason: Option<String>,
}

fn money_error(field: &str, e: MoneyError) -> ApiError {
    let code = if matches!(e, MoneyError::UnknownCurrency(_)) {
        "invalid_currency"
    } else {
        "invalid_amount"
    };
    ApiError::unprocessable(code, format!("{field}: {e}"))
}

fn currency(field: &str, code: &str) -> Result<Currency, ApiError> {
    code.parse().map_err(|e| money_error(field, e))
}

fn money(field: &str, amount: &str, code: &str) -> Result<Money, ApiError> {
    let c = currency("currency", code)?;
    Money::parse(amount, c).map_err(|e| money_error(field, e))
}

async fn run<A>(
    state: &AppState,
    id: &str,
    command: A::Command,
    headers: CommandHeaders,
    fingerprint: &str,
    status: StatusCode,
    view: fn(&str, &A, u64) -> serde_json::Value,
) -> Result<Response, ApiError>
where
    A: Aggregate,
    A::Command: Clone + Send + 'static,
    A::Error: DomainError,
{
    let ctx = headers.context(fingerprint);
    let owned_id = id.to_owned();
    let render = Box::new(move |s: &A, v: u64| stored(status, &view(&owned_id, s, v)));
    match state
        .service
        .execute::<A>(id, command, &ctx, render)
        .await?
    {
        Executed::Applied { state, version, .. } => {
            Ok(versioned(status, &view(id, &state, version), version))
        }
        Executed::Replayed(first) => Ok(replayed(first)),
    }
}

fn account_view(id: &str, a: &Account, v: u64) -> serde_json::Value {
    serde_json::to_value(AccountView::new(id, a, v)).unwrap_or_default()
}

fn order_view(id: &str, o: &Order, v: u64) -> serde_json::Value {
    serde_json::to_value(OrderView::new(id, o, v)).unwrap_or_default()
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Opens an account.
#[utoipa::path(post, path = "/accounts", request_body = OpenAccount,
    responses((status = 201, body = AccountView), (status = 400, body = super::ApiErrorBody), (status = 409, body = super::ApiErrorBody), (status = 422, body = super::ApiErrorBody)))]
pub async fn open_account(
    State(state): State<AppState>,
    headers: CommandHeaders,
    body: CommandBody<OpenAccount>,
) -> Result<Response, ApiError> {
    let id = body.body.account_id.clone().unwrap_or_else(new_id);
    check_id("account_id", &id)?;
    let command = AccountCommand::Open {
        owner: body.body.owner,
        currency: currency("currency", &body.body.currency)?,
        actor: headers.actor.clone(),
    };
    run::<Account>(
        &state,
        &id,
        command,
        headers,
        &body.fingerprint,
        StatusCode::CREATED,
        account_view,
    )
    .await
}

/// Runs a deposit or withdrawal: `make` builds the command from the amount and the actor.
async fn move_funds(
    state: &AppState,
    id: &str,
    headers: CommandHeaders,
    body: CommandBody<AmountBody>,
    make: fn(Money, Actor) -> AccountCommand,
) -> Result<Response, ApiError> {
    check_id("account id", id)?;
    let amount = money("amount", &body.body.amount, &body.body.currency)?;
    let command = make(amount, headers.actor.clone());
    run::<Account>(
        state,
        id,
        command,
        headers,
        &body.fingerprint,
        StatusCode::OK,
        account_view,
    )
    .await
}

/// Deposits funds.
#[utoipa::path(post, path = "/accounts/{id}/deposit", request_body = AmountBody, params(("id" = String, Path)),
    responses((status = 200, body = AccountView), (status = 404, body = super::ApiErrorBody), (status = 409, body = super::ApiErrorBody), (status = 422, body = super::ApiErrorBody)))]
pub async fn deposit(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    headers: CommandHeaders,
    body: CommandBody<AmountBody>,
) -> Result<Response, ApiError> {
    move_funds(&state, &id, headers, body, |amount, actor| {
        AccountCommand::Deposit { amount, actor }
    })
    .await
}

/// Withdraws funds (no overdraft).
#[utoipa::path(post, path = "/accounts/{id}/withdraw", request_body = AmountBody, params(("id" = String, Path)),
    responses((status = 200, body = AccountView), (status = 404, body = super::ApiErrorBody), (status = 409, body = super::ApiErrorBody), (status = 422, body = super::ApiErrorBody)))]
pub async fn withdraw(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    headers: CommandHeaders,
    body: CommandBody<AmountBody>,
) -> Result<Response, ApiError> {
    move_funds(&state, &id, headers, body, |amount, actor| {
        AccountCommand::Withdraw { amount, actor }
    })
    .await
}

/// Places an order (PENDING).
#[utoipa::path(post, path = "/orders", request_body = CreateOrder,
    responses((status = 201, body = OrderView), (status = 400, body = super::ApiErrorBody), (status = 409, body = super::ApiErrorBody), (status = 422, body = super::ApiErrorBody)))]
pub async fn create_order(
    State(state): State<AppState>,
    headers: CommandHeaders,
    body: CommandBody<CreateOrder>,
) -> Result<Response, ApiError> {
    let b = body.body;
    let id = b.order_id.clone().unwrap_or_else(new_id);
    check_id("order_id", &id)?;
    let lines = b
        .lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            Ok(OrderLine {
                sku: l.sku,
                quantity: l.quantity,
                amount: money(&format!("lines[{i}].amount"), &l.amount, &b.currency)?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let command = OrderCommand::Create {
        customer_id: b.customer_id,
        store_id: b.store_id,
        lines,
        actor: headers.actor.clone(),
    };
    run::<Order>(
        &state,
        &id,
        command,
        headers,
        &body.fingerprint,
        StatusCode::CREATED,
        order_view,
    )
    .await
}

/// Pays an order in full (PENDING -> PAID).
#[utoipa::path(post, path = "/orders/{id}/pay", request_body = PayOrder, params(("id" = String, Path)),
    responses((status = 200, body = OrderView), (status = 404, body = super::ApiErrorBody), (status = 409, body = super::ApiErrorBody), (status = 422, body = super::ApiErrorBody)))]
pub async fn pay_order(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    headers: CommandHeaders,
    body: CommandBody<PayOrder>,
) -> Result<Response, ApiError> {
    check_id("order id", &id)?;
    let amount = money("amount", &body.body.amount, &body.body.currency)?;
    let payment_id = body.body.payment_id.clone().unwrap_or_else(new_id);
    let command = OrderCommand::Pay {
        amount,
        payment_id,
        actor: headers.actor.clone(),
    };
    run::<Order>(
        &state,
        &id,
        command,
        headers,
        &body.fingerprint,
        StatusCode::OK,
        order_view,
    )
    .await
}

macro_rules! transition {
    ($(#[$doc:meta])* $name:ident, $path:literal, |$actor:ident, $reason:ident| $command:expr) => {
        $(#[$doc])*
        #[utoipa::path(post, path = $path, request_body = ReasonBody, params(("id" = String, Path)),
            responses((status = 200, body = OrderView), (status = 404, body = super::ApiErrorBody), (status = 409, body = super::ApiErrorBody), (status = 422, body = super::ApiErrorBody)))]
        pub async fn $name(State(state): State<AppState>, IdPath(id): IdPath, headers: CommandHeaders, body: CommandBody<ReasonBody>) -> Result<Response, ApiError> {
            check_id("order id", &id)?;
            let $actor = headers.actor.clone();
            let $reason = body.body.reason;
            let command = $command;
            run::<Order>(&state, &id, command, headers, &body.fingerprint, StatusCode::OK, order_view).await
        }
    };
}

transition!(
    /// PAID -> CONFIRMED.
    confirm_order, "/orders/{id}/confirm", |actor, reason| OrderCommand::Confirm { actor, reason });
transition!(
    /// CONFIRMED -> SHIPPED.
    ship_order, "/orders/{id}/ship", |actor, reason| OrderCommand::Ship { actor, reason });
transition!(
    /// SHIPPED -> COMPLETED.
    complete_order, "/orders/{id}/complete", |actor, reason| OrderCommand::Complete { actor, reason });
transition!(
    /// PENDING, PAID or CONFIRMED -> CANCELLED (reason required; a payment is refunded).
    cancel_order, "/orders/{id}/cancel", |actor, reason| OrderCommand::Cancel { actor, reason: reason.unwrap_or_default() });
transition!(
    /// PAID, CONFIRMED, SHIPPED or COMPLETED -> REFUNDED (reason required).
    refund_order, "/orders/{id}/refund", |actor, reason| OrderCommand::Refund { actor, reason: reason.unwrap_or_default() });
