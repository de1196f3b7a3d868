//! The hash chain: tamper evidence for the stored log.
//!
//! Every event stores two SHA-256 hashes (32 bytes each):
//! - `prev_hash`: the `hash` of the event at the previous global position (32 zero bytes for
//!   position 1): the **global chain**;
//! - `hash` = SHA-256(`prev_hash` || `stream_prev_hash` || u64 big-endian position || content
//!   digest), where `stream_prev_hash` is the `hash` of the stream's previous event (zeros for
//!   version 1): the **stream chain**; and the content digest is SHA-256 of the event's canonical
//!   bytes ([`Content`]). `stream_prev_hash` is not stored: it is the hash of the row before in
//!   the stream, which every walk has in hand (storing it cost 33 bytes a row and a few percent
//!   of append throughput).
//!
//! So an event's hash commits to everything before it in the log and in its stream: changing a
//! byte of a payload, of metadata, a stream version or a position, or swapping two events, breaks
//! the link at that event (or, if the attacker recomputed that hash too, at the next one). An
//! attacker who rewrites every hash from the change onwards is caught by an [`Anchor`]: the chain
//! head signed earlier with an Ed25519 key kept elsewhere.
//!
//! Design source: Crosby and Wallach, "Efficient Data Structures for Tamper-Evident Logging"
//! (USENIX Security 2009), hash chains with signed commitments; the shop seed's tamper-evidence
//! requirement.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::envelope::NewEvent;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The `prev_hash` of position 1 and the `stream_prev_hash` of a stream's version 1.
pub const ZERO_HASH: Hash = [0; 32];

/// An event's content in the bytes the store keeps, field by field: everything but its position
/// and its links.
///
/// Canonical bytes (hashed in this order): every text and byte field is a u32 big-endian length
/// and the bytes; stream version u64, schema version i64, event and ingest time i64 microseconds
/// since the Unix epoch (UTC), all big-endian; a missing causation or correlation id is one byte 0,
/// a present one byte 1 and its 16 bytes. The `via` principal, when there is one, follows the
/// payload as one more length-prefixed field; when there is none nothing follows, so events stored
/// before the field existed hash as they always did (and the length prefixes keep the two forms
/// apart). A backfilled event (history loaded after the fact) ends with one more length-prefixed
/// field, the 8 bytes `backfill`; it cannot be taken for a `via`, which always holds a `:`.
#[derive(Debug, Clone, Copy)]
pub struct Content<'a> {
    /// Stream id (UTF-8).
    pub stream_id: &'a [u8],
    /// Stream version after the event.
    pub stream_version: u64,
    /// Event id, 16 bytes as stored.
    pub event_id: &'a [u8],
    /// Event type (UTF-8).
    pub event_type: &'a [u8],
    /// Payload schema version.
    pub schema_version: i64,
    /// Event time, microseconds since the Unix epoch.
    pub event_time_us: i64,
    /// Ingest time, microseconds since the Unix epoch.
    pub ingest_time_us: i64,
    /// Actor, `kind:id`.
    pub actor: &'a [u8],
    /// Causation id, 16 bytes, if any.
    pub causation_id: Option<&'a [u8]>,
    /// Correlation id, 16 bytes, if any.
    pub correlation_id: Option<&'a [u8]>,
    /// Tenant id.
    pub tenant_id: &'a [u8],
    /// Payload, JSON text.
    pub payload: &'a [u8],
    /// The principal the actor acted through, `kind:id`, if any.
    pub via: Option<&'a [u8]>,
    /// Whether the event was recorded as history by a backfill (see
    /// [`crate::EventMetadata::backfill`]).
    pub backfill: bool,
}

