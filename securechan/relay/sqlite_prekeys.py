"""The prekey tables of the relay's SQLite store: the sealed signed-prekey
blob and the sealed one-time blobs of each contact address.

Part of :class:`~securechan.relay.sqlite_store.SqliteStorage`; its jobs run
on the store's writer thread.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from securechan.relay.sqlite_checks import check_bytes, check_id
from securechan.relay.sqlite_space import Space
from securechan.relay.sqlite_writer import SqliteWorker

__all__ = ["MAX_ONE_TIME_HELD", "MAX_PREKEY_BLOB", "PrekeyTable"]

Conn = sqlite3.Connection

MAX_PREKEY_BLOB: Final = 64 * 1024
"""Hard ceiling on one sealed prekey blob."""
MAX_ONE_TIME_HELD: Final = 10_000
"""Most one-time prekey blobs one queue may hold."""


class PrekeyTable:
    """Sealed prekey blobs by queue."""

    def __init__(self, worker: SqliteWorker, space: Space) -> None:
        self._worker = worker
        self._space = space

    async def put_prekeys(
        self, rid: bytes, *, signed: bytes, one_time: list[bytes], replace_one_time: bool
    ) -> int:
        """Store the signed blob, add (or replace) one-time blobs; return how many are held.

        ``ValueError`` if there is no such queue or the queue would hold more
        than :data:`MAX_ONE_TIME_HELD` one-time blobs (then nothing changes).
        """
        check_id(rid, "rid")
        check_bytes(signed, "signed", max_size=MAX_PREKEY_BLOB)
        if not isinstance(one_time, list):
            raise TypeError("one_time must be a list")
        if len(one_time) > MAX_ONE_TIME_HELD:
            raise ValueError(f"a queue holds at most {MAX_ONE_TIME_HELD} one-time prekeys")
        blobs = [(rid, check_bytes(b, "one_time blob", max_size=MAX_PREKEY_BLOB)) for b in one_time]
        if not isinstance(replace_one_time, bool):
            raise TypeError("replace_one_time must be a bool")
        replace = replace_one_time

        def job(conn: Conn) -> int:
            if conn.execute("SELECT 1 FROM queues WHERE rid = ?", (rid,)).fetchone() is None:
                raise ValueError("no such queue")
            if replace:
                conn.execute("DELETE FROM one_time_prekeys WHERE rid = ?", (rid,))
                self._space.deleted = True
            (held,) = conn.execute(
                "SELECT count(*) FROM one_time_prekeys WHERE rid = ?", (rid,)
            ).fetchone()
            if held + len(blobs) > MAX_ONE_TIME_HELD:
                raise ValueError(f"a queue holds at most {MAX_ONE_TIME_HELD} one-time prekeys")
            conn.execute(
                "INSERT INTO signed_prekeys (rid, blob) VALUES (?, ?)"
                " ON CONFLICT (rid) DO UPDATE SET blob = excluded.blob",
                (rid, signed),
            )
            conn.executemany("INSERT INTO one_time_prekeys (rid, blob) VALUES (?, ?)", blobs)
            return int(held) + len(blobs)

        return await self._worker.write(job)

    async def claim_bundle(self, rid: bytes) -> tuple[bytes, bytes | None, int] | None:
        """The signed blob, the oldest one-time blob (removed), how many remain."""
        check_id(rid, "rid")

        def job(conn: Conn) -> tuple[bytes, bytes | None, int] | None:
            row = conn.execute("SELECT blob FROM signed_prekeys WHERE rid = ?", (rid,)).fetchone()
            if row is None:
                return None
            one = conn.execute(
                "SELECT id, blob FROM one_time_prekeys WHERE rid = ? ORDER BY id LIMIT 1", (rid,)
            ).fetchone()
            if one is not None:
                conn.execute("DELETE FROM one_time_prekeys WHERE id = ?", (one[0],))
                self._space.deleted = True
            (left,) = conn.execute(
                "SELECT count(*) FROM one_time_prekeys WHERE rid = ?", (rid,)
            ).fetchone()
            return row[0], None if one is None else one[1], int(left)

        return await self._worker.write(job)

    async def prekey_count(self, rid: bytes) -> int:
        """How many one-time blobs remain."""
        args = (check_id(rid, "rid"),)

        def read(conn: Conn) -> int:
            sql = "SELECT count(*) FROM one_time_prekeys WHERE rid = ?"
            return int(conn.execute(sql, args).fetchone()[0])

        return await self._worker.read(read)
