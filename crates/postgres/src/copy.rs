//! Stream replay through `COPY ... TO STDOUT (FORMAT binary)`: one byte stream instead of a
//! protocol message, a row object and five checked decodes per event. Loading a 10,000-event
//! stream spent most of its time in that per-row machinery (see ARCHITECTURE.md, "Loads").
//!
//! Format (PostgreSQL docs, "COPY", binary format): an 11-byte signature, a 32-bit flags field
//! and a 32-bit header-extension length (plus the extension); then per tuple a 16-bit field count
//! (-1 ends the data) and per field a 32-bit length (-1 for NULL) and the value in the type's
//! binary send format, all big-endian.

use chrono::{TimeZone, Utc};
use eventfold_core::chain::{refill, refill_optional, ChainRow};
use eventfold_core::ReplayEvent;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01T00:00:00Z).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// The columns [`ReplayFeed`] reads, in its order. An archived stub is told by its empty
/// payload: an append refuses an empty payload, and the append-only trigger lets an update empty
/// a payload only together with setting `archived_digest` (migration 5). Reading
/// `archived_digest` itself, the row's last column, cost the server about a third more per row
/// (see ARCHITECTURE.md, "Loads").
pub(crate) const REPLAY_COLUMNS: &str =
    "stream_version, event_type, schema_version, event_time, payload";

/// A stream replay: its events, up to the first archived one if the read reached one.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Replay {
    pub(crate) events: Vec<ReplayEvent>,
    /// The version of the first archived event read; the events before it are in `events`.
    pub(crate) archived: Option<u64>,
}

/// Parses the binary COPY of `SELECT` [`REPLAY_COLUMNS`] (bigint, text, integer, timestamptz,
/// text) held whole, stopping at the first archived event (the tests' view of
/// [`ReplayFeed`]).
///
/// # Errors
/// A message naming the byte offset where the data stops making sense.
#[cfg(test)]
pub(crate) fn parse_replay(data: &[u8]) -> Result<Replay, String> {
    let mut feed = ReplayFeed::default();
    let mut replay = Replay {
        events: Vec::new(),
        archived: None,
    };
    feed.feed(data, &mut |row| match row {
        ReplayRow::Event(_) if replay.archived.is_some() => {}
        ReplayRow::Event(e) => replay.events.push(e.clone()),
        ReplayRow::Archived(version) => {
            replay.archived.get_or_insert(version);
        }
    })?;
    feed.finish()?;
    Ok(replay)
}

/// One tuple of a replay COPY.
#[derive(Debug)]
pub(crate) enum ReplayRow<'a> {
    /// A hot event (the feed's buffer, overwritten by the next tuple).
    Event(&'a ReplayEvent),
    /// An archived event's stub, at this version: its payload is empty. The caller
    /// confirms it against `archived_digest` before saying so.
    Archived(u64),
}

/// A binary COPY's framing (header, tuples, trailer) parsed in the pieces it arrives in (a
/// `CopyData` message holds a tuple, or less, or more): complete tuples are handed on at once and
/// an incomplete one waits for the rest, so the caller works while the server still sends.
#[derive(Debug, Default)]
pub(crate) struct CopyFeed {
    /// Bytes of an incomplete header or tuple.
    pending: Vec<u8>,
    /// Bytes consumed before `pending` (for offsets in messages).
    consumed: usize,
    started: bool,
    ended: bool,
}

/// Reads one tuple's fields (after its field count).
type Tuple<'f> = dyn FnMut(&mut Reader<'_>) -> Result<(), String> + 'f;

