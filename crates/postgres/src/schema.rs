//! Versioned migrations, applied in order under an advisory lock; `eventfold_schema` records them.

/// Each entry is one migration; never edit a released one, append a new one.
pub(crate) const MIGRATIONS: &[&str] = &[
    r"
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
",
    r"
-- The appender's one-round-trip path (see appender.rs): the caller has checked the group against
-- the stream versions it assumes; this takes the append lock, verifies those versions, numbers
-- the events from the head it reads under the lock, inserts events and idempotency records, and
-- notifies subscribers. Returns the head before the insert, or -1 (writing nothing) when a stream
-- is not at the version the caller assumed. Unique violations (an event id or idempotency key
-- used before) raise, and the caller takes the checked path.
CREATE FUNCTION eventfold_append(
    p_lock BIGINT, p_check_streams TEXT[], p_check_versions BIGINT[],
    p_ids UUID[], p_streams TEXT[], p_versions BIGINT[], p_types TEXT[], p_schema_versions INTEGER[],
    p_event_times TIMESTAMPTZ[], p_ingest TIMESTAMPTZ, p_actors TEXT[], p_causations UUID[],
    p_correlations UUID[], p_tenants TEXT[], p_payloads TEXT[],
    p_keys TEXT[], p_fingerprints TEXT[], p_statuses INTEGER[], p_bodies TEXT[], p_channel TEXT
) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_head BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    -- A volatile function's statements each take a fresh snapshot: these see every commit made
    -- before the lock was granted.
    IF EXISTS (
        SELECT 1 FROM unnest(p_check_streams, p_check_versions) AS c(s, v)
        WHERE coalesce((SELECT e.stream_version FROM events e WHERE e.stream_id = c.s
                        ORDER BY e.stream_version DESC LIMIT 1), 0) <> c.v
    ) THEN
        RETURN -1;
    END IF;
    SELECT coalesce(max(position), 0) INTO v_head FROM events;
    INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version,
                        event_time, ingest_time, actor, causation_id, correlation_id, tenant_id, payload)
    SELECT v_head + u.o, u.i, u.s, u.v, u.t, u.sv, u.et, p_ingest, u.a, u.ca, u.co, u.tn, u.pl
    FROM unnest(p_ids, p_streams, p_versions, p_types, p_schema_versions, p_event_times, p_actors,
                p_causations, p_correlations, p_tenants, p_payloads)
         WITH ORDINALITY AS u(i, s, v, t, sv, et, a, ca, co, tn, pl, o);
    INSERT INTO idempotency_keys (key, fingerprint, status, body, created_at)
    SELECT k.k, k.f, k.st, k.b, p_ingest
    FROM unnest(p_keys, p_fingerprints, p_statuses, p_bodies) AS k(k, f, st, b);
    PERFORM pg_notify(p_channel, (v_head + cardinality(p_ids))::text);
    RETURN v_head;
END $$;
",
    // 3: fencing tokens: the highest token accepted per locked resource.
    r"
CREATE TABLE fences (
    resource TEXT PRIMARY KEY,
    token    BIGINT NOT NULL
);
",
    // 4: the hash chain (see eventfold_core::chain). Rows stored before it are chained by
    // `backfill_chain` in the same transaction. `eventfold_append` now also chains the group: the
    // caller sends each event's content digest (SHA-256 of its canonical bytes, computed outside
    // the lock) and its stream's slot in p_check_streams; under the lock the function links each
    // event to the head and to its stream's last event. With p_digests NULL (chain off) the hash
    // columns stay NULL.
    r"
ALTER TABLE events ADD COLUMN prev_hash BYTEA, ADD COLUMN hash BYTEA;
DROP FUNCTION IF EXISTS eventfold_append(BIGINT, TEXT[], BIGINT[], UUID[], TEXT[], BIGINT[], TEXT[], INTEGER[],
    TIMESTAMPTZ[], TIMESTAMPTZ, TEXT[], UUID[], UUID[], TEXT[], TEXT[], TEXT[], TEXT[], INTEGER[], TEXT[], TEXT);
