//! `eventfold periods ...` and `eventfold exceptions ...`: period close per store and the
//! queue of postings a closed period holds (see `eventfold_domain::periods`). Every change is
//! an event with its actor (`--by`, default `admin:{$USER}`) and reason.

use anyhow::Context;
use chrono::Utc;
use clap::{Args, Subcommand};
use eventfold_app::periods::{PeriodChange, PeriodDesk, PeriodsView};
use eventfold_app::service::{CommandContext, Service};
use eventfold_core::tenant;
use eventfold_domain::periods::{
    parse_max_delay, ExceptionState, ExceptionView, Period, PeriodLength, DEFAULT_MAX_DELAY,
    SALES_EXCEPTIONS,
};

use super::keys::by;
use crate::context::Global;

/// The period subcommands.
#[derive(Debug, Subcommand)]
pub enum Periods {
    /// Switch period control on for a store: from `--from` on, each period soft-closes at its
    /// end plus the upload window (2 hours) and closes at its maximum delay.
    Enable(Enable),
    /// List a store's periods and their states (and seals).
    List(StoreArg),
    /// Soft-close an ended period: late postings are still applied, flagged `soft_closed`.
    SoftClose(Change),
    /// Reopen a soft-closed period.
    Reopen(Change),
    /// Close an ended period (final): later postings for it become exceptions. The close is
    /// sealed with the period's totals and the hash-chain head.
    Close(Change),
    /// Do now what the clock does every minute in `serve`: soft-close, close and seal every
    /// period whose time has come.
    Tick,
}

/// `periods enable`'s options.
#[derive(Debug, Args)]
pub struct Enable {
    #[command(flatten)]
    store: StoreArg,
    /// First controlled period: a month `YYYY-MM` (or a day `YYYY-MM-DD` with `--period day`).
    #[arg(long)]
    from: String,
    /// Period length: `month` or `day`.
    #[arg(long, default_value = "month")]
    period: String,
    /// Time after a period's end at which it closes by itself: `72h`, `5d`, `90m`.
    #[arg(long)]
    max_delay: Option<String>,
    /// Who, recorded in the event (default `admin:{$USER}`).
    #[arg(long)]
    by: Option<String>,
}

/// A store (also `calendar`'s).
#[derive(Debug, Args)]
pub struct StoreArg {
    /// Store id (`--store` is the store URL every command takes).
    #[arg(long = "store-id", id = "store_id")]
    pub(crate) store: String,
    /// The store's tenant.
    #[arg(long, default_value = tenant::DEFAULT)]
    tenant: String,
}

/// A change to one period.
#[derive(Debug, Args)]
pub struct Change {
    #[command(flatten)]
    store: StoreArg,
    /// The period: `YYYY-MM` (or `YYYY-MM-DD` for daily periods).
    period: String,
    /// Why (required).
    #[arg(long)]
    reason: String,
    /// Who, recorded in the event (default `admin:{$USER}`).
    #[arg(long)]
    by: Option<String>,
}

impl StoreArg {
    /// The store id scoped to its tenant.
    pub(crate) fn scoped(&self) -> anyhow::Result<String> {
        eventfold_domain::validate_id("--store-id", &self.store).map_err(anyhow::Error::msg)?;
        eventfold_domain::validate_id("--tenant", &self.tenant).map_err(anyhow::Error::msg)?;
        Ok(tenant::scope(&self.tenant, &self.store))
    }
}

fn print_view(global: &Global, view: &PeriodsView) -> anyhow::Result<()> {
    global.output().print(view, || {
        let s = &view.settings;
        let mut text = format!(
            "store {}: {} periods from {}, max delay {} h",
            s.store,
            match s.length {
                PeriodLength::Month => "monthly",
                PeriodLength::Day => "daily",
            },
            s.from,
            s.max_delay_seconds / 3600
        );
        for p in &view.periods {
            text += &format!("\n  {}  {}", p.period, p.state.as_str());
            if let Some(seal) = &p.seal {
                let totals: Vec<String> = seal
                    .totals
                    .iter()
                    .map(|t| {
                        format!(
                            "{} {} ({} orders, {} refunds)",
                            t.total, t.currency, t.orders, t.refunds
                        )
                    })
                    .collect();
                text += &format!(
                    "  sealed at position {} hash {}: {}",
                    seal.through_position,
                    seal.chain_hash,
                    if totals.is_empty() {
                        "no sales".into()
                    } else {
                        totals.join(", ")
                    }
                );
            }
        }
        text
    })
}

