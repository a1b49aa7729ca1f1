-- The client's database, version 7 to 8: what each queued envelope belongs
-- to, so that 'securechan outbox' can list queued messages and cancel one
-- (securechan/client/db_outbox.py). Clear columns: random ids, the peer's
-- fingerprint digest (as in sessions) and times; the rest is sealed.

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
