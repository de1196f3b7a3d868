//! The inbox on the seed case: a "prize won" message delivered twice, and all messages
//! redelivered to a second consumer group, hand out each prize once. Runs on Tansu.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventfold_app::messaging::prizes::award_prize;
use eventfold_app::service::{AsOf, CommandContext, Service};
use eventfold_core::{Actor, StoredResponse};
use eventfold_domain::account::{Account, AccountCommand};
use eventfold_domain::{Currency, Money};
use eventfold_kafka::testing::broker;
use eventfold_kafka::{run_consumer, ConsumerConfig, Handled};

async fn publish(topic: &str, messages: &[(Option<&str>, &str)]) {
    let messages: Vec<(&str, Option<&str>, &str)> = messages
        .iter()
        .map(|(id, body)| ("winner", *id, *body))
        .collect();
    eventfold_kafka::testing::publish(topic, 2, &messages).await;
}

/// Runs the prize consumer in group `group` until it has handled `expected` messages.
async fn consume(service: &Service, topic: &str, group: &str, expected: u64) -> (u64, u64) {
    let config = ConsumerConfig::new(broker(), group, &[topic]);
    let (done, poison) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (d, p) = (done.clone(), poison.clone());
    let stop = async move {
        let started = Instant::now();
        while d.load(Ordering::SeqCst) + p.load(Ordering::SeqCst) < expected
            && started.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    run_consumer(
        &config,
        |m| {
            let (service, done, poison) = (service.clone(), done.clone(), poison.clone());
            async move {
                let handled = award_prize(&service, &m).await;
                match &handled {
                    Handled::Done => done.fetch_add(1, Ordering::SeqCst),
                    _ => poison.fetch_add(1, Ordering::SeqCst),
                };
                handled
            }
        },
        stop,
    )
    .await
    .unwrap();
    (done.load(Ordering::SeqCst), poison.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_prize_message_hands_out_one_prize() {
    let dir = tempfile::tempdir().unwrap();
    let store = eventfold_sqlite::SqliteStore::open(dir.path().join("e.db")).unwrap();
    let service = Service::new(Arc::new(store));
    let open = AccountCommand::Open {
        owner: "winner".into(),
        currency: Currency::USD,
        actor: Actor::parse("user:winner").unwrap(),
    };
    let ctx = CommandContext::new(Actor::parse("user:winner").unwrap());
    let render = Box::new(|_: &Account, _: u64| StoredResponse {
        status: 201,
        body: String::new(),
    });
    service
        .execute::<Account>("winner", open, &ctx, render)
        .await
        .unwrap();

    let topic = format!("prizes{}", uuid::Uuid::now_v7().simple());
    let prize = r#"{"account_id": "winner", "amount": "100.00", "currency": "USD"}"#;
    let other = r#"{"account_id": "winner", "amount": "0.50", "currency": "USD"}"#;
    publish(
        &topic,
        &[
            (Some("0190a000-0000-7000-8000-000000000001"), prize),
            // The publisher sent it twice.
            (Some("0190a000-0000-7000-8000-000000000001"), prize),
            (Some("0190a000-0000-7000-8000-000000000002"), other),
            // Poison: no event id; an unknown currency.
            (None, prize),
            (
                Some("0190a000-0000-7000-8000-000000000003"),
                r#"{"account_id": "winner", "amount": "1.00", "currency": "XXQ"}"#,
            ),
        ],
    )
    .await;

    let metrics = eventfold_http::metrics_handle();
    let (done, poison) = consume(&service, &topic, "prizes-a", 5).await;
    assert_eq!((done, poison), (3, 2));
    let text = metrics.render();
    assert!(
        text.contains(r#"eventfold_consumer_messages_total{group="prizes-a",outcome="done"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"eventfold_consumer_messages_total{group="prizes-a",outcome="poison"} 2"#),
        "{text}"
    );
    let balance = |s: &Service| {
        let s = s.clone();
        async move {
            let a = s
                .load::<Account>("winner", AsOf::Latest)
                .await
                .unwrap()
                .unwrap();
            (a.state.balance, a.version)
        }
    };
    let usd = |s: &str| Money::parse(s, Currency::USD).unwrap();
    assert_eq!(balance(&service).await, (Some(usd("100.50")), 3));

    // Everything redelivered (a new group reads from the start, as after lost offset commits):
    // nothing changes.
    let (done, poison) = consume(&service, &topic, "prizes-b", 5).await;
    assert_eq!((done, poison), (3, 2));
    assert_eq!(balance(&service).await, (Some(usd("100.50")), 3));
}
