//! Integration tests of the HTTP API, in process (`tower::ServiceExt::oneshot` over
//! `eventfold_http::testing::TestApp`) and over a real socket with the runtime's workers: accounts,
//! orders and their audit timelines, the sales views after the real CDNOW import, flash sales,
//! payment callbacks and sagas, the unpaid-order timeout, projections and metrics, upcasting, the
//! prize inbox, the exactly-once order notifications, a PostgreSQL outage, and tenants that never
//! see each other (a property over random command sequences), and the routes the web console
//! reads.

mod accounts;
mod auth;
mod calendars;
mod console;
mod deadlines;
mod flash_sale;
mod import;
mod inbox;
mod jwt;
mod late_sales;
mod order_notifications;
mod orders;
mod outage;
mod periods;
mod projections;
mod sagas;
mod tenant_property;
mod trending;
mod upcasting;
mod versions;
