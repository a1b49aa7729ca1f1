"""The group streams of the relay's SQLite store (docs/RELAY.md, "Group
streams"): append an opaque blob at the next position of its stream, read
a stream in position order.

Part of :class:`~securechan.relay.sqlite_store.SqliteStorage` (whose
docstring states the guarantees); its jobs run on the store's one writer
thread, so two posts to one stream are serialised there: each reads the
stream row's ``items`` and inserts at ``items + 1`` in the same
transaction, and positions have no gap and no repeat.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Final, cast

from securechan.errors import LimitReached
from securechan.primitives import sha256
from securechan.relay.sqlite_checks import check_bytes, check_int
from securechan.relay.sqlite_space import Space
from securechan.relay.sqlite_writer import SqliteWorker
from securechan.relay.storage import (
    STREAM_ID_SIZE,
    STREAM_ITEM_OVERHEAD,
    Quota,
    StoredItem,
    StreamLimits,
    StreamPut,
    StreamUsage,
)

__all__ = [
    "MAX_STREAM_BLOB",
    "MAX_STREAM_FETCH",
    "TOTALS_SQL",
    "StreamTable",
    "StreamTotals",
    "check_limits",
    "check_stream_id",
]

Conn = sqlite3.Connection

MAX_STREAM_BLOB: Final = 1024 * 1024
"""Hard ceiling on one stored blob; the relay enforces its own, lower, limit."""
MAX_STREAM_FETCH: Final = 1000
"""Most items one :meth:`StreamTable.fetch_stream` returns, whatever ``limit`` says."""


TOTALS_SQL: Final = "SELECT count(*), coalesce(sum(bytes), 0), coalesce(sum(items), 0) FROM streams"
"""All streams: how many, their blob bytes, their items (one scan of the stream rows)."""


def check_stream_id(value: object) -> bytes:
    """A stream id: exactly 32 bytes (``TypeError``/``ValueError`` otherwise)."""
    return check_bytes(value, "stream_id", size=STREAM_ID_SIZE)


def check_limits(max_items: int, limits: StreamLimits | None) -> StreamLimits:
    """The post's bounds: ``limits`` if given, else ``max_items`` alone."""
    check_int(max_items, "max_items", low=1)
    if limits is None:
        return StreamLimits(max_items=max_items)
    if not isinstance(limits, StreamLimits):
        raise TypeError("limits must be StreamLimits")
    check_int(limits.max_items, "max_items", low=1)
    return limits


class StreamTotals:
    """How many streams the relay holds and their charged bytes, for the
    relay-wide bounds: read from the database (:data:`TOTALS_SQL`, one scan
    of the stream rows) at most once every :attr:`refresh` seconds, and moved
    on by this process's own posts in between. Several relay processes on
    one database see each other's posts at the next read: the bounds may be
    passed by the posts of one second elsewhere (documented)."""

    refresh: float = 1.0

    def __init__(self) -> None:
        self._read_at: float | None = None
        self.streams = 0
        self.bytes = 0

    def never_read(self) -> bool:
        return self._read_at is None

    def stale(self) -> bool:
        at = self._read_at
        return at is None or time.monotonic() - at >= self.refresh

    def read(self, row: tuple[int, int, int], *, fresh: bool = True) -> None:
        streams, blob_bytes, items = (int(v) for v in row)
        self.streams = streams
        self.bytes = blob_bytes + items * STREAM_ITEM_OVERHEAD
        self._read_at = time.monotonic() if fresh else None

    def forget(self) -> None:
        """Read again before the next check (after a failed write)."""
        self._read_at = None

    def added(self, size: int, *, new_stream: bool) -> None:
        self.streams += int(new_stream)
        self.bytes += size + STREAM_ITEM_OVERHEAD

    def usage(self, items: int, blob_bytes: int, used: int | None = None) -> StreamUsage:
        return StreamUsage(
            items=items,
            bytes=blob_bytes + items * STREAM_ITEM_OVERHEAD,
            streams=self.streams,
            total_bytes=self.bytes,
            used_bytes=used,
        )


