-- The relay's database (relay.db), schema version 1: kept to test the upgrade
-- path (a new file gets the newest vN.sql). Owner: securechan/relay/sqlite_store.py.
CREATE TABLE queues (
    rid BLOB PRIMARY KEY CHECK (length(rid) = 16),
    sid BLOB NOT NULL UNIQUE CHECK (length(sid) = 16),
    recipient_key BLOB NOT NULL CHECK (length(recipient_key) = 32),
    sender_key BLOB CHECK (sender_key IS NULL OR length(sender_key) = 32),
    contact INTEGER NOT NULL CHECK (contact IN (0, 1)),
    created INTEGER NOT NULL,
    next_seq INTEGER NOT NULL DEFAULT 1 CHECK (next_seq >= 1),
    depth INTEGER NOT NULL DEFAULT 0 CHECK (depth >= 0)
);
CREATE TABLE envelopes (
    rid BLOB NOT NULL REFERENCES queues (rid) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    msg_id BLOB NOT NULL CHECK (length(msg_id) = 16),
    data BLOB NOT NULL,
    received INTEGER NOT NULL,
    PRIMARY KEY (rid, seq),
    UNIQUE (rid, msg_id)
);
CREATE INDEX envelopes_by_received ON envelopes (received);
CREATE TRIGGER envelope_added AFTER INSERT ON envelopes BEGIN
    UPDATE queues SET depth = depth + 1, next_seq = max(next_seq, NEW.seq + 1)
    WHERE rid = NEW.rid;
END;
CREATE TRIGGER envelope_removed AFTER DELETE ON envelopes BEGIN
    UPDATE queues SET depth = depth - 1 WHERE rid = OLD.rid;
END;
CREATE TABLE signed_prekeys (
    rid BLOB PRIMARY KEY REFERENCES queues (rid) ON DELETE CASCADE,
    blob BLOB NOT NULL
);
CREATE TABLE one_time_prekeys (
    id INTEGER PRIMARY KEY,
    rid BLOB NOT NULL REFERENCES queues (rid) ON DELETE CASCADE,
    blob BLOB NOT NULL
);
CREATE INDEX one_time_by_rid ON one_time_prekeys (rid, id);
CREATE TABLE nonces (
    key BLOB NOT NULL CHECK (length(key) = 32),
    nonce BLOB NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (key, nonce)
);
CREATE INDEX nonces_by_expiry ON nonces (expires);
