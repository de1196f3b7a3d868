//! Order events -> customer notifications, exactly once: orders made over HTTP, published
//! by the outbox relay, transformed by the transactional worker, read back and decoded by the
//! notification consumer's decoder. On librdkafka's mock cluster: Tansu 0.6 has no transactions
//! (see eventfold-kafka's `tansu_gaps.rs` and `exactly_once.rs` for what the mock lacks).

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use eventfold_app::messaging::order_notifications::{transform, ORDER_NOTIFICATIONS};
use eventfold_kafka::exactly_once::{run_exactly_once, ExactlyOnceConfig};
use eventfold_kafka::testing::read_from_start;
use eventfold_kafka::{ConsumerConfig, Inbound, Relay, RelayConfig};
use rdkafka::mocking::MockCluster;
use serde_json::json;

use eventfold_http::testing::TestApp;

async fn post(app: &TestApp, uri: &str, body: serde_json::Value) {
    let r = app
        .send(Method::POST, uri, &[("x-actor", "user:shop")], Some(body))
        .await;
    assert!(
        r.status == StatusCode::OK || r.status == StatusCode::CREATED,
        "{uri}: {} {}",
        r.status,
        r.body
    );
}

/// Every message of `topic` (3 partitions) as the notification consumer receives it.
fn read(bootstrap: &str, topic: &str, expected: usize) -> Vec<Inbound> {
    read_from_start(
        bootstrap,
        topic,
        Duration::from_secs(60),
        Duration::ZERO,
        |got| got.len() >= expected,
    )
    .iter()
    .map(Inbound::from_message)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_customer_facing_order_event_becomes_one_notification_for_its_customer() {
    let app = TestApp::new().await;
    // 12 orders: all created; 0..6 paid; 0..3 confirmed and shipped; 9..12 cancelled.
    for i in 0..12 {
        post(
            &app,
            "/orders",
            json!({"order_id": format!("o{i}"), "customer_id": format!("c{i}"), "store_id": "web",
                   "currency": "USD", "lines": [{"sku": "cd", "quantity": 1, "amount": "10.00"}]}),
        )
        .await;
    }
    for i in 0..6 {
        post(
            &app,
            &format!("/orders/o{i}/pay"),
            json!({"amount": "10.00", "currency": "USD", "payment_id": format!("p{i}")}),
        )
        .await;
    }
    for i in 0..3 {
        post(&app, &format!("/orders/o{i}/confirm"), json!({})).await;
        post(&app, &format!("/orders/o{i}/ship"), json!({})).await;
    }
    for i in 9..12 {
        post(
            &app,
            &format!("/orders/o{i}/cancel"),
            json!({"reason": "changed my mind"}),
        )
        .await;
    }
    // Two sales of a store's till, uploaded: one `OrderRecorded` each, which notifies nobody;
    // a refund of one of them notifies its customer, found in that first event.
    let till = app
        .raw(
            axum::http::Request::builder()
                .method(Method::POST)
                .uri("/stores/web/uploads")
                .header("content-type", "text/csv")
                .body(axum::body::Body::from(format!(
                    "order_id,customer_id,occurred_at,sku,quantity,amount,currency\n\
                     o12,c12,{now},cd,1,10.00,USD\no13,c13,{now},cd,1,10.00,USD\n",
                    now = chrono::Utc::now().to_rfc3339()
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(till.status, StatusCode::OK, "{}", till.body);
    post(&app, "/orders/o12/refund", json!({"reason": "returned"})).await;
    // created 12 + paid 6 + shipped 3 + cancelled 3 (confirmations notify nobody) + the
    // till sale's refund.
    let expected = 25;

    let cluster = MockCluster::new(1).unwrap();
    for topic in ["shop.order", "notifications", "shop.order.dlq"] {
        cluster.create_topic(topic, 3, 1).unwrap();
    }
    let bootstrap = cluster.bootstrap_servers();
    let mut relay = RelayConfig::new(bootstrap.clone());
    relay.topic_prefix = "shop".into();
    relay.create_topics = false;
    let published = Relay::new(app.backend.events.clone(), relay)
        .unwrap()
        .publish_pending()
        .await
        .unwrap();
    assert_eq!(
        published.published,
        12 + 6 + 3 + 3 + 3 + 2 + 1,
        "every order event"
    );

    let config = ExactlyOnceConfig::new(
        ConsumerConfig::new(&bootstrap, ORDER_NOTIFICATIONS, &["shop.order"]),
        "order-notifications-test",
    );
    let store = app.backend.events.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(async move {
        run_exactly_once(
            &config,
            |m| {
                let store = store.clone();
                async move { transform(&store, "notifications", m).await }
            },
            async {
                let _ = stopped.await;
            },
        )
        .await
    });
    let b = bootstrap.clone();
    let got = tokio::task::spawn_blocking(move || read(&b, "notifications", expected))
        .await
        .unwrap();
    let _ = stop.send(());
    let stats = worker.await.unwrap().unwrap();
    assert_eq!(stats.inputs, published.published, "{stats:?}");
    assert_eq!(stats.outputs, expected as u64, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert_eq!(got.len(), expected);

    let mut per_order: HashMap<String, Vec<String>> = HashMap::new();
    for m in &got {
        let n = eventfold_app::messaging::notifications::decode(m)
            .expect("the notification consumer decodes it");
        let order = m.key.clone().unwrap();
        assert_eq!(
            n.user_id,
            format!("c{}", &order[1..]),
            "notified the order's customer"
        );
        assert!(n.body.contains(&order), "{}", n.body);
        assert!(m.headers.contains_key("causation_id"));
        per_order.entry(order).or_default().push(n.event_type);
    }
    // Per order, in the order they happened (one key, one partition).
    assert_eq!(
        per_order["o0"],
        ["OrderCreated", "OrderPaid", "OrderShipped"]
    );
    assert_eq!(per_order["o4"], ["OrderCreated", "OrderPaid"]);
    assert_eq!(per_order["o7"], ["OrderCreated"]);
    assert_eq!(per_order["o10"], ["OrderCreated", "OrderCancelled"]);
    assert_eq!(per_order["o12"], ["OrderRefunded"]);
    assert!(!per_order.contains_key("o13"));
    // Notification ids are stable functions of their source events (a retried transaction
    // produces the same ids).
    let ids: std::collections::HashSet<&String> =
        got.iter().map(|m| &m.headers["event_id"]).collect();
    assert_eq!(ids.len(), expected);
}
