-- from-version: 0
-- The client's database (client.db), schema version 7, for a new file and for
-- every older one. Owner: securechan/client/db.py. Sealed values are
-- encrypted by the caller (ClientDB.seal); the clear columns hold random ids,
-- counters and times. Versions 1 to 6 were made by one idempotent script
-- (every statement IF NOT EXISTS), and two branches both called their schema
-- 6; running the whole script again brings any of them to the tables of
-- version 7, and makes them in a new file: one script, no separate v7.sql.

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
