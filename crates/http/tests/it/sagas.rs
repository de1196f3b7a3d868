//! The order saga (choreography) and the payment saga (orchestration) over a real socket, with a
//! scripted payment provider and signed callbacks: the happy path with a retried capture,
//! a failed reservation, a declined capture, callbacks out of order and repeated, and every bad
//! callback refused without a change.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use eventfold_app::runtime::{Config, Payments};
use eventfold_app::sagas::SagaConfig;
use eventfold_app::shop::payments::{sign, PaymentProvider, StepRequest};
use eventfold_domain::payment_saga::{SagaStep, StepResult};
use serde_json::{json, Value};

use eventfold_http::testing::{Served, TestApp};

const SECRET: &[u8] = b"whsec_saga_test";

/// A provider that records every call and answers from a script: captures of orders in
/// `declined` are refused, the first capture of orders in `flaky` fails transiently.
#[derive(Default)]
struct ScriptedProvider {
    calls: Mutex<Vec<(SagaStep, String)>>,
    declined: Mutex<HashSet<String>>,
    flaky: Mutex<HashSet<String>>,
}

impl ScriptedProvider {
    fn calls(&self, step: SagaStep, order: &str) -> usize {
        let key = format!("{}:{order}", step.key_prefix());
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, k)| *s == step && *k == key)
            .count()
    }
}

#[async_trait]
impl PaymentProvider for ScriptedProvider {
    async fn call(&self, request: &StepRequest) -> StepResult {
        self.calls
            .lock()
            .unwrap()
            .push((request.step, request.idempotency_key.clone()));
        match request.step {
            SagaStep::ReserveFunds => StepResult::Accepted(format!("auth-{}", request.order_id)),
            SagaStep::CapturePayment => {
                if self.declined.lock().unwrap().contains(&request.order_id) {
                    return StepResult::Refused("insufficient funds".into());
                }
                if self.flaky.lock().unwrap().remove(&request.order_id) {
                    return StepResult::Transient("provider answered 503".into());
                }
                StepResult::Done(format!("ch-{}", request.order_id))
            }
            s => StepResult::Done(format!("{}-{}", s.key_prefix(), request.order_id)),
        }
    }
}

struct Server {
    base: String,
    client: reqwest::Client,
    served: Served,
}

