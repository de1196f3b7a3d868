//! Stores' business calendars (time zone and cutoff, see
//! [`eventfold_domain::reporting::BusinessCalendar`]): set with [`StoreCalendars::set`] (an
//! event in `storecalendar-{store}` with its actor) and read by everything that places an order,
//! which records the calendar in `OrderCreated` so that every sales view dates the order's sales
//! by it.
//!
//! Reads go through a small cache: a store's calendar is loaded from its stream at most once a
//! second per process, so a change made by another server applies to orders placed there within
//! about a second (a change made here, at once).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use eventfold_core::StoreError;
use eventfold_domain::reporting::{BusinessCalendar, StoreCalendar, StoreCalendarCommand};

use crate::service::{version_render, AsOf, CommandContext, Service, ServiceError};

/// How long a cached calendar is used before its stream is read again.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// Store id -> (when it was read, the calendar then).
type Cache = HashMap<String, (Instant, Option<BusinessCalendar>)>;

/// The calendars of stores, cached (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct StoreCalendars {
    service: Service,
    cache: Arc<RwLock<Cache>>,
}

impl StoreCalendars {
    /// Calendars read and set through `service`.
    pub fn new(service: Service) -> Self {
        Self {
            service,
            cache: Arc::default(),
        }
    }

    /// The calendar set for `store` (scoped to its tenant), `None` when none was set (the
    /// default: UTC days reported at D+1 02:00).
    ///
    /// # Errors
    /// Store failures.
    pub async fn of(&self, store: &str) -> Result<Option<BusinessCalendar>, StoreError> {
        if let Some((at, calendar)) = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(store)
        {
            if at.elapsed() < FRESH_FOR {
                return Ok(*calendar);
            }
        }
        let calendar = self
            .service
            .load::<StoreCalendar>(store, AsOf::Latest)
            .await?
            .and_then(|r| r.state.calendar);
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(store.to_owned(), (Instant::now(), calendar));
        Ok(calendar)
    }

    /// The calendar `store`'s orders are placed in: [`StoreCalendars::of`], or the default.
    ///
    /// # Errors
    /// Store failures.
    pub async fn effective(&self, store: &str) -> Result<BusinessCalendar, StoreError> {
        Ok(self.of(store).await?.unwrap_or_default())
    }

    /// Sets `store`'s calendar for orders placed from now on (recorded with `ctx`'s actor);
    /// setting the same calendar again appends nothing.
    ///
    /// # Errors
    /// Store failures.
    pub async fn set(
        &self,
        store: &str,
        calendar: BusinessCalendar,
        ctx: &CommandContext,
    ) -> Result<(), ServiceError> {
        self.service
            .execute::<StoreCalendar>(
                store,
                StoreCalendarCommand::Set(calendar),
                ctx,
                version_render(200),
            )
            .await?;
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(store.to_owned(), (Instant::now(), Some(calendar)));
        Ok(())
    }
}
