//! `eventfold archive`, `eventfold restore` and `eventfold verify --archive` (retention and
//! archive): closed streams' old events move out of the hot store into compressed, checksummed
//! files, one per month, and can be brought back and checked against the hash chain.
//!
//! - **Closed streams.** A stream is closed when its last event ends its category's life cycle
//!   ([`CLOSING_EVENTS`]: an order completed, cancelled or refunded). Other categories (accounts
//!   have no closing event) are never archived.
//! - **What moves.** The events of closed streams whose event time is before the cut-off. The hot
//!   row stays as a stub ([`eventfold_core::EventStore::archive_events`]): every column but the
//!   payload, plus the content digest, so positions, stream versions, event ids and the hash
//!   chain stay whole and `eventfold verify` still walks every link. Snapshots (read models)
//!   are not touched: they stay hot.
//! - **Files.** `events-YYYY-MM.rN.ndjson.gz` (N = the run): gzip of one JSON object per line,
//!   every column of the event as stored ([`ArchivedEvent`]), in position order; the month is the
//!   event time's. `manifest.json` lists every run with its cut-off, the log's chain head when it
//!   ran, and per file the month, the event count, the first and last position with their hashes,
//!   the byte size and the SHA-256 of the file.
//! - **Crash safety.** Files are written and synced first, then the manifest names them (run
//!   status `writing`), then the events become stubs in chunks, then the run is `complete`. A run
//!   found `writing` is finished by the next `archive` before anything else; `restore` and
//!   `verify --archive` accept its events whether they are stubs or still hot.
//! - **Proof.** An archived event is proven when its content digest is the stub's and the stub's
//!   links hold ([`eventfold_core::chain::archived_matches`] and the chain walk).
//!
//! Source: the shop seed's retention requirement ("cold storage and rehydration", snapshots to
//! shorten replays).
//!
//! The archive's on-disk form (files, manifest) is [`files`]; the check of an archive along the
//! chain walk is [`merge`].

mod files;
mod merge;

pub use files::{ArchivedEvent, FileEntry, Manifest, Run, RunStatus, MANIFEST, MANIFEST_FORMAT};
pub use merge::{verify_with_archive, ArchiveMerge};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use chrono::{DateTime, TimeZone, Utc};
use eventfold_core::chain::{archived_matches, ChainRow, ChainVerifier, Hash, Scope};
use eventfold_core::envelope::stream_category;
use eventfold_core::{ArchiveStub, EventStore, RestoredPayload};
use serde::Serialize;

use super::verify::Head;
use files::{read_file, sync_dir, MonthWriter};

/// Per stream category, the event types that close a stream of it: a stream whose last event is
/// one of these is closed and its old events may be archived. An order is final when cancelled
/// or refunded; a completed order (or a sale recorded complete) can still be refunded, which
/// works from the hot tail (the stream's version stays hot), but a replay of it needs `restore`
/// first.
pub const CLOSING_EVENTS: &[(&str, &[&str])] = &[(
    "order",
    &[
        "OrderCompleted",
        "OrderRecorded",
        "OrderCancelled",
        "OrderRefunded",
    ],
)];

/// Rows read from the store per batch.
const BATCH: usize = 20_000;

/// Events turned into stubs (or restored) per store call, each one transaction.
const CHUNK: usize = 5_000;

/// The closing event types of `stream`'s category (empty: never closed).
pub fn closing_events(stream: &str) -> &'static [&'static str] {
    let category = stream_category(stream);
    CLOSING_EVENTS
        .iter()
        .find(|(c, _)| *c == category)
        .map_or(&[], |(_, types)| types)
}

