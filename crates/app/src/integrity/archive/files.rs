//! An archive directory on disk: gzip month files of one JSON event per line
//! ([`ArchivedEvent`]) and `manifest.json` ([`Manifest`]) naming every run's files with their
//! event counts, first and last chain heads, sizes and SHA-256 checksums.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use eventfold_core::chain::ChainRow;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::integrity::verify::Head;

/// The manifest's file name in an archive directory.
pub const MANIFEST: &str = "manifest.json";

/// The manifest's format tag.
pub const MANIFEST_FORMAT: &str = "eventfold-archive/1";

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
    /// The principal the actor acted through, if any (absent in archives written before
    /// events had it, which read as none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Whether the event is backfilled history (absent, read as false, in archives written
    /// before events had it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backfill: bool,
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
                via: row.via.as_deref().map(|b| text("via", b)).transpose()?,
                backfill: row.backfill,
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
            via: self.via.as_ref().map(|v| v.as_bytes().to_vec()),
            backfill: self.backfill,
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
    pub(super) fn files(&self) -> impl Iterator<Item = (&Run, &FileEntry)> {
        self.runs
            .iter()
            .flat_map(|r| r.files.iter().map(move |f| (r, f)))
    }
}

pub(super) fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// One month file being written: gzip over a buffered file, hashed afterwards.
pub(super) struct MonthWriter {
    path: PathBuf,
    name: String,
    month: String,
    gz: GzEncoder<BufWriter<File>>,
    events: u64,
    first: Option<Head>,
    last: Option<Head>,
}

impl MonthWriter {
    pub(super) fn create(dir: &Path, month: &str, run: u32) -> anyhow::Result<Self> {
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

    pub(super) fn write(&mut self, event: &ArchivedEvent) -> anyhow::Result<()> {
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

    pub(super) fn finish(self) -> anyhow::Result<FileEntry> {
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
pub(super) fn open_checked(dir: &Path, entry: &FileEntry) -> anyhow::Result<ArchiveFile> {
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
pub(super) struct ArchiveFile {
    pub(super) path: PathBuf,
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
    pub(super) fn next_row(&mut self) -> anyhow::Result<Option<ChainRow>> {
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

/// Every event of a manifest's file, its checksum checked first.
pub(super) fn read_file(dir: &Path, entry: &FileEntry) -> anyhow::Result<Vec<ChainRow>> {
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
