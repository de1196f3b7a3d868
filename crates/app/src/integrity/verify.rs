//! `eventfold verify` and `eventfold anchor`: walk the hash chain of the whole log or of one
//! stream, name the first broken link, sign the chain head, check that the log still extends a
//! signed head.
//!
//! The chain itself (canonical bytes, links, the verifier, anchors) is
//! [`eventfold_core::chain`]; this module reads the store, times the walk and reports. An archive
//! is checked along the same walk through [`ArchiveProof`], which
//! [`super::archive::ArchiveMerge`] implements.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use eventfold_core::chain::{Anchor, BrokenLink, ChainRow, ChainVerifier, Hash, Scope};
use eventfold_core::{EventStore, StoreError};
use serde::Serialize;

/// Rows read per batch.
const BATCH: usize = 20_000;

/// Batches read ahead while one is checked, each on a task (and, on PostgreSQL, a connection) of
/// its own. Positions (versions, for a stream) are consecutive in an intact chain, so the next
/// batches start where this one should end; when a batch ends elsewhere (a gap), the reads ahead
/// are dropped and reading starts again from where it did end.
const READ_AHEAD: usize = 2;

/// What to walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The whole log, from position 1 to the head.
    All,
    /// One stream, from version 1 to its last event.
    Stream(String),
}

/// An anchor whose signature has been checked, with the hash it commits to.
#[derive(Debug, Clone)]
pub struct TrustedAnchor {
    /// The anchor file's content.
    pub anchor: Anchor,
    /// Its hash, decoded.
    pub hash: Hash,
}

impl TrustedAnchor {
    /// Reads the anchor file at `path` (written by `eventfold anchor sign`) and checks its
    /// signature with `key`: the Ed25519 public key as 64 hex characters, or a file holding them.
    ///
    /// # Errors
    /// A file that cannot be read, a key that is not one, a file that is not an anchor, or a
    /// signature that does not verify, each naming the file.
    pub fn read(path: &std::path::Path, key: &str) -> anyhow::Result<Self> {
        use anyhow::Context;
        let key_text =
            if key.trim().len() == 64 && key.trim().bytes().all(|b| b.is_ascii_hexdigit()) {
                key.to_owned()
            } else {
                std::fs::read_to_string(key)
                    .with_context(|| format!("reading public key file {key}"))?
            };
        let public = eventfold_core::chain::verifying_key(&key_text)?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading anchor {}", path.display()))?;
        let anchor: Anchor = serde_json::from_str(&text)
            .with_context(|| format!("anchor {} is not an anchor file", path.display()))?;
        let hash = anchor
            .verify(&public)
            .with_context(|| format!("anchor {}", path.display()))?;
        Ok(Self { anchor, hash })
    }
}

/// What `eventfold verify --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// True when every link held (and the anchor, if given, is extended by the log).
    pub ok: bool,
    /// `all` or `stream`.
    pub scope: &'static str,
    /// The stream walked (scope `stream`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Events whose links held.
    pub events_checked: u64,
    /// Wall time of the walk, ms.
    pub elapsed_ms: f64,
    /// `events_checked` per second of wall time.
    pub events_per_sec: f64,
    /// Of the wall time, ms spent waiting for the store's reads (the rest is checking).
    pub read_wait_ms: f64,
    /// The last event checked: its position and hash (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<Head>,
    /// The first link that does not hold: position, stream, version, field, expected, found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_broken: Option<BrokenLink>,
    /// The anchor checked (its signature verified before the walk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor: Option<AnchorCheck>,
    /// Of `events_checked`, archived events: stubs whose links were checked with the
    /// content digest they keep.
    pub archived: u64,
    /// The archive checked against the log (`--archive DIR`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveCheck>,
}

/// The result of checking an archive directory against the log.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveCheck {
    /// Files whose size and SHA-256 matched the manifest.
    pub files: u64,
    /// Archived events proven against the log's stubs (or restored rows).
    pub events_checked: u64,
}

