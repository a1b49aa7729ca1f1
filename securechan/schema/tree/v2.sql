-- A standalone append-only Merkle tree (securechan/audit/tree.py), schema version 2.
-- nodes: every complete subtree hash at its storage position (Go sumdb order).
-- schema_version is where version 1 kept its version; it stays, holding 2, so
-- code from before user_version refuses this file instead of misreading it.
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version (version) VALUES (2);
CREATE TABLE tree_size (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    size INTEGER NOT NULL CHECK (size >= 0)
);
CREATE TABLE nodes (pos INTEGER PRIMARY KEY, hash BLOB NOT NULL CHECK (length(hash) = 32));
INSERT INTO tree_size (id, size) VALUES (0, 0);
