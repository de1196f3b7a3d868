//! `eventfold verify --archive DIR`: every archived event proven against the log along the chain
//! walk, and every stub against the archive.

use std::collections::BinaryHeap;
use std::path::Path;
use std::sync::Arc;

use anyhow::bail;
use eventfold_core::chain::{archived_matches, BrokenLink, ChainRow};
use eventfold_core::{EventStore, StoreError};

use super::files::{open_checked, ArchiveFile, Manifest};
use crate::integrity::verify::{
    walk, ArchiveCheck, ArchiveProof, Target, TrustedAnchor, VerifyReport,
};

/// [`crate::integrity::verify::verify`] of the whole log, also checking the archive `merge` reads:
/// every archived event must be the log's event at its position (its content digest the stub's,
/// its links the stub's), and every stub must have its event in the archive. A mismatch is the
/// report's `first_broken` with field `archive`.
///
/// # Errors
/// The store cannot be read, or an archive file does not decode ([`StoreError::Corrupt`] naming
/// the file and line).
pub async fn verify_with_archive(
    store: Arc<dyn EventStore>,
    anchor: Option<&TrustedAnchor>,
    merge: &mut ArchiveMerge,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport, StoreError> {
    Ok(walk(store, &Target::All, anchor, Some(merge), progress)
        .await?
        .0)
}

impl ArchiveProof for ArchiveMerge {
    fn check(&mut self, row: &ChainRow) -> Result<Result<(), BrokenLink>, StoreError> {
        ArchiveMerge::check(self, row).map_err(archive_file)
    }

    fn finish(&mut self) -> Result<Result<(), BrokenLink>, StoreError> {
        ArchiveMerge::finish(self).map_err(archive_file)
    }

    fn summary(&self) -> ArchiveCheck {
        ArchiveCheck {
            files: self.file_count,
            events_checked: self.checked,
        }
    }
}

fn archive_file(e: anyhow::Error) -> StoreError {
    StoreError::Corrupt(format!("{e:#}"))
}

/// The events of every file of an archive, merged in position order, for the chain walk of
/// `eventfold verify --archive DIR` (see [`verify_with_archive`]).
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
