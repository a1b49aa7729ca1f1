-- Group streams (docs/RELAY.md, "Group streams"), version 2: the same tables
-- and function as v2.sql's (see there).
CREATE TABLE streams (
    stream_id bytea PRIMARY KEY CHECK (octet_length(stream_id) = 32),
    created bigint NOT NULL,
    items bigint NOT NULL DEFAULT 0 CHECK (items >= 0),
    bytes bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0)
);
CREATE TABLE stream_items (
    stream_id bytea NOT NULL REFERENCES streams (stream_id),
    position bigint NOT NULL CHECK (position >= 1),
    digest bytea NOT NULL CHECK (octet_length(digest) = 32),
    data bytea NOT NULL,
    log_index bigint NOT NULL CHECK (log_index >= 0),
    received bigint NOT NULL,
    PRIMARY KEY (stream_id, position),
    UNIQUE (stream_id, digest)
);
CREATE FUNCTION stream_item_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE streams SET items = greatest(items, NEW.position),
        bytes = bytes + octet_length(NEW.data)
    WHERE stream_id = NEW.stream_id;
    RETURN NULL;
END $$;
CREATE TRIGGER stream_item_added AFTER INSERT ON stream_items
    FOR EACH ROW EXECUTE FUNCTION stream_item_added();
-- A post in one statement (one round trip, its own transaction). status:
-- stored, duplicate (the blob is held: its position and log index), full,
-- storage (the overall byte limit). A resend is looked up first, so it is
-- never refused; then the stream row is created if new and locked, the
-- resend looked up again under the lock, the count checked, the item
-- inserted at the next position.
CREATE FUNCTION securechan_put_stream_item(
    p_stream bytea, p_data bytea, p_digest bytea, p_log_index bigint, p_now bigint,
    p_max_items bigint, p_storage_bytes bigint,
    OUT status text, OUT pos bigint, OUT leaf bigint
) LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    SELECT i.position, i.log_index INTO pos, leaf FROM stream_items i
        WHERE i.stream_id = p_stream AND i.digest = p_digest;
    IF FOUND THEN
        status := 'duplicate';
        RETURN;
    END IF;
    IF p_storage_bytes IS NOT NULL
            AND pg_database_size(current_database()) + octet_length(p_data) > p_storage_bytes THEN
        status := 'storage';
        RETURN;
    END IF;
    INSERT INTO streams (stream_id, created) VALUES (p_stream, p_now) ON CONFLICT DO NOTHING;
    SELECT s.items INTO n FROM streams s WHERE s.stream_id = p_stream FOR UPDATE;
    SELECT i.position, i.log_index INTO pos, leaf FROM stream_items i
        WHERE i.stream_id = p_stream AND i.digest = p_digest;
    IF FOUND THEN
        status := 'duplicate';
        RETURN;
    END IF;
    IF n >= p_max_items THEN
        status := 'full';
        RETURN;
    END IF;
    -- The stream_item_added trigger moves items (the last position) on.
    INSERT INTO stream_items (stream_id, position, digest, data, log_index, received)
        VALUES (p_stream, n + 1, p_digest, p_data, p_log_index, p_now);
    status := 'stored';
    pos := n + 1;
    leaf := p_log_index;
END $$;
