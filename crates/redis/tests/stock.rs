//! The stock ledger under a crowd, the same checks for the Redis ledger (a real Redis,
//! `EVENTFOLD_TEST_REDIS`) and the in-process one: never oversold, nobody above the per-buyer
//! limit, a duplicated attempt deducts nothing, remaining + held = initial at every step, and a
//! take is given back once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use eventfold_core::stock::{MemoryStock, StockError, StockLedger, TakeOutcome, TakeState};
use eventfold_redis::RedisStock;

const STOCK: u64 = 100;
const LIMIT: u64 = 2;
const ATTEMPTS: u64 = 2_000;
const BUYERS: u64 = 300;

fn url() -> String {
    std::env::var("EVENTFOLD_TEST_REDIS").unwrap_or_else(|_| {
        panic!(
            "EVENTFOLD_TEST_REDIS is not set: run the tests through scripts/test, which uses the Redis on \
             127.0.0.1:6379 or starts one"
        )
    })
}

/// A deterministic attempt: (attempt id, buyer, quantity); one in ten repeats an earlier id.
fn attempt(i: u64) -> (String, String, u64) {
    let r = i
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407)
        >> 33;
    let id = if i > 10 && r.is_multiple_of(10) {
        i - 1 - r % 10 - (r >> 8) % 10
    } else {
        i
    };
    let r_id = id
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407)
        >> 33;
    (
        format!("a{id}"),
        format!("b{}", r_id % BUYERS),
        1 + (r_id >> 4) % 2,
    )
}

async fn crowd(ledger: Arc<dyn StockLedger>, sku: &str) {
    assert!(ledger.open(sku, STOCK, LIMIT).await.unwrap());
    assert!(
        !ledger.open(sku, 5, 1).await.unwrap(),
        "opening twice changes nothing"
    );

    let tasks: Vec<_> = (0..32u64)
        .map(|w| {
            let (ledger, sku) = (ledger.clone(), sku.to_owned());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in (w..ATTEMPTS).step_by(32) {
                    let (id, buyer, qty) = attempt(i);
                    let outcome = ledger.take(&sku, &buyer, qty, &id, i).await.unwrap();
                    out.push((id, buyer, qty, outcome));
                }
                out
            })
        })
        .collect();
    let mut taken: HashMap<String, (String, u64)> = HashMap::new();
    let mut duplicates = 0;
    for t in tasks {
        for (id, buyer, qty, outcome) in t.await.unwrap() {
            match outcome {
                TakeOutcome::Taken { .. } => {
                    assert!(
                        taken.insert(id.clone(), (buyer, qty)).is_none(),
                        "attempt {id} deducted twice"
                    );
                }
                TakeOutcome::Duplicate(first) => {
                    duplicates += 1;
                    assert_eq!(
                        (first.buyer.as_str(), first.quantity),
                        (buyer.as_str(), qty)
                    );
                }
                TakeOutcome::SoldOut { .. } | TakeOutcome::OverLimit { .. } => {}
            }
        }
    }
    let sold: u64 = taken.values().map(|(_, q)| q).sum();
    let mut per_buyer: HashMap<&str, u64> = HashMap::new();
    for (buyer, qty) in taken.values() {
        *per_buyer.entry(buyer).or_default() += qty;
    }
    println!(
        "{} takes ({sold} units) of {ATTEMPTS} attempts, {duplicates} duplicates, {} buyers",
        taken.len(),
        per_buyer.len()
    );
    assert!(duplicates > 0, "the crowd repeated attempts");
    assert_eq!(
        sold, STOCK,
        "the crowd (demand 600) bought exactly the stock"
    );
    assert!(
        per_buyer.values().all(|h| *h <= LIMIT),
        "a buyer above the limit"
    );
    let levels = ledger.levels(sku).await.unwrap();
    assert_eq!(
        (levels.initial, levels.remaining, levels.held),
        (STOCK, 0, STOCK)
    );

    // Give back every third take (twice: the second does nothing); confirm the rest.
    let mut returned = 0;
    let mut ids: Vec<&String> = taken.keys().collect();
    ids.sort();
    let mut given: HashSet<&String> = HashSet::new();
    for (n, id) in ids.iter().enumerate() {
        if n % 3 == 0 {
            assert!(ledger.give_back(sku, id).await.unwrap());
            assert!(!ledger.give_back(sku, id).await.unwrap(), "given back once");
            returned += taken[*id].1;
            given.insert(id);
        } else {
            assert_eq!(
                ledger.confirm(sku, id).await.unwrap(),
                Some(TakeState::Confirmed)
            );
        }
    }
    let levels = ledger.levels(sku).await.unwrap();
    assert_eq!(levels.remaining, returned);
    assert_eq!(levels.remaining + levels.held, STOCK, "stock reconciles");
    assert!(ledger.pending(sku, u64::MAX).await.unwrap().is_empty());
    let first_given = given.iter().next().unwrap();
    assert_eq!(
        ledger.confirm(sku, first_given).await.unwrap(),
        Some(TakeState::Returned),
        "a returned take stays returned"
    );
    assert!(!ledger.give_back(sku, "never-taken").await.unwrap());
    assert_eq!(ledger.confirm(sku, "never-taken").await.unwrap(), None);

    // A new take is pending until confirmed; reconciliation sees it by age.
    let outcome = ledger
        .take(sku, "late-buyer", 1, "late", 5_000)
        .await
        .unwrap();
    assert!(matches!(outcome, TakeOutcome::Taken { .. }), "{outcome:?}");
    assert!(ledger.pending(sku, 4_999).await.unwrap().is_empty());
    let pending = ledger.pending(sku, 5_000).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].buyer.as_str(), pending[0].quantity),
        ("late-buyer", 1)
    );

    // Bad input.
    assert!(matches!(
        ledger.take("no-such-sku", "b", 1, "x", 0).await,
        Err(StockError::UnknownSku(_))
    ));
    assert!(matches!(
        ledger.take(sku, "b", 0, "x", 0).await,
        Err(StockError::Invalid(m)) if m.contains("quantity")
    ));
    assert!(matches!(
        ledger.take(sku, "", 1, "x", 0).await,
        Err(StockError::Invalid(m)) if m.contains("buyer")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ledger_sells_exactly_the_stock_to_a_crowd() {
    let prefix = format!("test:{}:", uuid::Uuid::now_v7().simple());
    let ledger = RedisStock::connect(&url(), &prefix).await.unwrap();
    crowd(Arc::new(ledger), "sku-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_ledger_sells_exactly_the_stock_to_a_crowd() {
    crowd(Arc::new(MemoryStock::new()), "sku-1").await;
}
