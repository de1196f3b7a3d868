//! The API contract in one place: the rules request fields, query values and path ids follow
//! (checked by the handlers with [`check`], and written into the OpenAPI document by
//! [`Contract`] from the same constants, so the document says what the server checks), each
//! route's roles and security scheme, and the error statuses every route can answer with the
//! error body ([`crate::ApiErrorBody`]).
//!
//! Patterns are anchored regular expressions in the syntax both JSON Schema (ECMA 262) and the
//! `regex` crate read the same way: character classes, `\uXXXX` escapes, bounded repeats; no
//! lookaround, no `\s` or `\d` (whose meanings differ between the two).

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::http::StatusCode;
use eventfold_domain::identity::Role;
use regex::Regex;
use serde_json::json;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, KnownFormat, ObjectBuilder, Ref, RefOr, Required,
    ResponseBuilder, Schema, SchemaFormat, Type,
};

use crate::auth::{OWNERS, OWNERS_OR_SUPPORT, READERS};
use crate::error::ApiError;

/// An id: an account, order, SKU, store, customer or owner id (1 to 100 of `[A-Za-z0-9._-]`).
pub const ID: &str = "^[A-Za-z0-9._-]{1,100}$";
/// An id, optionally scoped to its tenant: `{tenant}/{id}` (payment callbacks).
pub const SCOPED_ID: &str = "^([A-Za-z0-9._-]{1,100}/)?[A-Za-z0-9._-]{1,100}$";
/// A buyer: 1 to 128 of `[A-Za-z0-9._@-]`.
pub const BUYER: &str = "^[A-Za-z0-9._@-]{1,128}$";
/// A money amount above zero: a decimal string below 10^15 with at most 2 decimals,
/// no sign, exponent, spaces or leading zeros (`12.30`, `0.05`). A currency with fewer minor
/// units (JPY: none) refuses decimals it does not have (422).
pub const POSITIVE_AMOUNT: &str = "^([1-9][0-9]{0,14}([.][0-9]{1,2})?|0[.](0[1-9]|[1-9][0-9]?))$";
/// A money amount of zero or more (an order line, a payment of a free order, a unit price), as
/// [`POSITIVE_AMOUNT`] otherwise.
pub const AMOUNT: &str = "^(0|[1-9][0-9]{0,14})([.][0-9]{1,2})?$";
/// An `Idempotency-Key` header: 1 to 255 visible ASCII characters, no spaces.
pub const IDEMPOTENCY_KEY: &str = "^[\\u0021-\\u007e]{1,255}$";
/// A required reason: at most 500 characters (see [`MAX_REASON`]), no control characters, and
/// at least one that is not white space.
pub const REQUIRED_REASON: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff][^\\u0000-\\u001f\\u007f-\\u009f]*$";
/// An optional reason: at most 500 characters, no control characters.
pub const REASON: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]{0,500}$";
/// A calendar day, `YYYY-MM-DD` (and a real date).
pub const DAY: &str = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$";
/// A period: a month `YYYY-MM` or a day `YYYY-MM-DD` (and a real one).
pub const PERIOD: &str = "^[0-9]{4}-[0-9]{2}(-[0-9]{2})?$";
/// A period's maximum delay: a whole number of minutes, hours or days (`90m`, `72h`, `5d`); at
/// most 366 days and at least the upload window (2 hours), else 422.
pub const MAX_DELAY: &str = "^[1-9][0-9]{0,5}[mhd]$";
/// A window's size or advance: whole minutes or hours (`5m`, `1h`), at most 7 days (else 422).
pub const WINDOW_DURATION: &str = "^[1-9][0-9]{0,4}[mh]$";
/// A `Last-Event-ID` header: a global position, 1 to 18 digits.
pub const LAST_EVENT_ID: &str = "^[0-9]{1,18}$";
/// An IANA time zone name (`Europe/Berlin`, `UTC`); one that is not in the database is a 422.
pub const ZONE: &str = "^[A-Za-z][A-Za-z0-9_+-]{0,31}(/[A-Za-z0-9_+-]{1,31}){0,2}$";
/// A calendar's cutoff: whole minutes, hours or days (`120m`, `2h`, `1d`), at most 7 days
/// (else 422).
pub const CUTOFF: &str = "^[0-9]{1,5}[mhd]$";
/// A projection's name: lower-case letters and `_`, 1 to 64 (`daily_sales_by_store`).
pub const PROJECTION: &str = "^[a-z_]{1,64}$";
/// The most characters of a reason.
pub const MAX_REASON: usize = 500;
/// The most units a flash sale holds, a buyer may hold, or one purchase takes.
pub const MAX_UNITS: u64 = 1_000_000_000;

