-- Version 3 adds the log's entries (the SHA-256 of each leaf's envelope),
-- for the C2SP tlog-tiles entry bundles. Leaves appended before the upgrade
-- have no row: their entry bundles are not served (docs/RELAY.md).
CREATE TABLE relay_log_entries (
    idx INTEGER PRIMARY KEY CHECK (idx >= 0),
    digest BLOB NOT NULL CHECK (length(digest) = 32)
);