impl CopyFeed {
    /// Parses what `chunk` completes, handing each tuple of `fields` fields to `tuple`.
    ///
    /// # Errors
    /// A message naming the byte offset where the data stops making sense.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        fields: i16,
        tuple: &mut Tuple<'_>,
    ) -> Result<(), String> {
        if self.pending.is_empty() {
            let used = self.parse(chunk, fields, tuple)?;
            self.pending.extend_from_slice(&chunk[used..]);
            self.consumed += used;
        } else {
            self.pending.extend_from_slice(chunk);
            let data = std::mem::take(&mut self.pending);
            let used = self.parse(&data, fields, tuple)?;
            self.pending = data[used..].to_vec();
            self.consumed += used;
        }
        Ok(())
    }

    /// Checks that the data ended with the trailer and nothing incomplete; a tuple that never
    /// completed is read with `scratch` first, to name wrong lengths rather than a short end.
    ///
    /// # Errors
    /// The data stopped before the trailer.
    pub(crate) fn finish(&self, scratch: &mut Tuple<'_>) -> Result<(), String> {
        if self.ended && self.pending.is_empty() {
            return Ok(());
        }
        if self.started && self.pending.len() >= 2 {
            let mut r = Reader {
                data: &self.pending,
                at: 2,
            };
            if let Err(e) = scratch(&mut r) {
                if !e.contains("ends early") {
                    return Err(format!("{e} (tuple at offset {})", self.consumed));
                }
            }
        }
        Err(format!(
            "COPY data ends early at offset {}",
            self.consumed + self.pending.len()
        ))
    }

    /// Parses the complete header and tuples at the start of `data`; returns the bytes used.
    fn parse(&mut self, data: &[u8], fields: i16, tuple: &mut Tuple<'_>) -> Result<usize, String> {
        let mut r = Reader { data, at: 0 };
        if !self.started {
            if data.len() >= 11 && data[..11] != SIGNATURE[..] {
                return Err("not a binary COPY stream (bad signature)".into());
            }
            if data.len() < 19 {
                return Ok(0);
            }
            let extension = u32::from_be_bytes(data[15..19].try_into().expect("4 bytes")) as usize;
            if data.len() < 19 + extension {
                return Ok(0);
            }
            r = Reader::open(data)?;
            self.started = true;
        }
        loop {
            let at = r.at;
            if self.ended {
                if at < data.len() {
                    return Err(format!(
                        "data after the trailer at offset {}",
                        self.consumed + at
                    ));
                }
                return Ok(at);
            }
            let Some(end) = tuple_end(data, at) else {
                return Ok(at);
            };
            let count = r.i16()?;
            if count == -1 {
                self.ended = true;
                continue;
            }
            if count != fields {
                return Err(format!(
                    "tuple at offset {} has {count} fields, expected {fields}",
                    self.consumed + at
                ));
            }
            tuple(&mut r).map_err(|e| format!("{e} (tuple at offset {})", self.consumed + at))?;
            debug_assert_eq!(r.at, end);
        }
    }
}

/// The replay COPY ([`REPLAY_COLUMNS`]) parsed as it arrives ([`CopyFeed`]).
#[derive(Debug)]
pub(crate) struct ReplayFeed {
    /// The event being parsed: its strings are reused from tuple to tuple, so a replay
    /// allocates per event only what the fold keeps.
    event: ReplayEvent,
    copy: CopyFeed,
}

impl Default for ReplayFeed {
    fn default() -> Self {
        Self {
            event: ReplayEvent {
                stream_version: 0,
                event_type: String::new(),
                schema_version: 0,
                event_time: chrono::DateTime::UNIX_EPOCH,
                payload: String::new(),
            },
            copy: CopyFeed::default(),
        }
    }
}

impl ReplayFeed {
    /// Parses what `chunk` completes, handing each tuple to `out`.
    ///
    /// # Errors
    /// A message naming the byte offset where the data stops making sense.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        out: &mut dyn FnMut(ReplayRow<'_>),
    ) -> Result<(), String> {
        let event = &mut self.event;
        self.copy.feed(chunk, 5, &mut |r| {
            out(match replay_tuple(r, event)? {
                Some(version) => ReplayRow::Archived(version),
                None => ReplayRow::Event(event),
            });
            Ok(())
        })
    }

    /// Checks that the data ended with the trailer and nothing incomplete.
    ///
    /// # Errors
    /// The data stopped before the trailer.
    pub(crate) fn finish(&self) -> Result<(), String> {
        let mut scratch = self.event.clone();
        self.copy
            .finish(&mut |r| replay_tuple(r, &mut scratch).map(|_| ()))
    }
}

