//! `eventfold simulate`: simulations that drive a real server and print a report.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use eventfold_bench::simulate::{run, SimConfig};

use crate::context::Global;

/// The simulations.
#[derive(Debug, Subcommand)]
pub enum Simulate {
    /// A crowd buys a flash sale over HTTP from `eventfold serve` (started as a child process on
    /// --store, with --redis and --kafka-brokers passed on), paying through a sandbox payment
    /// provider; prints what must hold (oversold, over-limit buyers, double charges, unpaid
    /// orders not cancelled, stuck sagas, stock reconciled) and the accept path's speed.
    FlashSale(FlashSale),
}

/// `simulate flash-sale`'s options.
#[derive(Debug, Args)]
pub struct FlashSale {
    /// Units for sale.
    #[arg(long, default_value_t = 1000)]
    stock: u64,
    /// Distinct buyers.
    #[arg(long, default_value_t = 50_000)]
    buyers: u64,
    /// Purchase attempts.
    #[arg(long, default_value_t = 200_000)]
    attempts: u64,
    /// Share of attempts that repeat an earlier one (same idempotency key).
    #[arg(long, default_value_t = 0.1)]
    duplicate_rate: f64,
    /// Share of accepted orders whose buyer pays.
    #[arg(long, default_value_t = 0.7)]
    pay_rate: f64,
    /// Share of paying buyers whose payment fails.
    #[arg(long, default_value_t = 0.05)]
    payment_failure_rate: f64,
    /// Units one buyer may hold.
    #[arg(long, default_value_t = 2)]
    per_buyer_limit: u64,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The server's unpaid-order timeout for this run (seconds; the product default is 1800).
    #[arg(long, default_value_t = 5.0)]
    unpaid_order_timeout_secs: f64,
    /// Kill the server with SIGKILL half-way and start it again.
    #[arg(long)]
    kill_server: bool,
    /// Keep flash-sale stock in this Redis instead of in the server's process.
    #[arg(long, env = "EVENTFOLD_REDIS")]
    redis: Option<String>,
    /// Varies buyers, quantities and payments between runs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl Simulate {
    /// Runs the simulation and prints its report; a violation is an error (exit 1) after it.
    ///
    /// # Errors
    /// A bad option (named), the server or the crowd failing, or a violation found.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let Self::FlashSale(args) = self;
        for (name, rate) in [
            ("--duplicate-rate", args.duplicate_rate),
            ("--pay-rate", args.pay_rate),
            ("--payment-failure-rate", args.payment_failure_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                bail!("{name} must be between 0 and 1, got {rate}");
            }
        }
        if args.stock == 0
            || args.buyers == 0
            || args.attempts == 0
            || args.concurrency == 0
            || args.per_buyer_limit == 0
        {
            bail!("--stock, --buyers, --attempts, --concurrency and --per-buyer-limit must be at least 1");
        }
        let log =
            std::env::temp_dir().join(format!("eventfold-simulate-{}.log", std::process::id()));
        let config = SimConfig {
            exe: std::env::current_exe().context("finding the eventfold binary")?,
            store: global.store.clone(),
            redis: args.redis,
            kafka_brokers: global.kafka_brokers.clone(),
            kafka_topic_prefix: global.kafka_topic_prefix.clone(),
            stock: args.stock,
            buyers: args.buyers,
            attempts: args.attempts,
            duplicate_rate: args.duplicate_rate,
            pay_rate: args.pay_rate,
            payment_failure_rate: args.payment_failure_rate,
            per_buyer_limit: args.per_buyer_limit,
            concurrency: args.concurrency,
            unpaid_timeout_secs: args.unpaid_order_timeout_secs,
            kill_server: args.kill_server,
            seed: args.seed,
            server_log: log.clone(),
        };
        let report = run(config).await?;
        global.output().print(&report, || {
            format!(
                "{} attempts at {:.0}/s (p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms); {} orders accepted of {} units; \
                 oversold {}, over-limit buyers {}, charges {} = paid orders {}, double charges {}, \
                 unpaid not cancelled {}, stuck sagas {}, stock reconciled {}; sagas drained {} ms after the crowd{}; server log {}",
                report.attempts, report.attempts_per_sec, report.p50_ms, report.p95_ms, report.p99_ms,
                report.accepted, report.stock, report.oversold, report.over_limit_buyers, report.charges,
                report.paid_orders, report.double_charges, report.unpaid_not_cancelled, report.stuck_sagas,
                report.stock_reconciled, report.saga_drain_ms,
                if report.killed { "; the server was killed with SIGKILL half-way" } else { "" },
                log.display()
            )
        })?;
        if !report.ok {
            bail!("the flash-sale simulation found a violation (see the report)");
        }
        Ok(())
    }
}
