-- The relay's PostgreSQL database, schema version 2: a new database (or a
-- new PostgreSQL schema, chosen with search_path).
-- Owner: securechan/relay/pg_store.py (docs/RELAY.md, "PostgreSQL").
-- The same tables as the SQLite relay.db (securechan/schema/relay/v2.sql),
-- so that a SQLite relay can be copied table by table. Ids and keys are
-- checked for size here too. next_seq, depth and bytes live on the queue
-- row: a send locks that row (SELECT ... FOR UPDATE), so the sends of one
-- queue are serialised whichever relay process takes them, a sequence
-- number is never handed out twice (even after every envelope was
-- acknowledged, expired or deleted), and the depth and byte quotas are
-- checked against counts no other transaction can move meanwhile. The
-- triggers keep depth and bytes, so no deletion path can forget them.
CREATE TABLE queues (
    rid bytea PRIMARY KEY CHECK (octet_length(rid) = 16),
    sid bytea NOT NULL UNIQUE CHECK (octet_length(sid) = 16),
    recipient_key bytea NOT NULL CHECK (octet_length(recipient_key) = 32),
    sender_key bytea CHECK (sender_key IS NULL OR octet_length(sender_key) = 32),
    contact boolean NOT NULL,
    created bigint NOT NULL,
    next_seq bigint NOT NULL DEFAULT 1 CHECK (next_seq >= 1),
    depth bigint NOT NULL DEFAULT 0 CHECK (depth >= 0),
    bytes bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0)
);
CREATE INDEX queues_by_sender ON queues (sender_key) WHERE sender_key IS NOT NULL;
CREATE TABLE envelopes (
    rid bytea NOT NULL REFERENCES queues (rid) ON DELETE CASCADE,
    seq bigint NOT NULL,
    msg_id bytea NOT NULL CHECK (octet_length(msg_id) = 16),
    data bytea NOT NULL,
    received bigint NOT NULL,
    PRIMARY KEY (rid, seq),
    UNIQUE (rid, msg_id)
);
CREATE INDEX envelopes_by_received ON envelopes (received, rid, seq);
CREATE FUNCTION envelope_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE queues SET depth = depth + 1, next_seq = greatest(next_seq, NEW.seq + 1),
        bytes = bytes + octet_length(NEW.data)
    WHERE rid = NEW.rid;
    RETURN NULL;
END $$;
CREATE FUNCTION envelope_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE queues SET depth = depth - 1, bytes = bytes - octet_length(OLD.data)
    WHERE rid = OLD.rid;
    RETURN NULL;
END $$;
CREATE TRIGGER envelope_added AFTER INSERT ON envelopes
    FOR EACH ROW EXECUTE FUNCTION envelope_added();
CREATE TRIGGER envelope_removed AFTER DELETE ON envelopes
    FOR EACH ROW EXECUTE FUNCTION envelope_removed();