/// The chain COPY ([`CHAIN_COLUMNS`]) parsed as it arrives ([`CopyFeed`]) into raw chain rows
///: texts and hashes as stored bytes, times as Unix microseconds. The rows already in the
/// vector are refilled in place, their buffers reused, so a walk that hands its batches back
/// parses without allocating per row.
#[derive(Debug)]
pub(crate) struct ChainFeed<'a> {
    rows: &'a mut Vec<ChainRow>,
    /// Rows parsed so far: `rows[..filled]`; the rest are last batch's, to be refilled.
    filled: usize,
    copy: CopyFeed,
}

impl<'a> ChainFeed<'a> {
    /// A feed into `rows` (whatever they hold is replaced).
    pub(crate) fn new(rows: &'a mut Vec<ChainRow>) -> Self {
        Self {
            rows,
            filled: 0,
            copy: CopyFeed::default(),
        }
    }

    /// Parses what `chunk` completes.
    ///
    /// # Errors
    /// A message naming the byte offset where the data stops making sense.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        let (rows, filled) = (&mut *self.rows, &mut self.filled);
        self.copy.feed(chunk, 18, &mut |r| {
            if *filled == rows.len() {
                rows.push(ChainRow::default());
            }
            chain_tuple(r, &mut rows[*filled])?;
            *filled += 1;
            Ok(())
        })
    }

    /// Ends the feed: the rows are the ones parsed, once the data ended with the trailer and
    /// nothing incomplete.
    ///
    /// # Errors
    /// The data stopped before the trailer.
    pub(crate) fn finish(self) -> Result<(), String> {
        self.rows.truncate(self.filled);
        let mut scratch = ChainRow::default();
        self.copy.finish(&mut |r| chain_tuple(r, &mut scratch))
    }
}

/// Where the tuple (or trailer) starting at `at` ends, when `data` holds all of it.
fn tuple_end(data: &[u8], at: usize) -> Option<usize> {
    let count = i16::from_be_bytes(data.get(at..at + 2)?.try_into().expect("2 bytes"));
    let mut p = at + 2;
    for _ in 0..count.max(0) {
        let len = i32::from_be_bytes(data.get(p..p + 4)?.try_into().expect("4 bytes"));
        p += 4 + usize::try_from(len).unwrap_or(0);
        if p > data.len() {
            return None;
        }
    }
    Some(p)
}

/// Reads one replay tuple's fields (after its field count) into `event`, reusing its strings;
/// returns the version when the tuple is an archived stub: its payload is empty.
fn replay_tuple(r: &mut Reader<'_>, event: &mut ReplayEvent) -> Result<Option<u64>, String> {
    let stream_version = i64::from_be_bytes(r.field(8)?.try_into().expect("8 bytes")) as u64;
    r.text_into(&mut event.event_type)?;
    let schema_version = i32::from_be_bytes(r.field(4)?.try_into().expect("4 bytes"));
    let at = r.at;
    let micros = i64::from_be_bytes(r.field(8)?.try_into().expect("8 bytes"));
    event.event_time = micros
        .checked_add(PG_EPOCH_US)
        .and_then(|us| Utc.timestamp_micros(us).single())
        .ok_or_else(|| format!("timestamp out of range at offset {at}"))?;
    r.text_into(&mut event.payload)?;
    event.stream_version = stream_version;
    event.schema_version = schema_version as u32;
    Ok(event.payload.is_empty().then_some(stream_version))
}

/// The columns [`ChainFeed`] reads, in its order.
pub(crate) const CHAIN_COLUMNS: &str =
    "position, stream_id, stream_version, event_id, event_type, schema_version, event_time, \
     ingest_time, actor, causation_id, correlation_id, tenant_id, payload, prev_hash, \
     hash, archived_digest, via, backfill IS NOT NULL";

/// [`CHAIN_COLUMNS`] for migration 4's backfill, which runs before the archive's, `via`'s and
/// `backfill`'s columns exist.
pub(crate) const BACKFILL_CHAIN_COLUMNS: &str =
    "position, stream_id, stream_version, event_id, event_type, schema_version, event_time, \
     ingest_time, actor, causation_id, correlation_id, tenant_id, payload, prev_hash, \
     hash, NULL::bytea, NULL::text, false";

