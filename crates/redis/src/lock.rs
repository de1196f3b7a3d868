//! Distributed locks with fencing tokens.
//!
//! `acquire` runs one script: `SET {prefix}lock:{resource} {owner} NX PX {lease}` and, when that
//! succeeds, `INCR {prefix}fence:{resource}`, so every grant of a lock carries a token higher
//! than any earlier grant's (the counter is never reset). While the holder runs, a watchdog task
//! renews the lease every third of it, but only while the key still holds the holder's own owner
//! id (compare-and-`PEXPIRE`). Release is compare-and-delete, so a holder whose lease expired
//! cannot free the next holder's lock.
//!
//! A lease alone cannot protect a write: a holder paused (GC, swapping, a stopped VM) for longer
//! than its lease wakes up believing it holds the lock while the next holder already wrote. So
//! every write made under the lock carries the grant's token ([`LockGuard::fence`], applied with
//! `AppendRequest::with_fence`), and the event store refuses a token lower than one it already
//! accepted for the resource (`StoreError::Fenced`). Source: Martin Kleppmann, "How to do
//! distributed locking" (2016).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use crate::{millis, RELEASE};

/// Why a lock call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Redis failed or cannot be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Another holder kept the lock for the whole wait.
    #[error("lock {resource} is held by another holder (waited {waited:?})")]
    Timeout {
        /// The resource.
        resource: String,
        /// How long `acquire` tried.
        waited: Duration,
    },
    /// A resource name that is empty or longer than 200 bytes.
    #[error("lock resource must be 1 to 200 bytes, got {0}")]
    InvalidResource(usize),
}

/// How a lock is held.
#[derive(Debug, Clone, Copy)]
pub struct LockOptions {
    /// Lease: the lock expires this long after its last renewal (default 10 s).
    pub lease: Duration,
    /// Renew the lease every `lease / 3` while the guard lives (default true). A holder without
    /// renewal keeps the lock for one lease at most, which is also what a paused holder's
    /// renewal amounts to.
    pub renew: bool,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(10),
            renew: true,
        }
    }
}

/// Grants locks on named resources (see the module docs).
#[derive(Clone)]
pub struct LockService {
    conn: ConnectionManager,
    prefix: String,
}

/// A held lock. Dropping it stops the renewal (the lock then expires with its lease); call
/// [`LockGuard::release`] to free it at once.
pub struct LockGuard {
    conn: ConnectionManager,
    key: String,
    owner: String,
    fence: u64,
    lost: Arc<AtomicBool>,
    watchdog: Option<tokio::task::JoinHandle<()>>,
}

const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

impl LockService {
    /// Connects to `url` (`redis://HOST:PORT`); keys are `{prefix}lock:{resource}` and
    /// `{prefix}fence:{resource}`.
    ///
    /// # Errors
    /// Redis cannot be reached.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, LockError> {
        let client = redis::Client::open(url)?;
        Ok(Self {
            conn: ConnectionManager::new(client).await?,
            prefix: prefix.to_owned(),
        })
    }

    /// Takes the lock on `resource` if it is free.
    ///
    /// # Errors
    /// [`LockError::InvalidResource`]; Redis failures.
    pub async fn try_acquire(
        &self,
        resource: &str,
        options: LockOptions,
    ) -> Result<Option<LockGuard>, LockError> {
        if resource.is_empty() || resource.len() > 200 {
            return Err(LockError::InvalidResource(resource.len()));
        }
        let key = format!("{}lock:{resource}", self.prefix);
        let owner = uuid::Uuid::now_v7().to_string();
        let mut conn = self.conn.clone();
        let fence: u64 = redis::Script::new(ACQUIRE)
            .key(&key)
            .key(format!("{}fence:{resource}", self.prefix))
            .arg(&owner)
            .arg(millis(options.lease))
            .invoke_async(&mut conn)
            .await?;
        if fence == 0 {
            return Ok(None);
        }
        let lost = Arc::new(AtomicBool::new(false));
        let watchdog = options.renew.then(|| {
            tokio::spawn(renew(
                self.conn.clone(),
                key.clone(),
                owner.clone(),
                options.lease,
                lost.clone(),
            ))
        });
        Ok(Some(LockGuard {
            conn: self.conn.clone(),
            key,
            owner,
            fence,
            lost,
            watchdog,
        }))
    }

    /// Takes the lock on `resource`, trying every 10-100 ms (jittered) for up to `wait`.
    ///
    /// # Errors
    /// [`LockError::Timeout`] when it stayed taken; [`LockError::InvalidResource`]; Redis
    /// failures.
    pub async fn acquire(
        &self,
        resource: &str,
        options: LockOptions,
        wait: Duration,
    ) -> Result<LockGuard, LockError> {
        let started = Instant::now();
        let mut pause = 10u64;
        loop {
            if let Some(guard) = self.try_acquire(resource, options).await? {
                return Ok(guard);
            }
            if started.elapsed() >= wait {
                return Err(LockError::Timeout {
                    resource: resource.to_owned(),
                    waited: started.elapsed(),
                });
            }
            let jitter = u64::from(uuid::Uuid::now_v7().as_bytes()[15]) % pause.max(1);
            tokio::time::sleep(Duration::from_millis(pause / 2 + jitter)).await;
            pause = (pause * 2).min(100);
        }
    }
}

/// Renews the lease every third of it while the key is still `owner`'s; marks the lock lost
/// when it is not (or when Redis could not be reached for a whole lease).
async fn renew(
    mut conn: ConnectionManager,
    key: String,
    owner: String,
    lease: Duration,
    lost: Arc<AtomicBool>,
) {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(lease / 3).await;
        let result: Result<i64, _> = redis::Script::new(RENEW)
            .key(&key)
            .arg(&owner)
            .arg(millis(lease))
            .invoke_async(&mut conn)
            .await;
        match result {
            Ok(1) => renewed = Instant::now(),
            Ok(_) => {
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) if renewed.elapsed() >= lease => {
                tracing::warn!(key = %key, error = %e, "lock lost: its lease could not be renewed");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(_) => {}
        }
    }
}

impl LockGuard {
    /// The fencing token of this grant: higher than every earlier grant's for the resource.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// The resource name to fence store writes with (`{prefix}lock:{resource}`).
    pub fn fence_resource(&self) -> &str {
        &self.key
    }

    /// False once the watchdog found the lock taken over or could not renew it for a lease.
    /// (True does not prove the lock is still held: only the store's fence check does.)
    pub fn is_held(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
    }

    /// Stops renewing and frees the lock if it is still this holder's; returns whether it was.
    ///
    /// # Errors
    /// Redis failures (the lock then expires with its lease).
    pub async fn release(mut self) -> Result<bool, LockError> {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        let mut conn = self.conn.clone();
        let freed: i64 = redis::Script::new(RELEASE)
            .key(&self.key)
            .arg(&self.owner)
            .invoke_async(&mut conn)
            .await?;
        Ok(freed == 1)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
    }
}
