//! `eventfold state STREAM`: an aggregate's state, now or as of a time or version.

use anyhow::{bail, Context};
use clap::Args;
use eventfold_app::service::{AsOf, Service};
use eventfold_core::{Aggregate, Replayed};
use eventfold_domain::account::Account;
use eventfold_domain::inventory::Inventory;
use eventfold_domain::order::Order;
use eventfold_domain::payment::Payment;
use serde::Serialize;

use crate::context::Global;

/// `state`'s arguments.
#[derive(Debug, Args)]
pub struct State {
    /// Stream id, e.g. order-42 or account-7.
    stream: String,
    /// RFC 3339 instant: fold the events whose event time is at or before it.
    #[arg(long, conflicts_with = "version")]
    as_of: Option<String>,
    /// Fold the events up to this stream version.
    #[arg(long)]
    version: Option<u64>,
}

#[derive(Serialize)]
struct StateOut<A> {
    version: u64,
    state: A,
}

impl State {
    /// Prints the state as JSON (`{version, state}`), always.
    ///
    /// # Errors
    /// A bad time or version, a stream that is not `category-id` or has no events in range, the
    /// store failing.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let stream = self.stream;
        let as_of = match (self.as_of, self.version) {
            (Some(t), _) => AsOf::Time(
                chrono::DateTime::parse_from_rfc3339(&t)
                    .with_context(|| {
                        format!(
                            "--as-of {t:?} is not an RFC 3339 time such as 1997-03-01T00:00:00Z"
                        )
                    })?
                    .with_timezone(&chrono::Utc),
            ),
            (None, Some(0)) => bail!("--version must be at least 1"),
            (None, Some(v)) => AsOf::Version(v),
            (None, None) => AsOf::Latest,
        };
        let service = Service::new(global.open().await?.events);
        // `acme/order-42`: tenant `acme`, category `order`, aggregate id `acme/42`.
        let (tenant, unscoped) = eventfold_core::tenant::split(&stream);
        let (category, id) = unscoped.split_once('-').with_context(|| {
            format!("stream {stream:?} must look like category-id, e.g. order-42 or acme/order-42")
        })?;
        let id = &eventfold_core::tenant::scope(tenant, id);
        let state = match category {
            "order" => state_json::<Order>(&service, id, as_of).await?,
            "account" => state_json::<Account>(&service, id, as_of).await?,
            "inventory" => state_json::<Inventory>(&service, id, as_of).await?,
            "payment" => state_json::<Payment>(&service, id, as_of).await?,
            other => bail!(
                "unknown stream category {other:?}: use order-, account-, inventory- or payment-"
            ),
        };
        let state = state.with_context(|| format!("stream {stream} has no events in range"))?;
        println!("{}", serde_json::to_string_pretty(&state)?);
        Ok(())
    }
}

async fn state_json<A: Aggregate + Serialize>(
    service: &Service,
    id: &str,
    as_of: AsOf,
) -> anyhow::Result<Option<serde_json::Value>> {
    let loaded: Option<Replayed<A>> = service.load::<A>(id, as_of).await?;
    let out = loaded.map(|r| StateOut {
        version: r.version,
        state: r.state,
    });
    Ok(out.map(serde_json::to_value).transpose()?)
}
