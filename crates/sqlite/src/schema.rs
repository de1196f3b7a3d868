//! Versioned migrations, applied in order on open; `PRAGMA user_version` records the last one.

/// The update trigger of `events` as of migration 7: an event's columns never change, but for
/// its payload, which only archive (emptied, its digest kept) and restore (given back) may change.
macro_rules! append_only_update_trigger {
    () => {
        r"CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
WHEN NOT (
    NEW.position IS OLD.position AND NEW.event_id IS OLD.event_id
    AND NEW.stream_id IS OLD.stream_id AND NEW.stream_version IS OLD.stream_version
    AND NEW.event_type IS OLD.event_type AND NEW.schema_version IS OLD.schema_version
    AND NEW.event_time IS OLD.event_time AND NEW.ingest_time IS OLD.ingest_time
    AND NEW.actor IS OLD.actor AND NEW.causation_id IS OLD.causation_id
    AND NEW.correlation_id IS OLD.correlation_id AND NEW.tenant_id IS OLD.tenant_id
    AND NEW.via IS OLD.via AND NEW.backfill IS OLD.backfill
    AND NEW.prev_hash IS OLD.prev_hash AND NEW.hash IS OLD.hash
    AND ((OLD.archived_digest IS NULL AND length(NEW.archived_digest) IS 32 AND NEW.payload = '')
      OR (OLD.archived_digest IS NOT NULL AND NEW.archived_digest IS NULL AND OLD.payload = ''
             AND NEW.payload <> ''))
)
BEGIN SELECT RAISE(ABORT, 'events are append-only (only archive and restore may change a payload)'); END;
"
    };
}

/// Each entry is one migration; never edit a released one, append a new one.
pub(crate) const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE events (
    position       INTEGER PRIMARY KEY,        -- global position, assigned by the single writer
    event_id       BLOB    NOT NULL UNIQUE,    -- UUIDv7, 16 bytes
    stream_id      TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,           -- 1 for a stream's first event
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    event_time     INTEGER NOT NULL,           -- microseconds since the Unix epoch, UTC
    ingest_time    INTEGER NOT NULL,           -- microseconds since the Unix epoch, UTC
    actor          TEXT    NOT NULL,
    causation_id   BLOB,
    correlation_id BLOB,
    tenant_id      TEXT    NOT NULL,
    payload        TEXT    NOT NULL,           -- JSON
    UNIQUE (stream_id, stream_version)
);
CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TABLE checkpoints (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT    NOT NULL,
    status      INTEGER NOT NULL,
    body        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL              -- microseconds since the Unix epoch, UTC
) WITHOUT ROWID;
CREATE TABLE read_models (
    projection TEXT NOT NULL,
    key        TEXT NOT NULL,
    doc        TEXT NOT NULL,                  -- JSON
    PRIMARY KEY (projection, key)
) WITHOUT ROWID;
",
    // 2: fencing tokens: the highest token accepted per locked resource.
    r"
CREATE TABLE fences (
    resource TEXT PRIMARY KEY,
    token    INTEGER NOT NULL
) WITHOUT ROWID;
",
    // 3: the hash chain (see eventfold_core::chain). Rows stored before it are chained by
    // `backfill_chain` in the same transaction.
    r"
ALTER TABLE events ADD COLUMN prev_hash BLOB;          -- hash of position - 1 (32 bytes)
ALTER TABLE events ADD COLUMN hash BLOB;               -- this event's hash
",
    // 4: the archive. An archived event stays as a stub: its payload is emptied (it lives in
    // an archive file) and its content digest is kept, so the chain, stream versions and event
    // ids hold. The update trigger allows exactly that change and its reverse (restore).
    r"
ALTER TABLE events ADD COLUMN archived_digest BLOB;    -- content digest of an archived event
DROP TRIGGER IF EXISTS events_are_append_only_update;
CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
WHEN NOT (
    NEW.position IS OLD.position AND NEW.event_id IS OLD.event_id
    AND NEW.stream_id IS OLD.stream_id AND NEW.stream_version IS OLD.stream_version
    AND NEW.event_type IS OLD.event_type AND NEW.schema_version IS OLD.schema_version
    AND NEW.event_time IS OLD.event_time AND NEW.ingest_time IS OLD.ingest_time
    AND NEW.actor IS OLD.actor AND NEW.causation_id IS OLD.causation_id
    AND NEW.correlation_id IS OLD.correlation_id AND NEW.tenant_id IS OLD.tenant_id
    AND NEW.prev_hash IS OLD.prev_hash AND NEW.hash IS OLD.hash
    AND ((OLD.archived_digest IS NULL AND length(NEW.archived_digest) IS 32 AND NEW.payload = '')
      OR (OLD.archived_digest IS NOT NULL AND NEW.archived_digest IS NULL AND OLD.payload = ''
             AND NEW.payload <> ''))
)
BEGIN SELECT RAISE(ABORT, 'events are append-only (only archive and restore may change a payload)'); END;
",
    // 5: the notification table (the notification consumer's sink; see
    // eventfold_core::notification). `IF NOT EXISTS`: earlier releases had the consumer create
    // this same table itself, so a file may hold it already.
    r"
