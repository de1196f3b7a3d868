//! Integration tests of the application layer without HTTP: the service's per-stream lanes under
//! concurrency, replay properties (proptest), and the notification sink over a real broker and
//! both stores.

mod lanes;
mod notifications;
mod replay;