CREATE FUNCTION eventfold_append(
    p_lock BIGINT, p_check_streams TEXT[], p_check_versions BIGINT[],
    p_ids UUID[], p_streams TEXT[], p_versions BIGINT[], p_types TEXT[], p_schema_versions INTEGER[],
    p_event_times TIMESTAMPTZ[], p_ingest TIMESTAMPTZ, p_actors TEXT[], p_causations UUID[],
    p_correlations UUID[], p_tenants TEXT[], p_payloads TEXT[],
    p_keys TEXT[], p_fingerprints TEXT[], p_statuses INTEGER[], p_bodies TEXT[], p_channel TEXT,
    p_stream_slots INTEGER[], p_digests BYTEA[]
) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_zero CONSTANT BYTEA := decode(repeat('00', 32), 'hex');
    v_ok BOOLEAN;
    v_stream_heads BYTEA[];
    v_head BIGINT;
    v_prev BYTEA;
    v_slot INTEGER;
    v_prevs BYTEA[];
    v_hashes BYTEA[];
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    -- A volatile function's statements each take a fresh snapshot: these see every commit made
    -- before the lock was granted.
    SELECT coalesce(bool_and(coalesce(l.stream_version, 0) = c.v), true),
           array_agg(coalesce(l.hash, v_zero) ORDER BY c.o)
      INTO v_ok, v_stream_heads
      FROM unnest(p_check_streams, p_check_versions) WITH ORDINALITY AS c(s, v, o)
      LEFT JOIN LATERAL (SELECT e.stream_version, e.hash FROM events e WHERE e.stream_id = c.s
                         ORDER BY e.stream_version DESC LIMIT 1) l ON true;
    IF NOT v_ok THEN
        RETURN -1;
    END IF;
    SELECT e.position, e.hash INTO v_head, v_prev FROM events e ORDER BY e.position DESC LIMIT 1;
    v_head := coalesce(v_head, 0);
    v_prev := coalesce(v_prev, v_zero);
    IF p_digests IS NOT NULL THEN
        FOR i IN 1 .. cardinality(p_ids) LOOP
            v_slot := p_stream_slots[i];
            v_prevs[i] := v_prev;
            v_prev := sha256(v_prev || v_stream_heads[v_slot] || int8send(v_head + i) || p_digests[i]);
            v_hashes[i] := v_prev;
            v_stream_heads[v_slot] := v_prev;
        END LOOP;
    END IF;
    INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version,
                        event_time, ingest_time, actor, causation_id, correlation_id, tenant_id, payload,
                        prev_hash, hash)
    SELECT v_head + u.o, u.i, u.s, u.v, u.t, u.sv, u.et, p_ingest, u.a, u.ca, u.co, u.tn, u.pl,
           u.ph, u.h
    FROM unnest(p_ids, p_streams, p_versions, p_types, p_schema_versions, p_event_times, p_actors,
                p_causations, p_correlations, p_tenants, p_payloads, v_prevs, v_hashes)
         WITH ORDINALITY AS u(i, s, v, t, sv, et, a, ca, co, tn, pl, ph, h, o);
    INSERT INTO idempotency_keys (key, fingerprint, status, body, created_at)
    SELECT k.k, k.f, k.st, k.b, p_ingest
    FROM unnest(p_keys, p_fingerprints, p_statuses, p_bodies) AS k(k, f, st, b);
    PERFORM pg_notify(p_channel, (v_head + cardinality(p_ids))::text);
    RETURN v_head;
END $$;
",
    // 5: the archive. An archived event stays as a stub: its payload is emptied (it lives in
    // an archive file) and its content digest is kept, so the chain, stream versions and event
    // ids hold. The append-only trigger allows exactly that change and its reverse (restore).
    r"
ALTER TABLE events ADD COLUMN archived_digest BYTEA;   -- content digest of an archived event
CREATE OR REPLACE FUNCTION eventfold_events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND (NEW.position, NEW.event_id, NEW.stream_id, NEW.stream_version, NEW.event_type,
            NEW.schema_version, NEW.event_time, NEW.ingest_time, NEW.actor, NEW.causation_id,
            NEW.correlation_id, NEW.tenant_id, NEW.prev_hash, NEW.hash)
           IS NOT DISTINCT FROM
           (OLD.position, OLD.event_id, OLD.stream_id, OLD.stream_version, OLD.event_type,
            OLD.schema_version, OLD.event_time, OLD.ingest_time, OLD.actor, OLD.causation_id,
            OLD.correlation_id, OLD.tenant_id, OLD.prev_hash, OLD.hash)
       AND ((OLD.archived_digest IS NULL AND length(NEW.archived_digest) = 32 AND NEW.payload = '')
         OR (OLD.archived_digest IS NOT NULL AND NEW.archived_digest IS NULL AND OLD.payload = ''
             AND NEW.payload <> ''))
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'events are append-only (only archive and restore may change a payload)';
END $$;
",
    // 6: the notification table (the notification consumer's sink; see
    // eventfold_core::notification). `IF NOT EXISTS`: earlier releases had the consumer create
    // this same table itself, so a database may hold it already.
    r"