/// A chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Head {
    /// Global position.
    pub position: u64,
    /// Hash, hex.
    pub hash: String,
}

/// The result of checking an anchor against the log.
#[derive(Debug, Clone, Serialize)]
pub struct AnchorCheck {
    /// The anchored position.
    pub position: u64,
    /// The anchored hash, hex.
    pub hash: String,
    /// When it was signed.
    pub signed_at: DateTime<Utc>,
    /// True when the event at `position` has the anchored hash and the chain holds up to it.
    pub extended: bool,
}

/// Walks the chain of `target` and reports the first broken link; with `anchor` (whole log only)
/// also that the event at the anchored position has the anchored hash. `progress` is told the
/// position reached after every batch.
///
/// # Errors
/// The store cannot be read ([`StoreError::Corrupt`] when a column has the wrong type).
pub async fn verify(
    store: Arc<dyn EventStore>,
    target: &Target,
    anchor: Option<&TrustedAnchor>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport, StoreError> {
    Ok(walk(store, target, anchor, None, progress).await?.0)
}

/// A check of the log's rows against something else read alongside the walk: an archive's
/// events (see [`super::archive::verify_with_archive`]). `check` sees every row the chain walk
/// accepted, in position order; `finish` runs after the last.
pub trait ArchiveProof: Send {
    /// Checks the log's next row. `Ok(Err(link))` names the first event that does not hold.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the other side cannot be read (an archive file that does not
    /// decode, named with its file and line).
    fn check(&mut self, row: &ChainRow) -> Result<Result<(), BrokenLink>, StoreError>;

    /// After the walk reached the log's head: what is left over on the other side.
    ///
    /// # Errors
    /// As [`ArchiveProof::check`].
    fn finish(&mut self) -> Result<Result<(), BrokenLink>, StoreError>;

    /// What was checked, for the report.
    fn summary(&self) -> ArchiveCheck;
}

/// [`verify`], with an archive checked along the walk, also returning the last checked position
/// and hash.
pub(crate) async fn walk(
    store: Arc<dyn EventStore>,
    target: &Target,
    anchor: Option<&TrustedAnchor>,
    mut merge: Option<&mut dyn ArchiveProof>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(VerifyReport, Option<(u64, Hash)>), StoreError> {
    let mut archived = 0;
    let started = Instant::now();
    let scope = match target {
        Target::All => Scope::Log,
        Target::Stream(_) => Scope::Stream,
    };
    let mut verifier = ChainVerifier::new(scope);
    let mut first_broken = None;
    let mut anchored: Option<bool> = None;
    // Each read refills a batch already checked (`spare`), so the walk allocates per batch in
    // flight, not per row.
    let read = |after: u64, mut rows: Vec<ChainRow>| {
        let store = store.clone();
        let target = target.clone();
        tokio::spawn(async move {
            match target {
                Target::All => store
                    .read_chain_into(after, BATCH, &mut rows)
                    .await
                    .map(|()| rows),
                // `after` is the last version read here.
                Target::Stream(s) => store.read_stream_chain(&s, after + 1, BATCH).await,
            }
        })
    };
    let mut spare: Vec<Vec<ChainRow>> = Vec::new();
    let cursor = |row: &ChainRow| match target {
        Target::All => row.position,
        Target::Stream(_) => row.stream_version,
    };
    let mut ahead = std::collections::VecDeque::new();
    let mut planned = 0u64;
    let mut expected = 0u64;
    let mut read_wait = 0.0;
    'walk: loop {
        while ahead.len() < READ_AHEAD {
            ahead.push_back((
                planned,
                read(
                    planned,
                    spare.pop().unwrap_or_else(|| Vec::with_capacity(BATCH)),
                ),
            ));
            planned += BATCH as u64;
        }
        let (from, reading) = ahead.pop_front().expect("reads ahead");
        let waiting = Instant::now();
        let rows = reading
            .await
            .map_err(|e| StoreError::Backend(Box::new(e)))??;
        read_wait += waiting.elapsed().as_secs_f64();
        if from != expected {
            // The batch before ended elsewhere than planned: read again from where it ended.
            ahead.clear();
            planned = expected;
            spare.push(rows);
            continue;
        }
        let Some(last) = rows.last() else { break };
        expected = cursor(last);
        for row in &rows {
            if let Err(broken) = verifier.check(row) {
                first_broken = Some(broken);
                break 'walk;
            }
            archived += u64::from(row.is_archived());
            if let Some(m) = merge.as_deref_mut() {
                if let Err(broken) = m.check(row)? {
                    first_broken = Some(broken);
                    break 'walk;
                }
            }
            if let Some(a) = anchor.filter(|a| a.anchor.position == row.position) {
                let held = row.hash.as_deref() == Some(a.hash.as_slice());
                anchored = Some(held);
                if !held {
                    first_broken = Some(BrokenLink {
                        position: row.position,
                        stream: row.stream(),
                        version: row.stream_version,
                        field: "anchor".into(),
                        expected: a.anchor.hash.clone(),
                        found: row.hash.as_deref().map_or("none".into(), hex::encode),
                    });
                    break 'walk;
                }
            }
        }
        progress(rows.last().map_or(0, |r| r.position));
        if rows.len() < BATCH {
            break;
        }
        spare.push(rows);
    }
    if let (Some(m), None) = (merge.as_deref_mut(), &first_broken) {
        first_broken = m.finish()?.err();
    }
    let head = verifier.head();
    if let (Some(a), None, None) = (anchor, &first_broken, anchored) {
        // The log ends before the anchored position: events were removed.
        anchored = Some(false);
        let (position, _) = head.unwrap_or((0, [0; 32]));
        first_broken = Some(BrokenLink {
            position: a.anchor.position,
            stream: String::new(),
            version: 0,
            field: "anchor".into(),
            expected: format!("an event at position {}", a.anchor.position),
            found: format!("the log ends at position {position}"),
        });
    }
    let elapsed = started.elapsed().as_secs_f64();
    let checked = verifier.checked();
    if let (Target::Stream(s), 0, None) = (target, checked, &first_broken) {
        return Err(StoreError::InvalidRequest(format!(
            "stream {s} has no events to verify"
        )));
    }
    let report = VerifyReport {
        ok: first_broken.is_none(),
        scope: match target {
            Target::All => "all",
            Target::Stream(_) => "stream",
        },
        stream: match target {
            Target::All => None,
            Target::Stream(s) => Some(s.clone()),
        },
        events_checked: checked,
        elapsed_ms: elapsed * 1000.0,
        events_per_sec: checked as f64 / elapsed.max(1e-9),
        read_wait_ms: read_wait * 1000.0,
        head: head.map(|(position, hash)| Head {
            position,
            hash: hex::encode(hash),
        }),
        first_broken,
        anchor: anchor.map(|a| AnchorCheck {
            position: a.anchor.position,
            hash: a.anchor.hash.clone(),
            signed_at: a.anchor.signed_at,
            extended: anchored == Some(true),
        }),
        archived,
        archive: merge.map(|m| m.summary()),
    };
    Ok((report, head))
}

/// Verifies the whole log and signs its head with `key` at `now`.
///
/// # Errors
/// The log is empty or its chain is broken (nothing is signed), or the store cannot be read.
pub async fn sign_anchor(
    store: Arc<dyn EventStore>,
    key: &ed25519_dalek::SigningKey,
    now: DateTime<Utc>,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<(Anchor, VerifyReport)> {
    let (report, head) = walk(store, &Target::All, None, None, progress).await?;
    if let Some(broken) = &report.first_broken {
        anyhow::bail!("refusing to sign a broken chain: {broken}");
    }
    let (position, hash) =
        head.ok_or_else(|| anyhow::anyhow!("nothing to anchor: the log is empty"))?;
    Ok((Anchor::sign(key, position, &hash, now), report))
}
