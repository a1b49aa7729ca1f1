"""Argument checks and row conversions shared by the relay's SQLite tables
(misuse is a bug in the caller: ``TypeError`` / ``ValueError``), and the
request nonces' table."""

from __future__ import annotations

import sqlite3
from typing import Any, Final

from securechan.relay.storage import ID_SIZE, KEY_SIZE, NonceUse, QueueRecord

__all__ = [
    "MAX_NONCE",
    "Nonces",
    "check_bytes",
    "check_id",
    "check_int",
    "check_key",
    "queue_record",
]

Conn = sqlite3.Connection
INT64: Final = (-(2**63), 2**63 - 1)
MAX_NONCE: Final = 64
"""Longest request nonce."""


def check_bytes(value: object, name: str, *, size: int | None = None, max_size: int = 0) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes")
    if size is not None and len(value) != size:
        raise ValueError(f"{name} must be {size} bytes")
    if size is None and not 1 <= len(value) <= max_size:
        raise ValueError(f"{name} must be 1 to {max_size} bytes")
    return value


def check_id(value: object, name: str) -> bytes:
    return check_bytes(value, name, size=ID_SIZE)


def check_key(value: object, name: str) -> bytes:
    return check_bytes(value, name, size=KEY_SIZE)


def check_int(value: object, name: str, *, low: int = INT64[0]) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int")
    if not low <= value <= INT64[1]:
        raise ValueError(f"{name} is out of range")
    return value


def queue_record(row: tuple[Any, ...]) -> QueueRecord:
    rid, sid, recipient_key, sender_key, contact, created = row
    return QueueRecord(
        rid=rid,
        sid=sid,
        recipient_key=recipient_key,
        sender_key=sender_key,
        contact=bool(contact),
        created=created,
    )


_NONCE_UPSERT = (
    # A nonce past its expiry may be used again (it would be forgotten anyway):
    # the row is then renewed, otherwise nothing changes and rowcount is 0.
    "INSERT INTO nonces (key, nonce, expires) VALUES (?1, ?2, ?3)"
    " ON CONFLICT (key, nonce) DO UPDATE SET expires = excluded.expires"
    " WHERE nonces.expires < ?4"
)


class Nonces:
    """Request nonces in the ``nonces`` table (writer thread, inside a job)."""

    def __init__(self) -> None:
        self._next_purge = INT64[0]  # when expired nonces go next

    @staticmethod
    def args(use: NonceUse) -> tuple[bytes, bytes, int, int]:
        return (
            check_key(use.key, "key"),
            check_bytes(use.nonce, "nonce", max_size=MAX_NONCE),
            check_int(use.expires, "expires"),
            check_int(use.now, "now"),
        )

    def record(self, conn: Conn, key: bytes, nonce: bytes, expires: int, now: int) -> bool:
        """Record a nonce; ``False`` if it is held and not yet expired.
        Expired rows are purged at most once a second: the check itself
        does not depend on the purge."""
        if now >= self._next_purge:
            conn.execute("DELETE FROM nonces WHERE expires < ?", (now,))
            self._next_purge = now + 1
        return bool(conn.execute(_NONCE_UPSERT, (key, nonce, expires, now)).rowcount == 1)
