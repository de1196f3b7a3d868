//! The hash chain checked by the server itself: `serve` walks the whole log every
//! `--verify-every` (6 h by default, and once at start) and on request, keeps the last result
//! for the console and `GET /chain`, and publishes it as metrics, so a broken link pages someone
//! instead of waiting for the next manual `eventfold verify --all`.
//!
//! Metrics: `eventfold_chain_verify_runs_total{result="ok"|"broken"|"error"}`,
//! `eventfold_chain_verify_last_ok` (1 when the last walk found every link intact, 0 when it
//! found a broken one), `eventfold_chain_verify_last_run_timestamp_seconds` (Unix time the last
//! walk finished) and `eventfold_chain_verify_events_checked`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventfold_core::{EventStore, StoreError};
use serde::Serialize;

use super::verify::{verify, Target, TrustedAnchor, VerifyReport};

/// How often `serve` walks the chain unless told otherwise: every 6 hours.
pub const DEFAULT_VERIFY_EVERY: Duration = Duration::from_secs(6 * 3600);

/// One walk of the whole chain, as the server keeps it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChainCheck {
    /// When the walk finished (UTC).
    pub finished_at: DateTime<Utc>,
    /// True when every link held.
    pub ok: bool,
    /// Events whose links were checked.
    pub events_checked: u64,
    /// Wall time of the walk, ms.
    pub elapsed_ms: f64,
    /// The last position checked.
    pub head_position: Option<u64>,
    /// The first link that does not hold, as `eventfold verify` names it.
    pub first_broken: Option<String>,
    /// The signed anchor the walk checked the log against (`serve --anchor`), if any.
    pub anchor: Option<AnchorState>,
}

/// A signed anchor as the last walk found it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AnchorState {
    /// The anchored position.
    pub position: u64,
    /// When it was signed (UTC).
    pub signed_at: DateTime<Utc>,
    /// True when the log still holds the anchored hash at that position (it extends the
    /// signed head); false means the log was rewritten or shortened.
    pub extended: bool,
}

/// Walks the chain on a timer and on request (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct ChainWatch {
    store: Arc<dyn EventStore>,
    last: Arc<Mutex<Option<ChainCheck>>>,
    /// Held while a walk runs: a request during one waits for it rather than starting another.
    walking: Arc<tokio::sync::Mutex<()>>,
    /// A signed anchor every walk checks the log against.
    anchor: Option<Arc<TrustedAnchor>>,
}

impl ChainWatch {
    /// A watch over `store` that has not walked yet.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            last: Arc::default(),
            walking: Arc::default(),
            anchor: None,
        }
    }

    /// Also checks, on every walk, that the log still extends `anchor` (an anchor file signed
    /// by `eventfold anchor sign`, its signature already checked): a log rewritten or shortened
    /// below the anchored head counts as broken.
    #[must_use]
    pub fn with_anchor(mut self, anchor: TrustedAnchor) -> Self {
        self.anchor = Some(Arc::new(anchor));
        self
    }

    /// The last walk's result, if one has finished since the server started.
    pub fn last(&self) -> Option<ChainCheck> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// Walks the whole chain now (after any walk already running) and records the result.
    ///
    /// # Errors
    /// The store cannot be read (counted as `result="error"`; the last result stays).
    pub async fn run_once(&self) -> Result<ChainCheck, StoreError> {
        let _walking = self.walking.lock().await;
        match verify(
            self.store.clone(),
            &Target::All,
            self.anchor.as_deref(),
            &|_| {},
        )
        .await
        {
            Ok(report) => Ok(self.record(&report)),
            Err(e) => {
                metrics::counter!("eventfold_chain_verify_runs_total", "result" => "error")
                    .increment(1);
                Err(e)
            }
        }
    }

    fn record(&self, report: &VerifyReport) -> ChainCheck {
        let check = ChainCheck {
            finished_at: Utc::now(),
            ok: report.ok,
            events_checked: report.events_checked,
            elapsed_ms: report.elapsed_ms,
            head_position: report.head.as_ref().map(|h| h.position),
            first_broken: report.first_broken.as_ref().map(ToString::to_string),
            anchor: report.anchor.as_ref().map(|a| AnchorState {
                position: a.position,
                signed_at: a.signed_at,
                extended: a.extended,
            }),
        };
        let result = if check.ok { "ok" } else { "broken" };
        metrics::counter!("eventfold_chain_verify_runs_total", "result" => result).increment(1);
        metrics::gauge!("eventfold_chain_verify_last_ok").set(if check.ok { 1.0 } else { 0.0 });
        metrics::gauge!("eventfold_chain_verify_last_run_timestamp_seconds")
            .set(check.finished_at.timestamp_millis() as f64 / 1000.0);
        metrics::gauge!("eventfold_chain_verify_events_checked").set(check.events_checked as f64);
        if let Some(broken) = &check.first_broken {
            tracing::error!(%broken, "the hash chain does not hold");
        }
        if let Ok(mut last) = self.last.lock() {
            *last = Some(check.clone());
        }
        check
    }

    /// Walks now and then every `every` until `stop` completes; a walk that fails to read the
    /// store is logged and tried again at the next turn.
    pub async fn run(&self, every: Duration, stop: impl std::future::Future<Output = ()>) {
        for result in ["ok", "broken", "error"] {
            metrics::counter!("eventfold_chain_verify_runs_total", "result" => result).increment(0);
        }
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                walked = self.run_once() => if let Err(e) = walked {
                    tracing::warn!(error = %crate::error_chain(&e), "verifying the hash chain failed; trying again at the next turn");
                },
                () = &mut stop => return,
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = &mut stop => return,
            }
        }
    }
}
