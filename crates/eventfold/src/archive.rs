//! `eventfold archive`, `eventfold restore` and `eventfold verify --archive` (M8, retention and
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
//! Source: the seed's M8 (`seeds/001`: "cold storage and rehydration", snapshots to shorten
//! replays).

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use chrono::{DateTime, TimeZone, Utc};
use eventfold_core::chain::{archived_matches, BrokenLink, ChainRow, ChainVerifier, Hash, Scope};
use eventfold_core::envelope::stream_category;
use eventfold_core::{ArchiveStub, EventStore, RestoredPayload, StoreError};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::verify::Head;

/// The manifest's file name in an archive directory.
pub const MANIFEST: &str = "manifest.json";

/// The manifest's format tag.
pub const MANIFEST_FORMAT: &str = "eventfold-archive/1";

/// Per stream category, the event types that close a stream of it: a stream whose last event is
/// one of these is closed and its old events may be archived. An order is final when cancelled
/// or refunded; a completed order can still be refunded, which works from the hot tail (the
/// stream's version stays hot), but a replay of it needs `restore` first.
pub const CLOSING_EVENTS: &[(&str, &[&str])] = &[(
    "order",
    &["OrderCompleted", "OrderCancelled", "OrderRefunded"],
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

/// One event as an archive file holds it: every stored column, texts as text, ids as UUIDs,
/// times as microseconds since the Unix epoch (UTC), hashes as hex. The payload is the JSON
/// text as appended, byte for byte (a JSON string here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchivedEvent {
    /// Global position.
    pub position: u64,
    /// Event id.
    pub event_id: Uuid,
    /// Stream id.
    pub stream_id: String,
    /// Stream version.
    pub stream_version: u64,
    /// Event type.
    pub event_type: String,
    /// Payload schema version.
    pub schema_version: i64,
    /// Event time, µs since the Unix epoch.
    pub event_time_us: i64,
    /// Ingest time, µs since the Unix epoch.
    pub ingest_time_us: i64,
    /// Actor.
    pub actor: String,
    /// Causation id.
    pub causation_id: Option<Uuid>,
    /// Correlation id.
    pub correlation_id: Option<Uuid>,
    /// Tenant id.
    pub tenant_id: String,
    /// Payload (JSON text).
    pub payload: String,
    /// `prev_hash`, hex.
    pub prev_hash: String,
    /// `hash`, hex.
    pub hash: String,
}

impl ArchivedEvent {
    /// The archive form of a hot, intact row (the chain walk has checked it).
    ///
    /// # Errors
    /// A column that does not decode (not UTF-8, an id that is not 16 bytes, a missing hash).
    pub fn of_row(row: &ChainRow) -> Result<Self, String> {
        let text = |what: &str, b: &[u8]| {
            String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
        };
        let id = |what: &str, b: &[u8]| {
            Uuid::from_slice(b).map_err(|_| format!("{what} is not 16 bytes"))
        };
        let hash = |what: &str, h: &Option<Vec<u8>>| {
            h.as_deref()
                .map(hex::encode)
                .ok_or_else(|| format!("{what} is missing"))
        };
        (|| {
            Ok(Self {
                position: row.position,
                event_id: id("event_id", &row.event_id)?,
                stream_id: text("stream_id", &row.stream_id)?,
                stream_version: row.stream_version,
                event_type: text("event_type", &row.event_type)?,
                schema_version: row.schema_version,
                event_time_us: row.event_time_us,
                ingest_time_us: row.ingest_time_us,
                actor: text("actor", &row.actor)?,
                causation_id: row
                    .causation_id
                    .as_deref()
                    .map(|b| id("causation_id", b))
                    .transpose()?,
                correlation_id: row
                    .correlation_id
                    .as_deref()
                    .map(|b| id("correlation_id", b))
                    .transpose()?,
                tenant_id: text("tenant_id", &row.tenant_id)?,
                payload: text("payload", &row.payload)?,
                prev_hash: hash("prev_hash", &row.prev_hash)?,
                hash: hash("hash", &row.hash)?,
            })
        })()
        .map_err(|e: String| format!("position {}: {e}", row.position))
    }

    /// The raw row this event was archived from.
    ///
    /// # Errors
    /// A hash that is not hex.
    pub fn to_row(&self) -> Result<ChainRow, String> {
        let hash = |what: &str, h: &str| {
            hex::decode(h).map_err(|_| format!("position {}: {what} is not hex", self.position))
        };
        Ok(ChainRow {
            position: self.position,
            stream_id: self.stream_id.as_bytes().to_vec(),
            stream_version: self.stream_version,
            event_id: self.event_id.as_bytes().to_vec(),
            event_type: self.event_type.as_bytes().to_vec(),
            schema_version: self.schema_version,
            event_time_us: self.event_time_us,
            ingest_time_us: self.ingest_time_us,
            actor: self.actor.as_bytes().to_vec(),
            causation_id: self.causation_id.map(|u| u.as_bytes().to_vec()),
            correlation_id: self.correlation_id.map(|u| u.as_bytes().to_vec()),
            tenant_id: self.tenant_id.as_bytes().to_vec(),
            payload: self.payload.as_bytes().to_vec(),
            prev_hash: Some(hash("prev_hash", &self.prev_hash)?),
            hash: Some(hash("hash", &self.hash)?),
            archived_digest: None,
        })
    }
}

/// `manifest.json`: every archive run into this directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// The runs, oldest first.
    pub runs: Vec<Run>,
}