/// What `eventfold archive --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveReport {
    /// The run number (0 when nothing was due and no run was recorded).
    pub run: u32,
    /// The cut-off.
    pub before: DateTime<Utc>,
    /// Events checked by the chain walk before archiving.
    pub events_checked: u64,
    /// Closed streams with events archived by this run.
    pub streams: u64,
    /// Events archived by this run.
    pub events_archived: u64,
    /// Events of an earlier run that had not been turned into stubs (a crash), finished now.
    pub events_finished_from_earlier_run: u64,
    /// Payload bytes taken out of the hot store.
    pub payload_bytes: u64,
    /// The files written.
    pub files: Vec<FileEntry>,
    /// Their total size in bytes.
    pub file_bytes: u64,
    /// Wall time, ms.
    pub elapsed_ms: f64,
}

/// What `eventfold restore --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// Files read.
    pub files: u64,
    /// Events brought back into the hot store.
    pub events_restored: u64,
    /// Events of the archive that were hot already (restored before, or never made stubs).
    pub already_hot: u64,
    /// Wall time, ms.
    pub elapsed_ms: f64,
}

/// Archives the events of closed streams ([`CLOSING_EVENTS`]) whose event time is before
/// `before` into `dir` (created if missing). The whole log's chain is verified first, and a
/// broken chain is refused. `progress(phase, done, of)` is told what is happening.
///
/// # Errors
/// A broken chain (nothing archived), file system failures (named with the path), a manifest
/// that is not one, or store failures; after a failure the next run finishes what this one left.
pub async fn archive(
    store: Arc<dyn EventStore>,
    before: DateTime<Utc>,
    dir: &Path,
    progress: &(dyn Fn(&str, u64, u64) + Sync),
) -> anyhow::Result<ArchiveReport> {
    let started = Instant::now();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut manifest = Manifest::load(dir)?.unwrap_or(Manifest {
        format: MANIFEST_FORMAT.into(),
        runs: Vec::new(),
    });
    let mut finished = 0;
    for i in 0..manifest.runs.len() {
        if manifest.runs[i].status == RunStatus::Writing {
            finished += stub_run(store.as_ref(), dir, &manifest.runs[i], progress).await?;
            manifest.runs[i].status = RunStatus::Complete;
            manifest.save(dir)?;
        }
    }

    // Pass 1: verify the chain and find the closed streams and their old events.
    let head = store.head_position().await?;
    let cutoff = before.timestamp_micros();
    let mut verifier = ChainVerifier::new(Scope::Log);
    let mut streams: HashMap<Vec<u8>, (bool, Vec<u64>)> = HashMap::new();
    let mut after = 0;
    loop {
        let rows = store.read_chain(after, BATCH).await?;
        let Some(last) = rows.last() else { break };
        after = last.position;
        for row in &rows {
            if let Err(broken) = verifier.check(row) {
                bail!("refusing to archive a broken chain: {broken}");
            }
            let stream = String::from_utf8_lossy(&row.stream_id);
            let closing = closing_events(&stream);
            if closing.is_empty() {
                continue;
            }
            let is_closing = closing.iter().any(|t| t.as_bytes() == row.event_type);
            // The key is cloned once per stream, not once per event.
            if !streams.contains_key(row.stream_id.as_slice()) {
                streams.insert(row.stream_id.clone(), Default::default());
            }
            let entry = streams
                .get_mut(row.stream_id.as_slice())
                .expect("inserted above");
            entry.0 = is_closing;
            if row.event_time_us < cutoff && !row.is_archived() {
                entry.1.push(row.position);
            }
        }
        progress("verifying the chain", after, head);
        if rows.len() < BATCH {
            break;
        }
    }
    let log_head = verifier.head().map(|(position, hash)| Head {
        position,
        hash: hex::encode(hash),
    });
    let mut due: Vec<u64> = Vec::new();
    let mut closed = 0;
    for (closed_now, positions) in streams.into_values() {
        if closed_now && !positions.is_empty() {
            closed += 1;
            due.extend(positions);
        }
    }
    due.sort_unstable();
    let mut report = ArchiveReport {
        run: 0,
        before,
        events_checked: verifier.checked(),
        streams: closed,
        events_archived: 0,
        events_finished_from_earlier_run: finished,
        payload_bytes: 0,
        files: Vec::new(),
        file_bytes: 0,
        elapsed_ms: 0.0,
    };
    if due.is_empty() {
        report.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        return Ok(report);
    }

    // Pass 2: write the month files.
    let run = manifest.runs.iter().map(|r| r.run).max().unwrap_or(0) + 1;
    let wanted: HashSet<u64> = due.iter().copied().collect();
    let mut writers: BTreeMap<String, MonthWriter> = BTreeMap::new();
    let mut stubs = Vec::with_capacity(due.len());
    let (first, last) = (due[0], due[due.len() - 1]);
    chain_rows_between(store.as_ref(), first, last, |rows| {
        for row in rows.iter().filter(|r| wanted.contains(&r.position)) {
            let event = ArchivedEvent::of_row(row).map_err(anyhow::Error::msg)?;
            let month = month_of(row.event_time_us)?;
            let writer = match writers.entry(month.clone()) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(MonthWriter::create(dir, &month, run)?)
                }
            };
            writer.write(&event)?;
            let hash: Hash = row
                .hash
                .as_deref()
                .and_then(|h| h.try_into().ok())
                .expect("verified rows carry 32-byte hashes");
            stubs.push(ArchiveStub {
                position: row.position,
                hash,
                digest: row.content().digest(),
            });
            report.payload_bytes += row.payload.len() as u64;
        }
        progress(
            "writing archive files",
            stubs.len() as u64,
            due.len() as u64,
        );
        Ok(())
    })
    .await?;
    let mut files = Vec::with_capacity(writers.len());
    for (_, w) in writers {
        files.push(w.finish()?);
    }
    sync_dir(dir)?;
    let entry = Run {
        run,
        before,
        archived_at: Utc::now(),
        status: RunStatus::Writing,
        log_head,
        files: files.clone(),
    };
    manifest.runs.push(entry);
    manifest.save(dir)?;

    // Pass 3: the events become stubs.
    let total = stubs.len() as u64;
    let mut done = 0;
    for chunk in stubs.chunks(CHUNK) {
        report.events_archived += store.archive_events(chunk.to_vec()).await?;
        done += chunk.len() as u64;
        progress("making stubs", done, total);
    }
    manifest.runs.last_mut().expect("pushed").status = RunStatus::Complete;
    manifest.save(dir)?;
    report.run = run;
    report.file_bytes = files.iter().map(|f| f.bytes).sum();
    report.files = files;
    report.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(report)
}

