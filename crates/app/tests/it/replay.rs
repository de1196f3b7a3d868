//! Property: replaying any prefix of a stream gives the state at that version.

use std::sync::Arc;

use eventfold_app::service::{AsOf, CommandContext, Executed, Service};
use eventfold_core::{Actor, Aggregate, StoredResponse};
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

/// Runs `commands` on one aggregate through the service and a real store, then checks that
/// loading every version it reached gives back exactly the state the service returned then, and
/// that `invariant` holds for each of those states.
async fn check_prefixes<A>(
    commands: Vec<A::Command>,
    invariant: fn(&A) -> bool,
) -> Result<(), TestCaseError>
where
    A: Aggregate + PartialEq + std::fmt::Debug,
    A::Command: Clone + Send + 'static,
    A::Error: eventfold_domain::DomainError,
{
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(eventfold_sqlite::SqliteStore::open(dir.path().join("e.db")).unwrap());
    let service = Service::new(store);
    let ctx = CommandContext::new(Actor::parse("admin:prop").unwrap());
    let mut seen = vec![];
    for command in commands {
        if let Ok(Executed::Applied {
            state,
            version,
            events,
            ..
        }) = service
            .execute::<A>("p", command, &ctx, Box::new(no_render))
            .await
        {
            if events > 0 {
                seen.push((version, state));
            }
        }
    }
    for (version, state) in &seen {
        let loaded = service
            .load::<A>("p", AsOf::Version(*version))
            .await
            .unwrap()
            .unwrap();
        prop_assert_eq!(loaded.version, *version);
        prop_assert_eq!(&loaded.state, state);
        prop_assert!(
            invariant(&loaded.state),
            "invariant broken at version {}: {:?}",
            version,
            loaded.state
        );
    }
    Ok(())
}

fn account_commands(ops: Vec<Op>) -> Vec<AccountCommand> {
    let actor = Actor::parse("user:prop").unwrap();
    let open = AccountCommand::Open {
        owner: "o".into(),
        currency: Currency::USD,
        actor: actor.clone(),
    };
    std::iter::once(open)
        .chain(ops.into_iter().map(|o| match o {
            Op::Deposit(n) => AccountCommand::Deposit {
                amount: cents(n),
                actor: actor.clone(),
            },
            Op::Withdraw(n) => AccountCommand::Withdraw {
                amount: cents(n),
                actor: actor.clone(),
            },
            Op::Interest(n) => AccountCommand::AccrueInterest { amount: cents(n) },
        }))
        .collect()
}

fn order_commands(steps: Vec<u8>) -> Vec<OrderCommand> {
    let actor = Actor::parse("admin:prop").unwrap();
    let total = cents(1234);
    let create = OrderCommand::Create {
        calendar: None,
        customer_id: "c".into(),
        store_id: "s".into(),
        lines: vec![OrderLine {
            sku: "cd".into(),
            quantity: 1,
            amount: total,
        }],
        actor: actor.clone(),
    };
    std::iter::once(create)
        .chain(steps.into_iter().map(|s| match s % 6 {
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
        }))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn replaying_any_prefix_of_an_account_gives_its_state_at_that_version(ops in proptest::collection::vec(op(), 0..40)) {
        tokio::runtime::Runtime::new().unwrap().block_on(check_prefixes::<Account>(account_commands(ops), |a| {
            a.balance.is_some_and(|b| b.amount >= rust_decimal::Decimal::ZERO)
        }))?;
    }

    #[test]
    fn replaying_any_prefix_of_an_order_gives_its_state_at_that_version(steps in proptest::collection::vec(any::<u8>(), 0..12)) {
        tokio::runtime::Runtime::new().unwrap().block_on(check_prefixes::<Order>(order_commands(steps), |o| o.status.is_some()))?;
    }
}
