"""The client database's record of what each queued envelope belongs to.

A part of :class:`~securechan.client.db.ClientDB` (which inherits these
methods). ``outbox`` holds the envelopes themselves (one row per envelope
and relay); ``outbox_messages`` one row per message a send made (its
contact's fingerprint digest and conversation in clear, its contact name,
kind, size and sequence numbers sealed), and ``outbox_parts`` maps each
envelope's message id to its message. A message's rows go when its last
envelope was posted (:meth:`OutboxTables.settle_outbox`) or when it is
cancelled (:meth:`OutboxTables.withdraw_outbox`). Envelopes without a
message (queue grants sent on their own, and envelopes queued before schema
version 8) are listed by their own message id.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OutboxTables", "QueuedRow"]


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedRow:
    """One queued message: ``meta`` is opened by the caller; ``ref`` is None
    for an envelope that belongs to no message (then ``key`` is its msg_id)."""

    ref: bytes | None
    key: bytes
    peer: bytes | None
    conversation: bytes | None
    parts: int
    remaining: int
    created: int
    relays: tuple[str, ...]
    meta: bytes | None


class OutboxTables:
    """``outbox_messages`` and ``outbox_parts``."""

    _db: sqlite3.Connection
    seal: Callable[[str, bytes, bytes], bytes]
    open: Callable[[str, bytes, bytes], bytes]

    def add_outbox_message(
        self,
        ref: bytes,
        peer: bytes,
        conversation: bytes,
        msg_ids: list[bytes],
        parts: int,
        now: int,
        meta: bytes,
    ) -> None:
        """Record a message made of the envelopes ``msg_ids`` (``parts``
        outbox rows in all: each envelope once per relay), inside the
        caller's transaction."""
        self._db.execute(
            "INSERT INTO outbox_messages (ref, peer, conversation, parts, created, sealed) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (ref, peer, conversation, parts, now, self.seal("outbox_messages", ref, meta)),
        )
        self._db.executemany(
            "INSERT OR IGNORE INTO outbox_parts (msg_id, ref) VALUES (?, ?)",
            [(m, ref) for m in msg_ids],
        )

    def queued(self) -> list[QueuedRow]:
        """Every message with envelopes still in the outbox, oldest first."""
        out: list[QueuedRow] = []
        rows = self._db.execute(
            "SELECT m.ref, m.peer, m.conversation, m.parts, m.created, m.sealed, "
            "COUNT(o.id), GROUP_CONCAT(DISTINCT o.relay) "
            "FROM outbox_messages m JOIN outbox_parts p ON p.ref = m.ref "
            "JOIN outbox o ON o.msg_id = p.msg_id GROUP BY m.ref ORDER BY MIN(o.id)"
        ).fetchall()
        for r in rows:
            out.append(
                QueuedRow(
                    ref=r[0],
                    key=r[0],
                    peer=r[1],
                    conversation=r[2],
                    parts=r[3],
                    remaining=r[6],
                    created=r[4],
                    relays=tuple(sorted(str(r[7]).split(","))),
                    meta=self.open("outbox_messages", r[0], r[5]),
                )
            )
        loose = self._db.execute(
            "SELECT o.msg_id, COUNT(*), MIN(o.created), GROUP_CONCAT(DISTINCT o.relay) "
            "FROM outbox o LEFT JOIN outbox_parts p ON p.msg_id = o.msg_id "
            "WHERE p.msg_id IS NULL GROUP BY o.msg_id ORDER BY MIN(o.id)"
        ).fetchall()
        for r in loose:
            out.append(
                QueuedRow(
                    ref=None,
                    key=r[0],
                    peer=None,
                    conversation=None,
                    parts=r[1],
                    remaining=r[1],
                    created=r[2],
                    relays=tuple(sorted(str(r[3]).split(","))),
                    meta=None,
                )
            )
        return out

    def withdraw_outbox(self, ref: bytes) -> tuple[int, int] | None:
        """Take every envelope of the message ``ref`` out of the outbox
        (inside the caller's transaction); return (parts in all, parts
        withdrawn), or None if no such message is queued."""
        row = self._db.execute("SELECT parts FROM outbox_messages WHERE ref = ?", (ref,)).fetchone()
        if row is None:
            return None
        cur = self._db.execute(
            "DELETE FROM outbox WHERE msg_id IN (SELECT msg_id FROM outbox_parts WHERE ref = ?)",
            (ref,),
        )
        self._forget(ref)
        return int(row[0]), int(cur.rowcount)

    def settle_outbox(self, msg_id: bytes) -> None:
        """After an envelope left the outbox: forget its message once none of
        the message's envelopes is left (inside the caller's transaction)."""
        row = self._db.execute(
            "SELECT ref FROM outbox_parts WHERE msg_id = ?", (msg_id,)
        ).fetchone()
        if row is None:
            return
        left = self._db.execute(
            "SELECT 1 FROM outbox o JOIN outbox_parts p ON p.msg_id = o.msg_id "
            "WHERE p.ref = ? LIMIT 1",
            (row[0],),
        ).fetchone()
        if left is None:
            self._forget(row[0])

    def _forget(self, ref: bytes) -> None:
        self._db.execute("DELETE FROM outbox_parts WHERE ref = ?", (ref,))
        self._db.execute("DELETE FROM outbox_messages WHERE ref = ?", (ref,))
