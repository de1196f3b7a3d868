//! The stock ledger in Redis: one Lua script per call, so the check, the deduction and the
//! buyer's tally of a take happen atomically on the server (see `eventfold_core::stock` for the
//! semantics).
//!
//! Keys per SKU, with the SKU as hash tag so that a cluster keeps them on one slot:
//! `{prefix}stock:{sku}` (hash: `initial`, `remaining`, `limit`), `{prefix}held:{sku}` (hash:
//! buyer -> units held), `{prefix}takes:{sku}` (hash: attempt -> `buyer|quantity|state|taken_at_ms`,
//! state `p`ending, `c`onfirmed or `r`eturned). Only successful takes are recorded, so the takes
//! hash holds at most as many entries as units were sold (and given back).

use async_trait::async_trait;
use eventfold_core::stock::{
    validate_open, validate_take, StockError, StockLedger, StockLevels, Take, TakeOutcome,
    TakeState,
};
use redis::aio::ConnectionManager;

/// The Redis stock ledger.
#[derive(Clone)]
pub struct RedisStock {
    conn: ConnectionManager,
    prefix: String,
}

const OPEN: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'initial', ARGV[1], 'remaining', ARGV[1], 'limit', ARGV[2])
return 1";

// Returns {code, a, b}: 1 taken (a = remaining); 2 duplicate (a = the recorded take); 3 over the
// limit (a = held, b = limit); 4 sold out (a = remaining); 0 unknown sku.
const TAKE: &str = r"
local prev = redis.call('HGET', KEYS[3], ARGV[3])
if prev then return {2, prev, 0} end
local s = redis.call('HMGET', KEYS[1], 'remaining', 'limit')
if not s[1] then return {0, 0, 0} end
local remaining, limit, qty = tonumber(s[1]), tonumber(s[2]), tonumber(ARGV[2])
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if held + qty > limit then return {3, held, limit} end
if remaining < qty then return {4, remaining, 0} end
redis.call('HINCRBY', KEYS[1], 'remaining', -qty)
redis.call('HINCRBY', KEYS[2], ARGV[1], qty)
redis.call('HSET', KEYS[3], ARGV[3], ARGV[1] .. '|' .. ARGV[2] .. '|p|' .. ARGV[4])
return {1, remaining - qty, 0}";

const CONFIRM: &str = r"
local t = redis.call('HGET', KEYS[1], ARGV[1])
if not t then return '' end
local buyer, qty, state, at = string.match(t, '^(.*)|(%d+)|(%a)|(%d+)$')
if state == 'p' then
  redis.call('HSET', KEYS[1], ARGV[1], buyer .. '|' .. qty .. '|c|' .. at)
  return 'c'
end
return state";

const GIVE_BACK: &str = r"
local t = redis.call('HGET', KEYS[3], ARGV[1])
if not t then return 0 end
local buyer, qty, state, at = string.match(t, '^(.*)|(%d+)|(%a)|(%d+)$')
if state == 'r' then return 0 end
redis.call('HINCRBY', KEYS[1], 'remaining', tonumber(qty))
redis.call('HINCRBY', KEYS[2], buyer, -tonumber(qty))
redis.call('HSET', KEYS[3], ARGV[1], buyer .. '|' .. qty .. '|r|' .. at)
return 1";

impl RedisStock {
    /// Connects to `url` (`redis://HOST:PORT`); keys start with `prefix`.
    ///
    /// # Errors
    /// Redis cannot be reached.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        Ok(Self {
            conn: ConnectionManager::new(client).await?,
            prefix: prefix.to_owned(),
        })
    }

    fn keys(&self, sku: &str) -> [String; 3] {
        let p = &self.prefix;
        [
            format!("{p}stock:{{{sku}}}"),
            format!("{p}held:{{{sku}}}"),
            format!("{p}takes:{{{sku}}}"),
        ]
    }
}

fn unavailable(e: redis::RedisError) -> StockError {
    StockError::Unavailable(e.to_string())
}

/// Parses a recorded take `buyer|quantity|state|taken_at_ms` (the buyer may contain `|`).
fn parse_take(attempt: &str, text: &str) -> Result<Take, StockError> {
    let corrupt = || StockError::Unavailable(format!("take {attempt}: unreadable record {text:?}"));
    let mut parts = text.rsplitn(4, '|');
    let at = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(corrupt)?;
    let state = match parts.next() {
        Some("p") => TakeState::Pending,
        Some("c") => TakeState::Confirmed,
        Some("r") => TakeState::Returned,
        _ => return Err(corrupt()),
    };
    let quantity = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(corrupt)?;
    let buyer = parts.next().ok_or_else(corrupt)?.to_owned();
    Ok(Take {
        attempt: attempt.to_owned(),
        buyer,
        quantity,
        state,
        taken_at_ms: at,
    })
}

