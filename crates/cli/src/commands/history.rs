//! `eventfold history STREAM`: a stream's audit timeline.

use anyhow::bail;
use clap::Args;
use eventfold_app::service::{timeline, Service};
use eventfold_domain::account::Account;
use eventfold_domain::inventory::Inventory;
use eventfold_domain::order::Order;
use eventfold_domain::payment::Payment;

use crate::context::Global;

/// `history`'s arguments.
#[derive(Debug, Args)]
pub struct History {
    /// Stream id, e.g. order-42 or account-7.
    stream: String,
}

impl History {
    /// Prints who did what to the stream, when, and what changed.
    ///
    /// # Errors
    /// An empty stream, an unknown category, an event that does not decode, the store failing.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let stream = self.stream;
        let service = Service::new(global.open().await?.events);
        let events = service.read_stream(&stream).await?;
        if events.is_empty() {
            bail!("stream {stream} has no events");
        }
        let entries = match eventfold_core::envelope::stream_category(&stream) {
            "order" => timeline::<Order>(&events)?,
            "account" => timeline::<Account>(&events)?,
            "inventory" => timeline::<Inventory>(&events)?,
            "payment" => timeline::<Payment>(&events)?,
            other => bail!(
                "unknown stream category {other:?}: use order-, account-, inventory- or payment-"
            ),
        };
        global.output().print(&entries, || {
            entries
                .iter()
                .map(|e| {
                    format!(
                        "v{:<4} {}  {:<28} {:<22} {}{}",
                        e.version,
                        e.event_time.to_rfc3339(),
                        e.actor,
                        e.event_type,
                        e.change,
                        e.reason
                            .as_ref()
                            .map(|r| format!("  reason: {r}"))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
    }
}
