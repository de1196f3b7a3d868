//! `eventfold serve`: the HTTP API with every background worker beside it, until Ctrl-C or
//! SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use std::num::NonZeroU32;

use eventfold_app::identity::jwt::{JwtConfig, JwtVerifier};
use eventfold_app::runtime::{Config, Payments};
use eventfold_app::sagas::SagaConfig;
use eventfold_app::shop::payments::{HttpProvider, PaymentProvider};
use eventfold_domain::identity::Role;
use eventfold_http::rate_limit::{RateLimitConfig, RateLimits};

use crate::context::{shutdown_on_signal, Global};

/// `serve`'s options.
#[derive(Debug, Args)]
pub struct Serve {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Cancel orders still unpaid this many seconds after creation (0: never).
    #[arg(long, default_value_t = 1800.0)]
    unpaid_order_timeout_secs: f64,
    /// Keep flash-sale stock in this Redis (`redis://HOST:PORT`) instead of in-process.
    #[arg(long, env = "EVENTFOLD_REDIS")]
    redis: Option<String>,
    /// Run the order and payment sagas against the payment provider at this URL (see
    /// `eventfold_app::shop::payments` for its API); without it orders are paid through the API.
    #[arg(long, env = "EVENTFOLD_PAYMENT_PROVIDER")]
    payment_provider: Option<String>,
    /// The HMAC secret the provider signs callbacks with (prefer EVENTFOLD_PAYMENT_SECRET or
    /// --payment-secret-file: an argument shows in `ps`).
    #[arg(long, env = "EVENTFOLD_PAYMENT_SECRET", hide_env_values = true)]
    payment_secret: Option<String>,
    /// A file holding the payment callbacks' HMAC secret (surrounding whitespace is dropped).
    #[arg(
        long,
        env = "EVENTFOLD_PAYMENT_SECRET_FILE",
        conflicts_with = "payment_secret"
    )]
    payment_secret_file: Option<std::path::PathBuf>,
    /// How long one call to the provider may take before the saga tries again (ms).
    #[arg(long, default_value_t = 3000)]
    payment_step_timeout_ms: u64,
    /// Require an API key on every request, even while the store holds none (without it, a
    /// store with no key serves open: every request in tenant default with every role).
    #[arg(long)]
    auth_keys_required: bool,
    /// Serve open (no credentials) on an address that is not loopback.
    #[arg(long)]
    insecure: bool,
    /// Accept JWT bearer tokens from this issuer (`iss`); needs --jwt-audience and a key.
    #[arg(long, env = "EVENTFOLD_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// The audience JWTs must name (`aud`).
    #[arg(long, env = "EVENTFOLD_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// A PEM file with a public key JWTs are signed with (Ed25519 or RSA; repeat for more).
    #[arg(
        long = "jwt-public-key",
        env = "EVENTFOLD_JWT_PUBLIC_KEY",
        value_delimiter = ','
    )]
    jwt_public_keys: Vec<std::path::PathBuf>,
    /// A JWKS file (RFC 7517) with the keys JWTs are signed with.
    #[arg(long, env = "EVENTFOLD_JWKS_FILE")]
    jwks_file: Option<std::path::PathBuf>,
    /// Requests per second one principal with this role may make, `ROLE=N` (repeatable;
    /// also the burst). A principal is held to its most generous role; roles without a limit
    /// are unlimited.
    #[arg(long = "rate-limit", value_parser = parse_role_rate)]
    rate_limits: Vec<(Role, NonZeroU32)>,
    /// Flash-sale purchase attempts per second one principal may make.
    #[arg(long)]
    purchase_rate_limit: Option<NonZeroU32>,
    /// The windows' grace period (`GET /trending`): how far an order may be behind a store's
    /// newest event time and still count before its window is final (`30s`, `2m`, `1h`); a
    /// later one corrects the final window with a notice.
    #[arg(long, default_value = "60s", value_parser = parse_grace)]
    window_grace: i64,
    /// Shadow reads: also answer a fraction of the queries of a projection from a candidate
    /// version, `NAME@VERSION` (`daily_sales_by_store@2`), and compare; differences count in
    /// `eventfold_projection_shadow_mismatches_total` and the latest show in `GET /projections`.
    #[arg(long, value_parser = parse_shadow)]
    shadow: Option<(String, u32)>,
    /// The fraction of the active version's queries shadow-read (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    shadow_fraction: f64,
    /// `GET /ready` fails while a projection version queries read has left an event unapplied
    /// for longer than this many seconds.
    #[arg(long, default_value_t = eventfold_app::health::DEFAULT_MAX_LAG_SECS)]
    ready_max_lag_secs: f64,
    /// With --kafka-brokers: a consumer group whose lag per partition the server measures at the
    /// broker, `GROUP=TOPIC[+TOPIC...]` (repeatable; default: eventfold's own consumers,
    /// notifications, prizes and order-notifications).
    #[arg(long = "watch-group", value_parser = parse_watch_group)]
    watch_groups: Vec<eventfold_kafka::monitor::WatchedGroup>,
    /// Walk the whole hash chain at start and then this often (`30m`, `6h`; `0` only on
    /// request); the result is in `/metrics` (`eventfold_chain_verify_last_ok`).
    #[arg(long, default_value = "6h", value_parser = parse_every)]
    verify_every: i64,
    /// An anchor file (`eventfold anchor sign`) every walk of the chain checks the log against:
    /// a log rewritten or shortened below it is broken. Needs --anchor-public-key.
    #[arg(long, requires = "anchor_public_key")]
    anchor: Option<std::path::PathBuf>,
    /// The Ed25519 public key the anchor is signed with: 64 hex characters, or a file holding
    /// them.
    #[arg(long, requires = "anchor")]
    anchor_public_key: Option<String>,
}

