-- Group streams (docs/RELAY.md, "Group streams"), version 3: the same tables
-- as v3.sql's (see there).
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
