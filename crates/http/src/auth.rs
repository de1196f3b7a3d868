//! Authentication and authorization of every request: the [`Caller`] extractor proves who is
//! asking, and each route checks the roles it accepts with [`Caller::require`].
//!
//! - **Credentials**: `Authorization: Bearer <API key>` (see `eventfold_app::identity`) or
//!   `Authorization: Bearer <JWT>` from an identity provider, when configured. A
//!   request without a credential, or with one that is unknown or revoked, is refused with 401
//!   `unauthenticated` and `WWW-Authenticate: Bearer realm="eventfold"`.
//! - **Open mode**: a server started without `--auth-keys-required` on a loopback address (or
//!   with `--insecure`), while the store holds no live key, answers every request as [`Principal::open`] (every role, the
//!   `X-Tenant-Id` header's tenant or `default`, the `X-Actor` header's actor or
//!   `user:anonymous`).
//! - **Tenant**: `X-Tenant-Id`, when sent with a credential, must be the credential's tenant (403
//!   `forbidden`). Every id a request names is scoped to the caller's tenant, so another
//!   tenant's resources answer 404, as ids that do not exist.
//! - **Actor**: the events' actor is the credential's. `X-Actor` naming another actor is 403
//!   `forbidden`, except from a principal with the `service` role, which acts on behalf of an end
//!   user (`X-Actor: user:789`): the request then acts as that user, with the service's roles.
//! - **Roles** (403 `forbidden` naming the roles the route accepts): `customer` and `service`
//!   reach only the accounts and orders whose owner is the actor's id (others answer 404);
//!   `support`, `finance`, `operator` and `auditor` reach every one of their tenant's.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use std::sync::Arc;

use eventfold_app::identity::jwt::JwtVerifier;
use eventfold_app::identity::{Principal, KEY_PREFIX};
use eventfold_core::{tenant, Actor};
use eventfold_domain::identity::Role;

use crate::error::ApiError;
use crate::extract::header_str;
use crate::rate_limit::RateLimits;
use crate::state::AppState;

/// How a server authenticates.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Require a credential even while the store holds no key (otherwise a server with no key
    /// runs open: see the module docs).
    pub keys_required: bool,
    /// Let [`crate::serve`] run open on an address that is not loopback (without it, a server
    /// that would run open there refuses to start).
    pub insecure: bool,
    /// Accept JWT bearer tokens verified by this (see `eventfold_app::identity::jwt`).
    pub jwt: Option<Arc<JwtVerifier>>,
    /// Per-principal rate limits (none: unlimited).
    pub limits: Option<Arc<RateLimits>>,
}

impl AuthConfig {
    /// Whether requests need no credential: none is required, no JWT verifier is configured,
    /// and `keys` holds no live key.
    pub fn is_open(&self, keys: &eventfold_app::identity::KeyRegistry) -> bool {
        !self.keys_required && self.jwt.is_none() && keys.is_empty()
    }
}

/// The roles that see every account and order of their tenant (the others see their own).
const STAFF: [Role; 4] = [Role::Support, Role::Finance, Role::Operator, Role::Auditor];

/// The roles that act on their own accounts and orders only (moving money, paying).
pub(crate) const OWNERS: [Role; 2] = [Role::Customer, Role::Service];
/// [`OWNERS`] and `support`, who may act on anyone's (open an account, place or cancel an order).
pub(crate) const OWNERS_OR_SUPPORT: [Role; 3] = [Role::Customer, Role::Service, Role::Support];
/// Who may read an account or an order ([`OWNERS`] only their own).
pub(crate) const READERS: [Role; 5] = [
    Role::Customer,
    Role::Service,
    Role::Support,
    Role::Finance,
    Role::Auditor,
];

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

fn unauthenticated(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
}

pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = match parts.extensions.remove::<Authenticated>() {
            Some(Authenticated(result)) => result?,
            None => authenticate(&parts.headers, state)?,
        };
        if let Some(limits) = &state.auth.limits {
            limits.request(&principal)?;
        }
        Ok(Caller(principal))
    }
}

/// The outcome of [`authenticate_once`], for the [`Caller`] extractor.
#[derive(Clone)]
struct Authenticated(Result<Principal, ApiError>);