static COMPILED: LazyLock<HashMap<&'static str, Regex>> = LazyLock::new(|| {
    [
        ID,
        SCOPED_ID,
        BUYER,
        POSITIVE_AMOUNT,
        AMOUNT,
        REQUIRED_REASON,
        REASON,
        DAY,
        PERIOD,
        MAX_DELAY,
        WINDOW_DURATION,
        LAST_EVENT_ID,
        ZONE,
        CUTOFF,
        IDEMPOTENCY_KEY,
        PROJECTION,
    ]
    .into_iter()
    .map(|p| (p, Regex::new(p).expect("the contract's patterns compile")))
    .collect()
});

/// Checks `value` of `field` against `pattern` (one of this module's constants).
///
/// # Errors
/// 422 naming the field and the rule: `invalid_amount` for an amount, `invalid_reason` for a
/// reason, `invalid_field` otherwise.
pub fn check(field: &str, value: &str, pattern: &'static str) -> Result<(), ApiError> {
    let ok = COMPILED.get(pattern).is_some_and(|r| r.is_match(value))
        && (pattern != REQUIRED_REASON || value.chars().count() <= MAX_REASON);
    if ok {
        Ok(())
    } else {
        let (code, rule) = match pattern {
            POSITIVE_AMOUNT => (
                "invalid_amount",
                "must be a decimal number greater than zero, like 12.30 (below 10^15, at most \
                 2 decimal places, no sign, exponent or spaces)",
            ),
            AMOUNT => (
                "invalid_amount",
                "must be a decimal number that is not negative, like 12.30 (below 10^15, at \
                 most 2 decimal places, no sign, exponent or spaces)",
            ),
            REQUIRED_REASON => (
                "invalid_reason",
                "must be 1 to 500 characters, not only white space, with no control characters",
            ),
            REASON => (
                "invalid_reason",
                "must be at most 500 characters with no control characters",
            ),
            _ => ("invalid_field", "does not match"),
        };
        Err(ApiError::unprocessable(
            code,
            format!("{field} {value:?} {rule} (pattern {pattern})"),
        ))
    }
}

/// Checks a count of units: 1 to [`MAX_UNITS`].
///
/// # Errors
/// 422 `invalid_field` naming the field.
pub fn check_units(field: &str, n: u64) -> Result<(), ApiError> {
    if (1..=MAX_UNITS).contains(&n) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "invalid_field",
            format!("{field} must be 1 to {MAX_UNITS}, got {n}"),
        ))
    }
}

/// Deserializes a whole number that JSON may write as `3` or `3.0` (JSON Schema's `integer` is
/// any number without a fractional part): a fraction, or a value out of `T`'s range, is the usual
/// type error.
///
/// # Errors
/// A number with a fraction, out of range, or not a number.
pub fn integral<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i128>,
{
    use serde::de::{Deserialize, Error};
    let n = serde_json::Number::deserialize(deserializer)?;
    let whole = n
        .as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() <= 9.0e18)
                .map(|f| f as i128)
        });
    whole
        .and_then(|w| T::try_from(w).ok())
        .ok_or_else(|| D::Error::custom(format!("expected a whole number in range, got {n}")))
}

/// [`integral`] for an optional field (with `#[serde(default)]`): absent is `None`.
///
/// # Errors
/// As [`integral`] (`null` included).
pub fn optional_integral<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i128>,
{
    integral(deserializer).map(Some)
}

