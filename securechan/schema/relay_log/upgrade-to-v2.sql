-- Version 1 kept two versions in tables (schema_version for the tree,
-- relay_log_schema for the relay's tables, 1 each); from version 2 the file
-- has one, PRAGMA user_version. A version 1 file may lack the relay's tables
-- (a first start that stopped between the two) and relay_log_clean (made at
-- each start by version 1 code): IF NOT EXISTS adds what is missing.
CREATE TABLE IF NOT EXISTS relay_log_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS relay_log_meta (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    origin TEXT NOT NULL,
    log_key TEXT NOT NULL,
    last_append INTEGER
);
CREATE TABLE IF NOT EXISTS relay_log_leaves (
    leaf BLOB PRIMARY KEY CHECK (length(leaf) = 32),
    idx INTEGER NOT NULL UNIQUE CHECK (idx >= 0)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS relay_log_cosignatures (
    witness TEXT PRIMARY KEY,
    size INTEGER NOT NULL CHECK (size >= 0),
    timestamp INTEGER NOT NULL,
    line TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS relay_log_clean (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    size INTEGER NOT NULL
);
-- The old version tables stay as fences for older relays (see v2.sql).
DELETE FROM relay_log_schema;
INSERT INTO relay_log_schema (version) VALUES (2);
UPDATE schema_version SET version = 2;
