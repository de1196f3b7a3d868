//! `eventfold calendar ...`: a store's business calendar (time zone and cutoff; see
//! `eventfold_app::calendars`). Orders placed after a change record the new calendar; earlier
//! orders keep theirs.

use clap::{Args, Subcommand};
use eventfold_app::calendars::StoreCalendars;
use eventfold_app::service::{CommandContext, Service};
use eventfold_domain::reporting::{BusinessCalendar, DEFAULT_CUTOFF_MINUTES};

use super::keys::by;
use super::periods::StoreArg;
use crate::context::Global;

/// The calendar subcommands.
#[derive(Debug, Subcommand)]
pub enum Calendar {
    /// Show a store's calendar (the default, UTC with a 2-hour cutoff, when none was set).
    Show(StoreArg),
    /// Set a store's calendar for orders placed from now on.
    Set(Set),
}

/// `calendar set`'s options.
#[derive(Debug, Args)]
pub struct Set {
    #[command(flatten)]
    store: StoreArg,
    /// IANA time zone of the store's business days, e.g. `Europe/Berlin`.
    #[arg(long)]
    zone: String,
    /// How long after a day ends (local midnight) it is reported: `2h`, `90m`, `1d`.
    #[arg(long)]
    cutoff: Option<String>,
    /// Who, recorded in the event (default `admin:{$USER}`).
    #[arg(long)]
    by: Option<String>,
}

fn print(global: &Global, store: &str, calendar: Option<BusinessCalendar>) -> anyhow::Result<()> {
    let c = calendar.unwrap_or_default();
    let json = serde_json::json!({
        "store": store,
        "zone": c.zone.name(),
        "cutoff_minutes": c.cutoff_minutes,
        "set": calendar.is_some(),
    });
    global.output().print(&json, || {
        format!(
            "store {store}: business days in {}, each reported {} minutes after it ends{}",
            c.zone.name(),
            c.cutoff_minutes,
            if calendar.is_none() { " (default)" } else { "" }
        )
    })
}

impl Calendar {
    /// Runs the subcommand.
    ///
    /// # Errors
    /// Bad options (named), the store failing.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let backend = global.open().await?;
        let calendars = StoreCalendars::new(Service::new(backend.events.clone()));
        match self {
            Self::Show(s) => {
                let calendar = calendars.of(&s.scoped()?).await?;
                print(global, &s.store, calendar)
            }
            Self::Set(s) => {
                let cutoff = s
                    .cutoff
                    .as_deref()
                    .map(BusinessCalendar::parse_cutoff)
                    .transpose()
                    .map_err(|m| anyhow::anyhow!("--cutoff: {m}"))?
                    .unwrap_or(DEFAULT_CUTOFF_MINUTES);
                let calendar = BusinessCalendar::new(&s.zone, cutoff)
                    .map_err(|m| anyhow::anyhow!("--zone/--cutoff: {m}"))?;
                let ctx = CommandContext::new(by(s.by)?);
                calendars.set(&s.store.scoped()?, calendar, &ctx).await?;
                print(global, &s.store.store, Some(calendar))
            }
        }
    }
}