/// Middleware: authenticates every request once, before its route runs, and runs each read
/// (`GET`, `HEAD`) inside the tenant fence of its principal's tenant
/// ([`eventfold_core::tenant::fenced`]): on PostgreSQL its store reads then pass the row-level
/// security policies too. A request that fails authentication runs unfenced and its route's
/// [`Caller`] answers the refusal (routes without a caller, such as `/healthz`, ignore it).
pub(crate) async fn authenticate_once(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let result = authenticate(request.headers(), &state);
    let fence = match (&result, request.method()) {
        (Ok(p), &axum::http::Method::GET | &axum::http::Method::HEAD) => Some(p.tenant.clone()),
        _ => None,
    };
    request.extensions_mut().insert(Authenticated(result));
    match fence {
        Some(t) => tenant::fenced(&t, next.run(request)).await,
        None => next.run(request).await,
    }
}

/// The principal of a request with `headers` (see the module docs).
pub(crate) fn authenticate(headers: &HeaderMap, state: &AppState) -> Result<Principal, ApiError> {
    let tenant_header = header_str(headers, "x-tenant-id")?;
    if let Some(t) = tenant_header {
        eventfold_domain::validate_id("header X-Tenant-Id", t)
            .map_err(|m| ApiError::bad_request("invalid_header", m))?;
    }
    let actor_header = header_str(headers, "x-actor")?
        .map(|a| {
            Actor::parse(a)
                .map_err(|m| ApiError::bad_request("invalid_actor", format!("header X-Actor: {m}")))
        })
        .transpose()?;
    let Some(authorization) = header_str(headers, "authorization")? else {
        if !state.auth.is_open(&state.app.keys) {
            return Err(unauthenticated(
                "this server needs a credential: send Authorization: Bearer <API key>",
            ));
        }
        let actor = actor_header
            .unwrap_or_else(|| Actor::parse("user:anonymous").expect("valid default actor"));
        return Ok(Principal::open(
            tenant_header.unwrap_or(tenant::DEFAULT),
            actor,
        ));
    };
    let Some(token) = authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))
        .map(str::trim)
    else {
        return Err(unauthenticated(
            "the Authorization header must be Bearer <API key>",
        ));
    };
    let mut principal = if token.starts_with(KEY_PREFIX) {
        state
            .app
            .keys
            .lookup(token)
            .ok_or_else(|| unauthenticated("the API key is unknown or revoked"))?
    } else if let Some(jwt) = &state.auth.jwt {
        jwt.verify(token).map_err(|m| unauthenticated(&m))?
    } else {
        return Err(unauthenticated(
            "the bearer credential is not an API key (this server accepts no JWT)",
        ));
    };
    if let Some(t) = tenant_header {
        if t != principal.tenant {
            return Err(forbidden(format!(
                "header X-Tenant-Id {t:?} is not the credential's tenant"
            )));
        }
    }
    if let Some(actor) = actor_header {
        if actor != principal.actor {
            if !principal.has(Role::Service) {
                return Err(forbidden(format!(
                    "header X-Actor {actor} is not the credential's actor; only the service role acts on behalf of another"
                )));
            }
            if !actor.as_str().starts_with("user:") {
                return Err(forbidden(format!(
                    "a service acts on behalf of end users (user:...), not {actor}"
                )));
            }
            principal.via = Some(std::mem::replace(&mut principal.actor, actor));
        }
    }
    Ok(principal)
}

impl Caller {
    /// Refuses unless the caller holds one of `roles` (403 naming them).
    ///
    /// # Errors
    /// 403 `forbidden`.
    pub(crate) fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if self.0.has_any(roles) {
            Ok(())
        } else {
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(forbidden(format!(
                "this route needs the role {}",
                names.join(" or ")
            )))
        }
    }

    /// Whether the caller reaches only what it owns (it holds no staff role).
    pub(crate) fn own_only(&self) -> bool {
        !self.0.has_any(&STAFF)
    }

    /// The id the caller's resources are owned by: its actor's id (`user:789` gives `789`).
    pub(crate) fn owner_id(&self) -> &str {
        self.0
            .actor
            .as_str()
            .split_once(':')
            .map_or("", |(_, id)| id)
    }

    /// Whether the caller may reach a resource owned by `owner`.
    pub(crate) fn may_reach(&self, owner: &str) -> bool {
        !self.own_only() || self.owner_id() == owner
    }

    /// Refuses (403) a new resource for `owner` (`field` names it) unless the caller may reach
    /// it.
    ///
    /// # Errors
    /// 403 `forbidden`.
    pub(crate) fn require_owner(&self, field: &str, owner: &str) -> Result<(), ApiError> {
        if self.may_reach(owner) {
            Ok(())
        } else {
            Err(forbidden(format!(
                "{field} must be your own id ({:?})",
                self.owner_id()
            )))
        }
    }

    /// `id` scoped to the caller's tenant.
    pub(crate) fn scope(&self, id: &str) -> String {
        self.0.scope(id)
    }
}
