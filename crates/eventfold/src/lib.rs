//! The eventfold application: service layer, HTTP API, CDNOW import and benchmarks. The binary in
//! `main.rs` is a thin CLI over these modules.
//!
//! - [`backend`]: opens a store from a URL (`sqlite://PATH`).
//! - [`service`]: runs commands against aggregates (load, handle, append with the expected
//!   version, retry on conflict, idempotency keys), loads state as of a version or time, builds
//!   audit timelines.
//! - [`http`]: the axum router (the only module that knows HTTP).
//! - [`import`]: the CDNOW purchase-log import.
//! - [`bench`]: `bench append` and `bench load`.
//! - [`corrections`]: `correct interest`, corrections by replay (M7).
//! - [`verify`]: `verify` and `anchor sign` over the hash chain (M6).
//! - [`flash_sale`], [`deadlines`], [`payments`], [`sagas`]: the flash-sale purchase path, the
//!   unpaid-order timeout, the payment provider and its signed callbacks, the order and payment
//!   sagas (M17-M22).

pub mod archive;
pub mod backend;
pub mod bench;
pub mod corrections;
pub mod deadlines;
pub mod flash_sale;
pub mod http;
pub mod import;
pub mod inbox;
pub mod notifications;
pub mod order_notifications;
pub mod payments;
pub mod sagas;
pub mod service;
pub mod simulate;
pub mod verify;
