-- The client's database, version 8 to 9: groups (issue 17).

-- Groups (issue 17; securechan/client/db_groups.py, docs/PROTOCOL.md §20).
-- Clear columns: random group ids, epochs, stream positions, log indexes,
-- record hashes, member fingerprints (as in sessions), statuses and times;
-- names, states, secrets, records and contents are sealed.
CREATE TABLE IF NOT EXISTS groups (
    group_id BLOB PRIMARY KEY,
    epoch INTEGER NOT NULL,
    cursor INTEGER NOT NULL DEFAULT 0,
    own_seq INTEGER NOT NULL DEFAULT 0,
    left_group INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    sealed BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS group_secrets (
    group_id BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    change_hash BLOB NOT NULL,
    author BLOB NOT NULL,
    received INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (group_id, epoch, change_hash)
);
CREATE TABLE IF NOT EXISTS group_transcript (
    id INTEGER PRIMARY KEY,
    group_id BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    position INTEGER NOT NULL,
    log_index INTEGER NOT NULL,
    record_hash BLOB NOT NULL,
    status TEXT NOT NULL,
    at INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    UNIQUE (group_id, epoch, position)
);
CREATE INDEX IF NOT EXISTS group_transcript_hash ON group_transcript(group_id, record_hash);
CREATE TABLE IF NOT EXISTS group_deliveries (
    record_hash BLOB PRIMARY KEY,
    group_id BLOB NOT NULL,
    sender BLOB NOT NULL,
    seq INTEGER NOT NULL,
    received INTEGER NOT NULL,
    matched INTEGER NOT NULL DEFAULT 0,
    sealed BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS group_deliveries_seq ON group_deliveries(group_id, sender, seq);