fn parse_every(s: &str) -> Result<i64, String> {
    if s == "0" {
        return Ok(0);
    }
    eventfold_domain::windows::parse_window_duration(s)
}

fn parse_watch_group(s: &str) -> Result<eventfold_kafka::monitor::WatchedGroup, String> {
    let (group, topics) = s.split_once('=').ok_or_else(|| {
        format!("{s:?} must look like GROUP=TOPIC[+TOPIC...], e.g. billing=eventfold.order")
    })?;
    let topics: Vec<String> = topics.split('+').map(str::to_owned).collect();
    if group.is_empty() || topics.iter().any(String::is_empty) {
        return Err(format!(
            "{s:?}: the group and every topic must be non-empty"
        ));
    }
    Ok(eventfold_kafka::monitor::WatchedGroup {
        group: group.to_owned(),
        topics,
    })
}

fn parse_shadow(s: &str) -> Result<(String, u32), String> {
    let (name, version) = s
        .split_once('@')
        .ok_or_else(|| format!("{s:?} must look like NAME@VERSION, e.g. daily_sales_by_store@2"))?;
    let version = version
        .parse::<u32>()
        .map_err(|_| format!("{s:?}: the version must be a whole number"))?;
    Ok((name.to_owned(), version))
}

fn parse_grace(s: &str) -> Result<i64, String> {
    eventfold_domain::windows::parse_window_duration(s)
}

fn parse_role_rate(s: &str) -> Result<(Role, NonZeroU32), String> {
    let (role, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} must look like ROLE=N, e.g. customer=20"))?;
    let n = n.parse::<NonZeroU32>().map_err(|_| {
        format!("{s:?}: the rate must be a whole number of requests per second, at least 1")
    })?;
    Ok((role.parse::<Role>()?, n))
}

