"""The group-stream operations of :class:`~securechan.relay.pg_store.PgStorage`
(docs/RELAY.md, "Group streams"), on PostgreSQL.

A post is one call of the schema's ``securechan_put_stream_item``
(``schema/relay_pg/v2.sql``): it locks the stream row (``SELECT ... FOR
UPDATE``) before it reads the stream's item count and inserts at the next
position, so posts to one stream through any number of relay processes
take distinct, consecutive positions, and a resend of a held blob is
answered with its item.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from securechan.errors import StorageError
from securechan.primitives import sha256
from securechan.relay.pg_pool import Conn, one
from securechan.relay.sqlite_checks import check_bytes, check_int
from securechan.relay.sqlite_streams import MAX_STREAM_BLOB, MAX_STREAM_FETCH, check_stream_id
from securechan.relay.storage import Quota, QuotaExceeded, StoredItem, StreamFull, StreamPut

__all__ = ["PgStreams"]

T = TypeVar("T")

_PUT: Final = "SELECT status, pos, leaf FROM securechan_put_stream_item(%s, %s, %s, %s, %s, %s, %s)"


class PgStreams:
    """Group streams (a base of :class:`PgStorage`)."""

    async def _run(self, fn: Callable[[Conn], Awaitable[T]], *, transaction: bool = True) -> T:
        raise NotImplementedError  # PgStorage runs it

    async def put_stream_item(
        self,
        stream_id: bytes,
        data: bytes,
        *,
        log_index: int,
        now: int,
        max_items: int,
        quota: Quota | None = None,
    ) -> StreamPut:
        """Append at the stream's next position, under the stream row's lock
        (see :meth:`~securechan.relay.storage.RelayStorage.put_stream_item`;
        of ``quota`` only ``storage_bytes`` is checked, as for envelopes)."""
        check_stream_id(stream_id)
        check_bytes(data, "data", max_size=MAX_STREAM_BLOB)
        check_int(log_index, "log_index", low=0)
        check_int(now, "now")
        check_int(max_items, "max_items", low=1)
        if quota is not None and not isinstance(quota, Quota):
            raise TypeError("quota must be a Quota")
        args = (
            *(stream_id, data, sha256(data), log_index, now, max_items),
            None if quota is None else quota.storage_bytes,
        )

        async def job(conn: Conn) -> tuple[Any, ...]:
            row = await one(conn, _PUT, args)
            if row is None:  # a function call always answers one row
                raise StorageError("PostgreSQL: securechan_put_stream_item answered nothing")
            return tuple(row)

        # One statement: its own transaction, one round trip.
        status, position, leaf = await self._run(job, transaction=False)
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
