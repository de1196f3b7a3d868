//! `eventfold relay`: the outbox relay on its own, until stopped or `--once`.

use anyhow::{bail, Context};
use clap::Args;
use eventfold_kafka::Relay as OutboxRelay;
use serde::Serialize;

use crate::context::{shutdown_on_signal, Global};

/// `relay`'s options.
#[derive(Debug, Args)]
pub struct Relay {
    /// Publish what is committed now, then exit.
    #[arg(long)]
    once: bool,
    /// Work partitions this relay owns, e.g. `0-7` or `0,2,4` (default: all of 0-15).
    #[arg(long, conflicts_with = "group")]
    shards: Option<String>,
    /// Share the work partitions with the other relays of this group: Kafka's group
    /// coordinator gives each to exactly one running relay and moves a stopped (or, after
    /// 10 s, a dead) relay's to the others.
    #[arg(long, conflicts_with = "once")]
    group: Option<String>,
    /// Do not create topics (they are provisioned separately).
    #[arg(long)]
    no_create_topics: bool,
}

/// What `relay --once --json` prints.
#[derive(Serialize)]
struct RelayReport {
    /// Events published (acknowledged by the broker).
    published: u64,
    /// Log position every owned shard reached.
    position: u64,
}

impl Relay {
    /// Publishes the log (see the options).
    ///
    /// # Errors
    /// No `--kafka-brokers`, a bad `--shards`, the store or the broker failing.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let brokers = global.brokers("relay")?;
        let backend = global.open().await?;
        let mut config = global.relay_config(&brokers);
        if let Some(spec) = self.shards {
            config.owned = Some(parse_shards(&spec, config.shards)?);
        }
        config.group = self.group;
        config.create_topics = !self.no_create_topics;
        let relay = OutboxRelay::new(backend.events.clone(), config)?;
        if self.once {
            let p = relay.publish_pending().await?;
            let report = RelayReport {
                published: p.published,
                position: p.position,
            };
            global.output().print(&report, || {
                format!(
                    "published {} events; every owned shard is at position {}",
                    p.published, p.position
                )
            })
        } else {
            let shutdown = shutdown_on_signal();
            global.serve_metrics(&shutdown).await?;
            relay.run(shutdown.cancelled_owned()).await;
            Ok(())
        }
    }
}

/// Parses `0-7`, `0,2,4` or a mix into shard numbers below `shards`.
fn parse_shards(spec: &str, shards: u32) -> anyhow::Result<Vec<u32>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let number = |s: &str| -> anyhow::Result<u32> {
            let n: u32 = s
                .trim()
                .parse()
                .with_context(|| format!("--shards: {s:?} is not a shard number"))?;
            if n >= shards {
                bail!("--shards: shard {n} is not below {shards}");
            }
            Ok(n)
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    bail!("--shards: range {part:?} runs backwards");
                }
                out.extend(a..=b);
            }
            None => out.push(number(part)?),
        }
    }
    if out.is_empty() {
        bail!("--shards: no shard named");
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_specs_take_ranges_and_lists_below_the_count() {
        assert_eq!(parse_shards("0-3,7", 16).unwrap(), [0, 1, 2, 3, 7]);
        for bad in ["16", "3-1", "x", ""] {
            assert!(parse_shards(bad, 16).is_err(), "{bad}");
        }
    }
}
