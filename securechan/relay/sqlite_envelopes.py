"""The envelopes table of the relay's SQLite store: put (with the request
nonce, the depth and the byte quotas in the same transaction), fetch, ack,
expire, and the scan the transparency log's repair pages through.

Part of :class:`~securechan.relay.sqlite_store.SqliteStorage` (whose
docstring states the guarantees); its jobs run on the store's writer thread.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Final, cast

from securechan.relay.sqlite_checks import Nonces, check_bytes, check_id, check_int
from securechan.relay.sqlite_space import Space
from securechan.relay.sqlite_writer import SqliteWorker
from securechan.relay.storage import (
    Envelope,
    HeldEnvelope,
    NonceReused,
    NonceUse,
    PutResult,
    QueueFull,
    Quota,
    QuotaExceeded,
)

__all__ = ["MAX_ENVELOPE_BYTES", "MAX_FETCH", "EnvelopeTable"]

Conn = sqlite3.Connection

MAX_FETCH: Final = 1000
"""Most envelopes one :meth:`EnvelopeTable.fetch` returns, whatever ``limit`` says."""
MAX_ENVELOPE_BYTES: Final = 16 * 1024 * 1024
"""Hard ceiling on one envelope; the relay enforces its own, lower, limit."""
_FULL: Final = object()  # a put_envelope job's answer when the queue is full
_PUT_CHECK = (
    "SELECT next_seq, depth,"
    " (SELECT seq FROM envelopes WHERE rid = ?1 AND msg_id = ?2), bytes, sender_key"
    " FROM queues WHERE rid = ?1"
)


class EnvelopeTable:
    """Envelopes held on the store's queues."""

    def __init__(self, worker: SqliteWorker, space: Space, nonces: Nonces) -> None:
        self._worker = worker
        self._space = space
        self._nonces = nonces

    async def put_envelope(
        self,
        rid: bytes,
        msg_id: bytes,
        data: bytes,
        *,
        now: int,
        max_depth: int,
        nonce: NonceUse | None = None,
        quota: Quota | None = None,
    ) -> PutResult:
        """Append durably; idempotent on ``msg_id`` while the envelope is held.

        With ``quota``, :class:`QuotaExceeded` when the envelope would take
        the queue's bytes, its sender key's bytes (all queues secured with
        that key), the database's used pages or the file system's free space
        past a limit; checked in the write transaction, after the duplicate
        and depth checks.

        Raises :class:`QueueFull` when ``max_depth`` envelopes are held (a
        resend of one of them still answers ``duplicate``), ``ValueError`` if
        there is no such queue. With ``nonce``, the request nonce is recorded
        in the same transaction: :class:`NonceReused` (nothing stored) if it
        was recorded before; a full queue still records it.
        """
        check_id(rid, "rid")
        check_id(msg_id, "msg_id")
        check_bytes(data, "data", max_size=MAX_ENVELOPE_BYTES)
        check_int(now, "now")
        check_int(max_depth, "max_depth", low=1)
        if nonce is not None and not isinstance(nonce, NonceUse):
            raise TypeError("nonce must be a NonceUse")
        request = None if nonce is None else self._nonces.args(nonce)

        def job(conn: Conn) -> PutResult | object:
            if request is not None and not self._nonces.record(conn, *request):
                raise NonceReused("this request nonce was already used")
            row = conn.execute(_PUT_CHECK, (rid, msg_id)).fetchone()
            if row is None:
                raise ValueError("no such queue")
            seq, depth, held, queue_bytes, sender_key = row
            if held is not None:  # checked before fullness: a resend is never refused
                return PutResult(seq=held, duplicate=True)
            if depth >= max_depth:
                return _FULL  # not raised: the nonce stays recorded
            if quota is not None:
                over = self._space.over_quota(conn, quota, len(data), queue_bytes, sender_key)
                if over is not None:
                    return over  # not raised either
            # The envelope_added trigger moves next_seq on and counts the depth.
            conn.execute(
                "INSERT INTO envelopes (rid, seq, msg_id, data, received) VALUES (?, ?, ?, ?, ?)",
                (rid, seq, msg_id, data, now),
            )
            return PutResult(seq=seq, duplicate=False)

        if quota is not None and not isinstance(quota, Quota):
            raise TypeError("quota must be a Quota")
        result = await self._worker.write(job)
        if result is _FULL:
            raise QueueFull("the queue is full")
        if isinstance(result, QuotaExceeded):
            raise result
        return cast(PutResult, result)

    async def fetch(
        self, rid: bytes, *, after: int, limit: int, max_bytes: int | None = None
    ) -> list[Envelope]:
        """Envelopes with ``seq > after``, oldest first, at most ``min(limit,
        MAX_FETCH)``; with ``max_bytes``, no more envelope bytes than that
        (but always the first envelope). Rows are read one at a time, so a
        cut page never holds more than one envelope beyond its budget."""
        args = (
            check_id(rid, "rid"),
            check_int(after, "after"),
            min(check_int(limit, "limit", low=1), MAX_FETCH),
        )
        budget = None if max_bytes is None else check_int(max_bytes, "max_bytes", low=1)

        def read(conn: Conn) -> list[Envelope]:
            out: list[Envelope] = []
            total = 0
            for s, m, d, r in conn.execute(
                "SELECT seq, msg_id, data, received FROM envelopes"
                " WHERE rid = ? AND seq > ? ORDER BY seq LIMIT ?",
                args,
            ):
                total += len(d)
                if budget is not None and out and total > budget:
                    break
                out.append(Envelope(seq=s, msg_id=m, data=d, received=r))
            return out

        return await self._worker.read(read)

    async def ack(self, rid: bytes, *, up_to: int) -> int:
        """Delete envelopes with ``seq <= up_to``; return how many."""
        args = (check_id(rid, "rid"), check_int(up_to, "up_to"))

        def job(conn: Conn) -> int:
            n = conn.execute("DELETE FROM envelopes WHERE rid = ? AND seq <= ?", args).rowcount
            if n:
                self._space.deleted = True
            return int(n)

        return await self._worker.write(job)

    async def depth(self, rid: bytes) -> int:
        """How many envelopes the queue holds."""
        args = (check_id(rid, "rid"),)

        def read(conn: Conn) -> int:
            row = conn.execute("SELECT depth FROM queues WHERE rid = ?", args).fetchone()
            return 0 if row is None else int(row[0])

        return await self._worker.read(read)

    async def expire(self, *, older_than: int) -> int:
        """Delete envelopes received before ``older_than``; return how many."""
        args = (check_int(older_than, "older_than"),)

        def job(conn: Conn) -> int:
            n = conn.execute("DELETE FROM envelopes WHERE received < ?", args).rowcount
            if n:
                self._space.deleted = True
            return int(n)

        return await self._worker.write(job)

    async def held_since(
        self, *, received: int, after: tuple[int, bytes, int] | None, limit: int
    ) -> list[HeldEnvelope]:
        """Held envelopes received at or after ``received``, by ``(received,
        rid, seq)``, strictly after the cursor ``after``; at most
        ``min(limit, MAX_FETCH)``."""
        since = check_int(received, "received")
        count = min(check_int(limit, "limit", low=1), MAX_FETCH)
        if after is None:
            sql = (
                "SELECT rid, seq, msg_id, data, received FROM envelopes WHERE received >= ?"
                " ORDER BY received, rid, seq LIMIT ?"
            )
            args: tuple[Any, ...] = (since, count)
        else:
            if not isinstance(after, tuple) or len(after) != 3:
                raise TypeError("after must be a (received, rid, seq) tuple")
            cursor = (
                check_int(after[0], "after"),
                check_id(after[1], "after"),
                check_int(after[2], "after"),
            )
            sql = (
                "SELECT rid, seq, msg_id, data, received FROM envelopes"
                " WHERE received >= ? AND (received, rid, seq) > (?, ?, ?)"
                " ORDER BY received, rid, seq LIMIT ?"
            )
            args = (since, *cursor, count)

        def read(conn: Conn) -> list[HeldEnvelope]:
            return [
                HeldEnvelope(rid=r, envelope=Envelope(seq=s, msg_id=m, data=d, received=t))
                for r, s, m, d, t in conn.execute(sql, args).fetchall()
            ]

        return await self._worker.read(read)