/// Parses the binary COPY of `SELECT` [`CHAIN_COLUMNS`] held whole (the tests' view of
/// [`ChainFeed`]).
///
/// # Errors
/// A message naming the byte offset where the data stops making sense.
#[cfg(test)]
pub(crate) fn parse_chain(data: &[u8]) -> Result<Vec<ChainRow>, String> {
    let mut rows = Vec::new();
    let mut feed = ChainFeed::new(&mut rows);
    feed.feed(data)?;
    feed.finish()?;
    Ok(rows)
}

/// Reads one chain tuple's 18 fields (after its field count) into `row`, reusing its buffers.
fn chain_tuple(r: &mut Reader<'_>, row: &mut ChainRow) -> Result<(), String> {
    let int8 = |r: &mut Reader<'_>| -> Result<i64, String> {
        Ok(i64::from_be_bytes(r.field(8)?.try_into().expect("8 bytes")))
    };
    row.position = int8(r)? as u64;
    r.required_into(&mut row.stream_id)?;
    row.stream_version = int8(r)? as u64;
    r.required_into(&mut row.event_id)?;
    r.required_into(&mut row.event_type)?;
    row.schema_version = i64::from(i32::from_be_bytes(r.field(4)?.try_into().expect("4 bytes")));
    row.event_time_us = int8(r)? + PG_EPOCH_US;
    row.ingest_time_us = int8(r)? + PG_EPOCH_US;
    r.required_into(&mut row.actor)?;
    r.optional_into(&mut row.causation_id)?;
    r.optional_into(&mut row.correlation_id)?;
    r.required_into(&mut row.tenant_id)?;
    r.required_into(&mut row.payload)?;
    r.optional_into(&mut row.prev_hash)?;
    r.optional_into(&mut row.hash)?;
    r.optional_into(&mut row.archived_digest)?;
    r.optional_into(&mut row.via)?;
    row.backfill = r.field(1)? != [0];
    Ok(())
}

/// The columns [`EventsFeed`] reads, in its order: every envelope field of a hot event
/// (`read_all` leaves archived stubs out in its `WHERE`).
pub(crate) const EVENT_COLUMNS: &str =
    "position, stream_id, stream_version, event_id, event_type, schema_version, event_time, \
     ingest_time, actor, causation_id, correlation_id, tenant_id, payload, via, \
     backfill IS NOT NULL";

/// Events ([`EVENT_COLUMNS`]) parsed from a binary COPY as it arrives ([`CopyFeed`]): one byte
/// stream instead of a protocol message, a row object and sixteen checked decodes per event.
#[derive(Debug, Default)]
pub(crate) struct EventsFeed {
    /// The events parsed so far.
    pub(crate) events: Vec<eventfold_core::RecordedEvent>,
    copy: CopyFeed,
}

impl EventsFeed {
    /// Parses what `chunk` completes.
    ///
    /// # Errors
    /// A message naming the byte offset where the data stops making sense.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        let events = &mut self.events;
        self.copy.feed(chunk, 15, &mut |r| {
            events.push(event_tuple(r)?);
            Ok(())
        })
    }

    /// The events, once the data ended with the trailer and nothing incomplete.
    ///
    /// # Errors
    /// The data stopped before the trailer.
    pub(crate) fn finish(self) -> Result<Vec<eventfold_core::RecordedEvent>, String> {
        self.copy.finish(&mut |r| event_tuple(r).map(|_| ()))?;
        Ok(self.events)
    }
}

