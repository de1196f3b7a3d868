//! Archived events on the NATS store.
//!
//! A JetStream message cannot be changed in place, only deleted. Archiving an event therefore
//! writes its **stub** (the envelope with `prev_hash` and `hash`, and the content digest; no
//! payload) into the read-model store, under the projection [`ARCHIVE`], and then deletes the
//! message from the JetStream stream. Restoring cannot put a message back at its old sequence,
//! so a restored event stays in the same document with its payload again. Reads merge these
//! documents into what JetStream returns, by global position (the log) or stream version (a
//! stream): for the positions they cover, the documents are the log. Back them up with the
//! stream: losing them loses archived stubs and restored payloads (the archive files still hold
//! the payloads).
//!
//! Documents, all committed together (the projection's checkpoint counts the changes, so two
//! archivers at once cannot overwrite each other):
//! - `p:{position:020}`: the event ([`ColdDoc`]);
//! - `s:{escaped stream}:{version:020}`: its position, for stream reads;
//! - `l:{escaped stream}`: the stream's highest archived version and its hash, so the stream's
//!   version survives the deletion of its last message;
//! - `a:{position:020}`: present while the event is archived (not restored), for counting.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use eventfold_core::chain::Hash;
use eventfold_core::read_model::{key_after, ProjectionCommit};
use eventfold_core::{DocWrite, ReadModelStore, StoreError};
use serde::{Deserialize, Serialize};

use crate::message::{self, Decoded, Head};

/// The projection (in the read-model store) that holds archived and restored events.
pub const ARCHIVE: &str = "nats-archive";

/// Most documents read at once (a page when counting, the most one read merges in).
pub(crate) const PAGE: usize = 10_000;

/// An archived (or restored) event, as kept in the read-model store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ColdDoc {
    /// The envelope, as the message held it.
    pub head: Head,
    /// The content digest, hex.
    pub d: String,
    /// The payload once restored; `None` while archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

/// A stream's highest archived version.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LastDoc {
    v: u64,
    h: String,
}

pub(crate) fn position_key(position: u64) -> String {
    format!("p:{position:020}")
}

fn stream_key(stream_id: &str, version: u64) -> String {
    format!("s:{}:{version:020}", message::escape(stream_id))
}

fn last_key(stream_id: &str) -> String {
    format!("l:{}", message::escape(stream_id))
}

fn archived_key(position: u64) -> String {
    format!("a:{position:020}")
}

fn corrupt(key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("archive document {ARCHIVE}/{key}: {e}"))
}

fn hash_of(hex_text: &str) -> Option<Hash> {
    hex::decode(hex_text).ok()?.try_into().ok()
}

impl ColdDoc {
    /// The event as reads return it: its payload when restored, an archived stub otherwise.
    pub(crate) fn decoded(&self, position: u64) -> Result<Decoded, StoreError> {
        let archived = match &self.payload {
            Some(_) => None,
            None => Some(hash_of(&self.d).ok_or_else(|| {
                corrupt(
                    &position_key(position),
                    "the content digest is not 32 bytes of hex",
                )
            })?),
        };
        Ok(Decoded {
            position,
            head: self.head.clone(),
            payload: Bytes::from(self.payload.clone().unwrap_or_default()),
            archived,
        })
    }

    /// The writes that store this document for the event at `position`, with the stream's
    /// highest archived version raised to it when `raise_last`.
    pub(crate) fn writes(&self, position: u64, raise_last: bool) -> Vec<DocWrite> {
        let mut out = vec![
            DocWrite {
                key: position_key(position),
                doc: Some(serde_json::to_string(self).expect("an archive document serialises")),
            },
            DocWrite {
                key: stream_key(&self.head.s, self.head.v),
                doc: Some(position.to_string()),
            },
            DocWrite {
                key: archived_key(position),
                doc: self.payload.is_none().then(String::new),
            },
        ];
        if raise_last {
            let last = LastDoc {
                v: self.head.v,
                h: self.head.h.clone(),
            };
            out.push(DocWrite {
                key: last_key(&self.head.s),
                doc: Some(serde_json::to_string(&last).expect("an archive document serialises")),
            });
        }
        out
    }
}

