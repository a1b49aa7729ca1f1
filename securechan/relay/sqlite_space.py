"""Space on disk for :class:`~securechan.relay.sqlite_store.SqliteStorage`:
what the database uses, what the file system has left, the byte quotas
checked against both, and giving free pages back.

The writer thread runs it (it is the store's
:class:`~securechan.relay.sqlite_writer.Maintenance`): the used size is
read after every commit, and when the writer has been idle for
``idle_checkpoint`` seconds after a deletion it reclaims free pages
(``auto_vacuum = INCREMENTAL``) and truncates the WAL, so deleted data does
not linger in it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Final

from securechan.relay.storage import Quota, QuotaExceeded

__all__ = ["VACUUM_FREE_PAGES", "VACUUM_STEP", "Space"]

Conn = sqlite3.Connection
log = logging.getLogger("securechan.relay")

VACUUM_FREE_PAGES: Final = 64
"""Free pages (256 KiB of 4 KiB pages) above which the idle writer reclaims space."""
VACUUM_STEP: Final = 256
"""Pages one ``PRAGMA incremental_vacuum`` step gives back (one short write)."""
_SENDER_BYTES = "SELECT coalesce(sum(bytes), 0) FROM queues WHERE sender_key = ?"


class Space:
    """Space accounting and upkeep of one database file."""

    def __init__(self, path: Path, *, idle_checkpoint: float) -> None:
        self.path = path
        self.used_bytes = 0
        self.reclaimed_pages = 0
        self.page_size = 4096
        self.deleted = False  # writer thread only: a deletion since the last truncation
        self._idle_checkpoint = idle_checkpoint
        # Whether a write job is waiting (set once the writer exists).
        self.writes_waiting: Callable[[], bool] = lambda: False

    # --- sqlite_writer.Maintenance ------------------------------------------------

    def idle_wait(self) -> float | None:
        return self._idle_checkpoint if self.deleted else None

    def idle(self, conn: Conn) -> None:
        self.reclaim(conn)
        self.truncate_wal(conn)

    def after_batch(self, conn: Conn) -> None:
        if self.deleted:  # never idle under load: one step now and then
            self.reclaim(conn, steps=1, above=16 * VACUUM_FREE_PAGES)

    def after_commit(self, conn: Conn) -> None:
        self.used(conn)

    def at_exit(self, conn: Conn) -> None:
        self.truncate_wal(conn)

    def reclaim(self, conn: Conn, *, steps: int = 1 << 30, above: int = VACUUM_FREE_PAGES) -> None:
        """Give free pages back to the file system (writer thread, idle):
        steps of :data:`VACUUM_STEP` pages while more than
        :data:`VACUUM_FREE_PAGES` (``above``) are free and no write is
        waiting, at most ``steps`` of them (one after a batch under load);
        the file shrinks at the next WAL truncation."""
        try:
            for _ in range(steps):
                free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
                if free <= above or (steps > 1 and self.writes_waiting()):
                    break
                # executescript steps the pragma to the end (execute would
                # free one page per call).
                conn.executescript(f"PRAGMA incremental_vacuum({int(VACUUM_STEP)});")
                self.reclaimed_pages += min(free, VACUUM_STEP)
            self.used(conn)
        except sqlite3.Error:
            log.warning("relay storage: incremental vacuum failed", exc_info=False)

    def truncate_wal(self, conn: Conn) -> bool:
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error:
            return False
        if busy == 0:
            self.deleted = False
        return bool(busy == 0)

    def over_quota(
        self, conn: Conn, quota: Quota, size: int, queue_bytes: int, sender_key: bytes | None
    ) -> QuotaExceeded | None:
        """The first limit of ``quota`` that ``size`` more bytes would pass."""
        if quota.queue_bytes is not None and queue_bytes + size > quota.queue_bytes:
            return QuotaExceeded("queue")
        if quota.sender_bytes is not None and sender_key is not None:
            (held,) = conn.execute(_SENDER_BYTES, (sender_key,)).fetchone()
            if held + size > quota.sender_bytes:
                return QuotaExceeded("sender")
        if quota.storage_bytes is not None and self.used(conn) + size > quota.storage_bytes:
            return QuotaExceeded("storage")
        if quota.free_bytes is not None:
            disk = self.disk_bytes()
            reserve = None if disk is None else quota.reserve(disk[1])
            if disk is not None and reserve is not None and disk[0] - size < reserve:
                return QuotaExceeded("disk")
        return None

    def used(self, conn: Conn) -> int:
        """Bytes of the database's pages in use (free pages not counted)."""
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        used = int(pages - free) * self.page_size
        self.used_bytes = used
        return used

    def free_bytes(self) -> int | None:
        """Free space on the database's file system less the WAL (see
        :meth:`disk_bytes`); ``None`` if it cannot be read."""
        disk = self.disk_bytes()
        return None if disk is None else disk[0]

    def disk_bytes(self) -> tuple[int, int] | None:
        """The database's file system: free space (for unprivileged writers)
        less the size of the WAL, and its size. The WAL's frames may all be
        copied into the database file at the next checkpoint, so in WAL mode
        the data can take twice its size for a while (conservative: after a
        checkpoint the WAL keeps its size until the writer truncates it)."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return None
        try:
            wal = os.stat(f"{self.path}-wal").st_size
        except OSError:
            wal = 0
        return max(0, st.f_bavail * st.f_frsize - wal), st.f_blocks * st.f_frsize