/// Who may call a route: no one needs a credential, a payment provider's signature, or a
/// principal with one of these roles.
#[derive(Debug, Clone, Copy)]
enum Access {
    Public,
    Signed,
    Roles(&'static [Role]),
}

/// Every operation of the document: method, path, who may call it.
const ROUTES: &[(&str, &str, Access)] = &[
    ("post", "/accounts", Access::Roles(&OWNERS_OR_SUPPORT)),
    ("get", "/accounts/{id}", Access::Roles(&READERS)),
    ("get", "/accounts/{id}/history", Access::Roles(&READERS)),
    ("post", "/accounts/{id}/deposit", Access::Roles(&OWNERS)),
    ("post", "/accounts/{id}/withdraw", Access::Roles(&OWNERS)),
    ("get", "/balances/{id}", Access::Roles(&READERS)),
    ("post", "/orders", Access::Roles(&OWNERS_OR_SUPPORT)),
    ("get", "/orders/{id}", Access::Roles(&READERS)),
    ("get", "/orders/{id}/history", Access::Roles(&READERS)),
    ("post", "/orders/{id}/pay", Access::Roles(&OWNERS)),
    (
        "post",
        "/orders/{id}/confirm",
        Access::Roles(&[Role::Support]),
    ),
    ("post", "/orders/{id}/ship", Access::Roles(&[Role::Support])),
    (
        "post",
        "/orders/{id}/complete",
        Access::Roles(&[Role::Support]),
    ),
    (
        "post",
        "/orders/{id}/cancel",
        Access::Roles(&OWNERS_OR_SUPPORT),
    ),
    (
        "post",
        "/orders/{id}/refund",
        Access::Roles(&[Role::Support]),
    ),
    ("post", "/flash-sales", Access::Roles(&[Role::Operator])),
    ("get", "/flash-sales/{sku}", Access::Roles(&Role::ALL)),
    (
        "post",
        "/flash-sales/{sku}/purchases",
        Access::Roles(&[Role::Customer, Role::Service]),
    ),
    ("post", "/payments/callbacks", Access::Signed),
    (
        "get",
        "/sales/daily",
        Access::Roles(&[Role::Finance, Role::Auditor, Role::Operator]),
    ),
    (
        "get",
        "/sales/realtime",
        Access::Roles(&[Role::Finance, Role::Auditor, Role::Operator]),
    ),
    (
        "get",
        "/sales/corrections",
        Access::Roles(&[Role::Finance, Role::Auditor, Role::Operator]),
    ),
    (
        "get",
        "/sales/corrections/stream",
        Access::Roles(&[Role::Finance, Role::Auditor, Role::Operator]),
    ),
    (
        "post",
        "/stores/{store}/uploads",
        Access::Roles(&crate::uploads::UPLOADERS),
    ),
    (
        "get",
        "/projections",
        Access::Roles(&[Role::Operator, Role::Auditor]),
    ),
    (
        "post",
        "/projections/{name}/activate",
        Access::Roles(&[Role::Operator]),
    ),
    (
        "get",
        "/stores/{store}/periods",
        Access::Roles(&crate::periods::PERIOD_READERS),
    ),
    (
        "post",
        "/stores/{store}/periods",
        Access::Roles(&crate::periods::FINANCE),
    ),
    (
        "post",
        "/stores/{store}/periods/{period}/soft-close",
        Access::Roles(&crate::periods::FINANCE),
    ),
    (
        "post",
        "/stores/{store}/periods/{period}/reopen",
        Access::Roles(&crate::periods::FINANCE),
    ),
    (
        "post",
        "/stores/{store}/periods/{period}/close",
        Access::Roles(&crate::periods::FINANCE),
    ),
    (
        "get",
        "/exceptions",
        Access::Roles(&crate::periods::EXCEPTION_READERS),
    ),
    (
        "post",
        "/exceptions/{id}/approve",
        Access::Roles(&crate::periods::FINANCE),
    ),
    (
        "post",
        "/exceptions/{id}/reject",
        Access::Roles(&crate::periods::FINANCE),
    ),
    ("get", "/trending", Access::Roles(&crate::trending::READ)),
    (
        "get",
        "/stores/{store}/calendar",
        Access::Roles(&crate::calendars::READERS),
    ),
    (
        "post",
        "/stores/{store}/calendar",
        Access::Roles(&crate::calendars::SETTERS),
    ),
    ("get", "/metrics", Access::Roles(&[Role::Operator])),
    (
        "get",
        "/sales/daily/explain",
        Access::Roles(&crate::sales::READ),
    ),
    (
        "post",
        "/projections/{name}/rebuild",
        Access::Roles(&[Role::Operator]),
    ),
    ("get", "/whoami", Access::Roles(&Role::ALL)),
    (
        "get",
        "/operations",
        Access::Roles(&[Role::Operator, Role::Auditor]),
    ),
    (
        "post",
        "/chain/verify",
        Access::Roles(&[Role::Operator, Role::Auditor]),
    ),
    ("get", "/console", Access::Public),
    ("get", "/console/assets/{file}", Access::Public),
    ("get", "/healthz", Access::Public),
    ("get", "/ready", Access::Public),
];

/// The roles `method path` accepts, as the document names them (`None`: not a role-checked
/// route, or not a route).
pub fn roles_of(method: &str, path: &str) -> Option<&'static [Role]> {
    ROUTES
        .iter()
        .find(|(m, p, _)| m.eq_ignore_ascii_case(method) && *p == path)
        .and_then(|(_, _, a)| match a {
            Access::Roles(r) => Some(*r),
            _ => None,
        })
}

