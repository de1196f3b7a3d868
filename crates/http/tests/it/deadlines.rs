//! The unpaid-order timeout with a shortened delay: unpaid orders are cancelled within a
//! second of their due time, paid ones are left alone, and timers that came due while no timer
//! ran fire when one starts again (the cursor is a checkpoint in the store).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use eventfold_app::shop::deadlines::UnpaidOrderTimeout;
use eventfold_core::EventStore;
use serde_json::json;

use eventfold_http::testing::TestApp;

async fn create(app: &TestApp, id: &str) {
    let r = app
        .send(
            Method::POST,
            "/orders",
            &[("x-actor", "user:buyer")],
            Some(
                json!({"order_id": id, "customer_id": "c-1", "store_id": "web", "currency": "USD",
                        "lines": [{"sku": "cd", "quantity": 1, "amount": "9.99"}]}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

async fn pay(app: &TestApp, id: &str) {
    let r = app
        .send(
            Method::POST,
            &format!("/orders/{id}/pay"),
            &[("x-actor", "user:buyer")],
            Some(json!({"amount": "9.99", "currency": "USD", "payment_id": format!("p-{id}")})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// (event type, event time, actor) of an order's events.
async fn events(
    store: &Arc<dyn EventStore>,
    id: &str,
) -> Vec<(String, chrono::DateTime<chrono::Utc>, String)> {
    store
        .read_stream(&format!("order-{id}"), 1, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                e.event_type,
                e.event_time,
                e.metadata.actor.as_str().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_orders_are_cancelled_within_a_second_of_their_due_time() {
    let app = TestApp::new().await;
    for id in ["u1", "p1", "u2"] {
        create(&app, id).await;
    }
    pay(&app, "p1").await;
    app.project().await;
    let delay = Duration::from_secs(2);
    let timer = Arc::new(UnpaidOrderTimeout::new(
        app.backend.events.clone(),
        app.backend.read_models.clone(),
        delay,
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let timer = timer.clone();
        tokio::spawn(async move {
            timer
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        })
    };
    tokio::time::sleep(delay + Duration::from_millis(1_500)).await;
    let _ = stop.send(());
    running.await.unwrap();

    let store = &app.backend.events;
    for id in ["u1", "u2"] {
        let e = events(store, id).await;
        assert_eq!(e.len(), 2, "{id}: created, then cancelled: {e:?}");
        assert_eq!(e[1].0, "OrderCancelled");
        assert_eq!(e[1].2, "system:unpaid-order-timeout");
        let late = (e[1].1 - e[0].1).to_std().unwrap() - delay;
        println!("{id} cancelled {late:?} after its due time");
        assert!(late < Duration::from_secs(1), "{id} fired {late:?} late");
    }
    let paid = events(store, "p1").await;
    assert_eq!(
        paid.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        ["OrderCreated", "OrderPaid"],
        "a paid order is left alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_that_came_due_while_no_timer_ran_fire_when_one_starts() {
    let app = TestApp::new().await;
    let delay = Duration::from_millis(500);
    let timer = |app: &TestApp| {
        UnpaidOrderTimeout::new(
            app.backend.events.clone(),
            app.backend.read_models.clone(),
            delay,
        )
    };
    // A first timer runs (nothing due) and stops: its cursor is stored.
    let first = timer(&app);
    assert_eq!(
        first.fire_due(chrono::Utc::now()).await.unwrap().cancelled,
        0
    );
    drop(first);
    // Orders are made while no timer runs, and come due.
    for id in ["d1", "d2"] {
        create(&app, id).await;
    }
    pay(&app, "d2").await;
    app.project().await;
    tokio::time::sleep(delay + Duration::from_millis(300)).await;
    // A new timer (a restarted process) fires them; a second tick, or a second timer, does not
    // cancel anything twice.
    let second = timer(&app);
    let fired = second.fire_due(chrono::Utc::now()).await.unwrap();
    assert_eq!((fired.cancelled, fired.settled), (1, 1));
    assert_eq!(
        second.fire_due(chrono::Utc::now()).await.unwrap().cancelled,
        0
    );
    let third = timer(&app);
    assert_eq!(
        third.fire_due(chrono::Utc::now()).await.unwrap().cancelled,
        0
    );
    let e = events(&app.backend.events, "d1").await;
    assert_eq!(e.last().unwrap().0, "OrderCancelled");
    assert_eq!(e.len(), 2, "cancelled once");
}