CREATE TABLE IF NOT EXISTS notifications (
    id         BIGSERIAL   PRIMARY KEY,
    user_id    TEXT        NOT NULL,
    event_type TEXT        NOT NULL,
    title      TEXT        NOT NULL,
    body       TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    source     TEXT        NOT NULL UNIQUE        -- topic/partition/offset: the dedupe key
);
",
    // 7: `via`, the principal an event's actor acted through (a service sending a user's command;
    // NULL when the actor acted itself). `eventfold_append` takes one more array, p_vias; the
    // append-only trigger guards the column like every other.
    r"
ALTER TABLE events ADD COLUMN via TEXT;
DROP FUNCTION IF EXISTS eventfold_append(BIGINT, TEXT[], BIGINT[], UUID[], TEXT[], BIGINT[], TEXT[], INTEGER[],
    TIMESTAMPTZ[], TIMESTAMPTZ, TEXT[], UUID[], UUID[], TEXT[], TEXT[], TEXT[], TEXT[], INTEGER[], TEXT[], TEXT,
    INTEGER[], BYTEA[]);
CREATE FUNCTION eventfold_append(
    p_lock BIGINT, p_check_streams TEXT[], p_check_versions BIGINT[],
    p_ids UUID[], p_streams TEXT[], p_versions BIGINT[], p_types TEXT[], p_schema_versions INTEGER[],
    p_event_times TIMESTAMPTZ[], p_ingest TIMESTAMPTZ, p_actors TEXT[], p_causations UUID[],
    p_correlations UUID[], p_tenants TEXT[], p_payloads TEXT[],
    p_keys TEXT[], p_fingerprints TEXT[], p_statuses INTEGER[], p_bodies TEXT[], p_channel TEXT,
    p_stream_slots INTEGER[], p_digests BYTEA[], p_vias TEXT[]
) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_zero CONSTANT BYTEA := decode(repeat('00', 32), 'hex');
    v_ok BOOLEAN;
    v_stream_heads BYTEA[];
    v_head BIGINT;
    v_prev BYTEA;
    v_slot INTEGER;
    v_prevs BYTEA[];
    v_hashes BYTEA[];
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    SELECT coalesce(bool_and(coalesce(l.stream_version, 0) = c.v), true),
           array_agg(coalesce(l.hash, v_zero) ORDER BY c.o)
      INTO v_ok, v_stream_heads
      FROM unnest(p_check_streams, p_check_versions) WITH ORDINALITY AS c(s, v, o)
      LEFT JOIN LATERAL (SELECT e.stream_version, e.hash FROM events e WHERE e.stream_id = c.s
                         ORDER BY e.stream_version DESC LIMIT 1) l ON true;
    IF NOT v_ok THEN
        RETURN -1;
    END IF;
    SELECT e.position, e.hash INTO v_head, v_prev FROM events e ORDER BY e.position DESC LIMIT 1;
    v_head := coalesce(v_head, 0);
    v_prev := coalesce(v_prev, v_zero);
    IF p_digests IS NOT NULL THEN
        FOR i IN 1 .. cardinality(p_ids) LOOP
            v_slot := p_stream_slots[i];
            v_prevs[i] := v_prev;
            v_prev := sha256(v_prev || v_stream_heads[v_slot] || int8send(v_head + i) || p_digests[i]);
            v_hashes[i] := v_prev;
            v_stream_heads[v_slot] := v_prev;
        END LOOP;
    END IF;
    INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version,
                        event_time, ingest_time, actor, causation_id, correlation_id, tenant_id, payload,
                        prev_hash, hash, via)
    SELECT v_head + u.o, u.i, u.s, u.v, u.t, u.sv, u.et, p_ingest, u.a, u.ca, u.co, u.tn, u.pl,
           u.ph, u.h, u.vi
    FROM unnest(p_ids, p_streams, p_versions, p_types, p_schema_versions, p_event_times, p_actors,
                p_causations, p_correlations, p_tenants, p_payloads, v_prevs, v_hashes, p_vias)
         WITH ORDINALITY AS u(i, s, v, t, sv, et, a, ca, co, tn, pl, ph, h, vi, o);
    INSERT INTO idempotency_keys (key, fingerprint, status, body, created_at)
    SELECT k.k, k.f, k.st, k.b, p_ingest
    FROM unnest(p_keys, p_fingerprints, p_statuses, p_bodies) AS k(k, f, st, b);
    PERFORM pg_notify(p_channel, (v_head + cardinality(p_ids))::text);
    RETURN v_head;