/// Reads and writes the archive's documents.
pub(crate) struct Cold {
    read_models: Arc<dyn ReadModelStore>,
}

impl Cold {
    pub(crate) fn new(read_models: Arc<dyn ReadModelStore>) -> Self {
        Self { read_models }
    }

    fn docs(found: Vec<(String, String)>) -> Result<Vec<(u64, ColdDoc)>, StoreError> {
        found
            .into_iter()
            .map(|(key, doc)| {
                let position = key
                    .strip_prefix("p:")
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| corrupt(&key, "not an event's key"))?;
                let doc: ColdDoc = serde_json::from_str(&doc).map_err(|e| corrupt(&key, e))?;
                Ok((position, doc))
            })
            .collect()
    }

    /// The documents at `positions` (those there are).
    pub(crate) async fn at(&self, positions: &[u64]) -> Result<HashMap<u64, ColdDoc>, StoreError> {
        let keys: Vec<String> = positions.iter().map(|p| position_key(*p)).collect();
        let found = self.read_models.get_docs(ARCHIVE, &keys).await?;
        Ok(Self::docs(found)?.into_iter().collect())
    }

    /// Events after `after` up to `upto` (to the end when `None`), in position order, at most
    /// `limit`.
    pub(crate) async fn in_log(
        &self,
        after: u64,
        upto: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Decoded>, StoreError> {
        if upto.is_some_and(|u| u <= after) {
            return Ok(Vec::new());
        }
        let from = position_key(after.saturating_add(1));
        let to = upto.map_or_else(|| "p:~".to_owned(), position_key);
        let found = self
            .read_models
            .range_docs(ARCHIVE, &from, &to, limit.min(PAGE))
            .await?;
        Self::docs(found)?
            .into_iter()
            .map(|(p, d)| d.decoded(p))
            .collect()
    }

    /// Events of `stream_id` from version `from_version`, in version order, at most `limit`.
    pub(crate) async fn of_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<Decoded>, StoreError> {
        let from = stream_key(stream_id, from_version);
        let to = format!("s:{}:~", message::escape(stream_id));
        let found = self
            .read_models
            .range_docs(ARCHIVE, &from, &to, limit.min(PAGE))
            .await?;
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let positions = found
            .iter()
            .map(|(k, p)| p.parse::<u64>().map_err(|e| corrupt(k, e)))
            .collect::<Result<Vec<u64>, _>>()?;
        let docs = self.at(&positions).await?;
        let mut out = positions
            .iter()
            .map(|p| {
                docs.get(p)
                    .ok_or_else(|| corrupt(&position_key(*p), "missing for its stream entry"))?
                    .decoded(*p)
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|d| d.head.v);
        Ok(out)
    }

    /// The highest archived version of each of `streams` that has one, with its hash.
    pub(crate) async fn last_of(
        &self,
        streams: &[&String],
    ) -> Result<HashMap<String, (u64, Hash)>, StoreError> {
        let keys: HashMap<String, &String> = streams.iter().map(|s| (last_key(s), *s)).collect();
        let wanted: Vec<String> = keys.keys().cloned().collect();
        let mut out = HashMap::new();
        for (key, doc) in self.read_models.get_docs(ARCHIVE, &wanted).await? {
            let last: LastDoc = serde_json::from_str(&doc).map_err(|e| corrupt(&key, e))?;
            let hash = hash_of(&last.h).ok_or_else(|| corrupt(&key, "hash is not 32 bytes"))?;
            if let Some(stream) = keys.get(&key) {
                out.insert((*stream).clone(), (last.v, hash));
            }
        }
        Ok(out)
    }

    /// How many events after `position` are archived (not restored).
    pub(crate) async fn archived_after(&self, position: u64) -> Result<u64, StoreError> {
        let mut from = archived_key(position.saturating_add(1));
        let mut count = 0;
        loop {
            let page = self
                .read_models
                .range_docs(ARCHIVE, &from, "a:~", PAGE)
                .await?;
            count += page.len() as u64;
            match page.last() {
                Some((key, _)) if page.len() == PAGE => from = key_after(key),
                _ => return Ok(count),
            }
        }
    }

    /// Commits `writes` as one change, unless another change was committed since `generation`
    /// (then `CheckpointMoved`: read again and decide again).
    pub(crate) async fn commit(
        &self,
        generation: u64,
        writes: Vec<DocWrite>,
    ) -> Result<(), StoreError> {
        self.read_models
            .commit_projections(vec![ProjectionCommit {
                projection: ARCHIVE.to_owned(),
                writes,
                from_checkpoint: generation,
                to_checkpoint: generation + 1,
            }])
            .await
    }

    /// The count of changes committed so far.
    pub(crate) async fn generation(&self) -> Result<u64, StoreError> {
        self.read_models.projection_checkpoint(ARCHIVE).await
    }
}

/// Merges `cold` into `hot` (both in order of `key`); where both hold the same key, the
/// archive's document wins (a message whose deletion did not happen yet). `cold_cut`: the
/// archive's read stopped at its limit, so documents after its last one were not read; nothing
/// after that key is returned (the caller's next read goes on from there).
pub(crate) fn merge(
    hot: Vec<Decoded>,
    cold: Vec<Decoded>,
    cold_cut: bool,
    key: impl Fn(&Decoded) -> u64,
) -> Vec<Decoded> {
    if cold.is_empty() {
        return hot;
    }
    let mut hot = hot;
    if cold_cut {
        let last = cold.last().map_or(0, &key);
        hot.retain(|h| key(h) <= last);
    }
    let mut out = Vec::with_capacity(hot.len() + cold.len());
    let mut hot = hot.into_iter().peekable();
    for c in cold {
        while let Some(h) = hot.next_if(|h| key(h) < key(&c)) {
            out.push(h);
        }
        hot.next_if(|h| key(h) == key(&c));
        out.push(c);
    }
    out.extend(hot);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(position: u64, archived: bool) -> Decoded {
        let head = Head {
            s: "s".into(),
            v: position,
            id: uuid::Uuid::now_v7(),
            t: "T".into(),
            sv: 1,
            et: 0,
            it: 0,
            a: "system:t".into(),
            c: None,
            r: None,
            tn: "default".into(),
            via: None,
            b: false,
            ph: String::new(),
            h: String::new(),
            idem: None,
            fence: None,
        };
        Decoded {
            position,
            head,
            payload: Bytes::new(),
            archived: archived.then_some([7; 32]),
        }
    }

    fn positions(d: &[Decoded]) -> Vec<(u64, bool)> {
        d.iter()
            .map(|d| (d.position, d.archived.is_some()))
            .collect()
    }

    #[test]
    fn documents_merge_in_by_key_and_win_over_a_message_not_deleted_yet() {
        let hot = vec![at(2, false), at(3, false), at(6, false)];
        let cold = vec![at(1, true), at(3, true), at(5, true), at(9, true)];
        let merged = merge(hot, cold, false, |d| d.position);
        assert_eq!(
            positions(&merged),
            [
                (1, true),
                (2, false),
                (3, true),
                (5, true),
                (6, false),
                (9, true)
            ]
        );
    }

    #[test]
    fn a_cut_archive_read_returns_nothing_past_its_last_document() {
        // The archive's read stopped at 4 (its limit): 5 may be archived too, so message 6
        // must wait for the next read, which starts after 4.
        let hot = vec![at(2, false), at(6, false), at(7, false)];
        let cold = vec![at(1, true), at(3, true), at(4, true)];
        let merged = merge(hot, cold, true, |d| d.position);
        assert_eq!(
            positions(&merged),
            [(1, true), (2, false), (3, true), (4, true)]
        );
    }
}