impl<'a> Content<'a> {
    /// The content of `event`, appended to `stream_id` at `stream_version` with ingest time
    /// `ingest_time_us`. Times are taken at microsecond precision, as both stores keep them.
    pub fn of_new(
        stream_id: &'a str,
        stream_version: u64,
        event: &'a NewEvent,
        ingest_time_us: i64,
    ) -> Self {
        let m = &event.metadata;
        Self {
            stream_id: stream_id.as_bytes(),
            stream_version,
            event_id: event.event_id.as_bytes(),
            event_type: event.event_type.as_bytes(),
            schema_version: i64::from(event.schema_version),
            event_time_us: event.event_time.timestamp_micros(),
            ingest_time_us,
            actor: m.actor.as_str().as_bytes(),
            causation_id: m.causation_id.as_ref().map(|u| u.as_bytes().as_slice()),
            correlation_id: m.correlation_id.as_ref().map(|u| u.as_bytes().as_slice()),
            tenant_id: m.tenant_id.as_bytes(),
            payload: event.payload.as_bytes(),
            via: m.via.as_ref().map(|a| a.as_str().as_bytes()),
            backfill: m.backfill,
        }
    }

    /// SHA-256 of the canonical bytes.
    pub fn digest(&self) -> Hash {
        fn bytes(h: &mut Sha256, b: &[u8]) {
            h.update((b.len() as u32).to_be_bytes());
            h.update(b);
        }
        fn optional(h: &mut Sha256, b: Option<&[u8]>) {
            match b {
                None => h.update([0u8]),
                Some(b) => {
                    h.update([1u8]);
                    h.update(b);
                }
            }
        }
        let mut h = Sha256::new();
        bytes(&mut h, self.stream_id);
        h.update(self.stream_version.to_be_bytes());
        bytes(&mut h, self.event_id);
        bytes(&mut h, self.event_type);
        h.update(self.schema_version.to_be_bytes());
        h.update(self.event_time_us.to_be_bytes());
        h.update(self.ingest_time_us.to_be_bytes());
        bytes(&mut h, self.actor);
        optional(&mut h, self.causation_id);
        optional(&mut h, self.correlation_id);
        bytes(&mut h, self.tenant_id);
        bytes(&mut h, self.payload);
        if let Some(via) = self.via {
            bytes(&mut h, via);
        }
        if self.backfill {
            bytes(&mut h, b"backfill");
        }
        h.finalize().into()
    }
}

/// `hash` = SHA-256(`prev_hash` || `stream_prev_hash` || u64 big-endian `position` || `digest`).
/// PostgreSQL computes the same in `eventfold_append` with `sha256()` and `int8send()`.
pub fn link(prev_hash: &Hash, stream_prev_hash: &Hash, position: u64, digest: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(stream_prev_hash);
    h.update(position.to_be_bytes());
    h.update(digest);
    h.finalize().into()
}

/// A stored `hash` column as the hash to link to: its 32 bytes, or [`ZERO_HASH`] when NULL
/// (appended with the chain off) or malformed. Either way the row it came from is the one
/// `verify` reports, so the appender need not refuse to write after it.
pub fn stored_hash(column: Option<Vec<u8>>) -> Hash {
    column
        .and_then(|h| Hash::try_from(h.as_slice()).ok())
        .unwrap_or(ZERO_HASH)
}

/// The two chain columns of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Links {
    /// Hash of the previous event in the log.
    pub prev_hash: Hash,
    /// This event's hash.
    pub hash: Hash,
}

/// Computes links for events in position order, from a known log head and stream heads: what an
/// appender does under its lock, and what a backfill does over old rows.
#[derive(Debug, Clone)]
pub struct Chainer {
    prev: Hash,
    streams: HashMap<String, Hash>,
}

impl Chainer {
    /// A chainer after an event whose hash is `head_hash` (or [`ZERO_HASH`] on an empty log).
    /// Streams not given with [`Chainer::stream_head`] start at [`ZERO_HASH`].
    pub fn new(head_hash: Hash) -> Self {
        Self {
            prev: head_hash,
            streams: HashMap::new(),
        }
    }

    /// Sets the hash of `stream`'s last stored event.
    pub fn stream_head(&mut self, stream: &str, hash: Hash) {
        self.streams.insert(stream.to_owned(), hash);
    }

    /// The links of the next event: at `position`, in `stream`, with content digest `digest`.
    pub fn next(&mut self, position: u64, stream: &str, digest: &Hash) -> Links {
        let stream_prev_hash = self.streams.get(stream).copied().unwrap_or(ZERO_HASH);
        let hash = link(&self.prev, &stream_prev_hash, position, digest);
        let links = Links {
            prev_hash: self.prev,
            hash,
        };
        self.prev = hash;
        self.streams.insert(stream.to_owned(), hash);
        links
    }
}