/// Request body fields and their rules: (schema, property, rule).
enum Rule {
    Pattern(&'static str),
    PatternMax(&'static str, usize),
    Units,
    Currency,
    Items(usize, usize),
    DateTime,
    Enum(&'static [&'static str]),
}

const FIELDS: &[(&str, &str, Rule)] = &[
    ("OpenAccount", "account_id", Rule::Pattern(ID)),
    ("OpenAccount", "owner", Rule::Pattern(ID)),
    ("OpenAccount", "currency", Rule::Currency),
    ("AmountBody", "amount", Rule::Pattern(POSITIVE_AMOUNT)),
    ("AmountBody", "currency", Rule::Currency),
    ("CreateOrder", "order_id", Rule::Pattern(ID)),
    ("CreateOrder", "customer_id", Rule::Pattern(ID)),
    ("CreateOrder", "store_id", Rule::Pattern(ID)),
    ("CreateOrder", "currency", Rule::Currency),
    ("CreateOrder", "lines", Rule::Items(1, 1000)),
    ("LineBody", "sku", Rule::Pattern(ID)),
    ("LineBody", "amount", Rule::Pattern(AMOUNT)),
    ("LineBody", "quantity", Rule::Units),
    ("PayOrder", "amount", Rule::Pattern(AMOUNT)),
    ("PayOrder", "currency", Rule::Currency),
    ("PayOrder", "payment_id", Rule::Pattern(ID)),
    ("ReasonBody", "reason", Rule::Pattern(REASON)),
    (
        "RequiredReasonBody",
        "reason",
        Rule::PatternMax(REQUIRED_REASON, MAX_REASON),
    ),
    ("OpenFlashSale", "sku", Rule::Pattern(ID)),
    ("OpenFlashSale", "stock", Rule::Units),
    ("OpenFlashSale", "per_buyer_limit", Rule::Units),
    ("OpenFlashSale", "unit_price", Rule::Pattern(AMOUNT)),
    ("OpenFlashSale", "currency", Rule::Currency),
    ("OpenFlashSale", "store_id", Rule::Pattern(ID)),
    ("CreateOrder", "occurred_at", Rule::DateTime),
    ("PayOrder", "occurred_at", Rule::DateTime),
    ("ReasonBody", "occurred_at", Rule::DateTime),
    ("RequiredReasonBody", "occurred_at", Rule::DateTime),
    ("PurchaseBody", "buyer", Rule::Pattern(BUYER)),
    ("PurchaseBody", "quantity", Rule::Units),
    ("SetCalendar", "zone", Rule::Pattern(ZONE)),
    ("SetCalendar", "cutoff", Rule::Pattern(CUTOFF)),
    ("EnablePeriods", "from", Rule::Pattern(PERIOD)),
    ("EnablePeriods", "period", Rule::Enum(&["month", "day"])),
    ("EnablePeriods", "max_delay", Rule::Pattern(MAX_DELAY)),
    (
        "DecisionBody",
        "reason",
        Rule::PatternMax(REQUIRED_REASON, MAX_REASON),
    ),
    (
        "ActivateBody",
        "reason",
        Rule::PatternMax(REQUIRED_REASON, MAX_REASON),
    ),
    ("ActivateBody", "version", Rule::Units),
];

/// Writes the contract into the generated document (see the module docs).
pub struct Contract;

impl utoipa::Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("API key (efk_...) or JWT")
                    .description(Some(
                        "An API key from `eventfold keys create`, or a JWT from the configured \
                         identity provider (EdDSA or RS256; iss, aud, exp, nbf checked).",
                    ))
                    .build(),
            ),
        );
        for (name, property, rule) in FIELDS {
            if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(*name) {
                if let Some(RefOr::T(schema)) = object.properties.get_mut(*property) {
                    apply(schema, rule);
                }
            }
        }
        for (path, item) in &mut openapi.paths.paths {
            for (method, op) in [("get", item.get.as_mut()), ("post", item.post.as_mut())] {
                let Some(op) = op else { continue };
                let access = ROUTES
                    .iter()
                    .find(|(m, p, _)| *m == method && p == path)
                    .map_or(Access::Public, |(_, _, a)| *a);
                operation(op, method, path, access);
            }
        }
    }
}