/// `YYYY-MM` of a time in µs since the Unix epoch.
fn month_of(micros: i64) -> anyhow::Result<String> {
    let t = Utc
        .timestamp_micros(micros)
        .single()
        .ok_or_else(|| anyhow::anyhow!("event time {micros} µs is out of range"))?;
    Ok(t.format("%Y-%m").to_string())
}

/// Reads the log's chain rows from position `first` to `last` (inclusive) in batches, handing
/// each batch to `each`.
async fn chain_rows_between(
    store: &dyn EventStore,
    first: u64,
    last: u64,
    mut each: impl FnMut(Vec<ChainRow>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut after = first - 1;
    while after < last {
        let rows = store.read_chain(after, BATCH).await?;
        let Some(end) = rows.last().map(|r| r.position) else {
            break;
        };
        after = end;
        each(rows)?;
    }
    Ok(())
}

/// Turns every event of a `writing` run's files into a stub (finishing a run a crash cut short).
async fn stub_run(
    store: &dyn EventStore,
    dir: &Path,
    run: &Run,
    progress: &(dyn Fn(&str, u64, u64) + Sync),
) -> anyhow::Result<u64> {
    let mut stubbed = 0;
    for entry in &run.files {
        let mut stubs = Vec::new();
        for (r, _) in proven_file(store, dir, entry, None).await? {
            stubs.push(ArchiveStub {
                position: r.position,
                hash: file_hash(&entry.name, &r)?,
                digest: r.content().digest(),
            });
        }
        for chunk in stubs.chunks(CHUNK) {
            stubbed += store.archive_events(chunk.to_vec()).await?;
        }
        progress("finishing an earlier run", stubbed, 0);
    }
    Ok(stubbed)
}

/// The events of a manifest's file (only `stream`'s, if given), each proven against the log's
/// row at its position ([`archived_matches`]), with whether that row is an archived stub.
///
/// # Errors
/// As [`read_file`], an event the log does not hold or one that differs from it (named with
/// the file), or store failures.
async fn proven_file(
    store: &dyn EventStore,
    dir: &Path,
    entry: &FileEntry,
    stream: Option<&str>,
) -> anyhow::Result<Vec<(ChainRow, bool)>> {
    let mut rows = read_file(dir, entry)?;
    if let Some(s) = stream {
        rows.retain(|r| r.stream_id == s.as_bytes());
    }
    let hot = hot_rows(store, &rows).await?;
    rows.into_iter()
        .map(|r| {
            let h = hot.get(&r.position).ok_or_else(|| {
                anyhow::anyhow!("{}: position {} is not in the log", entry.name, r.position)
            })?;
            archived_matches(h, &r)
                .map_err(|b| anyhow::anyhow!("{}: refusing it: {b}", entry.name))?;
            Ok((r, h.is_archived()))
        })
        .collect()
}

/// An archived event's hash as 32 bytes (a file may hold any hex).
fn file_hash(file: &str, row: &ChainRow) -> anyhow::Result<Hash> {
    row.hash
        .as_deref()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("{file}: position {}: hash is not 32 bytes", row.position))
}

