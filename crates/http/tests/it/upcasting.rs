//! Upcasting on both stores: a `FundsDeposited` stored at schema version 1 (a bare amount,
//! the seed's shape) is read as version 2 in TWD, new deposits are written at version 2, the stored
//! history is never rewritten, and a version no upcaster knows is an error naming the stream,
//! version and type.

use eventfold_app::service::{AsOf, CommandContext, Service, ServiceError};
use eventfold_core::{
    Actor, AppendRequest, EventMetadata, ExpectedVersion, NewEvent, StoreError, StoredResponse,
};
use eventfold_domain::account::{Account, AccountCommand};
use eventfold_domain::{Currency, Money};

use eventfold_http::testing::TestApp;

fn raw(event_type: &str, schema_version: u32, payload: &str) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: event_type.into(),
        schema_version,
        event_time: chrono::Utc::now(),
        metadata: EventMetadata {
            actor: Actor::system("legacy"),
            causation_id: None,
            correlation_id: None,
            tenant_id: "default".into(),
            via: None,
            backfill: false,
        },
        payload: payload.into(),
    }
}

async fn old_deposits_read_in_twd_and_history_stays_as_stored(app: TestApp) {
    let store = app.backend.events.clone();
    store
        .append(AppendRequest::new(
            "account-legacy",
            ExpectedVersion::NoStream,
            vec![
                raw("AccountOpened", 1, r#"{"owner":"c-1","currency":"TWD"}"#),
                raw("FundsDeposited", 1, r#"{"amount":"100.50"}"#),
                // Written by an eventfold before upcasting existed: version 1, with a currency already.
                raw(
                    "FundsDeposited",
                    1,
                    r#"{"amount":{"amount":"0.50","currency":"TWD"}}"#,
                ),
            ],
        ))
        .await
        .unwrap();
    let service = Service::new(store.clone());
    let twd = |s: &str| Money::parse(s, Currency::TWD).unwrap();
    let loaded = service
        .load::<Account>("legacy", AsOf::Latest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.state.balance, Some(twd("101.00")));
    // A new deposit is written at the current version, 2.
    let render = Box::new(|_: &Account, v: u64| StoredResponse {
        status: 200,
        body: format!("{{\"version\":{v}}}"),
    });
    service
        .execute::<Account>(
            "legacy",
            AccountCommand::Deposit {
                amount: twd("9.00"),
                actor: Actor::system("test"),
            },
            &CommandContext::new(Actor::system("test")),
            render,
        )
        .await
        .unwrap();
    let events = service.read_stream("account-legacy").await.unwrap();
    let versions: Vec<u32> = events.iter().map(|e| e.schema_version).collect();
    assert_eq!(versions, [1, 1, 1, 2]);
    // The stored v1 payload is untouched.
    assert_eq!(events[1].payload, r#"{"amount":"100.50"}"#);
    let loaded = service
        .load::<Account>("legacy", AsOf::Latest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.state.balance, Some(twd("110.00")));
    // The history (audit timeline) shows the lifted payload.
    let timeline = eventfold_app::service::timeline::<Account>(&events).unwrap();
    assert_eq!(
        timeline[1].change,
        serde_json::json!({"amount": {"amount": "100.50", "currency": "TWD"}})
    );

    // A version from a newer eventfold: a clear error, nothing folded silently.
    store
        .append(AppendRequest::new(
            "account-legacy",
            ExpectedVersion::Exact(4),
            vec![raw(
                "FundsDeposited",
                7,
                r#"{"amount":{"amount":"1","currency":"TWD"}}"#,
            )],
        ))
        .await
        .unwrap();
    let err = service
        .load::<Account>("legacy", AsOf::Latest)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(
        message.contains("stream account-legacy version 5 type FundsDeposited")
            && message.contains("schema version 7 is newer than this build knows (up to 2)"),
        "{message}"
    );
    let refused = service
        .execute::<Account>(
            "legacy",
            AccountCommand::Deposit {
                amount: twd("1.00"),
                actor: Actor::system("test"),
            },
            &CommandContext::new(Actor::system("test")),
            Box::new(|_: &Account, v: u64| StoredResponse {
                status: 200,
                body: format!("{{\"version\":{v}}}"),
            }),
        )
        .await;
    assert!(
        matches!(refused, Err(ServiceError::Store(StoreError::Corrupt(_)))),
        "{refused:?}"
    );
    assert_eq!(
        service.read_stream("account-legacy").await.unwrap().len(),
        5
    );
}

eventfold_http::on_both_stores!(
    [flavor = "multi_thread", worker_threads = 2]
    sqlite_upcasts_old_deposits_and_refuses_unknown_versions,
    postgres_upcasts_old_deposits_and_refuses_unknown_versions,
    old_deposits_read_in_twd_and_history_stays_as_stored
);
