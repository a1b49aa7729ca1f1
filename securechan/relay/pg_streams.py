"""The group-stream operations of :class:`~securechan.relay.pg_store.PgStorage`
(docs/RELAY.md, "Group streams"), on PostgreSQL.

A post is one call of the schema's ``securechan_put_stream_item``
(``schema/relay_pg/v2.sql``): it locks the stream row (``SELECT ... FOR
UPDATE``) before it reads the stream's item count and inserts at the next
position, so posts to one stream through any number of relay processes
take distinct, consecutive positions, and a resend of a held blob is
answered with its item.

The bounds of :class:`~securechan.relay.storage.StreamLimits` beyond
``max_items`` (a stream's bytes, the relay's streams and their bytes) are
checked by one query before that call, without a lock: posts in flight at
once (to one stream, or in other processes) may pass them by one blob each
(at most ``stream_max_blob`` bytes), as the overall ``storage_bytes`` check
may be passed (docs/RELAY.md, "Group streams").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from securechan.errors import StorageError
from securechan.primitives import sha256
from securechan.relay.pg_pool import Conn, one
from securechan.relay.sqlite_checks import check_bytes, check_int
from securechan.relay.sqlite_streams import (
    MAX_STREAM_BLOB,
    MAX_STREAM_FETCH,
    TOTALS_SQL,
    StreamTotals,
    check_limits,
    check_stream_id,
)
from securechan.relay.storage import (
    Quota,
    QuotaExceeded,
    StoredItem,
    StreamFull,
    StreamLimits,
    StreamPut,
    StreamUsage,
)

__all__ = ["PgStreams"]

T = TypeVar("T")

_PUT: Final = "SELECT status, pos, leaf FROM securechan_put_stream_item(%s, %s, %s, %s, %s, %s, %s)"
# One stream's row (if any) and whether it holds the blob, in one round trip.
_USAGE: Final = (
    "SELECT s.items, s.bytes, EXISTS (SELECT 1 FROM stream_items i"
    " WHERE i.stream_id = %s AND i.digest = %s)"
    " FROM (SELECT 1) AS one LEFT JOIN streams s ON s.stream_id = %s"
)
_SIZE: Final = "SELECT pg_database_size(current_database())"


class PgStreams:
    """Group streams (a base of :class:`PgStorage`)."""

    _stream_totals: StreamTotals | None = None

    async def _run(self, fn: Callable[[Conn], Awaitable[T]], *, transaction: bool = True) -> T:
        raise NotImplementedError  # PgStorage runs it

    async def _usage(
        self, conn: Conn, stream_id: bytes, data: bytes | None
    ) -> tuple[StreamUsage, bool]:
        """The usage (totals read again once a second) and whether the
        stream holds ``data``."""
        if self._stream_totals is None:
            self._stream_totals = StreamTotals()
        totals = self._stream_totals
        if totals.stale():
            row = await one(conn, TOTALS_SQL)
            totals.read((0, 0, 0) if row is None else (row[0], row[1], row[2]))
        digest = b"" if data is None else sha256(data)
        found = await one(conn, _USAGE, (stream_id, digest, stream_id))
        items, blob_bytes, held = found if found is not None else (None, None, False)
        size = await one(conn, _SIZE) if data is None else None
        usage = totals.usage(
            int(items or 0), int(blob_bytes or 0), None if size is None else int(size[0])
        )
        return usage, bool(held)

    async def put_stream_item(
        self,
        stream_id: bytes,
        data: bytes,
        *,
        log_index: int,
        now: int,
        max_items: int,
        quota: Quota | None = None,
        limits: StreamLimits | None = None,
    ) -> StreamPut:
        """Append at the stream's next position, under the stream row's lock
        (see :meth:`~securechan.relay.storage.RelayStorage.put_stream_item`;
        of ``quota`` only ``storage_bytes`` is checked, as for envelopes)."""
        check_stream_id(stream_id)
        check_bytes(data, "data", max_size=MAX_STREAM_BLOB)
        check_int(log_index, "log_index", low=0)
        check_int(now, "now")
        bounds = check_limits(max_items, limits)
        if quota is not None and not isinstance(quota, Quota):
            raise TypeError("quota must be a Quota")
        args = (
            *(stream_id, data, sha256(data), log_index, now, bounds.max_items),
            None if quota is None else quota.storage_bytes,
        )
        wider = limits is not None and (
            limits.max_bytes is not None
            or limits.max_streams is not None
            or limits.total_bytes is not None
        )

        async def job(conn: Conn) -> tuple[Any, ...]:
            new = False
            if wider:
                usage, held = await self._usage(conn, stream_id, data)
                refused = None if held else usage.refusal(bounds, len(data))
                if refused is not None:
                    return ("refused", refused, None)
                new = usage.items == 0
            row = await one(conn, _PUT, args)
            if row is None:  # a function call always answers one row
                raise StorageError("PostgreSQL: securechan_put_stream_item answered nothing")
            if row[0] == "stored" and self._stream_totals is not None:
                self._stream_totals.added(len(data), new_stream=new)
            return tuple(row)

        # One statement: its own transaction, one round trip (two with wider bounds).
        status, position, leaf = await self._run(job, transaction=False)
        if status == "refused" and isinstance(position, Exception):
            raise position
        if status in ("stored", "duplicate") and position is not None and leaf is not None:
            return StreamPut(
                position=int(position), log_index=int(leaf), duplicate=status == "duplicate"
            )
        if status == "full":
            raise StreamFull("the stream is full")
        if status == "storage":
            raise QuotaExceeded("storage")
        raise StorageError(f"PostgreSQL: unexpected stream post status {status!r}")

    async def fetch_stream(self, stream_id: bytes, *, after: int, limit: int) -> list[StoredItem]:
        """Items with ``position > after``, in order, at most ``min(limit,
        MAX_STREAM_FETCH)``; none for an unknown stream."""
        args = (
            check_stream_id(stream_id),
            check_int(after, "after"),
            min(check_int(limit, "limit", low=1), MAX_STREAM_FETCH),
        )

        async def job(conn: Conn) -> list[StoredItem]:
            cur = await conn.execute(
                "SELECT position, data, log_index, received FROM stream_items"
                " WHERE stream_id = %s AND position > %s ORDER BY position LIMIT %s",
                args,
                binary=True,
            )
            return [
                StoredItem(position=int(p), data=bytes(d), log_index=int(i), received=int(r))
                for p, d, i, r in await cur.fetchall()
            ]

        return await self._run(job, transaction=False)

    async def stream_length(self, stream_id: bytes) -> int:
        """How many items the stream holds (0 for an unknown stream)."""
        args = (check_stream_id(stream_id),)

        async def job(conn: Conn) -> int:
            row = await one(conn, "SELECT items FROM streams WHERE stream_id = %s", args)
            return 0 if row is None else int(row[0])

        return await self._run(job, transaction=False)

    async def stream_usage(self, stream_id: bytes) -> StreamUsage:
        """What the stream and all streams hold, and the database's size
        (see :meth:`~securechan.relay.storage.RelayStorage.stream_usage`)."""
        check_stream_id(stream_id)

        async def job(conn: Conn) -> StreamUsage:
            return (await self._usage(conn, stream_id, None))[0]

        return await self._run(job, transaction=False)

    async def held_stream_item(self, stream_id: bytes, data: bytes) -> StreamPut | None:
        """The item of the stream holding exactly ``data``, or None."""
        args = (
            check_stream_id(stream_id),
            sha256(check_bytes(data, "data", max_size=MAX_STREAM_BLOB)),
        )

        async def job(conn: Conn) -> StreamPut | None:
            row = await one(
                conn,
                "SELECT position, log_index FROM stream_items WHERE stream_id = %s AND digest = %s",
                args,
            )
            if row is None:
                return None
            return StreamPut(position=int(row[0]), log_index=int(row[1]), duplicate=True)

        return await self._run(job, transaction=False)
