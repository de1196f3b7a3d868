//! Property: replaying any prefix of a stream gives the state at that version.

use std::sync::Arc;

use eventfold::service::{AsOf, CommandContext, Executed, Service};
use eventfold_core::{Actor, StoredResponse};
use eventfold_domain::account::{Account, AccountCommand};
use eventfold_domain::order::{Order, OrderCommand, OrderLine};
use eventfold_domain::{Currency, Money};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Deposit(u32),
    Withdraw(u32),
    Interest(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..100_000).prop_map(Op::Deposit),
        (1u32..100_000).prop_map(Op::Withdraw),
        (0u32..500).prop_map(Op::Interest),
    ]
}

fn cents(n: u32) -> Money {
    Money::new(rust_decimal::Decimal::new(i64::from(n), 2), Currency::USD).unwrap()
}

fn no_render<A>(_: &A, _: u64) -> StoredResponse {
    StoredResponse {
        status: 200,
        body: String::new(),
    }
}

async fn run_account(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(eventfold_sqlite::SqliteStore::open(dir.path().join("e.db")).unwrap());
    let service = Service::new(store);
    let actor = Actor::parse("user:prop").unwrap();
    let ctx = CommandContext::new(actor.clone());
    let mut seen = vec![];
    let open = AccountCommand::Open {
        owner: "o".into(),
        currency: Currency::USD,
        actor: actor.clone(),
    };
    let commands = std::iter::once(open).chain(ops.into_iter().map(|o| match o {
        Op::Deposit(n) => AccountCommand::Deposit {
            amount: cents(n),
            actor: actor.clone(),
        },
        Op::Withdraw(n) => AccountCommand::Withdraw {
            amount: cents(n),
            actor: actor.clone(),
        },
        Op::Interest(n) => AccountCommand::AccrueInterest { amount: cents(n) },
    }));
    for command in commands {
        if let Ok(Executed::Applied {
            state,
            version,
            events,
            ..
        }) = service
            .execute::<Account>("p", command, &ctx, &no_render)
            .await
        {
            if events > 0 {
                seen.push((version, state));
            }
        }
    }
    for (version, state) in &seen {
        let loaded = service
            .load::<Account>("p", AsOf::Version(*version))
            .await
            .unwrap()
            .unwrap();
        prop_assert_eq!(loaded.version, *version);
        prop_assert_eq!(&loaded.state, state);
        prop_assert!(loaded.state.balance.unwrap().amount >= rust_decimal::Decimal::ZERO);
    }
    Ok(())
}

async fn run_order(steps: Vec<u8>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(eventfold_sqlite::SqliteStore::open(dir.path().join("e.db")).unwrap());
    let service = Service::new(store);
    let actor = Actor::parse("admin:prop").unwrap();
    let ctx = CommandContext::new(actor.clone());
    let total = cents(1234);
    let mut seen = vec![];
    let create = OrderCommand::Create {
        customer_id: "c".into(),
        store_id: "s".into(),
        lines: vec![OrderLine {
            sku: "cd".into(),
            quantity: 1,
            amount: total,
        }],
        actor: actor.clone(),
    };
    let commands = std::iter::once(create).chain(steps.into_iter().map(|s| match s % 6 {
        0 => OrderCommand::Pay {
            amount: total,
            payment_id: "p".into(),
            actor: actor.clone(),
        },
        1 => OrderCommand::Confirm {
            actor: actor.clone(),
            reason: None,
        },
        2 => OrderCommand::Ship {
            actor: actor.clone(),
            reason: Some("carrier".into()),
        },
        3 => OrderCommand::Complete {
            actor: actor.clone(),
            reason: None,
        },
        4 => OrderCommand::Cancel {
            actor: actor.clone(),
            reason: "changed mind".into(),
        },
        _ => OrderCommand::Refund {
            actor: actor.clone(),
            reason: "broken".into(),
        },
    }));
    for command in commands {
        if let Ok(Executed::Applied {
            state,
            version,
            events,
            ..
        }) = service
            .execute::<Order>("p", command, &ctx, &no_render)
            .await
        {
            if events > 0 {
                seen.push((version, state));
            }
        }
    }
    for (version, state) in &seen {
        let loaded = service
            .load::<Order>("p", AsOf::Version(*version))
            .await
            .unwrap()
            .unwrap();
        prop_assert_eq!(&loaded.state, state);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn replaying_any_prefix_of_an_account_gives_its_state_at_that_version(ops in proptest::collection::vec(op(), 0..40)) {
        tokio::runtime::Runtime::new().unwrap().block_on(run_account(ops))?;
    }

    #[test]
    fn replaying_any_prefix_of_an_order_gives_its_state_at_that_version(steps in proptest::collection::vec(any::<u8>(), 0..12)) {
        tokio::runtime::Runtime::new().unwrap().block_on(run_order(steps))?;
    }
}
