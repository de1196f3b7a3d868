//! Tenant-scoped ids (seed case #18: many shops on one store, each blind to the others).
//!
//! A tenant's data is told apart by its ids: an aggregate id, a stream id, an idempotency key or a
//! read-model key of tenant `T` is written `T/{id}` everywhere inside eventfold (order `42` of
//! tenant `acme` is `acme/42`, its stream `acme/order-42`, its summary's key `acme/42`). The [`DEFAULT`] tenant's ids
//! carry no prefix, so a store written before tenancy existed opens unchanged as tenant
//! `default`. Ids from outside may not hold `/` (see `eventfold_domain::validate_id`), so no
//! caller can name another tenant's id, and a query by a scoped id or key prefix filters by
//! tenant in the store query itself.
//!
//! Every event also records its tenant in its envelope (`tenant_id`), which the PostgreSQL
//! row-level security policies and the relay's partition key read.
//!
//! A second fence holds reads made for one tenant: code run inside [`fenced`] (the HTTP server
//! runs every `GET` so, for its principal's tenant) has [`fence`] set, and a store that can
//! enforce it does so below the query: the PostgreSQL store then reads as a role that
//! row-level security policies confine to that tenant's events and read-model rows, so a query
//! that forgot the tenant filter still returns nothing of another tenant. (The SQLite store,
//! one file per install, relies on the scoped ids alone.)

use std::future::Future;

tokio::task_local! {
    static FENCE: String;
}

/// Runs `f` with reads fenced to `tenant` (see the module docs): every store read `f` awaits,
/// in the same task, sees only that tenant's rows where the store enforces it.
pub async fn fenced<F: Future>(tenant: &str, f: F) -> F::Output {
    FENCE.scope(tenant.to_owned(), f).await
}

/// The tenant the current task's reads are fenced to, if [`fenced`] set one.
#[must_use]
pub fn fence() -> Option<String> {
    FENCE.try_with(Clone::clone).ok()
}

/// The tenant of a store with a single tenant, and of every id without a prefix.
pub const DEFAULT: &str = "default";

/// The separator between a tenant and an id.
pub const SEPARATOR: char = '/';

/// `id` scoped to `tenant`: `{tenant}/{id}`, or `id` unchanged for [`DEFAULT`].
#[must_use]
pub fn scope(tenant: &str, id: &str) -> String {
    if tenant == DEFAULT {
        id.to_owned()
    } else {
        format!("{tenant}{SEPARATOR}{id}")
    }
}

/// The tenant and the unscoped id of a scoped id (the inverse of [`scope`]): `acme/42` gives
/// `("acme", "42")`, `42` gives `("default", "42")`.
#[must_use]
pub fn split(scoped: &str) -> (&str, &str) {
    scoped.split_once(SEPARATOR).unwrap_or((DEFAULT, scoped))
}

/// How many partition buckets each tenant's streams are hashed into (seed case #18).
pub const PARTITION_BUCKETS: u32 = 128;

/// The partition key of a stream (seed case #18): `{tenant}:{bucket}`, the bucket being a stable
/// hash (the first 8 bytes of SHA-256, big-endian) of the stream's unscoped id modulo
/// [`PARTITION_BUCKETS`]: `acme/order-42` -> `acme:17`. Every event of a stream has the same
/// key, so whatever is ordered by the key (a Kafka partition, a relay shard) keeps the stream's
/// order; a hot stream fills one bucket of its tenant, never the tenant's others or another
/// tenant's. Keys of different tenants never collide.
#[must_use]
pub fn partition_key(stream_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let (tenant, stream) = split(stream_id);
    let digest = Sha256::digest(stream.as_bytes());
    let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    format!("{tenant}:{}", n % u64::from(PARTITION_BUCKETS))
}

/// The tenant of a scoped id (see [`split`]).
#[must_use]
pub fn of(scoped: &str) -> &str {
    split(scoped).0
}

/// The unscoped id of a scoped id (see [`split`]).
#[must_use]
pub fn unscoped(scoped: &str) -> &str {
    split(scoped).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_are_unchanged_and_others_round_trip() {
        assert_eq!(scope(DEFAULT, "42"), "42");
        assert_eq!(scope("acme", "42"), "acme/42");
        assert_eq!(split("acme/42"), ("acme", "42"));
        assert_eq!(split("42"), (DEFAULT, "42"));
        assert_eq!(split(&scope("acme", "a|b")), ("acme", "a|b"));
        assert_eq!(of("tenant-a/order-4/2"), "tenant-a");
        assert_eq!(unscoped("tenant-a/order-4/2"), "order-4/2");
    }

    #[test]
    fn partition_keys_are_the_tenant_and_a_stable_bucket() {
        let a = partition_key("acme/order-42");
        let (tenant, bucket) = a.split_once(':').unwrap();
        assert_eq!(tenant, "acme");
        assert!(bucket.parse::<u32>().unwrap() < PARTITION_BUCKETS);
        assert_eq!(a, partition_key("acme/order-42"), "stable");
        // The same stream in another tenant: the same bucket, another key.
        assert_eq!(
            partition_key("order-42"),
            format!("default:{bucket}"),
            "the bucket hashes the unscoped id"
        );
        // Streams spread over the buckets.
        let buckets: std::collections::HashSet<String> = (0..2_000)
            .map(|i| partition_key(&format!("acme/order-{i}")))
            .collect();
        assert!(buckets.len() > 120, "{} buckets used", buckets.len());
    }

    #[tokio::test]
    async fn the_fence_holds_inside_its_scope_only() {
        assert_eq!(fence(), None);
        let inside = fenced("acme", async { fence() }).await;
        assert_eq!(inside.as_deref(), Some("acme"));
        assert_eq!(fence(), None);
    }
}