/// A stored event with its chain columns, raw: texts as bytes and hashes as stored (any length,
/// or `None` when the column is NULL), so that verification reports a tampered row instead of
/// failing to decode it.
///
/// A store that reads many batches can refill rows in place ([`ChainRow::default`] for a new
/// one, [`refill`] and [`refill_optional`] for its byte fields), reusing their buffers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainRow {
    /// Global position.
    pub position: u64,
    /// Stream id bytes.
    pub stream_id: Vec<u8>,
    /// Stream version.
    pub stream_version: u64,
    /// Event id bytes (16 when intact).
    pub event_id: Vec<u8>,
    /// Event type bytes.
    pub event_type: Vec<u8>,
    /// Schema version.
    pub schema_version: i64,
    /// Event time, microseconds since the Unix epoch.
    pub event_time_us: i64,
    /// Ingest time, microseconds since the Unix epoch.
    pub ingest_time_us: i64,
    /// Actor bytes.
    pub actor: Vec<u8>,
    /// Causation id bytes.
    pub causation_id: Option<Vec<u8>>,
    /// Correlation id bytes.
    pub correlation_id: Option<Vec<u8>>,
    /// Tenant id bytes.
    pub tenant_id: Vec<u8>,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// The `via` principal's bytes, if any.
    pub via: Option<Vec<u8>>,
    /// Whether the event is backfilled history (the column is set).
    pub backfill: bool,
    /// Stored `prev_hash`.
    pub prev_hash: Option<Vec<u8>>,
    /// Stored `hash`.
    pub hash: Option<Vec<u8>>,
    /// For an archived event: the content digest it had, kept in the hot stub while the
    /// payload lives in an archive file (the stub's payload is empty); `None` for a hot event.
    pub archived_digest: Option<Vec<u8>>,
}

/// Sets a refilled row's byte field to `bytes`, reusing its buffer.
pub fn refill(field: &mut Vec<u8>, bytes: &[u8]) {
    field.clear();
    field.extend_from_slice(bytes);
}

/// Sets a refilled row's nullable byte field to `bytes` (`None` for NULL), reusing its buffer
/// when it has one.
pub fn refill_optional(field: &mut Option<Vec<u8>>, bytes: Option<&[u8]>) {
    match (bytes, field) {
        (None, field) => *field = None,
        (Some(bytes), Some(v)) => refill(v, bytes),
        (Some(bytes), field) => *field = Some(bytes.to_vec()),
    }
}

impl ChainRow {
    /// The row's content, as hashed.
    pub fn content(&self) -> Content<'_> {
        Content {
            stream_id: &self.stream_id,
            stream_version: self.stream_version,
            event_id: &self.event_id,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            event_time_us: self.event_time_us,
            ingest_time_us: self.ingest_time_us,
            actor: &self.actor,
            causation_id: self.causation_id.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            tenant_id: &self.tenant_id,
            payload: &self.payload,
            via: self.via.as_deref(),
            backfill: self.backfill,
        }
    }

    /// Whether this row is an archived event's stub.
    pub fn is_archived(&self) -> bool {
        self.archived_digest.is_some()
    }

    /// The stream id as text (lossy: a tampered id still prints).
    pub fn stream(&self) -> String {
        String::from_utf8_lossy(&self.stream_id).into_owned()
    }
}

/// The first place a chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenLink {
    /// Global position of the row where it breaks.
    pub position: u64,
    /// Its stream.
    pub stream: String,
    /// Its stream version.
    pub version: u64,
    /// What does not hold: `position` (a gap or a repeat), `prev_hash`, `stream_version`,
    /// `archived_digest` (an archived stub that is not one), `hash` (the content or position was
    /// changed, or the stream's previous event), `anchor`, or, checking an archive,
    /// `archive` (an event of the archive differs from the log's).
    pub field: String,
    /// What the chain requires there (hex for hashes).
    pub expected: String,
    /// What is stored (hex for hashes; `none` for NULL).
    pub found: String,
}