CREATE TABLE signed_prekeys (
    rid bytea PRIMARY KEY REFERENCES queues (rid) ON DELETE CASCADE,
    blob bytea NOT NULL
);
CREATE TABLE one_time_prekeys (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rid bytea NOT NULL REFERENCES queues (rid) ON DELETE CASCADE,
    blob bytea NOT NULL
);
CREATE INDEX one_time_by_rid ON one_time_prekeys (rid, id);
CREATE TABLE nonces (
    key bytea NOT NULL CHECK (octet_length(key) = 32),
    nonce bytea NOT NULL,
    expires bigint NOT NULL,
    PRIMARY KEY (key, nonce)
);
CREATE INDEX nonces_by_expiry ON nonces (expires);
-- A send in one statement (one round trip, its own transaction): record the
-- request nonce, lock the queue row, then (each statement of a PL/pgSQL
-- function takes a new snapshot under READ COMMITTED, so these see what the
-- lock's last holder committed) look for msg_id, check the depth and the
-- byte quotas, insert. (The wake-up NOTIFY is sent after the commit, in a
-- transaction of its own: PostgreSQL serialises the commits of notifying
-- transactions, WAL flush included, which would cost one flush per send.) status: stored,
-- duplicate, full, nonce_reused, queue, sender, storage (which quota). No
-- such queue raises SQLSTATE SC404, which rolls the nonce back too.
CREATE FUNCTION securechan_put_envelope(
    p_rid bytea, p_msg_id bytea, p_data bytea, p_now bigint, p_max_depth bigint,
    p_nonce_key bytea, p_nonce bytea, p_nonce_expires bigint, p_nonce_now bigint,
    p_queue_bytes bigint, p_sender_bytes bigint, p_storage_bytes bigint, OUT status text, OUT seq bigint
) LANGUAGE plpgsql AS $$
DECLARE
    q record;
    held bigint;
    n bigint;
BEGIN
    IF p_nonce_key IS NOT NULL THEN
        INSERT INTO nonces (key, nonce, expires) VALUES (p_nonce_key, p_nonce, p_nonce_expires)
            ON CONFLICT (key, nonce) DO UPDATE SET expires = excluded.expires
            WHERE nonces.expires < p_nonce_now;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n = 0 THEN
            status := 'nonce_reused';
            RETURN;
        END IF;
    END IF;
    SELECT queues.next_seq, queues.depth, queues.bytes, queues.sender_key INTO q
        FROM queues WHERE rid = p_rid FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such queue' USING ERRCODE = 'SC404';
    END IF;
    SELECT e.seq INTO held FROM envelopes e WHERE e.rid = p_rid AND e.msg_id = p_msg_id;
    IF FOUND THEN  -- checked before fullness: a resend is never refused
        status := 'duplicate';
        seq := held;
        RETURN;
    END IF;
    IF q.depth >= p_max_depth THEN
        status := 'full';  -- not raised: the nonce stays recorded
        RETURN;
    END IF;
    IF p_queue_bytes IS NOT NULL AND q.bytes + octet_length(p_data) > p_queue_bytes THEN
        status := 'queue';
        RETURN;
    END IF;
    IF p_sender_bytes IS NOT NULL AND q.sender_key IS NOT NULL THEN
        -- The queue locks do not serialise one sender's sends to different
        -- queues: this lock (class 0x5EC1, the key's first 4 bytes) does.
        PERFORM pg_advisory_xact_lock(24257,
            ('x' || encode(substring(q.sender_key FROM 1 FOR 4), 'hex'))::bit(32)::integer);
        IF (SELECT coalesce(sum(bytes), 0) FROM queues WHERE sender_key = q.sender_key)
                + octet_length(p_data) > p_sender_bytes THEN
            status := 'sender';
            RETURN;
        END IF;
    END IF;
    IF p_storage_bytes IS NOT NULL
            AND pg_database_size(current_database()) + octet_length(p_data) > p_storage_bytes THEN
        status := 'storage';
        RETURN;
    END IF;
    -- The envelope_added trigger moves next_seq on and counts the depth.
    INSERT INTO envelopes (rid, seq, msg_id, data, received)
        VALUES (p_rid, q.next_seq, p_msg_id, p_data, p_now);
    status := 'stored';
    seq := q.next_seq;
END $$;
-- Group streams (docs/RELAY.md, "Group streams"; relay/pg_streams.py):
-- opaque blobs numbered 1, 2, 3... per 32-byte stream id, each with the
-- index of its transparency-log leaf; the same tables as the SQLite
-- relay.db's (schema/relay/v3.sql). A post locks its stream row (SELECT
-- ... FOR UPDATE) before it reads items and inserts at items + 1, so the
-- posts of one stream are serialised whichever relay process takes them:
-- positions have no gap and no repeat. A blob is held once per stream.
CREATE TABLE streams (
    stream_id bytea PRIMARY KEY CHECK (octet_length(stream_id) = 32),
    created bigint NOT NULL,
    items bigint NOT NULL DEFAULT 0 CHECK (items >= 0),
    bytes bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0)
);
CREATE TABLE stream_items (
    stream_id bytea NOT NULL REFERENCES streams (stream_id),
    position bigint NOT NULL CHECK (position >= 1),
    digest bytea NOT NULL CHECK (octet_length(digest) = 32),
    data bytea NOT NULL,
    log_index bigint NOT NULL CHECK (log_index >= 0),
    received bigint NOT NULL,
    PRIMARY KEY (stream_id, position),
    UNIQUE (stream_id, digest)
);
CREATE FUNCTION stream_item_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE streams SET items = greatest(items, NEW.position),
        bytes = bytes + octet_length(NEW.data)
    WHERE stream_id = NEW.stream_id;
    RETURN NULL;
END $$;
CREATE TRIGGER stream_item_added AFTER INSERT ON stream_items
    FOR EACH ROW EXECUTE FUNCTION stream_item_added();
-- A post in one statement (one round trip, its own transaction). status:
-- stored, duplicate (the blob is held: its position and log index), full,
-- storage (the overall byte limit). A resend is looked up first, so it is
-- never refused; then the stream row is created if new and locked, the
-- resend looked up again under the lock, the count checked, the item
-- inserted at the next position.
CREATE FUNCTION securechan_put_stream_item(
    p_stream bytea, p_data bytea, p_digest bytea, p_log_index bigint, p_now bigint,
    p_max_items bigint, p_storage_bytes bigint,
    OUT status text, OUT pos bigint, OUT leaf bigint
) LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    SELECT i.position, i.log_index INTO pos, leaf FROM stream_items i
        WHERE i.stream_id = p_stream AND i.digest = p_digest;
    IF FOUND THEN
        status := 'duplicate';
        RETURN;
    END IF;
    IF p_storage_bytes IS NOT NULL
            AND pg_database_size(current_database()) + octet_length(p_data) > p_storage_bytes THEN
        status := 'storage';
        RETURN;
    END IF;
    INSERT INTO streams (stream_id, created) VALUES (p_stream, p_now) ON CONFLICT DO NOTHING;
    SELECT s.items INTO n FROM streams s WHERE s.stream_id = p_stream FOR UPDATE;
    SELECT i.position, i.log_index INTO pos, leaf FROM stream_items i
        WHERE i.stream_id = p_stream AND i.digest = p_digest;
    IF FOUND THEN
        status := 'duplicate';
        RETURN;
    END IF;
    IF n >= p_max_items THEN
        status := 'full';
        RETURN;
    END IF;
    -- The stream_item_added trigger moves items (the last position) on.
    INSERT INTO stream_items (stream_id, position, digest, data, log_index, received)
        VALUES (p_stream, n + 1, p_digest, p_data, p_log_index, p_now);
    status := 'stored';
    pos := n + 1;
    leaf := p_log_index;
END $$;
