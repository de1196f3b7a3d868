//! Tenants never see each other, as a property: random sequences of commands and queries from
//! three tenants, over the same account and order ids, run through the HTTP API on both stores.
//! Every response must match a model of the caller's own tenant alone (balances, order states,
//! sales totals; another tenant's id answers 404) and carry no other tenant's marker; afterwards
//! every stored event, every read-model document, every Kafka message the relay publishes and
//! every metric label is checked for the same.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use eventfold_app::backend::StoreUrl;
use eventfold_core::tenant;
use eventfold_domain::identity::Role;
use eventfold_http::testing::{Reply, TestApp};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rust_decimal::Decimal;
use serde_json::json;

const TENANTS: usize = 3;

/// Tenant `t`'s name; its customers' owner id is [`owner`], its staff actors end in it too, so
/// any of its data shows one of these markers.
fn tenant_name(t: usize) -> String {
    format!("tenant-p{t}")
}

fn owner(t: usize) -> String {
    format!("owner-p{t}")
}

fn markers(t: usize) -> [String; 2] {
    [tenant_name(t), owner(t)]
}

#[derive(Debug, Clone)]
enum Step {
    Open(usize, usize),
    Deposit(usize, usize, i64),
    Withdraw(usize, usize, i64),
    GetAccount(usize, usize),
    Balance(usize, usize),
    CreateOrder(usize, usize),
    Pay(usize, usize),
    Cancel(usize, usize),
    GetOrder(usize, usize),
    History(usize, usize),
    Sales(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let t = 0..TENANTS;
    let id = 0..3usize;
    let cents = 1..5_000i64;
    prop_oneof![
        (t.clone(), id.clone()).prop_map(|(t, a)| Step::Open(t, a)),
        (t.clone(), id.clone(), cents.clone()).prop_map(|(t, a, c)| Step::Deposit(t, a, c)),
        (t.clone(), id.clone(), cents).prop_map(|(t, a, c)| Step::Withdraw(t, a, c)),
        (t.clone(), id.clone()).prop_map(|(t, a)| Step::GetAccount(t, a)),
        (t.clone(), id.clone()).prop_map(|(t, a)| Step::Balance(t, a)),
        (t.clone(), id.clone()).prop_map(|(t, o)| Step::CreateOrder(t, o)),
        (t.clone(), id.clone()).prop_map(|(t, o)| Step::Pay(t, o)),
        (t.clone(), id.clone()).prop_map(|(t, o)| Step::Cancel(t, o)),
        (t.clone(), id.clone()).prop_map(|(t, o)| Step::GetOrder(t, o)),
        (t.clone(), id).prop_map(|(t, o)| Step::History(t, o)),
        t.prop_map(Step::Sales),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum OrderState {
    Pending,
    Paid,
    Cancelled,
}

/// What each tenant should see: its own accounts, orders and sales, nothing else.
#[derive(Default)]
struct Model {
    accounts: HashMap<(usize, usize), Decimal>,
    orders: HashMap<(usize, usize), OrderState>,
    paid: HashMap<usize, u64>,
    refunds: HashMap<usize, u64>,
}

struct Keys {
    customer: Vec<String>,
    finance: Vec<String>,
}

fn price() -> Decimal {
    Decimal::new(999, 2)
}

/// A money value: `"12.34"` or `{"amount": "12.34", "currency": "USD"}`.
fn money(v: &serde_json::Value) -> Decimal {
    let v = v.get("amount").unwrap_or(v);
    v.as_str()
        .unwrap_or_else(|| panic!("money as a string: {v}"))
        .parse()
        .unwrap()
}

/// No other tenant's marker in `text`, which tenant `t`'s request or data produced.
fn only_own(t: usize, text: &str, what: &str) {
    for other in (0..TENANTS).filter(|o| *o != t) {
        for m in markers(other) {
            assert!(
                !text.contains(&m),
                "{what} of {} carries {m}: {text}",
                tenant_name(t)
            );
        }
    }
}

async fn run_step(app: &TestApp, keys: &Keys, model: &mut Model, s: &Step) {
    let send = |t: usize, method: Method, uri: String, body: Option<serde_json::Value>| {
        let key = keys.customer[t].clone();
        async move { app.send_as(&key, method, &uri, &[], body).await }
    };
    let reply: (usize, Reply) = match *s {
        Step::Open(t, a) => {
            let r = send(
                t,
                Method::POST,
                "/accounts".into(),
                Some(
                    json!({"account_id": format!("acc-{a}"), "owner": owner(t), "currency": "USD"}),
                ),
            )
            .await;
            match model.accounts.entry((t, a)) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    assert_eq!(r.status, StatusCode::CONFLICT, "{s:?}: {}", r.body);
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    assert_eq!(r.status, StatusCode::CREATED, "{s:?}: {}", r.body);
                    v.insert(Decimal::ZERO);
                }
            }
            (t, r)
        }
        Step::Deposit(t, a, cents) | Step::Withdraw(t, a, cents) => {
            let deposit = matches!(s, Step::Deposit(..));
            let amount = Decimal::new(cents, 2);
            let verb = if deposit { "deposit" } else { "withdraw" };
            let r = send(
                t,
                Method::POST,
                format!("/accounts/acc-{a}/{verb}"),
                Some(json!({"amount": amount.to_string(), "currency": "USD"})),
            )
            .await;
            match model.accounts.get_mut(&(t, a)) {
                None => assert_eq!(r.status, StatusCode::NOT_FOUND, "{s:?}: {}", r.body),
                Some(balance) if !deposit && *balance < amount => {
                    assert_eq!(r.status, StatusCode::CONFLICT, "{s:?}: {}", r.body);
                }
                Some(balance) => {
                    assert_eq!(r.status, StatusCode::OK, "{s:?}: {}", r.body);
                    *balance += if deposit { amount } else { -amount };
                    assert_eq!(money(&r.body["balance"]), *balance, "{s:?}");
                }
            }
            (t, r)
        }
        Step::GetAccount(t, a) => {
            let r = send(t, Method::GET, format!("/accounts/acc-{a}"), None).await;
            match model.accounts.get(&(t, a)) {
                None => assert_eq!(r.status, StatusCode::NOT_FOUND, "{s:?}: {}", r.body),
                Some(balance) => {
                    assert_eq!(r.status, StatusCode::OK, "{s:?}: {}", r.body);
                    assert_eq!(money(&r.body["balance"]), *balance, "{s:?}");
                    assert_eq!(r.body["owner"], owner(t));
                }
            }
            (t, r)
        }
        Step::Balance(t, a) => {
            app.project().await;
            let r = send(t, Method::GET, format!("/balances/acc-{a}"), None).await;
            match model.accounts.get(&(t, a)) {
                None => assert_eq!(r.status, StatusCode::NOT_FOUND, "{s:?}: {}", r.body),
                Some(balance) => {
                    assert_eq!(r.status, StatusCode::OK, "{s:?}: {}", r.body);
                    assert_eq!(money(&r.body["balance"]), *balance, "{s:?}: {}", r.body);
                }
            }
            (t, r)
        }
        Step::CreateOrder(t, o) => {
            let r = send(
                t,
                Method::POST,
                "/orders".into(),
                Some(
                    json!({"order_id": format!("ord-{o}"), "customer_id": owner(t),
                    "store_id": "web", "currency": "USD",
                    "lines": [{"sku": "cd", "quantity": 1, "amount": price().to_string()}]}),
                ),
            )
            .await;
            match model.orders.entry((t, o)) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    assert_eq!(r.status, StatusCode::CONFLICT, "{s:?}: {}", r.body);
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    assert_eq!(r.status, StatusCode::CREATED, "{s:?}: {}", r.body);
                    v.insert(OrderState::Pending);
                }
            }
            (t, r)
        }
        Step::Pay(t, o) => {
            let r = send(
                t,
                Method::POST,
                format!("/orders/ord-{o}/pay"),
                Some(json!({"amount": price().to_string(), "currency": "USD"})),
            )
            .await;
            match model.orders.get_mut(&(t, o)) {
                None => assert_eq!(r.status, StatusCode::NOT_FOUND, "{s:?}: {}", r.body),
                Some(state @ OrderState::Pending) => {
                    assert_eq!(r.status, StatusCode::OK, "{s:?}: {}", r.body);
                    *state = OrderState::Paid;
                    *model.paid.entry(t).or_default() += 1;
                }
                Some(_) => assert_eq!(r.status, StatusCode::CONFLICT, "{s:?}: {}", r.body),
            }
            (t, r)
        }
        Step::Cancel(t, o) => {
            let r = send(
                t,
                Method::POST,
                format!("/orders/ord-{o}/cancel"),
                Some(json!({"reason": "changed my mind"})),
            )
            .await;
            match model.orders.get_mut(&(t, o)) {
                None => assert_eq!(r.status, StatusCode::NOT_FOUND, "{s:?}: {}", r.body),
                Some(OrderState::Cancelled) => {
                    assert_eq!(r.status, StatusCode::CONFLICT, "{s:?}: {}", r.body);
                }
                Some(state) => {
                    assert_eq!(r.status, StatusCode::OK, "{s:?}: {}", r.body);
                    if *state == OrderState::Paid {
                        *model.refunds.entry(t).or_default() += 1;
                    }
                    *state = OrderState::Cancelled;
                }
            }
            (t, r)
        }
        Step::GetOrder(t, o) | Step::History(t, o) => {
            let history = matches!(s, Step::History(..));
            let uri = if history {
                format!("/orders/ord-{o}/history")
            } else {
                format!("/orders/ord-{o}")
            };
            let r = send(t, Method::GET, uri, None).await;
            match model.orders.get(&(t, o)) {
                None => assert_eq!(r.status, StatusCode::NOT_FOUND, "{s:?}: {}", r.body),
                Some(state) => {
                    assert_eq!(r.status, StatusCode::OK, "{s:?}: {}", r.body);
                    if history {
                        let entries = r.body.as_array().unwrap();
                        let own = format!("user:{}", owner(t));
                        assert!(entries.iter().all(|e| e["actor"] == own), "{}", r.body);
                    } else {
                        assert_eq!(r.body["customer_id"], owner(t));
                        let status = match state {
                            OrderState::Pending => "PENDING",
                            OrderState::Paid => "PAID",
                            OrderState::Cancelled => "CANCELLED",
                        };
                        assert_eq!(r.body["status"], status, "{s:?}: {}", r.body);
                    }
                }
            }
            (t, r)
        }
        Step::Sales(t) => {
            app.project().await;
            let r = app
                .send_as(
                    &keys.finance[t],
                    Method::GET,
                    "/sales/daily?store=web",
                    &[],
                    None,
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{s:?}: {}", r.body);
            let days = r.body.as_array().unwrap();
            let sum = |f: &str| days.iter().map(|d| d[f].as_u64().unwrap()).sum::<u64>();
            let (paid, refunds) = (
                model.paid.get(&t).copied().unwrap_or(0),
                model.refunds.get(&t).copied().unwrap_or(0),
            );
            assert_eq!(
                (sum("orders"), sum("refunds")),
                (paid, refunds),
                "{}",
                r.body
            );
            let total: Decimal = days.iter().map(|d| money(&d["total"])).sum();
            assert_eq!(total, price() * Decimal::from(paid - refunds));
            (t, r)
        }
    };
    let (t, r) = reply;
    only_own(t, &r.body.to_string(), &format!("the response to {s:?}"));
}

