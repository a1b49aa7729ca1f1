-- The client's database (client.db), schema version 8, for a new file (older
-- files: upgrade-to-v7.sql, then upgrade-to-v8.sql). Owner: securechan/client/db.py.
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
