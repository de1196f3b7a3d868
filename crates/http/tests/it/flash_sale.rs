//! The flash-sale purchase path: a crowd with repeated attempts buys exactly the stock,
//! each accepted attempt is one order in the store for its buyer, nobody goes over the limit;
//! a take left pending by a crash between the ledger and the store is rolled forward by
//! reconciliation. On SQLite with the in-process ledger, and on PostgreSQL with the Redis ledger.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use eventfold_app::service::{AsOf, Service};
use eventfold_app::shop::flash_sale::{order_id, FlashSale, Purchase, Sale};
use eventfold_core::stock::{MemoryStock, StockLedger, TakeOutcome, TakeState};
use eventfold_domain::order::Order;
use eventfold_domain::{Currency, Money};

use eventfold_http::testing::TestApp;

const STOCK: u64 = 50;
const LIMIT: u64 = 2;

fn sale() -> Sale {
    Sale {
        sku: "concert-vip".into(),
        unit_price: Money::parse("88.00", Currency::USD).unwrap(),
        store_id: "flash".into(),
    }
}

async fn crowd(app: &TestApp, ledger: Arc<dyn StockLedger>) {
    let sale = sale();
    let shop = FlashSale::new(Service::new(app.backend.events.clone()), ledger.clone());
    assert!(shop.open(&sale, STOCK, LIMIT).await.unwrap());
    let tasks: Vec<_> = (0..16u64)
        .map(|w| {
            let (shop, sale) = (shop.clone(), sale.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in (w..400).step_by(16) {
                    // Every fifth attempt repeats the one before it (a double click).
                    let n = if i % 5 == 4 { i - 1 } else { i };
                    let (buyer, qty) = (format!("b{}", n % 120), 1 + n % 2);
                    let attempt = format!("att-{n}");
                    let got = shop
                        .purchase(&sale, &buyer, qty, &attempt, n)
                        .await
                        .unwrap();
                    out.push((attempt, buyer, qty, got));
                }
                out
            })
        })
        .collect();
    let mut accepted: HashMap<String, (String, u64)> = HashMap::new();
    let mut duplicates = 0;
    for t in tasks {
        for (attempt, buyer, qty, got) in t.await.unwrap() {
            match got {
                Purchase::Accepted {
                    order_id: id,
                    duplicate,
                    ..
                } => {
                    assert_eq!(id, order_id(&sale.sku, &attempt));
                    if duplicate {
                        duplicates += 1;
                    }
                    accepted.insert(attempt, (buyer, qty));
                }
                Purchase::SoldOut | Purchase::OverLimit { .. } => {}
            }
        }
    }
    let units: u64 = accepted.values().map(|(_, q)| q).sum();
    println!(
        "{} orders, {units} units, {duplicates} repeated attempts answered with their order",
        accepted.len()
    );
    assert_eq!(units, STOCK, "exactly the stock sold");
    let mut per_buyer: HashMap<&str, u64> = HashMap::new();
    for (b, q) in accepted.values() {
        *per_buyer.entry(b).or_default() += q;
    }
    assert!(per_buyer.values().all(|q| *q <= LIMIT));
    // Each accepted attempt is exactly one order in the store, for its buyer and quantity.
    let service = Service::new(app.backend.events.clone());
    let mut orders = HashSet::new();
    for (attempt, (buyer, qty)) in &accepted {
        let id = order_id(&sale.sku, attempt);
        let order = service
            .load::<Order>(&id, AsOf::Latest)
            .await
            .unwrap()
            .expect("the order exists");
        assert_eq!(order.version, 1, "created once");
        let state = order.state;
        assert_eq!(&state.customer_id, buyer);
        assert_eq!(state.lines[0].quantity as u64, *qty);
        orders.insert(id);
    }
    assert_eq!(orders.len(), accepted.len());
    let levels = ledger.levels(&sale.sku).await.unwrap();
    assert_eq!((levels.remaining, levels.held), (0, STOCK));
    assert!(ledger
        .pending(&sale.sku, u64::MAX)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crowd_buys_exactly_the_stock_in_process() {
    crowd(&TestApp::new().await, Arc::new(MemoryStock::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crowd_buys_exactly_the_stock_on_postgres_and_redis() {
    let redis = std::env::var("EVENTFOLD_TEST_REDIS").expect("EVENTFOLD_TEST_REDIS (scripts/test)");
    let prefix = format!("test:{}:", uuid::Uuid::now_v7().simple());
    let ledger = eventfold_redis::RedisStock::connect(&redis, &prefix)
        .await
        .unwrap();
    crowd(&TestApp::postgres().await, Arc::new(ledger)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_left_pending_by_a_crash_is_rolled_forward_into_one_order() {
    let app = TestApp::new().await;
    let ledger: Arc<dyn StockLedger> = Arc::new(MemoryStock::new());
    let shop = FlashSale::new(Service::new(app.backend.events.clone()), ledger.clone());
    let sale = sale();
    shop.open(&sale, 10, 2).await.unwrap();
    // The process took stock (under the attempt's order id) and died before writing the order.
    let id = order_id(&sale.sku, "att-crash");
    let taken = ledger.take(&sale.sku, "b7", 2, &id, 1_000).await.unwrap();
    assert!(matches!(taken, TakeOutcome::Taken { remaining: 8 }));
    let service = Service::new(app.backend.events.clone());
    assert!(service
        .load::<Order>(&id, AsOf::Latest)
        .await
        .unwrap()
        .is_none());

    // Too young to settle; then settled; a second run finds nothing.
    assert_eq!(shop.reconcile(&sale, 999).await.unwrap().confirmed, 0);
    let done = shop.reconcile(&sale, 1_000).await.unwrap();
    assert_eq!((done.confirmed, done.returned), (1, 0));
    assert_eq!(shop.reconcile(&sale, u64::MAX).await.unwrap().confirmed, 0);
    let order = service
        .load::<Order>(&id, AsOf::Latest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(order.state.customer_id, "b7");
    assert_eq!(
        order.state.total,
        Some(Money::parse("176.00", Currency::USD).unwrap())
    );
    assert_eq!(
        ledger.confirm(&sale.sku, &id).await.unwrap(),
        Some(TakeState::Confirmed)
    );
    // The buyer's retry of the same attempt is answered with the same order, nothing new.
    let again = shop
        .purchase(&sale, "b7", 2, "att-crash", 2_000)
        .await
        .unwrap();
    assert_eq!(
        again,
        Purchase::Accepted {
            order_id: id.clone(),
            remaining: None,
            duplicate: true
        }
    );
    assert_eq!(
        service
            .load::<Order>(&id, AsOf::Latest)
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    let levels = ledger.levels(&sale.sku).await.unwrap();
    assert_eq!((levels.remaining, levels.held), (8, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_sale_orders_stock_goes_back_once() {
    let app = TestApp::new().await;
    let ledger: Arc<dyn StockLedger> = Arc::new(MemoryStock::new());
    let shop = FlashSale::new(Service::new(app.backend.events.clone()), ledger.clone());
    let sale = sale();
    shop.open(&sale, 5, 2).await.unwrap();
    let mut orders = Vec::new();
    for (n, buyer) in ["b1", "b2", "b3"].iter().enumerate() {
        match shop
            .purchase(&sale, buyer, 1 + n as u64 % 2, &format!("a{n}"), 0)
            .await
            .unwrap()
        {
            Purchase::Accepted { order_id, .. } => orders.push(order_id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ledger.levels(&sale.sku).await.unwrap().remaining, 1);
    // Two orders are cancelled (by the buyer, or by the unpaid-order timeout).
    for id in &orders[..2] {
        let r = app
            .post(
                &format!("/orders/{id}/cancel"),
                serde_json::json!({"reason": "changed my mind"}),
            )
            .await;
        assert_eq!(r.status, axum::http::StatusCode::OK, "{}", r.body);
    }
    assert_eq!(shop.return_cancelled_stock().await.unwrap(), 2);
    assert_eq!(shop.return_cancelled_stock().await.unwrap(), 0, "once");
    let levels = ledger.levels(&sale.sku).await.unwrap();
    // a0 took 1 unit, a1 took 2: 1 left + 3 back.
    assert_eq!((levels.remaining, levels.held), (4, 1));
    // The stock sells again.
    assert!(matches!(
        shop.purchase(&sale, "b4", 2, "a4", 0).await.unwrap(),
        Purchase::Accepted { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_ledger_is_rebuilt_from_the_log_after_a_restart() {
    let app = TestApp::new().await;
    let sale = sale();
    let before: Arc<dyn StockLedger> = Arc::new(MemoryStock::new());
    let shop = FlashSale::new(Service::new(app.backend.events.clone()), before.clone());
    shop.open(&sale, 6, 2).await.unwrap();
    let mut ids = Vec::new();
    for (attempt, buyer, qty) in [("x1", "b1", 2), ("x2", "b2", 1), ("x3", "b3", 2)] {
        match shop.purchase(&sale, buyer, qty, attempt, 0).await.unwrap() {
            Purchase::Accepted { order_id, .. } => ids.push(order_id),
            other => panic!("{other:?}"),
        }
    }
    let r = app
        .post(
            &format!("/orders/{}/cancel", ids[2]),
            serde_json::json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(r.status, axum::http::StatusCode::OK, "{}", r.body);
    shop.return_cancelled_stock().await.unwrap();
    let expected = before.levels(&sale.sku).await.unwrap();
    assert_eq!((expected.remaining, expected.held), (3, 3));

    // The process restarts: a fresh in-process ledger, rebuilt from the log.
    let after: Arc<dyn StockLedger> = Arc::new(MemoryStock::new());
    let restarted = FlashSale::new(Service::new(app.backend.events.clone()), after.clone());
    assert_eq!(restarted.restore().await.unwrap(), (1, 3));
    assert_eq!(after.levels(&sale.sku).await.unwrap(), expected);
    // What it knew before, it knows now: a repeated attempt, a buyer at the limit, the terms.
    assert!(matches!(
        restarted.purchase(&sale, "b1", 2, "x1", 0).await.unwrap(),
        Purchase::Accepted {
            duplicate: true,
            ..
        }
    ));
    assert_eq!(
        restarted.purchase(&sale, "b1", 1, "x9", 0).await.unwrap(),
        Purchase::OverLimit { held: 2, limit: 2 }
    );
    assert!(
        restarted.open(&sale, 6, 2).await.is_ok(),
        "same terms: a no-op"
    );
    assert!(
        restarted.open(&sale, 7, 2).await.is_err(),
        "other terms are refused"
    );
    assert_eq!(restarted.return_cancelled_stock().await.unwrap(), 0);
    // The restored terms let the periodic reconciliation settle a take left pending.
    let id = order_id(&sale.sku, "x-crash");
    after.take(&sale.sku, "b5", 1, &id, 10_000).await.unwrap();
    let grace = std::time::Duration::from_secs(5);
    assert_eq!(
        restarted
            .reconcile_all(14_999, grace)
            .await
            .unwrap()
            .confirmed,
        0
    );
    assert_eq!(
        restarted
            .reconcile_all(15_000, grace)
            .await
            .unwrap()
            .confirmed,
        1
    );
    let service = Service::new(app.backend.events.clone());
    assert!(service
        .load::<Order>(&id, AsOf::Latest)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn over_http_a_sale_opens_sells_its_stock_and_refuses_bad_input() {
    use axum::http::{Method, StatusCode};
    use serde_json::json;

    use eventfold_http::testing::assert_error;

    let app = TestApp::new().await;
    let terms = json!({"sku": "gig", "stock": 3, "per_buyer_limit": 2, "unit_price": "50.00",
                       "currency": "USD"});
    let opened = app.post("/flash-sales", terms.clone()).await;
    assert_eq!(opened.status, StatusCode::CREATED, "{}", opened.body);
    assert_eq!(opened.body["remaining"], 3);
    assert_eq!(app.post("/flash-sales", terms).await.status, StatusCode::OK);
    let other = json!({"sku": "gig", "stock": 4, "per_buyer_limit": 2, "unit_price": "50.00",
                       "currency": "USD"});
    assert_error(
        &app.post("/flash-sales", other).await,
        StatusCode::CONFLICT,
        "sale_open_on_other_terms",
        "other terms",
    );

    let buy = |key: Option<&'static str>, sku: &'static str, buyer: &'static str, qty: i64| {
        let app = &app;
        async move {
            let headers: Vec<(&str, &str)> =
                key.map(|k| ("idempotency-key", k)).into_iter().collect();
            app.send(
                Method::POST,
                &format!("/flash-sales/{sku}/purchases"),
                &headers,
                Some(json!({"buyer": buyer, "quantity": qty})),
            )
            .await
        }
    };
    assert_error(
        &buy(None, "gig", "b1", 1).await,
        StatusCode::BAD_REQUEST,
        "missing_idempotency_key",
        "Idempotency-Key",
    );
    assert_error(
        &buy(Some("k0"), "no-such", "b1", 1).await,
        StatusCode::NOT_FOUND,
        "unknown_sku",
        "no-such",
    );
    for qty in [0, -1] {
        assert_error(
            &buy(Some("k0"), "gig", "b1", qty).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_purchase",
            "quantity",
        );
    }
    assert_error(
        &buy(Some("k0"), "gig", "not a buyer", 1).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_purchase",
        "actor id",
    );

    let first = buy(Some("k1"), "gig", "b1", 2).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.body["remaining"], 1);
    let again = buy(Some("k1"), "gig", "b1", 2).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["duplicate"], true);
    assert_eq!(again.body["order_id"], first.body["order_id"]);
    assert_error(
        &buy(Some("k2"), "gig", "b1", 1).await,
        StatusCode::CONFLICT,
        "over_limit",
        "limit of 2",
    );
    assert_error(
        &buy(Some("k3"), "gig", "b2", 2).await,
        StatusCode::CONFLICT,
        "sold_out",
        "sold out",
    );
    assert_eq!(
        buy(Some("k4"), "gig", "b2", 1).await.status,
        StatusCode::CREATED
    );
    assert_error(
        &buy(Some("k5"), "gig", "b3", 1).await,
        StatusCode::CONFLICT,
        "sold_out",
        "gig",
    );
    let order = app
        .get(&format!(
            "/orders/{}",
            first.body["order_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(order.status, StatusCode::OK, "{}", order.body);
    assert_eq!(order.body["status"], "PENDING");
    assert_eq!(order.body["customer_id"], "b1");
}

/// `serve` with the Redis ledger (`serve --redis URL`): purchases over a real socket deduct the
/// stock in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_with_the_redis_ledger_purchases_deduct_in_redis() {
    let redis = std::env::var("EVENTFOLD_TEST_REDIS").expect("EVENTFOLD_TEST_REDIS (scripts/test)");
    let prefix = format!("test:{}:", uuid::Uuid::now_v7().simple());
    let ledger = Arc::new(
        eventfold_redis::RedisStock::connect(&redis, &prefix)
            .await
            .unwrap(),
    );
    let app = TestApp::new().await;
    let served = app
        .serve(eventfold_app::runtime::Config {
            ledger: Some(ledger.clone()),
            ..Default::default()
        })
        .await;
    let base = served.base.clone();
    let client = reqwest::Client::new();
    let opened = client
        .post(format!("{base}/flash-sales"))
        .json(
            &serde_json::json!({"sku": "gig", "stock": 10, "per_buyer_limit": 3,
                                  "unit_price": "5.00", "currency": "USD"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), 201);
    for (n, buyer) in ["b1", "b2", "b3"].iter().enumerate() {
        let r = client
            .post(format!("{base}/flash-sales/gig/purchases"))
            .header("idempotency-key", format!("k{n}"))
            .json(&serde_json::json!({"buyer": buyer, "quantity": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let levels = ledger.levels("gig").await.unwrap();
    assert_eq!((levels.remaining, levels.held), (1, 9), "deducted in Redis");
    served.stop().await;
}
