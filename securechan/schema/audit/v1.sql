-- The local audit log (audit.db), schema version 1. Owner: securechan/audit/log.py.
-- One row per entry; kind and hash repeat what the entry determines, for
-- look-ups, and AuditLog.verify() checks them, never trusts them.
CREATE TABLE entries (
    idx INTEGER PRIMARY KEY CHECK (idx >= 0),
    kind TEXT NOT NULL,
    entry BLOB NOT NULL,
    hash BLOB NOT NULL CHECK (length(hash) = 32)
);
-- Finds the last checkpoint without a scan.
CREATE INDEX entries_kind ON entries (kind, idx);