/// The text of `path` (`what` names it in the error).
fn read_text(what: &str, path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

impl Serve {
    /// The JWT verifier the options ask for, if any.
    fn jwt(&self) -> anyhow::Result<Option<Arc<JwtVerifier>>> {
        let any = self.jwt_issuer.is_some()
            || self.jwt_audience.is_some()
            || !self.jwt_public_keys.is_empty()
            || self.jwks_file.is_some();
        if !any {
            return Ok(None);
        }
        let config = JwtConfig {
            issuer: self
                .jwt_issuer
                .clone()
                .context("JWT verification needs --jwt-issuer")?,
            audience: self
                .jwt_audience
                .clone()
                .context("JWT verification needs --jwt-audience")?,
            public_keys_pem: self
                .jwt_public_keys
                .iter()
                .map(|p| read_text("--jwt-public-key", p))
                .collect::<anyhow::Result<_>>()?,
            jwks: self
                .jwks_file
                .as_deref()
                .map(|p| read_text("--jwks-file", p))
                .transpose()?,
        };
        Ok(Some(Arc::new(
            JwtVerifier::new(&config).context("configuring JWT verification")?,
        )))
    }
}

impl Serve {
    /// Opens the store, binds the listener and serves until a signal.
    ///
    /// # Errors
    /// A bad option, a store, listener, Redis or provider that cannot be opened, or the runtime
    /// failing to start.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let unpaid_order_timeout = Duration::try_from_secs_f64(self.unpaid_order_timeout_secs)
            .context("--unpaid-order-timeout-secs must be a number of seconds, 0 or more")?;
        let jwt = self.jwt()?;
        let backend = global.open().await?;
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("listening on {}", self.listen))?;
        let shutdown = shutdown_on_signal();
        let relay = global
            .kafka_brokers
            .as_ref()
            .map(|brokers| global.relay_config(brokers));
        let ledger: Option<Arc<dyn eventfold_core::stock::StockLedger>> = match &self.redis {
            Some(url) => Some(Arc::new(
                eventfold_redis::RedisStock::connect(url, "eventfold:")
                    .await
                    .with_context(|| format!("connecting to Redis at {url}"))?,
            )),
            None => None,
        };
        let payments = match self.payment_provider {
            Some(url) => {
                let secret = match (self.payment_secret, &self.payment_secret_file) {
                    (Some(s), _) => s,
                    (None, Some(path)) => read_text("--payment-secret-file", path)?.trim().to_owned(),
                    (None, None) => anyhow::bail!(
                        "--payment-provider needs --payment-secret-file, EVENTFOLD_PAYMENT_SECRET or --payment-secret to check callbacks"
                    ),
                };
                anyhow::ensure!(!secret.is_empty(), "the payment secret is empty");
                let sagas = SagaConfig {
                    step_timeout: Duration::from_millis(self.payment_step_timeout_ms),
                    ..Default::default()
                };
                let provider = HttpProvider::new(&url, sagas.step_timeout)?;
                tracing::info!(provider = %url, "payment sagas on");
                let provider: Arc<dyn PaymentProvider> = Arc::new(provider);
                Some(Payments {
                    provider,
                    callback_secret: secret.into_bytes(),
                    sagas,
                })
            }
            None => None,
        };
        anyhow::ensure!(
            self.ready_max_lag_secs.is_finite() && self.ready_max_lag_secs > 0.0,
            "--ready-max-lag-secs must be a number of seconds above 0"
        );
        let config = Config {
            ready_max_lag_secs: self.ready_max_lag_secs,
            verify_every: Duration::from_secs(self.verify_every.unsigned_abs()),
            anchor: match (&self.anchor, &self.anchor_public_key) {
                (Some(path), Some(key)) => Some(
                    eventfold_app::integrity::verify::TrustedAnchor::read(path, key)
                        .context("--anchor")?,
                ),
                _ => None,
            },
            watched_groups: (!self.watch_groups.is_empty()).then_some(self.watch_groups),
            unpaid_order_timeout,
            ledger,
            payments,
            relay,
            window_grace_secs: self.window_grace,
            shadow: self
                .shadow
                .map(|(name, version)| (name, version, self.shadow_fraction)),
        };
        let auth = eventfold_http::AuthConfig {
            keys_required: self.auth_keys_required,
            insecure: self.insecure,
            jwt,
            limits: (!self.rate_limits.is_empty() || self.purchase_rate_limit.is_some()).then(
                || {
                    Arc::new(RateLimits::new(&RateLimitConfig {
                        per_role: self.rate_limits.clone(),
                        purchase: self.purchase_rate_limit,
                    }))
                },
            ),
        };
        eventfold_http::serve(backend, listener, shutdown, config, auth).await
    }
}
