-- The relay's PostgreSQL database, schema version 1: a new database (or a
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