/// One `eventfold archive` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// 1 for the first run into the directory.
    pub run: u32,
    /// The cut-off: events with an event time before it were archived.
    pub before: DateTime<Utc>,
    /// When the run started.
    pub archived_at: DateTime<Utc>,
    /// `writing` until every event of the files is a stub in the store, then `complete`.
    pub status: RunStatus,
    /// The log's chain head when the run read it.
    pub log_head: Option<Head>,
    /// The run's files, by month.
    pub files: Vec<FileEntry>,
}

/// Whether a run's events are all stubs in the store yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Files written; events being turned into stubs.
    Writing,
    /// Every event of the files is archived in the store.
    Complete,
}

/// One month file of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name in the archive directory.
    pub name: String,
    /// `YYYY-MM` of its events' event time.
    pub month: String,
    /// Events in it.
    pub events: u64,
    /// Its first event's position and hash.
    pub first: Head,
    /// Its last event's position and hash.
    pub last: Head,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

impl Manifest {
    /// Reads `dir/manifest.json`; `None` when the directory has none yet.
    ///
    /// # Errors
    /// An unreadable or malformed manifest, named with its path.
    pub fn load(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let manifest: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an archive manifest", path.display()))?;
        if manifest.format != MANIFEST_FORMAT {
            bail!(
                "{}: format {:?} is not {MANIFEST_FORMAT:?}",
                path.display(),
                manifest.format
            );
        }
        Ok(Some(manifest))
    }

    /// Reads the manifest of an existing archive.
    ///
    /// # Errors
    /// As [`Manifest::load`], or no manifest in `dir`.
    pub fn require(dir: &Path) -> anyhow::Result<Self> {
        Self::load(dir)?.ok_or_else(|| {
            anyhow::anyhow!(
                "{} has no {MANIFEST}: it is not an eventfold archive",
                dir.display()
            )
        })
    }

    /// Writes the manifest atomically (a temporary file synced, then renamed over the old one).
    ///
    /// # Errors
    /// File system failures, named with the path.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(MANIFEST);
        let tmp = dir.join(format!(".{MANIFEST}.tmp"));
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all((serde_json::to_string_pretty(self)? + "\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        sync_dir(dir)
    }

    /// Every file of every run, with its run.
    fn files(&self) -> impl Iterator<Item = (&Run, &FileEntry)> {
        self.runs
            .iter()
            .flat_map(|r| r.files.iter().map(move |f| (r, f)))
    }
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
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
    let mut after = first - 1;
    while after < last {
        let rows = store.read_chain(after, BATCH).await?;
        let Some(end) = rows.last().map(|r| r.position) else {
            break;
        };
        after = end;
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
    }
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

/// One month file being written: gzip over a buffered file, hashed afterwards.
struct MonthWriter {
    path: PathBuf,
    name: String,
    month: String,
    gz: GzEncoder<BufWriter<File>>,
    events: u64,
    first: Option<Head>,
    last: Option<Head>,
}

impl MonthWriter {
    fn create(dir: &Path, month: &str, run: u32) -> anyhow::Result<Self> {
        let name = format!("events-{month}.r{run}.ndjson.gz");
        let path = dir.join(&name);
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            path,
            name,
            month: month.to_owned(),
            gz: GzEncoder::new(BufWriter::new(file), flate2::Compression::default()),
            events: 0,
            first: None,
            last: None,
        })
    }