END $$;
CREATE OR REPLACE FUNCTION eventfold_events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND (NEW.position, NEW.event_id, NEW.stream_id, NEW.stream_version, NEW.event_type,
            NEW.schema_version, NEW.event_time, NEW.ingest_time, NEW.actor, NEW.causation_id,
            NEW.correlation_id, NEW.tenant_id, NEW.via, NEW.prev_hash, NEW.hash)
           IS NOT DISTINCT FROM
           (OLD.position, OLD.event_id, OLD.stream_id, OLD.stream_version, OLD.event_type,
            OLD.schema_version, OLD.event_time, OLD.ingest_time, OLD.actor, OLD.causation_id,
            OLD.correlation_id, OLD.tenant_id, OLD.via, OLD.prev_hash, OLD.hash)
       AND ((OLD.archived_digest IS NULL AND length(NEW.archived_digest) = 32 AND NEW.payload = '')
         OR (OLD.archived_digest IS NOT NULL AND NEW.archived_digest IS NULL AND OLD.payload = ''
             AND NEW.payload <> ''))
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'events are append-only (only archive and restore may change a payload)';
END $$;
",
    // 8: the tenant fence (see eventfold_core::tenant). Reads made for one tenant run as the role
    // eventfold_tenant with the transaction setting eventfold.tenant; these policies show that
    // role only the tenant's events and read-model rows. The owner (every other connection of
    // eventfold's) is not subject to them. A read-model row's tenant is its key's prefix before
    // `/` (`default` without one), kept in a generated column. The role is shared by every
    // database of the cluster: creating it races with other databases' migrations (a duplicate is
    // fine), and a connecting user that may not create roles leaves the fence off (the store
    // logs a warning) rather than failing.
    r"
DO $$
BEGIN
    CREATE ROLE eventfold_tenant NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation OR insufficient_privilege THEN NULL;
END $$;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eventfold_tenant')
       AND NOT pg_has_role(current_user, 'eventfold_tenant', 'MEMBER') THEN
        EXECUTE format('GRANT eventfold_tenant TO %I', current_user);
    END IF;
EXCEPTION WHEN insufficient_privilege OR duplicate_object OR unique_violation THEN NULL;
END $$;
ALTER TABLE read_models ADD COLUMN tenant TEXT GENERATED ALWAYS AS
    (CASE WHEN strpos(key, '/') > 0 THEN split_part(key, '/', 1) ELSE 'default' END) STORED;
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE read_models ENABLE ROW LEVEL SECURITY;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eventfold_tenant') THEN
        GRANT SELECT ON events, read_models TO eventfold_tenant;
        CREATE POLICY events_of_the_tenant ON events FOR SELECT TO eventfold_tenant
            USING (tenant_id = current_setting('eventfold.tenant'));
        CREATE POLICY read_models_of_the_tenant ON read_models FOR SELECT TO eventfold_tenant
            USING (tenant = current_setting('eventfold.tenant'));
    END IF;
END $$;
",
    // 9: `backfill`, true on events recorded as history by a backfill, NULL on live ones.
    // `eventfold_append` takes one more array, p_backfills; the append-only trigger guards the
    // column like every other.
    r"
ALTER TABLE events ADD COLUMN backfill BOOLEAN;
DROP FUNCTION IF EXISTS eventfold_append(BIGINT, TEXT[], BIGINT[], UUID[], TEXT[], BIGINT[], TEXT[], INTEGER[],
    TIMESTAMPTZ[], TIMESTAMPTZ, TEXT[], UUID[], UUID[], TEXT[], TEXT[], TEXT[], TEXT[], INTEGER[], TEXT[], TEXT,
    INTEGER[], BYTEA[], TEXT[]);