CREATE TABLE IF NOT EXISTS notifications (
    id         INTEGER PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    event_type TEXT    NOT NULL,
    title      TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    created_at TEXT    NOT NULL,                -- RFC 3339, microseconds, UTC
    source     TEXT    NOT NULL UNIQUE          -- topic/partition/offset: the dedupe key
);
",
    // 6: `via`, the principal an event's actor acted through (a service sending a user's command;
    // NULL when the actor acted itself). The update trigger guards it like every other column.
    r"
ALTER TABLE events ADD COLUMN via TEXT;
DROP TRIGGER IF EXISTS events_are_append_only_update;
CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
WHEN NOT (
    NEW.position IS OLD.position AND NEW.event_id IS OLD.event_id
    AND NEW.stream_id IS OLD.stream_id AND NEW.stream_version IS OLD.stream_version
    AND NEW.event_type IS OLD.event_type AND NEW.schema_version IS OLD.schema_version
    AND NEW.event_time IS OLD.event_time AND NEW.ingest_time IS OLD.ingest_time
    AND NEW.actor IS OLD.actor AND NEW.causation_id IS OLD.causation_id
    AND NEW.correlation_id IS OLD.correlation_id AND NEW.tenant_id IS OLD.tenant_id
    AND NEW.via IS OLD.via
    AND NEW.prev_hash IS OLD.prev_hash AND NEW.hash IS OLD.hash
    AND ((OLD.archived_digest IS NULL AND length(NEW.archived_digest) IS 32 AND NEW.payload = '')
      OR (OLD.archived_digest IS NOT NULL AND NEW.archived_digest IS NULL AND OLD.payload = ''
             AND NEW.payload <> ''))
)
BEGIN SELECT RAISE(ABORT, 'events are append-only (only archive and restore may change a payload)'); END;
",
    // 7: `backfill`, set (1) on events recorded as history by a backfill, NULL on live ones. The
    // update trigger guards it like every other column.
    concat!(
        r"
ALTER TABLE events ADD COLUMN backfill INTEGER;
DROP TRIGGER IF EXISTS events_are_append_only_update;
",
        append_only_update_trigger!()
    ),
    // 8: the stream index leaves the events table. `UNIQUE (stream_id, stream_version)` on
    // `events` wrote one leaf page per busy stream per commit (a group commit of 16 streams wrote
    // 16 index pages beside 2-3 of events). The index is now the table `stream_index`, filled in
    // batches by the writer from `stream_tail`, a small table of the events appended since the
    // last batch (see `crate::writer`, "the stream index"): a commit touches the few pages of
    // the small table. Both are keyed (stream_id, stream_version), so a version is unique across
    // the two; a stream is read from both in one statement. `events` is rebuilt without the
    // constraint (SQLite cannot drop a table constraint) and its triggers made again.
    concat!(
        r"
CREATE TABLE events_rebuilt (
    position        INTEGER PRIMARY KEY,
    event_id        BLOB    NOT NULL UNIQUE,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    event_time      INTEGER NOT NULL,
    ingest_time     INTEGER NOT NULL,
    actor           TEXT    NOT NULL,
    causation_id    BLOB,
    correlation_id  BLOB,
    tenant_id       TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    prev_hash       BLOB,
    hash            BLOB,
    archived_digest BLOB,
    via             TEXT,
    backfill        INTEGER
);
INSERT INTO events_rebuilt (position, event_id, stream_id, stream_version, event_type,
    schema_version, event_time, ingest_time, actor, causation_id, correlation_id, tenant_id,
    payload, prev_hash, hash, archived_digest, via, backfill)
SELECT position, event_id, stream_id, stream_version, event_type, schema_version, event_time,
    ingest_time, actor, causation_id, correlation_id, tenant_id, payload, prev_hash, hash,
    archived_digest, via, backfill
FROM events ORDER BY position;
DROP TABLE events;
ALTER TABLE events_rebuilt RENAME TO events;
CREATE TABLE stream_index (
    stream_id      TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,
    position       INTEGER NOT NULL,
    PRIMARY KEY (stream_id, stream_version)
) WITHOUT ROWID;
CREATE TABLE stream_tail (
    stream_id      TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,
    position       INTEGER NOT NULL,
    PRIMARY KEY (stream_id, stream_version)
) WITHOUT ROWID;
INSERT INTO stream_index (stream_id, stream_version, position)
SELECT stream_id, stream_version, position FROM events ORDER BY stream_id, stream_version;
CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
",
        append_only_update_trigger!()
    ),
];

/// The migration (1-based) that adds the hash chain.
pub(crate) const CHAIN_MIGRATION: usize = 3;
