//! Hearing other processes' appends: a `LISTEN` on the channel every commit `pg_notify`s, raising
//! the published head so subscribers wake at once (they poll as a fallback).

use sqlx::postgres::PgListener;

use crate::{Duration, NOTIFY_CHANNEL};

/// Wakes subscribers on `pg_notify` from any process; reconnects after a failure.
pub(crate) async fn listen(url: String, head: eventfold_store_support::head::HeadSender) {
    loop {
        let result: Result<(), sqlx::Error> = async {
            let mut listener = PgListener::connect(&url).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            loop {
                let n = tokio::select! {
                    n = listener.recv() => n?,
                    () = head.closed() => return Ok(()), // the store was dropped
                };
                if let Ok(p) = n.payload().parse::<u64>() {
                    eventfold_store_support::head::advance(&head, p);
                }
            }
        }
        .await;
        if head.is_closed() {
            return; // the store was dropped
        }
        if let Err(e) = result {
            tracing::warn!(error = %e, "postgres listener lost; subscribers poll until it reconnects");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if head.is_closed() {
            return;
        }
    }
}