CREATE FUNCTION eventfold_append(
    p_lock BIGINT, p_check_streams TEXT[], p_check_versions BIGINT[],
    p_ids UUID[], p_streams TEXT[], p_versions BIGINT[], p_types TEXT[], p_schema_versions INTEGER[],
    p_event_times TIMESTAMPTZ[], p_ingest TIMESTAMPTZ, p_actors TEXT[], p_causations UUID[],
    p_correlations UUID[], p_tenants TEXT[], p_payloads TEXT[],
    p_keys TEXT[], p_fingerprints TEXT[], p_statuses INTEGER[], p_bodies TEXT[], p_channel TEXT,
    p_stream_slots INTEGER[], p_digests BYTEA[], p_vias TEXT[], p_backfills BOOLEAN[]
) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_zero CONSTANT BYTEA := decode(repeat('00', 32), 'hex');
    v_ok BOOLEAN;
    v_stream_heads BYTEA[];
    v_head BIGINT;
    v_prev BYTEA;
    v_slot INTEGER;
    v_prevs BYTEA[];
    v_hashes BYTEA[];
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    SELECT coalesce(bool_and(coalesce(l.stream_version, 0) = c.v), true),
           array_agg(coalesce(l.hash, v_zero) ORDER BY c.o)
      INTO v_ok, v_stream_heads
      FROM unnest(p_check_streams, p_check_versions) WITH ORDINALITY AS c(s, v, o)
      LEFT JOIN LATERAL (SELECT e.stream_version, e.hash FROM events e WHERE e.stream_id = c.s
                         ORDER BY e.stream_version DESC LIMIT 1) l ON true;
    IF NOT v_ok THEN
        RETURN -1;
    END IF;
    SELECT e.position, e.hash INTO v_head, v_prev FROM events e ORDER BY e.position DESC LIMIT 1;
    v_head := coalesce(v_head, 0);
    v_prev := coalesce(v_prev, v_zero);
    IF p_digests IS NOT NULL THEN
        FOR i IN 1 .. cardinality(p_ids) LOOP
            v_slot := p_stream_slots[i];
            v_prevs[i] := v_prev;
            v_prev := sha256(v_prev || v_stream_heads[v_slot] || int8send(v_head + i) || p_digests[i]);
            v_hashes[i] := v_prev;
            v_stream_heads[v_slot] := v_prev;
        END LOOP;
    END IF;
    INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version,
                        event_time, ingest_time, actor, causation_id, correlation_id, tenant_id, payload,
                        prev_hash, hash, via, backfill)
    SELECT v_head + u.o, u.i, u.s, u.v, u.t, u.sv, u.et, p_ingest, u.a, u.ca, u.co, u.tn, u.pl,
           u.ph, u.h, u.vi, u.bf
    FROM unnest(p_ids, p_streams, p_versions, p_types, p_schema_versions, p_event_times, p_actors,
                p_causations, p_correlations, p_tenants, p_payloads, v_prevs, v_hashes, p_vias,
                p_backfills)
         WITH ORDINALITY AS u(i, s, v, t, sv, et, a, ca, co, tn, pl, ph, h, vi, bf, o);
    INSERT INTO idempotency_keys (key, fingerprint, status, body, created_at)
    SELECT k.k, k.f, k.st, k.b, p_ingest
    FROM unnest(p_keys, p_fingerprints, p_statuses, p_bodies) AS k(k, f, st, b);
    PERFORM pg_notify(p_channel, (v_head + cardinality(p_ids))::text);
    RETURN v_head;
END $$;
CREATE OR REPLACE FUNCTION eventfold_events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND (NEW.position, NEW.event_id, NEW.stream_id, NEW.stream_version, NEW.event_type,
            NEW.schema_version, NEW.event_time, NEW.ingest_time, NEW.actor, NEW.causation_id,
            NEW.correlation_id, NEW.tenant_id, NEW.via, NEW.backfill, NEW.prev_hash, NEW.hash)
           IS NOT DISTINCT FROM
           (OLD.position, OLD.event_id, OLD.stream_id, OLD.stream_version, OLD.event_type,
            OLD.schema_version, OLD.event_time, OLD.ingest_time, OLD.actor, OLD.causation_id,
            OLD.correlation_id, OLD.tenant_id, OLD.via, OLD.backfill, OLD.prev_hash, OLD.hash)
       AND ((OLD.archived_digest IS NULL AND length(NEW.archived_digest) = 32 AND NEW.payload = '')
         OR (OLD.archived_digest IS NOT NULL AND NEW.archived_digest IS NULL AND OLD.payload = ''
             AND NEW.payload <> ''))
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'events are append-only (only archive and restore may change a payload)';
END $$;
",
    // 10: the same append, cheaper for a lone request (the figures are in docs/performance.md).
    // Its statements' plans are generic: with custom plans (the default) PostgreSQL planned the
    // stream check again on every call, because the generic plan of a join over an array
    // parameter looks costlier than a custom one for one element. One stream is checked with one
    // index lookup instead of the join; the idempotency insert runs only when there are keys.
    r"
