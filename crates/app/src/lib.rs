//! eventfold's application layer, between the pure domain (`eventfold-domain`) and the ways in
//! (the HTTP API in `eventfold-http`, the CLI in `eventfold`). It knows no HTTP server and no
//! command line.
//!
//! - [`backend`]: opens a store from its URL (`sqlite://PATH` or `postgres://...`).
//! - [`projections`]: the projections eventfold runs, registered on one runner.
//! - [`service`]: runs commands against aggregates through per-stream lanes (load, handle, append
//!   with the expected version, retry on conflict, idempotency keys), loads state as of a version
//!   or an event time, builds audit timelines, keeps snapshots.
//! - [`identity`]: principals, API keys and the cached key registry requests authenticate with.
//! - [`explain`]: which events produced a day's total in the daily sales view, by the counting
//!   version's own code.
//! - [`health`]: readiness (every configured dependency and the read models' freshness) and the
//!   gauges measured on a timer (sagas stuck, consumer lag at the broker, dead letters).
//! - [`runtime`]: what `eventfold serve` runs besides its HTTP listener, started in one place
//!   ([`runtime::Runtime::start`]) and stopped together (a cancellation token and a task tracker).
//! - [`shop`]: the shop's workflows: the flash-sale purchase path, the unpaid-order timeout, the
//!   payment provider port and its signed callbacks.
//! - [`sagas`]: the order saga by choreography and the payment saga by orchestration.
//! - [`integrity`]: the hash-chain walk (`verify`), signed anchors, and the cold archive.
//! - [`corrections`]: corrections by replay (`correct interest`).
//! - [`import`]: the CDNOW purchase-log import and store uploads.
//! - [`periods`]: period close per store (the clock's worker, seals, `verify --period`) and
//!   the exception queue's decisions.
//! - [`reporting`]: the correction notifier (a durable notice for every late sale or refund).
//! - [`sales_windows`]: the windows worker (demand per SKU in event-time windows with a grace
//!   period, and a durable correction for every record after it) and the trending query.
//! - [`messaging`]: the handlers behind the Kafka consumers (the prize inbox, the notification
//!   sink, the exactly-once order-notification transform).

pub mod backend;
pub mod calendars;
pub mod corrections;
pub mod explain;
pub mod health;
pub mod identity;
pub mod import;
pub mod integrity;
pub mod messaging;
pub mod periods;
pub mod projections;
pub mod reporting;
pub mod runtime;
pub mod sagas;
pub mod sales_windows;
pub mod service;
pub mod shop;
pub mod views;

/// `e` and its sources, joined by `: `, for a log line (error messages keep one level each; the
/// chain is logged, never sent to a client).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
