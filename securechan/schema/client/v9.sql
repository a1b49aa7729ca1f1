-- The client's database (client.db), schema version 9, for a new file (older
-- files: upgrade-to-v7.sql, then upgrade-to-v8.sql and upgrade-to-v9.sql). Owner: securechan/client/db.py.
CREATE TABLE IF NOT EXISTS state (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    generation INTEGER NOT NULL,
    blob BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    conversation BLOB PRIMARY KEY,
    peer BLOB NOT NULL,
    created INTEGER NOT NULL,
    grant_sent INTEGER NOT NULL DEFAULT 0,
    peer_grant BLOB
);
CREATE INDEX IF NOT EXISTS sessions_peer ON sessions(peer, created);
CREATE TABLE IF NOT EXISTS queues (
    rid BLOB PRIMARY KEY,
    relay TEXT NOT NULL,
    kind TEXT NOT NULL,
    conversation BLOB,
    secret BLOB NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    msg_id BLOB NOT NULL,
    relay TEXT NOT NULL,
    sid BLOB NOT NULL,
    sender BLOB,
    envelope BLOB NOT NULL,
    created INTEGER NOT NULL,
    UNIQUE (msg_id, relay, sid)
);
CREATE TABLE IF NOT EXISTS seen (
    msg_id BLOB PRIMARY KEY,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation BLOB NOT NULL,
    peer BLOB NOT NULL,
    direction TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    UNIQUE (conversation, direction, seq)
);
CREATE TABLE IF NOT EXISTS file_chunks (
    conversation BLOB NOT NULL,
    file_id BLOB NOT NULL,
    idx INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (conversation, file_id, idx)
);
CREATE TABLE IF NOT EXISTS relay_logs (
    relay TEXT PRIMARY KEY,
    verifier_key TEXT NOT NULL,
    checkpoint TEXT
);
CREATE TABLE IF NOT EXISTS refused_chains (
    dh BLOB PRIMARY KEY,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS log_receipts (
    envelope_hash BLOB NOT NULL,
    relay TEXT NOT NULL,
    receipt TEXT NOT NULL,
    PRIMARY KEY (envelope_hash, relay)
);
CREATE TABLE IF NOT EXISTS witness_policy (
    relay TEXT PRIMARY KEY,
    witnesses TEXT NOT NULL,
    required INTEGER NOT NULL,
    witnessed TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (
    position BLOB PRIMARY KEY,
    conversation BLOB NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS retired (
    conversation BLOB PRIMARY KEY,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS held (
    msg_id BLOB PRIMARY KEY,
    relay TEXT NOT NULL,
    envelope BLOB NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS held_keys (
    msg_id BLOB PRIMARY KEY,
    kind TEXT NOT NULL,
    key BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS held_keys_key ON held_keys(kind, key);
CREATE TABLE IF NOT EXISTS parked (
    msg_id BLOB PRIMARY KEY,
    relay TEXT NOT NULL,
    stage TEXT NOT NULL,
    envelope BLOB NOT NULL,
    at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS outbox_messages (
    ref BLOB PRIMARY KEY,
    peer BLOB NOT NULL,
    conversation BLOB NOT NULL,
    parts INTEGER NOT NULL,
    created INTEGER NOT NULL,
    sealed BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_parts (
    msg_id BLOB PRIMARY KEY,
    ref BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_parts_ref ON outbox_parts(ref);

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
