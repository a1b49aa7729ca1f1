-- The relay's transparency log on PostgreSQL, schema version 1.
-- Owner: securechan/relay/pg_tlog.py. Applied in one transaction under
-- pg_advisory_xact_lock, so relay processes starting together create it once.
-- The same rows as tlog.db (securechan/schema/relay_log/v2.sql): nodes at the
-- storage positions of securechan/audit/tree.py (Go sumdb order), so that
-- `securechan relay migrate` copies them as they are.

CREATE TABLE relay_log_pg_schema (version INTEGER NOT NULL);
INSERT INTO relay_log_pg_schema (version) VALUES (1);

-- The one-row tree state: the sequencer's lock. Every append takes
-- SELECT ... FOR UPDATE on it, writes its leaves, nodes and the new size and
-- root, and commits: one writer at a time whatever process took the send
-- (Tessera's TreeState row). origin and log_key never change.
CREATE TABLE relay_log_state (
    id SMALLINT PRIMARY KEY CHECK (id = 0),
    origin TEXT NOT NULL,
    log_key TEXT NOT NULL,
    size BIGINT NOT NULL CHECK (size >= 0),
    root BYTEA NOT NULL CHECK (length(root) = 32),
    last_append BIGINT,
    cosig_generation BIGINT NOT NULL DEFAULT 0
);

-- Every complete subtree hash at its storage position; never updated.
CREATE TABLE relay_log_nodes (
    pos BIGINT PRIMARY KEY CHECK (pos >= 0),
    hash BYTEA NOT NULL CHECK (length(hash) = 32)
);

-- Leaf hash -> index: deduplication, and a duplicate's receipt.
CREATE TABLE relay_log_leaves (
    leaf BYTEA PRIMARY KEY CHECK (length(leaf) = 32),
    idx BIGINT NOT NULL UNIQUE CHECK (idx >= 0)
);

-- The newest cosignature line per witness.
CREATE TABLE relay_log_cosignatures (
    witness TEXT PRIMARY KEY,
    size BIGINT NOT NULL CHECK (size >= 0),
    timestamp BIGINT NOT NULL,
    line TEXT NOT NULL
);
