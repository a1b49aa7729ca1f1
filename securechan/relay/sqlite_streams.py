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
from typing import Final, cast

from securechan.primitives import sha256
from securechan.relay.sqlite_checks import check_bytes, check_int
from securechan.relay.sqlite_space import Space
from securechan.relay.sqlite_writer import SqliteWorker
from securechan.relay.storage import (
    STREAM_ID_SIZE,
    Quota,
    QuotaExceeded,
    StoredItem,
    StreamFull,
    StreamPut,
)

__all__ = ["MAX_STREAM_BLOB", "MAX_STREAM_FETCH", "StreamTable", "check_stream_id"]

Conn = sqlite3.Connection

MAX_STREAM_BLOB: Final = 1024 * 1024
"""Hard ceiling on one stored blob; the relay enforces its own, lower, limit."""
MAX_STREAM_FETCH: Final = 1000
"""Most items one :meth:`StreamTable.fetch_stream` returns, whatever ``limit`` says."""
_FULL: Final = object()  # a put job's answer when the stream is full


def check_stream_id(value: object) -> bytes:
    """A stream id: exactly 32 bytes (``TypeError``/``ValueError`` otherwise)."""
    return check_bytes(value, "stream_id", size=STREAM_ID_SIZE)


class StreamTable:
    """Group streams held by the store."""

    def __init__(self, worker: SqliteWorker, space: Space) -> None:
        self._worker = worker
        self._space = space

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
        """Append at the stream's next position (see
        :meth:`~securechan.relay.storage.RelayStorage.put_stream_item`)."""
        check_stream_id(stream_id)
        check_bytes(data, "data", max_size=MAX_STREAM_BLOB)
        check_int(log_index, "log_index", low=0)
        check_int(now, "now")
        check_int(max_items, "max_items", low=1)
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
            row = conn.execute("SELECT items FROM streams WHERE stream_id = ?", (stream_id,))
            found = row.fetchone()
            items = 0 if found is None else int(found[0])
            if items >= max_items:
                return _FULL
            if overall is not None:
                over = self._space.over_quota(conn, overall, len(data), 0, None)
                if over is not None:
                    return over  # not raised: nothing to roll back, one path
            if found is None:
                conn.execute(
                    "INSERT INTO streams (stream_id, created) VALUES (?, ?)", (stream_id, now)
                )
            # The stream_item_added trigger moves items (the last position) on.
            conn.execute(
                "INSERT INTO stream_items (stream_id, position, digest, data, log_index, received)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (stream_id, items + 1, digest, data, log_index, now),
            )
            return StreamPut(position=items + 1, log_index=log_index, duplicate=False)

        result = await self._worker.write(job)
        if result is _FULL:
            raise StreamFull("the stream is full")
        if isinstance(result, QuotaExceeded):
            raise result
        return cast(StreamPut, result)

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
