//! Versioned migrations, applied in order under an advisory lock; `eventfold_schema` records them.

/// Each entry is one migration; never edit a released one, append a new one.
pub(crate) const MIGRATIONS: &[&str] = &[r"
CREATE TABLE events (
    position       BIGINT      PRIMARY KEY,      -- global position, assigned under the append lock
    event_id       UUID        NOT NULL UNIQUE,  -- UUIDv7
    stream_id      TEXT        NOT NULL,
    stream_version BIGINT      NOT NULL,         -- 1 for a stream's first event
    event_type     TEXT        NOT NULL,
    schema_version INTEGER     NOT NULL,
    event_time     TIMESTAMPTZ NOT NULL,
    ingest_time    TIMESTAMPTZ NOT NULL,
    actor          TEXT        NOT NULL,
    causation_id   UUID,
    correlation_id UUID,
    tenant_id      TEXT        NOT NULL,
    payload        TEXT        NOT NULL,         -- JSON text, kept byte for byte
    UNIQUE (stream_id, stream_version)
);
CREATE FUNCTION eventfold_events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'events are append-only'; END $$;
CREATE TRIGGER events_are_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION eventfold_events_are_append_only();
CREATE TABLE checkpoints (
    name     TEXT   PRIMARY KEY,
    position BIGINT NOT NULL
);
CREATE TABLE idempotency_keys (
    key         TEXT        PRIMARY KEY,
    fingerprint TEXT        NOT NULL,
    status      INTEGER     NOT NULL,
    body        TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE TABLE read_models (
    projection TEXT NOT NULL,
    key        TEXT NOT NULL,
    doc        TEXT NOT NULL,                     -- JSON
    PRIMARY KEY (projection, key)
);
"];
