//! What eventfold's store backends (`eventfold-sqlite`, `eventfold-postgres`) share beyond the
//! traits of `eventfold-core`: code that needs a runtime or a database's integer types, which core
//! must not know. Like sqlx-core for sqlx's drivers, it is written once here and never knows a
//! particular database.
//!
//! - [`head`]: the log head a store publishes after each commit, and the wait behind
//!   `EventStore::wait_for_append`.
//! - [`sql_limit`], [`sql_int`]: counts and positions as SQL `BIGINT`s.

pub mod head;

/// `max_count` as a SQL `LIMIT` (a `BIGINT`), saturating at `i64::MAX` (no limit in effect).
pub fn sql_limit(max_count: usize) -> i64 {
    i64::try_from(max_count).unwrap_or(i64::MAX)
}

/// A position or version as a SQL `BIGINT`, saturating at `i64::MAX` (beyond any stored one).
pub fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_saturate_instead_of_wrapping() {
        assert_eq!(sql_limit(10), 10);
        assert_eq!(sql_limit(usize::MAX), i64::MAX);
        assert_eq!(sql_int(u64::MAX), i64::MAX);
        assert_eq!(sql_int(7), 7);
    }
}