impl std::fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chain broken at position {} (stream {} version {}): {} expected {} found {}",
            self.position, self.stream, self.version, self.field, self.expected, self.found
        )
    }
}

/// Whether `archived`, an event read back from an archive file, is the event the log holds
/// at its position: `hot` is the log's row there, either the archived stub or, after a restore,
/// the full event. Position, stream, version and both hashes must be equal, and the archived
/// content's digest must be the stub's `archived_digest` (or the restored row's own digest). The
/// hot row's own links are [`ChainVerifier`]'s to check, so an archive that matches its stubs is
/// proven against the chain.
///
/// # Errors
/// A [`BrokenLink`] with field `archive` naming what differs.
pub fn archived_matches(hot: &ChainRow, archived: &ChainRow) -> Result<(), BrokenLink> {
    let differs = |what: &str, expected: String, found: String| BrokenLink {
        position: hot.position,
        stream: hot.stream(),
        version: hot.stream_version,
        field: "archive".to_owned(),
        expected: format!("{what} {expected}"),
        found: format!("{what} {found}"),
    };
    if archived.position != hot.position {
        return Err(differs(
            "position",
            hot.position.to_string(),
            archived.position.to_string(),
        ));
    }
    if archived.stream_id != hot.stream_id || archived.stream_version != hot.stream_version {
        return Err(differs(
            "stream",
            format!("{}@{}", hot.stream(), hot.stream_version),
            format!("{}@{}", archived.stream(), archived.stream_version),
        ));
    }
    for (what, h, a) in [
        ("prev_hash", &hot.prev_hash, &archived.prev_hash),
        ("hash", &hot.hash, &archived.hash),
    ] {
        if h != a {
            return Err(differs(what, show(h.as_deref()), show(a.as_deref())));
        }
    }
    let expected = match hot.archived_digest.as_deref() {
        Some(d) => d.to_vec(),
        None => hot.content().digest().to_vec(),
    };
    let found = archived.content().digest();
    if expected != found {
        return Err(differs(
            "content digest",
            hex::encode(expected),
            hex::encode(found),
        ));
    }
    Ok(())
}

fn show(stored: Option<&[u8]>) -> String {
    stored.map_or_else(|| "none".to_owned(), hex::encode)
}

/// Whether the chain covers the whole log (positions from 1 without gaps, the global links and
/// every stream's links) or one stream (its versions from 1 and its stream links).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Rows in position order from position 1.
    Log,
    /// One stream's rows in version order from version 1.
    Stream,
}

/// Checks rows one by one against the chain; stops being useful at the first [`BrokenLink`].
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    scope: Scope,
    last_position: u64,
    prev: Hash,
    /// Each stream's last version and hash. foldhash (seeded per map) instead of SipHash: one
    /// lookup per row is a visible share of a walk.
    streams: HashMap<Vec<u8>, (u64, Hash), foldhash::fast::RandomState>,
    checked: u64,
}

