"""The queues table of the relay's SQLite store, with its cache in memory.

Part of :class:`~securechan.relay.sqlite_store.SqliteStorage`; its jobs run
on the store's writer thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Final

from securechan.relay.sqlite_checks import check_id, check_int, check_key, queue_record
from securechan.relay.sqlite_space import Space
from securechan.relay.sqlite_writer import SqliteWorker
from securechan.relay.storage import QueueRecord

__all__ = ["MAX_CACHED_QUEUES", "QueueTable"]

Conn = sqlite3.Connection

MAX_CACHED_QUEUES: Final = 65_536
"""Most queue records held in memory (see :meth:`QueueTable.queue_by_sid`)."""
_QUEUE_COLUMNS = "rid, sid, recipient_key, sender_key, contact, created"
_QUEUE_BY_RID = f"SELECT {_QUEUE_COLUMNS} FROM queues WHERE rid = ?"  # noqa: S608 (constants)
_QUEUE_BY_SID = f"SELECT {_QUEUE_COLUMNS} FROM queues WHERE sid = ?"  # noqa: S608 (constants)


class QueueTable:
    """Queue records, cached by sid and by rid."""

    def __init__(self, worker: SqliteWorker, space: Space) -> None:
        self._worker = worker
        self._space = space
        # Queue records by sid and by rid, filled by reads and dropped around
        # every write that changes a queue (see queue_by_sid); event loop only.
        self._by_sid: dict[bytes, QueueRecord] = {}
        self._by_rid: dict[bytes, QueueRecord] = {}
        self._queue_writes = 0

    async def create_queue(self, queue: QueueRecord) -> None:
        """Store a new queue; ``ValueError`` if its rid or sid exists."""
        if not isinstance(queue, QueueRecord) or not isinstance(queue.contact, bool):
            raise TypeError("queue must be a QueueRecord")
        row = (
            check_id(queue.rid, "rid"),
            check_id(queue.sid, "sid"),
            check_key(queue.recipient_key, "recipient_key"),
            None if queue.sender_key is None else check_key(queue.sender_key, "sender_key"),
            int(queue.contact),
            check_int(queue.created, "created"),
        )

        def job(conn: Conn) -> None:
            try:
                conn.execute(
                    f"INSERT INTO queues ({_QUEUE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608
                    row,
                )
            except sqlite3.IntegrityError:
                raise ValueError("a queue with this rid or sid exists") from None

        await self._worker.write(job)

    async def queue_by_rid(self, rid: bytes) -> QueueRecord | None:
        """The queue with receive id ``rid``, or ``None``."""
        check_id(rid, "rid")
        return self._by_rid.get(rid) or await self._queue_by(_QUEUE_BY_RID, rid)

    async def queue_by_sid(self, sid: bytes) -> QueueRecord | None:
        """The queue with send id ``sid``, or ``None``.

        Queue records are cached in memory (every send reads one): a record
        read from the database is kept unless a write that changes a queue
        (securing, deleting) was submitted or finished while it was read, and
        each such write drops the queue's record when it is submitted and again
        when it has committed. So a record is never older than the last
        committed change, as a database read would be; this holds because one
        process owns the database (one writer connection) and only this
        object's methods change queues. Unknown ids are not cached.
        """
        check_id(sid, "sid")
        return self._by_sid.get(sid) or await self._queue_by(_QUEUE_BY_SID, sid)

    async def _queue_by(self, sql: str, value: bytes) -> QueueRecord | None:
        def read(conn: Conn) -> QueueRecord | None:
            row = conn.execute(sql, (value,)).fetchone()
            return None if row is None else queue_record(row)

        writes = self._queue_writes
        queue = await self._worker.read(read)
        if queue is not None and writes == self._queue_writes:
            if len(self._by_sid) >= MAX_CACHED_QUEUES:
                self._by_sid.clear()
                self._by_rid.clear()
            self._by_sid[queue.sid] = queue
            self._by_rid[queue.rid] = queue
        return queue

    def _forget_queue(self, rid: bytes) -> None:
        self._queue_writes += 1  # a read in flight must not cache what it read
        queue = self._by_rid.pop(rid, None)
        if queue is not None:
            self._by_sid.pop(queue.sid, None)

    async def _queue_write(self, rid: bytes, job: Callable[[Conn], None]) -> None:
        self._forget_queue(rid)
        try:
            await self._worker.write(job)
        finally:
            self._forget_queue(rid)

    async def set_sender_key(self, rid: bytes, sender_key: bytes) -> None:
        """Secure a queue; ``ValueError`` if there is no such queue."""
        args = (check_key(sender_key, "sender_key"), check_id(rid, "rid"))

        def job(conn: Conn) -> None:
            if conn.execute("UPDATE queues SET sender_key = ? WHERE rid = ?", args).rowcount != 1:
                raise ValueError("no such queue")

        await self._queue_write(rid, job)

    async def delete_queue(self, rid: bytes) -> None:
        """Delete a queue with its envelopes and prekeys (no error if absent)."""
        args = (check_id(rid, "rid"),)

        def job(conn: Conn) -> None:
            conn.execute("DELETE FROM queues WHERE rid = ?", args)  # cascades
            self._space.deleted = True

        await self._queue_write(rid, job)