fn apply(schema: &mut Schema, rule: &Rule) {
    match (schema, rule) {
        (Schema::Object(o), Rule::Pattern(p)) => o.pattern = Some((*p).to_owned()),
        (Schema::Object(o), Rule::PatternMax(p, max)) => {
            o.pattern = Some((*p).to_owned());
            o.max_length = Some(*max);
        }
        (Schema::Object(o), Rule::Units) => {
            o.minimum = Some(utoipa::Number::UInt(1));
            o.maximum = Some(utoipa::Number::UInt(MAX_UNITS as usize));
        }
        (Schema::Object(o), Rule::Currency) => {
            o.enum_values = Some(
                eventfold_domain::money::known_currencies()
                    .map(|c| json!(c))
                    .collect(),
            );
        }
        (Schema::Object(o), Rule::DateTime) => {
            o.format = Some(SchemaFormat::KnownFormat(KnownFormat::DateTime));
        }
        (Schema::Object(o), Rule::Enum(values)) => {
            o.enum_values = Some(values.iter().map(|v| json!(v)).collect());
        }
        (Schema::Array(a), Rule::Items(min, max)) => {
            a.min_items = Some(*min);
            a.max_items = Some(*max);
        }
        _ => {}
    }
}

/// The path and query parameters' rules, by name.
fn parameter_rules(op: &mut Operation, path: &str) {
    for p in op.parameters.iter_mut().flatten() {
        let Some(RefOr::T(Schema::Object(o))) = p.schema.as_mut() else {
            continue;
        };
        match (p.parameter_in.clone(), p.name.as_str()) {
            (ParameterIn::Path, "id" | "sku" | "store") | (ParameterIn::Query, "store") => {
                o.pattern = Some(ID.to_owned());
            }
            (ParameterIn::Query, "from" | "to")
                if path == "/sales/daily" || path == "/sales/corrections" =>
            {
                o.pattern = Some(DAY.to_owned());
                o.format = Some(SchemaFormat::KnownFormat(KnownFormat::Date));
            }
            (ParameterIn::Query, "from" | "to" | "asOf") => {
                o.format = Some(SchemaFormat::KnownFormat(KnownFormat::DateTime));
            }
            (ParameterIn::Path, "period") => o.pattern = Some(PERIOD.to_owned()),
            (ParameterIn::Query, "date") => {
                o.pattern = Some(DAY.to_owned());
                o.format = Some(SchemaFormat::KnownFormat(KnownFormat::Date));
            }
            (ParameterIn::Path, "file") => {
                o.enum_values = Some(
                    ["console.js", "console.css", "chart.umd.js"]
                        .iter()
                        .map(|v| json!(v))
                        .collect(),
                );
            }
            (ParameterIn::Path, "name") => o.pattern = Some(PROJECTION.to_owned()),
            (ParameterIn::Query, "size" | "advance") => {
                o.pattern = Some(WINDOW_DURATION.to_owned());
            }
            (ParameterIn::Query, "after") => {
                o.minimum = Some(utoipa::Number::UInt(0));
                o.maximum = Some(utoipa::Number::UInt(i64::MAX as usize));
            }
            (ParameterIn::Query, "top" | "windows") => {
                o.minimum = Some(utoipa::Number::UInt(1));
                o.maximum = Some(utoipa::Number::UInt(crate::trending::MAX_COUNT as usize));
            }
            (ParameterIn::Query, "state") => {
                o.enum_values = Some(
                    ["open", "approved", "rejected"]
                        .iter()
                        .map(|v| json!(v))
                        .collect(),
                );
            }
            (ParameterIn::Header, "Last-Event-ID") => {
                o.schema_type = utoipa::openapi::schema::SchemaType::Type(Type::String);
                o.pattern = Some(LAST_EVENT_ID.to_owned());
            }
            (ParameterIn::Header, "Idempotency-Key") => {
                o.pattern = Some(IDEMPOTENCY_KEY.to_owned());
            }
            (ParameterIn::Query, "version") => {
                o.minimum = Some(utoipa::Number::UInt(1));
                o.maximum = Some(utoipa::Number::UInt(i64::MAX as usize));
            }
            _ => {}
        }
        let required_store =
            p.name == "store" && (path.starts_with("/sales") || path == "/trending");
        let required_date = p.name == "date" && path == "/sales/daily/explain";
        if matches!(p.parameter_in, ParameterIn::Query) && (required_store || required_date) {
            p.required = Required::True;
        }
    }
}

