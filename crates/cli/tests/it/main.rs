//! Integration tests of the eventfold application: HTTP API (in process and over a socket), the
//! CDNOW import against the raw file, the CLI, durability under kill -9, and replay properties.

mod accounts;
mod archive;
mod chain;
mod cli;
mod corrections;
mod deadlines;
mod durability;
mod flash_sale;
mod import;
mod inbox;
mod lanes;
mod notifications;
mod order_notifications;
mod orders;
mod outage;
mod projections;
mod relay_kill;
mod replay;
mod sagas;
mod shutdown;
mod simulate;
mod snapshots;
mod upcasting;
