//! Integration tests of the application layer without HTTP: the service's per-stream lanes under
//! concurrency, replay properties (proptest), and the notification sink over a real broker and
//! both stores.

mod lanes;
mod notifications;
mod replay;

/// The test broker's bootstrap address (`EVENTFOLD_TEST_KAFKA`, set by `scripts/test`).
///
/// # Panics
/// When it is not set, saying how to get one.
pub fn broker() -> String {
    std::env::var("EVENTFOLD_TEST_KAFKA").expect(
        "EVENTFOLD_TEST_KAFKA is not set: run the tests through scripts/test, which starts a Tansu broker",
    )
}