class StreamTable:
    """Group streams held by the store."""

    def __init__(self, worker: SqliteWorker, space: Space) -> None:
        self._worker = worker
        self._space = space
        self._totals = StreamTotals()

    def _usage(self, conn: Conn, stream_id: bytes, *, writer: bool) -> StreamUsage:
        # The writer thread reads the totals again once a second (its own
        # posts move them on in between: exact, one writer). A reader, which
        # may not see the writer's open batch, only fills them before the
        # writer's first read, and leaves them stale for it.
        totals = self._totals
        if totals.stale() if writer else totals.never_read():
            totals.read(conn.execute(TOTALS_SQL).fetchone(), fresh=writer)
        row = conn.execute(
            "SELECT items, bytes FROM streams WHERE stream_id = ?", (stream_id,)
        ).fetchone()
        return totals.usage(*(row or (0, 0)))

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
        """Append at the stream's next position (see
        :meth:`~securechan.relay.storage.RelayStorage.put_stream_item`)."""
        check_stream_id(stream_id)
        check_bytes(data, "data", max_size=MAX_STREAM_BLOB)
        check_int(log_index, "log_index", low=0)
        check_int(now, "now")
        bounds = check_limits(max_items, limits)
        if quota is not None and not isinstance(quota, Quota):
            raise TypeError("quota must be a Quota")
        # Only the relay-wide limits: a stream is no queue and has no sender key.
        overall = (
            None
            if quota is None
            else Quota(
                storage_bytes=quota.storage_bytes,
                free_bytes=quota.free_bytes,
                free_share=quota.free_share,
            )
        )
        digest = sha256(data)

        def job(conn: Conn) -> StreamPut | object:
            held = conn.execute(
                "SELECT position, log_index FROM stream_items WHERE stream_id = ? AND digest = ?",
                (stream_id, digest),
            ).fetchone()
            if held is not None:  # before fullness: a resend is never refused
                return StreamPut(position=held[0], log_index=held[1], duplicate=True)
            usage = self._usage(conn, stream_id, writer=True)
            items = usage.items
            refused = usage.refusal(bounds, len(data))
            if refused is not None:
                return refused  # not raised: nothing to roll back, one path
            found = items > 0
            if overall is not None:
                over = self._space.over_quota(conn, overall, len(data), 0, None)
                if over is not None:
                    return over  # not raised: nothing to roll back, one path
            if not found:
                conn.execute(
                    "INSERT INTO streams (stream_id, created) VALUES (?, ?)", (stream_id, now)
                )
            # The stream_item_added trigger moves items (the last position) on.
            conn.execute(
                "INSERT INTO stream_items (stream_id, position, digest, data, log_index, received)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (stream_id, items + 1, digest, data, log_index, now),
            )
            self._totals.added(len(data), new_stream=not found)
            return StreamPut(position=items + 1, log_index=log_index, duplicate=False)

        try:
            result = await self._worker.write(job)
        except BaseException:
            self._totals.forget()  # the batch may have rolled back what it counted
            raise
        if isinstance(result, LimitReached):
            raise result
        return cast(StreamPut, result)

    async def stream_usage(self, stream_id: bytes) -> StreamUsage:
        """What the stream and all streams hold (see
        :meth:`~securechan.relay.storage.RelayStorage.stream_usage`)."""
        check_stream_id(stream_id)
        return await self._worker.read(lambda conn: self._usage(conn, stream_id, writer=False))

    async def held_stream_item(self, stream_id: bytes, data: bytes) -> StreamPut | None:
        """The item of the stream holding exactly ``data``, or None."""
        args = (
            check_stream_id(stream_id),
            sha256(check_bytes(data, "data", max_size=MAX_STREAM_BLOB)),
        )

        def read(conn: Conn) -> StreamPut | None:
            row = conn.execute(
                "SELECT position, log_index FROM stream_items WHERE stream_id = ? AND digest = ?",
                args,
            ).fetchone()
            if row is None:
                return None
            return StreamPut(position=row[0], log_index=row[1], duplicate=True)

        return await self._worker.read(read)

    async def fetch_stream(self, stream_id: bytes, *, after: int, limit: int) -> list[StoredItem]:
        """Items with ``position > after``, in order, at most ``min(limit,
        MAX_STREAM_FETCH)``; none for an unknown stream."""
        args = (
            check_stream_id(stream_id),
            check_int(after, "after"),
            min(check_int(limit, "limit", low=1), MAX_STREAM_FETCH),
        )

        def read(conn: Conn) -> list[StoredItem]:
            return [
                StoredItem(position=p, data=d, log_index=i, received=r)
                for p, d, i, r in conn.execute(
                    "SELECT position, data, log_index, received FROM stream_items"
                    " WHERE stream_id = ? AND position > ? ORDER BY position LIMIT ?",
                    args,
                )
            ]

        return await self._worker.read(read)

    async def stream_length(self, stream_id: bytes) -> int:
        """How many items the stream holds (0 for an unknown stream)."""
        args = (check_stream_id(stream_id),)

        def read(conn: Conn) -> int:
            row = conn.execute("SELECT items FROM streams WHERE stream_id = ?", args).fetchone()
            return 0 if row is None else int(row[0])

        return await self._worker.read(read)
