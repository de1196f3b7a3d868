//! Per-principal rate limits: a token bucket (GCRA, the `governor` crate) per tenant and actor,
//! with a rate per role, and a separate one for flash-sale purchase attempts. A request over its
//! limit is answered 429 `rate_limited` with `Retry-After` (seconds) and changes nothing.
//!
//! A principal is limited by the most generous of its roles' limits, and not at all when one of
//! its roles has none. An open server (no credentials) limits nobody.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use eventfold_app::identity::Principal;
use eventfold_domain::identity::Role;

use crate::error::ApiError;

/// The limits a server enforces: requests per second (each also the burst size).
#[derive(Debug, Clone, Default)]
pub struct RateLimitConfig {
    /// Per role, e.g. `customer = 20`.
    pub per_role: Vec<(Role, NonZeroU32)>,
    /// Purchase attempts per second of one principal on `POST /flash-sales/{sku}/purchases`.
    pub purchase: Option<NonZeroU32>,
}

/// The running limiters of a [`RateLimitConfig`].
pub struct RateLimits {
    by_role: Vec<(Role, u32, DefaultKeyedRateLimiter<String>)>,
    purchase: Option<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("roles", &self.by_role.len())
            .field("purchase", &self.purchase.is_some())
            .finish()
    }
}

fn limiter(per_second: NonZeroU32) -> DefaultKeyedRateLimiter<String> {
    RateLimiter::keyed(Quota::per_second(per_second).allow_burst(per_second))
}

fn key(p: &Principal) -> String {
    format!("{}/{}", p.tenant, p.actor)
}

fn check(
    limiter: &DefaultKeyedRateLimiter<String>,
    key: &String,
    what: &str,
) -> Result<(), ApiError> {
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        ApiError::rate_limited(
            format!("too many {what}; retry after {} ms", wait.as_millis()),
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        )
    })
}

impl RateLimits {
    /// Limiters for `config`.
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            by_role: config
                .per_role
                .iter()
                .map(|(role, n)| (*role, n.get(), limiter(*n)))
                .collect(),
            purchase: config.purchase.map(limiter),
        }
    }

    /// Takes one request of `principal` from its bucket (an open server's principal has none).
    ///
    /// # Errors
    /// 429 `rate_limited` with the wait.
    pub(crate) fn request(&self, principal: &Principal) -> Result<(), ApiError> {
        if principal.is_open() {
            return Ok(());
        }
        let mut best: Option<(u32, &DefaultKeyedRateLimiter<String>)> = None;
        for role in &principal.roles {
            match self.by_role.iter().find(|(r, _, _)| r == role) {
                None => return Ok(()),
                Some((_, rate, l)) if best.is_none_or(|(b, _)| *rate > b) => {
                    best = Some((*rate, l))
                }
                Some(_) => {}
            }
        }
        match best {
            Some((_, l)) => check(l, &key(principal), "requests"),
            None => Ok(()),
        }
    }

    /// Takes one purchase attempt of `principal` from its bucket (an open server's principal has
    /// none).
    ///
    /// # Errors
    /// 429 `rate_limited` with the wait.
    pub(crate) fn purchase(&self, principal: &Principal) -> Result<(), ApiError> {
        match &self.purchase {
            Some(l) if !principal.is_open() => check(l, &key(principal), "purchase attempts"),
            _ => Ok(()),
        }
    }
}