/// After a sequence: the events, read models, Kafka messages and metric labels hold no tenant's
/// data under another's.
async fn check_the_stores(app: &TestApp, operator: &str) {
    app.project().await;
    let events = app.backend.events.read_all(0, 100_000).await.unwrap();
    let mut by_tenant: HashMap<String, u64> = HashMap::new();
    for e in &events {
        let t = tenant::of(&e.stream_id);
        assert_eq!(e.metadata.tenant_id, t, "{e:?}");
        *by_tenant.entry(t.to_owned()).or_default() += 1;
        if let Some(i) = (0..TENANTS).find(|i| tenant_name(*i) == t) {
            only_own(i, &e.payload, "an event");
            only_own(i, e.metadata.actor.as_str(), "an event's actor");
        }
    }
    use eventfold_domain::projections as p;
    let daily_v2 = eventfold_core::projection::storage_name(p::DAILY_SALES_BY_STORE, 2);
    for projection in [
        p::BALANCE_BY_ACCOUNT,
        p::ORDER_SUMMARY,
        p::DAILY_SALES_BY_STORE,
        &daily_v2,
        p::REAL_TIME_SALES,
        p::PAYMENT_DEADLINES,
        eventfold_domain::identity::API_KEYS,
    ] {
        let docs = app
            .backend
            .read_models
            .range_docs(projection, "", "\u{10FFFF}", 100_000)
            .await
            .unwrap();
        for (key, doc) in docs {
            if let Some(i) = (0..TENANTS).find(|i| tenant::of(&key) == tenant_name(*i)) {
                only_own(i, &doc, &format!("read model {projection} key {key}"));
            }
        }
    }
    // Every published message: its key is its own tenant's partition key, its headers and body
    // hold nothing of another's.
    let mut config = eventfold_kafka::RelayConfig::new(eventfold_kafka::testing::broker());
    config.topic_prefix = format!("tp{}", uuid::Uuid::now_v7().simple());
    let relay = eventfold_kafka::Relay::new(app.backend.events.clone(), config.clone()).unwrap();
    let published = relay.publish_pending().await.unwrap().published;
    assert_eq!(published, events.len() as u64);
    let mut seen = 0;
    for category in ["account", "order", "apikey"] {
        let topic = format!("{}.{category}", config.topic_prefix);
        let want = events.iter().filter(|e| e.category() == category).count();
        if want == 0 {
            continue;
        }
        let messages = tokio::task::spawn_blocking(move || {
            eventfold_kafka::testing::read_from_start(
                &eventfold_kafka::testing::broker(),
                &topic,
                Duration::from_secs(30),
                Duration::ZERO,
                |m| m.len() >= want,
            )
        })
        .await
        .unwrap();
        assert_eq!(messages.len(), want, "{category}");
        for m in &messages {
            use rdkafka::message::{Headers, Message};
            let header = |name: &str| {
                m.headers()
                    .and_then(|h| h.iter().find(|h| h.key == name))
                    .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                    .unwrap()
            };
            let stream = header("stream_id");
            let t = tenant::of(&stream);
            assert_eq!(header("tenant_id"), t);
            let key = String::from_utf8_lossy(m.key().unwrap()).into_owned();
            assert_eq!(key, tenant::partition_key(&stream));
            assert!(key.starts_with(&format!("{t}:")), "{key}");
            if let Some(i) = (0..TENANTS).find(|i| tenant_name(*i) == t) {
                let body = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                only_own(i, &body, "a Kafka message");
                only_own(i, &header("actor"), "a Kafka message's actor");
            }
            seen += 1;
        }
    }
    assert_eq!(seen, events.len());
    // Metric labels name projections and consumer groups, never a tenant's ids or names.
    let r = app
        .send_as(operator, Method::GET, "/metrics", &[], None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.body.as_str().unwrap_or_default().to_owned();
    assert!(text.contains("eventfold_"), "{text}");
    for t in 0..TENANTS {
        for m in markers(t) {
            assert!(!text.contains(&m), "a metric label carries {m}");
        }
    }
}

fn property(postgres: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 6,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(step(), 10..40), |steps| {
            rt.block_on(async {
                let app = if postgres {
                    TestApp::postgres().await
                } else {
                    TestApp::new().await
                };
                if postgres {
                    assert!(matches!(app.backend.url, StoreUrl::Postgres(_)));
                }
                let mut keys = Keys {
                    customer: Vec::new(),
                    finance: Vec::new(),
                };
                for t in 0..TENANTS {
                    let name = tenant_name(t);
                    keys.customer.push(
                        app.key(&name, &format!("user:{}", owner(t)), &[Role::Customer])
                            .await,
                    );
                    keys.finance.push(
                        app.key(&name, &format!("admin:fin-{name}"), &[Role::Finance])
                            .await,
                    );
                }
                let operator = app
                    .key(&tenant_name(0), "admin:ops-tenant-p0", &[Role::Operator])
                    .await;
                let mut model = Model::default();
                for s in &steps {
                    run_step(&app, &keys, &mut model, s).await;
                }
                check_the_stores(&app, &operator).await;
            });
            Ok(())
        })
        .unwrap();
}

#[test]
fn tenants_never_see_each_other_on_sqlite() {
    property(false);
}

#[test]
fn tenants_never_see_each_other_on_postgres() {
    property(true);
}