CREATE OR REPLACE FUNCTION eventfold_append(
    p_lock BIGINT, p_check_streams TEXT[], p_check_versions BIGINT[],
    p_ids UUID[], p_streams TEXT[], p_versions BIGINT[], p_types TEXT[], p_schema_versions INTEGER[],
    p_event_times TIMESTAMPTZ[], p_ingest TIMESTAMPTZ, p_actors TEXT[], p_causations UUID[],
    p_correlations UUID[], p_tenants TEXT[], p_payloads TEXT[],
    p_keys TEXT[], p_fingerprints TEXT[], p_statuses INTEGER[], p_bodies TEXT[], p_channel TEXT,
    p_stream_slots INTEGER[], p_digests BYTEA[], p_vias TEXT[], p_backfills BOOLEAN[]
) RETURNS BIGINT LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_zero CONSTANT BYTEA := decode(repeat('00', 32), 'hex');
    v_ok BOOLEAN;
    v_version BIGINT;
    v_stream_heads BYTEA[];
    v_head BIGINT;
    v_prev BYTEA;
    v_slot INTEGER;
    v_prevs BYTEA[];
    v_hashes BYTEA[];
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    IF cardinality(p_check_streams) = 1 THEN
        SELECT e.stream_version, e.hash INTO v_version, v_prev FROM events e
         WHERE e.stream_id = p_check_streams[1] ORDER BY e.stream_version DESC LIMIT 1;
        v_ok := coalesce(v_version, 0) = p_check_versions[1];
        v_stream_heads := ARRAY[coalesce(v_prev, v_zero)];
    ELSE
        SELECT coalesce(bool_and(coalesce(l.stream_version, 0) = c.v), true),
               array_agg(coalesce(l.hash, v_zero) ORDER BY c.o)
          INTO v_ok, v_stream_heads
          FROM unnest(p_check_streams, p_check_versions) WITH ORDINALITY AS c(s, v, o)
          LEFT JOIN LATERAL (SELECT e.stream_version, e.hash FROM events e WHERE e.stream_id = c.s
                             ORDER BY e.stream_version DESC LIMIT 1) l ON true;
    END IF;
    IF NOT v_ok THEN
        RETURN -1;
    END IF;
    SELECT e.position, e.hash INTO v_head, v_prev FROM events e ORDER BY e.position DESC LIMIT 1;
    v_head := coalesce(v_head, 0);
    v_prev := coalesce(v_prev, v_zero);
    IF p_digests IS NOT NULL THEN
        FOR i IN 1 .. cardinality(p_ids) LOOP
            v_slot := p_stream_slots[i];
            v_prevs[i] := v_prev;
            v_prev := sha256(v_prev || v_stream_heads[v_slot] || int8send(v_head + i) || p_digests[i]);
            v_hashes[i] := v_prev;
            v_stream_heads[v_slot] := v_prev;
        END LOOP;
    END IF;
    INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version,
                        event_time, ingest_time, actor, causation_id, correlation_id, tenant_id, payload,
                        prev_hash, hash, via, backfill)
    SELECT v_head + u.o, u.i, u.s, u.v, u.t, u.sv, u.et, p_ingest, u.a, u.ca, u.co, u.tn, u.pl,
           u.ph, u.h, u.vi, u.bf
    FROM unnest(p_ids, p_streams, p_versions, p_types, p_schema_versions, p_event_times, p_actors,
                p_causations, p_correlations, p_tenants, p_payloads, v_prevs, v_hashes, p_vias,
                p_backfills)
         WITH ORDINALITY AS u(i, s, v, t, sv, et, a, ca, co, tn, pl, ph, h, vi, bf, o);
    IF cardinality(p_keys) > 0 THEN
        INSERT INTO idempotency_keys (key, fingerprint, status, body, created_at)
        SELECT k.k, k.f, k.st, k.b, p_ingest
        FROM unnest(p_keys, p_fingerprints, p_statuses, p_bodies) AS k(k, f, st, b);
    END IF;
    PERFORM pg_notify(p_channel, (v_head + cardinality(p_ids))::text);
    RETURN v_head;
END $$;
",
];

/// The migration (1-based) that adds the hash chain.
pub(crate) const CHAIN_MIGRATION: usize = 4;