fn error_response(
    status: StatusCode,
    header: Option<(&str, &str)>,
) -> RefOr<utoipa::openapi::Response> {
    let mut r = ResponseBuilder::new()
        .description(status.canonical_reason().unwrap_or("error"))
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ApiErrorBody")))
                .build(),
        );
    if let Some((name, description)) = header {
        r = r.header(
            name,
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some(description))
                .build(),
        );
    }
    RefOr::T(r.build())
}

fn operation(op: &mut Operation, method: &str, path: &str, access: Access) {
    parameter_rules(op, path);
    let has_id = path.contains('{');
    let has_query = op
        .parameters
        .iter()
        .flatten()
        .any(|p| matches!(p.parameter_in, ParameterIn::Query));
    let mut statuses: Vec<(StatusCode, Option<(&str, &str)>)> = Vec::new();
    match access {
        Access::Public => op.security = Some(vec![SecurityRequirement::default()]),
        Access::Signed => {
            op.security = Some(vec![SecurityRequirement::default()]);
            statuses.push((
                StatusCode::UNAUTHORIZED,
                Some(("WWW-Authenticate", "Eventfold-Signature")),
            ));
        }
        Access::Roles(roles) => {
            op.security = Some(vec![SecurityRequirement::new(
                "bearer",
                Vec::<String>::new(),
            )]);
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            let line = format!("Roles: {}.", names.join(", "));
            op.description = Some(match op.description.take() {
                Some(d) => format!("{d}\n\n{line}"),
                None => line,
            });
            op.extensions.get_or_insert_with(Default::default).merge(
                ExtensionsBuilder::new()
                    .add("x-eventfold-roles", json!(names))
                    .build(),
            );
            statuses.extend([
                (
                    StatusCode::UNAUTHORIZED,
                    Some(("WWW-Authenticate", "Bearer realm=\"eventfold\"")),
                ),
                (StatusCode::FORBIDDEN, None),
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    Some(("Retry-After", "seconds to wait")),
                ),
                (StatusCode::BAD_REQUEST, None),
            ]);
        }
    }
    if !matches!(access, Access::Public) || path == "/ready" {
        statuses.push((
            StatusCode::SERVICE_UNAVAILABLE,
            Some(("Retry-After", "seconds to wait")),
        ));
    }
    if has_id {
        statuses.extend([
            (StatusCode::BAD_REQUEST, None),
            (StatusCode::NOT_FOUND, None),
            (StatusCode::GONE, None),
        ]);
    }
    if has_query {
        statuses.extend([
            (StatusCode::BAD_REQUEST, None),
            (StatusCode::UNPROCESSABLE_ENTITY, None),
        ]);
    }
    if method == "post" {
        statuses.extend([
            (StatusCode::BAD_REQUEST, None),
            (StatusCode::CONFLICT, None),
            (StatusCode::PAYLOAD_TOO_LARGE, None),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, None),
            (StatusCode::UNPROCESSABLE_ENTITY, None),
        ]);
    }
    for (status, header) in statuses {
        op.responses
            .responses
            .entry(status.as_u16().to_string())
            .or_insert_with(|| error_response(status, header));
    }
}
