//! The projections eventfold runs, in one list: `serve`'s runner, `projections rebuild` and
//! `projections status`, the import and the corrections all register the same ones.
//!
//! | projection | key | clock |
//! |---|---|---|
//! | `order_summary` | order id | – |
//! | `balance_by_account` | account id | – |
//! | `daily_sales_by_store` | `store\|YYYY-MM-DD\|currency` | event time (business date), with what came late; version 1 dates a sale by its payment, version 2 by its order's placement |
//! | `sales_corrections` | `store\|YYYY-MM-DD\|cause event id` | business date (correction notices: [`crate::reporting`]) |
//! | `real_time_sales` | `store\|YYYY-MM-DDTHH:00:00Z\|currency` | ingest time |
//! | `payment_deadlines` | creation time and order id | event time (the unpaid-order timer's index) |
//! | `sagas_in_flight` | order id | – (payment sagas still running) |
//! | `api_keys` | key id | – (the keys servers authenticate with: [`crate::identity`]) |
//!
//! Every key is scoped to its tenant (`{tenant}/{key}`; see [`eventfold_core::tenant`]).

use eventfold_core::ProjectionRunner;
use eventfold_domain::projections::{
    BalanceByAccountProjection, OrderSummaryProjection, PaymentDeadlinesProjection,
    SagasInFlightProjection, SalesClock, SalesProjection,
};

use crate::backend::Backend;

impl Backend {
    /// A projection runner over this store with every projection eventfold runs registered (the
    /// table in [`crate::projections`]).
    pub fn projection_runner(&self) -> ProjectionRunner {
        register_all(ProjectionRunner::new(
            self.events.clone(),
            self.read_models.clone(),
        ))
    }
}

/// `runner` with every projection eventfold runs registered (the table in
/// [`crate::projections`]), as `serve` runs them.
pub fn register_all(runner: ProjectionRunner) -> ProjectionRunner {
    runner
        .register(OrderSummaryProjection)
        .register(BalanceByAccountProjection)
        .register(SalesProjection(SalesClock::EventTimeDaily))
        .register(SalesProjection(SalesClock::PlacedTimeDaily))
        .register(SalesProjection(SalesClock::IngestTimeHourly))
        .register(eventfold_domain::reporting::SalesCorrectionsProjection)
        .register(eventfold_domain::periods::SalesExceptionsProjection)
        .register(eventfold_domain::periods::SalesPeriodsProjection)
        .register(PaymentDeadlinesProjection)
        .register(SagasInFlightProjection)
        .register(eventfold_domain::identity::ApiKeysProjection)
}