/// Reads one event tuple's 15 fields (after its field count).
fn event_tuple(r: &mut Reader<'_>) -> Result<eventfold_core::RecordedEvent, String> {
    use eventfold_core::{Actor, EventMetadata, RecordedEvent};
    let int8 = |r: &mut Reader<'_>| -> Result<i64, String> {
        Ok(i64::from_be_bytes(r.field(8)?.try_into().expect("8 bytes")))
    };
    let time = |r: &mut Reader<'_>| -> Result<chrono::DateTime<Utc>, String> {
        let at = r.at;
        int8(r)?
            .checked_add(PG_EPOCH_US)
            .and_then(|us| Utc.timestamp_micros(us).single())
            .ok_or_else(|| format!("timestamp out of range at offset {at}"))
    };
    let uuid = |bytes: &[u8]| -> uuid::Uuid {
        uuid::Uuid::from_bytes(bytes.try_into().expect("16 bytes"))
    };
    let optional_uuid = |r: &mut Reader<'_>| -> Result<Option<uuid::Uuid>, String> {
        let at = r.at;
        match r.optional()? {
            None => Ok(None),
            Some(b) if b.len() == 16 => Ok(Some(uuid(b))),
            Some(b) => Err(format!(
                "uuid at offset {at} has length {}, expected 16",
                b.len()
            )),
        }
    };
    let position = int8(r)? as u64;
    let mut stream_id = String::new();
    r.text_into(&mut stream_id)?;
    let stream_version = int8(r)? as u64;
    let event_id = uuid(r.field(16)?);
    let mut event_type = String::new();
    r.text_into(&mut event_type)?;
    let schema_version = i32::from_be_bytes(r.field(4)?.try_into().expect("4 bytes")) as u32;
    let event_time = time(r)?;
    let ingest_time = time(r)?;
    let mut actor = String::new();
    r.text_into(&mut actor)?;
    let causation_id = optional_uuid(r)?;
    let correlation_id = optional_uuid(r)?;
    let mut tenant_id = String::new();
    r.text_into(&mut tenant_id)?;
    let mut payload = String::new();
    r.text_into(&mut payload)?;
    let at = r.at;
    let via = r
        .optional()?
        .map(|b| {
            std::str::from_utf8(b)
                .map_err(|e| format!("text at offset {at}: {e}"))
                .and_then(|t| Actor::from_stored(t.to_owned()))
        })
        .transpose()
        .map_err(|e| format!("position {position}: via {e}"))?;
    let backfill = r.field(1)? != [0];
    Ok(RecordedEvent {
        global_position: position,
        stream_id,
        stream_version,
        event_id,
        event_type,
        schema_version,
        event_time,
        ingest_time,
        metadata: EventMetadata {
            actor: Actor::from_stored(actor).map_err(|e| format!("position {position}: {e}"))?,
            causation_id,
            correlation_id,
            tenant_id,
            via,
            backfill,
        },
        payload,
    })
}

