//! The Redis inbox against a real Redis (`EVENTFOLD_TEST_REDIS`, set by `scripts/test`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventfold_redis::{Claim, InboxError, RedisInbox};

fn url() -> String {
    std::env::var("EVENTFOLD_TEST_REDIS").unwrap_or_else(|_| {
        panic!(
            "EVENTFOLD_TEST_REDIS is not set: run the tests through scripts/test, which uses the Redis on \
             127.0.0.1:6379 or starts one"
        )
    })
}

async fn inbox(lease_ms: u64) -> RedisInbox {
    let prefix = format!("test:{}:", uuid::Uuid::now_v7().simple());
    RedisInbox::connect(
        &url(),
        &prefix,
        Duration::from_millis(lease_ms),
        Duration::from_secs(60),
    )
    .await
    .unwrap()
}

/// The seed case outside the database: a "prize won" message delivered three times, to three
/// workers at once, sends one prize e-mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_message_causes_one_external_effect() {
    let inbox = inbox(5_000).await;
    let emails = Arc::new(AtomicU32::new(0));
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (inbox, emails) = (inbox.clone(), emails.clone());
        workers.push(tokio::spawn(async move {
            loop {
                match inbox.claim("inbox:mailer:prize-42").await.unwrap() {
                    Claim::First(lease) => {
                        emails.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        inbox.complete(&lease).await.unwrap();
                        return;
                    }
                    Claim::Duplicate => return,
                    Claim::Busy => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(emails.load(Ordering::SeqCst), 1);
    assert_eq!(
        inbox.claim("inbox:mailer:prize-42").await.unwrap(),
        Claim::Duplicate
    );
}

/// A holder that stops past its lease loses the key: another worker claims it, and the late
/// holder's completion is refused.
#[tokio::test]
async fn an_expired_lease_is_claimed_again_and_cannot_be_completed_late() {
    let inbox = inbox(200).await;
    let Claim::First(stale) = inbox.claim("k").await.unwrap() else {
        panic!("first claim")
    };
    assert_eq!(inbox.claim("k").await.unwrap(), Claim::Busy);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let Claim::First(fresh) = inbox.claim("k").await.unwrap() else {
        panic!("claim after expiry")
    };
    assert!(matches!(
        inbox.complete(&stale).await,
        Err(InboxError::LeaseLost { .. })
    ));
    inbox.complete(&fresh).await.unwrap();
    assert_eq!(inbox.claim("k").await.unwrap(), Claim::Duplicate);
}

/// A failed effect releases its lease, so the retry runs at once; only the holder can release.
#[tokio::test]
async fn release_frees_the_key_for_a_retry_and_only_for_the_holder() {
    let inbox = inbox(60_000).await;
    let Claim::First(lease) = inbox.claim("r").await.unwrap() else {
        panic!("first claim")
    };
    inbox.release(&lease).await.unwrap();
    let Claim::First(second) = inbox.claim("r").await.unwrap() else {
        panic!("claim after release")
    };
    // The first lease is gone; releasing it again does not free the second holder's claim.
    inbox.release(&lease).await.unwrap();
    assert_eq!(inbox.claim("r").await.unwrap(), Claim::Busy);
    inbox.complete(&second).await.unwrap();
}
