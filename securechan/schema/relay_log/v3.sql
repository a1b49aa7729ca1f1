-- The relay's transparency log (tlog.db), schema version 3: a new file.
-- Owner: securechan/relay/tlog.py; the tree tables are securechan/audit/tree.py's,
-- included whole from schema/tree/v2.sql (with its schema_version fence).
-- relay_log_schema is where version 1 kept the relay tables' version; it stays,
-- holding 2, so older relays refuse this file instead of misreading it.
-- include: tree/v2.sql

CREATE TABLE relay_log_schema (version INTEGER NOT NULL);
INSERT INTO relay_log_schema (version) VALUES (2);
-- The log's origin and key (never change) and the time of the last append.
CREATE TABLE relay_log_meta (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    origin TEXT NOT NULL,
    log_key TEXT NOT NULL,
    last_append INTEGER
);
-- Leaf hash -> index: deduplication, and a duplicate's receipt.
CREATE TABLE relay_log_leaves (
    leaf BLOB PRIMARY KEY CHECK (length(leaf) = 32),
    idx INTEGER NOT NULL UNIQUE CHECK (idx >= 0)
) WITHOUT ROWID;
-- The newest cosignature line per witness.
CREATE TABLE relay_log_cosignatures (
    witness TEXT PRIMARY KEY,
    size INTEGER NOT NULL CHECK (size >= 0),
    timestamp INTEGER NOT NULL,
    line TEXT NOT NULL
);
-- The log's size at the last clean stop; cleared by the next start.
CREATE TABLE relay_log_clean (id INTEGER PRIMARY KEY CHECK (id = 0), size INTEGER NOT NULL);
-- Index -> SHA-256 of the envelope of each leaf appended since version 3:
-- the log's entries ("securechan/v1/envelope" || digest), served as C2SP
-- tlog-tiles entry bundles (securechan/relay/tlog_tiles.py).
CREATE TABLE relay_log_entries (
    idx INTEGER PRIMARY KEY CHECK (idx >= 0),
    digest BLOB NOT NULL CHECK (length(digest) = 32)
);