impl ChainVerifier {
    /// A verifier for `scope`, before the first row.
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            last_position: 0,
            prev: ZERO_HASH,
            streams: HashMap::default(),
            checked: 0,
        }
    }

    /// Rows checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// The last checked row's position and hash (`None` before the first).
    pub fn head(&self) -> Option<(u64, Hash)> {
        (self.checked > 0).then_some((self.last_position, self.prev))
    }

    /// Checks the next row.
    ///
    /// # Errors
    /// The first link of the row that does not hold, in this order: position (the next one in
    /// the log; increasing within a stream), `prev_hash` (log scope), stream version, then the
    /// `hash` recomputed from `prev_hash`, the stream's previous hash, position and content. For
    /// an archived stub the content digest is the one the stub keeps, which must be 32 bytes
    /// beside an empty payload; whether the archive file holds that content is
    /// [`archived_matches`]'s question.
    pub fn check(&mut self, row: &ChainRow) -> Result<(), BrokenLink> {
        let broken = |field: &str, expected: String, found: String| BrokenLink {
            position: row.position,
            stream: row.stream(),
            version: row.stream_version,
            field: field.to_owned(),
            expected,
            found,
        };
        match self.scope {
            Scope::Log if row.position != self.last_position + 1 => {
                return Err(broken(
                    "position",
                    (self.last_position + 1).to_string(),
                    row.position.to_string(),
                ))
            }
            Scope::Stream if row.position <= self.last_position => {
                return Err(broken(
                    "position",
                    format!("above {}", self.last_position),
                    row.position.to_string(),
                ))
            }
            _ => {}
        }
        let stored_prev = row.prev_hash.as_deref();
        if self.scope == Scope::Log && stored_prev != Some(self.prev.as_slice()) {
            return Err(broken(
                "prev_hash",
                hex::encode(self.prev),
                show(stored_prev),
            ));
        }
        let slot = self.streams.get_mut(row.stream_id.as_slice());
        let (last_version, stream_head) = slot.as_deref().copied().unwrap_or((0, ZERO_HASH));
        if row.stream_version != last_version + 1 {
            return Err(broken(
                "stream_version",
                (last_version + 1).to_string(),
                row.stream_version.to_string(),
            ));
        }
        // Log scope: prev_hash equals self.prev here. Stream scope: the stored one is an input.
        let prev: Hash = match stored_prev.and_then(|p| Hash::try_from(p).ok()) {
            Some(p) => p,
            None => return Err(broken("prev_hash", "32 bytes".into(), show(stored_prev))),
        };
        let digest = match row.archived_digest.as_deref() {
            None => row.content().digest(),
            Some(d) => match Hash::try_from(d) {
                Ok(d) if row.payload.is_empty() => d,
                _ => {
                    return Err(broken(
                        "archived_digest",
                        "32 bytes beside an empty payload".into(),
                        format!(
                            "{} beside {} payload bytes",
                            show(Some(d)),
                            row.payload.len()
                        ),
                    ))
                }
            },
        };
        let hash = link(&prev, &stream_head, row.position, &digest);
        if row.hash.as_deref() != Some(hash.as_slice()) {
            return Err(broken("hash", hex::encode(hash), show(row.hash.as_deref())));
        }
        self.last_position = row.position;
        self.prev = hash;
        match slot {
            Some(head) => *head = (row.stream_version, hash),
            None => {
                self.streams
                    .insert(row.stream_id.clone(), (row.stream_version, hash));
            }
        }
        self.checked += 1;
        Ok(())
    }
}

/// The format tag of anchor files and of the message they sign.
pub const ANCHOR_FORMAT: &str = "eventfold-anchor/1";

/// A signed chain head: proof, checked later with the public key, that the log once ended
/// at `position` with `hash`. Written as JSON by `eventfold anchor sign`.
///
/// The signature is Ed25519 (RFC 8032) over [`Anchor::message`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    /// Always [`ANCHOR_FORMAT`].
    pub format: String,
    /// The head's global position.
    pub position: u64,
    /// The head's hash, hex.
    pub hash: String,
    /// When it was signed (UTC).
    pub signed_at: DateTime<Utc>,
    /// The signer's Ed25519 public key, hex (32 bytes); informational, verification uses the key
    /// the verifier trusts.
    pub public_key: String,
    /// Ed25519 signature over [`Anchor::message`], hex (64 bytes).
    pub signature: String,
}

/// Why an anchor or a key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    /// A key is not 32 bytes of hex.
    #[error("{what} is not an Ed25519 key of 64 hex characters (32 bytes): {reason}")]
    BadKey {
        /// Which key.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The anchor file is malformed; names the field.
    #[error("anchor {field} is malformed: {reason}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify with the given key.
    #[error(
        "anchor signature does not verify with public key {given} (the anchor names key {named})"
    )]
    BadSignature {
        /// The key given to verify with, hex.
        given: String,
        /// The key the anchor says signed it, hex.
        named: String,
    },
}

/// Parses 32 bytes of hex (surrounding whitespace allowed).
fn key_bytes(what: &'static str, text: &str) -> Result<[u8; 32], AnchorError> {
    let bad = |reason: String| AnchorError::BadKey { what, reason };
    let bytes = hex::decode(text.trim()).map_err(|e| bad(e.to_string()))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| bad(format!("got {} bytes", bytes.len())))
}

