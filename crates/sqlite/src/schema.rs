//! Versioned migrations, applied in order on open; `PRAGMA user_version` records the last one.

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
    // 2: fencing tokens (M21): the highest token accepted per locked resource.
    r"
CREATE TABLE fences (
    resource TEXT PRIMARY KEY,
    token    INTEGER NOT NULL
) WITHOUT ROWID;
",
    // 3: the hash chain (M6; see eventfold_core::chain). Rows stored before it are chained by
    // `backfill_chain` in the same transaction.
    r"
ALTER TABLE events ADD COLUMN prev_hash BLOB;          -- hash of position - 1 (32 bytes)
ALTER TABLE events ADD COLUMN hash BLOB;               -- this event's hash
",
];

/// The migration (1-based) that adds the hash chain.
pub(crate) const CHAIN_MIGRATION: usize = 3;
