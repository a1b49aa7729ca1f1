-- Byte quotas (docs/RELAY.md, "Limits"): each queue counts the bytes it
-- holds, kept by the same triggers as depth, and queues are found by
-- sender key to add up a sender's bytes.
ALTER TABLE queues ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0 CHECK (bytes >= 0);
UPDATE queues SET bytes = (SELECT coalesce(sum(length(data)), 0) FROM envelopes
    WHERE envelopes.rid = queues.rid);
DROP TRIGGER envelope_added;
DROP TRIGGER envelope_removed;
CREATE TRIGGER envelope_added AFTER INSERT ON envelopes BEGIN
    UPDATE queues SET depth = depth + 1, next_seq = max(next_seq, NEW.seq + 1),
        bytes = bytes + length(NEW.data)
    WHERE rid = NEW.rid;
END;
CREATE TRIGGER envelope_removed AFTER DELETE ON envelopes BEGIN
    UPDATE queues SET depth = depth - 1, bytes = bytes - length(OLD.data)
    WHERE rid = OLD.rid;
END;
CREATE INDEX queues_by_sender ON queues (sender_key) WHERE sender_key IS NOT NULL;
