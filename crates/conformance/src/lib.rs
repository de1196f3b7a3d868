//! The event-store conformance suite: every eventfold backend runs it unchanged.
//!
//! A backend's test binary calls [`store_conformance!`] with an async factory that returns a fresh,
//! empty store and a guard that keeps its resources (a temp dir, a database) alive:
//!
//! ```ignore
//! async fn fresh() -> (std::sync::Arc<MyStore>, Box<dyn std::any::Any + Send>) { ... }
//! eventfold_conformance::store_conformance!(fresh);
//! ```
//!
//! It expands to one `#[tokio::test]` per case in [`cases`], so each failure is reported by name.
//! The 24 cases cover concurrency conflicts, ordering, reads from any position, checkpoint resume,
//! idempotent retries, projection commits, fencing tokens and the hash chain.

pub mod cases;

/// Expands to one test per conformance case, each on a fresh store from `$factory`.
#[macro_export]
macro_rules! store_conformance {
    ($factory:path) => {
        $crate::store_conformance!(@cases $factory;
            no_stream_then_conflict,
            exact_version_and_conflict,
            any_version_always_appends,
            failed_append_writes_nothing,
            invalid_requests_are_refused,
            read_stream_from_every_version,
            replay_read_matches_read_stream,
            read_all_from_every_position,
            envelope_round_trips,
            concurrent_no_stream_has_one_winner,
            concurrent_retries_on_one_stream_keep_every_version,
            concurrent_writers_to_many_streams,
            retried_append_is_idempotent,
            concurrent_identical_appends_write_once,
            idempotency_key_is_recorded_once,
            append_many_results_are_independent,
            checkpoint_resume,
            subscription_wakes_on_append,
            projection_commit_checks_checkpoint,
            ranges_of_every_size_read_whole,
            docs_and_stream_version_agree_with_separate_reads,
            projection_replace_and_retire,
            fencing_token_refuses_a_stale_holder,
            appends_keep_one_hash_chain
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let (store, _guard) = $factory().await;
                $crate::cases::$case(store).await;
            }
        )*
    };
}