/// The log's rows at the positions of `rows` (sorted by position), read in batches over their
/// span.
async fn hot_rows(
    store: &dyn EventStore,
    rows: &[ChainRow],
) -> anyhow::Result<HashMap<u64, ChainRow>> {
    let wanted: HashSet<u64> = rows.iter().map(|r| r.position).collect();
    let mut out = HashMap::with_capacity(wanted.len());
    let (Some(first), Some(last)) = (
        rows.iter().map(|r| r.position).min(),
        rows.iter().map(|r| r.position).max(),
    ) else {
        return Ok(out);
    };
    chain_rows_between(store, first, last, |batch| {
        for r in batch {
            if wanted.contains(&r.position) {
                out.insert(r.position, r);
            }
        }
        Ok(())
    })
    .await?;
    Ok(out)
}

/// Brings archived events in `dir` back into the hot store: every file's checksum is checked,
/// every event is proven against its stub, and stubs get their payloads back. With `stream`,
/// only that stream's events.
///
/// # Errors
/// A missing manifest, a file whose checksum is not the manifest's or that does not decode, an
/// event that is not the one its stub stands for (each named with the file and position), or
/// store failures. Files are restored one at a time, each in chunks of one transaction.
pub async fn restore(
    store: Arc<dyn EventStore>,
    dir: &Path,
    stream: Option<&str>,
    progress: &(dyn Fn(&str, u64, u64) + Sync),
) -> anyhow::Result<RestoreReport> {
    let started = Instant::now();
    let manifest = Manifest::require(dir)?;
    let total: u64 = manifest.files().map(|(_, f)| f.events).sum();
    let mut report = RestoreReport {
        files: 0,
        events_restored: 0,
        already_hot: 0,
        elapsed_ms: 0.0,
    };
    let mut read = 0;
    for (_, entry) in manifest.files() {
        let rows = proven_file(store.as_ref(), dir, entry, stream).await?;
        report.files += 1;
        read += entry.events;
        let mut payloads = Vec::new();
        for (r, archived) in rows {
            if !archived {
                report.already_hot += 1;
                continue;
            }
            payloads.push(RestoredPayload {
                position: r.position,
                hash: file_hash(&entry.name, &r)?,
                payload: String::from_utf8(r.payload).expect("decoded from a JSON string"),
            });
        }
        for chunk in payloads.chunks(CHUNK) {
            report.events_restored += store.restore_events(chunk.to_vec()).await?;
        }
        progress("restoring", read, total);
    }
    report.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(report)
}
