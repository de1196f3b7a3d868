//! Redis for eventfold: an inbox for effects outside the database (below), locks with
//! watchdog renewal and fencing tokens ([`lock`]) and the flash-sale stock ledger
//! ([`stock`]).
//!
//! A consumer whose effect is not a database write (an e-mail, a call to a payment provider)
//! cannot commit a dedupe record in the effect's transaction. [`RedisInbox`] dedupes with
//! `SET key processing:{token} NX PX lease`: the first claimant of a message's key gets a lease
//! and runs the effect; a duplicate that arrives meanwhile sees `Busy` (retry later) and one that
//! arrives after [`RedisInbox::complete`] sees `Duplicate` (skip). Completion and release are
//! compare-and-set scripts on the token, so only the lease holder can mark the key done or free
//! it. A worker that dies holding a lease frees the key when the lease expires, and the message
//! is then handled again: for an effect outside any transaction this is the best there is
//! (at-least-once across a crash between the effect and `complete`, exactly-once otherwise), so
//! the lease should outlast the effect's own timeout.

pub mod lock;
pub mod stock;

pub use lock::{LockError, LockGuard, LockOptions, LockService};
pub use stock::RedisStock;

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;

/// Why an inbox call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// Redis failed or cannot be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The lease expired before `complete` (another worker may have claimed the key since).
    #[error("the lease on {key} was lost before completion")]
    LeaseLost {
        /// The inbox key.
        key: String,
    },
}

/// What [`RedisInbox::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First claimant: run the effect, then [`RedisInbox::complete`] (or
    /// [`RedisInbox::release`] on failure).
    First(Lease),
    /// Already done: skip the message.
    Duplicate,
    /// Another worker holds the lease: try again later.
    Busy,
}

/// A claim on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    key: String,
    token: String,
}

/// The Redis inbox (see the crate docs).
#[derive(Clone)]
pub struct RedisInbox {
    conn: ConnectionManager,
    prefix: String,
    lease: Duration,
    keep: Duration,
}

const COMPLETE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
  return 1
end
return 0";

/// Compare-and-delete: deletes `KEYS[1]` only while it holds `ARGV[1]` (the holder's token).
pub(crate) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

impl RedisInbox {
    /// Connects to `url` (`redis://HOST:PORT`); keys are `{prefix}{key}`. A lease lasts `lease`;
    /// a done key is remembered for `keep` (longer than any redelivery can come: the topic's
    /// retention, say).
    ///
    /// # Errors
    /// Redis cannot be reached.
    pub async fn connect(
        url: &str,
        prefix: &str,
        lease: Duration,
        keep: Duration,
    ) -> Result<Self, InboxError> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client).await?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            lease,
            keep,
        })
    }

    /// Claims `key` (a message's inbox key, e.g. `inbox:mailer:{event_id}`).
    ///
    /// # Errors
    /// Redis failures.
    pub async fn claim(&self, key: &str) -> Result<Claim, InboxError> {
        let full = format!("{}{key}", self.prefix);
        let token = format!("processing:{}", uuid::Uuid::now_v7());
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&full)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(millis(self.lease))
            .query_async(&mut conn)
            .await?;
        if set.is_some() {
            return Ok(Claim::First(Lease { key: full, token }));
        }
        let current: Option<String> = conn.get(&full).await?;
        Ok(match current.as_deref() {
            Some("done") => Claim::Duplicate,
            Some(_) => Claim::Busy,
            // The lease expired between SET and GET: claim again.
            None => Box::pin(self.claim(key)).await?,
        })
    }

    /// Marks the claimed key done (kept for `keep`).
    ///
    /// # Errors
    /// [`InboxError::LeaseLost`] when the lease expired first; Redis failures.
    pub async fn complete(&self, lease: &Lease) -> Result<(), InboxError> {
        let mut conn = self.conn.clone();
        let done: i64 = redis::Script::new(COMPLETE)
            .key(&lease.key)
            .arg(&lease.token)
            .arg(millis(self.keep))
            .invoke_async(&mut conn)
            .await?;
        if done == 1 {
            Ok(())
        } else {
            Err(InboxError::LeaseLost {
                key: lease.key.clone(),
            })
        }
    }

    /// Frees the claimed key at once (the effect failed and should be retried).
    ///
    /// # Errors
    /// Redis failures. A lease that already expired is not an error.
    pub async fn release(&self, lease: &Lease) -> Result<(), InboxError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(RELEASE)
            .key(&lease.key)
            .arg(&lease.token)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}

/// A duration as whole milliseconds for `PX` / `PEXPIRE`, at least 1.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
