"""The client database's tables of the record: stored messages, the ratchet
positions received messages consumed, and received file chunks.

A part of :class:`~securechan.client.db.ClientDB` (which inherits these
methods; open the database through it). Message records and file chunks are
sealed with the storage key, bound to their table and row
(:meth:`ClientDB.seal`); a ratchet position is indexed by a keyed hash.
Each method runs inside the caller's transaction, or alone in autocommit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from securechan.primitives import hmac_sha256

__all__ = ["MessageTables", "StoredMessage"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMessage:
    """A message in the local store (``record`` is opened by the caller)."""

    id: int
    conversation: bytes
    peer: bytes
    direction: str
    seq: int
    at: int
    record: bytes


class MessageTables:
    """``messages``, ``positions`` and ``file_chunks``."""

    _db: sqlite3.Connection
    _position_key: bytes
    seal: Callable[[str, bytes, bytes], bytes]
    open: Callable[[str, bytes, bytes], bytes]

    # --- messages -----------------------------------------------------------------

    def add_message(
        self, conversation: bytes, peer: bytes, direction: str, seq: int, at: int, record: bytes
    ) -> None:
        """Store a sent or received message (sealed)."""
        row = conversation + direction.encode() + seq.to_bytes(8, "big")
        self._db.execute(
            "INSERT OR IGNORE INTO messages (conversation, peer, direction, seq, at, sealed) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (conversation, peer, direction, seq, at, self.seal("messages", row, record)),
        )

    def messages(
        self, peer: bytes | None = None, *, after: int = 0, limit: int = 1000
    ) -> list[StoredMessage]:
        """One page of stored messages in the order they were stored (of one
        peer, if given): at most ``limit``, those after the row id ``after``.
        A caller that wants them all pages on with ``after`` = the last id."""
        query = "SELECT id, conversation, peer, direction, seq, at, sealed FROM messages"
        query += " WHERE id > ?"
        args: tuple[object, ...] = (after,)
        if peer is not None:
            query += " AND peer = ?"
            args = (after, peer)
        rows = self._db.execute(query + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        return [self._stored_message(r) for r in rows]

    def last_message_id(self) -> int:
        """The row id of the newest stored message (0 when there is none)."""
        (n,) = self._db.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()
        return int(n)

    def shown_cursor(self) -> int | None:
        """The row id up to which received messages were handed to a
        ``receive`` caller (client/unshown.py), or ``None`` if never set."""
        row = self._db.execute("SELECT value FROM meta WHERE name = 'received_shown'").fetchone()
        return None if row is None else int(row[0])

    def set_shown_cursor(self, up_to: int) -> None:
        """Move the shown cursor forward to ``up_to`` (never back)."""
        self._db.execute(
            "INSERT INTO meta (name, value) VALUES ('received_shown', ?) "
            "ON CONFLICT(name) DO UPDATE SET value = max(value, excluded.value)",
            (up_to,),
        )

    def remove_message(self, conversation: bytes, direction: str, seq: int) -> None:
        """Forget a stored message (a send cancelled before it was posted)."""
        self._db.execute(
            "DELETE FROM messages WHERE conversation = ? AND direction = ? AND seq = ?",
            (conversation, direction, seq),
        )

    def position_key(self, dh: bytes, n: int) -> bytes:
        """The index key of a ratchet position (keyed, so the clear index
        does not link stored messages to envelopes the relay saw)."""
        return hmac_sha256(self._position_key, dh + n.to_bytes(8, "big"))

    def add_position(self, position: bytes, conversation: bytes, seq: int) -> None:
        """Remember which received message consumed a ratchet position."""
        self._db.execute(
            "INSERT OR IGNORE INTO positions (position, conversation, seq) VALUES (?, ?, ?)",
            (position, conversation, seq),
        )

    def position(self, position: bytes) -> tuple[bytes, int] | None:
        """(conversation, seq) of the received message at a ratchet position."""
        row = self._db.execute(
            "SELECT conversation, seq FROM positions WHERE position = ?", (position,)
        ).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]))

    def message(self, conversation: bytes, direction: str, seq: int) -> StoredMessage | None:
        """One stored message by its place, or ``None``."""
        r = self._db.execute(
            "SELECT id, conversation, peer, direction, seq, at, sealed FROM messages "
            "WHERE conversation = ? AND direction = ? AND seq = ?",
            (conversation, direction, seq),
        ).fetchone()
        return None if r is None else self._stored_message(r)

    def _stored_message(self, r: tuple[Any, ...]) -> StoredMessage:
        """A ``messages`` row (id, conversation, peer, direction, seq, at,
        sealed) with its record opened."""
        row = r[1] + r[3].encode() + r[4].to_bytes(8, "big")
        return StoredMessage(
            id=r[0],
            conversation=r[1],
            peer=r[2],
            direction=r[3],
            seq=r[4],
            at=r[5],
            record=self.open("messages", row, r[6]),
        )

    # --- file chunks -----------------------------------------------------------------

    def add_chunk(self, conversation: bytes, file_id: bytes, index: int, chunk: bytes) -> int:
        """Store a received file chunk; return how many chunks of it are held."""
        row = conversation + file_id + index.to_bytes(8, "big")
        self._db.execute(
            "INSERT OR IGNORE INTO file_chunks (conversation, file_id, idx, sealed) "
            "VALUES (?, ?, ?, ?)",
            (conversation, file_id, index, self.seal("file_chunks", row, chunk)),
        )
        (n,) = self._db.execute(
            "SELECT COUNT(*) FROM file_chunks WHERE conversation = ? AND file_id = ?",
            (conversation, file_id),
        ).fetchone()
        return int(n)

    def take_chunks(self, conversation: bytes, file_id: bytes) -> list[bytes]:
        """All chunks of a file in order, removed from the store."""
        rows = self._db.execute(
            "SELECT idx, sealed FROM file_chunks WHERE conversation = ? AND file_id = ? "
            "ORDER BY idx",
            (conversation, file_id),
        ).fetchall()
        self._db.execute(
            "DELETE FROM file_chunks WHERE conversation = ? AND file_id = ?",
            (conversation, file_id),
        )
        return [
            self.open("file_chunks", conversation + file_id + r[0].to_bytes(8, "big"), r[1])
            for r in rows
        ]
