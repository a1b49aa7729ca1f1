-- The relay's database (relay.db), schema version 3: a new file.
-- Owner: securechan/relay/sqlite_store.py (docs/RELAY.md, "Durability and storage").
-- Ids and keys are checked for size here too, so a bug above cannot store
-- something the interface does not allow. next_seq lives on the queue row so
-- that a sequence number is never handed out twice, even after every envelope
-- was acknowledged, expired or deleted. depth and bytes are kept by the
-- triggers below, so the queue-full and quota checks read one row, and no
-- deletion path can forget them.
CREATE TABLE queues (
    rid BLOB PRIMARY KEY CHECK (length(rid) = 16),
    sid BLOB NOT NULL UNIQUE CHECK (length(sid) = 16),
    recipient_key BLOB NOT NULL CHECK (length(recipient_key) = 32),
    sender_key BLOB CHECK (sender_key IS NULL OR length(sender_key) = 32),
    contact INTEGER NOT NULL CHECK (contact IN (0, 1)),
    created INTEGER NOT NULL,
    next_seq INTEGER NOT NULL DEFAULT 1 CHECK (next_seq >= 1),
    depth INTEGER NOT NULL DEFAULT 0 CHECK (depth >= 0),
    bytes INTEGER NOT NULL DEFAULT 0 CHECK (bytes >= 0)
);
CREATE INDEX queues_by_sender ON queues (sender_key) WHERE sender_key IS NOT NULL;
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
    UPDATE queues SET depth = depth + 1, next_seq = max(next_seq, NEW.seq + 1),
        bytes = bytes + length(NEW.data)
    WHERE rid = NEW.rid;
END;
CREATE TRIGGER envelope_removed AFTER DELETE ON envelopes BEGIN
    UPDATE queues SET depth = depth - 1, bytes = bytes - length(OLD.data)
    WHERE rid = OLD.rid;
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
-- Group streams (docs/RELAY.md, "Group streams"; relay/sqlite_streams.py):
-- opaque blobs numbered 1, 2, 3... per 32-byte stream id, each with the
-- index of its transparency-log leaf. items and bytes live on the stream
-- row and are kept by the trigger, so the next position and the stream's
-- size are one row's read; a blob is held once per stream (its SHA-256 is
-- unique), so a resend is answered with the held item. Items are never
-- deleted: the stream is a group's ordered record.
CREATE TABLE streams (
    stream_id BLOB PRIMARY KEY CHECK (length(stream_id) = 32),
    created INTEGER NOT NULL,
    items INTEGER NOT NULL DEFAULT 0 CHECK (items >= 0),
    bytes INTEGER NOT NULL DEFAULT 0 CHECK (bytes >= 0)
);
CREATE TABLE stream_items (
    stream_id BLOB NOT NULL REFERENCES streams (stream_id),
    position INTEGER NOT NULL CHECK (position >= 1),
    digest BLOB NOT NULL CHECK (length(digest) = 32),
    data BLOB NOT NULL,
    log_index INTEGER NOT NULL CHECK (log_index >= 0),
    received INTEGER NOT NULL,
    PRIMARY KEY (stream_id, position),
    UNIQUE (stream_id, digest)
);
CREATE TRIGGER stream_item_added AFTER INSERT ON stream_items BEGIN
    UPDATE streams SET items = max(items, NEW.position), bytes = bytes + length(NEW.data)
    WHERE stream_id = NEW.stream_id;
END;
