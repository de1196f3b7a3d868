//! `bench upload`: a store upload of N late sales (CSV, days of 2024, long reported), applied
//! with a correction notice each, against the same sales appended as history (a backfill, no
//! notices) in the same run; then the upload again (nothing appended); then another upload of
//! N late sales with the correction notifier running beside it, as `serve` runs it.

use std::time::Instant;

use eventfold_app::backend::Backend;
use eventfold_app::import::upload::{parse_upload, UploadFormat};
use eventfold_app::import::{append_sales, SaleSource};
use eventfold_app::reporting::CorrectionNotifier;
use eventfold_core::Actor;
use serde::Serialize;

use crate::scratch::Scratch;
use crate::BenchTarget;

/// What `bench upload --json` prints. Times are ms of wall time.
#[derive(Debug, Clone, Serialize)]
pub struct UploadReport {
    /// Backend measured.
    pub store: String,
    /// Sales in the upload.
    pub sales: u64,
    /// Bytes of the CSV upload.
    pub upload_bytes: usize,
    /// Baseline: the same number of other sales appended as history (parse + append), ms.
    pub history_ms: f64,
    /// The upload: reading the CSV, ms.
    pub parse_ms: f64,
    /// The upload: appending its orders (one `OrderRecorded` event each), ms.
    pub append_ms: f64,
    /// The upload: the correction notifier noticing every late sale, ms.
    pub notice_ms: f64,
    /// The upload applied with its notices: parse + append + notice, ms.
    pub applied_ms: f64,
    /// `applied_ms / history_ms`: what lateness costs over a backfill of the same size.
    pub ratio_to_history: f64,
    /// Notices appended.
    pub notices: u64,
    /// Bringing every projection (including `sales_corrections`) up to date afterwards, ms.
    pub projection_ms: f64,
    /// The same upload again, ms (parse + append + notice).
    pub second_upload_ms: f64,
    /// Orders and notices the second upload appended (0: idempotent).
    pub second_upload_appended: u64,
    /// Another upload of as many late sales with the correction notifier tailing the log beside
    /// it (as `serve` runs it): from the start of the parse until the last notice is appended, ms.
    pub live_applied_ms: f64,
    /// Of which: parsing and appending the orders, ms.
    pub live_append_ms: f64,
    /// Notices appended for that upload (one per sale).
    pub live_notices: u64,
}

fn csv(sales: u64, prefix: &str) -> String {
    let mut s = String::from("order_id,customer_id,occurred_at,sku,quantity,amount,currency\n");
    for i in 0..sales {
        let day =
            chrono::NaiveDate::from_ymd_opt(2024, 1, 1).expect("date") + chrono::Days::new(i % 366);
        s.push_str(&format!(
            "{prefix}-{i},c-{},{day}T{:02}:{:02}:00Z,sku-{},{},{}.{:02},USD\n",
            i % 5_000,
            i % 24,
            i % 60,
            i % 100,
            1 + i % 3,
            1 + i % 200,
            i % 100
        ));
    }
    s
}

/// Runs `bench upload` with `sales` sales on a scratch store.
///
/// # Errors
/// The scratch store cannot be created or written, or an upload is refused (a bug).
pub async fn upload(target: &BenchTarget, sales: u64) -> anyhow::Result<UploadReport> {
    let scratch = Scratch::create(target, true).await?;
    let backend = Backend::open(&scratch.url).await?;
    let source = |backfill| SaleSource {
        source: "bench-upload".into(),
        actor: Actor::system("bench"),
        via: None,
        reason: "bench upload".into(),
        backfill,
        calendar: None,
    };
    let notifier = CorrectionNotifier::new(backend.events.clone(), backend.read_models.clone());

    let parse = |body: &str| {
        parse_upload(
            body.as_bytes(),
            UploadFormat::Csv,
            "default",
            "bench",
            chrono::Utc::now(),
        )
        .map_err(|bad| anyhow::anyhow!("the bench's own sales are refused: {}", bad[0]))
    };

    // Baseline: as many other sales, as history.
    let history = csv(sales, "h");
    let t = Instant::now();
    let records = parse(&history)?;
    append_sales(&backend, &source(true), &records, &|_, _, _| {}).await?;
    let history_ms = t.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(notifier.catch_up().await? == 0, "history raised notices");

    let body = csv(sales, "u");
    let apply = || async {
        let t = Instant::now();
        let records = parse(&body)?;
        let parse_ms = t.elapsed().as_secs_f64() * 1000.0;
        let counts = append_sales(&backend, &source(false), &records, &|_, _, _| {}).await?;
        let append_ms = t.elapsed().as_secs_f64() * 1000.0 - parse_ms;
        let notices = notifier.catch_up().await?;
        let total_ms = t.elapsed().as_secs_f64() * 1000.0;
        anyhow::Ok((
            parse_ms,
            append_ms,
            total_ms - parse_ms - append_ms,
            counts.orders_appended as u64,
            notices,
        ))
    };
    let (parse_ms, append_ms, notice_ms, appended, notices) = apply().await?;
    anyhow::ensure!(
        appended == sales && notices == sales,
        "{appended} orders and {notices} notices for {sales} late sales"
    );
    let t = Instant::now();
    backend
        .projection_runner()
        .with_batch_size(5_000)
        .catch_up(None, &|_, _| {})
        .await?;
    let projection_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let (_, _, _, again, again_notices) = apply().await?;
    let second_upload_ms = t.elapsed().as_secs_f64() * 1000.0;

    // The notifier as `serve` runs it: tailing the log while the upload appends, then stopped
    // once the orders are in and caught up with what it had not seen yet.
    let body = csv(sales, "l");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tail = notifier.clone();
    let live = tokio::spawn(async move {
        tail.run(async {
            let _ = stopped.await;
        })
        .await
    });
    let t = Instant::now();
    let records = parse(&body)?;
    let counts = append_sales(&backend, &source(false), &records, &|_, _, _| {}).await?;
    let live_append_ms = t.elapsed().as_secs_f64() * 1000.0;
    let _ = stop.send(());
    let live_notices = live.await? + notifier.catch_up().await?;
    let live_applied_ms = t.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        counts.orders_appended as u64 == sales && live_notices == sales,
        "{} orders and {live_notices} notices for {sales} late sales with the notifier live",
        counts.orders_appended
    );
    let applied_ms = parse_ms + append_ms + notice_ms;
    let name = scratch.name;
    drop(backend);
    scratch.remove().await?;
    Ok(UploadReport {
        store: name.into(),
        sales,
        upload_bytes: body.len(),
        history_ms,
        parse_ms,
        append_ms,
        notice_ms,
        applied_ms,
        ratio_to_history: applied_ms / history_ms.max(1e-9),
        notices,
        projection_ms,
        second_upload_ms,
        second_upload_appended: again + again_notices,
        live_applied_ms,
        live_append_ms,
        live_notices,
    })
}