/// An Ed25519 signing key from its 32-byte seed in hex.
///
/// # Errors
/// [`AnchorError::BadKey`] when the text is not 64 hex characters.
pub fn signing_key(hex_seed: &str) -> Result<SigningKey, AnchorError> {
    Ok(SigningKey::from_bytes(&key_bytes("secret key", hex_seed)?))
}

/// An Ed25519 public key from hex.
///
/// # Errors
/// [`AnchorError::BadKey`] when the text is not 64 hex characters or not a valid curve point.
pub fn verifying_key(hex_key: &str) -> Result<VerifyingKey, AnchorError> {
    VerifyingKey::from_bytes(&key_bytes("public key", hex_key)?).map_err(|e| AnchorError::BadKey {
        what: "public key",
        reason: e.to_string(),
    })
}

impl Anchor {
    /// The bytes signed: `eventfold-anchor/1\nposition=N\nhash=HEX\nsigned_at=RFC3339\n`.
    pub fn message(position: u64, hash: &str, signed_at: DateTime<Utc>) -> String {
        format!(
            "{ANCHOR_FORMAT}\nposition={position}\nhash={hash}\nsigned_at={}\n",
            signed_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )
    }

    /// Signs the head (`position`, `hash`) at `signed_at`.
    pub fn sign(key: &SigningKey, position: u64, hash: &Hash, signed_at: DateTime<Utc>) -> Self {
        // Microseconds, as the message prints it.
        let signed_at =
            DateTime::from_timestamp_micros(signed_at.timestamp_micros()).unwrap_or(signed_at);
        let hash = hex::encode(hash);
        let signature = key.sign(Self::message(position, &hash, signed_at).as_bytes());
        Self {
            format: ANCHOR_FORMAT.to_owned(),
            position,
            hash,
            signed_at,
            public_key: hex::encode(key.verifying_key().as_bytes()),
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// Checks the format and the signature with `key`; returns the anchored hash.
    ///
    /// # Errors
    /// [`AnchorError::Malformed`] naming the field, [`AnchorError::BadSignature`].
    pub fn verify(&self, key: &VerifyingKey) -> Result<Hash, AnchorError> {
        let malformed = |field, reason: String| AnchorError::Malformed { field, reason };
        if self.format != ANCHOR_FORMAT {
            return Err(malformed(
                "format",
                format!("{:?} is not {ANCHOR_FORMAT:?}", self.format),
            ));
        }
        let hash = hex::decode(&self.hash)
            .ok()
            .and_then(|b| Hash::try_from(b.as_slice()).ok())
            .ok_or_else(|| malformed("hash", "not 64 hex characters".into()))?;
        let signature = hex::decode(&self.signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
            .ok_or_else(|| malformed("signature", "not 128 hex characters".into()))?;
        let signature = ed25519_dalek::Signature::from_bytes(&signature);
        let message = Self::message(self.position, &self.hash, self.signed_at);
        key.verify(message.as_bytes(), &signature)
            .map_err(|_| AnchorError::BadSignature {
                given: hex::encode(key.as_bytes()),
                named: self.public_key.clone(),
            })?;
        Ok(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(position: u64, stream: &str, version: u64, payload: &str) -> ChainRow {
        ChainRow {
            position,
            stream_id: stream.as_bytes().to_vec(),
            stream_version: version,
            event_id: position.to_be_bytes().repeat(2),
            event_type: b"Happened".to_vec(),
            schema_version: 1,
            event_time_us: 1_700_000_000_000_000 + position as i64,
            ingest_time_us: 1_700_000_000_000_000,
            actor: b"user:1".to_vec(),
            causation_id: None,
            correlation_id: Some(vec![7; 16]),
            tenant_id: b"default".to_vec(),
            payload: payload.as_bytes().to_vec(),
            via: None,
            backfill: false,
            prev_hash: None,
            hash: None,
            archived_digest: None,
        }
    }

    /// Rows of two interleaved streams, chained as an appender would.
    fn chained() -> Vec<ChainRow> {
        let mut chainer = Chainer::new(ZERO_HASH);
        let mut versions = HashMap::new();
        (1..=6u64)
            .map(|p| {
                let stream = if p % 2 == 0 { "a-1" } else { "b-1" };
                let v = versions.entry(stream).or_insert(0);
                *v += 1;
                let mut r = row(p, stream, *v, &format!("{{\"n\":{p}}}"));
                let l = chainer.next(p, stream, &r.content().digest());
                r.prev_hash = Some(l.prev_hash.to_vec());
                r.hash = Some(l.hash.to_vec());
                r
            })
            .collect()
    }

    fn verify(rows: &[ChainRow], scope: Scope) -> Result<u64, BrokenLink> {
        let mut v = ChainVerifier::new(scope);
        for r in rows {
            v.check(r)?;
        }
        Ok(v.checked())
    }

    #[test]
    fn an_intact_chain_verifies_for_the_log_and_for_each_stream() {
        let rows = chained();
        assert_eq!(verify(&rows, Scope::Log), Ok(6));
        let a: Vec<ChainRow> = rows
            .iter()
            .filter(|r| r.stream_id == b"a-1")
            .cloned()
            .collect();
        assert_eq!(verify(&a, Scope::Stream), Ok(3));
    }

    #[test]
    fn every_kind_of_change_names_the_first_broken_row() {
        let rows = chained();
        type Change = Box<dyn Fn(&mut Vec<ChainRow>)>;
        let cases: Vec<(&str, Change, u64, &str)> = vec![
            ("payload", Box::new(|r| r[2].payload[1] ^= 1), 3, "hash"),
            ("actor", Box::new(|r| r[3].actor[0] ^= 1), 4, "hash"),
            (
                "via added",
                Box::new(|r| r[2].via = Some(b"service:shop".to_vec())),
                3,
                "hash",
            ),
            (
                "correlation",
                Box::new(|r| r[1].correlation_id = None),
                2,
                "hash",
            ),
            (
                "ingest time",
                Box::new(|r| r[4].ingest_time_us += 1),
                5,
                "hash",
            ),
            (
                "swap order",
                Box::new(|r| {
                    r.swap(1, 2);
                    let (a, b) = (r[1].position, r[2].position);
                    r[1].position = b;
                    r[2].position = a;
                }),
                2,
                "prev_hash",
            ),
            ("position", Box::new(|r| r[3].position = 9), 9, "position"),
            ("removed", Box::new(|r| drop(r.remove(2))), 4, "position"),
            (
                "rehashed",
                Box::new(|r| {
                    r[2].payload[1] ^= 1;
                    // Position 3 is stream b's version 2; its version 1 is position 1.
                    let l = link(
                        &Hash::try_from(r[2].prev_hash.as_deref().unwrap()).unwrap(),
                        &Hash::try_from(r[0].hash.as_deref().unwrap()).unwrap(),
                        3,
                        &r[2].content().digest(),
                    );
                    r[2].hash = Some(l.to_vec());
                }),
                4,
                "prev_hash",
            ),
            ("no hash", Box::new(|r| r[0].hash = None), 1, "hash"),
        ];
        for (name, change, position, field) in cases {
            let mut tampered = rows.clone();
            change(&mut tampered);
            let broken = verify(&tampered, Scope::Log).expect_err(name);
            assert_eq!(
                (broken.position, broken.field.as_str()),
                (position, field),
                "{name}"
            );
        }
    }

    #[test]
    fn via_is_hashed_only_when_present() {
        let plain = row(1, "a-1", 1, "{}");
        let mut via = plain.clone();
        via.via = Some(b"service:shop".to_vec());
        assert_ne!(plain.content().digest(), via.content().digest());
        // Without via the canonical bytes end with the payload, as before the field existed.
        let mut h = Sha256::new();
        let field = |h: &mut Sha256, b: &[u8]| {
            h.update((b.len() as u32).to_be_bytes());
            h.update(b);
        };
        field(&mut h, b"a-1");
        h.update(1u64.to_be_bytes());
        field(&mut h, &plain.event_id);
        field(&mut h, b"Happened");
        h.update(1i64.to_be_bytes());
        h.update(plain.event_time_us.to_be_bytes());
        h.update(plain.ingest_time_us.to_be_bytes());
        field(&mut h, b"user:1");
        h.update([0u8]);
        h.update([1u8]);
        h.update([7u8; 16]);
        field(&mut h, b"default");
        field(&mut h, b"{}");
        let before: Hash = h.clone().finalize().into();
        assert_eq!(plain.content().digest(), before);
        field(&mut h, b"service:shop");
        let with_via: Hash = h.clone().finalize().into();
        assert_eq!(via.content().digest(), with_via);
        let mut backfilled = via.clone();
        backfilled.backfill = true;
        field(&mut h, b"backfill");
        let with_backfill: Hash = h.finalize().into();
        assert_eq!(backfilled.content().digest(), with_backfill);
        assert_ne!(backfilled.content().digest(), with_via);
    }

    #[test]
    fn anchors_verify_with_their_key_only_and_name_bad_fields() {
        let key = signing_key(&"11".repeat(32)).unwrap();
        let at = DateTime::parse_from_rfc3339("2026-11-21T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let anchor = Anchor::sign(&key, 6, &[9; 32], at);
        assert_eq!(anchor.verify(&key.verifying_key()), Ok([9; 32]));
        let other = signing_key(&"22".repeat(32)).unwrap().verifying_key();
        assert!(matches!(
            anchor.verify(&other),
            Err(AnchorError::BadSignature { .. })
        ));
        let mut moved = anchor.clone();
        moved.position = 7;
        assert!(moved.verify(&key.verifying_key()).is_err());
        let mut bad = anchor;
        bad.hash = "zz".into();
        assert!(matches!(
            bad.verify(&key.verifying_key()),
            Err(AnchorError::Malformed { field: "hash", .. })
        ));
        assert!(matches!(
            verifying_key("abc"),
            Err(AnchorError::BadKey { .. })
        ));
    }

    /// An archived stub keeps the chain: the log verifies with the stub's digest, a stub whose
    /// digest or payload was changed breaks at it, and the archived event must be the one the
    /// stub stands for.
    #[test]
    fn archived_stubs_keep_the_chain_and_prove_their_archive() {
        let rows = chained();
        let stub = |r: &ChainRow| ChainRow {
            payload: Vec::new(),
            archived_digest: Some(r.content().digest().to_vec()),
            ..r.clone()
        };
        let mut log = rows.clone();
        log[1] = stub(&rows[1]);
        log[3] = stub(&rows[3]);
        assert_eq!(verify(&log, Scope::Log), Ok(6));
        let a: Vec<ChainRow> = log
            .iter()
            .filter(|r| r.stream_id == b"a-1")
            .cloned()
            .collect();
        assert_eq!(verify(&a, Scope::Stream), Ok(3));

        let mut wrong = log.clone();
        wrong[1].archived_digest = Some(vec![1; 32]);
        let broken = verify(&wrong, Scope::Log).unwrap_err();
        assert_eq!((broken.position, broken.field.as_str()), (2, "hash"));
        let mut kept = log.clone();
        kept[3].payload = b"{}".to_vec();
        let broken = verify(&kept, Scope::Log).unwrap_err();
        assert_eq!(
            (broken.position, broken.field.as_str()),
            (4, "archived_digest")
        );

        assert_eq!(archived_matches(&log[1], &rows[1]), Ok(()));
        // A restored row is matched by its own content.
        assert_eq!(archived_matches(&rows[1], &rows[1]), Ok(()));
        let mut forged = rows[1].clone();
        forged.payload = b"{\"n\":99}".to_vec();
        let broken = archived_matches(&log[1], &forged).unwrap_err();
        assert_eq!((broken.position, broken.field.as_str()), (2, "archive"));
        assert!(broken.expected.starts_with("content digest"), "{broken}");
        let broken = archived_matches(&log[1], &rows[3]).unwrap_err();
        assert!(broken.expected.starts_with("position"), "{broken}");
    }
}