impl Periods {
    /// Runs the subcommand.
    ///
    /// # Errors
    /// Bad options, a refused change (named), the store failing.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let backend = global.open().await?;
        let desk = PeriodDesk::new(Service::new(backend.events.clone()));
        match self {
            Self::Enable(e) => {
                let store = e.store.scoped()?;
                let length = match e.period.as_str() {
                    "month" => PeriodLength::Month,
                    "day" => PeriodLength::Day,
                    other => anyhow::bail!("--period must be month or day, got {other:?}"),
                };
                let from = Period::parse(&e.from).map_err(|m| anyhow::anyhow!("--from: {m}"))?;
                anyhow::ensure!(
                    from.length == length,
                    "--from {} is not a {} (--period {})",
                    e.from,
                    e.period,
                    e.period
                );
                let max_delay = e
                    .max_delay
                    .as_deref()
                    .map(parse_max_delay)
                    .transpose()
                    .map_err(|m| anyhow::anyhow!("--max-delay: {m}"))?
                    .unwrap_or(DEFAULT_MAX_DELAY);
                let ctx = CommandContext::new(by(e.by)?);
                let view = desk.enable(&store, from, max_delay, &ctx).await?;
                print_view(global, &view)
            }
            Self::List(s) => {
                let store = s.scoped()?;
                let view = desk
                    .view(&store, Utc::now())
                    .await?
                    .with_context(|| format!("store {} has no period control", s.store))?;
                print_view(global, &view)
            }
            Self::SoftClose(c) => change(global, &desk, c, PeriodChange::SoftClose).await,
            Self::Reopen(c) => change(global, &desk, c, PeriodChange::Reopen).await,
            Self::Close(c) => change(global, &desk, c, PeriodChange::Close).await,
            Self::Tick => {
                // The clock walks the stores the `sales_periods` read model lists.
                backend
                    .projection_runner()
                    .catch_up(Some(eventfold_domain::periods::SALES_PERIODS), &|_, _| {})
                    .await?;
                let appended = desk.tick(backend.read_models.as_ref(), Utc::now()).await?;
                global
                    .output()
                    .print(&serde_json::json!({ "events_appended": appended }), || {
                        format!("{appended} period events appended")
                    })
            }
        }
    }
}

async fn change(
    global: &Global,
    desk: &PeriodDesk,
    c: Change,
    what: PeriodChange,
) -> anyhow::Result<()> {
    let store = c.store.scoped()?;
    let ctx = CommandContext::new(by(c.by)?);
    let view = desk
        .change(&store, &c.period, what, &c.reason, &ctx)
        .await?;
    print_view(global, &view)
}

/// The exception subcommands.
#[derive(Debug, Subcommand)]
pub enum Exceptions {
    /// List exceptions (newest last), optionally of one store and state.
    List(ListExceptions),
    /// Book an exception on today's business date (an open period), with a reason.
    Approve(Decide),
    /// Record an exception as not booked, with a reason.
    Reject(Decide),
}

/// `exceptions list`'s options.
#[derive(Debug, Args)]
pub struct ListExceptions {
    /// Only this store's.
    #[arg(long = "store-id", id = "store_id")]
    store: Option<String>,
    /// Only those in this state: open, approved, rejected.
    #[arg(long)]
    state: Option<String>,
    /// The tenant.
    #[arg(long, default_value = tenant::DEFAULT)]
    tenant: String,
}

/// `exceptions approve|reject`'s options.
#[derive(Debug, Args)]
pub struct Decide {
    /// The exception's id (the held event's id).
    id: String,
    /// Why (required).
    #[arg(long)]
    reason: String,
    /// The tenant.
    #[arg(long, default_value = tenant::DEFAULT)]
    tenant: String,
    /// Who, recorded in the event (default `admin:{$USER}`).
    #[arg(long)]
    by: Option<String>,
}

impl Exceptions {
    /// Runs the subcommand.
    ///
    /// # Errors
    /// Bad options, a refused decision (named), the store failing.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let backend = global.open().await?;
        match self {
            Self::List(l) => {
                let state = match l.state.as_deref() {
                    None => None,
                    Some("open") => Some(ExceptionState::Open),
                    Some("approved") => Some(ExceptionState::Approved),
                    Some("rejected") => Some(ExceptionState::Rejected),
                    Some(other) => {
                        anyhow::bail!("--state must be open, approved or rejected, got {other:?}")
                    }
                };
                // Caught up first, so the list holds every exception raised so far.
                backend
                    .projection_runner()
                    .catch_up(Some(SALES_EXCEPTIONS), &|_, _| {})
                    .await?;
                let list = eventfold_app::periods::list_exceptions(
                    backend.read_models.as_ref(),
                    &l.tenant,
                    l.store.as_deref(),
                    state,
                )
                .await?;
                global.output().print(&list, || exceptions_text(&list))
            }
            Self::Approve(d) => decide(global, &backend, d, true).await,
            Self::Reject(d) => decide(global, &backend, d, false).await,
        }
    }
}

fn exceptions_text(list: &[ExceptionView]) -> String {
    if list.is_empty() {
        return "no exceptions".into();
    }
    list.iter()
        .map(|e| {
            format!(
                "{}  {}  store {}  {} ({})  {} {}  {:?}{}",
                e.id,
                e.state.as_str(),
                e.held.store,
                e.held.date,
                e.held.period,
                e.held.amount,
                e.held.currency,
                e.held.hold,
                e.decision_reason
                    .as_ref()
                    .map(|r| format!("  by {}: {r}", e.decided_by.as_deref().unwrap_or("?")))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn decide(
    global: &Global,
    backend: &eventfold_app::backend::Backend,
    d: Decide,
    approve: bool,
) -> anyhow::Result<()> {
    let desk = PeriodDesk::new(Service::new(backend.events.clone()));
    let ctx = CommandContext::new(by(d.by)?);
    eventfold_domain::validate_id("exception id", &d.id).map_err(anyhow::Error::msg)?;
    let id = tenant::scope(&d.tenant, &d.id);
    desk.decide(&id, approve, &d.reason, &ctx).await?;
    let verb = if approve { "approved" } else { "rejected" };
    global
        .output()
        .print(&serde_json::json!({ "id": d.id, "state": verb }), || {
            format!("exception {} {verb}", d.id)
        })
}