impl Server {
    async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
        let mut req = self.client.post(format!("{}{path}", self.base)).json(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Sends a callback signed at `at` (Unix seconds) with `secret`.
    async fn callback(
        &self,
        key: Option<&str>,
        body: &Value,
        secret: &[u8],
        at: i64,
    ) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let mut req = self
            .client
            .post(format!("{}/payments/callbacks", self.base))
            .header("content-type", "application/json")
            .header("Eventfold-Signature", sign(secret, at, &bytes))
            .body(bytes);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn order_status(&self, order: &str) -> String {
        let (_, body) = self.get(&format!("/orders/{order}")).await;
        body["status"].as_str().unwrap_or("?").to_owned()
    }

    async fn wait_status(&self, order: &str, want: &str) {
        for _ in 0..200 {
            if self.order_status(order).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "order {order} never became {want}: {}",
            self.order_status(order).await
        );
    }

    async fn history_types(&self, order: &str) -> Vec<String> {
        let (status, body) = self.get(&format!("/orders/{order}/history")).await;
        assert_eq!(status, 200, "{body}");
        body.as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_type"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits until the order's saga ended; returns the history's event types.
    async fn wait_saga_end(&self, order: &str) -> Vec<String> {
        for _ in 0..200 {
            let types = self.history_types(order).await;
            if types.iter().any(|t| t == "PaymentSagaEnded") {
                return types;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "saga of {order} never ended: {:?}",
            self.history_types(order).await
        );
    }
}

async fn start(app: &TestApp, provider: Arc<ScriptedProvider>) -> Server {
    let config = SagaConfig {
        step_timeout: Duration::from_millis(500),
        workers: 8,
    };
    let provider: Arc<dyn PaymentProvider> = provider;
    let served = app
        .serve(Config {
            payments: Some(Payments {
                provider,
                callback_secret: SECRET.to_vec(),
                sagas: config,
            }),
            ..Default::default()
        })
        .await;
    Server {
        base: served.base.clone(),
        client: reqwest::Client::new(),
        served,
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_pay_fail_compensate_and_refuse_bad_callbacks() {
    let app = TestApp::new().await;
    let provider = Arc::new(ScriptedProvider::default());
    let server = start(&app, provider.clone()).await;
    let (status, body) = server
        .post(
            "/flash-sales",
            None,
            &json!({"sku": "gig", "stock": 10, "per_buyer_limit": 2,
                    "unit_price": "30.00", "currency": "EUR"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut orders = HashMap::new();
    for buyer in ["ann", "bob", "cat", "dan"] {
        let (status, body) = server
            .post(
                "/flash-sales/gig/purchases",
                Some(&format!("attempt-{buyer}")),
                &json!({"buyer": buyer, "quantity": 1}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        orders.insert(buyer, body["order_id"].as_str().unwrap().to_owned());
    }
    let (ann, bob, cat, dan) = (
        &orders["ann"],
        &orders["bob"],
        &orders["cat"],
        &orders["dan"],
    );
    provider.flaky.lock().unwrap().insert(ann.clone());
    provider.declined.lock().unwrap().insert(cat.clone());
    // Choreography: OrderCreated -> InventoryReserved -> the saga starts and asks for funds.
    for order in [ann, bob, cat, dan] {
        for _ in 0..200 {
            if provider.calls(SagaStep::ReserveFunds, order) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(provider.calls(SagaStep::ReserveFunds, order), 1, "{order}");
    }

    // Bad callbacks first: each is refused and changes nothing.
    let reserved = |order: &str| json!({"type": "funds_reserved", "order_id": order, "authorization_id": format!("auth-{order}")});
    let before = server.history_types(ann).await.len();
    let (s, b) = server
        .callback(Some("evt-forged"), &reserved(ann), b"not-the-secret", now())
        .await;
    assert_eq!((s, b["code"].as_str()), (401, Some("bad_signature")), "{b}");
    let (s, b) = server
        .callback(Some("evt-old"), &reserved(ann), SECRET, now() - 3_600)
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (401, Some("stale_signature")),
        "{b}"
    );
    let (s, b) = server.callback(None, &reserved(ann), SECRET, now()).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (400, Some("missing_idempotency_key")),
        "{b}"
    );
    let (s, b) = server
        .callback(Some("evt-x"), &reserved("gig-nosuchorder"), SECRET, now())
        .await;
    assert_eq!((s, b["code"].as_str()), (404, Some("unknown_order")), "{b}");
    let (s, b) = server
        .callback(
            Some("evt-y"),
            &json!({"type": "funds_reserved", "order_id": ann}),
            SECRET,
            now(),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (422, Some("invalid_callback")),
        "{b}"
    );
    assert!(
        b["message"].as_str().unwrap().contains("authorization_id"),
        "{b}"
    );
    let unsigned = server
        .client
        .post(format!("{}/payments/callbacks", server.base))
        .header("Idempotency-Key", "evt-z")
        .json(&reserved(ann))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    assert_eq!(
        server.history_types(ann).await.len(),
        before,
        "a refused callback changed the saga"
    );
    assert_eq!(server.order_status(ann).await, "PENDING");

    // ann pays; the callback comes three times (twice with one id: a replay). The first capture
    // fails transiently and is tried again.
    let (s, b) = server
        .callback(Some("evt-ann-1"), &reserved(ann), SECRET, now())
        .await;
    assert_eq!((s, &b["recorded"]), (200, &json!(true)), "{b}");
    let (s, b) = server
        .callback(Some("evt-ann-1"), &reserved(ann), SECRET, now())
        .await;
    assert_eq!((s, &b["duplicate"]), (200, &json!(true)), "{b}");
    let (s, b) = server
        .callback(Some("evt-ann-2"), &reserved(ann), SECRET, now())
        .await;
    assert_eq!((s, &b["recorded"]), (200, &json!(false)), "{b}");
    server.wait_status(ann, "CONFIRMED").await;
    let history = server.wait_saga_end(ann).await;
    assert_eq!(
        provider.calls(SagaStep::CapturePayment, ann),
        2,
        "one transient failure, one retry"
    );
    assert_eq!(provider.calls(SagaStep::SendReceipt, ann), 1);
    for t in [
        "OrderCreated",
        "PaymentSagaStarted",
        "StepAccepted",
        "StepSucceeded",
        "StepFailed",
        "PaymentCompleted",
        "OrderPaid",
        "OrderConfirmed",
        "PaymentSagaEnded",
    ] {
        assert!(
            history.iter().any(|h| h == t),
            "{t} missing from {history:?}"
        );
    }
    let pos = |t: &str| history.iter().position(|h| h == t).unwrap();
    assert!(pos("OrderCreated") < pos("PaymentSagaStarted"));
    assert!(pos("PaymentCompleted") < pos("OrderPaid"));

    // bob's authorization fails: PaymentFailed -> OrderCancelled -> stock back.
    let failed = json!({"type": "reservation_failed", "order_id": bob, "reason": "card declined"});
    let (s, _) = server
        .callback(Some("evt-bob"), &failed, SECRET, now())
        .await;
    assert_eq!(s, 200);
    server.wait_status(bob, "CANCELLED").await;
    let history = server.wait_saga_end(bob).await;
    assert!(history.iter().any(|h| h == "PaymentFailed"), "{history:?}");
    assert_eq!(provider.calls(SagaStep::CapturePayment, bob), 0);

    // cat's capture is declined: the funds are released, the order cancelled.
    let (s, _) = server
        .callback(Some("evt-cat"), &reserved(cat), SECRET, now())
        .await;
    assert_eq!(s, 200);
    server.wait_status(cat, "CANCELLED").await;
    server.wait_saga_end(cat).await;
    assert_eq!(provider.calls(SagaStep::ReleaseFunds, cat), 1);
    assert_eq!(provider.calls(SagaStep::RefundPayment, cat), 0);

    // dan's callbacks come out of order: the capture report before the reservation.
    let captured = json!({"type": "captured", "order_id": dan, "charge_id": format!("ch-{dan}")});
    let (s, _) = server
        .callback(Some("evt-dan-2"), &captured, SECRET, now())
        .await;
    assert_eq!(s, 200);
    let (s, _) = server
        .callback(Some("evt-dan-1"), &reserved(dan), SECRET, now())
        .await;
    assert_eq!(s, 200);
    server.wait_status(dan, "CONFIRMED").await;
    server.wait_saga_end(dan).await;
    assert_eq!(
        provider.calls(SagaStep::CapturePayment, dan),
        0,
        "already captured"
    );

    // Stock: ann and dan hold theirs; bob's and cat's came back (ledger and inventory stream).
    for _ in 0..100 {
        let (_, sale) = server.get("/flash-sales/gig").await;
        if sale["remaining"] == json!(8) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, sale) = server.get("/flash-sales/gig").await;
    assert_eq!(sale["remaining"], json!(8), "{sale}");
    let service = eventfold_app::service::Service::new(app.backend.events.clone());
    let mut inventory = None;
    for _ in 0..100 {
        inventory = service
            .load::<eventfold_domain::inventory::Inventory>(
                "gig",
                eventfold_app::service::AsOf::Latest,
            )
            .await
            .unwrap()
            .map(|r| r.state);
        if inventory
            .as_ref()
            .is_some_and(|i| i.sold == 2 && i.reserved.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let inventory = inventory.unwrap();
    assert_eq!(
        (inventory.available, inventory.sold),
        (8, 2),
        "{inventory:?}"
    );
    assert!(inventory.reserved.is_empty(), "{inventory:?}");
    // No charge twice: one capture call with an effect per paid order, none for the others.
    assert_eq!(provider.calls(SagaStep::RefundPayment, ann), 0);
    server.served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_refused_without_payments_configured() {
    let app = TestApp::new().await;
    let served = app.serve(Config::default()).await;
    let base = served.base.clone();
    let res = reqwest::Client::new()
        .post(format!("{base}/payments/callbacks"))
        .header("Idempotency-Key", "k")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "payments_not_configured");
    served.stop().await;
}