    fn write(&mut self, event: &ArchivedEvent) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.gz, event)?;
        self.gz
            .write_all(b"\n")
            .with_context(|| format!("writing {}", self.path.display()))?;
        let head = Head {
            position: event.position,
            hash: event.hash.clone(),
        };
        self.first.get_or_insert_with(|| head.clone());
        self.last = Some(head);
        self.events += 1;
        Ok(())
    }

    fn finish(self) -> anyhow::Result<FileEntry> {
        let file = self
            .gz
            .finish()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .with_context(|| format!("writing {}", self.path.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", self.path.display()))?;
        let (sha256, bytes) = file_sha256(&self.path)?;
        Ok(FileEntry {
            name: self.name,
            month: self.month,
            events: self.events,
            first: self.first.expect("a month file has an event"),
            last: self.last.expect("a month file has an event"),
            bytes,
            sha256,
        })
    }
}

/// The SHA-256 (hex) and size of a file.
fn file_sha256(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut f, &mut hasher)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok((hex::encode(hasher.finalize()), bytes))
}

/// Opens a manifest's file after checking its size and SHA-256.
///
/// # Errors
/// A missing file or one whose checksum is not the manifest's, named.
fn open_checked(dir: &Path, entry: &FileEntry) -> anyhow::Result<ArchiveFile> {
    let path = dir.join(&entry.name);
    let (sha256, bytes) = file_sha256(&path)?;
    if sha256 != entry.sha256 || bytes != entry.bytes {
        bail!(
            "{}: SHA-256 {sha256} ({bytes} bytes), but the manifest says {} ({} bytes): the file was changed or cut short",
            path.display(),
            entry.sha256,
            entry.bytes
        );
    }
    ArchiveFile::open(path)
}

/// Reads an archive file's events in order.
struct ArchiveFile {
    path: PathBuf,
    lines: std::io::Lines<BufReader<GzDecoder<File>>>,
    line: u64,
}

impl ArchiveFile {
    fn open(path: PathBuf) -> anyhow::Result<Self> {
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            path,
            lines: BufReader::new(GzDecoder::new(file)).lines(),
            line: 0,
        })
    }

    /// The next event as a raw row; `None` at the end.
    ///
    /// # Errors
    /// A file that does not decompress or a line that is not an archived event, named with the
    /// file and line.
    fn next_row(&mut self) -> anyhow::Result<Option<ChainRow>> {
        let Some(line) = self.lines.next() else {
            return Ok(None);
        };
        self.line += 1;
        let at = || format!("{} line {}", self.path.display(), self.line);
        let line = line.with_context(at)?;
        let event: ArchivedEvent = serde_json::from_str(&line).with_context(at)?;
        let row = event
            .to_row()
            .map_err(anyhow::Error::msg)
            .with_context(at)?;
        Ok(Some(row))
    }
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

/// Every event of a manifest's file, its checksum checked first.
fn read_file(dir: &Path, entry: &FileEntry) -> anyhow::Result<Vec<ChainRow>> {
    let mut file = open_checked(dir, entry)?;
    let mut rows = Vec::with_capacity(entry.events as usize);
    while let Some(r) = file.next_row()? {
        rows.push(r);
    }
    if rows.len() as u64 != entry.events {
        bail!(
            "{}: {} events, but the manifest says {}",
            file.path.display(),
            rows.len(),
            entry.events
        );
    }
    Ok(rows)
}