#[async_trait]
impl StockLedger for RedisStock {
    async fn open(&self, sku: &str, stock: u64, per_buyer_limit: u64) -> Result<bool, StockError> {
        validate_open(sku, per_buyer_limit)?;
        let [stock_key, _, _] = self.keys(sku);
        let opened: i64 = redis::Script::new(OPEN)
            .key(stock_key)
            .arg(stock)
            .arg(per_buyer_limit)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(opened == 1)
    }

    async fn take(
        &self,
        sku: &str,
        buyer: &str,
        quantity: u64,
        attempt: &str,
        now_ms: u64,
    ) -> Result<TakeOutcome, StockError> {
        validate_take(sku, buyer, quantity, attempt)?;
        let [stock, held, takes] = self.keys(sku);
        // The script's SHA-1 is computed once, not per attempt (this is the crowd's hot path).
        static TAKE_SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(TAKE));
        let (code, a, b): (i64, redis::Value, i64) = TAKE_SCRIPT
            .key(stock)
            .key(held)
            .key(takes)
            .arg(buyer)
            .arg(quantity)
            .arg(attempt)
            .arg(now_ms)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let number = |v: &redis::Value| -> Result<u64, StockError> {
            redis::from_redis_value::<u64>(v)
                .map_err(|e| StockError::Unavailable(format!("take script answered {v:?}: {e}")))
        };
        Ok(match code {
            1 => TakeOutcome::Taken {
                remaining: number(&a)?,
            },
            2 => {
                let text: String = redis::from_redis_value(&a).map_err(unavailable)?;
                TakeOutcome::Duplicate(parse_take(attempt, &text)?)
            }
            3 => TakeOutcome::OverLimit {
                held: number(&a)?,
                limit: b as u64,
            },
            4 => TakeOutcome::SoldOut {
                remaining: number(&a)?,
            },
            _ => return Err(StockError::UnknownSku(sku.to_owned())),
        })
    }

    async fn confirm(&self, sku: &str, attempt: &str) -> Result<Option<TakeState>, StockError> {
        let [_, _, takes] = self.keys(sku);
        let state: String = redis::Script::new(CONFIRM)
            .key(takes)
            .arg(attempt)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(match state.as_str() {
            "p" => Some(TakeState::Pending),
            "c" => Some(TakeState::Confirmed),
            "r" => Some(TakeState::Returned),
            _ => None,
        })
    }

    async fn give_back(&self, sku: &str, attempt: &str) -> Result<bool, StockError> {
        let [stock, held, takes] = self.keys(sku);
        let returned: i64 = redis::Script::new(GIVE_BACK)
            .key(stock)
            .key(held)
            .key(takes)
            .arg(attempt)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(returned == 1)
    }

    async fn pending(&self, sku: &str, taken_before_ms: u64) -> Result<Vec<Take>, StockError> {
        let [_, _, takes] = self.keys(sku);
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(takes)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        for (attempt, text) in all {
            let t = parse_take(&attempt, &text)?;
            if t.state == TakeState::Pending && t.taken_at_ms <= taken_before_ms {
                out.push(t);
            }
        }
        Ok(out)
    }

    async fn levels(&self, sku: &str) -> Result<StockLevels, StockError> {
        let [stock, held, _] = self.keys(sku);
        let mut conn = self.conn.clone();
        let (initial, remaining): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(&stock)
            .arg("initial")
            .arg("remaining")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let (Some(initial), Some(remaining)) = (initial, remaining) else {
            return Err(StockError::UnknownSku(sku.to_owned()));
        };
        let tallies: Vec<i64> = redis::cmd("HVALS")
            .arg(held)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(StockLevels {
            initial,
            remaining,
            held: tallies.into_iter().map(|h| h.max(0) as u64).sum(),
        })
    }

    /// `PING`, given [`PING_TIMEOUT`] to answer.
    async fn ping(&self) -> Result<(), StockError> {
        let mut conn = self.conn.clone();
        let ping = redis::cmd("PING");
        match tokio::time::timeout(PING_TIMEOUT, ping.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(StockError::Unavailable(format!(
                "no answer to PING within {} ms",
                PING_TIMEOUT.as_millis()
            ))),
        }
    }
}

/// How long [`RedisStock`]'s `ping` waits for Redis (2 s).
pub const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
