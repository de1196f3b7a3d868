//! `eventfold verify`: walk the hash chain, optionally against a signed anchor or an archive.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use eventfold_app::integrity::archive::{verify_with_archive, ArchiveMerge};
use eventfold_app::integrity::verify::{verify, Target, TrustedAnchor};

use crate::context::Global;

/// `verify`'s arguments.
#[derive(Debug, Args)]
pub struct Verify {
    /// The stream to walk, e.g. `account-42`.
    stream: Option<String>,
    /// The whole log (positions from 1, the global and every stream's links).
    #[arg(long, conflicts_with = "stream")]
    all: bool,
    /// An anchor file written by `anchor sign` (the whole log is walked).
    #[arg(long, requires = "public_key", conflicts_with = "stream")]
    anchor: Option<PathBuf>,
    /// The Ed25519 public key the anchor must be signed with: 64 hex characters, or a file
    /// holding them.
    #[arg(long, requires = "anchor")]
    public_key: Option<String>,
    /// An archive directory written by `archive` to check against the log as it is walked:
    /// every file's SHA-256, every archived event against its stub, every stub against the
    /// archive (the whole log is walked).
    #[arg(long, conflicts_with = "stream")]
    archive: Option<PathBuf>,
    /// A sealed period, `STORE/PERIOD` (`shop-1/2026-11`; `TENANT/STORE/PERIOD` for another
    /// tenant): its sealed totals must equal a replay of the log and the chain hash at its
    /// close the sealed one; the whole chain is walked too.
    #[arg(long, conflicts_with_all = ["stream", "anchor", "archive"])]
    period: Option<String>,
}

impl Verify {
    /// Walks the chain (with a progress bar) and prints the report; a broken link or an anchor
    /// the log does not extend is an error (exit 1) after the report.
    ///
    /// # Errors
    /// Neither a stream nor `--all`, an anchor or key that cannot be read or does not verify,
    /// an archive that cannot be opened, the store failing, or a chain that does not hold.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        if let Some(period) = &self.period {
            return verify_sealed(global, period).await;
        }
        let target = match (
            self.stream,
            self.all || self.anchor.is_some() || self.archive.is_some(),
        ) {
            (Some(s), _) => Target::Stream(s),
            (None, true) => Target::All,
            (None, false) => bail!("give a STREAM or --all"),
        };
        let trusted = match (self.anchor, self.public_key) {
            (Some(path), Some(key)) => Some(TrustedAnchor::read(&path, &key)?),
            _ => None,
        };
        let backend = global.open().await?;
        let output = global.output();
        let bar = output.progress_bar(backend.events.head_position().await?);
        let report = match self.archive {
            None => {
                verify(backend.events.clone(), &target, trusted.as_ref(), &|p| {
                    bar.set_position(p)
                })
                .await?
            }
            Some(dir) => {
                let mut merge = ArchiveMerge::open(&dir)?;
                verify_with_archive(backend.events.clone(), trusted.as_ref(), &mut merge, &|p| {
                    bar.set_position(p)
                })
                .await?
            }
        };
        bar.finish_and_clear();
        output.print(&report, || {
            let mut text = format!(
                "{} events checked in {:.0} ms ({:.0} events/s)",
                report.events_checked, report.elapsed_ms, report.events_per_sec
            );
            if let Some(h) = &report.head {
                text += &format!("; head position {} hash {}", h.position, h.hash);
            }
            if report.archived > 0 {
                text += &format!("; {} of them archived (stubs)", report.archived);
            }
            if let Some(a) = &report.archive {
                text += &format!(
                    "; archive: {} files, {} events checked against the log",
                    a.files, a.events_checked
                );
            }
            if let Some(a) = &report.anchor {
                text += &format!(
                    "; anchor at position {} signed {}: {}",
                    a.position,
                    a.signed_at,
                    if a.extended {
                        "the log extends it"
                    } else {
                        "NOT extended"
                    }
                );
            }
            match &report.first_broken {
                Some(b) => format!("{text}\n{b}"),
                None => format!("{text}\nok: every link holds"),
            }
        })?;
        if !report.ok {
            bail!("the hash chain does not verify (see the report)");
        }
        Ok(())
    }
}

/// `verify --period STORE/PERIOD`: the seal against a replay, and the whole chain.
async fn verify_sealed(global: &Global, arg: &str) -> anyhow::Result<()> {
    let (store, period) = arg
        .rsplit_once('/')
        .with_context(|| format!("--period {arg:?} is not STORE/PERIOD such as shop-1/2026-11"))?;
    eventfold_domain::validate_scoped_id("--period store", store).map_err(anyhow::Error::msg)?;
    let backend = global.open().await?;
    let sealed =
        eventfold_app::periods::verify_period(backend.events.clone(), store, period).await?;
    let chain = verify(backend.events.clone(), &Target::All, None, &|_| {}).await?;
    let ok = sealed.ok && chain.ok;
    let report = serde_json::json!({ "ok": ok, "period": sealed, "chain": chain });
    global.output().print(&report, || {
        let totals = |t: &[eventfold_domain::periods::PeriodTotal]| {
            t.iter()
                .map(|t| format!("{} {} ({} orders, {} refunds)", t.total, t.currency, t.orders, t.refunds))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "period {period} of store {store}: sealed {} at position {} (hash {}); replayed now {}; chain hash there now {}; whole chain: {} events, {}\n{}",
            totals(&sealed.seal.totals),
            sealed.seal.through_position,
            sealed.seal.chain_hash,
            totals(&sealed.replayed),
            sealed.chain_hash,
            chain.events_checked,
            if chain.ok { "every link holds" } else { "BROKEN" },
            if ok { "ok: the sealed figures still equal the log" } else { "NOT ok" }
        )
    })?;
    if !ok {
        bail!("period {period} of store {store} does not verify (see the report)");
    }
    Ok(())
}