/// A cursor over COPY bytes; errors name the offset.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader after the header (signature, flags, header extension) of `data`.
    fn open(data: &'a [u8]) -> Result<Self, String> {
        let mut r = Reader { data, at: 0 };
        if r.take(11)? != SIGNATURE {
            return Err("not a binary COPY stream (bad signature)".into());
        }
        let _flags = r.u32()?;
        let extension = r.u32()? as usize;
        r.take(extension)?;
        Ok(r)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.data.len())
            .ok_or_else(|| format!("COPY data ends early at offset {}", self.data.len()))?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    /// A non-NULL field of exactly `size` bytes.
    fn field(&mut self, size: usize) -> Result<&'a [u8], String> {
        let at = self.at;
        let len = self.u32()? as i32;
        if len != size as i32 {
            return Err(format!(
                "field at offset {at} has length {len}, expected {size}"
            ));
        }
        self.take(size)
    }

    /// A field's bytes, `None` for NULL.
    fn optional(&mut self) -> Result<Option<&'a [u8]>, String> {
        let len = self.u32()? as i32;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| format!("bad length at offset {}", self.at))?;
        Ok(Some(self.take(len)?))
    }

    /// A field's bytes into `out`, its buffer reused; `None` for NULL.
    fn optional_into(&mut self, out: &mut Option<Vec<u8>>) -> Result<(), String> {
        refill_optional(out, self.optional()?);
        Ok(())
    }

    /// A non-NULL field's bytes into `out`, its buffer reused.
    fn required_into(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let at = self.at;
        let bytes = self
            .optional()?
            .ok_or_else(|| format!("NULL at offset {at} in a NOT NULL column"))?;
        refill(out, bytes);
        Ok(())
    }

    /// A non-NULL text field, into `out` (its allocation reused).
    fn text_into(&mut self, out: &mut String) -> Result<(), String> {
        let at = self.at;
        let len = self.u32()? as i32;
        let len = usize::try_from(len).map_err(|_| format!("NULL or bad length at offset {at}"))?;
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).map_err(|e| format!("text at offset {at}: {e}"))?;
        out.clear();
        out.push_str(text);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_of(rows: &[(i64, &str, i32, i64, &str)]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend(0u32.to_be_bytes());
        out.extend(0u32.to_be_bytes());
        for (v, t, s, us, p) in rows {
            out.extend(5i16.to_be_bytes());
            out.extend(8i32.to_be_bytes());
            out.extend(v.to_be_bytes());
            out.extend((t.len() as i32).to_be_bytes());
            out.extend(t.as_bytes());
            out.extend(4i32.to_be_bytes());
            out.extend(s.to_be_bytes());
            out.extend(8i32.to_be_bytes());
            out.extend((us - PG_EPOCH_US).to_be_bytes());
            out.extend((p.len() as i32).to_be_bytes());
            out.extend(p.as_bytes());
        }
        out.extend((-1i16).to_be_bytes());
        out
    }

    /// Three hot events (version, type, schema version, event time µs, payload).
    const ROWS: [(i64, &str, i32, i64, &str); 3] = [
        (1, "Opened", 1, 1_700_000_000_000_000, "{}"),
        (2, "Deposited", 2, 1_700_000_000_000_001, "{\"a\":\"é\"}"),
        (3, "Deposited", 1, 1_700_000_000_000_002, "{\"b\":1}"),
    ];

    #[test]
    fn parses_rows_and_the_trailer() {
        let data = copy_of(&ROWS[..2]);
        let replay = parse_replay(&data).unwrap();
        assert_eq!(replay.archived, None);
        let events = replay.events;
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].stream_version, 2);
        assert_eq!(events[1].event_type, "Deposited");
        assert_eq!(events[1].schema_version, 2);
        assert_eq!(
            events[1].event_time.timestamp_micros(),
            1_700_000_000_000_001
        );
        assert_eq!(events[1].payload, "{\"a\":\"é\"}");
    }

    #[test]
    fn empty_result_is_no_events() {
        assert!(parse_replay(&copy_of(&[])).unwrap().events.is_empty());
    }

    /// Fed in pieces of any size (a byte at a time, or a tuple and a half), the feed gives the
    /// events of the whole.
    #[test]
    fn the_feed_parses_the_data_in_any_pieces() {
        let data = copy_of(&ROWS);
        let whole = parse_replay(&data).unwrap().events;
        assert_eq!(whole.len(), 3);
        for size in [1, 2, 7, 19, 20, 33, 64, data.len()] {
            let mut feed = ReplayFeed::default();
            let mut events = Vec::new();
            for piece in data.chunks(size) {
                feed.feed(piece, &mut |row| match row {
                    ReplayRow::Event(e) => events.push(e.clone()),
                    ReplayRow::Archived(v) => panic!("archived {v}"),
                })
                .unwrap();
            }
            feed.finish().unwrap();
            assert_eq!(events, whole, "pieces of {size}");
        }
        let mut feed = ReplayFeed::default();
        feed.feed(&data[..data.len() - 3], &mut |_| {}).unwrap();
        assert!(feed.finish().unwrap_err().contains("ends early"));
    }

    /// A chain COPY of rows (position, payload, causation id or NULL).
    fn chain_copy_of(rows: &[(i64, &str, Option<[u8; 16]>)]) -> Vec<u8> {
        chain_copy_via(rows, None)
    }

    /// As [`chain_copy_of`], every row with the same `via` (or NULL).
    fn chain_copy_via(rows: &[(i64, &str, Option<[u8; 16]>)], via: Option<&[u8]>) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend(0u32.to_be_bytes());
        out.extend(0u32.to_be_bytes());
        let field = |out: &mut Vec<u8>, bytes: Option<&[u8]>| match bytes {
            None => out.extend((-1i32).to_be_bytes()),
            Some(b) => {
                out.extend((b.len() as i32).to_be_bytes());
                out.extend(b);
            }
        };
        for (position, payload, causation) in rows {
            out.extend(18i16.to_be_bytes());
            field(&mut out, Some(&position.to_be_bytes()));
            field(&mut out, Some(b"account-1"));
            field(&mut out, Some(&position.to_be_bytes()));
            field(&mut out, Some(&[position.to_le_bytes()[0]; 16]));
            field(&mut out, Some(b"Deposited"));
            field(&mut out, Some(&2i32.to_be_bytes()));
            field(&mut out, Some(&(-PG_EPOCH_US).to_be_bytes()));
            field(&mut out, Some(&(1 - PG_EPOCH_US).to_be_bytes()));
            field(&mut out, Some(b"teller"));
            field(&mut out, causation.as_ref().map(|c| &c[..]));
            field(&mut out, None);
            field(&mut out, Some(b"shop"));
            field(&mut out, Some(payload.as_bytes()));
            field(&mut out, Some(&[1; 32]));
            field(&mut out, Some(&[2; 32]));
            field(&mut out, None);
            field(&mut out, via);
            field(&mut out, Some(&[0]));
        }
        out.extend((-1i16).to_be_bytes());
        out
    }

    /// Fed in any pieces into a vector holding other rows (more of them, other lengths and
    /// NULLs), the chain feed leaves exactly the rows of the whole.
    #[test]
    fn the_chain_feed_refills_rows_in_any_pieces() {
        let first = chain_copy_via(
            &[
                (1, "{\"a\":1}", Some([3; 16])),
                (2, "{\"b\":22222222}", None),
                (3, "{}", Some([4; 16])),
            ],
            Some(b"service:shop"),
        );
        let second = chain_copy_of(&[(4, "{\"c\":3}", None), (5, "{\"dddd\":4}", Some([5; 16]))]);
        let whole = parse_chain(&second).unwrap();
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].position, 4);
        assert_eq!(whole[0].payload, b"{\"c\":3}");
        assert_eq!(whole[0].causation_id, None);
        assert_eq!(whole[1].causation_id.as_deref(), Some(&[5; 16][..]));
        assert_eq!(whole[1].schema_version, 2);
        assert_eq!(whole[1].event_time_us, 0);
        assert_eq!(whole[1].ingest_time_us, 1);
        assert_eq!(whole[1].hash.as_deref(), Some(&[2; 32][..]));
        assert_eq!(whole[1].via, None);
        assert_eq!(
            parse_chain(&first).unwrap()[2].via.as_deref(),
            Some(&b"service:shop"[..])
        );
        for size in [1, 3, 17, 64, second.len()] {
            let mut rows = parse_chain(&first).unwrap();
            let mut feed = ChainFeed::new(&mut rows);
            for piece in second.chunks(size) {
                feed.feed(piece).unwrap();
            }
            feed.finish().unwrap();
            assert_eq!(rows, whole, "pieces of {size}");
        }
        let mut rows = Vec::new();
        let mut feed = ChainFeed::new(&mut rows);
        feed.feed(&second[..second.len() - 9]).unwrap();
        assert!(feed.finish().unwrap_err().contains("ends early"));
        let mut wrong = second.clone();
        // The first tuple's field count (after signature 11 + flags 4 + extension length 4).
        wrong[19..21].copy_from_slice(&17i16.to_be_bytes());
        let err = parse_chain(&wrong).unwrap_err();
        assert!(
            err.contains("offset 19 has 17 fields, expected 18"),
            "{err}"
        );
    }

    #[test]
    fn a_replay_stops_at_the_first_archived_event() {
        let data = copy_of(&[
            (1, "Opened", 1, 0, "{}"),
            (2, "Deposited", 1, 0, ""),
            (3, "Deposited", 1, 0, ""),
        ]);
        let replay = parse_replay(&data).unwrap();
        assert_eq!(replay.events.len(), 1);
        assert_eq!(replay.archived, Some(2));
    }

    #[test]
    fn truncated_or_foreign_data_is_an_error_naming_the_offset() {
        let data = copy_of(&[(1, "Opened", 1, 0, "{}")]);
        let cut = parse_replay(&data[..data.len() - 5]).unwrap_err();
        assert!(cut.contains("ends early at offset"), "{cut}");
        assert!(parse_replay(b"hello").unwrap_err().contains("ends early"));
        assert!(parse_replay(b"hello world, this is text")
            .unwrap_err()
            .contains("signature"));
        let mut null_text = data.clone();
        // The event type's length (after signature 11 + flags 4 + ext 4 + count 2 + 4 + 8).
        null_text[33..37].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(parse_replay(&null_text).unwrap_err().contains("NULL"));
    }
}
