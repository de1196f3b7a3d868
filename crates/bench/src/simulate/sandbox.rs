//! The sandbox payment provider the simulation pays through: the provider API of
//! `eventfold_app::shop::payments` over its own HTTP listener, deciding per order (fixed by the
//! seed) whether the buyer pays and whether the payment fails, keeping its own books (the report's
//! source of truth for charges), and sending signed callbacks, some twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use eventfold_app::shop::payments::sign;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub(super) const SECRET: &str = "whsec_simulated_provider";

/// A number in [0, 1) fixed by the seed, what it decides and about whom (an attempt number, an
/// order id): runs with one seed make the same choices.
pub(super) fn unit(seed: u64, what: &str, key: impl std::fmt::Display) -> f64 {
    let d = Sha256::digest(format!("{seed}:{what}:{key}").as_bytes());
    let v = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
    // 53 random bits into [0, 1).
    (v >> 11) as f64 / (1_u64 << 53) as f64
}

/// The sandbox provider's books.
#[derive(Default)]
pub(super) struct Books {
    /// Orders asked to authorize, and whether the buyer pays / fails.
    pub(super) authorizations: HashMap<String, (bool, bool)>,
    /// Orders whose funds are held (authorized, not captured or released).
    pub(super) held: HashSet<String>,
    /// Answers per idempotency key (a key is applied once).
    pub(super) answered: HashMap<String, (u16, Value)>,
    /// Captures with an effect, per order.
    pub(super) charges: HashMap<String, u64>,
    /// Refunds with an effect, per order.
    pub(super) refunds: HashMap<String, u64>,
}

#[derive(Clone)]
pub(super) struct Sandbox {
    pub(super) books: Arc<Mutex<Books>>,
    pub(super) seed: u64,
    pub(super) pay_rate: f64,
    pub(super) failure_rate: f64,
    pub(super) duplicate_rate: f64,
    pub(super) server: Arc<Mutex<String>>,
    pub(super) client: reqwest::Client,
}

#[derive(Deserialize)]
struct ProviderRequest {
    order_id: String,
}

/// One call of a saga step: its idempotency key (the header) and its body.
struct ProviderCall {
    key: String,
    request: ProviderRequest,
}

impl<S: Send + Sync> FromRequest<S> for ProviderCall {
    type Rejection = axum::extract::rejection::JsonRejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let key = idempotency_key(req.headers());
        let Json(request) = Json::<ProviderRequest>::from_request(req, state).await?;
        Ok(Self { key, request })
    }
}

impl Sandbox {
    /// The provider's routes (the API in `eventfold_app::shop::payments`).
    pub(super) fn router(&self) -> Router {
        Router::new()
            .route("/authorizations", post(authorizations))
            .route("/captures", post(captures))
            .route("/refunds", post(refunds))
            .route("/releases", post(releases))
            .route("/receipts", post(receipts))
            .with_state(self.clone())
    }

    fn once(
        &self,
        key: &str,
        f: impl FnOnce(&mut Books) -> (u16, Value),
    ) -> (StatusCode, Json<Value>) {
        let mut books = self.books.lock().expect("books");
        let (status, body) = match books.answered.get(key) {
            Some(a) => a.clone(),
            None => {
                let a = f(&mut books);
                books.answered.insert(key.to_owned(), a.clone());
                a
            }
        };
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(body),
        )
    }

    /// Sends one signed callback until the server answers (it may be down for a while).
    async fn deliver(&self, event_id: String, body: Value) {
        let bytes = serde_json::to_vec(&body).expect("json");
        for _ in 0..600 {
            let url = format!(
                "{}/payments/callbacks",
                self.server.lock().expect("url").clone()
            );
            let signature = sign(SECRET.as_bytes(), chrono::Utc::now().timestamp(), &bytes);
            let sent = self
                .client
                .post(&url)
                .header("content-type", "application/json")
                .header("Idempotency-Key", &event_id)
                .header("Eventfold-Signature", signature)
                .body(bytes.clone())
                .send()
                .await;
            if let Ok(r) = sent {
                if r.status().as_u16() < 500 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The buyer's side after an authorization request: pay (or fail) after a short delay, with
    /// repeated and late callbacks.
    fn buyer_acts(&self, order: String, fails: bool) {
        let me = self.clone();
        tokio::spawn(async move {
            let delay = 5 + (unit(me.seed, "delay", &order) * 100.0) as u64;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let body = if fails {
                json!({"type": "reservation_failed", "order_id": order, "reason": "card declined"})
            } else {
                me.books.lock().expect("books").held.insert(order.clone());
                json!({"type": "funds_reserved", "order_id": order, "authorization_id": format!("auth-{order}")})
            };
            me.deliver(format!("evt-{order}"), body.clone()).await;
            if unit(me.seed, "dup", &order) < me.duplicate_rate {
                // A replay (same event id), then a late copy under a new event id.
                me.deliver(format!("evt-{order}"), body.clone()).await;
                tokio::time::sleep(Duration::from_millis(1_000)).await;
                me.deliver(format!("evt-{order}-late"), body).await;
            }
        });
    }
}

async fn authorizations(State(sb): State<Sandbox>, call: ProviderCall) -> impl IntoResponse {
    let (key, req) = (call.key, call.request);
    let mut act = None;
    let answer = sb.once(&key, |books| {
        let pays = unit(sb.seed, "pay", &req.order_id) < sb.pay_rate;
        let fails = pays && unit(sb.seed, "fail", &req.order_id) < sb.failure_rate;
        books
            .authorizations
            .insert(req.order_id.clone(), (pays, fails));
        if pays {
            act = Some(fails);
        }
        (202, json!({"reference": format!("auth-{}", req.order_id)}))
    });
    if let Some(fails) = act {
        sb.buyer_acts(req.order_id.clone(), fails);
    }
    answer
}

async fn captures(State(sb): State<Sandbox>, call: ProviderCall) -> impl IntoResponse {
    let (key, req) = (call.key, call.request);
    sb.once(&key, |books| {
        if books.held.remove(&req.order_id) {
            let n = books.charges.entry(req.order_id.clone()).or_default();
            *n += 1;
            (
                200,
                json!({"reference": format!("ch-{}-{n}", req.order_id)}),
            )
        } else {
            (402, json!({"reason": "no authorized funds"}))
        }
    })
}

async fn refunds(State(sb): State<Sandbox>, call: ProviderCall) -> impl IntoResponse {
    let (key, req) = (call.key, call.request);
    sb.once(&key, |books| {
        let charged = books.charges.get(&req.order_id).copied().unwrap_or(0);
        let refunded = books.refunds.entry(req.order_id.clone()).or_default();
        if *refunded < charged {
            *refunded += 1;
            (200, json!({"reference": format!("rf-{}", req.order_id)}))
        } else {
            (409, json!({"reason": "nothing to refund"}))
        }
    })
}

async fn releases(State(sb): State<Sandbox>, call: ProviderCall) -> impl IntoResponse {
    let (key, req) = (call.key, call.request);
    sb.once(&key, |books| {
        books.held.remove(&req.order_id);
        (200, json!({"reference": format!("rl-{}", req.order_id)}))
    })
}

async fn receipts(State(sb): State<Sandbox>, headers: HeaderMap) -> impl IntoResponse {
    let key = idempotency_key(&headers);
    sb.once(&key, |_| (200, json!({})))
}

fn idempotency_key(headers: &HeaderMap) -> String {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}
