//! Per-stream command lanes: many concurrent commands on one stream, from one process and from
//! two (two services on two store connections), on SQLite and PostgreSQL.

use std::sync::Arc;

use eventfold_app::backend::Backend;
use eventfold_app::service::{CommandContext, Executed, Service, ServiceError};
use eventfold_core::{Actor, StoreError, StoredResponse};
use eventfold_domain::account::{Account, AccountCommand};
use eventfold_domain::{Currency, Money};
use rust_decimal::Decimal;

fn no_render(_: &Account, _: u64) -> StoredResponse {
    StoredResponse {
        status: 200,
        body: String::new(),
    }
}

fn usd(cents: i64) -> Money {
    Money::new(Decimal::new(cents, 2), Currency::USD).unwrap()
}

fn ctx() -> CommandContext {
    CommandContext::new(Actor::parse("user:lane-test").unwrap())
}

async fn run(
    service: &Service,
    command: AccountCommand,
    ctx: CommandContext,
) -> Result<Executed<Account>, ServiceError> {
    service
        .execute::<Account>("hot", command, &ctx, Box::new(no_render))
        .await
}

async fn open(service: &Service) {
    let command = AccountCommand::Open {
        owner: "hot".into(),
        currency: Currency::USD,
        actor: Actor::parse("user:lane-test").unwrap(),
    };
    run(service, command, ctx()).await.unwrap();
}

fn deposit(cents: i64) -> AccountCommand {
    AccountCommand::Deposit {
        amount: usd(cents),
        actor: Actor::parse("user:lane-test").unwrap(),
    }
}

/// Two services (as two processes would have) on two connections to one store.
struct Two {
    a: Service,
    b: Service,
    _guard: Box<dyn std::any::Any + Send>,
}

async fn sqlite() -> Two {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("e.db").display());
    let a = Backend::open(&url).await.unwrap();
    let b = Backend::open(&url).await.unwrap();
    Two {
        a: Service::new(a.events),
        b: Service::new(b.events),
        _guard: Box::new(dir),
    }
}

async fn postgres() -> Two {
    let db = eventfold_postgres::testing::fresh_db().await;
    let a = Backend::open(&db.url).await.unwrap();
    let b = Backend::open(&db.url).await.unwrap();
    Two {
        a: Service::new(a.events),
        b: Service::new(b.events),
        _guard: Box::new(db),
    }
}

/// 16 clients (8 per service) deposit 25 times each into one account: every deposit applies
/// once, the versions are 1..=401 without a gap, and the balance is the exact sum.
async fn hot_stream_applies_every_command(two: Two) {
    open(&two.a).await;
    let mut tasks = Vec::new();
    for client in 0..16i64 {
        let service = if client % 2 == 0 {
            two.a.clone()
        } else {
            two.b.clone()
        };
        tasks.push(tokio::spawn(async move {
            for i in 0..25i64 {
                match run(&service, deposit(client * 100 + i + 1), ctx()).await {
                    Ok(Executed::Applied { events: 1, .. }) => {}
                    other => panic!("deposit {client}/{i}: {other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let expected: i64 = (0..16i64)
        .flat_map(|c| (0..25i64).map(move |i| c * 100 + i + 1))
        .sum();
    for service in [&two.a, &two.b] {
        let events = service.read_stream("account-hot").await.unwrap();
        let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, (1..=401).collect::<Vec<u64>>());
        let loaded = service
            .load::<Account>("hot", eventfold_app::service::AsOf::Latest)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(loaded.state.balance, Some(usd(expected)));
    }
}

/// Withdrawals queued together are each decided against the balance the ones before left:
/// from 1.00, sixteen concurrent withdrawals of 0.10 give exactly ten successes.
async fn queued_withdrawals_never_overdraw(two: Two) {
    open(&two.a).await;
    run(&two.a, deposit(100), ctx()).await.unwrap();
    let mut tasks = Vec::new();
    for client in 0..16 {
        let service = if client % 2 == 0 {
            two.a.clone()
        } else {
            two.b.clone()
        };
        tasks.push(tokio::spawn(async move {
            let command = AccountCommand::Withdraw {
                amount: usd(10),
                actor: Actor::parse("user:lane-test").unwrap(),
            };
            run(&service, command, ctx()).await
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(Executed::Applied { events: 1, .. }) => ok += 1,
            Err(ServiceError::Refused { code, .. }) => {
                assert_eq!(code, "insufficient_funds");
                refused += 1;
            }
            other => panic!("withdrawal: {other:?}"),
        }
    }
    assert_eq!((ok, refused), (10, 6));
    let loaded = two
        .b
        .load::<Account>("hot", eventfold_app::service::AsOf::Latest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.state.balance, Some(usd(0)));
}

/// Commands that all name the same expected version, queued together: one applies, the rest get
/// a version conflict naming the version they met.
async fn expected_versions_checked_in_a_batch(two: Two) {
    open(&two.a).await;
    let service = Arc::new(two.a.clone());
    let mut tasks = Vec::new();
    for i in 0..8 {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let mut ctx = ctx();
            ctx.expected_version = Some(1);
            run(&service, deposit(i + 1), ctx).await
        }));
    }
    let (mut ok, mut conflicts) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(Executed::Applied { version: 2, .. }) => ok += 1,
            Err(ServiceError::Store(StoreError::VersionConflict {
                actual, expected, ..
            })) => {
                assert_eq!(actual, 2);
                assert_eq!(expected, eventfold_core::ExpectedVersion::Exact(1));
                conflicts += 1;
            }
            other => panic!("deposit: {other:?}"),
        }
    }
    assert_eq!((ok, conflicts), (1, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_hot_stream_applies_every_command() {
    hot_stream_applies_every_command(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_hot_stream_applies_every_command() {
    hot_stream_applies_every_command(postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_queued_withdrawals_never_overdraw() {
    queued_withdrawals_never_overdraw(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_queued_withdrawals_never_overdraw() {
    queued_withdrawals_never_overdraw(postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_expected_versions_checked_in_a_batch() {
    expected_versions_checked_in_a_batch(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_expected_versions_checked_in_a_batch() {
    expected_versions_checked_in_a_batch(postgres().await).await;
}