/// The log's rows at the positions of `rows` (sorted by position), read in batches over their
/// span.
async fn hot_rows(
    store: &dyn EventStore,
    rows: &[ChainRow],
) -> Result<HashMap<u64, ChainRow>, StoreError> {
    let wanted: HashSet<u64> = rows.iter().map(|r| r.position).collect();
    let mut out = HashMap::with_capacity(wanted.len());
    let (Some(first), Some(last)) = (
        rows.iter().map(|r| r.position).min(),
        rows.iter().map(|r| r.position).max(),
    ) else {
        return Ok(out);
    };
    let mut after = first - 1;
    while after < last {
        let batch = store.read_chain(after, BATCH).await?;
        let Some(end) = batch.last().map(|r| r.position) else {
            break;
        };
        after = end;
        for r in batch {
            if wanted.contains(&r.position) {
                out.insert(r.position, r);
            }
        }
    }
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

/// The events of every file of an archive, merged in position order, for the chain walk of
/// `eventfold verify --archive DIR` (see [`crate::verify::verify_with_archive`]).
pub struct ArchiveMerge {
    files: Vec<(String, ArchiveFile)>,
    /// The next event of each file, smallest position first.
    heads: BinaryHeap<std::cmp::Reverse<(u64, usize)>>,
    pending: Vec<Option<ChainRow>>,
    /// Archived events checked against the log.
    pub checked: u64,
    /// Files opened (checksums checked).
    pub file_count: u64,
}

impl ArchiveMerge {
    /// Opens every file of `dir`'s manifest, checking each one's size and SHA-256.
    ///
    /// # Errors
    /// A missing manifest or file, a checksum that is not the manifest's, a first line that does
    /// not decode; each named.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let manifest = Manifest::require(dir)?;
        let mut merge = Self {
            files: Vec::new(),
            heads: BinaryHeap::new(),
            pending: Vec::new(),
            checked: 0,
            file_count: 0,
        };
        for (_, entry) in manifest.files() {
            let mut file = open_checked(dir, entry)?;
            let first = file.next_row()?;
            let i = merge.files.len();
            if let Some(r) = &first {
                merge.heads.push(std::cmp::Reverse((r.position, i)));
            }
            merge.pending.push(first);
            merge.files.push((entry.name.clone(), file));
            merge.file_count += 1;
        }
        Ok(merge)
    }

    /// Takes the next archived event at or before `position`, with its file's name.
    fn take_upto(&mut self, position: u64) -> anyhow::Result<Option<(String, ChainRow)>> {
        match self.heads.peek() {
            Some(std::cmp::Reverse((p, i))) if *p <= position => {
                let i = *i;
                self.heads.pop();
                let row = self.pending[i].take().expect("a head has its row");
                let next = self.files[i].1.next_row()?;
                if let Some(n) = &next {
                    if n.position <= row.position {
                        bail!(
                            "{}: position {} follows position {}: events out of order",
                            self.files[i].0,
                            n.position,
                            row.position
                        );
                    }
                    self.heads.push(std::cmp::Reverse((n.position, i)));
                }
                self.pending[i] = next;
                Ok(Some((self.files[i].0.clone(), row)))
            }
            _ => Ok(None),
        }
    }

    /// Checks the log's next row against the archive: every archived event at or before its
    /// position must be that row's event, and a stub must have one.
    ///
    /// # Errors
    /// `Ok(Err(link))` names the first event that does not hold (field `archive`); `Err` is a
    /// file that does not decode.
    pub fn check(&mut self, row: &ChainRow) -> anyhow::Result<Result<(), BrokenLink>> {
        let mut covered = false;
        while let Some((file, archived)) = self.take_upto(row.position)? {
            if archived.position < row.position {
                return Ok(Err(BrokenLink {
                    position: archived.position,
                    stream: archived.stream(),
                    version: archived.stream_version,
                    field: "archive".into(),
                    expected: "the log's event at this position".into(),
                    found: format!("an event in {file} that the log does not hold"),
                }));
            }
            if let Err(mut broken) = archived_matches(row, &archived) {
                broken.found = format!("{} (in {file})", broken.found);
                return Ok(Err(broken));
            }
            covered = true;
            self.checked += 1;
        }
        if row.is_archived() && !covered {
            return Ok(Err(BrokenLink {
                position: row.position,
                stream: row.stream(),
                version: row.stream_version,
                field: "archive".into(),
                expected: "the archived event in a file of this archive".into(),
                found: "no file holds it".into(),
            }));
        }
        Ok(Ok(()))
    }

    /// After the walk: an archived event beyond the log's head is one the log does not hold.
    ///
    /// # Errors
    /// As [`ArchiveMerge::check`].
    pub fn finish(&mut self) -> anyhow::Result<Result<(), BrokenLink>> {
        match self.take_upto(u64::MAX)? {
            Some((file, archived)) => Ok(Err(BrokenLink {
                position: archived.position,
                stream: archived.stream(),
                version: archived.stream_version,
                field: "archive".into(),
                expected: "the log's event at this position".into(),
                found: format!("an event in {file} beyond the log's head"),
            })),
            None => Ok(Ok(())),
        }
    }
}
