"""The client database's tables of received envelopes: seen, held, parked, refused chains.

A part of :class:`~securechan.client.db.ClientDB` (which inherits these
methods; open the database through it). Envelopes are stored as they came
from the relay (already encrypted end to end); ids and times are in clear.
Each method runs inside the caller's transaction, or alone in autocommit.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from securechan.protocol.ordering import CHAIN, SENDER, Entry

__all__ = ["HeldRow", "ReceivedTables"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldRow:
    """A held envelope and what it waits for (``kind``/``key``: see
    :meth:`ClientDB.set_held_key`; ``None`` for rows held before schema 6)."""

    msg_id: bytes
    relay: str
    envelope: bytes
    at: int
    kind: str | None
    key: bytes | None


class ReceivedTables:
    """``seen``, ``held``/``held_keys``, ``parked`` and ``refused_chains``."""

    _db: sqlite3.Connection

    def seen(self, msg_id: bytes) -> bool:
        """Was this envelope (by message id, across relays) processed?"""
        return (
            self._db.execute("SELECT 1 FROM seen WHERE msg_id = ?", (msg_id,)).fetchone()
            is not None
        )

    def mark_seen(self, msg_id: bytes, now: int) -> None:
        """Record a processed (or refused) envelope."""
        self._db.execute("INSERT OR IGNORE INTO seen (msg_id, at) VALUES (?, ?)", (msg_id, now))

    def hold(self, msg_id: bytes, relay: str, envelope: bytes, now: int) -> None:
        """Keep an envelope to open later: a first message from an unknown
        sender (for the user to accept), or a message that came ahead of its
        session's first message."""
        self._db.execute(
            "INSERT OR IGNORE INTO held (msg_id, relay, envelope, at) VALUES (?, ?, ?, ?)",
            (msg_id, relay, envelope, now),
        )

    def held(self) -> list[tuple[bytes, str, bytes, int]]:
        """Held envelopes, oldest first: (msg_id, relay, envelope, time held)."""
        return [
            (r[0], r[1], r[2], int(r[3]))
            for r in self._db.execute(
                "SELECT msg_id, relay, envelope, at FROM held ORDER BY at, rowid"
            )
        ]

    def unhold(self, msg_id: bytes) -> None:
        """Forget a held envelope."""
        self._db.execute("DELETE FROM held WHERE msg_id = ?", (msg_id,))
        self._db.execute("DELETE FROM held_keys WHERE msg_id = ?", (msg_id,))

    def set_held_key(self, msg_id: bytes, kind: str, key: bytes) -> None:
        """What a held envelope waits for: ``("chain", ratchet key)`` for the
        first message of its chain, ``("sender", fingerprint)`` for its sender
        to be pinned. Only that event retries it."""
        self._db.execute(
            "INSERT OR REPLACE INTO held_keys (msg_id, kind, key) VALUES (?, ?, ?)",
            (msg_id, kind, key),
        )

    def held_index(self) -> list[Entry]:
        """The hold's state for :class:`~securechan.protocol.ordering.HoldQueue`
        (no envelope bytes), oldest first. A row held before schema 6 says
        nothing of what it waits for: it is read as waiting for a sender no
        one pins (kept, never expired: what it did before)."""
        rows = self._db.execute(
            "SELECT h.msg_id, length(h.envelope), h.at, k.kind, k.key FROM held h"
            " LEFT JOIN held_keys k ON k.msg_id = h.msg_id ORDER BY h.at, h.rowid"
        ).fetchall()
        return [
            Entry(
                msg_id=m,
                size=int(n),
                wait=CHAIN if k == CHAIN else SENDER,
                key=key if key is not None else b"",
                at=int(a),
            )
            for m, n, a, k, key in rows
        ]

    def held_unlabelled(self) -> list[HeldRow]:
        """Held envelopes that do not say what they wait for (held before
        schema 6), oldest first."""
        rows = self._db.execute(
            "SELECT h.msg_id, h.relay, h.envelope, h.at FROM held h"
            " LEFT JOIN held_keys k ON k.msg_id = h.msg_id WHERE k.kind IS NULL"
            " ORDER BY h.at, h.rowid"
        ).fetchall()
        return [
            HeldRow(msg_id=m, relay=r, envelope=e, at=int(a), kind=None, key=None)
            for m, r, e, a in rows
        ]

    def held_row(self, msg_id: bytes) -> HeldRow | None:
        """One held envelope, or ``None``."""
        r = self._db.execute(
            "SELECT h.msg_id, h.relay, h.envelope, h.at, k.kind, k.key FROM held h"
            " LEFT JOIN held_keys k ON k.msg_id = h.msg_id WHERE h.msg_id = ?",
            (msg_id,),
        ).fetchone()
        if r is None:
            return None
        m, relay, e, a, k, key = r
        return HeldRow(msg_id=m, relay=relay, envelope=e, at=int(a), kind=k, key=key)

    def park(
        self, msg_id: bytes, relay: str, stage: str, envelope: bytes, now: int, *, keep: int
    ) -> None:
        """Keep an envelope that failed unexpectedly (for diagnosis, never
        retried); only the newest ``keep`` are kept."""
        self._db.execute(
            "INSERT OR REPLACE INTO parked (msg_id, relay, stage, envelope, at)"
            " VALUES (?, ?, ?, ?, ?)",
            (msg_id, relay, stage, envelope, now),
        )
        self._db.execute(
            "DELETE FROM parked WHERE rowid NOT IN"
            " (SELECT rowid FROM parked ORDER BY at DESC, rowid DESC LIMIT ?)",
            (keep,),
        )

    def parked(self) -> list[tuple[bytes, str, str, int]]:
        """Parked envelopes: (msg_id, relay, stage, time), oldest first."""
        rows = self._db.execute(
            "SELECT msg_id, relay, stage, at FROM parked ORDER BY at, rowid"
        ).fetchall()
        return [(m, r, st, a) for m, r, st, a in rows]

    def refuse_chain(self, dh: bytes, now: int) -> None:
        """Envelopes on this sender ratchet key belong to a refused first message."""
        self._db.execute("INSERT OR IGNORE INTO refused_chains (dh, at) VALUES (?, ?)", (dh, now))

    def chain_refused(self, dh: bytes) -> bool:
        """Was the first message of this ratchet chain refused?"""
        row = self._db.execute("SELECT 1 FROM refused_chains WHERE dh = ?", (dh,)).fetchone()
        return row is not None

    def unrefuse_chain(self, dh: bytes) -> None:
        """The chain's first message was accepted after all."""
        self._db.execute("DELETE FROM refused_chains WHERE dh = ?", (dh,))
